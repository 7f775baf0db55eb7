//! Event loops (issue 12): many non-blocking brokered connects from one
//! thread. A non-blocking `connect` to a brokered address must return
//! EINPROGRESS at once, with no broker round trip inside the call, and
//! complete through the kernel's readiness (writable, then `SO_ERROR`), so an
//! event loop never stalls while a remote program is busy.
//!
//! Servers under the shim (`busy_server.py`, TCP): on a1 one busy (asleep
//! until the test lets it go, 5 s after the clients start) and one idle; on
//! a2 (realm A too) one busy; on b1 (realm B) one idle. One more on a1 is
//! killed with SIGKILL once registered: a registered but dead listener. Each
//! client, under the shim on pub and on b1 at the same time, makes 100
//! concurrent connects round-robin over the four servers, sends 4096 random
//! bytes on each and checks every echoed byte, while a 10 ms timer runs in
//! the same loop; it also connects to the dead listener and to a port on the
//! broker where nothing is registered, and both must fail with ECONNREFUSED
//! through `SO_ERROR`. Two clients: asyncio (selector loop; the connect made
//! as asyncio's `sock_connect` makes it, so the call can be timed) and
//! `c-tests/epoll-connects` (edge-triggered epoll, timerfd).
//!
//! Asserted: every connect call returned EINPROGRESS and none blocked the
//! thread for 1 ms: no call of 1 ms or more slept (a voluntary context
//! switch, getrusage). A call that took that long without sleeping was
//! preempted by the scheduler or was busy on the CPU; the clients tell these
//! apart with the thread's CPU clock. A preempted call must stay under
//! 500 ms. A busy one is tolerated at most twice per client and under 3 ms
//! of CPU: the kernel charges the packets it processes in softirq, for
//! every socket on the host, to whichever thread is in a system call then
//! (a plain kernel `connect` too, when the punches of the other connects
//! are in full flow), while a shim that spins shows on many calls;
//! every echo intact; the timer's longest gap under 1 s (a loop stalled by
//! a connect to a busy server stops for seconds). The numbers are printed.
//!
//! Needs root, `cargo build --release`, `make -C c-tests`.

#[path = "responder_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{busy_server, daemon_log, kv, num, program, py, query, Server};
use testbed::real::{Mode, RealBed, BROKER};
use testbed::{workspace_root, Proc};

const COUNT: usize = 100;
/// The bound on one non-blocking connect call, in microseconds.
const CALL_BOUND_US: f64 = 1000.0;
/// A call the scheduler preempted still returns within this: on a loaded
/// 2-core machine a preempted thread may wait for its CPU a long while, and
/// a call that blocks on the network is caught by [`CALL_BOUND_US`] (it
/// sleeps, so it is not counted as preempted).
const PREEMPTED_BOUND_US: f64 = 500_000.0;
/// The most CPU a connect call that did not sleep may use: a round of the
/// kernel's packet processing charged to the calling thread (a few hundred
/// packets of the bed's NAT paths) and the call itself.
const BUSY_CPU_BOUND_US: f64 = 3000.0;
/// How many calls of one client may be that busy.
const BUSY_CALLS_BOUND: f64 = 2.0;
/// Longest tolerated gap of the 10 ms timer: well under [`BUSY_FOR`], the
/// stall of a loop that waited for a busy listener, and wide enough for a
/// loaded machine's scheduling.
const TIMER_GAP_BOUND_MS: f64 = 2000.0;
/// How long the busy servers stay busy after the clients start.
const BUSY_FOR: Duration = Duration::from_secs(5);
/// For both clients together, from their start.
const CLIENT_BOUND: Duration = Duration::from_secs(90);

fn ctest(name: &str) -> String {
    let p = workspace_root().join("c-tests/build").join(name);
    assert!(p.exists(), "{} is missing: run `make -C c-tests`", p.display());
    p.to_str().unwrap().to_string()
}

/// A port in the broker's proxy range with no registration.
fn unregistered(r: &RealBed) -> String {
    let q = query(r);
    (20000..=20999u16)
        .rev()
        .map(|p| format!("{BROKER}:{p}"))
        .find(|a| !q.regs.iter().any(|reg| &reg.proxy == a))
        .expect("a free proxy port")
}

/// Reads a client's lines until `DONE` or `ERROR`, or the deadline; returns them all.
fn outcome(p: &Proc, deadline: Instant) -> Vec<String> {
    while let Ok(line) = p.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.starts_with("DONE") || line.starts_with("ERROR") {
            break;
        }
    }
    p.stdout_seen()
}

fn event_loop(client: &str) {
    // The broker's default expiry (30 s): the dead listener stays registered
    // while the clients run, so its connects meet a registration nobody answers.
    let r = RealBed::up_with(Mode::Gcb, 2, &[]);
    let go = r.file("go");
    let go_s = go.to_str().unwrap().to_string();
    let busy = ["--proto", "tcp", "--busy", "file", "--go", &go_s, "--max-busy-s", "90"];
    let idle = ["--proto", "tcp", "--busy-s", "0"];
    let servers: Vec<(&str, Server)> = vec![
        ("busy a1", busy_server(&r, "a1", 7801, &busy)),
        ("idle a1", busy_server(&r, "a1", 7802, &idle)),
        ("busy a2", busy_server(&r, "a2", 7803, &busy)),
        ("idle b1", busy_server(&r, "b1", 7804, &idle)),
    ];
    let dead = busy_server(&r, "a1", 7805, &idle);
    let dead_addr = dead.tcp.clone().expect("tcp");
    dead.proc.kill();
    let gone = format!("/proc/{}", dead.pid);
    testbed::wait_for(Duration::from_secs(10), "the dead listener's process is gone", || (!std::path::Path::new(&gone).exists()).then_some(()));
    let nothing = unregistered(&r);

    let mut args: Vec<String> = match client {
        "asyncio" => vec![py().into(), "-u".into(), program("async_connects.py"), "--timeout-s".into(), "60".into()],
        _ => vec![ctest("epoll-connects"), "--timeout-ms".into(), "60000".into()],
    };
    for (_, s) in &servers {
        args.extend(["--target".into(), s.tcp.clone().expect("tcp")]);
    }
    args.extend(["--refused".into(), dead_addr.clone(), "--refused".into(), nothing.clone()]);
    args.extend(["--count".into(), COUNT.to_string(), "--bytes".into(), "4096".into()]);
    let clients: Vec<(&str, Proc)> = ["pub", "b1"].iter().map(|&h| (h, r.spawn(h, true, &args))).collect();
    let deadline = Instant::now() + CLIENT_BOUND;
    // The busy servers sleep on while the connects are in flight.
    std::thread::sleep(BUSY_FOR);
    std::fs::write(&go, b"go").expect("go file");

    let context = || {
        let s: Vec<String> = servers.iter().map(|(n, s)| format!("--- {n}: {:?}\n{}", s.proc.stdout_seen(), s.proc.stderr_text())).collect();
        format!("{}\n{}", s.join("\n"), daemon_log(&r))
    };
    let mut wrong = Vec::new();
    for (host, p) in &clients {
        let lines = outcome(p, deadline);
        let what = format!("{client} on {host}");
        let line = |prefix: &str| lines.iter().find(|l| l.starts_with(prefix)).cloned();
        let slow: Vec<&String> = lines.iter().filter(|l| l.starts_with("SLOWCALL")).collect();
        for l in lines.iter().filter(|l| !l.starts_with("FAILED") && !l.starts_with("SLOWCALL")).chain(slow.iter().take(5).copied()) {
            eprintln!("{what}: {l}");
        }
        let (Some(calls), Some(timer), Some(echo)) = (line("CALLS "), line("TIMER "), line("ECHO ")) else {
            let stderr = p.stderr_text();
            let tail = support::tail(&stderr, 2000);
            wrong.push(format!("{what} did not finish within {CLIENT_BOUND:?}; {} slow connect calls: {:?}\nstderr: ...{tail}", slow.len(), slow.iter().take(5).collect::<Vec<_>>()));
            continue;
        };
        if num(&echo, "ok") as usize != COUNT || !lines.iter().any(|l| l == "DONE ok") {
            let failed: Vec<&String> = lines.iter().filter(|l| l.starts_with("FAILED")).collect();
            wrong.push(format!("{what}: {echo}: {failed:?}\nits shim's log: ...{}", support::tail(&p.stderr_text(), 3000)));
        }
        let n = num(&calls, "n");
        if num(&calls, "einprogress") != n {
            wrong.push(format!("{what}: not every connect returned EINPROGRESS: {calls}"));
        }
        if num(&calls, "blocked") > 0.0 {
            wrong.push(format!("{what}: a connect call blocked its thread for {} us: {calls}", kv(&calls, "max_blocked_us").unwrap_or("?")));
        }
        if num(&calls, "max_busy_cpu_us") >= BUSY_CPU_BOUND_US || num(&calls, "busy") > BUSY_CALLS_BOUND {
            wrong.push(format!("{what}: connect calls used the CPU for 1 ms or more: {calls}"));
        }
        let max_us = num(&calls, "max_us");
        let slow_but_not_blocked = num(&calls, "preempted") + num(&calls, "busy");
        if max_us >= PREEMPTED_BOUND_US || (max_us >= CALL_BOUND_US && slow_but_not_blocked == 0.0) {
            wrong.push(format!("{what}: the longest connect call took {max_us} us: {calls}"));
        }
        if num(&timer, "max_gap_ms") >= TIMER_GAP_BOUND_MS {
            wrong.push(format!("{what}: the 10 ms timer stalled: {timer}"));
        }
        for (name, addr) in [("a dead listener", &dead_addr), ("an unregistered port", &nothing)] {
            let want = format!("REFUSED addr={addr} returned=EINPROGRESS so_error=ECONNREFUSED ");
            match lines.iter().find(|l| l.starts_with(&format!("REFUSED addr={addr} "))) {
                Some(l) if l.starts_with(&want) => {}
                other => wrong.push(format!("{what}: connect to {name} ({addr}): {other:?}, wanted {want:?}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), context());
    drop(clients);
    drop(servers);
    r.down();
}

#[test]
fn asyncio_client_makes_100_connects_without_blocking() {
    event_loop("asyncio");
}

#[test]
fn epoll_client_makes_100_connects_without_blocking() {
    event_loop("epoll");
}
