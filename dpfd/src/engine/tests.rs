//! Engine tests with the fake backends: the write orders of paper 3.2.2,
//! reuse, group commit, refusals without state change, queries.

use std::net::{Ipv4Addr, SocketAddrV4};

use proto::dpf::{ErrorCode, MappingKey, Message};
use proto::Proto;

use super::fake::*;
use crate::handler::Refusals;
use crate::mirror::replay;

#[test]
fn add_writes_table_then_mirror_then_kernel() {
    let (mut e, w) = engine(10);
    handle(&mut e, fwd_req(7000, 5000, None));
    // The table is written first, and nothing else before the commit.
    assert_eq!(e.table.len(), 1);
    assert!(log(&w).is_empty());
    let reply = one(e.commit());
    assert_eq!(
        reply,
        Message::ForwardOk {
            public: SocketAddrV4::new(PUB, 40000)
        }
    );
    assert_eq!(
        log(&w),
        [
            "mirror add tcp 203.0.113.1:40000",
            "mirror fsync",
            "kernel add tcp 203.0.113.1:40000"
        ]
    );
}

#[test]
fn delete_writes_table_then_kernel_then_mirror() {
    let (mut e, w) = engine(10);
    handle(&mut e, fwd_req(7000, 5000, None));
    e.commit();
    log(&w);
    handle(
        &mut e,
        Message::Delete {
            proto: Proto::Tcp,
            key: MappingKey::Local(SocketAddrV4::new(A1, 7000)),
        },
    );
    assert_eq!(e.table.len(), 0);
    assert!(log(&w).is_empty());
    assert_eq!(one(e.commit()), Message::DeleteOk);
    assert_eq!(
        log(&w),
        [
            "kernel del tcp 203.0.113.1:40000",
            "mirror del tcp 203.0.113.1:40000",
            "mirror fsync"
        ]
    );
    assert!(w.borrow().kernel.is_empty());
    assert!(replay(&w.borrow().mirror_bytes).live.is_empty());
}

#[test]
fn reuse_writes_nothing_and_new_client_info_skips_the_kernel() {
    let (mut e, w) = engine(10);
    handle(&mut e, fwd_req(7000, 5000, None));
    let first = one(e.commit());
    log(&w);
    handle(&mut e, fwd_req(7000, 5000, None));
    assert_eq!(one(e.commit()), first);
    assert!(log(&w).is_empty(), "the same rule again changes nothing");
    handle(&mut e, fwd_req(7000, 5001, None));
    assert_eq!(one(e.commit()), first);
    assert_eq!(
        log(&w),
        ["mirror add tcp 203.0.113.1:40000", "mirror fsync"]
    );
    assert_eq!(replay(&w.borrow().mirror_bytes).live[0].mgmt_port, 5001);
    assert_eq!((e.stats.added, e.stats.reused, e.stats.updated), (1, 1, 1));
}

#[test]
fn a_batch_shares_one_fsync_and_one_kernel_transaction() {
    let (mut e, w) = engine(100);
    let batches = e.stats.kernel_batches;
    for port in 1..=8 {
        handle(&mut e, fwd_req(port, 5000, None));
    }
    handle(
        &mut e,
        Message::Delete {
            proto: Proto::Tcp,
            key: MappingKey::Local(SocketAddrV4::new(A1, 3)),
        },
    );
    let replies = e.commit();
    assert_eq!(replies.len(), 9);
    let l = log(&w);
    assert_eq!(
        l.iter().filter(|s| *s == "mirror fsync").count(),
        2,
        "adds, then deletes: {l:?}"
    );
    // Added and deleted in one batch: the kernel never sees it.
    assert_eq!(
        l.iter().filter(|s| s.starts_with("kernel add")).count(),
        7,
        "{l:?}"
    );
    assert!(!l.iter().any(|s| s.starts_with("kernel del")));
    assert_eq!(e.stats.kernel_batches, batches + 1);
    assert_eq!(replay(&w.borrow().mirror_bytes).live.len(), 7);
}

#[test]
fn delete_and_readd_of_one_address_in_a_batch_replays_right() {
    let (mut e, w) = engine(10);
    handle(&mut e, fwd_req(7000, 5000, Some(40005)));
    e.commit();
    handle(
        &mut e,
        Message::Delete {
            proto: Proto::Tcp,
            key: MappingKey::Public(SocketAddrV4::new(PUB, 40005)),
        },
    );
    handle(&mut e, fwd_req(7000, 5000, Some(40005)));
    e.commit();
    // Mirror order is add (new generation) then del (old generation).
    let live = replay(&w.borrow().mirror_bytes).live;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0], e.table.entries().next().unwrap().fwd);
    assert_eq!(w.borrow().kernel.len(), 1);
}

#[test]
fn refusals_change_nothing() {
    let (mut e, w) = engine(1);
    handle(&mut e, fwd_req(7000, 5000, None));
    e.commit();
    log(&w);
    let before: Vec<_> = e.table.entries().copied().collect();
    let mirror_before = w.borrow().mirror_bytes.clone();
    let other_host = Message::Forward {
        proto: Proto::Tcp,
        local: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 7000),
        mgmt_port: 5000,
        desired: None,
    };
    let cases = [
        (other_host, ErrorCode::NotLocal),
        (fwd_req(7001, 5000, Some(50000)), ErrorCode::PortOutOfRange),
        (fwd_req(7001, 5000, None), ErrorCode::Quota),
        (fwd_req(0, 5000, None), ErrorCode::BadRequest),
        (fwd_req(7001, 0, None), ErrorCode::BadRequest),
        (
            Message::Delete {
                proto: Proto::Udp,
                key: MappingKey::Local(SocketAddrV4::new(A1, 7000)),
            },
            ErrorCode::NotFound,
        ),
        (
            Message::Delete {
                proto: Proto::Tcp,
                key: MappingKey::Local(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 7000)),
            },
            ErrorCode::NotLocal,
        ),
    ];
    let mut refusals = Refusals::new();
    for (msg, code) in cases {
        e.handle(from(A1), 9, msg, &mut refusals, 0);
        match one(e.commit()) {
            Message::Error { code: c, .. } => assert_eq!(c, code),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refusals["not_local"], 2);
    assert_eq!(refusals["bad_request"], 2);
    assert!(log(&w).is_empty(), "a refusal wrote something");
    assert_eq!(e.table.entries().copied().collect::<Vec<_>>(), before);
    assert_eq!(w.borrow().mirror_bytes, mirror_before);
}

#[test]
fn query_answers_from_the_table() {
    let (mut e, _w) = engine(10);
    handle(&mut e, fwd_req(7000, 5000, None));
    e.commit();
    let q = |port| Message::Query {
        proto: Proto::Tcp,
        public: SocketAddrV4::new(PUB, port),
    };
    handle(&mut e, q(40000));
    assert_eq!(
        one(e.commit()),
        Message::QueryOk {
            local: SocketAddrV4::new(A1, 7000)
        }
    );
    handle(&mut e, q(40001));
    assert_eq!(one(e.commit()), Message::QueryNak);
}
