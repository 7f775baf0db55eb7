//! Mapping a socket at `bind` (UDP) or `listen` (TCP), in the calling thread:
//! a PCP MAP through `MapClient` (NAT-PMP if the gateway answers
//! UNSUPP_VERSION), on a UDP socket connected to the gateway, waited for at
//! most [`CALL_BOUND`]. The call never hangs on a gateway that is silent or
//! slow: the socket then works on its local address, after one warning line
//! naming the result code, as with a dpfd that cannot be reached.
//!
//! On success the client, with the RFCs' retransmission timing from then on,
//! goes into the forward's record for the responder to renew (`serve`), and
//! the socket reports the mapped address. With `pinned` (a bind to the
//! address the process reports, `client::pinned`), the MAP suggests exactly
//! that address with PREFER_FAILURE, and anything else fails the `bind`.
//!
//! [`ask_public`] asks the gateway's public address (NAT-PMP's request, which
//! both miniupnpd and dpfd answer; PCP has none), for that same bind.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::pcp::ResultCode as Pcp;
use proto::portmap::{Config, Event, MapClient, Refusal, Retry, Via};
use proto::Proto;

use super::side::Mapping;
use super::wire::{CALL_BOUND, CALL_RETRY, LIFETIME_S};
use crate::client::exchange::NoAnswer;
use crate::dpf::ask::{self, NotForwarded};
use crate::dpf::state::Forward;
use crate::fdtable;
use crate::client::sys;

/// How a bounded MAP ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Mapped { external: SocketAddrV4, lifetime: u32, via: Via },
    Refused(Refusal),
    Silent(NoAnswer),
}

/// The client's settings for `proto` `local`, asking for `desired` if any.
pub fn config(proto: Proto, local: SocketAddrV4, desired: Option<SocketAddrV4>, exact: bool) -> Config {
    let mut cfg = Config::new(proto, local, super::nonce::nonce_for(proto, local), sys::random_u64());
    cfg.lifetime = LIFETIME_S;
    if let Some(d) = desired {
        cfg.suggested_ip = Some(*d.ip());
        cfg.suggested_port = d.port();
    }
    cfg.prefer_failure = exact && desired.is_some();
    cfg
}

/// Runs `client`'s first MAP on the connected socket `fd`, at most `bound`.
pub fn run(client: &mut MapClient, fd: c_int, bound: Duration) -> Outcome {
    let start = Instant::now();
    let end = start + bound;
    let mut out = client.start(start);
    // Each round sends, reads or fires a timer, and the time bound ends it;
    // the count bounds it as well.
    for _ in 0..256 {
        if super::wire::send(fd, &out).is_err() {
            return Outcome::Silent(NoAnswer::Refused);
        }
        match out.events.first() {
            Some(Event::Mapped { external, lifetime, via }) => return Outcome::Mapped { external: *external, lifetime: *lifetime, via: *via },
            Some(Event::Refused { code, .. }) => return Outcome::Refused(*code),
            Some(Event::GaveUp | Event::Deleted) => return Outcome::Silent(NoAnswer::Timeout),
            None => {}
        }
        if Instant::now() >= end {
            break;
        }
        let wake = client.next_deadline().map_or(end, |d| d.min(end));
        out = match sys::wait_fd(fd, libc::POLLIN, wake) {
            Ok(_) => match super::wire::drain(fd, client, Instant::now()) {
                Ok(out) => out,
                Err(libc::ECONNREFUSED) => return Outcome::Silent(NoAnswer::Refused),
                Err(e) => return Outcome::Silent(NoAnswer::Io(e)),
            },
            Err(libc::ETIMEDOUT) => client.poll_timeout(Instant::now()),
            Err(e) => return Outcome::Silent(NoAnswer::Io(e)),
        };
    }
    Outcome::Silent(NoAnswer::Timeout)
}

/// Whether a refusal means the port asked for cannot be had (the `bind` of a
/// pinned socket then fails with EADDRINUSE) rather than no mapping at all.
pub fn port_unavailable(code: Refusal) -> bool {
    match code {
        Refusal::Pcp(c) => matches!(c, Pcp::CannotProvideExternal | Pcp::NoResources | Pcp::UserExQuota),
        Refusal::NatPmp(c) => c == proto::natpmp::ResultCode::OutOfResources,
    }
}

/// DPF's `forward::request` for a standard gateway: see the module docs.
pub fn request(fd: c_int, proto: Proto, pinned: Option<SocketAddrV4>) -> Result<SocketAddrV4, NotForwarded> {
    let bound = sys::local_addr(fd).map_err(NotForwarded::Other)?;
    if bound.ip().is_loopback() || bound.port() == 0 || crate::dpf::state::with(|st| st.forward_of(fd).is_some()) {
        return Err(NotForwarded::Other(libc::EINVAL));
    }
    let unreachable = NotForwarded::Other(libc::EADDRNOTAVAIL);
    let gateway = super::wire::gateway().ok_or(unreachable)?;
    let (sock, towards) = crate::client::exchange::open(gateway).map_err(|e| {
        log!(Warn, "cannot reach gateway {gateway} to map {proto} {bound}: {}", std::io::Error::from_raw_os_error(e));
        unreachable
    })?;
    let local = if bound.ip().is_unspecified() { SocketAddrV4::new(*towards.ip(), bound.port()) } else { bound };
    let desired = ask::desired(proto, local, pinned);
    let mut cfg = config(proto, local, desired, pinned.is_some());
    cfg.pcp_retry = CALL_RETRY;
    cfg.natpmp_retry = CALL_RETRY;
    let mut client = MapClient::new(cfg);
    let outcome = run(&mut client, sock.raw(), CALL_BOUND);
    let unforwarded = if pinned.is_some() { "the bind fails" } else { "the socket works on its local address" };
    let (public, lifetime, via) = match outcome {
        Outcome::Mapped { external, lifetime, via } => (external, lifetime, via),
        Outcome::Refused(code) => {
            log!(Warn, "gateway {gateway} refused to map {proto} {local}: {code}; {unforwarded}");
            return Err(if port_unavailable(code) { NotForwarded::PortUnavailable } else { unreachable });
        }
        Outcome::Silent(why) => {
            // The gateway may have mapped it and the answer been lost.
            let _ = super::wire::send(sock.raw(), &client.delete(Instant::now()));
            let ms = CALL_BOUND.as_millis();
            log!(Warn, "gateway {gateway} did not map {proto} {local} ({}; asked by {} for {ms} ms); {unforwarded}", why.describe(), client.via());
            return Err(unreachable);
        }
    };
    log!(Info, "gateway {gateway} answered {via} version {}: {proto} {local} mapped to {public} for {lifetime} s", super::wire::version(via));
    if let Some(asked) = pinned.filter(|p| !crate::client::pinned::matches(*p, public)) {
        log!(Warn, "gateway {gateway} maps {proto} {local} at {public}, not {asked}; the bind fails");
        client.set_retry(super::side::WIND_RETRY, super::side::WIND_RETRY);
        let _ = super::wire::send(sock.raw(), &client.delete(Instant::now()));
        return Err(NotForwarded::PortUnavailable);
    }
    let bound_there = if pinned.is_some() { ", the address the program bound" } else { "" };
    log!(Info, "registered {proto} {local} as {public}{bound_there}");
    client.set_retry(Retry::PCP, Retry::NATPMP);
    let (inode, v6) = super::wire::identity(fd);
    let mapping = Mapping { client, inode, v6, restart_at: None, failures: 0 };
    let mgmt_fd = crate::internal::adopt(sock.into_raw());
    crate::dpf::public::KNOWN.learn(*public.ip());
    crate::dpf::state::with(|st| {
        st.add(Forward { fds: vec![fd], proto, bound, local, public, mgmt_fd, shared: false, pcp: Some(Box::new(mapping)) });
        fdtable::set(fd, ask::kind_of(proto));
        crate::dpf::inherit::publish(st);
    });
    crate::dpf::state::ensure_responder();
    Ok(public)
}

/// Asks the gateway its public address (NAT-PMP opcode 0) and learns it as
/// its whole list; why not, if it did not say.
pub fn ask_public() -> Result<(), String> {
    let gateway = super::wire::gateway().ok_or("no gateway")?;
    let (sock, _) = crate::client::exchange::open(gateway).map_err(|e| format!("cannot reach it: {}", std::io::Error::from_raw_os_error(e)))?;
    let request = proto::natpmp::encode_request(&proto::natpmp::Request::PublicAddress);
    let end = Instant::now() + CALL_BOUND;
    let mut wait = Duration::from_millis(250);
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        let _ = crate::client::exchange::send_datagram(sock.raw(), &request);
        let until = (Instant::now() + wait).min(end);
        wait *= 2;
        while sys::wait_fd(sock.raw(), libc::POLLIN, until).is_ok() {
            // SAFETY: a live buffer of the given length.
            let n = unsafe { crate::real::recv(sock.raw(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                return match crate::guard::errno() {
                    libc::EAGAIN | libc::EINTR => continue,
                    libc::ECONNREFUSED => Err(NoAnswer::Refused.describe()),
                    e => Err(NoAnswer::Io(e).describe()),
                };
            }
            if let Ok(proto::natpmp::Response { body: proto::natpmp::Body::PublicAddress(ip), result, .. }) = proto::natpmp::decode_response(&buf[..n as usize]) {
                if result != proto::natpmp::ResultCode::Success {
                    return Err(format!("it answered {result}"));
                }
                log!(Debug, "gateway {gateway}'s public address is {ip}");
                crate::dpf::public::KNOWN.learn_all(&[ip]);
                return Ok(());
            }
        }
    }
    Err("no answer".into())
}

#[cfg(test)]
#[path = "map_tests.rs"]
mod tests;
