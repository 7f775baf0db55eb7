//! Broker failover without an address change (issue 16): two broker hosts
//! (`broker` 203.0.113.10 and `broker2` .11, from `scripts/netns up
//! --broker2`) run keepalived with the configuration of
//! `deploy/keepalived/` and share the floating address 203.0.113.30; both
//! run `gcb-broker --freebind` on it, so the standby's sockets are bound
//! before the address arrives.
//!
//! An echo server in realm A registers through the floating address. Then
//! the host holding it loses its keepalived and its broker to SIGKILL, as
//! in a crash. Within three heartbeat intervals of that, a plain client on
//! the public host and a GCB client in realm B both reach the server at
//! the address it advertised before, every byte verified; the server
//! re-registered with the standby broker on the same port.
//!
//! Needs root, keepalived (Debian `keepalived`, installed by `.ci/run`),
//! `cargo build --release` and `make -C c-tests`.

#[path = "faults_support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{built, wait_for, Faults, STARTUP};
use testbed::{have_command, require_root, workspace_root, Proc, TestBed};

/// The shim's heartbeat interval in seconds; the brokers expire after 3H.
const HEARTBEAT_S: u64 = 4;
/// The floating address of deploy/keepalived/keepalived.conf.
const VIP: &str = "203.0.113.30";
const HOSTS: [&str; 2] = ["broker", "broker2"];

/// deploy/keepalived/'s files for one host: its router id and priority, and
/// the health check where this test keeps it.
fn keepalived_conf(dir: &Path, n: usize) -> PathBuf {
    let deploy = workspace_root().join("deploy/keepalived");
    let check = dir.join("gcb-broker-check");
    fs::copy(deploy.join("gcb-broker-check"), &check).expect("copy the check");
    let conf = fs::read_to_string(deploy.join("keepalived.conf")).expect("keepalived.conf");
    let mut out = String::new();
    for line in conf.lines() {
        let line = match line.trim_start() {
            l if l.starts_with("router_id ") => format!("    router_id gcb-broker-{}", n + 1),
            l if l.starts_with("priority ") => format!("    priority {}", [150, 100][n]),
            _ => line.replace("/etc/keepalived/gcb-broker-check", check.to_str().unwrap()),
        };
        out.push_str(&line);
        out.push('\n');
    }
    assert!(out.contains(VIP) && out.contains(check.to_str().unwrap()), "{out}");
    let path = dir.join(format!("keepalived-{n}.conf"));
    fs::write(&path, out).expect("write keepalived.conf");
    path
}

/// Whether `host` holds the floating address now.
fn holds(bed: &TestBed, host: &str) -> bool {
    let out = bed.run(host, &["ip", "-br", "addr", "show", "dev", "eth0"], STARTUP).expect("ip addr");
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {VIP}/"))
}

/// SIGKILL to every keepalived and gcb-broker process of `host`, at once.
fn crash(bed: &TestBed, host: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &bed.netns(host)])
        .output()
        .expect("ip netns pids");
    let mut victims = Vec::new();
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if matches!(comm.trim(), "keepalived" | "gcb-broker") {
            victims.push(pid.to_string());
        }
    }
    assert!(victims.len() >= 3, "keepalived (parent and VRRP child) and gcb-broker on {host}: {victims:?}");
    let st = std::process::Command::new("kill").arg("-KILL").args(&victims).status().expect("kill");
    assert!(st.success(), "kill -KILL {victims:?}");
    victims
}

#[test]
fn a_floating_broker_address_survives_the_loss_of_its_host() {
    require_root();
    assert!(have_command("keepalived"), "keepalived is missing: apt-get install keepalived (.ci/run does)");
    let bed = TestBed::up_with_broker2().expect("test bed with broker2");
    let mut f = Faults { bed, brokers: Vec::new(), heartbeat_s: HEARTBEAT_S };
    let dir = std::env::temp_dir().join(format!("gcb-floating-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();

    // Both brokers first, on an address neither host holds yet.
    let timeout = (3 * HEARTBEAT_S).to_string();
    let bin = built("gcb-broker");
    let listen = format!("{VIP}:65432");
    for host in HOSTS {
        let args = [bin.to_str().unwrap(), "--listen", &listen, "--freebind", "--port-range", "20000-20999"];
        let p = f
            .bed
            .spawn(host, &[&args[..], &["--heartbeat-timeout-s", &timeout, "--log", "debug"]].concat())
            .expect("gcb-broker");
        f.brokers.push((host.to_string(), p));
    }
    wait_for(STARTUP, || f.broker_logs(), || {
        f.brokers.iter().all(|(_, p)| p.stderr_text().contains("started: command port")).then_some(())
    });
    // keepalived on each: one of them takes the address.
    let mut keepaliveds: Vec<Proc> = Vec::new();
    for (n, host) in HOSTS.iter().enumerate() {
        let conf = keepalived_conf(&dir, n);
        let pid = |what: &str| dir.join(format!("{what}-{n}.pid")).to_str().unwrap().to_string();
        let args = ["keepalived", "-n", "-l", "-P", "-f", conf.to_str().unwrap(), "-p", &pid("ka"), "-r", &pid("vrrp")];
        keepaliveds.push(f.bed.spawn(host, &args).expect("keepalived"));
    }
    let context = |f: &Faults, ks: &[Proc]| {
        let ka: String = ks.iter().map(|k| format!("--- keepalived:\n{}", k.stderr_text())).collect();
        format!("{}{ka}", f.broker_logs())
    };
    let master = wait_for(Duration::from_secs(30), || context(&f, &keepaliveds), || {
        HOSTS.into_iter().find(|h| holds(&f.bed, h))
    });
    let standby = HOSTS.into_iter().find(|h| *h != master).unwrap();
    assert!(!holds(&f.bed, standby), "both hosts hold {VIP}");

    // A server in realm A registers through the floating address.
    let (server, listen) = f.echo_server("a1", VIP, 7000);
    let advertised = listen.split_whitespace().next().unwrap_or("").to_string();
    assert!(advertised.starts_with(&format!("{VIP}:")), "the server advertises {advertised:?}");
    f.echo("pub", None, &advertised, &[], &|| context(&f, &keepaliveds));

    // The master's host "crashes": its keepalived and broker die at once.
    let killed = crash(&f.bed, master);
    let t0 = Instant::now();
    let bound = Duration::from_secs(3 * HEARTBEAT_S);
    let plain = f.echo_until_ok("pub", None, &advertised, bound);
    let left = bound.saturating_sub(t0.elapsed());
    assert!(!left.is_zero(), "the plain client got through only after {:?}", t0.elapsed());
    f.echo_until_ok("b1", Some(VIP), &advertised, left);
    let both = t0.elapsed();
    assert!(both < bound, "both clients through after {both:?}, over 3 heartbeats ({bound:?})");
    assert!(holds(&f.bed, standby), "{standby} holds {VIP} after the failover");

    // The standby's broker has the server, on the port it had; the server
    // registered twice, both times as the address it advertised.
    let standby_broker = &f.brokers.iter().find(|(h, _)| h == standby).unwrap().1;
    let log = standby_broker.stderr_text();
    let port = advertised.rsplit_once(':').unwrap().1;
    assert!(log.contains(&format!(":{port}")), "the standby broker never registered port {port}:\n{log}");
    let shim_log = server.stderr_text();
    let registrations = shim_log
        .lines()
        .filter(|l| l.starts_with("gcb: registered tcp ") && l.ends_with(&format!(" as {advertised}")))
        .count();
    assert_eq!(registrations, 2, "the server registered as {advertised} before and after:\n{shim_log}");
    eprintln!(
        "floating address: killed {killed:?} on {master}; plain client through after {plain:?}, \
         GCB client in realm B after {both:?} (bound {bound:?})"
    );
    drop(keepaliveds);
    drop(server);
    fs::remove_dir_all(&dir).unwrap();
}
