//! Hostile input on the broker's TCP side: the rendezvous port (junk
//! instead of a StreamHello, half a hello then close, silence, unknown and
//! already used tokens, a crowd of junk connections, more silent ones than
//! it will wait for) and a TCP proxy socket (junk from a regular client
//! that leaves at once). Each is closed and counted by reason, leaves the
//! tables as they were, and a relay running meanwhile keeps its bytes
//! intact.

mod hostile_support;
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use hostile_support::{counters, expect_moved, expect_moved_within, state};
use proto::gcb::{ErrorCode, Frame, Message, Role, StreamHello, StreamPeer, Token};
use support::*;

/// Dials the rendezvous, writes `bytes`, half-closes if asked, and returns
/// everything the broker sent back before closing.
fn send_and_read(via: SocketAddrV4, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&via.into(), WAIT).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(Shutdown::Write).unwrap();
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn junk_on_the_rendezvous_is_closed_and_counted_by_reason() {
    let b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:2525", "10.0.0.5");
    let before = (state(&b), counters(&b));

    let hello = StreamHello {
        token: Token(0x1234_5678),
        role: Role::Listener,
    }
    .to_bytes();
    assert!(send_and_read(b.addr, b"GET / HTTP/1.0\r\n\r\n", false).is_empty());
    let mut bad_role = hello;
    bad_role[5] = 9; // the role byte
    assert!(send_and_read(b.addr, &bad_role, false).is_empty());
    assert!(
        send_and_read(b.addr, &hello[..7], true).is_empty(),
        "half a hello, then EOF"
    );
    assert!(
        send_and_read(b.addr, &[], true).is_empty(),
        "nothing, then EOF"
    );
    expect_moved(
        &b,
        &before.1,
        &[
            ("bad_hellos", 4),
            ("bad_hellos_garbage", 2),
            ("bad_hellos_closed", 2),
        ],
    );

    // Half a hello, then silence: closed at the hello timeout (5 s).
    let started = Instant::now();
    assert!(send_and_read(b.addr, &hello[..7], false).is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "closed before the timeout"
    );

    // A whole hello with a token nobody issued: told so, then closed.
    let rejected = send_and_read(b.addr, &hello, false);
    let verdict = StreamPeer::decode(&rejected[..StreamPeer::LEN]).unwrap();
    assert_eq!(
        verdict,
        StreamPeer::Rejected {
            code: ErrorCode::UnknownToken
        }
    );
    assert_eq!(rejected.len(), StreamPeer::LEN, "nothing after the verdict");

    expect_moved(
        &b,
        &before.1,
        &[
            ("bad_hellos", 5),
            ("bad_hellos_garbage", 2),
            ("bad_hellos_closed", 2),
            ("bad_hellos_silent", 1),
            ("rendezvous_rejected", 1),
        ],
    );
    assert_eq!(state(&b), before.0);

    // Still serving: a regular client reaches the listener.
    let mut client = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    let (mut server, _, _) = listener_side(&mut m, proxy);
    client.write_all(b"still here").unwrap();
    let mut got = [0u8; 10];
    server.set_read_timeout(Some(WAIT)).unwrap();
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
}

#[test]
fn a_used_token_is_rejected_and_the_relay_it_made_is_untouched() {
    let b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:2525", "10.0.0.5");
    let mut client = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let Message::RelayConnect { token, broker, .. } = m.command() else {
        panic!("not a RelayConnect")
    };
    let (mut server, verdict) = rendezvous(broker, token, Role::Listener);
    assert!(matches!(verdict, StreamPeer::Paired { .. }), "{verdict:?}");
    let before = (state(&b), counters(&b));

    // Someone who saw the token tries to join the relay, as either half.
    for role in [Role::Listener, Role::Connector] {
        let (_, verdict) = rendezvous(b.addr, token, role);
        assert_eq!(
            verdict,
            StreamPeer::Rejected {
                code: ErrorCode::UnknownToken
            }
        );
    }
    expect_moved(&b, &before.1, &[("rendezvous_rejected", 2)]);
    assert_eq!(state(&b), before.0);

    let up = pattern(100_000, 0x3c);
    let down = pattern(50_000, 0xc3);
    let writer = {
        let (mut w, up) = (client.try_clone().unwrap(), up.clone());
        std::thread::spawn(move || w.write_all(&up).unwrap())
    };
    server.set_read_timeout(Some(WAIT)).unwrap();
    let mut got_up = vec![0u8; up.len()];
    server.read_exact(&mut got_up).unwrap();
    writer.join().unwrap();
    server.write_all(&down).unwrap();
    let mut got_down = vec![0u8; down.len()];
    client.read_exact(&mut got_down).unwrap();
    assert!(
        got_up == up && got_down == down,
        "the relay's bytes changed"
    );
}

#[test]
fn junk_from_a_regular_client_that_leaves_is_relayed_as_data_then_cleaned_up() {
    let b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:2525", "10.0.0.5");
    let before = state(&b);

    // A proxy socket does not interpret bytes: junk from a regular client
    // is application data for the listener, who gets exactly that.
    let junk = pattern(3000, 0x5a);
    let mut client = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    client.write_all(&junk).unwrap();
    client.shutdown(Shutdown::Both).unwrap();
    drop(client);
    let (mut server, _, _) = listener_side(&mut m, proxy);
    server.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert_eq!(got, junk);
    drop(server);

    // Once both halves are gone, the relay is too.
    let deadline = Instant::now() + WAIT;
    while state(&b) != before {
        assert!(
            Instant::now() < deadline,
            "relay left behind:\n{}",
            state(&b)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_crowd_of_junk_connections_is_counted_and_served_after() {
    let b = Broker::start(&[]);
    let before = counters(&b);
    let crowd: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut s = TcpStream::connect_timeout(&b.addr.into(), WAIT).unwrap();
            s.write_all(&pattern(16, i as u8 | 0x80)).unwrap();
            s
        })
        .collect();
    for mut s in crowd {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.is_empty());
    }
    expect_moved(
        &b,
        &before,
        &[("bad_hellos", 200), ("bad_hellos_garbage", 200)],
    );
    let (_, verdict) = rendezvous(b.addr, Token(77), Role::Connector);
    assert_eq!(
        verdict,
        StreamPeer::Rejected {
            code: ErrorCode::UnknownToken
        }
    );
}

/// Raises this process's descriptor limit (inherited by the broker it
/// starts) to `want`, so both sides can hold more than 1,024 connections.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(
        lim.rlim_max >= want,
        "this test needs a hard descriptor limit of at least {want} (ulimit -Hn), not {}",
        lim.rlim_max
    );
    if lim.rlim_cur < want {
        lim.rlim_cur = want;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
}

#[test]
fn silent_connections_past_the_hello_cap_are_closed_at_once() {
    // The broker holds at most 1,024 connections waiting to say hello.
    const CAP: u64 = 1024;
    const EXTRA: u64 = 40;
    raise_fd_limit(4096);
    let b = Broker::start(&[]);
    let before = counters(&b);
    let started = Instant::now();
    let crowd: Vec<TcpStream> = (0..CAP + EXTRA)
        .map(|_| TcpStream::connect_timeout(&b.addr.into(), WAIT).unwrap())
        .collect();
    let took = started.elapsed();
    if took < Duration::from_secs(2) {
        // The extra ones are closed at once, the rest at the hello timeout.
        expect_moved_within(
            &b,
            &before,
            &[
                ("bad_hellos", CAP + EXTRA),
                ("bad_hellos_overflow", EXTRA),
                ("bad_hellos_silent", CAP),
            ],
            Duration::from_secs(20),
        );
    } else {
        // On a machine so loaded that the crowd took longer to arrive than a
        // good part of the 5 s hello timeout, the first ones may time out before
        // the last arrive, so fewer overflow: every connection is still closed
        // and counted exactly once, under one reason or the other.
        eprintln!("the crowd took {took:?} to connect; checking totals only");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let now = counters(&b);
            let moved = |k: &str| now.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
            let (all, over, silent) = (moved("bad_hellos"), moved("bad_hellos_overflow"), moved("bad_hellos_silent"));
            if all == CAP + EXTRA && over + silent == all && over <= EXTRA {
                break;
            }
            assert!(Instant::now() < end, "bad_hellos {all}, overflow {over}, silent {silent} of {}", CAP + EXTRA);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(crowd);
    let (_, verdict) = rendezvous(b.addr, Token(78), Role::Listener);
    assert_eq!(
        verdict,
        StreamPeer::Rejected {
            code: ErrorCode::UnknownToken
        }
    );
}
