//! Waiting for fds: `select`, `pselect`, `poll`, `ppoll`, the `epoll` family and the
//! fortified `__poll_chk` and `__ppoll_chk`.
//!
//! These are where the asynchronous event handler runs: an interposed wait also
//! waits on the management sockets and answers the broker (DESIGN.md, "The
//! asynchronous event handler"; `gcb::waits`). A wait matters to the shim only
//! once the process holds a registration (a managed fd), so the fast path is one
//! load of the table's managed count, whatever the number of fds waited on.
//! In DPF mode the waits are sliced instead, so the management sockets' probe
//! queues are swept while the process sleeps (`dpf::waits`).
//! `epoll_ctl` is recorded for watched sockets, which a reversed connect may swap.

use std::mem::size_of;

use libc::{c_int, epoll_event, fd_set, nfds_t, pollfd, size_t, sigset_t, timespec, timeval};

use super::fortify;
use crate::fdtable::{self, Kind};
use crate::{managed, real};

hook! {
    fn select(nfds: c_int, readfds: *mut fd_set, writefds: *mut fd_set, exceptfds: *mut fd_set, timeout: *mut timeval) -> c_int {
        real_unless!(shim_waits() => select(nfds, readfds, writefds, exceptfds, timeout))
    }
}

hook! {
    fn pselect(nfds: c_int, readfds: *mut fd_set, writefds: *mut fd_set, exceptfds: *mut fd_set, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
        real_unless!(shim_waits() => pselect(nfds, readfds, writefds, exceptfds, timeout, sigmask))
    }
}

hook! {
    fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
        real_unless!(shim_waits() => poll(fds, nfds, timeout))
    }
}

hook! {
    fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
        real_unless!(shim_waits() => ppoll(fds, nfds, timeout, sigmask))
    }
}

/// Whether waits are the shim's: GCB's AEH runs once a listener is managed; DPF
/// sweeps its management sockets while it holds forwards (`dpf::waits`).
#[inline]
fn shim_waits() -> bool {
    fdtable::any_managed() || crate::dpf::active()
}

/// glibc's check for the fortified polls: the array holds at least `nfds` entries.
fn pollfds_fit(nfds: nfds_t, fdslen: size_t) -> bool {
    (fdslen / size_of::<pollfd>()) as u64 >= nfds
}

hook! {
    /// `poll` compiled with `_FORTIFY_SOURCE`. Without managed fds, libc's own
    /// checked entry point runs, so the check is exactly glibc's. With them, the
    /// shim checks as glibc would, then takes the same path as `poll`.
    fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fdslen: size_t) -> c_int {
        if !shim_waits() {
            return real::__poll_chk(fds, nfds, timeout, fdslen);
        }
        fortify(pollfds_fit(nfds, fdslen));
        managed::poll(fds, nfds, timeout)
    }
}

hook! {
    /// `ppoll` compiled with `_FORTIFY_SOURCE`; see `__poll_chk`.
    fn __ppoll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t, fdslen: size_t) -> c_int {
        if !shim_waits() {
            return real::__ppoll_chk(fds, nfds, timeout, sigmask, fdslen);
        }
        fortify(pollfds_fit(nfds, fdslen));
        managed::ppoll(fds, nfds, timeout, sigmask)
    }
}

hook! {
    fn epoll_create(size: c_int) -> c_int {
        real::epoll_create(size)
    }
}

hook! {
    fn epoll_create1(flags: c_int) -> c_int {
        real::epoll_create1(flags)
    }
}

hook! {
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> c_int {
        real_unless!(fdtable::kind(fd) == Kind::Watched => epoll_ctl(epfd, op, fd, event))
    }
}

hook! {
    fn epoll_wait(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout: c_int) -> c_int {
        real_unless!(shim_waits() => epoll_wait(epfd, events, maxevents, timeout))
    }
}

hook! {
    fn epoll_pwait(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout: c_int, sigmask: *const sigset_t) -> c_int {
        real_unless!(shim_waits() => epoll_pwait(epfd, events, maxevents, timeout, sigmask))
    }
}

hook! {
    fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout: *const timespec, sigmask: *const sigset_t) -> c_int {
        real_unless!(shim_waits() => epoll_pwait2(epfd, events, maxevents, timeout, sigmask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pollfds_fit_matches_glibc() {
        let one = size_of::<pollfd>();
        assert!(pollfds_fit(0, 0));
        assert!(pollfds_fit(2, 2 * one));
        assert!(pollfds_fit(2, 3 * one - 1));
        assert!(!pollfds_fit(2, 2 * one - 1));
        assert!(!pollfds_fit(u64::MAX, usize::MAX));
    }
}
