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

use std::net::SocketAddrV4;
use std::time::Instant;

use libc::c_int;
use proto::gcb::Message;
use proto::rudp::RetryPolicy;

use super::super::mgmt;
use super::super::registry::{ListenerId, Registry};
use super::table::Channel;
use crate::client::seal;

/// Asks the broker for a channel to `fd`'s relayed `peer`. `None` when the
/// socket is not registered or the broker has none to give.
pub fn open(fd: c_int, peer: SocketAddrV4) -> Option<Channel> {
    let (proxy, udp_token, broker) = super::super::with(|reg| {
        let l = reg.listener(reg.udp.get(fd)?.listener?)?;
        Some((l.proxy?, l.udp_token?, l.mgmt.broker))
    })?;
    // A socket of its own: the management socket is read by the AEH of
    // whichever thread (or process) waits, which would take the reply.
    let (sock, _) = mgmt::open(broker).ok()?;
    let msg = Message::UdpChannel { proxy, peer, udp_token, open: true };
    match mgmt::exchange(sock.raw(), broker, RetryPolicy::default(), &msg) {
        Ok(Message::UdpChannelOk { channel, token }) => {
            log!(Debug, "udp {proxy}: channel {channel} for {peer}");
            Some(Channel { peer, addr: channel, token })
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
    }
}
