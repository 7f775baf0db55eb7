//! The application's closes and dups that meet fds the shim owns or tracks:
//! `dup2`/`dup3` onto one, and `close_range`/`closefrom` over them.
//!
//! The shim's own fds (`internal`) are invisible to the application, so these
//! calls step around them, or move them out of the way and tell their owner
//! (the log, the responder, the client of this process's mode); tracked fds in
//! the range are forgotten through [`managed::forget`]. This sits in the
//! dispatch layer because it calls into every owner; `internal` below it only
//! places and marks fds.

use libc::{c_int, c_uint};

use crate::fdtable::{self, Kind, TABLE};
use crate::guard::ErrnoGuard;
use crate::{internal, managed, real};

/// Runs a `dup2` or `dup3` of `old` onto `new`, keeping the table right for `new`:
/// an internal fd there is moved away first, a tracked one is forgotten once it
/// has been replaced, and `new` then names what `old` names.
pub fn dup_onto(old: c_int, new: c_int, dup: impl FnOnce() -> c_int) -> c_int {
    // A vfork child's dups act on its own fd table only (`process`).
    if old == new || crate::process::borrowed() {
        // dup2 does nothing and dup3 fails; either way `new` is untouched.
        return dup();
    }
    if fdtable::kind(new) == Kind::Internal {
        evacuate(new);
    }
    let result = dup();
    if result >= 0 {
        managed::forget(new);
        managed::duplicated(old, new);
    }
    result
}

/// Moves internal fd `fd` to another number because the application is about to
/// take its number.
fn evacuate(fd: c_int) {
    let _errno = ErrnoGuard::new();
    let moved = internal::dup_high(fd);
    if let Some(moved) = moved {
        fdtable::set(moved, Kind::Internal);
    }
    // Every owner of internal fds gets asked in turn: the log, then the GCB client's
    // management sockets. Without a new fd the log falls back to stderr rather than
    // write into the application's file; a management socket without one is lost
    // to its listener, whose heartbeats then stop.
    let owned = crate::log::replace_fd(fd, moved.unwrap_or(libc::STDERR_FILENO))
        || moved.is_some_and(|m| crate::responder::wake_fd_moved(fd, m))
        || moved.is_some_and(|m| if crate::dpf::mode::enabled() { crate::dpf::lifecycle::internal_fd_moved(fd, m) } else { crate::gcb::lifecycle::internal_fd_moved(fd, m) });
    if let (false, Some(moved)) = (owned, moved) {
        internal::release(moved);
    }
    fdtable::set(fd, Kind::Plain);
    match moved {
        Some(moved) => log!(Debug, "internal fd {fd} moved to {moved}: the application dup2()s onto it"),
        None => log!(Warn, "internal fd {fd} given up: the application dup2()s onto it, no fd is free"),
    }
}

/// `close_range` when some fds are marked: internal fds are cut out of the range,
/// tracked ones are forgotten (unless the call only sets CLOEXEC), which runs their
/// close logic (a listener's last fd unregisters).
pub fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let known = libc::CLOSE_RANGE_UNSHARE | libc::CLOSE_RANGE_CLOEXEC;
    // A vfork child (Python's subprocess closes the inherited fds there)
    // closes its own copies, the shim's included, and changes no record of
    // its parent's (`process`).
    if first > last || (flags as c_uint) & !known != 0 || crate::process::borrowed() {
        // Invalid: let the real call report it, before anything is closed.
        // SAFETY: plain pass-through.
        return unsafe { real::close_range(first, last, flags) };
    }
    let closing = (flags as c_uint) & libc::CLOSE_RANGE_CLOEXEC == 0;
    let mut from = first;
    for (fd, kind) in TABLE.marked_in(first, last) {
        let fd = fd as c_uint;
        match kind {
            Kind::Internal => {
                if from < fd {
                    // SAFETY: a sub-range of the caller's request.
                    let r = unsafe { real::close_range(from, fd - 1, flags) };
                    if r < 0 {
                        return r;
                    }
                }
                from = fd + 1;
            }
            _ if closing => managed::forget(fd as c_int),
            _ => {}
        }
    }
    if from > last {
        return 0;
    }
    // SAFETY: the rest of the caller's request.
    unsafe { real::close_range(from, last, flags) }
}

/// `closefrom` when some fds are marked; see [`close_range`].
pub fn closefrom(lowfd: c_int) {
    if crate::process::borrowed() {
        // SAFETY: plain pass-through in a vfork child (see `close_range`).
        return unsafe { real::closefrom(lowfd) };
    }
    let mut from = lowfd.max(0) as c_uint;
    for (fd, kind) in TABLE.marked_in(from, c_uint::MAX) {
        let fd = fd as c_uint;
        match kind {
            Kind::Internal => {
                close_gap(from, fd);
                from = fd + 1;
            }
            _ => managed::forget(fd as c_int),
        }
    }
    // `from` is at most one past an fd in the table, so it fits a c_int.
    // SAFETY: the open-ended rest of the caller's request.
    unsafe { real::closefrom(from as c_int) }
}

/// Closes `from..end` as `closefrom` would: with `close_range`, or one by one where
/// the kernel lacks it (before Linux 5.9).
fn close_gap(from: c_uint, end: c_uint) {
    if from >= end {
        return;
    }
    // closefrom reports nothing, and the one-by-one fallback sets EBADF for every
    // fd that was not open.
    let _errno = ErrnoGuard::new();
    // SAFETY: a sub-range of the caller's request.
    if unsafe { real::close_range(from, end - 1, 0) } < 0 {
        for fd in from..end {
            // SAFETY: as above; `end` is inside the table, so `fd` fits a c_int.
            unsafe { real::close(fd as c_int) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pipe ends moved to fds at 5000 and up, far from any other test's fds, since
    /// range closes reach whatever lies in the range. The soft `RLIMIT_NOFILE`
    /// is raised to let them exist: an ordinary user's is often 1024, and this
    /// test must run (not skip) as any user (`scripts/test --unit`).
    fn high_fds(n: usize) -> Vec<c_int> {
        let need = 5000 + 2 * n as libc::rlim_t + 64;
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        if rl.rlim_cur < need {
            assert!(rl.rlim_max >= need, "this test needs RLIMIT_NOFILE {need}; the hard limit is {}", rl.rlim_max);
            rl.rlim_cur = need;
            // SAFETY: setrlimit reads the struct we pass; raising the soft
            // limit up to the hard one needs no privilege.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) }, 0);
        }
        let mut fds = Vec::new();
        while fds.len() < n {
            let mut p = [0; 2];
            // SAFETY: pipe writes two fds into `p`.
            assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
            for fd in p {
                // SAFETY: our own fds.
                let high = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, 5000) };
                assert!(high >= 5000);
                unsafe { real::close(fd) };
                fds.push(high);
            }
        }
        fds.sort();
        fds
    }

    fn is_open(fd: c_int) -> bool {
        // SAFETY: F_GETFD only queries.
        unsafe { real::fcntl(fd, libc::F_GETFD, 0) >= 0 }
    }

    #[test]
    fn range_closes_skip_internal_and_forget_managed() {
        let fds = high_fds(6);
        let (internal, managed) = (fds[2], fds[4]);
        fdtable::set(internal, Kind::Internal);
        fdtable::set(managed, Kind::Managed);
        let (lo, hi) = (fds[0] as c_uint, fds[5] as c_uint);

        assert_eq!(close_range(lo, hi, libc::CLOSE_RANGE_CLOEXEC as c_int), 0);
        assert!(fds.iter().all(|&fd| is_open(fd)), "CLOEXEC mode closes nothing");
        assert_eq!(fdtable::kind(managed), Kind::Managed, "and forgets nothing");

        assert_eq!(close_range(lo, hi, 0), 0);
        assert!(is_open(internal), "the internal fd survives");
        assert_eq!(fdtable::kind(managed), Kind::Plain, "the managed fd is forgotten");
        let closed: Vec<_> = fds.iter().filter(|&&fd| fd != internal).map(|&fd| is_open(fd)).collect();
        assert_eq!(closed, vec![false; 5], "everything else is closed");

        crate::guard::set_errno(0);
        assert_eq!(internal::refuse_close(), -1);
        assert_eq!(crate::guard::errno(), libc::EBADF);
        internal::release(internal);
        assert!(!is_open(internal) && fdtable::kind(internal) == Kind::Plain);
    }

    #[test]
    fn invalid_close_range_fails_like_the_kernel() {
        crate::guard::set_errno(0);
        assert_eq!(close_range(10, 5, 0), -1);
        assert_eq!(crate::guard::errno(), libc::EINVAL);
        assert_eq!(close_range(5, 10, 0x4000), -1);
        assert_eq!(crate::guard::errno(), libc::EINVAL);
    }
}
