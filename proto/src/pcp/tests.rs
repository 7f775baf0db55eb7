//! PCP codec tests: RFC 6887 layouts byte for byte, the server's answers to
//! every kind of bad request, error responses as copies of the request,
//! and round trips on arbitrary values.

use super::*;
use crate::strategies::{self, hex};
use proptest::prelude::*;

const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

fn client() -> Ipv6Addr {
    mapped(Ipv4Addr::new(192, 0, 2, 10))
}

fn map_request(options: Vec<Opt>) -> Request {
    Request {
        opcode: OP_MAP,
        lifetime: 7200,
        client: client(),
        map: Some(MapData {
            nonce: NONCE,
            protocol: 6,
            internal_port: 8080,
            external_port: 0,
            external_ip: mapped(Ipv4Addr::UNSPECIFIED),
        }),
        options,
    }
}

const MAP_REQUEST: &str = "02 01 0000 00001c20 00000000000000000000ffffc000020a
     0102030405060708090a0b0c 06 000000 1f90 0000 00000000000000000000ffff00000000";

#[test]
fn golden_map_request_and_response() {
    let want = hex(MAP_REQUEST);
    assert_eq!(want.len(), HEADER_LEN + MAP_LEN);
    assert_eq!(encode_request(&map_request(vec![])), want);
    assert_eq!(decode_request(&want), Ok(map_request(vec![])));

    let resp = Response {
        version: VERSION,
        opcode: OP_MAP,
        result: ResultCode::Success,
        lifetime: 3600,
        epoch: 42,
        map: Some(MapData {
            external_port: 40000,
            external_ip: mapped(Ipv4Addr::new(203, 0, 113, 1)),
            ..map_request(vec![]).map.unwrap()
        }),
        options: vec![],
    };
    let want = hex("02 81 00 00 00000e10 0000002a 000000000000000000000000
         0102030405060708090a0b0c 06 000000 1f90 9c40 00000000000000000000ffffcb007101");
    assert_eq!(encode_response(&resp), want);
    assert_eq!(decode_response(&want), Ok(resp));
}

#[test]
fn golden_options_and_announce() {
    let req = map_request(vec![
        Opt::PreferFailure,
        Opt::ThirdParty(mapped(Ipv4Addr::new(192, 0, 2, 11))),
    ]);
    let bytes = encode_request(&req);
    let tail = hex("02 00 0000  01 00 0010 00000000000000000000ffffc000020b");
    assert_eq!(&bytes[HEADER_LEN + MAP_LEN..], &tail[..]);
    assert_eq!(decode_request(&bytes), Ok(req));

    let announce = Request {
        opcode: OP_ANNOUNCE,
        lifetime: 0,
        client: client(),
        map: None,
        options: vec![],
    };
    let want = hex("02 00 0000 00000000 00000000000000000000ffffc000020a");
    assert_eq!(encode_request(&announce), want);
    assert_eq!(decode_request(&want), Ok(announce));
    let unsolicited = hex("02 80 00 00 00000000 00000007 000000000000000000000000");
    let r = decode_response(&unsolicited).unwrap();
    assert_eq!(
        (r.opcode, r.result, r.epoch, r.map),
        (OP_ANNOUNCE, ResultCode::Success, 7, None)
    );
}

#[test]
fn bad_requests_are_answered_or_dropped() {
    let good = hex(MAP_REQUEST);
    let answer = |b: &[u8]| match decode_request(b) {
        Err(RequestError::Answer(c)) => c,
        other => panic!("want an answer, got {other:?}"),
    };
    assert_eq!(
        decode_request(&good[..1]),
        Err(RequestError::Drop(DecodeError::Truncated))
    );
    let mut resp = good.clone();
    resp[1] |= RESPONSE_BIT;
    assert!(matches!(decode_request(&resp), Err(RequestError::Drop(_))));
    let mut v1 = good.clone();
    v1[0] = 1;
    assert_eq!(answer(&v1), ResultCode::UnsuppVersion);
    assert_eq!(
        answer(&good[..good.len() - 1]),
        ResultCode::MalformedRequest
    );
    assert_eq!(answer(&good[..20]), ResultCode::MalformedRequest);
    assert_eq!(
        answer(&good[..HEADER_LEN + 32]),
        ResultCode::MalformedRequest
    );
    let mut long = good.clone();
    long.resize(MAX_LEN + 4, 0);
    assert_eq!(answer(&long), ResultCode::MalformedRequest);
    let mut peer = good.clone();
    peer[1] = OP_PEER;
    assert_eq!(answer(&peer), ResultCode::UnsuppOpcode);

    let with = |opts: &str| {
        let mut b = good.clone();
        b.extend(hex(opts));
        b
    };
    assert_eq!(
        answer(&with("02000000 02000000")),
        ResultCode::MalformedOption
    );
    assert_eq!(answer(&with("05000000")), ResultCode::UnsuppOption);
    assert_eq!(
        answer(&with("01000004 c0000201")),
        ResultCode::MalformedOption
    );
    assert_eq!(
        answer(&with("01000010 00000000")),
        ResultCode::MalformedOption
    );
    let optional = decode_request(&with("c8000002 abcd0000")).unwrap();
    assert_eq!(
        optional.options,
        vec![Opt::Other {
            code: 200,
            data: vec![0xab, 0xcd]
        }]
    );
    let mut announce = hex("02 00 0000 00000000 00000000000000000000ffffc000020a");
    announce.extend(hex("02000000"));
    assert_eq!(answer(&announce), ResultCode::MalformedOption);
}

#[test]
fn error_responses_copy_the_request() {
    let req = hex(MAP_REQUEST);
    let out = encode_error_response(&req, ResultCode::NotAuthorized, 0, 42);
    assert_eq!(
        &out[..HEADER_LEN],
        &hex("02 81 00 02 00000000 0000002a 000000000000000000000000")[..]
    );
    assert_eq!(&out[HEADER_LEN..], &req[HEADER_LEN..]);
    let r = decode_response(&out).unwrap();
    assert_eq!(r.result, ResultCode::NotAuthorized);
    assert_eq!(r.map.unwrap().nonce, NONCE);
    // Short and odd requests are padded to a whole response header; a
    // version we do not speak is answered with ours.
    let short = encode_error_response(&[7, 1, 0], ResultCode::UnsuppVersion, 1800, 9);
    assert_eq!(short.len(), HEADER_LEN);
    assert_eq!((short[0], short[1], short[3]), (VERSION, 0x81, 1));
    let long = encode_error_response(&[2; 2000], ResultCode::MalformedRequest, 0, 0);
    assert_eq!(long.len(), MAX_LEN);
}

#[test]
fn result_codes_are_stable_and_named() {
    for c in 0..=255u8 {
        assert_eq!(ResultCode::from_wire(c).wire(), c);
    }
    assert_eq!(ResultCode::from_wire(11), ResultCode::CannotProvideExternal);
    assert_eq!(
        ResultCode::UserExQuota.to_string(),
        "PCP USER_EX_QUOTA (10)"
    );
    assert!(ResultCode::NoResources.is_short_lived());
    assert!(!ResultCode::NotAuthorized.is_short_lived());
    assert!(is_unspecified(Ipv6Addr::UNSPECIFIED) && is_unspecified(mapped(Ipv4Addr::UNSPECIFIED)));
    assert_eq!(unmapped(client()), Some(Ipv4Addr::new(192, 0, 2, 10)));
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| mapped(b.into())),
        any::<[u8; 16]>().prop_map(Ipv6Addr::from),
    ]
}

fn map_data() -> impl Strategy<Value = MapData> {
    (
        any::<[u8; 12]>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        ipv6(),
    )
        .prop_map(
            |(nonce, protocol, internal_port, external_port, external_ip)| MapData {
                nonce,
                protocol,
                internal_port,
                external_port,
                external_ip,
            },
        )
}

fn option() -> impl Strategy<Value = Opt> {
    prop_oneof![
        ipv6().prop_map(Opt::ThirdParty),
        (any::<u8>(), any::<u16>(), ipv6()).prop_map(|(prefix_len, remote_port, remote_ip)| {
            Opt::Filter {
                prefix_len,
                remote_port,
                remote_ip,
            }
        }),
        (128u8.., proptest::collection::vec(any::<u8>(), 0..9))
            .prop_map(|(code, data)| Opt::Other { code, data }),
    ]
}

proptest! {
    #![proptest_config(strategies::config())]

    #[test]
    fn map_requests_round_trip(
        lifetime in any::<u32>(), client in ipv6(), map in map_data(),
        third in proptest::option::of(ipv6()), prefer in any::<bool>(),
        extra in proptest::collection::vec(option(), 0..3),
    ) {
        let mut options: Vec<Opt> = third.into_iter().map(Opt::ThirdParty).collect();
        if prefer { options.push(Opt::PreferFailure); }
        options.extend(extra.into_iter().filter(|o| o.code() != OPTION_THIRD_PARTY));
        let req = Request { opcode: OP_MAP, lifetime, client, map: Some(map), options };
        prop_assert_eq!(decode_request(&encode_request(&req)), Ok(req));
    }

    #[test]
    fn responses_round_trip(
        result in any::<u8>(), lifetime in any::<u32>(), epoch in any::<u32>(),
        map in proptest::option::of(map_data()), options in proptest::collection::vec(option(), 0..3),
    ) {
        let opcode = if map.is_some() { OP_MAP } else { OP_ANNOUNCE };
        let resp = Response { version: VERSION, opcode, result: ResultCode::from_wire(result), lifetime, epoch, map, options };
        prop_assert_eq!(decode_response(&encode_response(&resp)), Ok(resp));
    }

    /// Whatever arrives, decoding ends in a value or an error; accepted
    /// input re-encodes to an equivalent message, and every refusal that
    /// is answered yields a response the client side can read.
    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..120), map in map_data()) {
        if bytes.len() > 1 { bytes[0] = VERSION; bytes[1] &= 0x7f; }
        if bytes.len() >= HEADER_LEN + MAP_LEN && bytes[1] == OP_MAP {
            let mut w = crate::wire::Writer::new(Vec::new());
            map.write(&mut w);
            bytes[HEADER_LEN..HEADER_LEN + MAP_LEN].copy_from_slice(&w.finish().unwrap());
        }
        match decode_request(&bytes) {
            Ok(req) => prop_assert_eq!(decode_request(&encode_request(&req)), Ok(req)),
            Err(RequestError::Answer(code)) => {
                let out = encode_error_response(&bytes, code, 0, 1);
                prop_assert_eq!(decode_response(&out).map(|r| r.result), Ok(code));
            }
            Err(RequestError::Drop(_)) => {}
        }
        if let Ok(resp) = decode_response(&bytes) {
            prop_assert_eq!(decode_response(&encode_response(&resp)).map(|r| r.result), Ok(resp.result));
        }
    }
}
