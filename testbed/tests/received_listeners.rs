//! Listeners a program received rather than made (issue 12, "Received
//! listeners"), served like the ones it made.
//!
//! * `a_listener_sent_to_*`: a Python parent on a1
//!   under the shim (`spawn_support/received.py parent`) listens, starts a
//!   child and hands it the listener over an AF_UNIX socket with
//!   `SCM_RIGHTS`, two ways: `socket.send_fds` over a socketpair to a
//!   `subprocess` child, and a multiprocessing Pipe to a running spawn-context
//!   child (multiprocessing's resource sharer). Only the child accepts; the
//!   parent closes its own copy and waits. A plain client on pub and a GCB
//!   client on b1 then reach the child at the parent's advertised address
//!   (every byte echoed, and the child's `SERVED` lines counted), the broker
//!   still lists it, and the child's `getsockname` is that address too.
//! * `a_socket_activated_service_registers_its_listener`: `systemd-socket-
//!   activate -l 0.0.0.0:7600` on a1, itself not under the shim, execs
//!   `scripts/gcb-run ... python3 received.py activated` at the first
//!   connection, which a plain client in realm A (a2) makes and gets its echo
//!   from. The service takes fd 3 (`LISTEN_FDS`), must register it (its
//!   `gcb: registered tcp 192.0.2.10:7600` line) and advertise that address
//!   (`getsockname`), and is then reached from pub and b1 and listed by the
//!   broker.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker),
//! `make -C c-tests` and systemd-socket-activate (Debian's `systemd`).

#[path = "spawn_support/mod.rs"]
mod support;

use std::time::Duration;

use support::{context, echo, line, script, still_served, CLIENTS};
use testbed::real::{built, Mode, RealBed, BROKER};
use testbed::{python3, wait_for, workspace_root, Proc};

const STARTUP: Duration = Duration::from_secs(60);

/// How many connections `pid` served so far.
fn served_by(server: &Proc, pid: &str) -> usize {
    server.stdout_seen().iter().filter(|l| l.strip_prefix("SERVED ") == Some(pid)).count()
}

/// Waits until `pid` printed `want` SERVED lines, and no other process any.
fn wait_served(r: &RealBed, server: &Proc, pid: &str, want: usize) {
    let what = format!("{want} connections served by {pid}\n{}", context(r, server));
    wait_for(Duration::from_secs(20), &what, || (served_by(server, pid) >= want).then_some(()));
    let all = server.stdout_seen().iter().filter(|l| l.starts_with("SERVED ")).count();
    assert_eq!(all, want, "only {pid} accepts\n{}", context(r, server));
}

/// The parent on a1 hands its listener on `port` to a child the `how` way
/// (see received.py); only the child serves it.
fn handed_to_a_child(how: &str, port: u16) {
    let r = RealBed::up(Mode::Gcb);
    let py = python3().to_str().unwrap();
    let port = port.to_string();
    let local = format!("192.0.2.10:{port}");
    let server = r.spawn("a1", true, &[py, "-u", &script("received.py"), "parent", &port, how]);
    let tcp = r.registered(&server, "tcp", &local);
    assert_eq!(line(&r, &server, "NAME tcp ", STARTUP), tcp, "{how}: the parent's getsockname");
    let child = line(&r, &server, "CHILD ", STARTUP);
    let (pid, child_name) = child.split_once(" NAME ").unwrap_or_else(|| panic!("{child}"));
    line(&r, &server, "PARENT CLOSED", STARTUP);
    still_served(&r, &server, &format!("{how}: the child alone holds the listener"), &[("tcp", &tcp, &local)]);
    wait_served(&r, &server, pid, CLIENTS.len());
    // Three connections more each, now that the parent's copy is long gone.
    for (host, shim) in CLIENTS {
        echo(&r, host, shim, "tcp", &tcp, &["--runs", "3"], &server);
    }
    wait_served(&r, &server, pid, 4 * CLIENTS.len());
    assert_eq!(child_name, tcp, "{how}: the child's getsockname is the advertised address");
    assert!(server.try_wait().is_none(), "{how}: the parent waits for its child\n{}", context(&r, &server));
    eprintln!("{how}: child {pid} served {} connections at {tcp}", served_by(&server, pid));
    drop(server);
    r.down();
}

#[test]
fn a_listener_sent_to_a_subprocess_with_send_fds() {
    handed_to_a_child("sendfds", 7500);
}

#[test]
fn a_listener_sent_to_a_multiprocessing_child_through_a_pipe() {
    handed_to_a_child("mp-pipe", 7501);
}

#[test]
fn a_socket_activated_service_registers_its_listener() {
    let r = RealBed::up(Mode::Gcb);
    let py = python3().to_str().unwrap();
    let hb = r.heartbeat_s.to_string();
    // The activator is not under the shim; only the service it execs is.
    let mut c = r.cmd("a1", "systemd-socket-activate", false);
    c.args(["-l", "0.0.0.0:7600", "--"]).arg(workspace_root().join("scripts/gcb-run"));
    c.args(["--broker", BROKER, "--heartbeat", &hb, "--log", "info", "--lib"]).arg(built("libgcb.so"));
    c.args(["--", py, "-u", &script("received.py"), "activated"]);
    let service = r.bed.spawn_cmd(c).unwrap_or_else(|e| panic!("{e}"));
    wait_for(STARTUP, "systemd-socket-activate listens on 7600", || {
        let out = r.bed.run("a1", &["ss", "-Hltn", "sport = :7600"], STARTUP).ok()?;
        (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
    });
    // Its memory map, not its stderr (read by another thread, so possibly
    // behind): the activator itself has not loaded the shim.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", service.pid())).expect("the activator's maps");
    assert!(!maps.contains("libgcb.so"), "the activator itself must not load the shim:\n{}", service.stderr_text());
    // The first connection starts the service; it comes from inside realm A,
    // the only place the listener can be reached before it is registered.
    echo(&r, "a2", false, "tcp", "192.0.2.10:7600", &["--timeout-ms", "30000"], &service);
    let local = "192.0.2.10:7600";
    let tcp = r.registered(&service, "tcp", local);
    assert_eq!(line(&r, &service, "NAME tcp ", STARTUP), tcp, "the service's getsockname of fd 3");
    still_served(&r, &service, "socket-activated", &[("tcp", &tcp, local)]);
    for (host, shim) in CLIENTS {
        echo(&r, host, shim, "tcp", &tcp, &["--runs", "3"], &service);
    }
    let pid = service.pid().to_string();
    wait_served(&r, &service, &pid, 1 + 4 * CLIENTS.len());
    eprintln!("socket-activated service {pid}: {} connections served, registered as {tcp}", served_by(&service, &pid));
    drop(service);
    r.down();
}
