//! Crash consistency at every step of the write orders (paper 3.2.2): a
//! dpfd built with the `fault-injection` feature aborts where DPFD_FAULT
//! says, as a `kill -9` could stop it, and the next dpfd must come up with
//! the mapping table, the mirror file and the kernel in agreement, and
//! answer the client's retry correctly.
//!
//! Run with `cargo test -p dpfd --features fault-injection --test faults --
//! --include-ignored` as root (`scripts/test` does); without the feature
//! this file compiles to nothing.
#![cfg(feature = "fault-injection")]

mod support;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use proto::dpf::{decode, MappingKey, Message};
use proto::Proto;
use support::*;

struct Case {
    dir: std::path::PathBuf,
    listen: String,
    table: String,
    mirror: String,
    sock: UdpSocket,
}

impl Case {
    fn new(name: &str) -> Case {
        let dir = temp_dir();
        Case {
            dir: dir.clone(),
            listen: format!("127.0.0.1:{}", free_port()),
            table: format!("f_{}", name.replace('-', "_")),
            mirror: dir.join("mirror").to_str().unwrap().to_string(),
            sock: UdpSocket::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn args(&self) -> Vec<&str> {
        vec![
            "--listen",
            &self.listen,
            "--public-ip",
            PUBLIC,
            "--port-range",
            "40000-40009",
            "--mirror",
            &self.mirror,
            "--nft-table",
            &self.table,
            "--probe-interval-s",
            "600",
        ]
    }

    fn start(&self, fault: Option<&str>) -> Running {
        let env: Vec<(&str, &str)> = fault.map(|f| ("DPFD_FAULT", f)).into_iter().collect();
        let mut d = start_with_env(&self.args(), &env);
        d.expect_line("started:");
        d
    }

    /// Sends a request the faulty daemon dies on: no reply, exit by SIGABRT.
    fn crash_on(&self, d: &mut Running, msg: &Message) {
        self.sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        self.sock
            .send_to(&proto::dpf::encode(msg, 1).unwrap(), &self.listen)
            .unwrap();
        let mut buf = [0u8; 512];
        assert!(
            self.sock.recv_from(&mut buf).is_err(),
            "a reply came before the fault point"
        );
        let status = d.wait_exit(Duration::from_secs(5));
        assert!(!status.success(), "{status:?}");
        d.expect_line("fault injection: aborting at");
    }

    fn elements(&self) -> usize {
        let mut c = Command::new("nft");
        c.args(["list", "map", "ip", &self.table, "fwd_tcp"]);
        let (code, out, err) = run_cmd(c);
        assert_eq!(code, 0, "{err}");
        out.matches(" : 127.0.0.1 . ").count()
    }

    fn reply(&self, msg: &Message) -> Message {
        decode(&ask(&self.sock, &self.listen, msg, 2)).unwrap().1
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn forward(mgmt: u16) -> Message {
    Message::Forward {
        proto: Proto::Tcp,
        local: "127.0.0.1:7000".parse().unwrap(),
        mgmt_port: mgmt,
        desired: None,
    }
}

fn public() -> Message {
    Message::ForwardOk {
        public: "198.51.100.1:40000".parse().unwrap(),
    }
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn every_add_step_recovers_consistently() {
    root_in_private_netns();
    let mgmt = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let req = forward(mgmt.local_addr().unwrap().port());
    // What the restarted dpfd must have recovered after each crash point.
    for (point, recovered) in [
        ("after-table", 0),
        ("mirror-torn", 0),
        ("after-mirror", 1),
        ("after-kernel", 1),
        ("before-reply", 1),
    ] {
        let case = Case::new(point);
        let mut d = case.start(Some(point));
        case.crash_on(&mut d, &req);
        let mut d = case.start(None);
        let line = d.expect_line("recovered");
        assert!(
            line.contains(&format!("recovered {recovered} forwards")),
            "{point}: {line}"
        );
        if point == "mirror-torn" {
            assert!(line.contains("torn last record: yes"), "{line}");
        }
        assert_eq!(
            case.elements(),
            recovered,
            "{point}: kernel and mirror disagree"
        );
        // The client's retry: a reuse if the forward survived, else a new one.
        assert_eq!(case.reply(&req), public(), "{point}");
        assert_eq!(case.elements(), 1, "{point}");
        drop(d);
    }
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn every_delete_step_recovers_consistently() {
    root_in_private_netns();
    let mgmt = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let req = forward(mgmt.local_addr().unwrap().port());
    let del = Message::Delete {
        proto: Proto::Tcp,
        key: MappingKey::Local("127.0.0.1:7000".parse().unwrap()),
    };
    for (point, recovered) in [("after-table", 1), ("after-kernel", 1), ("before-reply", 0)] {
        let case = Case::new(&format!("d{point}"));
        let mut d = case.start(None);
        assert_eq!(case.reply(&req), public());
        d.signal(libc::SIGTERM);
        d.wait_exit(Duration::from_secs(5));
        let mut d = case.start(Some(point));
        case.crash_on(&mut d, &del);
        // Until the delete record is durable the forward comes back (the
        // paper's "garbage rule", which the probe removes if it is dead), in
        // the kernel too, and the retried delete succeeds; after it, the
        // forward is gone everywhere and the retry finds nothing.
        let mut d = case.start(None);
        d.expect_line(&format!("recovered {recovered} forwards"));
        assert_eq!(case.elements(), recovered, "{point}");
        let retry = case.reply(&del);
        match recovered {
            1 => assert_eq!(retry, Message::DeleteOk, "{point}"),
            _ => assert!(
                matches!(
                    retry,
                    Message::Error {
                        code: proto::dpf::ErrorCode::NotFound,
                        ..
                    }
                ),
                "{point}: {retry:?}"
            ),
        }
        assert_eq!(case.elements(), 0, "{point}");
        drop(d);
    }
}
