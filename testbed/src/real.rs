//! Helpers for the end-to-end tests of real, unmodified programs
//! (`testbed/tests/real_*.rs`): a test bed with either `gcb-broker` on the broker
//! host (GCB mode) or `dpfd` on the gateway GA (DPF mode, by dpfd's own protocol
//! or by PCP as a standard gateway), commands that run a
//! program under `scripts/gcb-run` in that mode, and the byte checks the tests
//! share (payload files, SHA-256 of what arrived).
//!
//! The programs under test are the system's own (python3, curl, socat, ncat,
//! iperf3, redis, openssh); nothing here knows about any of them, so a program
//! that fails does so through the shim, never through a special case here.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{release_bin, require_root, run_with_timeout, wait_for, workspace_root, NatKinds, Proc, TestBed};

/// The broker host's address, where GCB proxy addresses live.
pub const BROKER: &str = "203.0.113.10";
/// dpfd's command address on GA's private side.
pub const DPFD: &str = "192.0.2.1";
/// How long a server may take to start and register on a loaded machine.
pub const STARTUP: Duration = Duration::from_secs(20);
/// The reasons the broker counts a TCP punch's fallback by, as in its
/// `punch_fallbacks_<why>` counters.
pub const PUNCH_FALLBACKS: [&str; 4] = ["timeout", "check_failed", "local_error", "no_report"];
/// The shim's variables, cleared so the caller's environment cannot leak in.
const SHIM_VARS: [&str; 10] =
    ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "DPF_INAGENT", "GCB_LOG", "GCB_LOG_FILE", "GCB_HEARTBEAT_S", "GCB_PUNCH_TTL", "GCB_STANDBY", "LD_PRELOAD"];

/// Which system carries the traffic across the NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `gcb-broker` on the broker host; servers get proxy addresses on it.
    Gcb,
    /// `dpfd` on GA; servers get port forwards on GA's public address.
    Dpf,
    /// `dpfd` on GA as a standard gateway: the shim maps by PCP
    /// (`--dpf pcp://`), with leases of 6 s, so renewals happen within a test.
    Pcp,
}

/// A test bed with the daemon of one mode running, and a scratch directory.
pub struct RealBed {
    pub bed: TestBed,
    pub mode: Mode,
    /// `gcb-broker` or `dpfd`.
    pub daemon: Proc,
    /// Files for this run (payloads, keys, what clients received); removed on drop.
    pub scratch: PathBuf,
    /// The shim's heartbeat interval (`gcb-run --heartbeat`) in GCB mode, seconds.
    pub heartbeat_s: u64,
    /// Removes `scratch` when a test panics before [`RealBed::down`].
    _scratch_guard: ScratchGuard,
}

/// Removes a directory when dropped.
struct ScratchGuard(PathBuf);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A release artefact the tests need; panics with the build command when missing.
pub fn built(name: &str) -> PathBuf {
    let p = release_bin(name);
    assert!(p.exists(), "{} is missing: run `cargo build --release`", p.display());
    p
}

impl RealBed {
    pub fn up(mode: Mode) -> RealBed {
        RealBed::up_with(mode, 2, &[])
    }

    /// A bed whose shims heartbeat every `heartbeat_s` seconds (GCB mode) and
    /// whose daemon gets `daemon_args` after its usual ones (for example
    /// `--heartbeat-timeout-s 3`, so a silent client expires within a test).
    pub fn up_with(mode: Mode, heartbeat_s: u64, daemon_args: &[&str]) -> RealBed {
        RealBed::up_with_nat(mode, heartbeat_s, daemon_args, NatKinds::default())
    }

    /// [`RealBed::up_with`] on a bed whose gateways have the given NAT kinds.
    pub fn up_with_nat(mode: Mode, heartbeat_s: u64, daemon_args: &[&str], nat: NatKinds) -> RealBed {
        require_root();
        let bed = TestBed::up_with_nat(nat).expect("test bed");
        let scratch = std::env::temp_dir().join(format!("gcb-real-{}", bed.prefix()));
        std::fs::create_dir_all(&scratch).expect("scratch directory");
        let daemon = match mode {
            Mode::Gcb => {
                let broker = built("gcb-broker");
                let args = ["--listen", "203.0.113.10:65432", "--public-ip", BROKER, "--port-range", "20000-20999"];
                let mut c = bed.cmd("broker", broker);
                c.args(args).args(daemon_args);
                let p = bed.spawn_cmd(c).expect("gcb-broker");
                wait_for(STARTUP, "gcb-broker binds its command port", || {
                    let out = bed.run("broker", &["ss", "-Hlun", "sport = :65432"], Duration::from_secs(5)).ok()?;
                    (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
                });
                p
            }
            Mode::Dpf | Mode::Pcp => {
                let mirror = scratch.join("dpfd.mirror");
                let mut c = bed.cmd("ga", built("dpfd"));
                c.args(["--listen", DPFD, "--public-ip", "203.0.113.1", "--port-range", "40000-40999", "--mirror"]);
                c.arg(&mirror).args(["--probe-interval-s", "1"]);
                if mode == Mode::Pcp {
                    c.args(["--pcp-min-lifetime-s", "1", "--pcp-max-lifetime-s", "6"]);
                }
                c.args(daemon_args);
                let p = bed.spawn_cmd(c).expect("dpfd");
                wait_for(STARTUP, "dpfd started", || p.stderr_text().contains("started: command port udp").then_some(()));
                p
            }
        };
        let _scratch_guard = ScratchGuard(scratch.clone());
        RealBed { bed, mode, daemon, scratch, heartbeat_s, _scratch_guard }
    }

    /// `program` on `host`, under `scripts/gcb-run` in this bed's mode when `shim`,
    /// ready for its arguments.
    pub fn cmd(&self, host: &str, program: impl AsRef<OsStr>, shim: bool) -> Command {
        let mut c = if shim {
            let mut c = self.bed.cmd(host, workspace_root().join("scripts/gcb-run"));
            match self.mode {
                Mode::Gcb => c.args(["--broker", BROKER, "--heartbeat"]).arg(self.heartbeat_s.to_string()),
                Mode::Dpf => c.args(["--dpf", DPFD]),
                Mode::Pcp => c.args(["--dpf", "pcp://"]),
            };
            c.args(["--log", &std::env::var("TESTBED_SHIM_LOG").unwrap_or_else(|_| "info".into()), "--lib"]).arg(built("libgcb.so")).arg("--").arg(program);
            c
        } else {
            self.bed.cmd(host, program)
        };
        for v in SHIM_VARS {
            c.env_remove(v);
        }
        c
    }

    /// Starts `args` on `host` in the background (under the shim when `shim`).
    pub fn spawn<S: AsRef<OsStr>>(&self, host: &str, shim: bool, args: &[S]) -> Proc {
        let mut c = self.cmd(host, &args[0], shim);
        c.args(&args[1..]);
        self.bed.spawn_cmd(c).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits until `server` (under the shim) logged that `proto local` registered,
    /// and returns the public address it got: a proxy address on the broker in GCB
    /// mode, a forward on GA in DPF mode.
    pub fn registered(&self, server: &Proc, proto: &str, local: &str) -> String {
        let needle = format!("gcb: registered {proto} {local} as ");
        let public = wait_for(STARTUP, &format!("{needle:?} in the server's stderr"), || {
            let text = server.stderr_text();
            let rest = text.split(&needle).nth(1)?;
            rest.contains('\n').then(|| rest.lines().next().unwrap_or_default().to_string())
        });
        let want = match self.mode {
            Mode::Gcb => "203.0.113.10:",
            Mode::Dpf | Mode::Pcp => "203.0.113.1:",
        };
        assert!(public.starts_with(want), "{local} registered as {public}, expected {want}PORT");
        public
    }

    /// The clients every server is reached from: the public host with and without
    /// the shim and realm B with it in GCB mode; a plain public client in DPF mode.
    pub fn client_hosts(&self) -> &'static [(&'static str, bool)] {
        match self.mode {
            Mode::Gcb => &[("pub", false), ("pub", true), ("b1", true)],
            Mode::Dpf | Mode::Pcp => &[("pub", false)],
        }
    }

    /// Runs `args` on `host` to completion within `timeout`, stdin from `stdin`
    /// (or /dev/null); panics with everything useful unless it exits 0.
    pub fn run_ok<S: AsRef<OsStr>>(
        &self,
        host: &str,
        shim: bool,
        args: &[S],
        stdin: Option<&Path>,
        timeout: Duration,
        server: &Proc,
    ) -> Output {
        let mut c = self.cmd(host, &args[0], shim);
        c.args(&args[1..]);
        if let Some(path) = stdin {
            c.stdin(Stdio::from(std::fs::File::open(path).expect("stdin file")));
        }
        let what = crate::proc::describe(&c);
        let out = run_with_timeout(c, timeout).unwrap_or_else(|e| panic!("{e}\nserver stderr:\n{}", server.stderr_text()));
        assert!(
            out.status.success(),
            "{what} on {host} (shim: {shim}) failed ({}):\nstdout: {}\nstderr: {}\nserver stderr:\n{}\n{:?} stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            server.stderr_text(),
            self.mode,
            self.daemon.stderr_text()
        );
        out
    }

    /// What the daemon has registered, as `(proto, public, local)`: the
    /// broker's registrations (`gcb-broker query --json`) in GCB mode, dpfd's
    /// forwards (`dpfd status --json` on GA) in DPF mode. Panics when the
    /// daemon does not answer, so that no one mistakes a dead daemon for an
    /// empty one.
    pub fn registrations(&self) -> Vec<(String, String, String)> {
        let (host, args, list, public) = match self.mode {
            Mode::Gcb => {
                let args = vec![built("gcb-broker"), "query".into(), format!("{BROKER}:65432").into(), "--json".into()];
                ("broker", args, "registrations", "proxy")
            }
            Mode::Dpf | Mode::Pcp => ("ga", vec![built("dpfd"), "status".into(), "--json".into()], "forwards", "public"),
        };
        let out = self.bed.run(host, &args, STARTUP).unwrap_or_else(|e| panic!("{:?} status: {e}", self.mode));
        assert!(
            out.status.success(),
            "{:?} status failed ({}): {}\ndaemon stderr:\n{}",
            self.mode,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.daemon.stderr_text()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let v = crate::json::parse(&text).unwrap_or_else(|e| panic!("status --json: {e}: {text}"));
        let field = |r: &crate::json::Value, k: &str| r.get(k).and_then(|p| p.as_str()).unwrap_or_default().to_string();
        let regs = v.get(list).and_then(|r| r.as_array()).unwrap_or(&[]);
        regs.iter().map(|r| (field(r, "proto"), field(r, public), field(r, "local"))).collect()
    }

    /// `gcb-broker query --json` (GCB mode); panics when the broker does not answer.
    pub fn broker_query(&self) -> crate::json::Value {
        assert_eq!(self.mode, Mode::Gcb, "the broker runs in GCB mode");
        let args = [built("gcb-broker").into_os_string(), "query".into(), format!("{BROKER}:65432").into(), "--json".into()];
        let out = self.bed.run("broker", &args, STARTUP).unwrap_or_else(|e| panic!("gcb-broker query: {e}"));
        assert!(out.status.success(), "gcb-broker query failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        crate::json::parse(&text).unwrap_or_else(|e| panic!("query --json: {e}: {text}"))
    }

    /// The broker's counter `name` (GCB mode); panics when the broker does
    /// not answer or has no such counter.
    pub fn broker_counter(&self, name: &str) -> u64 {
        let v = self.broker_query();
        match v.get("counters").and_then(|c| c.get(name)) {
            Some(crate::json::Value::Num(n)) => *n as u64,
            other => panic!("no counter {name} in the query ({other:?}): {v:?}"),
        }
    }

    /// TCP punches that fell back to the relay, whatever the reason (the
    /// broker's `punch_fallbacks_<why>` counters, [`PUNCH_FALLBACKS`]).
    pub fn punch_fallbacks(&self) -> u64 {
        PUNCH_FALLBACKS.iter().map(|why| self.broker_counter(&format!("punch_fallbacks_{why}"))).sum()
    }

    /// A path in the scratch directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }

    /// Tears the bed down, reporting failure.
    pub fn down(self) {
        let RealBed { bed, daemon, scratch, .. } = self;
        drop(daemon);
        let _ = std::fs::remove_dir_all(&scratch);
        bed.down().expect("tear down");
    }
}

/// Writes `size` bytes that no compression or caching could fake (a keyed
/// pattern, different for each `seed`) to `path`; returns their SHA-256.
pub fn payload(path: &Path, size: usize, seed: u32) -> String {
    let data: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_add(seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(path, &data).expect("payload");
    sha256_of(&data)
}

/// SHA-256 of `bytes` in hex, by `sha256sum` (coreutils), so the test crate keeps
/// no hash implementation of its own.
pub fn sha256_of(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum");
    let mut stdin = c.stdin.take().expect("stdin");
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = c.wait_with_output().expect("sha256sum");
    writer.join().expect("writer").expect("write to sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> String {
    sha256_of(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Splits `IP:PORT`.
pub fn host_port(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap_or_else(|| panic!("{addr:?} is not IP:PORT"))
}
