//! The TCP connections the broker brokers, as decisions (the loop accepts
//! them, reads hellos and pumps relays; `relay`):
//!
//! * A regular (non-GCB) connector dialed a proxy listener (paper 4.1,
//!   "normal connectors"): its connection is parked in a `Regular` pairing
//!   *unread* (the client may be waiting for the server to speak first, as
//!   in SMTP or SSH), and the listener is sent `RelayConnect`.
//! * A rendezvous connection said `StreamHello{token, role}`: the pairing
//!   table takes it, rejects it (unknown token, a role twice, a failed
//!   listener's code), or completes the pair.
//! * A complete pair becomes a relay if the relay limit allows, else both
//!   halves are refused; the loop reports back when the relay started and
//!   ended, which is what the limit counts.
//! * A pairing whose halves never came expires: what it holds is rejected
//!   (a parked regular connection is reset).

use std::net::SocketAddrV4;
use std::time::Instant;

use proto::gcb::{ErrorCode, Message, Role, StreamHello, Token};
use proto::Endpoint;
use tracing::{debug, info, warn};

use super::{Effect, Engine, RelayStart, StreamId, PAIR_TIMEOUT};
use crate::pairing::{Arrived, Half, Kind, Pending};

impl Engine {
    /// A regular connector's connection `stream` from `addr`, accepted on
    /// the proxy listener of `proxy`.
    pub fn on_regular(
        &mut self,
        proxy: Endpoint,
        stream: StreamId,
        addr: SocketAddrV4,
        now: Instant,
    ) {
        self.counters.regular_accepted += 1;
        let Some(record) = self.registry.get(&proxy) else {
            self.emit(Effect::Abort(stream));
            return;
        };
        let (mgmt, local) = (record.commanded(now).mgmt, record.local);
        if !self.relay_room() {
            self.relay_refused(
                &format!("the connection from {addr} to {}", proxy.addr),
                now,
            );
            self.emit(Effect::Abort(stream));
            return;
        }
        let token = self.new_token();
        let mut pending = Pending::new(
            Kind::Regular,
            proxy.addr,
            mgmt,
            addr,
            now,
            now + PAIR_TIMEOUT,
        );
        pending.connector = Some(Half::plain(stream, addr));
        let msg = Message::RelayConnect {
            token,
            broker: self.rendezvous,
            peer: addr,
            proxy: proxy.addr,
        };
        match self.start_pairing(token, pending, msg, now) {
            Ok(()) => info!(
                "connection from {addr} to proxy {}: asking listener {local} (mgmt {mgmt}) to meet it at {}",
                proxy.addr, self.rendezvous
            ),
            Err(e) => warn!("connection from {addr} to proxy {}: cannot ask the listener: {e}", proxy.addr),
        }
    }

    /// A rendezvous connection `stream` from `addr` said `hello`.
    pub fn on_hello(
        &mut self,
        hello: StreamHello,
        stream: StreamId,
        addr: SocketAddrV4,
        now: Instant,
    ) {
        self.arrive(hello.token, hello.role, Half::plain(stream, addr), now);
    }

    /// A half said hello (a relay's or a punch's) with `token` as `role`.
    pub(super) fn arrive(&mut self, token: Token, role: Role, half: Half<StreamId>, now: Instant) {
        let addr = half.addr;
        match self.pairings.arrive(token, role, half, now) {
            Arrived::Waiting => debug!("rendezvous: {role:?} from {addr} waits for its other half"),
            Arrived::Rejected(half, code) => {
                self.counters.rendezvous_rejected += 1;
                info!("rendezvous: {role:?} from {addr} rejected: {code:?}");
                self.reject_half(half, code);
            }
            Arrived::Paired(token, pending) if pending.kind == Kind::Punch => {
                self.start_punch(token, pending, now)
            }
            Arrived::Paired(token, pending) => self.start_relay(token, pending, now),
        }
    }

    /// Both halves arrived: relay them, if the limit allows.
    fn start_relay(&mut self, token: Token, p: Pending<StreamId>, now: Instant) {
        let (Some(c), Some(l)) = (p.connector, p.listener) else {
            return;
        };
        if self.relays >= self.config.limits.max_relays as usize {
            self.relay_refused(&format!("the pairing of {} and {}", c.addr, l.addr), now);
            let code = ErrorCode::LimitReached;
            self.reject_half(l, code);
            match p.kind {
                Kind::Regular => self.emit(Effect::Abort(c.stream)),
                _ => self.reject_half(c, code),
            }
            return;
        }
        self.relays += 1;
        self.emit(Effect::Relay(RelayStart {
            token,
            gcb: p.kind == Kind::Relay,
            punched: false,
            connector_id: p.connector_id.unwrap_or(c.addr),
            connector: c,
            listener: l,
            proxy: p.proxy,
        }));
    }

    /// The loop started a relay it was asked for.
    pub fn relay_started(&mut self) {
        self.counters.relays_opened += 1;
    }

    /// A relay ended (or could not start), having moved `bytes` connector →
    /// listener and back.
    pub fn relay_ended(&mut self, bytes: [u64; 2]) {
        self.relays = self.relays.saturating_sub(1);
        self.counters.bytes_closed[0] += bytes[0];
        self.counters.bytes_closed[1] += bytes[1];
    }

    /// Hands back what a failed or expired pairing holds: rendezvous halves
    /// are rejected with `code` (why the connection will not be made); a
    /// parked regular connection is reset.
    pub(super) fn abandon_pairing(&mut self, p: Pending<StreamId>, code: ErrorCode) {
        if let Some(l) = p.listener {
            self.reject_half(l, code);
        }
        if let Some(c) = p.connector {
            match p.kind {
                Kind::Regular => self.emit(Effect::Abort(c.stream)),
                _ => self.reject_half(c, code),
            }
        }
    }

    pub(super) fn expire_pairings(&mut self, now: Instant) {
        for (token, p) in self.pairings.expire(now) {
            if let Some(code) = p.failed {
                debug!(
                    "failed pairing {token} for {} ({code:?}): its connector never came",
                    p.proxy
                );
                continue;
            }
            self.counters.pairings_expired += 1;
            if p.kind == Kind::Punch {
                // An attempt whose sides never both came: no connection.
                self.counters.punch_vanished += 1;
            }
            let missing = match (p.kind, p.connector.is_some(), p.listener.is_some()) {
                (Kind::Reversal, ..) => "the listener did not acknowledge",
                (_, true, false) => "the listener never came",
                (_, false, true) => "the connector never came",
                _ => "neither side came",
            };
            info!(
                "pairing for {} (peer {}, listener mgmt {}) expired: {missing}",
                p.proxy, p.peer, p.listener_mgmt
            );
            debug!("expired token {token}");
            self.abandon_pairing(p, ErrorCode::UnknownToken);
        }
    }
}
