//! Standby connects (`Features::STANDBY`, engine::connect): punched like any
//! punch with `standby` in the listener's `PunchConnect`, or refused with
//! `Error{Unsupported}` for every connect that would not be punched, before
//! a command is sent, a pairing made or a decision or skip counted.

use std::net::SocketAddrV4;
use std::time::Duration;

use proto::gcb::{Decision, ErrorCode, Features, Message};
use proto::Proto;

use super::harness::{a, limits, Bed, Proc, BROKER};
use crate::config::{Limits, Punch};

struct Setup {
    bed: Bed,
    listener: Proc,
    connector: Proc,
    proxy: SocketAddrV4,
}

/// A TCP listener in realm A registered by `register`, a connector in B.
fn setup_with(l: Limits, register: fn(&Proc) -> Message) -> Setup {
    let mut bed = Bed::with(l);
    let (listener, connector) = (Proc::in_a(1), Proc::in_b(2));
    let proxy = match bed.ask(listener.mgmt, register(&listener)) {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("{other:?}"),
    };
    Setup { bed, listener, connector, proxy }
}

fn setup() -> Setup {
    setup_with(limits(), |p| p.register_punching(8080))
}

/// `msg` (a `Connect`) asking for a standby.
fn standby(mut msg: Message) -> Message {
    if let Message::Connect { features, .. } = &mut msg {
        *features = features.union(Features::STANDBY);
    }
    msg
}

impl Setup {
    /// `who`'s standby connect is refused, and leaves no trace but the
    /// refusal's counter: no command, no pairing, no decision or skip.
    fn refused(&mut self, who: Proc, msg: Message, why: &str) {
        let before = self.bed.engine.counters.clone();
        let reply = self.bed.ask(who.mgmt, standby(msg));
        let Message::Error { code, detail } = reply else { panic!("{why}: not refused: {reply:?}") };
        assert_eq!(code, ErrorCode::Unsupported, "{why}");
        assert!(detail.starts_with("no standby: "), "{why}: {detail}");
        assert!(self.bed.commands.is_empty(), "{why}: a command was sent: {:?}", self.bed.commands);
        assert_eq!(self.bed.engine.pairings.len(), 0, "{why}: a pairing was made");
        let after = &self.bed.engine.counters;
        assert_eq!(after.punch_standby_refused, before.punch_standby_refused + 1, "{why}");
        assert_eq!(after.connects, before.connects + 1, "{why}: still a connect");
        let unchanged = |c: &crate::counters::Counters| {
            (c.punch_attempts, c.punch_standby_attempts, c.decided_relay, c.decided_reversal)
        };
        assert_eq!(unchanged(after), unchanged(&before), "{why}");
        let skips = |c: &crate::counters::Counters| {
            (c.punch_skipped_not_capable, c.punch_skipped_disabled, c.punch_skipped_cached_failure)
        };
        assert_eq!(skips(after), skips(&before), "{why}: a skip counted");
        assert_eq!((after.decided_direct, after.decided_same_realm), (before.decided_direct, before.decided_same_realm));
        assert_eq!(after.decided_not_registered, before.decided_not_registered, "{why}");
    }
}

#[test]
fn a_standby_between_punching_realms_is_punched_and_the_listener_told_so() {
    let mut s = setup();
    let msg = standby(s.connector.connect_punching(s.proxy));
    let Message::ConnectDecision(Decision::PunchTcp { via, token, .. }) = s.bed.ask(s.connector.mgmt, msg) else {
        panic!("not punched")
    };
    assert_eq!(via, a(BROKER));
    let (_, cmd) = s.bed.last_command(s.listener.mgmt).expect("the listener is commanded");
    let peer = SocketAddrV4::new(*s.connector.mgmt.ip(), 40000);
    assert_eq!(cmd, Message::PunchConnect { token, broker: a(BROKER), peer, proxy: s.proxy, standby: true });
    assert!(s.bed.engine.pairings.get(token).is_some(), "it waits for both hellos like any punch");
    let n = |name| s.bed.counter(name);
    assert_eq!((n("punch_attempts"), n("punch_standby_attempts"), n("punch_standby_refused")), (1, 1, 0));

    // The program's own connect is a plain punch.
    let Message::ConnectDecision(Decision::PunchTcp { token, .. }) = s.bed.ask(s.connector.mgmt, s.connector.connect_punching(s.proxy)) else {
        panic!("not punched")
    };
    let (_, cmd) = s.bed.last_command(s.listener.mgmt).unwrap();
    assert_eq!(cmd, Message::PunchConnect { token, broker: a(BROKER), peer, proxy: s.proxy, standby: false });
    assert_eq!((s.bed.counter("punch_attempts"), s.bed.counter("punch_standby_attempts")), (2, 1));
}

#[test]
fn a_standby_that_would_not_be_punched_is_refused_before_anything_is_sent() {
    // The pair failed to punch recently.
    let mut s = setup();
    let (c, l) = (*s.connector.mgmt.ip(), *s.listener.mgmt.ip());
    let now = s.bed.now;
    s.bed.engine.punch_cache.failed(Proto::Tcp, c, l, Duration::from_secs(600), now);
    s.refused(s.connector, s.connector.connect_punching(s.proxy), "cached failure");
    assert!(s.bed.engine.punch_cache.blocked(Proto::Tcp, c, l, now), "the entry stays");

    // The listener's shim cannot punch; nor can the connector's.
    let mut s = setup_with(limits(), |p| p.register(Proto::Tcp, 8080));
    s.refused(s.connector, s.connector.connect_punching(s.proxy), "listener not capable");
    let mut s = setup();
    s.refused(s.connector, s.connector.connect(Proto::Tcp, s.proxy), "connector not capable");

    // --no-punch.
    let mut l = limits();
    l.punch = Punch { enabled: false, ..Punch::default() };
    let mut s = setup_with(l, |p| p.register_punching(8080));
    s.refused(s.connector, s.connector.connect_punching(s.proxy), "punching off");

    // The connector's NAT did not keep its port.
    let mut s = setup();
    let mut msg = s.connector.connect_punching(s.proxy);
    if let Message::Connect { asked_from_port, .. } = &mut msg {
        *asked_from_port = 1;
    }
    s.refused(s.connector, msg, "unpredictable mapping");

    // The relay limit.
    let mut l = limits();
    l.max_relays = 0;
    let mut s = setup_with(l, |p| p.register_punching(8080));
    s.refused(s.connector, s.connector.connect_punching(s.proxy), "relay limit");
    assert_eq!(s.bed.counter("refused"), 0, "not counted as a refused relay");

    // Other rows of the table: same realm, a public connector (reversal), a
    // public listener (direct), and an address not registered.
    let mut s = setup();
    s.refused(Proc::in_a(5), Proc::in_a(5).connect_punching(s.proxy), "same realm");
    s.refused(Proc::public(6), Proc::public(6).connect_punching(s.proxy), "reversal");
    s.refused(s.connector, s.connector.connect_punching(a("203.0.113.1:29999")), "not registered");
    let public = Proc::public(7);
    let Message::RegisterOk { proxy, .. } = s.bed.ask(public.mgmt, public.register_punching(8080)) else {
        panic!("no public registration")
    };
    s.refused(s.connector, s.connector.connect_punching(proxy), "public listener");
}

#[test]
fn a_udp_standby_is_refused_even_where_udp_would_be_punched() {
    let mut s = setup();
    let mut reg = s.listener.register(Proto::Udp, 9000);
    if let Message::Register { mgmt, .. } = &mut reg {
        mgmt.features = Features::PUNCH_UDP;
    }
    let Message::RegisterOk { proxy, .. } = s.bed.ask(s.listener.mgmt, reg) else { panic!("no udp registration") };
    let mut msg = s.connector.connect(Proto::Udp, proxy);
    if let Message::Connect { features, asked_from_port, .. } = &mut msg {
        *features = Features::PUNCH_UDP.union(Features::PUNCH_TCP);
        *asked_from_port = s.connector.mgmt.port();
    }
    s.refused(s.connector, msg, "udp");
    assert_eq!(s.bed.counter("udp_punch_attempts"), 0);
}
