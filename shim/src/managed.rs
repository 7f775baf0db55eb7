//! What the hooks do with managed fds: application sockets under GCB or DPF
//! ([`crate::fdtable::Kind::Managed`]).
//!
//! This is the seam the GCB and DPF clients fill in. Hooks call `managed::NAME` with
//! the arguments of the real `NAME` whenever the call involves a managed fd, and the
//! real function otherwise. Nothing marks an fd managed yet, so the entries below
//! are the real functions re-exported; replacing one with a function of the same
//! signature is all a hook needs to change behaviour.

use libc::c_int;

use crate::fdtable::{self, Kind};
use crate::real;

pub use crate::real::{
    accept, accept4, bind, connect, dup, epoll_ctl, epoll_pwait, epoll_pwait2, epoll_wait, fcntl,
    fcntl64, getpeername, getsockname, getsockopt, listen, poll, ppoll, pselect, read, readv, recv,
    recvfrom, recvmmsg, recvmsg, select, send, sendmmsg, sendmsg, sendto, setsockopt, shutdown,
    write, writev,
};

/// Drops the shim's knowledge of `fd`, which the application is closing or
/// replacing. Called before the fd is closed: once closed, its number can be
/// reused (and marked) by another thread at once.
pub fn forget(fd: c_int) {
    fdtable::set(fd, Kind::Plain);
}

/// `close` of a managed fd.
///
/// # Safety
///
/// The C contract of `close`.
pub unsafe fn close(fd: c_int) -> c_int {
    forget(fd);
    real::close(fd)
}

/// Runs before every `exec*` hook hands over to the real call. The new image has to
/// learn which inherited fds are managed (DESIGN.md, "Management sockets"); with no
/// managed fds there is nothing to tell it.
///
/// It may run in a `vfork` child, which shares the parent's memory: it must not
/// take locks or leave shared state changed for the parent.
pub fn before_exec() {}
