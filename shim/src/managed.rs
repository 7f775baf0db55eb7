//! What the hooks do with the fds the shim tracks: the seam between the thin
//! hooks in `hooks/` and the GCB client in [`crate::gcb`].
//!
//! Hooks call `managed::NAME` with the arguments of the real `NAME` whenever the
//! fd table says the call involves an fd the shim tracks, and the real function
//! otherwise. Which kinds leave the fast path for which call is listed in
//! [`crate::fdtable`]; in short:
//!
//! * listeners (`Managed`): `listen`, `accept`, names, dups and close, and every
//!   wait of the process runs the AEH; their data calls pass through (a listening
//!   TCP socket carries no data);
//! * connections the shim names (`Named`): names, dups and close;
//! * connector candidates (`Watched`): `listen`, `connect`, `epoll_ctl`, dups and close.

use libc::{c_int, sockaddr, socklen_t};

pub use crate::gcb::connector::connect;
pub use crate::gcb::fdops::{close, dup, duplicated, epoll_ctl, fcntl, fcntl64, forget};
pub use crate::gcb::identity::{getpeername, getsockname};
pub use crate::gcb::listener::{accept4, listen};
pub use crate::gcb::waits::{epoll_pwait, epoll_pwait2, epoll_wait, poll, ppoll, pselect, select};
pub use crate::real::{
    bind, getsockopt, read, readv, recv, recvfrom, recvmmsg, recvmsg, send, sendmmsg, sendmsg, sendto,
    setsockopt, shutdown, write, writev,
};

/// `accept` of a managed listener: `accept4` without flags.
///
/// # Safety
///
/// The C contract of `accept`.
pub unsafe fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    accept4(fd, addr, len, 0)
}
