//! The connector's rendezvous that comes with its `Connect`
//! (`Features::PUNCH_EARLY`, docs/hole-punching.md): a shim that may be
//! punched opens its TCP rendezvous connection beside the `Connect` datagram,
//! so the hello and the `Connect` travel together. The hello cannot name the
//! token (the broker mints it when it decides); it is an early hello
//! (`PunchHello::early`) naming the `Connect`'s request id instead, a random
//! 64-bit number only the shim, the broker and the path between them see,
//! as they see the token. Either may arrive first:
//!
//! * an early hello that finds a punch awaiting its request id joins that
//!   pairing;
//! * one that finds none is **held** until its `Connect` comes, at most
//!   [`HOLD_FOR`] (then hung up: the connect was not punched, or never came),
//!   and at most [`MAX_HELD`] at once and [`MAX_HELD_PER_IP`] from one public
//!   IP (more are rejected with `LimitReached`; the shim then says its hello
//!   again on a new connection, with the token, once it has the decision);
//! * a `Connect` decided as an early punch takes a held hello of its request
//!   id, or leaves its token **awaited** under it for [`HOLD_FOR`].
//!
//! The request id alone decides, not the addresses: a NAT that sends a
//! host's TCP and UDP from different public IPs is served too, and what a
//! punch dials is the hello's own connection's source, as always.
//!
//! Invariants: a request id is held or awaited, never both; a held stream is
//! in no pairing; every held stream is joined, rejected or hung up exactly
//! once.
//!
//! Also here: the round trips last measured per public IP. A hello sent
//! with its connection's SYN (TCP Fast Open) arrives before the handshake
//! measured a round trip; the meeting then lines the sides up with the last
//! one measured from that IP, on an earlier meeting's report.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

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

#[derive(Debug, Default)]
pub(super) struct EarlyRendezvous {
    /// Early hellos by their `Connect`'s request id.
    held: HashMap<u64, (Half<StreamId>, Instant)>,
    /// Early punches' tokens by their `Connect`'s request id.
    awaited: HashMap<u64, (Token, Instant)>,
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
    /// An early hello naming `request_id`: joined, held, or rejected
    /// (module docs).
    pub(super) fn early_hello(&mut self, request_id: u64, half: Half<StreamId>, now: Instant) {
        if let Some((token, _)) = self.early.awaited.remove(&request_id) {
            debug!(
                "punch {token}: the connector's early rendezvous from {} is here",
                half.addr
            );
            self.early_joined(token, half, now);
            return;
        }
        let ip = *half.addr.ip();
        let from_ip = self
            .early
            .held
            .values()
            .filter(|(h, _)| *h.addr.ip() == ip)
            .count();
        if self.early.held.len() >= MAX_HELD
            || from_ip >= MAX_HELD_PER_IP
            || self.early.held.contains_key(&request_id)
        {
            self.counters.rendezvous_rejected += 1;
            self.reject_half(half, ErrorCode::LimitReached);
            return;
        }
        debug!(
            "rendezvous: an early punch hello from {} waits for its Connect",
            half.addr
        );
        self.early.held.insert(request_id, (half, now + HOLD_FOR));
    }

    /// The `Connect` with `request_id` was decided as an early punch with
    /// `token`.
    pub(super) fn early_connect(&mut self, request_id: u64, token: Token, now: Instant) {
        match self.early.held.remove(&request_id) {
            Some((half, _)) => {
                debug!(
                    "punch {token}: the connector's early rendezvous from {} was here first",
                    half.addr
                );
                self.early_joined(token, half, now);
            }
            None => {
                self.early
                    .awaited
                    .insert(request_id, (token, now + HOLD_FOR));
            }
        }
    }

    fn early_joined(&mut self, token: Token, half: Half<StreamId>, now: Instant) {
        self.counters.punch_early_joined += 1;
        self.arrive(token, Role::Connector, half, now);
    }

    /// Hangs up hellos whose `Connect` never made them a punch, and forgets
    /// awaited request ids past their time.
    pub(super) fn expire_early(&mut self, now: Instant) {
        let gone: Vec<u64> = self
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
