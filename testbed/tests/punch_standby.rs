//! Standby connections end to end (`GCB_STANDBY=1`, docs/hole-punching.md,
//! "Standby connections"): a Python client under the shim on b1 (realm B,
//! behind GB) connects again and again to the C echo server under the shim
//! on a1 (realm A, behind GA), both gateways dropping strangers, so every
//! punch succeeds.
//!
//! * The first connect is punched; each later one, blocking or not, takes
//!   the standby made after the one before (the client's shim logs `via
//!   punched (standby)`), every byte echoes back, and `getpeername` names the
//!   proxy address.
//! * A forked child does not take its parent's standby (it brokers its own
//!   connect), and the parent's standby still works after the child exits.
//! * The listening program accepts exactly the connections that were made:
//!   once the client has exited and every standby the server's shim held has
//!   ended, the server has accepted one connection per connect, none more.
//! * Every readiness mode of the server accepts a claimed standby, from a
//!   blocking and a non-blocking connect.
//! * An asyncio program that runs a child and computes between its connects
//!   takes standbys as well.
//! * A listening program that runs children (`subprocess`, `fork`) keeps
//!   the standbys its shim holds.
//! * A listener that exits takes its standbys with it: the client's shim
//!   drops the one it kept, and the next connect fails as it would without
//!   standbys instead of succeeding on a dead connection.
//!
//! Needs root, `cargo build --release` (libgcb.so, gcb-broker) and
//! `make -C c-tests`.

use std::io::Write;
use std::process::{ChildStdin, Stdio};
use std::time::Duration;

mod punch_support;

use punch_support::{counter, echo_server};
use testbed::real::{built, RealBed, BROKER};
use testbed::{wait_for, workspace_root, NatKind, NatKinds, Proc};

const STEP: Duration = Duration::from_secs(30);

/// The client: one line on stdin per action, one line on stdout per result.
const CLIENT: &str = r#"
import os, select, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
dest = (host, int(port))
payload = os.urandom(65536)

def echo(s):
    s.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        b = s.recv(65536)
        if not b:
            break
        got += b
    if bytes(got) != payload:
        return "BAD echo of %d bytes" % len(got)
    if s.getpeername() != dest:
        return "BAD peer %s" % (s.getpeername(),)
    return "OK"

def once(nonblocking):
    s = socket.socket()
    try:
        if nonblocking:
            s.setblocking(False)
            if s.connect_ex(dest) not in (0, 115):
                return "FAILED connect_ex"
            select.select([], [s], [], 20)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return "FAILED %d" % err
            s.setblocking(True)
        else:
            # No timeout: Python would make the socket non-blocking for one,
            # and this is the shim's path for blocking connects.
            s.connect(dest)
        return echo(s)
    except OSError as e:
        return "FAILED %s" % e.errno
    finally:
        s.close()

n = 0
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "connect":
        print("DONE %d %s" % (n, once(cmd[1] == "nonblocking")), flush=True)
        n += 1
    elif cmd[0] == "fork":
        pid = os.fork()
        if pid == 0:
            print("CHILD %s" % once(False), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("FORKED", flush=True)
    elif cmd[0] == "exit":
        break
"#;

/// An event-loop program (asyncio) that runs a child and computes for 50 ms
/// before each connect, as a busy worker does: one line on stdin per
/// connect, one line on stdout per result.
const ASYNC_CLIENT: &str = r#"
import asyncio, os, subprocess, sys, time
host, port = sys.argv[1].rsplit(":", 1)
dest = (host, int(port))
payload = os.urandom(200000)

async def once():
    r, w = await asyncio.open_connection(*dest)
    w.write(payload)
    await w.drain()
    got = await r.readexactly(len(payload))
    peer = w.get_extra_info("peername")
    w.close()
    await w.wait_closed()
    return "OK" if got == payload and peer == dest else "BAD peer %s" % (peer,)

async def main():
    loop = asyncio.get_running_loop()
    n = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "exit":
            break
        subprocess.run(["true"], check=True)
        start = time.monotonic()
        while time.monotonic() - start < 0.05:
            pass
        try:
            result = await once()
        except (OSError, asyncio.IncompleteReadError) as e:
            result = "FAILED %r" % (e,)
        print("DONE %d %s" % (n, result), flush=True)
        n += 1

asyncio.run(main())
"#;

/// The client on b1 under the shim with standbys on, dialing `dest`.
fn client(r: &RealBed, dest: &str) -> (Proc, ChildStdin) {
    python_client(r, dest, CLIENT)
}

/// `script` under python3 on b1 under the shim with standbys on, dialing `dest`.
fn python_client(r: &RealBed, dest: &str, script: &str) -> (Proc, ChildStdin) {
    let mut c = r.bed.cmd("b1", workspace_root().join("scripts/gcb-run"));
    c.args(["--broker", BROKER, "--heartbeat", "2", "--log", "debug", "--lib"]).arg(built("libgcb.so"));
    c.args(["--", "python3", "-c", script, dest]);
    for v in ["GCB_INAGENT", "GCB_ROUTE", "GCB_REALM", "GCB_LOG_FILE", "GCB_PUNCH", "LD_PRELOAD"] {
        c.env_remove(v);
    }
    c.env("GCB_STANDBY", "1").stdin(Stdio::piped());
    let mut p = r.bed.spawn_cmd(c).expect("python3 client");
    let stdin = p.take_stdin().expect("stdin");
    (p, stdin)
}

fn say(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("client stdin");
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// The client's first connect, whose echo must come back, and the standby
/// it asks for, ready.
fn first_connect_and_its_standby(client: &Proc, stdin: &mut ChildStdin, listen: &str, context: &dyn Fn() -> String) {
    say(stdin, "connect blocking");
    assert_eq!(client.wait_line("DONE 0 ", STEP).unwrap_or_else(|e| panic!("{e}\n{}", context())), "OK", "{}", context());
    wait_count(client, &format!("a standby connection to {listen} is ready"), 1);
}

/// Waits until `server` printed `n` ACCEPT lines (each echo that came back
/// was accepted, but its line may still be on its way here); how many it
/// printed.
fn accepts(server: &Proc, n: usize) -> usize {
    let accepted = || server.stdout_seen().iter().filter(|l| l.starts_with("ACCEPT PEER ")).count();
    wait_for(STEP, &format!("{n} ACCEPT lines"), || (accepted() >= n).then_some(()));
    accepted()
}

/// Waits until `p`'s stderr holds `needle` at least `n` times.
fn wait_count(p: &Proc, needle: &str, n: usize) {
    let deadline = std::time::Instant::now() + STEP;
    while count(&p.stderr_text(), needle) < n {
        assert!(std::time::Instant::now() < deadline, "not {n} times {needle:?} within {STEP:?} in:\n{}", p.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bed whose gateways both drop strangers (every punch succeeds), the
/// echo server on a1 under the shim, and the client on b1 dialing it.
struct Setup {
    r: RealBed,
    server: Proc,
    listen: String,
    client: Proc,
    stdin: ChildStdin,
}

impl Setup {
    fn up(port: u16) -> Setup {
        let nat = NatKinds::new(NatKind::Drop, NatKind::Drop);
        let r = RealBed::up_with_nat(testbed::real::Mode::Gcb, 2, &[&["--log", "debug"][..], &punch_support::ROOMY_BUDGET].concat(), nat);
        let (server, listen) = echo_server(&r, "tcp", port, "epoll", &[]);
        let (client, stdin) = client(&r, &listen);
        Setup { r, server, listen, client, stdin }
    }
}

#[test]
fn later_connects_take_standbys_and_the_server_accepts_exactly_what_was_connected() {
    let Setup { r, server, listen, client, mut stdin } = Setup::up(7480);
    let context = || format!("client stderr:\n{}\nserver stderr:\n{}\nbroker stderr:\n{}", client.stderr_text(), server.stderr_text(), r.daemon.stderr_text());
    let ready = format!("a standby connection to {listen} is ready");
    let punched = format!("connect tcp {listen} via punched in ");
    let standby = format!("connect tcp {listen} via punched (standby) in ");

    const CONNECTS: usize = 6;
    for i in 0..CONNECTS {
        say(&mut stdin, if i % 2 == 0 { "connect blocking" } else { "connect nonblocking" });
        let got = client.wait_line(&format!("DONE {i} "), STEP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
        assert_eq!(got, "OK", "connect {i}\n{}", context());
        // The standby for the next connect is ready before it is made.
        wait_count(&client, &ready, i + 1);
    }
    // A non-blocking connect's line is the responder's, written as the
    // program's fd becomes writable: it may come just after DONE.
    wait_count(&client, &standby, CONNECTS - 1);
    let log = client.stderr_text();
    assert_eq!((count(&log, &punched), count(&log, &standby)), (1, CONNECTS - 1), "the first connect punched, the others took standbys\n{}", context());

    // A child has none of its parent's standbys; the parent's survives it.
    say(&mut stdin, "fork");
    let child = client.wait_line("CHILD ", STEP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
    assert_eq!(child, "OK", "{}", context());
    client.wait_line("FORKED", STEP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
    say(&mut stdin, "connect blocking");
    let got = client.wait_line(&format!("DONE {CONNECTS} "), STEP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
    assert_eq!(got, "OK", "{}", context());
    let log = client.stderr_text();
    assert_eq!((count(&log, &punched), count(&log, &standby)), (2, CONNECTS), "the child punched its own; the parent took its standby\n{}", context());

    // Every standby the server's shim held ends once the client is gone;
    // then the accepts are counted.
    say(&mut stdin, "exit");
    assert!(client.wait_timeout(STEP).is_some_and(|s| s.success()), "client exit\n{}", context());
    wait_for(STEP, "every standby the server held to be claimed or ended", || {
        let s = server.stderr_text();
        let held = count(&s, "is held until claimed");
        (held > 0 && held == count(&s, "was claimed") + count(&s, "ended unclaimed")).then_some(())
    });
    assert_eq!(accepts(&server, CONNECTS + 2), CONNECTS + 2, "one accept per connect (the parent's and the child's), none for a standby\n{}", context());
    assert_eq!(count(&server.stderr_text(), "was claimed"), CONNECTS, "{}", context());
    assert!(counter(&r, "punch_standby_attempts") >= CONNECTS as u64, "{}", context());
    assert_eq!(counter(&r, "relays_opened"), 0, "nothing went through the relay");
    r.down();
}

#[test]
fn a_listener_that_exits_takes_its_standbys_with_it() {
    let Setup { r, server, listen, client, mut stdin } = Setup::up(7481);
    let context = || format!("client stderr:\n{}\nserver stderr:\n{}\nbroker stderr:\n{}", client.stderr_text(), server.stderr_text(), r.daemon.stderr_text());
    first_connect_and_its_standby(&client, &mut stdin, &listen, &context);

    server.terminate();
    wait_count(&client, &format!("the standby connection to {listen} was closed by its listener"), 1);
    say(&mut stdin, "connect blocking");
    let got = client.wait_line("DONE 1 ", STEP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
    assert!(got.starts_with("FAILED "), "a connect to a listener that exited must fail, got {got}\n{}", context());
    assert_eq!(count(&client.stderr_text(), "via punched (standby)"), 0, "{}", context());
    say(&mut stdin, "exit");
    assert!(client.wait_timeout(STEP).is_some_and(|s| s.success()), "client exit\n{}", context());
    r.down();
}

/// Every way a server waits for its connections (`echo-server --mode`).
const SERVER_MODES: [&str; 6] = ["blocking", "select", "poll", "epoll", "epoll-et", "nonblock"];

#[test]
fn every_server_mode_accepts_a_claimed_standby() {
    let nat = NatKinds::new(NatKind::Drop, NatKind::Drop);
    let r = RealBed::up_with_nat(testbed::real::Mode::Gcb, 2, &[&["--log", "debug"][..], &punch_support::ROOMY_BUDGET].concat(), nat);
    for (i, mode) in SERVER_MODES.iter().enumerate() {
        let (server, listen) = echo_server(&r, "tcp", 7482 + i as u16, mode, &[]);
        let (client, mut stdin) = client(&r, &listen);
        let context = || format!("server mode {mode}\nclient stderr:\n{}\nserver stderr:\n{}", client.stderr_text(), server.stderr_text());
        let ready = format!("a standby connection to {listen} is ready");
        for (n, how) in ["blocking", "nonblocking", "blocking"].iter().enumerate() {
            say(&mut stdin, &format!("connect {how}"));
            let got = client.wait_line(&format!("DONE {n} "), STEP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
            assert_eq!(got, "OK", "connect {n} ({how})\n{}", context());
            wait_count(&client, &ready, n + 1);
        }
        let standby = format!("connect tcp {listen} via punched (standby) in ");
        assert_eq!(count(&client.stderr_text(), &standby), 2, "the second and third connects took standbys\n{}", context());
        say(&mut stdin, "exit");
        assert!(client.wait_timeout(STEP).is_some_and(|s| s.success()), "client exit\n{}", context());
        assert_eq!(accepts(&server, 3), 3, "{}", context());
    }
    r.down();
}

/// GA's gateway starts dropping everything from GB (as a gateway that
/// restarted and lost the standby's mapping would): the next connect's
/// claim is never acknowledged, so after `LOST_AFTER` (1 s) the shim brokers
/// the connect instead, the punch fails on the dead path, and the relay
/// carries it. The listener never saw the claim, so its program accepts one
/// connection for that connect, not two.
#[test]
fn a_claim_down_a_dead_path_is_brokered_instead() {
    let Setup { r, server, listen, client, mut stdin } = Setup::up(7488);
    let context = || format!("client stderr:\n{}\nserver stderr:\n{}\nbroker stderr:\n{}", client.stderr_text(), server.stderr_text(), r.daemon.stderr_text());
    first_connect_and_its_standby(&client, &mut stdin, &listen, &context);

    let gb = r.bed.ip("gb").to_string();
    for rule in [
        "add table ip standby_test".to_string(),
        "add chain ip standby_test pre { type filter hook prerouting priority -300; }".to_string(),
        format!("add rule ip standby_test pre ip saddr {gb} drop"),
    ] {
        let out = r.bed.run("ga", &["nft", &rule], STEP).expect("nft on ga");
        assert!(out.status.success(), "nft {rule}: {}", String::from_utf8_lossy(&out.stderr));
    }
    say(&mut stdin, "connect blocking");
    let got = client.wait_line("DONE 1 ", STEP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
    assert_eq!(got, "OK", "{}", context());
    let log = client.stderr_text();
    assert!(log.contains(&format!("connect to {listen}: the standby connection's path is gone; asking the broker")), "{}", context());
    assert!(log.contains(&format!("connect tcp {listen} via relay")), "relayed once the punch failed\n{}", context());
    assert_eq!(count(&log, "via punched (standby)"), 0, "{}", context());
    assert_eq!(accepts(&server, 2), 2, "one accept per connect\n{}", context());
    say(&mut stdin, "exit");
    assert!(client.wait_timeout(STEP).is_some_and(|s| s.success()), "client exit\n{}", context());
    r.down();
}

/// An asyncio program that runs a child (`subprocess`, vfork and
/// `close_range` in the child) and computes before each connect: its
/// connects after the first take standbys, every byte comes back, and the
/// server accepts one connection per connect.
#[test]
fn a_busy_event_loop_that_runs_children_takes_standbys() {
    let nat = NatKinds::new(NatKind::Drop, NatKind::Drop);
    let r = RealBed::up_with_nat(testbed::real::Mode::Gcb, 2, &[&["--log", "debug"][..], &punch_support::ROOMY_BUDGET].concat(), nat);
    let (server, listen) = echo_server(&r, "tcp", 7489, "epoll", &[]);
    let (client, mut stdin) = python_client(&r, &listen, ASYNC_CLIENT);
    let context = || format!("client stderr:\n{}\nserver stderr:\n{}", client.stderr_text(), server.stderr_text());
    const CONNECTS: usize = 4;
    for n in 0..CONNECTS {
        say(&mut stdin, "connect");
        let got = client.wait_line(&format!("DONE {n} "), STEP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
        assert_eq!(got, "OK", "connect {n}\n{}", context());
        wait_count(&client, &format!("a standby connection to {listen} is ready"), n + 1);
    }
    let log = client.stderr_text();
    assert_eq!(count(&log, &format!("connect tcp {listen} via punched (standby) in ")), CONNECTS - 1, "{}", context());
    say(&mut stdin, "exit");
    assert!(client.wait_timeout(STEP).is_some_and(|s| s.success()), "client exit\n{}", context());
    assert_eq!(accepts(&server, CONNECTS), CONNECTS, "{}", context());
    r.down();
}

/// A listening program that runs children while it holds standbys: after
/// each accept, a `subprocess` (vfork, `close_range` in the child) and a
/// forked child that exits at once. The children close their copies of the
/// held standbys and the parent's stay; every later connect takes one.
const CHILDREN_SERVER: &str = r#"
import os, socket, subprocess, sys
s = socket.socket()
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("LISTEN tcp %s:%d" % s.getsockname(), flush=True)
while True:
    c, peer = s.accept()
    print("ACCEPT PEER %s:%d" % peer, flush=True)
    subprocess.run(["true"], check=True)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    while True:
        b = c.recv(65536)
        if not b:
            break
        c.sendall(b)
    c.close()
"#;

#[test]
fn a_listener_that_runs_children_keeps_its_standbys() {
    let nat = NatKinds::new(NatKind::Drop, NatKind::Drop);
    let r = RealBed::up_with_nat(testbed::real::Mode::Gcb, 2, &[&["--log", "debug"][..], &punch_support::ROOMY_BUDGET].concat(), nat);
    let server = r.spawn("a1", true, &["python3", "-c", CHILDREN_SERVER, "7490"]);
    let listen = r.registered(&server, "tcp", &format!("{}:7490", r.bed.ip("a1")));
    let (client, mut stdin) = client(&r, &listen);
    let context = || format!("client stderr:\n{}\nserver stderr:\n{}", client.stderr_text(), server.stderr_text());
    const CONNECTS: usize = 4;
    for n in 0..CONNECTS {
        say(&mut stdin, "connect blocking");
        let got = client.wait_line(&format!("DONE {n} "), STEP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
        assert_eq!(got, "OK", "connect {n}\n{}", context());
        wait_count(&client, &format!("a standby connection to {listen} is ready"), n + 1);
    }
    assert_eq!(count(&client.stderr_text(), &format!("connect tcp {listen} via punched (standby) in ")), CONNECTS - 1, "{}", context());
    say(&mut stdin, "exit");
    assert!(client.wait_timeout(STEP).is_some_and(|s| s.success()), "client exit\n{}", context());
    assert_eq!(accepts(&server, CONNECTS), CONNECTS, "{}", context());
    r.down();
}
