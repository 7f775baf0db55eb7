//! Helpers shared by dpfd's end-to-end tests: the binary with a clean
//! environment, bounded runs, a private network namespace per test thread,
//! and a running daemon whose stderr lines can be waited for.
#![allow(dead_code)] // each test crate uses its own subset

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dpfd");
/// Documentation address (RFC 5737); dpfd only warns that it is not local.
pub const PUBLIC: &str = "198.51.100.1";

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The binary with a clean environment, so settings of the developer's
/// shell cannot change the outcome.
pub fn dpfd(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("DPFD_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs a command that must end by itself; gives its exit code and output.
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

pub fn run(args: &[&str]) -> (i32, String, String) {
    run_cmd(dpfd(args))
}

pub fn assert_one_line_error(stderr: &str, needle: &str) {
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("dpfd: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

/// Moves the calling test thread into a new network namespace with its
/// loopback up; children it starts (the daemon, `ip`, `dpfd status`) are
/// born there. Network namespaces are per thread, and the test harness runs
/// each test on a thread of its own, so tests stay apart.
pub fn private_netns() {
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET)"
    );
    let (code, _, err) = run_cmd({
        let mut c = Command::new("ip");
        c.args(["link", "set", "lo", "up"]);
        c
    });
    assert_eq!(code, 0, "ip link set lo up: {err}");
}

/// A fresh directory others may enter, so `nobody` can see a mirror path.
pub fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dpfd-cli-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port that was free a moment ago: bind to port 0, note it, let it go.
pub fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running daemon whose stderr lines arrive on a channel.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub fn start(args: &[&str]) -> Running {
        Running::start_with_env(args, &[])
    }

    /// Starts the daemon with extra environment variables (e.g. DPFD_FAULT).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = dpfd(args)
            .envs(env.iter().copied())
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
    /// arriving within 5 s; the order of lines does not matter.
    pub fn expect_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
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
            "no line with {needle:?} within 5 s; stderr so far: {:#?}",
            self.seen
        );
    }

    pub fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
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
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `msg` with `id` and returns the raw reply.
pub fn ask(sock: &UdpSocket, to: &str, msg: &proto::dpf::Message, id: u64) -> Vec<u8> {
    let bytes = proto::dpf::encode(msg, id).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&bytes, to).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).expect("a reply within 5 s");
    buf[..n].to_vec()
}
