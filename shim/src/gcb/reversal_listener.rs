//! The connector's hidden listener, on which a reversed connection arrives: its
//! address goes out in every `Connect`, before the broker has decided.
//!
//! Making one costs six system calls (socket, bind, option, listen, name,
//! close) on every brokered connect, though only reversals use it. So a
//! process keeps one spare between connects, in the registry ([`Spare`]):
//! [`take`] lends it to one connect at a time (a concurrent connect, in another
//! thread, makes a listener of its own), and [`give_back`] returns it after a
//! connect that left nothing queued on it: a relay or direct connect that never
//! used it, or a reversal that took its connection. After a failed reversal the
//! listener's dial may still be on its way, so that listener is closed instead.
//!
//! Why this is safe:
//! * Tokens: a reversed connection is taken only with its connect's token
//!   (`dial::accept_reversed`), so a stray one on a reused listener is dropped,
//!   never handed to the wrong connect. With `TCP_DEFER_ACCEPT` a speaking
//!   connection is queued only once its hello is in, so a silent one that the
//!   kernel queues at the end of the defer period costs a short wait at most
//!   ([`TempListener::hello_wait`]), not a dial timeout.
//! * fork: a forked child closes its copy of the spare on its first use of the
//!   registry, so parent and child never both accept on one listening socket.
//!   A listener lent out at the fork stays with the parent's connect; the child
//!   has no thread to accept on it.
//! * exec: close-on-exec.
//! * The application: a spare is an internal fd (high, protected); one lent out
//!   is a plain fd of the shim's, as the throw-away listener was.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use libc::c_int;

use super::dial;
use super::family::Family;
use super::sys::{self, Errno};
use crate::fdtable::{self, Kind};
use crate::hook::errno;
use crate::real;

/// How long a connection taken from a listener that defers accepting may take
/// to show its 16-byte hello: it came in one segment with the handshake's last
/// ACK, so it is there at once unless the connection is a silent one.
const DEFERRED_HELLO_WAIT: Duration = Duration::from_millis(100);

/// A listener for reversed connections, owned by one connect or kept spare.
#[derive(Debug)]
pub struct TempListener {
    fd: c_int,
    /// Its address, sent to the broker as the connector's.
    pub at: SocketAddrV4,
    family: Family,
    /// `TCP_DEFER_ACCEPT` is on: accepted connections have spoken.
    deferred: bool,
    /// Moved to a high number once, when first kept spare.
    adopted: bool,
}

impl TempListener {
    pub fn raw(&self) -> c_int {
        self.fd
    }

    /// The wait for an accepted connection's hello: short when the kernel queues
    /// only connections that have spoken.
    pub fn hello_wait(&self) -> Duration {
        if self.deferred {
            DEFERRED_HELLO_WAIT
        } else {
            dial::DIAL_TIMEOUT
        }
    }
}

impl Drop for TempListener {
    fn drop(&mut self) {
        let _errno = crate::hook::ErrnoGuard::new();
        // Plain again, then closed: right whether it was spare (internal) or lent.
        crate::internal::release(self.fd);
    }
}

/// The registry's slot for the spare listener.
pub type Spare = Option<TempListener>;

/// A listener on `ip` of `family` (the application socket's, since the
/// connection it accepts takes that socket's place): the spare if it fits and
/// no other connect has it, else a new one.
pub fn take(ip: Ipv4Addr, family: Family) -> Result<TempListener, Errno> {
    let spare = super::with(|reg| match &reg.spare_listener {
        Some(t) if *t.at.ip() == ip && t.family == family => reg.spare_listener.take(),
        _ => None,
    });
    match spare {
        Some(t) => {
            fdtable::set(t.fd, Kind::Plain);
            Ok(t)
        }
        None => open(ip, family),
    }
}

/// Keeps `t` as the spare, after a connect that left nothing queued on it
/// (a spare already there, given back by a concurrent connect, is closed).
pub fn give_back(mut t: TempListener) {
    if !t.adopted {
        t.fd = crate::internal::adopt(t.fd);
        t.adopted = true;
    }
    fdtable::set(t.fd, Kind::Internal);
    // Dropped (closed) outside the lock if the slot is taken.
    let _other = super::with(|reg| reg.spare_listener.replace(t));
}

/// A forked child's copy of the spare is closed (module docs).
pub fn forget_in_child(spare: &mut Spare) {
    spare.take();
}

/// The spare moved from `old` to `new` (the application `dup2`ed onto its number).
pub fn moved(spare: &mut Spare, old: c_int, new: c_int) -> bool {
    match spare {
        Some(t) if t.fd == old => {
            t.fd = new;
            true
        }
        _ => false,
    }
}

fn open(ip: Ipv4Addr, family: Family) -> Result<TempListener, Errno> {
    let s = sys::socket_of(family, libc::SOCK_STREAM, true, true)?;
    sys::bind_as(s.raw(), family, SocketAddrV4::new(ip, 0))?;
    // Accept only once the listener's hello is in: one wake-up instead of two,
    // and a connection that never speaks (a stranger's, or a scan) is never taken.
    let deferred = sys::set_int_opt(
        s.raw(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        dial::PAIR_TIMEOUT.as_secs() as c_int,
    )
    .is_ok();
    // SAFETY: our socket.
    if unsafe { real::listen(s.raw(), 8) } < 0 {
        return Err(errno());
    }
    let at = sys::local_addr(s.raw())?;
    Ok(TempListener {
        fd: s.into_raw(),
        at,
        family,
        deferred,
        adopted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_is_lent_to_one_connect_at_a_time_and_kept_once() {
        let ip = Ipv4Addr::LOCALHOST;
        super::super::with(|reg| reg.spare_listener = None);
        let first = take(ip, Family::V4).unwrap();
        let second = take(ip, Family::V4).unwrap();
        assert_ne!(
            first.at, second.at,
            "a concurrent connect gets a listener of its own"
        );
        let second_at = second.at;
        give_back(first);
        let spare_fd =
            super::super::with(|reg| reg.spare_listener.as_ref().map(TempListener::raw)).unwrap();
        assert_eq!(
            fdtable::kind(spare_fd),
            Kind::Internal,
            "a spare is hidden from the application"
        );
        give_back(second);
        let again = take(ip, Family::V4).unwrap();
        assert_eq!(
            again.at, second_at,
            "the spare, the one given back last, is lent out again"
        );
        assert_eq!(fdtable::kind(again.raw()), Kind::Plain);
        assert_ne!(
            take(ip, Family::Mapped).unwrap().at,
            again.at,
            "another family gets its own"
        );
        assert!(
            again.hello_wait() <= DEFERRED_HELLO_WAIT,
            "this kernel defers accepting"
        );
        drop(again);
        super::super::with(|reg| forget_in_child(&mut reg.spare_listener));
        assert!(super::super::with(|reg| reg.spare_listener.is_none()));
    }
}
