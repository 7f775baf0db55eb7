//! The standard protocols' rules: suggestions, renewal, ownership by
//! protocol and nonce, the quota, deletes, expiry; the invariants are
//! checked after every step.

use super::standard::{StdRefusal, StdRequest};
use super::*;
use crate::values::PortRange;

const PUB1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PUB2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const A1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const A2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const N1: [u8; 12] = [1; 12];
const N2: [u8; 12] = [2; 12];

fn table(quota: u32) -> Table {
    Table::new(
        vec![PUB1, PUB2],
        PortRange {
            lo: 40000,
            hi: 40001,
        },
        quota,
    )
}

fn req(local: SocketAddrV4, via: Via, nonce: [u8; 12], port: u16) -> StdRequest {
    StdRequest {
        proto: Proto::Tcp,
        local,
        via,
        nonce,
        suggested_ip: None,
        suggested_port: port,
        prefer_failure: false,
        only_ip: None,
        lifetime: 100,
    }
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

#[test]
fn suggestion_taken_when_free_else_any_unless_prefer_failure() {
    let mut t = table(10);
    let g = t
        .std_map(req(sa(A1, 1), Via::Pcp, N1, 40001), 1000)
        .unwrap();
    assert_eq!((g.public, g.renewed), (sa(PUB1, 40001), false));
    let Some(Change::Added(f)) = g.change else {
        panic!()
    };
    assert_eq!(f.mgmt_port, 0);
    assert_eq!(
        f.lease,
        Some(Lease {
            via: Via::Pcp,
            nonce: N1,
            expires: 1100
        })
    );
    // Taken on PUB1: the same port on the next public IP.
    let g = t
        .std_map(req(sa(A2, 1), Via::NatPmp, [0; 12], 40001), 1000)
        .unwrap();
    assert_eq!(g.public, sa(PUB2, 40001));
    // Taken everywhere, or outside the range: any free address...
    let g = t
        .std_map(req(sa(A2, 2), Via::NatPmp, [0; 12], 40001), 1000)
        .unwrap();
    assert_eq!(g.public, sa(PUB1, 40000));
    // ...unless PREFER_FAILURE.
    let mut r = req(sa(A2, 3), Via::Pcp, N2, 80);
    r.prefer_failure = true;
    assert_eq!(t.std_map(r, 1000), Err(StdRefusal::CannotProvide));
    t.check();
}

#[test]
fn renewal_keeps_the_address_and_ownership_is_checked() {
    let mut t = table(10);
    let first = t
        .std_map(req(sa(A1, 1), Via::Pcp, N1, 0), 1000)
        .unwrap()
        .public;
    let g = t
        .std_map(req(sa(A1, 1), Via::Pcp, N1, 40001), 1050)
        .unwrap();
    assert!(g.renewed);
    assert_eq!(g.public, first, "a renewal ignores the suggestion");
    assert!(matches!(g.change, Some(Change::Updated { .. })));
    assert_eq!(t.next_expiry(), Some(1150));
    assert_eq!(
        t.std_map(req(sa(A1, 1), Via::Pcp, N2, 0), 1060),
        Err(StdRefusal::NotAuthorized)
    );
    assert_eq!(
        t.std_map(req(sa(A1, 1), Via::NatPmp, [0; 12], 0), 1060),
        Err(StdRefusal::NotAuthorized)
    );
    assert_eq!(
        t.std_delete(Proto::Tcp, sa(A1, 1), Via::Pcp, N2),
        Err(StdRefusal::NotAuthorized)
    );
    // The same second again changes nothing.
    let g = t.std_map(req(sa(A1, 1), Via::Pcp, N1, 0), 1050).unwrap();
    assert_eq!(g.change, None);
    t.check();
}

#[test]
fn dpf_forwards_are_not_touched_but_may_take_over() {
    let mut t = table(10);
    let dpf = ForwardRequest {
        proto: Proto::Tcp,
        local: sa(A1, 1),
        mgmt_port: 9,
        desired: None,
    };
    t.forward(dpf, 0).unwrap();
    assert_eq!(
        t.std_map(req(sa(A1, 1), Via::Pcp, N1, 0), 1000),
        Err(StdRefusal::NotAuthorized)
    );
    assert_eq!(
        t.std_delete(Proto::Tcp, sa(A1, 1), Via::NatPmp, [0; 12]),
        Err(StdRefusal::NotAuthorized)
    );
    // A DPF request of the host turns its leased mapping into a forward.
    let g = t.std_map(req(sa(A1, 2), Via::Pcp, N1, 0), 1000).unwrap();
    let o = t
        .forward(
            ForwardRequest {
                local: sa(A1, 2),
                ..dpf
            },
            0,
        )
        .unwrap();
    assert_eq!(o.public, g.public);
    assert_eq!(t.by_local(Proto::Tcp, sa(A1, 2)).unwrap().fwd.lease, None);
    assert_eq!(t.next_expiry(), None);
    t.check();
}

#[test]
fn quota_resources_deletes_and_expiry() {
    let mut t = table(1);
    t.std_map(req(sa(A1, 1), Via::NatPmp, [0; 12], 0), 1000)
        .unwrap();
    assert_eq!(
        t.std_map(req(sa(A1, 2), Via::NatPmp, [0; 12], 0), 1000),
        Err(StdRefusal::Quota)
    );
    t.set_quota(10);
    for port in 2..=4 {
        t.std_map(
            req(sa(A2, port), Via::NatPmp, [0; 12], 0),
            1000 + u64::from(port),
        )
        .unwrap();
    }
    assert_eq!(
        t.std_map(req(sa(A2, 9), Via::Pcp, N1, 0), 1000),
        Err(StdRefusal::NoResources)
    );
    t.std_delete(Proto::Tcp, sa(A2, 3), Via::NatPmp, [0; 12])
        .unwrap();
    let mut pinned = req(sa(A2, 9), Via::NatPmp, [0; 12], 0);
    pinned.only_ip = Some(PUB1);
    let free = t.std_map(pinned, 1000).unwrap().public;
    assert_eq!(*free.ip(), PUB1, "NAT-PMP maps on the address it reports");
    t.std_delete(Proto::Tcp, sa(A2, 9), Via::NatPmp, [0; 12])
        .unwrap();
    t.std_map(req(sa(A2, 3), Via::NatPmp, [0; 12], 0), 1003)
        .unwrap();
    assert_eq!(
        t.std_delete(Proto::Udp, sa(A2, 2), Via::NatPmp, [0; 12]),
        Ok(None)
    );
    assert!(t
        .std_delete(Proto::Tcp, sa(A2, 2), Via::NatPmp, [0; 12])
        .unwrap()
        .is_some());
    assert_eq!(t.expired(1102).len(), 1, "A1's mapping of 1000 + 100");
    assert_eq!(t.expired(1104).len(), 3);
    let gone = t.std_delete_all(Proto::Tcp, A2, Via::NatPmp, [0; 12]);
    assert_eq!(gone.len(), 2);
    assert_eq!(t.len(), 1);
    t.check();
}
