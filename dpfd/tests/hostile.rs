//! Hostile input on dpfd's command port, on loopback inside a private
//! network namespace: junk of every class, replays from the sender and from
//! another host, requests from outside the private network, forwards to
//! another host, outside the port range or past the per-host quota, a
//! flood of junk, and a source over the rate limit. Each is dropped or refused and counted under its own counter and
//! no other, the nft maps and the forwards stay exactly as they were, and
//! dpfd answers a valid request afterwards.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddrV4, TcpListener, UdpSocket};
use std::process::Command;
use std::time::Duration;

use daemon_kit::testing::counters;
use proto::dpf::{self, ErrorCode, MappingKey, Message};
use proto::header::MAX_UDP_PAYLOAD;
use proto::Proto;
use serde_json::Value;
use support::*;

/// 127.0.0.1 and .2 are the private network; 127.0.0.9 is "outside".
const PRIVATE_NET: &str = "127.0.0.0/30";

struct Dpfd {
    daemon: Running,
    listen: String,
    dir: std::path::PathBuf,
}

impl Dpfd {
    /// A dpfd taking `rate_limit` requests per second per source.
    fn start(rate_limit: &str) -> Dpfd {
        let dir = temp_dir();
        let mirror = dir.join("mirror");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = loopback_args(&listen, mirror.to_str().unwrap());
        args.extend(["--private-net", PRIVATE_NET, "--per-host-quota", "2"]);
        args.extend(["--rate-limit", rate_limit]);
        let mut daemon = start(&args);
        daemon.expect_line("started:");
        Dpfd {
            daemon,
            listen,
            dir,
        }
    }

    fn status(&self) -> Value {
        let (code, out, err) = run(&["status", "--listen", &self.listen, "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Every counter, flattened to `a.b` names; `received` left out, since
    /// it counts junk and valid requests alike.
    fn counters(&self) -> BTreeMap<String, u64> {
        fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, u64>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        let name = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        flatten(&name, v, out);
                    }
                }
                Value::Number(n) => {
                    out.insert(prefix.to_string(), n.as_u64().unwrap());
                }
                _ => {}
            }
        }
        let mut out = BTreeMap::new();
        flatten("", &self.status()["counters"], &mut out);
        out.remove("received");
        out
    }

    /// The forwards dpfd holds and the kernel's maps: what no hostile
    /// input may change.
    fn state(&self) -> String {
        let status = self.status();
        let forwards: Vec<String> = status["forwards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{} {} -> {} mgmt {}",
                    f["proto"], f["public"], f["local"], f["mgmt_port"]
                )
            })
            .collect();
        let maps: Vec<String> = ["fwd_tcp", "fwd_udp"]
            .iter()
            .map(|m| {
                let mut c = Command::new("nft");
                c.args(["list", "map", "ip", "dpf", m]);
                let (code, out, err) = run_cmd(c);
                assert_eq!(code, 0, "nft list map {m}: {err}");
                out
            })
            .collect();
        format!("{}\n{}", forwards.join("\n"), maps.join("\n"))
    }

    /// Waits (bounded) until exactly `want` moved since `before`.
    fn expect_moved(&self, before: &BTreeMap<String, u64>, want: &[(&str, u64)]) {
        counters::expect_moved(before, want, Duration::from_secs(10), || self.counters());
    }
}

impl Drop for Dpfd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sock(ip: &str) -> UdpSocket {
    UdpSocket::bind(format!("{ip}:0")).unwrap()
}

/// The reply to `bytes` within `within`, if any.
fn exchange(s: &UdpSocket, to: &str, bytes: &[u8], within: Duration) -> Option<Message> {
    s.send_to(bytes, to).unwrap();
    reply_within(s, within)
}

/// The next reply on `s` within `within`. To check that there is none,
/// first wait for the counters that show dpfd handled the request: an
/// answer would be queued by then, and `within` is only margin.
fn reply_within(s: &UdpSocket, within: Duration) -> Option<Message> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(dpf::decode(&buf[..n]).expect("dpfd speaks DPF").1)
}

fn forward(local: &str, mgmt: &TcpListener, desired: Option<SocketAddrV4>) -> Message {
    Message::Forward {
        proto: Proto::Tcp,
        local: local.parse().unwrap(),
        mgmt_port: mgmt.local_addr().unwrap().port(),
        desired,
    }
}

fn refused_with(reply: Option<Message>, code: ErrorCode) {
    match reply {
        Some(Message::Error { code: got, .. }) if got == code => {}
        other => panic!("want Error{{{code:?}}}, got {other:?}"),
    }
}

const QUIET: Duration = Duration::from_millis(300);
const ANSWER: Duration = Duration::from_secs(5);

/// A dpfd holding one forward, of 127.0.0.1:7000.
struct Setup {
    d: Dpfd,
    /// The forward's management socket, which the probe finds open.
    mgmt: TcpListener,
    client: UdpSocket,
    /// The Forward request's bytes (request id 77) and its reply.
    fwd: Vec<u8>,
    first: Option<Message>,
}

/// The [`Setup`], with the default rate limit unless the test names one,
/// in a network namespace of the test's own (needs root).
fn with_one_forward() -> Setup {
    with_one_forward_at("1000")
}

fn with_one_forward_at(rate_limit: &str) -> Setup {
    root_in_private_netns();
    let d = Dpfd::start(rate_limit);
    let mgmt = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = sock("127.0.0.1");
    let fwd = dpf::encode(&forward("127.0.0.1:7000", &mgmt, None), 77).unwrap();
    let first = exchange(&client, &d.listen, &fwd, ANSWER);
    assert!(
        matches!(first, Some(Message::ForwardOk { .. })),
        "{first:?}"
    );
    Setup {
        d,
        mgmt,
        client,
        fwd,
        first,
    }
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn junk_replays_and_refusals_change_nothing() {
    let Setup {
        d,
        mgmt,
        client,
        fwd,
        first,
    } = with_one_forward();
    let before = (d.state(), d.counters());

    // Junk of every class: no reply, counted by class.
    let mut wrong_magic = fwd.clone();
    wrong_magic[0] = b'X';
    let mut bad_flags = fwd.clone();
    bad_flags[6] = 0x01;
    let mut unknown_kind = fwd.clone();
    unknown_kind[5] = 0x7e;
    let mut trailing = fwd.clone();
    trailing.resize(MAX_UDP_PAYLOAD, 0xAB);
    let reply = dpf::encode(
        &Message::ForwardOk {
            public: "198.51.100.1:40005".parse().unwrap(),
        },
        5,
    )
    .unwrap();
    let junk: [&[u8]; 9] = [
        b"SSH-2.0-OpenSSH_9.2\r\n",
        &wrong_magic,
        &[0xAB; MAX_UDP_PAYLOAD],
        &fwd[..10],
        &fwd[..fwd.len() - 1],
        &trailing,
        &bad_flags,
        &unknown_kind,
        &reply,
    ];
    for bytes in junk {
        client.send_to(bytes, &d.listen).unwrap();
    }
    d.expect_moved(
        &before.1,
        &[
            ("malformed", 9),
            ("malformed_by.not_dpf", 3),
            ("malformed_by.truncated", 2),
            ("malformed_by.oversize", 1),
            ("malformed_by.invalid", 2),
            ("malformed_by.reply", 1),
        ],
    );
    assert_eq!(reply_within(&client, QUIET), None, "junk was answered");

    // A newer version is told so; a replay from the sender gets the cached
    // reply; from another port of its host, the same forward again.
    let counted = d.counters();
    let mut newer = fwd.clone();
    newer[4] = 2;
    refused_with(
        exchange(&client, &d.listen, &newer, ANSWER),
        ErrorCode::VersionMismatch,
    );
    assert_eq!(exchange(&client, &d.listen, &fwd, ANSWER), first);
    assert_eq!(exchange(&sock("127.0.0.1"), &d.listen, &fwd, ANSWER), first);
    d.expect_moved(
        &counted,
        &[
            ("refused.version_mismatch", 1),
            ("duplicates", 1),
            ("requests.forward", 1),
        ],
    );

    // Another private host replays the forward, or deletes it: not its own.
    // The same from the public side: not even an answer.
    let counted = d.counters();
    let other = sock("127.0.0.2");
    let delete = dpf::encode(
        &Message::Delete {
            proto: Proto::Tcp,
            key: MappingKey::Local("127.0.0.1:7000".parse().unwrap()),
        },
        78,
    )
    .unwrap();
    refused_with(
        exchange(&other, &d.listen, &fwd, ANSWER),
        ErrorCode::NotLocal,
    );
    refused_with(
        exchange(&other, &d.listen, &delete, ANSWER),
        ErrorCode::NotLocal,
    );
    let outside = sock("127.0.0.9");
    outside.send_to(&fwd, &d.listen).unwrap();
    outside.send_to(&delete, &d.listen).unwrap();
    d.expect_moved(
        &counted,
        &[
            ("refused.not_local", 2),
            ("requests.forward", 1),
            ("requests.delete", 1),
            ("foreign", 2),
        ],
    );
    assert_eq!(reply_within(&outside, QUIET), None, "the public side was answered");
    assert_eq!(d.state(), before.0, "hostile input changed the forwards");

    // Ports outside the range, as the desired public port.
    let counted = d.counters();
    for port in [39999, 40010, 1, 65535] {
        let out_of_range = forward(
            "127.0.0.1:7100",
            &mgmt,
            Some(SocketAddrV4::new(PUBLIC.parse().unwrap(), port)),
        );
        let bytes = dpf::encode(&out_of_range, 100 + u64::from(port)).unwrap();
        refused_with(
            exchange(&client, &d.listen, &bytes, ANSWER),
            ErrorCode::PortOutOfRange,
        );
    }
    d.expect_moved(
        &counted,
        &[("refused.port_out_of_range", 4), ("requests.forward", 4)],
    );
    assert_eq!(d.state(), before.0);

    // The quota of 2 forwards per host: the second is granted, the third
    // is refused, and so is the third from another port of the host.
    let second = dpf::encode(&forward("127.0.0.1:7001", &mgmt, None), 200).unwrap();
    assert!(matches!(
        exchange(&client, &d.listen, &second, ANSWER),
        Some(Message::ForwardOk { .. })
    ));
    let (full, counted) = (d.state(), d.counters());
    let third = dpf::encode(&forward("127.0.0.1:7002", &mgmt, None), 201).unwrap();
    refused_with(
        exchange(&client, &d.listen, &third, ANSWER),
        ErrorCode::Quota,
    );
    refused_with(
        exchange(&sock("127.0.0.1"), &d.listen, &third, ANSWER),
        ErrorCode::Quota,
    );
    d.expect_moved(&counted, &[("refused.quota", 2), ("requests.forward", 2)]);
    assert_eq!(d.state(), full);
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn a_flood_of_junk_is_counted_and_valid_requests_still_answered() {
    // No rate limit: every junk datagram that arrives reaches the decoder.
    let Setup { d, client, .. } = with_one_forward_at("0");
    let before = (d.state(), d.counters());

    let flood = sock("127.0.0.2");
    let sent = 20_000u64;
    for i in 0..sent {
        // A full socket buffer only loses datagrams.
        let _ = flood.send_to(b"\x00flood\x00", &d.listen);
        if i % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let query = Message::Query {
        proto: Proto::Tcp,
        public: "198.51.100.1:40009".parse().unwrap(),
    };
    let q = dpf::encode(&query, 2).unwrap();
    // As a real client does, the query is retransmitted: one sent while the
    // flood still fills dpfd's socket buffer is lost like any datagram then.
    let answer = (0..5).find_map(|_| exchange(&client, &d.listen, &q, Duration::from_secs(2)));
    assert_eq!(answer, Some(Message::QueryNak));

    let last = counters::settled(|| d.counters());
    let got = counters::moved(&before.1, &last);
    let n = |k: &str| got.get(k).copied().unwrap_or(0);
    for k in got.keys() {
        assert!(
            ["malformed", "malformed_by.not_dpf", "requests.query"].contains(&k.as_str()),
            "{k} moved during a flood of junk: {got:?}"
        );
    }
    assert_eq!(n("requests.query"), 1);
    assert_eq!(n("malformed"), n("malformed_by.not_dpf"));
    assert!(n("malformed") > 0 && n("malformed") <= sent, "{got:?}");
    assert_eq!(d.state(), before.0);
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn a_source_over_the_rate_limit_is_dropped_and_others_still_served() {
    let Setup { mut d, client, .. } = with_one_forward_at("2");
    let before = d.counters();
    let eager = sock("127.0.0.2");
    let sent = 20u64;
    for id in 0..sent {
        let query = Message::Query {
            proto: Proto::Tcp,
            public: "198.51.100.1:40009".parse().unwrap(),
        };
        eager
            .send_to(&dpf::encode(&query, 1000 + id).unwrap(), &d.listen)
            .unwrap();
    }
    d.daemon
        .expect_line("rate limit: 127.0.0.2 sends more than 2 requests/s");
    // The limit is per source: the client's bucket is its own.
    let q = dpf::encode(
        &Message::Query {
            proto: Proto::Tcp,
            public: "198.51.100.1:40008".parse().unwrap(),
        },
        3,
    )
    .unwrap();
    assert_eq!(
        exchange(&client, &d.listen, &q, ANSWER),
        Some(Message::QueryNak)
    );

    let got = counters::moved(&before, &counters::settled(|| d.counters()));
    let n = |k: &str| got.get(k).copied().unwrap_or(0);
    assert_eq!(got.len(), 2, "only queries and rate_limited move: {got:?}");
    // 127.0.0.2 had a burst of 2 and refills at 2/s: all but a few of its
    // 20 are dropped unless dpfd stalled for seconds while reading them.
    assert_eq!(n("requests.query") + n("rate_limited"), sent + 1, "{got:?}");
    assert!(n("rate_limited") >= sent / 2, "{got:?}");
}
