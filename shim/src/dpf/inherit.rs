//! Handing forwarded sockets over `exec`, in the same `GCB_INHERITED` variable
//! and the same lock-free published table as GCB listeners (`gcb::inherit`): one
//! entry `FD,MGMT_FD,PUBLIC,BOUND,0` per forwarded fd that survives the exec,
//! with the management socket's close-on-exec cleared for it. The new image's
//! shim, in DPF mode, checks each fd (a bound UDP socket or a listening TCP
//! socket with that address; a listening TCP management socket) and takes the
//! forwards over as shared, so closing them in either image never deletes them:
//! `dpfd`'s probe does once the last holder is gone.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use libc::c_int;
use proto::Proto;

use super::state::{Forward, State};
use crate::fdtable;
use crate::gcb::inherit::{self as shared, Entry};
use crate::gcb::sys;

/// Publishes the forwarded fds for exec. Call inside [`super::with`].
pub fn publish(st: &State) {
    shared::publish_entries(st.forwards().flat_map(|f| {
        f.fds.iter().map(|&fd| Entry { fd, mgmt: f.mgmt_fd, proxy: Some(f.public), local: f.bound, backlog: 0, udp_token: None, channel: None })
    }));
}

/// At init in a new image: takes over the forwards `GCB_INHERITED` names.
pub fn adopt() {
    let Some(value) = std::env::var_os(shared::VAR) else { return };
    let mut groups: BTreeMap<c_int, Vec<Entry>> = BTreeMap::new();
    for e in shared::parse(&value.to_string_lossy()) {
        groups.entry(e.mgmt).or_default().push(e);
    }
    for (mgmt_fd, entries) in groups {
        let Some(mgmt_local) = valid_mgmt(mgmt_fd) else { continue };
        let first = entries[0];
        let (Some(public), Some(proto)) = (first.proxy, proto_of(&first)) else { continue };
        let fds: Vec<c_int> = entries.iter().filter(|e| proto_of(e) == Some(proto)).map(|e| e.fd).collect();
        if fds.is_empty() {
            // Handed over for a socket that is gone: nobody else here uses it.
            // SAFETY: a socket no one in this image knows.
            unsafe { crate::real::close(mgmt_fd) };
            continue;
        }
        let bound = first.local;
        let local = if bound.ip().is_unspecified() { SocketAddrV4::new(*mgmt_local.ip(), bound.port()) } else { bound };
        let mgmt_fd = crate::internal::adopt(mgmt_fd);
        let _ = sys::set_nonblock(mgmt_fd, true);
        let kind = super::forward::kind_of(proto);
        super::with(|st| {
            st.add(Forward { fds: fds.clone(), proto, bound, local, public, mgmt_fd, shared: true });
            for &fd in &fds {
                fdtable::set(fd, kind);
            }
            publish(st);
        });
        log!(Debug, "inherited {proto} {fds:?} ({local} as {public}) with management fd {mgmt_fd}");
        super::serve::ensure();
    }
}

/// The management socket's address, if `fd` is a listening TCP socket.
fn valid_mgmt(fd: c_int) -> Option<SocketAddrV4> {
    let listening = sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).ok()? == 1;
    (sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()? == libc::SOCK_STREAM && listening).then_some(())?;
    sys::local_addr(fd).ok()
}

/// The protocol of a handed-over fd that still is what the entry says.
fn proto_of(e: &Entry) -> Option<Proto> {
    if sys::local_addr(e.fd).ok()? != e.local {
        return None;
    }
    match sys::get_int_opt(e.fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()? {
        libc::SOCK_DGRAM => Some(Proto::Udp),
        libc::SOCK_STREAM if sys::get_int_opt(e.fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Ok(1) => Some(Proto::Tcp),
        _ => None,
    }
}
