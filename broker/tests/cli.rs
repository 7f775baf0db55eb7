//! End-to-end tests of the `gcb-broker` binary: help, one-line errors and
//! exit codes, the config file, and the daemon's reaction to SIGTERM and
//! SIGHUP. Every wait is bounded, and every started daemon is killed when
//! its guard drops, also when an assertion fails.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gcb-broker");
/// A range that free ports from the kernel's ephemeral range never fall in.
const RANGE: &str = "20000-20099";

/// The binary with a clean environment, so settings of the developer's
/// shell cannot change the outcome.
fn broker(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("GCB_BROKER_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs a command that must end by itself; gives its exit code and output.
fn run(args: &[&str]) -> (i32, String, String) {
    let mut child = broker(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("gcb-broker {args:?} did not exit within 10 s");
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

fn assert_one_line_error(stderr: &str, needle: &str) {
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("gcb-broker: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gcb-broker-cli-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port that was free a moment ago: bind to port 0, note it, let it go.
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running daemon whose stderr lines arrive on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = broker(args)
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
    fn expect_line(&mut self, needle: &str) -> String {
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

    fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
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

#[test]
fn help_mentions_every_flag() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--listen",
        "--public-ip",
        "--port-range",
        "--heartbeat-timeout-s",
        "--max-registrations",
        "--max-relays",
        "--rate-limit",
        "--udp-rule-idle-s",
        "--udp-rules-per-registration",
        "--secret-file",
        "--config",
        "--log",
        "--check-config",
        "--version",
        "query",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    let (code, out, _) = run(&["query", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--json") && out.contains("HOST:PORT"));
}

#[test]
fn version_names_the_program() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("gcb-broker "), "{out}");
}

#[test]
fn bad_port_ranges_are_one_line_and_exit_2() {
    let (code, _, err) = run(&["--listen", "127.0.0.1", "--port-range", "30000-20000"]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "LO must not exceed HI");
    let (code, _, err) = run(&["--listen", "127.0.0.1:20050", "--port-range", RANGE]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "contains the command port 20050");
    let (code, _, err) = run(&["--bogus"]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "--bogus");
}

#[test]
fn unknown_config_key_is_named() {
    let dir = temp_dir();
    let conf = dir.join("broker.toml");
    fs::write(&conf, "listen = \"127.0.0.1\"\nmax_relay = 5\n").unwrap();
    let (code, _, err) = run(&["--config", conf.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "unknown field `max_relay`");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn query_without_a_broker_is_one_line_and_exit_1() {
    // Nothing listens on a port just freed: refused at once.
    let target = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = run(&["query", &target, "--json"]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "query: no broker at");
    let (code, _, err) = run(&["query", "no-such-host.invalid:1"]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "query: cannot resolve no-such-host.invalid:1");
}

#[test]
fn check_config_validates_without_binding() {
    // 192.0.2.1 is not an address of this host, so binding would fail.
    let (code, out, err) = run(&["--listen", "192.0.2.1", "--check-config"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "configuration ok\n", "")
    );
}

#[test]
fn taken_command_port_is_a_one_line_runtime_error() {
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let listen = holder.local_addr().unwrap().to_string();
    let (code, _, err) = run(&["--listen", &listen, "--port-range", RANGE]);
    assert_eq!(code, 1);
    assert_one_line_error(&err, "cannot bind the command port");
}

#[test]
fn sigterm_stops_cleanly_within_2s() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut broker =
        Running::start(&["--listen", &listen, "--port-range", RANGE, "--log", "debug"]);
    let started = broker.expect_line("started:");
    assert!(started.contains(&listen), "{started}");
    assert!(!started.contains('\x1b'), "colours on a pipe: {started:?}");

    // A datagram is read, counted and dropped; the daemon lives on.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"hello", &listen)
        .unwrap();
    broker.expect_line("dropped 5 bytes");
    broker.signal(libc::SIGHUP);
    broker.expect_line("no --config file to re-read");

    broker.signal(libc::SIGTERM);
    let status = broker.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0));
    broker.expect_line("stopping on SIGTERM: command datagrams received 1");
}

#[test]
fn sighup_rereads_the_config_file() {
    let dir = temp_dir();
    let conf = dir.join("broker.toml");
    let port = free_port();
    let write = |body: &str| {
        fs::write(
            &conf,
            format!("listen = \"127.0.0.1:{port}\"\nport_range = \"{RANGE}\"\n{body}"),
        )
        .unwrap()
    };
    write("max_relays = 10\n");
    let mut broker = Running::start(&["--config", conf.to_str().unwrap()]);
    broker.expect_line("started:");

    let moved = format!("127.0.0.1:{}", port + 1);
    fs::write(
        &conf,
        format!(
            "listen = \"{moved}\"\nport_range = \"{RANGE}\"\nmax_relays = 20\nlog = \"debug\"\n"
        ),
    )
    .unwrap();
    broker.signal(libc::SIGHUP);
    broker.expect_line("max_relays changed from 10 to 20");
    broker.expect_line("log changed from info to debug");
    let restart = broker.expect_line("listen changed");
    assert!(restart.contains("needs a restart"), "{restart}");

    // The new level is live, and the old command port is still the one in use.
    let to = format!("127.0.0.1:{port}");
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"x", &to)
        .unwrap();
    broker.expect_line("dropped 1 bytes");

    write("max_relays = 20\nmax_relay = 1\n");
    broker.signal(libc::SIGHUP);
    let failed = broker.expect_line("reload failed");
    assert!(failed.contains("max_relay"), "{failed}");

    broker.signal(libc::SIGTERM);
    assert_eq!(broker.wait_exit(Duration::from_secs(2)).code(), Some(0));
    fs::remove_dir_all(dir).unwrap();
}
