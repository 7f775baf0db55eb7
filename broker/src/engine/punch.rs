//! TCP hole punching, the broker's part (docs/hole-punching.md): whether a
//! connect between two private realms is punched, and what becomes of the
//! two rendezvous connections once both sides said `PunchHello`.
//!
//! * The decision ([`Engine::punch_skip`]): both shims offer it (the
//!   connector in its `Connect`, every holder of the listener's
//!   registration in its `Register`, so the failed-command rule may send
//!   `PunchConnect` on to any of them), punching is on, the pair of public
//!   IPs is not in the outcome cache for the connect's protocol, and the
//!   connector's NAT kept the port of its `Connect` (`asked_from_port`).
//!   Otherwise the connect is relayed as before and the reason counted.
//! * The pairing waits for both hellos like a relay's (`pairing`, same
//!   expiry, same failed-command rule). Then proto's [`Meeting`] decides;
//!   this module carries its effects out as the loop's: frames to send,
//!   streams to read a report from, a splice into a relay (without
//!   `StreamPeer`: the relay verdict told each side), a quiet close after a
//!   direct verdict, the outcome into the counters and the cache.
//! * One rule of the broker's own: a relay verdict for a side that was told
//!   to go and has not reported yet is held until its report arrives (or a
//!   short grace after the meeting's deadline). The side sends its report
//!   before it reads the verdict, so one sent while the verdict travels
//!   would otherwise reach the relay, and the peer's program would read
//!   8 bytes of protocol. A listener that follows an early punch's connector
//!   (`PunchGo::commit`) reports even after its verdict, so its relay
//!   verdict goes at once, and only the splice waits for that report: its
//!   longer budget would otherwise hold a fallback's relay for the
//!   difference.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use proto::gcb::punch::{
    Arrival, BrokerFrame, Effect as Step, FallbackReason, Meeting, Outcome, Policy, PunchFailure,
    PunchHello, PunchReport, PunchVerdict, SkipReason,
};
use proto::gcb::{ErrorCode, Features, Role, Token};
use proto::Proto;
use tracing::{debug, info};

use super::{Effect, Engine, RelayStart, StreamId};
use crate::pairing::{Half, Pending};
use crate::registry::Record;

/// How long past the meeting's deadline a held verdict waits for its
/// side's report before it is sent anyway.
const HOLD_GRACE: Duration = Duration::from_millis(250);

/// Why a connect between private realms is not punched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotCapable,
    Disabled,
    CachedFailure,
    UnpredictableMapping,
    /// Different realms behind one public IP (named realms): the sides
    /// would need their gateway to hairpin. Not counted.
    SamePublicIp,
}

/// One punch whose sides are both here.
#[derive(Debug)]
pub(super) struct Punch {
    meeting: Meeting,
    /// Connector, listener.
    streams: [StreamId; 2],
    addrs: [SocketAddrV4; 2],
    proxy: SocketAddrV4,
    connector_id: SocketAddrV4,
    /// When the connect was decided (the pairing's creation).
    decided: Instant,
    /// Each side was told to go, and reported.
    went: [bool; 2],
    reported: [bool; 2],
    /// Relay verdicts waiting for their side's report (module docs).
    held: [Option<BrokerFrame>; 2],
    /// Relay verdicts sent to a side whose report is still to come, which the
    /// splice waits for (a following listener, module docs).
    awaiting: [bool; 2],
    /// The listener follows the connector (`PunchGo::commit`).
    follows: bool,
    /// The meeting's deadline as set at the go: a held verdict waits past
    /// it (the meeting forgets it once it ended).
    until: Option<Instant>,
    /// The splice waits for the held verdicts.
    splice: bool,
    hold_until: Option<Instant>,
}

fn slot(role: Role) -> usize {
    match role {
        Role::Connector => 0,
        Role::Listener => 1,
    }
}

impl Punch {
    fn deadline(&self) -> Option<Instant> {
        [self.meeting.deadline(), self.hold_until].into_iter().flatten().min()
    }
}

impl Engine {
    /// Whether a `proto` connect from `from` to `record`'s socket, both
    /// private in different realms, may be punched; `Err` says why not.
    /// The cache is read and written for `proto` alone.
    pub(super) fn punch_skip(
        &mut self,
        proto: Proto,
        from: SocketAddrV4,
        features: Features,
        asked_from_port: u16,
        record: &Record,
        now: Instant,
    ) -> Result<(), Skip> {
        let p = self.config.limits.punch;
        let wanted = if proto == Proto::Tcp { Features::PUNCH_TCP } else { Features::PUNCH_UDP };
        if !features.contains(wanted) || !record.all_offer(wanted) {
            return Err(Skip::NotCapable);
        }
        if !p.enabled {
            return Err(Skip::Disabled);
        }
        if *from.ip() == record.ip {
            return Err(Skip::SamePublicIp);
        }
        if self.punch_cache.blocked(proto, *from.ip(), record.ip, now) {
            return Err(Skip::CachedFailure);
        }
        let kept = asked_from_port == 0 || asked_from_port == from.port();
        if !kept && !p.unpredictable {
            let retry = Duration::from_secs(p.retry_s);
            self.punch_cache.failed(proto, *from.ip(), record.ip, retry, now);
            return Err(Skip::UnpredictableMapping);
        }
        Ok(())
    }

    /// Counts a connect that was not punched.
    pub(super) fn count_skip(&mut self, skip: Skip) {
        let c = &mut self.counters;
        match skip {
            Skip::NotCapable => c.punch_skipped_not_capable += 1,
            Skip::Disabled => c.punch_skipped_disabled += 1,
            Skip::CachedFailure => c.punch_skipped_cached_failure += 1,
            Skip::UnpredictableMapping => c.punch_skipped_unpredictable_mapping += 1,
            Skip::SamePublicIp => {}
        }
    }

    fn policy(&self) -> Policy {
        let p = self.config.limits.punch;
        Policy {
            min_budget: Duration::from_millis(p.budget_min_ms),
            max_budget: Duration::from_millis(p.budget_ms),
            punch_unpredictable: p.unpredictable,
            ..Policy::default()
        }
    }

    /// A rendezvous connection `stream` from `addr` said `hello`; `rtt` is
    /// the connection's smoothed round trip, if the loop could read it.
    pub fn on_punch_hello(
        &mut self,
        hello: PunchHello,
        stream: StreamId,
        addr: SocketAddrV4,
        rtt: Option<Duration>,
        now: Instant,
    ) {
        let arrival = Arrival {
            observed: addr,
            local: hello.local,
            rtt: self.early.rtt(*addr.ip(), rtt),
        };
        let half = Half {
            stream,
            addr,
            punch: Some(arrival),
        };
        if hello.early {
            self.early_hello(hello.token.0, half, now);
            return;
        }
        self.arrive(hello.token, hello.role, half, now);
    }

    /// Both sides of a punch are here: the meeting starts.
    pub(super) fn start_punch(&mut self, token: Token, p: Pending<StreamId>, now: Instant) {
        let (Some(c), Some(l)) = (p.connector, p.listener) else {
            return;
        };
        let (Some(ca), Some(la)) = (c.punch, l.punch) else {
            return;
        };
        let connector_id = p.connector_id.unwrap_or(c.addr);
        let meeting = Meeting::new(p.proxy, connector_id, self.policy());
        // The listener follows at the connector's proof only where the go's
        // peer is what its verdict would name.
        let follows = p.early && p.listener_follows && connector_id == c.addr;
        let punch = Punch {
            meeting: match p.early {
                true => meeting.committing_connector(follows),
                false => meeting,
            },
            streams: [c.stream, l.stream],
            addrs: [c.addr, l.addr],
            proxy: p.proxy,
            connector_id,
            decided: p.created,
            went: [false; 2],
            reported: [false; 2],
            held: [None, None],
            awaiting: [false; 2],
            follows,
            until: None,
            splice: false,
            hold_until: None,
        };
        debug!(
            "punch {token}: connector {} (local {}), listener {} (local {}) are here",
            c.addr, ca.local, l.addr, la.local
        );
        self.punch_streams.insert(c.stream, (token, Role::Connector));
        self.punch_streams.insert(l.stream, (token, Role::Listener));
        self.punches.insert(token, punch);
        self.emit(Effect::PunchWatch(c.stream));
        self.emit(Effect::PunchWatch(l.stream));
        let mut steps = Vec::new();
        for (role, arrival) in [(Role::Connector, ca), (Role::Listener, la)] {
            if let Some(punch) = self.punches.get_mut(&token) {
                steps.extend(punch.meeting.arrived(role, arrival, now).unwrap_or_default());
            }
        }
        self.carry_steps(token, steps, now);
    }

    /// A punch's side reported; `rtt` is its connection's smoothed round
    /// trip by now, if the loop could read it (kept for its IP's next hello
    /// that comes before its handshake, `punch_early`).
    pub fn on_punch_report(&mut self, stream: StreamId, report: PunchReport, rtt: Option<Duration>, now: Instant) {
        let Some(&(token, role)) = self.punch_streams.get(&stream) else {
            return;
        };
        let Some(punch) = self.punches.get_mut(&token) else {
            return;
        };
        let i = slot(role);
        if let Some(rtt) = rtt {
            self.early.remember_rtt(*punch.addrs[i].ip(), rtt);
        }
        punch.reported[i] = true;
        debug!("punch {token}: the {role:?} reported {report:?}");
        if std::mem::take(&mut punch.awaiting[i]) {
            // Its verdict went already; the loop read the report off the stream.
            self.maybe_splice(token, now);
            return;
        }
        if let Some(frame) = punch.held[i].take() {
            self.send_verdict(token, role, frame);
            self.maybe_splice(token, now);
            return;
        }
        let steps = punch.meeting.reported(role, report);
        self.carry_steps(token, steps, now);
    }

    /// A punch's rendezvous connection ended, failed, or sent bytes that
    /// are no report, before its verdict.
    pub fn on_punch_gone(&mut self, stream: StreamId, now: Instant) {
        let Some(&(token, role)) = self.punch_streams.get(&stream) else {
            return;
        };
        let Some(punch) = self.punches.get_mut(&token) else {
            return;
        };
        if punch.meeting.ended() {
            // Its verdict was held: the other side has its relay verdict and
            // may be sending, so it learns of the loss as from a reset.
            info!("punch {token}: the {role:?} left before its relay verdict");
            self.end_punch(token, true);
            return;
        }
        debug!("punch {token}: the {role:?} left");
        let steps = punch.meeting.vanished(role);
        self.carry_steps(token, steps, now);
    }

    /// The earliest deadline of the punches under way.
    pub(super) fn next_punch_deadline(&self) -> Option<Instant> {
        self.punches.values().filter_map(Punch::deadline).min()
    }

    /// Runs the meetings' timers and lets held verdicts go at `now`.
    pub(super) fn expire_punches(&mut self, now: Instant) {
        let due: Vec<Token> = self
            .punches
            .iter()
            .filter(|(_, p)| p.deadline().is_some_and(|d| d <= now))
            .map(|(t, _)| *t)
            .collect();
        for token in due {
            let Some(punch) = self.punches.get_mut(&token) else {
                continue;
            };
            if punch.hold_until.is_some_and(|h| h <= now) {
                punch.hold_until = None;
                for role in [Role::Connector, Role::Listener] {
                    let i = slot(role);
                    if let Some(p) = self.punches.get_mut(&token).filter(|p| p.awaiting[i]) {
                        p.awaiting[i] = false;
                        let stream = p.streams[i];
                        debug!("punch {token}: no report from the {role:?} after its verdict; relaying anyway");
                        self.emit(Effect::PunchUnwatch(stream));
                    }
                    if let Some(frame) = self.punches.get_mut(&token).and_then(|p| p.held[slot(role)].take()) {
                        debug!("punch {token}: no report from the {role:?}; its verdict goes anyway");
                        self.send_verdict(token, role, frame);
                    }
                }
                self.maybe_splice(token, now);
                continue;
            }
            let steps = punch.meeting.timer(now);
            self.carry_steps(token, steps, now);
        }
    }

    /// Carries out the meeting's steps for `token`.
    fn carry_steps(&mut self, token: Token, steps: Vec<Step>, now: Instant) {
        // The outcome first, while the punch is still on record.
        let (ended, steps): (Vec<Step>, Vec<Step>) =
            steps.into_iter().partition(|s| matches!(s, Step::Ended(_)));
        for step in ended {
            if let Step::Ended(outcome) = step {
                self.punch_ended(token, outcome, now);
            }
        }
        for step in steps {
            let Some(punch) = self.punches.get_mut(&token) else {
                return;
            };
            match step {
                Step::Send(role, frame @ BrokerFrame::Go(go)) => {
                    debug!("punch {token}: the {role:?} goes after {:?} for {:?}", go.delay, go.budget);
                    punch.went[slot(role)] = true;
                    punch.until = punch.meeting.deadline();
                    let stream = punch.streams[slot(role)];
                    self.emit(Effect::PunchSend { stream, frame });
                }
                Step::Send(role, frame) => {
                    let i = slot(role);
                    let relay = matches!(frame, BrokerFrame::Verdict(PunchVerdict::Relay { .. }));
                    if relay && punch.went[i] && !punch.reported[i] {
                        // Past the meeting's deadline, which is past every
                        // side's budget: its report comes before then.
                        let until = punch.until.unwrap_or(now).max(now);
                        punch.hold_until = Some(until + HOLD_GRACE);
                        if punch.follows && role == Role::Listener {
                            punch.awaiting[i] = true;
                            let stream = punch.streams[i];
                            self.emit(Effect::PunchSend { stream, frame });
                        } else {
                            punch.held[i] = Some(frame);
                        }
                    } else {
                        self.send_verdict(token, role, frame);
                    }
                }
                Step::Splice => {
                    punch.splice = true;
                    self.maybe_splice(token, now);
                }
                Step::Release | Step::Drop => self.end_punch(token, false),
                Step::Ended(_) => {}
            }
        }
    }

    fn send_verdict(&mut self, token: Token, role: Role, frame: BrokerFrame) {
        let Some(punch) = self.punches.get(&token) else {
            return;
        };
        let stream = punch.streams[slot(role)];
        // What follows the verdict on this connection is the program's.
        self.emit(Effect::PunchUnwatch(stream));
        self.emit(Effect::PunchSend { stream, frame });
    }

    /// Splices the two rendezvous connections once no verdict is held.
    fn maybe_splice(&mut self, token: Token, now: Instant) {
        let ready = self
            .punches
            .get(&token)
            .is_some_and(|p| p.splice && p.held.iter().all(Option::is_none) && !p.awaiting.contains(&true));
        if !ready {
            return;
        }
        let Some(p) = self.forget_punch(token) else {
            return;
        };
        let [c, l] = p.streams;
        if self.relays >= self.config.limits.max_relays as usize {
            // Both were told "relay": a reset is the only honest answer left.
            self.relay_refused(&format!("the punch fallback of {} and {}", p.addrs[0], p.addrs[1]), now);
            self.emit(Effect::Abort(c));
            self.emit(Effect::Abort(l));
            return;
        }
        self.relays += 1;
        self.emit(Effect::Relay(RelayStart {
            token,
            gcb: true,
            punched: true,
            connector: Half::plain(c, p.addrs[0]),
            listener: Half::plain(l, p.addrs[1]),
            proxy: p.proxy,
            connector_id: p.connector_id,
        }));
    }

    /// Hands both streams back: closed quietly, or reset with `abort`.
    fn end_punch(&mut self, token: Token, abort: bool) {
        if let Some(p) = self.forget_punch(token) {
            for stream in p.streams {
                self.emit(if abort { Effect::Abort(stream) } else { Effect::Hangup(stream) });
            }
        }
    }

    fn forget_punch(&mut self, token: Token) -> Option<Punch> {
        let p = self.punches.remove(&token)?;
        for s in p.streams {
            self.punch_streams.remove(&s);
        }
        Some(p)
    }

    /// The meeting's one outcome: the counters, the cache, the log.
    fn punch_ended(&mut self, token: Token, outcome: Outcome, now: Instant) {
        let Some(p) = self.punches.get(&token) else {
            return;
        };
        let ips: [Ipv4Addr; 2] = [*p.addrs[0].ip(), *p.addrs[1].ip()];
        let (c, l, decided) = (p.addrs[0], p.addrs[1], p.decided);
        let retry = Duration::from_secs(self.config.limits.punch.retry_s);
        let n = &mut self.counters;
        let failed = match outcome {
            Outcome::Direct => {
                n.punch_succeeded += 1;
                self.punch_cache.succeeded(Proto::Tcp, ips[0], ips[1], decided);
                false
            }
            Outcome::Vanished => {
                n.punch_vanished += 1;
                false
            }
            Outcome::Skipped(SkipReason::UnpredictableMapping) => {
                n.punch_skipped_unpredictable_mapping += 1;
                true
            }
            Outcome::Fallback(why) => {
                *match why {
                    FallbackReason::NoReport => &mut n.punch_fallbacks_no_report,
                    FallbackReason::Failed(PunchFailure::Timeout) => &mut n.punch_fallbacks_timeout,
                    FallbackReason::Failed(PunchFailure::CheckFailed) => &mut n.punch_fallbacks_check_failed,
                    FallbackReason::Failed(_) => &mut n.punch_fallbacks_local_error,
                } += 1;
                true
            }
        };
        if failed {
            self.punch_cache.failed(Proto::Tcp, ips[0], ips[1], retry, now);
        }
        info!(
            "punch {token} between connector {c} and listener {l} for {}: {}",
            p.proxy,
            describe(outcome)
        );
    }

    /// A rejection for `half`, in the frame its hello family reads.
    pub(super) fn reject_half(&mut self, half: Half<StreamId>, code: ErrorCode) {
        self.emit(match half.punch {
            Some(_) => Effect::RejectPunch {
                stream: half.stream,
                code,
            },
            None => Effect::Reject {
                stream: half.stream,
                code,
            },
        });
    }
}

fn describe(outcome: Outcome) -> String {
    match outcome {
        Outcome::Direct => "direct".into(),
        Outcome::Vanished => "a side left, no connection".into(),
        Outcome::Skipped(SkipReason::UnpredictableMapping) => {
            "relayed: a NAT did not keep the port".into()
        }
        Outcome::Fallback(FallbackReason::NoReport) => "relayed: a report did not come".into(),
        Outcome::Fallback(FallbackReason::Failed(f)) => format!("relayed: {}", f.name()),
    }
}
