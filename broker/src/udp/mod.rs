//! The UDP side of the broker (paper 4.2, issue 4).
//!
//! * `rules`: the relay table: per UDP registration its `udp_token`, its
//!   data path and the peers allowed to talk to it; pure, unit-tested.
//! * `proxy`: the proxy UDP sockets: `Dummy` → `DummyAck` and data-path
//!   learning, relaying peer → client with a `UdpRelayHeader` and client →
//!   peer with the header stripped, all from the one proxy socket, so a
//!   regular peer only ever sees the proxy address.
//!
//! * `channels` / `channel_io`: a socket of the broker's own per client
//!   socket `connect`ed to a relayed peer, so the client's kernel tells
//!   that peer's datagrams from the other peers' (iperf3's UDP server).
//!
//! Registration itself (the port, the socket, the token) and the Connect
//! decision table (with `MakeHole` for a UDP reversal) are in `handlers`,
//! shared with TCP.

pub(crate) mod channel_io;
pub(crate) mod channels;
mod proxy;
pub(crate) mod rules;

use std::time::{Duration, Instant};

use daemon_kit::throttle::Throttle;
use tracing::debug;

use crate::config::Limits;
use crate::daemon::Daemon;
use channels::Channels;
use rules::UdpTable;

/// At most one warning line per kind of refusal per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The UDP relay state the event loop owns.
pub struct UdpRelay {
    pub table: UdpTable,
    pub channels: Channels,
    /// Client datagrams to a peer without a rule.
    refused: Throttle,
    /// New peers refused at a registration's rule cap.
    full: Throttle,
}

impl UdpRelay {
    pub fn new(limits: &Limits) -> Self {
        UdpRelay {
            table: UdpTable::new(idle(limits), limits.udp_rules_per_registration as usize),
            channels: Channels::new(idle(limits)),
            refused: Throttle::new(WARN_INTERVAL),
            full: Throttle::new(WARN_INTERVAL),
        }
    }

    /// Applies reloaded limits.
    pub fn set_limits(&mut self, limits: &Limits) {
        self.table
            .set_limits(idle(limits), limits.udp_rules_per_registration as usize);
        self.channels.set_idle(idle(limits));
    }
}

fn idle(limits: &Limits) -> Duration {
    Duration::from_secs(limits.udp_rule_idle_s)
}

impl Daemon {
    /// Sweeps idle UDP relay rules.
    pub(crate) fn expire_udp_rules(&mut self, now: Instant) {
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
