//! GCB for TCP end to end in the NAT test bed: `gcb-broker` on the broker host,
//! the paper's C echo programs under `scripts/gcb-run` (issue 3's scenarios).
//!
//! The server runs on a1, in realm A behind GA, under the shim; the address it
//! advertises (`LISTEN`, its `getsockname`) must be the proxy address. Clients:
//!
//! * (a) a plain client on pub: the broker relays from the proxy socket;
//! * (b) a GCB client on pub: reversal, a1 dials pub;
//! * (c) a GCB client on a2: same realm, a direct connection to 192.0.2.10
//!   (the server sees 192.0.2.11, so not via the broker);
//! * (d) a GCB client on b1: relay through the broker's rendezvous;
//! * (e) a GCB client on a1 to a plain server on pub: no broker there, direct;
//! * (f) a GCB listener on pub and a GCB client on b1: the broker says direct.
//!
//! Every server mode, blocking and non-blocking clients, threaded clients, and
//! the fork, pre-fork and exec process models; and a broker restart, after which
//! the listener registers again with its old proxy port. Each client must exit 0 with
//! `SUMMARY ok=runs`; the peer address the server reports is checked wherever it
//! is defined, and so is the client's `getpeername` (the proxy address).
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and
//! `make -C c-tests`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use testbed::{release_bin, require_root, workspace_root, Proc, TestBed};

const BROKER: &str = "203.0.113.10";
const MODES: [&str; 6] = ["blocking", "select", "poll", "epoll", "epoll-et", "nonblock"];
const STARTUP: Duration = Duration::from_secs(15);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

const PUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const GA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const GB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const A2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

fn ctest(name: &str) -> PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests` (scripts/test does)", p.display());
    p
}

fn built(name: &str) -> PathBuf {
    let p = release_bin(name);
    assert!(p.exists(), "{} is missing: run `cargo build --release`", p.display());
    p
}

/// The shim's variables, cleared so the caller's environment cannot leak in.
const SHIM_VARS: [&str; 8] =
    ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "DPF_INAGENT", "GCB_LOG", "GCB_LOG_FILE", "GCB_HEARTBEAT_S", "LD_PRELOAD"];

struct Gcb {
    bed: TestBed,
    broker: Proc,
}

fn start_broker(bed: &TestBed) -> Proc {
    bed.spawn(
                "broker",
                &[
                    built("gcb-broker").to_str().unwrap(),
                    "--listen",
                    "203.0.113.10:65432",
                    "--public-ip",
                    BROKER,
                    "--port-range",
                    "20000-20999",
                ],
    )
    .expect("gcb-broker")
}

impl Gcb {
    fn up() -> Gcb {
        require_root();
        let bed = TestBed::up().expect("test bed");
        let broker = start_broker(&bed);
        let g = Gcb { bed, broker };
        g.wait_for_command_port();
        g
    }

    /// Kills the broker with SIGKILL and starts a new one, which knows nothing
    /// (paper 4.2.2).
    fn restart_broker(&mut self) {
        self.broker.kill();
        self.broker = start_broker(&self.bed);
        self.wait_for_command_port();
    }

    /// Bounded wait until the broker's UDP command port is bound.
    fn wait_for_command_port(&self) {
        let end = Instant::now() + STARTUP;
        while Instant::now() < end {
            let out = self.bed.run("broker", &["ss", "-Hlun", "sport = :65432"], Duration::from_secs(5)).expect("ss");
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            if let Some(st) = self.broker.try_wait() {
                panic!("gcb-broker exited ({st}): {}", self.broker.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gcb-broker did not bind its command port: {}", self.broker.stderr_text());
    }

    /// A C test program on `host`: under `scripts/gcb-run --broker` when `gcb`.
    fn cmd(&self, host: &str, bin: &str, args: &[&str], gcb: bool) -> Command {
        let mut c = if gcb {
            let mut c = self.bed.cmd(host, workspace_root().join("scripts/gcb-run"));
            c.args(["--broker", BROKER, "--log", "info", "--heartbeat", "2", "--lib"]).arg(built("libgcb.so")).arg("--");
            c.arg(ctest(bin));
            c
        } else {
            self.bed.cmd(host, ctest(bin))
        };
        for v in SHIM_VARS {
            c.env_remove(v);
        }
        c.args(args);
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

    /// A GCB server on a1 whose registration must have succeeded.
    fn registered_server(&self, host: &str, port: u16, args: &[&str]) -> (Proc, String) {
        let p = port.to_string();
        let mut all = vec!["--proto", "tcp", "--port", &p];
        all.extend_from_slice(args);
        let (server, listen) = self.server(host, &all, true);
        assert!(
            listen.starts_with("203.0.113.10:"),
            "the server advertised {listen}, not a proxy address on the broker: is the broker's GCB \
             behaviour built?\nserver stderr:\n{}\nbroker stderr:\n{}",
            server.stderr_text(),
            self.broker.stderr_text()
        );
        let local = self.bed.ip(host);
        let line = format!("gcb: registered tcp {local}:{port} as {listen}\n");
        server.wait_stderr(&line, STARTUP).unwrap_or_else(|e| panic!("{e}"));
        (server, listen)
    }

    /// Runs an echo client; asserts every byte came back; returns the peers it
    /// reported (`PEER` of its `LOCAL ... PEER ...` lines).
    fn client(&self, host: &str, dest: &str, extra: &[&str], gcb: bool, server: &Proc) -> Vec<String> {
        let mut args = vec!["--proto", "tcp", "--connect", dest, "--bytes", "20000", "--rounds", "2"];
        args.extend_from_slice(extra);
        let out = testbed::run_with_timeout(self.cmd(host, "echo-client", &args, gcb), CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("client on {host}: {e}\nserver stderr:\n{}", server.stderr_text()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "echo-client {args:?} on {host} failed ({}):\n{stdout}\n{}\nserver stderr:\n{}\nbroker stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            server.stderr_text(),
            self.broker.stderr_text()
        );
        let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).expect("SUMMARY line");
        let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
        assert_eq!(field("ok"), field("runs"), "{summary}");
        stdout.lines().filter_map(|l| l.split_once(" PEER ").map(|(_, p)| p.to_string())).collect()
    }

    /// A client whose `n` connections the server accepts from `peer`; the client
    /// must report `dest` as its peer.
    #[allow(clippy::too_many_arguments)]
    fn check(&self, host: &str, dest: &str, extra: &[&str], gcb: bool, server: &Proc, n: usize, peer: Ipv4Addr) {
        let reported = self.client(host, dest, extra, gcb, server);
        assert!(reported.iter().all(|p| p == dest), "{host} {extra:?}: the client's getpeername must be {dest}: {reported:?}");
        for _ in 0..n {
            let rest = server.wait_line("ACCEPT PEER ", Duration::from_secs(5)).expect("ACCEPT PEER");
            let ip: Ipv4Addr = rest.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()).expect("peer ip");
            assert_eq!(ip, peer, "{host} {extra:?}: the server's peer");
        }
    }
}

/// Scenarios (a) to (d) against a registered server on a1.
fn four_paths(g: &Gcb, server: &Proc, listen: &str) {
    g.check("pub", listen, &[], false, server, 1, PUB); // (a) plain: relayed from the proxy socket
    g.check("pub", listen, &["--nonblock", "--runs", "2"], false, server, 2, PUB); // (a), non-blocking
    g.check("pub", listen, &[], true, server, 1, PUB); // (b) reversal
    g.check("pub", listen, &["--nonblock"], true, server, 1, PUB); // (b), non-blocking
    g.check("a2", listen, &["--runs", "2"], true, server, 2, A2); // (c) same realm, not via the broker
    g.check("a2", listen, &["--nonblock"], true, server, 1, A2); // (c), non-blocking
    g.check("b1", listen, &[], true, server, 1, GB); // (d) relay
    g.check("b1", listen, &["--nonblock"], true, server, 1, GB); // (d), non-blocking
    g.check("pub", listen, &["--parallel", "3", "--runs", "2"], true, server, 6, PUB); // (b), threads
    g.check("b1", listen, &["--parallel", "2", "--nonblock"], true, server, 2, GB); // (d), threads
}

#[test]
fn every_server_mode_and_path() {
    let g = Gcb::up();
    for (i, mode) in MODES.iter().enumerate() {
        let (server, listen) = g.registered_server("a1", 7400 + i as u16, &["--mode", mode]);
        four_paths(&g, &server, &listen);
        drop(server);
    }
    g.bed.down().expect("tear down");
}

#[test]
fn process_models_fork_prefork_exec() {
    let g = Gcb::up();
    let models: [&[&str]; 5] = [
        &["--fork"],
        &["--fork", "--mode", "epoll"],
        &["--prefork", "3"],
        &["--prefork", "3", "--mode", "epoll-et"],
        &["--exec"],
    ];
    for (i, extra) in models.iter().enumerate() {
        let (server, listen) = g.registered_server("a1", 7500 + i as u16, extra);
        if extra[0] == "--exec" {
            let inherited = server.wait_line("INHERITED tcp ", STARTUP).expect("INHERITED line");
            assert_eq!(inherited, listen, "the exec'd image must report the proxy address too");
        }
        four_paths(&g, &server, &listen);
        drop(server);
    }
    g.bed.down().expect("tear down");
}

#[test]
fn fallback_to_a_plain_server_and_a_public_listener() {
    let g = Gcb::up();
    // (e) GCB client on a1, plain server on pub: no broker at pub, a direct connect.
    for (i, mode) in MODES.iter().enumerate() {
        let port = (7600 + i).to_string();
        let (plain, listen) = g.server("pub", &["--proto", "tcp", "--port", &port, "--mode", mode], false);
        assert_eq!(listen, format!("0.0.0.0:{port}"));
        let dest = format!("203.0.113.20:{port}");
        g.check("a1", &dest, &["--runs", "2"], true, &plain, 2, GA);
        g.check("a1", &dest, &["--nonblock"], true, &plain, 1, GA);
    }
    // (f) GCB listener on pub, GCB client on b1: the listener is public, direct.
    for (i, mode) in MODES.iter().enumerate() {
        let (server, listen) = g.registered_server("pub", 7700 + i as u16, &["--mode", mode]);
        g.check("b1", &listen, &[], true, &server, 1, GB);
        g.check("b1", &listen, &["--nonblock", "--runs", "2"], true, &server, 2, GB);
        g.check("pub", &listen, &[], false, &server, 1, PUB); // a plain client of a public GCB listener
    }
    g.bed.down().expect("tear down");
}

#[test]
fn a_broker_restart_keeps_the_proxy_address() {
    let mut g = Gcb::up();
    let (server, listen) = g.registered_server("a1", 7800, &["--mode", "epoll"]);
    let t = Instant::now();
    g.check("pub", &listen, &[], false, &server, 1, PUB);
    // What one relayed connection costs on this machine now, client start-up
    // included: the baseline of the bound below, so a loaded machine is
    // allowed its slowness and a slower protocol is not.
    let one_check = t.elapsed();
    g.restart_broker();
    let restarted = Instant::now();
    // The next heartbeat (every 2 s) is answered with ReregisterRequest, and the
    // shim registers again asking for its old port.
    let line = format!("gcb: registered tcp 192.0.2.10:7800 as {listen}\n");
    let end = Instant::now() + Duration::from_secs(15);
    while server.stderr_text().matches(&line).count() < 2 {
        assert!(Instant::now() < end, "no re-registration as {listen}:\n{}\nbroker:\n{}", server.stderr_text(), g.broker.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    g.check("pub", &listen, &[], false, &server, 1, PUB); // (a) relayed again
    // The promise is "within two heartbeat intervals" (2 x 2 s here), then one
    // connection, which may take twice what it took before the restart; a
    // second more for the timers and the polling of the log.
    let took = restarted.elapsed();
    let bound = Duration::from_secs(2 * 2 + 1) + 2 * one_check;
    assert!(took < bound, "a new connection took {took:?} after the broker restart, more than {bound:?} (one took {one_check:?} before it)");
    g.check("b1", &listen, &["--nonblock"], true, &server, 1, GB); // (d)
    g.check("pub", &listen, &[], true, &server, 1, PUB); // (b)
    drop(server);
    g.bed.down().expect("tear down");
}

/// 64 threads of one client connect at once through the relay (realm B to realm A),
/// every byte verified.
#[test]
fn sixty_four_concurrent_relayed_connections() {
    let g = Gcb::up();
    let (server, listen) = g.registered_server("a1", 7900, &["--mode", "epoll"]);
    g.check("b1", &listen, &["--parallel", "64", "--bytes", "50000"], true, &server, 64, GB);
    g.check("pub", &listen, &["--parallel", "64"], false, &server, 64, PUB);
    drop(server);
    g.bed.down().expect("tear down");
}

/// Reversed connections under load: a client on pub under the shim runs eight
/// threads of two connections each, all at once, and echoes 1 MiB twice on each
/// (a1 dials pub for every one), against a worker forked per connection,
/// pre-forked blocking workers (they hold the listener, so their blocking reads
/// wait in the AEH), pre-forked edge-triggered epoll loops, and one select loop.
/// Every byte is verified: a shim that lost a wake-up, readiness or bytes on a
/// swapped connection stalls or fails here. The client keeps a bounded window in
/// flight, so unlike an echo through a pipe (`real_netcat.rs`) it cannot
/// deadlock by itself.
#[test]
fn reversed_megabyte_echoes_in_every_process_model() {
    let g = Gcb::up();
    let models: [&[&str]; 4] = [&["--fork"], &["--prefork", "3"], &["--prefork", "2", "--mode", "epoll-et"], &["--mode", "select"]];
    for (i, extra) in models.iter().enumerate() {
        let (server, listen) = g.registered_server("a1", 7950 + i as u16, extra);
        g.check("pub", &listen, &["--parallel", "8", "--runs", "2", "--bytes", "1048576"], true, &server, 16, PUB);
        drop(server);
    }
    g.bed.down().expect("tear down");
}

/// An unmodified Python web server under the shim in realm A, fetched with curl from
/// the public host (plain) and from realm B (under the shim); the file's hash must
/// survive the relay.
#[test]
fn python_http_server_fetched_with_curl() {
    let g = Gcb::up();
    let dir = std::env::temp_dir().join(format!("gcb-http-{}", g.bed.prefix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // 4 MiB that no compression or caching could fake: a keyed pattern.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.join("payload.bin"), &data).expect("payload");
    let want = sha256_of(&dir.join("payload.bin"));

    let mut c = g.bed.cmd("a1", workspace_root().join("scripts/gcb-run"));
    c.args(["--broker", BROKER, "--log", "info", "--heartbeat", "2", "--lib"]).arg(built("libgcb.so")).arg("--");
    c.arg(testbed::python3()).args(["-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory"]).arg(&dir);
    for v in SHIM_VARS {
        c.env_remove(v);
    }
    let server = g.bed.spawn_cmd(c).expect("python3 -m http.server");
    let proxy = {
        let end = Instant::now() + STARTUP;
        loop {
            let text = server.stderr_text();
            if let Some(rest) = text.split("gcb: registered tcp 192.0.2.10:8080 as ").nth(1) {
                break rest.lines().next().unwrap_or_default().to_string();
            }
            assert!(Instant::now() < end, "http.server did not register:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(proxy.starts_with("203.0.113.10:"), "advertised {proxy}");
    let url = format!("http://{proxy}/payload.bin");
    for (host, gcb) in [("pub", false), ("b1", true), ("pub", true)] {
        let out_file = dir.join(format!("got-{host}-{gcb}"));
        let mut c = if gcb {
            let mut c = g.bed.cmd(host, workspace_root().join("scripts/gcb-run"));
            c.args(["--broker", BROKER, "--lib"]).arg(built("libgcb.so")).args(["--", "curl"]);
            c
        } else {
            g.bed.cmd(host, "curl")
        };
        for v in SHIM_VARS {
            c.env_remove(v);
        }
        c.args(["-sS", "--fail", "--max-time", "30", "-o"]).arg(&out_file).arg(&url);
        let out = testbed::run_with_timeout(c, Duration::from_secs(40)).expect("curl");
        assert!(
            out.status.success(),
            "curl from {host} (shim: {gcb}) failed: {}\nserver:\n{}\nbroker:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.stderr_text(),
            g.broker.stderr_text()
        );
        assert_eq!(sha256_of(&out_file), want, "curl from {host} (shim: {gcb}) got different bytes");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    g.bed.down().expect("tear down");
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Socket options the application set survive the shim's replacement sockets:
/// the listener's on a reversed connection it accepts through a doorbell (set
/// before and after `listen`), the connector's on its reversed `connect`.
#[test]
fn socket_options_carry_over_to_brokered_connections() {
    const SERVER: &str = "import select, socket as s\n\
l = s.socket(); l.setsockopt(s.SOL_SOCKET, s.SO_REUSEADDR, 1)\n\
l.setsockopt(s.IPPROTO_TCP, s.TCP_NODELAY, 1); l.setsockopt(s.IPPROTO_TCP, s.TCP_KEEPIDLE, 77)\n\
l.bind(('0.0.0.0', 7400)); l.listen(8); l.setsockopt(s.IPPROTO_TCP, s.TCP_KEEPINTVL, 33)\n\
print('LISTEN', '%s:%d' % l.getsockname(), flush=True)\n\
select.select([l], [], [], 30); c, _ = l.accept()\n\
o = lambda lv, n: c.getsockopt(lv, n)\n\
print('OPTS', o(s.IPPROTO_TCP, s.TCP_NODELAY) != 0, o(s.IPPROTO_TCP, s.TCP_KEEPIDLE), o(s.IPPROTO_TCP, s.TCP_KEEPINTVL), flush=True)\n\
c.sendall(c.recv(64))\n";
    const CLIENT: &str = "import socket as s, struct, sys\n\
c = s.socket(); c.setsockopt(s.IPPROTO_TCP, s.TCP_NODELAY, 1); c.setsockopt(s.IPPROTO_TCP, s.TCP_KEEPCNT, 4)\n\
c.setsockopt(s.SOL_SOCKET, s.SO_RCVTIMEO, struct.pack('ll', 7, 0))\n\
h, p = sys.argv[1].rsplit(':', 1); c.connect((h, int(p)))\n\
t = struct.unpack('ll', c.getsockopt(s.SOL_SOCKET, s.SO_RCVTIMEO, 16))[0]\n\
print('OPTS', c.getsockopt(s.IPPROTO_TCP, s.TCP_NODELAY) != 0, c.getsockopt(s.IPPROTO_TCP, s.TCP_KEEPCNT), t)\n\
c.sendall(b'ping'); print('ECHO', c.recv(64).decode())\n";
    let g = Gcb::up();
    let py = |host: &str, script: &str, arg: Option<&str>| {
        let mut c = g.bed.cmd(host, workspace_root().join("scripts/gcb-run"));
        c.args(["--broker", BROKER, "--log", "info", "--lib"]).arg(built("libgcb.so")).arg("--").arg(testbed::python3());
        c.args(["-c", script]).args(arg);
        for v in SHIM_VARS {
            c.env_remove(v);
        }
        c
    };
    let server = g.bed.spawn_cmd(py("a1", SERVER, None)).expect("python server");
    let listen = server.wait_line("LISTEN ", STARTUP).unwrap_or_else(|e| panic!("{e}: {}", server.stderr_text()));
    assert!(listen.starts_with("203.0.113.10:"), "advertised {listen}");
    let out = testbed::run_with_timeout(py("pub", CLIENT, Some(&listen)), CLIENT_TIMEOUT).expect("python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client: {stdout}\n{}\nserver:\n{}", String::from_utf8_lossy(&out.stderr), server.stderr_text());
    assert!(String::from_utf8_lossy(&out.stderr).contains("via reversal"), "not a reversal: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("OPTS True 4 7\n") && stdout.contains("ECHO ping\n"), "client saw: {stdout}");
    let opts = server.wait_line("OPTS ", Duration::from_secs(10)).expect("server OPTS");
    assert_eq!(opts, "True 77 33", "the accepted connection's options");
    g.bed.down().expect("tear down");
}
