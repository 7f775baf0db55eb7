//! NAT-PMP codec tests: the RFC 6886 layouts byte for byte, the answers a
//! gateway owes malformed requests, and round trips on arbitrary values.

use super::*;
use crate::strategies::{self, hex};
use proptest::prelude::*;

#[test]
fn golden_requests() {
    assert_eq!(encode_request(&Request::PublicAddress), hex("00 00"));
    let map = Request::Map {
        proto: Proto::Tcp,
        internal_port: 8080,
        suggested_port: 40000,
        lifetime: 7200,
    };
    let want = hex("00 02 0000 1f90 9c40 00001c20");
    assert_eq!(encode_request(&map), want);
    assert_eq!(decode_request(&want), Ok(map));
    let udp_delete = hex("00 01 0000 0035 0000 00000000");
    assert_eq!(
        decode_request(&udp_delete),
        Ok(Request::Map {
            proto: Proto::Udp,
            internal_port: 53,
            suggested_port: 0,
            lifetime: 0
        })
    );
    // The reserved field is ignored on receipt.
    let reserved = hex("00 02 abcd 1f90 9c40 00001c20");
    assert_eq!(decode_request(&reserved), Ok(map));
}

#[test]
fn golden_responses() {
    let public = Response {
        opcode: OP_PUBLIC_ADDRESS,
        result: ResultCode::Success,
        epoch: 3600,
        body: Body::PublicAddress(Ipv4Addr::new(203, 0, 113, 1)),
    };
    let want = hex("00 80 0000 00000e10 cb007101");
    assert_eq!(encode_response(&public), want);
    assert_eq!(decode_response(&want), Ok(public));

    let map = Response {
        opcode: 2,
        result: ResultCode::Success,
        epoch: 5,
        body: Body::Map {
            internal_port: 8080,
            external_port: 40001,
            lifetime: 3600,
        },
    };
    let want = hex("00 82 0000 00000005 1f90 9c41 00000e10");
    assert_eq!(encode_response(&map), want);
    assert_eq!(decode_response(&want), Ok(map));
    assert_eq!(map.proto(), Some(Proto::Tcp));

    // What a NAT-PMP-only gateway answers a PCP MAP request (version 2,
    // opcode 1): the bare header with "unsupported version".
    let unsupp = hex("00 81 0001 0000002a");
    let r = decode_response(&unsupp).unwrap();
    assert_eq!(r.result, ResultCode::UnsupportedVersion);
    assert_eq!(r.body, Body::None);
    assert_eq!(encode_response(&r), unsupp);
}

#[test]
fn requests_a_gateway_answers_or_drops() {
    let answer = |opcode, result| Err(RequestError::Answer { opcode, result });
    assert_eq!(
        decode_request(&hex("01 00")),
        answer(0, ResultCode::UnsupportedVersion)
    );
    assert_eq!(
        decode_request(&hex("00 07")),
        answer(7, ResultCode::UnsupportedOpcode)
    );
    let drop = |e| Err(RequestError::Drop(e));
    assert_eq!(decode_request(&hex("00")), drop(DecodeError::Truncated));
    assert_eq!(
        decode_request(&hex("00 80")),
        drop(DecodeError::BadFlags(0x80))
    );
    assert_eq!(
        decode_request(&hex("00 02 0000 1f90")),
        drop(DecodeError::Truncated)
    );
    assert_eq!(
        decode_request(&hex("00 00 00")),
        drop(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn responses_that_fit_no_layout_are_errors() {
    assert_eq!(
        decode_response(&hex("00 80 0000")),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        decode_response(&hex("02 80 0000 00000000")),
        Err(DecodeError::NotProtocol)
    );
    assert_eq!(
        decode_response(&hex("00 00 0000 00000000")),
        Err(DecodeError::BadFlags(0))
    );
    // A mapping response cut short, one too long, and a body for an
    // opcode that has none.
    assert!(decode_response(&hex("00 82 0000 00000005 1f90 9c41")).is_err());
    assert!(decode_response(&hex("00 80 0000 00000005 cb007101 00")).is_err());
    assert!(decode_response(&hex("00 85 0000 00000005 cb007101")).is_err());
}

#[test]
fn result_codes_are_stable_and_open_ended() {
    for c in 0..=300u16 {
        assert_eq!(ResultCode::from_wire(c).wire(), c);
    }
    assert_eq!(ResultCode::from_wire(4).name(), "out_of_resources");
    assert_eq!(
        ResultCode::NotAuthorized.to_string(),
        "NAT-PMP not_authorized (2)"
    );
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::PublicAddress),
        (
            strategies::proto(),
            any::<u16>(),
            any::<u16>(),
            any::<u32>()
        )
            .prop_map(
                |(proto, internal_port, suggested_port, lifetime)| Request::Map {
                    proto,
                    internal_port,
                    suggested_port,
                    lifetime
                }
            ),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let body = prop_oneof![
        Just((3u8, Body::None)),
        any::<[u8; 4]>().prop_map(|ip| (OP_PUBLIC_ADDRESS, Body::PublicAddress(ip.into()))),
        (1u8..=2, any::<u16>(), any::<u16>(), any::<u32>()).prop_map(|(op, i, e, l)| (
            op,
            Body::Map {
                internal_port: i,
                external_port: e,
                lifetime: l
            }
        )),
    ];
    (body, any::<u16>(), any::<u32>()).prop_map(|((opcode, body), result, epoch)| Response {
        opcode,
        result: ResultCode::from_wire(result),
        epoch,
        body,
    })
}

proptest! {
    #![proptest_config(strategies::config())]

    #[test]
    fn requests_round_trip(req in request()) {
        prop_assert_eq!(decode_request(&encode_request(&req)), Ok(req));
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        prop_assert_eq!(decode_response(&encode_response(&resp)), Ok(resp));
    }

    /// Whatever arrives, decoding ends in a value or an error, and what it
    /// accepts re-encodes to the same message.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(req) = decode_request(&bytes) {
            prop_assert_eq!(decode_request(&encode_request(&req)), Ok(req));
        }
        if let Ok(resp) = decode_response(&bytes) {
            prop_assert_eq!(encode_response(&resp), bytes);
        }
    }
}
