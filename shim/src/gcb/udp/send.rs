//! Sending from a GCB-mode UDP socket, and `connect` on one: the receiver list
//! of paper 4.2.2.
//!
//! For each destination the application names, [`route`] finds where the
//! datagram really goes:
//!
//! 1. A made hole or a direct answer in the receiver list: the real address.
//! 2. A peer the broker relays for this (registered) socket: back to the
//!    socket's own proxy, behind a relay header naming the peer, so the peer
//!    sees the reply come from the address it sent to.
//! 3. A live `Relay` / not-yet-open `Reversal` record: unchanged, to the proxy.
//! 4. Loopback, `GCB_ROUTE direct`, negative cache: unchanged, no record, no
//!    system call.
//! 5. Otherwise the broker at the destination's IP is asked (`Connect`,
//!    proto UDP) and the answer recorded: `Direct` / `SameRealm` give the real
//!    address; `Relay` sends unchanged to the proxy; `Reversal` sends
//!    unchanged meanwhile and awaits the listener's Dummy, which opens the
//!    direct path (not on a connected socket, which would not hear the direct
//!    replies: a reversal's Dummy, which can arrive before the real `connect`,
//!    is only kept from the application); `PunchUdp` sends unchanged
//!    meanwhile and punches a hole to the listener's mapping (`control`),
//!    which opens the direct path; a `connect` waits for that punch, bounded
//!    ([`connected`](super::connected)); no broker there: the negative cache.
//!
//! Records live [`RECORD_TTL`](super::table::RECORD_TTL) and are dropped at a
//! network error (`ECONNREFUSED`, unreachable), so the next send asks again.
//! The `Connect` exchange runs outside the registry lock and bounded (the
//! probe policy for a foreign IP, the command policy for our broker).

use std::net::SocketAddrV4;
use std::time::Instant;

use libc::{c_int, c_uint, c_void, iovec, mmsghdr, msghdr, size_t, sockaddr, socklen_t, ssize_t};
use proto::gcb::{Decision, ErrorCode, Features, Message, Role, Token, UdpRelayHeader, MAX_RELAY_PAYLOAD};
use proto::rudp::RetryPolicy;
use proto::Proto;

use super::super::ask::{command_port, log_path, our_broker, remember_no_broker, worth_asking};
use super::super::registry::Registry;
use super::super::mgmt;
use crate::client::sys;
use super::control::{proof, PUNCH_GAP, PUNCH_HEAD_START, PUNCH_TRIES};
use super::ttl::low_ttl;
use super::table::{Hole, Punch, Route, HOLE_ACK_TTL};
use crate::fdtable::{self, Kind};
use crate::guard::{errno, set_errno};
use crate::{config, real};

/// Where one datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// To this address, as is.
    To(SocketAddrV4),
    /// To our own proxy, behind a header naming the peer.
    Relayed { proxy: SocketAddrV4, peer: SocketAddrV4 },
}

/// What the receiver list says about `dest` without asking anyone.
fn known(fd: c_int, dest: SocketAddrV4, now: Instant) -> Option<Out> {
    // Only a managed socket has a record: a watched one's sends take no lock.
    if fdtable::kind(fd) != Kind::Managed {
        return None;
    }
    super::super::state::with(|reg| {
        let s = reg.udp.get(fd)?;
        if let Some(channel) = s.channel_to(dest) {
            return Some(Out::To(channel));
        }
        let route = s.route(dest, now);
        if let Some(Route::Direct(real)) = route {
            return Some(Out::To(real));
        }
        if s.is_relay_peer(dest, now) {
            let proxy = s.listener.and_then(|id| reg.listener(id)).and_then(|l| l.proxy);
            if let Some(proxy) = proxy {
                return Some(Out::Relayed { proxy, peer: dest });
            }
        }
        route.map(|_| Out::To(dest))
    })
}

/// Where a datagram from `fd` to `dest` goes (module docs); `connected` for
/// `connect`, which never awaits a reversal's hole.
pub fn route(fd: c_int, dest: SocketAddrV4, connected: bool) -> Result<Out, c_int> {
    route_punching(fd, dest, connected).map(|(out, _)| out)
}

/// [`route`], and this side's proof when it started a punch to `dest`.
fn route_punching(fd: c_int, dest: SocketAddrV4, connected: bool) -> Result<(Out, Option<Token>), c_int> {
    let now = Instant::now();
    if let Some(out) = known(fd, dest, now) {
        return Ok((out, None));
    }
    if !worth_asking(dest) {
        return Ok((Out::To(dest), None));
    }
    // A `connect` offers UDP punching only if it may wait for it (`connected`).
    let punch = !connected || super::connected::may_wait(fd, dest);
    let (route, awaited) = match ask(fd, dest, punch) {
        Asked::NotGcb => {
            log!(Debug, "{} has no broker; udp to {dest} goes straight out", dest.ip());
            remember_no_broker(*dest.ip());
            return Ok((Out::To(dest), None));
        }
        Asked::Decision(d) => {
            log_path(Proto::Udp, dest, &d, now);
            match d {
                Decision::Direct { addr } | Decision::SameRealm { addr } => (Route::Direct(addr), None),
                // Unoffered, but its fallback is the relay through `via`, the proxy named.
                Decision::Relay { .. } | Decision::PunchTcp { .. } => (Route::AsNamed, None),
                // The relay from the first datagram (a `connect` waits).
                Decision::PunchUdp { via, token, listener_at } => (Route::AsNamed, Some(Awaited::Punch { via, token, listener_at })),
                Decision::Reversal { token } => (Route::AsNamed, Some(Awaited::Reversal(token))),
                Decision::NotRegistered => {
                    log!(Info, "udp to {dest}: nothing is registered there");
                    if connected {
                        return Err(libc::ECONNREFUSED);
                    }
                    (Route::NotGcb, None)
                }
            }
        }
        Asked::Silent => (Route::AsNamed, None),
    };
    let punching = match awaited {
        Some(Awaited::Punch { token, .. }) => Some(proof(token, Role::Connector)),
        _ => None,
    };
    super::super::state::with(|reg| {
        let s = reg.udp.entry(fd);
        let now = Instant::now();
        s.set_route(dest, route, now);
        match awaited {
            Some(Awaited::Reversal(token)) => s.await_dummy(token, dest, !connected, now),
            Some(Awaited::Punch { via, token, listener_at }) => s.start_hole(Hole {
                token: proof(token, Role::Connector),
                target: listener_at,
                peer: dest,
                next_try: now + PUNCH_HEAD_START,
                tries_left: PUNCH_TRIES,
                expires: now + HOLE_ACK_TTL,
                punch: Some(Punch { expect: proof(token, Role::Listener), report: Some((via, token)), gap: PUNCH_GAP, confirm: false, proven: false, yielded: false, ttl: low_ttl() }),
            }),
            None => {}
        }
        fdtable::replace(fd, Kind::WatchedUdp, Kind::Managed);
    });
    if punching.is_some() {
        // Its Dummies are the responder's timers.
        super::super::state::ensure_responder();
    }
    let out = match route {
        Route::Direct(real) => Out::To(real),
        Route::AsNamed | Route::NotGcb => Out::To(dest),
    };
    Ok((out, punching))
}

/// What a decision leaves the socket waiting for.
enum Awaited {
    /// The listener's Dummy of a reversal.
    Reversal(proto::gcb::Token),
    /// A punch's Dummies both ways (`control`).
    Punch { via: SocketAddrV4, token: proto::gcb::Token, listener_at: SocketAddrV4 },
}

enum Asked {
    NotGcb,
    /// Our own broker did not answer: send unchanged, ask again later.
    Silent,
    Decision(Decision),
}

/// Asks the broker at `dest`'s IP about UDP from `fd` (bound first if it is
/// not, so the broker learns the port a reversal's Dummy must reach),
/// offering UDP punching when `punch`.
fn ask(fd: c_int, dest: SocketAddrV4, punch: bool) -> Asked {
    let ours = our_broker(*dest.ip()).is_some();
    let cmd = SocketAddrV4::new(*dest.ip(), command_port(*dest.ip()));
    let Ok((probe, probe_local)) = crate::client::exchange::open(cmd) else { return Asked::NotGcb };
    let mut local = sys::local_addr(fd).unwrap_or(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));
    if local.port() == 0 {
        let _ = sys::bind(fd, SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));
        local = sys::local_addr(fd).unwrap_or(local);
    }
    let ip = if local.ip().is_unspecified() { *probe_local.ip() } else { *local.ip() };
    let connector = SocketAddrV4::new(ip, local.port());
    // The probe's port tells the broker whether this NAT keeps ports, so it
    // may guess this socket's mapping for a punch. No `connector_id` even
    // for a registered socket: it would rename the peer of a reversal's hole.
    let offered = super::super::punch::offered();
    let features = if punch { offered } else { Features::from_bits(offered.bits() & !Features::PUNCH_UDP.bits()) };
    let msg = Message::Connect { proto: Proto::Udp, target: dest, connector, connector_id: None, realm: config::get().realm.clone(), features, asked_from_port: probe_local.port() };
    let policy = if ours { RetryPolicy::default() } else { RetryPolicy::probe() };
    match mgmt::exchange(probe.raw(), cmd, policy, &msg) {
        Ok(reply) => match mgmt::decision_of(reply) {
            Ok(d) => Asked::Decision(d),
            Err(Some(ErrorCode::NotRegistered)) => Asked::Decision(Decision::NotRegistered),
            Err(Some(code)) => {
                log!(Warn, "the broker at {} refused udp to {dest}: {code:?}; sending unchanged", dest.ip());
                Asked::Silent
            }
            Err(None) => Asked::NotGcb,
        },
        Err(mgmt::NoAnswer::Timeout) if ours => {
            log!(Warn, "the broker at {} did not answer a Connect for udp {dest}; sending unchanged", dest.ip());
            Asked::Silent
        }
        Err(_) => Asked::NotGcb,
    }
}

/// `getsockname` on a socket the application never bound but that has sent to
/// a GCB address (so `ask` bound it, as the kernel would at the first send):
/// it registers now, like a bound one, and reports its proxy address, which
/// is what a program asking for its own address wants to tell its peers (Condor's
/// UDP commands carry a reply address). Registering at the first send instead
/// would put a blocking exchange with the broker in front of every new client
/// socket's first datagram (measured: UDP connection times 100× worse in the
/// bench); a socket nobody asks about never pays. Connected sockets, which
/// could not hear from a proxy, are left alone.
///
/// Split in two so `getsockname` decides with the lock it already holds:
/// [`auto_bound_candidate`] reads the registry, [`register_auto_bound`] does the
/// system calls.
pub fn register_auto_bound(fd: c_int) {
    if sys::peer_addr(fd).is_ok() {
        return;
    }
    if sys::local_addr(fd).is_ok_and(|a| a.ip().is_unspecified() && a.port() != 0) {
        let _ = super::super::listener::register(fd, Proto::Udp, fdtable::kind(fd), 0);
    }
}

/// Whether `fd` is a managed UDP socket with neither a registration nor a
/// connected GCB peer: the only kind [`register_auto_bound`] may register.
pub fn auto_bound_candidate(reg: &Registry, fd: c_int) -> bool {
    reg.udp.get(fd).is_some_and(|s| s.listener.is_none() && s.connected_to.is_none())
}

/// A send failed with `e`: a network error drops `dest`'s record.
fn after_error(fd: c_int, dest: SocketAddrV4, e: c_int) {
    if matches!(e, libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN) {
        super::super::state::with(|reg| {
            if let Some(s) = reg.udp.get_mut(fd) {
                s.remove_route(dest);
            }
        });
    }
}

/// Gathers iovecs into one buffer.
unsafe fn gather(iov: *const iovec, iovcnt: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..iovcnt {
        let v = &*iov.add(i);
        if v.iov_len > 0 {
            out.extend_from_slice(std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len));
        }
    }
    out
}

/// Sends `payload` to our proxy for `peer`; EMSGSIZE past the relay maximum.
fn send_relayed(fd: c_int, payload: &[u8], proxy: SocketAddrV4, peer: SocketAddrV4, flags: c_int) -> ssize_t {
    if payload.len() > MAX_RELAY_PAYLOAD {
        set_errno(libc::EMSGSIZE);
        return -1;
    }
    let header = UdpRelayHeader { peer }.to_bytes();
    let iov = [
        iovec { iov_base: header.as_ptr() as *mut c_void, iov_len: header.len() },
        iovec { iov_base: payload.as_ptr() as *mut c_void, iov_len: payload.len() },
    ];
    let sin = sys::to_sockaddr(proxy);
    // SAFETY: all-zero is a valid msghdr; every pointer lives through the call.
    let n = unsafe {
        let mut m: msghdr = std::mem::zeroed();
        m.msg_name = (&sin as *const libc::sockaddr_in).cast_mut().cast();
        m.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as socklen_t;
        m.msg_iov = iov.as_ptr().cast_mut();
        m.msg_iovlen = 2;
        real::sendmsg(fd, &m, flags)
    };
    if n < 0 {
        return n;
    }
    (n as usize).saturating_sub(header.len()) as ssize_t
}

/// # Safety
///
/// The C contract of `sendmsg`.
pub unsafe fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if msg.is_null() {
        return real::sendmsg(fd, msg, flags);
    }
    let m = &*msg;
    let Some(dest) = sys::from_sockaddr(m.msg_name.cast(), m.msg_namelen) else { return real::sendmsg(fd, msg, flags) };
    let saved = errno();
    let out = match route(fd, dest, false) {
        Ok(o) => o,
        Err(e) => {
            set_errno(e);
            return -1;
        }
    };
    set_errno(saved);
    let n = match out {
        Out::To(to) if to == dest => real::sendmsg(fd, msg, flags),
        Out::To(to) => {
            let sin = sys::to_sockaddr(to);
            let mut copy = *m;
            copy.msg_name = (&sin as *const libc::sockaddr_in).cast_mut().cast();
            copy.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as socklen_t;
            real::sendmsg(fd, &copy, flags)
        }
        Out::Relayed { proxy, peer } => {
            let payload = gather(m.msg_iov, m.msg_iovlen);
            send_relayed(fd, &payload, proxy, peer, flags)
        }
    };
    if n < 0 {
        after_error(fd, dest, errno());
    } else {
        set_errno(saved);
    }
    n
}

/// # Safety
///
/// The C contract of `sendto`.
pub unsafe fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, addrlen: socklen_t) -> ssize_t {
    if sys::from_sockaddr(addr, addrlen).is_none() {
        return real::sendto(fd, buf, len, flags, addr, addrlen);
    }
    let iov = iovec { iov_base: buf.cast_mut(), iov_len: len };
    let mut m: msghdr = std::mem::zeroed();
    m.msg_name = addr.cast_mut().cast();
    m.msg_namelen = addrlen;
    m.msg_iov = (&iov as *const iovec).cast_mut();
    m.msg_iovlen = 1;
    sendmsg(fd, &m, flags)
}

/// # Safety
///
/// The C contract of `sendmmsg`.
pub unsafe fn sendmmsg(fd: c_int, vec: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int {
    if vec.is_null() {
        return real::sendmmsg(fd, vec, vlen, flags);
    }
    let mut sent = 0;
    for i in 0..vlen.min(1024) as usize {
        let e = &mut *vec.add(i);
        let n = sendmsg(fd, &e.msg_hdr, flags);
        if n < 0 {
            return if sent == 0 { -1 } else { sent };
        }
        e.msg_len = n as c_uint;
        sent += 1;
    }
    sent
}

/// `connect` on a GCB-mode UDP socket: the real socket is connected to where
/// the datagrams really go; `getpeername` reports the address the
/// application named. `AF_UNSPEC` (dissolving the association) passes.
///
/// # Safety
///
/// The C contract of `connect`.
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // A new association (or none) ends the channel of the old one. Only a
    // managed socket has one: a watched one's connect takes no lock.
    let managed = fdtable::kind(fd) == Kind::Managed;
    if managed {
        super::super::state::with(|reg| {
            super::channel::drop_from(reg, fd);
            if let Some(s) = reg.udp.get_mut(fd) {
                s.connected_to = None;
            }
        });
    }
    let Some(dest) = sys::from_sockaddr(addr, len) else { return real::connect(fd, addr, len) };
    let saved = errno();
    let (to, channel) = match route_punching(fd, dest, true) {
        // The punched path once it answers, else the relay (`connected`).
        Ok((Out::To(to), Some(mine))) => (super::connected::await_punch(fd, dest, mine).unwrap_or(to), None),
        Ok((Out::To(to), None)) => (to, None),
        // A peer the broker relays: through a channel of its own, or, with
        // none, to the peer as it is (`channel`).
        Ok((Out::Relayed { peer, .. }, _)) => match super::channel::open(fd, peer) {
            Some(c) => (c.addr, Some(c)),
            None => (dest, None),
        },
        Err(e) => {
            set_errno(e);
            return -1;
        }
    };
    let sin = sys::to_sockaddr(to);
    set_errno(saved);
    let r = real::connect(fd, (&sin as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as socklen_t);
    let managed = fdtable::kind(fd) == Kind::Managed;
    if !managed && channel.is_none() && to == dest {
        // A plain association: nothing to record.
        return r;
    }
    super::super::state::with(|reg| {
        if r != 0 {
            if let Some(c) = channel {
                super::channel::close(reg, reg.udp.get(fd).and_then(|s| s.listener), c);
            }
            return;
        }
        if to != dest || managed {
            let s = reg.udp.entry(fd);
            s.connected_to = Some(dest);
            s.channel = channel;
            fdtable::replace(fd, Kind::WatchedUdp, Kind::Managed);
        }
        // The channel learns where this socket is (and its NAT maps it)
        // before the application's first datagram follows.
        // One still to be granted (`channel::open`) has no port to keep yet.
        if let Some(c) = channel.filter(|c| c.reopen.is_none()) {
            super::control::send_dummy(fd, c.token, c.addr);
        }
        if channel.is_some() {
            super::super::inherit::publish(reg);
        }
    });
    r
}
