//! Bounded process control for tests: run with a timeout, and long-running servers
//! whose stdout can be waited on line by line.
//!
//! Every wait here has a deadline, because a hung test is worse than a failed one.
//! Processes are stopped by PID only, and only through the `Child` we hold: as long as
//! we have not reaped a child its PID cannot be reused, so a signal can never hit a
//! stranger.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a process gets between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// Poll interval while waiting for a child to exit.
const POLL: Duration = Duration::from_millis(10);
/// Cap on captured stderr per process, so a chatty server cannot eat memory.
const STDERR_CAP: usize = 256 * 1024;

fn verbose() -> bool {
    std::env::var_os("TESTBED_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another test thread must not make cleanup panic too.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wait for `child` to exit for at most `timeout`.
pub fn wait_child_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            // ECHILD and the like: nothing left to wait for.
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(POLL.min(deadline - now));
    }
}

/// Stop a child: SIGTERM, up to `grace` for it to exit, then SIGKILL, then reap.
/// Returns the exit status (None only if the child could not be reaped at all).
pub fn terminate_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // Not reaped yet, so the PID is still this child's.
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a PID we own; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if let Some(st) = wait_child_timeout(child, grace) {
        return Some(st);
    }
    let _ = child.kill();
    // SIGKILL cannot be ignored; the bound only guards against a stuck kernel (D state).
    wait_child_timeout(child, Duration::from_secs(10))
}

/// Run `cmd` with stdout and stderr captured; kill it if it is still running after
/// `timeout`. Stdin is /dev/null unless the caller set it.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let what = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let out_rx = drain(child.stdout.take());
    let err_rx = drain(child.stderr.take());
    let status = wait_child_timeout(&mut child, timeout);
    let timed_out = status.is_none();
    let status = match status {
        Some(st) => st,
        None => terminate_child(&mut child, Duration::from_millis(200))
            .ok_or_else(|| format!("{what}: could not reap after timeout"))?,
    };
    // A grandchild that kept our pipe open would block the readers forever, so their
    // results are collected with a bound too.
    let collect =
        |rx: Receiver<Vec<u8>>| rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let out = Output {
        status,
        stdout: collect(out_rx),
        stderr: collect(err_rx),
    };
    if timed_out {
        return Err(format!(
            "{what}: timed out after {timeout:?}; stdout: {:?}; stderr: {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

/// Read a pipe to its end on a thread; the bytes arrive on the returned channel.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// A short human description of a command for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.contains(char::is_whitespace) || a.is_empty() {
            // Long inline scripts make messages unreadable; show their start only.
            let short: String = a.chars().take(40).collect();
            s.push_str(&format!("{short:?}"));
            if a.chars().count() > 40 {
                s.push_str("...");
            }
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Polls `check` every 50 ms until it returns Some, for at most `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running background process (typically a server) with its stdout delivered line
/// by line. Dropping it stops the process (SIGTERM, then SIGKILL).
pub struct Proc {
    child: Arc<Mutex<Child>>,
    pid: u32,
    what: String,
    /// Stdout lines, in order, without the line ending. Lines taken from here by the
    /// caller are still recorded for error messages.
    pub lines: Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    stdin: Option<ChildStdin>,
}

/// The name the test-bed API uses for servers; a server is just a `Proc`.
pub type ServerProc = Proc;

impl Proc {
    /// Start `cmd` with stdout and stderr piped (stdin as the caller set it).
    pub fn spawn(mut cmd: Command) -> Result<Proc, String> {
        let what = describe(&cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let loud = verbose();

        let seen2 = Arc::clone(&seen);
        thread::spawn(move || {
            let Some(out) = stdout else { return };
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                if loud {
                    eprintln!("[{pid} out] {line}");
                }
                lock(&seen2).push(line.clone());
                // Keep reading even if nobody listens, so the child never blocks on a
                // full pipe.
                let _ = tx.send(line);
            }
        });
        let stderr2 = Arc::clone(&stderr);
        thread::spawn(move || {
            let Some(err) = stderr_pipe else { return };
            let mut r = BufReader::new(err);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&buf);
                if loud {
                    eprint!("[{pid} err] {text}");
                }
                let mut s = lock(&stderr2);
                if s.len() < STDERR_CAP {
                    s.push_str(&text);
                }
            }
        });
        Ok(Proc {
            child: Arc::new(Mutex::new(child)),
            pid,
            what,
            lines: rx,
            seen,
            stderr,
            stdin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's stdin, if the command was set up with `Stdio::piped()` for it.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// Shared handle to the child, so an owner (the test bed) can stop it too.
    pub(crate) fn child_handle(&self) -> Arc<Mutex<Child>> {
        Arc::clone(&self.child)
    }

    /// The next stdout line, or None on timeout or end of output.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Skip stdout lines until one starts with `prefix`; return the rest of that line.
    /// Fails on timeout or end of output, with what the process printed so far.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_string());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(
                        self.failure(&format!("no line starting {prefix:?} within {timeout:?}"))
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Give the exit status a moment to become visible for the message.
                    let _ = self.wait_timeout(Duration::from_millis(200));
                    return Err(
                        self.failure(&format!("output ended before a line starting {prefix:?}"))
                    );
                }
            }
        }
    }

    /// All stdout lines seen so far (also those already taken from `lines`).
    pub fn stdout_seen(&self) -> Vec<String> {
        lock(&self.seen).clone()
    }

    /// Stderr captured so far.
    pub fn stderr_text(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Stderr once it contains `needle`: a reader thread collects it, so a line
    /// the process wrote before its stdout line may not be here yet.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr_text();
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("no {needle:?} on stderr within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn try_wait(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        wait_child_timeout(&mut lock(&self.child), timeout)
    }

    /// Stop the process now (SIGTERM, grace period, SIGKILL) and reap it.
    pub fn terminate(&self) -> Option<ExitStatus> {
        terminate_child(&mut lock(&self.child), TERM_GRACE)
    }

    /// Kill the process with SIGKILL, as a crash would, and reap it. No grace: tests
    /// of crash recovery need the process to get no chance to clean up.
    pub fn kill(&self) -> Option<ExitStatus> {
        let mut child = lock(&self.child);
        let _ = child.kill();
        wait_child_timeout(&mut child, Duration::from_secs(10))
    }

    fn failure(&self, what: &str) -> String {
        let status = match self.try_wait() {
            Some(st) => format!("exited: {st}"),
            None => "still running".to_string(),
        };
        format!(
            "{}: {what} ({status}); stdout so far: {:?}; stderr: {:?}",
            self.what,
            self.stdout_seen(),
            self.stderr_text()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        terminate_child(&mut lock(&self.child), TERM_GRACE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_captures_output_and_status() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let o = run_with_timeout(c, Duration::from_secs(5)).unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
    }

    #[test]
    fn run_kills_on_timeout() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let t = Instant::now();
        let e = run_with_timeout(c, Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn wait_line_returns_rest_and_keeps_later_lines() {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            "echo noise; echo 'LISTEN tcp 1.2.3.4:5'; echo after; sleep 30",
        ]);
        let p = Proc::spawn(c).unwrap();
        assert_eq!(
            p.wait_line("LISTEN tcp ", Duration::from_secs(5)).unwrap(),
            "1.2.3.4:5"
        );
        assert_eq!(
            p.next_line(Duration::from_secs(5)).as_deref(),
            Some("after")
        );
        let st = p.terminate().expect("reaped");
        assert!(!st.success());
    }

    #[test]
    fn wait_line_reports_early_exit() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo hello; echo oops >&2; exit 1"]);
        let p = Proc::spawn(c).unwrap();
        let e = p.wait_line("LISTEN ", Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("output ended") && e.contains("hello"), "{e}");
    }

    #[test]
    fn describe_shortens_scripts() {
        let mut c = Command::new("python3");
        c.args(["-c", &"x = 1\n".repeat(30), "arg"]);
        let d = describe(&c);
        assert!(
            d.starts_with("python3 -c \"x = 1") && d.ends_with("... arg"),
            "{d}"
        );
    }
}
