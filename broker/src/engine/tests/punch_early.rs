//! The connector's rendezvous that comes with its `Connect`
//! (`engine::punch_early`): joined whichever arrives first, matched by where
//! both came from and nothing else, hung up when no punch takes it, the
//! listener's longer budget, and the round trip remembered for hellos that
//! came before their handshake.

use std::net::SocketAddrV4;
use std::time::Duration;

use proto::gcb::punch::{BrokerFrame, PunchGo, PunchReport, PunchVerdict};
use proto::gcb::{Decision, Features, Message, Role, Token};

use super::harness::{a, Fate};
use super::punch::Setup;
use crate::engine::StreamId;

const L_SEEN: &str = "198.51.100.1:41000";
const L_LOCAL: &str = "192.0.2.10:41000";

fn setup() -> Setup {
    super::punch::setup(crate::config::Punch::default())
}

impl Setup {
    /// The connector's `Connect`, early or not; its decision.
    fn connect_early(&mut self, early: bool) -> Decision {
        let mut msg = self.connector.connect_punching(self.proxy);
        if let (true, Message::Connect { features, .. }) = (early, &mut msg) {
            *features = features.union(Features::PUNCH_EARLY);
        }
        match self.bed.ask(self.connector.mgmt, msg) {
            Message::ConnectDecision(d) => d,
            other => panic!("not a decision: {other:?}"),
        }
    }

    /// The connector's early hello: from the port its `Connect` came from,
    /// naming the local address it names, with a token of its own.
    fn early_hello(&mut self, rtt: Option<Duration>) -> StreamId {
        let (seen, local) = (
            self.connector.mgmt,
            self.connector.local(self.connector.mgmt.port()),
        );
        self.bed
            .punch_hello_measured(Token(0x5eed), Role::Connector, seen, local, rtt)
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
    let c = s.early_hello(Some(Duration::from_millis(30)));
    assert!(!s.bed.fates.contains_key(&c), "held, not rejected");
    assert_eq!(s.bed.engine.early_held(), 1);
    let token = early_token(s.connect_early(true));
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
            s.bed.counter("punch_early")
        ),
        (1, 1)
    );
}

#[test]
fn a_hello_after_its_connect_joins_the_awaiting_punch() {
    let mut s = setup();
    let token = early_token(s.connect_early(true));
    let l = s.listener_arrives(token);
    assert!(
        s.bed.frames_to(l).is_empty(),
        "the listener waits for the connector"
    );
    let c = s.early_hello(Some(Duration::from_millis(10)));
    assert_eq!(go(&s.bed.frames_to(c)).peer, a(L_SEEN));
    assert_eq!(go(&s.bed.frames_to(l)).peer, s.connector.mgmt);
}

#[test]
fn a_hello_from_elsewhere_is_never_joined_and_is_hung_up() {
    let mut s = setup();
    let token = early_token(s.connect_early(true));
    let l = s.listener_arrives(token);
    // Same public IP and port, another host behind the NAT.
    let other_local = SocketAddrV4::new("10.1.0.99".parse().unwrap(), s.connector.mgmt.port());
    let stranger = s.bed.punch_hello_measured(
        Token(1),
        Role::Connector,
        s.connector.mgmt,
        other_local,
        None,
    );
    // Another public IP naming the connector's own local address.
    let local = s.connector.local(s.connector.mgmt.port());
    let elsewhere = s.bed.punch_hello_measured(
        Token(2),
        Role::Connector,
        a("203.0.113.77:5002"),
        local,
        None,
    );
    assert!(
        s.bed.frames_to(l).is_empty()
            && s.bed.frames_to(stranger).is_empty()
            && s.bed.frames_to(elsewhere).is_empty()
    );
    s.bed.advance(Duration::from_secs(3));
    assert_eq!(
        (s.bed.fates.get(&stranger), s.bed.fates.get(&elsewhere)),
        (Some(&Fate::HungUp), Some(&Fate::HungUp))
    );
    assert_eq!(s.bed.engine.early_held(), 0);
}

#[test]
fn a_connect_that_is_not_early_leaves_an_early_hello_to_be_hung_up() {
    let mut s = setup();
    let c = s.early_hello(None);
    match s.connect_early(false) {
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
    // Hellos from many public IPs (a few ports each), past both bounds.
    for n in 0..(MAX_HELD + MAX_HELD_PER_IP) as u32 {
        let ip = std::net::Ipv4Addr::from(0xcb00_7100 + n / 8);
        let (seen, local) = (
            SocketAddrV4::new(ip, 5000),
            SocketAddrV4::new(s.connector.own, 20000 + (n % 8) as u16),
        );
        let c = s
            .bed
            .punch_hello_measured(Token(9), Role::Connector, seen, local, None);
        rejected += usize::from(matches!(s.bed.fates.get(&c), Some(Fate::PunchRejected(_))));
    }
    assert_eq!(s.bed.engine.early_held(), MAX_HELD);
    assert_eq!(
        rejected, MAX_HELD_PER_IP,
        "the ones past the table's bound are rejected"
    );
    // One IP alone fills only its share.
    let mut s = setup();
    for port in 0..(MAX_HELD_PER_IP + 5) as u16 {
        let local = SocketAddrV4::new(s.connector.own, 20000 + port);
        s.bed
            .punch_hello_measured(Token(9), Role::Connector, s.connector.mgmt, local, None);
    }
    assert_eq!(s.bed.engine.early_held(), MAX_HELD_PER_IP);
}

#[test]
fn a_hello_before_its_handshake_is_lined_up_with_its_ips_last_round_trip() {
    let mut s = setup();
    // A first punch: the connector's round trip is 30 ms by its report.
    let token = early_token(s.connect_early(true));
    let l = s.listener_arrives(token);
    let c = s.early_hello(None);
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
    let c = s.early_hello(None);
    let token = early_token(s.connect_early(true));
    let l = s.listener_arrives(token);
    // The listener (10 ms) waits half the difference from 30 ms.
    assert_eq!(go(&s.bed.frames_to(l)).delay, Duration::from_millis(10));
    assert_eq!(go(&s.bed.frames_to(c)).delay, Duration::ZERO);
}
