//! GCB command tests: one sample of every message, golden bytes pinning the
//! layout, limits, and properties (round trip, truncation, arbitrary input).

use super::*;
use crate::common::{Endpoint, Proto};
use crate::header::{Flags, HEADER_LEN};
use crate::strategies::{self, hex};
use crate::wire::{DecodeError, EncodeError, SliceSink};
use proptest::prelude::*;
use std::net::SocketAddrV4;

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// One instance of every message kind.
fn samples() -> Vec<Message> {
    let ep = Endpoint::new(Proto::Tcp, a("203.0.113.1:40000"));
    vec![
        Message::Register {
            proto: Proto::Tcp,
            local: a("192.0.2.10:5000"),
            realm: None,
            desired_port: None,
            port_required: false,
            mgmt: MgmtInfo::new(a("192.0.2.10:6000"), 42, 30, "condor_schedd"),
        },
        Message::RegisterOk {
            proxy: ep.addr,
            observed: a("198.51.100.2:1024"),
            udp_token: None,
        },
        Message::Unregister { proxy: ep },
        Message::Heartbeat {
            held: vec![ep, Endpoint::new(Proto::Udp, ep.addr)],
        },
        Message::HeartbeatAck,
        Message::ReregisterRequest { unknown: vec![ep] },
        Message::Connect {
            proto: Proto::Udp,
            target: ep.addr,
            connector: a("198.51.100.9:7000"),
            connector_id: Some(a("203.0.113.1:40001")),
            realm: Some("realm-b".into()),
            features: Features::NONE,
            asked_from_port: 0,
        },
        Message::Connect {
            proto: Proto::Tcp,
            target: ep.addr,
            connector: a("198.51.100.9:7001"),
            connector_id: None,
            realm: None,
            features: Features::PUNCH_TCP,
            asked_from_port: 40123,
        },
        Message::ConnectDecision(Decision::PunchTcp {
            via: a("203.0.113.10:65432"),
            token: Token(11),
            early: false,
        }),
        Message::ConnectDecision(Decision::PunchTcp {
            via: a("203.0.113.10:65432"),
            token: Token(13),
            early: true,
        }),
        Message::ConnectDecision(Decision::PunchUdp {
            via: a("203.0.113.10:20001"),
            token: Token(12),
            listener_at: a("203.0.113.1:7000"),
        }),
        Message::PunchConnect {
            token: Token(13),
            broker: a("203.0.113.10:65432"),
            peer: a("203.0.113.2:40123"),
            proxy: ep.addr,
            standby: false,
        },
        Message::PunchConnect {
            token: Token(15),
            broker: a("203.0.113.10:65432"),
            peer: a("203.0.113.2:40124"),
            proxy: ep.addr,
            standby: true,
        },
        Message::PunchHole {
            token: Token(14),
            target: a("203.0.113.2:7001"),
            peer: a("203.0.113.10:20002"),
            proxy: ep.addr,
        },
        Message::ConnectDecision(Decision::SameRealm {
            addr: a("192.0.2.10:5000"),
        }),
        Message::ReverseConnect {
            token: Token(1),
            connector: a("198.51.100.9:7000"),
            peer: a("198.51.100.9:7000"),
            proxy: ep.addr,
        },
        Message::RelayConnect {
            token: Token(2),
            broker: a("203.0.113.1:65432"),
            peer: a("198.51.100.3:5555"),
            proxy: ep.addr,
        },
        Message::MakeHole {
            token: Token(3),
            target: a("198.51.100.9:7000"),
            peer: a("203.0.113.1:40001"),
            proxy: ep.addr,
        },
        Message::ConnectFailed {
            token: Token(8),
            code: ErrorCode::NotRegistered,
        },
        Message::Ack,
        Message::error(ErrorCode::LimitReached, "too many registrations"),
        Message::Dummy { token: Token(4) },
        Message::DummyAck { token: Token(4) },
        Message::UdpChannel {
            proxy: ep.addr,
            peer: a("198.51.100.9:7000"),
            udp_token: Token(5),
            open: true,
        },
        Message::UdpChannelOk {
            channel: a("203.0.113.1:40002"),
            token: Token(6),
        },
        Message::StatusRequest {
            snapshot: 0,
            page: 0,
            format: StatusFormat::Json,
        },
        Message::StatusReply {
            snapshot: 7,
            page: 1,
            pages: 2,
            chunk: "registrations: 0".into(),
        },
    ]
}

/// `m` without its features tail, if it has one.
fn without_features(m: &Message) -> Option<Message> {
    let mut m = m.clone();
    match &mut m {
        Message::Register { mgmt, .. } if !mgmt.features.is_empty() => mgmt.features = Features::NONE,
        Message::Connect { features, asked_from_port, .. } if !features.is_empty() => {
            *features = Features::NONE;
            *asked_from_port = 0;
        }
        Message::PunchConnect { standby, .. } if *standby => *standby = false,
        _ => return None,
    }
    Some(m)
}

#[test]
fn every_message_round_trips_with_its_kind_and_flag() {
    let all = samples();
    let mut kinds: Vec<u8> = all.iter().map(|m| m.kind() as u8).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds.len(), 22, "one sample per kind");
    for (i, m) in all.iter().enumerate() {
        let bytes = encode(m, i as u64).unwrap();
        let (h, back) = decode(&bytes).unwrap();
        assert_eq!(&back, m);
        assert_eq!(h.request_id, i as u64);
        assert_eq!(h.kind, m.kind() as u8);
        assert_eq!(h.flags.is_response(), m.is_response());
        assert_eq!(Kind::from_wire(h.kind), Ok(m.kind()));
    }
}

#[test]
fn limits_are_enforced_on_encode() {
    let long = "x".repeat(MAX_REALM_LEN + 1);
    let m = Message::Connect {
        proto: Proto::Tcp,
        target: a("192.0.2.1:1"),
        connector: a("192.0.2.2:2"),
        connector_id: None,
        realm: Some(long),
        features: Features::NONE,
        asked_from_port: 0,
    };
    assert!(matches!(
        encode(&m, 0),
        Err(EncodeError::TooLong { what: "realm", .. })
    ));
    let ep = Endpoint::new(Proto::Tcp, a("192.0.2.1:1"));
    let m = Message::Heartbeat {
        held: vec![ep; MAX_ENDPOINTS + 1],
    };
    assert!(matches!(encode(&m, 0), Err(EncodeError::TooLong { .. })));
    let m = Message::Heartbeat {
        held: vec![ep; MAX_ENDPOINTS],
    };
    assert!(encode(&m, 0).unwrap().len() < 1024);
    // The helper constructors cut free text instead of failing.
    let e = Message::error(ErrorCode::Internal, &"é".repeat(300));
    assert!(encode(&e, 0).is_ok());
    assert_eq!(
        MgmtInfo::new(a("192.0.2.1:1"), 1, 1, &"p".repeat(99))
            .program
            .len(),
        MAX_PROGRAM_LEN
    );
}

#[test]
fn encode_into_fixed_buffer() {
    let m = Message::Dummy { token: Token(9) };
    let mut buf = [0u8; HEADER_LEN + 8];
    let n = encode_into(&m, 5, SliceSink::new(&mut buf)).unwrap().len();
    assert_eq!(&buf[..n], &encode(&m, 5).unwrap()[..]);
    let mut small = [0u8; HEADER_LEN + 7];
    assert!(encode_into(&m, 5, SliceSink::new(&mut small)).is_err());
}

#[test]
fn malformed_input_is_classified() {
    let mut b = encode(&Message::Ack, 1).unwrap();
    b[5] = 0x55;
    assert_eq!(decode(&b), Err(DecodeError::UnknownKind(0x55)));
    let mut b = encode(&Message::Ack, 1).unwrap();
    b[6] = 0;
    assert_eq!(decode(&b), Err(DecodeError::BadFlags(0)));
    let mut b = encode(&Message::Heartbeat { held: vec![] }, 1).unwrap();
    b[6] = Flags::RESPONSE.bits();
    assert_eq!(decode(&b), Err(DecodeError::BadFlags(1)));
    let mut b = encode(&Message::Ack, 1).unwrap();
    b.push(0);
    assert_eq!(decode(&b), Err(DecodeError::TrailingBytes(1)));
    let mut b = encode(&Message::ConnectDecision(Decision::NotRegistered), 1).unwrap();
    *b.last_mut().unwrap() = 9;
    assert_eq!(decode(&b), Err(DecodeError::BadValue("connect decision")));
    assert_eq!(decode(b"DPF1\x01\x01\x00"), Err(DecodeError::NotProtocol));
    // A list count the datagram cannot hold is refused before allocating.
    let mut b = encode(&Message::Heartbeat { held: vec![] }, 1).unwrap();
    *b.last_mut().unwrap() = 100;
    assert_eq!(decode(&b), Err(DecodeError::Truncated));
}

proptest! {
    #![proptest_config(strategies::config())]

    #[test]
    fn round_trip(m in strategies::gcb_message(), id in any::<u64>()) {
        let bytes = encode(&m, id).unwrap();
        let (h, back) = decode(&bytes).unwrap();
        prop_assert_eq!(back, m);
        prop_assert_eq!(h.request_id, id);
    }

    /// Every byte is a code and back, known or not: nothing is lost
    /// between peers of different versions.
    #[test]
    fn error_code_wire_round_trips(c in any::<u8>()) {
        prop_assert_eq!(ErrorCode::from_wire(c).wire(), c);
    }

    /// A cut or an added byte never goes unnoticed. The one exception is
    /// the optional features tail: cutting exactly the tail leaves the same
    /// request without features, and one byte after a tail-less `Register`
    /// reads as its features (the decoded request then says so); the same
    /// holds for `PunchConnect`'s standby tail, whose only byte is 1.
    #[test]
    fn every_truncation_or_extension_fails(m in strategies::gcb_message(), extra in any::<u8>()) {
        let bytes = encode(&m, 3).unwrap();
        let stripped = without_features(&m);
        let tail_at = stripped.as_ref().map(|s| encode(s, 3).unwrap().len());
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut]) {
                Err(_) => {}
                Ok((_, back)) => {
                    prop_assert_eq!(Some(cut), tail_at, "prefix of {} bytes decoded", cut);
                    prop_assert_eq!(Some(back), stripped.clone());
                }
            }
        }
        let mut longer = bytes;
        longer.push(extra);
        match (&m, decode(&longer)) {
            (Message::Register { mgmt, .. }, Ok((_, Message::Register { mgmt: back, .. }))) if mgmt.features.is_empty() => {
                prop_assert_eq!(back.features.bits(), extra);
            }
            (Message::Register { mgmt, .. }, got) if mgmt.features.is_empty() => {
                prop_assert_eq!(extra, 0);
                prop_assert_eq!(got, Err(DecodeError::BadValue("empty features tail")));
            }
            (Message::Connect { features, .. }, got) if features.is_empty() => {
                let want = if extra == 0 { DecodeError::BadValue("empty features tail") } else { DecodeError::Truncated };
                prop_assert_eq!(got, Err(want));
            }
            (Message::PunchConnect { standby: false, .. }, Ok((_, back))) => {
                prop_assert_eq!(extra, 1, "only a standby tail of 1 reads");
                prop_assert_eq!(without_features(&back), Some(m.clone()));
            }
            (Message::PunchConnect { standby: false, .. }, got) => {
                prop_assert_eq!(got, Err(DecodeError::BadValue("standby tail")));
            }
            (_, got) => prop_assert_eq!(got, Err(DecodeError::TrailingBytes(1))),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&b);
    }

    #[test]
    fn arbitrary_bodies_never_panic(
        kind in any::<u8>(),
        response in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        // A valid header makes the decoder reach the body parsers.
        let flags = if response { Flags::RESPONSE } else { Flags::empty() };
        let mut b = crate::header::Header::new(crate::header::Family::Gcb, kind, flags, 1)
            .to_bytes()
            .to_vec();
        b.extend_from_slice(&body);
        if let Ok((_, m)) = decode(&b) {
            // Whatever decodes must re-encode to the same bytes.
            prop_assert_eq!(encode(&m, 1).unwrap(), b);
        }
    }
}

#[path = "golden_tests.rs"]
mod golden;
