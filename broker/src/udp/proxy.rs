//! Proxy UDP sockets: what a datagram arriving at one does.
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
//!   (`channel_io`).
//!
//! Datagrams are read 12 bytes into the buffer, so the header is written in
//! front of a peer's payload in place, without a copy. Sends that fail (a
//! full socket buffer, an ICMP error) drop the datagram, as UDP may.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use mio::Token;
use proto::gcb::{self, Message, UdpRelayHeader, MAX_RELAY_PAYLOAD, RELAY_HEADER_LEN};
use tracing::{debug, info, warn};

use super::rules::{DummyOutcome, Inbound};
use crate::auth::UdpControl;
use crate::daemon::{Daemon, Dynamic};
use crate::tokens::TokenSlab;

/// Datagrams read from one proxy socket per event before other sources get
/// their turn.
pub(super) const UDP_BUDGET: usize = 256;

const H: usize = RELAY_HEADER_LEN;

/// Sends from the proxy (or channel) socket behind `token`.
pub(super) fn send_from(
    slab: &TokenSlab<Dynamic>,
    token: Token,
    bytes: &[u8],
    to: SocketAddrV4,
) -> io::Result<()> {
    match slab.get(token) {
        Some(Dynamic::UdpProxy { socket, .. } | Dynamic::UdpChannel { socket, .. }) => {
            socket.send_to(bytes, SocketAddr::V4(to)).map(|_| ())
        }
        _ => Err(io::ErrorKind::NotFound.into()),
    }
}

impl Daemon {
    /// Drains a proxy UDP socket up to the budget.
    pub(crate) fn on_udp_proxy_ready(&mut self, token: Token) {
        for _ in 0..UDP_BUDGET {
            let (received, proxy) = match self.slab.get(token) {
                Some(Dynamic::UdpProxy { socket, proxy }) => {
                    (socket.recv_from(&mut self.buf[H..]), proxy.addr)
                }
                _ => return,
            };
            match received {
                Ok((len, SocketAddr::V4(from))) => self.on_udp_datagram(token, proxy, from, len),
                Ok(_) => self.counters.udp_malformed += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // An ICMP error from an earlier send, typically.
                    self.counters.receive_errors += 1;
                    debug!("proxy udp {proxy}: receive error: {e}");
                }
            }
        }
        self.rerun.push_back(token);
    }

    fn on_udp_datagram(
        &mut self,
        token: Token,
        proxy: SocketAddrV4,
        from: SocketAddrV4,
        len: usize,
    ) {
        let now = Instant::now();
        let data = std::mem::take(&mut self.buf);
        let control = self.udp_control(&data[H..H + len], from);
        self.buf = data;
        let path = self.udp.table.data_path(&proxy);
        // Control datagrams first: a GCB header never starts a relay header.
        if matches!(control, UdpControl::Refused) {
            self.counters.udp_dummies_dropped += 1;
            return;
        }
        if let UdpControl::Message(_, msg) = control {
            if let Message::Dummy { token: t } = msg {
                self.on_dummy(proxy, from, t);
                return;
            }
            if matches!(msg, Message::DummyAck { .. }) {
                self.counters.udp_dummies_dropped += 1;
                debug!("proxy udp {proxy}: dropped DummyAck from {from}");
                return;
            }
        }
        if Some(from) == path {
            self.on_client_datagram(token, proxy, from, len, now);
        } else {
            self.on_peer_datagram(token, proxy, from, path, len, now);
        }
    }

    fn on_dummy(&mut self, proxy: SocketAddrV4, from: SocketAddrV4, t: gcb::Token) {
        let outcome = self.udp.table.dummy(&proxy, from, t);
        match outcome {
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
        token: Token,
        proxy: SocketAddrV4,
        from: SocketAddrV4,
        len: usize,
        now: Instant,
    ) {
        let (header, payload) = match UdpRelayHeader::decode(&self.buf[H..H + len]) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.counters.udp_malformed += 1;
                debug!("proxy udp {proxy}: dropped {len} bytes from the client {from}: {e}");
                return;
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
            return;
        }
        match send_from(&self.slab, token, payload, to) {
            Ok(()) => self.counters.udp_relayed_to_peer += 1,
            Err(e) => {
                self.counters.udp_send_errors += 1;
                debug!(
                    "proxy udp {proxy}: cannot send {} bytes to {to}: {e}",
                    payload.len()
                );
            }
        }
    }

    fn on_peer_datagram(
        &mut self,
        token: Token,
        proxy: SocketAddrV4,
        from: SocketAddrV4,
        path: Option<SocketAddrV4>,
        len: usize,
        now: Instant,
    ) {
        if len > MAX_RELAY_PAYLOAD {
            self.counters.udp_oversize += 1;
            debug!("proxy udp {proxy}: dropped {len} bytes from {from}: too large to relay with a header");
            return;
        }
        let Some(path) = path else {
            self.counters.udp_no_path += 1;
            debug!("proxy udp {proxy}: dropped {len} bytes from {from}: no data path from the client yet");
            return;
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
                return;
            }
        }
        // A peer whose client socket is connected to it goes through its
        // channel, without a header (`channels`).
        if let Some(channel) = self.udp.channels.for_peer(&proxy, &from) {
            if self.relay_to_channel(channel, H..H + len, now) {
                return;
            }
        }
        self.buf[..H].copy_from_slice(&UdpRelayHeader { peer: from }.to_bytes());
        match send_from(&self.slab, token, &self.buf[..H + len], path) {
            Ok(()) => self.counters.udp_relayed_to_client += 1,
            Err(e) => {
                self.counters.udp_send_errors += 1;
                debug!("proxy udp {proxy}: cannot relay {len} bytes to the client at {path}: {e}");
            }
        }
    }
}
