//! Fixed-size preambles on TCP connections the shim and broker make to pair
//! a reversed or relayed connection. The shim writes and strips them; the
//! application's byte stream is never altered (docs/design.md, "Identities").
//!
//! [`StreamHello`], 16 bytes, is the first thing the dialing side sends: a
//! connector or listener dialing the broker's rendezvous (`Relay`,
//! `RelayConnect`), or a listener dialing a connector (`ReverseConnect`).
//!
//! | offset | size | field                                  |
//! | -----: | ---: | -------------------------------------- |
//! |      0 |    4 | magic `b"GCBH"`                        |
//! |      4 |    1 | version (1)                            |
//! |      5 |    1 | role: 1 connector, 2 listener          |
//! |      6 |    2 | reserved, zero                         |
//! |      8 |    8 | token, big-endian                      |
//!
//! [`StreamPeer`], 12 bytes, is the broker's answer on a rendezvous
//! connection, sent to each side once both have arrived (or at once, to a
//! side whose token is unknown, before closing). The listener side learns the
//! original peer for `getpeername`; the connector side learns the pairing
//! worked, and only then completes its `connect`. Nothing is sent back on a
//! reversed connection: the connector just checks the hello's token.
//!
//! | offset | size | field                                             |
//! | -----: | ---: | ------------------------------------------------- |
//! |      0 |    4 | magic `b"GCBP"`                                   |
//! |      4 |    1 | version (1)                                       |
//! |      5 |    1 | status: 0 paired, else a GCB error code           |
//! |      6 |    6 | peer address (paired), all zero otherwise         |
//!
//! Being fixed-size, a frame can be read exactly with `recv(MSG_WAITALL)`, or
//! incrementally from a non-blocking socket with [`FrameReader`], which never
//! consumes a byte past the frame.

use super::message::{ErrorCode, Token};
use crate::header::VERSION;
use crate::wire::{DecodeError, Reader, SliceSink, Writer};
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddrV4};

/// A fixed-size frame with its own magic.
pub trait Frame: Sized {
    /// Encoded length; at most [`MAX_FRAME_LEN`].
    const LEN: usize;
    const MAGIC: [u8; 4];

    /// Decodes the frame at the start of `buf`. Bytes after `LEN` belong to
    /// the application stream and are not examined.
    fn decode(buf: &[u8]) -> Result<Self, DecodeError>;
}

/// Largest frame [`FrameReader`] can hold (the punch frames' `PunchHello`
/// is the longest).
pub const MAX_FRAME_LEN: usize = 24;

/// Checks the magic on the bytes present and the length: foreign input is
/// `NotProtocol` as soon as one byte differs.
pub(super) fn frame_reader<'a, F: Frame>(buf: &'a [u8]) -> Result<Reader<'a>, DecodeError> {
    let n = buf.len().min(4);
    if buf[..n] != F::MAGIC[..n] {
        return Err(DecodeError::NotProtocol);
    }
    if buf.len() < F::LEN {
        return Err(DecodeError::Truncated);
    }
    let mut r = Reader::new(&buf[..F::LEN]);
    r.take(4)?;
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            version,
            kind: 0,
            request_id: 0,
        });
    }
    Ok(r)
}

/// Which side of a brokered connection sends a [`StreamHello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side whose application called `connect`.
    Connector,
    /// The side whose application listens (registered with the broker).
    Listener,
}

/// First bytes on a connection dialed to pair a brokered connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamHello {
    pub token: Token,
    pub role: Role,
}

impl StreamHello {
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut w = Writer::new(SliceSink::new(&mut out));
        w.bytes(&Self::MAGIC);
        w.u8(VERSION);
        w.u8(match self.role {
            Role::Connector => 1,
            Role::Listener => 2,
        });
        w.u16(0);
        w.u64(self.token.0);
        debug_assert!(w.finish().is_ok());
        out
    }
}

impl Frame for StreamHello {
    const LEN: usize = 16;
    const MAGIC: [u8; 4] = *b"GCBH";

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = frame_reader::<Self>(buf)?;
        let role = match r.u8()? {
            1 => Role::Connector,
            2 => Role::Listener,
            _ => return Err(DecodeError::BadValue("stream role")),
        };
        if r.u16()? != 0 {
            return Err(DecodeError::BadValue("stream hello reserved"));
        }
        Ok(StreamHello {
            token: Token(r.u64()?),
            role,
        })
    }
}

/// The broker's verdict on a rendezvous connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamPeer {
    /// Paired; application data follows. To the listener side `peer` is the
    /// original connector; to the connector side it is the listener's proxy
    /// address.
    Paired { peer: SocketAddrV4 },
    /// Not paired (`UnknownToken`, `LimitReached`, ...); the broker closes.
    Rejected { code: ErrorCode },
}

impl StreamPeer {
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        let mut w = Writer::new(SliceSink::new(&mut out));
        w.bytes(&Self::MAGIC);
        w.u8(VERSION);
        match self {
            StreamPeer::Paired { peer } => {
                w.u8(0);
                w.addr(peer);
            }
            StreamPeer::Rejected { code } => {
                // Code 0 means "paired", so a rejection can never say it.
                w.u8(code.wire().max(1));
                w.addr(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
            }
        }
        debug_assert!(w.finish().is_ok());
        out
    }
}

impl Frame for StreamPeer {
    const LEN: usize = 12;
    const MAGIC: [u8; 4] = *b"GCBP";

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = frame_reader::<Self>(buf)?;
        let status = r.u8()?;
        let addr = r.addr()?;
        if status == 0 {
            return Ok(StreamPeer::Paired { peer: addr });
        }
        if addr != SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0) {
            return Err(DecodeError::BadValue("stream peer address"));
        }
        Ok(StreamPeer::Rejected {
            code: ErrorCode::from_wire(status),
        })
    }
}

/// Accumulates one frame from a byte stream that may deliver it in pieces.
#[derive(Debug)]
pub struct FrameReader<F: Frame> {
    buf: [u8; MAX_FRAME_LEN],
    len: usize,
    _frame: PhantomData<F>,
}

impl<F: Frame> Default for FrameReader<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Frame> FrameReader<F> {
    pub fn new() -> Self {
        debug_assert!(F::LEN <= MAX_FRAME_LEN);
        Self {
            buf: [0; MAX_FRAME_LEN],
            len: 0,
            _frame: PhantomData,
        }
    }

    /// Bytes still needed: read at most this many so no application data is
    /// taken off the socket.
    pub fn missing(&self) -> usize {
        F::LEN.min(MAX_FRAME_LEN) - self.len
    }

    /// Takes bytes from `input` (at most [`missing`](Self::missing)) and
    /// returns how many it took and, once complete, the frame. A magic
    /// mismatch is reported as soon as the offending byte arrives. After a
    /// frame or an error, the reader must not be fed again.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<F>), DecodeError> {
        let take = self.missing().min(input.len());
        self.buf[self.len..self.len + take].copy_from_slice(&input[..take]);
        self.len += take;
        match F::decode(&self.buf[..self.len]) {
            Ok(frame) => Ok((take, Some(frame))),
            Err(DecodeError::Truncated) => Ok((take, None)),
            Err(e) => Err(e),
        }
    }
}
