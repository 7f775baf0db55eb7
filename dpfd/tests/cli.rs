//! End-to-end tests of the `dpfd` binary: help, one-line errors and exit
//! codes, the config file, the privilege check, and the daemon's probe
//! timer and reaction to SIGTERM and SIGHUP. Every wait is bounded, and
//! every started daemon is killed when its guard drops, also when an
//! assertion fails. The daemon does not touch nftables yet, so running it
//! as root here changes nothing on the host.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dpfd");
/// Documentation address (RFC 5737); dpfd only warns that it is not local.
const PUBLIC: &str = "198.51.100.1";
/// The uid of `nobody`, to run as a user without privileges.
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The binary with a clean environment, so settings of the developer's
/// shell cannot change the outcome.
fn dpfd(args: &[&str]) -> Command {
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
fn run_cmd(mut cmd: Command) -> (i32, String, String) {
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

fn run(args: &[&str]) -> (i32, String, String) {
    run_cmd(dpfd(args))
}

fn assert_one_line_error(stderr: &str, needle: &str) {
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    assert!(stderr.starts_with("dpfd: "), "{stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

/// A fresh directory others may enter, so `nobody` can see a mirror path.
fn temp_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dpfd-cli-{}-{n}", std::process::id()));
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
        let mut child = dpfd(args)
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
        "--mirror",
        "--nft-table",
        "--private-net",
        "--probe-interval-s",
        "--per-host-quota",
        "--secret-file",
        "--config",
        "--log",
        "--check-config",
        "--version",
        "status",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    let (code, out, _) = run(&["status", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--json") && out.contains("--listen"));
}

#[test]
fn version_names_the_program() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("dpfd "), "{out}");
}

#[test]
fn bad_values_are_one_line_and_exit_2() {
    let base = [
        "--listen",
        "127.0.0.1",
        "--public-ip",
        PUBLIC,
        "--mirror",
        "/tmp/m",
    ];
    for (extra, needle) in [
        (["--port-range", "50000-40000"], "LO must not exceed HI"),
        (
            ["--nft-table", "bad-name"],
            "letters, digits or underscores",
        ),
        (["--private-net", "10.0.0.1/8"], "did you mean 10.0.0.0/8"),
        (["--bogus", "1"], "--bogus"),
    ] {
        let argv: Vec<&str> = base.iter().chain(&extra).copied().collect();
        let (code, _, err) = run(&argv);
        assert_eq!(code, 2, "{argv:?}: {err}");
        assert_one_line_error(&err, needle);
    }
    let (code, _, err) = run(&["--listen", "127.0.0.1", "--mirror", "/tmp/m"]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "no public address");
}

#[test]
fn unknown_config_key_is_named() {
    let dir = temp_dir();
    let conf = dir.join("dpfd.toml");
    fs::write(&conf, "listen = \"127.0.0.1\"\nprobe_interval = 5\n").unwrap();
    let (code, _, err) = run(&["--config", conf.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "unknown field `probe_interval`");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn status_says_it_is_not_implemented() {
    let (code, _, err) = run(&["status", "--listen", "127.0.0.1:65433", "--json"]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "status: the status protocol is not implemented yet");
}

/// As root, the same commands also run as `nobody`, to check the privilege
/// handling for real; as a user, they run as that user.
fn unprivileged(args: &[&str]) -> Command {
    let mut cmd = dpfd(args);
    if is_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

#[test]
fn check_config_needs_no_privileges_and_the_daemon_does() {
    let dir = temp_dir();
    let mirror = dir.join("mirror");
    let mirror = mirror.to_str().unwrap();
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--public-ip",
        PUBLIC,
        "--mirror",
        mirror,
    ];

    let argv: Vec<&str> = base.iter().copied().chain(["--check-config"]).collect();
    let (code, out, err) = run_cmd(unprivileged(&argv));
    assert_eq!((code, out.as_str()), (0, "configuration ok\n"), "{err}");
    assert!(err.contains("warning: public IP 198.51.100.1 is not an address of this host"));

    let (code, _, err) = run_cmd(unprivileged(&base));
    assert_eq!(code, 1);
    assert_one_line_error(&err, "must run as root or with CAP_NET_ADMIN");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn probes_filters_and_stops_cleanly_within_2s() {
    if !is_root() {
        eprintln!("skipped: the daemon needs root; the refusal is checked elsewhere");
        return;
    }
    let dir = temp_dir();
    let mirror = dir.join("mirror");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut daemon = Running::start(&[
        "--listen",
        &listen,
        "--public-ip",
        PUBLIC,
        "--mirror",
        mirror.to_str().unwrap(),
        "--probe-interval-s",
        "1",
        "--log",
        "debug",
    ]);
    let started = daemon.expect_line("started:");
    assert!(
        started.contains("requests from 127.0.0.0/8 (subnet of --listen)"),
        "{started}"
    );
    assert!(!started.contains('\x1b'), "colours on a pipe: {started:?}");
    daemon.expect_line("probe: 0 forwards");

    // From the private side: read, counted, dropped for want of a handler.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"hello", &listen)
        .unwrap();
    daemon.expect_line("dropped 5 bytes from 127.0.0.1");
    daemon.expect_line("no request handler");

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(2)).code(), Some(0));
    daemon.expect_line("stopping on SIGTERM: requests received 1");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sighup_rereads_the_config_file() {
    if !is_root() {
        eprintln!("skipped: the daemon needs root; the refusal is checked elsewhere");
        return;
    }
    let dir = temp_dir();
    let conf = dir.join("dpfd.toml");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("listen = \"{listen}\"\npublic_ip = \"{PUBLIC}\"\nmirror = \"mirror\"\n");
    fs::write(
        &conf,
        format!("{base}probe_interval_s = 600\nprivate_net = \"10.0.0.0/8\"\n"),
    )
    .unwrap();
    let mut daemon = Running::start(&["--config", conf.to_str().unwrap()]);
    daemon.expect_line("started:");

    let reread = "probe_interval_s = 1\nprivate_net = \"127.0.0.0/8\"\nnft_table = \"other\"\n";
    fs::write(&conf, format!("{base}{reread}log = \"debug\"\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.expect_line("probe_interval_s changed from 600 to 1");
    daemon.expect_line("private_net changed from 10.0.0.0/8 to 127.0.0.0/8");
    let restart = daemon.expect_line("nft_table changed");
    assert!(restart.contains("needs a restart"), "{restart}");
    // The rescheduled probe fires within the new interval, not the old one.
    daemon.expect_line("probe: 0 forwards");
    // The new private network is live: loopback is now accepted.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"x", &listen)
        .unwrap();
    daemon.expect_line("no request handler");

    fs::write(&conf, format!("{base}private_net = \"127.0.0.1/8\"\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    let failed = daemon.expect_line("reload failed");
    assert!(failed.contains("did you mean 127.0.0.0/8"), "{failed}");

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(2)).code(), Some(0));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn foreign_sources_are_dropped() {
    if !is_root() {
        eprintln!("skipped: the daemon needs root; the refusal is checked elsewhere");
        return;
    }
    let dir = temp_dir();
    let listen = format!("127.0.0.1:{}", free_port());
    let mirror = dir.join("mirror");
    let mut daemon = Running::start(&[
        "--listen",
        &listen,
        "--public-ip",
        PUBLIC,
        "--mirror",
        mirror.to_str().unwrap(),
        "--private-net",
        "192.0.2.0/24",
        "--log",
        "debug",
    ]);
    daemon.expect_line("started:");
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"abc", &listen)
        .unwrap();
    daemon.expect_line("dropped 3 bytes from 127.0.0.1");
    daemon.expect_line("not in a private network");
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(2)).code(), Some(0));
    daemon.expect_line("from outside the private networks 1");
    fs::remove_dir_all(dir).unwrap();
}
