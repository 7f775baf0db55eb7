//! The metrics server against real sockets on loopback: a scraper thread
//! speaks HTTP while the test's own loop drives the server, as a daemon's
//! event loop would.

use super::*;
use mio::{Events, Poll};
use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// Runs the server until `done` is set, for at most 10 s; returns it.
fn drive(mut server: Server, mut poll: Poll, done: Arc<AtomicBool>) -> Server {
    let mut events = Events::with_capacity(64);
    let end = Instant::now() + Duration::from_secs(10);
    let mut render = || "x_up 1\n".to_string();
    while !done.load(Ordering::SeqCst) && Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        for e in events.iter() {
            assert!(owns(e.token()));
            server.on_event(poll.registry(), e.token(), Instant::now(), &mut render);
        }
        server.expire(poll.registry(), Instant::now());
    }
    server
}

fn start() -> (Server, Poll, SocketAddr) {
    let poll = Poll::new().unwrap();
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), poll.registry()).unwrap();
    let addr = server.local_addr();
    (server, poll, addr)
}

fn get(addr: SocketAddr, request: &str) -> String {
    let mut s = StdStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn answers_metrics_and_refuses_the_rest() {
    let (server, poll, addr) = start();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let client = thread::spawn(move || {
        let r = [
            get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            get(addr, "GET /metrics?x=1 HTTP/1.0\n\n"),
            get(addr, "HEAD /metrics HTTP/1.1\r\n\r\n"),
            get(addr, "GET / HTTP/1.1\r\n\r\n"),
            get(addr, "POST /metrics HTTP/1.1\r\n\r\n"),
            get(addr, "nonsense\r\n\r\n"),
        ];
        d.store(true, Ordering::SeqCst);
        r
    });
    let server = drive(server, poll, done);
    let r = client.join().unwrap();
    assert!(r[0].starts_with("HTTP/1.1 200 OK\r\n"), "{}", r[0]);
    assert!(
        r[0].contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
        "{}",
        r[0]
    );
    assert!(
        r[0].contains("Content-Length: 7\r\n") && r[0].ends_with("\r\n\r\nx_up 1\n"),
        "{}",
        r[0]
    );
    assert!(r[1].ends_with("\r\n\r\nx_up 1\n"), "{}", r[1]);
    assert!(
        r[2].contains("Content-Length: 7\r\n") && r[2].ends_with("\r\n\r\n"),
        "{}",
        r[2]
    );
    assert!(r[3].starts_with("HTTP/1.1 404 "), "{}", r[3]);
    assert!(r[4].starts_with("HTTP/1.1 405 "), "{}", r[4]);
    assert!(r[5].starts_with("HTTP/1.1 400 "), "{}", r[5]);
    assert_eq!((server.stats.scrapes, server.stats.bad_requests), (3, 3));
}

#[test]
fn silent_and_surplus_connections_never_hold_it() {
    let (mut server, mut poll, addr) = start();
    // More silent connections than the limit: the surplus is closed at
    // once, the rest wait for their timeout.
    let silent: Vec<StdStream> = (0..MAX_CONNECTIONS + 3)
        .map(|_| StdStream::connect(addr).unwrap())
        .collect();
    let mut events = Events::with_capacity(64);
    let end = Instant::now() + Duration::from_secs(10);
    while server.stats.refused < 3 && Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        for e in events.iter() {
            server.on_event(poll.registry(), e.token(), Instant::now(), &mut String::new);
        }
    }
    assert_eq!((server.open(), server.stats.refused), (MAX_CONNECTIONS, 3));
    // Their deadline passes: all closed, none answered.
    server.expire(poll.registry(), Instant::now() + TIMEOUT);
    assert_eq!(
        (server.open(), server.stats.timed_out),
        (0, MAX_CONNECTIONS as u64)
    );
    assert!(server.next_deadline().is_none());
    // And a scrape is served again.
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let client = thread::spawn(move || {
        let r = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        d.store(true, Ordering::SeqCst);
        r
    });
    drive(server, poll, done);
    assert!(client.join().unwrap().ends_with("x_up 1\n"));
    drop(silent);
}

#[test]
fn an_oversized_request_is_refused_not_buffered() {
    let (server, poll, addr) = start();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let client = thread::spawn(move || {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let junk = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(MAX_REQUEST)
        );
        // The server may answer and close before all of it is sent.
        let _ = s.write_all(junk.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        d.store(true, Ordering::SeqCst);
        out
    });
    let server = drive(server, poll, done);
    let out = client.join().unwrap();
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400 "), "{out}");
    assert_eq!(server.stats.scrapes, 0);
}

#[test]
fn tokens_are_outside_the_slab_range() {
    assert!(owns(Token(FIRST)) && owns(Token(FIRST + MAX_CONNECTIONS)));
    assert!(!owns(Token(0)) && !owns(Token(16)) && !owns(Token(FIRST + MAX_CONNECTIONS + 1)));
}
