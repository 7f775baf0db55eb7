//! DPF with a shared secret end to end: `dpfd --secret-file` on the gateway GA,
//! the unmodified C echo server under the shim in DPF mode on a1.
//!
//! * With `GCB_SECRET_FILE` holding dpfd's secret, the server's FORWARD is
//!   sealed and accepted: it advertises a public address on GA, the forward is in
//!   GA's nftables map, and a plain client on pub gets every byte echoed.
//! * With a wrong secret, dpfd answers nothing and counts the refusal: no
//!   forward appears in the kernel map, and the server still runs, on its own
//!   address, after one warning line.
//!
//! Needs root, `cargo build --release` (libgcb.so, dpfd) and `make -C c-tests`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testbed::{release_bin, require_root, wait_for, workspace_root, Proc, TestBed};

const DPFD: &str = "192.0.2.1";
const STEP: Duration = Duration::from_secs(15);
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
    assert!(path.exists(), "{} is missing: run `cargo build --release` and `make -C c-tests`", path.display());
    path
}

fn ctest(name: &str) -> PathBuf {
    built(workspace_root().join("c-tests/build").join(name))
}

fn secret(dir: &Path, name: &str, bytes: &[u8]) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.to_str().unwrap().to_string()
}

/// An echo server on a1 in DPF mode with `GCB_SECRET_FILE=secret`.
fn server(bed: &TestBed, secret: &str, port: u16) -> (Proc, String) {
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
    match p.wait_line("LISTEN tcp ", STEP) {
        Ok(addr) => (p, addr),
        Err(e) => panic!("echo-server: {e}\nstderr:\n{}", p.stderr_text()),
    }
}

fn nft_map(bed: &TestBed) -> String {
    let out = bed.run("ga", &["nft", "list", "map", "ip", "dpf", "fwd_tcp"], STEP).expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn only_a_shim_with_the_secret_opens_a_forward() {
    require_root();
    let dir = std::env::temp_dir().join(format!("gcb-auth-dpf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = secret(&dir, "good", b"dpf test bed secret: 0c4f7e21a9b3d856\n");
    let wrong = secret(&dir, "wrong", b"not the gateway's secret\n");

    let bed = TestBed::up().expect("test bed");
    let mirror = dir.join("dpfd.mirror");
    let dpfd_bin = built(release_bin("dpfd"));
    let dpfd = bed
        .spawn(
            "ga",
            &[
                dpfd_bin.to_str().unwrap(),
                "--listen",
                DPFD,
                "--public-ip",
                "203.0.113.1",
                "--port-range",
                "40000-40999",
                "--mirror",
                mirror.to_str().unwrap(),
                "--secret-file",
                &good,
            ],
        )
        .expect("dpfd");
    wait_for(STEP, "dpfd started", || dpfd.stderr_text().contains("started: command port udp").then_some(()));

    // The right secret: a forward, and bytes intact through it.
    let (srv, public) = server(&bed, &good, 7101);
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
    let (srv, listen) = server(&bed, &wrong, 7102);
    assert_eq!(listen, "0.0.0.0:7102", "{}", srv.stderr_text());
    assert!(!nft_map(&bed).contains(". 7102"), "no forward for a refused request:\n{}", nft_map(&bed));
    let status = bed.run("ga", &[dpfd_bin.to_str().unwrap(), "status", "--json"], STEP).expect("dpfd status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let json = testbed::json::parse(&status).unwrap_or_else(|e| panic!("dpfd status --json: {e}\n{status}"));
    let bad_mac = json
        .get("counters")
        .and_then(|c| c.get("auth"))
        .and_then(|a| a.get("bad_mac"))
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("no counters.auth.bad_mac in:\n{status}"));
    assert!(bad_mac >= 1.0, "dpfd counted no bad MAC:\n{status}");
    drop(srv);
    drop(dpfd);
    bed.down().expect("tear down");
    let _ = std::fs::remove_dir_all(&dir);
}
