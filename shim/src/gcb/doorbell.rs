//! Doorbells: how a parked connection reaches the right `accept`.
//!
//! Once the responder has established a brokered connection and parked it
//! (`park`), it rings a doorbell: a TCP connection to the listener's own
//! address (127.0.0.1 for a wildcard bind) from a source address in
//! **127.71.0.0/16, a range the shim reserves**: connections from it to a
//! managed listener are taken as doorbells and never reach the application.
//! The kernel queues the doorbell like any connection, so select, poll, epoll
//! (level or edge), a library's own event loop, and establishment order work
//! without the shim faking readiness (docs/gcb-client-design.md).
//!
//! The doorbell carries one fixed-size [`Record`] naming the park and the
//! key; `accept` reads it, takes the parked connection, and puts it on the fd
//! number the kernel returned. Its codec, with the byte layout, is
//! `proto::gcb::doorbell`, where it is fuzzed.
//!
//! The ringing side keeps its end until the accepting side closes the doorbell
//! (the end of stream says the record was taken) or the listener goes (a
//! reset): a listener whose accept queue is full may have answered with a SYN
//! cookie, so the connect completes here while the kernel over there has
//! dropped the connection; the record, retransmitted by an open socket,
//! recreates it once there is room, but a closed one can deliver just the end
//! of stream. A doorbell waits in the queue as long as the program takes to
//! accept, as a connection in the backlog does: no deadline once its record is
//! sent.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libc::c_int;

pub use proto::gcb::doorbell::{Record, RECORD_LEN};

use crate::client::family::Family;
use super::registry::bells::PendingBell;
use super::registry::Registry;
use crate::client::sys;
use crate::real;

/// Doorbells are rung from here; the kernel picks the port.
pub const SOURCE: Ipv4Addr = Ipv4Addr::new(127, 71, 0, 1);
/// How long a doorbell may wait for room in the listener's accept queue
/// before its record is sent: the kernel's SYN retries go on about as long.
const ROOM_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether a connection from `ip` is a doorbell (the reserved 127.71.0.0/16).
pub fn is_doorbell_peer(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 127 && o[1] == 71
}

/// Rings the doorbell for `record` at `target` (under the registry lock:
/// nothing here waits). A loopback connect with room in the queue is complete
/// before `connect` returns, so the record usually goes at once; else the
/// responder sends it once the socket is writable ([`progress`]). False if it
/// could not be rung at all.
pub fn ring(reg: &mut Registry, target: SocketAddrV4, record: &Record, now: Instant) -> bool {
    let bytes = record.encode();
    let started = sys::socket(libc::SOCK_STREAM, true, true).and_then(|s| {
        sys::bind_as(s.raw(), Family::V4, SocketAddrV4::new(SOURCE, 0))?;
        sys::ack_with_first_data(s.raw());
        sys::connect_start(s.raw(), Family::V4, target)?;
        Ok(s)
    });
    let s = match started {
        Ok(s) => s,
        Err(e) => {
            rang_in_vain(target, e);
            return false;
        }
    };
    let fd = crate::internal::adopt(s.into_raw());
    let mut bell = PendingBell { fd, key: record.key, record: bytes, target, sent: false, deadline: Some(now + ROOM_TIMEOUT) };
    if send_record(&mut bell).is_err() {
        crate::internal::release(fd);
        return false;
    }
    if !bell.sent {
        log!(Debug, "doorbell at {target} waits for room in the accept queue");
    }
    reg.bells.push(bell);
    true
}

/// Sends the record if the connect is complete; `Err` if it failed.
fn send_record(b: &mut PendingBell) -> Result<(), sys::Errno> {
    // SAFETY: a live buffer of the given length; non-blocking.
    let n = unsafe { real::send(b.fd, b.record.as_ptr().cast(), RECORD_LEN, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n == RECORD_LEN as isize {
        b.sent = true;
        b.deadline = None;
        return Ok(());
    }
    match crate::guard::errno() {
        // Still connecting: sent once writable.
        libc::EAGAIN | libc::ENOTCONN if n < 0 => Ok(()),
        e if n < 0 => {
            rang_in_vain(b.target, e);
            Err(e)
        }
        // A partial send of 42 bytes on a fresh socket does not happen.
        _ => Err(libc::EIO),
    }
}

fn rang_in_vain(target: SocketAddrV4, e: sys::Errno) {
    let e = std::io::Error::from_raw_os_error(e);
    log!(Warn, "cannot ring the doorbell of the listener at {target}: {e}; a brokered connection is lost");
}

/// The responder's work on doorbell `fd`, ready with `revents`: send the
/// record once connected; let go once the accepting side is done with it.
pub fn progress(reg: &mut Registry, fd: c_int, revents: i16) {
    let Some(i) = reg.bells.iter().position(|b| b.fd == fd) else { return };
    let b = &mut reg.bells[i];
    let done = if b.sent {
        // The end of stream (or a reset): the accepting side took it, or the
        // listener is gone.
        revents != 0
    } else {
        match sys::get_int_opt(b.fd, libc::SOL_SOCKET, libc::SO_ERROR) {
            Ok(0) if revents & libc::POLLOUT != 0 => send_record(b).is_err(),
            Ok(0) => false,
            Ok(e) | Err(e) => {
                rang_in_vain(b.target, e);
                true
            }
        }
    };
    if done {
        let b = reg.bells.swap_remove(i);
        crate::internal::release(b.fd);
        reg.parked.let_go(b.key);
    }
}

/// Gives up on doorbells that found no room in their listener's queue in time.
pub fn on_timers(reg: &mut Registry, now: Instant) {
    let (late, keep): (Vec<PendingBell>, Vec<PendingBell>) = reg.bells.drain(..).partition(|b| b.deadline.is_some_and(|d| now >= d));
    reg.bells = keep;
    for b in late {
        rang_in_vain(b.target, libc::ETIMEDOUT);
        crate::internal::release(b.fd);
        reg.parked.let_go(b.key);
    }
}

/// The earliest deadline of a doorbell waiting for room.
pub fn next_deadline(reg: &Registry) -> Option<Instant> {
    reg.bells.iter().filter_map(|b| b.deadline).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::sys::Sock;
    use proto::gcb::doorbell::Park;

    /// A listener whose accept queue is full: the doorbell waits for room,
    /// then its record arrives intact, and the ringing side lets go once the
    /// accepting side has closed the doorbell.
    #[test]
    fn a_doorbell_waits_for_room_in_a_full_accept_queue() {
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
            key: 0x1122_3344_5566_7788,
            park: Park { pid: 1, nonce: 2 },
            peer: "198.51.100.10:40000".parse().unwrap(),
            proxy: "203.0.113.10:20001".parse().unwrap(),
        };
        assert!(crate::gcb::state::with(|reg| ring(reg, target, &record, Instant::now())));
        let mine = |reg: &Registry| reg.bells.iter().filter(|b| b.target == target).map(|b| (b.fd, b.events())).collect::<Vec<_>>();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = None;
        let mut accepted = Vec::new();
        while Instant::now() < deadline {
            let bells = crate::gcb::state::with(|reg| mine(reg));
            if got.is_some() && bells.is_empty() {
                break;
            }
            let mut pfds: Vec<libc::pollfd> = bells.iter().map(|&(fd, events)| libc::pollfd { fd, events, revents: 0 }).collect();
            unsafe { real::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 50) };
            for p in pfds.iter().filter(|p| p.revents != 0) {
                crate::gcb::state::with(|reg| progress(reg, p.fd, p.revents));
            }
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
        assert!(crate::gcb::state::with(|reg| mine(reg)).is_empty(), "the ringing side let go");
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
