//! Tests of a side's [`Dialer`]: the attempt schedule, the checks of the
//! peer's hello, the report and the verdict, and properties over arbitrary
//! sequences of what the sockets and the broker do.

use super::*;

const PEER: &str = "203.0.113.2:40001";

fn go(delay_ms: u64, budget_ms: u64) -> BrokerFrame {
    BrokerFrame::Go(PunchGo { peer: a(PEER), delay: ms(delay_ms), budget: ms(budget_ms), commit: false })
}

fn dialer(role: Role) -> Dialer {
    Dialer::new(Token(77), role, Schedule::default())
}

/// The hello of a side of `role` in the dialers' punch (token 77).
fn peer_hello(role: Role) -> Result<PeerHello, ()> {
    Ok(PeerHello { proof: PunchProof::of(Token(77), role), role, local: a("198.51.100.10:40001") })
}

fn dials(out: &[Do]) -> Vec<ConnId> {
    out.iter().filter_map(|d| match d { Do::Dial { conn, .. } => Some(*conn), _ => None }).collect()
}

#[test]
fn the_token_goes_to_the_broker_and_only_a_proof_to_the_peer() {
    let d = dialer(Role::Listener);
    let local = a("192.0.2.10:40000");
    assert_eq!(d.rendezvous_hello(local), PunchHello::new(Token(77), Role::Listener, local));
    let h = d.peer_hello_frame(local);
    assert_eq!(h, PeerHello { proof: PunchProof::of(Token(77), Role::Listener), role: Role::Listener, local });
    assert_ne!(h.to_bytes()[8..16], 77u64.to_be_bytes(), "no token on the punched connection");
    assert!(h.is_peer_of(Token(77), Role::Connector), "what the connector's check accepts");
}

#[test]
fn refused_attempts_are_retried_until_one_checks_then_the_verdict_decides() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Listener);
    assert_eq!(d.broker_frame(go(2, 500), t0), vec![Do::Listen], "listens at once, dials after the delay");
    assert_eq!(d.next_wakeup(), Some(t0 + ms(2)));
    let out = d.timer(t0 + ms(2));
    assert_eq!(out, vec![Do::Dial { conn: 1, to: a(PEER) }]);
    let out = d.dial_failed(1, DialFailure::Refused, t0 + ms(3));
    assert_eq!(out, vec![Do::Close(1)], "the next attempt waits out the gap");
    // The gap: at least `after_refusal`, at most that plus `spread` times the
    // refused attempt's round trip (1 ms here).
    let schedule = Schedule::default();
    let next = d.next_wakeup().expect("a next attempt");
    let least = t0 + ms(3) + schedule.after_refusal;
    assert!(next >= least && next <= least + ms(1) * schedule.spread, "next attempt {:?} after the refusal", next - (t0 + ms(3)));
    assert_eq!(d.timer(next - Duration::from_nanos(1)), vec![], "not before its time");
    let out = d.timer(next);
    assert_eq!(dials(&out), vec![2]);
    assert_eq!(d.connected(2, a(PEER), t0 + ms(5)), vec![Do::SendHello(2)]);
    let out = d.peer_hello(2, peer_hello(Role::Connector), t0 + ms(6));
    assert_eq!(out, vec![Do::Unlisten, Do::Report(PunchReport::Punched)]);
    assert_eq!(d.timer(t0 + ms(600)), vec![], "no failure report after the budget once punched");
    assert_eq!(d.verdict(PunchVerdict::Direct { peer: a(CONNECTOR_ID) }), vec![Do::Use { conn: 2, peer: a(CONNECTOR_ID) }]);
    assert!(d.finished());
    assert_eq!(d.attempts(), 2);
}

#[test]
fn a_relay_verdict_closes_the_punched_connection() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Connector);
    d.broker_frame(go(0, 500), t0);
    d.connected(1, a(PEER), t0);
    d.peer_hello(1, peer_hello(Role::Listener), t0);
    assert_eq!(d.verdict(PunchVerdict::Relay { peer: a(PROXY) }), vec![Do::Close(1), Do::UseRelay { peer: a(PROXY) }]);
}

#[test]
fn a_connector_that_commits_says_its_hello_only_with_its_commitment() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Connector).commit_on_check(a(PROXY));
    assert_eq!(d.broker_frame(go(0, 500), t0), vec![Do::Listen, Do::Dial { conn: 1, to: a(PEER) }]);
    assert_eq!(d.connected(1, a(PEER), t0 + ms(1)), vec![Do::ReadHello(1)], "nothing said before the listener's proof");
    let out = d.peer_hello(1, peer_hello(Role::Listener), t0 + ms(2));
    assert_eq!(out, vec![Do::Unlisten, Do::Report(PunchReport::Punched), Do::SendHello(1), Do::Use { conn: 1, peer: a(PROXY) }]);
    assert!(d.finished());
    assert_eq!(d.verdict(PunchVerdict::Relay { peer: a(PROXY) }), vec![], "a verdict after the commitment changes nothing");
    assert_eq!(d.broker_lost(), vec![], "nor does the broker's connection ending");
}

#[test]
fn a_listener_told_to_follow_uses_its_connection_at_the_connectors_proof() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Listener);
    let go = BrokerFrame::Go(PunchGo { peer: a(PEER), delay: ms(0), budget: ms(750), commit: true });
    d.broker_frame(go, t0);
    assert_eq!(d.connected(1, a(PEER), t0 + ms(1)), vec![Do::SendHello(1)], "the listener speaks first");
    let out = d.peer_hello(1, peer_hello(Role::Connector), t0 + ms(2));
    assert_eq!(out, vec![Do::Unlisten, Do::Report(PunchReport::Punched), Do::Use { conn: 1, peer: a(PEER) }], "the connector's mapping is its peer");
    assert!(d.finished());
    // Without the flag a listener waits for the verdict.
    let mut d = dialer(Role::Listener);
    d.broker_frame(go_frame_plain(), t0);
    d.connected(1, a(PEER), t0 + ms(1));
    assert_eq!(d.peer_hello(1, peer_hello(Role::Connector), t0 + ms(2)), vec![Do::Unlisten, Do::Report(PunchReport::Punched)]);
}

#[test]
fn a_following_listener_reports_when_the_relay_verdict_finds_it_dialing() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Listener);
    d.broker_frame(BrokerFrame::Go(PunchGo { peer: a(PEER), delay: ms(0), budget: ms(750), commit: true }), t0);
    let out = d.verdict(PunchVerdict::Relay { peer: a(CONNECTOR_ID) });
    assert_eq!(out.iter().filter(|x| matches!(x, Do::Report(_))).count(), 1, "{out:?}");
    let at = |f: fn(&Do) -> bool| out.iter().position(f).unwrap();
    assert!(at(|x| matches!(x, Do::Report(_))) < at(|x| matches!(x, Do::UseRelay { .. })), "the report before the relay's bytes: {out:?}");
    // One that does not follow stays silent: its broker held the verdict for its report.
    let mut d = dialer(Role::Listener);
    d.broker_frame(go(0, 500), t0);
    assert!(!d.verdict(PunchVerdict::Relay { peer: a(CONNECTOR_ID) }).iter().any(|x| matches!(x, Do::Report(_))));
}

#[test]
fn a_following_listener_past_its_deadline_waits_for_the_proof_on_the_connection_it_has() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Listener);
    d.broker_frame(BrokerFrame::Go(PunchGo { peer: a(PEER), delay: ms(0), budget: ms(100), commit: true }), t0);
    assert_eq!(d.connected(1, a(PEER), t0 + ms(99)), vec![Do::SendHello(1)]);
    assert_eq!(d.timer(t0 + ms(100)), vec![Do::Unlisten], "no report: the connection waits for the proof");
    assert_eq!(d.next_wakeup(), None);
    assert_eq!(d.timer(t0 + ms(150)), vec![]);
    let out = d.peer_hello(1, peer_hello(Role::Connector), t0 + ms(160));
    assert_eq!(out, vec![Do::Report(PunchReport::Punched), Do::Use { conn: 1, peer: a(PEER) }]);
    // Without a connection up at its deadline it reports as any side does.
    let mut d = dialer(Role::Listener);
    d.broker_frame(BrokerFrame::Go(PunchGo { peer: a(PEER), delay: ms(0), budget: ms(100), commit: true }), t0);
    let out = d.timer(t0 + ms(100));
    assert_eq!(out.last(), Some(&Do::Report(PunchReport::Failed(PunchFailure::Timeout))), "{out:?}");
}

fn go_frame_plain() -> BrokerFrame {
    go(0, 500)
}

#[test]
fn a_side_that_commits_still_waits_for_the_relay_when_it_could_not_punch() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Connector).commit_on_check(a(PROXY));
    d.broker_frame(go(0, 100), t0);
    d.dial_failed(1, DialFailure::Refused, t0 + ms(1));
    let out = d.timer(t0 + ms(100));
    assert_eq!(out.last(), Some(&Do::Report(PunchReport::Failed(PunchFailure::Timeout))));
    assert!(!d.finished(), "the verdict says where its connection is");
    assert_eq!(d.verdict(PunchVerdict::Relay { peer: a(PROXY) }), vec![Do::UseRelay { peer: a(PROXY) }]);
}

#[test]
fn strangers_and_wrong_hellos_never_count() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Connector);
    d.broker_frame(go(0, 500), t0);
    // An accepted connection from elsewhere is closed unread.
    let (c, out) = d.accepted(a("203.0.113.66:1234"), t0);
    assert_eq!(out[0], Do::Close(c));
    // From the right mapping but with another token's proof, the raw token,
    // our own hello back, our own proof with the role flipped (a replay), or junk.
    let replay = PeerHello { role: Role::Listener, ..peer_hello(Role::Connector).unwrap() };
    let raw = PeerHello { proof: PunchProof(77u64.to_be_bytes()), ..peer_hello(Role::Listener).unwrap() };
    let other = PeerHello { proof: PunchProof::of(Token(78), Role::Listener), ..peer_hello(Role::Listener).unwrap() };
    for wrong in [Ok(other), Ok(raw), peer_hello(Role::Connector), Ok(replay), Err(())] {
        let (c, out) = d.accepted(a(PEER), t0);
        assert_eq!(out, vec![Do::SendHello(c)]);
        let out = d.peer_hello(c, wrong, t0);
        assert_eq!(out.first(), Some(&Do::Close(c)), "{wrong:?}");
        assert!(!out.contains(&Do::Report(PunchReport::Punched)));
    }
    let out = d.timer(t0 + ms(500));
    assert!(out.contains(&Do::Report(PunchReport::Failed(PunchFailure::CheckFailed))), "{out:?}");
    assert_eq!(d.verdict(PunchVerdict::Direct { peer: a(PROXY) }), vec![Do::Fail(ErrorCode::Internal)], "direct without a checked connection is the broker's error");
}

#[test]
fn a_stalled_attempt_is_replaced_and_the_budget_ends_it_all() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Connector);
    let out = d.broker_frame(go(0, 120), t0);
    assert_eq!(dials(&out), vec![1]);
    assert_eq!(d.next_wakeup(), Some(t0 + ms(50)));
    let out = d.timer(t0 + ms(50));
    assert_eq!(out, vec![Do::Close(1), Do::Dial { conn: 2, to: a(PEER) }]);
    let out = d.timer(t0 + ms(100));
    assert_eq!(dials(&out), vec![3]);
    assert_eq!(d.next_wakeup(), Some(t0 + ms(120)), "the deadline comes before the attempt's timeout");
    let out = d.timer(t0 + ms(120));
    assert_eq!(out, vec![Do::Close(3), Do::Unlisten, Do::Report(PunchReport::Failed(PunchFailure::Timeout))]);
    assert_eq!(d.timer(t0 + ms(200)), vec![]);
    assert_eq!(d.verdict(PunchVerdict::Relay { peer: a(PROXY) }), vec![Do::UseRelay { peer: a(PROXY) }]);
}

#[test]
fn a_verdict_before_the_go_or_during_dialing_is_obeyed() {
    let t0 = Instant::now();
    let mut d = dialer(Role::Listener);
    let out = d.broker_frame(BrokerFrame::Verdict(PunchVerdict::Relay { peer: a(CONNECTOR_ID) }), t0);
    assert_eq!(out, vec![Do::UseRelay { peer: a(CONNECTOR_ID) }]);
    let mut d = dialer(Role::Listener);
    d.broker_frame(go(0, 500), t0);
    let out = d.verdict(PunchVerdict::Rejected { code: ErrorCode::Timeout });
    assert_eq!(out, vec![Do::Close(1), Do::Unlisten, Do::Fail(ErrorCode::Timeout)]);
    assert_eq!(d.broker_frame(go(0, 500), t0), vec![], "nothing after the end");
}

#[test]
fn only_local_failures_report_a_local_error() {
    let t0 = Instant::now();
    let mut d = Dialer::new(Token(77), Role::Connector, Schedule { listen: false, ..Schedule::default() });
    d.broker_frame(go(0, 10), t0);
    let mut reports = Vec::new();
    for k in 1..=10 {
        d.dial_failed(k, DialFailure::Local, t0 + ms(u64::from(k) - 1));
        reports.extend(d.timer(t0 + ms(u64::from(k))).into_iter().filter(|x| matches!(x, Do::Report(_))));
    }
    assert_eq!(d.attempts(), 10);
    assert_eq!(reports, vec![Do::Report(PunchReport::Failed(PunchFailure::LocalError))]);
}

#[derive(Debug, Clone)]
enum DialEvent {
    Frame(u8),
    Tick(u64),
    Refused(bool),
    Connected(bool),
    Accepted(bool),
    Hello(u8),
}

fn dial_event() -> impl Strategy<Value = DialEvent> {
    prop_oneof![
        (0u8..4).prop_map(DialEvent::Frame),
        (0u64..80).prop_map(DialEvent::Tick),
        any::<bool>().prop_map(DialEvent::Refused),
        any::<bool>().prop_map(DialEvent::Connected),
        any::<bool>().prop_map(DialEvent::Accepted),
        (0u8..5).prop_map(DialEvent::Hello),
    ]
}

proptest! {
    #![proptest_config(strategies::config())]

    /// Whatever the sockets and the broker do: at most one report and never
    /// after the end; no dial after the report or at or past the deadline;
    /// `Use` only for a connection whose hello checked and only on a
    /// direct verdict; nothing after `Finished`.
    #[test]
    fn a_dialer_keeps_its_invariants(events in proptest::collection::vec(dial_event(), 0..60), commits in any::<bool>()) {
        let t0 = Instant::now();
        let mut d = dialer(Role::Connector);
        if commits {
            d = d.commit_on_check(a(PROXY));
        }
        let mut used = false;
        let mut now = t0;
        let mut deadline = None;
        let mut reported = false;
        let mut checked: Vec<ConnId> = Vec::new();
        let mut open: Vec<ConnId> = Vec::new();
        let mut in_flight: Option<ConnId> = None;
        let mut punched_first = false;
        for e in events {
            let was_finished = d.finished();
            let out = match e {
                DialEvent::Frame(k) => {
                    let f = match k {
                        0 => go(5, 100),
                        1 => BrokerFrame::Verdict(PunchVerdict::Direct { peer: a(PROXY) }),
                        2 => BrokerFrame::Verdict(PunchVerdict::Relay { peer: a(PROXY) }),
                        _ => BrokerFrame::Verdict(PunchVerdict::Rejected { code: ErrorCode::Timeout }),
                    };
                    if k == 0 && deadline.is_none() && !d.finished() { deadline = Some(now + ms(105)); }
                    d.broker_frame(f, now)
                }
                DialEvent::Tick(dt) => { now += ms(dt); d.timer(now) }
                DialEvent::Refused(mine) => match in_flight { Some(c) if mine => d.dial_failed(c, DialFailure::Refused, now), _ => d.dial_failed(999, DialFailure::Refused, now) },
                DialEvent::Connected(right) => match in_flight {
                    Some(c) => d.connected(c, if right { a(PEER) } else { a("203.0.113.66:1") }, now),
                    None => Vec::new(),
                },
                DialEvent::Accepted(right) => {
                    let (c, out) = d.accepted(if right { a(PEER) } else { a("203.0.113.66:1") }, now);
                    if out.contains(&Do::SendHello(c)) || out.contains(&Do::ReadHello(c)) { open.push(c); }
                    out
                }
                DialEvent::Hello(k) => match open.pop() {
                    Some(c) => {
                        let h = match k {
                            0 => peer_hello(Role::Listener),
                            1 => peer_hello(Role::Connector),
                            2 => Ok(PeerHello { proof: PunchProof::of(Token(1), Role::Listener), role: Role::Listener, local: a("192.0.2.1:1") }),
                            3 => Ok(PeerHello { role: Role::Listener, ..d.peer_hello_frame(a("192.0.2.1:1")) }),
                            _ => Err(()),
                        };
                        if k == 0 { checked.push(c); }
                        d.peer_hello(c, h, now)
                    }
                    None => Vec::new(),
                },
            };
            if was_finished {
                // Only a connection that raced the end is closed.
                prop_assert!(out.iter().all(|x| matches!(x, Do::Close(_))), "after Finished: {:?}", out);
            }
            for x in &out {
                match x {
                    Do::Dial { conn, .. } => {
                        prop_assert!(!reported, "dialed after the report");
                        prop_assert!(deadline.is_some_and(|dl| now < dl), "dialed at or past the deadline");
                        in_flight = Some(*conn);
                    }
                    Do::SendHello(c) | Do::ReadHello(c) => {
                        let with_use = out.iter().any(|x| matches!(x, Do::Use { conn, .. } if conn == c));
                        prop_assert!(!commits || matches!(x, Do::ReadHello(_)) || with_use, "a committing connector said its hello before committing: {:?}", out);
                        prop_assert!(commits || matches!(x, Do::SendHello(_)), "only a committing connector withholds its hello");
                        if !open.contains(c) {
                            open.push(*c);
                        }
                        if in_flight == Some(*c) {
                            in_flight = None;
                        }
                    }
                    Do::Close(c) => { if in_flight == Some(*c) { in_flight = None; } open.retain(|o| o != c); }
                    Do::Report(r) => {
                        prop_assert!(!reported, "two reports");
                        reported = true;
                        punched_first = *r == PunchReport::Punched;
                    }
                    Do::Use { conn, .. } => {
                        prop_assert!(checked.contains(conn), "used an unchecked connection");
                        prop_assert!(punched_first);
                        prop_assert!(!used, "used twice");
                        used = true;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Two sides refused at the same instants do not retry in lockstep: their
/// random waits differ, so the offset between their SYNs moves (dialer docs).
#[test]
fn the_two_sides_draw_different_waits_after_refusals() {
    let t0 = Instant::now();
    let mut sides = [dialer(Role::Connector), dialer(Role::Listener)];
    let mut waits = [Vec::new(), Vec::new()];
    for (d, w) in sides.iter_mut().zip(waits.iter_mut()) {
        d.broker_frame(go(0, 500), t0);
        let mut now = t0;
        for conn in 1..=10 {
            now += ms(1);
            d.dial_failed(conn, DialFailure::Refused, now);
            let next = d.next_wakeup().expect("a next attempt");
            w.push(next - now);
            now = next;
            assert_eq!(dials(&d.timer(now)), vec![conn + 1]);
        }
    }
    assert_ne!(waits[0], waits[1]);
    let distinct: std::collections::BTreeSet<_> = waits[0].iter().collect();
    assert!(distinct.len() > 5, "the waits vary: {:?}", waits[0]);
}
