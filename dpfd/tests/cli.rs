//! End-to-end tests of the `dpfd` binary: help, one-line errors and exit
//! codes, the config file, the privilege check, and the daemon's probe
//! timer and reaction to SIGTERM and SIGHUP. Every wait is bounded, and
//! every started daemon is killed when its guard drops, also when an
//! assertion fails. The daemon changes nftables, so each test that runs it
//! first moves its own thread into a fresh network namespace
//! (`root_in_private_netns`): the daemon, the test's sockets and `dpfd status`
//! inherit it, and the host's rule set is never touched.

mod support;

use std::fs;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use support::*;

/// The uid of `nobody`, to run as a user without privileges.
const NOBODY: u32 = 65534;

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
        "--rate-limit",
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
fn status_without_a_daemon_is_one_line_and_exit_1() {
    let (code, _, err) = run(&["status", "--listen", "127.0.0.1:1", "--json"]);
    assert_eq!(code, 1);
    assert_one_line_error(
        &err,
        "status: no dpfd with command port 1 runs in this network namespace",
    );
    let (code, _, err) = run(&["status", "--listen", "nowhere"]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "status --listen");
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
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn probes_filters_and_stops_cleanly_within_2s() {
    root_in_private_netns();
    let dir = temp_dir();
    let mirror = dir.join("mirror");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut daemon = start(&[
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
    daemon.expect_line("malformed");

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(2)).code(), Some(0));
    daemon.expect_line("stopping on SIGTERM: requests received 1");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn sighup_rereads_the_config_file() {
    root_in_private_netns();
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
    let mut daemon = start(&["--config", conf.to_str().unwrap()]);
    daemon.expect_line("started:");

    let reread = "probe_interval_s = 1\nprivate_net = \"127.0.0.0/8\"\nnft_table = \"other\"\n\
                  rate_limit = 5\n";
    fs::write(&conf, format!("{base}{reread}log = \"debug\"\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.expect_line("probe_interval_s changed from 600 to 1");
    daemon.expect_line("private_net changed from 10.0.0.0/8 to 127.0.0.0/8");
    daemon.expect_line("rate_limit changed from 1000 to 5");
    let restart = daemon.expect_line("nft_table changed");
    assert!(restart.contains("needs a restart"), "{restart}");
    daemon.expect_line("applied private_net, probe_interval_s, rate_limit, log; needs a restart: nft_table");
    // The rescheduled probe fires within the new interval, not the old one.
    daemon.expect_line("probe: 0 forwards");
    // The new private network is live: loopback is now accepted.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"x", &listen)
        .unwrap();
    daemon.expect_line("dropped 1 bytes from 127.0.0.1");

    fs::write(&conf, format!("{base}private_net = \"127.0.0.1/8\"\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    let failed = daemon.expect_line("reload failed");
    assert!(failed.contains("did you mean 127.0.0.0/8"), "{failed}");

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(2)).code(), Some(0));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
#[ignore = "needs root: dpfd changes nftables, in a network namespace of the test's own (scripts/test runs it)"]
fn foreign_sources_are_dropped() {
    root_in_private_netns();
    let dir = temp_dir();
    let listen = format!("127.0.0.1:{}", free_port());
    let mirror = dir.join("mirror");
    let mut daemon = start(&[
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
