//! The frames of a hole-punched TCP connection (docs/hole-punching.md), in
//! the style of the rendezvous preambles (`stream`): fixed size, a magic of
//! their own, the protocol version, reserved bytes zero.
//!
//! [`PunchHello`], 22 bytes: each side → broker, first thing on its
//! rendezvous connection, with the token. The same layout, as
//! [`PeerHello`](super::PeerHello), is each side's first thing to the other on
//! the punched connection, where the field holds the sender's proof instead
//! (`proof`): the token itself never goes there.
//!
//! | offset | size | field                                                |
//! | -----: | ---: | ---------------------------------------------------- |
//! |      0 |    4 | magic `b"GCBJ"`                                      |
//! |      4 |    1 | version (1)                                          |
//! |      5 |    1 | role: 1 connector, 2 listener                        |
//! |      6 |    1 | flags: bit 0 early (a peer hello: zero)              |
//! |      7 |    1 | reserved, zero                                       |
//! |      8 |    8 | token, big-endian (a peer hello: the sender's proof; |
//! |        |      | an early hello: its `Connect`'s request id)          |
//! |     16 |    6 | the sender socket's local address                    |
//!
//! [`PunchGo`], 18 bytes: broker → each side once both are in.
//!
//! | offset | size | field                                          |
//! | -----: | ---: | ---------------------------------------------- |
//! |      0 |    4 | magic `b"GCBG"`                                |
//! |      4 |    1 | version (1)                                    |
//! |      5 |    1 | flags: bit 0 commit (to a listener, below)     |
//! |      6 |    6 | peer: the other side's mapping, to dial        |
//! |     12 |    4 | delay before the first SYN, microseconds       |
//! |     16 |    2 | budget, milliseconds (at least 1)              |
//!
//! [`PunchReport`], 8 bytes: each side → broker, once.
//!
//! | offset | size | field                                              |
//! | -----: | ---: | -------------------------------------------------- |
//! |      0 |    4 | magic `b"GCBR"`                                    |
//! |      4 |    1 | version (1)                                        |
//! |      5 |    1 | outcome: 0 punched, else a [`PunchFailure`] code   |
//! |      6 |    2 | reserved, zero                                     |
//!
//! [`PunchVerdict`], 14 bytes: broker → each side, once; instead of
//! `PunchGo` when the broker does not punch after all, or after the reports.
//!
//! | offset | size | field                                                   |
//! | -----: | ---: | ------------------------------------------------------- |
//! |      0 |    4 | magic `b"GCBV"`                                         |
//! |      4 |    1 | version (1)                                             |
//! |      5 |    1 | verdict: 0 direct, 1 relay, 2 rejected                  |
//! |      6 |    1 | GCB error code when rejected, else zero                 |
//! |      7 |    1 | reserved, zero                                          |
//! |      8 |    6 | peer for `getpeername` (zero when rejected)             |
//!
//! After `PunchVerdict::Relay` the rendezvous connection carries the
//! application's bytes, as after `StreamPeer::Paired`; after `Direct` the
//! punched one does, and the rendezvous connection is closed by both ends.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::super::message::{ErrorCode, Token};
use super::super::stream::{frame_reader, Frame, Role};
use crate::header::VERSION;
use crate::wire::{DecodeError, Reader, SliceSink, Writer};

const UNSPECIFIED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);

pub(super) fn role_byte(role: Role) -> u8 {
    match role {
        Role::Connector => 1,
        Role::Listener => 2,
    }
}

fn reserved_zero(r: &mut Reader<'_>, n: usize, what: &'static str) -> Result<(), DecodeError> {
    if r.take(n)?.iter().any(|b| *b != 0) {
        return Err(DecodeError::BadValue(what));
    }
    Ok(())
}

/// The early flag of a hello's flags byte.
const EARLY: u8 = 1;

/// A hello's layout (the table above): `field` is the token or a proof.
pub(super) fn hello_bytes(role: Role, flags: u8, field: [u8; 8], local: SocketAddrV4) -> [u8; 22] {
    let mut out = [0u8; 22];
    let mut w = Writer::new(SliceSink::new(&mut out));
    w.bytes(&PunchHello::MAGIC);
    w.u8(VERSION);
    w.u8(role_byte(role));
    w.u8(flags);
    w.u8(0);
    w.bytes(&field);
    w.addr(&local);
    debug_assert!(w.finish().is_ok());
    out
}

/// Decodes a hello's layout into its role, flags, field and local address;
/// flags other than `allowed` are an error.
pub(super) fn hello_fields<F: Frame>(buf: &[u8], allowed: u8) -> Result<(Role, u8, [u8; 8], SocketAddrV4), DecodeError> {
    let mut r = frame_reader::<F>(buf)?;
    let role = match r.u8()? {
        1 => Role::Connector,
        2 => Role::Listener,
        _ => return Err(DecodeError::BadValue("punch role")),
    };
    let flags = r.u8()?;
    if flags & !allowed != 0 {
        return Err(DecodeError::BadValue("punch hello flags"));
    }
    reserved_zero(&mut r, 1, "punch hello reserved")?;
    let mut field = [0u8; 8];
    field.copy_from_slice(r.take(8)?);
    Ok((role, flags, field, r.addr()?))
}

/// First bytes on a rendezvous connection in punch mode: the broker finds
/// the meeting by the token. Never sent on a punched connection
/// ([`PeerHello`](super::PeerHello) is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PunchHello {
    /// The punch's token; in an early hello, the request id of the
    /// `Connect` it came with, by which the broker finds that `Connect`.
    pub token: Token,
    pub role: Role,
    /// The sending socket's own address (`getsockname`): the broker compares
    /// its port with the mapping it sees to tell whether the NAT kept it.
    pub local: SocketAddrV4,
    /// A connector's rendezvous opened beside its `Connect`, before the
    /// decision (`Features::PUNCH_EARLY`, docs/hole-punching.md).
    pub early: bool,
}

impl PunchHello {
    /// A side's hello with the punch's token.
    pub fn new(token: Token, role: Role, local: SocketAddrV4) -> Self {
        PunchHello { token, role, local, early: false }
    }

    /// A connector's early hello, naming its `Connect`'s request id.
    pub fn early(request_id: u64, local: SocketAddrV4) -> Self {
        PunchHello { token: Token(request_id), role: Role::Connector, local, early: true }
    }

    pub fn to_bytes(&self) -> [u8; 22] {
        let flags = if self.early { EARLY } else { 0 };
        hello_bytes(self.role, flags, self.token.0.to_be_bytes(), self.local)
    }
}

impl Frame for PunchHello {
    const LEN: usize = 22;
    const MAGIC: [u8; 4] = *b"GCBJ";

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let (role, flags, token, local) = hello_fields::<Self>(buf, EARLY)?;
        let early = flags & EARLY != 0;
        if early && role != Role::Connector {
            return Err(DecodeError::BadValue("an early punch hello is a connector's"));
        }
        Ok(PunchHello { token: Token(u64::from_be_bytes(token)), role, local, early })
    }
}

/// The broker's go: dial `peer` from the hello's local port after `delay`,
/// for at most `budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PunchGo {
    pub peer: SocketAddrV4,
    pub delay: Duration,
    pub budget: Duration,
    /// To a listener whose connector commits on its own check (an early
    /// punch, docs/hole-punching.md): the connector's proof comes only once
    /// it committed, so use the connection once it checks, without the
    /// verdict, with `peer` as the connector's address. Sent only to a
    /// listener whose shims offered `Features::PUNCH_EARLY`.
    pub commit: bool,
}

impl PunchGo {
    /// The longest delay the frame carries (u32 microseconds, about 71 min).
    pub const MAX_DELAY: Duration = Duration::from_micros(u32::MAX as u64);
    /// The longest budget the frame carries.
    pub const MAX_BUDGET: Duration = Duration::from_millis(u16::MAX as u64);

    /// Encodes; a delay or budget past the frame's range is cut to it, and a
    /// budget under 1 ms is 1 ms.
    pub fn to_bytes(&self) -> [u8; 18] {
        let mut out = [0u8; 18];
        let mut w = Writer::new(SliceSink::new(&mut out));
        w.bytes(&Self::MAGIC);
        w.u8(VERSION);
        w.u8(u8::from(self.commit));
        w.addr(&self.peer);
        w.u32(self.delay.min(Self::MAX_DELAY).as_micros() as u32);
        w.u16(self.budget.min(Self::MAX_BUDGET).as_millis().max(1) as u16);
        debug_assert!(w.finish().is_ok());
        out
    }
}

impl Frame for PunchGo {
    const LEN: usize = 18;
    const MAGIC: [u8; 4] = *b"GCBG";

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = frame_reader::<Self>(buf)?;
        let commit = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::BadValue("punch go flags")),
        };
        let peer = r.addr()?;
        let delay = Duration::from_micros(u64::from(r.u32()?));
        let budget = match r.u16()? {
            0 => return Err(DecodeError::BadValue("punch budget")),
            ms => Duration::from_millis(u64::from(ms)),
        };
        Ok(PunchGo { peer, delay, budget, commit })
    }
}

/// Why a side could not punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PunchFailure {
    /// The budget ran out with no connection to the peer.
    Timeout,
    /// Connections came, but none showed the peer's proof (a stranger, or
    /// bytes that were not a hello).
    CheckFailed,
    /// The side could not use its port (bind or socket failed).
    LocalError,
    /// A code newer than this build.
    Other(u8),
}

impl PunchFailure {
    pub const fn wire(self) -> u8 {
        match self {
            PunchFailure::Timeout => 1,
            PunchFailure::CheckFailed => 2,
            PunchFailure::LocalError => 3,
            PunchFailure::Other(c) => c,
        }
    }

    /// The failure a nonzero code names; 0 is "punched", not a failure.
    pub const fn from_wire(c: u8) -> Option<Self> {
        match c {
            0 => None,
            1 => Some(PunchFailure::Timeout),
            2 => Some(PunchFailure::CheckFailed),
            3 => Some(PunchFailure::LocalError),
            c => Some(PunchFailure::Other(c)),
        }
    }

    /// A name for logs and counters.
    pub const fn name(self) -> &'static str {
        match self {
            PunchFailure::Timeout => "timeout",
            PunchFailure::CheckFailed => "check_failed",
            PunchFailure::LocalError => "local_error",
            PunchFailure::Other(_) => "other",
        }
    }
}

/// A side's one report to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunchReport {
    /// A connection to the peer showed the peer's proof; the side holds it
    /// until the verdict.
    Punched,
    Failed(PunchFailure),
}

impl PunchReport {
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        let mut w = Writer::new(SliceSink::new(&mut out));
        w.bytes(&Self::MAGIC);
        w.u8(VERSION);
        w.u8(match self {
            PunchReport::Punched => 0,
            // Code 0 means "punched", so a failure can never say it.
            PunchReport::Failed(f) => f.wire().max(1),
        });
        w.u16(0);
        debug_assert!(w.finish().is_ok());
        out
    }
}

impl Frame for PunchReport {
    const LEN: usize = 8;
    const MAGIC: [u8; 4] = *b"GCBR";

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = frame_reader::<Self>(buf)?;
        let outcome = r.u8()?;
        reserved_zero(&mut r, 2, "punch report reserved")?;
        Ok(match PunchFailure::from_wire(outcome) {
            None => PunchReport::Punched,
            Some(f) => PunchReport::Failed(f),
        })
    }
}

/// The broker's one verdict to each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunchVerdict {
    /// Use the punched connection; `peer` is what `getpeername` reports.
    Direct { peer: SocketAddrV4 },
    /// Use this rendezvous connection, now relayed; `peer` as above.
    Relay { peer: SocketAddrV4 },
    /// No connection (the other side vanished, or a limit); the broker closes.
    Rejected { code: ErrorCode },
}

impl PunchVerdict {
    pub fn to_bytes(&self) -> [u8; 14] {
        let mut out = [0u8; 14];
        let mut w = Writer::new(SliceSink::new(&mut out));
        w.bytes(&Self::MAGIC);
        w.u8(VERSION);
        let (verdict, code, peer) = match self {
            PunchVerdict::Direct { peer } => (0, 0, *peer),
            PunchVerdict::Relay { peer } => (1, 0, *peer),
            // Code 0 would read as "no code", so a rejection never says it.
            PunchVerdict::Rejected { code } => (2, code.wire().max(1), UNSPECIFIED),
        };
        w.u8(verdict);
        w.u8(code);
        w.u8(0);
        w.addr(&peer);
        debug_assert!(w.finish().is_ok());
        out
    }
}

impl Frame for PunchVerdict {
    const LEN: usize = 14;
    const MAGIC: [u8; 4] = *b"GCBV";

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = frame_reader::<Self>(buf)?;
        let verdict = r.u8()?;
        let code = r.u8()?;
        reserved_zero(&mut r, 1, "punch verdict reserved")?;
        let peer = r.addr()?;
        match (verdict, code) {
            (0, 0) => Ok(PunchVerdict::Direct { peer }),
            (1, 0) => Ok(PunchVerdict::Relay { peer }),
            (2, c) if c != 0 && peer == UNSPECIFIED => Ok(PunchVerdict::Rejected { code: ErrorCode::from_wire(c) }),
            _ => Err(DecodeError::BadValue("punch verdict")),
        }
    }
}

/// What the broker sends a side after its `PunchHello`: a go, or at once a
/// verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerFrame {
    Go(PunchGo),
    Verdict(PunchVerdict),
}

impl BrokerFrame {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            BrokerFrame::Go(g) => g.to_bytes().to_vec(),
            BrokerFrame::Verdict(v) => v.to_bytes().to_vec(),
        }
    }
}

/// Reads one [`BrokerFrame`] from a byte stream that may deliver it in
/// pieces: the magic says which frame and so how long, and no byte past the
/// frame is ever taken (after a relay verdict the application's bytes follow).
#[derive(Debug, Default)]
pub struct BrokerFrameReader {
    buf: [u8; 18],
    len: usize,
}

impl BrokerFrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    fn frame_len(&self) -> Result<Option<usize>, DecodeError> {
        if self.len < 4 {
            let n = self.len;
            let go = self.buf[..n] == PunchGo::MAGIC[..n];
            let verdict = self.buf[..n] == PunchVerdict::MAGIC[..n];
            return if go || verdict { Ok(None) } else { Err(DecodeError::NotProtocol) };
        }
        match [self.buf[0], self.buf[1], self.buf[2], self.buf[3]] {
            PunchGo::MAGIC => Ok(Some(PunchGo::LEN)),
            PunchVerdict::MAGIC => Ok(Some(PunchVerdict::LEN)),
            _ => Err(DecodeError::NotProtocol),
        }
    }

    /// Bytes still wanted: read at most this many.
    pub fn missing(&self) -> usize {
        match self.frame_len() {
            Ok(Some(n)) => n - self.len,
            Ok(None) => 4 - self.len,
            Err(_) => 0,
        }
    }

    /// Takes bytes from `input` (at most [`missing`](Self::missing)); returns
    /// how many it took and, once complete, the frame. After a frame or an
    /// error the reader must not be fed again.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<BrokerFrame>), DecodeError> {
        let mut used = 0;
        loop {
            let want = self.missing();
            let take = want.min(input.len() - used);
            self.buf[self.len..self.len + take].copy_from_slice(&input[used..used + take]);
            self.len += take;
            used += take;
            match self.frame_len()? {
                Some(n) if self.len == n => {
                    let frame = match n {
                        PunchGo::LEN => BrokerFrame::Go(PunchGo::decode(&self.buf[..n])?),
                        _ => BrokerFrame::Verdict(PunchVerdict::decode(&self.buf[..n])?),
                    };
                    return Ok((used, Some(frame)));
                }
                // The magic just completed: go on with the rest of the frame.
                Some(_) if take > 0 && used < input.len() => continue,
                _ => return Ok((used, None)),
            }
        }
    }
}
