//! A registered UDP socket `connect`ed to a peer the broker relays for it
//! (one whose datagrams came through the proxy, behind a relay header).
//!
//! Connecting the real socket to the peer would make it deaf: the peer's
//! datagrams arrive from the proxy. Connecting it to the proxy would make it
//! hear every peer of the registration, and a second socket bound to the
//! same port (iperf3's UDP server binds one for the next client right after
//! connecting the first) would hear none. So the shim asks the broker for a
//! *channel* (proto `UdpChannel`): a broker socket on a port of its own that
//! carries only this peer's datagrams, both ways, without a header. The real
//! socket connects there, and the kernel sorts as it would without NAT: the
//! peer's datagrams reach the connected socket, everyone else's the
//! unconnected ones. `send` and `write` on it stay on the fast path; reads
//! name the channel's datagrams after the peer (`table::Channel`).
//!
//! The channel is kept, and its NAT mapping with it, by a `Dummy` at connect
//! and with every heartbeat (`control::open_data_path`); it is closed when
//! the socket is closed or connected elsewhere, unless another process shares
//! the registration (then the broker closes it when the Dummies stop). With
//! no channel (an older broker, a refusal) the socket is connected to the
//! peer itself, as before, and logs why.
//!
//! A broker that restarted, or the broker the registration failed over to,
//! has no channel for the socket: after each `RegisterOk` the shim asks for it
//! again on the management socket ([`reopen_all`]) and, once granted,
//! connects the real socket to the new channel. The application's fd and
//! `getpeername` do not change. The broker grants a channel only once the peer
//! has written to the (new) proxy, so a refusal is retried, at
//! [`FIRST_RETRY`](super::table::FIRST_RETRY) doubling up to one heartbeat interval, for as long as the
//! socket stays connected.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::c_int;
use proto::gcb::{ErrorCode, Message};
use proto::rudp::RetryPolicy;

use super::super::mgmt;
use super::super::registry::{ListenerId, Purpose, Registry};
use crate::client::sys;
use super::table::{Channel, Reopen};
use crate::client::seal;

/// Asks the broker for a channel to `fd`'s relayed `peer`. `None` when the
/// socket is not registered or the broker has none to give.
pub fn open(fd: c_int, peer: SocketAddrV4) -> Option<Channel> {
    let (id, proxy, udp_token, broker) = super::super::state::with(|reg| {
        let id = reg.udp.get(fd)?.listener?;
        let l = reg.listener(id)?;
        Some((id, l.proxy?, l.udp_token?, l.mgmt.broker))
    })?;
    // A socket of its own: the management socket is read by the AEH of
    // whichever thread (or process) waits, which would take the reply.
    let (sock, _) = crate::client::exchange::open(broker).ok()?;
    let msg = Message::UdpChannel { proxy, peer, udp_token, open: true };
    match mgmt::exchange(sock.raw(), broker, RetryPolicy::default(), &msg) {
        Ok(Message::UdpChannelOk { channel, token }) => {
            log!(Debug, "udp {proxy}: channel {channel} for {peer}");
            Some(Channel { peer, addr: channel, token, reopen: None })
        }
        Ok(Message::Error { code: ErrorCode::UnknownToken, .. }) => {
            // Another process sharing the registration holds the new token:
            // connected to the peer itself until the refreshed token gets the
            // channel (`on_reopen_reply` then connects the socket to it).
            let now = Instant::now();
            super::super::state::with(|reg| refresh_token(reg, id, now));
            Some(Channel { peer, addr: peer, token: proto::gcb::Token(0), reopen: Some(Reopen::now(now)) })
        }
        Ok(Message::Error { code, detail }) => {
            log!(Warn, "udp {proxy}: the broker gave no channel for {peer} ({code:?} {detail}); connected to it directly, replies may be lost");
            None
        }
        _ => {
            log!(Warn, "udp {proxy}: no channel for {peer} (the broker did not answer, or is older); connected to it directly, replies may be lost");
            None
        }
    }
}

/// Closes `channel` of a socket of listener `id`, one datagram, no wait
/// (under the registry lock: a non-blocking send). Left to the broker's idle
/// expiry when another process shares the registration.
pub fn close(reg: &mut Registry, id: Option<ListenerId>, channel: Channel) {
    let Some(l) = id.and_then(|id| reg.listener_mut(id)) else { return };
    let (Some(proxy), Some(udp_token)) = (l.proxy, l.udp_token) else { return };
    if l.shared {
        return;
    }
    let msg = Message::UdpChannel { proxy, peer: channel.peer, udp_token, open: false };
    if let Ok((rid, bytes)) = l.mgmt.requester.send(l.mgmt.broker, Instant::now(), |rid| seal::gcb_encode(&msg, rid)) {
        let _ = mgmt::send_datagram(l.mgmt.fd, bytes);
        l.mgmt.requester.cancel(rid);
    }
    log!(Debug, "udp {proxy}: channel {} for {} closed", channel.addr, channel.peer);
}

/// `fd` no longer uses its channel (closed, or connected elsewhere).
pub fn drop_from(reg: &mut Registry, fd: c_int) {
    let Some(s) = reg.udp.get_mut(fd) else { return };
    let (listener, channel) = (s.listener, s.channel.take());
    if let Some(c) = channel {
        close(reg, listener, c);
        super::super::inherit::publish(reg);
    }
}

/// Marks `c` as lost at the broker, to be asked for again at once.
fn lost(c: &mut Channel, now: Instant, why: &str) {
    if c.reopen.is_none() {
        log!(Info, "udp: the channel {} for {} is gone ({why}); asking for it again", c.addr, c.peer);
    }
    c.reopen = Some(Reopen::now(now));
}

/// Listener `id` was registered again (`RegisterOk` after a broker restart,
/// an expiry or a failover): the broker has none of its sockets' channels,
/// so each is asked for again at once, with the new `udp_token` (asks still
/// in flight carry the old one and are dropped).
pub fn reopen_all(reg: &mut Registry, id: ListenerId, now: Instant, heartbeat: Duration) {
    let Some(l) = reg.listener_mut(id) else { return };
    let stale: Vec<u64> = l.mgmt.pending.iter().filter(|(_, p)| matches!(p, Purpose::Channel { .. })).map(|(rid, _)| *rid).collect();
    for rid in stale {
        l.mgmt.pending.remove(&rid);
        l.mgmt.requester.cancel(rid);
    }
    for fd in l.fds.clone() {
        if let Some(c) = reg.udp.get_mut(fd).and_then(|s| s.channel.as_mut()) {
            lost(c, now, "registered again");
        }
    }
    on_timers(reg, now, heartbeat);
    super::super::inherit::publish(reg);
}

/// A call on `fd` failed with `e`. On a socket connected to a channel,
/// `ECONNREFUSED` is the broker's host saying the channel's port is closed
/// (the broker restarted, or dropped it), never the peer's doing: the
/// channel is asked for again and the error is not the application's (the
/// kernel reports it once). True when it is absorbed so.
pub fn absorbs(fd: c_int, e: c_int) -> bool {
    if e != libc::ECONNREFUSED || !super::manages(fd) {
        return false;
    }
    super::super::state::with(|reg| match reg.udp.get_mut(fd).and_then(|s| s.channel.as_mut()) {
        Some(c) => {
            lost(c, Instant::now(), "its port refused");
            true
        }
        None => false,
    })
}

/// Asks again for the channels whose reopen is due and not already asked.
pub fn on_timers(reg: &mut Registry, now: Instant, heartbeat: Duration) {
    let mut due = Vec::new();
    for (fd, s) in reg.udp.sockets_mut() {
        let (Some(id), Some(c)) = (s.listener, s.channel.as_mut()) else { continue };
        if let Some(r) = c.reopen.filter(|r| r.next_try <= now) {
            c.reopen = Some(r.asked(now, heartbeat));
            due.push((id, fd, c.peer));
        }
    }
    for (id, fd, peer) in due {
        let Some(l) = reg.listener_mut(id) else { continue };
        let (Some(proxy), Some(udp_token)) = (l.proxy, l.udp_token) else { continue };
        let purpose = Purpose::Channel { fd, peer };
        if l.mgmt.pending.values().any(|p| *p == purpose) {
            continue; // still being retransmitted
        }
        mgmt::start(l, purpose, &Message::UdpChannel { proxy, peer, udp_token, open: true }, now);
    }
}

/// When [`on_timers`] next has a channel to ask for.
pub fn next_deadline(reg: &Registry) -> Option<Instant> {
    reg.udp.sockets().filter_map(|s| s.channel?.reopen).map(|r| r.next_try).min()
}

/// The broker refused listener `id`'s `udp_token`. A registration shared
/// by several processes (fork, exec) is registered again by whichever of
/// them hears the broker first, and the `RegisterOk` carrying the new token
/// reaches only the process that reads it; the others would ask with the old
/// one for ever. A `Register` from the shared management socket is answered
/// with the registration the broker has, new token included, and its
/// `RegisterOk` asks for every channel of this process again.
fn refresh_token(reg: &mut Registry, id: ListenerId, now: Instant) {
    let Some(l) = reg.listener_mut(id) else { return };
    log!(Info, "udp {}: the broker has a newer udp token (another process sharing the socket registered it); asking for it", l.reg_local);
    mgmt::reregister(l, now);
}

/// The broker's answer to a reopen of `fd`'s channel to `peer`.
pub fn on_reopen_reply(reg: &mut Registry, id: ListenerId, fd: c_int, peer: SocketAddrV4, reply: Message, now: Instant) {
    let waiting = reg.udp.get(fd).and_then(|s| s.channel).filter(|c| c.peer == peer && c.reopen.is_some());
    match reply {
        Message::UdpChannelOk { channel, token } => {
            let granted = Channel { peer, addr: channel, token, reopen: None };
            if waiting.is_none() {
                // Closed or connected elsewhere meanwhile: not wanted any more,
                // unless a new connect to the same peer was given this one.
                let in_use = reg.udp.sockets().any(|s| s.channel.is_some_and(|c| c.addr == channel));
                if !in_use {
                    close(reg, Some(id), granted);
                }
                return;
            }
            if let Err(e) = sys::connect(fd, channel, now) {
                log!(Warn, "udp: cannot connect to the new channel {channel} for {peer}: {}", std::io::Error::from_raw_os_error(e));
                return;
            }
            if let Some(s) = reg.udp.get_mut(fd) {
                s.channel = Some(granted);
            }
            super::control::send_dummy(fd, token, channel);
            super::super::inherit::publish(reg);
            log!(Info, "udp: channel for {peer} reopened at {channel}");
        }
        Message::Error { code: ErrorCode::UnknownToken, .. } => refresh_token(reg, id, now),
        Message::Error { code, detail } => {
            log!(Debug, "udp: no channel for {peer} yet ({code:?} {detail}); asking again later");
        }
        other => log!(Debug, "udp: reply {:?} to a channel request ignored", other.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcb::udp::table::FIRST_RETRY;

    #[test]
    fn refused_reopens_back_off_to_the_heartbeat() {
        let t0 = Instant::now();
        let hb = Duration::from_secs(2);
        let mut r = Reopen::now(t0);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let at = r.next_try;
            r = r.asked(at, hb);
            waits.push(r.next_try - at);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [300, 600, 1200, 2000, 2000, 2000]);
        let fast = Reopen::now(t0).asked(t0, Duration::from_millis(100));
        assert_eq!(fast.next_try - t0, FIRST_RETRY, "never faster than the first retry");
        let many = Reopen { next_try: t0, tries: u32::MAX }.asked(t0, hb);
        assert_eq!((many.next_try - t0, many.tries), (hb, u32::MAX), "no overflow");
    }
}
