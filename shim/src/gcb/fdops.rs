//! What closing and duplicating does to the fds the GCB client knows: listeners
//! (`Managed`), named connections (`Named`) and connector candidates (`Watched`).
//!
//! * `dup`, `dup2`, `dup3` and `fcntl(F_DUPFD*)` make the new fd name the same
//!   thing as the old: another fd of the same listener record, a copy of the
//!   names, or another watched socket.
//! * Closing an fd forgets it (before the real close: once closed, the number can
//!   be reused at once by another thread). Closing a listener's last fd in this
//!   process closes its management socket, and sends `Unregister` (one datagram,
//!   no wait) unless the listener is shared with another process (after `fork`,
//!   `exec`, `SCM_RIGHTS`): the broker retires a holder whose socket is gone,
//!   and drops the registration with its last holder.
//! * `close_range` and `closefrom` by the application run the same logic for every
//!   such fd in the range (see `internal`).
//!
//! The hooks themselves (`close`, `dup`, `fcntl`) are `managed`'s, the same in
//! both modes; they call [`forget`] and [`duplicated`] here.

use libc::{c_int, epoll_event};

use super::mgmt;
use super::registry::{Listener, Registry, Removed};
use crate::fdtable::{self, Kind};
use crate::guard::ErrnoGuard;
use crate::real;

/// Drops what the client knows about `fd`, which is being closed or replaced.
pub fn forget(fd: c_int) {
    let _errno = ErrnoGuard::new();
    match fdtable::kind(fd) {
        Kind::Plain | Kind::Internal => {}
        // A socket never put in an epoll set (the usual case: bound to find a
        // free port, then closed) has no record to drop, and takes no lock.
        Kind::Watched if !super::interest::maybe_recorded(fd) => {
            fdtable::replace(fd, Kind::Watched, Kind::Plain);
        }
        Kind::Watched => super::state::with(|reg| unwatch(reg, fd)),
        Kind::Connecting => super::state::with(|reg| {
            super::connecting::cancel(reg, fd);
            reg.interest.take(fd);
            fdtable::set(fd, Kind::Plain);
        }),
        Kind::WatchedUdp => {
            fdtable::replace(fd, Kind::WatchedUdp, Kind::Plain);
        }
        Kind::Named | Kind::Managed => {
            let removed = super::state::with(|reg| {
                // The socket's last fd: its channel goes (before its registration may).
                if let Some(sock) = reg.udp.remove(fd) {
                    if let Some(c) = sock.channel {
                        super::udp::channel::close(reg, sock.listener, c);
                    }
                }
                let removed = reg.remove_fd(fd);
                super::connecting::cancel(reg, fd);
                fdtable::set(fd, Kind::Plain);
                if matches!(removed, Removed::Last(_) | Removed::Alias) {
                    super::inherit::publish(reg);
                }
                removed
            });
            if let Removed::Last(l) = removed {
                wind_up(l);
            }
        }
    }
}

/// The listener's last fd in this process is gone: its management socket is
/// closed, and, unless another process may hold the listener too, this
/// process unregisters it. A shared listener is left to the broker, which
/// retires a holder whose socket is gone (at its next command, or when its
/// heartbeats stop): an `Unregister` here could remove a registration that a
/// process which received the listener (`SCM_RIGHTS`, `fork`) has not joined
/// yet.
fn wind_up(mut l: Box<Listener>) {
    if !l.shared {
        mgmt::send_unregister(&mut l);
        // Only TCP re-listens are remembered: the table is keyed by local
        // address alone, and a UDP socket's old port means nothing to TCP.
        if let (Some(proxy), proto::Proto::Tcp) = (l.proxy, l.proto) {
            super::state::with(|reg| reg.released.remember(l.reg_local, proxy));
        }
    }
    if l.mgmt.fd >= 0 {
        crate::internal::release(l.mgmt.fd);
    }
}

/// Which listeners [`leave_all`] leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// The process exits: every one.
    All,
    /// The process replaces its image: those whose every fd closes on exec;
    /// the others are the new image's, shared with it.
    ClosedOnExec,
}

/// This process stops holding its listeners (it exits, or replaces its
/// image): one `Unregister` for each it alone holds, as [`wind_up`].
pub fn leave_all(which: Leaving) {
    let inherited = |fd: c_int| {
        // SAFETY: F_GETFD takes no argument.
        let fl = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
        fl >= 0 && fl & libc::FD_CLOEXEC == 0
    };
    super::state::with(|reg| {
        for (_, l) in reg.listeners_mut() {
            if which == Leaving::ClosedOnExec && l.fds.iter().any(|&fd| inherited(fd)) {
                l.shared = true;
                continue;
            }
            if !l.shared {
                mgmt::send_unregister(l);
                l.joined = false;
            }
        }
    });
}

/// A watched socket stops being a candidate (connected directly, or closed).
pub fn unwatch(reg: &mut Registry, fd: c_int) {
    reg.interest.take(fd);
    fdtable::replace(fd, Kind::Watched, Kind::Plain);
}

/// An fd the kernel just handed out must start plain, whatever a missed close
/// left in the table.
pub fn unmark(reg: &mut Registry, fd: c_int) {
    reg.remove_fd(fd);
    reg.udp.remove(fd);
    super::registry::connects::keep_error(fd, 0);
    fdtable::set(fd, Kind::Plain);
}

/// `new` was just made a duplicate of `old`: it names what `old` names.
pub fn duplicated(old: c_int, new: c_int) {
    if old == new {
        return;
    }
    let _errno = ErrnoGuard::new();
    match fdtable::kind(old) {
        kind @ (Kind::Watched | Kind::WatchedUdp) => {
            fdtable::set(new, kind);
        }
        kind @ (Kind::Named | Kind::Managed) => super::state::with(|reg| {
            let udp = reg.udp.alias(old, new);
            if reg.alias(old, new) || udp {
                fdtable::set(new, kind);
                if kind == Kind::Managed {
                    super::inherit::publish(reg);
                }
            }
        }),
        // A dup of a placeholder stays one (`connecting`, limits).
        Kind::Plain | Kind::Internal | Kind::Connecting => {}
    }
}

/// `epoll_ctl` on a watched socket: the registration is recorded, so it can be
/// restored if a reversed connect swaps the socket (see `interest`).
///
/// The call and its record are one step under the registry lock, the lock
/// the responder swaps a connecting socket under (`connecting`). Made outside
/// it, a swap could fall between the two: it would find no record to re-add,
/// and the program's registration would close with the placeholder, its
/// connect never reported (an edge-triggered loop then waits for ever).
/// `epoll_ctl` does not block, so it may run under the lock.
///
/// # Safety
///
/// The C contract of `epoll_ctl`.
pub unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> c_int {
    let mut done = None;
    // A panic before the real call leaves `done` empty, and the call is made
    // below; one in the record leaves the real result standing (`hook`, rule 4).
    crate::guard::bookkeep(|| {
        super::state::with(|reg| {
            let r = real::epoll_ctl(epfd, op, fd, event);
            done = Some((r, crate::guard::errno()));
            if r == 0 {
                let ev = (!event.is_null()).then(|| {
                    let e = std::ptr::read_unaligned(event);
                    (e.events, e.u64)
                });
                reg.interest.record(epfd, op, fd, ev);
            }
        })
    });
    match done {
        Some((r, e)) => {
            crate::guard::set_errno(e);
            r
        }
        None => real::epoll_ctl(epfd, op, fd, event),
    }
}
