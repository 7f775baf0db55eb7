//! Listeners a process received rather than made, served like the ones it
//! made:
//!
//! * over a unix socket with `SCM_RIGHTS` (uvicorn's and hypercorn's workers,
//!   Python's `multiprocessing` handing a socket to a spawned child): the
//!   `recvmsg` hook passes each received fd here ([`on_received`]);
//! * by systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`), where the
//!   activator is not under the shim: at init ([`adopt_activated`]).
//!
//! A received TCP listener (or bound UDP socket) of an IP family, not on
//! loopback, becomes a listener record with no management socket yet
//! (`adopt::held`): the responder opens one and registers, which
//! joins the registration the sender holds (same local address, same public
//! IP), or makes one. A listener this process sends away over `SCM_RIGHTS` is
//! marked shared ([`on_sent`]), as after `fork`.
//!
//! Looking at `SCM_RIGHTS` costs nothing on the fast path: only a `recvmsg`
//! or `sendmsg` whose control buffer is not empty is looked at, in memory,
//! and only the fds it carries are asked what they are.

use std::net::SocketAddrV4;

use libc::{c_int, msghdr};
use proto::Proto;

use crate::client::family;
use crate::client::sys;
use crate::fdtable::{self, Kind};

/// The fds an `SCM_RIGHTS` message in `msg`'s control buffer carries.
///
/// # Safety
///
/// `msg` points to a valid `msghdr` whose control buffer the kernel filled
/// in (or the caller did, for a send).
unsafe fn rights(msg: *const msghdr) -> Vec<c_int> {
    let mut out = Vec::new();
    let mut c = libc::CMSG_FIRSTHDR(msg);
    while !c.is_null() {
        if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
            let n = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize) / std::mem::size_of::<c_int>();
            let data = libc::CMSG_DATA(c).cast::<c_int>();
            out.extend((0..n.min(253)).map(|i| std::ptr::read_unaligned(data.add(i))));
        }
        c = libc::CMSG_NXTHDR(msg, c);
    }
    out
}

/// Whether `msg` may carry fds: a non-empty control buffer (one load each).
///
/// # Safety
///
/// `msg` is null or points to a valid `msghdr`.
#[inline]
pub unsafe fn may_carry_fds(msg: *const msghdr) -> bool {
    !msg.is_null() && !(*msg).msg_control.is_null() && (*msg).msg_controllen > 0
}

/// A `recvmsg` returned `msg`: the listeners among the fds it carried are
/// taken on.
///
/// # Safety
///
/// As [`rights`].
pub unsafe fn on_received(msg: *const msghdr) {
    let fds = rights(msg);
    let mut any = false;
    for fd in fds {
        any |= take_on(fd);
    }
    if any {
        super::state::ensure_responder();
    }
}

/// A `sendmsg` sent `msg`: a listener of ours it carried is now held by
/// another process too.
///
/// # Safety
///
/// As [`rights`].
pub unsafe fn on_sent(msg: *const msghdr) {
    let fds = rights(msg);
    if fds.iter().all(|&fd| fdtable::kind(fd) != Kind::Managed) {
        return;
    }
    super::state::with(|reg| {
        for fd in fds {
            if let Some(l) = reg.listener_id(fd).and_then(|id| reg.listener_mut(id)) {
                l.shared = true;
            }
        }
    });
}

/// At init: the listeners systemd socket activation passed to this process
/// (`LISTEN_PID` names it; fds 3 and up, `LISTEN_FDS` of them).
pub fn adopt_activated() {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<i64>().ok());
    let (Some(pid), Some(count)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else { return };
    // SAFETY: getpid has no preconditions.
    if pid != i64::from(unsafe { libc::getpid() }) || !(1..=1024).contains(&count) {
        return;
    }
    let mut any = false;
    for fd in 3..3 + count as c_int {
        any |= take_on(fd);
    }
    if any {
        super::state::ensure_responder();
    }
}

/// What a received fd is to the GCB client, if anything.
fn kind_of(fd: c_int) -> Option<(Proto, SocketAddrV4)> {
    let domain = sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return None;
    }
    let proto = match sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()? {
        libc::SOCK_STREAM if sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Ok(1) => Proto::Tcp,
        libc::SOCK_DGRAM => Proto::Udp,
        _ => return None,
    };
    // Pure IPv6 has no IPv4 name, and loopback is local business.
    let local = sys::local_addr(fd).ok().filter(|a| a.port() != 0)?;
    super::listener::registrable(*local.ip()).then_some((proto, local))
}

/// Takes `fd` on as a listener this process holds; true if it did.
fn take_on(fd: c_int) -> bool {
    let Some((proto, local)) = kind_of(fd) else { return false };
    let fam = family::of(fd);
    let broker = super::adopt::broker_for(None);
    super::state::with(|reg| {
        super::fdops::unmark(reg, fd);
        // Another fd of a listener this process holds already: a dup.
        let same = reg.listeners().find(|(_, l)| l.proto == proto && l.local == local).map(|(id, _)| id);
        let id = match same {
            Some(id) => {
                reg.add_fd(id, fd);
                id
            }
            None => {
                let l = super::adopt::held(vec![fd], local, None, proto, fam, super::listener::UNKNOWN_BACKLOG, broker);
                reg.add_listener(l).0
            }
        };
        if proto == Proto::Udp {
            reg.udp.entry(fd).listener = Some(id);
        }
        fdtable::set(fd, Kind::Managed);
        super::inherit::publish(reg);
    });
    log!(Debug, "took on {proto} {local} (fd {fd}), received from another process");
    true
}
