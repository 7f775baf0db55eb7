//! `dpfd --secret-file` end to end, in a private network namespace with the
//! real nftables: only requests sealed with the key open a forward; an
//! unsealed, wrongly keyed, stale or replayed request gets no answer, opens
//! nothing, and is counted by reason in `dpfd status`.

mod support;

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::auth::{self, Key, ReplayGuard, Stamp};
use proto::dpf::{self, Message};
use support::*;

const SECRET: &[u8] = b"dpfd test secret, long enough to be a key";

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn sealed(msg: &Message, id: u64, key: &Key, unix_ms: u64, nonce: u64) -> Vec<u8> {
    let mut bytes = dpf::encode(msg, id).unwrap();
    auth::seal(&mut bytes, key, Stamp { unix_ms, nonce }).unwrap();
    bytes
}

/// Sends `bytes` and returns the reply, if one comes within `wait`.
fn send(sock: &UdpSocket, to: &str, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(bytes, to).unwrap();
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| buf[..n].to_vec())
}

fn nft_map() -> String {
    let (code, out, err) = run_cmd({
        let mut c = Command::new("nft");
        c.args(["list", "map", "ip", "dpf", "fwd_tcp"]);
        c
    });
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn only_sealed_requests_open_forwards() {
    root_in_private_netns();
    let dir = temp_dir();
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mirror = dir.join("mirror");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut daemon = start(&[
        "--listen",
        &listen,
        "--public-ip",
        PUBLIC,
        "--port-range",
        "40000-40009",
        "--mirror",
        mirror.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
        "--log",
        "debug",
    ]);
    daemon.expect_line("started:");

    let mgmt = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let forward = Message::Forward {
        proto: proto::Proto::Tcp,
        local: "127.0.0.1:7000".parse().unwrap(),
        mgmt_port: mgmt.local_addr().unwrap().port(),
        desired: None,
    };
    let key = Key::new(SECRET);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silence = Duration::from_millis(1500);

    let plain = dpf::encode(&forward, 1).unwrap();
    assert_eq!(
        send(&sock, &listen, &plain, silence),
        None,
        "unsealed Forward answered"
    );
    let wrong = sealed(&forward, 2, &Key::new(b"wrong"), unix_ms(), 2);
    assert_eq!(
        send(&sock, &listen, &wrong, silence),
        None,
        "wrongly keyed Forward answered"
    );
    let stale = sealed(&forward, 3, &key, unix_ms() - 300_000, 3);
    assert_eq!(
        send(&sock, &listen, &stale, silence),
        None,
        "stale Forward answered"
    );
    assert!(
        !nft_map().contains("elements"),
        "a refused request opened a forward:\n{}",
        nft_map()
    );

    let good = sealed(&forward, 4, &key, unix_ms(), 4);
    let reply =
        send(&sock, &listen, &good, Duration::from_secs(5)).expect("a reply to a sealed Forward");
    let opened =
        auth::open(&reply, &key, unix_ms(), &mut ReplayGuard::new(8)).expect("a sealed reply");
    let (h, m) = dpf::decode(&opened).unwrap();
    assert_eq!(h.request_id, 4);
    assert_eq!(
        m,
        Message::ForwardOk {
            public: "198.51.100.1:40000".parse().unwrap()
        }
    );
    daemon.expect_line("forward added: tcp 198.51.100.1:40000 -> 127.0.0.1:7000");
    assert!(nft_map().contains("198.51.100.1 . 40000 : 127.0.0.1 . 7000"));

    // A retransmission gets its cached reply; the same bytes from another
    // socket are a replay and get nothing.
    assert_eq!(
        send(&sock, &listen, &good, Duration::from_secs(5)).as_deref(),
        Some(&reply[..])
    );
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        send(&other, &listen, &good, silence),
        None,
        "replayed Forward answered"
    );

    let (code, out, err) = run(&["status", "--listen", &listen, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(r#""auth":{"bad_mac":1,"missing":1,"replayed":1,"stale":1}"#),
        "{out}"
    );
    let (code, out, _) = run(&["status", "--listen", &listen]);
    assert_eq!(code, 0);
    assert!(out.contains("authentication refused: bad_mac 1"), "{out}");
    drop(daemon);
    drop(mgmt);
    std::fs::remove_dir_all(dir).unwrap();
}
