//! What every part of the bench shares: where the programs are, how big a run
//! is (`--quick` or full), the stop flag that SIGINT/SIGTERM set, and bounded,
//! interruptible ways to run programs inside the test bed.
//!
//! Every program is started through the [`TestBed`], so the bed stops it when
//! it is dropped, whatever path the bench leaves by. Waits are sliced so that a
//! signal is noticed within a few tens of milliseconds.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};
use testbed::{Proc, TestBed};

/// Addresses fixed by `scripts/netns`; the commands in issue 6 name them
/// literally, and so does the report, so they are constants here too.
pub const BROKER_IP: &str = "203.0.113.10";
pub const GA_PUBLIC_IP: &str = "203.0.113.1";
pub const GA_PRIVATE_IP: &str = "192.0.2.1";
pub const A1_IP: &str = "192.0.2.10";
/// The broker's command port (docs/design.md, "The shim's environment": historic GCB's 65432).
pub const BROKER_PORT: u16 = 65432;
/// dpfd's default command port (its --help: "the port defaults to 65433").
pub const DPFD_PORT: u16 = 65433;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: the one thing that is async-signal-safe and enough.
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set the stop flag instead of killing us, so the bench can
/// stop its programs and remove the test bed's namespaces on the way out.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// `Err("interrupted")` once a signal arrived; sprinkled between steps.
pub fn check_stop() -> Result<(), String> {
    if stopped() {
        Err("interrupted by a signal".into())
    } else {
        Ok(())
    }
}

/// The brokers and the 10k-registration test need many descriptors; children
/// inherit the limit, so raising ours once covers every program we start.
pub fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        let want: libc::rlim_t = 65536;
        if r.rlim_max < want {
            // Root may raise the hard limit; if that fails keep what we have.
            let up = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return;
            }
        }
        r.rlim_cur = r.rlim_max.min(want.max(r.rlim_cur));
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

/// The programs the bench runs.
pub struct Paths {
    pub echo_client: PathBuf,
    pub echo_server: PathBuf,
    /// Timed non-blocking connects; a missing one only makes its part n/a.
    pub nb_connect: PathBuf,
    pub gcb_run: PathBuf,
    pub libgcb: PathBuf,
    pub broker: PathBuf,
    pub dpfd: PathBuf,
    /// This very binary, for the helper subcommands run inside the bed.
    pub bench: PathBuf,
}

pub struct Ctx {
    pub quick: bool,
    pub out_dir: PathBuf,
    pub paths: Paths,
}

impl Ctx {
    pub fn new(quick: bool, out_dir: PathBuf) -> Result<Ctx, String> {
        let root = testbed::workspace_root();
        let bench = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let paths = Paths {
            echo_client: root.join("c-tests/build/echo-client"),
            echo_server: root.join("c-tests/build/echo-server"),
            nb_connect: root.join("c-tests/build/nb-connect"),
            gcb_run: root.join("scripts/gcb-run"),
            libgcb: testbed::release_bin("libgcb.so"),
            broker: testbed::release_bin("gcb-broker"),
            dpfd: testbed::release_bin("dpfd"),
            bench,
        };
        for p in [&paths.echo_client, &paths.echo_server, &paths.gcb_run] {
            if !p.exists() {
                return Err(format!(
                    "{} is missing (scripts/bench builds it: make -C c-tests)",
                    p.display()
                ));
            }
        }
        Ok(Ctx {
            quick,
            out_dir,
            paths,
        })
    }

    /// Pick the quick or the full value of a size.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    /// A release artefact that may not be built yet (another engineer's crate
    /// mid-edit): Err with a reason the report can show.
    pub fn need(&self, p: &Path) -> Result<(), String> {
        if p.exists() {
            Ok(())
        } else {
            Err(format!("{} is not built", p.display()))
        }
    }
}

/// How a program is started: plain, or under `scripts/gcb-run` in GCB or DPF mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Shim {
    None,
    Gcb,
    Dpf,
}

/// `PROGRAM ARGS` in `host`, wrapped in `scripts/gcb-run` as `shim` says.
pub fn prog<S: AsRef<OsStr>>(
    ctx: &Ctx,
    bed: &TestBed,
    host: &str,
    shim: Shim,
    program: &Path,
    args: &[S],
) -> Command {
    let mut c = match shim {
        Shim::None => bed.cmd(host, program),
        Shim::Gcb | Shim::Dpf => {
            let mut c = bed.cmd(host, &ctx.paths.gcb_run);
            if shim == Shim::Gcb {
                c.args(["--broker", BROKER_IP]);
            } else {
                c.args(["--dpf", GA_PRIVATE_IP]);
            }
            c.arg("--lib").arg(&ctx.paths.libgcb).arg("--").arg(program);
            c
        }
    };
    c.args(args);
    c
}

/// A program that ran to its end (or was stopped at its time limit).
pub struct Finished {
    pub success: bool,
    pub status: String,
    pub stdout: Vec<String>,
    pub stderr: String,
    pub secs: f64,
}

impl Finished {
    /// One line saying why it failed, for "n/a (reason)".
    pub fn why(&self) -> String {
        let err = last_line(&self.stderr);
        let out = self
            .stdout
            .iter()
            .rev()
            .find(|l| l.contains("FAILED") || l.contains("MISMATCH") || l.contains("ERROR"))
            .cloned()
            .unwrap_or_default();
        let detail = [out, err]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if detail.is_empty() {
            format!("exited {}", self.status)
        } else {
            format!("exited {}: {detail}", self.status)
        }
    }
}

/// The last non-empty line of a text, for short error messages.
pub fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Run `cmd` in the bed to its end, at most `timeout`, stopping early on a signal.
pub fn run_in(bed: &TestBed, cmd: Command, timeout: Duration) -> Result<Finished, String> {
    let t0 = Instant::now();
    let p = bed.spawn_cmd(cmd)?;
    loop {
        if let Some(st) = p.wait_timeout(Duration::from_millis(20)) {
            let secs = t0.elapsed().as_secs_f64();
            drain_stdout(&p, Duration::from_secs(2));
            return Ok(Finished {
                success: st.success(),
                status: st.to_string(),
                stdout: p.stdout_seen(),
                stderr: p.stderr_text(),
                secs,
            });
        }
        if stopped() {
            p.terminate();
            return Err("interrupted by a signal".into());
        }
        if t0.elapsed() > timeout {
            p.terminate();
            return Err(format!(
                "no result within {timeout:?} (stopped); stderr: {}",
                last_line(&p.stderr_text())
            ));
        }
    }
}

/// Wait until the reader thread has seen the end of stdout, so that every line
/// the program printed before exiting is in `stdout_seen`.
fn drain_stdout(p: &Proc, bound: Duration) {
    let end = Instant::now() + bound;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match p.lines.recv_timeout(left) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Disconnected) | Err(RecvTimeoutError::Timeout) => return,
        }
    }
}

/// Wait for a line starting with `prefix` from a running program, in slices so
/// a signal ends the wait.
pub fn wait_line(p: &Proc, prefix: &str, timeout: Duration) -> Result<String, String> {
    let end = Instant::now() + timeout;
    loop {
        check_stop()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no \"{prefix}\" line within {timeout:?}; stderr: {}",
                last_line(&p.stderr_text())
            ));
        }
        match p.lines.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.to_string());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = p.wait_timeout(Duration::from_millis(200));
                let st = p
                    .try_wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "closed stdout".into());
                return Err(format!(
                    "exited ({st}) before printing \"{prefix}\"; stderr: {}",
                    last_line(&p.stderr_text())
                ));
            }
        }
    }
}

/// A daemon that is still running `grace` after it started is taken as up;
/// one that exits in that time reports its last stderr line.
pub fn expect_alive(p: &Proc, what: &str, grace: Duration) -> Result<(), String> {
    match p.wait_timeout(grace) {
        None => Ok(()),
        Some(st) => Err(format!(
            "{what} exited at startup ({st}): {}",
            last_line(&p.stderr_text())
        )),
    }
}

/// A directory of our own for dpfd's mirror file, which dpfd accompanies
/// with files of its own (a lock file); remove it whole with [`scratch_done`].
pub fn scratch_dir(bed: &TestBed, what: &str) -> Result<String, String> {
    let dir = format!("/tmp/gcb-bench-{}-{what}", bed.prefix());
    std::fs::create_dir_all(&dir).map_err(|e| format!("{dir}: {e}"))?;
    Ok(dir)
}

pub fn scratch_done(dir: &str) {
    // Only ever a directory scratch_dir made: the prefix is the bed's own.
    if dir.starts_with("/tmp/gcb-bench-") {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Run a short command (nft, ss) in `host`; Ok(stdout) if it succeeded.
pub fn sh(bed: &TestBed, host: &str, args: &[&str]) -> Result<String, String> {
    let o = bed.run(host, args, Duration::from_secs(20))?;
    if !o.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            last_line(&String::from_utf8_lossy(&o.stderr))
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The paper's "regular" configuration: a static forward of public `port` on GA
/// to a1, exactly the rule issue 6 gives.
pub fn static_forward(bed: &TestBed, proto: &str, port: u16) -> Result<(), String> {
    let rule =
        format!("add rule ip nat pre iifname pub0 {proto} dport {port} dnat to {A1_IP}:{port}");
    sh(bed, "ga", &["nft", &rule]).map(|_| ())
}

/// A `key=value` field of a line like `SENT bytes=1 secs=2`.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .map(str::to_string)
}

pub fn field_f64(line: &str, key: &str) -> Option<f64> {
    field(line, key).and_then(|v| v.parse().ok())
}
