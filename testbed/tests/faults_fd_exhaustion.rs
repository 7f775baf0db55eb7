//! File-descriptor exhaustion (issue 8): clear errors, no crash, no spin,
//! recovery when descriptors free up.
//!
//! * The broker under `prlimit --nofile=40`, flooded with 60 registrations
//!   from one process on pub: it refuses those it has no descriptor for (the
//!   client logs the refusal), keeps serving (status queries, the heartbeats of
//!   an earlier listener, which stays registered), does not spin (CPU time over
//!   a few seconds of exhaustion), and once the flood is gone (killed, its
//!   registrations expired), relays to the earlier listener and registers new
//!   ones again; its descriptor count returns to where it was.
//! * A shim-loaded Python program under RLIMIT_NOFILE 64 with its table full:
//!   `socket` gets EMFILE (the kernel's); with one slot free, a brokered `connect`
//!   gets EMFILE because the shim has no descriptor for its exchange with the
//!   broker, and `listen` gets EMFILE because the shim cannot open the listener's
//!   management socket. After closing descriptors, `listen` again registers the
//!   socket (its name becomes the proxy address) and a brokered connect carries
//!   bytes. No crash, no hang.
//!
//! Needs root, `cargo build --release` and `make -C c-tests`.

#[path = "faults_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{wait_for, Faults, BROKER, STARTUP};

const HEARTBEAT_S: u64 = 1;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn the_broker_out_of_descriptors_refuses_keeps_serving_and_recovers() {
    let mut f = Faults::without_broker(HEARTBEAT_S);
    f.start_broker_under(&["prlimit", "--nofile=40:40"], BROKER, &[]);
    let pid = f.broker(BROKER).pid();
    let (server, proxy) = f.echo_server("a1", BROKER, 7500);
    let context = || format!("{}\nserver:\n{}", f.broker_logs(), server.stderr_text());
    f.echo("pub", None, &proxy, &[], &context);
    let baseline = fd_count(pid);

    let flood = f.peer("pub", Some(BROKER), "many", "60");
    flood.wait_line("OPENED ", STARTUP).expect("flood opened its listeners");
    wait_for(STARTUP, || format!("refusals\n{}\n{}", flood.stderr_text(), context()), || {
        flood.stderr_text().contains("refused to register").then_some(())
    });
    if let Err(e) = f.broker(BROKER).wait_stderr("cannot open a proxy socket", STARTUP) {
        panic!("{e}\n{}", f.broker_logs());
    }
    let ticks = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(pid) - ticks;
    // 100 ticks a second: a spinning loop would use ~300 in 3 s.
    assert!(used < 100, "the broker used {used} ticks of CPU in 3 s out of descriptors");
    assert!(f.broker(BROKER).try_wait().is_none(), "the broker died:\n{}", f.broker_logs());
    let regs = f.registrations(BROKER);
    assert!(regs.contains(&proxy), "the earlier listener stays registered (heartbeats served): {regs:?}");
    let flooded = regs.len();
    assert!(flooded < 61, "{flooded} registrations with 40 descriptors");

    flood.kill();
    let bound = Duration::from_secs(3 * HEARTBEAT_S + 10);
    wait_for(bound, || format!("the flood's registrations expired\n{}", context()), || {
        (f.registrations(BROKER).len() == 1).then_some(())
    });
    let took = f.echo_until_ok("pub", None, &proxy, bound);
    eprintln!("relayed again {took:?} after the flood's registrations expired");
    f.echo("b1", Some(BROKER), &proxy, &[], &context);
    let (other, other_proxy) = f.echo_server("a2", BROKER, 7501);
    assert!(other_proxy.starts_with("203.0.113.10:"), "a new listener registers again: {other_proxy}\n{}", other.stderr_text());
    f.echo("pub", None, &other_proxy, &[], &context);
    drop(other);
    let end = Instant::now() + bound;
    while fd_count(pid) > baseline + 2 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    // One more registration (the second server's proxy socket) than at the start.
    assert!(fd_count(pid) <= baseline + 2, "broker fds: {baseline} before, {} after", fd_count(pid));
    drop(server);
    f.bed.down().expect("tear down");
}

#[test]
fn a_shim_loaded_program_out_of_descriptors_gets_emfile_and_recovers() {
    let f = Faults::up(HEARTBEAT_S);
    let (server, proxy) = f.echo_server("a1", BROKER, 7510);
    let p = f.peer("b1", Some(BROKER), "exhaust", &proxy);
    let done = p.wait_line("DONE", Duration::from_secs(90));
    let lines = p.stdout_seen();
    assert!(done.is_ok(), "no DONE: {lines:?}\n{}\n{}", p.stderr_text(), server.stderr_text());
    let want = [
        "FILLED EMFILE",
        "SOCKET EMFILE",
        "SOCKET-FOR-CONNECT ok",
        "CONNECT-EXHAUSTED EMFILE",
        "SOCKET-FOR-LISTEN ok",
        "LISTEN-EXHAUSTED EMFILE",
        "LISTEN-AGAIN ok",
    ];
    for w in want {
        assert!(lines.iter().any(|l| l == w), "no {w:?} in {lines:?}\n{}", p.stderr_text());
    }
    let name = lines.iter().find_map(|l| l.strip_prefix("NAME ")).expect("NAME");
    assert!(name.starts_with("203.0.113.10:"), "the listener registered after fds were freed: {name}\n{}", p.stderr_text());
    assert!(lines.iter().any(|l| l == "CONNECT-AFTER ok"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "ECHO after exhaustion"), "{lines:?}\n{}", p.stderr_text());
    assert!(p.wait_timeout(Duration::from_secs(10)).is_some_and(|s| s.success()), "exit status\n{}", p.stderr_text());
    drop(server);
    f.bed.down().expect("tear down");
}
