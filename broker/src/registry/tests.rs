//! Unit tests of the registration table: every operation, with the
//! invariants of the module docs checked after each step. Joining and
//! command routing are in `joins`, the property tests in `proptests`.

use super::*;
use crate::decide::Realm;
use crate::ports::Owner;
use daemon_kit::random::SplitMix64;

mod joins;
mod proptests;

const RANGE: PortRange = PortRange {
    lo: 20000,
    hi: 20009,
};

pub(super) fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn public_ip() -> Ipv4Addr {
    "203.0.113.1".parse().unwrap()
}

/// A process whose management socket is `mgmt` as the broker sees it and
/// 10.0.0.5 with the same port as it sees itself.
pub(super) fn client(mgmt: &str, heartbeat_secs: u16) -> Client {
    let mgmt = a(mgmt);
    Client {
        mgmt,
        mgmt_local: SocketAddrV4::new([10, 0, 0, 5].into(), mgmt.port()),
        public: false,
        realm: Realm::Ip(*mgmt.ip()),
        pid: 7,
        program: "condor_schedd".into(),
        heartbeat_secs,
        features: proto::gcb::Features::NONE,
    }
}

/// Every invariant of the module docs.
pub(super) fn check(r: &Registry) {
    let mut holders = 0;
    for (key, rec) in &r.records {
        // 1, 2
        assert_eq!(*key, rec.proxy);
        assert!((1..=MAX_HOLDERS).contains(&rec.holders.len()), "{rec:?}");
        for (i, h) in rec.holders.iter().enumerate() {
            assert_eq!(*h.mgmt.ip(), rec.ip, "{rec:?}");
            assert!(rec.holders[..i].iter().all(|o| o.mgmt != h.mgmt), "{rec:?}");
            // 4
            assert!(r.expiry.contains(&(h.deadline, rec.proxy, h.mgmt)));
            assert_eq!(
                h.deadline,
                h.last_heartbeat + r.timeout_for(h.heartbeat_secs)
            );
        }
        holders += rec.holders.len();
        // 6
        assert!(rec.former.len() <= record::FORMER, "{rec:?}");
        for (i, m) in rec.former.iter().enumerate() {
            assert!(
                !rec.former[..i].contains(m) && rec.holder(*m).is_none(),
                "{rec:?}"
            );
        }
        // 3
        assert_eq!(
            r.by_socket.get(&(rec.proxy.proto, rec.ip, rec.local)),
            Some(key)
        );
    }
    // 7
    let mut held: HashMap<SocketAddrV4, BTreeSet<Endpoint>> = HashMap::new();
    for rec in r.records.values() {
        for h in &rec.holders {
            held.entry(h.mgmt).or_default().insert(rec.proxy);
        }
    }
    assert_eq!(r.by_mgmt, held);
    assert_eq!(r.by_socket.len(), r.records.len());
    assert_eq!(r.expiry.len(), holders);
    // 5
    for proto in [Proto::Tcp, Proto::Udp] {
        let n = r.iter().filter(|x| x.proxy.proto == proto).count();
        assert_eq!(r.pool(proto).in_use(), n);
    }
}

/// Registers like the command handler does: renew, join, or allocate and
/// insert.
pub(super) fn register(
    r: &mut Registry,
    c: Client,
    local: &str,
    desired: Option<u16>,
    now: Instant,
) -> Endpoint {
    let local = a(local);
    match r.find_for_register(Proto::Tcp, c.mgmt, local) {
        Claim::Again(ep) => {
            r.renew(&ep, c, now).unwrap();
            check(r);
            return ep;
        }
        Claim::Join(ep) => {
            r.join(&ep, c, now).unwrap();
            check(r);
            return ep;
        }
        Claim::New => {}
    }
    let owner = Owner {
        local,
        ip: *c.mgmt.ip(),
    };
    let mut rng = SplitMix64::new(9);
    let (port, ()) = r
        .pool_mut(Proto::Tcp)
        .allocate(desired, &owner, now, &mut rng, |_| Ok(()))
        .unwrap();
    let ep = Endpoint::new(Proto::Tcp, SocketAddrV4::new(public_ip(), port));
    let token = Token(usize::from(port));
    r.insert(ep, local, c, token, now);
    check(r);
    ep
}

pub(super) fn registry() -> Registry {
    Registry::new(RANGE, Duration::from_secs(30))
}

pub(super) fn mgmts(r: &Registry, p: &Endpoint) -> Vec<SocketAddrV4> {
    r.get(p)
        .map_or(Vec::new(), |x| x.holders().iter().map(|h| h.mgmt).collect())
}

#[test]
fn add_lookup_and_idempotent_register() {
    let t = Instant::now();
    let mut r = registry();
    let p = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    assert!(RANGE.contains(p.addr.port()) && *p.addr.ip() == public_ip());
    assert_eq!(r.get(&p).unwrap().local, a("10.0.0.5:80"));
    // Same socket, same management address: same proxy, one holder.
    let again = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    assert_eq!(again, p);
    assert_eq!((r.len(), mgmts(&r, &p).len()), (1, 1));
    // Another socket of the same client, and the same address behind
    // another NAT (another host): registrations of their own.
    let q = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:81",
        None,
        t,
    );
    let s = register(
        &mut r,
        client("198.51.100.2:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    assert!(p != q && q != s && p != s);
    assert_eq!(r.len(), 3);
}

#[test]
fn a_heartbeat_refreshes_its_holder_and_follows_a_lone_one_across_nat() {
    let t = Instant::now();
    let mut r = registry();
    let p = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    let t1 = t + Duration::from_secs(20);
    assert_eq!(
        r.refresh(&p, a("198.51.100.1:5000"), t1),
        Refresh::Refreshed
    );
    assert_eq!(r.get(&p).unwrap().freshest().last_heartbeat, t1);
    check(&r);
    // Same public IP, new port, one holder: the NAT lost the mapping.
    assert_eq!(
        r.refresh(&p, a("198.51.100.1:6000"), t1),
        Refresh::Moved(a("198.51.100.1:5000"))
    );
    assert_eq!(mgmts(&r, &p), [a("198.51.100.1:6000")]);
    check(&r);
    // Another IP is someone else; unknown endpoints are unknown.
    assert_eq!(r.refresh(&p, a("198.51.100.9:6000"), t1), Refresh::Unknown);
    let nowhere = Endpoint::new(Proto::Tcp, a("203.0.113.1:1"));
    assert_eq!(
        r.refresh(&nowhere, a("198.51.100.1:6000"), t1),
        Refresh::Unknown
    );
    // With two holders a stranger port cannot be told apart: the client
    // registers again (and joins), nobody's entry moves.
    register(
        &mut r,
        client("198.51.100.1:6001", 10),
        "10.0.0.5:80",
        None,
        t1,
    );
    assert_eq!(r.refresh(&p, a("198.51.100.1:7000"), t1), Refresh::Unknown);
    assert_eq!(
        mgmts(&r, &p),
        [a("198.51.100.1:6000"), a("198.51.100.1:6001")]
    );
    // Each heartbeat refreshes its own holder only.
    let t2 = t1 + Duration::from_secs(5);
    assert_eq!(
        r.refresh(&p, a("198.51.100.1:6001"), t2),
        Refresh::Refreshed
    );
    let rec = r.get(&p).unwrap();
    assert_eq!(
        rec.holder(a("198.51.100.1:6000")).unwrap().last_heartbeat,
        t1
    );
    assert_eq!(
        rec.holder(a("198.51.100.1:6001")).unwrap().last_heartbeat,
        t2
    );
    check(&r);
}

#[test]
fn each_holder_expires_on_its_own_and_the_last_takes_the_registration() {
    let t = Instant::now();
    let mut r = registry();
    let fast = client("198.51.100.1:5000", 1);
    let slow = client("198.51.100.1:5001", 60);
    let p = register(&mut r, fast.clone(), "10.0.0.5:80", None, t);
    register(&mut r, slow.clone(), "10.0.0.5:80", None, t);
    // The broker's 30 s for the fast one, three of its 60 s for the slow.
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(30)));
    assert!(r.expire(t + Duration::from_secs(29)).is_empty());
    let gone = r.expire(t + Duration::from_secs(30));
    check(&r);
    assert!(matches!(gone.as_slice(), [(q, Removed::Holder(h))] if *q == p && h.mgmt == fast.mgmt));
    assert_eq!(mgmts(&r, &p), [slow.mgmt]);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(180)));
    // A heartbeat pushes its holder's deadline out.
    r.refresh(&p, slow.mgmt, t + Duration::from_secs(100));
    assert!(r.expire(t + Duration::from_secs(200)).is_empty());
    let gone = r.expire(t + Duration::from_secs(280));
    check(&r);
    assert!(
        matches!(gone.as_slice(), [(q, Removed::Record(rec))] if *q == p && rec.holders()[0].mgmt == slow.mgmt)
    );
    assert_eq!((r.len(), r.pool(Proto::Tcp).quarantined()), (0, 1));
}

#[test]
fn reload_of_the_timeout_moves_every_holders_deadline() {
    let t = Instant::now();
    let mut r = registry();
    let p = register(
        &mut r,
        client("198.51.100.1:5000", 1),
        "10.0.0.5:80",
        None,
        t,
    );
    register(
        &mut r,
        client("198.51.100.1:5001", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    r.set_timeout(Duration::from_secs(5));
    check(&r);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(5)));
    assert_eq!(r.expire(t + Duration::from_secs(30)).len(), 2);
    assert!(r.get(&p).is_none());
    check(&r);
}

#[test]
fn unregister_by_one_holder_keeps_the_registration_for_the_others() {
    let t = Instant::now();
    let mut r = registry();
    let (first, second) = (
        client("198.51.100.1:5000", 10),
        client("198.51.100.1:5001", 10),
    );
    let p = register(&mut r, first.clone(), "10.0.0.5:80", None, t);
    register(&mut r, second.clone(), "10.0.0.5:80", None, t);
    assert!(
        r.remove_holder(&p, a("198.51.100.1:5999"), t).is_none(),
        "not a holder"
    );
    assert!(
        matches!(r.remove_holder(&p, first.mgmt, t), Some(Removed::Holder(h)) if h.mgmt == first.mgmt)
    );
    check(&r);
    assert_eq!(mgmts(&r, &p), [second.mgmt]);
    assert_eq!(r.pool(Proto::Tcp).quarantined(), 0);
    assert!(r.remove_holder(&p, first.mgmt, t).is_none(), "left already");
    // Its heartbeat is not the lone holder's NAT remapping: it registers
    // again, and joins.
    assert_eq!(r.refresh(&p, first.mgmt, t), Refresh::Unknown);
    assert_eq!(mgmts(&r, &p), [second.mgmt]);
    assert_eq!(register(&mut r, first.clone(), "10.0.0.5:80", None, t), p);
    assert!(r.remove_holder(&p, first.mgmt, t).is_some());
    let Some(Removed::Record(rec)) = r.remove_holder(&p, second.mgmt, t) else {
        panic!("the last holder takes the registration")
    };
    check(&r);
    assert_eq!(rec.token, Token(usize::from(p.addr.port())));
    assert_eq!((r.len(), r.pool(Proto::Tcp).quarantined()), (0, 1));
}

#[test]
fn a_quarantined_port_goes_back_to_its_owner_only() {
    let t = Instant::now();
    let mut r = registry();
    let p = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    let port = p.addr.port();
    r.remove_holder(&p, a("198.51.100.1:5000"), t).unwrap();
    // A stranger asking for that port does not get it...
    let s = register(
        &mut r,
        client("198.51.100.2:5000", 10),
        "10.0.0.6:80",
        Some(port),
        t,
    );
    assert_ne!(s.addr.port(), port);
    // ...the owner, back from a restart with a new NAT mapping, does.
    let back = register(
        &mut r,
        client("198.51.100.1:7000", 10),
        "10.0.0.5:80",
        Some(port),
        t,
    );
    assert_eq!(back, p);
}
