//! UDP channels (`udp::channels`) as decisions: opening one at a client's
//! `UdpChannel`, closing it, and what a datagram arriving at one does.
//!
//! * A channel is opened only for the registration's own client (its
//!   `udp_token`) and a peer with a live relay rule, since it sends from
//!   the proxy address, which must never reach strangers; at most
//!   `PER_REGISTRATION` per registration; on a port of the UDP pool, which
//!   goes back without quarantine (nobody but its client knew it).
//! * `Dummy` with the channel's token: its source becomes the channel's
//!   data path (the client's connected socket through its NAT), answered by
//!   `DummyAck` from the channel socket.
//! * From the data path: the payload, as it is, goes out of the
//!   registration's proxy socket to the channel's peer, under the same relay
//!   rule as a datagram with a header would (never an open relay).
//! * From anyone else: dropped and counted.
//!
//! The other direction is in `udp`: a datagram from a peer that has a
//! channel goes to the channel's data path, without a header, from the
//! channel socket.

use std::net::SocketAddrV4;
use std::time::Instant;

use proto::gcb::{self, ErrorCode, Message};
use proto::{Endpoint, Proto};
use tracing::{debug, info, warn};

use super::auth::UdpControl;
use super::udp::{Dir, UdpSend, HEADROOM};
use super::{Effect, Engine, Host, Opening};
use crate::ports::{AllocError, Owner};
use crate::udp::channels::{Channel, Refusal};
use crate::udp::rules::DummyOutcome;

/// The fields of a `UdpChannel` request.
pub(super) struct ChannelReq {
    pub proxy: SocketAddrV4,
    pub peer: SocketAddrV4,
    pub udp_token: gcb::Token,
    pub open: bool,
}

impl Engine {
    /// `UdpChannel`: opens (or finds) the channel of `req.peer` on the
    /// registration `req.proxy`, or closes it.
    pub(super) fn on_udp_channel(
        &mut self,
        from: SocketAddrV4,
        req: ChannelReq,
        now: Instant,
        host: &mut impl Host,
    ) -> Message {
        let ChannelReq {
            proxy,
            peer,
            udp_token,
            open,
        } = req;
        let refused = |engine: &mut Engine, code, detail| {
            engine.counters.udp_channels_refused += 1;
            Message::error(code, detail)
        };
        let Some(reg) = self.udp.table.get(&proxy) else {
            return refused(
                self,
                ErrorCode::NotRegistered,
                "no UDP registration at that proxy address",
            );
        };
        if reg.udp_token != udp_token {
            return refused(
                self,
                ErrorCode::UnknownToken,
                "not the registration's udp token",
            );
        }
        let existing = self.udp.channels.for_peer(&proxy, &peer);
        if !open {
            if let Some(addr) = existing {
                self.close_channel(addr, "closed by the client");
            }
            return Message::Ack;
        }
        if let Some(addr) = existing {
            let token = self
                .udp
                .channels
                .get(&addr)
                .map_or(gcb::Token(0), |c| c.token);
            return Message::UdpChannelOk {
                channel: addr,
                token,
            };
        }
        if !self.udp.table.has_live_rule(&proxy, &peer, now) {
            return refused(
                self,
                ErrorCode::NotRegistered,
                "that peer has no live relay rule at the proxy",
            );
        }
        if let Err(Refusal::Full) = self.udp.channels.room(&proxy) {
            return refused(
                self,
                ErrorCode::LimitReached,
                "the registration has the most channels it may",
            );
        }
        match self.open_channel(proxy, peer, now, host) {
            Ok((channel, token)) => {
                self.counters.udp_channels_opened += 1;
                info!("udp channel {channel} opened for {peer} <-> {proxy} (asked from {from})");
                Message::UdpChannelOk { channel, token }
            }
            Err(reply) => {
                self.counters.udp_channels_refused += 1;
                reply
            }
        }
    }

    /// Takes a free port of the UDP pool and has the channel socket opened
    /// there.
    fn open_channel(
        &mut self,
        proxy: SocketAddrV4,
        peer: SocketAddrV4,
        now: Instant,
        host: &mut impl Host,
    ) -> Result<(SocketAddrV4, gcb::Token), Message> {
        let record = self.registry.get(&Endpoint::new(Proto::Udp, proxy));
        let Some(owner) = record.map(|r| Owner {
            local: r.local,
            ip: r.ip,
        }) else {
            return Err(Message::error(
                ErrorCode::NotRegistered,
                "no UDP registration at that proxy address",
            ));
        };
        let ip = self.public_ip;
        let open = |port| host.open(Opening::Channel, SocketAddrV4::new(ip, port));
        let pool = self.registry.pool_mut(Proto::Udp);
        let (port, socket) = match pool.allocate(None, &owner, now, &mut self.rng, open) {
            Ok(got) => got,
            Err(AllocError::Exhausted) => {
                return Err(Message::error(
                    ErrorCode::LimitReached,
                    "no free proxy port",
                ))
            }
            Err(AllocError::Bind(e)) => {
                warn!("cannot open a udp channel socket on {ip}: {e}");
                return Err(Message::error(
                    ErrorCode::Internal,
                    &format!("cannot open a channel socket: {e}"),
                ));
            }
        };
        let addr = SocketAddrV4::new(ip, port);
        let dummy = gcb::Token(daemon_kit::random::random_u64() | 1);
        self.udp
            .channels
            .insert(addr, proxy, peer, dummy, socket, now);
        Ok((addr, dummy))
    }

    /// Closes the channel at `addr`: its socket, its port, its entry.
    fn close_channel(&mut self, addr: SocketAddrV4, why: &str) {
        if let Some(c) = self.udp.channels.remove(&addr) {
            self.shut_channel(addr, &c, why);
        }
    }

    /// Closes the socket and frees the port of channel `c`, out of the table.
    fn shut_channel(&mut self, addr: SocketAddrV4, c: &Channel, why: &str) {
        self.emit(Effect::Close(c.socket));
        // The channel's address was never told to anyone but its client.
        self.registry.pool_mut(Proto::Udp).abandon(addr.port());
        self.counters.udp_channels_closed += 1;
        info!(
            "udp channel {addr} for {} <-> {} closed: {why}",
            c.peer, c.proxy
        );
    }

    /// Every channel of a registration that is going away.
    pub(super) fn close_channels_of(&mut self, proxy: SocketAddrV4) {
        for addr in self.udp.channels.of(&proxy) {
            self.close_channel(addr, "its registration is gone");
        }
    }

    /// Closes channels whose client stopped sending Dummies and data.
    pub(super) fn expire_udp_channels(&mut self, now: Instant) {
        for (addr, c) in self.udp.channels.expire(now) {
            self.shut_channel(addr, &c, "idle");
        }
    }

    /// A datagram from `from`, `buf[HEADROOM..HEADROOM + len]`, at the
    /// channel socket of `addr`.
    pub fn on_channel_datagram(
        &mut self,
        addr: SocketAddrV4,
        from: SocketAddrV4,
        buf: &[u8],
        len: usize,
        now: Instant,
    ) -> UdpSend {
        let Some(c) = self.udp.channels.get(&addr).cloned() else {
            return UdpSend::Nothing;
        };
        let range = HEADROOM..HEADROOM + len;
        match self.udp_control(&buf[range.clone()], from) {
            UdpControl::Refused | UdpControl::Message(_, Message::DummyAck { .. }) => {
                self.counters.udp_dummies_dropped += 1;
                return UdpSend::Nothing;
            }
            UdpControl::Message(h, Message::Dummy { token }) => {
                return self.on_channel_dummy(&c, addr, from, token, h.request_id, now);
            }
            _ => {}
        }
        if Some(from) != c.data_path {
            self.counters.udp_channel_strangers += 1;
            debug!("udp channel {addr}: dropped {len} bytes from {from}, not its client");
            return UdpSend::Nothing;
        }
        if !self.udp.table.outbound(&c.proxy, &c.peer, len, now) {
            self.counters.udp_refused += 1;
            debug!(
                "udp channel {addr}: {} has no live rule at {} any more; dropped",
                c.peer, c.proxy
            );
            return UdpSend::Nothing;
        }
        self.udp.channels.touch(&addr, now);
        match self.registry.get(&Endpoint::new(Proto::Udp, c.proxy)) {
            Some(r) => UdpSend::Relay {
                from: r.token,
                range,
                to: c.peer,
                dir: Dir::ToPeer,
            },
            None => UdpSend::Nothing,
        }
    }

    fn on_channel_dummy(
        &mut self,
        c: &Channel,
        addr: SocketAddrV4,
        from: SocketAddrV4,
        token: gcb::Token,
        request_id: u64,
        now: Instant,
    ) -> UdpSend {
        let outcome = self.udp.channels.dummy(&addr, from, token, now);
        match outcome {
            DummyOutcome::Refused => {
                self.counters.udp_dummies_dropped += 1;
                return UdpSend::Nothing;
            }
            DummyOutcome::Moved(old) => {
                info!("udp channel {addr}: data path moved from {old} to {from}")
            }
            DummyOutcome::Learned => debug!("udp channel {addr}: data path is {from}"),
            DummyOutcome::Same => {}
        }
        self.counters.udp_dummies += 1;
        let ack = Message::DummyAck { token };
        match daemon_kit::auth::seal(self.auth.as_ref(), gcb::encode(&ack, request_id)) {
            Ok(bytes) => UdpSend::Answer {
                from: c.socket,
                to: from,
                bytes,
            },
            Err(e) => {
                self.counters.udp_send_errors += 1;
                debug!("udp channel {addr}: cannot answer DummyAck to {from}: {e}");
                UdpSend::Nothing
            }
        }
    }
}
