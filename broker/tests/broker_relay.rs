//! End-to-end tests of `gcb-broker`'s relay on loopback: a regular client
//! dialing a proxy socket, two GCB clients meeting at the rendezvous, 1 MB
//! each way with half-close, aborts, and rendezvous misuse.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use proto::gcb::{Decision, ErrorCode, Message, Role, StreamPeer, Token};
use proto::Proto;
use support::*;

const MB: usize = 1 << 20;

#[test]
fn regular_client_is_relayed_with_server_speaking_first_and_half_close() {
    let mut b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:2525", "10.0.0.5");

    // A plain client dials the proxy and waits for the server's greeting.
    let mut client = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let client_addr = local_v4(&client);
    let (mut server, told_peer, paired_peer) = listener_side(&mut m, proxy);
    assert_eq!((told_peer, paired_peer), (client_addr, client_addr));
    b.expect_line("relay #1 open");

    server.write_all(b"220 greetings\r\n").unwrap();
    let mut greeting = [0u8; 15];
    client.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220 greetings\r\n");

    // 1 MB each way at once, each side half-closing when done.
    let up = pattern(MB, 0x55);
    let down = pattern(MB, 0xaa);
    let (up2, down2) = (up.clone(), down.clone());
    let server_thread = thread::spawn(move || exchange(server, down2));
    let got_down = exchange(client, up2);
    let got_up = server_thread.join().unwrap();
    assert!(
        got_up == up,
        "connector -> listener bytes differ ({} read)",
        got_up.len()
    );
    assert!(
        got_down == down,
        "listener -> connector bytes differ ({} read)",
        got_down.len()
    );
    let closed = b.expect_line("relay #1 closed (both sides closed)");
    assert!(
        closed.contains(&format!("{MB} bytes connector")),
        "{closed}"
    );
    assert!(
        closed.contains(&format!("{} bytes back", MB + 15)),
        "{closed}"
    );
}

#[test]
fn half_close_leaves_the_other_direction_open() {
    let b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:8081", "10.0.0.5");
    let mut client = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let (mut server, _, _) = listener_side(&mut m, proxy);
    client.write_all(b"request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut req = Vec::new();
    server.read_to_end(&mut req).unwrap();
    assert_eq!(req, b"request", "EOF arrives after the data");
    // The server still answers after the client's half-close.
    thread::sleep(Duration::from_millis(100));
    server.write_all(b"response").unwrap();
    server.shutdown(Shutdown::Write).unwrap();
    let mut resp = Vec::new();
    client.read_to_end(&mut resp).unwrap();
    assert_eq!(resp, b"response");
}

#[test]
fn gcb_connector_and_listener_meet_at_the_rendezvous() {
    let mut b = Broker::start(&[]);
    let mut l = Mgmt::new(b.addr);
    let proxy = l.register_ok("10.0.0.5:9000", "10.0.0.5");
    let mut c = Mgmt::new(b.addr);
    let d = c.request(&Message::Connect {
        proto: Proto::Tcp,
        target: proxy,
        connector: a("10.1.1.1:6000"),
        connector_id: None,
        realm: Some("other".into()),
        features: proto::gcb::Features::NONE,
        asked_from_port: 0,
    });
    let Message::ConnectDecision(Decision::Relay { via, token }) = d else {
        panic!("{d:?}")
    };

    // The connector arrives first and waits (the broker says so); then the
    // listener.
    let conn = thread::spawn(move || rendezvous(via, token, Role::Connector));
    let waits = b.expect_line("rendezvous: Connector from");
    assert!(waits.ends_with("waits for its other half"), "{waits}");
    let (server, _, paired) = listener_side(&mut l, proxy);
    let (client, verdict) = conn.join().unwrap();
    assert_eq!(
        verdict,
        StreamPeer::Paired { peer: proxy },
        "the connector sees what it dialed"
    );
    assert_eq!(
        paired,
        local_v4(&client),
        "the listener sees the connector as it came"
    );
    b.expect_line("relay #1 open: gcb connector");

    let up = pattern(MB, 1);
    let down = pattern(MB, 2);
    let (up2, down2) = (up.clone(), down.clone());
    let server_thread = thread::spawn(move || exchange(server, down2));
    assert!(exchange(client, up2) == down);
    assert!(server_thread.join().unwrap() == up);
    b.expect_line("relay #1 closed (both sides closed)");
}

#[test]
fn reset_on_one_side_resets_the_other() {
    let mut b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:8082", "10.0.0.5");
    let client = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    let (mut server, _, _) = listener_side(&mut m, proxy);
    server.set_read_timeout(Some(WAIT)).unwrap();
    // Close with unread data pending: the kernel sends RST.
    server.write_all(b"unread").unwrap();
    thread::sleep(Duration::from_millis(100));
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&client);
    // SAFETY: a valid socket and option buffer.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0);
    drop(client);
    b.expect_line("connector side failed");
    let mut buf = [0u8; 16];
    let err = server.read(&mut buf).expect_err("reset passed on");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn rendezvous_rejects_unknown_tokens_and_garbage() {
    let mut b = Broker::start(&[]);
    let (_, verdict) = rendezvous(b.addr, Token(12345), Role::Listener);
    assert_eq!(
        verdict,
        StreamPeer::Rejected {
            code: ErrorCode::UnknownToken
        }
    );
    b.expect_line("rejected: UnknownToken");

    let mut s = TcpStream::connect_timeout(&b.addr.into(), WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "garbage gets no answer");
    b.expect_line("not a hello");
}

#[test]
fn regular_client_is_reset_when_the_listener_never_comes() {
    let mut b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:8083", "10.0.0.5");
    let mut client = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // The listener takes the command but never dials.
    assert!(matches!(m.command(), Message::RelayConnect { .. }));
    let mut buf = [0u8; 1];
    let r = client.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    b.expect_line("expired: the listener never came");
}

#[test]
fn stopping_the_broker_resets_relayed_connections() {
    let mut b = Broker::start(&[]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:8084", "10.0.0.5");
    let mut client = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let (mut server, _, _) = listener_side(&mut m, proxy);
    server.set_read_timeout(Some(WAIT)).unwrap();
    b.expect_line("relay #1 open");
    assert_eq!(b.stop_with(libc::SIGTERM), Some(0));
    b.expect_line("resetting 1 relayed connections");
    let mut buf = [0u8; 1];
    for s in [&mut client, &mut server] {
        let r = s.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
    }
}

#[test]
fn relay_limit_refuses_further_connections() {
    let mut b = Broker::start(&["--max-relays", "1"]);
    let mut m = Mgmt::new(b.addr);
    let proxy = m.register_ok("10.0.0.5:8085", "10.0.0.5");
    let _first = TcpStream::connect_timeout(&proxy.into(), WAIT).unwrap();
    let (_server, _, _) = listener_side(&mut m, proxy);
    b.expect_line("relay #1 open");
    // The broker accepts and resets at once; the reset may already be there
    // when the connect completes.
    let r = TcpStream::connect_timeout(&proxy.into(), WAIT).and_then(|mut second| {
        second.set_read_timeout(Some(WAIT))?;
        second.read(&mut [0u8; 1])
    });
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    assert!(b.expect_line("relay limit of 1 reached").contains("WARN"));
}

#[test]
fn a_silent_rendezvous_connection_is_closed_after_the_hello_timeout() {
    let mut b = Broker::start(&[]);
    let mut s = TcpStream::connect_timeout(&b.addr.into(), WAIT).unwrap();
    // Half a hello, then nothing.
    s.write_all(
        &proto::gcb::StreamHello {
            token: Token(1),
            role: Role::Listener,
        }
        .to_bytes()[..8],
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed by the broker, not by our timeout"
    );
    b.expect_line("no hello within");
}
