//! End to end: real programs run with `LD_PRELOAD=libgcb.so` and must behave exactly
//! as without it, since the shim manages no socket yet.
//!
//! These tests use the library `cargo build --release -p shim` made; they do not
//! build it, and fail with a clear message when it is missing or older than the
//! sources. Every program runs with a timeout: a hang fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use testbed::proc::run_with_timeout;

/// Everything the library must export, and nothing else.
const HOOKS: &[&str] = &[
    // socket
    "socket", "bind", "listen", "getsockname", "getpeername", "setsockopt", "getsockopt", "shutdown",
    // connect, accept
    "connect", "accept", "accept4",
    // readiness: only epoll_ctl; the waits are the kernel's own (the
    // responder thread answers the broker), so they are not interposed
    "epoll_ctl",
    // data
    "recv", "recvfrom", "recvmsg", "recvmmsg", "read", "readv", "send", "sendto", "sendmsg", "sendmmsg",
    "write", "writev", "__recv_chk", "__recvfrom_chk", "__read_chk",
    // lifetime
    "close", "dup", "dup2", "dup3", "fcntl", "fcntl64", "close_range", "closefrom", "fork", "execve",
    "execv", "execvp", "execvpe", "fexecve", "execveat",
];

/// The shim's variables, cleared so the caller's environment cannot leak in.
const SHIM_VARS: &[&str] =
    &["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "DPF_INAGENT", "GCB_LOG", "GCB_LOG_FILE", "GCB_HEARTBEAT_S"];

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn newest_mtime(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok().map(|t| (t, path))
        };
        newest = newest.into_iter().chain(found).max();
    }
    newest
}

/// The built library; panics with what to do if it is missing or stale.
fn shim() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => crate_dir().parent().unwrap().join(dir),
        None => crate_dir().parent().unwrap().join("target"),
    };
    let so = target.join("release").join("libgcb.so");
    let built = so.metadata().and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!("{} is missing: run `cargo build --release -p shim` first", so.display())
    });
    if let Some((changed, source)) = newest_mtime(&crate_dir().join("src")) {
        assert!(
            changed <= built,
            "{} is older than {}: run `cargo build --release -p shim` again",
            so.display(),
            source.display()
        );
    }
    so
}

/// `program` under the shim, with none of the shim's variables set.
fn preloaded(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LD_PRELOAD", shim());
    for var in SHIM_VARS {
        cmd.env_remove(var);
    }
    cmd
}

fn run(cmd: Command, timeout: u64) -> Output {
    let out = run_with_timeout(cmd, Duration::from_secs(timeout)).unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The loader only warns when it cannot preload, and runs the program anyway.
    assert!(!stderr.contains("LD_PRELOAD cannot be preloaded"), "the shim was not loaded: {stderr}");
    out
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Python interpreter itself, not a wrapper script (pyenv) in front of it.
fn python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for these tests (.ci/run installs it)");
    assert_success("python3", &out);
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn python_script(name: &str) -> Command {
    let mut cmd = preloaded(python());
    cmd.arg(crate_dir().join("tests/py").join(name));
    cmd
}

/// A per-test log file path, canonical (the scripts compare it with /proc links).
fn log_path(test: &str) -> PathBuf {
    let dir = std::fs::canonicalize(std::env::temp_dir()).unwrap();
    let path = dir.join(format!("gcb-passthrough-{}-{test}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn exports_only_hooks() {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(shim())
        .output()
        .expect("nm (binutils) is needed to read the library's symbol table");
    assert_success("nm", &out);
    let mut exported: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    exported.sort();
    let mut want: Vec<String> = HOOKS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(exported, want, "the library must export every hook and nothing else");
}

#[test]
fn true_and_a_shell_pipeline() {
    let out = run(preloaded("/bin/true"), 20);
    assert_success("/bin/true", &out);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut sh = preloaded("/bin/sh");
    sh.args(["-c", "echo hi | cat"]);
    let out = run(sh, 20);
    assert_success("sh", &out);
    assert_eq!(out.stdout, b"hi\n");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_shim_initialises_and_logs_to_its_file() {
    let log = log_path("init");
    let mut sh = preloaded("/bin/sh");
    sh.args(["-c", "echo hi | cat"]).env("GCB_LOG", "debug").env("GCB_LOG_FILE", &log);
    let out = run(sh, 20);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_success("sh", &out);
    assert_eq!(out.stdout, b"hi\n", "log lines must not reach stdout");
    assert!(out.stderr.is_empty(), "with GCB_LOG_FILE nothing goes to stderr: {:?}", out.stderr);
    assert!(
        text.lines().any(|l| l.starts_with("gcb: debug: loaded in process ") && l.contains("GCB and DPF off")),
        "no init line in the log file: {text:?}"
    );
}

#[test]
fn an_invalid_setting_is_one_line_and_changes_nothing() {
    let mut cat = preloaded("/bin/cat");
    cat.arg("/dev/null").env("GCB_HEARTBEAT_S", "soon");
    let out = run(cat, 20);
    assert_success("cat", &out);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "gcb: warning: GCB_HEARTBEAT_S=\"soon\": is not a whole number of seconds from 1 to 86400; \
         heartbeat every 10 s\n"
    );
}

#[test]
fn curl_version() {
    // curl is a test package (.ci/run installs it): its absence is a failure.
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is needed for this test: apt-get install curl (.ci/run does)"
    );
    let mut curl = preloaded("curl");
    curl.arg("--version");
    let out = run(curl, 20);
    assert_success("curl --version", &out);
    assert!(out.stdout.starts_with(b"curl "), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn python_tcp_udp_and_http_echo() {
    let out = run(python_script("net_echo.py"), 90);
    assert_success("net_echo.py", &out);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("done\n"));
}

#[test]
fn python_calls_one_by_one() {
    let mut cmd = python_script("calls.py");
    cmd.env("GCB_TEST_HOOKS", HOOKS.join(","));
    let out = run(cmd, 90);
    assert_success("calls.py", &out);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("done\n"));
}

#[test]
fn python_calls_with_a_protected_log_fd() {
    let log = log_path("calls");
    let mut cmd = python_script("calls.py");
    cmd.env("GCB_TEST_HOOKS", HOOKS.join(",")).env("GCB_LOG", "debug").env("GCB_LOG_FILE", &log);
    let out = run(cmd, 90);
    let _ = std::fs::remove_file(&log);
    assert_success("calls.py with GCB_LOG_FILE", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok log fd protected\n") && stdout.ends_with("done\n"), "{stdout}");
}

#[test]
fn python_threads_and_forks_do_not_deadlock() {
    let out = run(python_script("stress.py"), 120);
    assert_success("stress.py", &out);
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("done\n"));
}
