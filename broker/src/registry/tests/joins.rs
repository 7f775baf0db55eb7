//! Unit tests of holders joining a registration, of where commands go, and
//! of holders whose management socket is gone: the invariants of the module docs are checked after each step.

use super::*;

#[test]
fn processes_sharing_a_socket_join_one_registration() {
    let t = Instant::now();
    let mut r = registry();
    let parent = client("198.51.100.1:5000", 10);
    let p = register(&mut r, parent.clone(), "10.0.0.5:80", None, t);
    // A forked child (its own management socket, asking for the port it
    // inherited) and a process handed the socket (asking for nothing).
    let child = Client {
        pid: 8,
        ..client("198.51.100.1:5001", 10)
    };
    let t1 = t + Duration::from_secs(1);
    assert_eq!(
        r.find_for_register(Proto::Tcp, child.mgmt, a("10.0.0.5:80")),
        Claim::Join(p)
    );
    assert_eq!(
        register(
            &mut r,
            child.clone(),
            "10.0.0.5:80",
            Some(p.addr.port()),
            t1
        ),
        p
    );
    let handed = Client {
        pid: 9,
        ..client("198.51.100.1:5002", 10)
    };
    assert_eq!(register(&mut r, handed.clone(), "10.0.0.5:80", None, t1), p);
    assert_eq!(r.len(), 1);
    assert_eq!(mgmts(&r, &p), [parent.mgmt, child.mgmt, handed.mgmt]);
    // A holder registering again is renewed, not added.
    assert_eq!(
        r.find_for_register(Proto::Tcp, child.mgmt, a("10.0.0.5:80")),
        Claim::Again(p)
    );
    assert_eq!(register(&mut r, child, "10.0.0.5:80", None, t1), p);
    assert_eq!(mgmts(&r, &p).len(), 3);
}

#[test]
fn a_join_replaces_its_own_old_mapping_and_silent_holders() {
    let t = Instant::now();
    let mut r = registry();
    let p = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    let child = client("198.51.100.1:5001", 10);
    register(&mut r, child.clone(), "10.0.0.5:80", None, t);
    // The child's NAT forgot its mapping: same management socket (same
    // local address), another public port. It replaces its old self.
    let t1 = t + Duration::from_secs(5);
    let moved = Client {
        mgmt: a("198.51.100.1:6001"),
        ..child
    };
    r.refresh(&p, a("198.51.100.1:5000"), t1);
    let gone = r.join(&p, moved.clone(), t1).unwrap();
    check(&r);
    assert_eq!(
        gone.iter().map(|h| h.mgmt).collect::<Vec<_>>(),
        [a("198.51.100.1:5001")]
    );
    assert_eq!(mgmts(&r, &p), [a("198.51.100.1:5000"), moved.mgmt]);
    // The parent silent for two of its intervals: the next process to
    // join takes its place (a silent owner's record goes to its claimant).
    let t2 = t1 + Duration::from_secs(20);
    r.refresh(&p, moved.mgmt, t2);
    let exec = client("198.51.100.1:5002", 10);
    let gone = r.join(&p, exec.clone(), t2).unwrap();
    check(&r);
    assert_eq!(
        gone.iter().map(|h| h.mgmt).collect::<Vec<_>>(),
        [a("198.51.100.1:5000")]
    );
    assert_eq!(mgmts(&r, &p), [moved.mgmt, exec.mgmt]);
}

#[test]
fn a_registration_has_at_most_max_holders() {
    let t = Instant::now();
    let mut r = registry();
    let p = register(
        &mut r,
        client("198.51.100.1:1000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    for i in 1..MAX_HOLDERS {
        register(
            &mut r,
            client(&format!("198.51.100.1:{}", 1000 + i), 10),
            "10.0.0.5:80",
            None,
            t,
        );
    }
    assert_eq!(mgmts(&r, &p).len(), MAX_HOLDERS);
    let late = client("198.51.100.1:3000", 10);
    assert_eq!(r.join(&p, late.clone(), t), Err(Full));
    check(&r);
    assert_eq!(
        mgmts(&r, &p).len(),
        MAX_HOLDERS,
        "a refusal changes nothing"
    );
    // Room again once one leaves.
    r.remove_holder(&p, a("198.51.100.1:1000"), t).unwrap();
    assert!(r.join(&p, late, t).unwrap().is_empty());
    check(&r);
}

#[test]
fn the_freshest_is_shown_first_and_commands_go_to_the_longest_standing_live_holder() {
    let t = Instant::now();
    let mut r = registry();
    let (a1, b1, c1) = (
        a("198.51.100.1:5000"),
        a("198.51.100.1:5001"),
        a("198.51.100.1:5002"),
    );
    let p = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    let fresh = |r: &Registry| r.get(&p).unwrap().freshest().mgmt;
    assert_eq!(fresh(&r), a1);
    assert_eq!(r.get(&p).unwrap().commanded_other(a1, t), None, "nobody else");
    // At the same instant, the latest to join wins.
    register(
        &mut r,
        client("198.51.100.1:5001", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    assert_eq!(fresh(&r), b1);
    register(
        &mut r,
        client("198.51.100.1:5002", 10),
        "10.0.0.5:80",
        None,
        t + Duration::from_secs(1),
    );
    assert_eq!(fresh(&r), c1);
    r.refresh(&p, a1, t + Duration::from_secs(2));
    assert_eq!(fresh(&r), a1);
    // Commands go to the first to join while it is live, then down the line.
    let now = t + Duration::from_secs(3);
    r.refresh(&p, b1, now);
    let commanded = |r: &Registry, at| r.get(&p).unwrap().commanded(at).mgmt;
    assert_eq!(commanded(&r, now), a1);
    assert_eq!(r.get(&p).unwrap().commanded_other(a1, now).map(|h| h.mgmt), Some(b1));
    // a1 silent for two of its intervals: b1 is next, c1 (silent too) is not.
    let later = t + Duration::from_secs(22);
    r.refresh(&p, b1, later);
    assert_eq!(commanded(&r, later), b1);
    // No other live holder: the freshest of the others, a1 (heard at 2 s).
    assert_eq!(r.get(&p).unwrap().commanded_other(b1, later).map(|h| h.mgmt), Some(a1));
}

#[test]
fn a_failed_command_changes_nothing_but_a_holder_that_disowns() {
    let t = Instant::now();
    let mut r = registry();
    let (a1, b1) = (a("198.51.100.1:5000"), a("198.51.100.1:5001"));
    let p = register(
        &mut r,
        client("198.51.100.1:5000", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    // A silent or refusing lone holder: the registration stays as it was.
    for _ in 0..3 {
        let (removed, next) = r.command_failed(&p, a1, false, t);
        assert!(removed.is_none() && next.is_none());
        check(&r);
    }
    assert_eq!(mgmts(&r, &p), [a1]);
    // With two holders, the other one is next.
    register(
        &mut r,
        client("198.51.100.1:5001", 10),
        "10.0.0.5:80",
        None,
        t,
    );
    assert_eq!(r.command_failed(&p, b1, false, t).1, Some(a1));
    assert_eq!(mgmts(&r, &p), [a1, b1]);
    // A holder saying it does not hold the socket leaves; the other stays.
    let (removed, next) = r.command_failed(&p, b1, true, t);
    assert!(matches!(removed, Some(Removed::Holder(h)) if h.mgmt == b1));
    assert_eq!((next, mgmts(&r, &p)), (Some(a1), vec![a1]));
    check(&r);
    // The last one disowning it takes the registration with it.
    let (removed, next) = r.command_failed(&p, a1, true, t);
    assert!(matches!(removed, Some(Removed::Record(_))) && next.is_none());
    assert_eq!(r.len(), 0);
    check(&r);
}

/// A process holding two sockets, one of them shared with another process,
/// dies: its management socket is gone, and it leaves both registrations;
/// the one it held alone goes with it, the shared one stays with the other.
#[test]
fn a_gone_management_socket_leaves_every_registration_it_held() {
    let t = Instant::now();
    let mut r = registry();
    let (dead, other) = (a("198.51.100.1:5000"), a("198.51.100.1:5001"));
    let mut hold =
        |mgmt: SocketAddrV4, local| register(&mut r, client(&mgmt.to_string(), 10), local, None, t);
    let shared = hold(dead, "10.0.0.5:80");
    let alone = hold(dead, "10.0.0.5:81");
    hold(other, "10.0.0.5:80");
    let gone = r.remove_mgmt(dead, t);
    check(&r);
    let mut what: Vec<(Endpoint, bool)> = gone
        .iter()
        .map(|(ep, removed)| (*ep, matches!(removed, Removed::Record(_))))
        .collect();
    what.sort();
    let mut want = vec![(shared, false), (alone, true)];
    want.sort();
    assert_eq!(what, want);
    assert_eq!(mgmts(&r, &shared), [other]);
    assert!(r.get(&alone).is_none());
    // Nothing is left at that address; a second report changes nothing.
    assert!(r.remove_mgmt(dead, t).is_empty());
    assert!(r.remove_mgmt(a("198.51.100.9:1"), t).is_empty());
    // A lone holder that moved across its NAT is found at its new address.
    let moved = a("198.51.100.1:6000");
    assert_eq!(r.refresh(&shared, moved, t), Refresh::Moved(other));
    check(&r);
    assert!(r.remove_mgmt(other, t).is_empty());
    assert_eq!(r.remove_mgmt(moved, t).len(), 1);
    assert_eq!(r.len(), 0);
    check(&r);
}
