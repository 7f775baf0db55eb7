//! PCP, the Port Control Protocol (RFC 6887), version 2: the common
//! header, the MAP and ANNOUNCE opcodes and the options a MAP client and a
//! gateway that maps only its requesters' own ports need.
//!
//! Request header (24 bytes): version u8 (2), R bit 0 and opcode (7 bits),
//! reserved u16, requested lifetime u32, the client's IP address (16 bytes,
//! IPv4 as an IPv4-mapped IPv6 address). Response header (24 bytes):
//! version, R bit 1 and opcode, reserved u8, result code u8, lifetime u32,
//! epoch time u32, reserved (12 bytes). MAP data (36 bytes, the same in
//! both directions): nonce (12 bytes), protocol u8, reserved (3 bytes),
//! internal port u16, suggested or assigned external port u16, suggested or
//! assigned external IP (16 bytes). ANNOUNCE has no data. Options follow
//! (see `options.rs`). Messages are at most [`MAX_LEN`] bytes and a
//! multiple of 4.
//!
//! The server side refuses the way §8.3 asks: too short to read (under 2
//! bytes) and responses are dropped; anything else that is wrong is
//! answered ([`RequestError::Answer`]), with a copy of the request as the
//! body of the error ([`encode_error_response`]), so the client can match
//! it to what it sent.

mod options;

pub use options::{Opt, OPTION_FILTER, OPTION_PREFER_FAILURE, OPTION_THIRD_PARTY};

use crate::wire::{DecodeError, Reader, Writer};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The version this module speaks.
pub const VERSION: u8 = 2;
/// Longest PCP message.
pub const MAX_LEN: usize = 1100;
/// Length of both common headers.
pub const HEADER_LEN: usize = 24;
/// Length of MAP's opcode data.
pub const MAP_LEN: usize = 36;
/// The R bit of the second byte: set in responses.
pub const RESPONSE_BIT: u8 = 0x80;
pub const OP_ANNOUNCE: u8 = 0;
pub const OP_MAP: u8 = 1;
pub const OP_PEER: u8 = 2;

/// PCP result codes (RFC 6887 §7.4). Unknown ones decode as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    Success,
    UnsuppVersion,
    NotAuthorized,
    MalformedRequest,
    UnsuppOpcode,
    UnsuppOption,
    MalformedOption,
    NetworkFailure,
    NoResources,
    UnsuppProtocol,
    UserExQuota,
    CannotProvideExternal,
    AddressMismatch,
    ExcessiveRemotePeers,
    Other(u8),
}

const CODES: [ResultCode; 14] = [
    ResultCode::Success,
    ResultCode::UnsuppVersion,
    ResultCode::NotAuthorized,
    ResultCode::MalformedRequest,
    ResultCode::UnsuppOpcode,
    ResultCode::UnsuppOption,
    ResultCode::MalformedOption,
    ResultCode::NetworkFailure,
    ResultCode::NoResources,
    ResultCode::UnsuppProtocol,
    ResultCode::UserExQuota,
    ResultCode::CannotProvideExternal,
    ResultCode::AddressMismatch,
    ResultCode::ExcessiveRemotePeers,
];

impl ResultCode {
    /// Every code the RFC defines, in wire order.
    pub const ALL: [ResultCode; 14] = CODES;

    pub fn wire(self) -> u8 {
        match self {
            ResultCode::Other(c) => c,
            known => CODES.iter().position(|c| *c == known).expect("listed") as u8,
        }
    }

    pub fn from_wire(c: u8) -> Self {
        CODES
            .get(usize::from(c))
            .copied()
            .unwrap_or(ResultCode::Other(c))
    }

    /// The RFC's name, e.g. `NOT_AUTHORIZED`.
    pub const fn name(self) -> &'static str {
        match self {
            ResultCode::Success => "SUCCESS",
            ResultCode::UnsuppVersion => "UNSUPP_VERSION",
            ResultCode::NotAuthorized => "NOT_AUTHORIZED",
            ResultCode::MalformedRequest => "MALFORMED_REQUEST",
            ResultCode::UnsuppOpcode => "UNSUPP_OPCODE",
            ResultCode::UnsuppOption => "UNSUPP_OPTION",
            ResultCode::MalformedOption => "MALFORMED_OPTION",
            ResultCode::NetworkFailure => "NETWORK_FAILURE",
            ResultCode::NoResources => "NO_RESOURCES",
            ResultCode::UnsuppProtocol => "UNSUPP_PROTOCOL",
            ResultCode::UserExQuota => "USER_EX_QUOTA",
            ResultCode::CannotProvideExternal => "CANNOT_PROVIDE_EXTERNAL",
            ResultCode::AddressMismatch => "ADDRESS_MISMATCH",
            ResultCode::ExcessiveRemotePeers => "EXCESSIVE_REMOTE_PEERS",
            ResultCode::Other(_) => "OTHER",
        }
    }

    /// A short-lifetime error (§7.4): the same request may succeed soon,
    /// so the error's lifetime tells the client when to try again.
    pub const fn is_short_lived(self) -> bool {
        matches!(
            self,
            ResultCode::NetworkFailure | ResultCode::NoResources | ResultCode::UserExQuota
        )
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PCP {} ({})", self.name(), self.wire())
    }
}

/// IPv4 as PCP carries it: the IPv4-mapped IPv6 address.
pub fn mapped(ip: Ipv4Addr) -> Ipv6Addr {
    ip.to_ipv6_mapped()
}

/// The IPv4 address inside an IPv4-mapped IPv6 address.
pub fn unmapped(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    ip.to_ipv4_mapped()
}

/// Whether a suggested external address means "no preference": the
/// all-zeros address of either family.
pub fn is_unspecified(ip: Ipv6Addr) -> bool {
    ip.is_unspecified() || ip == mapped(Ipv4Addr::UNSPECIFIED)
}

/// MAP's opcode data, the same layout in requests and responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MapData {
    /// Chosen at random by the client; a mapping answers only its nonce.
    pub nonce: [u8; 12],
    /// IANA protocol number: 6 TCP, 17 UDP, 0 all.
    pub protocol: u8,
    pub internal_port: u16,
    /// Suggested (request) or assigned (response); 0 for no preference.
    pub external_port: u16,
    /// Suggested (request) or assigned (response).
    pub external_ip: Ipv6Addr,
}

impl MapData {
    fn write(&self, w: &mut Writer<Vec<u8>>) {
        w.bytes(&self.nonce);
        w.u8(self.protocol);
        w.bytes(&[0; 3]);
        w.u16(self.internal_port);
        w.u16(self.external_port);
        w.bytes(&self.external_ip.octets());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let nonce = r.array::<12>()?;
        let protocol = r.u8()?;
        let _reserved = r.array::<3>()?;
        Ok(MapData {
            nonce,
            protocol,
            internal_port: r.u16()?,
            external_port: r.u16()?,
            external_ip: Ipv6Addr::from(r.array::<16>()?),
        })
    }
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    pub opcode: u8,
    /// Seconds; 0 deletes (MAP) and is what ANNOUNCE sends.
    pub lifetime: u32,
    /// The address the client sends from, as it sees it.
    pub client: Ipv6Addr,
    /// Present exactly when `opcode` is [`OP_MAP`].
    pub map: Option<MapData>,
    pub options: Vec<Opt>,
}

/// A server's response, or an unsolicited ANNOUNCE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Response {
    /// The version the server speaks (its highest, in UNSUPP_VERSION).
    pub version: u8,
    pub opcode: u8,
    pub result: ResultCode,
    /// The mapping's lifetime; for errors, how long the error holds.
    pub lifetime: u32,
    /// Seconds since the server's mapping state began (§8.5).
    pub epoch: u32,
    /// MAP data, when the opcode is MAP and the body holds it.
    pub map: Option<MapData>,
    pub options: Vec<Opt>,
}

/// Why a server does not execute a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Dropped silently: shorter than 2 bytes, or a response.
    Drop(DecodeError),
    /// Answered with this result code and a copy of the request.
    Answer(ResultCode),
}

impl RequestError {
    /// The decode class a refusal is counted under.
    pub fn class(&self) -> DecodeError {
        match self {
            RequestError::Drop(e) => e.clone(),
            RequestError::Answer(ResultCode::UnsuppVersion) => DecodeError::UnsupportedVersion {
                version: 0,
                kind: 0,
                request_id: 0,
            },
            RequestError::Answer(_) => DecodeError::BadValue("pcp request"),
        }
    }
}

fn check_length(len: usize) -> Result<(), ResultCode> {
    match !(HEADER_LEN..=MAX_LEN).contains(&len) || len & 3 != 0 {
        true => Err(ResultCode::MalformedRequest),
        false => Ok(()),
    }
}

pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(HEADER_LEN + MAP_LEN + 8));
    w.u8(VERSION);
    w.u8(req.opcode & !RESPONSE_BIT);
    w.u16(0);
    w.u32(req.lifetime);
    w.bytes(&req.client.octets());
    if let Some(m) = &req.map {
        m.write(&mut w);
    }
    options::write_all(&mut w, &req.options);
    w.finish().expect("a Vec never fills")
}

/// Decodes a request as a server receives it; opcodes other than MAP and
/// ANNOUNCE are answered UNSUPP_OPCODE.
pub fn decode_request(buf: &[u8]) -> Result<Request, RequestError> {
    if buf.len() < 2 {
        return Err(RequestError::Drop(DecodeError::Truncated));
    }
    if buf[1] & RESPONSE_BIT != 0 {
        return Err(RequestError::Drop(DecodeError::BadFlags(buf[1])));
    }
    if buf[0] != VERSION {
        return Err(RequestError::Answer(ResultCode::UnsuppVersion));
    }
    check_length(buf.len()).map_err(RequestError::Answer)?;
    let opcode = buf[1];
    if opcode != OP_MAP && opcode != OP_ANNOUNCE {
        return Err(RequestError::Answer(ResultCode::UnsuppOpcode));
    }
    let mut r = Reader::new(&buf[4..]);
    let malformed = |_| RequestError::Answer(ResultCode::MalformedRequest);
    let lifetime = r.u32().map_err(malformed)?;
    let client = Ipv6Addr::from(r.array::<16>().map_err(malformed)?);
    let map = match opcode {
        OP_MAP => Some(MapData::read(&mut r).map_err(malformed)?),
        _ => None,
    };
    let options = options::read_request(&mut r, opcode).map_err(RequestError::Answer)?;
    Ok(Request {
        opcode,
        lifetime,
        client,
        map,
        options,
    })
}

/// Encodes a response (the reserved fields zero).
pub fn encode_response(resp: &Response) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(HEADER_LEN + MAP_LEN));
    w.u8(resp.version);
    w.u8(RESPONSE_BIT | resp.opcode);
    w.u8(0);
    w.u8(resp.result.wire());
    w.u32(resp.lifetime);
    w.u32(resp.epoch);
    w.bytes(&[0; 12]);
    if let Some(m) = &resp.map {
        m.write(&mut w);
    }
    options::write_all(&mut w, &resp.options);
    w.finish().expect("a Vec never fills")
}

/// A server's answer to a request it will not execute: the request copied
/// (cut to [`MAX_LEN`], padded with zeros to a multiple of 4 and to at
/// least the header) with the response header written over its first 24
/// bytes (§8.3). UNSUPP_VERSION carries this server's version.
pub fn encode_error_response(
    request: &[u8],
    result: ResultCode,
    lifetime: u32,
    epoch: u32,
) -> Vec<u8> {
    let mut out = request[..request.len().min(MAX_LEN)].to_vec();
    let padded = out.len().next_multiple_of(4).max(HEADER_LEN);
    out.resize(padded, 0);
    let opcode = request.get(1).copied().unwrap_or(0) & !RESPONSE_BIT;
    let version = match result {
        ResultCode::UnsuppVersion => VERSION,
        _ => request.first().copied().unwrap_or(VERSION),
    };
    out[0] = version;
    out[1] = RESPONSE_BIT | opcode;
    out[2] = 0;
    out[3] = result.wire();
    out[4..8].copy_from_slice(&lifetime.to_be_bytes());
    out[8..12].copy_from_slice(&epoch.to_be_bytes());
    out[12..24].fill(0);
    out
}

/// Decodes a response as a client receives it. A MAP response whose body
/// is too short for MAP data (an error about a malformed request) decodes
/// with `map: None`; options in responses are read but not judged, and an
/// error's unreadable options are left out.
pub fn decode_response(buf: &[u8]) -> Result<Response, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    if buf.len() > MAX_LEN || buf.len() & 3 != 0 {
        return Err(DecodeError::TrailingBytes(buf.len() % 4));
    }
    if buf[1] & RESPONSE_BIT == 0 {
        return Err(DecodeError::BadFlags(buf[1]));
    }
    let mut r = Reader::new(buf);
    let version = r.u8()?;
    let opcode = r.u8()? & !RESPONSE_BIT;
    let _reserved = r.u8()?;
    let result = ResultCode::from_wire(r.u8()?);
    let lifetime = r.u32()?;
    let epoch = r.u32()?;
    let _reserved = r.array::<12>()?;
    let map = match opcode == OP_MAP && r.remaining() >= MAP_LEN {
        true => Some(MapData::read(&mut r)?),
        false => None,
    };
    if opcode == OP_MAP && map.is_none() && result == ResultCode::Success {
        return Err(DecodeError::Truncated);
    }
    // An error's body is a copy of whatever the client sent; only a
    // success must parse.
    let options = match options::read_any(&mut r) {
        Ok(o) => o,
        Err(e) if result == ResultCode::Success => return Err(e),
        Err(_) => Vec::new(),
    };
    Ok(Response {
        version,
        opcode,
        result,
        lifetime,
        epoch,
        map,
        options,
    })
}

#[cfg(test)]
mod tests;
