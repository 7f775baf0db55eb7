//! What the hooks do with the fds the shim tracks: the seam between the thin
//! hooks in `hooks/` and the client of this process's mode, GCB ([`crate::gcb`])
//! or DPF ([`crate::dpf`]). The modes are exclusive, so each function here picks
//! one by [`dpf::mode::enabled`] (one relaxed load) and the clients never meet.
//!
//! Hooks call `managed::NAME` with the arguments of the real `NAME` when
//! [`crate::detour`] says the call goes through the shim, and the real function
//! when it bypasses it; which kinds of fd take which calls through is listed
//! there and in [`crate::fdtable`]. Past that decision, what remains here is the
//! choice of client, and for GCB's UDP sockets whether the registry holds the
//! socket (`gcb::udp::manages`), which needs the client's lock and so cannot
//! be part of the lock-free decision.

use libc::{c_int, c_uint, c_ulong, c_void, iovec, mmsghdr, msghdr, size_t, sockaddr, socklen_t, ssize_t, timespec};

use crate::client::pinned;
use crate::fdtable::{self, Kind};
use crate::guard::ErrnoGuard;
use crate::{dpf, gcb};

pub use crate::gcb::fdops::epoll_ctl;
pub use crate::real::{getsockopt, setsockopt, shutdown};

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
            if dpf::mode::enabled() {
                unsafe { $dpf($($arg),*) }
            } else {
                unsafe { $gcb($($arg),*) }
            }
        }
    )*};
}

/// `bind` of a socket the mode cares about. A refusal because the address is
/// not local may be a bind to the address this process reports, which the
/// mode then makes good (`client::pinned`); any other result is the real one.
///
/// # Safety
///
/// The C contract of `bind`.
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let saved = crate::guard::errno();
    let r = if dpf::mode::enabled() { dpf::ops::bind(fd, addr, len) } else { gcb::udp::bind(fd, addr, len) };
    if r == 0 || crate::guard::errno() != libc::EADDRNOTAVAIL {
        return r;
    }
    let Some(want) = pinned::candidate(addr, len) else { return -1 };
    let pinned = {
        let _errno = ErrnoGuard::new();
        if dpf::mode::enabled() {
            dpf::reported::pin(fd, want)
        } else {
            gcb::reported::pin(fd, want)
        }
    };
    pinned::answer(pinned, saved)
}

by_mode! {
    fn listen(fd: c_int, backlog: c_int) -> c_int = dpf::ops::listen, gcb::listener::listen;
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int = dpf::ops::accept4, gcb::accept::accept4;
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int = dpf::ops::connect, gcb_connect;
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int = dpf::ops::getsockname, gcb::identity::getsockname;
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int = dpf::ops::getpeername, gcb::identity::getpeername;
}

/// `connect` in GCB mode: UDP sockets through the receiver list, watched TCP
/// sockets through the connector, anything else (a listener) as it is.
unsafe fn gcb_connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if gcb::udp::sends_through(fd) {
        gcb::udp::send::connect(fd, addr, len)
    } else if crate::fdtable::kind(fd) == crate::fdtable::Kind::Watched || gcb::reported::turns_active(fd) {
        gcb::connector::connect(fd, addr, len)
    } else {
        crate::real::connect(fd, addr, len)
    }
}

/// Defines `managed::NAME` as `gcb::udp::MODULE::NAME` for the UDP sockets
/// GCB manages (or, for sends, watches) and the real call for any other fd.
macro_rules! udp_or_real {
    ($(fn $name:ident(fd: c_int $(, $arg:ident: $ty:ty)*) -> $ret:ty = $test:path, $module:ident;)*) => {$(
        /// The GCB UDP version of the call for the sockets it concerns, else the real one.
        ///
        /// # Safety
        ///
        /// The C contract of the libc function of the same name.
        #[allow(clippy::missing_safety_doc)]
        pub unsafe fn $name(fd: c_int $(, $arg: $ty)*) -> $ret {
            if $test(fd) {
                gcb::udp::$module::$name(fd $(, $arg)*)
            } else {
                crate::real::$name(fd $(, $arg)*)
            }
        }
    )*};
}

udp_or_real! {
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t = gcb::udp::manages, recv;
    fn readv(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t = gcb::udp::manages, recv;
    fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t = gcb::udp::manages, recv;
    fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addrlen: *mut socklen_t) -> ssize_t = gcb::udp::manages, recv;
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t = gcb::udp::manages, recv;
    fn recvmmsg(fd: c_int, msgvec: *mut mmsghdr, vlen: c_uint, flags: c_int, timeout: *mut timespec) -> c_int = gcb::udp::manages, recv;
    fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, addrlen: socklen_t) -> ssize_t = gcb::udp::sends_through, send;
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t = gcb::udp::sends_through, send;
    fn sendmmsg(fd: c_int, msgvec: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int = gcb::udp::sends_through, send;
}

/// Defines `managed::NAME` for the sends without a destination (`send`,
/// `write`, `writev`): the real call, and only when it fails, a look at
/// whether the error is a lost UDP channel's (`gcb::udp::channel::absorbs`),
/// which is not the application's: the datagram is then sent again.
macro_rules! send_on_channel {
    ($(fn $name:ident(fd: c_int $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {$(
        /// The real call; a lost channel's refusal absorbed (see above).
        ///
        /// # Safety
        ///
        /// The C contract of the libc function of the same name.
        #[allow(clippy::missing_safety_doc)]
        pub unsafe fn $name(fd: c_int $(, $arg: $ty)*) -> $ret {
            let saved = crate::guard::errno();
            let n = crate::real::$name(fd $(, $arg)*);
            if n >= 0 || dpf::mode::enabled() || !gcb::udp::channel::absorbs(fd, crate::guard::errno()) {
                return n;
            }
            crate::guard::set_errno(saved);
            crate::real::$name(fd $(, $arg)*)
        }
    )*};
}

send_on_channel! {
    fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t;
    fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t;
    fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t;
}

/// Drops what the mode's client knows about `fd` (closed, or replaced). Whatever
/// that does (a panic in it is contained), the table says `Plain` for `fd`
/// afterwards: once closed, the number is the next `open`'s, and must never
/// send that file's calls into the shim.
pub fn forget(fd: c_int) {
    let _ = crate::guard::bookkeep(|| {
        fault_point!("forget");
        if dpf::mode::enabled() {
            dpf::ops::forget(fd)
        } else {
            gcb::fdops::forget(fd)
        }
    });
    fdtable::set(fd, Kind::Plain);
}

/// `new` was just made a duplicate of `old` by the real call. If the mode's
/// client fails to record it (a contained panic), `new` is still marked as a
/// listener or named connection like `old`: its calls then leave the fast path
/// (an `accept` on it never hands out a doorbell raw), and its close clears
/// whatever half of the record was made.
pub fn duplicated(old: c_int, new: c_int) {
    let recorded = crate::guard::bookkeep(|| {
        fault_point!("duplicated");
        if dpf::mode::enabled() {
            dpf::ops::duplicated(old, new)
        } else {
            gcb::fdops::duplicated(old, new)
        }
    });
    if recorded.is_none() && old != new {
        if let kind @ (Kind::Managed | Kind::Named) = fdtable::kind(old) {
            fdtable::set(new, kind);
        }
    }
}

/// `close` of a tracked fd: the mode's client forgets it first, since once
/// closed another thread may get the number. The fd is closed whatever the
/// bookkeeping does.
///
/// # Safety
///
/// The C contract of `close`.
pub unsafe fn close(fd: c_int) -> c_int {
    // A vfork child closes its own fd table's entry; the shim's records
    // are its parent's (`process`).
    if !crate::process::borrowed() {
        forget(fd);
    }
    crate::real::close(fd)
}

/// `dup` of a tracked fd: the new fd holds what the old one does.
///
/// # Safety
///
/// The C contract of `dup`.
pub unsafe fn dup(fd: c_int) -> c_int {
    let new = crate::real::dup(fd);
    if new >= 0 && !crate::process::borrowed() {
        duplicated(fd, new);
    }
    new
}

fn is_dupfd(cmd: c_int) -> bool {
    cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC
}

/// `fcntl` of a tracked fd: duplicates are tracked, everything else passes.
///
/// # Safety
///
/// The C contract of `fcntl`.
pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = crate::real::fcntl(fd, cmd, arg);
    if r >= 0 && is_dupfd(cmd) && !crate::process::borrowed() {
        duplicated(fd, r);
    }
    r
}

/// `fcntl64`, as [`fcntl`].
///
/// # Safety
///
/// The C contract of `fcntl64`.
pub unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let r = crate::real::fcntl64(fd, cmd, arg);
    if r >= 0 && is_dupfd(cmd) && !crate::process::borrowed() {
        duplicated(fd, r);
    }
    r
}

/// `getsockopt(SO_ERROR)` of a connection GCB named: a brokered connect's
/// failure, which the kernel's socket cannot say (`gcb::connecting`).
///
/// # Safety
///
/// The C contract of `getsockopt`.
pub unsafe fn connect_error(fd: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int {
    gcb::connecting::getsockopt_error(fd, value, len)
}

/// `accept` of a managed listener: `accept4` without flags.
///
/// # Safety
///
/// The C contract of `accept`.
pub unsafe fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    fault_point!("accept");
    accept4(fd, addr, len, 0)
}
