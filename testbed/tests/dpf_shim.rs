//! The shim's DPF mode end to end (issue 5): `dpfd` on the gateway GA, the
//! paper's unmodified C echo programs under `scripts/gcb-run --dpf` on a1 and a2.
//!
//! 1. TCP and UDP servers on a1 advertise a public address on GA (their
//!    `getsockname`), log the registration line, and have their forward in
//!    GA's nftables map; plain clients on pub reach them through it with every
//!    byte echoed (UDP: 1000 datagrams, none lost). A server that sits idle for
//!    more than five probe intervals keeps its forward (its management socket
//!    answers the probes), and a SIGKILLed one loses it within a few intervals.
//! 2. A shim client on a2 dialing the public address is sent to 192.0.2.10
//!    directly (`Query`): the server sees 192.0.2.11, the client's
//!    `getpeername` is the public address, and GA's conntrack saw nothing.
//! 3. `echo-server --exec` hands its forwarded listener to a new image, which
//!    reports the same public address and still serves through it.
//!
//! Needs root, `cargo build --release` (libgcb.so, dpfd) and `make -C c-tests`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testbed::daemons::start_dpfd;
use testbed::{release_bin, require_root, wait_for, workspace_root, Proc, TestBed};

const DPFD: &str = "192.0.2.1";
const STEP: Duration = Duration::from_secs(15);
/// Probe interval 1 s, three failed probes, a commit, and room for a busy machine.
const PROBE_BOUND: Duration = Duration::from_secs(10);
const PUB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const A2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// The shim's variables, cleared so the caller's environment cannot leak in.
const SHIM_VARS: [&str; 8] =
    ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "DPF_INAGENT", "GCB_LOG", "GCB_LOG_FILE", "GCB_HEARTBEAT_S", "LD_PRELOAD"];

fn built(path: PathBuf, hint: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {hint}", path.display());
    path
}

fn ctest(name: &str) -> PathBuf {
    built(workspace_root().join("c-tests/build").join(name), "run `make -C c-tests`")
}

fn release(name: &str) -> PathBuf {
    built(release_bin(name), "run `cargo build --release`")
}

struct Bed {
    bed: TestBed,
    dpfd: Proc,
}

impl Bed {
    fn up() -> Bed {
        require_root();
        let bed = TestBed::up().expect("test bed");
        let mirror = std::env::temp_dir().join(format!("dpf-shim-{}.mirror", bed.prefix()));
        let dpfd = start_dpfd(&bed, &mirror, &["--probe-interval-s", "1"], STEP);
        Bed { bed, dpfd }
    }

    /// A C test program on `host`, under `scripts/gcb-run --dpf` when `shim`.
    fn cmd(&self, host: &str, bin: &str, args: &[&str], shim: bool) -> Command {
        let mut c = if shim {
            let mut c = self.bed.cmd(host, workspace_root().join("scripts/gcb-run"));
            c.args(["--dpf", DPFD, "--log", "info", "--lib"]).arg(release("libgcb.so")).arg("--");
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

    fn ok(&self, host: &str, args: &[&str]) -> String {
        let out = self.bed.run(host, args, STEP).unwrap_or_else(|e| panic!("{args:?} on {host}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} on {host}: {text}");
        text
    }

    /// A forwarded echo server on a1: the process and the public address it
    /// advertised (after `ready`, e.g. `LISTEN tcp `).
    fn server(&self, proto: &str, port: u16, extra: &[&str], ready: &str) -> (Proc, String) {
        let port_s = port.to_string();
        let mut args = vec!["--proto", proto, "--port", &port_s, "--mode", "epoll"];
        args.extend_from_slice(extra);
        let p = self.bed.spawn_cmd(self.cmd("a1", "echo-server", &args, true)).expect("echo-server");
        let public = p.wait_line(ready, STEP).unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", p.stderr_text()));
        assert!(public.starts_with("203.0.113.1:4"), "advertised {public}, not a forward on GA:\n{}", p.stderr_text());
        let line = format!("gcb: registered {proto} 192.0.2.10:{port} as {public}\n");
        wait_for(STEP, &line, || p.stderr_text().contains(&line).then_some(()));
        (p, public)
    }

    /// Runs an echo client; asserts every run succeeded and nothing was lost;
    /// returns the peers it reported (`LOCAL ... PEER ...`).
    fn client(&self, host: &str, proto: &str, dest: &str, extra: &[&str], shim: bool, server: &Proc) -> Vec<String> {
        let mut args = vec!["--proto", proto, "--connect", dest];
        args.extend_from_slice(extra);
        let out = testbed::run_with_timeout(self.cmd(host, "echo-client", &args, shim), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("client on {host}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).unwrap_or("");
        let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
        let lost_none = field("lost").is_none_or(|l| l == "0");
        assert!(
            out.status.success() && field("ok").is_some() && field("ok") == field("runs") && lost_none,
            "echo-client {args:?} on {host} ({}):\n{stdout}\n{}\nserver stderr:\n{}\ndpfd:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            server.stderr_text(),
            self.dpfd.stderr_text()
        );
        stdout.lines().filter_map(|l| l.split_once(" PEER ").map(|(_, p)| p.to_string())).collect()
    }

    /// Probe rounds dpfd has finished: each ends with a sync (`dpfd status`,
    /// `changes.syncs`), so a count of them is how long "idle" has been in
    /// dpfd's own terms, whatever the machine's load.
    fn probe_rounds(&self) -> u64 {
        let dpfd = release("dpfd");
        let out = self.bed.run("ga", &[dpfd.to_str().unwrap(), "status", "--json"], STEP).expect("dpfd status");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "dpfd status: {text}{}", String::from_utf8_lossy(&out.stderr));
        let doc = testbed::json::parse(&text).unwrap_or_else(|e| panic!("dpfd status --json: {e}: {text}"));
        let syncs = doc.get("changes").and_then(|c| c.get("syncs")).and_then(|s| s.as_f64());
        syncs.unwrap_or_else(|| panic!("no changes.syncs in {text}")) as u64
    }

    /// Waits until dpfd has finished `n` more probe rounds.
    fn wait_probe_rounds(&self, n: u64) {
        let start = self.probe_rounds();
        // One round a second; the bound leaves a loaded machine five times that.
        wait_for(Duration::from_secs(5 * n + 10), &format!("{n} probe rounds"), || (self.probe_rounds() >= start + n).then_some(()));
    }

    fn map(&self, proto: &str) -> String {
        self.ok("ga", &["nft", "list", "map", "ip", "dpf", &format!("fwd_{proto}")])
    }

    /// Asserts the next `n` connections the server accepted came from `peer`.
    fn accepted_from(server: &Proc, n: usize, peer: Ipv4Addr) {
        for _ in 0..n {
            let rest = server.wait_line("ACCEPT PEER ", STEP).expect("ACCEPT PEER");
            let ip: Ipv4Addr = rest.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok()).expect("peer ip");
            assert_eq!(ip, peer, "the server's peer");
        }
    }
}

/// `ip:port` as nft prints it in a concatenated map element: `ip . port`.
fn element(public: &str, local: &str) -> String {
    format!("{} : {}", public.replace(':', " . "), local.replace(':', " . "))
}

fn kill9(p: &Proc) {
    // SAFETY: kill(2) on a child we have not reaped, so the PID is its own.
    assert_eq!(unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGKILL) }, 0);
    assert!(p.wait_timeout(STEP).is_some(), "SIGKILL did not end {}", p.pid());
}

#[test]
fn dpf_shim_forwards_queries_and_hands_over() {
    let b = Bed::up();
    let (tcp_srv, tcp_pub) = b.server("tcp", 7000, &[], "LISTEN tcp ");
    let (udp_srv, udp_pub) = b.server("udp", 7001, &[], "LISTEN udp ");
    assert!(b.map("tcp").contains(&element(&tcp_pub, "192.0.2.10:7000")), "{}", b.map("tcp"));
    assert!(b.map("udp").contains(&element(&udp_pub, "192.0.2.10:7001")), "{}", b.map("udp"));

    // (1) Plain clients on pub, through GA's kernel NAT.
    b.client("pub", "tcp", &tcp_pub, &["--bytes", "20000", "--rounds", "3", "--runs", "3"], false, &tcp_srv);
    Bed::accepted_from(&tcp_srv, 3, PUB);
    b.client("pub", "udp", &udp_pub, &["--bytes", "1000", "--rounds", "1000"], false, &udp_srv);
    b.client("pub", "udp", &udp_pub, &["--bytes", "500", "--rounds", "200", "--udp-connected"], false, &udp_srv);

    // (2) A shim client on a2: QUERY sends it to 192.0.2.10, not through GA.
    let peers = b.client("a2", "tcp", &tcp_pub, &["--bytes", "20000", "--rounds", "2", "--runs", "2"], true, &tcp_srv);
    assert!(!peers.is_empty() && peers.iter().all(|p| *p == tcp_pub), "a2's getpeername must be {tcp_pub}: {peers:?}");
    Bed::accepted_from(&tcp_srv, 2, A2);
    let port = tcp_pub.rsplit_once(':').unwrap().1;
    let conntrack = b.ok("ga", &["conntrack", "-L"]);
    let hairpin: Vec<&str> =
        conntrack.lines().filter(|l| l.contains("src=192.0.2.11 ") && l.contains(&format!("dport={port} "))).collect();
    assert!(hairpin.is_empty(), "a2's connection went through GA: {hairpin:?}");
    let peers = b.client("a2", "udp", &udp_pub, &["--bytes", "500", "--rounds", "100", "--udp-connected"], true, &udp_srv);
    assert!(peers.iter().all(|p| *p == udp_pub), "a2's UDP getpeername must be {udp_pub}: {peers:?}");

    // Idle for well over five probe rounds: the probes are answered, and the
    // servers' waits take them off the management sockets' accept queues.
    b.wait_probe_rounds(12);
    let listening = b.ok("a1", &["ss", "-Hltn"]);
    // Both servers' management sockets (the servers themselves bind 0.0.0.0).
    assert!(listening.matches("192.0.2.10:").count() >= 2, "{listening}");
    for line in listening.lines() {
        let queued: usize = line.split_whitespace().nth(1).and_then(|q| q.parse().ok()).unwrap_or(0);
        assert!(queued <= 7, "probes pile up unaccepted (sweeps every 5 s at most): {line}\n{listening}");
    }
    assert!(b.map("tcp").contains(&element(&tcp_pub, "192.0.2.10:7000")), "idle server lost its forward");
    assert!(b.map("udp").contains(&element(&udp_pub, "192.0.2.10:7001")), "idle UDP server lost its forward");
    b.client("pub", "tcp", &tcp_pub, &["--bytes", "2000", "--rounds", "2"], false, &tcp_srv);

    // SIGKILL: nothing runs in the process, so dpfd's probe must clean up.
    kill9(&tcp_srv);
    let el = element(&tcp_pub, "192.0.2.10:7000");
    wait_for(PROBE_BOUND, "the killed server's forward deleted", || (!b.map("tcp").contains(&el)).then_some(()));
    assert!(b.map("udp").contains(&element(&udp_pub, "192.0.2.10:7001")), "the other forward stays");

    // (3) exec: the new image takes the forwarded listener over.
    let (exec_srv, exec_pub) = b.server("tcp", 7002, &["--exec"], "LISTEN tcp ");
    let inherited = exec_srv.wait_line("INHERITED tcp ", STEP).unwrap_or_else(|e| panic!("{e}\n{}", exec_srv.stderr_text()));
    assert_eq!(inherited, exec_pub, "the new image reports the public address");
    b.client("pub", "tcp", &exec_pub, &["--bytes", "2000", "--rounds", "2", "--runs", "2"], false, &exec_srv);
    // Through probe rounds, which would delete a forward whose management
    // socket the exec lost.
    b.wait_probe_rounds(4);
    assert!(b.map("tcp").contains(&element(&exec_pub, "192.0.2.10:7002")), "the exec'd server keeps its forward");

    drop(udp_srv);
    b.bed.down().expect("test bed down");
}
