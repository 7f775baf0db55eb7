//! The connector's rendezvous that comes with its `Connect`
//! (`Features::PUNCH_EARLY`, docs/hole-punching.md): a shim that may be
//! punched opens its TCP rendezvous connection beside the `Connect` datagram,
//! from a socket bound to the port number the datagram left from, so the
//! hello and the `Connect` travel together. The hello cannot name the token
//! (the broker mints it when it decides), so the two are matched by where
//! they came from: the public IP both came from, and the local address both
//! name (the hello's `local`; the `Connect`'s connector IP and
//! `asked_from_port`). Either may arrive first:
//!
//! * a hello that finds a punch awaiting its key joins that pairing;
//! * a hello that finds none is **held** until its `Connect` comes, at most
//!   [`HOLD_FOR`] (then hung up: the connect was not punched, or never came),
//!   and at most [`MAX_HELD`] at once and [`MAX_HELD_PER_IP`] from one public
//!   IP (more are rejected; the shim then says its hello again on a new
//!   connection, with the token, once it has the decision);
//! * a `Connect` decided as an early punch takes a held hello of its key, or
//!   leaves its token **awaited** under the key for [`HOLD_FOR`].
//!
//! Invariants: a key is held or awaited, never both; a held stream is in no
//! pairing; every held stream is joined, rejected or hung up exactly once.
//!
//! Also here: the round trips last measured per public IP. A hello sent
//! with its connection's SYN (TCP Fast Open) arrives before the handshake
//! measured a round trip; the meeting then lines the sides up with the last
//! one measured from that IP, on an earlier meeting's report.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use proto::gcb::punch::PunchHello;
use proto::gcb::{ErrorCode, Role, Token};
use tracing::debug;

use super::{Effect, Engine, StreamId};
use crate::pairing::Half;

/// How long a hello waits for its `Connect`, and a `Connect` for its hello.
pub(super) const HOLD_FOR: Duration = Duration::from_secs(2);
/// The most hellos held at once, and from one public IP: a host that
/// floods the port with hellos fills its own share, not the table.
pub(super) const MAX_HELD: usize = 1024;
pub(super) const MAX_HELD_PER_IP: usize = 64;
/// The most public IPs whose round trip is remembered.
const MAX_RTTS: usize = 4096;

/// Public IP, and the local address the side named.
pub(super) type EarlyKey = (Ipv4Addr, SocketAddrV4);

#[derive(Debug, Default)]
pub(super) struct EarlyRendezvous {
    held: HashMap<EarlyKey, (Half<StreamId>, Instant)>,
    awaited: HashMap<EarlyKey, (Token, Instant)>,
    rtts: HashMap<Ipv4Addr, Duration>,
}

impl EarlyRendezvous {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let held = self.held.values().map(|(_, until)| *until);
        let awaited = self.awaited.values().map(|(_, until)| *until);
        held.chain(awaited).min()
    }

    /// The round trip to use for a side from `ip`: measured, else the last
    /// one measured from there.
    pub(super) fn rtt(&mut self, ip: Ipv4Addr, measured: Option<Duration>) -> Option<Duration> {
        match measured {
            Some(rtt) => {
                self.remember_rtt(ip, rtt);
                Some(rtt)
            }
            None => self.rtts.get(&ip).copied(),
        }
    }

    pub(super) fn remember_rtt(&mut self, ip: Ipv4Addr, rtt: Duration) {
        if self.rtts.len() >= MAX_RTTS && !self.rtts.contains_key(&ip) {
            // Any one goes: a forgotten IP is lined up without, once.
            if let Some(k) = self.rtts.keys().next().copied() {
                self.rtts.remove(&k);
            }
        }
        self.rtts.insert(ip, rtt);
    }
}

impl Engine {
    /// A connector's `PunchHello` whose token no pairing has: an early
    /// rendezvous (module docs), joined, held, or rejected.
    pub(super) fn early_hello(&mut self, hello: &PunchHello, half: Half<StreamId>, now: Instant) {
        let key = (*half.addr.ip(), hello.local);
        if let Some((token, _)) = self.early.awaited.remove(&key) {
            debug!(
                "punch {token}: the connector's early rendezvous from {} is here",
                half.addr
            );
            self.arrive(token, Role::Connector, half, now);
            return;
        }
        let from_ip = self
            .early
            .held
            .keys()
            .filter(|(ip, _)| *ip == key.0)
            .count();
        if self.early.held.len() >= MAX_HELD
            || from_ip >= MAX_HELD_PER_IP
            || self.early.held.contains_key(&key)
        {
            self.counters.rendezvous_rejected += 1;
            self.reject_half(half, ErrorCode::UnknownToken);
            return;
        }
        debug!(
            "rendezvous: an early punch hello from {} (local {}) waits for its Connect",
            half.addr, hello.local
        );
        self.early.held.insert(key, (half, now + HOLD_FOR));
    }

    /// A `Connect` from `from` decided as an early punch with `token`; the
    /// connector named `local` (its IP, and the port it asked from).
    pub(super) fn early_connect(
        &mut self,
        from: SocketAddrV4,
        local: SocketAddrV4,
        token: Token,
        now: Instant,
    ) {
        let key = (*from.ip(), local);
        match self.early.held.remove(&key) {
            Some((half, _)) => {
                debug!(
                    "punch {token}: the connector's early rendezvous from {} was here first",
                    half.addr
                );
                self.arrive(token, Role::Connector, half, now);
            }
            None => {
                self.early.awaited.insert(key, (token, now + HOLD_FOR));
            }
        }
    }

    /// Hangs up hellos whose `Connect` never made them a punch, and forgets
    /// awaited keys past their time.
    pub(super) fn expire_early(&mut self, now: Instant) {
        let gone: Vec<EarlyKey> = self
            .early
            .held
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            if let Some((half, _)) = self.early.held.remove(&key) {
                debug!(
                    "rendezvous: the early punch hello from {} had no punch; closing it",
                    half.addr
                );
                self.emit(Effect::Hangup(half.stream));
            }
        }
        self.early.awaited.retain(|_, (_, until)| *until > now);
    }

    /// The early rendezvous held now.
    #[cfg(test)]
    pub fn early_held(&self) -> usize {
        self.early.held.len()
    }
}
