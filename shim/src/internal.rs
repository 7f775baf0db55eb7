//! The shim's own fds (the log file, GCB management sockets): where they are
//! placed, and how they survive an application that closes or reuses fds wholesale.
//!
//! docs/design.md ("Management sockets and the shim's own fds") asks that
//! internal fds be CLOEXEC, sit at high numbers, and be
//! protected from the application's `close`, `close_range`, `closefrom` and `dup2`.
//! Daemons routinely close every fd from 3 up at start and `dup2` onto fixed
//! numbers, so without this the shim would lose its sockets, or worse, write its
//! lines into whatever file the application opened on the reused number.
//!
//! The application's view: an internal fd is not open. `close` on it fails with
//! `EBADF`; range closes skip it; `dup2` onto it succeeds after the shim has moved
//! its fd out of the way. Those calls are decided one layer up, in
//! [`crate::reclaim`], which knows the owners an fd is moved for; this module
//! only places and marks the fds.

use std::ffi::CStr;
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

use libc::{c_int, c_ulong};

use crate::fdtable::{self, Kind};
use crate::guard::{errno, set_errno, ErrnoGuard};
use crate::real;

/// The lowest number for internal fds: high, but inside both the table and the
/// soft `RLIMIT_NOFILE` (above which `F_DUPFD` fails).
fn high_base() -> c_int {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 { rl.rlim_cur } else { 1024 };
    let soft = soft.min(fdtable::CAPACITY as libc::rlim_t);
    // Three quarters of the limit leaves the top for the application's own
    // high-number tricks; 1000 keeps it below select()'s FD_SETSIZE of 1024.
    (soft * 3 / 4).clamp(3, 1000) as c_int
}

/// [`high_base`] as last computed (0: not yet). Brokered connections adopt fds
/// on their way, so the limit is not asked again each time; a limit lowered
/// since shows as EINVAL, and the base is computed again.
static HIGH_BASE: AtomicI32 = AtomicI32::new(0);

/// Duplicates `fd` to a high, CLOEXEC number; `None` if the table of open files is full.
pub fn dup_high(fd: c_int) -> Option<c_int> {
    let dup = |base: c_int| {
        // SAFETY: fcntl on an fd we own; the third argument is an int for F_DUPFD_CLOEXEC.
        unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, base as c_ulong) }
    };
    let cached = HIGH_BASE.load(Relaxed);
    let mut high = if cached > 0 { dup(cached) } else { -1 };
    if cached == 0 || (high < 0 && errno() == libc::EINVAL) {
        let base = high_base();
        HIGH_BASE.store(base, Relaxed);
        high = dup(base);
    }
    (high >= 0).then_some(high)
}

/// Internal fds a process may hold above the high base before the kernel
/// grows its fd table again.
const ROOM: c_int = 1024;

/// Grows the process's fd table now to cover the numbers internal fds take,
/// before the responder thread exists. The kernel grows a table shared by
/// several threads only after an RCU grace period (milliseconds on a busy
/// machine), during which every thread that opens an fd waits: done here,
/// while the process may still be single-threaded, the program's `connect`
/// and `accept` never meet that wait on the shim's account.
pub fn reserve_room(fd: c_int) {
    let base = match HIGH_BASE.load(Relaxed) {
        0 => high_base(),
        b => b,
    };
    let _errno = ErrnoGuard::new();
    // SAFETY: duplicating our own fd, then closing the duplicate.
    unsafe {
        let top = real::fcntl(fd, libc::F_DUPFD_CLOEXEC, (base + ROOM) as c_ulong);
        if top >= 0 {
            real::close(top);
        }
    }
}

/// Takes `fd` (just opened by the shim) as internal: moved to a high number, marked.
/// Returns the fd to use from now on.
pub fn adopt(fd: c_int) -> c_int {
    let _errno = ErrnoGuard::new();
    let fd = match dup_high(fd) {
        Some(high) => {
            // SAFETY: `fd` is ours and now duplicated.
            unsafe { real::close(fd) };
            high
        }
        // Keep it where it is: still protected, only lower than we like.
        None => fd,
    };
    fdtable::set(fd, Kind::Internal);
    fd
}

/// Sends the log's further lines to the file at `path` (appending, created
/// 0644), on an internal fd. On failure returns the `errno` of `open`, and
/// lines keep going where they went.
pub fn open_log(path: &CStr) -> Result<(), c_int> {
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: a valid C string; `open` is not hooked.
    let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644 as libc::c_uint) };
    if fd < 0 {
        return Err(errno());
    }
    let old = crate::log::use_fd(adopt(fd));
    // A second open happens only in a child that forked while the parent was
    // initialising; the inherited fd is then ours to drop.
    if old != libc::STDERR_FILENO {
        release(old);
    }
    Ok(())
}

/// Closes an internal fd the shim no longer needs.
pub fn release(fd: c_int) {
    let _errno = ErrnoGuard::new();
    fdtable::set(fd, Kind::Plain);
    // SAFETY: `fd` is ours.
    unsafe { real::close(fd) };
}

/// `close` on an internal fd: as if it were not open, and it stays open.
pub fn refuse_close() -> c_int {
    set_errno(libc::EBADF);
    -1
}
