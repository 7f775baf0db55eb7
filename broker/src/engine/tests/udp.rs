//! The UDP data path through the core: the data path learned from Dummies,
//! peers relayed to the client behind a header and the client's answers
//! only to peers with a live rule, every drop counted; and channels, only
//! for the owner and a peer that wrote, carrying that peer both ways
//! without a header.

use std::net::SocketAddrV4;
use std::time::Duration;

use proto::gcb::{self, ErrorCode, Message, Token, UdpRelayHeader, MAX_RELAY_PAYLOAD};
use proto::{Endpoint, Proto};

use super::harness::{a, relayed, Bed, Proc};
use crate::engine::udp::Dir;
use crate::engine::{Opening, UdpSend};

/// A UDP registration of a client in realm A whose data path is known.
pub(super) struct Udp {
    pub client: Proc,
    pub proxy: SocketAddrV4,
    pub token: Token,
    /// The client's application socket through its NAT.
    pub path: SocketAddrV4,
}

pub(super) fn dummy(token: Token) -> Vec<u8> {
    gcb::encode(&Message::Dummy { token }, 1).unwrap()
}

/// `payload` from the client to `peer`, behind its header.
pub(super) fn to_peer(peer: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    UdpRelayHeader { peer }.encode(payload).unwrap()
}

pub(super) fn registered(bed: &mut Bed) -> Udp {
    let client = Proc::in_a(1);
    let Message::RegisterOk {
        proxy,
        udp_token: Some(token),
        ..
    } = bed.ask(client.mgmt, client.register(Proto::Udp, 9000))
    else {
        panic!("no udp registration")
    };
    let path = a("198.51.100.1:7000");
    assert_eq!(bed.udp_in(proxy, path, &dummy(token)).0, UdpSend::Nothing);
    Udp {
        client,
        proxy,
        token,
        path,
    }
}

#[test]
fn dummies_with_the_token_set_the_data_path_and_are_not_answered() {
    let mut bed = Bed::new();
    let u = registered(&mut bed);
    assert_eq!(bed.engine.udp.table.data_path(&u.proxy), Some(u.path));
    let elsewhere = a("198.51.100.1:7001");
    bed.udp_in(u.proxy, elsewhere, &dummy(Token(u.token.0 ^ 2)));
    assert_eq!(
        bed.engine.udp.table.data_path(&u.proxy),
        Some(u.path),
        "wrong token"
    );
    let ack = gcb::encode(&Message::DummyAck { token: u.token }, 1).unwrap();
    assert_eq!(bed.udp_in(u.proxy, elsewhere, &ack).0, UdpSend::Nothing);
    bed.udp_in(u.proxy, elsewhere, &dummy(u.token));
    assert_eq!(
        bed.engine.udp.table.data_path(&u.proxy),
        Some(elsewhere),
        "its NAT moved"
    );
    assert_eq!(
        (
            bed.counter("udp_dummies"),
            bed.counter("udp_dummies_dropped")
        ),
        (2, 2)
    );
    assert_eq!(
        bed.replies.len(),
        1,
        "the RegisterOk alone: no Dummy is answered"
    );
    assert!(bed.commands.is_empty());
}

#[test]
fn peers_reach_the_client_behind_a_header_and_only_they_hear_back() {
    let mut bed = Bed::new();
    let client = Proc::in_a(1);
    let Message::RegisterOk {
        proxy,
        udp_token: Some(token),
        ..
    } = bed.ask(client.mgmt, client.register(Proto::Udp, 9000))
    else {
        panic!()
    };
    let peer = a("203.0.113.20:6000");
    assert_eq!(bed.udp_in(proxy, peer, b"early").0, UdpSend::Nothing);
    assert_eq!(bed.counter("udp_no_path"), 1);
    let path = a("198.51.100.1:7000");
    bed.udp_in(proxy, path, &dummy(token));

    let socket = bed.proxy_socket(Proto::Udp, proxy);
    let (send, buf) = bed.udp_in(proxy, peer, b"hello");
    assert!(matches!(send, UdpSend::Relay { from, dir: Dir::ToClient, .. } if from == socket));
    let (to, bytes) = relayed(&send, &buf).unwrap();
    assert_eq!(to, path);
    assert_eq!(
        UdpRelayHeader::decode(&bytes).unwrap(),
        (UdpRelayHeader { peer }, &b"hello"[..])
    );
    assert_eq!(bed.counter("udp_rules_created"), 1);

    let (send, buf) = bed.udp_in(proxy, path, &to_peer(peer, b"back"));
    assert_eq!(relayed(&send, &buf), Some((peer, b"back".to_vec())));
    assert!(matches!(
        send,
        UdpSend::Relay {
            dir: Dir::ToPeer,
            ..
        }
    ));
    let stranger = a("203.0.113.99:1");
    assert_eq!(
        bed.udp_in(proxy, path, &to_peer(stranger, b"x")).0,
        UdpSend::Nothing
    );
    assert_eq!(bed.udp_in(proxy, path, b"no header").0, UdpSend::Nothing);
    let huge = vec![7; MAX_RELAY_PAYLOAD + 1];
    assert_eq!(bed.udp_in(proxy, peer, &huge).0, UdpSend::Nothing);
    assert_eq!(bed.counter("udp_refused"), 1, "never an open relay");
    assert_eq!(bed.counter("udp_malformed"), 1);
    assert_eq!(bed.counter("udp_oversize"), 1);
}

#[test]
fn new_peers_past_the_rule_cap_are_refused_and_old_ones_kept() {
    let mut bed = Bed::new();
    let u = registered(&mut bed);
    for n in 0..8 {
        let peer = SocketAddrV4::new([203, 0, 113, 20].into(), 6000 + n);
        assert!(relayed(&bed.udp_in(u.proxy, peer, b"hi").0, &[0; 64]).is_some());
    }
    let ninth = a("203.0.113.20:6100");
    assert_eq!(bed.udp_in(u.proxy, ninth, b"hi").0, UdpSend::Nothing);
    assert_eq!(bed.counter("udp_rule_cap"), 1);
    let first = a("203.0.113.20:6000");
    assert_ne!(bed.udp_in(u.proxy, first, b"hi").0, UdpSend::Nothing);
}

/// Lets `d` pass while the client heartbeats its registration.
pub(super) fn keep(bed: &mut Bed, u: &Udp, d: Duration) {
    let ep = Endpoint::new(Proto::Udp, u.proxy);
    let mut left = d;
    while !left.is_zero() {
        let step = left.min(Duration::from_secs(10));
        bed.advance(step);
        left -= step;
        assert_eq!(bed.heartbeat(u.client, &[ep]), Message::HeartbeatAck);
    }
}

/// Asks for a channel for `peer` on `u`'s registration.
pub(super) fn channel(bed: &mut Bed, u: &Udp, peer: SocketAddrV4, token: Token) -> Message {
    let req = Message::UdpChannel {
        proxy: u.proxy,
        peer,
        udp_token: token,
        open: true,
    };
    bed.ask(u.client.mgmt, req)
}

#[test]
fn a_channel_is_only_for_its_owner_and_a_peer_that_wrote() {
    let mut bed = Bed::new();
    let u = registered(&mut bed);
    let peer = a("203.0.113.20:6000");
    let code = |m: Message| match m {
        Message::Error { code, .. } => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        code(channel(&mut bed, &u, peer, u.token)),
        ErrorCode::NotRegistered,
        "no rule yet"
    );
    bed.udp_in(u.proxy, peer, b"hi");
    let wrong = Token(u.token.0 ^ 2);
    assert_eq!(
        code(channel(&mut bed, &u, peer, wrong)),
        ErrorCode::UnknownToken
    );
    let Message::UdpChannelOk { channel: at, token } = channel(&mut bed, &u, peer, u.token) else {
        panic!()
    };
    assert_eq!(bed.open_at(at), [Opening::Channel]);
    assert_eq!(
        channel(&mut bed, &u, peer, u.token),
        Message::UdpChannelOk { channel: at, token },
        "asked again: the same"
    );
    let close = Message::UdpChannel {
        proxy: u.proxy,
        peer,
        udp_token: u.token,
        open: false,
    };
    assert_eq!(bed.ask(u.client.mgmt, close), Message::Ack);
    assert!(bed.open_at(at).is_empty());
    assert_eq!(bed.counter("udp_channels_refused"), 2);
    assert_eq!(
        (
            bed.counter("udp_channels_opened"),
            bed.counter("udp_channels_closed")
        ),
        (1, 1)
    );
}

#[test]
fn a_channel_carries_its_peer_both_ways_without_a_header() {
    let mut bed = Bed::new();
    let u = registered(&mut bed);
    let peer = a("203.0.113.20:6000");
    bed.udp_in(u.proxy, peer, b"hi");
    let Message::UdpChannelOk { channel: at, token } = channel(&mut bed, &u, peer, u.token) else {
        panic!()
    };
    let sock = bed
        .host
        .open
        .iter()
        .find(|(_, (w, _))| *w == Opening::Channel)
        .map(|(id, _)| *id);
    let connected = a("198.51.100.1:7100");
    // Before the client's Dummy on the channel, its peer still comes with a header.
    assert!(matches!(bed.udp_in(u.proxy, peer, b"a").0, UdpSend::Relay { to, .. } if to == u.path));
    let (ack, _) = bed.channel_in(at, connected, &dummy(token));
    let UdpSend::Answer { from, to, bytes } = ack else {
        panic!("{ack:?}")
    };
    assert_eq!((Some(from), to), (sock, connected));
    assert_eq!(gcb::decode(&bytes).unwrap().1, Message::DummyAck { token });
    let (send, buf) = bed.udp_in(u.proxy, peer, b"raw");
    assert_eq!(relayed(&send, &buf), Some((connected, b"raw".to_vec())));
    let (send, buf) = bed.channel_in(at, connected, b"answer");
    assert_eq!(relayed(&send, &buf), Some((peer, b"answer".to_vec())));
    let proxy_socket = bed.proxy_socket(Proto::Udp, u.proxy);
    assert!(
        matches!(send, UdpSend::Relay { from, .. } if from == proxy_socket),
        "from the proxy"
    );
    assert_eq!(
        bed.channel_in(at, a("203.0.113.66:1"), b"x").0,
        UdpSend::Nothing
    );
    assert_eq!(bed.counter("udp_channel_strangers"), 1);
    // The registration going takes the channel with it.
    let ep = Endpoint::new(Proto::Udp, u.proxy);
    assert_eq!(
        bed.ask(u.client.mgmt, Message::Unregister { proxy: ep }),
        Message::Ack
    );
    assert!(bed.host.open.is_empty(), "proxy and channel sockets closed");
    assert!(bed.engine.udp.table.get(&u.proxy).is_none());
    assert_eq!(bed.engine.udp.channels.len(), 0);
}
