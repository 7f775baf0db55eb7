//! Unit tests of the registration table: every operation, with the
//! invariants of the module docs checked after each step.

use super::*;
use daemon_kit::random::SplitMix64;

const RANGE: PortRange = PortRange {
    lo: 20000,
    hi: 20009,
};

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn public_ip() -> Ipv4Addr {
    "203.0.113.1".parse().unwrap()
}

fn client(mgmt: &str, heartbeat_secs: u16) -> Client {
    let mgmt = a(mgmt);
    Client {
        mgmt,
        mgmt_local: a("10.0.0.5:4000"),
        public: false,
        realm: Realm::Ip(*mgmt.ip()),
        pid: 7,
        program: "condor_schedd".into(),
        heartbeat_secs,
    }
}

/// Every invariant of the module docs.
fn check(r: &Registry) {
    let mut idx_mgmt = 0;
    for (m, set) in &r.by_mgmt {
        assert!(!set.is_empty(), "empty set for {m}");
        for p in set {
            assert_eq!(r.records[p].client.mgmt, *m);
            idx_mgmt += 1;
        }
    }
    assert_eq!(idx_mgmt, r.records.len());
    assert_eq!(r.by_identity.len(), r.records.len());
    for ((proto, mgmt, local), p) in &r.by_identity {
        let rec = &r.records[p];
        assert_eq!(
            (rec.proxy.proto, rec.client.mgmt, rec.local),
            (*proto, *mgmt, *local)
        );
    }
    assert_eq!(r.expiry.len(), r.records.len());
    for (key, rec) in &r.records {
        assert_eq!(*key, rec.proxy);
        assert!(r.expiry.contains(&(rec.deadline, rec.proxy)));
        assert_eq!(
            rec.deadline,
            rec.last_heartbeat + r.timeout_for(&rec.client)
        );
    }
    assert_eq!(
        r.tcp.in_use(),
        r.iter().filter(|x| x.proxy.proto == Proto::Tcp).count()
    );
}

/// Registers like the command handler does: allocate, then insert.
fn register(
    r: &mut Registry,
    c: Client,
    local: &str,
    desired: Option<u16>,
    now: Instant,
) -> Endpoint {
    let local = a(local);
    if let Claim::Again(ep) = r.find_for_register(Proto::Tcp, c.mgmt, local, desired, c.pid, now) {
        r.renew(&ep, c, now).unwrap();
        check(r);
        return ep;
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

fn registry() -> Registry {
    Registry::new(public_ip(), RANGE, Duration::from_secs(30))
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
    // Same socket, same management address: same proxy, no second record.
    let again = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    assert_eq!(again, p);
    assert_eq!(r.len(), 1);
    // Another socket of the same client, and the same socket elsewhere.
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
fn heartbeat_refreshes_and_follows_a_nat_remapping() {
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
    assert_eq!(r.get(&p).unwrap().last_heartbeat, t1);
    check(&r);
    // Same public IP, new port: the NAT lost the mapping; follow it.
    assert_eq!(
        r.refresh(&p, a("198.51.100.1:6000"), t1),
        Refresh::Moved(a("198.51.100.1:5000"))
    );
    assert_eq!(r.get(&p).unwrap().client.mgmt, a("198.51.100.1:6000"));
    check(&r);
    // Another IP is someone else; unknown endpoints are unknown.
    assert_eq!(r.refresh(&p, a("198.51.100.9:6000"), t1), Refresh::Unknown);
    let nowhere = Endpoint::new(Proto::Tcp, a("203.0.113.1:1"));
    assert_eq!(
        r.refresh(&nowhere, a("198.51.100.1:6000"), t1),
        Refresh::Unknown
    );
    check(&r);
}

#[test]
fn expiry_uses_the_longer_of_broker_and_client_timeouts() {
    let t = Instant::now();
    let mut r = registry();
    let fast = register(
        &mut r,
        client("198.51.100.1:5000", 1),
        "10.0.0.5:80",
        None,
        t,
    );
    let slow = register(
        &mut r,
        client("198.51.100.1:5001", 60),
        "10.0.0.5:81",
        None,
        t,
    );
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(30)));
    assert!(r.expire(t + Duration::from_secs(29)).is_empty());
    let gone = r.expire(t + Duration::from_secs(30));
    assert_eq!(gone.iter().map(|x| x.proxy).collect::<Vec<_>>(), [fast]);
    check(&r);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(180)));
    // A heartbeat pushes the deadline out.
    r.refresh(&slow, a("198.51.100.1:5001"), t + Duration::from_secs(100));
    assert!(r.expire(t + Duration::from_secs(200)).is_empty());
    assert_eq!(r.expire(t + Duration::from_secs(280)).len(), 1);
    assert_eq!(r.len(), 0);
    check(&r);
}

#[test]
fn reload_of_the_timeout_moves_deadlines() {
    let t = Instant::now();
    let mut r = registry();
    register(
        &mut r,
        client("198.51.100.1:5000", 1),
        "10.0.0.5:80",
        None,
        t,
    );
    r.set_timeout(Duration::from_secs(5));
    check(&r);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(5)));
}

#[test]
fn unregister_quarantines_the_port_for_its_owner() {
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
    let gone = r.remove(&p, t).unwrap();
    assert_eq!(gone.token, Token(usize::from(port)));
    assert!(r.remove(&p, t).is_none());
    check(&r);
    assert_eq!(r.pool(Proto::Tcp).quarantined(), 1);
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

#[test]
fn reregister_after_nat_loss_takes_over_its_own_record() {
    let t = Instant::now();
    let mut r = registry();
    let p = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    // New mapping, asking for the port it holds: the same registration.
    let same = register(
        &mut r,
        client("198.51.100.1:5999", 10),
        "10.0.0.5:80",
        Some(p.addr.port()),
        t,
    );
    assert_eq!(same, p);
    assert_eq!(r.len(), 1);
    assert_eq!(r.get(&p).unwrap().client.mgmt, a("198.51.100.1:5999"));
    // Another IP asking for it is a stranger and gets a port of its own.
    let other = register(
        &mut r,
        client("198.51.100.7:5000", 10),
        "10.0.0.5:80",
        Some(p.addr.port()),
        t,
    );
    assert_ne!(other, p);
    assert_eq!(r.len(), 2);
}

#[test]
fn another_live_process_on_the_same_address_never_takes_a_record_over() {
    let t = Instant::now();
    let mut r = registry();
    let first = client("198.51.100.1:5000", 10);
    let p = register(&mut r, first.clone(), "10.0.0.5:80", None, t);
    // A second program bound to the same address (SO_REUSEPORT), from the
    // same host, asking for the first one's port: a record of its own.
    let second = Client {
        mgmt: a("198.51.100.1:6000"),
        pid: 8,
        ..first.clone()
    };
    let want = r.find_for_register(
        Proto::Tcp,
        second.mgmt,
        a("10.0.0.5:80"),
        Some(p.addr.port()),
        8,
        t,
    );
    assert_eq!(want, Claim::HeldByOther { proxy: p, pid: 7 });
    let q = register(&mut r, second, "10.0.0.5:80", Some(p.addr.port()), t);
    assert_ne!(q, p);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (
            r.get(&p).unwrap().client.mgmt,
            r.get(&q).unwrap().client.pid
        ),
        (first.mgmt, 8)
    );
    // Each renews its own, however often.
    for _ in 0..3 {
        assert_eq!(
            register(&mut r, first.clone(), "10.0.0.5:80", Some(p.addr.port()), t),
            p
        );
        assert_eq!(
            register(
                &mut r,
                Client {
                    mgmt: a("198.51.100.1:6000"),
                    pid: 8,
                    ..first.clone()
                },
                "10.0.0.5:80",
                Some(q.addr.port()),
                t
            ),
            q
        );
    }
    // An owner silent for two heartbeat intervals is not live: its record
    // goes to the claimant (a client whose pid changed, as after an exec
    // of another image, behind a new NAT mapping).
    let later = t + Duration::from_secs(21);
    let third = Client {
        mgmt: a("198.51.100.1:7000"),
        pid: 9,
        ..first
    };
    assert_eq!(
        r.find_for_register(
            Proto::Tcp,
            third.mgmt,
            a("10.0.0.5:80"),
            Some(p.addr.port()),
            9,
            later
        ),
        Claim::Again(p)
    );
    assert_eq!(
        register(&mut r, third, "10.0.0.5:80", Some(p.addr.port()), later),
        p
    );
    assert_eq!(r.len(), 2);
}
