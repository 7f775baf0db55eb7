//! Engine tests with the fake backends when things go wrong or age: mirror
//! and kernel failures, the probe's verdicts, recovery and sync.

use std::net::SocketAddrV4;

use proto::dpf::{ErrorCode, Message};
use proto::Proto;

use super::fake::*;
use super::{desired, Engine, Key, Table};
use crate::handler::PROBE_TIMEOUT_LIMIT;
use crate::mirror::replay;
use crate::table::ProbeResult;
use crate::values::PortRange;

#[test]
fn mirror_failure_undoes_the_batch() {
    let (mut e, w) = engine(10);
    w.borrow_mut().fail_mirror = true;
    handle(&mut e, fwd_req(7000, 5000, None));
    assert!(matches!(
        one(e.commit()),
        Message::Error {
            code: ErrorCode::Internal,
            ..
        }
    ));
    assert_eq!(e.table.len(), 0);
    assert!(w.borrow().kernel.is_empty());
    assert!(!log(&w).iter().any(|l| l.starts_with("kernel")));
}

#[test]
fn kernel_failure_is_retried_against_the_real_kernel() {
    let (mut e, w) = engine(10);
    w.borrow_mut().fail_kernel = 1;
    handle(&mut e, fwd_req(7000, 5000, None));
    assert!(matches!(one(e.commit()), Message::ForwardOk { .. }));
    let l = log(&w);
    assert_eq!(
        &l[2..],
        [
            "kernel failed",
            "kernel list",
            "kernel add tcp 203.0.113.1:40000"
        ]
    );

    // Someone deleted our table: the retry rebuilds it.
    w.borrow_mut().kernel_structure = false;
    handle(&mut e, fwd_req(7001, 5000, None));
    assert!(matches!(one(e.commit()), Message::ForwardOk { .. }));
    assert!(log(&w).contains(&"kernel install 2".to_string()));
}

#[test]
fn persistent_kernel_failure_undoes_and_cancels_mirror_records() {
    let (mut e, w) = engine(10);
    w.borrow_mut().fail_kernel = 2;
    handle(&mut e, fwd_req(7000, 5000, None));
    assert!(matches!(
        one(e.commit()),
        Message::Error {
            code: ErrorCode::Internal,
            ..
        }
    ));
    assert_eq!(e.table.len(), 0);
    assert!(replay(&w.borrow().mirror_bytes).live.is_empty());
    // The next batch works again.
    handle(&mut e, fwd_req(7000, 5000, None));
    assert!(matches!(one(e.commit()), Message::ForwardOk { .. }));
    assert_eq!(w.borrow().kernel.len(), 1);
}

#[test]
fn probe_verdicts_delete_in_delete_order() {
    let (mut e, w) = engine(10);
    handle(&mut e, fwd_req(7000, 5000, None));
    handle(&mut e, fwd_req(7001, 5001, None));
    e.commit();
    log(&w);
    let f: Vec<_> = e.table.entries().map(|x| x.fwd).collect();
    let (refused, slow) = if f[0].local.port() == 7000 {
        (f[0], f[1])
    } else {
        (f[1], f[0])
    };
    e.probe_result(refused.key(), refused.gen + 1, ProbeResult::Refused);
    assert_eq!(e.table.len(), 2, "a stale generation is ignored");
    e.probe_result(refused.key(), refused.gen, ProbeResult::Refused);
    for _ in 1..PROBE_TIMEOUT_LIMIT {
        e.probe_result(slow.key(), slow.gen, ProbeResult::Timeout);
    }
    assert!(e.commit().is_empty(), "probe deletions have no reply");
    assert_eq!(
        log(&w),
        [
            "kernel del tcp 203.0.113.1:40000",
            "mirror del tcp 203.0.113.1:40000",
            "mirror fsync"
        ]
    );
    assert_eq!(e.table.len(), 1);
    e.probe_result(slow.key(), slow.gen, ProbeResult::Ok);
    for _ in 1..PROBE_TIMEOUT_LIMIT {
        e.probe_result(slow.key(), slow.gen, ProbeResult::Timeout);
    }
    assert_eq!(e.table.len(), 1, "an answer resets the count");
    e.probe_result(slow.key(), slow.gen, ProbeResult::Timeout);
    e.commit();
    assert_eq!((e.table.len(), e.stats.deleted_by_probe), (0, 2));
}

#[test]
fn recovery_loads_the_mirror_and_installs_the_kernel() {
    let (mut e, w) = engine(10);
    for port in 1..=3 {
        handle(&mut e, fwd_req(port, 5000, None));
    }
    e.commit();
    let bytes = w.borrow().mirror_bytes.clone();
    // A rebooted machine: an empty kernel.
    let w2 = world();
    w2.borrow_mut().kernel_structure = false;
    let (m, k) = backends(&w2);
    let table = Table::new(
        vec![PUB],
        PortRange {
            lo: 40000,
            hi: 40001,
        },
        10,
    );
    let mut e2 = Engine::new(table, m, k);
    let report = e2
        .recover(&replay(&bytes), std::time::Instant::now(), 0)
        .unwrap();
    assert_eq!(
        (report.live, report.dropped, report.records),
        (2, 1, 3),
        "range shrank to 2 ports"
    );
    assert_eq!(
        log(&w2),
        ["mirror compact 2", "kernel list", "kernel install 2"]
    );
    assert_eq!(w2.borrow().kernel, desired(&e2.table));
}

#[test]
fn sync_compacts_and_makes_table_and_kernel_follow_the_mirror() {
    let (mut e, w) = engine(10);
    for port in 1..=3 {
        handle(&mut e, fwd_req(port, 5000, None));
    }
    e.commit();
    handle(&mut e, fwd_req(1, 5001, None));
    e.commit();
    {
        let mut w = w.borrow_mut();
        // An element of our map the mirror does not know, and one lost.
        let stray = Key {
            proto: Proto::Udp,
            public: SocketAddrV4::new(PUB, 40009),
        };
        w.kernel.insert(stray, SocketAddrV4::new(A1, 1));
        let lost = Key {
            proto: Proto::Tcp,
            public: SocketAddrV4::new(PUB, 40001),
        };
        w.kernel.remove(&lost);
    }
    log(&w);
    let before = w.borrow().mirror_bytes.len();
    let report = e.sync().unwrap();
    assert_eq!(
        (
            report.live,
            report.records,
            report.kernel_ops,
            report.table_fixes
        ),
        (3, 4, 2, 0)
    );
    assert!(w.borrow().mirror_bytes.len() < before);
    assert_eq!(w.borrow().kernel, desired(&e.table));
}
