//! TCP hole punching in the core (`engine::punch`): the decision and each
//! reason not to punch, both commands' contents, the meeting carried out
//! (go, reports, verdicts, the splice without `StreamPeer`, the quiet close
//! after a direct verdict), the held verdict, the outcome cache, and the
//! hello families kept apart.

use std::net::SocketAddrV4;
use std::time::Duration;

use proto::gcb::punch::{BrokerFrame, PunchFailure, PunchGo, PunchReport, PunchVerdict};
use proto::gcb::{Decision, ErrorCode, Message, Role, Token};
use proto::Proto;

use super::harness::{a, limits, Bed, Fate, Proc, BROKER};
use crate::config::Punch;
use crate::engine::StreamId;

/// The listener in realm A, the connector in realm B, as the bed places
/// them: where their rendezvous connections come from and their own
/// addresses (port-keeping NATs).
const C_SEEN: &str = "198.51.100.2:40000";
const C_LOCAL: &str = "10.1.0.10:40000";
const L_SEEN: &str = "198.51.100.1:41000";
const L_LOCAL: &str = "192.0.2.10:41000";

pub(super) struct Setup {
    pub bed: Bed,
    pub listener: Proc,
    pub connector: Proc,
    pub proxy: SocketAddrV4,
}

pub(super) fn setup(punch: Punch) -> Setup {
    let mut l = limits();
    l.punch = punch;
    let mut bed = Bed::with(l);
    let (listener, connector) = (Proc::in_a(1), Proc::in_b(2));
    let proxy = match bed.ask(listener.mgmt, listener.register_punching(8080)) {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    };
    Setup { bed, listener, connector, proxy }
}

fn decision(reply: Message) -> Decision {
    match reply {
        Message::ConnectDecision(d) => d,
        other => panic!("not a decision: {other:?}"),
    }
}

impl Setup {
    fn connect(&mut self, msg: Message) -> Decision {
        decision(self.bed.ask(self.connector.mgmt, msg))
    }

    /// A punching connect decided `PunchTcp`; its token.
    fn punch(&mut self) -> Token {
        let msg = self.connector.connect_punching(self.proxy);
        match self.connect(msg) {
            Decision::PunchTcp { via, token, .. } => {
                assert_eq!(via, a(BROKER));
                token
            }
            other => panic!("not punched: {other:?}"),
        }
    }

    /// Both sides at the rendezvous: (connector, listener) streams.
    fn meet(&mut self, token: Token, l_local: &str) -> (StreamId, StreamId) {
        let c = self.bed.punch_hello(token, Role::Connector, a(C_SEEN), a(C_LOCAL), 30);
        let l = self.bed.punch_hello(token, Role::Listener, a(L_SEEN), a(l_local), 10);
        (c, l)
    }
}

fn relay_verdict(peer: &str) -> BrokerFrame {
    BrokerFrame::Verdict(PunchVerdict::Relay { peer: a(peer) })
}

#[test]
fn a_capable_pair_is_punched_and_both_commands_say_so() {
    let mut s = setup(Punch::default());
    let token = s.punch();
    let (id, cmd) = s.bed.last_command(s.listener.mgmt).expect("the listener is commanded");
    // Until its rendezvous connection arrives the connector is known by its
    // public IP and its own port, as for a relay.
    let guess = SocketAddrV4::new(*s.connector.mgmt.ip(), 40000);
    assert_eq!(cmd, Message::PunchConnect { token, broker: a(BROKER), peer: guess, proxy: s.proxy, standby: false });
    s.bed.answer(s.listener.mgmt, id, Message::Ack);
    assert_eq!((s.bed.counter("punch_attempts"), s.bed.counter("decided_relay")), (1, 0));
    assert_eq!(s.bed.engine.pairings.relaying(), 1, "it may become a relay: it counts against the limit");

    let (c, l) = s.meet(token, L_LOCAL);
    assert_eq!(s.bed.watched.len(), 2, "both are read for their reports");
    // Each is told to dial the other's mapping; the nearer (listener, 10 ms)
    // waits half the difference of the round trips. The budget is ten times
    // their sum, under the 500 ms ceiling.
    let go = |peer: &str, delay| BrokerFrame::Go(PunchGo { peer: a(peer), delay, budget: Duration::from_millis(400), commit: false });
    assert_eq!(s.bed.frames_to(c), [go(L_SEEN, Duration::ZERO)]);
    assert_eq!(s.bed.frames_to(l), [go(C_SEEN, Duration::from_millis(10))]);

    s.bed.report(c, PunchReport::Punched);
    assert!(s.bed.fates.is_empty(), "waits for the other report");
    s.bed.report(l, PunchReport::Punched);
    let direct = |peer: &str| BrokerFrame::Verdict(PunchVerdict::Direct { peer: a(peer) });
    assert_eq!(s.bed.frames_to(c)[1], direct(&s.proxy.to_string()), "the connector reports the proxy address");
    assert_eq!(s.bed.frames_to(l)[1], direct(C_SEEN), "the listener, the connector as seen");
    assert_eq!((s.bed.fates[&c], s.bed.fates[&l]), (Fate::HungUp, Fate::HungUp));
    assert!(s.bed.relays.is_empty());
    assert_eq!(s.bed.counter("punch_succeeded"), 1);
    assert_eq!(s.bed.engine.gauges(s.bed.now).punches, 0);
    // A success leaves the pair free to punch again.
    s.punch();
}

#[test]
fn a_failure_falls_back_to_a_relay_without_stream_peer_and_is_cached() {
    // A retry time within the registration's heartbeat timeout.
    let mut s = setup(Punch { retry_s: 20, ..Punch::default() });
    let token = s.punch();
    let (c, l) = s.meet(token, L_LOCAL);
    s.bed.report(c, PunchReport::Failed(PunchFailure::Timeout));
    assert_eq!(s.bed.frames_to(c)[1], relay_verdict(&s.proxy.to_string()));
    // The listener was told to go and has not reported: its verdict waits,
    // so a report already on its way cannot reach the relay.
    assert_eq!(s.bed.frames_to(l).len(), 1);
    assert!(s.bed.relays.is_empty());
    s.bed.report(l, PunchReport::Failed(PunchFailure::Timeout));
    assert_eq!(s.bed.frames_to(l)[1], relay_verdict(C_SEEN));
    let r = &s.bed.relays[0];
    assert!(r.punched && r.token == token && r.proxy == s.proxy);
    assert_eq!((r.connector.stream, r.listener.stream), (c, l));
    assert_eq!((s.bed.fates[&c], s.bed.fates[&l]), (Fate::Relayed, Fate::Relayed));
    assert!(s.bed.watched.is_empty());
    assert_eq!(s.bed.counter("punch_fallbacks_timeout"), 1);

    // The pair goes to the relay at once now, as before punching existed.
    let d = s.connect(s.connector.connect_punching(s.proxy));
    assert!(matches!(d, Decision::Relay { .. }), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_cached_failure"), 1);
    let (_, cmd) = s.bed.last_command(s.listener.mgmt).unwrap();
    assert!(matches!(cmd, Message::RelayConnect { .. }), "{cmd:?}");
    // ... until the retry time has passed.
    s.bed.advance(Duration::from_secs(21));
    s.punch();
}

#[test]
fn each_fallback_reason_is_counted() {
    for (why, counter) in [
        (PunchFailure::CheckFailed, "punch_fallbacks_check_failed"),
        (PunchFailure::LocalError, "punch_fallbacks_local_error"),
    ] {
        let mut s = setup(Punch::default());
        let token = s.punch();
        let (c, l) = s.meet(token, L_LOCAL);
        s.bed.report(l, PunchReport::Failed(why));
        s.bed.report(c, PunchReport::Punched);
        assert_eq!(s.bed.relays.len(), 1);
        assert_eq!(s.bed.counter(counter), 1, "{why:?}");
    }
}

#[test]
fn without_reports_the_timer_relays_and_held_verdicts_go_after_a_grace() {
    let mut s = setup(Punch { budget_ms: 300, ..Punch::default() });
    let token = s.punch();
    let (c, l) = s.meet(token, L_LOCAL);
    // Budget 300 ms and a margin as long: nothing at 0.55 s.
    s.bed.advance(Duration::from_millis(550));
    assert_eq!(s.bed.frames.len(), 2, "only the gos");
    s.bed.advance(Duration::from_millis(100));
    assert_eq!(s.bed.counter("punch_fallbacks_no_report"), 1);
    assert_eq!(s.bed.frames.len(), 2, "both verdicts held for the reports");
    // One report comes: its verdict goes; the other's after the grace.
    s.bed.report(c, PunchReport::Failed(PunchFailure::Timeout));
    assert_eq!(s.bed.frames_to(c).len(), 2);
    assert!(s.bed.relays.is_empty());
    s.bed.advance(Duration::from_millis(300));
    assert_eq!(s.bed.frames_to(l)[1], relay_verdict(C_SEEN));
    assert_eq!(s.bed.relays.len(), 1);
    assert!(s.bed.relays[0].punched);
    assert_eq!(s.bed.engine.gauges(s.bed.now).punches, 0, "nothing left to time");
}

#[test]
fn on_a_short_path_the_budget_is_the_floor_and_the_timer_follows_it() {
    let mut s = setup(Punch::default());
    let token = s.punch();
    let c = s.bed.punch_hello(token, Role::Connector, a(C_SEEN), a(C_LOCAL), 1);
    let l = s.bed.punch_hello(token, Role::Listener, a(L_SEEN), a(L_LOCAL), 1);
    let floor = proto::gcb::punch::budget::DEFAULT_FLOOR;
    assert!(matches!(s.bed.frames_to(c)[..], [BrokerFrame::Go(PunchGo { budget, .. })] if budget == floor));
    assert!(matches!(s.bed.frames_to(l)[..], [BrokerFrame::Go(PunchGo { budget, .. })] if budget == floor));
    // The floor plus a margin as long, not the ceiling's second.
    s.bed.advance(floor * 2 - Duration::from_millis(10));
    assert_eq!(s.bed.counter("punch_fallbacks_no_report"), 0);
    s.bed.advance(Duration::from_millis(20));
    assert_eq!(s.bed.counter("punch_fallbacks_no_report"), 1);
}

#[test]
fn a_side_that_leaves_rejects_the_other_and_no_relay_is_made() {
    let mut s = setup(Punch::default());
    let token = s.punch();
    let (c, l) = s.meet(token, L_LOCAL);
    s.bed.gone(c);
    assert_eq!(s.bed.frames_to(l)[1], BrokerFrame::Verdict(PunchVerdict::Rejected { code: ErrorCode::NotRegistered }));
    assert_eq!((s.bed.fates[&c], s.bed.fates[&l]), (Fate::HungUp, Fate::HungUp));
    assert_eq!(s.bed.counter("punch_vanished"), 1);
    assert!(s.bed.relays.is_empty());
    // Leaving is no failure of the pair's NATs: the next one punches.
    s.punch();

    // A side that leaves while its relay verdict is held: the other, told
    // "relay" already, is reset.
    let mut s = setup(Punch::default());
    let token = s.punch();
    let (c, l) = s.meet(token, L_LOCAL);
    s.bed.report(c, PunchReport::Failed(PunchFailure::Timeout));
    s.bed.gone(l);
    assert_eq!((s.bed.fates[&c], s.bed.fates[&l]), (Fate::Aborted, Fate::Aborted));
    assert!(s.bed.relays.is_empty());
}

#[test]
fn an_unpredictable_mapping_is_relayed_at_once_and_cached() {
    // At the rendezvous: the listener's NAT gave it another port.
    let mut s = setup(Punch::default());
    let token = s.punch();
    let (c, l) = s.meet(token, "192.0.2.10:5555");
    assert_eq!(s.bed.frames_to(c), [relay_verdict(&s.proxy.to_string())], "no go: a verdict at once");
    assert_eq!(s.bed.frames_to(l), [relay_verdict(C_SEEN)]);
    assert!(s.bed.relays[0].punched);
    assert_eq!(s.bed.counter("punch_skipped_unpredictable_mapping"), 1);
    let d = s.connect(s.connector.connect_punching(s.proxy));
    assert!(matches!(d, Decision::Relay { .. }));
    assert_eq!(s.bed.counter("punch_skipped_cached_failure"), 1);

    // At the decision: the connector's Connect came from another port than
    // its own; with --punch-unpredictable it is punched anyway.
    for (unpredictable, punched) in [(false, false), (true, true)] {
        let mut s = setup(Punch { unpredictable, ..Punch::default() });
        let Message::Connect { features, .. } = s.connector.connect_punching(s.proxy) else { unreachable!() };
        let msg = Message::Connect {
            proto: Proto::Tcp,
            target: s.proxy,
            connector: s.connector.local(40000),
            connector_id: None,
            realm: None,
            features,
            asked_from_port: 1234,
        };
        let d = s.connect(msg);
        assert_eq!(matches!(d, Decision::PunchTcp { .. }), punched, "{d:?}");
        assert_eq!(s.bed.counter("punch_skipped_unpredictable_mapping"), u64::from(!punched));
    }
}

#[test]
fn not_capable_or_disabled_decide_exactly_as_before() {
    // The connector's shim does not offer it.
    let mut s = setup(Punch::default());
    let d = s.connect(s.connector.connect(Proto::Tcp, s.proxy));
    assert!(matches!(d, Decision::Relay { .. }), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_not_capable"), 1);
    assert!(matches!(s.bed.last_command(s.listener.mgmt).unwrap().1, Message::RelayConnect { .. }));

    // A holder of the listener's registration does not (a child of another
    // release joined it).
    let mut s = setup(Punch::default());
    let other = Proc { mgmt: a("198.51.100.1:5009"), ..s.listener };
    s.bed.ask(other.mgmt, other.register(Proto::Tcp, 8080));
    let d = s.connect(s.connector.connect_punching(s.proxy));
    assert!(matches!(d, Decision::Relay { .. }), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_not_capable"), 1);

    // --no-punch.
    let mut s = setup(Punch { enabled: false, ..Punch::default() });
    let d = s.connect(s.connector.connect_punching(s.proxy));
    assert!(matches!(d, Decision::Relay { .. }), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_disabled"), 1);
    assert_eq!(s.bed.counter("decided_relay"), 1);

    // Other rows of the table are never punched, nor counted.
    let mut s = setup(Punch::default());
    let same = Proc::in_a(5);
    let d = decision(s.bed.ask(same.mgmt, same.connect_punching(s.proxy)));
    assert!(matches!(d, Decision::SameRealm { .. }));
    let public = Proc::public(6);
    let d = decision(s.bed.ask(public.mgmt, public.connect_punching(s.proxy)));
    assert!(matches!(d, Decision::Reversal { .. }));
    assert_eq!(s.bed.counter("punch_attempts"), 0);
}

#[test]
fn hellos_of_the_other_family_are_rejected_in_their_own_frame() {
    let mut s = setup(Punch::default());
    let token = s.punch();
    let h = s.bed.hello(token, Role::Connector, a(C_SEEN));
    assert_eq!(s.bed.fates[&h], Fate::Rejected(ErrorCode::UnknownToken));
    // A relay's token, said with a punch's hello.
    let d = s.connect(s.connector.connect(Proto::Tcp, s.proxy));
    let Decision::Relay { token: relay, .. } = d else { panic!("{d:?}") };
    let p = s.bed.punch_hello(relay, Role::Connector, a(C_SEEN), a(C_LOCAL), 1);
    assert_eq!(s.bed.fates[&p], Fate::PunchRejected(ErrorCode::UnknownToken));
    // The punch itself still meets.
    let (c, _) = s.meet(token, L_LOCAL);
    assert!(matches!(s.bed.frames_to(c)[..], [BrokerFrame::Go(_)]));
}

#[test]
fn a_listener_that_never_answers_fails_the_punch_like_a_relay() {
    let mut s = setup(Punch::default());
    let token = s.punch();
    // No Ack from the only holder: the command is given up.
    s.bed.advance(Duration::from_secs(5));
    let c = s.bed.punch_hello(token, Role::Connector, a(C_SEEN), a(C_LOCAL), 1);
    assert_eq!(s.bed.fates[&c], Fate::PunchRejected(ErrorCode::Timeout));
    assert_eq!(s.bed.counter("commands_failed_timeout"), 1);
    // The attempt ends, as every attempt does, in exactly one outcome.
    assert_eq!((s.bed.counter("punch_attempts"), s.bed.counter("punch_vanished")), (1, 1));
    // The pairing kept for its connector expires without counting it again.
    s.bed.advance(Duration::from_secs(11));
    assert_eq!(s.bed.counter("punch_vanished"), 1);
}

#[test]
fn a_pairing_whose_other_side_never_comes_expires_as_a_relay_would() {
    let mut s = setup(Punch::default());
    let token = s.punch();
    let (id, _) = s.bed.last_command(s.listener.mgmt).unwrap();
    s.bed.answer(s.listener.mgmt, id, Message::Ack);
    let c = s.bed.punch_hello(token, Role::Connector, a(C_SEEN), a(C_LOCAL), 1);
    s.bed.advance(Duration::from_secs(11));
    assert_eq!(s.bed.fates[&c], Fate::PunchRejected(ErrorCode::UnknownToken));
    assert_eq!(s.bed.counter("pairings_expired"), 1);
    assert_eq!((s.bed.counter("punch_attempts"), s.bed.counter("punch_vanished")), (1, 1));
}
