//! Handing forwarded sockets over `exec`, in the same `GCB_INHERITED` variable
//! and the same lock-free published table as GCB listeners (`gcb::inherit`): one
//! entry `FD,MGMT_FD,PUBLIC,BOUND,0` per forwarded fd that survives the exec,
//! with the management socket's close-on-exec cleared for it. The new image's
//! shim, in DPF mode, checks each fd (a bound UDP socket or a listening TCP
//! socket with that address; a listening TCP management socket) and takes the
//! forwards over as shared, so closing them in either image never deletes them:
//! `dpfd`'s probe does once the last holder is gone.
//!
//! A standard gateway's forward (`pcp`) hands over no socket (`MGMT_FD` -1)
//! but its mapping nonce (`,nHEX`): the new image opens its own socket to
//! the gateway and renews the mapping at once with that nonce, asking for the
//! same public address, which the gateway grants as a renewal.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use libc::c_int;
use proto::Proto;

use super::state::{Forward, State};
use crate::fdtable;
use crate::gcb::inherit::{self as shared, Entry};
use crate::client::sys;

/// Publishes the forwarded fds for exec. Call inside [`super::state::with`].
pub fn publish(st: &State) {
    shared::publish_entries(st.forwards().flat_map(|f| {
        let nonce = f.pcp.as_ref().map(|m| m.client.config().nonce);
        let mgmt = if nonce.is_some() { -1 } else { f.mgmt_fd };
        f.fds.iter().map(move |&fd| Entry { fd, mgmt, proxy: Some(f.public), local: f.bound, backlog: 0, udp_token: None, channel: None, nonce })
    }));
}

/// At init in a new image: takes over the forwards `GCB_INHERITED` names.
pub fn adopt() {
    let Some(value) = std::env::var_os(shared::VAR) else { return };
    let mut groups: BTreeMap<c_int, Vec<Entry>> = BTreeMap::new();
    let mut mapped: BTreeMap<[u8; 12], Vec<Entry>> = BTreeMap::new();
    for e in shared::parse(&value.to_string_lossy()) {
        match e.nonce {
            Some(n) if super::standard() => mapped.entry(n).or_default().push(e),
            Some(_) => {}
            None => groups.entry(e.mgmt).or_default().push(e),
        }
    }
    for entries in mapped.into_values() {
        adopt_mapping(&entries);
    }
    if super::standard() {
        return;
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
        super::state::with(|st| {
            st.add(Forward { fds: fds.clone(), proto, bound, local, public, mgmt_fd, shared: true, pcp: None });
            for &fd in &fds {
                fdtable::set(fd, kind);
            }
            publish(st);
        });
        log!(Debug, "inherited {proto} {fds:?} ({local} as {public}) with management fd {mgmt_fd}");
        super::ensure_responder();
    }
}

/// Takes over a standard gateway's forward: the entries of one nonce.
fn adopt_mapping(entries: &[Entry]) {
    let first = entries[0];
    let (Some(public), Some(proto), Some(gateway), Some(nonce)) = (first.proxy, proto_of(&first), super::pcp::gateway(), first.nonce) else { return };
    let fds: Vec<c_int> = entries.iter().filter(|e| proto_of(e) == Some(proto)).map(|e| e.fd).collect();
    let bound = first.local;
    let local = match bound.ip().is_unspecified() {
        true => match crate::gcb::mgmt::open(gateway) {
            Ok((_, towards)) => SocketAddrV4::new(*towards.ip(), bound.port()),
            Err(_) => return,
        },
        false => bound,
    };
    let mut cfg = super::pcp::map::config(proto, local, Some(public), false);
    cfg.nonce = nonce;
    let client = super::pcp::serve::fresh(&proto::portmap::MapClient::new(cfg), public);
    let (inode, v6) = super::pcp::identity(fds[0]);
    let mapping = super::pcp::side::Mapping { client, inode, v6, restart_at: Some(std::time::Instant::now()), failures: 0 };
    let kind = super::forward::kind_of(proto);
    super::public::KNOWN.learn(*public.ip());
    super::state::with(|st| {
        st.add(Forward { fds: fds.clone(), proto, bound, local, public, mgmt_fd: -1, shared: true, pcp: Some(Box::new(mapping)) });
        for &fd in &fds {
            fdtable::set(fd, kind);
        }
        publish(st);
    });
    log!(Debug, "inherited {proto} {fds:?} ({local} as {public}), mapped by gateway {gateway}");
    super::ensure_responder();
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
