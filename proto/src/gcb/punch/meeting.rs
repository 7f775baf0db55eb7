//! The broker's side of one TCP hole punch (docs/hole-punching.md), without
//! I/O: the two sides' hellos come in, the meeting says what to send whom,
//! and when to splice the rendezvous connections into a relay or let them go.
//!
//! A meeting whose connector [commits on its own check](Meeting::committing_connector)
//! (an early punch) gives the listener a longer budget than the connector,
//! by half the margin: a connector that committed did so within its budget,
//! right after the connection to the listener came up, so the listener is
//! still dialing when the connector's hello reaches it, and reports
//! `Punched` too. A listener whose shims can (`Features::PUNCH_EARLY` in
//! their `Register`) is told in its go to use the connection at the
//! connector's proof (`PunchGo::commit`), without the verdict.
//!
//! Invariants, checked by the tests:
//! * each side gets exactly one `PunchVerdict`, and a `PunchGo` only before it;
//! * `Effect::Splice` comes with relay verdicts, `Effect::Release` with direct
//!   ones, and one of them (or `Effect::Drop`) ends every meeting once;
//! * exactly one [`Outcome`] per meeting, for the counters and the cache;
//! * nothing is sent after the meeting ended.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::budget::budget;
use super::frames::{BrokerFrame, PunchFailure, PunchGo, PunchReport, PunchVerdict};
use crate::gcb::{ErrorCode, Role};

/// One side as the broker saw it arrive at the rendezvous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The source of its rendezvous connection: its NAT mapping.
    pub observed: SocketAddrV4,
    /// The local address its hello named.
    pub local: SocketAddrV4,
    /// The connection's smoothed round-trip time, if the broker could read it.
    pub rtt: Option<Duration>,
}

impl Arrival {
    /// The NAT kept the side's port, so the peer can dial it.
    pub fn predictable(&self) -> bool {
        self.observed.port() == self.local.port()
    }
}

/// The broker's settings for punching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The least the sides may try: the floor of the budget, which follows
    /// their round trips ([`budget`]).
    pub min_budget: Duration,
    /// The longest the sides may try: the budget's ceiling.
    pub max_budget: Duration,
    /// The broker waits for both reports for the budget plus a margin as
    /// long as the budget, and at least this, before it decides for the
    /// relay itself: a side reports only once its budget ran out, and a
    /// report needs half a round trip and a wake-up to arrive.
    pub min_margin: Duration,
    /// Punch even when a NAT did not keep the port.
    pub punch_unpredictable: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_budget: super::budget::DEFAULT_FLOOR,
            max_budget: Duration::from_millis(500),
            min_margin: Duration::from_millis(100),
            punch_unpredictable: false,
        }
    }
}

/// Why the broker did not let the sides punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// A NAT gave the rendezvous connection another port than the side's.
    UnpredictableMapping,
}

/// Why a punch that was tried ended on the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// A side reported a failure (the first one to arrive).
    Failed(PunchFailure),
    /// Not both reports came within budget and margin.
    NoReport,
}

/// How a meeting ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Direct,
    Skipped(SkipReason),
    Fallback(FallbackReason),
    /// A side's rendezvous connection ended before the verdict: no connection.
    Vanished,
}

/// What the meeting asks the broker to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Send(Role, BrokerFrame),
    /// Join the two rendezvous connections as a relay (after relay verdicts).
    Splice,
    /// Close both rendezvous connections once the verdicts are out (direct).
    Release,
    /// Close whatever is left of the meeting (a side vanished).
    Drop,
    Ended(Outcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Gathering,
    Punching { until: Instant, reports: [Option<PunchReport>; 2] },
    Ended,
}

/// One punch between a connector and a listener.
#[derive(Debug, Clone)]
pub struct Meeting {
    /// What each side reports as its peer: the listener's proxy address for
    /// the connector, the connector's identity for the listener.
    peers: [SocketAddrV4; 2],
    arrivals: [Option<Arrival>; 2],
    policy: Policy,
    stage: Stage,
    /// The connector uses its connection without the verdict (module docs).
    connector_commits: bool,
    /// So does the listener, at the connector's proof.
    listener_follows: bool,
}

fn slot(role: Role) -> usize {
    match role {
        Role::Connector => 0,
        Role::Listener => 1,
    }
}

const ROLES: [Role; 2] = [Role::Connector, Role::Listener];

impl Meeting {
    /// `connector_sees` and `listener_sees` are each side's `getpeername`.
    pub fn new(connector_sees: SocketAddrV4, listener_sees: SocketAddrV4, policy: Policy) -> Self {
        Meeting { peers: [connector_sees, listener_sees], arrivals: [None, None], policy, stage: Stage::Gathering, connector_commits: false, listener_follows: false }
    }

    /// The connector commits on its own check (an early punch, module docs),
    /// and with `listener_follows` the listener is told to use the
    /// connection at the connector's proof. Its peer is then the go's
    /// `peer`, the connector's mapping: the caller asks it only where that
    /// is what the listener's verdict would have named.
    pub fn committing_connector(mut self, listener_follows: bool) -> Self {
        self.connector_commits = true;
        self.listener_follows = listener_follows;
        self
    }

    pub fn ended(&self) -> bool {
        self.stage == Stage::Ended
    }

    /// When [`timer`](Self::timer) must run next, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Punching { until, .. } => Some(until),
            _ => None,
        }
    }

    /// `role` arrived; a second arrival of a role is the caller's to refuse
    /// (it returns `None` here and changes nothing).
    pub fn arrived(&mut self, role: Role, arrival: Arrival, now: Instant) -> Option<Vec<Effect>> {
        if self.stage != Stage::Gathering || self.arrivals[slot(role)].is_some() {
            return None;
        }
        self.arrivals[slot(role)] = Some(arrival);
        let (Some(c), Some(l)) = (self.arrivals[0], self.arrivals[1]) else { return Some(Vec::new()) };
        let predictable = c.predictable() && l.predictable();
        if !predictable && !self.policy.punch_unpredictable {
            return Some(self.verdicts(false, Outcome::Skipped(SkipReason::UnpredictableMapping)));
        }
        let delays = line_up(c.rtt, l.rtt);
        let budget = budget(c.rtt, l.rtt, self.policy.min_budget, self.policy.max_budget);
        let margin = budget.max(self.policy.min_margin);
        self.stage = Stage::Punching { until: now + budget + margin, reports: [None, None] };
        // Half the margin more for the listener of a committing connector,
        // well inside the broker's own deadline of budget plus margin.
        let listener_extra = if self.connector_commits { margin / 2 } else { Duration::ZERO };
        let go = |i: usize, other: Arrival| {
            let listener = ROLES[i] == Role::Listener;
            let budget = if listener { budget + listener_extra } else { budget };
            let commit = listener && self.listener_follows;
            let frame = PunchGo { peer: other.observed, delay: delays[i], budget, commit };
            Effect::Send(ROLES[i], BrokerFrame::Go(frame))
        };
        Some(vec![go(0, l), go(1, c)])
    }

    /// `role` reported. A report out of turn (before the go, twice, or after
    /// the end) changes nothing.
    pub fn reported(&mut self, role: Role, report: PunchReport) -> Vec<Effect> {
        let Stage::Punching { until, mut reports } = self.stage else { return Vec::new() };
        if reports[slot(role)].is_some() {
            return Vec::new();
        }
        reports[slot(role)] = Some(report);
        if let PunchReport::Failed(why) = report {
            // No need to wait for the other: the relay it is.
            return self.verdicts(false, Outcome::Fallback(FallbackReason::Failed(why)));
        }
        match reports {
            [Some(PunchReport::Punched), Some(PunchReport::Punched)] => self.verdicts(true, Outcome::Direct),
            _ => {
                self.stage = Stage::Punching { until, reports };
                Vec::new()
            }
        }
    }

    /// The timer: past budget and margin without both reports, the relay.
    pub fn timer(&mut self, now: Instant) -> Vec<Effect> {
        match self.stage {
            Stage::Punching { until, .. } if now >= until => self.verdicts(false, Outcome::Fallback(FallbackReason::NoReport)),
            _ => Vec::new(),
        }
    }

    /// `role`'s rendezvous connection ended (closed, reset, or bytes that
    /// were not a report). The other side, if it is there and has no verdict
    /// yet, is rejected with `NotRegistered`, which its program sees as
    /// ECONNREFUSED, as from a peer that reset the connection: with one side
    /// gone there is no relay either.
    pub fn vanished(&mut self, role: Role) -> Vec<Effect> {
        if self.stage == Stage::Ended {
            return Vec::new();
        }
        self.stage = Stage::Ended;
        let other = match role {
            Role::Connector => Role::Listener,
            Role::Listener => Role::Connector,
        };
        let mut out = Vec::new();
        if self.arrivals[slot(other)].is_some() {
            out.push(Effect::Send(other, BrokerFrame::Verdict(PunchVerdict::Rejected { code: ErrorCode::NotRegistered })));
        }
        out.push(Effect::Drop);
        out.push(Effect::Ended(Outcome::Vanished));
        out
    }

    fn verdicts(&mut self, direct: bool, outcome: Outcome) -> Vec<Effect> {
        self.stage = Stage::Ended;
        let mut out: Vec<Effect> = (0..2)
            .map(|i| {
                let peer = self.peers[i];
                let v = if direct { PunchVerdict::Direct { peer } } else { PunchVerdict::Relay { peer } };
                Effect::Send(ROLES[i], BrokerFrame::Verdict(v))
            })
            .collect();
        out.push(if direct { Effect::Release } else { Effect::Splice });
        out.push(Effect::Ended(outcome));
        out
    }
}

/// Delays that make both sides start together: each go travels about half
/// its connection's round trip, so the nearer side waits half the difference.
/// Without both measurements, no delay.
pub fn line_up(connector_rtt: Option<Duration>, listener_rtt: Option<Duration>) -> [Duration; 2] {
    match (connector_rtt, listener_rtt) {
        (Some(c), Some(l)) => {
            let far = c.max(l);
            [(far - c) / 2, (far - l) / 2]
        }
        _ => [Duration::ZERO; 2],
    }
}
