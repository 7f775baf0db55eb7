//! Unit tests of the splice pump on real loopback connections, driven by
//! calling `pump` in a bounded loop instead of an event loop.

use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::time::Duration;

/// A connected pair: the outer end (the test's) and the relay's end.
fn pair() -> (StdStream, TcpStream, SocketAddrV4) {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let outer = StdStream::connect(l.local_addr().unwrap()).unwrap();
    let (inner, peer) = l.accept().unwrap();
    inner.set_nonblocking(true).unwrap();
    let SocketAddr::V4(peer) = peer else { panic!() };
    (outer, TcpStream::from_std(inner), peer)
}

fn relay() -> (StdStream, StdStream, Relay) {
    let (c, c_in, c_addr) = pair();
    let (l, l_in, l_addr) = pair();
    let proxy = "203.0.113.1:20000".parse().unwrap();
    let r = Relay::new([c_in, l_in], [c_addr, l_addr], proxy, Instant::now()).unwrap();
    (c, l, r)
}

/// Pumps until `done` or 5 s; returns the last result.
fn pump_until(r: &mut Relay, mut done: impl FnMut(&Pumped, &Relay) -> bool) -> Pumped {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = r.pump(16);
        if done(&p, r) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "pump did not get there: {p:?} {:?}",
            r.bytes()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn bytes_flow_both_ways_and_half_closes_pass_through() {
    let (mut c, mut l, mut r) = relay();
    c.write_all(b"ping").unwrap();
    pump_until(&mut r, |_, r| r.bytes()[0] == 4);
    let mut buf = [0u8; 4];
    l.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    c.shutdown(Shutdown::Write).unwrap();
    pump_until(&mut r, |_, r| r.dirs[0].shut);
    let mut rest = Vec::new();
    l.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "EOF passed on");

    // The other direction still works after the half-close.
    l.write_all(b"pong").unwrap();
    l.shutdown(Shutdown::Write).unwrap();
    let end = pump_until(&mut r, |p, _| matches!(p, Pumped::Finished));
    assert!(matches!(end, Pumped::Finished));
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"pong");
    assert_eq!(r.bytes(), [4, 4]);
}

#[test]
fn a_slow_reader_holds_back_the_sender() {
    let (c, mut l, mut r) = relay();
    r.tokens = [Token(1), Token(2)];
    assert!(
        !r.waits_for_room(Token(1)) && !r.waits_for_room(Token(2)),
        "a fresh relay has nothing to write"
    );
    c.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0usize;
    // Write until the whole path (buffers and pipe) is full.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut idle_rounds = 0;
    while idle_rounds < 20 {
        assert!(Instant::now() < deadline, "the path never filled");
        match (&c).write(&chunk) {
            Ok(n) => {
                written += n;
                idle_rounds = 0;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => idle_rounds += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(r.pump(16), Pumped::Blocked | Pumped::Budget));
        std::thread::sleep(Duration::from_millis(1));
    }
    let delivered = r.bytes()[0] as usize;
    assert!(delivered < written, "the relay must not absorb everything");
    assert!(r.waits_for_room(Token(2)), "the listener's side holds bytes back");
    assert!(!r.waits_for_room(Token(1)), "nothing waits to go to the connector");
    assert!(
        written < 64 << 20,
        "no unbounded buffering: {written} bytes taken"
    );
    // Reading at the far end lets everything through.
    drop(c);
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    l.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got < written {
        assert!(Instant::now() < deadline, "stalled at {got} of {written}");
        r.pump(16);
        match l.read(&mut buf) {
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, written);
}

#[test]
fn a_reset_fails_the_relay_on_its_side() {
    let (c, _l, mut r) = relay();
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&c, nix::sys::socket::sockopt::Linger, &linger).unwrap();
    drop(c);
    match pump_until(&mut r, |p, _| matches!(p, Pumped::Failed { .. })) {
        Pumped::Failed { side, error } => {
            assert_eq!(side, 0);
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bulk_direction_grows_its_pipe_and_a_quiet_one_does_not() {
    let (mut c, mut l, mut r) = relay();
    const TOTAL: usize = 16 * 1024 * 1024;
    let pattern = |i: usize| (i % 251) as u8;
    let writer = std::thread::spawn(move || {
        let chunk: Vec<u8> = (0..TOTAL).map(pattern).collect();
        c.write_all(&chunk).unwrap();
        c
    });
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; TOTAL];
        l.read_exact(&mut got).unwrap();
        let bad = (0..TOTAL).find(|&i| got[i] != pattern(i));
        (l, bad)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.bytes()[0] < TOTAL as u64 {
        assert!(Instant::now() < deadline, "relay stalled at {:?}", r.bytes());
        if let Pumped::Blocked = r.pump(64) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let (_l, bad) = reader.join().unwrap();
    assert_eq!(bad, None, "every byte arrives in order");
    let _c = writer.join().unwrap();
    assert_eq!(r.dirs[0].growth, Growth::Grown, "16 MiB one way is bulk");
    assert!(r.dirs[0].capacity >= BULK_PIPE);
    assert_eq!(r.dirs[1].growth, Growth::NotYet, "the silent direction keeps the default pipe");
    assert!(bulk_pipes() >= 1);
}
