//! UDP hole punching, the broker's part (docs/hole-punching.md, "UDP"): a
//! UDP connect the table would relay between two private realms is punched
//! when both shims offer it (`Features::PUNCH_UDP`; the same rules as TCP,
//! `punch::punch_skip`) and both mappings are known.
//!
//! * `listener_at`: the listener socket's data path, which its Dummies to
//!   the proxy taught the broker exactly. None yet, within [`FRESH`] of the
//!   registration: its public IP and its socket's own port (iperf3's server
//!   binds its UDP socket and tells its client at once, whose `Connect` can
//!   beat the first Dummy by microseconds; a NAT that renumbers makes the
//!   guess wrong, which costs only the punch: the listener's proof never
//!   comes from there). None later: not punched.
//! * `target`: the connector socket's mapping. A registered connector
//!   socket (named by `connector_id`) has a data path too; an unregistered
//!   one is guessed as its public IP and its own port, and only when the
//!   `Connect` showed that its NAT keeps ports (`asked_from_port`, the
//!   probe socket's port, arrived unchanged). Otherwise not punched.
//!
//! The connector is told `PunchUdp` and keeps the relay from its first
//! datagram, so nothing waits on the punch and there is no verdict: the
//! broker hands `PunchHole` to the listener as it would `MakeHole` (a
//! pairing without a relay, over when acknowledged) and is done. Neither
//! side's datagrams tell the broker whether the direct path opened, so the
//! connector says so with one `Dummy{token}` to the proxy when it does;
//! that is `udp_punch_direct`, and clears the pair's UDP entry in the
//! outcome cache. A report from elsewhere, or after [`REPORT_TTL`], counts
//! nothing.
//!
//! The outcome cache learns a UDP failure only from an unpredictable
//! mapping (`punch_skip`, for UDP alone). A punch whose report never came
//! is not cached as failed: the report is one datagram that may be lost;
//! the miss cost the connector nothing but Dummies (it was on the relay
//! from its first datagram) or, for a connected socket, 0.7 s that its
//! shim already spares the next connects for a minute; and a missed punch
//! is what teaches the listener's shim to yield (docs/hole-punching.md),
//! after which the same pair punches: a cached miss would keep that pair
//! on the relay for the whole retry time.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use proto::gcb::Token;
use proto::{Endpoint, Proto};
use tracing::{debug, info};

use super::connect::ConnectReq;
use super::Engine;
use crate::registry::Record;

/// How long the broker takes a connector's report of its direct path: the
/// shims give up on the Dummies well within it.
pub const REPORT_TTL: Duration = Duration::from_secs(60);
/// Punches remembered for their reports at once; the oldest go first.
const MAX_PENDING: usize = 4096;
/// How long after a UDP registration its data path may still be on its way.
pub const FRESH: Duration = Duration::from_secs(1);

/// A UDP punch decided: the listener's and the connector's mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UdpPunch {
    pub listener_at: SocketAddrV4,
    pub target: SocketAddrV4,
}

impl Engine {
    /// Whether a UDP connect from `from` to `record`'s socket, both private
    /// in different realms, is punched, and between which mappings.
    pub(super) fn udp_punch(
        &mut self,
        from: SocketAddrV4,
        req: &ConnectReq,
        record: &Record,
        now: Instant,
    ) -> Option<UdpPunch> {
        if let Err(why) =
            self.punch_skip(Proto::Udp, from, req.features, req.asked_from_port, record, now)
        {
            self.count_skip(why);
            debug!(
                "connect udp from {from} to {}: not punched: {why:?}",
                req.target
            );
            return None;
        }
        let listener_at = match self.udp.table.data_path(&req.target) {
            Some(at) => at,
            None if now.saturating_duration_since(record.registered) < FRESH => {
                SocketAddrV4::new(record.ip, record.local.port())
            }
            None => {
                debug!(
                    "connect udp from {from} to {}: not punched: no data path",
                    req.target
                );
                return None;
            }
        };
        let registered = req
            .connector_id
            .filter(|id| self.registry.get(&Endpoint::new(Proto::Udp, *id)).is_some())
            .and_then(|id| self.udp.table.data_path(&id));
        let kept = req.asked_from_port != 0 && req.asked_from_port == from.port();
        let target = match registered {
            Some(observed) => observed,
            None if kept => SocketAddrV4::new(*from.ip(), req.connector.port()),
            None => {
                debug!(
                    "connect udp from {from} to {}: not punched: its mapping is unknown",
                    req.target
                );
                return None;
            }
        };
        Some(UdpPunch {
            listener_at,
            target,
        })
    }

    /// A punch was decided with `token`: its report is awaited.
    pub(super) fn udp_punch_started(
        &mut self,
        token: Token,
        proxy: SocketAddrV4,
        p: UdpPunch,
        now: Instant,
    ) {
        let pending = &mut self.udp.punches;
        pending.retain(|_, (_, _, until)| *until > now);
        if pending.len() >= MAX_PENDING {
            let oldest = pending
                .iter()
                .min_by_key(|(_, (_, _, until))| *until)
                .map(|(t, _)| *t);
            if let Some(t) = oldest {
                pending.remove(&t);
            }
        }
        pending.insert(token, (proxy, p.target, now + REPORT_TTL));
        self.counters.udp_punch_attempts += 1;
        debug!("udp {proxy}: punch {token}: connector {}, listener {}", p.target, p.listener_at);
    }

    /// A `Dummy{token}` at the proxy socket `proxy` from `from`, not the
    /// registration's own: whether it was a punch's report (taken, counted).
    pub(super) fn udp_punch_report(
        &mut self,
        proxy: SocketAddrV4,
        from: SocketAddrV4,
        token: Token,
        now: Instant,
    ) -> bool {
        let Some(&(at, target, until)) = self.udp.punches.get(&token) else {
            return false;
        };
        if at != proxy || target != from || until <= now {
            return false;
        }
        self.udp.punches.remove(&token);
        self.counters.udp_punch_direct += 1;
        // The pair punches UDP: an unpredictable mapping cached for it
        // since the decision was wrong, or is gone. An open path proves the
        // mappings, so it lifts a block set after the decision too.
        if let Some(listener) = self.registry.get(&Endpoint::new(Proto::Udp, proxy)) {
            let ip = listener.ip;
            self.punch_cache.clear(Proto::Udp, *from.ip(), ip);
        }
        info!("udp {proxy}: the punch {token} to {from} is direct");
        true
    }
}
