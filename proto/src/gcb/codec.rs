//! Byte layout of GCB datagrams: the kind numbers and each message's body.
//!
//! Kinds with the top bit set are replies. Bodies use the shared encodings of
//! `wire` (addresses are 6 bytes, options a 0/1 tag, strings u8-prefixed,
//! lists u8-counted) and must be consumed exactly: trailing bytes are an error.
//!
//! | kind | message           | body                                                        |
//! | ---: | ----------------- | ----------------------------------------------------------- |
//! | 0x01 | Register          | proto, local, opt realm, port wish, mgmt_local, u32 pid, u16 heartbeat_secs, program, [u8 features] |
//! | 0x02 | Unregister        | endpoint (proto + addr)                                     |
//! | 0x03 | Heartbeat         | u8 n, n × endpoint                                          |
//! | 0x04 | Connect           | proto, target, connector, opt connector_id, opt realm, [u8 features, u16 asked_from_port] |
//! | 0x05 | StatusRequest     | u64 snapshot, u16 page, u8 format (0 text, 1 json)          |
//! | 0x06 | UdpChannel        | proxy, peer, u64 udp_token, u8 open (0 close, 1 open)       |
//! | 0x11 | ReverseConnect    | u64 token, connector, peer, proxy                           |
//! | 0x12 | RelayConnect      | u64 token, broker, peer, proxy                              |
//! | 0x13 | MakeHole          | u64 token, target, peer, proxy                              |
//! | 0x14 | ConnectFailed     | u64 token, u8 code                                          |
//! | 0x15 | PunchConnect      | u64 token, broker, peer, proxy, [u8 standby = 1]            |
//! | 0x16 | PunchHole         | u64 token, target, peer, proxy                              |
//! | 0x21 | Dummy             | u64 token                                                   |
//! | 0x81 | RegisterOk        | proxy, observed, opt u64 udp_token                          |
//! | 0x82 | HeartbeatAck      | (empty)                                                     |
//! | 0x83 | ReregisterRequest | u8 n, n × endpoint                                          |
//! | 0x84 | ConnectDecision   | u8 tag: 1 Direct addr, 2 SameRealm addr, 3 Reversal token, 4 Relay via token, 5 NotRegistered, 6 PunchTcp via token, 7 PunchUdp via token listener_at, 8 PunchTcp (early) via token |
//! | 0x85 | Ack               | (empty)                                                     |
//! | 0x86 | DummyAck          | u64 token                                                   |
//! | 0x87 | StatusReply       | u64 snapshot, u16 page, u16 pages, u16-prefixed chunk       |
//! | 0x88 | UdpChannelOk      | channel, u64 token                                          |
//! | 0xff | Error             | u8 code, detail                                             |
//!
//! A *port wish* is an option tag with a third value: 0 none, 1 `u16` port
//! preferred, 2 `u16` port required (`port_required`).
//!
//! Fields in brackets are an optional *tail*, written only when the shim has
//! [`Features`](super::Features) to offer: without it a request is exactly
//! what an older shim sends, and a tail this broker reads is all or nothing.
//! `PunchConnect`'s tail is written only for a standby: its one byte is 1,
//! and no other value is read.

use super::features::Features;
use super::message::*;
use crate::common::{read_endpoints, write_endpoints, Endpoint, Proto};
use crate::header::{Family, Flags, Header};
use crate::wire::{DecodeError, EncodeError, Reader, Sink, Writer};
use std::net::SocketAddrV4;

mod read;
mod write;

use read::read_body;
use write::write_body;

/// Kind byte of each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Register = 0x01,
    Unregister = 0x02,
    Heartbeat = 0x03,
    Connect = 0x04,
    StatusRequest = 0x05,
    UdpChannel = 0x06,
    ReverseConnect = 0x11,
    RelayConnect = 0x12,
    MakeHole = 0x13,
    ConnectFailed = 0x14,
    PunchConnect = 0x15,
    PunchHole = 0x16,
    Dummy = 0x21,
    RegisterOk = 0x81,
    HeartbeatAck = 0x82,
    ReregisterRequest = 0x83,
    ConnectDecision = 0x84,
    Ack = 0x85,
    DummyAck = 0x86,
    StatusReply = 0x87,
    UdpChannelOk = 0x88,
    Error = 0xff,
}

impl Kind {
    const ALL: [Kind; 22] = [
        Kind::Register,
        Kind::Unregister,
        Kind::Heartbeat,
        Kind::Connect,
        Kind::StatusRequest,
        Kind::UdpChannel,
        Kind::ReverseConnect,
        Kind::RelayConnect,
        Kind::MakeHole,
        Kind::ConnectFailed,
        Kind::PunchConnect,
        Kind::PunchHole,
        Kind::Dummy,
        Kind::RegisterOk,
        Kind::HeartbeatAck,
        Kind::ReregisterRequest,
        Kind::ConnectDecision,
        Kind::Ack,
        Kind::DummyAck,
        Kind::StatusReply,
        Kind::UdpChannelOk,
        Kind::Error,
    ];

    pub fn from_wire(b: u8) -> Result<Kind, DecodeError> {
        Kind::ALL
            .into_iter()
            .find(|k| *k as u8 == b)
            .ok_or(DecodeError::UnknownKind(b))
    }

    /// Replies are exactly the kinds with the top bit set.
    pub const fn is_response(self) -> bool {
        self as u8 & 0x80 != 0
    }
}

impl Message {
    pub const fn kind(&self) -> Kind {
        match self {
            Message::Register { .. } => Kind::Register,
            Message::RegisterOk { .. } => Kind::RegisterOk,
            Message::Unregister { .. } => Kind::Unregister,
            Message::Heartbeat { .. } => Kind::Heartbeat,
            Message::HeartbeatAck => Kind::HeartbeatAck,
            Message::ReregisterRequest { .. } => Kind::ReregisterRequest,
            Message::Connect { .. } => Kind::Connect,
            Message::ConnectDecision(_) => Kind::ConnectDecision,
            Message::ReverseConnect { .. } => Kind::ReverseConnect,
            Message::RelayConnect { .. } => Kind::RelayConnect,
            Message::MakeHole { .. } => Kind::MakeHole,
            Message::ConnectFailed { .. } => Kind::ConnectFailed,
            Message::PunchConnect { .. } => Kind::PunchConnect,
            Message::PunchHole { .. } => Kind::PunchHole,
            Message::Ack => Kind::Ack,
            Message::Error { .. } => Kind::Error,
            Message::Dummy { .. } => Kind::Dummy,
            Message::DummyAck { .. } => Kind::DummyAck,
            Message::StatusRequest { .. } => Kind::StatusRequest,
            Message::StatusReply { .. } => Kind::StatusReply,
            Message::UdpChannel { .. } => Kind::UdpChannel,
            Message::UdpChannelOk { .. } => Kind::UdpChannelOk,
        }
    }
}

/// Encodes `msg` as a complete datagram with `request_id` in its header.
/// Fails only if a string or list exceeds its documented maximum.
pub fn encode(msg: &Message, request_id: u64) -> Result<Vec<u8>, EncodeError> {
    encode_into(msg, request_id, Vec::with_capacity(64))
}

/// Encodes into any sink, e.g. a [`SliceSink`](crate::wire::SliceSink) over a
/// stack buffer when the caller must not allocate.
pub fn encode_into<S: Sink>(msg: &Message, request_id: u64, sink: S) -> Result<S, EncodeError> {
    let flags = if msg.is_response() {
        Flags::RESPONSE
    } else {
        Flags::empty()
    };
    let mut w = Writer::new(sink);
    Header::new(Family::Gcb, msg.kind() as u8, flags, request_id).write(&mut w);
    write_body(&mut w, msg);
    w.finish()
}

/// Decodes a GCB datagram. Never panics; allocates at most what the input's
/// strings and lists actually contain.
pub fn decode(buf: &[u8]) -> Result<(Header, Message), DecodeError> {
    let (header, body) = Header::parse(buf, Family::Gcb)?;
    let kind = Kind::from_wire(header.kind)?;
    if header.flags.is_response() != kind.is_response() {
        return Err(DecodeError::BadFlags(header.flags.bits()));
    }
    let mut r = Reader::new(body);
    let msg = read_body(&mut r, kind)?;
    r.finish()?;
    Ok((header, msg))
}

fn write_token<S: Sink>(w: &mut Writer<S>, t: Token) {
    w.u64(t.0);
}

fn read_token(r: &mut Reader<'_>) -> Result<Token, DecodeError> {
    Ok(Token(r.u64()?))
}

/// Port wish tags (module docs).
const WISH_NONE: u8 = 0;
const WISH_PREFERRED: u8 = 1;
const WISH_REQUIRED: u8 = 2;

fn write_port_wish<S: Sink>(w: &mut Writer<S>, port: Option<u16>, required: bool) {
    match port {
        None => w.u8(WISH_NONE),
        Some(p) => {
            w.u8(if required { WISH_REQUIRED } else { WISH_PREFERRED });
            w.u16(p);
        }
    }
}

fn read_port_wish(r: &mut Reader<'_>) -> Result<(Option<u16>, bool), DecodeError> {
    match r.u8()? {
        WISH_NONE => Ok((None, false)),
        WISH_PREFERRED => Ok((Some(r.u16()?), false)),
        WISH_REQUIRED => Ok((Some(r.u16()?), true)),
        _ => Err(DecodeError::BadValue("port wish")),
    }
}
