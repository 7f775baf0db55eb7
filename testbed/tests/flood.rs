//! Bad input (issue 12): a listener under the shim that is flooded while it
//! is busy gets what the kernel gives it, and nothing a stranger sends kills
//! the part of the shim that answers for it.
//!
//! `busy_server.py` on a1 listens with a backlog of 16 and stays busy (asleep,
//! no socket call) until the test lets it go. Meanwhile:
//!
//! * 2000 plain connections from pub to its proxy address (200 at a time),
//!   then 1000 from a GCB client on pub (100 at a time, non-blocking). Each
//!   must be refused, reset or closed within 15 s of connecting, except those
//!   the listener's queue holds: at most 32 (twice the backlog) stay open.
//!   None may hang in `connect`.
//! * Malformed datagrams at its management sockets: 300 from a2 to each of
//!   its UDP sockets' private addresses, and 300 with the broker's command
//!   address forged as their source, sent from the broker host to the NAT
//!   mapping the broker knows (`mgmt` in its log), which GA lets through (an
//!   nftables counter on a1 checks that they arrived).
//!
//! Throughout, the listener process's fd count stays within 64 of what it had
//! once registered and its resident memory within 32 MiB of it. After the
//! flood the broker still holds the registration at the same proxy address and
//! has expired nothing. Then the server is let go; 60 connections from
//! 127.71.0.0/16 (a stranger ringing its doorbell) carry garbage to its local
//! port; and a fresh echo from a plain pub client, a GCB pub client and a GCB
//! b1 client still comes back intact, from the same registration.
//!
//! Needs root, `cargo build --release`.

#[path = "responder_support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{bed, busy_server, daemon_log, echo_peer, fd_count, finish, num, program, py, query, rss_kib, Server};
use testbed::real::{Mode, RealBed, BROKER, STARTUP};

const BACKLOG: usize = 16;
/// Connections a flood may leave open: the listener's queue, twice over.
const OPEN_BOUND: f64 = 2.0 * BACKLOG as f64;
/// Growth of the listener process's open fds over its registered baseline.
const FD_BOUND: usize = 64;
/// Growth of its resident memory, KiB.
const RSS_BOUND_KIB: u64 = 32 << 10;
const HOLD_S: &str = "15";
const FLOOD_BOUND: Duration = Duration::from_secs(240);

/// The highest fd count and RSS of `pid`, sampled every 100 ms until stopped
/// (also when the test fails first: dropping it stops the thread).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, u64)>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut fds, mut rss) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                fds = fds.max(fd_count(pid));
                rss = rss.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            (fds, rss)
        });
        Sampler { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> (usize, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("sampler")
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `flood.py ARGS` on `host` to completion; returns its stdout.
fn flood(r: &RealBed, host: &str, shim: bool, args: &[&str], srv: &Server) -> String {
    let script = program("flood.py");
    let mut all = vec![py(), "-u", script.as_str()];
    all.extend_from_slice(args);
    let out = r.run_ok(host, shim, &all, None, FLOOD_BOUND, &srv.proc);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The management address the broker logged for `local`'s TCP registration.
fn mgmt_seen_by_broker(r: &RealBed, local: &str) -> String {
    let log = r.daemon.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("registered tcp {local} ")))
        .unwrap_or_else(|| panic!("no registration of {local} in the broker's log:\n{log}"));
    let rest = line.split("mgmt ").nth(1).unwrap_or_else(|| panic!("no mgmt address in {line:?}"));
    rest.split([')', ',', ' ']).next().unwrap_or_default().to_string()
}

/// The UDP sockets `pid` holds on `host` (its management sockets), as
/// addresses one can send to from the same realm.
fn udp_sockets(r: &RealBed, host: &str, pid: u32) -> Vec<String> {
    let out = r.bed.run(host, &["ss", "-Huanp"], STARTUP).expect("ss");
    let ip = r.bed.ip(host).to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().find(|w| w.contains(':')).map(str::to_string))
        .map(|local| {
            let (a, port) = local.rsplit_once(':').expect("ip:port");
            let a = if a == "0.0.0.0" || a == "*" { ip.as_str() } else { a };
            format!("{a}:{port}")
        })
        .collect()
}

/// Datagrams from the broker's command port that a1 has received, counted by
/// an nftables rule made on first use.
fn from_broker_on_a1(r: &RealBed) -> u64 {
    let nft = |args: &str| {
        let all: Vec<&str> = std::iter::once("nft").chain(args.split(' ')).collect();
        let out = r.bed.run("a1", &all, STARTUP).expect("nft");
        assert!(out.status.success(), "nft {args}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    if !nft("list tables").contains("table ip flood") {
        nft("add table ip flood");
        nft("add chain ip flood in { type filter hook input priority 0 ; }");
        nft(&format!("add rule ip flood in ip saddr {BROKER} udp sport 65432 counter"));
    }
    let listing = nft("list chain ip flood in");
    let packets = listing.split("counter packets ").nth(1).and_then(|t| t.split_whitespace().next());
    packets.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no counter in {listing}"))
}

fn check_flood(what: &str, line: &str, count: f64, wrong: &mut Vec<String>) {
    eprintln!("{what}: {line}");
    let gone = num(line, "refused") + num(line, "reset") + num(line, "closed") + num(line, "failed");
    let open = num(line, "open");
    if num(line, "started") != count || num(line, "unfinished") > 0.0 || num(line, "connect_timeout") > 0.0 {
        wrong.push(format!("{what}: connections hung or were never made: {line}"));
    }
    if open > OPEN_BOUND || gone + open + num(line, "data") != count {
        wrong.push(format!("{what}: {open} connections stayed open past {HOLD_S} s, the bound is {OPEN_BOUND}: {line}"));
    }
}

#[test]
fn flooded_busy_listener_stays_bounded_and_serves() {
    let r = bed(Mode::Gcb, 2);
    let go = r.file("go");
    let go_s = go.to_str().unwrap().to_string();
    let backlog = BACKLOG.to_string();
    let srv = busy_server(&r, "a1", 7901, &["--proto", "tcp", "--backlog", &backlog, "--busy", "file", "--go", &go_s, "--max-busy-s", "600"]);
    let proxy = srv.tcp.clone().expect("tcp");
    srv.busy_start();
    let local = format!("{}:7901", r.bed.ip("a1"));
    let (fds0, rss0) = (fd_count(srv.pid), rss_kib(srv.pid));
    eprintln!("listener pid {}: {fds0} fds, {rss0} KiB resident once registered", srv.pid);
    let context = || format!("server: {:?}\n{}\n{}", srv.proc.stdout_seen(), support::tail(&srv.proc.stderr_text(), 4000), daemon_log(&r));
    let sampler = Sampler::start(srv.pid);

    let mut wrong = Vec::new();
    let plain = flood(&r, "pub", false, &["connect", &proxy, "2000", "200", HOLD_S, "200"], &srv);
    check_flood("plain flood from pub", plain.trim(), 2000.0, &mut wrong);
    let gcb = flood(&r, "pub", true, &["connect", &proxy, "1000", "100", HOLD_S, "200"], &srv);
    check_flood("GCB flood from pub", gcb.trim(), 1000.0, &mut wrong);

    let privately = udp_sockets(&r, "a1", srv.pid);
    assert!(!privately.is_empty(), "the listener holds no UDP socket: no management socket?\n{}", context());
    for to in &privately {
        flood(&r, "a2", false, &["datagrams", to, "300"], &srv);
    }
    let mapped = mgmt_seen_by_broker(&r, &local);
    let before = from_broker_on_a1(&r);
    flood(&r, "broker", false, &["spoof", &format!("{BROKER}:65432"), &mapped, "300"], &srv);
    // The forged datagrams must have reached a1 through GA, or this tested nothing.
    let arrived = from_broker_on_a1(&r) - before;
    assert!(arrived >= 300, "only {arrived} datagrams from the broker's command port reached a1 while 300 were forged\n{}", context());
    eprintln!("garbage sent to management sockets {privately:?} and, as the broker, to {mapped}");

    let (fds, rss) = sampler.finish();
    eprintln!("listener during the flood: at most {fds} fds (+{}), {rss} KiB resident (+{})", fds.saturating_sub(fds0), rss.saturating_sub(rss0));
    if fds > fds0 + FD_BOUND {
        wrong.push(format!("the listener's fds grew from {fds0} to {fds}, the bound is +{FD_BOUND}"));
    }
    if rss > rss0 + RSS_BOUND_KIB {
        wrong.push(format!("the listener's resident memory grew from {rss0} to {rss} KiB, the bound is +{RSS_BOUND_KIB}"));
    }
    let q = query(&r);
    eprintln!("broker after the flood: {}", q.nonzero());
    if !q.has("tcp", &proxy) || q.counter("expired") != 0 {
        wrong.push(format!("the registration of {proxy} did not survive: {:?}, {}", q.regs, q.nonzero()));
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), context());

    std::fs::write(&go, b"go").expect("go file");
    srv.busy_end(STARTUP);
    let bells = flood(&r, "a1", false, &["doorbells", &local, "60"], &srv);
    eprintln!("strangers at {local}: {}", bells.trim());
    for &(host, shim) in r.client_hosts() {
        let what = format!("tcp from {host} (shim: {shim}) after the flood");
        let e = finish(&echo_peer(&r, host, shim, "tcp", &proxy, 6000), &what, Duration::from_secs(60));
        assert!(e.ok, "{}\n{}", e.what, context());
        eprintln!("{what}: connect {:.0} us, echo intact", e.connect_us.unwrap_or(0.0));
    }
    let served = srv.proc.stdout_seen().iter().filter(|l| l.starts_with("ACCEPT ")).count();
    eprintln!("the server accepted {served} connections once let go (queued ones, strangers, the three fresh echoes)");
    let q = query(&r);
    assert!(q.has("tcp", &proxy) && q.counter("expired") == 0, "after the strangers: {:?} {}\n{}", q.regs, q.nonzero(), context());
    drop(srv);
    r.down();
}
