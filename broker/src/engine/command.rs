//! The command port, as decisions: every datagram is authenticated,
//! decoded, rate-limited, answered from the reply cache if it is a
//! retransmission, and otherwise handed to its handler, whose reply is
//! sent and cached.
//!
//! Order of the checks, and why:
//! 0. with a secret, MAC and time window (see `auth`): an unauthenticated
//!    datagram is dropped before it can cost anything else or get an answer;
//!    the replay guard comes after the reply cache, in steps 4 and 5;
//! 1. decode first (cheap, no allocation beyond the datagram's own strings),
//!    so a status request from a trusted source can skip the rate limit: an
//!    operator's `query` fetches many pages back to back;
//! 2. the per-source-IP rate limit, before any work or reply, so a flood
//!    costs one hash lookup per datagram and produces no traffic. An answer
//!    to a command the broker has in flight to that address is exempt: the
//!    broker asked for it, there is at most one per command, and dropping it
//!    would make a busy NAT site's servers look dead and lose their
//!    registrations (many servers share one public IP);
//! 3. malformed input is dropped and counted; a newer protocol version is
//!    answered `VersionMismatch` so the peer learns why, not just silence;
//! 4. replies (response flag set) are clients answering the broker's own
//!    commands and go to the command requester;
//! 5. a request already answered is answered again from the cache, never
//!    executed twice (a retransmitted `Connect` must not mint a second
//!    token, a retransmitted `Register` must not log twice).
//!
//! A command's reply is queued after whatever the handler sent on its way
//! (a `ReverseConnect` goes to the listener before the connector hears the
//! decision, as it always did).

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use proto::gcb::{self, ErrorCode, Message};
use proto::DecodeError;
use tracing::{debug, warn};

use super::auth::Inbound;
use super::channels::ChannelReq;
use super::connect::ConnectReq;
use super::register::RegisterReq;
use super::{Effect, Engine, Host};
use crate::async_cmd::{Outcome, Purpose};
use crate::pairing::Kind as PairingKind;

impl Engine {
    /// A datagram of the command port, from `from`.
    pub fn on_command_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        host: &mut impl Host,
    ) {
        self.counters.received += 1;
        let SocketAddr::V4(from) = from else {
            self.counters.malformed += 1;
            debug!(
                "command port: dropped {} bytes from {from}: GCB speaks IPv4 only",
                datagram.len()
            );
            return;
        };
        // Everything is authenticated before anything else reads it.
        let inbound = self.authenticate(datagram, from, "command port");
        let (stamp, decoded) = match &inbound {
            Inbound::Plain => (None, gcb::decode(datagram)),
            Inbound::Verified(v) => (Some(v.stamp), gcb::decode(&v.message)),
            Inbound::Refused => return,
        };
        let trusted_status = matches!(decoded, Ok((_, Message::StatusRequest { .. })))
            && self.status_allowed(*from.ip(), host);
        let awaited = matches!(&decoded, Ok((h, m)) if m.is_response() && self.asyncs.awaits(h.request_id, from));
        if !trusted_status && !awaited && !self.gate.admit(from.ip(), now) {
            self.counters.rate_limited += 1;
            return;
        }
        let (header, msg) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => return self.undecodable(e, from, datagram.len()),
        };
        if msg.is_response() {
            if self.admit(stamp, from, "command port") {
                self.on_command_reply(header.request_id, from, &msg, now);
            }
            return;
        }
        if let Some(cached) = self.replies.lookup(&from, header.request_id, now) {
            let bytes = cached.to_vec();
            self.counters.duplicates += 1;
            debug!(
                "command port: request {} from {from} again; same reply",
                header.request_id
            );
            self.emit(Effect::Send { to: from, bytes });
            return;
        }
        if !self.admit(stamp, from, "command port") {
            return;
        }
        // Later status pages are served again from their snapshot as they
        // are, and are large: caching them would only push out other
        // replies. The first page is cached, since a retransmission of it
        // must not take a second snapshot.
        let cache = !matches!(msg, Message::StatusRequest { snapshot, .. } if snapshot != 0);
        let reply = self.handle(msg, header.request_id, from, now, host);
        if let Some(bytes) = self.seal(&reply, header.request_id, from) {
            if cache {
                self.replies
                    .insert(from, header.request_id, bytes.clone(), now);
            }
            self.emit(Effect::Send { to: from, bytes });
        }
    }

    /// A datagram that does not decode is dropped and counted, but a newer
    /// protocol version is answered `VersionMismatch`, so the peer learns
    /// why rather than hearing nothing.
    fn undecodable(&mut self, e: DecodeError, from: SocketAddrV4, len: usize) {
        let DecodeError::UnsupportedVersion {
            version,
            request_id,
            ..
        } = e
        else {
            self.counters.malformed += 1;
            self.counters.malformed_why.count(&e);
            debug!("command port: dropped {len} bytes from {from}: {e}");
            return;
        };
        self.counters.version_mismatch += 1;
        debug!("command port: version {version} request from {from}");
        let detail = format!(
            "this broker speaks GCB protocol version {}",
            proto::header::VERSION
        );
        let reply = Message::error(ErrorCode::VersionMismatch, &detail);
        if let Some(bytes) = self.seal(&reply, request_id, from) {
            self.emit(Effect::Send { to: from, bytes });
        }
    }

    /// Encodes (and with a secret seals) a reply.
    fn seal(&self, reply: &Message, request_id: u64, to: SocketAddrV4) -> Option<Vec<u8>> {
        match daemon_kit::auth::seal(self.auth.as_ref(), gcb::encode(reply, request_id)) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                warn!("cannot encode the reply to {to}: {e}");
                None
            }
        }
    }

    /// Runs the handler of one decoded request from `from` and returns its
    /// reply; what else it does is queued as effects.
    pub fn handle(
        &mut self,
        msg: Message,
        request_id: u64,
        from: SocketAddrV4,
        now: Instant,
        host: &mut impl Host,
    ) -> Message {
        match msg {
            Message::Register {
                proto,
                local,
                realm,
                desired_port,
                port_required,
                mgmt,
            } => {
                let req = RegisterReq {
                    proto,
                    local,
                    realm,
                    desired_port,
                    port_required,
                    mgmt,
                };
                self.on_register(from, req, now, host)
            }
            Message::Heartbeat { held } => self.on_heartbeat(from, held, now),
            Message::Unregister { proxy } => self.on_unregister(from, proxy, now),
            Message::Connect {
                proto,
                target,
                connector,
                connector_id,
                realm,
                features,
                asked_from_port,
            } => {
                let req = ConnectReq {
                    proto,
                    target,
                    connector,
                    connector_id,
                    realm,
                    features,
                    asked_from_port,
                    request_id,
                };
                let started = Instant::now();
                let reply = self.on_connect(from, req, now);
                self.decision.observe(started.elapsed());
                reply
            }
            Message::StatusRequest {
                snapshot,
                page,
                format,
            } => self.on_status(from, snapshot, page, format, now, host),
            Message::UdpChannel {
                proxy,
                peer,
                udp_token,
                open,
            } => {
                let req = ChannelReq {
                    proxy,
                    peer,
                    udp_token,
                    open,
                };
                self.on_udp_channel(from, req, now, host)
            }
            other => {
                self.counters.unsupported += 1;
                debug!(
                    "command port: {:?} from {from} is not a broker request",
                    other.kind()
                );
                Message::error(ErrorCode::Unsupported, "not a request this broker serves")
            }
        }
    }

    /// A client answered one of the broker's commands.
    fn on_command_reply(&mut self, id: u64, from: SocketAddrV4, msg: &Message, now: Instant) {
        match self.asyncs.on_reply(id, from, msg, now) {
            Some(outcome) => self.on_command_outcome(outcome, now),
            None => {
                self.counters.stray_replies += 1;
                debug!(
                    "command port: stray {:?} reply {id} from {from}",
                    msg.kind()
                )
            }
        }
    }

    /// Sends a broker → client command, retransmitted until answered.
    pub(super) fn send_command(
        &mut self,
        msg: &Message,
        token: gcb::Token,
        to: SocketAddrV4,
        proxy: SocketAddrV4,
        now: Instant,
    ) -> Result<(), String> {
        let purpose = Purpose {
            token,
            kind: msg.kind(),
            listener: to,
            proxy,
            resent: false,
        };
        self.send_purpose(msg, purpose, now)
    }

    pub(super) fn send_purpose(
        &mut self,
        msg: &Message,
        purpose: Purpose,
        now: Instant,
    ) -> Result<(), String> {
        let effects = &mut self.effects;
        self.asyncs
            .send(msg, purpose, now, self.auth.as_ref(), |to, bytes| {
                effects.push(Effect::Send {
                    to,
                    bytes: bytes.to_vec(),
                })
            })
    }

    /// Retransmits due commands and handles those given up.
    pub(super) fn poll_commands(&mut self, now: Instant) {
        let effects = &mut self.effects;
        let failed = self.asyncs.poll(now, |to, bytes| {
            effects.push(Effect::Send {
                to,
                bytes: bytes.to_vec(),
            })
        });
        for outcome in failed {
            self.on_command_outcome(outcome, now);
        }
    }

    pub(super) fn on_command_outcome(&mut self, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Acked(p) if p.kind == gcb::Kind::ConnectFailed => {
                debug!(
                    "connector {} told that {} will not dial",
                    p.listener, p.proxy
                )
            }
            // An older connector closed the socket its Connect came from.
            Outcome::Failed(p, why, _) if p.kind == gcb::Kind::ConnectFailed => {
                debug!(
                    "connector {} not told that {} will not dial: {why}",
                    p.listener, p.proxy
                )
            }
            Outcome::Acked(p) => {
                debug!(
                    "{:?} for {} acknowledged by {}",
                    p.kind, p.proxy, p.listener
                );
                // A reversal needs nothing more from the broker.
                if self
                    .pairings
                    .get(p.token)
                    .is_some_and(|e| e.kind == PairingKind::Reversal)
                {
                    self.pairings.cancel(p.token);
                }
            }
            Outcome::Failed(p, why, msg) => self.on_command_failed(p, why, msg, now),
        }
    }
}
