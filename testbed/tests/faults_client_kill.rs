//! A client process killed with SIGKILL (issue 8): nothing of it may linger.
//!
//! * GCB: a registered echo server in realm A is killed; within the broker's
//!   heartbeat timeout (three 1 s heartbeats) plus slack, `gcb-broker query`
//!   no longer lists its registration and no proxy socket listens on its port.
//!   Another process's registration stays.
//! * DPF: the same for a forward: `dpfd status` and the kernel's nftables map
//!   lose it within one probe interval (1 s here, plus slack): the dead
//!   process's management port refuses the next probe; `testbed/tests/dpf_shim.rs` checks the status side
//!   too, this adds the kernel's view.
//!
//! Needs root, `cargo build --release` and `make -C c-tests`.

#[path = "faults_support/mod.rs"]
mod support;

use std::time::Duration;
use support::{built, ctest, wait_for, Faults, BROKER, STARTUP};

const HEARTBEAT_S: u64 = 1;

#[test]
fn a_killed_gcb_listener_leaves_the_broker() {
    let f = Faults::up(HEARTBEAT_S);
    let (victim, proxy) = f.echo_server("a1", BROKER, 7300);
    let (survivor, kept) = f.peer_server("a2", BROKER, 7301);
    let context = || f.broker_logs();
    f.echo("pub", None, &proxy, &[], &context);
    let regs = f.registrations(BROKER);
    assert!(regs.contains(&proxy) && regs.contains(&kept), "{regs:?}");
    let port = proxy.rsplit_once(':').unwrap().1.to_string();
    let listening = |port: &str| {
        let filter = format!("sport = :{port}");
        let out = f.bed.run("broker", &["ss", "-Hltn", &filter], STARTUP).expect("ss");
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    assert!(listening(&port), "the proxy socket of {proxy} listens");

    victim.kill();
    // The broker's timeout (3 heartbeats), its expiry sweep, and a busy machine.
    let bound = Duration::from_secs(3 * HEARTBEAT_S + 5);
    wait_for(bound, || format!("{proxy} gone from the broker\n{}", context()), || {
        (!f.registrations(BROKER).contains(&proxy) && !listening(&port)).then_some(())
    });
    assert!(f.registrations(BROKER).contains(&kept), "the other process's registration stays");
    f.echo("pub", None, &kept, &[], &context);
    drop((victim, survivor));
    f.bed.down().expect("tear down");
}

#[test]
fn a_killed_dpf_listener_loses_its_forward_in_the_kernel() {
    let f = Faults::up(HEARTBEAT_S);
    let mirror = std::env::temp_dir().join(format!("faults-{}.mirror", f.bed.prefix()));
    let dpfd_bin = built("dpfd");
    let args = [
        dpfd_bin.to_str().unwrap(),
        "--listen", "192.0.2.1", "--public-ip", "203.0.113.1", "--port-range", "41000-41999",
        "--mirror", mirror.to_str().unwrap(), "--probe-interval-s", "1", "--nft-table", "faults",
    ];
    let dpfd = f.bed.spawn("ga", &args).expect("dpfd");
    wait_for(STARTUP, || dpfd.stderr_text(), || dpfd.stderr_text().contains("started: command port udp").then_some(()));

    let srv = ctest("echo-server");
    let mut c = f.bed.cmd("a1", testbed::workspace_root().join("scripts/gcb-run"));
    c.args(["--dpf", "192.0.2.1", "--log", "info", "--lib"]).arg(built("libgcb.so")).arg("--");
    c.arg(&srv).args(["--proto", "tcp", "--port", "7310", "--mode", "epoll"]);
    let victim = f.bed.spawn_cmd(c).expect("echo-server");
    let public = victim.wait_line("LISTEN tcp ", STARTUP).unwrap_or_else(|e| panic!("{e}\n{}", dpfd.stderr_text()));
    assert!(public.starts_with("203.0.113.1:"), "advertised {public}");
    let port = public.rsplit_once(':').unwrap().1.to_string();
    let context = || dpfd.stderr_text();
    f.echo("pub", None, &public, &[], &context);
    let kernel_has = || {
        let out = f.bed.run("ga", &["nft", "list", "table", "ip", "faults"], STARTUP).expect("nft");
        String::from_utf8_lossy(&out.stdout).contains(&format!("{port} :"))
    };
    let status_has = || {
        let out = f.bed.run("ga", &[dpfd_bin.to_str().unwrap(), "status", "--json"], STARTUP).expect("dpfd status");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains(&format!(":{port}\"")) || text.contains(&format!(":{port},"))
    };
    assert!(kernel_has(), "the forward of {public} is in the kernel's map");
    assert!(status_has(), "dpfd status lists {public}");

    victim.kill();
    // A killed process's management port answers the next probe with a refusal,
    // so the forward goes in the next round: one probe interval (1 s), plus
    // slack for a loaded machine.
    let bound = Duration::from_secs(1 + 4);
    wait_for(bound, || format!("forward {public} gone\n{}", context()), || (!kernel_has() && !status_has()).then_some(()));
    drop(victim);
    let _ = dpfd.terminate();
    let _ = std::fs::remove_file(&mirror);
    f.bed.down().expect("tear down");
}
