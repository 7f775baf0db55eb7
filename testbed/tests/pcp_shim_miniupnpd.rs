//! The shim's DPF mode through a standard gateway that is not dpfd (issue 14):
//! miniupnpd (`miniupnpd-nftables`, NAT-PMP and PCP on, limited to realm A)
//! on GA, unmodified servers on a1 and a2 under `gcb-run --dpf pcp://`.
//!
//! 1. A C echo server and a Python server, TCP and UDP, report the address
//!    miniupnpd mapped (on GA's extra outside address 100.0.0.1), log the
//!    registration line, and a plain client on pub reaches them there with
//!    every byte echoed. `pcp://` without an address finds GA as the default
//!    gateway. The mapping is gone, by the server's own delete, when the
//!    server exits (its lease of 600 s would keep it for minutes).
//! 2. miniupnpd restarts and forgets (its rules are flushed): each mapping is
//!    back within one renewal, the one of a process that hears the restart
//!    announcement (224.0.0.1:5350) and the one of a process that cannot
//!    (another program holds the port) alike, and carries traffic again.
//! 3. A bind to the mapped address itself (`client::pinned`) gets exactly
//!    that address; one to a port miniupnpd refuses fails with EADDRINUSE and
//!    one warning line naming the result code. `gcb-run --check` names the
//!    gateway, the protocol it answered in and the address, and leaves no
//!    mapping behind.
//!
//! Needs root, miniupnpd, python3, `cargo build --release` and
//! `make -C c-tests`.

#[path = "pcp_support/mod.rs"]
mod pcp_support;

use std::time::{Duration, Instant};

use pcp_support::{c_server, close_stdin, echo, port, py_server, registered, warned, warnings, STEP};
use testbed::miniupnpd::{self, Options, EXT_IP};
use testbed::{have_command, python3, require_root, wait_for, workspace_root, TestBed};

fn bed() -> (TestBed, std::path::PathBuf) {
    require_root();
    assert!(have_command("miniupnpd"), "miniupnpd is missing: .ci/run installs it");
    let bed = TestBed::up().expect("test bed");
    let dir = std::env::temp_dir().join(format!("pcp-shim-mu-{}", bed.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    (bed, dir)
}

/// Whether miniupnpd's NAT rules forward `proto` port `public` to `local`.
fn forwards(bed: &TestBed, proto: &str, public: u16, local: &str) -> bool {
    let l4 = if proto == "tcp" { "0x6" } else { "0x11" };
    miniupnpd::rules(bed).contains(&format!("{l4} th dport {public} dnat ip to {local}"))
}

#[test]
fn servers_are_reached_at_the_mapped_address_and_unmapped_at_exit() {
    let (bed, dir) = bed();
    let gw = miniupnpd::start(&bed, &dir, &Options::default(), STEP);
    let (tcp, tcp_pub) = c_server(&bed, "a1", "pcp://", &["--proto", "tcp", "--port", "7000", "--mode", "epoll"], "LISTEN tcp ");
    let (udp, udp_pub) = c_server(&bed, "a1", "pcp://", &["--proto", "udp", "--port", "7001"], "LISTEN udp ");
    let (mut py, py_tcp, py_udp) = py_server(&bed, "a1", "pcp://192.0.2.1", &["7100"]);
    for (p, local, public) in [
        (&tcp, "tcp 192.0.2.10:7000", &tcp_pub),
        (&udp, "udp 192.0.2.10:7001", &udp_pub),
        (&py, "tcp 192.0.2.10:7100", &py_tcp),
        (&py, "udp 192.0.2.10:7100", &py_udp),
    ] {
        assert!(public.starts_with(&format!("{EXT_IP}:")), "{local} reported {public}:\n{}", p.stderr_text());
        registered(p, local, public);
        let answered = format!("gcb: gateway 192.0.2.1:5351 answered PCP version 2: {local} mapped to {public} for 600 s");
        assert!(p.stderr_text().contains(&answered), "{}", p.stderr_text());
        assert!(warnings(p).is_empty(), "{:?}", warnings(p));
    }
    assert!(forwards(&bed, "tcp", port(&tcp_pub), "192.0.2.10:7000"), "{}", miniupnpd::rules(&bed));
    assert!(forwards(&bed, "udp", port(&py_udp), "192.0.2.10:7100"), "{}", miniupnpd::rules(&bed));
    for (proto, dest) in [("tcp", &tcp_pub), ("udp", &udp_pub), ("tcp", &py_tcp), ("udp", &py_udp)] {
        echo(&bed, "pub", proto, dest);
    }

    // Exits: each mapping goes at once, by the process's own delete.
    let exit = Instant::now();
    tcp.terminate();
    udp.terminate();
    close_stdin(&mut py);
    for (proto, public, local) in
        [("tcp", &tcp_pub, "192.0.2.10:7000"), ("udp", &udp_pub, "192.0.2.10:7001"), ("tcp", &py_tcp, "192.0.2.10:7100"), ("udp", &py_udp, "192.0.2.10:7100")]
    {
        wait_for(Duration::from_secs(10), &format!("{proto} {public} unmapped"), || {
            (!forwards(&bed, proto, port(public), local)).then_some(())
        });
        let removed = format!("PCP: {} port {} mapping removed", proto.to_uppercase(), port(public));
        gw.wait_stderr(&removed, Duration::from_secs(5)).unwrap_or_else(|e| panic!("no delete for {public}: {e}"));
    }
    assert!(exit.elapsed() < Duration::from_secs(60), "deleted, not expired");
    drop(gw);
    bed.down().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mappings_come_back_after_a_gateway_restart() {
    let (bed, dir) = bed();
    // Leases of 6 s: renewals every 3 to 3.75 s.
    let opts = Options { min_lifetime: 2, max_lifetime: 6 };
    let gw = miniupnpd::start(&bed, &dir, &opts, STEP);
    // On a2 another program holds port 5350 (without SO_REUSEADDR), so that
    // process cannot hear announcements and must notice at a renewal.
    let squat = "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',5350)); print('HELD',flush=True); sys.stdin.read()";
    let mut sq = bed.cmd("a2", python3());
    sq.args(["-c", squat]).stdin(std::process::Stdio::piped());
    let squatter = bed.spawn_cmd(sq).unwrap();
    squatter.wait_line("HELD", STEP).unwrap();
    let (heard, heard_pub) = c_server(&bed, "a1", "pcp://", &["--proto", "udp", "--port", "7001"], "LISTEN udp ");
    let (deaf, deaf_pub) = c_server(&bed, "a2", "pcp://", &["--proto", "tcp", "--port", "7002", "--mode", "poll"], "LISTEN tcp ");
    registered(&deaf, "tcp 192.0.2.11:7002", &deaf_pub);
    echo(&bed, "pub", "udp", &heard_pub);
    echo(&bed, "pub", "tcp", &deaf_pub);

    // Several leases later the renewals have kept both.
    std::thread::sleep(Duration::from_secs(8));
    assert!(forwards(&bed, "udp", port(&heard_pub), "192.0.2.10:7001") && forwards(&bed, "tcp", port(&deaf_pub), "192.0.2.11:7002"));

    gw.terminate();
    for chain in ["prerouting_miniupnpd", "forward_miniupnpd"] {
        let out = bed.run("ga", &["nft", "flush", "chain", "inet", "miniupnpd", chain], STEP).unwrap();
        assert!(out.status.success());
    }
    assert!(!forwards(&bed, "udp", port(&heard_pub), "192.0.2.10:7001"));
    let restarted = Instant::now();
    let gw = miniupnpd::start(&bed, &dir, &opts, STEP);
    // One renewal interval (at most 5/8 of 6 s) after the last renewal,
    // with room for a loaded machine.
    for (proto, public, local) in [("udp", &heard_pub, "192.0.2.10:7001"), ("tcp", &deaf_pub, "192.0.2.11:7002")] {
        wait_for(Duration::from_secs(10), &format!("{proto} {public} mapped again"), || forwards(&bed, proto, port(public), local).then_some(()));
    }
    let back = restarted.elapsed();
    echo(&bed, "pub", "udp", &heard_pub);
    echo(&bed, "pub", "tcp", &deaf_pub);
    for p in [&heard, &deaf] {
        assert!(warnings(p).is_empty(), "a restart that lost nothing is not worth a warning: {:?}", warnings(p));
    }
    eprintln!("mappings back {back:?} after miniupnpd restarted");
    drop((heard, deaf, squatter, gw));
    bed.down().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn binding_the_mapped_address_and_check() {
    let (bed, dir) = bed();
    let _gw = miniupnpd::start(&bed, &dir, &Options::default(), STEP);
    let check = workspace_root().join("scripts/gcb-run");
    let out = bed.run("a1", &[check.to_str().unwrap(), "--dpf", "pcp://", "--check"], STEP).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let want = format!("gcb-run: gateway 192.0.2.1:5351 answered PCP version 2; a listener here would be reached at {EXT_IP}:");
    assert!(text.starts_with(&want), "{text}");
    // The check's listener exited: its mapping is deleted, no port left open.
    wait_for(Duration::from_secs(10), "the check's mapping deleted", || (!miniupnpd::rules(&bed).contains("dnat")).then_some(()));

    // Exactly the address bound: TCP and UDP on 100.0.0.1:40444.
    let (mut pinned, tcp, udp) = py_server(&bed, "a1", "pcp://", &["40444", "--bind", EXT_IP]);
    assert_eq!((tcp.as_str(), udp.as_str()), ("100.0.0.1:40444", "100.0.0.1:40444"), "{}", pinned.stderr_text());
    echo(&bed, "pub", "tcp", &tcp);
    echo(&bed, "pub", "udp", &udp);
    close_stdin(&mut pinned);

    // Port 80 is outside what miniupnpd may map: the bind fails, with one
    // warning naming the code, and the program's fallback bind works.
    let (refused, tcp, _) = py_server(&bed, "a1", "pcp://", &["80", "--bind", EXT_IP]);
    assert_eq!(refused.stdout_seen().first().map(String::as_str), Some("BIND_ERROR EADDRINUSE"));
    let w = warned(&refused, "; the bind fails");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("refused to map tcp 192.0.2.10:") && w[0].ends_with(": PCP CANNOT_PROVIDE_EXTERNAL (11); the bind fails"), "{w:?}");
    echo(&bed, "pub", "tcp", &tcp);
    drop(refused);
    bed.down().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
