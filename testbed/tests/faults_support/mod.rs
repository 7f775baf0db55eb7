//! What the `faults_*` tests share: a test bed with one or more `gcb-broker`s
//! on the broker host, programs under `scripts/gcb-run`, the Python test peer
//! (`peer.py`), and reading the broker's `query --json`.
//!
//! Every wait is bounded; failures print the programs' stderr.

#![allow(dead_code)]

pub mod udp;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::{release_bin, require_root, workspace_root, Proc, TestBed};

pub const BROKER: &str = "203.0.113.10";
/// The second broker's address, added to the broker host by [`Faults::second_address`].
pub const BROKER2: &str = "203.0.113.11";
pub const STARTUP: Duration = Duration::from_secs(20);
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The shim's variables, cleared so the caller's environment cannot leak in.
const SHIM_VARS: [&str; 8] =
    ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "DPF_INAGENT", "GCB_LOG", "GCB_LOG_FILE", "GCB_HEARTBEAT_S", "LD_PRELOAD"];

pub fn built(name: &str) -> PathBuf {
    let p = release_bin(name);
    assert!(p.exists(), "{} is missing: run `cargo build --release`", p.display());
    p
}

pub fn ctest(name: &str) -> PathBuf {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests`", p.display());
    p
}

pub fn peer_py() -> PathBuf {
    workspace_root().join("testbed/tests/faults_support/peer.py")
}

/// Polls `check` every 50 ms until it returns Some, for at most `within`.
pub fn wait_for<T>(within: Duration, what: impl Fn() -> String, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Faults {
    pub bed: TestBed,
    /// `(listen IP, process)` per running broker.
    pub brokers: Vec<(String, Proc)>,
    /// The shim's heartbeat interval, seconds; brokers expire after three.
    pub heartbeat_s: u64,
}

impl Faults {
    pub fn up(heartbeat_s: u64) -> Faults {
        let mut f = Faults::without_broker(heartbeat_s);
        f.start_broker(BROKER, &[]);
        f
    }

    pub fn without_broker(heartbeat_s: u64) -> Faults {
        require_root();
        let bed = TestBed::up().expect("test bed");
        Faults { bed, brokers: Vec::new(), heartbeat_s }
    }

    /// Gives the broker host a second public address, for a second broker.
    pub fn second_address(&self) {
        let out = self.bed.run("broker", &["ip", "addr", "add", &format!("{BROKER2}/24"), "dev", "eth0"], STARTUP).expect("ip addr add");
        assert!(out.status.success(), "ip addr add: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts a broker on `ip` (heartbeat timeout three shim intervals) and waits
    /// for its command port; replaces a dead one on the same IP.
    pub fn start_broker(&mut self, ip: &str, extra: &[&str]) {
        self.start_broker_under(&[], ip, extra);
    }

    /// [`Faults::start_broker`] with a command in front (`prlimit --nofile=N`).
    pub fn start_broker_under(&mut self, wrapper: &[&str], ip: &str, extra: &[&str]) {
        let listen = format!("{ip}:65432");
        let timeout = (3 * self.heartbeat_s).to_string();
        let bin = built("gcb-broker");
        let mut args = wrapper.to_vec();
        args.extend_from_slice(&[bin.to_str().unwrap(), "--listen", &listen, "--public-ip", ip]);
        args.extend_from_slice(&["--port-range", "20000-20999", "--heartbeat-timeout-s", &timeout, "--log", "debug"]);
        args.extend_from_slice(extra);
        let p = self.bed.spawn("broker", &args).expect("gcb-broker");
        self.brokers.retain(|(i, _)| i != ip);
        self.brokers.push((ip.to_string(), p));
        self.wait_for_command_port(ip);
    }

    pub fn broker(&self, ip: &str) -> &Proc {
        &self.brokers.iter().find(|(i, _)| i == ip).expect("no such broker").1
    }

    /// SIGKILL, as a crash would.
    pub fn kill_broker(&self, ip: &str) {
        self.broker(ip).kill();
    }

    pub fn wait_for_command_port(&self, ip: &str) {
        let end = Instant::now() + STARTUP;
        while Instant::now() < end {
            let filter = format!("src = {ip}:65432");
            let out = self.bed.run("broker", &["ss", "-Hlun", &filter], Duration::from_secs(5)).expect("ss");
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            if let Some(st) = self.broker(ip).try_wait() {
                panic!("gcb-broker on {ip} exited ({st}): {}", self.broker(ip).stderr_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gcb-broker on {ip} did not bind its command port: {}", self.broker(ip).stderr_text());
    }

    /// `PROGRAM ARGS` on `host`, under the shim with `brokers` when given.
    pub fn cmd(&self, host: &str, brokers: Option<&str>, program: &[&str]) -> Command {
        let mut c = match brokers {
            Some(b) => {
                let mut c = self.bed.cmd(host, workspace_root().join("scripts/gcb-run"));
                let hb = self.heartbeat_s.to_string();
                c.args(["--broker", b, "--log", "info", "--heartbeat", &hb, "--lib"]).arg(built("libgcb.so")).arg("--");
                c.args(program);
                c
            }
            None => {
                let mut c = self.bed.cmd(host, program[0]);
                c.args(&program[1..]);
                c
            }
        };
        for v in SHIM_VARS {
            c.env_remove(v);
        }
        c
    }

    /// The Python peer in `role` on `host`.
    pub fn peer(&self, host: &str, brokers: Option<&str>, role: &str, arg: &str) -> Proc {
        let py = testbed::python3().to_str().unwrap().to_string();
        let script = peer_py();
        let c = self.cmd(host, brokers, &[&py, "-u", script.to_str().unwrap(), role, arg]);
        self.bed.spawn_cmd(c).expect("peer.py")
    }

    /// The Python peer in `role` on `host` under the shim with `brokers`, not
    /// offering hole punching (`GCB_PUNCH=0`), so its connection to another
    /// private realm is relayed whatever the gateways allow.
    pub fn relayed_peer(&self, host: &str, brokers: &str, role: &str, arg: &str) -> Proc {
        let py = testbed::python3().to_str().unwrap().to_string();
        let script = peer_py();
        let mut c = self.cmd(host, Some(brokers), &[&py, "-u", script.to_str().unwrap(), role, arg]);
        c.env("GCB_PUNCH", "0");
        self.bed.spawn_cmd(c).expect("peer.py")
    }

    /// A peer server on `host`:`port` under the shim; waits for its first name.
    pub fn peer_server(&self, host: &str, brokers: &str, port: u16) -> (Proc, String) {
        let p = self.peer(host, Some(brokers), "server", &port.to_string());
        let name = p.wait_line("NAME ", STARTUP).unwrap_or_else(|e| panic!("peer server on {host}: {e}\n{}", p.stderr_text()));
        (p, name)
    }

    /// An echo-server (epoll) on `host`:`port` under the shim; returns it and
    /// the address it advertised.
    pub fn echo_server(&self, host: &str, brokers: &str, port: u16) -> (Proc, String) {
        let srv = ctest("echo-server");
        let port = port.to_string();
        let c = self.cmd(host, Some(brokers), &[srv.to_str().unwrap(), "--proto", "tcp", "--port", &port, "--mode", "epoll"]);
        let p = self.bed.spawn_cmd(c).expect("echo-server");
        let listen = p.wait_line("LISTEN tcp ", STARTUP).unwrap_or_else(|e| panic!("echo-server on {host}: {e}\n{}", p.stderr_text()));
        (p, listen)
    }

    /// An echo-client run to `dest` from `host` (under the shim with `brokers`);
    /// asserts every byte came back; returns its stdout.
    pub fn echo(&self, host: &str, brokers: Option<&str>, dest: &str, extra: &[&str], context: &dyn Fn() -> String) -> String {
        let cli = ctest("echo-client");
        let mut args = vec![cli.to_str().unwrap(), "--proto", "tcp", "--connect", dest, "--bytes", "20000", "--rounds", "2"];
        args.extend_from_slice(extra);
        let out = testbed::run_with_timeout(self.cmd(host, brokers, &args), CLIENT_TIMEOUT)
            .unwrap_or_else(|e| panic!("echo-client on {host}: {e}\n{}", context()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "echo-client {extra:?} to {dest} from {host} (shim: {brokers:?}) failed ({}):\n{stdout}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            context()
        );
        let summary = stdout.lines().find(|l| l.starts_with("SUMMARY ")).expect("SUMMARY line");
        let field = |k: &str| summary.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{k}="))).map(str::to_string);
        assert_eq!(field("ok"), field("runs"), "{summary}");
        stdout
    }

    /// Runs echo-clients to `dest` from `host` until one carries every byte
    /// back, for at most `within`; returns how long that took.
    pub fn echo_until_ok(&self, host: &str, brokers: Option<&str>, dest: &str, within: Duration) -> Duration {
        let start = Instant::now();
        let cli = ctest("echo-client");
        let mut last = String::new();
        while start.elapsed() < within {
            let args = [cli.to_str().unwrap(), "--proto", "tcp", "--connect", dest, "--bytes", "20000", "--timeout-ms", "2000"];
            if let Ok(out) = testbed::run_with_timeout(self.cmd(host, brokers, &args), CLIENT_TIMEOUT) {
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                if out.status.success() && stdout.contains(" ok=1 ") {
                    return start.elapsed();
                }
                last = stdout + &String::from_utf8_lossy(&out.stderr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no echo from {host} to {dest} within {within:?}; last try:\n{last}\n{}", self.broker_logs());
    }

    /// Runs `args` on `host` and asserts it succeeded.
    pub fn must(&self, host: &str, args: &[&str]) {
        let out = self.bed.run(host, args, STARTUP).unwrap_or_else(|e| panic!("{args:?} on {host}: {e}"));
        assert!(out.status.success(), "{args:?} on {host}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The proxy addresses (`ip:port`) the broker on `ip` has registered for TCP.
    pub fn registrations(&self, ip: &str) -> Vec<String> {
        self.registrations_with_pid(ip).into_iter().map(|(p, _)| p).collect()
    }

    /// The broker's TCP registrations: proxy address and the client's pid.
    pub fn registrations_with_pid(&self, ip: &str) -> Vec<(String, u32)> {
        let bin = built("gcb-broker");
        let target = format!("{ip}:65432");
        let out = self.bed.run("broker", &[bin.to_str().unwrap(), "query", &target, "--json"], STARTUP).expect("query");
        if !out.status.success() {
            return Vec::new();
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let v = testbed::json::parse(&text).unwrap_or_else(|e| panic!("query --json: {e}: {text}"));
        let regs = v.get("registrations").and_then(|r| r.as_array()).unwrap_or(&[]);
        regs.iter()
            .filter(|r| r.get("proto").and_then(|p| p.as_str()) == Some("tcp"))
            .filter_map(|r| {
                let proxy = r.get("proxy").and_then(|p| p.as_str())?.to_string();
                let pid = match r.get("pid") {
                    Some(testbed::json::Value::Num(n)) => *n as u32,
                    _ => 0,
                };
                Some((proxy, pid))
            })
            .collect()
    }

    /// Every broker's stderr, for failure messages.
    pub fn broker_logs(&self) -> String {
        self.brokers.iter().map(|(ip, p)| format!("--- broker {ip}:\n{}", p.stderr_text())).collect()
    }
}

/// Waits until `p`'s stderr holds `needle` at least `count` times.
pub fn wait_stderr_count(p: &Proc, needle: &str, count: usize, within: Duration, context: &dyn Fn() -> String) {
    wait_for(within, || format!("{count}x {needle:?} in:\n{}\n{}", p.stderr_text(), context()), || {
        (p.stderr_text().matches(needle).count() >= count).then_some(())
    });
}
