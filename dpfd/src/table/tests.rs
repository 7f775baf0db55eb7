//! Mapping table tests: allocation, the reuse rules, the quota, several
//! public IPs, deletes, undo; the invariants are checked after every step.

use super::*;
use proto::dpf::{ErrorCode, MappingKey};

const PUB1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PUB2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const A1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const A2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn table(ips: &[Ipv4Addr], lo: u16, hi: u16, quota: u32) -> Table {
    Table::new(ips.to_vec(), PortRange { lo, hi }, quota)
}

fn req(
    proto: Proto,
    local: SocketAddrV4,
    mgmt: u16,
    desired: Option<SocketAddrV4>,
) -> ForwardRequest {
    ForwardRequest {
        proto,
        local,
        mgmt_port: mgmt,
        desired,
    }
}

#[test]
fn allocates_in_range_and_spreads_over_public_ips() {
    let mut t = table(&[PUB1, PUB2], 40000, 40001, 100);
    let mut got = Vec::new();
    for port in 1..=4 {
        let o = t
            .forward(req(Proto::Tcp, sa(A1, port), 9, None), 0)
            .unwrap();
        assert_eq!(o.kind, ForwardKind::Added);
        got.push(o.public);
        t.check();
    }
    assert_eq!(
        got,
        [
            sa(PUB1, 40000),
            sa(PUB2, 40000),
            sa(PUB1, 40001),
            sa(PUB2, 40001)
        ]
    );
    assert_eq!(t.free_ports(Proto::Tcp), 0);
    assert_eq!(t.free_ports(Proto::Udp), 4, "protocols are separate spaces");
    let full = t.forward(req(Proto::Tcp, sa(A1, 5), 9, None), 0);
    assert_eq!(full, Err(ErrorCode::Quota), "no free port");
    // UDP has its own ports: the same public port is fine.
    let o = t.forward(req(Proto::Udp, sa(A1, 1), 9, None), 0).unwrap();
    assert_eq!(o.public, sa(PUB1, 40000));
    t.check();
}

#[test]
fn freed_address_is_not_handed_out_at_once() {
    let mut t = table(&[PUB1], 40000, 40009, 100);
    let a = t
        .forward(req(Proto::Tcp, sa(A1, 1), 9, None), 0)
        .unwrap()
        .public;
    t.delete(Proto::Tcp, MappingKey::Public(a), A1).unwrap();
    let b = t
        .forward(req(Proto::Tcp, sa(A1, 2), 9, None), 0)
        .unwrap()
        .public;
    assert_ne!(a, b);
    t.check();
}

#[test]
fn same_rule_again_changes_nothing() {
    let mut t = table(&[PUB1], 40000, 40099, 100);
    let first = t
        .forward(req(Proto::Tcp, sa(A1, 7000), 5000, None), 7)
        .unwrap();
    let again = t
        .forward(req(Proto::Tcp, sa(A1, 7000), 5000, None), 8)
        .unwrap();
    assert_eq!(again.kind, ForwardKind::Reused);
    assert_eq!(again.public, first.public);
    assert!(again.changes.is_empty());
    // Naming the public address it already has is the same rule too.
    let desired = t
        .forward(req(Proto::Tcp, sa(A1, 7000), 5000, Some(first.public)), 9)
        .unwrap();
    assert_eq!(
        (desired.kind, desired.changes.len()),
        (ForwardKind::Reused, 0)
    );
    assert_eq!(
        t.get(&Key {
            proto: Proto::Tcp,
            public: first.public
        })
        .unwrap()
        .fwd
        .created,
        7
    );
    t.check();
}

#[test]
fn new_client_info_updates_table_only() {
    let mut t = table(&[PUB1], 40000, 40099, 100);
    let first = t
        .forward(req(Proto::Udp, sa(A1, 7000), 5000, None), 0)
        .unwrap();
    let gen = match first.changes[..] {
        [Change::Added(f)] => f.gen,
        ref c => panic!("{c:?}"),
    };
    let o = t
        .forward(req(Proto::Udp, sa(A1, 7000), 5001, None), 0)
        .unwrap();
    assert_eq!(o.kind, ForwardKind::Updated);
    match o.changes[..] {
        [Change::Updated { old, new }] => {
            assert_eq!((old.mgmt_port, new.mgmt_port), (5000, 5001));
            assert_eq!(
                (old.local, old.public, old.gen),
                (new.local, new.public, new.gen)
            );
            assert_eq!(new.gen, gen, "an update keeps the generation");
        }
        ref c => panic!("{c:?}"),
    }
    t.check();
}

#[test]
fn desired_address_rules() {
    let mut t = table(&[PUB1, PUB2], 40000, 40099, 100);
    // Outside the range or not one of our IPs.
    for bad in [sa(PUB1, 39999), sa(PUB1, 40100), sa(A1, 40000)] {
        let r = t.forward(req(Proto::Tcp, sa(A1, 1), 9, Some(bad)), 0);
        assert_eq!(r, Err(ErrorCode::PortOutOfRange), "{bad}");
    }
    assert_eq!(t.len(), 0);
    let want = sa(PUB2, 40050);
    let o = t
        .forward(req(Proto::Tcp, sa(A1, 1), 9, Some(want)), 0)
        .unwrap();
    assert_eq!((o.public, o.kind), (want, ForwardKind::Added));

    // Another host may not take it.
    let r = t.forward(req(Proto::Tcp, sa(A2, 1), 9, Some(want)), 0);
    assert_eq!(r, Err(ErrorCode::Exists));

    // The same host may: its old forward there is replaced.
    let o = t
        .forward(req(Proto::Tcp, sa(A1, 2), 9, Some(want)), 0)
        .unwrap();
    assert_eq!(o.kind, ForwardKind::Added);
    assert!(
        matches!(o.changes[..], [Change::Removed(old), Change::Added(new)]
        if old.local.port() == 1 && new.local.port() == 2)
    );
    assert!(t.by_local(Proto::Tcp, sa(A1, 1)).is_none());

    // A socket with a forward that asks for another address moves there.
    let o = t
        .forward(req(Proto::Tcp, sa(A1, 2), 9, Some(sa(PUB1, 40001))), 0)
        .unwrap();
    assert_eq!(o.kind, ForwardKind::Moved);
    assert_eq!(t.len(), 1);
    assert!(t
        .get(&Key {
            proto: Proto::Tcp,
            public: want
        })
        .is_none());
    t.check();
}

#[test]
fn quota_is_per_host_and_counts_both_protocols() {
    let mut t = table(&[PUB1], 40000, 40099, 2);
    t.forward(req(Proto::Tcp, sa(A1, 1), 9, None), 0).unwrap();
    t.forward(req(Proto::Udp, sa(A1, 1), 9, None), 0).unwrap();
    assert_eq!(
        t.forward(req(Proto::Tcp, sa(A1, 2), 9, None), 0),
        Err(ErrorCode::Quota)
    );
    // Reuse and moves do not need a new share.
    assert_eq!(
        t.forward(req(Proto::Tcp, sa(A1, 1), 9, None), 0)
            .unwrap()
            .kind,
        ForwardKind::Reused
    );
    assert_eq!(
        t.forward(req(Proto::Tcp, sa(A1, 1), 9, Some(sa(PUB1, 40090))), 0)
            .unwrap()
            .kind,
        ForwardKind::Moved
    );
    // Another host has its own share.
    t.forward(req(Proto::Tcp, sa(A2, 1), 9, None), 0).unwrap();
    assert_eq!((t.host_count(A1), t.host_count(A2)), (2, 1));
    t.set_quota(3);
    t.forward(req(Proto::Tcp, sa(A1, 2), 9, None), 0).unwrap();
    t.check();
}

#[test]
fn delete_only_own_forwards() {
    let mut t = table(&[PUB1], 40000, 40099, 100);
    let p = t
        .forward(req(Proto::Tcp, sa(A1, 1), 9, None), 0)
        .unwrap()
        .public;
    assert_eq!(
        t.delete(Proto::Tcp, MappingKey::Public(p), A2),
        Err(ErrorCode::NotLocal)
    );
    assert_eq!(
        t.delete(Proto::Tcp, MappingKey::Local(sa(A1, 1)), A2),
        Err(ErrorCode::NotLocal)
    );
    assert_eq!(
        t.delete(Proto::Udp, MappingKey::Public(p), A1),
        Err(ErrorCode::NotFound)
    );
    assert_eq!(
        t.delete(Proto::Tcp, MappingKey::Local(sa(A1, 2)), A1),
        Err(ErrorCode::NotFound)
    );
    assert_eq!(t.len(), 1);
    assert!(matches!(
        t.delete(Proto::Tcp, MappingKey::Local(sa(A1, 1)), A1),
        Ok(Change::Removed(_))
    ));
    assert_eq!(t.len(), 0);
    t.check();
}

#[test]
fn probe_removal_checks_the_generation() {
    let mut t = table(&[PUB1], 40000, 40099, 100);
    let o = t.forward(req(Proto::Tcp, sa(A1, 1), 9, None), 0).unwrap();
    let Change::Added(f) = o.changes[0] else {
        panic!()
    };
    assert!(t.remove_if(f.key(), f.gen + 1).is_none());
    assert!(t.remove_if(f.key(), f.gen).is_some());
    assert!(t.remove_if(f.key(), f.gen).is_none());
    t.check();
}

#[test]
fn undo_restores_exactly() {
    let mut t = table(&[PUB1], 40000, 40099, 100);
    t.forward(req(Proto::Tcp, sa(A1, 1), 9, Some(sa(PUB1, 40005))), 0)
        .unwrap();
    let before: Vec<Entry> = t.entries().copied().collect();
    let o = t
        .forward(req(Proto::Tcp, sa(A1, 2), 9, Some(sa(PUB1, 40005))), 0)
        .unwrap();
    let u = t.forward(req(Proto::Tcp, sa(A1, 2), 8, None), 0).unwrap();
    for c in u.changes.iter().rev().chain(o.changes.iter().rev()) {
        t.undo(*c);
        t.check();
    }
    let after: Vec<Entry> = t.entries().copied().collect();
    assert_eq!(before, after);
}

#[test]
fn load_keeps_generations_unique() {
    let mut t = table(&[PUB1], 40000, 40099, 100);
    t.load(Forward {
        proto: Proto::Tcp,
        public: sa(PUB1, 40000),
        local: sa(A1, 1),
        mgmt_port: 9,
        gen: 41,
        created: 5,
        lease: None,
    });
    let o = t.forward(req(Proto::Tcp, sa(A1, 2), 9, None), 0).unwrap();
    let Change::Added(f) = o.changes[0] else {
        panic!()
    };
    assert_eq!(f.gen, 42);
    assert_eq!(f.public, sa(PUB1, 40001));
    t.check();
}
