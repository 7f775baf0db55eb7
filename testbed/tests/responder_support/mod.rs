//! What the issue-12 tests share (`busy_listeners`, `mutual_connects`,
//! `event_loops`, `flood`): the Python programs in `testbed/programs/`, the
//! busy server and its lines, one-shot echo clients and their lines, and the
//! state the daemons report (`gcb-broker query --json`, `dpfd status --json`).
//!
//! These tests hold the shim to what the kernel does for a program whatever
//! the program is doing; the module docs of each test say which case.
//! Every wait is bounded; failures print the programs' output and the daemon's.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use testbed::json::Value;
use testbed::real::{built, Mode, RealBed, BROKER, STARTUP};
use testbed::{python3, workspace_root, Proc};

/// A Python program of `testbed/programs/`.
pub fn program(name: &str) -> String {
    let p: PathBuf = workspace_root().join("testbed/programs").join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p.to_str().expect("utf-8 path").to_string()
}

pub fn py() -> &'static str {
    python3().to_str().expect("utf-8 path")
}

/// `key=value` out of a line of words.
pub fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// `kv` as a number; panics with the line when it is missing.
pub fn num(line: &str, key: &str) -> f64 {
    kv(line, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no number {key}= in {line:?}"))
}

/// A test bed for these tests. GCB: the broker expires a client after three
/// of its heartbeats (`--heartbeat-timeout-s`), not its default 30 s, so a
/// shim that stops heartbeating while its program is busy is caught within
/// the test. DPF: dpfd probes every second as usual.
pub fn bed(mode: Mode, heartbeat_s: u64) -> RealBed {
    match mode {
        Mode::Gcb => {
            let timeout = (3 * heartbeat_s).to_string();
            RealBed::up_with(Mode::Gcb, heartbeat_s, &["--heartbeat-timeout-s", &timeout])
        }
        Mode::Dpf | Mode::Pcp => RealBed::up_with(mode, heartbeat_s, &[]),
    }
}

/// `busy_server.py` under the shim, registered.
pub struct Server {
    pub proc: Proc,
    pub pid: u32,
    /// The advertised (registered) addresses, as getsockname reported them.
    pub tcp: Option<String>,
    pub udp: Option<String>,
}

/// Starts `busy_server.py --port PORT ARGS` on `host` under the shim and waits
/// until each socket it made is registered, with getsockname agreeing.
pub fn busy_server(r: &RealBed, host: &str, port: u16, args: &[&str]) -> Server {
    let script = program("busy_server.py");
    let port_s = port.to_string();
    let mut all = vec![py(), "-u", &script, "--port", &port_s];
    all.extend_from_slice(args);
    let proc = r.spawn(host, true, &all);
    let pid: u32 = proc.wait_line("PID ", STARTUP).unwrap_or_else(|e| panic!("{e}")).parse().expect("pid");
    let local_ip = r.bed.ip(host);
    let mut tcp = None;
    let mut udp = None;
    let protos = match args.windows(2).find(|w| w[0] == "--proto").map(|w| w[1]) {
        Some("tcp") => vec!["tcp"],
        Some("udp") => vec!["udp"],
        _ => vec!["tcp", "udp"],
    };
    for proto in protos {
        let public = r.registered(&proc, proto, &format!("{local_ip}:{port}"));
        let shown = proc.wait_line(&format!("LISTEN {proto} "), STARTUP).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shown, public, "{proto}: getsockname must be the registered address");
        match proto {
            "tcp" => tcp = Some(public),
            _ => udp = Some(public),
        }
    }
    Server { proc, pid, tcp, udp }
}

impl Server {
    /// Waits for the `BUSY start=` line; returns its unix time.
    pub fn busy_start(&self) -> f64 {
        let rest = self.proc.wait_line("BUSY start=", STARTUP).unwrap_or_else(|e| panic!("{e}"));
        rest.split_whitespace().next().and_then(|t| t.parse().ok()).expect("BUSY start time")
    }

    /// Waits for the `BUSY end=` line (at most `within`); returns its unix time.
    pub fn busy_end(&self, within: Duration) -> f64 {
        let rest = self.proc.wait_line("BUSY end=", within).unwrap_or_else(|e| panic!("{e}"));
        rest.split_whitespace().next().and_then(|t| t.parse().ok()).expect("BUSY end time")
    }

    /// Waits until the server printed `count` lines starting with `prefix`
    /// (`ACCEPT ` or `DGRAM `); returns them all.
    pub fn served(&self, prefix: &str, count: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let lines: Vec<String> = self.proc.stdout_seen().into_iter().filter(|l| l.starts_with(prefix)).collect();
            if lines.len() >= count {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "the server printed {} of {count} {prefix:?} lines within {within:?}:\n{:?}\n{}",
                lines.len(),
                self.proc.stdout_seen(),
                self.proc.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last `n` bytes of `s` or a little more, cut at a character boundary.
pub fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    &s[at..]
}

/// A one-shot `echo_peer.py` (`proto` tcp or udp) from `host`, running.
pub fn echo_peer(r: &RealBed, host: &str, shim: bool, proto: &str, dest: &str, bytes: usize) -> Proc {
    let script = program("echo_peer.py");
    let bytes = bytes.to_string();
    r.spawn(host, shim, &[py(), "-u", &script, proto, dest, &bytes])
}

/// What an `echo_peer.py` printed, once it finished (`ECHO` or `ERROR`).
#[derive(Debug)]
pub struct Echo {
    pub what: String,
    pub lines: Vec<String>,
    pub ok: bool,
    pub connect_us: Option<f64>,
    pub connected_at: Option<f64>,
    pub sent_at: Option<f64>,
    pub echo_at: Option<f64>,
}

/// Reads `p`'s lines until its verdict, for at most `within`.
pub fn finish(p: &Proc, what: &str, within: Duration) -> Echo {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.lines.recv_timeout(left) {
            Ok(l) if l.starts_with("ECHO ") || l.starts_with("ERROR") => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let lines = p.stdout_seen();
    let find = |prefix: &str| lines.iter().find(|l| l.starts_with(prefix)).cloned();
    let connect = find("CONNECT ");
    let echo = find("ECHO ");
    Echo {
        what: format!("{what}: stdout {lines:?} stderr {:?}", p.stderr_text()),
        ok: echo.as_deref().is_some_and(|l| l.starts_with("ECHO ok ")),
        connect_us: connect.as_deref().map(|l| num(l, "us")),
        connected_at: connect.as_deref().map(|l| num(l, "at")),
        sent_at: find("SENT ").map(|l| num(&l, "at")),
        echo_at: echo.as_deref().filter(|l| l.starts_with("ECHO ok ")).map(|l| num(l, "at")),
        lines,
    }
}

/// One registration in the broker's query.
#[derive(Debug, Clone)]
pub struct Reg {
    pub proto: String,
    pub proxy: String,
    pub local: String,
    pub pid: u64,
}

/// The broker's `query --json`: registrations and counters.
#[derive(Debug)]
pub struct Query {
    pub regs: Vec<Reg>,
    pub counters: BTreeMap<String, u64>,
    pub raw: Value,
}

impl Query {
    pub fn has(&self, proto: &str, proxy: &str) -> bool {
        self.regs.iter().any(|r| r.proto == proto && r.proxy == proxy)
    }
    pub fn counter(&self, name: &str) -> u64 {
        *self.counters.get(name).unwrap_or_else(|| panic!("no counter {name:?} in {:?}", self.counters))
    }
    /// Counters that are not 0, for the test's report.
    pub fn nonzero(&self) -> String {
        let v: Vec<String> = self.counters.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
        v.join(" ")
    }
}

pub fn query(r: &RealBed) -> Query {
    let bin = built("gcb-broker");
    let target = format!("{BROKER}:65432");
    let out = r.bed.run("broker", &[bin.to_str().unwrap(), "query", &target, "--json"], STARTUP).expect("gcb-broker query");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "gcb-broker query: {text}{}", String::from_utf8_lossy(&out.stderr));
    let raw = testbed::json::parse(&text).unwrap_or_else(|e| panic!("query --json: {e}: {text}"));
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let regs = raw.get("registrations").and_then(Value::as_array).unwrap_or(&[]);
    let regs = regs
        .iter()
        .map(|v| Reg {
            proto: s(v, "proto"),
            proxy: s(v, "proxy"),
            local: s(v, "local"),
            pid: v.get("pid").and_then(Value::as_f64).unwrap_or(0.0) as u64,
        })
        .collect();
    let counters = raw
        .get("counters")
        .and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0) as u64)).collect())
        .unwrap_or_default();
    Query { regs, counters, raw }
}

/// Asserts the broker still has every `(proto, proxy)` and has expired or
/// dropped nothing, and no command to a listener failed.
pub fn assert_broker_kept(r: &RealBed, held: &[(&str, &str)], context: &dyn Fn() -> String) {
    let q = query(r);
    eprintln!("broker counters: {}", q.nonzero());
    for (proto, proxy) in held {
        assert!(q.has(proto, proxy), "{proto} {proxy} is no longer registered: {:?}\n{}", q.regs, context());
    }
    for counter in ["expired", "commands_failed"] {
        assert_eq!(q.counter(counter), 0, "broker counter {counter}: {}\n{}", q.nonzero(), context());
    }
}

/// `dpfd status --json`'s forwards: `(proto, public, local)`.
pub fn dpf_forwards(r: &RealBed) -> Vec<(String, String, String)> {
    let bin = built("dpfd");
    let out = r.bed.run("ga", &[bin.to_str().unwrap(), "status", "--json"], STARTUP).expect("dpfd status");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = testbed::json::parse(&text).unwrap_or_else(|e| panic!("dpfd status --json: {e}: {text}"));
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let list = v.get("forwards").and_then(Value::as_array).unwrap_or(&[]);
    list.iter().map(|f| (s(f, "proto"), s(f, "public"), s(f, "local"))).collect()
}

/// Everything the daemon of `r` logged, for failure messages.
pub fn daemon_log(r: &RealBed) -> String {
    format!("--- {:?} daemon:\n{}", r.mode, r.daemon.stderr_text())
}

/// Open fds of `pid` (one pid namespace for the whole test bed).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Resident set of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
