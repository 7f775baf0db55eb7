//! `gcb-broker` killed with SIGKILL under load and restarted (issue 8).
//!
//! Load at the moment of the kill, with a 2 s heartbeat and a 6 s broker
//! heartbeat timeout: a streaming relayed connection from realm B (a GCB client
//! that does not offer hole punching, so the stream is the relay's),
//! a streaming connection from a plain client on pub (relayed from the proxy
//! socket), a streaming reversed connection from a GCB client on pub (direct
//! between the hosts, no broker in the path), and an idle registered listener.
//!
//! * Both ends of each relayed stream see the end (EOF or an error) within the
//!   heartbeat timeout; none hangs. The reversed stream keeps flowing.
//! * After the restart every listener registers again with its previous proxy
//!   address (the shim asks for the old port in answer to `ReregisterRequest`).
//! * New connections through every path (relay, plain, reversal, same realm)
//!   carry verified bytes within two heartbeat intervals of the restart, plus
//!   slack for a loaded machine.
//!
//! Needs root, `cargo build --release` and `make -C c-tests`.

#[path = "faults_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{udp, wait_for, wait_stderr_count, Faults, BROKER};

const HEARTBEAT_S: u64 = 2;

/// Waits for `p`'s `END` line; returns it.
fn end_of(p: &testbed::Proc, within: Duration, what: &str) -> String {
    p.wait_line("END ", within).unwrap_or_else(|e| panic!("{what} did not end within {within:?}: {e}\n{}", p.stderr_text()))
}

#[test]
fn broker_kill_under_load_and_restart() {
    let mut f = Faults::up(HEARTBEAT_S);
    let (server, proxy) = f.peer_server("a1", BROKER, 7200);
    let (idle, idle_proxy) = f.echo_server("a1", BROKER, 7201);
    assert!(proxy.starts_with("203.0.113.10:") && idle_proxy.starts_with("203.0.113.10:"), "{proxy} {idle_proxy}");

    let relayed = f.relayed_peer("b1", BROKER, "stream", &proxy);
    let plain = f.peer("pub", None, "stream", &proxy);
    let reversed = f.peer("pub", Some(BROKER), "stream", &proxy);
    let mut accepted = Vec::new();
    for _ in 0..3 {
        accepted.push(server.wait_line("ACCEPT ", support::STARTUP).expect("ACCEPT"));
    }
    for (p, what) in [(&relayed, "relayed"), (&plain, "plain"), (&reversed, "reversed")] {
        p.wait_line("PROGRESS ", support::STARTUP).unwrap_or_else(|e| panic!("{what} stream: {e}\n{}", p.stderr_text()));
    }

    f.kill_broker(BROKER);
    let killed = Instant::now();
    let timeout = Duration::from_secs(3 * HEARTBEAT_S);
    let relayed_end = end_of(&relayed, timeout, "the relayed stream (connector)");
    let plain_end = end_of(&plain, timeout, "the plain stream (connector)");
    assert!(!relayed_end.starts_with("timeout") && !plain_end.starts_with("timeout"), "{relayed_end} / {plain_end}");
    // The listener's side: two of its three connections end, the reversed one does not.
    let mut ended = Vec::new();
    for _ in 0..2 {
        ended.push(end_of(&server, timeout.saturating_sub(killed.elapsed()) + Duration::from_secs(1), "a relayed stream (listener)"));
    }
    assert!(ended.iter().all(|e| !e.contains(" timeout ")), "{ended:?}");
    assert!(reversed.stdout_seen().iter().all(|l| !l.starts_with("END")), "the reversed stream has no broker in its path");
    reversed.wait_line("PROGRESS ", Duration::from_secs(10)).expect("the reversed stream keeps flowing");

    f.start_broker(BROKER, &[]);
    let restarted = Instant::now();
    let context = || format!("{}\nserver:\n{}\nidle:\n{}", f.broker_logs(), server.stderr_text(), idle.stderr_text());
    let bound = Duration::from_secs(2 * HEARTBEAT_S + 10);
    wait_stderr_count(&server, &format!("gcb: registered tcp 192.0.2.10:7200 as {proxy}\n"), 2, bound, &context);
    wait_stderr_count(&idle, &format!("gcb: registered tcp 192.0.2.10:7201 as {idle_proxy}\n"), 2, bound, &context);
    wait_for(bound, || format!("both back in the broker's table\n{}", context()), || {
        let regs = f.registrations(BROKER);
        (regs.contains(&proxy) && regs.contains(&idle_proxy)).then_some(())
    });
    for dest in [&proxy, &idle_proxy] {
        f.echo("b1", Some(BROKER), dest, &["--nonblock"], &context); // punched, or the relay
        f.echo("pub", None, dest, &[], &context); // plain, relayed from the proxy socket
        f.echo("pub", Some(BROKER), dest, &[], &context); // reversal
        f.echo("a2", Some(BROKER), dest, &[], &context); // same realm
    }
    // Two heartbeat intervals, plus room for eight client processes on a busy machine.
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(2 * HEARTBEAT_S + 20), "new connections took {took:?} after the restart");
    let _ = reversed.terminate();
    drop((relayed, plain, reversed, server, idle));
    f.bed.down().expect("tear down");
}

/// The same for GCB over UDP: proxy UDP sockets and relay rules come back.
#[test]
fn broker_kill_with_udp_rules_and_restart() {
    let mut f = Faults::up(HEARTBEAT_S);
    let srv = support::ctest("echo-server");
    let c = f.cmd("a1", Some(BROKER), &[srv.to_str().unwrap(), "--proto", "udp", "--port", "7210", "--mode", "epoll"]);
    let server = f.bed.spawn_cmd(c).expect("udp echo-server");
    let proxy = server.wait_line("LISTEN udp ", support::STARTUP).expect("LISTEN udp");
    assert!(proxy.starts_with("203.0.113.10:"), "the UDP socket advertised {proxy}");
    let cli = support::ctest("echo-client");
    let udp_echo = |f: &Faults| {
        let args = [cli.to_str().unwrap(), "--proto", "udp", "--connect", &proxy, "--bytes", "512", "--rounds", "5"];
        let out = testbed::run_with_timeout(f.cmd("b1", Some(BROKER), &args), support::CLIENT_TIMEOUT).expect("udp client");
        assert!(out.status.success(), "udp echo: {}\n{}", String::from_utf8_lossy(&out.stdout), f.broker_logs());
    };
    udp_echo(&f);
    f.kill_broker(BROKER);
    f.start_broker(BROKER, &[]);
    let context = || format!("{}\nserver:\n{}", f.broker_logs(), server.stderr_text());
    wait_stderr_count(&server, &format!("as {proxy}\n"), 2, Duration::from_secs(2 * HEARTBEAT_S + 10), &context);
    udp_echo(&f);
    drop(server);
    f.bed.down().expect("tear down");
}

/// A connected UDP socket under the shim (its broker channel) keeps working
/// across a broker restart, with the same fd and `getpeername`: the shim asks
/// for the channel again when it registers again.
#[test]
fn broker_kill_with_a_connected_udp_socket_and_restart() {
    let mut f = Faults::up(HEARTBEAT_S);
    let (server, proxy) = udp::server(&f, BROKER, 7220, false);
    assert!(proxy.starts_with("203.0.113.10:"), "the UDP socket advertised {proxy}");
    let stream = udp::Stream::start(&f, &proxy, &stop_file(&f, "udp-stop"));
    let context = |f: &Faults| format!("{}\nserver:\n{}\nclient:\n{}", f.broker_logs(), server.stderr_text(), stream.client.stderr_text());
    let connected = udp::line(&server, "CONNECTED parent ", support::STARTUP, &|| context(&f));
    assert!(connected.starts_with("203.0.113.20:"), "connected to the client on pub: {connected}");
    for _ in 0..3 {
        stream.reply(support::STARTUP, &|| context(&f));
    }

    f.kill_broker(BROKER);
    std::thread::sleep(Duration::from_secs(1));
    f.start_broker(BROKER, &[]);
    let (restarted, restarted_ms) = (Instant::now(), udp::unix_ms());
    let bound = Duration::from_secs(2 * HEARTBEAT_S + 20);
    let took = stream.first_echo_after(restarted, restarted_ms, bound, &|| context(&f));
    eprintln!("the first echo of a datagram sent after the broker restart came {took:?} after it");
    for _ in 0..5 {
        stream.reply(support::STARTUP, &|| context(&f));
    }

    stream.stop(&|| context(&f));
    let done = udp::line(&server, "DONE parent ", support::STARTUP, &|| context(&f));
    assert!(done.starts_with(&connected), "the same fd and getpeername after the restart: {done} vs {connected}");
    assert!(server.stderr_text().contains(" reopened at "), "the shim asked for the channel again:\n{}", context(&f));
    assert_eq!(f.broker(BROKER).stderr_text().matches(" opened for ").count(), 1, "one channel on the new broker:\n{}", context(&f));
    drop((stream, server));
    f.bed.down().expect("tear down");
}

fn stop_file(f: &Faults, what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("faults-{}-{what}", f.bed.prefix()))
}

/// A registration shared by a parent and its forked child, each with a
/// socket connected through a channel to a client of its own: after a broker
/// restart only one of them reads the `RegisterOk` with the new `udp_token`,
/// and both must get their channels back (the other learns the token when
/// the broker refuses the old one).
#[test]
fn broker_restart_with_connected_udp_sockets_in_parent_and_forked_child() {
    let mut f = Faults::up(HEARTBEAT_S);
    let (server, proxy) = udp::server(&f, BROKER, 7221, true);
    let first = udp::Stream::start(&f, &proxy, &stop_file(&f, "udp-stop-1"));
    let context = |f: &Faults, more: &str| format!("{}\nserver:\n{}\n{more}", f.broker_logs(), server.stderr_text());
    let ctx = || context(&f, "");
    let parent = udp::line(&server, "CONNECTED parent ", support::STARTUP, &ctx);
    udp::line(&server, "READY", support::STARTUP, &ctx);
    let second = udp::Stream::start(&f, &proxy, &stop_file(&f, "udp-stop-2"));
    let child = udp::line(&server, "CONNECTED child ", support::STARTUP, &ctx);
    assert_ne!(parent.split(' ').next(), child.split(' ').next(), "two clients: {parent} / {child}");
    for s in [&first, &second] {
        for _ in 0..3 {
            s.reply(support::STARTUP, &ctx);
        }
    }

    f.kill_broker(BROKER);
    std::thread::sleep(Duration::from_secs(1));
    f.start_broker(BROKER, &[]);
    let (restarted, restarted_ms) = (Instant::now(), udp::unix_ms());
    let ctx = || context(&f, "");
    let bound = Duration::from_secs(2 * HEARTBEAT_S + 20);
    for (who, s) in [("parent", &first), ("child", &second)] {
        let took = s.first_echo_after(restarted, restarted_ms, bound, &ctx);
        eprintln!("{who}: the first echo of a datagram sent after the broker restart came {took:?} after it");
    }
    for s in [&first, &second] {
        for _ in 0..5 {
            s.reply(support::STARTUP, &ctx);
        }
    }
    first.stop(&ctx);
    second.stop(&ctx);
    for (who, connected) in [("parent", &parent), ("child", &child)] {
        let done = udp::line(&server, &format!("DONE {who} "), support::STARTUP, &ctx);
        assert!(done.starts_with(connected.as_str()), "{who}: the same fd and getpeername after the restart: {done} vs {connected}");
    }
    let log = server.stderr_text();
    assert!(log.matches(" reopened at ").count() >= 2, "both processes asked for their channel again:\n{}", ctx());
    eprintln!("token refreshes after a refusal: {}", log.matches("has a newer udp token").count());
    drop((first, second, server));
    f.bed.down().expect("tear down");
}
