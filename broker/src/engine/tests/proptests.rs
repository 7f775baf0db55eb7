//! Property tests of the core: random sequences of registrations,
//! heartbeats, unregisters, connects, answers to commands (acks and every
//! kind of refusal), hellos, regular connectors, relays ending, UDP
//! datagrams and channels, ICMP errors and time, with after every step:
//!
//! * the invariants of the core's module docs: the sockets open are
//!   exactly the registrations' and the channels', each closed once; every
//!   stream handed in is held by one pairing or handed back once; the relay
//!   limit holds; the UDP table follows the UDP registrations;
//! * the port pools count exactly the proxy and channel ports in use;
//! * every `Connect` answered as a plain model of the decision table says,
//!   from where the client processes are.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddrV4;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use proto::gcb::{Decision, ErrorCode, Message, Role, Token};
use proto::{Endpoint, Proto};

use super::harness::{a, limits, Bed, Proc};
use super::udp::{dummy, to_peer};

/// Two processes behind NAT A, one behind NAT B, one public.
fn procs() -> [Proc; 4] {
    [Proc::in_a(0), Proc::in_a(1), Proc::in_b(2), Proc::public(3)]
}

const PORTS: [u16; 2] = [8080, 8081];
const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];

#[derive(Debug, Clone)]
enum Op {
    Register(usize, usize, usize),
    Heartbeat(usize),
    Unregister(usize, usize, usize),
    /// Connector, target (among the proxies handed out), and whether it
    /// asks for the other protocol than the target's.
    Connect(usize, Index, bool),
    /// Answers a command sent: 0 Ack, 1 NotRegistered, 2 LimitReached.
    Answer(Index, u8),
    Hello(Index, bool),
    Regular(Index),
    RelayEnds,
    /// A peer (by number) sends to a UDP proxy; a client's Dummy; a channel.
    Peer(Index, u8),
    Dummy(Index),
    Channel(Index, u8),
    Icmp(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let (p, l, pr) = (0..4usize, 0..2usize, 0..2usize);
    let n = any::<Index>;
    prop_oneof![
        4 => (p.clone(), l.clone(), pr.clone()).prop_map(|(p, l, r)| Op::Register(p, l, r)),
        3 => p.clone().prop_map(Op::Heartbeat),
        1 => (p.clone(), l, pr).prop_map(|(p, l, r)| Op::Unregister(p, l, r)),
        5 => (p.clone(), n(), prop::bool::weighted(0.1)).prop_map(|(c, t, f)| Op::Connect(c, t, f)),
        4 => (n(), 0..3u8).prop_map(|(k, w)| Op::Answer(k, w)),
        4 => (n(), any::<bool>()).prop_map(|(k, l)| Op::Hello(k, l)),
        1 => n().prop_map(Op::Regular),
        1 => Just(Op::RelayEnds),
        3 => (n(), 0..4u8).prop_map(|(t, q)| Op::Peer(t, q)),
        2 => n().prop_map(Op::Dummy),
        2 => (n(), 0..4u8).prop_map(|(t, q)| Op::Channel(t, q)),
        1 => p.prop_map(Op::Icmp),
        4 => (0u64..2_000).prop_map(Op::Advance),
        1 => (0u64..40_000).prop_map(Op::Advance),
    ]
}

/// What the test remembers besides the core.
#[derive(Default)]
struct World {
    /// The proxy each process was given for (port, protocol).
    held: HashMap<(usize, usize, usize), Endpoint>,
    /// Every proxy handed out, in order.
    proxies: Vec<Endpoint>,
    udp_tokens: HashMap<SocketAddrV4, Token>,
    tokens: Vec<Token>,
    ended: usize,
}

/// The decision table, from where the processes are: public 3 is dialed
/// directly, a listener behind the connector's own NAT by its local
/// address, one behind NAT by a public connector reversed, the rest relayed.
fn model(listener_nat: Option<[u8; 4]>, connector_nat: Option<[u8; 4]>) -> &'static str {
    match (listener_nat, connector_nat) {
        (None, _) => "direct",
        (Some(l), Some(c)) if l == c => "same realm",
        (Some(_), None) => "reversal",
        (Some(_), Some(_)) => "relay",
    }
}

fn nat(p: &Proc) -> Option<[u8; 4]> {
    (p.own != *p.mgmt.ip()).then(|| p.mgmt.ip().octets())
}

fn step(bed: &mut Bed, w: &mut World, op: Op) {
    let ps = procs();
    match op {
        Op::Register(p, l, r) => {
            if let Message::RegisterOk {
                proxy, udp_token, ..
            } = bed.ask(ps[p].mgmt, ps[p].register(PROTOS[r], PORTS[l]))
            {
                let ep = Endpoint::new(PROTOS[r], proxy);
                w.held.insert((p, l, r), ep);
                w.proxies.push(ep);
                if let Some(t) = udp_token {
                    w.udp_tokens.insert(proxy, t);
                }
            }
        }
        Op::Heartbeat(p) => {
            let held: Vec<Endpoint> = w
                .held
                .iter()
                .filter(|(k, _)| k.0 == p)
                .map(|(_, ep)| *ep)
                .collect();
            bed.heartbeat(ps[p], &held);
        }
        Op::Unregister(p, l, r) => {
            if let Some(ep) = w.held.remove(&(p, l, r)) {
                bed.ask(ps[p].mgmt, Message::Unregister { proxy: ep });
            }
        }
        Op::Connect(c, t, flip) => {
            let Some(ep) = pick(&w.proxies, t) else {
                return;
            };
            let proto = match (ep.proto, flip) {
                (p, false) => p,
                (Proto::Tcp, true) => Proto::Udp,
                (Proto::Udp, true) => Proto::Tcp,
            };
            let target = Endpoint::new(proto, ep.addr);
            let listener = bed.engine.registry.get(&target).map(|rec| {
                let owner = ps.iter().find(|p| *p.mgmt.ip() == rec.ip).unwrap();
                (rec.local, nat(owner))
            });
            let reply = bed.ask(ps[c].mgmt, ps[c].connect(target.proto, target.addr));
            check_decision(w, target, listener, nat(&ps[c]), reply);
        }
        Op::Answer(k, how) => {
            let Some((to, id, _)) = pick(&bed.commands, k) else {
                return;
            };
            let msg = match how {
                0 => Message::Ack,
                1 => Message::error(ErrorCode::NotRegistered, "gone"),
                _ => Message::error(ErrorCode::LimitReached, "full"),
            };
            bed.answer(to, id, msg);
        }
        Op::Hello(k, listener) => {
            if let Some(t) = pick(&w.tokens, k) {
                let role = if listener {
                    Role::Listener
                } else {
                    Role::Connector
                };
                bed.hello(t, role, a("198.51.100.2:33000"));
            }
        }
        Op::Regular(t) => {
            if let Some(ep) = pick(&w.proxies, t).filter(|ep| ep.proto == Proto::Tcp) {
                bed.regular(ep.addr, a("198.51.100.9:7000"));
                if let Some((_, Message::RelayConnect { token, .. })) =
                    bed.commands.last().map(|c| (c.0, c.2.clone()))
                {
                    w.tokens.push(token);
                }
            }
        }
        Op::RelayEnds => {
            if bed.relays.len() > w.ended {
                w.ended += 1;
                bed.engine.relay_ended([1, 1]);
            }
        }
        Op::Peer(t, q) => {
            if let Some(ep) = live_udp(bed, w, t) {
                bed.udp_in(
                    ep.addr,
                    SocketAddrV4::new([203, 0, 113, 20].into(), 6000 + u16::from(q)),
                    b"p",
                );
                bed.udp_in(
                    ep.addr,
                    a("198.51.100.1:7000"),
                    &to_peer(a("203.0.113.20:6000"), b"c"),
                );
            }
        }
        Op::Dummy(t) => {
            if let Some(ep) = live_udp(bed, w, t) {
                let token = w.udp_tokens[&ep.addr];
                bed.udp_in(ep.addr, a("198.51.100.1:7000"), &dummy(token));
            }
        }
        Op::Channel(t, q) => {
            if let Some(ep) = live_udp(bed, w, t) {
                let req = Message::UdpChannel {
                    proxy: ep.addr,
                    peer: SocketAddrV4::new([203, 0, 113, 20].into(), 6000 + u16::from(q)),
                    udp_token: w.udp_tokens[&ep.addr],
                    open: q != 3,
                };
                bed.ask(ps[0].mgmt, req);
            }
        }
        Op::Icmp(p) => {
            let at = ps[p].mgmt;
            let report = crate::icmp::Report {
                dest: Some(at),
                origin: crate::icmp::ORIGIN_ICMP,
                icmp_type: 3,
                code: 3,
                offender: Some(*at.ip()),
            };
            let now = bed.now;
            bed.engine.on_icmp(&[report], now);
            bed.apply();
        }
        Op::Advance(ms) => bed.advance(Duration::from_millis(ms)),
    }
}

/// The item `i` picks from `items`, if there is any.
fn pick<T: Clone>(items: &[T], i: Index) -> Option<T> {
    (!items.is_empty()).then(|| i.get(items).clone())
}

fn live_udp(bed: &Bed, w: &World, t: Index) -> Option<Endpoint> {
    let udp: Vec<Endpoint> = w
        .proxies
        .iter()
        .filter(|ep| ep.proto == Proto::Udp)
        .copied()
        .collect();
    let ep = pick(&udp, t)?;
    (ep.proto == Proto::Udp && bed.engine.registry.get(&ep).is_some()).then_some(ep)
}

fn check_decision(
    w: &mut World,
    target: Endpoint,
    listener: Option<(SocketAddrV4, Option<[u8; 4]>)>,
    connector_nat: Option<[u8; 4]>,
    reply: Message,
) {
    let Some((local, listener_nat)) = listener else {
        assert_eq!(reply, Message::ConnectDecision(Decision::NotRegistered));
        return;
    };
    let want = model(listener_nat, connector_nat);
    match reply {
        Message::ConnectDecision(Decision::Direct { addr }) => {
            assert_eq!((want, addr), ("direct", local))
        }
        Message::ConnectDecision(Decision::SameRealm { addr }) => {
            assert_eq!((want, addr), ("same realm", local))
        }
        Message::ConnectDecision(Decision::Reversal { token }) => {
            assert_eq!(want, "reversal");
            w.tokens.push(token);
        }
        Message::ConnectDecision(Decision::Relay { via, token }) => {
            assert_eq!(want, "relay");
            match target.proto {
                Proto::Udp => assert_eq!((via, token), (target.addr, Token(0))),
                Proto::Tcp => w.tokens.push(token),
            }
        }
        Message::Error {
            code: ErrorCode::LimitReached,
            ..
        } => {
            assert_eq!(
                (want, target.proto),
                ("relay", Proto::Tcp),
                "only a relay has a limit"
            )
        }
        other => panic!("{other:?} for a {want}"),
    }
}

/// The invariants of the core's module docs, and the pools' counts.
fn check(bed: &Bed, w: &World) {
    let e = &bed.engine;
    // 1: the sockets open are the registrations' and the channels'.
    let mut sockets: BTreeSet<_> = e.registry.iter().map(|r| r.token).collect();
    let mut channels = 0;
    for (proxy, _) in e.udp.table.iter() {
        for addr in e.udp.channels.of(proxy) {
            sockets.insert(e.udp.channels.get(&addr).unwrap().socket);
            channels += 1;
        }
    }
    assert_eq!(
        channels,
        e.udp.channels.len(),
        "a channel outlived its registration"
    );
    let open: BTreeSet<_> = bed.host.open.keys().copied().collect();
    assert_eq!(open, sockets);
    // 2: every stream is held by one pairing or was handed back once.
    let mut held = BTreeSet::new();
    for (_, p) in e.pairings.iter() {
        for h in [&p.connector, &p.listener].into_iter().flatten() {
            assert!(held.insert(h.stream), "{:?} in two pairings", h.stream);
            assert!(
                !bed.fates.contains_key(&h.stream),
                "{:?} both held and handed back",
                h.stream
            );
        }
        if p.failed.is_some() {
            assert!(
                p.connector.is_none() && p.listener.is_none(),
                "a failed pairing holds nothing"
            );
        }
    }
    assert_eq!(held.len() + bed.fates.len(), bed.streams as usize);
    // 3: the relay limit.
    assert_eq!(e.relays, bed.relays.len() - w.ended);
    assert!(e.relays + e.pairings.relaying() <= e.config.limits.max_relays as usize);
    // 4: the UDP table follows the UDP registrations.
    let udp_regs: BTreeSet<_> = e
        .registry
        .iter()
        .filter(|r| r.proxy.proto == Proto::Udp)
        .map(|r| r.proxy.addr)
        .collect();
    let table: BTreeSet<_> = e.udp.table.iter().map(|(p, _)| *p).collect();
    assert_eq!(udp_regs, table);
    // The pools count every proxy port and channel port in use.
    let tcp = e
        .registry
        .iter()
        .filter(|r| r.proxy.proto == Proto::Tcp)
        .count();
    assert_eq!(e.registry.pool(Proto::Tcp).in_use(), tcp);
    assert_eq!(
        e.registry.pool(Proto::Udp).in_use(),
        udp_regs.len() + channels
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn the_core_keeps_its_invariants_and_decides_by_the_table(
        ops in proptest::collection::vec(op(), 1..80),
        max_relays in 1u32..4,
    ) {
        let mut l = limits();
        l.max_relays = max_relays;
        let mut bed = Bed::with(l);
        let mut w = World::default();
        for op in ops {
            step(&mut bed, &mut w, op);
            check(&bed, &w);
        }
        // However it went, time ends everything but the registrations'
        // heartbeats: with none, nothing is left open or held.
        bed.advance(Duration::from_secs(300));
        check(&bed, &w);
        prop_assert!(bed.host.open.is_empty());
        prop_assert_eq!(bed.engine.pairings.len(), 0);
        prop_assert_eq!(bed.engine.asyncs.len(), 0);
    }
}
