//! The outcome cache as the core uses it, TCP and UDP apart: a failed TCP
//! punch relays the pair's TCP at once and leaves its UDP punching, an
//! unpredictable UDP mapping does the reverse, a UDP punch whose report
//! never came is not cached, a UDP report clears the pair's UDP entry, and
//! the gauges and the status say what the cache holds at the moment.

use std::net::SocketAddrV4;
use std::time::Duration;

use proto::gcb::punch::{PunchFailure, PunchReport};
use proto::gcb::{Decision, Features, Message, Role, Token};
use proto::Proto;

use super::harness::{a, Bed, Proc};
use super::udp::dummy;
use crate::config::Punch;
use crate::engine::punch_udp::REPORT_TTL;

/// Where the listener's UDP socket is seen, through realm A's NAT.
const L_PATH: &str = "198.51.100.1:7000";
const RETRY: Duration = Duration::from_secs(600);

/// A listener in realm A with a punching TCP socket and a punching UDP
/// socket (its data path known), a connector in realm B.
struct Setup {
    bed: Bed,
    listener: Proc,
    connector: Proc,
    tcp: SocketAddrV4,
    udp: SocketAddrV4,
}

fn setup() -> Setup {
    let mut l = super::harness::limits();
    // Registrations outlive the retry time without heartbeats.
    l.heartbeat_timeout_s = 3600;
    l.punch = Punch { retry_s: RETRY.as_secs(), ..Punch::default() };
    let mut bed = Bed::with(l);
    let (listener, connector) = (Proc::in_a(1), Proc::in_b(2));
    let Message::RegisterOk { proxy: tcp, .. } = bed.ask(listener.mgmt, listener.register_punching(8080)) else {
        panic!("no tcp registration")
    };
    let mut msg = listener.register(Proto::Udp, 9000);
    if let Message::Register { mgmt, .. } = &mut msg {
        mgmt.features = Features::PUNCH_UDP;
    }
    let Message::RegisterOk { proxy: udp, udp_token: Some(t), .. } = bed.ask(listener.mgmt, msg) else {
        panic!("no udp registration")
    };
    bed.udp_in(udp, a(L_PATH), &dummy(t));
    Setup { bed, listener, connector, tcp, udp }
}

impl Setup {
    fn decide(&mut self, msg: Message) -> Decision {
        match self.bed.ask(self.connector.mgmt, msg) {
            Message::ConnectDecision(d) => d,
            other => panic!("not a decision: {other:?}"),
        }
    }

    fn tcp_connect(&mut self) -> Decision {
        self.decide(self.connector.connect_punching(self.tcp))
    }

    /// A UDP connect whose probe port arrived as `asked_from_port`.
    fn udp_connect(&mut self, asked_from_port: u16) -> Decision {
        let mut m = self.connector.connect(Proto::Udp, self.udp);
        if let Message::Connect { features, asked_from_port: port, .. } = &mut m {
            *features = Features::PUNCH_UDP;
            *port = asked_from_port;
        }
        self.decide(m)
    }

    fn udp_punched(&mut self) -> Token {
        match self.udp_connect(self.connector.mgmt.port()) {
            Decision::PunchUdp { token, .. } => token,
            other => panic!("udp not punched: {other:?}"),
        }
    }

    /// A TCP punch that both sides report failed.
    fn tcp_punch_fails(&mut self) {
        let Decision::PunchTcp { token, .. } = self.tcp_connect() else {
            panic!("tcp not punched")
        };
        let c = self.bed.punch_hello(token, Role::Connector, a("198.51.100.2:40000"), a("10.1.0.10:40000"), 30);
        let l = self.bed.punch_hello(token, Role::Listener, a("198.51.100.1:41000"), a("192.0.2.10:41000"), 10);
        self.bed.report(c, PunchReport::Failed(PunchFailure::Timeout));
        self.bed.report(l, PunchReport::Failed(PunchFailure::Timeout));
        assert_eq!(self.bed.counter("punch_fallbacks_timeout"), 1);
    }

    /// Blocked pairs, TCP and UDP, by the gauges and by the status.
    fn blocked(&self) -> [usize; 2] {
        let g = self.bed.engine.gauges(self.bed.now);
        assert_eq!(g.punch_blocked_pairs, g.punch_blocked[0] + g.punch_blocked[1]);
        let view = self.bed.engine.view(self.bed.now, &self.bed.host);
        let listed = |p| view.punch_blocked.iter().filter(|b| b.proto == p).count();
        assert_eq!([listed(Proto::Tcp), listed(Proto::Udp)], g.punch_blocked, "status and gauges agree");
        g.punch_blocked
    }
}

fn is_relay(d: &Decision) -> bool {
    matches!(d, Decision::Relay { .. })
}

#[test]
fn a_failed_tcp_punch_relays_tcp_and_leaves_udp_punching() {
    let mut s = setup();
    s.tcp_punch_fails();
    assert_eq!(s.blocked(), [1, 0]);
    let view = s.bed.engine.view(s.bed.now, &s.bed.host);
    let b = &view.punch_blocked[0];
    assert_eq!(b.realms, [*s.listener.mgmt.ip(), *s.connector.mgmt.ip()]);
    assert_eq!(b.expires_in, RETRY);

    let d = s.tcp_connect();
    assert!(is_relay(&d), "tcp is relayed at once: {d:?}");
    assert_eq!(s.bed.counter("punch_skipped_cached_failure"), 1);
    s.udp_punched();
    assert_eq!(s.bed.counter("udp_punch_attempts"), 1);
    assert_eq!(s.bed.counter("punch_skipped_cached_failure"), 1, "udp met no cached failure");
}

#[test]
fn an_unpredictable_udp_mapping_relays_udp_and_leaves_tcp_punching() {
    let mut s = setup();
    let d = s.udp_connect(1234);
    assert!(is_relay(&d), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_unpredictable_mapping"), 1);
    assert_eq!(s.blocked(), [0, 1]);
    // Even from a kept port now: the pair's UDP is relayed at once.
    let d = s.udp_connect(s.connector.mgmt.port());
    assert!(is_relay(&d), "{d:?}");
    assert_eq!(s.bed.counter("punch_skipped_cached_failure"), 1);
    let d = s.tcp_connect();
    assert!(matches!(d, Decision::PunchTcp { .. }), "tcp is punched: {d:?}");
}

#[test]
fn each_protocol_is_blocked_for_its_own_retry_time() {
    let mut s = setup();
    s.tcp_punch_fails();
    s.bed.advance(Duration::from_secs(300));
    assert!(is_relay(&s.udp_connect(1234)));
    assert_eq!(s.blocked(), [1, 1]);
    // TCP's time is over, UDP's is not: the gauge drops TCP's entry before
    // any connect looks at it.
    s.bed.advance(Duration::from_secs(301));
    assert_eq!(s.blocked(), [0, 1]);
    assert!(matches!(s.tcp_connect(), Decision::PunchTcp { .. }));
    assert!(is_relay(&s.udp_connect(s.connector.mgmt.port())));
    s.bed.advance(Duration::from_secs(300));
    assert_eq!(s.blocked(), [0, 0]);
    s.udp_punched();
}

#[test]
fn a_udp_punch_without_a_report_is_not_cached_as_failed() {
    let mut s = setup();
    s.udp_punched();
    // The report window passes without the connector's word.
    s.bed.advance(REPORT_TTL + Duration::from_secs(1));
    assert_eq!(s.blocked(), [0, 0]);
    // The next punch is tried: the listener's shim yields on it.
    s.udp_punched();
    assert_eq!(s.bed.counter("udp_punch_direct"), 0);
}

#[test]
fn a_udp_report_clears_the_pairs_udp_entry_only() {
    let mut s = setup();
    s.tcp_punch_fails();
    let token = s.udp_punched();
    // Meanwhile another socket's mapping looks unpredictable.
    assert!(is_relay(&s.udp_connect(1234)));
    assert_eq!(s.blocked(), [1, 1]);
    // The first punch's connector says its path opened.
    let mapping = SocketAddrV4::new(*s.connector.mgmt.ip(), 40000);
    s.bed.udp_in(s.udp, mapping, &dummy(token));
    assert_eq!(s.bed.counter("udp_punch_direct"), 1);
    assert_eq!(s.blocked(), [1, 0], "udp may punch again, tcp stays blocked");
    s.udp_punched();
    assert!(is_relay(&s.tcp_connect()));
}
