//! A new image taking over the forwards its predecessor handed over in
//! `GCB_INHERITED` (see `inherit`, which writes them): each fd checked, dpfd's
//! forwards taken on as shared with their management socket, a standard
//! gateway's renewed at once under the handed-over nonce. Run once, from
//! init (`lifecycle`); the top of the client with it.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use libc::c_int;
use proto::Proto;

use super::state::Forward;
use crate::client::sys;
use crate::fdtable;
use crate::client::inherit::{self as shared, Entry};

/// At init in a new image: takes over the forwards `GCB_INHERITED` names.
pub fn adopt() {
    let Some(value) = std::env::var_os(shared::VAR) else { return };
    let mut groups: BTreeMap<c_int, Vec<Entry>> = BTreeMap::new();
    let mut mapped: BTreeMap<[u8; 12], Vec<Entry>> = BTreeMap::new();
    for e in shared::parse(&value.to_string_lossy()) {
        match e.nonce {
            Some(n) if super::mode::standard() => mapped.entry(n).or_default().push(e),
            Some(_) => {}
            None => groups.entry(e.mgmt).or_default().push(e),
        }
    }
    for entries in mapped.into_values() {
        adopt_mapping(&entries);
    }
    if super::mode::standard() {
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
        let kind = super::ask::kind_of(proto);
        super::state::with(|st| {
            st.add(Forward { fds: fds.clone(), proto, bound, local, public, mgmt_fd, shared: true, pcp: None });
            for &fd in &fds {
                fdtable::set(fd, kind);
            }
            super::inherit::publish(st);
        });
        log!(Debug, "inherited {proto} {fds:?} ({local} as {public}) with management fd {mgmt_fd}");
        super::state::ensure_responder();
    }
}

/// Takes over a standard gateway's forward: the entries of one nonce.
fn adopt_mapping(entries: &[Entry]) {
    let first = entries[0];
    let (Some(public), Some(proto), Some(gateway), Some(nonce)) = (first.proxy, proto_of(&first), super::pcp::wire::gateway(), first.nonce) else { return };
    let fds: Vec<c_int> = entries.iter().filter(|e| proto_of(e) == Some(proto)).map(|e| e.fd).collect();
    let bound = first.local;
    let local = match bound.ip().is_unspecified() {
        true => match crate::client::exchange::open(gateway) {
            Ok((_, towards)) => SocketAddrV4::new(*towards.ip(), bound.port()),
            Err(_) => return,
        },
        false => bound,
    };
    let mut cfg = super::pcp::map::config(proto, local, Some(public), false);
    cfg.nonce = nonce;
    let client = super::pcp::serve::fresh(&proto::portmap::MapClient::new(cfg), public);
    let (inode, v6) = super::pcp::wire::identity(fds[0]);
    let mapping = super::pcp::side::Mapping { client, inode, v6, restart_at: Some(std::time::Instant::now()), failures: 0 };
    let kind = super::ask::kind_of(proto);
    super::public::KNOWN.learn(*public.ip());
    super::state::with(|st| {
        st.add(Forward { fds: fds.clone(), proto, bound, local, public, mgmt_fd: -1, shared: true, pcp: Some(Box::new(mapping)) });
        for &fd in &fds {
            fdtable::set(fd, kind);
        }
        super::inherit::publish(st);
    });
    log!(Debug, "inherited {proto} {fds:?} ({local} as {public}), mapped by gateway {gateway}");
    super::state::ensure_responder();
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
