//! What the hooks do with the fds the shim tracks: the seam between the thin
//! hooks in `hooks/` and the client of this process's mode, GCB ([`crate::gcb`])
//! or DPF ([`crate::dpf`]). The modes are exclusive, so each function here picks
//! one by [`dpf::enabled`] (one relaxed load) and the clients never meet.
//!
//! Hooks call `managed::NAME` with the arguments of the real `NAME` whenever the
//! fd table says the call involves an fd the shim tracks (or, for `bind`,
//! `listen` and `connect`, whenever DPF is on), and the real function otherwise.
//! Which kinds leave the fast path for which call is listed in
//! [`crate::fdtable`]; in short:
//!
//! * listeners (`Managed`): `listen`, `accept`, names, dups and close, and every
//!   wait of the process runs the AEH; their data calls pass through (a listening
//!   TCP socket carries no data);
//! * connections the shim names (`Named`, also DPF's forwarded UDP sockets):
//!   names, dups and close;
//! * connector candidates (`Watched`): `listen`, `connect`, `epoll_ctl`, dups and close.

use libc::{c_int, c_ulong, epoll_event, fd_set, nfds_t, pollfd, sigset_t, sockaddr, socklen_t, timespec, timeval};

use crate::{dpf, gcb};

pub use crate::gcb::fdops::epoll_ctl;
pub use crate::real::{
    getsockopt, read, readv, recv, recvfrom, recvmmsg, recvmsg, send, sendmmsg, sendmsg, sendto, setsockopt, shutdown,
    write, writev,
};

/// Defines `managed::NAME` as the DPF or the GCB version, by mode.
macro_rules! by_mode {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $dpf:path, $gcb:path;)*) => {$(
        /// The DPF or GCB version of the call, by mode.
        ///
        /// # Safety
        ///
        /// The C contract of the libc function of the same name.
        #[allow(clippy::missing_safety_doc, unused_unsafe)]
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            if dpf::enabled() {
                unsafe { $dpf($($arg),*) }
            } else {
                unsafe { $gcb($($arg),*) }
            }
        }
    )*};
}

by_mode! {
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int = dpf::ops::bind, crate::real::bind;
    fn listen(fd: c_int, backlog: c_int) -> c_int = dpf::ops::listen, gcb::listener::listen;
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int = dpf::ops::accept4, gcb::listener::accept4;
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int = dpf::ops::connect, gcb::connector::connect;
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int = dpf::ops::getsockname, gcb::identity::getsockname;
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int = dpf::ops::getpeername, gcb::identity::getpeername;
    fn close(fd: c_int) -> c_int = dpf::ops::close, gcb::fdops::close;
    fn dup(fd: c_int) -> c_int = dpf::ops::dup, gcb::fdops::dup;
    fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int = dpf::ops::fcntl, gcb::fdops::fcntl;
    fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int = dpf::ops::fcntl64, gcb::fdops::fcntl64;
    fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int = dpf::waits::poll, gcb::waits::poll;
    fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const timespec, sigmask: *const sigset_t) -> c_int = dpf::waits::ppoll, gcb::waits::ppoll;
    fn select(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *mut timeval) -> c_int = dpf::waits::select, gcb::waits::select;
    fn pselect(nfds: c_int, r: *mut fd_set, w: *mut fd_set, e: *mut fd_set, timeout: *const timespec, sigmask: *const sigset_t) -> c_int = dpf::waits::pselect, gcb::waits::pselect;
    fn epoll_wait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int) -> c_int = dpf::waits::epoll_wait, gcb::waits::epoll_wait;
    fn epoll_pwait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int, sigmask: *const sigset_t) -> c_int = dpf::waits::epoll_pwait, gcb::waits::epoll_pwait;
    fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: *const timespec, sigmask: *const sigset_t) -> c_int = dpf::waits::epoll_pwait2, gcb::waits::epoll_pwait2;
}

/// Drops what the mode's client knows about `fd` (closed, or replaced).
pub fn forget(fd: c_int) {
    if dpf::enabled() {
        dpf::ops::forget(fd)
    } else {
        gcb::fdops::forget(fd)
    }
}

/// `new` was just made a duplicate of `old`.
pub fn duplicated(old: c_int, new: c_int) {
    if dpf::enabled() {
        dpf::ops::duplicated(old, new)
    } else {
        gcb::fdops::duplicated(old, new)
    }
}

/// `accept` of a managed listener: `accept4` without flags.
///
/// # Safety
///
/// The C contract of `accept`.
pub unsafe fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    accept4(fd, addr, len, 0)
}
