//! Forwards and their management sockets (paper 3.2.1).
//!
//! After `bind` of a UDP socket or `listen` of a TCP socket (AF_INET, not
//! loopback), [`forward`] opens the coupled management socket, a passive TCP
//! socket on the same local IP and an ephemeral port, and sends `Forward` to
//! `dpfd` in a bounded exchange. On `ForwardOk` the socket is recorded with its
//! public address, which `getsockname` reports from then on; on an error the
//! socket simply works unforwarded, after one warning.
//!
//! # Answering dpfd's probes
//!
//! `dpfd` probes liveness with a TCP connect to the management socket every probe
//! interval and deletes the forward after three failures. The kernel completes
//! those connects only while the accept queue has room, so queued probes must be
//! taken off it: the responder thread waits on every management socket and
//! [`sweep`]s them as they come (`serve`), whatever the program is doing. The
//! backlog is as large as the kernel allows (`somaxconn`) besides, so a
//! responder that could not be started still leaves hours of room.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::c_int;
use proto::dpf::{ErrorCode, MappingKey, Message};
use proto::rudp::RetryPolicy;
use proto::Proto;

use super::query::CODEC;
use super::ask::{desired, kind_of, NotForwarded};
use super::state::Forward;
use crate::client::exchange::{self, NoAnswer};
use crate::fdtable;
use crate::client::sys::{self, Errno, Sock};
use crate::real;

/// Asked of `listen`; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: c_int = c_int::MAX;
/// Probes taken off one management socket per sweep.
const ACCEPTS_PER_SWEEP: usize = 256;

/// A passive, non-blocking, close-on-exec TCP socket on `ip`, any port.
fn open_mgmt(ip: Ipv4Addr) -> Result<(Sock, u16), Errno> {
    let s = sys::socket(libc::SOCK_STREAM, true, true)?;
    sys::bind(s.raw(), SocketAddrV4::new(ip, 0))?;
    // SAFETY: listen on our own socket.
    if unsafe { real::listen(s.raw(), BACKLOG) } < 0 {
        return Err(crate::guard::errno());
    }
    let port = sys::local_addr(s.raw())?.port();
    Ok((s, port))
}

/// Asks `dpfd` to forward `fd`'s bound address (`proto`); see the module docs.
/// A refusal leaves the socket working unforwarded.
pub fn forward(fd: c_int, proto: Proto) {
    let _ = request(fd, proto, None);
}

/// As [`forward`]; with `pinned`, the public address the program bound the
/// socket to itself (`client::pinned`): that port is asked for (any port for
/// port 0) and a forward elsewhere counts as a refusal. Returns the public
/// address, or why there is none (already logged).
pub fn request(fd: c_int, proto: Proto, pinned: Option<SocketAddrV4>) -> Result<SocketAddrV4, NotForwarded> {
    if super::mode::standard() {
        return super::pcp::map::request(fd, proto, pinned);
    }
    let bound = sys::local_addr(fd).map_err(NotForwarded::Other)?;
    if bound.ip().is_loopback() || bound.port() == 0 || super::state::with(|st| st.forward_of(fd).is_some()) {
        return Err(NotForwarded::Other(libc::EINVAL));
    }
    let dpfd = super::mode::server().ok_or(NotForwarded::Other(libc::EADDRNOTAVAIL))?;
    let unreachable = NotForwarded::Other(libc::EADDRNOTAVAIL);
    let (sock, towards) = crate::client::exchange::open(dpfd).map_err(|e| {
        log!(Warn, "cannot reach dpfd {dpfd} to forward {proto} {bound}: {}", std::io::Error::from_raw_os_error(e));
        unreachable
    })?;
    let local = if bound.ip().is_unspecified() { SocketAddrV4::new(*towards.ip(), bound.port()) } else { bound };
    let (mgmt_sock, mgmt_port) = open_mgmt(*local.ip()).map_err(|e| {
        log!(Warn, "no management socket for {proto} {local} ({}); not forwarded", std::io::Error::from_raw_os_error(e));
        NotForwarded::Other(e)
    })?;
    let desired = desired(proto, local, pinned);
    let unforwarded = if pinned.is_some() { "the bind fails" } else { "the socket works unforwarded" };
    let msg = Message::Forward { proto, local, mgmt_port, desired };
    let public = match exchange::exchange(sock.raw(), dpfd, RetryPolicy::default(), &CODEC, &msg) {
        Ok(Message::ForwardOk { public }) => public,
        Ok(Message::Error { code, detail }) => {
            log!(Warn, "dpfd {dpfd} refused to forward {proto} {local}: {code:?} {detail}; {unforwarded}");
            let taken = matches!(code, ErrorCode::Exists | ErrorCode::PortOutOfRange | ErrorCode::Quota);
            return Err(if taken { NotForwarded::PortUnavailable } else { unreachable });
        }
        Ok(other) => {
            log!(Warn, "dpfd {dpfd} answered Forward of {proto} {local} with {:?}; {unforwarded}", other.kind());
            return Err(unreachable);
        }
        Err(e) => {
            let why = if e == NoAnswer::NotProtocol { "not a dpfd".to_string() } else { e.describe() };
            log!(Warn, "dpfd {dpfd} is unreachable ({why}); {proto} {local} is not forwarded");
            return Err(unreachable);
        }
    };
    if let Some(asked) = pinned.filter(|p| !crate::client::pinned::matches(*p, public)) {
        log!(Warn, "dpfd {dpfd} forwards {proto} {local} from {public}, not {asked}; the bind fails");
        send_delete(proto, local);
        return Err(NotForwarded::PortUnavailable);
    }
    let bound_there = if pinned.is_some() { ", the address the program bound" } else { "" };
    log!(Info, "registered {proto} {local} as {public}{bound_there}");
    let mgmt_fd = crate::internal::adopt(mgmt_sock.into_raw());
    let kind = kind_of(proto);
    super::public::KNOWN.learn(*public.ip());
    super::state::with(|st| {
        st.add(Forward { fds: vec![fd], proto, bound, local, public, mgmt_fd, shared: false, pcp: None });
        fdtable::set(fd, kind);
        super::inherit::publish(st);
    });
    super::state::ensure_responder();
    Ok(public)
}

/// `Delete`, one datagram, no reply awaited: the probe cleans up if it is lost.
pub fn send_delete(proto: Proto, local: SocketAddrV4) {
    let Some(dpfd) = super::mode::server() else { return };
    let Ok((sock, _)) = crate::client::exchange::open(dpfd) else { return };
    let msg = Message::Delete { proto, key: MappingKey::Local(local) };
    if let Ok(bytes) = crate::client::seal::dpf_encode(&msg, sys::random_u64()) {
        let _ = exchange::send_datagram(sock.raw(), &bytes);
    }
    log!(Debug, "deleted forward of {proto} {local}");
}

/// The forward's last fd in this process is gone (closed, or the socket turned
/// active): delete it unless another process still holds the socket.
pub fn wind_up(f: Forward, turned_active: bool) {
    if f.pcp.is_some() {
        return super::pcp::wind::wind_up(f, turned_active);
    }
    if turned_active || !f.shared {
        send_delete(f.proto, f.local);
        if !turned_active {
            super::state::with(|st| st.released.remember((f.proto, f.local), f.public));
        }
    } else {
        log!(Debug, "{} {} closed here; shared with another process, left to dpfd's probe", f.proto, f.local);
    }
    crate::internal::release(f.mgmt_fd);
}

/// Accepts and closes the probes queued on every management socket (module docs).
/// Under the state lock, so a management fd cannot be released and its number
/// reused by the application while it is being accepted on.
pub fn sweep() {
    // A standard gateway's mappings have no probes to take.
    if super::mode::standard() {
        return;
    }
    let _errno = crate::guard::ErrnoGuard::new();
    super::state::with(|st| {
        let probed: Vec<c_int> = st.forwards().filter(|f| f.pcp.is_none()).map(|f| f.mgmt_fd).collect();
        for fd in probed {
            for _ in 0..ACCEPTS_PER_SWEEP {
                // SAFETY: our own non-blocking listening socket; no address wanted.
                let n = unsafe {
                    real::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                };
                if n < 0 {
                    if crate::guard::errno() == libc::EINTR {
                        continue;
                    }
                    break;
                }
                // SAFETY: the probe connection we just accepted.
                unsafe { real::close(n) };
            }
        }
    });
}
