//! dpfd end to end on loopback, inside a private network namespace: a
//! forward that reaches the kernel, the reply cache answering a
//! retransmission, `dpfd status` in both forms, the mirror file's lock
//! against a second daemon, and recovery after a clean stop.

mod support;

use std::fs;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use support::*;
#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn forwards_on_loopback_with_reply_cache_status_and_mirror_lock() {
    use proto::dpf::{decode, Message};
    root_in_private_netns();
    let dir = temp_dir();
    let mirror = dir.join("mirror");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = loopback_args(&listen, mirror.to_str().unwrap());
    let mut daemon = start(&args);
    daemon.expect_line("started:");

    let mgmt = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let forward = Message::Forward {
        proto: proto::Proto::Tcp,
        local: "127.0.0.1:7000".parse().unwrap(),
        mgmt_port: mgmt.local_addr().unwrap().port(),
        desired: None,
    };
    let first = ask(&sock, &listen, &forward, 77);
    let (_, reply) = decode(&first).unwrap();
    assert_eq!(
        reply,
        Message::ForwardOk {
            public: "198.51.100.1:40000".parse().unwrap()
        }
    );
    // A retransmission gets the same bytes and changes nothing.
    assert_eq!(ask(&sock, &listen, &forward, 77), first);
    // Info names the public IPs, so a client can tell them from mistakes.
    let (_, info) = decode(&ask(&sock, &listen, &Message::Info, 78)).unwrap();
    assert_eq!(
        info,
        Message::InfoOk {
            public_ips: vec!["198.51.100.1".parse().unwrap()]
        }
    );
    daemon.expect_line("forward added: tcp 198.51.100.1:40000 -> 127.0.0.1:7000");

    let (code, out, err) = run_cmd({
        let mut c = Command::new("nft");
        c.args(["list", "map", "ip", "dpf", "fwd_tcp"]);
        c
    });
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("198.51.100.1 . 40000 : 127.0.0.1 . 7000"),
        "{out}"
    );

    let (code, out, err) = run(&["status", "--listen", &listen, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"public\":\"198.51.100.1:40000\""), "{out}");
    assert!(out.contains("\"duplicates\":1"), "{out}");
    let (code, out, _) = run(&["status", "--listen", &port.to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("forwards: 1 (free ports: tcp 9, udp 10)"),
        "{out}"
    );

    // A second daemon on the same mirror file is refused.
    let other = format!("127.0.0.1:{}", free_port());
    let mut second = args.clone();
    second[1] = &other;
    let (code, _, err) = run(&second);
    assert_eq!(code, 1);
    // Logging is up by then (the warning about the public IP comes first).
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("dpfd: ") && last.contains("is in use by another dpfd"),
        "{err}"
    );

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(2)).code(), Some(0));
    let mut daemon = start(&args);
    daemon.expect_line("recovered 1 forwards from the mirror file");
    drop(daemon);
    drop(mgmt);
    fs::remove_dir_all(dir).unwrap();
}
