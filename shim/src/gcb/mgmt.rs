//! Management sockets: the UDP conversation between a listener and its broker.
//!
//! Each registered listener has one management socket, a UDP socket connected to
//! the broker (paper 4.2.1: it shares the listener's fate). Over it go the
//! listener's requests (`Register`, `Heartbeat`, `Unregister`), numbered and
//! retransmitted by the proto [`Requester`](proto::rudp::Requester), and the broker's commands
//! (`ReverseConnect`, `RelayConnect`), answered with `Ack` through the proto
//! [`ReplyCache`](proto::rudp::ReplyCache) so retransmissions are answered again
//! without being acted on twice.
//!
//! Two styles of exchange:
//! * [`exchange`] is blocking and bounded: `listen` registers this way, and the
//!   connector asks `Connect` this way on a socket of its own;
//! * everything else is asynchronous: [`start`] sends, and the responder feeds
//!   the socket's datagrams and its timers to [`super::mgmt_events`], which
//!   runs under the registry lock and only ever sends (non-blocking), never
//!   waits.
//!
//! A management socket is one process's own: every process that holds a
//! listener (after `fork`, `exec`, or receiving it over `SCM_RIGHTS`) opens
//! its own and registers the same local address from it, which the broker
//! takes as one more holder of the same registration ([`Listener::joined`]).
//! A holder heartbeats only once its own `Register` has been answered.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::gcb::{Decision, ErrorCode, Message, MgmtInfo};
use proto::rudp::RetryPolicy;
use proto::{Endpoint, Proto};

use super::registry::{Listener, ListenerId, Purpose, Registry};
use crate::client::seal;
use crate::client::sys;
use crate::config;

pub use crate::client::exchange::{new_requester, send_datagram, NoAnswer, DATAGRAM_MAX};

/// The GCB codec for [`crate::client::exchange`].
pub(crate) const CODEC: crate::client::exchange::Codec<Message> =
    crate::client::exchange::Codec { encode: seal::gcb_encode, decode: seal::gcb_decode, is_response: Message::is_response };

/// Sends `msg` to the broker and waits for the reply, retransmitting per
/// `policy` (see [`crate::client::exchange::exchange`]).
pub fn exchange(fd: c_int, peer: SocketAddrV4, policy: RetryPolicy, msg: &Message) -> Result<Message, NoAnswer> {
    crate::client::exchange::exchange(fd, peer, policy, &CODEC, msg)
}

/// [`exchange`] as request `id`.
pub fn exchange_as(fd: c_int, peer: SocketAddrV4, policy: RetryPolicy, msg: &Message, id: u64) -> Result<Message, NoAnswer> {
    crate::client::exchange::exchange_as(fd, peer, policy, &CODEC, msg, id)
}

extern "C" {
    /// glibc's name of the running program, without directories.
    static program_invocation_short_name: *const libc::c_char;
}

fn mgmt_info(mgmt_local: SocketAddrV4) -> MgmtInfo {
    // SAFETY: glibc sets it before main; a NUL-terminated string or null.
    let name = unsafe {
        let p = program_invocation_short_name;
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let secs = config::get().heartbeat.as_secs().min(u64::from(u16::MAX)) as u16;
    MgmtInfo { features: super::punch::offered_to_register(), ..MgmtInfo::new(mgmt_local, pid, secs, &name) }
}

/// The `Register` for a TCP listener or UDP socket known to the broker as `local`.
pub fn register_message(proto: Proto, local: SocketAddrV4, mgmt_local: SocketAddrV4, desired_port: Option<u16>) -> Message {
    Message::Register {
        proto,
        local,
        realm: config::get().realm.clone(),
        desired_port,
        port_required: false,
        mgmt: mgmt_info(mgmt_local),
    }
}

/// As [`register_message`], for a socket the application bound to the proxy
/// address itself: `port` (when not 0) is required, not preferred.
pub fn pinned_register_message(proto: Proto, local: SocketAddrV4, mgmt_local: SocketAddrV4, port: u16) -> Message {
    let desired_port = (port != 0).then_some(port);
    let mut msg = register_message(proto, local, mgmt_local, desired_port);
    if let Message::Register { port_required, .. } = &mut msg {
        *port_required = desired_port.is_some();
    }
    msg
}

/// Starts a request on `l`'s management socket; its reply comes through
/// [`mgmt_events::on_datagram`](super::mgmt_events::on_datagram).
pub fn start(l: &mut Listener, purpose: Purpose, msg: &Message, now: Instant) {
    let broker = l.mgmt.broker;
    match l.mgmt.requester.send(broker, now, |id| seal::gcb_encode(msg, id)) {
        Ok((id, bytes)) => {
            let _ = send_datagram(l.mgmt.fd, bytes);
            l.mgmt.pending.insert(id, purpose);
        }
        Err(e) => log!(Debug, "{purpose:?} to {broker} not sent: {e}"),
    }
}

/// Best effort, one datagram, no reply awaited: the listener is being closed.
pub fn send_unregister(l: &mut Listener) {
    // A `Register` still in flight may yet join: leave after it, in order.
    let holding = l.joined || register_pending(l);
    let Some(proxy) = l.proxy.filter(|_| l.mgmt.fd >= 0 && holding) else { return };
    let msg = Message::Unregister { proxy: Endpoint::new(l.proto, proxy) };
    if let Ok((id, bytes)) = l.mgmt.requester.send(l.mgmt.broker, Instant::now(), |id| seal::gcb_encode(&msg, id)) {
        let _ = send_datagram(l.mgmt.fd, bytes);
        l.mgmt.requester.cancel(id);
    }
    log!(Debug, "unregistered {} {proxy}", l.proto);
}

fn register_pending(l: &Listener) -> bool {
    l.mgmt.pending.values().any(|p| *p == Purpose::Register)
}

/// Sends `Register` for `l` again unless one is under way. From the same
/// management socket the broker answers with the registration it has (its
/// current proxy and `udp_token`), or makes a new one if it has none.
pub fn reregister(l: &mut Listener, now: Instant) {
    if !register_pending(l) {
        let msg = register_message(l.proto, l.reg_local, l.mgmt.local, l.proxy.map(|p| p.port()));
        start(l, Purpose::Register, &msg, now);
    }
}

/// Reads a `ConnectDecision` (or its refusal) from a connector's exchange.
pub fn decision_of(reply: Message) -> Result<Decision, Option<ErrorCode>> {
    match reply {
        Message::ConnectDecision(d) => Ok(d),
        Message::Error { code, detail } => {
            log!(Debug, "Connect refused: {code:?} {detail}");
            Err(Some(code))
        }
        _ => Err(None),
    }
}

/// Listener `id`'s broker has been silent past [`super::brokers::silence_limit`]: move it to the
/// next broker and register there. With nowhere to go, only restart the clock.
pub fn fail_over(reg: &mut Registry, id: ListenerId, now: Instant, interval: Duration) {
    let Some(old) = reg.listener(id).map(|l| l.mgmt.broker) else { return };
    let brokers = reg.brokers.loaded();
    brokers.mark_dead(old, now, interval);
    let next = brokers.after(old, now);
    let Some(l) = reg.listener_mut(id) else { return };
    let silent = now.saturating_duration_since(l.mgmt.heard);
    l.mgmt.heard = now;
    let Some(next) = next else { return };
    // A UDP connect only changes the socket's peer: it never blocks.
    let local = match sys::connect(l.mgmt.fd, next, now).and_then(|()| sys::local_addr(l.mgmt.fd)) {
        Ok(local) => local,
        Err(e) => {
            log!(Warn, "broker {old} silent for {}s; cannot move tcp {} to {next}: {}", silent.as_secs(), l.reg_local, std::io::Error::from_raw_os_error(e));
            return;
        }
    };
    log!(Warn, "broker {old} silent for {}s; {} {} moves to broker {next}", silent.as_secs(), l.proto, l.reg_local);
    l.mgmt.broker = next;
    l.mgmt.local = local;
    if l.local.ip().is_unspecified() {
        l.reg_local = SocketAddrV4::new(*local.ip(), l.local.port());
    }
    l.mgmt.requester = new_requester(proto::rudp::RetryPolicy::default());
    l.mgmt.pending.clear();
    l.mgmt.next_heartbeat = now + interval;
    l.joined = false;
    let msg = register_message(l.proto, l.reg_local, local, l.proxy.map(|p| p.port()));
    start(l, Purpose::Register, &msg, now);
}
