//! The GCB client end to end against a scripted broker (`support/mock_broker.rs`)
//! in the NAT test bed: every brokering path of TCP, with the paper's C echo
//! programs under `LD_PRELOAD=libgcb.so`. This checks the shim's side of the
//! protocol on its own; `testbed/tests/gcb_tcp.rs` runs the same scenarios with
//! the real `gcb-broker`.
//!
//! Needs root (network namespaces), `cargo build --release -p shim` and
//! `make -C c-tests`; so every test is `#[ignore]`d with that reason, and
//! `scripts/test` runs them as root (by hand: `-- --include-ignored`).

mod support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::mock_broker::MockBroker;
use testbed::{release_bin, require_root, workspace_root, Proc, TestBed};

const BROKER: &str = "203.0.113.10";
const STARTUP: Duration = Duration::from_secs(15);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const MODES: [&str; 6] = ["blocking", "select", "poll", "epoll", "epoll-et", "nonblock"];

fn ctest(name: &str) -> PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests`", p.display());
    p
}

fn shim() -> PathBuf {
    let p = release_bin("libgcb.so");
    assert!(p.exists(), "{} is missing: run `cargo build --release -p shim`", p.display());
    p
}

fn python_script(name: &str) -> PathBuf {
    workspace_root().join("shim/tests/py").join(name)
}

struct Bed {
    bed: TestBed,
    broker: MockBroker,
}

impl Bed {
    fn up() -> Bed {
        require_root();
        let bed = TestBed::up().expect("test bed");
        let broker = MockBroker::start(&bed.netns("broker"), BROKER.parse().unwrap());
        Bed { bed, broker }
    }

    /// A C test program on `host`, under the shim in GCB mode when `gcb`.
    fn cmd(&self, host: &str, bin: &str, args: &[&str], gcb: bool) -> Command {
        self.program(host, ctest(bin), args, gcb)
    }

    fn program(&self, host: &str, path: PathBuf, args: &[&str], gcb: bool) -> Command {
        let mut c = self.bed.cmd(host, path);
        c.args(args);
        for v in ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "DPF_INAGENT", "GCB_LOG_FILE", "GCB_HEARTBEAT_S"] {
            c.env_remove(v);
        }
        if gcb {
            c.env("LD_PRELOAD", shim()).env("GCB_INAGENT", BROKER).env("GCB_LOG", "debug").env("GCB_HEARTBEAT_S", "2");
        }
        c
    }

    /// Starts an echo server; returns it and the address it advertised.
    fn server(&self, host: &str, args: &[&str], gcb: bool) -> (Proc, String) {
        let p = self.bed.spawn_cmd(self.cmd(host, "echo-server", args, gcb)).expect("echo-server");
        match p.wait_line("LISTEN tcp ", STARTUP) {
            Ok(addr) => (p, addr),
            Err(e) => panic!("echo-server {args:?} on {host}: {e}\nstderr:\n{}", p.stderr_text()),
        }
    }

    /// Runs an echo client to completion, asserts every byte came back, and
    /// returns the peer addresses it reported (`getpeername`).
    fn client(&self, host: &str, dest: &str, extra: &[&str], gcb: bool, server: &Proc) -> Vec<String> {
        let mut args = vec!["--proto", "tcp", "--connect", dest, "--bytes", "20000", "--rounds", "2"];
        args.extend_from_slice(extra);
        let out = testbed::run_with_timeout(self.cmd(host, "echo-client", &args, gcb), CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("client on {host}: {e}\nserver stderr:\n{}", server.stderr_text()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "echo-client {args:?} on {host} failed ({}):\n{stdout}\n{stderr}\nserver stderr:\n{}\nbroker: {:#?}",
            out.status,
            server.stderr_text(),
            self.broker.log()
        );
        let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).expect("SUMMARY line");
        let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap().to_string();
        assert_eq!(field("ok"), field("runs"), "{summary}");
        stdout.lines().filter_map(|l| l.split_once(" PEER ").map(|(_, p)| p.to_string())).collect()
    }

    /// Runs a client whose connections the server accepts `n` of, and checks the
    /// peer address the server reports for each, and the one the client reports.
    #[allow(clippy::too_many_arguments)]
    fn check(&self, host: &str, dest: &str, extra: &[&str], gcb: bool, server: &Proc, n: usize, peer: [u8; 4]) {
        let client_peers = self.client(host, dest, extra, gcb, server);
        assert!(client_peers.iter().all(|p| p == dest), "the client's getpeername must be {dest}: {client_peers:?}");
        let got = self.peers(server, n);
        assert!(got.iter().all(|p| *p == Ipv4Addr::from(peer)), "{host} {extra:?}: server saw {got:?}, want {peer:?}");
    }

    fn peers(&self, server: &Proc, n: usize) -> Vec<Ipv4Addr> {
        (0..n)
            .map(|_| {
                let rest = server.wait_line("ACCEPT PEER ", Duration::from_secs(5)).expect("ACCEPT PEER");
                rest.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()).expect("peer ip")
            })
            .collect()
    }
}

/// Waits until `p` has written `needle` to stderr (read by another thread, so it
/// can lag behind stdout); panics after [`STARTUP`].
fn wait_stderr(p: &Proc, needle: &str) {
    if let Err(e) = p.wait_stderr(needle, STARTUP) {
        panic!("{e}");
    }
}

const PUB: [u8; 4] = [203, 0, 113, 20];
const GB: [u8; 4] = [203, 0, 113, 2];
const A2: [u8; 4] = [192, 0, 2, 11];

/// The four paths to a private GCB listener, each with blocking and
/// non-blocking clients, with the peer the server must report.
fn four_paths(b: &Bed, server: &Proc, listen: &str) {
    b.check("pub", listen, &[], false, server, 1, PUB); // (a) plain: relay through the proxy socket
    b.check("pub", listen, &["--nonblock"], true, server, 1, PUB); // (b) GCB, public: reversal
    b.check("a2", listen, &["--nonblock", "--runs", "2"], true, server, 2, A2); // (c) same realm: not via the broker
    b.check("b1", listen, &["--nonblock"], true, server, 1, GB); // (d) other realm: relay
    b.check("pub", listen, &["--parallel", "3", "--runs", "2"], true, server, 6, PUB); // (b), threads
    b.check("b1", listen, &["--parallel", "2"], true, server, 2, GB); // (d), threads
    b.check("pub", listen, &["--parallel", "2", "--nonblock"], false, server, 2, PUB); // (a), threads
}

#[test]
#[ignore = "needs root: a NAT test bed of network namespaces (scripts/test runs it)"]
fn every_server_mode_and_path() {
    let b = Bed::up();
    for (i, mode) in MODES.iter().enumerate() {
        let port = (7000 + i).to_string();
        let (server, listen) = b.server("a1", &["--proto", "tcp", "--port", &port, "--mode", mode], true);
        assert!(listen.starts_with("203.0.113.10:"), "advertised {listen}");
        wait_stderr(&server, &format!("gcb: registered tcp 192.0.2.10:{port} as {listen}\n"));
        four_paths(&b, &server, &listen);
        for path in ["reversal", "same-realm", "relay"] {
            let want = format!("connect {listen} from");
            assert!(b.broker.log().iter().any(|l| l.starts_with(&want) && l.ends_with(path)), "no {path}: {:#?}", b.broker.log());
        }
        drop(server);
    }
}

#[test]
#[ignore = "needs root: a NAT test bed of network namespaces (scripts/test runs it)"]
fn process_models_fork_prefork_exec() {
    let b = Bed::up();
    let models: [&[&str]; 4] = [&["--fork"], &["--prefork", "3"], &["--prefork", "3", "--mode", "epoll"], &["--exec"]];
    for (i, extra) in models.iter().enumerate() {
        let port = (7100 + i).to_string();
        let mut args = vec!["--proto", "tcp", "--port", &port];
        args.extend_from_slice(extra);
        let (server, listen) = b.server("a1", &args, true);
        if extra[0] == "--exec" {
            let inherited = server.wait_line("INHERITED tcp ", STARTUP).expect("INHERITED");
            assert_eq!(inherited, listen, "the exec'd image reports the proxy address too");
        }
        four_paths(&b, &server, &listen);
        drop(server);
    }
}

#[test]
#[ignore = "needs root: a NAT test bed of network namespaces (scripts/test runs it)"]
fn connector_fallback_and_public_listener() {
    let b = Bed::up();
    // (e) GCB client on a1 to a plain server on pub: no broker there, direct.
    let (plain, listen) = b.server("pub", &["--proto", "tcp", "--port", "7200", "--mode", "poll"], false);
    assert_eq!(listen, "0.0.0.0:7200");
    let dest = "203.0.113.20:7200";
    b.check("a1", dest, &["--runs", "3"], true, &plain, 3, [203, 0, 113, 1]);
    b.check("a1", dest, &["--nonblock"], true, &plain, 1, [203, 0, 113, 1]);
    assert_eq!(b.broker.log().iter().filter(|l| l.contains("203.0.113.20:7200")).count(), 0);
    // (f) GCB listener on pub, GCB client on b1: the broker says direct.
    let (server, listen) = b.server("pub", &["--proto", "tcp", "--port", "7201", "--mode", "epoll"], true);
    assert!(listen.starts_with("203.0.113.10:"), "{listen}");
    b.check("b1", &listen, &["--nonblock"], true, &server, 1, GB);
    b.check("b1", &listen, &[], true, &server, 1, GB);
    assert!(b.broker.log().iter().any(|l| l.starts_with(&format!("connect {listen}")) && l.ends_with("direct")));
}

/// A Python driver under the shim; steps are released by writing lines to stdin.
fn driver(b: &Bed, host: &str, args: &[&str]) -> (Proc, std::process::ChildStdin) {
    let script = python_script("gcb_lifecycle.py");
    let mut all = vec![script.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut c = b.program(host, testbed::python3().to_path_buf(), &all, true);
    c.stdin(std::process::Stdio::piped());
    let mut p = b.bed.spawn_cmd(c).expect("python driver");
    let stdin = p.take_stdin().expect("driver stdin");
    (p, stdin)
}

fn next(p: &Proc, prefix: &str) -> String {
    p.wait_line(prefix, STARTUP).unwrap_or_else(|e| panic!("driver: {e}\nstderr:\n{}", p.stderr_text()))
}

fn go(stdin: &mut std::process::ChildStdin) {
    use std::io::Write;
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
}

/// Waits until the broker's log has a line starting with `prefix`.
fn wait_broker(b: &Bed, prefix: &str, within: Duration) {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        if b.broker.count(prefix) > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the broker never logged {prefix:?}: {:#?}", b.broker.log());
}

/// Waits until the broker has logged, after its first `from` lines, a line
/// starting with `prefix`; returns that line. A line logged after an event
/// shows that everything the broker received before it was handled, so a
/// test can then check that something did *not* happen.
fn wait_broker_after(b: &Bed, from: usize, prefix: &str, within: Duration) -> String {
    let end = std::time::Instant::now() + within;
    loop {
        if let Some(line) = b.broker.log().iter().skip(from).find(|l| l.starts_with(prefix)) {
            return line.clone();
        }
        assert!(std::time::Instant::now() < end, "the broker logged no {prefix:?} after line {from}: {:#?}", b.broker.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `proxy` has `n` holders at the broker.
fn wait_holders(b: &Bed, proxy: &str, n: usize, within: Duration) {
    let end = std::time::Instant::now() + within;
    while b.broker.holders(proxy) != n {
        assert!(std::time::Instant::now() < end, "{proxy} never had {n} holders: {:#?}", b.broker.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A listener's last close unregisters it. After `fork` it is shared: the
/// child joins the registration from a management socket of its own, and no
/// close, the child's or the parent's, unregisters it (the broker retires a
/// holder whose socket is gone); above all, the child's close is never taken
/// for the parent's.
#[test]
#[ignore = "needs root: a NAT test bed of network namespaces (scripts/test runs it)"]
fn unregister_on_last_close_but_not_when_shared() {
    let b = Bed::up();
    let (p, mut stdin) = driver(&b, "a1", &["close", "7300"]);
    let proxy = next(&p, "PROXY ");
    assert!(proxy.starts_with("203.0.113.10:"), "{proxy}");
    go(&mut stdin);
    assert_eq!(next(&p, "CLOSED-ORIGINAL "), proxy, "the dup names the same listener");
    go(&mut stdin);
    next(&p, "CLOSED-LAST");
    wait_broker(&b, &format!("unregister {proxy} from"), Duration::from_secs(2));
    wait_holders(&b, &proxy, 0, Duration::from_secs(2));
    go(&mut stdin);
    let shared = next(&p, "PROXY ");
    next(&p, "CHILD-CLOSED");
    // The child has exited, so whatever it sent is on its way; the parent's
    // next heartbeat takes the same path through GA after it, and the mock
    // broker handles datagrams in order: once that heartbeat is logged, an
    // Unregister from the child would have been too.
    wait_broker_after(&b, b.broker.log().len(), "heartbeat from 203.0.113.1:", STARTUP);
    assert!(b.broker.holders(&shared) >= 1, "the parent still holds it: {:#?}", b.broker.log());
    go(&mut stdin);
    next(&p, "PARENT-CLOSED");
    go(&mut stdin);
    next(&p, "done");
    // The same for the parent's close and exit: once the driver is gone, a
    // registration from a1 comes after anything it sent.
    testbed::wait_for(STARTUP, "the driver exits", || p.try_wait());
    let from = b.broker.log().len();
    let (_marker, _) = b.server("a1", &["--proto", "tcp", "--port", "7309", "--mode", "poll"], true);
    wait_broker_after(&b, from, "register 192.0.2.10:7309 as ", STARTUP);
    assert_eq!(b.broker.count(&format!("unregister {shared}")), 0, "a shared listener is left to the broker: {:#?}", b.broker.log());
    assert_eq!(b.broker.count("unregister "), 1);
}

#[test]
#[ignore = "needs root: a NAT test bed of network namespaces (scripts/test runs it)"]
fn reversed_connect_keeps_epoll_registration() {
    let b = Bed::up();
    let (server, listen) = b.server("a1", &["--proto", "tcp", "--port", "7310", "--mode", "epoll"], true);
    let (p, _stdin) = driver(&b, "pub", &["epoll-connect", &listen]);
    assert_eq!(next(&p, "CONNECT "), libc::EINPROGRESS.to_string(), "a non-blocking brokered connect is under way at once");
    assert_eq!(next(&p, "SO_ERROR "), "0");
    assert_eq!(next(&p, "PEER "), listen);
    assert_eq!(next(&p, "ECHO "), "hello through the broker");
    next(&p, "done");
    assert!(b.broker.count(&format!("connect {listen} from 203.0.113.20")) == 1);
    assert_eq!(b.peers(&server, 1), vec![Ipv4Addr::from(PUB)]);
}

#[test]
#[ignore = "needs root: a NAT test bed of network namespaces (scripts/test runs it)"]
fn heartbeats_and_reregistration_after_a_broker_restart() {
    let b = Bed::up();
    let (server, listen) = b.server("a1", &["--proto", "tcp", "--port", "7320", "--mode", "epoll"], true);
    // Heartbeats every 2 s from the server idle in epoll_wait.
    wait_broker(&b, "heartbeat from 203.0.113.1", STARTUP);
    let from = b.broker.log().len();
    b.broker.forget_registrations();
    let port = listen.rsplit_once(':').unwrap().1;
    // The next heartbeat is answered ReregisterRequest, and the listener
    // registers again asking for its old port, which it gets.
    let again = wait_broker_after(&b, from, &format!("register 192.0.2.10:7320 as {listen} from 203.0.113.1"), STARTUP);
    assert!(again.ends_with(&format!("desired Some({port})")), "{again}");
    b.check("pub", &listen, &[], false, &server, 1, PUB);
}

#[test]
#[ignore = "needs root: a NAT test bed of network namespaces (scripts/test runs it)"]
fn a_broker_that_comes_up_after_listen() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let mut c = bed.cmd("a1", ctest("echo-server"));
    c.args(["--proto", "tcp", "--port", "7330", "--mode", "poll"]);
    c.env("LD_PRELOAD", shim()).env("GCB_INAGENT", BROKER).env("GCB_LOG", "info").env("GCB_HEARTBEAT_S", "1");
    let server = bed.spawn_cmd(c).expect("echo-server");
    assert_eq!(server.wait_line("LISTEN tcp ", STARTUP).unwrap(), "0.0.0.0:7330", "unregistered: the real address");
    wait_stderr(&server, "gcb: warning: the broker 203.0.113.10:65432 is unreachable (connection refused)");
    let broker = MockBroker::start(&bed.netns("broker"), BROKER.parse().unwrap());
    let b = Bed { bed, broker };
    wait_stderr(&server, "gcb: registered tcp 192.0.2.10:7330 as 203.0.113.10:");
    let line = server.stderr_text().lines().find(|l| l.starts_with("gcb: registered")).unwrap().to_string();
    let proxy = line.rsplit_once(" as ").unwrap().1.to_string();
    let warnings = server.stderr_text().lines().filter(|l| l.contains("warning")).count();
    assert_eq!(warnings, 1, "one line for the unreachable broker: {}", server.stderr_text());
    b.check("pub", &proxy, &[], false, &server, 1, PUB);
}

#[test]
#[ignore = "needs root: a NAT test bed of network namespaces (scripts/test runs it)"]
fn threads_accepting_on_a_high_fd() {
    let b = Bed::up();
    let (p, _stdin) = driver(&b, "a1", &["threads", "7340", "6"]);
    let proxy = next(&p, "PROXY ");
    assert!(proxy.starts_with("203.0.113.10:"), "{proxy}");
    let clients = [
        ("pub", false, PUB),
        ("pub", true, PUB),
        ("a2", true, A2),
        ("b1", true, GB),
    ];
    let handles: Vec<_> = clients
        .iter()
        .map(|&(host, gcb, _)| {
            let args = ["--proto", "tcp", "--connect", &proxy, "--parallel", "4", "--runs", "3", "--bytes", "5000"];
            let mut c = b.cmd(host, "echo-client", &args, gcb);
            c.stdout(std::process::Stdio::piped());
            std::thread::spawn(move || testbed::run_with_timeout(c, CLIENT_TIMEOUT))
        })
        .collect();
    let mut client_logs = String::new();
    for (h, (host, _, _)) in handles.into_iter().zip(clients) {
        let out = h.join().unwrap().unwrap_or_else(|e| panic!("{host}: {e}"));
        client_logs += &format!("--- {host}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "{host}: {}\n{}\ndriver: {}\nbroker: {:#?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            p.stderr_text(),
            b.broker.log()
        );
    }
    let mut seen: Vec<Ipv4Addr> = (0..48).map(|_| {
        let rest = next(&p, "ACCEPT PEER ");
        rest.rsplit_once(':').unwrap().0.parse().unwrap()
    }).collect();
    seen.sort();
    let count = |ip: [u8; 4]| seen.iter().filter(|p| **p == Ipv4Addr::from(ip)).count();
    assert_eq!((count(PUB), count(A2), count(GB)), (24, 12, 12), "{seen:?}\nbroker: {:#?}\nclients: {client_logs}", b.broker.log());
}

#[test]
#[ignore = "needs root: a NAT test bed of network namespaces (scripts/test runs it)"]
fn a_server_blocked_in_read_keeps_heartbeating() {
    let b = Bed::up();
    let script = python_script("gcb_lifecycle.py");
    let mut c = b.program("a1", testbed::python3().to_path_buf(), &[script.to_str().unwrap(), "blocked-read", "7350"], true);
    c.env("GCB_HEARTBEAT_S", "1").stdin(std::process::Stdio::piped());
    let mut p = b.bed.spawn_cmd(c).expect("python driver");
    let mut stdin = p.take_stdin().expect("driver stdin");
    let proxy = next(&p, "PROXY ");
    assert!(proxy.starts_with("203.0.113.10:"), "{proxy}");
    next(&p, "READING");
    // Three more heartbeats (1 s apart) while the process is blocked in read()
    // with no data: it stays there until the test says go. Counted, not timed,
    // so a slow machine only makes the wait longer.
    let heartbeats = || b.broker.count("heartbeat from 203.0.113.1:");
    let before = heartbeats();
    testbed::wait_for(Duration::from_secs(30), "three heartbeats during read()", || (heartbeats() >= before + 3).then_some(()));
    assert!(p.stdout_seen().iter().all(|l| !l.starts_with("READ ")), "the read returned before any data was sent");
    go(&mut stdin);
    assert_eq!(next(&p, "READ "), "late data");
    let secs = |prefix: &str| -> f64 { next(&p, prefix).parse().unwrap() };
    // Anything the shim could wait for inside a call takes a second or more
    // (a heartbeat interval, the 1.2 s SO_RCVTIMEO); below that is the
    // scheduler, however loaded the machine.
    let nonblock = secs("NONBLOCK ");
    assert!(nonblock < 0.9, "a non-blocking read took {nonblock} s");
    // SO_RCVTIMEO is 1.2 s: never shorter, and not restarted (which would
    // take 2.4 s or more); the rest is slack for a loaded machine.
    for what in ["RCVTIMEO-RECV ", "RCVTIMEO-READ "] {
        let t = secs(what);
        assert!((1.15..2.3).contains(&t), "{what}after {t} s, want 1.2 s");
    }
    assert_eq!(next(&p, "EOF "), "0");
    next(&p, "done");
}
