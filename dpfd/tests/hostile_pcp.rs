//! Hostile input on dpfd's NAT-PMP/PCP port, on loopback inside a private
//! network namespace: junk of every class, requests from outside the
//! private network, answers sent to the server, every kind of bad PCP
//! request, a flood, and a source over the rate limit. Each is dropped or
//! answered as the RFCs say and counted under its own counter and no other;
//! the forwards and the nft maps stay exactly as they were, and a valid
//! request is answered afterwards.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use daemon_kit::testing::counters;
use proto::{natpmp, pcp, Proto};
use serde_json::Value;
use support::*;

const PRIVATE_NET: &str = "127.0.0.0/30";
const WAIT: Duration = Duration::from_secs(10);

struct Dpfd {
    _daemon: Running,
    listen: String,
    pcp: String,
    dir: std::path::PathBuf,
}

impl Dpfd {
    fn start(rate_limit: &str) -> Dpfd {
        let dir = temp_dir();
        let mirror = dir.join("mirror");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = loopback_args(&listen, mirror.to_str().unwrap());
        args.extend(["--private-net", PRIVATE_NET, "--rate-limit", rate_limit]);
        let mut daemon = start(&args);
        daemon.expect_line("started:");
        Dpfd {
            _daemon: daemon,
            listen,
            pcp: "127.0.0.1:5351".into(),
            dir,
        }
    }

    fn status(&self) -> Value {
        let (code, out, err) = run(&["status", "--listen", &self.listen, "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// The standard socket's counters, flattened to `a.b` names, without
    /// `received` (which counts everything).
    fn counters(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        flatten("", &self.status()["counters"]["standard"], &mut out);
        out.remove("received");
        out
    }

    fn state(&self) -> String {
        // What a forward is, without its age and remaining lease.
        let forwards: Vec<String> = self.status()["forwards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{} {} -> {} {}", f["proto"], f["public"], f["local"], f["via"]))
            .collect();
        let forwards = forwards.join("\n");
        let mut c = Command::new("nft");
        c.args(["list", "table", "ip", "dpf"]);
        let (code, maps, err) = run_cmd(c);
        assert_eq!(code, 0, "{err}");
        format!("{forwards}\n{maps}")
    }

    fn expect_moved(&self, before: &BTreeMap<String, u64>, want: &[(&str, u64)]) {
        counters::expect_moved(before, want, WAIT, || self.counters());
    }
}

impl Drop for Dpfd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, u64>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&name, v, out);
            }
        }
        Value::Number(n) => {
            out.insert(prefix.to_string(), n.as_u64().unwrap());
        }
        _ => {}
    }
}

fn sock(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Every answer waiting on `s`. Called after the counters moved: dpfd
/// sends its answers in the turn that counted the request, before it
/// serves the status that showed the counters, so nothing is still coming.
fn answers(s: &UdpSocket) -> Vec<Vec<u8>> {
    s.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = s.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    s.set_nonblocking(false).unwrap();
    out
}

fn map_request(client: Ipv4Addr, port: u16) -> Vec<u8> {
    pcp::encode_request(&pcp::Request {
        opcode: pcp::OP_MAP,
        lifetime: 600,
        client: pcp::mapped(client),
        map: Some(pcp::MapData {
            nonce: [9; 12],
            protocol: 6,
            internal_port: port,
            external_port: 0,
            external_ip: pcp::mapped(Ipv4Addr::UNSPECIFIED),
        }),
        options: vec![],
    })
}

/// A dpfd with one NAT-PMP mapping of 127.0.0.1:7000 and its client.
fn setup(rate_limit: &str) -> (Dpfd, UdpSocket) {
    root_in_private_netns();
    let d = Dpfd::start(rate_limit);
    let client = sock("127.0.0.1");
    let req = natpmp::encode_request(&natpmp::Request::Map {
        proto: Proto::Tcp,
        internal_port: 7000,
        suggested_port: 0,
        lifetime: 3600,
    });
    client.send_to(&req, &d.pcp).unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).expect("an answer");
    let r = natpmp::decode_response(&buf[..n]).unwrap();
    assert_eq!(r.result, natpmp::ResultCode::Success);
    (d, client)
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn junk_and_bad_requests_change_nothing() {
    let (d, client) = setup("1000");
    let before = (d.state(), d.counters());

    // Dropped without an answer, by class.
    let mut pcp_response = map_request(Ipv4Addr::LOCALHOST, 7001);
    pcp_response[1] |= pcp::RESPONSE_BIT;
    let junk: [&[u8]; 7] = [
        &[0],
        &[0, 0x80],
        &[0, 0, 0],
        &[0, 2, 0, 0, 0x1f],
        &[2],
        &pcp_response,
        &[0, 0x82, 0, 0, 0, 0, 0, 1, 0x1f, 0x90, 0x9c, 0x40, 0, 0, 0, 9],
    ];
    for bytes in junk {
        client.send_to(bytes, &d.pcp).unwrap();
    }
    d.expect_moved(
        &before.1,
        &[
            ("malformed", 7),
            ("malformed_by.truncated", 3),
            ("malformed_by.oversize", 1),
            ("malformed_by.invalid", 3),
        ],
    );
    assert_eq!(answers(&client), Vec::<Vec<u8>>::new(), "junk is not answered");

    // Answered with an error that copies the request, and counted.
    let counted = d.counters();
    let mut v3 = map_request(Ipv4Addr::LOCALHOST, 7001);
    v3[0] = 3;
    let mut peer = map_request(Ipv4Addr::LOCALHOST, 7001);
    peer[1] = pcp::OP_PEER;
    let mut option = map_request(Ipv4Addr::LOCALHOST, 7001);
    option.extend([0x05, 0, 0, 0]);
    let mut third = map_request(Ipv4Addr::LOCALHOST, 7001);
    third.extend([1, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 2]);
    let bad: Vec<(Vec<u8>, pcp::ResultCode)> = vec![
        (v3, pcp::ResultCode::UnsuppVersion),
        (vec![2; 25], pcp::ResultCode::MalformedRequest),
        (vec![2; 2000], pcp::ResultCode::MalformedRequest),
        (peer, pcp::ResultCode::UnsuppOpcode),
        (option, pcp::ResultCode::UnsuppOption),
        (third, pcp::ResultCode::NotAuthorized),
        (map_request(Ipv4Addr::new(127, 0, 0, 2), 7001), pcp::ResultCode::AddressMismatch),
    ];
    for (bytes, _) in &bad {
        client.send_to(bytes, &d.pcp).unwrap();
    }
    client.send_to(&[0, 9], &d.pcp).unwrap();
    d.expect_moved(
        &counted,
        &[
            ("refused.pcp.UNSUPP_VERSION", 1),
            ("refused.pcp.MALFORMED_REQUEST", 2),
            ("refused.pcp.UNSUPP_OPCODE", 1),
            ("refused.pcp.UNSUPP_OPTION", 1),
            ("refused.pcp.NOT_AUTHORIZED", 1),
            ("refused.pcp.ADDRESS_MISMATCH", 1),
            ("refused.natpmp.unsupported_opcode", 1),
            ("requests.pcp_map", 2),
        ],
    );
    let got = answers(&client);
    assert_eq!(got.len(), bad.len() + 1);
    for (answer, (request, code)) in got.iter().zip(&bad) {
        let r = pcp::decode_response(answer).expect("a PCP answer");
        assert_eq!(r.result, *code);
        assert!(answer.len() <= pcp::MAX_LEN && answer.len() >= pcp::HEADER_LEN);
        let n = answer.len().min(request.len());
        assert_eq!(answer[pcp::HEADER_LEN..n], request[pcp::HEADER_LEN..n], "a copy of the request");
    }
    let last = natpmp::decode_response(&got[bad.len()]).unwrap();
    assert_eq!(last.result, natpmp::ResultCode::UnsupportedOpcode);

    // From outside the private network: dropped, counted, unanswered.
    let counted = d.counters();
    let outsider = sock("127.0.0.9");
    outsider.send_to(&map_request(Ipv4Addr::new(127, 0, 0, 9), 7001), &d.pcp).unwrap();
    d.expect_moved(&counted, &[("foreign", 1)]);
    assert!(answers(&outsider).is_empty());

    // A flood of junk, in waves a socket buffer holds, then a valid
    // request is still answered.
    for wave in 0..5u8 {
        let counted = d.counters();
        for i in 0..100u8 {
            client.send_to(&[0, 0x80, wave, i], &d.pcp).unwrap();
        }
        d.expect_moved(&counted, &[("malformed", 100), ("malformed_by.invalid", 100)]);
    }
    assert_eq!(d.state(), before.0, "nothing hostile changed the forwards or the kernel");
    client.send_to(&natpmp::encode_request(&natpmp::Request::PublicAddress), &d.pcp).unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).expect("an answer");
    let r = natpmp::decode_response(&buf[..n]).unwrap();
    assert_eq!(r.body, natpmp::Body::PublicAddress(PUBLIC.parse().unwrap()));
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn a_source_over_the_rate_limit_is_dropped_and_counted() {
    let (d, client) = setup("5");
    let before = d.counters();
    let ask = natpmp::encode_request(&natpmp::Request::PublicAddress);
    for _ in 0..40 {
        client.send_to(&ask, &d.pcp).unwrap();
    }
    wait_for_total(&d, &before, 40);
    let after = d.counters();
    let limited = after["rate_limited"] - before["rate_limited"];
    let answered = after["requests.natpmp_address"] - before["requests.natpmp_address"];
    assert_eq!(limited + answered, 40);
    assert!(limited >= 30, "at most a burst of 5 and the refill pass: {limited} limited");
    assert_eq!(answers(&client).len() as u64, answered);
}

/// Waits (bounded) until `n` requests since `before` were either answered
/// or rate limited.
fn wait_for_total(d: &Dpfd, before: &BTreeMap<String, u64>, n: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = d.counters();
        let seen = now["rate_limited"] + now["requests.natpmp_address"]
            - before["rate_limited"]
            - before["requests.natpmp_address"];
        if seen >= n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "only {seen} of {n} requests counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}
