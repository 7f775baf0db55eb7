//! DPF through a standard gateway (issue 14): with `DPF_INAGENT=pcp://[IP][:PORT]`
//! the DPF client asks a PCP server (RFC 6887), or a NAT-PMP one (RFC 6886),
//! for its forwards instead of dpfd. miniupnpd on a Linux, OpenWrt or pfSense
//! gateway, and dpfd itself, answer both. The records, names, dups, closes and
//! hand-overs are the DPF client's ([`super::state`], [`super::ops`]); what
//! changes is who makes the forward and how it is kept:
//!
//! * **Making it** ([`map`]): `bind` (UDP) and `listen` (TCP) run a PCP MAP,
//!   or NAT-PMP after UNSUPP_VERSION, through `proto::portmap::MapClient` in
//!   the calling thread, bounded by [`CALL_BOUND`]; a refusal or silence
//!   leaves the socket on its local address after one warning line naming
//!   the result code.
//! * **Keeping it** ([`serve`]): the responder thread drives every
//!   mapping's client (renewals between 1/2 and 5/8 of the lifetime, a new
//!   MAP when an answer's epoch or an ANNOUNCE on 224.0.0.1:5350 shows the
//!   gateway lost its state, [`announce`]), and maps afresh, every
//!   [`RETRY`], one the gateway stopped renewing.
//! * **Ending it** ([`wind`]): a delete (lifetime 0) when the socket's last
//!   fd closes in the last process that holds it. A gateway cannot probe a
//!   process as dpfd does, so a process that closes a socket another may hold
//!   (after `fork` or `exec`) asks the kernel whether the socket lives on
//!   ([`holders`]) and deletes only if it does not; every holder renews
//!   meanwhile, with the mapping's one nonce. A process killed outright
//!   deletes nothing: its mappings end with their lease ([`LIFETIME_S`]),
//!   unless a process of the same user maps the same address again first,
//!   which renews it: the nonce is derived from the user's secret and the
//!   address ([`nonce`]).
//!
//! The gateway is `DPF_INAGENT`'s IP, or the default route's gateway
//! ([`route`]), looked up once per process image. `docs/dpf-standard-gateway.md`
//! says why it is done this way.

pub mod announce;
pub mod holders;
pub mod map;
pub mod nonce;
pub mod route;
pub mod serve;
pub mod side;
pub mod wind;

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
        None => match route::default_gateway() {
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
