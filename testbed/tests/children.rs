//! Children of a server under the shim (issue 12, "Children"): a process
//! that runs children keeps its listeners, and children that inherit a
//! listener serve it.
//!
//! * `listeners_outlive_every_kind_of_child_{gcb,dpf}`: a Python server on a1 with a TCP
//!   and a UDP echo socket (`spawn_support/children.py serve`) runs, one after
//!   another: `os.system` (glibc's `system`), glibc's `popen` (through
//!   ctypes), glibc's `posix_spawn` (closing the listeners in the child's
//!   file actions), a `multiprocessing` child of the fork context,
//!   `subprocess.run(["true"])` (vfork, then `close_range` in the child),
//!   `os.popen` (subprocess again), and `multiprocessing` children of the
//!   spawn and forkserver contexts. Before the first and after each, the
//!   server's `getsockname` is unchanged, the broker lists both registrations
//!   with the same proxy and local addresses, and both sockets echo every
//!   byte to a plain client on pub and a GCB client on b1. In DPF mode the
//!   same with dpfd's forwards on GA and a plain client on pub, by dpfd's
//!   own protocol and by PCP (leases of 6 s, renewed throughout).
//! * `prefork_children_serve_and_the_last_holder_takes_the_registration`: a
//!   pre-fork server (`children.py prefork`): the parent listens and forks
//!   three children that accept on the inherited listener; the parent never
//!   accepts. Thirty connections from pub and thirty from b1 are all served
//!   by the children, by more than one of them. Then the holders go one by
//!   one: the parent exits normally with the listener still open in it, then
//!   two children exit on SIGTERM after closing their copies; after each the
//!   registration is still listed and served by the holders left. When the
//!   last child is killed (SIGKILL: no code of its own runs) the registration
//!   goes within the broker's heartbeat timeout (3 s here, clients heartbeat
//!   every second), the proxy port closes, and a
//!   plain client is refused.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker, dpfd) and
//! `make -C c-tests`.

#[path = "spawn_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::{context, ctest, echo, line, script, spawn_with_stdin, still_served, tell, wait_unlisted, CLIENTS};
use testbed::real::{Mode, RealBed};
use testbed::{python3, wait_for};

/// Each step's name as `children.py serve` knows it.
const STEPS: [&str; 8] = ["system", "c-popen", "posix_spawn", "mp-fork", "subprocess", "popen", "mp-spawn", "mp-forkserver"];
/// A step starts Python interpreters (spawn, forkserver) on a loaded machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

fn listeners_outlive_every_kind_of_child(mode: Mode) {
    let r = RealBed::up(mode);
    let py = python3().to_str().unwrap();
    let prog = script("children.py");
    let (server, mut stdin) = spawn_with_stdin(&r, "a1", true, &[py, "-u", &prog, "serve", "7400", "7401"]);
    let (tcp_local, udp_local) = ("192.0.2.10:7400", "192.0.2.10:7401");
    let tcp = r.registered(&server, "tcp", tcp_local);
    let udp = r.registered(&server, "udp", udp_local);
    assert_eq!(line(&r, &server, "NAME tcp ", STEP_TIMEOUT), tcp, "the TCP listener's getsockname");
    assert_eq!(line(&r, &server, "NAME udp ", STEP_TIMEOUT), udp, "the UDP socket's getsockname");
    let addrs = [("tcp", tcp.as_str(), tcp_local), ("udp", udp.as_str(), udp_local)];
    still_served(&r, &server, "before any child", &addrs);
    for step in STEPS {
        tell(&mut stdin, step);
        let got = line(&r, &server, &format!("STEP {step} "), STEP_TIMEOUT);
        assert!(got.starts_with("ok "), "{step}: {got}\n{}", context(&r, &server));
        let names = (format!(" tcp={tcp} "), format!(" udp={udp} "));
        assert!(got.contains(&names.0) && got.contains(&names.1), "{step}: getsockname changed: {got}\n{}", context(&r, &server));
        eprintln!("children: {step}: {got}");
        still_served(&r, &server, &format!("after {step}"), &addrs);
    }
    assert!(server.try_wait().is_none(), "the server exited:\n{}", context(&r, &server));
    drop(server);
    r.down();
}

#[test]
fn listeners_outlive_every_kind_of_child_gcb() {
    listeners_outlive_every_kind_of_child(Mode::Gcb);
}

#[test]
fn listeners_outlive_every_kind_of_child_dpf() {
    listeners_outlive_every_kind_of_child(Mode::Dpf);
}

#[test]
fn listeners_outlive_every_kind_of_child_pcp() {
    listeners_outlive_every_kind_of_child(Mode::Pcp);
}

/// The pids that printed `SERVED`, with how many connections each served.
fn served_by(server: &testbed::Proc) -> BTreeMap<u32, usize> {
    let mut by = BTreeMap::new();
    for l in server.stdout_seen() {
        if let Some(pid) = l.strip_prefix("SERVED ").and_then(|p| p.trim().parse().ok()) {
            *by.entry(pid).or_insert(0) += 1;
        }
    }
    by
}

/// Waits until `total` connections were served; returns who served them.
fn wait_served(r: &RealBed, server: &testbed::Proc, total: usize) -> BTreeMap<u32, usize> {
    let what = format!("{total} SERVED lines\n{}", context(r, server));
    wait_for(Duration::from_secs(20), &what, || {
        let by = served_by(server);
        (by.values().sum::<usize>() >= total).then_some(by)
    })
}

/// Signals `pid`, a pre-fork child of this test, after checking that the pid
/// still is that child (children.py in its command line).
fn signal_child(pid: u32, sig: libc::c_int) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(String::from_utf8_lossy(&cmdline).contains("children.py"), "pid {pid} is no longer the pre-fork child");
    // SAFETY: kill(2) on a pid just checked to be our own child process.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0, "kill {pid}");
}

/// Waits until `pid` has exited: gone, or a zombie nobody reaped yet.
fn wait_exited(pid: u32) {
    wait_for(Duration::from_secs(10), &format!("pid {pid} exits"), || {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return Some(()) };
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        (state == Some(Some('Z'))).then_some(())
    });
}

#[test]
fn prefork_children_serve_and_the_last_holder_takes_the_registration() {
    let r = RealBed::up_with(Mode::Gcb, 1, &["--heartbeat-timeout-s", "3"]);
    let py = python3().to_str().unwrap();
    let prog = script("children.py");
    let (server, mut stdin) = spawn_with_stdin(&r, "a1", true, &[py, "-u", &prog, "prefork", "7410", "3"]);
    let local = "192.0.2.10:7410";
    let tcp = r.registered(&server, "tcp", local);
    assert_eq!(line(&r, &server, "NAME tcp ", STEP_TIMEOUT), tcp);
    let children: Vec<u32> = (0..3).map(|_| line(&r, &server, "CHILD ", STEP_TIMEOUT).parse().expect("pid")).collect();

    // Three connections at a time, so that an idle child always has one to take.
    for (host, shim) in CLIENTS {
        let conn_us = echo(&r, host, shim, "tcp", &tcp, &["--runs", "10", "--parallel", "3"], &server);
        eprintln!("prefork: 30 connections from {host} (shim: {shim}), connect {conn_us:.0} µs on average");
    }
    let by = wait_served(&r, &server, 60);
    eprintln!("prefork: connections served per child: {by:?}");
    assert_eq!(by.values().sum::<usize>(), 60, "{by:?}");
    assert!(by.keys().all(|pid| children.contains(pid)), "only the children accept: {by:?}, children {children:?}");
    assert!(by.len() >= 2, "the children share the listener: {by:?}");

    let addrs = [("tcp", tcp.as_str(), local)];
    let mut served = 60;
    let mut check = |label: &str, gone: Option<u32>| {
        let before = served_by(&server);
        still_served(&r, &server, label, &addrs);
        served += CLIENTS.len();
        let after = wait_served(&r, &server, served);
        if let Some(pid) = gone {
            assert_eq!(before.get(&pid), after.get(&pid), "{pid} served after it exited: {after:?}");
        }
    };
    // The parent exits normally, the listener still open in it.
    tell(&mut stdin, "exit");
    line(&r, &server, "EXITING", STEP_TIMEOUT);
    let status = server.wait_timeout(STEP_TIMEOUT).unwrap_or_else(|| panic!("the parent did not exit\n{}", context(&r, &server)));
    assert!(status.success(), "the parent's exit: {status}\n{}", context(&r, &server));
    check("after the parent exited", None);
    for &pid in &children[..2] {
        signal_child(pid, libc::SIGTERM);
        wait_exited(pid);
        check(&format!("after child {pid} exited"), Some(pid));
    }

    // The last holder dies without running any code of its own.
    signal_child(children[2], libc::SIGKILL);
    wait_exited(children[2]);
    let killed = Instant::now();
    // Three 1 s heartbeats, the broker's sweep, and a loaded machine.
    wait_unlisted(&r, &server, &tcp, Duration::from_secs(20));
    eprintln!("prefork: the registration went {} ms after the last holder was killed", killed.elapsed().as_millis());
    let port = tcp.rsplit_once(':').unwrap().1;
    wait_for(Duration::from_secs(10), "the proxy port closes", || {
        let out = r.bed.run("broker", &["ss", "-Hltn", &format!("sport = :{port}")], STEP_TIMEOUT).ok()?;
        String::from_utf8_lossy(&out.stdout).trim().is_empty().then_some(())
    });
    let cli = ctest("echo-client");
    let out = r.bed.run("pub", &[cli.to_str().unwrap(), "--proto", "tcp", "--connect", &tcp], STEP_TIMEOUT).expect("echo-client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "a connect to a gone registration fails: {stdout}");
    assert!(stdout.contains("CONNECT-FAILED ECONNREFUSED"), "{stdout}");
    drop(server);
    r.down();
}
