//! End-to-end test helpers both daemons' test suites use, compiled only
//! with the `testing` feature (a dev-dependency feature, never in a shipped
//! binary): the daemon binary with a clean environment, bounded runs, free
//! ports, and a running daemon whose stderr lines can be waited for.
//!
//! Every wait is bounded, so a daemon that hangs fails its test instead of
//! stalling the suite, and a [`Running`] daemon is killed when it drops,
//! also when an assertion fails.

pub mod counters;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// How long one expected log line (or reply, or command) may take. Only
/// ever waited for something that must come, so its size costs nothing when
/// tests pass; it is wide because a loaded 2-core machine took over 5 s to
/// start dpfd in a fresh network namespace (its first `nft` run) while other
/// suites ran.
pub const LINE_WAIT: Duration = Duration::from_secs(15);

/// `bin` with `args` and a clean environment: RUST_LOG and every variable
/// starting with `env_prefix` removed, so settings of the developer's shell
/// cannot change the outcome.
pub fn clean_command(bin: &str, env_prefix: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with(env_prefix) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs a command that must end by itself within 10 s; gives its exit code
/// and output.
pub fn run_cmd(mut cmd: Command) -> (i32, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{cmd:?} did not exit within 10 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// The one-line error contract: a single line, `<program>: ...`, that
/// contains `needle`.
pub fn assert_one_line_error(stderr: &str, program: &str, needle: &str) {
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with(&format!("{program}: ")), "{stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

/// A fresh directory under the system temp dir, named after `prefix`, this
/// process and a counter, so parallel tests never share one.
pub fn temp_dir(prefix: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The ports [`free_port`] picks from. A port range a test gives a daemon
/// (the broker's proxy ports) must lie outside it, or the command port a
/// test picked may fall inside the range, which the broker refuses.
pub const FREE_PORTS: std::ops::Range<u16> = 10_000..22_000;

/// A loopback port free for both UDP and TCP a moment ago: the broker binds
/// its command port on both, and a port free for UDP alone may be taken
/// for TCP.
///
/// Picked below the kernel's ephemeral range (32768 up by default), not by
/// binding port 0: an ephemeral port is released for anyone's next connect
/// or autobind, and lost that race now and then on a busy CI machine. Test
/// processes start at pid-spread offsets so that concurrent suites rarely
/// try the same ports; proxy ranges in the suites start at 22000.
pub fn free_port() -> u16 {
    const LO: u32 = FREE_PORTS.start as u32;
    const SPAN: u32 = (FREE_PORTS.end - FREE_PORTS.start) as u32;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = std::process::id().wrapping_mul(101) % SPAN;
    for _ in 0..1_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let port = (LO + (start + n) % SPAN) as u16;
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if udp.is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP in {LO}-{}", LO + SPAN - 1);
}

/// A running daemon whose stderr lines arrive on a channel.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Starts `cmd` with stdout discarded and stderr read line by line.
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Finds a stderr line containing `needle`, among those already read or
    /// arriving within [`LINE_WAIT`]; the order of lines does not matter.
    pub fn expect_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + LINE_WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {needle:?} within {LINE_WAIT:?}; stderr so far: {:#?}",
            self.seen
        );
    }

    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}: {:#?}",
                self.seen
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the daemon and waits for it; what it logged stays readable.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every stderr line so far, including those not yet waited for.
    pub fn log(&mut self) -> &[String] {
        self.seen.extend(self.lines.try_iter());
        &self.seen
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}
