//! A real server that spawns children while serving (issue 12, "Real
//! programs"): Debian's `redis-server` under `scripts/gcb-run` on a1, asked
//! for `BGSAVE` twice.
//!
//! Why Redis and `BGSAVE` rather than gunicorn: `BGSAVE` forks a child that
//! writes the snapshot while the parent keeps serving, and the child closes
//! the inherited listening sockets itself (`closeChildUnusedResourceAfterFork`)
//! and leaves with `_exit`: in C, the very sequence that took the listener's
//! registration with it in the issue. `rdb-key-save-delay` keeps the child
//! alive for seconds, so clients are served while it runs, which a restart of
//! pre-forked workers (gunicorn's `HUP`) would not show any better than the
//! pre-fork test in `children.rs`; and it needs no package beyond the Debian
//! ones `real_redis.rs` uses.
//!
//! Each round: `BGSAVE` from a plain client on pub; while the child is
//! saving (`rdb_bgsave_in_progress:1`), `redis-cli` from pub (plain) and b1
//! (GCB) writes a 64 KiB value and a counter and reads them back; once the
//! child is gone (`rdb_last_bgsave_status:ok`, `LASTSAVE` moved) the same
//! again; and after each, the broker lists the registration with the proxy
//! address it had at the start. At the end the key count and the log's two
//! "Background saving terminated with success" lines are checked.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and Debian's
//! `redis-server` and `redis-tools`.

use std::time::{Duration, Instant};

use testbed::real::{host_port, sha256_of, Mode, RealBed};
use testbed::{wait_for, Proc};

const CLI: Duration = Duration::from_secs(30);
/// Keys written before the saves; with 1 ms each the child lives about 5 s.
const KEYS: usize = 5000;

fn cli(r: &RealBed, host: &str, shim: bool, at: &str, cmd: &[&str], server: &Proc) -> String {
    let (ip, port) = host_port(at);
    let mut args = vec!["redis-cli", "--raw", "-h", ip, "-p", port];
    args.extend_from_slice(cmd);
    String::from_utf8_lossy(&r.run_ok(host, shim, &args, None, CLI, server).stdout).trim_end().to_string()
}

/// One field of `INFO persistence`.
fn persistence(r: &RealBed, at: &str, field: &str, server: &Proc) -> String {
    let info = cli(r, "pub", false, at, &["INFO", "persistence"], server);
    let key = format!("{field}:");
    info.lines().find_map(|l| l.trim().strip_prefix(key.as_str())).unwrap_or_else(|| panic!("no {field} in:\n{info}")).to_string()
}

/// From pub (plain) and b1 (GCB): a 64 KiB value written and read back, and
/// a counter; returns how long the two clients took.
fn clients_served(r: &RealBed, at: &str, server: &Proc, label: &str, counter: &mut u32) -> Duration {
    let start = Instant::now();
    let value: String = (0..64 * 1024u32).map(|i| char::from(b'a' + ((i.wrapping_mul(2_654_435_761) >> 13) % 26) as u8)).collect();
    let file = r.file("value.txt");
    std::fs::write(&file, &value).expect("value");
    for (host, shim) in [("pub", false), ("b1", true)] {
        let key = format!("{label}-{host}");
        let (ip, port) = host_port(at);
        let out = r.run_ok(host, shim, &["redis-cli", "-h", ip, "-p", port, "-x", "SET", &key], Some(&file), CLI, server);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{label}: SET from {host}");
        let got = cli(r, host, shim, at, &["GET", &key], server);
        assert_eq!(sha256_of(got.as_bytes()), sha256_of(value.as_bytes()), "{label}: GET from {host}");
        *counter += 1;
        assert_eq!(cli(r, host, shim, at, &["INCR", "visits"], server), counter.to_string(), "{label}: INCR from {host}");
    }
    start.elapsed()
}

fn still_listed(r: &RealBed, public: &str, label: &str, server: &Proc) {
    let regs = r.registrations();
    assert!(
        regs.iter().any(|(p, proxy, l)| p == "tcp" && proxy == public && l == "192.0.2.10:6379"),
        "{label}: the broker no longer lists {public}: {regs:?}\nredis stdout:\n{}\nstderr:\n{}\nbroker:\n{}",
        server.stdout_seen().join("\n"),
        server.stderr_text(),
        r.daemon.stderr_text()
    );
}

#[test]
fn redis_serves_while_its_bgsave_child_runs_gcb() {
    let r = RealBed::up(Mode::Gcb);
    let dir = r.file("redis");
    std::fs::create_dir_all(&dir).expect("redis dir");
    let dir_s = dir.to_str().unwrap().to_string();
    let args = [
        "redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no",
        "--dir", &dir_s, "--rdb-key-save-delay", "1000",
    ];
    let server = r.spawn("a1", true, &args);
    let at = r.registered(&server, "tcp", "192.0.2.10:6379");
    let fill = format!("for i=1,{KEYS} do redis.call('SET','k:'..i,i) end return {KEYS}");
    assert_eq!(cli(&r, "pub", false, &at, &["EVAL", &fill, "0"], &server), KEYS.to_string());
    let mut counter = 0;
    for round in 1..=2 {
        let before = cli(&r, "pub", false, &at, &["LASTSAVE"], &server);
        assert_eq!(cli(&r, "pub", false, &at, &["BGSAVE"], &server), "Background saving started", "round {round}");
        assert_eq!(persistence(&r, &at, "rdb_bgsave_in_progress", &server), "1", "round {round}: the child is saving");
        let during = clients_served(&r, &at, &server, &format!("during-{round}"), &mut counter);
        let still = persistence(&r, &at, "rdb_bgsave_in_progress", &server);
        still_listed(&r, &at, &format!("round {round}, child running"), &server);
        let saved = Instant::now();
        wait_for(Duration::from_secs(60), "the BGSAVE child finishes", || {
            (persistence(&r, &at, "rdb_bgsave_in_progress", &server) == "0").then_some(())
        });
        let waited = saved.elapsed();
        assert_eq!(persistence(&r, &at, "rdb_last_bgsave_status", &server), "ok", "round {round}");
        // LASTSAVE has a one-second resolution and a save takes five.
        assert_ne!(cli(&r, "pub", false, &at, &["LASTSAVE"], &server), before, "round {round}: LASTSAVE moved");
        let after = clients_served(&r, &at, &server, &format!("after-{round}"), &mut counter);
        still_listed(&r, &at, &format!("round {round}, child gone"), &server);
        eprintln!(
            "redis round {round}: clients served in {} ms while the child saved (still saving after them: {}), \
             child done {} ms later, clients served in {} ms after it",
            during.as_millis(),
            still == "1",
            waited.as_millis(),
            after.as_millis()
        );
    }
    assert_eq!(cli(&r, "pub", false, &at, &["DBSIZE"], &server), (KEYS + 1 + 8).to_string(), "5000 keys, visits, 8 values");
    let dump = std::fs::metadata(dir.join("dump.rdb")).expect("dump.rdb written");
    assert!(dump.len() > 10_000, "dump.rdb is {} bytes", dump.len());
    let done = server.stdout_seen().iter().filter(|l| l.contains("Background saving terminated with success")).count();
    assert_eq!(done, 2, "two saves logged:\n{}", server.stdout_seen().join("\n"));
    drop(server);
    r.down();
}
