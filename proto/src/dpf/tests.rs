//! DPF request tests: every message, golden bytes, and properties.

use super::*;
use crate::header::HEADER_LEN;
use crate::strategies::{self, hex};
use proptest::prelude::*;

fn a(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn samples() -> Vec<Message> {
    vec![
        Message::Forward {
            proto: Proto::Tcp,
            local: a("192.0.2.20:8080"),
            mgmt_port: 9000,
            desired: None,
        },
        Message::ForwardOk {
            public: a("203.0.113.1:30000"),
        },
        Message::Delete {
            proto: Proto::Udp,
            key: MappingKey::Local(a("192.0.2.20:8080")),
        },
        Message::DeleteOk,
        Message::Query {
            proto: Proto::Tcp,
            public: a("203.0.113.1:30000"),
        },
        Message::QueryOk {
            local: a("192.0.2.20:8080"),
        },
        Message::QueryNak,
        Message::Info,
        Message::InfoOk {
            public_ips: vec![[203, 0, 113, 1].into(), [203, 0, 113, 3].into()],
        },
        Message::error(ErrorCode::PortOutOfRange, "port 80 outside 30000-40000"),
    ]
}

#[test]
fn every_message_round_trips_with_its_kind_and_flag() {
    for (i, m) in samples().iter().enumerate() {
        let bytes = encode(m, i as u64).unwrap();
        let (h, back) = decode(&bytes).unwrap();
        assert_eq!(&back, m);
        assert_eq!(h.request_id, i as u64);
        assert_eq!(h.family, Family::Dpf);
        assert_eq!(Kind::from_wire(h.kind), Ok(m.kind()));
        assert_eq!(h.flags.is_response(), m.is_response());
    }
}

#[test]
fn golden_forward_delete_nak() {
    let m = Message::Forward {
        proto: Proto::Tcp,
        local: a("192.0.2.20:8080"),
        mgmt_port: 9000,
        desired: Some(a("203.0.113.1:30000")),
    };
    let want = hex("44504631 01 01 00 0000000000000010  06 c0000214 1f90  2328  01 cb007101 7530");
    assert_eq!(encode(&m, 0x10).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, m);

    let d = Message::Delete {
        proto: Proto::Udp,
        key: MappingKey::Public(a("203.0.113.1:30000")),
    };
    assert_eq!(
        encode(&d, 6).unwrap(),
        hex("44504631 01 02 00 0000000000000006 11 02 cb007101 7530")
    );
    assert_eq!(
        encode(&Message::QueryNak, 5).unwrap(),
        hex("44504631 01 84 01 0000000000000005")
    );
}

#[test]
fn golden_info() {
    assert_eq!(encode(&Message::Info, 9).unwrap(), hex("44504631 01 04 00 0000000000000009"));
    let ok = Message::InfoOk {
        public_ips: vec![[203, 0, 113, 1].into()],
    };
    let want = hex("44504631 01 85 01 0000000000000009 01 cb007101");
    assert_eq!(encode(&ok, 9).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, ok);
    // A count the body cannot hold is refused before anything is allocated.
    let mut short = want.clone();
    short[HEADER_LEN] = 2;
    assert!(decode(&short).is_err());
    let many = Message::InfoOk {
        public_ips: vec![[203, 0, 113, 1].into(); MAX_PUBLIC_IPS + 1],
    };
    assert!(encode(&many, 1).is_err(), "longer than MAX_PUBLIC_IPS");
}

#[test]
fn error_codes_are_stable_and_open_ended() {
    for c in 0..=255u8 {
        assert_eq!(ErrorCode::from_wire(c).wire(), c);
    }
    assert_eq!(ErrorCode::from_wire(2), ErrorCode::NotLocal);
    assert_eq!(ErrorCode::from_wire(200), ErrorCode::Other(200));
}

#[test]
fn malformed_input_is_classified() {
    assert_eq!(decode(b"GCB1\x01\x01\x00"), Err(DecodeError::NotProtocol));
    let mut b = encode(
        &Message::Delete {
            proto: Proto::Tcp,
            key: MappingKey::Local(a("192.0.2.1:1")),
        },
        1,
    )
    .unwrap();
    b[HEADER_LEN + 1] = 3;
    assert_eq!(decode(&b), Err(DecodeError::BadValue("mapping key")));
    let mut b = encode(&Message::DeleteOk, 1).unwrap();
    b[6] = 0;
    assert_eq!(decode(&b), Err(DecodeError::BadFlags(0)));
    let too_long = Message::Error {
        code: ErrorCode::Internal,
        detail: "x".repeat(MAX_DETAIL_LEN + 1),
    };
    assert!(encode(&too_long, 1).is_err());
}

proptest! {
    #![proptest_config(strategies::config())]

    #[test]
    fn round_trip(m in strategies::dpf_message(), id in any::<u64>()) {
        let bytes = encode(&m, id).unwrap();
        let (h, back) = decode(&bytes).unwrap();
        prop_assert_eq!(back, m);
        prop_assert_eq!(h.request_id, id);
    }

    #[test]
    fn every_truncation_or_extension_fails(m in strategies::dpf_message(), extra in any::<u8>()) {
        let bytes = encode(&m, 3).unwrap();
        for cut in 0..bytes.len() {
            prop_assert!(decode(&bytes[..cut]).is_err(), "prefix of {} bytes decoded", cut);
        }
        let mut longer = bytes;
        longer.push(extra);
        prop_assert_eq!(decode(&longer), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&b);
    }

    #[test]
    fn arbitrary_bodies_never_panic(
        kind in any::<u8>(),
        response in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let flags = if response { Flags::RESPONSE } else { Flags::empty() };
        let mut b = Header::new(Family::Dpf, kind, flags, 1).to_bytes().to_vec();
        b.extend_from_slice(&body);
        if let Ok((_, m)) = decode(&b) {
            prop_assert_eq!(encode(&m, 1).unwrap(), b);
        }
    }
}
