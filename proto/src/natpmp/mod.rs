//! NAT-PMP (RFC 6886): the port mapping protocol PCP grew out of, still
//! spoken by many gateways and by Debian's `natpmpc`.
//!
//! All integers are big-endian. A request is sent to UDP port
//! [`SERVER_PORT`] of the gateway; the gateway announces a restart to
//! 224.0.0.1:[`ANNOUNCE_PORT`] with an unsolicited public-address response.
//!
//! | message                 | bytes | layout                                                     |
//! | ----------------------- | ----: | ---------------------------------------------------------- |
//! | public-address request  |     2 | version 0, opcode 0                                        |
//! | mapping request         |    12 | version 0, opcode 1 (UDP) or 2 (TCP), reserved u16, internal port u16, suggested external port u16, requested lifetime u32 |
//! | response header         |     8 | version 0, opcode 128 + request opcode, result u16, seconds since start of epoch u32 |
//! | public-address response |    12 | header, then the external IPv4 address                    |
//! | mapping response        |    16 | header, then internal port u16, mapped external port u16, lifetime u32 |
//!
//! A lifetime of 0 deletes the mapping of the internal port (and with
//! internal port 0, every mapping of the host for that protocol). Error
//! responses are the bare 8-byte header when the request could not be
//! understood (unsupported version or opcode) and full-length otherwise.
//!
//! Decoding is strict about lengths, so the encoding is canonical up to the
//! reserved field, which is ignored on receipt as the RFC asks.

use crate::common::Proto;
use crate::wire::{DecodeError, Reader, Writer};
use std::fmt;
use std::net::Ipv4Addr;

/// The gateway's port for requests (shared with PCP).
pub const SERVER_PORT: u16 = 5351;
/// The clients' port for the gateway's multicast restart announcements.
pub const ANNOUNCE_PORT: u16 = 5350;
/// The only NAT-PMP version.
pub const VERSION: u8 = 0;
/// Set in the opcode of every response.
pub const RESPONSE_BIT: u8 = 0x80;
/// Opcode of the public-address request.
pub const OP_PUBLIC_ADDRESS: u8 = 0;
/// Length of a response that is only the header.
pub const HEADER_LEN: usize = 8;

/// NAT-PMP result codes (RFC 6886 §3.5). Unknown ones decode as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    Success,
    UnsupportedVersion,
    /// Not authorized or refused (e.g. mappings disabled by policy).
    NotAuthorized,
    /// The gateway itself has no working external address.
    NetworkFailure,
    /// No free ports, or the host's share of them is used up.
    OutOfResources,
    UnsupportedOpcode,
    Other(u16),
}

impl ResultCode {
    pub const fn wire(self) -> u16 {
        match self {
            ResultCode::Success => 0,
            ResultCode::UnsupportedVersion => 1,
            ResultCode::NotAuthorized => 2,
            ResultCode::NetworkFailure => 3,
            ResultCode::OutOfResources => 4,
            ResultCode::UnsupportedOpcode => 5,
            ResultCode::Other(c) => c,
        }
    }

    pub const fn from_wire(c: u16) -> Self {
        match c {
            0 => ResultCode::Success,
            1 => ResultCode::UnsupportedVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::NetworkFailure,
            4 => ResultCode::OutOfResources,
            5 => ResultCode::UnsupportedOpcode,
            c => ResultCode::Other(c),
        }
    }

    /// The name operators see in logs and counters.
    pub const fn name(self) -> &'static str {
        match self {
            ResultCode::Success => "success",
            ResultCode::UnsupportedVersion => "unsupported_version",
            ResultCode::NotAuthorized => "not_authorized",
            ResultCode::NetworkFailure => "network_failure",
            ResultCode::OutOfResources => "out_of_resources",
            ResultCode::UnsupportedOpcode => "unsupported_opcode",
            ResultCode::Other(_) => "other",
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NAT-PMP {} ({})", self.name(), self.wire())
    }
}

/// The opcode of a mapping request for `proto`.
pub const fn map_opcode(proto: Proto) -> u8 {
    match proto {
        Proto::Udp => 1,
        Proto::Tcp => 2,
    }
}

fn proto_of(opcode: u8) -> Option<Proto> {
    match opcode {
        1 => Some(Proto::Udp),
        2 => Some(Proto::Tcp),
        _ => None,
    }
}

/// A client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    PublicAddress,
    Map {
        proto: Proto,
        internal_port: u16,
        /// 0 for no preference (and always 0 in a delete).
        suggested_port: u16,
        /// Seconds; 0 deletes.
        lifetime: u32,
    },
}

/// What a response carries after its 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    /// Nothing: an error about a request that could not be understood.
    None,
    PublicAddress(Ipv4Addr),
    Map {
        internal_port: u16,
        external_port: u16,
        lifetime: u32,
    },
}

/// A gateway's response, or its unsolicited restart announcement (a
/// public-address response nobody asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Response {
    /// The opcode of the request answered, without the response bit.
    pub opcode: u8,
    pub result: ResultCode,
    /// Seconds since the gateway's mapping table was (re)initialised.
    pub epoch: u32,
    pub body: Body,
}

/// Why a request was not executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Dropped without an answer: too short, a response, or a length that
    /// fits no request.
    Drop(DecodeError),
    /// Answered with a bare header carrying `result`.
    Answer { opcode: u8, result: ResultCode },
}

pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(12));
    w.u8(VERSION);
    match *req {
        Request::PublicAddress => w.u8(OP_PUBLIC_ADDRESS),
        Request::Map {
            proto,
            internal_port,
            suggested_port,
            lifetime,
        } => {
            w.u8(map_opcode(proto));
            w.u16(0);
            w.u16(internal_port);
            w.u16(suggested_port);
            w.u32(lifetime);
        }
    }
    w.finish().expect("a Vec never fills")
}

/// Decodes a request as a gateway receives it (the version byte is 0, or
/// the caller would have handed the datagram to PCP).
pub fn decode_request(buf: &[u8]) -> Result<Request, RequestError> {
    let drop = |e| Err(RequestError::Drop(e));
    if buf.len() < 2 {
        return drop(DecodeError::Truncated);
    }
    let opcode = buf[1];
    if opcode & RESPONSE_BIT != 0 {
        return drop(DecodeError::BadFlags(opcode));
    }
    if buf[0] != VERSION {
        return Err(RequestError::Answer {
            opcode,
            result: ResultCode::UnsupportedVersion,
        });
    }
    let want = match opcode {
        OP_PUBLIC_ADDRESS => 2,
        1 | 2 => 12,
        _ => {
            return Err(RequestError::Answer {
                opcode,
                result: ResultCode::UnsupportedOpcode,
            })
        }
    };
    if buf.len() < want {
        return drop(DecodeError::Truncated);
    }
    if buf.len() > want {
        return drop(DecodeError::TrailingBytes(buf.len() - want));
    }
    let Some(proto) = proto_of(opcode) else {
        return Ok(Request::PublicAddress);
    };
    let mut r = Reader::new(&buf[2..]);
    let map = (|| {
        let _reserved = r.u16()?;
        Ok(Request::Map {
            proto,
            internal_port: r.u16()?,
            suggested_port: r.u16()?,
            lifetime: r.u32()?,
        })
    })();
    map.map_err(RequestError::Drop)
}

/// Encodes a response. A `Body::None` response is the bare header.
pub fn encode_response(resp: &Response) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(16));
    w.u8(VERSION);
    w.u8(RESPONSE_BIT | (resp.opcode & !RESPONSE_BIT));
    w.u16(resp.result.wire());
    w.u32(resp.epoch);
    match resp.body {
        Body::None => {}
        Body::PublicAddress(ip) => w.bytes(&ip.octets()),
        Body::Map {
            internal_port,
            external_port,
            lifetime,
        } => {
            w.u16(internal_port);
            w.u16(external_port);
            w.u32(lifetime);
        }
    }
    w.finish().expect("a Vec never fills")
}

/// Decodes a response as a client receives it. The length must be the
/// header alone or exactly the opcode's full response.
pub fn decode_response(buf: &[u8]) -> Result<Response, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    if buf[0] != VERSION {
        return Err(DecodeError::NotProtocol);
    }
    if buf[1] & RESPONSE_BIT == 0 {
        return Err(DecodeError::BadFlags(buf[1]));
    }
    let opcode = buf[1] & !RESPONSE_BIT;
    let mut r = Reader::new(&buf[2..]);
    let result = ResultCode::from_wire(r.u16()?);
    let epoch = r.u32()?;
    let body = if r.remaining() == 0 {
        Body::None
    } else if opcode == OP_PUBLIC_ADDRESS {
        Body::PublicAddress(Ipv4Addr::from(r.array::<4>()?))
    } else if proto_of(opcode).is_some() {
        Body::Map {
            internal_port: r.u16()?,
            external_port: r.u16()?,
            lifetime: r.u32()?,
        }
    } else {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    };
    r.finish()?;
    Ok(Response {
        opcode,
        result,
        epoch,
        body,
    })
}

impl Response {
    /// The protocol of a mapping response.
    pub fn proto(&self) -> Option<Proto> {
        proto_of(self.opcode)
    }
}

#[cfg(test)]
mod tests;
