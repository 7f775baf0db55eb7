//! The hooks' entry points in DPF mode (reached through [`crate::managed`]):
//! `bind`, `listen`, `accept4`, `connect`, the names, and what dup and close do
//! to forwarded sockets ([`forget`], [`duplicated`]; the `close`, `dup` and
//! `fcntl` hooks around them are `managed`'s, the same in both modes). Each runs
//! the real call and keeps [`super::state`] and the fd table in step; `errno` is
//! the real call's.

use std::net::SocketAddrV4;

use libc::{c_int, sockaddr, socklen_t};
use proto::Proto;

use super::forward;
use super::state::{Names, Removed};
use crate::fdtable::{self, Kind};
use crate::client::sys;
use crate::guard::ErrnoGuard;
use crate::real;

/// The protocol of an AF_INET socket the client cares about.
pub(super) fn proto_of(fd: c_int) -> Option<Proto> {
    match sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()? {
        libc::SOCK_STREAM => Some(Proto::Tcp),
        libc::SOCK_DGRAM => Some(Proto::Udp),
        _ => None,
    }
}

/// `bind`: a UDP/IPv4 socket is forwarded at once.
///
/// # Safety
///
/// The C contract of `bind`.
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let r = real::bind(fd, addr, len);
    // IPv4, also through a dual-stack AF_INET6 socket (bound to `::` or a
    // v4-mapped address); pure IPv6 is not forwarded.
    if r == 0 && crate::client::family::local_view(fd, addr, len).is_some() {
        crate::guard::bookkeep(|| {
            if proto_of(fd) == Some(Proto::Udp) {
                forward::forward(fd, Proto::Udp);
            }
        });
    }
    r
}

/// `listen`: a TCP/IPv4 socket is forwarded once it listens. dpfd's probes
/// are the responder's to take (`serve`), not this call's: a `listen` on a
/// socket the client does not forward (a unix socket, loopback) takes no lock.
///
/// # Safety
///
/// The C contract of `listen`.
pub unsafe fn listen(fd: c_int, backlog: c_int) -> c_int {
    let r = real::listen(fd, backlog);
    if r == 0 {
        crate::guard::bookkeep(|| {
            if proto_of(fd) == Some(Proto::Tcp) {
                forward::forward(fd, Proto::Tcp);
            }
        });
    }
    r
}

/// `accept4` on a forwarded listener: the connection's own name is the public
/// address, the one its peer dialed.
///
/// # Safety
///
/// The C contract of `accept4`.
pub unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    {
        let _errno = ErrnoGuard::new();
        forward::sweep();
    }
    let n = real::accept4(fd, addr, len, flags);
    if n >= 0 && crate::guard::bookkeep(|| name_accepted(fd, n)).is_none() {
        fdtable::set(n, Kind::Plain);
    }
    n
}

/// Connection `n` was accepted from listener `fd`: its name is the forward's
/// public address, and whatever a missed close left of `n` goes.
fn name_accepted(fd: c_int, n: c_int) {
    super::state::with(|st| {
        let public = st.forward_of(fd).and_then(|id| st.forward(id)).map(|f| f.public);
        match public {
            Some(public) => {
                st.set_names(n, Names { local: Some(public), peer: None });
                fdtable::set(n, Kind::Named);
            }
            None => {
                // A fresh fd starts plain, whatever a missed close left.
                st.remove_fd(n);
                fdtable::set(n, Kind::Plain);
            }
        }
    });
}

/// `connect`: a forwarded socket turning active loses its forward; a connect to
/// one of `dpfd`'s public addresses goes to the private address behind it, and
/// `getpeername` reports the address dialed. The application's own fd connects,
/// so a non-blocking socket still gets `EINPROGRESS`.
///
/// # Safety
///
/// The C contract of `connect`.
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let target = {
        let _errno = ErrnoGuard::new();
        prepare_connect(fd, sys::from_sockaddr(addr, len))
    };
    let Some((dest, local)) = target else { return real::connect(fd, addr, len) };
    let sin = sys::to_sockaddr(local);
    let r = real::connect(fd, (&sin as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as socklen_t);
    if r == 0 || crate::guard::errno() == libc::EINPROGRESS {
        crate::guard::bookkeep(|| {
            log!(Debug, "connect to {dest} goes to {local}, behind it");
            super::state::with(|st| {
                st.set_names(fd, Names { local: None, peer: Some(dest) });
                fdtable::set(fd, Kind::Named);
            });
        });
    }
    r
}

/// Drops the forward or names `fd` had, and looks `dest` up; the private address
/// to dial instead, if any.
fn prepare_connect(fd: c_int, dest: Option<SocketAddrV4>) -> Option<(SocketAddrV4, SocketAddrV4)> {
    if matches!(fdtable::kind(fd), Kind::Managed | Kind::Named) {
        let taken = super::state::with(|st| {
            let f = st.forward_of(fd).and_then(|id| st.take(id));
            match &f {
                Some(f) => f.fds.iter().for_each(|&x| {
                    fdtable::set(x, Kind::Plain);
                }),
                None => {
                    // Stale names of an earlier connect of this socket.
                    st.remove_fd(fd);
                    fdtable::set(fd, Kind::Plain);
                }
            }
            if f.is_some() {
                super::inherit::publish(st);
            }
            f
        });
        if let Some(f) = taken {
            log!(Debug, "{} {} turns active; its forward {} is deleted", f.proto, f.local, f.public);
            forward::wind_up(f, true);
        }
    }
    // A standard gateway has no `Query`: connects go as dialed.
    if super::mode::standard() {
        return None;
    }
    // Lock-free up to here for a destination that is not dpfd's.
    let dest = dest.filter(|d| super::query::worth_asking(*d) && super::public::may_be_public(*d.ip()))?;
    let proto = proto_of(fd)?;
    super::query::resolve(proto, dest).map(|local| (dest, local))
}

type NameFn = unsafe fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

unsafe fn answer(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, pick: fn(Names) -> Option<SocketAddrV4>, real_fn: NameFn) -> c_int {
    if addr.is_null() || len.is_null() {
        return real_fn(fd, addr, len);
    }
    match super::state::with(|st| st.names(fd)).and_then(pick) {
        Some(name) => {
            crate::client::family::copy_out(name, crate::client::family::of(fd), addr, len);
            0
        }
        None => real_fn(fd, addr, len),
    }
}

/// # Safety
///
/// The C contract of `getsockname`.
pub unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    answer(fd, addr, len, |n| n.local, real::getsockname)
}

/// # Safety
///
/// The C contract of `getpeername`.
pub unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    answer(fd, addr, len, |n| n.peer, real::getpeername)
}

/// Drops what the client knows about `fd` (closed, or replaced by a dup onto it).
/// Before the real close: once closed, another thread may get the number.
pub fn forget(fd: c_int) {
    let _errno = ErrnoGuard::new();
    if !matches!(fdtable::kind(fd), Kind::Managed | Kind::Named) {
        return;
    }
    let removed = super::state::with(|st| {
        let removed = st.remove_fd(fd);
        fdtable::set(fd, Kind::Plain);
        if matches!(removed, Removed::Last(_) | Removed::Alias) {
            super::inherit::publish(st);
        }
        removed
    });
    if let Removed::Last(f) = removed {
        forward::wind_up(*f, false);
    }
}

/// `new` was just made a duplicate of `old`.
pub fn duplicated(old: c_int, new: c_int) {
    if old == new {
        return;
    }
    let _errno = ErrnoGuard::new();
    let kind = fdtable::kind(old);
    if matches!(kind, Kind::Managed | Kind::Named) {
        super::state::with(|st| {
            st.remove_fd(new);
            if st.alias(old, new) {
                fdtable::set(new, kind);
                super::inherit::publish(st);
            }
        });
    }
}
