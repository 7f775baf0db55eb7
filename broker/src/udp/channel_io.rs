//! The sockets of UDP channels (`channels`): opening one at a client's
//! `UdpChannel`, closing it, and what a datagram arriving at one does.
//!
//! * `Dummy` with the channel's token: its source becomes the channel's data
//!   path (the client's connected socket through its NAT), answered by
//!   `DummyAck` from the channel socket.
//! * From the data path: the payload, as it is, goes out of the
//!   registration's proxy socket to the channel's peer, under the same relay
//!   rule as a datagram with a header would (never an open relay).
//! * From anyone else: dropped and counted.
//!
//! The other direction is in `proxy`: a datagram from a peer that has a
//! channel goes to the channel's data path, without a header, from the
//! channel socket.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Interest, Token};
use proto::gcb::{self, ErrorCode, Message};
use proto::{Endpoint, Proto};
use tracing::{debug, info, warn};

use super::channels::{Channel, Refusal};
use super::proxy::{send_from, UDP_BUDGET};
use super::rules::DummyOutcome;
use crate::auth::{seal, UdpControl};
use crate::daemon::{Daemon, Dynamic};
use crate::ports::{AllocError, Owner};

/// The fields of a `UdpChannel` request.
pub(crate) struct ChannelReq {
    pub proxy: SocketAddrV4,
    pub peer: SocketAddrV4,
    pub udp_token: gcb::Token,
    pub open: bool,
}

impl Daemon {
    /// `UdpChannel`: opens (or finds) the channel of `req.peer` on the
    /// registration `req.proxy`, or closes it.
    pub(crate) fn on_udp_channel(
        &mut self,
        from: SocketAddrV4,
        req: ChannelReq,
        now: Instant,
    ) -> Message {
        let ChannelReq {
            proxy,
            peer,
            udp_token,
            open,
        } = req;
        let Some(reg) = self.udp.table.get(&proxy) else {
            self.counters.udp_channels_refused += 1;
            return Message::error(
                ErrorCode::NotRegistered,
                "no UDP registration at that proxy address",
            );
        };
        if reg.udp_token != udp_token {
            self.counters.udp_channels_refused += 1;
            return Message::error(ErrorCode::UnknownToken, "not the registration's udp token");
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
        // Only to a peer that has just talked to the proxy: a channel sends
        // from the proxy address, which must never reach strangers.
        if !self.udp.table.has_live_rule(&proxy, &peer, now) {
            self.counters.udp_channels_refused += 1;
            return Message::error(
                ErrorCode::NotRegistered,
                "that peer has no live relay rule at the proxy",
            );
        }
        if let Err(Refusal::Full) = self.udp.channels.room(&proxy) {
            self.counters.udp_channels_refused += 1;
            return Message::error(
                ErrorCode::LimitReached,
                "the registration has the most channels it may",
            );
        }
        match self.open_channel(proxy, peer, now) {
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

    /// Binds and watches a channel socket on a free proxy port.
    fn open_channel(
        &mut self,
        proxy: SocketAddrV4,
        peer: SocketAddrV4,
        now: Instant,
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
        let bind = |port| UdpSocket::bind(SocketAddr::V4(SocketAddrV4::new(ip, port)));
        let pool = self.registry.pool_mut(Proto::Udp);
        let (port, socket) = match pool.allocate(None, &owner, now, &mut self.rng, bind) {
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
        let inserted = self.slab.insert(Dynamic::UdpChannel { addr, socket });
        let registered = match self.slab.get_mut(inserted) {
            Some(Dynamic::UdpChannel { socket, .. }) => {
                self.poll
                    .registry()
                    .register(socket, inserted, Interest::READABLE)
            }
            _ => Err(io::ErrorKind::NotFound.into()),
        };
        if let Err(e) = registered {
            self.slab.remove(inserted);
            self.registry.pool_mut(Proto::Udp).abandon(port);
            warn!("cannot watch udp channel socket {addr}: {e}");
            return Err(Message::error(
                ErrorCode::Internal,
                "cannot watch the channel socket",
            ));
        }
        let dummy = gcb::Token(daemon_kit::random::random_u64() | 1);
        self.udp
            .channels
            .insert(addr, proxy, peer, dummy, inserted, now);
        Ok((addr, dummy))
    }

    /// Closes the channel at `addr`: its socket, its port, its entry.
    pub(crate) fn close_channel(&mut self, addr: SocketAddrV4, why: &str) {
        if let Some(c) = self.udp.channels.remove(&addr) {
            self.shut_channel(addr, &c, why);
        }
    }

    /// Closes the socket and frees the port of channel `c`, out of the table.
    fn shut_channel(&mut self, addr: SocketAddrV4, c: &Channel, why: &str) {
        if let Some(Dynamic::UdpChannel { mut socket, .. }) = self.slab.remove(c.socket) {
            let _ = self.poll.registry().deregister(&mut socket);
        }
        // The channel's address was never told to anyone but its client.
        self.registry.pool_mut(Proto::Udp).abandon(addr.port());
        self.counters.udp_channels_closed += 1;
        info!(
            "udp channel {addr} for {} <-> {} closed: {why}",
            c.peer, c.proxy
        );
    }

    /// Every channel of a registration that is going away.
    pub(crate) fn close_channels_of(&mut self, proxy: SocketAddrV4) {
        for addr in self.udp.channels.of(&proxy) {
            self.close_channel(addr, "its registration is gone");
        }
    }

    /// Closes channels whose client stopped sending Dummies and data.
    pub(crate) fn expire_udp_channels(&mut self, now: Instant) {
        for (addr, c) in self.udp.channels.expire(now) {
            self.shut_channel(addr, &c, "idle");
        }
    }

    /// Drains a channel socket up to the budget.
    pub(crate) fn on_udp_channel_ready(&mut self, token: Token) {
        for _ in 0..UDP_BUDGET {
            let (received, addr) = match self.slab.get(token) {
                Some(Dynamic::UdpChannel { socket, addr }) => {
                    (socket.recv_from(&mut self.buf), *addr)
                }
                _ => return,
            };
            match received {
                Ok((len, SocketAddr::V4(from))) => self.on_channel_datagram(token, addr, from, len),
                Ok(_) => self.counters.udp_malformed += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.counters.receive_errors += 1;
                    debug!("udp channel {addr}: receive error: {e}");
                }
            }
        }
        self.rerun.push_back(token);
    }

    fn on_channel_datagram(
        &mut self,
        token: Token,
        addr: SocketAddrV4,
        from: SocketAddrV4,
        len: usize,
    ) {
        let now = Instant::now();
        let Some(c) = self.udp.channels.get(&addr).cloned() else {
            return;
        };
        let data = std::mem::take(&mut self.buf);
        let control = self.udp_control(&data[..len], from);
        self.buf = data;
        match control {
            UdpControl::Refused => {
                self.counters.udp_dummies_dropped += 1;
                return;
            }
            UdpControl::Message(h, Message::Dummy { token: t }) => {
                match self.udp.channels.dummy(&addr, from, t, now) {
                    DummyOutcome::Refused => self.counters.udp_dummies_dropped += 1,
                    outcome => {
                        if let DummyOutcome::Moved(old) = outcome {
                            info!("udp channel {addr}: data path moved from {old} to {from}");
                        } else if outcome == DummyOutcome::Learned {
                            debug!("udp channel {addr}: data path is {from}");
                        }
                        self.counters.udp_dummies += 1;
                        let ack = seal(
                            self.auth.as_ref(),
                            gcb::encode(&Message::DummyAck { token: t }, h.request_id),
                        );
                        if let Err(e) = ack
                            .map_err(|e| io::Error::other(e.to_string()))
                            .and_then(|b| send_from(&self.slab, token, &b, from))
                        {
                            self.counters.udp_send_errors += 1;
                            debug!("udp channel {addr}: cannot answer DummyAck to {from}: {e}");
                        }
                    }
                }
                return;
            }
            UdpControl::Message(_, Message::DummyAck { .. }) => {
                self.counters.udp_dummies_dropped += 1;
                return;
            }
            _ => {}
        }
        if Some(from) != c.data_path {
            self.counters.udp_channel_strangers += 1;
            debug!("udp channel {addr}: dropped {len} bytes from {from}, not its client");
            return;
        }
        if !self.udp.table.outbound(&c.proxy, &c.peer, len, now) {
            self.counters.udp_refused += 1;
            debug!(
                "udp channel {addr}: {} has no live rule at {} any more; dropped",
                c.peer, c.proxy
            );
            return;
        }
        self.udp.channels.touch(&addr, now);
        let proxy_socket = self
            .registry
            .get(&Endpoint::new(Proto::Udp, c.proxy))
            .map(|r| r.token);
        match proxy_socket.map(|t| send_from(&self.slab, t, &self.buf[..len], c.peer)) {
            Some(Ok(())) => self.counters.udp_relayed_to_peer += 1,
            Some(Err(e)) => {
                self.counters.udp_send_errors += 1;
                debug!(
                    "udp channel {addr}: cannot send {len} bytes to {}: {e}",
                    c.peer
                );
            }
            None => {}
        }
    }

    /// A peer's datagram (`len` bytes at `buf[H..]`) for the channel `addr`:
    /// sent on as it is. False when the channel has no data path yet (the
    /// caller relays it with a header, as before the channel).
    pub(crate) fn relay_to_channel(
        &mut self,
        addr: SocketAddrV4,
        payload: std::ops::Range<usize>,
        now: Instant,
    ) -> bool {
        let Some(c) = self.udp.channels.get(&addr) else {
            return false;
        };
        let (Some(path), socket) = (c.data_path, c.socket) else {
            return false;
        };
        match send_from(&self.slab, socket, &self.buf[payload.clone()], path) {
            Ok(()) => self.counters.udp_relayed_to_client += 1,
            Err(e) => {
                self.counters.udp_send_errors += 1;
                debug!(
                    "udp channel {addr}: cannot relay {} bytes to {path}: {e}",
                    payload.len()
                );
            }
        }
        self.udp.channels.touch(&addr, now);
        true
    }
}
