//! The connector's hidden listener, on which a reversed connection arrives: its
//! address goes out in every `Connect`, before the broker has decided.
//!
//! Making one costs six system calls (socket, bind, option, listen, name,
//! close) on every brokered connect, though only reversals use it. So a
//! process keeps one spare between connects, in the registry ([`Spare`]):
//! `spare::take` lends it to one connect at a time (a concurrent connect, in another
//! thread, makes a listener of its own), and `spare::give_back` returns it after a
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
use crate::client::family::Family;
use crate::client::sys::{self, Errno};
use crate::fdtable::{self, Kind};
use crate::guard::errno;
use crate::real;

/// How long a connection taken from a listener that defers accepting may take
/// to show its 16-byte hello: it came in one segment with the handshake's last
/// ACK, so it is there at once unless the connection is a silent one.
pub const DEFERRED_HELLO_WAIT: Duration = Duration::from_millis(100);

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

    /// Whether it can take the place of a socket of `family` on `ip`.
    pub fn fits(&self, ip: Ipv4Addr, family: Family) -> bool {
        *self.at.ip() == ip && self.family == family
    }

    /// Taken from the spare slot for a connect: the application may see it.
    pub fn lend(&self) {
        fdtable::set(self.fd, Kind::Plain);
    }

    /// Kept spare: the shim's own fd, at a high number from the first time on.
    pub fn keep(&mut self) {
        if !self.adopted {
            self.fd = crate::internal::adopt(self.fd);
            self.adopted = true;
        }
        fdtable::set(self.fd, Kind::Internal);
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
        let _errno = crate::guard::ErrnoGuard::new();
        // Plain again, then closed: right whether it was spare (internal) or lent.
        crate::internal::release(self.fd);
    }
}

/// The registry's slot for the spare listener.
pub type Spare = Option<TempListener>;

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

pub fn open(ip: Ipv4Addr, family: Family) -> Result<TempListener, Errno> {
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
