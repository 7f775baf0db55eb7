//! The shim's own PCP client against dpfd as a standard gateway (issue 14):
//! dpfd on GA with short leases (6 s), unmodified servers on a1 under
//! `gcb-run --dpf pcp://192.0.2.1`.
//!
//! 1. MAP without a suggested port (a C echo server, TCP) and with one (a
//!    Python server binding the public address it wants, TCP and UDP): dpfd
//!    logs each mapping, a plain client on pub reaches each, and several
//!    leases later the renewals have kept them.
//! 2. Refusals: a bind to a port outside dpfd's range fails (EADDRINUSE,
//!    CANNOT_PROVIDE_EXTERNAL); a listener over the per-host quota works on
//!    its local address after exactly one warning line naming
//!    USER_EX_QUOTA, and a2 reaches it there.
//! 3. Exits delete (dpfd logs the client's delete). A server that forks a
//!    child to serve and closes its own sockets keeps its mappings while the
//!    child lives (the child renews them), and the child's exit deletes
//!    them; `echo-server --exec` keeps its mapping in the new image, and
//!    an exec to an image that does not inherit the socket deletes it. A
//!    server killed outright and started again gets its mapping back at
//!    once, at the same address (the nonce is derived from the user's key).
//!
//! Needs root, python3, `cargo build --release` and `make -C c-tests`.

#[path = "pcp_support/mod.rs"]
mod pcp_support;

use std::time::Duration;

use pcp_support::{c_server, close_stdin, echo, py_server, registered, warned, warnings, STEP};
use testbed::daemons::start_dpfd;
use testbed::{require_root, wait_for, Proc, TestBed};

const GATEWAY: &str = "pcp://192.0.2.1";
/// Two leases and more: what renewals must have bridged.
const LEASES: Duration = Duration::from_secs(13);

/// dpfd's log line for a mapping made by PCP for `local` (`tcp ... -> 192.0.2.10:7000`).
fn added(dpfd: &Proc, proto: &str, public: &str, local: &str) -> bool {
    dpfd.stderr_text().contains(&format!("mapping added (pcp): {proto} {public} -> {local} for 6 s"))
}

/// Waits for dpfd's log line for a1's delete of that mapping (`local` may
/// be an IP and colon alone).
fn deleted(dpfd: &Proc, proto: &str, public: &str, local: &str) {
    let what = format!("mapping deleted (pcp): {proto} {public} -> {local}");
    let seen = || dpfd.stderr_text().lines().any(|l| l.contains(&what) && l.contains("(client request from 192.0.2.10:"));
    wait_for(Duration::from_secs(10), &what, || seen().then_some(()));
}

#[test]
fn the_shims_pcp_client_against_dpfd() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let mirror = std::env::temp_dir().join(format!("pcp-shim-dpfd-{}.mirror", bed.prefix()));
    let quota = ["--per-host-quota", "5", "--pcp-min-lifetime-s", "1", "--pcp-max-lifetime-s", "6", "--log", "debug"];
    let dpfd = start_dpfd(&bed, &mirror, &quota, STEP);

    // (1) Without a suggested port, and with one.
    let (c, c_pub) = c_server(&bed, "a1", GATEWAY, &["--proto", "tcp", "--port", "7000"], "LISTEN tcp ");
    assert!(c_pub.starts_with("203.0.113.1:40"), "{c_pub}");
    registered(&c, "tcp 192.0.2.10:7000", &c_pub);
    let (mut py, py_tcp, py_udp) = py_server(&bed, "a1", GATEWAY, &["40500", "--bind", "203.0.113.1"]);
    assert_eq!((py_tcp.as_str(), py_udp.as_str()), ("203.0.113.1:40500", "203.0.113.1:40500"), "{}", py.stderr_text());
    py.wait_stderr(", the address the program bound", Duration::from_secs(5)).unwrap();
    for (proto, public) in [("tcp", &c_pub), ("tcp", &py_tcp), ("udp", &py_udp)] {
        echo(&bed, "pub", proto, public);
    }
    std::thread::sleep(LEASES);
    for (proto, public) in [("tcp", &c_pub), ("tcp", &py_tcp), ("udp", &py_udp)] {
        echo(&bed, "pub", proto, public);
    }
    assert!(added(&dpfd, "tcp", &c_pub, "192.0.2.10:7000"), "{}", dpfd.stderr_text());
    let renewals = dpfd.stderr_text().matches("mapping added (pcp): tcp 203.0.113.1:40500").count();
    assert_eq!(renewals, 1, "renewed, never made again:\n{}", dpfd.stderr_text());

    // (2) Outside the range: the bind fails, and the program binds elsewhere
    // (mapped: a1 holds 5 then, its quota).
    let (mut out_of_range, o_tcp, o_udp) = py_server(&bed, "a1", GATEWAY, &["80", "--bind", "203.0.113.1"]);
    assert_eq!(out_of_range.stdout_seen().first().map(String::as_str), Some("BIND_ERROR EADDRINUSE"));
    let w = warned(&out_of_range, "; the bind fails");
    assert!(w.len() == 1 && w[0].ends_with(": PCP CANNOT_PROVIDE_EXTERNAL (11); the bind fails"), "{w:?}");
    assert!(o_tcp.starts_with("203.0.113.1:40") && o_udp.starts_with("203.0.113.1:40"), "{o_tcp} {o_udp}");
    let (over, local) = c_server(&bed, "a1", GATEWAY, &["--proto", "tcp", "--port", "7004"], "LISTEN tcp ");
    assert_eq!(local, "0.0.0.0:7004", "the kernel's own address");
    let want = "gcb: warning: gateway 192.0.2.1:5351 refused to map tcp 192.0.2.10:7004: PCP USER_EX_QUOTA (10); the socket works on its local address";
    over.wait_stderr(want, Duration::from_secs(5)).unwrap();
    assert_eq!(warnings(&over), vec![want.to_string()]);
    echo(&bed, "a2", "tcp", "192.0.2.10:7004");
    drop(over);
    close_stdin(&mut out_of_range);

    // (3) Exits delete.
    c.terminate();
    deleted(&dpfd, "tcp", &c_pub, "192.0.2.10:7000");
    close_stdin(&mut py);
    deleted(&dpfd, "tcp", &py_tcp, "192.0.2.10:");
    deleted(&dpfd, "udp", &py_udp, "192.0.2.10:");

    // A forked child serves and renews; its exit deletes.
    let (mut forked, f_tcp, f_udp) = py_server(&bed, "a1", GATEWAY, &["7005", "--fork"]);
    forked.wait_line("FORKED ", STEP).unwrap();
    std::thread::sleep(LEASES);
    echo(&bed, "pub", "tcp", &f_tcp);
    echo(&bed, "pub", "udp", &f_udp);
    assert!(!dpfd.stderr_text().contains(&format!("{f_tcp} -> 192.0.2.10:7005 (")), "deleted while the child holds it");
    close_stdin(&mut forked);
    deleted(&dpfd, "tcp", &f_tcp, "192.0.2.10:7005");
    deleted(&dpfd, "udp", &f_udp, "192.0.2.10:7005");

    // Killed outright, it deletes nothing; restarted, it holds the mapping
    // again (the nonce is the user's): the same address, no refusal.
    let (killed, k_pub) = c_server(&bed, "a1", GATEWAY, &["--proto", "tcp", "--port", "7007"], "LISTEN tcp ");
    killed.kill();
    let (again, k_again) = c_server(&bed, "a1", GATEWAY, &["--proto", "tcp", "--port", "7007"], "LISTEN tcp ");
    assert_eq!(k_again, k_pub, "{}", again.stderr_text());
    assert!(warnings(&again).is_empty(), "{:?}", warnings(&again));
    echo(&bed, "pub", "tcp", &k_again);
    assert_eq!(dpfd.stderr_text().matches(&format!("mapping added (pcp): tcp {k_pub} ")).count(), 1, "renewed, not made again");
    again.terminate();
    deleted(&dpfd, "tcp", &k_pub, "192.0.2.10:7007");

    // exec of an image that does not get the socket (close-on-exec, as
    // Python makes them): the mapping goes with the old image.
    let away = "import os,socket; s=socket.socket(); s.bind(('0.0.0.0',7008)); s.listen(); print('LISTEN tcp %s:%d' % s.getsockname(), flush=True); os.execv('/bin/sleep', ['sleep', '60'])";
    let mut c = pcp_support::shim(&bed, "a1", GATEWAY, testbed::python3().to_str().unwrap());
    c.args(["-c", away]);
    let execd = bed.spawn_cmd(c).unwrap();
    let a_pub = execd.wait_line("LISTEN tcp ", STEP).unwrap();
    deleted(&dpfd, "tcp", &a_pub, "192.0.2.10:7008");
    assert!(execd.try_wait().is_none(), "the new image runs on");
    drop(execd);

    // exec: the new image renews the same mapping.
    let (exec, e_pub) = c_server(&bed, "a1", GATEWAY, &["--proto", "tcp", "--port", "7006", "--exec"], "LISTEN tcp ");
    let inherited = exec.wait_line("INHERITED tcp ", STEP).unwrap();
    assert_eq!(inherited, e_pub);
    std::thread::sleep(LEASES);
    echo(&bed, "pub", "tcp", &e_pub);
    exec.terminate();
    deleted(&dpfd, "tcp", &e_pub, "192.0.2.10:7006");
    drop(dpfd);
    bed.down().unwrap();
    let _ = std::fs::remove_file(&mirror);
}
