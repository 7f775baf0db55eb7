//! Talking to the gateway: its address (`DPF_INAGENT`'s, or the default
//! route's), the timing of a mapping's calls, and the datagrams on a
//! connected socket to it; with the small facts about a socket the other
//! `pcp` modules need (its identity, the protocol version it was mapped in).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use once_cell::race::OnceBox;
use proto::portmap::{MapClient, Output, Retry};

use crate::config::{self, Mode};
use crate::client::sys::{self, Errno};
use crate::real;

/// The lease asked for. Short, since a process killed outright cannot
/// delete its mappings (module docs); renewed at 5 to 6 minutes.
pub const LIFETIME_S: u32 = 600;
/// How long `bind` or `listen` waits for the gateway.
pub const CALL_BOUND: Duration = Duration::from_millis(1500);
/// The retransmissions inside that bound (RFC 6887 §8.1.1 with its MRD set
/// to the bound): sent at about 0, 0.25 and 0.75 s (and about 1.36 s when
/// the jitter draws low each time). The RFC's IRT of 3 s
/// suits a client in the background; one holding up an application's call
/// for at most 1.5 s would send once and never again.
pub const CALL_RETRY: Retry = Retry {
    initial: Duration::from_millis(250),
    max_interval: Duration::from_secs(1),
    max_attempts: 0,
    max_duration: CALL_BOUND,
};
/// How often a mapping the gateway refused to renew, or stopped answering
/// for, is asked for again while its socket lives.
pub const RETRY: Duration = Duration::from_secs(60);

static GATEWAY: OnceBox<Option<SocketAddrV4>> = OnceBox::new();

/// The gateway's PCP address; `None` if `pcp://` names none and there is no
/// default route (said once, in a warning).
pub fn gateway() -> Option<SocketAddrV4> {
    *GATEWAY.get_or_init(|| Box::new(resolve()))
}

fn resolve() -> Option<SocketAddrV4> {
    let Mode::Pcp(gw) = config::get().mode else { return None };
    let ip = match gw.ip {
        Some(ip) => ip,
        None => match super::route::default_gateway() {
            Ok(ip) => {
                log!(Debug, "the default gateway is {ip}");
                ip
            }
            Err(why) => {
                log!(Warn, "DPF_INAGENT=pcp:// names no gateway and {why}; sockets are not mapped");
                return None;
            }
        },
    };
    Some(SocketAddrV4::new(ip, gw.port))
}

/// A random mapping nonce (RFC 6887 §11.1), where no derived one can be had.
pub fn nonce() -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&sys::random_u64().to_ne_bytes());
    n[8..].copy_from_slice(&sys::random_u64().to_ne_bytes()[..4]);
    n
}

/// Sends `out`'s datagrams on the connected socket `fd`; ECONNREFUSED (nothing
/// listens on the gateway's port) if the kernel says so.
pub fn send(fd: c_int, out: &Output) -> Result<(), Errno> {
    for d in &out.send {
        if let Err(libc::ECONNREFUSED) = crate::client::exchange::send_datagram(fd, d) {
            return Err(libc::ECONNREFUSED);
        }
    }
    Ok(())
}

/// Feeds what the connected socket `fd` holds to `client`; the outputs, or the
/// socket's error (ECONNREFUSED: nothing listens at the gateway's port).
pub fn drain(fd: c_int, client: &mut MapClient, now: Instant) -> Result<Output, Errno> {
    let mut all = Output::default();
    let mut buf = [0u8; 1100];
    // A few datagrams at most; bounded all the same.
    for _ in 0..16 {
        // SAFETY: a live buffer of the given length.
        let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return match crate::guard::errno() {
                libc::EAGAIN | libc::EINTR => Ok(all),
                e => Err(e),
            };
        }
        let out = client.on_datagram(&buf[..n as usize], now);
        all.send.extend(out.send);
        all.events.extend(out.events);
    }
    Ok(all)
}

/// The socket's inode and whether it is AF_INET6, for [`holders`].
pub fn identity(fd: c_int) -> (u64, bool) {
    // SAFETY: fstat fills the struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let inode = if unsafe { libc::fstat(fd, &mut st) } == 0 { st.st_ino } else { 0 };
    let v6 = sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) == Ok(libc::AF_INET6);
    (inode, v6)
}

/// The protocol version a gateway answered in, for the log (PCP 2, NAT-PMP 0).
pub fn version(via: proto::portmap::Via) -> u8 {
    match via {
        proto::portmap::Via::Pcp => proto::pcp::VERSION,
        proto::portmap::Via::NatPmp => proto::natpmp::VERSION,
    }
}
