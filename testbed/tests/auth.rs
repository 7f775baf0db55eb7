//! Shared-secret authentication end to end in the NAT test bed: `gcb-broker
//! --secret-file` on the broker host, the C echo programs under the shim on
//! a1 (realm A, behind GA) with `GCB_SECRET_FILE`.
//!
//! * the right secret: the server registers, advertises a proxy address,
//!   and a plain client on pub gets every byte echoed through the relay;
//! * a wrong secret: the broker answers nothing, the server advertises its
//!   own address (no proxy), and still serves;
//! * an unreadable secret file: one log line, brokering off, still serves.
//!
//! And DPF with `dpfd --secret-file` on GA: the right secret opens a forward
//! that carries bytes; a wrong one gets no answer, no forward in the kernel
//! map, and a counted bad MAC, while the program serves on its own address.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker, dpfd) and
//! `make -C c-tests`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testbed::daemons::start_dpfd;
use testbed::{release_bin, require_root, workspace_root, Proc, TestBed};

const BROKER: &str = "203.0.113.10";
const STARTUP: Duration = Duration::from_secs(20);
const SHIM_VARS: [&str; 9] = [
    "GCB_INAGENT",
    "GCB_ROUTE",
    "GCB_REALM",
    "DPF_INAGENT",
    "GCB_LOG",
    "GCB_LOG_FILE",
    "GCB_HEARTBEAT_S",
    "GCB_SECRET_FILE",
    "LD_PRELOAD",
];

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: cargo build --release and make -C c-tests",
        path.display()
    );
    path
}

fn ctest(name: &str) -> PathBuf {
    built(workspace_root().join("c-tests/build").join(name))
}

fn secret(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.to_str().unwrap().to_string()
}

/// An echo server on a1 under the shim with `GCB_SECRET_FILE=secret`;
/// returns it and the address it advertised.
fn server(bed: &TestBed, secret: &str, port: u16) -> (Proc, String) {
    server_proto(bed, secret, port, "tcp")
}

/// [`server`] for `proto` (`tcp` or `udp`).
fn server_proto(bed: &TestBed, secret: &str, port: u16, proto: &str) -> (Proc, String) {
    let mut c = bed.cmd("a1", ctest("echo-server"));
    for v in SHIM_VARS {
        c.env_remove(v);
    }
    c.env("LD_PRELOAD", built(release_bin("libgcb.so")))
        .env("GCB_INAGENT", BROKER)
        .env("GCB_LOG", "info")
        .env("GCB_SECRET_FILE", secret)
        .args(["--proto", proto, "--port", &port.to_string()]);
    let p = bed.spawn_cmd(c).expect("echo-server");
    match p.wait_line(&format!("LISTEN {proto} "), STARTUP) {
        Ok(addr) => (p, addr),
        Err(e) => panic!("echo-server: {e}\nstderr:\n{}", p.stderr_text()),
    }
}

/// A plain echo client on pub to `dest`; asserts every byte came back.
fn echo_through(bed: &TestBed, dest: &str, server: &Proc, broker: &Proc) {
    echo_through_proto(bed, dest, server, broker, "tcp")
}

/// [`echo_through`] for `proto`; for UDP, every datagram must come back.
fn echo_through_proto(bed: &TestBed, dest: &str, server: &Proc, broker: &Proc, proto: &str) {
    let mut c: Command = bed.cmd("pub", ctest("echo-client"));
    for v in SHIM_VARS {
        c.env_remove(v);
    }
    let bytes = if proto == "udp" { "1000" } else { "50000" };
    c.args(["--proto", proto, "--connect", dest, "--bytes", bytes, "--rounds", "2"]);
    let out = testbed::run_with_timeout(c, Duration::from_secs(60)).expect("echo-client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "echo-client failed:\n{stdout}\n{}\nserver:\n{}\nbroker:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.stderr_text(),
        broker.stderr_text()
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("SUMMARY "))
        .expect("SUMMARY line");
    let field = |k: &str| {
        summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    assert_eq!(field("ok"), field("runs"), "{summary}");
    assert!(field("ok").is_some_and(|n| n != "0"), "{summary}");
    if proto == "udp" {
        assert_eq!(field("lost").as_deref(), Some("0"), "{summary}");
    }
}

#[test]
fn only_a_shim_with_the_secret_is_brokered() {
    require_root();
    let dir = std::env::temp_dir().join(format!("gcb-auth-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = secret(&dir, "good", b"test bed secret: 7f3a9c1e55d0b2a4\n");
    let wrong = secret(&dir, "wrong", b"some other secret\n");
    let missing = dir.join("missing").to_str().unwrap().to_string();

    let bed = TestBed::up().expect("test bed");
    let broker = bed
        .spawn(
            "broker",
            &[
                built(release_bin("gcb-broker")).to_str().unwrap(),
                "--listen",
                "203.0.113.10:65432",
                "--public-ip",
                BROKER,
                "--port-range",
                "20000-20999",
                "--secret-file",
                &good,
                "--log",
                "debug",
            ],
        )
        .expect("gcb-broker");
    let bound = (0..200).any(|_| {
        let out = bed
            .run(
                "broker",
                &["ss", "-Hlun", "sport = :65432"],
                Duration::from_secs(5),
            )
            .expect("ss");
        let up = !String::from_utf8_lossy(&out.stdout).trim().is_empty();
        if !up {
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    });
    assert!(bound, "gcb-broker did not bind: {}", broker.stderr_text());

    // The right secret: registered, and bytes intact through the relay.
    let (srv, listen) = server(&bed, &good, 7001);
    assert!(
        listen.starts_with("203.0.113.10:"),
        "with the secret the server must advertise a proxy address, not {listen}\nserver:\n{}\nbroker:\n{}",
        srv.stderr_text(),
        broker.stderr_text()
    );
    echo_through(&bed, &listen, &srv, &broker);
    drop(srv);

    // UDP with the secret: the Dummies that open the data path are sealed too,
    // so datagrams from a plain peer are relayed in and the replies out.
    let (srv, listen) = server_proto(&bed, &good, 7003, "udp");
    assert!(
        listen.starts_with("203.0.113.10:"),
        "with the secret the UDP server must advertise a proxy address, not {listen}\nserver:\n{}",
        srv.stderr_text()
    );
    echo_through_proto(&bed, &listen, &srv, &broker, "udp");
    drop(srv);

    // A wrong secret: nothing registered; the program serves on its own address.
    let (srv, listen) = server(&bed, &wrong, 7002);
    assert!(
        listen.ends_with(":7002") && !listen.starts_with("203.0.113.10:"),
        "{listen}: {}",
        srv.stderr_text()
    );
    // The shim's verdict on its registration, written inside `listen` (so
    // before the address above, but read from stderr by another thread):
    // once it is here, a registration would be too.
    let log = srv
        .wait_stderr("stays unregistered", STARTUP)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!log.contains("registered tcp"), "{log}");
    drop(srv);

    // An unreadable secret file: one line, brokering off, still serving.
    let (srv, listen) = server(&bed, &missing, 7003);
    assert!(
        listen.ends_with(":7003") && !listen.starts_with("203.0.113.10:"),
        "{listen}: {}",
        srv.stderr_text()
    );
    let err = srv.wait_stderr("GCB_SECRET_FILE", STARTUP).unwrap_or_else(|e| panic!("{e}"));
    // One message (init currently prints each configuration problem twice,
    // for every variable alike; that is init's business, not this test's).
    let mut lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("GCB_SECRET_FILE"))
        .collect();
    lines.dedup();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("GCB and DPF are off"), "{err}");
    drop(srv);

    // The broker saw the wrongly keyed registrations and refused them.
    let log = broker.wait_stderr("bad MAC", STARTUP).unwrap_or_else(|e| panic!("{e}"));
    assert!(!log.contains("registered tcp 192.0.2.10:7002"), "{log}");
    drop(broker);
    bed.down().expect("test bed down");
    std::fs::remove_dir_all(dir).ok();
}

const DPFD: &str = "192.0.2.1";
const DPF_STEP: Duration = Duration::from_secs(15);

/// An echo server on a1 in DPF mode with `GCB_SECRET_FILE=secret`.
fn dpf_server(bed: &TestBed, secret: &str, port: u16) -> (Proc, String) {
    let mut c = bed.cmd("a1", ctest("echo-server"));
    for v in SHIM_VARS {
        c.env_remove(v);
    }
    c.env("LD_PRELOAD", built(release_bin("libgcb.so")))
        .env("DPF_INAGENT", DPFD)
        .env("GCB_LOG", "info")
        .env("GCB_SECRET_FILE", secret)
        .args(["--proto", "tcp", "--port", &port.to_string(), "--mode", "epoll"]);
    let p = bed.spawn_cmd(c).expect("echo-server");
    match p.wait_line("LISTEN tcp ", STARTUP) {
        Ok(addr) => (p, addr),
        Err(e) => panic!("echo-server: {e}\nstderr:\n{}", p.stderr_text()),
    }
}

fn nft_map(bed: &TestBed) -> String {
    let out = bed.run("ga", &["nft", "list", "map", "ip", "dpf", "fwd_tcp"], DPF_STEP).expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn only_a_shim_with_the_secret_opens_a_forward() {
    require_root();
    let dir = std::env::temp_dir().join(format!("gcb-auth-dpf-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = secret(&dir, "good", b"dpf test bed secret: 0c4f7e21a9b3d856\n");
    let wrong = secret(&dir, "wrong", b"not the gateway's secret\n");

    let bed = TestBed::up().expect("test bed");
    let mirror = dir.join("dpfd.mirror");
    let dpfd = start_dpfd(&bed, &mirror, &["--secret-file", &good], DPF_STEP);
    let dpfd_bin = built(release_bin("dpfd"));

    // The right secret: a forward, and bytes intact through it.
    let (srv, public) = dpf_server(&bed, &good, 7101);
    assert!(
        public.starts_with("203.0.113.1:4"),
        "with the secret the server must advertise a forward on GA, not {public}\nserver:\n{}\ndpfd:\n{}",
        srv.stderr_text(),
        dpfd.stderr_text()
    );
    assert!(nft_map(&bed).contains("192.0.2.10 . 7101"), "the forward is in the kernel map:\n{}", nft_map(&bed));
    let mut c: Command = bed.cmd("pub", ctest("echo-client"));
    for v in SHIM_VARS {
        c.env_remove(v);
    }
    c.args(["--proto", "tcp", "--connect", &public, "--bytes", "50000", "--rounds", "2"]);
    let out = testbed::run_with_timeout(c, Duration::from_secs(60)).expect("echo-client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("SUMMARY runs=1 ok=1"), "echo-client:\n{stdout}\nserver:\n{}", srv.stderr_text());
    drop(srv);

    // A wrong secret: no answer, no forward; the program serves on its own address.
    let (srv, listen) = dpf_server(&bed, &wrong, 7102);
    assert_eq!(listen, "0.0.0.0:7102", "{}", srv.stderr_text());
    let status = bed.run("ga", &[dpfd_bin.to_str().unwrap(), "status", "--json"], DPF_STEP).expect("dpfd status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let json = testbed::json::parse(&status).unwrap_or_else(|e| panic!("dpfd status --json: {e}\n{status}"));
    let bad_mac = json
        .get("counters")
        .and_then(|c| c.get("auth"))
        .and_then(|a| a.get("bad_mac"))
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("no counters.auth.bad_mac in:\n{status}"));
    assert!(bad_mac >= 1.0, "dpfd counted no bad MAC:\n{status}");
    // Handled and counted, so this is dpfd's answer, not a race.
    assert!(!nft_map(&bed).contains(". 7102"), "no forward for a refused request:\n{}", nft_map(&bed));
    drop(srv);
    drop(dpfd);
    bed.down().expect("tear down");
    let _ = std::fs::remove_dir_all(&dir);
}
