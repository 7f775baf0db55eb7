//! NAT-PMP and PCP in the engine, against the fake mirror and kernel:
//! answers only after the commit, the same rules as DPF, refusals that
//! change nothing, failed commits, expiry and the epoch.

use std::net::{Ipv4Addr, SocketAddrV4};

use proto::{natpmp, pcp, Proto};

use super::handler::Policy;
use super::Counters;
use crate::engine::fake::{engine, log, Shared, A1, E, PUB};
use crate::table::{Key, Via};

const POLICY: Policy = Policy {
    min_lifetime: 120,
    max_lifetime: 3600,
    allowed: true,
};
const NONCE: [u8; 12] = [7; 12];
const NOW: u64 = 1_000;

fn a1() -> SocketAddrV4 {
    SocketAddrV4::new(A1, 30000)
}

fn map(client: Ipv4Addr, port: u16, lifetime: u32, options: Vec<pcp::Opt>) -> Vec<u8> {
    pcp::encode_request(&pcp::Request {
        opcode: pcp::OP_MAP,
        lifetime,
        client: pcp::mapped(client),
        map: Some(pcp::MapData {
            nonce: NONCE,
            protocol: 6,
            internal_port: port,
            external_port: 0,
            external_ip: pcp::mapped(Ipv4Addr::UNSPECIFIED),
        }),
        options,
    })
}

/// Handles one datagram, commits, and returns the one answer.
fn ask(e: &mut E, c: &mut Counters, policy: &Policy, bytes: &[u8]) -> Vec<u8> {
    match bytes[0] {
        0 => e.handle_natpmp(a1(), bytes, policy, c, NOW),
        _ => e.handle_pcp(a1(), bytes, policy, c, NOW),
    }
    assert!(
        e.take_std_replies().is_empty(),
        "nothing is answered before the commit"
    );
    e.commit();
    let mut replies = e.take_std_replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].to, a1().into());
    replies.remove(0).bytes
}

fn pcp_answer(e: &mut E, c: &mut Counters, bytes: &[u8]) -> pcp::Response {
    pcp::decode_response(&ask(e, c, &POLICY, bytes)).expect("a PCP response")
}

fn setup() -> (E, Shared, Counters) {
    let (mut e, w) = engine(4);
    e.epoch_start = NOW - 42;
    (e, w, Counters::default())
}

#[test]
fn pcp_map_is_written_before_it_is_answered() {
    let (mut e, w, mut c) = setup();
    let r = pcp_answer(&mut e, &mut c, &map(A1, 8080, 30, vec![]));
    assert_eq!(
        (r.result, r.lifetime, r.epoch),
        (pcp::ResultCode::Success, 120, 42)
    );
    let m = r.map.unwrap();
    assert_eq!(
        (m.nonce, m.internal_port, m.external_port),
        (NONCE, 8080, 40000)
    );
    assert_eq!(m.external_ip, pcp::mapped(PUB));
    assert_eq!(
        log(&w),
        [
            "mirror add tcp 203.0.113.1:40000",
            "mirror fsync",
            "kernel add tcp 203.0.113.1:40000"
        ]
    );
    let key = Key {
        proto: Proto::Tcp,
        public: SocketAddrV4::new(PUB, 40000),
    };
    let lease = e.table.get(&key).unwrap().fwd.lease.unwrap();
    assert_eq!((lease.via, lease.expires), (Via::Pcp, NOW + 120));
    // The renewal keeps the address; deleting answers lifetime 0.
    let r = pcp_answer(&mut e, &mut c, &map(A1, 8080, 7200, vec![]));
    assert_eq!((r.lifetime, r.map.unwrap().external_port), (3600, 40000));
    let r = pcp_answer(&mut e, &mut c, &map(A1, 8080, 0, vec![]));
    assert_eq!((r.result, r.lifetime), (pcp::ResultCode::Success, 0));
    assert_eq!(e.table.len(), 0);
    assert_eq!(
        (
            c.pcp_map,
            e.stats.leased,
            e.stats.renewed,
            e.stats.deleted_by_client
        ),
        (3, 1, 1, 1)
    );
}

#[test]
fn pcp_refusals_change_nothing() {
    let (mut e, w, mut c) = setup();
    let third = vec![pcp::Opt::ThirdParty(pcp::mapped(Ipv4Addr::new(
        192, 0, 2, 11,
    )))];
    let filter = vec![pcp::Opt::Filter {
        prefix_len: 128,
        remote_port: 0,
        remote_ip: pcp::mapped(Ipv4Addr::new(203, 0, 113, 20)),
    }];
    let mut udp_lite = map(A1, 8080, 100, vec![]);
    udp_lite[pcp::HEADER_LEN + 12] = 136;
    let cases = [
        (map(A1, 8080, 100, third), pcp::ResultCode::NotAuthorized),
        (
            map(Ipv4Addr::new(192, 0, 2, 11), 8080, 100, vec![]),
            pcp::ResultCode::AddressMismatch,
        ),
        (map(A1, 8080, 100, filter), pcp::ResultCode::UnsuppOption),
        (map(A1, 0, 100, vec![]), pcp::ResultCode::MalformedRequest),
        (
            map(A1, 8080, 100, vec![pcp::Opt::PreferFailure]),
            pcp::ResultCode::MalformedOption,
        ),
        (udp_lite, pcp::ResultCode::UnsuppProtocol),
    ];
    for (bytes, code) in cases {
        let r = pcp_answer(&mut e, &mut c, &bytes);
        assert_eq!(r.result, code);
        assert_eq!(r.lifetime, 1800, "long-lived error");
        assert_eq!(r.map.unwrap().nonce, NONCE, "the answer copies the request");
    }
    let closed = Policy {
        allowed: false,
        ..POLICY
    };
    let r =
        pcp::decode_response(&ask(&mut e, &mut c, &closed, &map(A1, 8080, 100, vec![]))).unwrap();
    assert_eq!(r.result, pcp::ResultCode::NotAuthorized);
    assert_eq!(c.refused["pcp.NOT_AUTHORIZED"], 2);
    assert_eq!(c.refused["pcp.ADDRESS_MISMATCH"], 1);
    assert!(log(&w).is_empty(), "no refusal writes anything");
    assert_eq!(e.table.len(), 0);
}

#[test]
fn quota_is_user_ex_quota_and_a_failed_commit_no_resources() {
    let (mut e, w, mut c) = setup();
    for port in 1..=4 {
        assert_eq!(
            pcp_answer(&mut e, &mut c, &map(A1, port, 100, vec![])).result,
            pcp::ResultCode::Success
        );
    }
    let r = pcp_answer(&mut e, &mut c, &map(A1, 5, 100, vec![]));
    assert_eq!((r.result, r.lifetime), (pcp::ResultCode::UserExQuota, 30));
    log(&w);
    w.borrow_mut().fail_mirror = true;
    let r = pcp_answer(&mut e, &mut c, &map(A1, 1, 0, vec![]));
    assert_eq!(
        r.result,
        pcp::ResultCode::NoResources,
        "the delete could not be written"
    );
    let r = pcp_answer(&mut e, &mut c, &map(A1, 9, 100, vec![]));
    assert_eq!(r.result, pcp::ResultCode::NoResources, "nor the add");
    assert_eq!(
        e.table.len(),
        3,
        "the delete stays in table and kernel; the add was undone"
    );
}

#[test]
fn natpmp_map_delete_and_public_address() {
    let (mut e, _w, mut c) = setup();
    let req = |lifetime, internal_port| {
        natpmp::encode_request(&natpmp::Request::Map {
            proto: Proto::Udp,
            internal_port,
            suggested_port: 40005,
            lifetime,
        })
    };
    let resp = |bytes: Vec<u8>| natpmp::decode_response(&bytes).unwrap();
    let r = resp(ask(&mut e, &mut c, &POLICY, &req(7200, 5000)));
    assert_eq!(r.result, natpmp::ResultCode::Success);
    assert_eq!(
        r.body,
        natpmp::Body::Map {
            internal_port: 5000,
            external_port: 40005,
            lifetime: 3600
        }
    );
    let r = resp(ask(
        &mut e,
        &mut c,
        &POLICY,
        &natpmp::encode_request(&natpmp::Request::PublicAddress),
    ));
    assert_eq!((r.epoch, r.body), (42, natpmp::Body::PublicAddress(PUB)));
    // PCP may not touch a NAT-PMP mapping, nor NAT-PMP a PCP one.
    let mut pcp_req = map(A1, 5000, 100, vec![]);
    pcp_req[pcp::HEADER_LEN + 12] = 17;
    assert_eq!(
        pcp_answer(&mut e, &mut c, &pcp_req).result,
        pcp::ResultCode::NotAuthorized
    );
    let r = resp(ask(&mut e, &mut c, &POLICY, &req(0, 0)));
    assert_eq!((r.result, e.table.len()), (natpmp::ResultCode::Success, 0));
    let r = resp(ask(&mut e, &mut c, &POLICY, &req(100, 0)));
    assert_eq!(r.result, natpmp::ResultCode::NotAuthorized);
    let r = resp(ask(&mut e, &mut c, &POLICY, &[0, 9]));
    assert_eq!(
        (r.result, r.body),
        (natpmp::ResultCode::UnsupportedOpcode, natpmp::Body::None)
    );
    // Version 1 is neither: PCP answers it with the version it speaks.
    let r = pcp_answer(&mut e, &mut c, &[1, 0]);
    assert_eq!((r.version, r.result), (2, pcp::ResultCode::UnsuppVersion));
    assert_eq!((c.natpmp_map, c.natpmp_address), (3, 1));
}

#[test]
fn leases_expire_in_the_delete_order() {
    let (mut e, w, mut c) = setup();
    pcp_answer(&mut e, &mut c, &map(A1, 8080, 100, vec![]));
    log(&w);
    assert_eq!(e.table.next_expiry(), Some(NOW + 120));
    assert_eq!(e.expire(NOW + 119), 0);
    assert_eq!(e.expire(NOW + 120), 1);
    e.commit();
    assert_eq!(
        log(&w),
        [
            "kernel del tcp 203.0.113.1:40000",
            "mirror del tcp 203.0.113.1:40000",
            "mirror fsync"
        ]
    );
    assert_eq!((e.table.len(), e.stats.expired), (0, 1));
}
