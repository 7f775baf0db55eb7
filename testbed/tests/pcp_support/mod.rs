//! What the `pcp_shim_*` tests share: unmodified programs (the C echo server,
//! `programs/pcp_server.py`) under `scripts/gcb-run --dpf pcp://...` on a
//! test-bed host, and plain clients checking every byte from another.
//!
//! Every wait is bounded; failures print the programs' stderr.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use testbed::{python3, release_bin, workspace_root, Proc, TestBed};

pub const STEP: Duration = Duration::from_secs(20);

/// The shim's variables, cleared so the caller's environment cannot leak in.
const SHIM_VARS: [&str; 8] =
    ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "DPF_INAGENT", "GCB_LOG", "GCB_LOG_FILE", "GCB_HEARTBEAT_S", "LD_PRELOAD"];

fn built(path: PathBuf, hint: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {hint}", path.display());
    path
}

pub fn ctest(name: &str) -> PathBuf {
    built(workspace_root().join("c-tests/build").join(name), "run `make -C c-tests`")
}

/// `gcb-run --dpf DPF --log info -- PROGRAM` on `host`, stdin piped, ready
/// for the program's arguments.
pub fn shim(bed: &TestBed, host: &str, dpf: &str, program: &str) -> Command {
    let mut c = bed.cmd(host, workspace_root().join("scripts/gcb-run"));
    c.args(["--dpf", dpf, "--log", "info", "--lib"]);
    c.arg(built(release_bin("libgcb.so"), "run `cargo build --release`"));
    c.args(["--", program]);
    for v in SHIM_VARS {
        c.env_remove(v);
    }
    c.stdin(Stdio::piped());
    c
}

/// The C echo server on `host` under the shim: the process and the address
/// it printed after `ready` (`LISTEN tcp `, `INHERITED udp `, ...).
pub fn c_server(bed: &TestBed, host: &str, dpf: &str, args: &[&str], ready: &str) -> (Proc, String) {
    let mut c = shim(bed, host, dpf, ctest("echo-server").to_str().unwrap());
    c.args(args);
    let p = bed.spawn_cmd(c).expect("echo-server");
    let addr = p.wait_line(ready, STEP).unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", p.stderr_text()));
    (p, addr)
}

/// `programs/pcp_server.py ARGS` on `host` under the shim: the process and
/// the TCP and UDP addresses it printed.
pub fn py_server(bed: &TestBed, host: &str, dpf: &str, args: &[&str]) -> (Proc, String, String) {
    let mut c = shim(bed, host, dpf, python3().to_str().unwrap());
    c.arg(workspace_root().join("testbed/programs/pcp_server.py")).args(args);
    let p = bed.spawn_cmd(c).expect("pcp_server.py");
    let tcp = p.wait_line("LISTEN tcp ", STEP).unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", p.stderr_text()));
    let udp = p.wait_line("LISTEN udp ", STEP).unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", p.stderr_text()));
    (p, tcp, udp)
}

/// The registration line the shim logs for `local` (`tcp 192.0.2.10:7000`),
/// waited for: stderr is read by another thread.
pub fn registered(p: &Proc, local: &str, public: &str) {
    let line = format!("gcb: registered {local} as {public}");
    p.wait_stderr(&line, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
}

/// The shim's warning lines once one contains `needle` (stderr is read by
/// another thread, so a line written before a stdout line may lag behind it).
pub fn warned(p: &Proc, needle: &str) -> Vec<String> {
    p.wait_stderr(needle, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
    warnings(p)
}

/// The shim's warning lines so far.
pub fn warnings(p: &Proc) -> Vec<String> {
    p.stderr_text().lines().filter(|l| l.starts_with("gcb: warning: ")).map(str::to_string).collect()
}

/// The plain C echo client on `host` (no shim) to `dest`: every byte must
/// come back, nothing lost. UDP: 20 datagrams.
pub fn echo(bed: &TestBed, host: &str, proto: &str, dest: &str) {
    let c = ctest("echo-client");
    let rounds = if proto == "udp" { "20" } else { "3" };
    let args = [c.to_str().unwrap(), "--proto", proto, "--connect", dest, "--bytes", "2000", "--rounds", rounds];
    let out = bed.run(host, &args, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{args:?} on {host}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("SUMMARY runs=1 ok=1") && text.contains("lost=0"),
        "echo {proto} from {host} to {dest}: {text}"
    );
}

/// Closes the program's stdin (pcp_server.py then exits) and waits for it.
pub fn close_stdin(p: &mut Proc) {
    drop(p.take_stdin());
    assert!(p.wait_timeout(STEP).is_some_and(|s| s.success()), "did not exit cleanly: {}", p.stderr_text());
}

/// The port of `ip:port`.
pub fn port(addr: &str) -> u16 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr:?}"))
}
