//! The connector's rendezvous connection, opened beside its `Connect`
//! (`Features::PUNCH_EARLY`, docs/hole-punching.md, "The connector's
//! rendezvous comes with its Connect"). Waiting for the broker's decision
//! before dialing its rendezvous cost a punched connect a round trip to the
//! broker, and the TCP handshake another: here the connection starts with
//! the `Connect`, and with TCP Fast Open its hello rides in the SYN. The
//! hello cannot carry the token, which the broker mints when it decides: it
//! is an early hello naming the `Connect`'s request id, a random number the
//! caller chose for it, by which the broker finds the `Connect`. A broker
//! that does not punch the connect, or does not know the feature, leaves
//! the connection unused, and it is closed.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};

use proto::gcb::punch::PunchHello;

use super::sock::{rendezvous, send_whole, Held};
use crate::client::family::Family;
use crate::client::sys::{self, Errno};

/// Early connections a process keeps waiting for their decision at once: a
/// burst of connects beyond it goes the ordinary way, which opens its
/// rendezvous only for connects the broker punches, so a burst does not hold
/// a socket per connect on top of its placeholder (`internal::reserve_room`).
const MAX_WAITING: usize = 64;

/// Early connections waiting for their decision now.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// One of [`WAITING`], given back when the decision came (the connection
/// went on to the session, or was closed).
#[derive(Debug)]
struct Waiting;

impl Waiting {
    fn take() -> Option<Waiting> {
        WAITING.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_WAITING).then_some(n + 1)).ok().map(|_| Waiting)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection, and whether its hello is said.
#[derive(Debug)]
pub struct Early {
    pub(super) sock: Held,
    pub(super) local: SocketAddrV4,
    /// The broker's rendezvous.
    pub(super) via: SocketAddrV4,
    pub(super) said_hello: bool,
    _waiting: Waiting,
}

impl Early {
    /// Starts the connection to the broker's rendezvous `via`, from a port
    /// of the kernel's choosing, for the `Connect` that goes as `request_id`.
    /// With a Fast Open cookie for the broker the kernel defers the SYN to
    /// the first write, and the early hello goes with it; without one the
    /// handshake runs now, and the hello, with the token, waits for the
    /// decision.
    /// `EAGAIN` when [`MAX_WAITING`] are waiting already.
    pub fn open(fam: Family, via: SocketAddrV4, request_id: u64) -> Result<Early, Errno> {
        let waiting = Waiting::take().ok_or(libc::EAGAIN)?;
        let (s, deferred) = rendezvous(fam, via)?;
        let sock = Held::adopt(s);
        let local = sys::local_addr(sock.raw())?;
        let mut early = Early { sock, local, via, said_hello: false, _waiting: waiting };
        if deferred {
            let hello = PunchHello::early(request_id, local);
            early.said_hello = send_whole(early.sock.raw(), &hello.to_bytes()).is_ok();
        }
        Ok(early)
    }

    /// The program `dup2`ed onto this internal fd and the shim moved it to
    /// `new`; false if it is not `old`.
    pub fn renumber(&mut self, old: libc::c_int, new: libc::c_int) -> bool {
        self.sock.renumber(old, new)
    }

    /// Says the early hello on a connection whose handshake the kernel runs
    /// (no Fast Open cookie), once it is up: what Fast Open does in the SYN.
    #[cfg(test)]
    pub fn say_early_hello_now(&mut self, request_id: u64) {
        sys::wait_fd(self.sock.raw(), libc::POLLOUT, std::time::Instant::now() + std::time::Duration::from_secs(5)).unwrap();
        let hello = PunchHello::early(request_id, self.local);
        send_whole(self.sock.raw(), &hello.to_bytes()).unwrap();
        self.said_hello = true;
    }

    /// The socket's own address.
    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }
}

/// Destinations whose last connect was not punched with the early
/// rendezvous (a public or same-realm listener, a pair on the relay, an
/// older broker): their next connects for a minute do not open one, which
/// would only cost the broker a connection it holds for nothing.
#[derive(Debug, Default)]
pub struct NotEarly(Vec<(SocketAddrV4, std::time::Instant)>);

impl NotEarly {
    const FOR: std::time::Duration = std::time::Duration::from_secs(60);
    const MAX: usize = 64;

    pub fn skips(&self, dest: SocketAddrV4, now: std::time::Instant) -> bool {
        self.0.iter().any(|(d, until)| *d == dest && now < *until)
    }

    /// What the broker decided for a connect to `dest` that offered it.
    pub fn note(&mut self, dest: SocketAddrV4, punched_early: bool, now: std::time::Instant) {
        self.0.retain(|(d, until)| *d != dest && now < *until);
        if !punched_early {
            if self.0.len() >= Self::MAX {
                self.0.remove(0);
            }
            self.0.push((dest, now + Self::FOR));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_destination_not_punched_early_is_skipped_for_a_minute() {
        let (t0, dest, other) = (Instant::now(), "203.0.113.10:20001".parse().unwrap(), "203.0.113.10:20002".parse().unwrap());
        let mut n = NotEarly::default();
        assert!(!n.skips(dest, t0));
        n.note(dest, false, t0);
        assert!(n.skips(dest, t0 + Duration::from_secs(59)) && !n.skips(other, t0));
        assert!(!n.skips(dest, t0 + Duration::from_secs(60)), "tried again after the minute");
        n.note(dest, true, t0);
        assert!(!n.skips(dest, t0), "an early punch clears it");
        for port in 0..100 {
            n.note(SocketAddrV4::new([198, 51, 100, 1].into(), port), false, t0);
        }
        assert_eq!(n.0.len(), NotEarly::MAX, "bounded");
    }
}
