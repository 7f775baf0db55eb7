//! Redis across the NAT (issue 7), the Debian `redis-server` and `redis-cli`
//! unmodified:
//!
//! * a master on a1 under `scripts/gcb-run`; `redis-cli` from pub (without and
//!   with the shim) and from b1 (with it) writes a 256 KiB value and a counter
//!   and reads them back;
//! * GCB mode: a replica on b1, also under the shim, announces its own proxy
//!   address (`replica-announce-ip/port`) and replicates from the master's proxy
//!   address (a relayed connection, realm B to realm A); the data written on the
//!   master is read back on the replica through the replica's proxy address, and
//!   the master lists the replica by that address;
//! * DPF mode: the master forwarded on GA, `redis-cli` from pub.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker, dpfd).

use std::time::Duration;

use testbed::real::{host_port, sha256_of, Mode, RealBed};
use testbed::{wait_for, Proc};

const CLI: Duration = Duration::from_secs(30);

fn redis_server(r: &RealBed, host: &str, port: u16) -> (Proc, String) {
    let p = port.to_string();
    // Its own working directory: a dump.rdb left anywhere else must not be loaded.
    let dir = r.file(&format!("redis-{port}"));
    std::fs::create_dir_all(&dir).expect("redis dir");
    let dir = dir.to_str().unwrap().to_string();
    let args = ["redis-server", "--port", &p, "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", &dir];
    let server = r.spawn(host, true, &args);
    let local = format!("{}:{port}", r.bed.ip(host));
    let public = r.registered(&server, "tcp", &local);
    (server, public)
}

/// `redis-cli` against `at` from `host`; returns its raw output.
fn cli(r: &RealBed, host: &str, shim: bool, at: &str, cmd: &[&str], server: &Proc) -> String {
    let (ip, port) = host_port(at);
    let mut args = vec!["redis-cli", "--raw", "-h", ip, "-p", port];
    args.extend_from_slice(cmd);
    let out = r.run_ok(host, shim, &args, None, CLI, server);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// 256 KiB of text (redis-cli --raw prints values as they are).
fn big_value() -> String {
    (0..256 * 1024u32).map(|i| char::from(b'a' + ((i.wrapping_mul(2_654_435_761) >> 13) % 26) as u8)).collect()
}

fn master_from_every_client(r: &RealBed) -> (Proc, String) {
    let (master, public) = redis_server(r, "a1", 6379);
    let value = big_value();
    let file = r.file("value.txt");
    std::fs::write(&file, &value).expect("value");
    for &(host, shim) in r.client_hosts() {
        let key = format!("big-{host}-{shim}");
        let (ip, port) = host_port(&public);
        // -x: the last argument is stdin.
        let out = r.run_ok(host, shim, &["redis-cli", "-h", ip, "-p", port, "-x", "SET", &key], Some(&file), CLI, &master);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "SET from {host} (shim: {shim})");
        let got = cli(r, host, shim, &public, &["GET", &key], &master);
        assert_eq!(sha256_of(got.trim_end().as_bytes()), sha256_of(value.as_bytes()), "GET from {host} (shim: {shim})");
        let visits = cli(r, host, shim, &public, &["INCR", "visits"], &master);
        assert!(visits.trim().parse::<u32>().is_ok(), "INCR answered {visits:?}");
    }
    let visits = cli(r, "pub", false, &public, &["GET", "visits"], &master);
    assert_eq!(visits.trim(), r.client_hosts().len().to_string(), "one INCR per client");
    (master, public)
}

#[test]
fn redis_master_and_replica_gcb() {
    let r = RealBed::up(Mode::Gcb);
    let (master, master_at) = master_from_every_client(&r);
    let (replica, replica_at) = redis_server(&r, "b1", 6380);
    let (rip, rport) = host_port(&replica_at);
    let (mip, mport) = host_port(&master_at);
    // Configured on b1 over loopback, which the shim leaves alone.
    let local = "127.0.0.1:6380";
    for cmd in [&["CONFIG", "SET", "replica-announce-ip", rip][..], &["CONFIG", "SET", "replica-announce-port", rport], &["REPLICAOF", mip, mport]] {
        assert_eq!(cli(&r, "b1", false, local, cmd, &replica).trim(), "OK", "{cmd:?}");
    }
    wait_for(Duration::from_secs(30), "the replica's link to the master is up", || {
        cli(&r, "b1", false, local, &["INFO", "replication"], &replica).contains("master_link_status:up").then_some(())
    });
    // New writes after the initial sync travel the replication stream.
    assert_eq!(cli(&r, "pub", false, &master_at, &["SET", "after-sync", "streamed"], &master).trim(), "OK");
    let value = big_value();
    let reader = [("pub", false), ("pub", true), ("b1", true)];
    for (host, shim) in reader {
        let got = wait_for(Duration::from_secs(15), "the streamed key on the replica", || {
            let v = cli(&r, host, shim, &replica_at, &["GET", "after-sync"], &replica);
            (v.trim() == "streamed").then_some(v)
        });
        assert_eq!(got.trim(), "streamed");
        let big = cli(&r, host, shim, &replica_at, &["GET", "big-b1-true"], &replica);
        assert_eq!(sha256_of(big.trim_end().as_bytes()), sha256_of(value.as_bytes()), "the synced value read on the replica from {host}");
    }
    let info = cli(&r, "pub", false, &master_at, &["INFO", "replication"], &master);
    assert!(
        info.contains(&format!("slave0:ip={rip},port={rport},state=online")),
        "the master must list the replica by its announced proxy address:\n{info}"
    );
    drop((replica, master));
    r.down();
}

#[test]
fn redis_master_dpf() {
    let r = RealBed::up(Mode::Dpf);
    let (master, _) = master_from_every_client(&r);
    drop(master);
    r.down();
}
