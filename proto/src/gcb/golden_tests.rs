//! Golden bytes of GCB commands: each message's exact layout on the wire,
//! so an encoder change that would break older peers fails here.

use super::*;

#[test]
fn golden_connect_failed() {
    let m = Message::ConnectFailed {
        token: Token(0x0102030405060708),
        code: ErrorCode::NotRegistered,
    };
    let want = hex("47434231 01 14 00 0000000000000009  0102030405060708 03");
    assert_eq!(encode(&m, 9).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, m);
    assert!(!m.is_response(), "a request: the connector acknowledges it");
}

/// A listener that stayed silent: code 10, the newest one.
#[test]
fn golden_connect_failed_timeout() {
    let m = Message::ConnectFailed {
        token: Token(0x0102030405060708),
        code: ErrorCode::Timeout,
    };
    let want = hex("47434231 01 14 00 0000000000000009  0102030405060708 0a");
    assert_eq!(encode(&m, 9).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, m);
}

/// Every code keeps its wire value, and the first unknown one decodes as
/// `Other` (what an older peer makes of `Timeout`).
#[test]
fn error_codes_have_fixed_wire_values() {
    let all = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::NotRegistered,
        ErrorCode::LimitReached,
        ErrorCode::PortUnavailable,
        ErrorCode::VersionMismatch,
        ErrorCode::UnknownToken,
        ErrorCode::Unsupported,
        ErrorCode::Internal,
        ErrorCode::Timeout,
    ];
    for (i, code) in all.into_iter().enumerate() {
        let wire = u8::try_from(i + 1).unwrap();
        assert_eq!((code.wire(), ErrorCode::from_wire(wire)), (wire, code));
    }
    assert_eq!(ErrorCode::from_wire(11), ErrorCode::Other(11));
    assert_eq!(ErrorCode::from_wire(0), ErrorCode::Other(0));
}

#[test]
fn golden_heartbeat() {
    let m = Message::Heartbeat {
        held: vec![Endpoint::new(Proto::Tcp, a("192.0.2.10:4000"))],
    };
    let want = hex("47434231 01 03 00 0000000000000007  01 06 c000020a 0fa0");
    assert_eq!(encode(&m, 7).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, m);
}

#[test]
fn golden_register() {
    let m = Message::Register {
        proto: Proto::Udp,
        local: a("192.0.2.10:5000"),
        realm: Some("lab".into()),
        desired_port: Some(40001),
        port_required: false,
        mgmt: MgmtInfo::new(a("192.0.2.10:6000"), 0x1234, 30, "sd"),
    };
    let want = hex("47434231 01 01 00 0000000000000002
         11 c000020a 1388  01 03 6c6162  01 9c41
         c000020a 1770  00001234  001e  02 7364");
    assert_eq!(encode(&m, 2).unwrap(), want);
}

/// Features ride in an optional tail: a request without them is the bytes an
/// older shim sends (pinned above), one with them appends the tail, and a
/// tail with no feature set, or a part of one, is malformed.
#[test]
fn golden_features_tails() {
    let mut mgmt = MgmtInfo::new(a("192.0.2.10:6000"), 0x1234, 30, "sd");
    mgmt.features = Features::PUNCH_TCP;
    let m = Message::Register {
        proto: Proto::Udp,
        local: a("192.0.2.10:5000"),
        realm: Some("lab".into()),
        desired_port: Some(40001),
        port_required: false,
        mgmt,
    };
    let want = hex("47434231 01 01 00 0000000000000002
         11 c000020a 1388  01 03 6c6162  01 9c41
         c000020a 1770  00001234  001e  02 7364  01");
    assert_eq!(encode(&m, 2).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, m);
    let mut empty_tail = want.clone();
    *empty_tail.last_mut().unwrap() = 0;
    assert_eq!(decode(&empty_tail), Err(DecodeError::BadValue("empty features tail")));

    let connect = |features, asked_from_port| Message::Connect {
        proto: Proto::Tcp,
        target: a("203.0.113.10:20001"),
        connector: a("198.51.100.10:40000"),
        connector_id: None,
        realm: None,
        features,
        asked_from_port,
    };
    let plain = hex("47434231 01 04 00 0000000000000005  06 cb00710a 4e21  c633640a 9c40  00 00");
    assert_eq!(encode(&connect(Features::NONE, 0), 5).unwrap(), plain);
    let offering = hex("47434231 01 04 00 0000000000000005  06 cb00710a 4e21  c633640a 9c40  00 00  01 9c41");
    let m = connect(Features::PUNCH_TCP, 40001);
    assert_eq!(encode(&m, 5).unwrap(), offering);
    assert_eq!(decode(&offering).unwrap().1, m);
    let cut = &offering[..offering.len() - 1];
    assert_eq!(decode(cut), Err(DecodeError::Truncated));
    let mut longer = offering.clone();
    longer.push(0);
    assert_eq!(decode(&longer), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn golden_punch_decisions_and_commands() {
    let tcp = Message::ConnectDecision(Decision::PunchTcp { via: a("203.0.113.10:65432"), token: Token(0x0102030405060708), early: false });
    let want = hex("47434231 01 84 01 0000000000000001  06 cb00710a ff98 0102030405060708");
    assert_eq!(encode(&tcp, 1).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, tcp);
    // The early form differs in its tag alone.
    let early = Message::ConnectDecision(Decision::PunchTcp { via: a("203.0.113.10:65432"), token: Token(0x0102030405060708), early: true });
    let want = hex("47434231 01 84 01 0000000000000001  08 cb00710a ff98 0102030405060708");
    assert_eq!(encode(&early, 1).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, early);
    let udp = Message::ConnectDecision(Decision::PunchUdp {
        via: a("203.0.113.10:20001"),
        token: Token(9),
        listener_at: a("203.0.113.1:5000"),
    });
    let want = hex("47434231 01 84 01 0000000000000001  07 cb00710a 4e21 0000000000000009 cb007101 1388");
    assert_eq!(encode(&udp, 1).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, udp);
    let cmd = Message::PunchConnect {
        token: Token(9),
        broker: a("203.0.113.10:65432"),
        peer: a("203.0.113.2:40000"),
        proxy: a("203.0.113.10:20001"),
        standby: false,
    };
    let want = hex("47434231 01 15 00 0000000000000002  0000000000000009 cb00710a ff98 cb007102 9c40 cb00710a 4e21");
    assert_eq!(encode(&cmd, 2).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, cmd);
    let hole = Message::PunchHole {
        token: Token(9),
        target: a("203.0.113.2:40000"),
        peer: a("203.0.113.10:20002"),
        proxy: a("203.0.113.10:20001"),
    };
    let want = hex("47434231 01 16 00 0000000000000002  0000000000000009 cb007102 9c40 cb00710a 4e22 cb00710a 4e21");
    assert_eq!(encode(&hole, 2).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, hole);
}

/// A standby `PunchConnect` is the plain one with a one-byte tail of 1;
/// any other tail is malformed, so a plain one stays today's bytes.
#[test]
fn golden_standby_punch_connect() {
    let cmd = Message::PunchConnect {
        token: Token(9),
        broker: a("203.0.113.10:65432"),
        peer: a("203.0.113.2:40000"),
        proxy: a("203.0.113.10:20001"),
        standby: true,
    };
    let plain = "47434231 01 15 00 0000000000000002  0000000000000009 cb00710a ff98 cb007102 9c40 cb00710a 4e21";
    let want = hex(&format!("{plain} 01"));
    assert_eq!(encode(&cmd, 2).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, cmd);
    for tail in ["00", "02", "ff", "0101"] {
        let bad = hex(&format!("{plain} {tail}"));
        assert!(decode(&bad).is_err(), "tail {tail} is refused");
    }
    assert_eq!(decode(&hex(&format!("{plain} 00"))), Err(DecodeError::BadValue("standby tail")));
}

/// A required port is the preferred-port layout with tag 2; a required flag
/// without a port is not on the wire, and tags past 2 are malformed.
#[test]
fn golden_register_with_a_required_port() {
    let mut m = Message::Register {
        proto: Proto::Tcp,
        local: a("192.0.2.10:5000"),
        realm: None,
        desired_port: Some(20500),
        port_required: true,
        mgmt: MgmtInfo::new(a("192.0.2.10:6000"), 1, 30, "sd"),
    };
    let want = hex("47434231 01 01 00 0000000000000003
         06 c000020a 1388  00  02 5014
         c000020a 1770  00000001  001e  02 7364");
    assert_eq!(encode(&m, 3).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, m);
    let mut bad = want.clone();
    bad[HEADER_LEN + 8] = 3;
    assert_eq!(decode(&bad), Err(DecodeError::BadValue("port wish")));
    if let Message::Register { desired_port, .. } = &mut m {
        *desired_port = None;
    }
    let (_, back) = decode(&encode(&m, 3).unwrap()).unwrap();
    assert!(matches!(back, Message::Register { desired_port: None, port_required: false, .. }));
}

#[test]
fn golden_udp_channel_and_its_reply() {
    let m = Message::UdpChannel {
        proxy: a("203.0.113.10:21000"),
        peer: a("198.51.100.1:5000"),
        udp_token: Token(0x0a0b),
        open: false,
    };
    let want = hex("47434231 01 06 00 0000000000000003
         cb00710a 5208  c6336401 1388  0000000000000a0b  00");
    assert_eq!(encode(&m, 3).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, m);
    let mut bad = want.clone();
    *bad.last_mut().unwrap() = 2;
    assert_eq!(
        decode(&bad),
        Err(DecodeError::BadValue("channel open flag"))
    );
    let ok = Message::UdpChannelOk {
        channel: a("203.0.113.10:21001"),
        token: Token(9),
    };
    let want = hex("47434231 01 88 01 0000000000000003  cb00710a 5209  0000000000000009");
    assert_eq!(encode(&ok, 3).unwrap(), want);
}

#[test]
fn golden_relay_decision_and_error() {
    let m = Message::ConnectDecision(Decision::Relay {
        via: a("203.0.113.1:65432"),
        token: Token(0x1122_3344_5566_7788),
    });
    let want = hex("47434231 01 84 01 0102030405060708  04 cb007101 ff98 1122334455667788");
    assert_eq!(encode(&m, 0x0102_0304_0506_0708).unwrap(), want);

    let e = Message::error(ErrorCode::NotRegistered, "gone");
    assert_eq!(
        encode(&e, 1).unwrap(),
        hex("47434231 01 ff 01 0000000000000001 03 04 676f6e65")
    );
}

#[test]
fn golden_status_request_and_reply() {
    let m = Message::StatusRequest {
        snapshot: 0x0a0b,
        page: 3,
        format: StatusFormat::Json,
    };
    let want = hex("47434231 01 05 00 0000000000000009  0000000000000a0b 0003 01");
    assert_eq!(encode(&m, 9).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, m);
    let mut bad = want.clone();
    *bad.last_mut().unwrap() = 2;
    assert_eq!(decode(&bad), Err(DecodeError::BadValue("status format")));

    let m = Message::StatusReply {
        snapshot: 0x0a0b,
        page: 3,
        pages: 4,
        chunk: "ok".into(),
    };
    let want = hex("47434231 01 87 01 0000000000000009  0000000000000a0b 0003 0004 0002 6f6b");
    assert_eq!(encode(&m, 9).unwrap(), want);
    assert_eq!(decode(&want).unwrap().1, m);

    // A full chunk fits one datagram; one byte more does not encode.
    let full = Message::StatusReply {
        snapshot: 1,
        page: 0,
        pages: 1,
        chunk: "x".repeat(MAX_STATUS_CHUNK),
    };
    let bytes = encode(&full, 1).unwrap();
    assert!(bytes.len() < crate::header::MAX_UDP_PAYLOAD);
    assert_eq!(decode(&bytes).unwrap().1, full);
    let over = Message::StatusReply {
        snapshot: 1,
        page: 0,
        pages: 1,
        chunk: "x".repeat(MAX_STATUS_CHUNK + 1),
    };
    assert!(matches!(
        encode(&over, 1),
        Err(EncodeError::TooLong {
            what: "status chunk",
            ..
        })
    ));
}
