//! The UDP side of the broker (paper 4.2, issue 4): its tables, pure and
//! unit-tested, and the loop's I/O on the sockets behind them. What a
//! datagram does is the core's (`engine::udp`, `engine::channels`).
//!
//! * `rules`: the relay table: per UDP registration its `udp_token`, its
//!   data path and the peers allowed to talk to it.
//! * `channels`: a socket of the broker's own per client socket
//!   `connect`ed to a relayed peer, so the client's kernel tells that
//!   peer's datagrams from the other peers' (iperf3's UDP server).
//! * `io`: reading the proxy and channel sockets, and sending.
//!
//! Registration itself (the port, the socket, the token) and the Connect
//! decision table (with `MakeHole` for a UDP reversal) are the core's too,
//! shared with TCP.

pub(crate) mod channels;
mod io;
pub(crate) mod rules;

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use daemon_kit::throttle::Throttle;
use proto::gcb::Token;

use crate::config::Limits;
use channels::Channels;
use rules::UdpTable;

/// At most one warning line per kind of refusal per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The UDP relay state of the core.
pub struct UdpRelay {
    pub table: UdpTable,
    pub channels: Channels,
    /// Client datagrams to a peer without a rule.
    pub refused: Throttle,
    /// New peers refused at a registration's rule cap.
    pub full: Throttle,
    /// UDP hole punches under way, by token: the listener's proxy, the
    /// connector's mapping, and until when its report is taken
    /// (`engine::punch_udp`).
    pub punches: HashMap<Token, (SocketAddrV4, SocketAddrV4, Instant)>,
}

impl UdpRelay {
    pub fn new(limits: &Limits) -> Self {
        UdpRelay {
            table: UdpTable::new(idle(limits), limits.udp_rules_per_registration as usize),
            channels: Channels::new(idle(limits)),
            refused: Throttle::new(WARN_INTERVAL),
            full: Throttle::new(WARN_INTERVAL),
            punches: HashMap::new(),
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
