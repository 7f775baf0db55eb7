//! Tests of the TCP preamble frames and the UDP relay header: golden bytes,
//! incremental reading, and properties over arbitrary input.

use super::*;
use crate::strategies::{self, hex};
use crate::wire::DecodeError;
use proptest::prelude::*;
use std::net::SocketAddrV4;

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

#[test]
fn stream_frames_golden() {
    let h = StreamHello {
        token: Token(0xa1b2),
        role: Role::Listener,
    };
    assert_eq!(
        h.to_bytes().to_vec(),
        hex("47434248 01 02 0000 000000000000a1b2")
    );
    assert_eq!(StreamHello::decode(&h.to_bytes()), Ok(h));
    let p = StreamPeer::Paired {
        peer: a("198.51.100.3:5555"),
    };
    assert_eq!(p.to_bytes().to_vec(), hex("47434250 01 00 c6336403 15b3"));
    let r = StreamPeer::Rejected {
        code: ErrorCode::UnknownToken,
    };
    assert_eq!(r.to_bytes().to_vec(), hex("47434250 01 07 00000000 0000"));
    assert_eq!(StreamPeer::decode(&r.to_bytes()), Ok(r));
}

#[test]
fn frame_reader_stops_at_the_frame_and_spots_foreign_bytes() {
    let h = StreamHello {
        token: Token(77),
        role: Role::Connector,
    };
    let mut stream = h.to_bytes().to_vec();
    stream.extend_from_slice(b"application data");
    let mut fr = FrameReader::<StreamHello>::new();
    let mut pos = 0;
    let mut got = None;
    while got.is_none() {
        // Three bytes at a time, as a slow socket might deliver them.
        let end = (pos + 3).min(stream.len());
        let (used, frame) = fr.feed(&stream[pos..end]).unwrap();
        pos += used;
        got = frame;
    }
    assert_eq!(got, Some(h));
    assert_eq!(&stream[pos..], b"application data");

    let mut fr = FrameReader::<StreamPeer>::new();
    assert_eq!(fr.missing(), 12);
    assert_eq!(fr.feed(b"G"), Ok((1, None)));
    assert_eq!(fr.missing(), 11);
    assert_eq!(fr.feed(b"ET / HTTP/1.0"), Err(DecodeError::NotProtocol));
}

#[test]
fn malformed_frames_are_classified() {
    assert_eq!(
        StreamHello::decode(b"GCBH\x01\x03"),
        Err(DecodeError::Truncated)
    );
    let mut bad = StreamHello {
        token: Token(1),
        role: Role::Connector,
    }
    .to_bytes();
    bad[5] = 3;
    assert_eq!(
        StreamHello::decode(&bad),
        Err(DecodeError::BadValue("stream role"))
    );
    bad[5] = 1;
    bad[7] = 1;
    assert_eq!(
        StreamHello::decode(&bad),
        Err(DecodeError::BadValue("stream hello reserved"))
    );
    bad[7] = 0;
    bad[4] = 2;
    assert!(matches!(
        StreamHello::decode(&bad),
        Err(DecodeError::UnsupportedVersion { version: 2, .. })
    ));
    let mut rej = StreamPeer::Rejected {
        code: ErrorCode::LimitReached,
    }
    .to_bytes();
    rej[11] = 1;
    assert_eq!(
        StreamPeer::decode(&rej),
        Err(DecodeError::BadValue("stream peer address"))
    );
}

fn stream_peer() -> impl Strategy<Value = StreamPeer> {
    prop_oneof![
        strategies::addr().prop_map(|peer| StreamPeer::Paired { peer }),
        (1u8..=255).prop_map(|c| StreamPeer::Rejected {
            code: ErrorCode::from_wire(c)
        }),
    ]
}

/// Feeds `data` to a reader in chunks of the given sizes (cycled).
fn feed_in_chunks<F: Frame>(
    data: &[u8],
    chunks: &[usize],
) -> (usize, Result<Option<F>, DecodeError>) {
    let mut fr = FrameReader::<F>::new();
    let mut pos = 0;
    for step in chunks.iter().cycle().take(data.len() + 1) {
        let end = (pos + step).min(data.len());
        match fr.feed(&data[pos..end]) {
            Ok((used, Some(f))) => return (pos + used, Ok(Some(f))),
            Ok((used, None)) => pos += used,
            Err(e) => return (pos, Err(e)),
        }
    }
    (pos, Ok(None))
}

proptest! {
    #![proptest_config(strategies::config())]

    #[test]
    fn stream_frames_round_trip(token in any::<u64>(), listener in any::<bool>(), peer in stream_peer()) {
        let role = if listener { Role::Listener } else { Role::Connector };
        let h = StreamHello { token: Token(token), role };
        prop_assert_eq!(StreamHello::decode(&h.to_bytes()), Ok(h));
        prop_assert_eq!(StreamPeer::decode(&peer.to_bytes()), Ok(peer));
        for cut in 0..StreamHello::LEN {
            prop_assert!(StreamHello::decode(&h.to_bytes()[..cut]).is_err());
        }
        for cut in 0..StreamPeer::LEN {
            prop_assert!(StreamPeer::decode(&peer.to_bytes()[..cut]).is_err());
        }
    }

    /// Incremental and one-shot decoding agree on any input, and the reader
    /// never takes a byte past the frame.
    #[test]
    fn incremental_matches_one_shot(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(t, tail)| {
                let mut v = StreamHello { token: Token(t), role: Role::Listener }.to_bytes().to_vec();
                v.extend(tail);
                v
            }),
        ],
        chunks in proptest::collection::vec(1usize..8, 1..5),
    ) {
        let (used, got) = feed_in_chunks::<StreamHello>(&data, &chunks);
        prop_assert!(used <= StreamHello::LEN);
        match (got, StreamHello::decode(&data)) {
            (Ok(Some(a)), Ok(b)) => prop_assert_eq!((a, used), (b, StreamHello::LEN)),
            (Ok(None), one_shot) => prop_assert_eq!(one_shot, Err(DecodeError::Truncated)),
            (Err(e), one_shot) => prop_assert_eq!(Err(e), one_shot),
            (Ok(Some(_)), Err(e)) => prop_assert!(false, "one-shot failed: {}", e),
        }
        let (used, _) = feed_in_chunks::<StreamPeer>(&data, &chunks);
        prop_assert!(used <= StreamPeer::LEN);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = StreamHello::decode(&b);
        let _ = StreamPeer::decode(&b);
        let _ = UdpRelayHeader::decode(&b);
    }

    /// With the right magic and version in front, the fuzzer-free pass
    /// reaches every field parser; whatever decodes is canonical.
    #[test]
    fn frames_that_decode_reencode_exactly(
        hello_tail in proptest::collection::vec(any::<u8>(), 11),
        peer_tail in proptest::collection::vec(any::<u8>(), 7),
        small in any::<bool>(),
    ) {
        let mut hello = StreamHello::MAGIC.to_vec();
        hello.push(1);
        hello.extend_from_slice(&hello_tail);
        if small {
            // Mostly valid: a real role, zero reserved bytes.
            hello[5] = 1 + (hello_tail[0] & 1);
            hello[6..8].fill(0);
        }
        if let Ok(h) = StreamHello::decode(&hello) {
            prop_assert_eq!(&h.to_bytes()[..], &hello[..]);
        }
        let mut peer = StreamPeer::MAGIC.to_vec();
        peer.push(1);
        peer.extend_from_slice(&peer_tail);
        if small {
            peer[5] = 0;
        }
        if let Ok(p) = StreamPeer::decode(&peer) {
            prop_assert_eq!(&p.to_bytes()[..], &peer[..]);
        }
    }

    #[test]
    fn relay_header_round_trip(
        peer in strategies::addr(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let h = UdpRelayHeader { peer };
        let d = h.encode(&payload).unwrap();
        prop_assert_eq!(UdpRelayHeader::decode(&d), Ok((h, &payload[..])));
        for cut in 0..RELAY_HEADER_LEN {
            prop_assert!(UdpRelayHeader::decode(&d[..cut]).is_err());
        }
    }
}
