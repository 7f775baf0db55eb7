//! Proves the test bed's NAT is real, with real traffic, before any GCB/DPF test relies
//! on it: private hosts are unreachable from outside and from the other realm, and
//! traffic from inside leaves with the gateway's public address (conntrack shows the
//! translation). Also checks that a dropped test bed leaves nothing behind.
//!
//! Needs root; each test builds its own test bed, so they run in parallel. The small
//! network programs are python3 one-liners (python3 is always present) and every one
//! of them has a lifetime or timeout, so nothing here can hang.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use testbed::{require_root, Proc, TestBed};

const READY: Duration = Duration::from_secs(10);
/// Server lifetime: longer than any test needs, short enough to bound a leak.
const LIFETIME: &str = "30";

/// TCP listener: prints "LISTEN tcp IP:PORT", then "PEER IP:PORT" per connection.
const TCP_SERVER: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen(16)
print("LISTEN tcp %s:%d" % s.getsockname(), flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    s.settimeout(max(0.05, end - time.time()))
    try:
        c, a = s.accept()
    except socket.timeout:
        break
    print("PEER %s:%d" % a, flush=True)
    c.close()
"#;

/// UDP echo: prints "LISTEN udp IP:PORT", then "PEER IP:PORT" per datagram, echoed.
const UDP_SERVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
print("LISTEN udp %s:%d" % s.getsockname(), flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    s.settimeout(max(0.05, end - time.time()))
    try:
        d, a = s.recvfrom(2048)
    except socket.timeout:
        break
    print("PEER %s:%d" % a, flush=True)
    s.sendto(d, a)
"#;

/// TCP connect with a timeout: "OK LOCALIP:PORT" (exit 0) or "ERR ERRNONAME" (exit 1).
const TCP_CLIENT: &str = r#"
import socket, sys, errno
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    print("ERR %s" % (errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "TIMEOUT"), flush=True)
    sys.exit(1)
print("OK %s:%d" % s.getsockname(), flush=True)
"#;

/// UDP send and wait for the echo: "OK LOCALIP:PORT" or "ERR ERRNONAME".
const UDP_CLIENT: &str = r#"
import socket, sys, errno
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(b"ping")
    if s.recv(2048) != b"ping":
        print("ERR BADECHO", flush=True)
        sys.exit(1)
except OSError as e:
    print("ERR %s" % (errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "TIMEOUT"), flush=True)
    sys.exit(1)
print("OK %s:%d" % s.getsockname(), flush=True)
"#;

fn py(script: &str) -> Vec<String> {
    vec![
        testbed::python3().display().to_string(),
        "-c".into(),
        script.into(),
    ]
}

/// Parse "IP:PORT".
fn addr(s: &str) -> (Ipv4Addr, u16) {
    let (ip, port) = s
        .trim()
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("not IP:PORT: {s:?}"));
    (
        ip.parse().unwrap_or_else(|_| panic!("bad IP in {s:?}")),
        port.parse().unwrap_or_else(|_| panic!("bad port in {s:?}")),
    )
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Proto {
    Tcp,
    Udp,
}

/// Start a listener on `host` bound to `bind`; returns it and its port.
fn listener(bed: &TestBed, host: &str, proto: Proto, bind: &str) -> (Proc, u16) {
    let (script, ready) = match proto {
        Proto::Tcp => (TCP_SERVER, "LISTEN tcp "),
        Proto::Udp => (UDP_SERVER, "LISTEN udp "),
    };
    let mut args = py(script);
    args.extend([bind.to_string(), LIFETIME.to_string()]);
    let (p, rest) = bed
        .spawn_server(host, &args, ready, READY)
        .expect("listener start");
    (p, addr(&rest).1)
}

/// Outcome of one client attempt: Ok(local address) or Err(errno name), and how long.
fn client(
    bed: &TestBed,
    host: &str,
    proto: Proto,
    dst: Ipv4Addr,
    port: u16,
    secs: f64,
) -> (Result<String, String>, Duration) {
    let script = if proto == Proto::Tcp {
        TCP_CLIENT
    } else {
        UDP_CLIENT
    };
    let mut args = py(script);
    args.extend([dst.to_string(), port.to_string(), secs.to_string()]);
    let t = Instant::now();
    // The outer bound is generous; the script's own timeout is the one that matters.
    let o = bed
        .run(host, &args, Duration::from_secs_f64(secs + 10.0))
        .expect("client run");
    let took = t.elapsed();
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let res = if let Some(local) = out.strip_prefix("OK ") {
        assert!(o.status.success(), "client said OK but exited {}", o.status);
        Ok(local.to_string())
    } else if let Some(err) = out.strip_prefix("ERR ") {
        assert!(!o.status.success(), "client said ERR but exited 0");
        Err(err.to_string())
    } else {
        panic!(
            "client on {host}: unexpected output {out:?}, stderr {:?}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    (res, took)
}

#[test]
fn public_cannot_reach_private() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let a1 = bed.ip("a1");
    for proto in [Proto::Tcp, Proto::Udp] {
        let (srv, port) = listener(&bed, "a1", proto, "0.0.0.0");

        // From the public host straight to the private address: there is no route.
        let (r, took) = client(&bed, "pub", proto, a1, port, 2.0);
        let err = r.expect_err("public host reached a private address");
        // Failed by itself (at once, or at its own timeout), not by the
        // harness's bound; the slack is the client's start-up on a loaded machine.
        assert!(
            took < Duration::from_secs(2 + 5),
            "{proto:?} failure took {took:?}"
        );
        if proto == Proto::Tcp {
            assert!(
                matches!(err.as_str(), "ENETUNREACH" | "EHOSTUNREACH" | "TIMEOUT"),
                "{err}"
            );
        }
        // Nor through the gateway's public address: nothing is forwarded by default.
        let (r, _) = client(&bed, "pub", proto, bed.ip("ga"), port, 1.0);
        assert!(
            r.is_err(),
            "{proto:?} via GA's public address got through without a forward"
        );

        // Control: the listener works for a host of its own realm, and that host is
        // the first peer it ever saw, so nothing from public arrived earlier.
        let (r, _) = client(&bed, "a2", proto, a1, port, 2.0);
        r.expect("a2 must reach a1 directly");
        let peer = srv.wait_line("PEER ", READY).expect("control peer");
        assert_eq!(
            addr(&peer).0,
            bed.ip("a2"),
            "{proto:?}: first peer was not a2; all: {:?}",
            srv.stdout_seen()
        );
        assert_eq!(
            srv.stdout_seen()
                .iter()
                .filter(|l| l.starts_with("PEER "))
                .count(),
            1
        );
    }
}

/// Open one flow from a1 to a listener on pub; returns (a1's local address, the
/// source address pub saw).
fn masqueraded_flow(bed: &TestBed, proto: Proto) -> ((Ipv4Addr, u16), (Ipv4Addr, u16), u16) {
    let pub_ip = bed.ip("pub");
    let (srv, port) = listener(bed, "pub", proto, &pub_ip.to_string());
    let (r, _) = client(bed, "a1", proto, pub_ip, port, 3.0);
    let local = addr(&r.unwrap_or_else(|e| panic!("{proto:?} a1 -> pub failed: {e}")));
    let seen = addr(&srv.wait_line("PEER ", READY).expect("peer line"));
    (local, seen, port)
}

#[test]
fn private_to_public_is_masqueraded() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    for proto in [Proto::Tcp, Proto::Udp] {
        let (local, seen, _) = masqueraded_flow(&bed, proto);
        assert_eq!(
            local.0,
            bed.ip("a1"),
            "{proto:?}: client should bind its private address"
        );
        assert_eq!(
            seen.0,
            Ipv4Addr::new(203, 0, 113, 1),
            "{proto:?}: pub must see GA's public address"
        );
        assert_eq!(seen.0, bed.ip("ga"));
    }
    // Realm B the same way, through its own gateway.
    let (srv, port) = listener(&bed, "pub", Proto::Tcp, "203.0.113.20");
    client(&bed, "b1", Proto::Tcp, bed.ip("pub"), port, 3.0)
        .0
        .expect("b1 -> pub");
    assert_eq!(
        addr(&srv.wait_line("PEER ", READY).unwrap()).0,
        bed.ip("gb")
    );
}

#[test]
fn realm_a_cannot_reach_realm_b_directly() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let b1 = bed.ip("b1");
    let (srv, port) = listener(&bed, "b1", Proto::Tcp, "0.0.0.0");

    let (r, took) = client(&bed, "a1", Proto::Tcp, b1, port, 2.0);
    let err = r.expect_err("a1 reached b1's private address");
    assert!(took < Duration::from_secs(2 + 5), "failure took {took:?}");
    assert!(
        matches!(err.as_str(), "ENETUNREACH" | "EHOSTUNREACH" | "TIMEOUT"),
        "{err}"
    );
    let (r, _) = client(&bed, "pub", Proto::Tcp, b1, port, 1.0);
    assert!(r.is_err(), "pub reached b1's private address");

    // Control: b1's own gateway reaches it, and is the first peer b1 saw.
    client(&bed, "gb", Proto::Tcp, b1, port, 2.0)
        .0
        .expect("gb must reach b1");
    let peer = srv.wait_line("PEER ", READY).expect("control peer");
    assert_eq!(
        addr(&peer).0,
        bed.private_ip("gb"),
        "all: {:?}",
        srv.stdout_seen()
    );
    // Nothing arrived before the control, and the failed clients are gone, so
    // nothing can arrive after it: no wait for silence is needed.
    assert_eq!(
        srv.stdout_seen()
            .iter()
            .filter(|l| l.starts_with("PEER "))
            .count(),
        1,
        "{:?}",
        srv.stdout_seen()
    );
}

/// key=value tokens of one conntrack line, split into original and reply tuples.
fn ct_tuples(line: &str) -> Option<([String; 4], [String; 4])> {
    let mut orig: [Option<String>; 4] = Default::default();
    let mut reply: [Option<String>; 4] = Default::default();
    for tok in line.split_whitespace() {
        let Some((k, v)) = tok.split_once('=') else {
            continue;
        };
        let Some(i) = ["src", "dst", "sport", "dport"]
            .iter()
            .position(|x| *x == k)
        else {
            continue;
        };
        if orig[i].is_none() {
            orig[i] = Some(v.to_string());
        } else if reply[i].is_none() {
            reply[i] = Some(v.to_string());
        }
    }
    let o = [
        orig[0].take()?,
        orig[1].take()?,
        orig[2].take()?,
        orig[3].take()?,
    ];
    let r = [
        reply[0].take()?,
        reply[1].take()?,
        reply[2].take()?,
        reply[3].take()?,
    ];
    Some((o, r))
}

#[test]
fn conntrack_on_gateway_shows_translation() {
    require_root();
    // docs/testbed.md lists conntrack as a test dependency and .ci/run
    // installs it: its absence is a failure, never a skip.
    assert!(
        testbed::have_command("conntrack"),
        "conntrack is needed for this test: apt-get install conntrack (.ci/run does)"
    );
    let bed = TestBed::up().expect("test bed");
    for (proto, name) in [(Proto::Tcp, "tcp"), (Proto::Udp, "udp")] {
        let (local, seen, port) = masqueraded_flow(&bed, proto);
        let o = bed
            .run(
                "ga",
                &["conntrack", "-L", "-p", name],
                Duration::from_secs(10),
            )
            .expect("conntrack");
        assert!(
            o.status.success(),
            "conntrack -L failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        let want_orig = [
            local.0.to_string(),
            bed.ip("pub").to_string(),
            local.1.to_string(),
            port.to_string(),
        ];
        let want_reply = [
            bed.ip("pub").to_string(),
            bed.ip("ga").to_string(),
            port.to_string(),
            seen.1.to_string(),
        ];
        let found = text
            .lines()
            .filter_map(ct_tuples)
            .any(|(o, r)| o == want_orig && r == want_reply);
        assert!(
            found,
            "{name}: no conntrack entry {want_orig:?} -> reply {want_reply:?} on ga; table:\n{text}"
        );
    }
}

#[test]
fn drop_removes_namespaces_and_processes() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let prefix = bed.prefix().to_string();
    // One process through the test bed, and one stray that only `down` can find
    // (started in the namespace and left behind by its parent shell).
    let recorded = bed.spawn("a1", &["sleep", "61"]).expect("spawn sleep");
    let o = bed
        .run(
            "a2",
            &["sh", "-c", "sleep 62 >/dev/null 2>&1 </dev/null & echo $!"],
            Duration::from_secs(10),
        )
        .expect("stray");
    let stray: u32 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("stray pid");
    assert!(recorded.try_wait().is_none(), "sleep exited early");

    drop(bed);

    let o = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(
        recorded.try_wait().is_some(),
        "recorded child still running after drop"
    );
    // The stray is gone, or at worst a zombie waiting for its new parent; its PID
    // may in theory have been reused, so compare the command line too.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cmdline = std::fs::read(format!("/proc/{stray}/cmdline")).unwrap_or_default();
        if cmdline != b"sleep\x0062\x00" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stray process {stray} still running after drop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
