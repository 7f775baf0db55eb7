//! The connector's rendezvous that comes with its `Connect`
//! (`engine::punch_early`): joined by the `Connect`'s request id whichever
//! arrives first and from whichever public IP, never by anything else, hung
//! up when no punch takes it, bounded, an ordinary hello with an unknown
//! token still refused at once, the listener's longer budget, and the round
//! trip remembered for hellos that came before their handshake.

use std::net::SocketAddrV4;
use std::time::Duration;

use proto::gcb::punch::{BrokerFrame, PunchGo, PunchHello, PunchReport, PunchVerdict};
use proto::gcb::{self, Decision, ErrorCode, Features, Message, Role, Token};

use super::harness::{a, Fate};
use super::punch::Setup;
use crate::engine::StreamId;

const L_SEEN: &str = "198.51.100.1:41000";
const L_LOCAL: &str = "192.0.2.10:41000";
/// The request id of the connector's `Connect`.
const ID: u64 = 0x00e1_e1e1_e1e1_0001;

fn setup() -> Setup {
    super::punch::setup(crate::config::Punch::default())
}

impl Setup {
    /// The connector's `Connect` as request `id`, early or not; its decision.
    fn connect_early(&mut self, id: u64, early: bool) -> Decision {
        let mut msg = self.connector.connect_punching(self.proxy);
        if let (true, Message::Connect { features, .. }) = (early, &mut msg) {
            *features = features.union(Features::PUNCH_EARLY);
        }
        let bytes = gcb::encode(&msg, id).unwrap();
        match self.bed.datagram(self.connector.mgmt, id, &bytes) {
            Some(Message::ConnectDecision(d)) => d,
            other => panic!("not a decision: {other:?}"),
        }
    }

    /// The connector's early hello naming request `id`, from `seen`.
    fn early_hello_from(&mut self, seen: SocketAddrV4, id: u64, rtt: Option<Duration>) -> StreamId {
        let local = self.connector.local(self.connector.mgmt.port());
        self.bed
            .punch_hello_measured(PunchHello::early(id, local), seen, rtt)
    }

    fn early_hello(&mut self, id: u64, rtt: Option<Duration>) -> StreamId {
        self.early_hello_from(self.connector.mgmt, id, rtt)
    }

    /// The listener answers its command and says hello.
    fn listener_arrives(&mut self, token: Token) -> StreamId {
        let (id, cmd) = self
            .bed
            .last_command(self.listener.mgmt)
            .expect("the listener is commanded");
        assert!(
            matches!(cmd, Message::PunchConnect { token: t, .. } if t == token),
            "{cmd:?}"
        );
        self.bed.answer(self.listener.mgmt, id, Message::Ack);
        self.bed
            .punch_hello(token, Role::Listener, a(L_SEEN), a(L_LOCAL), 10)
    }
}

fn early_token(d: Decision) -> Token {
    match d {
        Decision::PunchTcp {
            token, early: true, ..
        } => token,
        other => panic!("not an early punch: {other:?}"),
    }
}

fn go(frames: &[BrokerFrame]) -> PunchGo {
    match frames.first() {
        Some(BrokerFrame::Go(go)) => *go,
        other => panic!("no go: {other:?}"),
    }
}

#[test]
fn a_hello_before_its_connect_is_held_and_joined() {
    let mut s = setup();
    let c = s.early_hello(ID, Some(Duration::from_millis(30)));
    assert!(!s.bed.fates.contains_key(&c), "held, not rejected");
    assert_eq!(s.bed.engine.early_held(), 1);
    let token = early_token(s.connect_early(ID, true));
    assert_eq!(s.bed.engine.early_held(), 0, "taken by its connect");
    let l = s.listener_arrives(token);
    let (to_c, to_l) = (go(&s.bed.frames_to(c)), go(&s.bed.frames_to(l)));
    assert_eq!(to_c.peer, a(L_SEEN));
    assert_eq!(
        to_l.peer, s.connector.mgmt,
        "the listener dials the early connection's mapping"
    );
    assert!(
        to_l.budget > to_c.budget,
        "the listener outlasts a connector that commits: {to_l:?} {to_c:?}"
    );
    // The connector reports and leaves; the listener's report ends it.
    s.bed.report(c, PunchReport::Punched);
    s.bed.report(l, PunchReport::Punched);
    assert!(matches!(
        s.bed.frames_to(l)[1],
        BrokerFrame::Verdict(PunchVerdict::Direct { .. })
    ));
    assert_eq!(
        (
            s.bed.counter("punch_succeeded"),
            s.bed.counter("punch_early"),
            s.bed.counter("punch_early_joined")
        ),
        (1, 1, 1)
    );
}

#[test]
fn a_hello_after_its_connect_joins_the_awaiting_punch_from_any_public_ip() {
    let mut s = setup();
    let token = early_token(s.connect_early(ID, true));
    let l = s.listener_arrives(token);
    assert!(
        s.bed.frames_to(l).is_empty(),
        "the listener waits for the connector"
    );
    // A NAT that sends the host's TCP from another public IP than its UDP.
    let tcp_seen = a("198.51.100.3:5002");
    let c = s.early_hello_from(tcp_seen, ID, Some(Duration::from_millis(10)));
    assert_eq!(go(&s.bed.frames_to(c)).peer, a(L_SEEN));
    assert_eq!(
        go(&s.bed.frames_to(l)).peer,
        tcp_seen,
        "the listener dials where the hello came from"
    );
}

#[test]
fn a_hello_naming_another_request_is_never_joined_and_is_hung_up() {
    let mut s = setup();
    let token = early_token(s.connect_early(ID, true));
    let l = s.listener_arrives(token);
    // Same host, same public IP and port, another request id: held, never joined.
    let stranger = s.early_hello(ID + 1, None);
    assert!(s.bed.frames_to(l).is_empty() && s.bed.frames_to(stranger).is_empty());
    s.bed.advance(Duration::from_secs(3));
    assert_eq!(s.bed.fates.get(&stranger), Some(&Fate::HungUp));
    assert_eq!(s.bed.engine.early_held(), 0);
    assert_eq!(s.bed.counter("punch_early_joined"), 0);
}

#[test]
fn an_ordinary_hello_with_an_unknown_token_is_refused_at_once() {
    let mut s = setup();
    let c = s.bed.punch_hello(
        Token(0xbad),
        Role::Connector,
        s.connector.mgmt,
        s.connector.local(5002),
        10,
    );
    assert_eq!(
        s.bed.fates.get(&c),
        Some(&Fate::PunchRejected(ErrorCode::UnknownToken)),
        "not held"
    );
    assert_eq!(s.bed.engine.early_held(), 0);
}

#[test]
fn a_connect_that_is_not_early_leaves_an_early_hello_to_be_hung_up() {
    let mut s = setup();
    let c = s.early_hello(ID, None);
    match s.connect_early(ID, false) {
        Decision::PunchTcp { early: false, .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.bed.engine.early_held(), 1);
    s.bed.advance(Duration::from_secs(3));
    assert_eq!(s.bed.fates.get(&c), Some(&Fate::HungUp));
    assert_eq!(s.bed.counter("punch_early"), 0);
}

#[test]
fn held_hellos_are_bounded_per_ip_and_in_all() {
    use super::super::punch_early::{MAX_HELD, MAX_HELD_PER_IP};
    let mut s = setup();
    let mut rejected = 0;
    // Hellos from many public IPs (eight each), past the table's bound.
    for n in 0..(MAX_HELD + MAX_HELD_PER_IP) as u64 {
        let seen = SocketAddrV4::new(std::net::Ipv4Addr::from(0xcb00_7100 + (n / 8) as u32), 5000);
        let c = s.early_hello_from(seen, n, None);
        rejected +=
            usize::from(s.bed.fates.get(&c) == Some(&Fate::PunchRejected(ErrorCode::LimitReached)));
    }
    assert_eq!(s.bed.engine.early_held(), MAX_HELD);
    assert_eq!(
        rejected, MAX_HELD_PER_IP,
        "the ones past the table's bound are rejected"
    );
    // One IP alone fills only its share.
    let mut s = setup();
    for n in 0..(MAX_HELD_PER_IP + 5) as u64 {
        s.early_hello(n, None);
    }
    assert_eq!(s.bed.engine.early_held(), MAX_HELD_PER_IP);
}

#[test]
fn a_hello_before_its_handshake_is_lined_up_with_its_ips_last_round_trip() {
    let mut s = setup();
    // A first punch: the connector's round trip is 30 ms by its report.
    let token = early_token(s.connect_early(ID, true));
    let l = s.listener_arrives(token);
    let c = s.early_hello(ID, None);
    assert_eq!(
        go(&s.bed.frames_to(l)).delay,
        Duration::ZERO,
        "nothing known to line up with"
    );
    s.bed
        .report_measured(c, PunchReport::Punched, Duration::from_millis(30));
    s.bed.report(l, PunchReport::Punched);
    // The next one from that IP comes before its handshake too.
    s.bed.advance(Duration::from_millis(10));
    let c = s.early_hello(ID + 1, None);
    let token = early_token(s.connect_early(ID + 1, true));
    let l = s.listener_arrives(token);
    // The listener (10 ms) waits half the difference from 30 ms.
    assert_eq!(go(&s.bed.frames_to(l)).delay, Duration::from_millis(10));
    assert_eq!(go(&s.bed.frames_to(c)).delay, Duration::ZERO);
}

#[test]
fn a_listener_whose_shims_can_follow_is_told_to_use_the_connection_at_the_connectors_proof() {
    for follows in [false, true] {
        let mut s = setup();
        // The listener registers again, on another port, offering it or not.
        let mut msg = s.listener.register_punching(8081);
        if let (true, Message::Register { mgmt, .. }) = (follows, &mut msg) {
            mgmt.features = mgmt.features.union(Features::PUNCH_EARLY);
        }
        s.proxy = match s.bed.ask(s.listener.mgmt, msg) {
            Message::RegisterOk { proxy, .. } => proxy,
            other => panic!("{other:?}"),
        };
        let c = s.early_hello(ID, None);
        let token = early_token(s.connect_early(ID, true));
        let l = s.listener_arrives(token);
        let (to_c, to_l) = (go(&s.bed.frames_to(c)), go(&s.bed.frames_to(l)));
        assert_eq!(
            (to_l.commit, to_c.commit),
            (follows, false),
            "follows: {follows}"
        );
        assert_eq!(
            to_l.peer, s.connector.mgmt,
            "the peer it names, as its verdict would"
        );
    }
}

impl Setup {
    /// An early punch to a listener (on port 8081) whose shims can follow:
    /// (connector, listener) streams, both told to go.
    fn following_punch(&mut self) -> (StreamId, StreamId) {
        let mut msg = self.listener.register_punching(8081);
        if let Message::Register { mgmt, .. } = &mut msg {
            mgmt.features = mgmt.features.union(Features::PUNCH_EARLY);
        }
        self.proxy = match self.bed.ask(self.listener.mgmt, msg) {
            Message::RegisterOk { proxy, .. } => proxy,
            other => panic!("{other:?}"),
        };
        let c = self.early_hello(ID, Some(Duration::from_millis(1)));
        let token = early_token(self.connect_early(ID, true));
        let l = self.listener_arrives(token);
        assert!(go(&self.bed.frames_to(l)).commit);
        (c, l)
    }
}

#[test]
fn a_following_listener_gets_its_relay_verdict_at_once_and_the_splice_waits_for_its_report() {
    let mut s = setup();
    let (c, l) = s.following_punch();
    s.bed.report(
        c,
        PunchReport::Failed(proto::gcb::punch::PunchFailure::Timeout),
    );
    assert!(
        matches!(
            s.bed.frames_to(l)[..],
            [_, BrokerFrame::Verdict(PunchVerdict::Relay { .. })]
        ),
        "the listener is not kept dialing out its longer budget: {:?}",
        s.bed.frames_to(l)
    );
    assert!(s.bed.relays.is_empty(), "no splice before its report");
    s.bed.report(
        l,
        PunchReport::Failed(proto::gcb::punch::PunchFailure::Timeout),
    );
    assert_eq!(
        s.bed.relays.len(),
        1,
        "spliced once the report is off the stream"
    );
}

#[test]
fn a_following_listener_whose_report_never_comes_is_relayed_after_the_grace() {
    let mut s = setup();
    let (c, l) = s.following_punch();
    s.bed.report(
        c,
        PunchReport::Failed(proto::gcb::punch::PunchFailure::Timeout),
    );
    assert!(s.bed.relays.is_empty());
    s.bed.advance(Duration::from_secs(2));
    assert_eq!(s.bed.relays.len(), 1, "relayed anyway");
    assert!(!s.bed.watched.contains(&l), "no longer read for a report");
}

#[test]
fn a_listener_that_does_not_follow_has_its_relay_verdict_held_past_its_longer_budget() {
    let mut s = setup();
    let c = s.early_hello(ID, Some(Duration::from_millis(1)));
    let token = early_token(s.connect_early(ID, true));
    let l = s.listener_arrives(token);
    let to_l = go(&s.bed.frames_to(l));
    assert!(!to_l.commit);
    s.bed.report(
        c,
        PunchReport::Failed(proto::gcb::punch::PunchFailure::Timeout),
    );
    // The listener dials until its own budget ends, later than the
    // connector's: its verdict waits for its report (on the engine's clock).
    s.bed.advance(to_l.budget);
    assert_eq!(s.bed.frames_to(l).len(), 1, "held: only the go so far");
    assert!(s.bed.relays.is_empty());
    s.bed.report(
        l,
        PunchReport::Failed(proto::gcb::punch::PunchFailure::Timeout),
    );
    assert!(matches!(
        s.bed.frames_to(l)[..],
        [_, BrokerFrame::Verdict(PunchVerdict::Relay { .. })]
    ));
    assert_eq!(s.bed.relays.len(), 1);
}
