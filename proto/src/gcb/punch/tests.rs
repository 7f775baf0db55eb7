//! Tests of hole punching's frames and state machines: golden bytes,
//! incremental reading, the scenarios of docs/hole-punching.md, and
//! properties over arbitrary event sequences that hold the invariants the
//! module docs of `meeting` and `dialer` state.

use super::*;
use crate::gcb::{ErrorCode, Frame, Role, Token};
use crate::strategies::{self, hex};
use crate::wire::DecodeError;
use proptest::prelude::*;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn frames_golden() {
    let h = PunchHello::new(Token(0xa1b2), Role::Listener, a("192.0.2.10:40000"));
    assert_eq!(h.to_bytes().to_vec(), hex("4743424a 01 02 0000 000000000000a1b2 c000020a 9c40"));
    assert_eq!(PunchHello::decode(&h.to_bytes()), Ok(h));
    // An early hello: the flag, and its Connect's request id for the token.
    let e = PunchHello::early(0x0102_0304_0506_0708, a("198.51.100.10:40001"));
    assert_eq!(e.to_bytes().to_vec(), hex("4743424a 01 01 0100 0102030405060708 c633640a 9c41"));
    assert_eq!(PunchHello::decode(&e.to_bytes()), Ok(e));
    assert!(PunchHello::decode(&hex("4743424a 01 02 0100 0102030405060708 c633640a 9c41")).is_err(), "only a connector's hello is early");
    assert!(PunchHello::decode(&hex("4743424a 01 01 0200 0102030405060708 c633640a 9c41")).is_err(), "unknown flags");
    assert!(PeerHello::decode(&e.to_bytes()).is_err(), "a peer hello has no flags");
    let g = PunchGo { peer: a("203.0.113.2:40001"), delay: Duration::from_micros(250), budget: ms(500), commit: false };
    assert_eq!(g.to_bytes().to_vec(), hex("47434247 01 00 cb007102 9c41 000000fa 01f4"));
    assert_eq!(PunchGo::decode(&g.to_bytes()), Ok(g));
    let g = PunchGo { commit: true, ..g };
    assert_eq!(g.to_bytes().to_vec(), hex("47434247 01 01 cb007102 9c41 000000fa 01f4"));
    assert_eq!(PunchGo::decode(&g.to_bytes()), Ok(g));
    assert!(PunchGo::decode(&hex("47434247 01 02 cb007102 9c41 000000fa 01f4")).is_err(), "unknown flags");
    let r = PunchReport::Failed(PunchFailure::CheckFailed);
    assert_eq!(r.to_bytes().to_vec(), hex("47434252 01 02 0000"));
    assert_eq!(PunchReport::decode(&r.to_bytes()), Ok(r));
    assert_eq!(PunchReport::decode(&hex("47434252 01 00 0000")), Ok(PunchReport::Punched));
    assert_eq!(PunchReport::decode(&hex("47434252 01 63 0000")), Ok(PunchReport::Failed(PunchFailure::Other(0x63))));
    let v = PunchVerdict::Direct { peer: a("203.0.113.10:20001") };
    assert_eq!(v.to_bytes().to_vec(), hex("47434256 01 00 00 00 cb00710a 4e21"));
    let v = PunchVerdict::Relay { peer: a("203.0.113.10:20001") };
    assert_eq!(v.to_bytes().to_vec(), hex("47434256 01 01 00 00 cb00710a 4e21"));
    let v = PunchVerdict::Rejected { code: ErrorCode::Timeout };
    assert_eq!(v.to_bytes().to_vec(), hex("47434256 01 02 0a 00 00000000 0000"));
    assert_eq!(PunchVerdict::decode(&v.to_bytes()), Ok(v));
}

#[test]
fn malformed_frames_are_refused() {
    assert_eq!(PunchGo::decode(&hex("47434247 01 00 cb007102 9c41 000000fa 0000")), Err(DecodeError::BadValue("punch budget")));
    assert_eq!(PunchGo::decode(&hex("47434247 01 80 cb007102 9c41 000000fa 0001")), Err(DecodeError::BadValue("punch go flags")));
    assert_eq!(PunchHello::decode(&hex("4743424a 01 03 0000 000000000000a1b2 c000020a 9c40")), Err(DecodeError::BadValue("punch role")));
    assert_eq!(PunchReport::decode(&hex("47434252 01 00 0100")), Err(DecodeError::BadValue("punch report reserved")));
    for bad in ["47434256 01 00 01 00 cb00710a 4e21", "47434256 01 02 00 00 00000000 0000", "47434256 01 02 0a 00 cb00710a 4e21", "47434256 01 03 00 00 cb00710a 4e21"] {
        assert_eq!(PunchVerdict::decode(&hex(bad)), Err(DecodeError::BadValue("punch verdict")), "{bad}");
    }
    assert_eq!(PunchHello::decode(b"GCBH\x01"), Err(DecodeError::NotProtocol), "a relay hello is not a punch hello");
}

#[test]
fn go_cuts_what_its_fields_cannot_hold() {
    let g = PunchGo { peer: a("203.0.113.2:1"), delay: Duration::from_secs(1 << 40), budget: Duration::from_micros(10), commit: false };
    let back = PunchGo::decode(&g.to_bytes()).unwrap();
    assert_eq!(back.delay, PunchGo::MAX_DELAY);
    assert_eq!(back.budget, ms(1));
}

/// Feeds `stream` to a reader `step` bytes at a time; the frame and the
/// bytes it used.
fn read_broker_frame(stream: &[u8], step: usize) -> Result<(BrokerFrame, usize), DecodeError> {
    let mut r = BrokerFrameReader::new();
    let mut pos = 0;
    loop {
        let end = (pos + step.min(r.missing())).min(stream.len());
        let (used, frame) = r.feed(&stream[pos..end])?;
        pos += used;
        if let Some(f) = frame {
            return Ok((f, pos));
        }
        if pos == stream.len() {
            return Err(DecodeError::Truncated);
        }
    }
}

#[test]
fn broker_frames_are_read_to_their_end_and_no_further() {
    let go = BrokerFrame::Go(PunchGo { peer: a("203.0.113.2:40001"), delay: ms(1), budget: ms(500), commit: false });
    let relay = BrokerFrame::Verdict(PunchVerdict::Relay { peer: a("203.0.113.10:20001") });
    for frame in [go, relay] {
        let mut stream = frame.to_bytes();
        let len = stream.len();
        stream.extend_from_slice(b"application bytes");
        for step in [1, 3, 4, 5, 100] {
            assert_eq!(read_broker_frame(&stream, step), Ok((frame, len)), "step {step}");
        }
    }
    // Whole in one feed, with the application's bytes after it.
    let mut r = BrokerFrameReader::new();
    let stream = [relay.to_bytes(), b"xyz".to_vec()].concat();
    assert_eq!(r.feed(&stream), Ok((14, Some(relay))));
    let mut r = BrokerFrameReader::new();
    assert_eq!(r.feed(b"GCBP"), Err(DecodeError::NotProtocol), "a relay's StreamPeer is not a punch frame");
}

proptest! {
    #![proptest_config(strategies::config())]

    #[test]
    fn frames_round_trip(token in any::<u64>(), connector in any::<bool>(), local in strategies::addr(), peer in strategies::addr(),
                         delay in 0u32.., budget in 1u16.., report in any::<u8>(), code in 1u8..) {
        let role = if connector { Role::Connector } else { Role::Listener };
        let h = PunchHello::new(Token(token), role, local);
        prop_assert_eq!(PunchHello::decode(&h.to_bytes()), Ok(h));
        let g = PunchGo { peer, delay: Duration::from_micros(u64::from(delay)), budget: ms(u64::from(budget)), commit: delay % 2 == 1 };
        prop_assert_eq!(PunchGo::decode(&g.to_bytes()), Ok(g));
        let r = match PunchFailure::from_wire(report) { None => PunchReport::Punched, Some(f) => PunchReport::Failed(f) };
        prop_assert_eq!(PunchReport::decode(&r.to_bytes()), Ok(r));
        for v in [PunchVerdict::Direct { peer }, PunchVerdict::Relay { peer }, PunchVerdict::Rejected { code: ErrorCode::from_wire(code) }] {
            prop_assert_eq!(PunchVerdict::decode(&v.to_bytes()), Ok(v));
        }
    }

    /// Arbitrary bytes in arbitrary pieces: the reader never panics, never
    /// takes a byte past the frame, and agrees with one-shot decoding.
    #[test]
    fn broker_frame_reader_agrees_with_decode(bytes in proptest::collection::vec(any::<u8>(), 0..40), step in 1usize..20) {
        match read_broker_frame(&bytes, step) {
            Ok((BrokerFrame::Go(g), used)) => {
                prop_assert_eq!(used, PunchGo::LEN);
                prop_assert_eq!(PunchGo::decode(&bytes), Ok(g));
            }
            Ok((BrokerFrame::Verdict(v), used)) => {
                prop_assert_eq!(used, PunchVerdict::LEN);
                prop_assert_eq!(PunchVerdict::decode(&bytes), Ok(v));
            }
            Err(_) => {
                prop_assert!(PunchGo::decode(&bytes).is_err() && PunchVerdict::decode(&bytes).is_err());
            }
        }
    }
}

// ---- the broker's meeting ----

const PROXY: &str = "203.0.113.10:20001";
const CONNECTOR_ID: &str = "203.0.113.2:40001";

fn arrival(observed: &str, local: &str, rtt_us: Option<u64>) -> Arrival {
    Arrival { observed: a(observed), local: a(local), rtt: rtt_us.map(Duration::from_micros) }
}

fn meeting() -> Meeting {
    Meeting::new(a(PROXY), a(CONNECTOR_ID), Policy::default())
}

fn sent(effects: &[Effect], role: Role) -> Vec<BrokerFrame> {
    effects.iter().filter_map(|e| match e {
        Effect::Send(r, f) if *r == role => Some(*f),
        _ => None,
    }).collect()
}

#[test]
fn both_punched_is_direct_and_the_streams_are_released() {
    let t0 = Instant::now();
    let mut m = meeting();
    assert_eq!(m.arrived(Role::Listener, arrival("203.0.113.1:41000", "192.0.2.10:41000", Some(300)), t0), Some(vec![]));
    let fx = m.arrived(Role::Connector, arrival("203.0.113.2:40001", "198.51.100.10:40001", Some(100)), t0).unwrap();
    let [BrokerFrame::Go(to_c)] = sent(&fx, Role::Connector)[..] else { panic!("{fx:?}") };
    let [BrokerFrame::Go(to_l)] = sent(&fx, Role::Listener)[..] else { panic!("{fx:?}") };
    assert_eq!(to_c.peer, a("203.0.113.1:41000"), "the connector dials the listener's mapping");
    assert_eq!(to_l.peer, a("203.0.113.2:40001"));
    assert_eq!((to_c.delay, to_l.delay), (Duration::from_micros(100), Duration::ZERO), "the nearer side waits half the difference");
    // Round trips of 0.1 and 0.3 ms: the floor, and a margin as long.
    assert_eq!((to_c.budget, to_l.budget), (budget::DEFAULT_FLOOR, budget::DEFAULT_FLOOR));
    assert_eq!(m.deadline(), Some(t0 + budget::DEFAULT_FLOOR * 2));
    assert_eq!(m.reported(Role::Connector, PunchReport::Punched), vec![]);
    let fx = m.reported(Role::Listener, PunchReport::Punched);
    assert_eq!(sent(&fx, Role::Connector), vec![BrokerFrame::Verdict(PunchVerdict::Direct { peer: a(PROXY) })]);
    assert_eq!(sent(&fx, Role::Listener), vec![BrokerFrame::Verdict(PunchVerdict::Direct { peer: a(CONNECTOR_ID) })]);
    assert!(fx.contains(&Effect::Release) && fx.contains(&Effect::Ended(Outcome::Direct)));
    assert!(m.ended());
    assert_eq!(m.reported(Role::Listener, PunchReport::Punched), vec![], "nothing after the end");
    assert_eq!(m.timer(t0 + ms(5000)), vec![]);
}

#[test]
fn a_committing_connector_leaves_the_listener_more_time_inside_the_deadline() {
    let t0 = Instant::now();
    let mut m = meeting().committing_connector(true);
    m.arrived(Role::Listener, arrival("203.0.113.1:41000", "192.0.2.10:41000", Some(300)), t0);
    let fx = m.arrived(Role::Connector, arrival("203.0.113.2:40001", "198.51.100.10:40001", Some(100)), t0).unwrap();
    let [BrokerFrame::Go(to_c)] = sent(&fx, Role::Connector)[..] else { panic!("{fx:?}") };
    let [BrokerFrame::Go(to_l)] = sent(&fx, Role::Listener)[..] else { panic!("{fx:?}") };
    // The floor for the connector; half the margin (as long as the floor) more for the listener.
    assert_eq!(to_c.budget, budget::DEFAULT_FLOOR);
    assert_eq!(to_l.budget, budget::DEFAULT_FLOOR + budget::DEFAULT_FLOOR / 2);
    assert!(to_l.commit && !to_c.commit, "the listener is told to follow the connector");
    let deadline = m.deadline().unwrap();
    assert!(t0 + to_l.delay + to_l.budget < deadline, "the listener reports before the broker gives up");
    // At the ceiling too (no round trip known: a hello that came in its SYN),
    // with room for the report's way back.
    let mut m = meeting().committing_connector(false);
    m.arrived(Role::Listener, arrival("203.0.113.1:41000", "192.0.2.10:41000", None), t0);
    let fx = m.arrived(Role::Connector, arrival("203.0.113.2:40001", "198.51.100.10:40001", None), t0).unwrap();
    let [BrokerFrame::Go(to_l)] = sent(&fx, Role::Listener)[..] else { panic!("{fx:?}") };
    assert!(!to_l.commit, "a listener that cannot follow waits for its verdict");
    let room = m.deadline().unwrap() - (t0 + to_l.delay + to_l.budget);
    assert!(room >= Policy::default().max_budget / 2, "{room:?} left for the report");
    // The connector reported and left; the listener's report decides.
    assert_eq!(m.reported(Role::Connector, PunchReport::Punched), vec![]);
    let fx = m.reported(Role::Listener, PunchReport::Punched);
    assert!(fx.contains(&Effect::Ended(Outcome::Direct)), "{fx:?}");
}

#[test]
fn the_budget_and_the_deadline_follow_the_round_trips_under_the_ceiling() {
    let t0 = Instant::now();
    let go_and_deadline = |policy: Policy, c_us: Option<u64>, l_us: Option<u64>| {
        let mut m = Meeting::new(a(PROXY), a(CONNECTOR_ID), policy);
        m.arrived(Role::Listener, arrival("203.0.113.1:41000", "192.0.2.10:41000", l_us), t0);
        let fx = m.arrived(Role::Connector, arrival("203.0.113.2:40001", "198.51.100.10:40001", c_us), t0).unwrap();
        let [BrokerFrame::Go(to_c)] = sent(&fx, Role::Connector)[..] else { panic!("{fx:?}") };
        let [BrokerFrame::Go(to_l)] = sent(&fx, Role::Listener)[..] else { panic!("{fx:?}") };
        assert_eq!(to_c.budget, to_l.budget, "one budget for both sides");
        (to_c.budget, m.deadline().unwrap() - t0)
    };
    let p = Policy::default();
    // 12 and 18 ms: ten times 30 ms, and a margin as long.
    assert_eq!(go_and_deadline(p, Some(12_000), Some(18_000)), (ms(300), ms(600)));
    assert_eq!(go_and_deadline(p, Some(5), Some(6)), (budget::DEFAULT_FLOOR, budget::DEFAULT_FLOOR * 2), "the bed's: the floor");
    assert_eq!(go_and_deadline(p, Some(30_000), Some(40_000)), (ms(500), ms(1000)), "the ceiling");
    assert_eq!(go_and_deadline(p, None, Some(40)), (ms(500), ms(1000)), "a round trip unknown: the ceiling");
    let low = Policy { max_budget: ms(30), ..p };
    assert_eq!(go_and_deadline(low, Some(5), Some(6)), (ms(30), ms(130)), "a ceiling under the floor wins");
}

#[test]
fn an_unpredictable_mapping_is_relayed_at_once() {
    let t0 = Instant::now();
    let mut m = meeting();
    m.arrived(Role::Listener, arrival("203.0.113.1:41000", "192.0.2.10:41000", None), t0);
    let fx = m.arrived(Role::Connector, arrival("203.0.113.2:61234", "198.51.100.10:40001", None), t0).unwrap();
    assert_eq!(sent(&fx, Role::Connector), vec![BrokerFrame::Verdict(PunchVerdict::Relay { peer: a(PROXY) })]);
    assert_eq!(sent(&fx, Role::Listener), vec![BrokerFrame::Verdict(PunchVerdict::Relay { peer: a(CONNECTOR_ID) })]);
    assert!(fx.contains(&Effect::Splice));
    assert!(fx.contains(&Effect::Ended(Outcome::Skipped(SkipReason::UnpredictableMapping))));
    let mut tries = Meeting::new(a(PROXY), a(CONNECTOR_ID), Policy { punch_unpredictable: true, ..Policy::default() });
    tries.arrived(Role::Listener, arrival("203.0.113.1:41000", "192.0.2.10:41000", None), t0);
    let fx = tries.arrived(Role::Connector, arrival("203.0.113.2:61234", "198.51.100.10:40001", None), t0).unwrap();
    assert!(matches!(sent(&fx, Role::Connector)[..], [BrokerFrame::Go(_)]), "told to try anyway");
}

#[test]
fn a_failure_or_silence_falls_back_to_the_relay() {
    let t0 = Instant::now();
    let both_in = || {
        let mut m = meeting();
        m.arrived(Role::Listener, arrival("203.0.113.1:41000", "192.0.2.10:41000", None), t0);
        m.arrived(Role::Connector, arrival("203.0.113.2:40001", "198.51.100.10:40001", None), t0);
        m
    };
    let mut m = both_in();
    m.reported(Role::Connector, PunchReport::Punched);
    let fx = m.reported(Role::Listener, PunchReport::Failed(PunchFailure::Timeout));
    assert!(fx.contains(&Effect::Splice) && fx.contains(&Effect::Ended(Outcome::Fallback(FallbackReason::Failed(PunchFailure::Timeout)))));
    assert_eq!(sent(&fx, Role::Connector), vec![BrokerFrame::Verdict(PunchVerdict::Relay { peer: a(PROXY) })]);

    let mut m = both_in();
    m.reported(Role::Connector, PunchReport::Punched);
    assert_eq!(m.timer(t0 + ms(999)), vec![], "not before budget and margin");
    let fx = m.timer(t0 + ms(1000));
    assert!(fx.contains(&Effect::Splice) && fx.contains(&Effect::Ended(Outcome::Fallback(FallbackReason::NoReport))));
}

#[test]
fn a_side_that_vanishes_takes_the_connection_with_it() {
    let t0 = Instant::now();
    let mut m = meeting();
    m.arrived(Role::Listener, arrival("203.0.113.1:41000", "192.0.2.10:41000", None), t0);
    let fx = m.vanished(Role::Connector);
    assert_eq!(sent(&fx, Role::Listener), vec![BrokerFrame::Verdict(PunchVerdict::Rejected { code: ErrorCode::NotRegistered })]);
    assert!(fx.contains(&Effect::Drop) && fx.contains(&Effect::Ended(Outcome::Vanished)));
    assert_eq!(m.vanished(Role::Listener), vec![]);
    assert_eq!(m.arrived(Role::Connector, arrival("203.0.113.2:40001", "198.51.100.10:40001", None), t0), None);
}

#[test]
fn a_role_arrives_once() {
    let t0 = Instant::now();
    let mut m = meeting();
    let first = arrival("203.0.113.1:41000", "192.0.2.10:41000", None);
    assert!(m.arrived(Role::Listener, first, t0).is_some());
    assert_eq!(m.arrived(Role::Listener, first, t0), None);
}

#[derive(Debug, Clone)]
enum MeetingEvent {
    Arrive(bool, bool),
    Report(bool, Option<u8>),
    Tick(u64),
    Vanish(bool),
}

fn meeting_event() -> impl Strategy<Value = MeetingEvent> {
    prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(c, p)| MeetingEvent::Arrive(c, p)),
        (any::<bool>(), proptest::option::of(1u8..5)).prop_map(|(c, f)| MeetingEvent::Report(c, f)),
        (0u64..2000).prop_map(MeetingEvent::Tick),
        any::<bool>().prop_map(MeetingEvent::Vanish),
    ]
}

proptest! {
    #![proptest_config(strategies::config())]

    /// Whatever happens in whatever order: at most one go and exactly one
    /// verdict per side that arrived (once the meeting ended), go before the
    /// verdict, one ending effect and one outcome, nothing after the end.
    #[test]
    fn a_meeting_keeps_its_invariants(events in proptest::collection::vec(meeting_event(), 0..30)) {
        let t0 = Instant::now();
        let mut m = meeting();
        let mut now = t0;
        let mut log: Vec<Effect> = Vec::new();
        let mut arrived = [false; 2];
        let role = |c: bool| if c { Role::Connector } else { Role::Listener };
        for e in events {
            let was_ended = m.ended();
            let fx = match e {
                MeetingEvent::Arrive(c, predictable) => {
                    let local = if c { "198.51.100.10:40001" } else { "192.0.2.10:41000" };
                    let observed = match (c, predictable) {
                        (true, true) => "203.0.113.2:40001",
                        (false, true) => "203.0.113.1:41000",
                        (_, false) => "203.0.113.9:5555",
                    };
                    let r = m.arrived(role(c), arrival(observed, local, Some(200)), now);
                    if r.is_some() { arrived[usize::from(!c)] = true; }
                    r.unwrap_or_default()
                }
                MeetingEvent::Report(c, f) => {
                    let report = f.and_then(PunchFailure::from_wire).map_or(PunchReport::Punched, PunchReport::Failed);
                    m.reported(role(c), report)
                }
                MeetingEvent::Tick(d) => { now += ms(d); m.timer(now) }
                MeetingEvent::Vanish(c) => m.vanished(role(c)),
            };
            if was_ended { prop_assert!(fx.is_empty(), "effects after the end: {:?}", fx); }
            log.extend(fx);
        }
        let endings = log.iter().filter(|e| matches!(e, Effect::Splice | Effect::Release | Effect::Drop)).count();
        let outcomes = log.iter().filter(|e| matches!(e, Effect::Ended(_))).count();
        prop_assert_eq!(endings, usize::from(m.ended()));
        prop_assert_eq!(outcomes, usize::from(m.ended()));
        for (i, r) in [Role::Connector, Role::Listener].into_iter().enumerate() {
            let frames = sent(&log, r);
            let gos = frames.iter().filter(|f| matches!(f, BrokerFrame::Go(_))).count();
            let verdicts: Vec<usize> = frames.iter().enumerate().filter(|(_, f)| matches!(f, BrokerFrame::Verdict(_))).map(|(k, _)| k).collect();
            prop_assert!(gos <= 1);
            prop_assert!(verdicts.len() <= 1);
            if let Some(k) = verdicts.first() { prop_assert_eq!(*k, frames.len() - 1, "the verdict is the last frame"); }
            if !arrived[i] { prop_assert!(frames.is_empty(), "frames to a side that never arrived"); }
            if m.ended() && arrived[i] && !log.contains(&Effect::Drop) {
                prop_assert_eq!(verdicts.len(), 1, "a side that arrived gets its verdict");
            }
        }
        if log.contains(&Effect::Release) {
            let relayed = log.iter().any(|e| matches!(e, Effect::Send(_, BrokerFrame::Verdict(PunchVerdict::Relay { .. }))));
            prop_assert!(!relayed, "relay verdicts with a release");
        }
    }
}

#[path = "dialer_tests.rs"]
mod dialer;
