//! Property tests of the registration table: random sequences of
//! registers, heartbeats, unregisters, failed commands and time, run
//! against the table and against a plain model of the rules in the module
//! docs (who holds what, who is freshest, when each holder expires), with
//! the invariants checked after every step; and the promise the broker
//! makes to a busy listener: failed commands never end a registration
//! whose holders heartbeat.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

/// Processes 0..4 share one NAT (one public IP) and may all hold one
/// socket; process 4 is on another host behind another NAT.
const PROCS: usize = 5;
const LOCALS: [&str; 2] = ["10.0.0.5:80", "10.0.0.5:81"];

fn proc_client(p: usize, heartbeat_secs: u16) -> Client {
    let host = if p == 4 { 2 } else { 1 };
    client(&format!("198.51.100.{host}:{}", 5000 + p), heartbeat_secs)
}

#[derive(Debug, Clone)]
enum Op {
    Register(usize, usize),
    Heartbeat(usize, usize),
    Unregister(usize, usize),
    /// The command to the commanded holder of a local address (seen from
    /// the first NAT) fails; `true`: it answered `NotRegistered`.
    Fail(usize, bool),
    /// The management socket of a process is gone (ICMP port unreachable).
    Gone(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PROCS;
    let l = 0..LOCALS.len();
    prop_oneof![
        3 => (p.clone(), l.clone()).prop_map(|(p, l)| Op::Register(p, l)),
        4 => (p.clone(), l.clone()).prop_map(|(p, l)| Op::Heartbeat(p, l)),
        1 => (p, l.clone()).prop_map(|(p, l)| Op::Unregister(p, l)),
        2 => (l, any::<bool>()).prop_map(|(l, d)| Op::Fail(l, d)),
        1 => (0..PROCS).prop_map(Op::Gone),
        3 => (0u64..40).prop_map(Op::Advance),
    ]
}

/// A holder in the model (in join order): process, last heard.
#[derive(Debug, Clone, Copy)]
struct M {
    p: usize,
    last: Instant,
}

/// The rules, without indexes: registrations by (host, local).
struct Model {
    hb: [u16; PROCS],
    regs: HashMap<(usize, usize), (Endpoint, Vec<M>)>,
    /// The proxy each process was last given for each local address.
    belief: HashMap<(usize, usize), Endpoint>,
}

impl Model {
    fn host(p: usize) -> usize {
        usize::from(p == 4)
    }

    fn key_of(&self, ep: &Endpoint) -> Option<(usize, usize)> {
        self.regs
            .iter()
            .find(|(_, (e, _))| e == ep)
            .map(|(k, _)| *k)
    }

    fn freshest(hs: &[M], but: Option<usize>) -> Option<usize> {
        hs.iter()
            .enumerate()
            .filter(|(_, m)| Some(m.p) != but)
            .max_by_key(|(i, m)| (m.last, *i))
            .map(|(_, m)| m.p)
    }

    /// Where commands go: the first holder to join among those heard from
    /// within two heartbeat intervals, else the freshest.
    fn commanded(&self, hs: &[M], but: Option<usize>, now: Instant) -> Option<usize> {
        let live = |h: &M| now.saturating_duration_since(h.last) < Duration::from_secs(u64::from(self.hb[h.p].max(1)) * 2);
        hs.iter().find(|h| Some(h.p) != but && live(h)).map(|h| h.p).or_else(|| Model::freshest(hs, but))
    }
}

/// The table and the model agree on every registration, holder, freshest
/// holder and commanded holder.
fn same(r: &Registry, m: &Model, now: Instant) -> Result<(), TestCaseError> {
    prop_assert_eq!(r.len(), m.regs.len());
    for (ep, hs) in m.regs.values() {
        let rec = r.get(ep);
        prop_assert!(rec.is_some(), "{ep} missing");
        let rec = rec.unwrap();
        let want: Vec<(SocketAddrV4, Instant)> = hs
            .iter()
            .map(|h| (proc_client(h.p, 1).mgmt, h.last))
            .collect();
        let got: Vec<(SocketAddrV4, Instant)> = rec
            .holders()
            .iter()
            .map(|h| (h.mgmt, h.last_heartbeat))
            .collect();
        prop_assert_eq!(got, want);
        let fresh = Model::freshest(hs, None).map(|p| proc_client(p, 1).mgmt);
        prop_assert_eq!(Some(rec.freshest().mgmt), fresh);
        let commanded = m.commanded(hs, None, now).map(|p| proc_client(p, 1).mgmt);
        prop_assert_eq!(Some(rec.commanded(now).mgmt), commanded);
    }
    Ok(())
}

fn step(r: &mut Registry, m: &mut Model, op: &Op, now: &mut Instant) -> Result<(), TestCaseError> {
    match *op {
        Op::Register(p, l) => {
            let key = (Model::host(p), l);
            let ep = register(r, proc_client(p, m.hb[p]), LOCALS[l], None, *now);
            m.belief.insert((p, l), ep);
            let hb = m.hb;
            let (want, hs) = m.regs.entry(key).or_insert((ep, Vec::new()));
            prop_assert_eq!(*want, ep, "one socket, one proxy");
            if let Some(h) = hs.iter_mut().find(|h| h.p == p) {
                h.last = *now;
            } else {
                let live = |h: &M| {
                    now.saturating_duration_since(h.last)
                        < Duration::from_secs(u64::from(hb[h.p].max(1)) * 2)
                };
                hs.retain(live);
                hs.push(M { p, last: *now });
            }
        }
        Op::Heartbeat(p, l) => {
            let Some(ep) = m.belief.get(&(p, l)).copied() else {
                return Ok(());
            };
            let mgmt = proc_client(p, 1).mgmt;
            let key = m.key_of(&ep);
            let holds = key.is_some_and(|k| m.regs[&k].1.iter().any(|h| h.p == p));
            let lone_same_host =
                key.is_some_and(|k| m.regs[&k].1.len() == 1 && k.0 == Model::host(p));
            if !holds && lone_same_host {
                // A NAT remapping as far as the table can tell: the unit
                // tests cover it.
                return Ok(());
            }
            let got = r.refresh(&ep, mgmt, *now);
            if holds {
                prop_assert_eq!(got, Refresh::Refreshed);
                let hs = &mut m.regs.get_mut(&key.unwrap()).unwrap().1;
                hs.iter_mut().find(|h| h.p == p).unwrap().last = *now;
            } else {
                prop_assert_eq!(got, Refresh::Unknown);
            }
        }
        Op::Unregister(p, l) => {
            let Some(ep) = m.belief.get(&(p, l)).copied() else {
                return Ok(());
            };
            let got = r.remove_holder(&ep, proc_client(p, 1).mgmt, *now);
            let key = m
                .key_of(&ep)
                .filter(|k| m.regs[k].1.iter().any(|h| h.p == p));
            match key {
                None => prop_assert!(got.is_none()),
                Some(k) => {
                    let hs = &mut m.regs.get_mut(&k).unwrap().1;
                    hs.retain(|h| h.p != p);
                    if hs.is_empty() {
                        m.regs.remove(&k);
                        prop_assert!(matches!(got, Some(Removed::Record(_))));
                    } else {
                        prop_assert!(matches!(got, Some(Removed::Holder(_))));
                    }
                }
            }
        }
        Op::Fail(l, disowned) => {
            let Some((ep, hs)) = m.regs.get(&(0, l)).cloned() else {
                return Ok(());
            };
            let at = m.commanded(&hs, None, *now).unwrap();
            let want_next = m.commanded(&hs, Some(at), *now).map(|p| proc_client(p, 1).mgmt);
            let (removed, next) = r.command_failed(&ep, proc_client(at, 1).mgmt, disowned, *now);
            prop_assert_eq!(next, want_next);
            if disowned {
                let hs = &mut m.regs.get_mut(&(0, l)).unwrap().1;
                hs.retain(|h| h.p != at);
                if hs.is_empty() {
                    m.regs.remove(&(0, l));
                }
                prop_assert!(removed.is_some());
            } else {
                prop_assert!(removed.is_none(), "a failed command removed {:?}", removed);
            }
        }
        Op::Gone(p) => {
            let mut got: Vec<(Endpoint, bool)> = r
                .remove_mgmt(proc_client(p, 1).mgmt, *now)
                .into_iter()
                .map(|(ep, removed)| (ep, matches!(removed, Removed::Record(_))))
                .collect();
            let mut want = Vec::new();
            for (ep, hs) in m.regs.values_mut() {
                if hs.iter().any(|h| h.p == p) {
                    hs.retain(|h| h.p != p);
                    want.push((*ep, hs.is_empty()));
                }
            }
            m.regs.retain(|_, (_, hs)| !hs.is_empty());
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
        }
        Op::Advance(secs) => {
            *now += Duration::from_secs(secs);
            let mut gone: Vec<(Endpoint, SocketAddrV4)> = r
                .expire(*now)
                .into_iter()
                .map(|(ep, removed)| match removed {
                    Removed::Holder(h) => (ep, h.mgmt),
                    Removed::Record(rec) => (ep, rec.holders()[0].mgmt),
                })
                .collect();
            let mut want = Vec::new();
            for (ep, hs) in m.regs.values_mut() {
                hs.retain(|h| {
                    let due = h.last + r.timeout_for(m.hb[h.p]) <= *now;
                    if due {
                        want.push((*ep, proc_client(h.p, 1).mgmt));
                    }
                    !due
                });
            }
            m.regs.retain(|_, (_, hs)| !hs.is_empty());
            gone.sort();
            want.sort();
            prop_assert_eq!(gone, want);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any sequence of requests and time keeps the invariants and does what
    /// the model of the rules does.
    #[test]
    fn the_table_follows_the_rules(
        hb in proptest::array::uniform5(prop_oneof![Just(1u16), Just(5), Just(20)]),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut now = Instant::now();
        let mut r = registry();
        let mut m = Model { hb, regs: HashMap::new(), belief: HashMap::new() };
        for op in &ops {
            step(&mut r, &mut m, op, &mut now)?;
            check(&r);
            same(&r, &m, now)?;
        }
    }

    /// Holders that heartbeat on time keep their registration and its proxy
    /// address however many commands fail (silence or a full queue), with
    /// the command routed to the freshest holder and then to another; the
    /// registration goes only once every holder has stopped.
    #[test]
    fn failed_commands_never_end_a_heartbeating_registration(
        holders in proptest::collection::vec((1u16..=20, proptest::option::of(0u64..300)), 1..4),
        failures in proptest::collection::vec(0u64..400, 0..40),
    ) {
        let t = Instant::now();
        let mut r = registry();
        let mut ep = None;
        for (i, (hb, _)) in holders.iter().enumerate() {
            let c = client(&format!("198.51.100.1:{}", 5000 + i), *hb);
            let got = register(&mut r, c, "10.0.0.5:80", None, t);
            prop_assert_eq!(*ep.get_or_insert(got), got);
        }
        let ep = ep.unwrap();
        let mut last = vec![t; holders.len()];
        for sec in 1..400u64 {
            let now = t + Duration::from_secs(sec);
            for (i, (hb, stop)) in holders.iter().enumerate() {
                let running = stop.is_none_or(|s| sec < s);
                if running && sec % u64::from(*hb) == 0 {
                    let mgmt = a(&format!("198.51.100.1:{}", 5000 + i));
                    prop_assert_eq!(r.refresh(&ep, mgmt, now), Refresh::Refreshed);
                    last[i] = now;
                }
            }
            for _ in failures.iter().filter(|f| **f == sec) {
                let Some(rec) = r.get(&ep) else { break };
                let at = rec.freshest().mgmt;
                let (removed, next) = r.command_failed(&ep, at, false, now);
                prop_assert!(removed.is_none());
                prop_assert!(next != Some(at));
            }
            r.expire(now);
            check(&r);
            let beating = holders.iter().any(|(_, stop)| stop.is_none_or(|s| sec < s));
            if beating {
                prop_assert!(r.get(&ep).is_some(), "gone at {}s while a holder heartbeats", sec);
            }
            let all_due = holders
                .iter()
                .enumerate()
                .all(|(i, (hb, _))| last[i] + r.timeout_for(*hb) <= now);
            prop_assert_eq!(r.get(&ep).is_none(), all_due);
        }
    }
}
