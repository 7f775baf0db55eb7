//! Helpers shared by dpfd's end-to-end tests: the binary with a clean
//! environment, a private network namespace per test thread, and requests
//! on the wire. Bounded runs and the running daemon whose stderr lines can
//! be waited for come from `daemon_kit::testing`, shared with the broker.
#![allow(dead_code)] // each test crate uses its own subset

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use daemon_kit::testing::clean_command;
pub use daemon_kit::testing::{free_port, run_cmd, Running};

pub const BIN: &str = env!("CARGO_BIN_EXE_dpfd");
/// Documentation address (RFC 5737); dpfd only warns that it is not local.
pub const PUBLIC: &str = "198.51.100.1";

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The binary with a clean environment, so settings of the developer's
/// shell cannot change the outcome.
pub fn dpfd(args: &[&str]) -> Command {
    clean_command(BIN, "DPFD_", args)
}

pub fn run(args: &[&str]) -> (i32, String, String) {
    run_cmd(dpfd(args))
}

pub fn assert_one_line_error(stderr: &str, needle: &str) {
    daemon_kit::testing::assert_one_line_error(stderr, "dpfd", needle);
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

/// The daemon needs root: moves the calling test into a network namespace
/// of its own. The tests that call this are `#[ignore]`d with the reason,
/// and `scripts/test` runs them as root; run by hand without root, they
/// fail here rather than pass untested. (Without root the daemon's refusal
/// is what is tested, in `cli.rs`.)
pub fn root_in_private_netns() {
    assert!(
        is_root(),
        "this test needs root: run it as root (scripts/test, or cargo test -- --include-ignored)"
    );
    private_netns();
}

/// A fresh directory others may enter, so `nobody` can see a mirror path.
pub fn temp_dir() -> PathBuf {
    daemon_kit::testing::temp_dir("dpfd-cli")
}

/// The flags of a dpfd on loopback: command port `listen`, public ports
/// 40000-40009 of [`PUBLIC`], mirror file `mirror`, debug logs.
pub fn loopback_args<'a>(listen: &'a str, mirror: &'a str) -> Vec<&'a str> {
    vec![
        "--listen",
        listen,
        "--public-ip",
        PUBLIC,
        "--port-range",
        "40000-40009",
        "--mirror",
        mirror,
        "--log",
        "debug",
    ]
}

/// Starts the daemon.
pub fn start(args: &[&str]) -> Running {
    Running::spawn(dpfd(args))
}

/// Starts the daemon with extra environment variables (e.g. DPFD_FAULT).
pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut cmd = dpfd(args);
    cmd.envs(env.iter().copied());
    Running::spawn(cmd)
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
