//! Proptest strategies shared by the test modules: arbitrary addresses,
//! strings within a byte limit, and one strategy per message family.

use crate::common::{Endpoint, Proto};
use crate::dpf;
use crate::gcb::{self, Decision, MgmtInfo, StatusFormat, Token};
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Few cases per property: the whole suite must stay well under 20 s.
pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

pub fn addr() -> impl Strategy<Value = SocketAddrV4> {
    (any::<[u8; 4]>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

pub fn proto() -> impl Strategy<Value = Proto> {
    prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)]
}

pub fn endpoint() -> impl Strategy<Value = Endpoint> {
    (proto(), addr()).prop_map(|(p, a)| Endpoint::new(p, a))
}

/// Strings of at most `max` bytes: ASCII up to the limit itself, and any
/// Unicode (multi-byte characters included) within it.
pub fn text(max: usize) -> BoxedStrategy<String> {
    let ascii = proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).unwrap();
    let unicode = proptest::collection::vec(any::<char>(), 0..=max / 4)
        .prop_map(|cs| cs.into_iter().collect::<String>());
    prop_oneof![ascii, unicode].boxed()
}

pub fn token() -> impl Strategy<Value = Token> {
    any::<u64>().prop_map(Token)
}

fn decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        addr().prop_map(|addr| Decision::Direct { addr }),
        addr().prop_map(|addr| Decision::SameRealm { addr }),
        token().prop_map(|token| Decision::Reversal { token }),
        (addr(), token()).prop_map(|(via, token)| Decision::Relay { via, token }),
        Just(Decision::NotRegistered),
        (addr(), token(), any::<bool>()).prop_map(|(via, token, early)| Decision::PunchTcp { via, token, early }),
        (addr(), token(), addr()).prop_map(|(via, token, listener_at)| Decision::PunchUdp {
            via,
            token,
            listener_at
        }),
    ]
}

fn endpoints() -> impl Strategy<Value = Vec<Endpoint>> {
    proptest::collection::vec(endpoint(), 0..=gcb::MAX_ENDPOINTS)
}

pub fn gcb_message() -> BoxedStrategy<gcb::Message> {
    use gcb::Message as M;
    let realm = proptest::option::of(text(gcb::MAX_REALM_LEN));
    let mgmt = (
        addr(),
        any::<u32>(),
        any::<u16>(),
        text(gcb::MAX_PROGRAM_LEN),
        any::<u8>(),
    )
        .prop_map(|(mgmt_local, pid, heartbeat_secs, program, f)| MgmtInfo {
            mgmt_local,
            pid,
            heartbeat_secs,
            program,
            features: gcb::Features::from_bits(f),
        });
    let command = || (token(), addr(), addr(), addr());
    prop_oneof![
        (proto(), addr(), realm.clone(), any::<Option<u16>>(), any::<bool>(), mgmt).prop_map(
            |(proto, local, realm, desired_port, required, mgmt)| M::Register {
                proto,
                local,
                realm,
                desired_port,
                // Not encoded without a port, so not generated without one.
                port_required: required && desired_port.is_some(),
                mgmt
            }
        ),
        (addr(), addr(), proptest::option::of(token())).prop_map(|(proxy, observed, udp_token)| {
            M::RegisterOk {
                proxy,
                observed,
                udp_token,
            }
        }),
        endpoint().prop_map(|proxy| M::Unregister { proxy }),
        endpoints().prop_map(|held| M::Heartbeat { held }),
        Just(M::HeartbeatAck),
        endpoints().prop_map(|unknown| M::ReregisterRequest { unknown }),
        (proto(), addr(), addr(), proptest::option::of(addr()), realm, any::<u8>(), any::<u16>()).prop_map(
            |(proto, target, connector, connector_id, realm, f, port)| {
                let features = gcb::Features::from_bits(f);
                M::Connect {
                    proto,
                    target,
                    connector,
                    connector_id,
                    realm,
                    features,
                    // Sent with features only, so not generated without them.
                    asked_from_port: if features.is_empty() { 0 } else { port },
                }
            }
        ),
        decision().prop_map(M::ConnectDecision),
        command().prop_map(|(token, connector, peer, proxy)| M::ReverseConnect {
            token,
            connector,
            peer,
            proxy
        }),
        command().prop_map(|(token, broker, peer, proxy)| M::RelayConnect {
            token,
            broker,
            peer,
            proxy
        }),
        command().prop_map(|(token, target, peer, proxy)| M::MakeHole {
            token,
            target,
            peer,
            proxy
        }),
        (command(), any::<bool>()).prop_map(|((token, broker, peer, proxy), standby)| M::PunchConnect {
            token,
            broker,
            peer,
            proxy,
            standby
        }),
        command().prop_map(|(token, target, peer, proxy)| M::PunchHole {
            token,
            target,
            peer,
            proxy
        }),
        (token(), any::<u8>()).prop_map(|(token, c)| M::ConnectFailed {
            token,
            code: gcb::ErrorCode::from_wire(c)
        }),
        Just(M::Ack),
        (any::<u8>(), text(gcb::MAX_DETAIL_LEN)).prop_map(|(c, detail)| M::Error {
            code: gcb::ErrorCode::from_wire(c),
            detail
        }),
        token().prop_map(|token| M::Dummy { token }),
        token().prop_map(|token| M::DummyAck { token }),
        (addr(), addr(), token(), any::<bool>()).prop_map(|(proxy, peer, udp_token, open)| {
            M::UdpChannel {
                proxy,
                peer,
                udp_token,
                open,
            }
        }),
        (addr(), token()).prop_map(|(channel, token)| M::UdpChannelOk { channel, token }),
        (
            any::<u64>(),
            any::<u16>(),
            prop_oneof![Just(StatusFormat::Text), Just(StatusFormat::Json)]
        )
            .prop_map(|(snapshot, page, format)| M::StatusRequest {
                snapshot,
                page,
                format
            }),
        // Short chunks: the limit itself is checked by a unit test, and
        // 32 KiB strings would make every truncation property slow.
        (any::<u64>(), any::<u16>(), any::<u16>(), text(300)).prop_map(
            |(snapshot, page, pages, chunk)| M::StatusReply {
                snapshot,
                page,
                pages,
                chunk
            }
        ),
    ]
    .boxed()
}

pub fn dpf_message() -> BoxedStrategy<dpf::Message> {
    use dpf::{MappingKey, Message as M};
    let key = prop_oneof![
        addr().prop_map(MappingKey::Local),
        addr().prop_map(MappingKey::Public)
    ];
    prop_oneof![
        (proto(), addr(), any::<u16>(), proptest::option::of(addr())).prop_map(
            |(proto, local, mgmt_port, desired)| M::Forward {
                proto,
                local,
                mgmt_port,
                desired
            }
        ),
        addr().prop_map(|public| M::ForwardOk { public }),
        (proto(), key).prop_map(|(proto, key)| M::Delete { proto, key }),
        Just(M::DeleteOk),
        (proto(), addr()).prop_map(|(proto, public)| M::Query { proto, public }),
        addr().prop_map(|local| M::QueryOk { local }),
        Just(M::QueryNak),
        Just(M::Info),
        proptest::collection::vec(any::<[u8; 4]>(), 0..=dpf::MAX_PUBLIC_IPS).prop_map(|ips| M::InfoOk {
            public_ips: ips.into_iter().map(Into::into).collect()
        }),
        (any::<u8>(), text(dpf::MAX_DETAIL_LEN)).prop_map(|(c, detail)| M::Error {
            code: dpf::ErrorCode::from_wire(c),
            detail
        }),
    ]
    .boxed()
}

/// Bytes from a hex string with optional whitespace, for golden vectors.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}
