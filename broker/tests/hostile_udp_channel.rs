//! UDP channels (`UdpChannel`) under hostile input: a channel carries only
//! its own client's datagrams, is given only to the registration's owner
//! (its `udp_token`) for a peer that wrote to the proxy, and a registration
//! holds a bounded number. Every refusal lands in its own counter and leaves
//! the broker's tables as they were. Replayed sealed requests are in `auth.rs`.

mod hostile_support;
mod support;

use std::net::{SocketAddrV4, UdpSocket};

use hostile_support::{assert_error, counters, expect_moved, state};
use proto::gcb::{self, ErrorCode, Message, Token};
use support::udp::{recv, sock, v4, Client, QUIET};
use support::*;

/// Asks for (or closes) the channel of `peer` on `c`'s registration with `token`.
fn channel_req(c: &mut Client, peer: SocketAddrV4, token: Token, open: bool) -> Message {
    let proxy = c.proxy;
    c.mgmt.request(&Message::UdpChannel {
        proxy,
        peer,
        udp_token: token,
        open,
    })
}

/// A peer that wrote to `c`'s proxy (so it has a live rule), its datagram
/// taken off the client's socket.
fn peer_of(c: &Client) -> UdpSocket {
    let peer = sock();
    peer.send_to(b"hello", c.proxy).unwrap();
    assert_eq!(c.recv_relayed(), (v4(&peer), b"hello".to_vec()));
    peer
}

/// Opens `peer`'s channel on `c` and makes `c.app` its data path: the
/// channel's address and Dummy token.
fn open_channel(c: &mut Client, peer: SocketAddrV4) -> (SocketAddrV4, Token) {
    let token = c.token;
    let Message::UdpChannelOk { channel, token } = channel_req(c, peer, token, true) else {
        panic!("no channel for {peer}")
    };
    let dummy = gcb::encode(&Message::Dummy { token }, 8).unwrap();
    c.app.send_to(&dummy, channel).unwrap();
    let (ack, src) = recv(&c.app, WAIT).expect("the channel's DummyAck");
    assert_eq!(
        (gcb::decode(&ack).unwrap().1, src),
        (Message::DummyAck { token }, channel)
    );
    (channel, token)
}

#[test]
fn strangers_at_a_channel_port_are_dropped_and_counted() {
    let b = Broker::start(&[]);
    let mut c = Client::register(&b, "10.0.0.7", None);
    c.dummy(&b);
    let peer = peer_of(&c);
    let (channel, token) = open_channel(&mut c, v4(&peer));
    // It works both ways, without a header, and the peer sees the proxy.
    c.app.send_to(b"to the peer", channel).unwrap();
    assert_eq!(recv(&peer, WAIT), Some((b"to the peer".to_vec(), c.proxy)));
    peer.send_to(b"to the client", c.proxy).unwrap();
    assert_eq!(
        recv(&c.app, WAIT),
        Some((b"to the client".to_vec(), channel))
    );
    let before = (state(&b), counters(&b));

    let stranger = sock();
    for junk in [&b"junk"[..], b"", &[0u8; 1400]] {
        stranger.send_to(junk, channel).unwrap();
    }
    // The peer itself knows only the proxy; at the channel it is a stranger too.
    peer.send_to(b"sideways", channel).unwrap();
    // A Dummy with another token, and an unsolicited DummyAck.
    let wrong = gcb::encode(
        &Message::Dummy {
            token: Token(token.0 ^ 1),
        },
        9,
    )
    .unwrap();
    stranger.send_to(&wrong, channel).unwrap();
    let ack = gcb::encode(&Message::DummyAck { token }, 9).unwrap();
    stranger.send_to(&ack, channel).unwrap();

    expect_moved(
        &b,
        &before.1,
        &[("udp_channel_strangers", 4), ("udp_dummies_dropped", 2)],
    );
    assert!(
        recv(&peer, QUIET).is_none(),
        "a stranger's datagram reached the peer"
    );
    assert!(
        recv(&stranger, QUIET).is_none(),
        "the stranger got an answer"
    );
    assert!(
        recv(&c.app, QUIET).is_none(),
        "a stranger's datagram reached the client"
    );
    assert_eq!(state(&b), before.0);
    // The data path did not move: the client still talks through it.
    c.app.send_to(b"still mine", channel).unwrap();
    assert_eq!(recv(&peer, WAIT), Some((b"still mine".to_vec(), c.proxy)));
}

#[test]
fn channels_only_for_the_owner_and_a_peer_that_wrote() {
    let b = Broker::start(&[]);
    let mut c = Client::register(&b, "10.0.0.8", None);
    let other = Client::register(&b, "10.0.0.9", None);
    c.dummy(&b);
    let silent = sock();
    let talker = peer_of(&c);
    let before = (state(&b), counters(&b));

    // A peer that never wrote to the proxy: a channel would send from the
    // proxy address to a stranger.
    let token = c.token;
    assert_error(
        &channel_req(&mut c, v4(&silent), token, true),
        ErrorCode::NotRegistered,
    );
    // Wrong tokens: made up, another registration's, and zero.
    for wrong in [Token(c.token.0 ^ 1), other.token, Token(0)] {
        assert_error(
            &channel_req(&mut c, v4(&talker), wrong, true),
            ErrorCode::UnknownToken,
        );
        assert_error(
            &channel_req(&mut c, v4(&talker), wrong, false),
            ErrorCode::UnknownToken,
        );
    }
    // A proxy address nobody holds, and a TCP registration's. TCP and UDP
    // ports are separate spaces, so the TCP one asks for a port no UDP
    // registration here has: the same number would name `c`'s own proxy
    // (that made this test fail about once in 50 runs).
    let mut tcp = Mgmt::new(b.addr);
    let udp_ports = [c.proxy.port(), other.proxy.port()];
    let port = (b.range.0..=b.range.1).find(|p| !udp_ports.contains(p)).expect("a free port");
    let tcp_proxy = match tcp.register("10.0.0.10:80", "10.0.0.10", None, Some(port), 10) {
        Message::RegisterOk { proxy, .. } => proxy,
        other => panic!("register refused: {other:?}"),
    };
    assert_eq!(tcp_proxy.port(), port, "the desired port was free");
    for proxy in [SocketAddrV4::new(*c.proxy.ip(), 1), tcp_proxy] {
        let msg = Message::UdpChannel {
            proxy,
            peer: v4(&talker),
            udp_token: token,
            open: true,
        };
        assert_error(&c.mgmt.request(&msg), ErrorCode::NotRegistered);
    }
    // Closing a channel that does not exist changes nothing.
    assert_eq!(channel_req(&mut c, v4(&talker), token, false), Message::Ack);

    expect_moved(
        &b,
        &before.1,
        &[("udp_channels_refused", 9), ("registered", 1)],
    );
    let after = state(&b);
    assert!(after.contains(&tcp_proxy.to_string()), "{after}");
    assert!(
        recv(&silent, QUIET).is_none(),
        "the silent peer got a datagram"
    );
    assert!(recv(&talker, QUIET).is_none());

    // The old token of a registration made again is refused too.
    let old = c.token;
    let unregister = Message::Unregister {
        proxy: proto::Endpoint::new(proto::Proto::Udp, c.proxy),
    };
    assert_eq!(c.mgmt.request(&unregister), Message::Ack);
    let mut again = Client::register(&b, "10.0.0.7", None);
    again.dummy(&b);
    let peer = peer_of(&again);
    assert_error(
        &channel_req(&mut again, v4(&peer), old, true),
        ErrorCode::UnknownToken,
    );
    let token = again.token;
    assert!(matches!(
        channel_req(&mut again, v4(&peer), token, true),
        Message::UdpChannelOk { .. }
    ));
}

#[test]
fn a_registration_holds_a_bounded_number_of_channels() {
    const CAP: usize = 64;
    // Room for the proxy, the cap, and more: the pool is not what stops it.
    let b = Broker::start_on(free_port(), (24000, 24099), &[]);
    let mut c = Client::register(&b, "10.0.0.11", None);
    c.dummy(&b);
    let peers: Vec<UdpSocket> = (0..=CAP).map(|_| peer_of(&c)).collect();
    let token = c.token;
    let mut channels = Vec::new();
    for p in &peers[..CAP] {
        match channel_req(&mut c, v4(p), token, true) {
            Message::UdpChannelOk { channel, .. } => channels.push(channel),
            other => panic!("channel {} refused: {other:?}", channels.len()),
        }
    }
    channels.sort();
    channels.dedup();
    assert_eq!(channels.len(), CAP, "one port each");
    let before = (state(&b), counters(&b));

    assert_error(
        &channel_req(&mut c, v4(&peers[CAP]), token, true),
        ErrorCode::LimitReached,
    );
    // Asking again for one it has is not a new channel.
    let again = channel_req(&mut c, v4(&peers[0]), token, true);
    assert!(
        matches!(again, Message::UdpChannelOk { channel, .. } if channels.contains(&channel)),
        "{again:?}"
    );
    expect_moved(&b, &before.1, &[("udp_channels_refused", 1)]);
    assert_eq!(state(&b), before.0, "no port taken");

    // Closing one makes room for the refused peer.
    assert_eq!(
        channel_req(&mut c, v4(&peers[0]), token, false),
        Message::Ack
    );
    assert!(matches!(
        channel_req(&mut c, v4(&peers[CAP]), token, true),
        Message::UdpChannelOk { .. }
    ));
}
