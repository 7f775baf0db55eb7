//! Unit tests of the UDP relay table: creation, the cap, idle expiry (and
//! refresh by traffic either way), lookups in both directions, the data
//! path, and that removal leaves no index entries behind.

use super::*;

const IDLE: Duration = Duration::from_secs(10);

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn proxy() -> SocketAddrV4 {
    a("203.0.113.1:20000")
}

fn table(cap: usize) -> UdpTable {
    let mut t = UdpTable::new(IDLE, cap);
    assert_eq!(t.add(proxy(), Token(7)), Token(7));
    t
}

/// Every rule has exactly one index entry, under its own deadline.
fn check(t: &UdpTable) {
    let mut n = 0;
    for (proxy, reg) in t.iter() {
        for (peer, rule) in reg.rules() {
            assert!(t.expiry.contains(&(rule.deadline, *proxy, *peer)));
            n += 1;
        }
    }
    assert_eq!(n, t.expiry.len());
}

#[test]
fn rules_are_created_by_inbound_traffic_and_looked_up_both_ways() {
    let now = Instant::now();
    let mut t = table(4);
    let (p, q) = (a("198.51.100.2:5000"), a("198.51.100.3:5000"));
    assert!(!t.outbound(&proxy(), &p, 1, now), "no rule: no open relay");
    assert_eq!(t.inbound(&proxy(), p, 100, now), Inbound::Created);
    assert_eq!(t.inbound(&proxy(), p, 50, now), Inbound::Existing);
    assert!(t.outbound(&proxy(), &p, 7, now));
    assert!(
        !t.outbound(&proxy(), &q, 7, now),
        "only the peer with a rule"
    );
    let rule = &t.get(&proxy()).unwrap().rules[&p];
    assert_eq!(rule.datagrams, [2, 1]);
    assert_eq!(rule.bytes, [150, 7]);
    // Another registration's rules do not count here.
    let other = a("203.0.113.1:20001");
    t.add(other, Token(8));
    assert!(!t.outbound(&other, &p, 1, now));
    assert_eq!(t.inbound(&a("203.0.113.1:1"), p, 1, now), Inbound::Unknown);
    assert_eq!(t.rules_len(), 1);
    check(&t);
}

#[test]
fn the_cap_is_per_registration() {
    let now = Instant::now();
    let mut t = table(2);
    let other = a("203.0.113.1:20001");
    t.add(other, Token(8));
    for port in 1..=2 {
        let peer = SocketAddrV4::new([198, 51, 100, 2].into(), port);
        assert_eq!(t.inbound(&proxy(), peer, 1, now), Inbound::Created);
    }
    assert_eq!(
        t.inbound(&proxy(), a("198.51.100.2:3"), 1, now),
        Inbound::Full
    );
    assert_eq!(
        t.inbound(&proxy(), a("198.51.100.2:1"), 1, now),
        Inbound::Existing
    );
    assert_eq!(
        t.inbound(&other, a("198.51.100.2:3"), 1, now),
        Inbound::Created
    );
    // Lowering the cap keeps existing rules; raising it makes room.
    t.set_limits(IDLE, 1);
    assert_eq!(
        t.inbound(&proxy(), a("198.51.100.2:2"), 1, now),
        Inbound::Existing
    );
    t.set_limits(IDLE, 3);
    assert_eq!(
        t.inbound(&proxy(), a("198.51.100.2:3"), 1, now),
        Inbound::Created
    );
    check(&t);
}

#[test]
fn idle_rules_expire_traffic_postpones_and_they_come_back_on_demand() {
    let t0 = Instant::now();
    let mut t = table(4);
    let (p, q) = (a("198.51.100.2:5000"), a("198.51.100.3:5000"));
    t.inbound(&proxy(), p, 1, t0);
    t.inbound(&proxy(), q, 1, t0);
    assert_eq!(t.next_deadline(), Some(t0 + IDLE));
    // q's client keeps talking to it: outbound traffic refreshes.
    assert!(t.outbound(&proxy(), &q, 1, t0 + IDLE / 2));
    assert!(t.expire(t0 + IDLE - Duration::from_millis(1)).is_empty());
    let gone = t.expire(t0 + IDLE);
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].0, gone[0].1), (proxy(), p));
    assert!(!t.outbound(&proxy(), &p, 1, t0 + IDLE));
    check(&t);
    // q was re-indexed at its real deadline.
    assert_eq!(t.next_deadline(), Some(t0 + IDLE / 2 + IDLE));
    // A rule idle past its time is refused even before the sweep.
    assert!(!t.outbound(&proxy(), &q, 1, t0 + IDLE * 2));
    assert_eq!(t.expire(t0 + IDLE * 2).len(), 1);
    assert_eq!(t.rules_len(), 0);
    // Re-created on demand, with fresh counts.
    assert_eq!(t.inbound(&proxy(), p, 3, t0 + IDLE * 3), Inbound::Created);
    assert_eq!(t.get(&proxy()).unwrap().rules[&p].datagrams, [1, 0]);
    check(&t);
}

#[test]
fn a_new_idle_time_reindexes_every_rule() {
    let t0 = Instant::now();
    let mut t = table(4);
    t.inbound(&proxy(), a("198.51.100.2:5000"), 1, t0);
    t.set_limits(Duration::from_secs(1), 4);
    check(&t);
    assert_eq!(t.expire(t0 + Duration::from_secs(1)).len(), 1);
}

#[test]
fn the_data_path_is_learned_from_a_valid_dummy_and_follows_the_client() {
    let mut t = table(4);
    let (first, moved) = (a("198.51.100.9:40000"), a("198.51.100.9:40001"));
    assert_eq!(t.data_path(&proxy()), None);
    assert_eq!(t.dummy(&proxy(), first, Token(6)), DummyOutcome::Refused);
    assert_eq!(t.data_path(&proxy()), None, "a wrong token changes nothing");
    assert_eq!(t.dummy(&proxy(), first, Token(7)), DummyOutcome::Learned);
    assert_eq!(t.dummy(&proxy(), first, Token(7)), DummyOutcome::Same);
    assert_eq!(
        t.dummy(&proxy(), moved, Token(7)),
        DummyOutcome::Moved(first)
    );
    assert_eq!(t.data_path(&proxy()), Some(moved));
    assert_eq!(
        t.dummy(&a("203.0.113.1:9"), moved, Token(7)),
        DummyOutcome::Refused
    );
    // Registering again keeps the token and the path.
    assert_eq!(t.add(proxy(), Token(99)), Token(7));
    assert_eq!(t.data_path(&proxy()), Some(moved));
}

#[test]
fn removal_drops_the_rules_and_their_index_entries() {
    let now = Instant::now();
    let mut t = table(4);
    t.inbound(&proxy(), a("198.51.100.2:5000"), 1, now);
    t.inbound(&proxy(), a("198.51.100.2:5001"), 1, now);
    let reg = t.remove(&proxy()).unwrap();
    assert_eq!(reg.rules().count(), 2);
    assert_eq!((t.rules_len(), t.next_deadline()), (0, None));
    assert!(t.remove(&proxy()).is_none());
    check(&t);
}
