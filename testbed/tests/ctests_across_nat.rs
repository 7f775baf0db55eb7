//! The paper's C test programs across the NAT test bed, with no GCB or DPF: the
//! baseline every later path is compared with, and the proof that `libgcb.so` loaded
//! with no configuration changes nothing.
//!
//! Each scenario runs twice, once plain and once with `LD_PRELOAD=libgcb.so` on both
//! the server and the client, and records a transcript of what the programs observed
//! (the advertised `LISTEN` address, the peer addresses the server saw, the bytes and
//! datagrams verified). The two transcripts must be identical: pass-through means the
//! programs cannot tell the shim is there.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;
use testbed::{release_bin, require_root, workspace_root, Proc, TestBed};

const SERVER_MODES: [&str; 6] = ["blocking", "select", "poll", "epoll", "epoll-et", "nonblock"];
const STARTUP: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn ctest_bin(name: &str) -> PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests` (scripts/test does)", p.display());
    p
}

fn shim_path() -> PathBuf {
    let p = release_bin("libgcb.so");
    assert!(p.exists(), "{} is missing: run `cargo build --release`", p.display());
    p
}

/// How the programs of one pass are started.
#[derive(Clone, Copy, PartialEq)]
enum Pass {
    Plain,
    Preloaded,
}

struct Scenario<'a> {
    bed: &'a TestBed,
    pass: Pass,
    transcript: Vec<String>,
}

/// Summary figures the client prints; everything else about timing is ignored here.
struct Summary {
    runs: u32,
    ok: u32,
    lost: u32,
    reordered: u32,
}

fn parse_summary(stdout: &str) -> Summary {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .unwrap_or_else(|| panic!("client printed no SUMMARY line:\n{stdout}"));
    let field = |name: &str| -> u32 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("SUMMARY has no {name}: {line}"))
            .parse()
            .unwrap_or_else(|_| panic!("SUMMARY {name} is not a number: {line}"))
    };
    Summary { runs: field("runs"), ok: field("ok"), lost: field("lost"), reordered: field("reordered") }
}

impl<'a> Scenario<'a> {
    fn new(bed: &'a TestBed, pass: Pass) -> Self {
        Scenario { bed, pass, transcript: Vec::new() }
    }

    fn command(&self, host: &str, bin: &str, args: &[String]) -> std::process::Command {
        let mut c = self.bed.cmd(host, ctest_bin(bin));
        c.args(args);
        if self.pass == Pass::Preloaded {
            c.env("LD_PRELOAD", shim_path());
        }
        c
    }

    /// Start an echo server and return it with the address it advertised.
    fn server(&mut self, host: &str, bin: &str, args: &[&str], proto: &str) -> (Proc, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let p = self
            .bed
            .spawn_cmd(self.command(host, bin, &args))
            .unwrap_or_else(|e| panic!("starting {bin} on {host}: {e}"));
        let listen = p
            .wait_line(&format!("LISTEN {proto} "), STARTUP)
            .unwrap_or_else(|e| panic!("{bin} {args:?} on {host} did not listen: {e}"));
        self.transcript.push(format!("{host} {bin} {args:?} LISTEN {proto} {listen}"));
        (p, listen)
    }

    /// Run an echo client to completion and assert that every byte came back.
    fn client(&mut self, host: &str, bin: &str, args: &[&str]) -> Summary {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = testbed::run_with_timeout(self.command(host, bin, &args), CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{bin} {args:?} on {host}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{bin} {args:?} on {host} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        let s = parse_summary(&stdout);
        assert_eq!(s.ok, s.runs, "not every run succeeded: {stdout}");
        assert_eq!((s.lost, s.reordered), (0, 0), "datagrams lost or reordered: {stdout}");
        self.transcript.push(format!(
            "{host} {bin} {args:?} runs={} ok={} lost={} reordered={}",
            s.runs, s.ok, s.lost, s.reordered
        ));
        s
    }

    /// Every `ACCEPT PEER` line the server has printed so far, recorded and returned.
    fn accepted_peers(&mut self, server: &Proc, expected: usize) -> Vec<Ipv4Addr> {
        let mut peers = Vec::new();
        for _ in 0..expected {
            let rest = server
                .wait_line("ACCEPT PEER ", Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("server reported no accepted peer: {e}"));
            let ip: Ipv4Addr = rest
                .rsplit_once(':')
                .and_then(|(ip, _)| ip.parse().ok())
                .unwrap_or_else(|| panic!("bad ACCEPT PEER line: {rest}"));
            peers.push(ip);
        }
        self.transcript.push(format!("peers {peers:?}"));
        peers
    }

    /// A static port forward on GA, the paper's "regular" configuration for
    /// public-to-private traffic.
    fn forward_on_ga(&self, proto: &str, port: u16) {
        let rule = format!("add rule ip nat pre iifname pub0 {proto} dport {port} dnat to 192.0.2.10:{port}");
        let out = self
            .bed
            .run("ga", &["nft", &rule], Duration::from_secs(10))
            .expect("nft on ga");
        assert!(out.status.success(), "nft {rule}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Private to public through GA's masquerade, every server mode, TCP and UDP, blocking
/// and non-blocking clients, plain and fortified builds.
fn private_to_public(sc: &mut Scenario) {
    for (i, mode) in SERVER_MODES.iter().enumerate() {
        let port = (7100 + i).to_string();
        let (server, listen) = sc.server("pub", "echo-server", &["--proto", "tcp", "--port", &port, "--mode", mode], "tcp");
        assert_eq!(listen, format!("0.0.0.0:{port}"));
        let dest = format!("203.0.113.20:{port}");
        sc.client("a1", "echo-client", &["--proto", "tcp", "--connect", &dest, "--bytes", "3000", "--rounds", "3", "--runs", "2"]);
        sc.client("a2", "echo-client-fortify", &["--proto", "tcp", "--connect", &dest, "--bytes", "70000", "--rounds", "2", "--nonblock"]);
        for peer in sc.accepted_peers(&server, 3) {
            assert_eq!(peer, Ipv4Addr::new(203, 0, 113, 1), "the public server must see GA's address");
        }
        drop(server);

        let (server, _) = sc.server("pub", "echo-server-fortify", &["--proto", "udp", "--port", &port, "--mode", mode], "udp");
        sc.client("a1", "echo-client", &["--proto", "udp", "--connect", &dest, "--bytes", "1200", "--rounds", "50"]);
        sc.client("a2", "echo-client", &["--proto", "udp", "--connect", &dest, "--bytes", "60000", "--rounds", "5", "--udp-connected"]);
        drop(server);
    }
}

/// Public (and the other realm) to private through a static forward on GA, every
/// server mode and the fork, pre-fork and exec process models.
fn public_to_private(sc: &mut Scenario) {
    for (i, mode) in SERVER_MODES.iter().enumerate() {
        let port = 7200 + i as u16;
        sc.forward_on_ga("tcp", port);
        sc.forward_on_ga("udp", port);
        let p = port.to_string();
        let dest = format!("203.0.113.1:{port}");
        let (server, _) = sc.server("a1", "echo-server", &["--proto", "tcp", "--port", &p, "--mode", mode], "tcp");
        sc.client("pub", "echo-client", &["--proto", "tcp", "--connect", &dest, "--bytes", "5000", "--rounds", "2", "--runs", "2", "--parallel", "2"]);
        sc.client("b1", "echo-client", &["--proto", "tcp", "--connect", &dest, "--nonblock"]);
        let peers = sc.accepted_peers(&server, 5);
        assert_eq!(peers.iter().filter(|p| **p == Ipv4Addr::new(203, 0, 113, 20)).count(), 4);
        assert_eq!(peers.iter().filter(|p| **p == Ipv4Addr::new(203, 0, 113, 2)).count(), 1);
        drop(server);

        let (server, _) = sc.server("a1", "echo-server", &["--proto", "udp", "--port", &p, "--mode", mode], "udp");
        sc.client("pub", "echo-client", &["--proto", "udp", "--connect", &dest, "--bytes", "512", "--rounds", "100"]);
        sc.client("b1", "echo-client-fortify", &["--proto", "udp", "--connect", &dest, "--bytes", "512", "--rounds", "20", "--udp-connected"]);
        drop(server);
    }

    let process_models: [(&str, &[&str]); 4] = [
        ("fork", &["--fork"]),
        ("prefork", &["--prefork", "3"]),
        ("prefork-epoll", &["--prefork", "3", "--mode", "epoll"]),
        ("exec", &["--exec"]),
    ];
    for (i, (name, extra)) in process_models.iter().enumerate() {
        let port = 7300 + i as u16;
        sc.forward_on_ga("tcp", port);
        let p = port.to_string();
        let mut args = vec!["--proto", "tcp", "--port", &p];
        args.extend_from_slice(extra);
        let (server, listen) = sc.server("a1", "echo-server", &args, "tcp");
        if *name == "exec" {
            let inherited = server
                .wait_line("INHERITED tcp ", STARTUP)
                .unwrap_or_else(|e| panic!("exec child did not report its inherited listener: {e}"));
            assert_eq!(inherited, listen, "the exec'd image must see the same listener");
            sc.transcript.push(format!("INHERITED {inherited}"));
        }
        let dest = format!("203.0.113.1:{port}");
        sc.client("pub", "echo-client", &["--proto", "tcp", "--connect", &dest, "--bytes", "20000", "--rounds", "3", "--runs", "3", "--parallel", "4"]);
        sc.client("b1", "echo-client", &["--proto", "tcp", "--connect", &dest, "--runs", "2", "--nonblock"]);
        drop(server);
    }
}

fn transcript(pass: Pass) -> Vec<String> {
    let bed = TestBed::up().expect("test bed");
    let mut sc = Scenario::new(&bed, pass);
    private_to_public(&mut sc);
    public_to_private(&mut sc);
    let t = std::mem::take(&mut sc.transcript);
    drop(sc);
    bed.down().expect("tear down test bed");
    t
}

#[test]
fn ctests_across_nat_plain_and_preloaded_agree() {
    require_root();
    let plain = transcript(Pass::Plain);
    let preloaded = transcript(Pass::Preloaded);
    // 6 modes x (2 TCP + 2 UDP servers, 8 clients, 2 peer checks) + 4 process models.
    assert!(plain.len() >= 6 * 12 + 4 * 3, "scenarios went missing: {plain:#?}");
    assert_eq!(plain.len(), preloaded.len(), "the two passes ran different scenarios");
    for (a, b) in plain.iter().zip(&preloaded) {
        assert_eq!(a, b, "pass-through changed what the programs observed");
    }
}
