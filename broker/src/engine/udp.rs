//! What a datagram arriving at a proxy UDP socket does (the loop reads it
//! into a buffer with [`HEADROOM`] in front, and sends what this returns).
//!
//! The source decides (the data path is the client's application socket as
//! seen from here, learned from `Dummy{udp_token}`):
//!
//! * `Dummy` with the registration's token, from anywhere: the source
//!   becomes the data path (it moves when the client's NAT mapping does).
//!   It is not answered: the Dummy only has to go out (it keeps the client's
//!   NAT mapping), and an answer would be one more datagram on the client
//!   program's socket that the program's `select` wakes for but never gets
//!   (the shim takes it), after which a blocking read waits for the next
//!   real one. Any other `Dummy`/`DummyAck` is dropped, never relayed to the
//!   client, whose shim would take it for its own hole punching.
//! * from the data path: a `UdpRelayHeader` naming the destination, then
//!   the payload. The payload goes out of the proxy socket to the
//!   destination, but only if that peer has a live rule here (it sent to
//!   the proxy recently): never an open relay. No header: malformed.
//! * from anyone else: a peer. Its datagram creates (or refreshes) its rule
//!   and goes to the data path with a `UdpRelayHeader{peer}` in front, so
//!   the shim can report the real sender from `recvfrom`; or, when the
//!   client opened a channel for that peer, as it is through the channel
//!   (`channels`).
//!
//! The header is written into the headroom in front of a peer's payload,
//! so relaying copies nothing. Idle relay rules expire here too.

use std::net::SocketAddrV4;
use std::ops::Range;
use std::time::Instant;

use proto::gcb::{self, Message, UdpRelayHeader, MAX_RELAY_PAYLOAD, RELAY_HEADER_LEN};
use tracing::{debug, info, warn};

use super::auth::UdpControl;
use super::{Engine, SocketId};
use crate::udp::rules::{self, DummyOutcome, Inbound};

/// Bytes the loop leaves free in front of a datagram it reads from a proxy
/// or channel socket: room for the relay header.
pub const HEADROOM: usize = RELAY_HEADER_LEN;
const H: usize = HEADROOM;

/// Which way a relayed datagram goes, for the counters once it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToClient,
    ToPeer,
}

/// What the loop sends for a datagram that arrived on a UDP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpSend {
    /// Nothing: the datagram was taken (a Dummy) or dropped.
    Nothing,
    /// `buf[range]` from the socket `from` to `to`; counted as relayed
    /// `dir` if it leaves.
    Relay {
        from: SocketId,
        range: Range<usize>,
        to: SocketAddrV4,
        dir: Dir,
    },
    /// An answer of the broker's own from `from` (a channel's `DummyAck`).
    Answer {
        from: SocketId,
        to: SocketAddrV4,
        bytes: Vec<u8>,
    },
}

impl Engine {
    /// A datagram from `from`, `buf[HEADROOM..HEADROOM + len]`, at the proxy
    /// UDP socket `socket` of the registration at `proxy`.
    pub fn on_udp_datagram(
        &mut self,
        socket: SocketId,
        proxy: SocketAddrV4,
        from: SocketAddrV4,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> UdpSend {
        let control = self.udp_control(&buf[H..H + len], from);
        let path = self.udp.table.data_path(&proxy);
        // Control datagrams first: a GCB header never starts a relay header.
        match control {
            UdpControl::Refused => {
                self.counters.udp_dummies_dropped += 1;
                return UdpSend::Nothing;
            }
            UdpControl::Message(_, Message::Dummy { token }) => {
                if !self.udp_punch_report(proxy, from, token, now) {
                    self.on_dummy(proxy, from, token);
                }
                return UdpSend::Nothing;
            }
            UdpControl::Message(_, Message::DummyAck { .. }) => {
                self.counters.udp_dummies_dropped += 1;
                debug!("proxy udp {proxy}: dropped DummyAck from {from}");
                return UdpSend::Nothing;
            }
            _ => {}
        }
        if Some(from) == path {
            self.on_client_datagram(socket, proxy, from, &buf[H..H + len], now)
        } else {
            self.on_peer_datagram(socket, proxy, from, path, buf, len, now)
        }
    }

    /// The loop sent a relayed datagram.
    pub fn udp_sent(&mut self, dir: Dir) {
        match dir {
            Dir::ToClient => self.counters.udp_relayed_to_client += 1,
            Dir::ToPeer => self.counters.udp_relayed_to_peer += 1,
        }
    }

    fn on_dummy(&mut self, proxy: SocketAddrV4, from: SocketAddrV4, t: gcb::Token) {
        match self.udp.table.dummy(&proxy, from, t) {
            DummyOutcome::Refused => {
                self.counters.udp_dummies_dropped += 1;
                debug!("proxy udp {proxy}: dropped Dummy with a wrong token from {from}");
                return;
            }
            DummyOutcome::Learned => info!("udp {proxy}: data path is {from}"),
            DummyOutcome::Moved(old) => info!(
                "udp {proxy}: data path moved from {old} to {from} (the client's NAT mapping changed)"
            ),
            DummyOutcome::Same => {}
        }
        self.counters.udp_dummies += 1;
    }

    fn on_client_datagram(
        &mut self,
        socket: SocketId,
        proxy: SocketAddrV4,
        from: SocketAddrV4,
        datagram: &[u8],
        now: Instant,
    ) -> UdpSend {
        let (header, payload) = match UdpRelayHeader::decode(datagram) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.counters.udp_malformed += 1;
                debug!(
                    "proxy udp {proxy}: dropped {} bytes from the client {from}: {e}",
                    datagram.len()
                );
                return UdpSend::Nothing;
            }
        };
        let to = header.peer;
        if !self.udp.table.outbound(&proxy, &to, payload.len(), now) {
            self.counters.udp_refused += 1;
            if let Some(more) = self.udp.refused.hit(now) {
                warn!(
                    "udp {proxy}: refusing to relay from the client {from} to {to}: that peer has no \
                     live rule here (it has not sent to the proxy recently); \
                     {more} more refused since the last such line"
                );
            }
            return UdpSend::Nothing;
        }
        UdpSend::Relay {
            from: socket,
            range: H + datagram.len() - payload.len()..H + datagram.len(),
            to,
            dir: Dir::ToPeer,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_peer_datagram(
        &mut self,
        socket: SocketId,
        proxy: SocketAddrV4,
        from: SocketAddrV4,
        path: Option<SocketAddrV4>,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> UdpSend {
        if len > MAX_RELAY_PAYLOAD {
            self.counters.udp_oversize += 1;
            debug!("proxy udp {proxy}: dropped {len} bytes from {from}: too large to relay with a header");
            return UdpSend::Nothing;
        }
        let Some(path) = path else {
            self.counters.udp_no_path += 1;
            debug!("proxy udp {proxy}: dropped {len} bytes from {from}: no data path from the client yet");
            return UdpSend::Nothing;
        };
        match self.udp.table.inbound(&proxy, from, len, now) {
            Inbound::Existing => {}
            Inbound::Created => {
                self.counters.udp_rules_created += 1;
                debug!("udp rule created: {from} <-> {proxy} (client data path {path})");
            }
            Inbound::Full | Inbound::Unknown => {
                self.counters.udp_rule_cap += 1;
                if let Some(more) = self.udp.full.hit(now) {
                    warn!(
                        "udp {proxy}: refusing new peer {from}: the registration has {} rules, the \
                         limit; {more} more refused since the last such line",
                        self.config.limits.udp_rules_per_registration
                    );
                }
                return UdpSend::Nothing;
            }
        }
        // A peer whose client socket is connected to it goes through its
        // channel, without a header (`channels`).
        if let Some(channel) = self.udp.channels.for_peer(&proxy, &from) {
            if let Some(send) = self.via_channel(channel, H..H + len, now) {
                return send;
            }
        }
        buf[..H].copy_from_slice(&UdpRelayHeader { peer: from }.to_bytes());
        UdpSend::Relay {
            from: socket,
            range: 0..H + len,
            to: path,
            dir: Dir::ToClient,
        }
    }

    /// A peer's datagram `buf[range]` for the channel at `addr`: sent on as
    /// it is, from the channel socket. `None` when the channel has no data
    /// path yet (the caller relays it with a header, as before the channel).
    fn via_channel(
        &mut self,
        addr: SocketAddrV4,
        range: Range<usize>,
        now: Instant,
    ) -> Option<UdpSend> {
        let c = self.udp.channels.get(&addr)?;
        let (to, from) = (c.data_path?, c.socket);
        self.udp.channels.touch(&addr, now);
        Some(UdpSend::Relay {
            from,
            range,
            to,
            dir: Dir::ToClient,
        })
    }

    /// Sweeps idle UDP relay rules.
    pub(super) fn expire_udp_rules(&mut self, now: Instant) {
        for (proxy, peer, rule) in self.udp.table.expire(now) {
            self.counters.udp_rules_expired += 1;
            debug!(
                "udp rule expired: {peer} <-> {proxy}, idle {:.0?}: {} datagrams ({} bytes) to the client, \
                 {} ({} bytes) back, age {:.0?}",
                now.saturating_duration_since(rule.last_used),
                rule.datagrams[rules::TO_CLIENT],
                rule.bytes[rules::TO_CLIENT],
                rule.datagrams[rules::TO_PEER],
                rule.bytes[rules::TO_PEER],
                now.saturating_duration_since(rule.created)
            );
        }
    }
}
