//! Doorbells: how a connection the shim must make reaches the right `accept`.
//!
//! When the broker asks a listener to dial (`ReverseConnect`, `RelayConnect`) and
//! the AEH that reads the command is not inside `accept` on that listener, it
//! rings a doorbell: a TCP connection to the listener's own address (127.0.0.1
//! for a wildcard bind) from a source address in **127.71.0.0/16, a range the
//! shim reserves**: connections from it to a managed listener are taken as
//! doorbells and never reach the application. The kernel queues the doorbell like
//! any connection, so select, poll, epoll (level or edge) and establishment order
//! work without the shim faking readiness (docs/gcb-client-design.md).
//!
//! The doorbell carries one fixed-size [`Record`]; `accept` reads it, dials, and
//! puts the dialed connection on the fd number the kernel returned. Its codec,
//! with the byte layout, is `proto::gcb::doorbell`, where it is fuzzed.
//!
//! The secret (random per listener, inherited with it) keeps other local
//! processes, which can also connect from 127.71.0.0/16, from making the
//! listener dial where they like.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libc::c_int;

pub use proto::gcb::doorbell::{Dial, Record, RECORD_LEN};

use super::family::Family;
use super::registry::ListenerId;
use super::sys;

/// Doorbells are rung from here; the kernel picks the port.
pub const SOURCE: Ipv4Addr = Ipv4Addr::new(127, 71, 0, 1);
/// How long a doorbell may wait for room in the listener's accept queue: the
/// kernel's SYN retries 1, 3, 7 and 15 s after the first, as long as a connector
/// waits for its reversed connection (`dial::PAIR_TIMEOUT`).
const RING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long ringing may hold up the application's call; a loopback connect with
/// room in the queue takes microseconds.
const QUICK_RING: Duration = Duration::from_millis(20);

/// Whether a connection from `ip` is a doorbell (the reserved 127.71.0.0/16).
pub fn is_doorbell_peer(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 127 && o[1] == 71
}

/// A connection to make, as the AEH hands it on: dial now inside `accept`, or ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub listener: ListenerId,
    /// Where the listener's doorbells go.
    pub target: SocketAddrV4,
    pub record: Record,
}

/// A doorbell the AEH still looks after: an internal fd, connecting (waiting for
/// POLLOUT, then the record is sent) or sent (waiting for POLLIN: the end of
/// stream that says the accepting side has taken the record and closed it).
///
/// The ringing side must not close before that: a listener whose accept queue is
/// full may have answered with a SYN cookie, so the connect completes here while
/// the kernel over there has dropped the connection; the record, retransmitted
/// by an open socket, recreates it once there is room, but a closed one can
/// deliver just the end of stream.
#[derive(Debug)]
pub struct PendingBell {
    pub fd: c_int,
    /// The command's token: a connection dialed ahead for it (`predial`) goes
    /// when the bell does.
    pub token: proto::gcb::Token,
    pub record: [u8; RECORD_LEN],
    pub target: SocketAddrV4,
    pub sent: bool,
    pub deadline: Instant,
}

impl PendingBell {
    /// The poll events the AEH waits for on it.
    pub fn events(&self) -> i16 {
        if self.sent {
            libc::POLLIN
        } else {
            libc::POLLOUT
        }
    }
}

/// Rings the doorbell for `job`: connects to the listener from [`SOURCE`], sends
/// the record, and leaves the rest to the AEH ([`progress`]), bounded by
/// [`RING_TIMEOUT`]: a loopback connect completes at once unless the listener's
/// accept queue is full, and then the application's call is not held up while
/// the kernel retries. Failure is logged; the broker's side then times out.
///
/// The connection itself is dialed ahead first (`predial`), so its handshake
/// is under way while the doorbell is rung and answered.
pub fn ring(job: &Job) {
    super::predial::start(job);
    match start(job) {
        Ok(bell) => {
            if bell.sent {
                log!(Debug, "doorbell rung at {} for token {}", job.target, job.record.token);
            } else {
                log!(Debug, "doorbell at {} for token {} waits for room in the accept queue", job.target, job.record.token);
            }
            super::with(|reg| reg.bells.push(bell));
        }
        Err(e) => {
            rang_in_vain(job.target, e);
            super::with(|reg| super::predial::forget(reg, job.record.token));
        }
    }
}

fn rang_in_vain(target: SocketAddrV4, e: sys::Errno) {
    let e = std::io::Error::from_raw_os_error(e);
    log!(Warn, "cannot ring the doorbell of the listener at {target}: {e}; a brokered connection is lost");
}

fn start(job: &Job) -> Result<PendingBell, sys::Errno> {
    let s = sys::socket(libc::SOCK_STREAM, true, true)?;
    sys::bind_as(s.raw(), Family::V4, SocketAddrV4::new(SOURCE, 0))?;
    let record = job.record.encode();
    sys::ack_with_first_data(s.raw());
    sys::connect_start(s.raw(), Family::V4, job.target)?;
    // A loopback handshake with room in the accept queue is over before
    // `connect` returns, even when it says EINPROGRESS: the send goes at once,
    // with no wait for writability. Still not connected after the quick wait
    // inside (a full queue), the AEH sends once the socket is writable.
    let sent = match sys::send_all(s.raw(), &record, Instant::now() + QUICK_RING) {
        Ok(()) => true,
        Err(libc::ETIMEDOUT) => false,
        Err(e) => return Err(e),
    };
    // Kept for a while: protected from the application like any internal fd.
    let fd = crate::internal::adopt(s.into_raw());
    Ok(PendingBell { fd, token: job.record.token, record, target: job.target, sent, deadline: Instant::now() + RING_TIMEOUT })
}

/// AEH work on doorbells: sends the record on those that became writable, lets
/// go of those whose record was taken (`ready` are the fds polled with events),
/// and gives up on those past their deadline.
pub fn progress(ready: &[c_int], now: Instant) {
    let (due, expired) = super::with(|reg| {
        let (mut due, mut expired, mut keep) = (Vec::new(), Vec::new(), Vec::new());
        for b in reg.bells.drain(..) {
            if ready.contains(&b.fd) {
                due.push(b);
            } else if now >= b.deadline {
                expired.push(b);
            } else {
                keep.push(b);
            }
        }
        reg.bells = keep;
        (due, expired)
    });
    let mut still = Vec::new();
    let mut gone = Vec::new();
    for mut b in due {
        if b.sent {
            // The end of stream (or an error): the accepting side is done with it.
            crate::internal::release(b.fd);
            gone.push(b.token);
            continue;
        }
        let sent = match sys::get_int_opt(b.fd, libc::SOL_SOCKET, libc::SO_ERROR) {
            Ok(0) => sys::send_all(b.fd, &b.record, now + QUICK_RING),
            Ok(e) | Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                log!(Debug, "doorbell rung at {} after a wait", b.target);
                b.sent = true;
                b.deadline = now + RING_TIMEOUT;
                still.push(b);
            }
            Err(e) => {
                rang_in_vain(b.target, e);
                crate::internal::release(b.fd);
                gone.push(b.token);
            }
        }
    }
    for b in expired {
        if !b.sent {
            rang_in_vain(b.target, libc::ETIMEDOUT);
        }
        crate::internal::release(b.fd);
        gone.push(b.token);
    }
    if !still.is_empty() || !gone.is_empty() {
        super::with(|reg| {
            reg.bells.extend(still);
            gone.into_iter().for_each(|t| super::predial::forget(reg, t));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::sys::Sock;

    /// A listener whose accept queue is full: the doorbell waits for room in the
    /// AEH, then its record arrives intact, and the ringing side lets go once the
    /// accepting side has closed the doorbell.
    #[test]
    fn a_doorbell_waits_for_room_in_a_full_accept_queue() {
        use crate::real;
        let l = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        sys::bind(l.raw(), "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(unsafe { real::listen(l.raw(), 1) }, 0);
        let target = sys::local_addr(l.raw()).unwrap();
        let fillers: Vec<Sock> = (0..4)
            .map(|_| {
                let c = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
                let _ = sys::connect(c.raw(), target, Instant::now());
                c
            })
            .collect();
        let record = Record {
            secret: 0x1122_3344_5566_7788,
            token: proto::gcb::Token(0xdead_beef),
            dial: Dial::Relay { broker: "203.0.113.10:65432".parse().unwrap() },
            peer: "198.51.100.10:40000".parse().unwrap(),
            proxy: "203.0.113.10:20001".parse().unwrap(),
        };
        // No such listener: nothing is dialed ahead (`predial`) towards the record's broker.
        let job = Job { listener: ListenerId::MAX, target, record };
        ring(&job);
        let mine = |reg: &crate::gcb::registry::Registry| reg.bells.iter().filter(|b| b.target == target).map(|b| (b.fd, b.events())).collect::<Vec<_>>();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = None;
        let mut accepted = Vec::new();
        while Instant::now() < deadline {
            let bells = crate::gcb::with(|reg| mine(reg));
            if got.is_some() && bells.is_empty() {
                break;
            }
            let mut pfds: Vec<libc::pollfd> = bells.iter().map(|&(fd, events)| libc::pollfd { fd, events, revents: 0 }).collect();
            unsafe { real::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 50) };
            let ready: Vec<c_int> = pfds.iter().filter(|p| p.revents != 0).map(|p| p.fd).collect();
            progress(&ready, Instant::now());
            // The application drains its queue slowly.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let n = unsafe { real::accept4(l.raw(), (&mut sin as *mut libc::sockaddr_in).cast(), &mut sl, libc::SOCK_CLOEXEC) };
            if n >= 0 {
                let c = Sock::from_raw(n);
                let peer = unsafe { sys::from_sockaddr((&sin as *const libc::sockaddr_in).cast(), sl) }.unwrap();
                if is_doorbell_peer(*peer.ip()) {
                    let mut buf = [0u8; RECORD_LEN];
                    sys::recv_exact(c.raw(), &mut buf, Instant::now() + Duration::from_secs(10)).unwrap();
                    got = Record::decode(&buf);
                    drop(c); // closing it tells the ringing side it can let go
                } else {
                    accepted.push(c);
                }
            }
        }
        assert_eq!(got, Some(record), "the record arrived");
        assert!(crate::gcb::with(|reg| mine(reg)).is_empty(), "the ringing side let go");
        drop(fillers);
    }

    #[test]
    fn the_reserved_range() {
        assert!(is_doorbell_peer(SOURCE));
        assert!(is_doorbell_peer(Ipv4Addr::new(127, 71, 255, 3)));
        assert!(!is_doorbell_peer(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(!is_doorbell_peer(Ipv4Addr::new(10, 71, 0, 1)));
    }
}
