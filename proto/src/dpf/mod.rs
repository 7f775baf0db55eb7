//! DPF (Dynamic Port Forwarding) requests and replies, paper section 3.
//!
//! A shim-loaded client inside the private network talks to `dpfd` on its NAT
//! gateway over UDP, with the same `header` (magic `b"DPF1"`) and the same
//! reliable layer (`rudp`) as GCB. Every request gets exactly one reply with
//! the same request id.
//!
//! | kind | message   | body                                              |
//! | ---: | --------- | ------------------------------------------------- |
//! | 0x01 | Forward   | proto, local, u16 mgmt_port, opt desired public   |
//! | 0x02 | Delete    | proto, u8 key tag (1 local, 2 public), addr       |
//! | 0x03 | Query     | proto, public                                     |
//! | 0x04 | Info      | (empty)                                           |
//! | 0x81 | ForwardOk | public                                            |
//! | 0x82 | DeleteOk  | (empty)                                           |
//! | 0x83 | QueryOk   | local                                             |
//! | 0x84 | QueryNak  | (empty)                                           |
//! | 0x85 | InfoOk    | u8 n, n × u32 public IP                           |
//! | 0xff | Error     | u8 code, u8-prefixed detail (≤ 200 bytes)         |

use crate::common::Proto;
use crate::header::{Family, Flags, Header};
use crate::wire::{truncate_str, DecodeError, EncodeError, Reader, Sink, Writer};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Longest human-readable detail in an error reply, in bytes.
pub const MAX_DETAIL_LEN: usize = 200;
/// Most public IPs in one `InfoOk`.
pub const MAX_PUBLIC_IPS: usize = 64;

/// Which side of a mapping a `Delete` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MappingKey {
    /// The private address the rule forwards to (what the client knows best).
    Local(SocketAddrV4),
    /// The public address the rule forwards from.
    Public(SocketAddrV4),
}

/// Why `dpfd` refused a request. Unknown codes decode as [`ErrorCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Refused by policy, e.g. the request came from the public side.
    Refused,
    /// The local address is not the host the request came from: `dpfd`
    /// forwards only to the requester itself.
    NotLocal,
    /// The desired public port is outside `--port-range`, or the desired
    /// public IP is not one of `--public-ip`.
    PortOutOfRange,
    /// No free public port, or the host's share of them is used up.
    Quota,
    /// The desired public address is already forwarded elsewhere, to a client
    /// that still answers its probe.
    Exists,
    /// `Delete` named a mapping that does not exist (the client may ignore it).
    NotFound,
    /// The request was well-formed but made no sense (e.g. a zero port).
    BadRequest,
    /// Authentication was required and missing or wrong.
    Unauthorized,
    /// The request's version is not spoken here.
    VersionMismatch,
    /// `dpfd` failed itself, e.g. the nftables update or mirror file write.
    Internal,
    /// A code newer than this build.
    Other(u8),
}

impl ErrorCode {
    pub const fn wire(self) -> u8 {
        match self {
            ErrorCode::Refused => 1,
            ErrorCode::NotLocal => 2,
            ErrorCode::PortOutOfRange => 3,
            ErrorCode::Quota => 4,
            ErrorCode::Exists => 5,
            ErrorCode::NotFound => 6,
            ErrorCode::BadRequest => 7,
            ErrorCode::Unauthorized => 8,
            ErrorCode::VersionMismatch => 9,
            ErrorCode::Internal => 10,
            ErrorCode::Other(c) => c,
        }
    }

    pub const fn from_wire(c: u8) -> Self {
        match c {
            1 => ErrorCode::Refused,
            2 => ErrorCode::NotLocal,
            3 => ErrorCode::PortOutOfRange,
            4 => ErrorCode::Quota,
            5 => ErrorCode::Exists,
            6 => ErrorCode::NotFound,
            7 => ErrorCode::BadRequest,
            8 => ErrorCode::Unauthorized,
            9 => ErrorCode::VersionMismatch,
            10 => ErrorCode::Internal,
            c => ErrorCode::Other(c),
        }
    }
}

/// One DPF datagram body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// Client → dpfd, right after the application binds a UDP socket or
    /// listens on a TCP socket. dpfd installs `public → local` (mapping table,
    /// mirror file, kernel, in that order) and answers `ForwardOk`. A request
    /// for a mapping that already exists reuses it, so retries and re-requests
    /// are harmless. dpfd probes liveness with a TCP connect to `mgmt_port` on
    /// the requester's IP, a passive socket the client keeps open as long as
    /// the forwarded socket lives.
    Forward {
        proto: Proto,
        local: SocketAddrV4,
        mgmt_port: u16,
        /// The public address the client would like (its old one, or one it
        /// advertised); dpfd picks a free one when `None`.
        desired: Option<SocketAddrV4>,
    },
    /// dpfd → client: the public address to report as the socket's name.
    ForwardOk { public: SocketAddrV4 },
    /// Client → dpfd, when the socket is closed or made active (`connect`).
    /// dpfd removes the mapping (table, kernel, mirror file) and answers
    /// `DeleteOk`, or `Error{NotFound}`.
    Delete { proto: Proto, key: MappingKey },
    /// dpfd → client, reply to `Delete`.
    DeleteOk,
    /// Client → dpfd, before connecting to or sending to a public address:
    /// is it one of ours? Answered from the mapping table.
    Query { proto: Proto, public: SocketAddrV4 },
    /// dpfd → client: `public` forwards to `local`; dial that directly.
    QueryOk { local: SocketAddrV4 },
    /// dpfd → client: `public` is not forwarded by this dpfd; dial it as is.
    QueryNak,
    /// Client → dpfd: which public IPs do you forward from? Asked when an
    /// application binds a socket to an address that is not local, to tell
    /// one of dpfd's public addresses (which it advertised, and which the
    /// shim then forwards) from a mistake (which fails as the kernel says).
    Info,
    /// dpfd → client, reply to `Info`: its `--public-ip` addresses.
    InfoOk { public_ips: Vec<Ipv4Addr> },
    /// dpfd → client, failure reply to any request.
    Error { code: ErrorCode, detail: String },
}

/// Kind byte of each message; replies have the top bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Forward = 0x01,
    Delete = 0x02,
    Query = 0x03,
    Info = 0x04,
    ForwardOk = 0x81,
    DeleteOk = 0x82,
    QueryOk = 0x83,
    QueryNak = 0x84,
    InfoOk = 0x85,
    Error = 0xff,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::Forward,
        Kind::Delete,
        Kind::Query,
        Kind::Info,
        Kind::ForwardOk,
        Kind::DeleteOk,
        Kind::QueryOk,
        Kind::QueryNak,
        Kind::InfoOk,
        Kind::Error,
    ];

    pub fn from_wire(b: u8) -> Result<Kind, DecodeError> {
        Kind::ALL
            .into_iter()
            .find(|k| *k as u8 == b)
            .ok_or(DecodeError::UnknownKind(b))
    }

    pub const fn is_response(self) -> bool {
        self as u8 & 0x80 != 0
    }
}

impl Message {
    pub const fn kind(&self) -> Kind {
        match self {
            Message::Forward { .. } => Kind::Forward,
            Message::ForwardOk { .. } => Kind::ForwardOk,
            Message::Delete { .. } => Kind::Delete,
            Message::DeleteOk => Kind::DeleteOk,
            Message::Query { .. } => Kind::Query,
            Message::QueryOk { .. } => Kind::QueryOk,
            Message::QueryNak => Kind::QueryNak,
            Message::Info => Kind::Info,
            Message::InfoOk { .. } => Kind::InfoOk,
            Message::Error { .. } => Kind::Error,
        }
    }

    pub const fn is_response(&self) -> bool {
        self.kind().is_response()
    }

    /// An error reply; `detail` is cut to [`MAX_DETAIL_LEN`] bytes so the
    /// reply always encodes.
    pub fn error(code: ErrorCode, detail: &str) -> Self {
        let detail = truncate_str(detail, MAX_DETAIL_LEN).to_owned();
        Message::Error { code, detail }
    }
}

/// Encodes `msg` as a complete datagram with `request_id` in its header.
/// Fails only if the error detail exceeds [`MAX_DETAIL_LEN`].
pub fn encode(msg: &Message, request_id: u64) -> Result<Vec<u8>, EncodeError> {
    encode_into(msg, request_id, Vec::with_capacity(32))
}

/// Encodes into any sink, e.g. a stack buffer.
pub fn encode_into<S: Sink>(msg: &Message, request_id: u64, sink: S) -> Result<S, EncodeError> {
    let flags = if msg.is_response() {
        Flags::RESPONSE
    } else {
        Flags::empty()
    };
    let mut w = Writer::new(sink);
    Header::new(Family::Dpf, msg.kind() as u8, flags, request_id).write(&mut w);
    match msg {
        Message::Forward {
            proto,
            local,
            mgmt_port,
            desired,
        } => {
            proto.write(&mut w);
            w.addr(local);
            w.u16(*mgmt_port);
            w.opt_addr(desired);
        }
        Message::ForwardOk { public: a } | Message::QueryOk { local: a } => w.addr(a),
        Message::Delete { proto, key } => {
            proto.write(&mut w);
            let (tag, addr) = match key {
                MappingKey::Local(a) => (1, a),
                MappingKey::Public(a) => (2, a),
            };
            w.u8(tag);
            w.addr(addr);
        }
        Message::Query { proto, public } => {
            proto.write(&mut w);
            w.addr(public);
        }
        Message::DeleteOk | Message::QueryNak | Message::Info => {}
        Message::InfoOk { public_ips } => {
            if w.count8(public_ips.len(), MAX_PUBLIC_IPS, "public IPs") {
                for ip in public_ips {
                    w.bytes(&ip.octets());
                }
            }
        }
        Message::Error { code, detail } => {
            w.u8(code.wire());
            w.str8(detail, MAX_DETAIL_LEN, "error detail");
        }
    }
    w.finish()
}

/// Decodes a DPF datagram. Never panics; allocates at most the detail string.
pub fn decode(buf: &[u8]) -> Result<(Header, Message), DecodeError> {
    let (header, body) = Header::parse(buf, Family::Dpf)?;
    let kind = Kind::from_wire(header.kind)?;
    if header.flags.is_response() != kind.is_response() {
        return Err(DecodeError::BadFlags(header.flags.bits()));
    }
    let mut r = Reader::new(body);
    let msg = match kind {
        Kind::Forward => Message::Forward {
            proto: Proto::read(&mut r)?,
            local: r.addr()?,
            mgmt_port: r.u16()?,
            desired: r.opt_addr()?,
        },
        Kind::ForwardOk => Message::ForwardOk { public: r.addr()? },
        Kind::Delete => {
            let proto = Proto::read(&mut r)?;
            let key = match r.u8()? {
                1 => MappingKey::Local(r.addr()?),
                2 => MappingKey::Public(r.addr()?),
                _ => return Err(DecodeError::BadValue("mapping key")),
            };
            Message::Delete { proto, key }
        }
        Kind::DeleteOk => Message::DeleteOk,
        Kind::Query => Message::Query {
            proto: Proto::read(&mut r)?,
            public: r.addr()?,
        },
        Kind::QueryOk => Message::QueryOk { local: r.addr()? },
        Kind::QueryNak => Message::QueryNak,
        Kind::Info => Message::Info,
        Kind::InfoOk => {
            let n = r.count8(MAX_PUBLIC_IPS, 4, "public IPs")?;
            let mut public_ips = Vec::with_capacity(n);
            for _ in 0..n {
                public_ips.push(Ipv4Addr::from(r.array::<4>()?));
            }
            Message::InfoOk { public_ips }
        }
        Kind::Error => Message::Error {
            code: ErrorCode::from_wire(r.u8()?),
            detail: r.str8(MAX_DETAIL_LEN, "error detail")?,
        },
    };
    r.finish()?;
    Ok((header, msg))
}

#[cfg(test)]
mod tests;
