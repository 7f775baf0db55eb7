//! The fixed header every GCB and DPF datagram starts with.
//!
//! | offset | size | field      | notes                                          |
//! | -----: | ---: | ---------- | ---------------------------------------------- |
//! |      0 |    4 | magic      | `b"GCB1"` (GCB) or `b"DPF1"` (DPF)             |
//! |      4 |    1 | version    | [`VERSION`], currently 1                       |
//! |      5 |    1 | kind       | message kind, defined by each family           |
//! |      6 |    1 | flags      | bit 0 response, bit 1 authenticated, rest 0    |
//! |      7 |    8 | request id | big-endian u64, chosen by the requester        |
//! |     15 |    … | body       | kind-specific, see `gcb` and `dpf`             |
//!
//! The magic names the protocol family and never changes; its trailing `1` is
//! part of the name, not the version. The first 15 bytes keep this layout in
//! every future version, so a receiver can always recognise foreign input at
//! once ([`DecodeError::NotProtocol`], which is how a GCB connector detects a
//! non-GCB listener) and can answer a newer peer with a `VersionMismatch`
//! error carrying the peer's request id ([`DecodeError::UnsupportedVersion`]).
//!
//! A reply carries the request id of the request it answers and has the
//! response flag set; the flag is redundant with the kind, which lets the
//! reliability layer (`rudp`) tell replies from requests without knowing the
//! kinds, and the family decoders reject a flag that disagrees with the kind.
//!
//! # Authentication
//!
//! With a shared secret configured (docs/design.md, "Security"), every datagram has
//! the authenticated flag set and an [`AUTH_TRAILER_LEN`]-byte trailer after
//! the body; [`crate::auth`] seals and opens it:
//!
//! | size | field     | notes                                                  |
//! | ---: | --------- | ------------------------------------------------------ |
//! |    8 | timestamp | sender's wall clock, ms since the Unix epoch           |
//! |    8 | nonce     | random per message                                     |
//! |   32 | mac       | HMAC-SHA256(secret, header ‖ body ‖ timestamp ‖ nonce) |
//!
//! The header under the MAC is the one sent, flag set. Receivers open a
//! sealed datagram before decoding it; [`Header::parse`] itself still rejects
//! the flag with [`DecodeError::AuthUnsupported`], so a sealed datagram that
//! reaches a receiver without a secret is refused rather than misread. A
//! receiver with a secret refuses every message without the flag, so
//! stripping the trailer gains an attacker nothing.

use crate::wire::{DecodeError, Reader, Sink, SliceSink, Writer};

/// Length of the fixed header.
pub const HEADER_LEN: usize = 15;
/// The only protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the authentication trailer (see the module docs).
pub const AUTH_TRAILER_LEN: usize = 48;
/// Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP).
pub const MAX_UDP_PAYLOAD: usize = 65507;

/// Which protocol a datagram belongs to, named by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Gcb,
    Dpf,
}

impl Family {
    pub const fn magic(self) -> [u8; 4] {
        match self {
            Family::Gcb => *b"GCB1",
            Family::Dpf => *b"DPF1",
        }
    }

    /// The family whose magic starts `buf`, if any.
    pub fn of(buf: &[u8]) -> Option<Family> {
        [Family::Gcb, Family::Dpf]
            .into_iter()
            .find(|f| buf.starts_with(&f.magic()))
    }
}

/// The header flags byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// Set on every reply; clear on every request.
    pub const RESPONSE: Flags = Flags(0x01);
    /// An authentication trailer follows the body (see the module docs).
    pub const AUTHENTICATED: Flags = Flags(0x02);
    const KNOWN: u8 = 0x03;

    pub const fn empty() -> Self {
        Flags(0)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Accepts only defined bits, so a future use of a reserved bit is noticed
    /// instead of silently ignored.
    pub fn from_bits(bits: u8) -> Result<Self, DecodeError> {
        if bits & !Self::KNOWN != 0 {
            return Err(DecodeError::BadFlags(bits));
        }
        Ok(Flags(bits))
    }

    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    pub const fn is_response(self) -> bool {
        self.contains(Flags::RESPONSE)
    }
}

/// A decoded (or to-be-encoded) header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub family: Family,
    pub version: u8,
    pub kind: u8,
    pub flags: Flags,
    pub request_id: u64,
}

impl Header {
    /// A header of the current version.
    pub const fn new(family: Family, kind: u8, flags: Flags, request_id: u64) -> Self {
        Self {
            family,
            version: VERSION,
            kind,
            flags,
            request_id,
        }
    }

    pub fn write<S: Sink>(&self, w: &mut Writer<S>) {
        w.bytes(&self.family.magic());
        w.u8(self.version);
        w.u8(self.kind);
        w.u8(self.flags.bits());
        w.u64(self.request_id);
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = Writer::new(SliceSink::new(&mut out));
        self.write(&mut w);
        // The buffer is exactly HEADER_LEN, so this cannot fail.
        debug_assert!(w.finish().is_ok());
        out
    }

    /// Parses the header of a `family` datagram and returns it with the body.
    ///
    /// Checks, in order: magic (on as many bytes as there are, so even a
    /// 1-byte foreign datagram is `NotProtocol`), length, version, flags.
    /// The kind is left to the family decoder.
    pub fn parse(buf: &[u8], family: Family) -> Result<(Header, &[u8]), DecodeError> {
        let magic = family.magic();
        let n = buf.len().min(magic.len());
        if buf[..n] != magic[..n] {
            return Err(DecodeError::NotProtocol);
        }
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        let mut r = Reader::new(buf);
        r.take(magic.len())?;
        let version = r.u8()?;
        let kind = r.u8()?;
        let flag_bits = r.u8()?;
        let request_id = r.u64()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                version,
                kind,
                request_id,
            });
        }
        let flags = Flags::from_bits(flag_bits)?;
        if flags.contains(Flags::AUTHENTICATED) {
            return Err(DecodeError::AuthUnsupported);
        }
        let header = Header {
            family,
            version,
            kind,
            flags,
            request_id,
        };
        Ok((header, &buf[HEADER_LEN..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_layout() {
        let h = Header::new(Family::Gcb, 0x03, Flags::RESPONSE, 0x0102_0304_0506_0708);
        assert_eq!(
            h.to_bytes(),
            [b'G', b'C', b'B', b'1', 1, 3, 1, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        let bytes = [&h.to_bytes()[..], b"body"].concat();
        let (parsed, body) = Header::parse(&bytes, Family::Gcb).unwrap();
        assert_eq!(parsed, h);
        assert_eq!(body, b"body");
    }

    #[test]
    fn foreign_input_is_recognised_early() {
        assert_eq!(
            Header::parse(b"G", Family::Gcb),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Header::parse(b"X", Family::Gcb),
            Err(DecodeError::NotProtocol)
        );
        assert_eq!(
            Header::parse(b"HTTP/1.1 400", Family::Gcb),
            Err(DecodeError::NotProtocol)
        );
        let dpf = Header::new(Family::Dpf, 1, Flags::empty(), 9).to_bytes();
        assert_eq!(
            Header::parse(&dpf, Family::Gcb),
            Err(DecodeError::NotProtocol)
        );
        assert_eq!(Family::of(&dpf), Some(Family::Dpf));
        assert_eq!(Family::of(b"GCB"), None);
        assert_eq!(Header::parse(&[], Family::Dpf), Err(DecodeError::Truncated));
    }

    #[test]
    fn newer_version_reports_request_id() {
        let mut h = Header::new(Family::Dpf, 7, Flags::empty(), 42);
        h.version = 2;
        assert_eq!(
            Header::parse(&h.to_bytes(), Family::Dpf),
            Err(DecodeError::UnsupportedVersion {
                version: 2,
                kind: 7,
                request_id: 42
            })
        );
    }

    #[test]
    fn reserved_and_auth_flags_are_rejected() {
        let mut b = Header::new(Family::Gcb, 1, Flags::empty(), 1).to_bytes();
        b[6] = 0x80;
        assert_eq!(
            Header::parse(&b, Family::Gcb),
            Err(DecodeError::BadFlags(0x80))
        );
        b[6] = Flags::AUTHENTICATED.bits();
        assert_eq!(
            Header::parse(&b, Family::Gcb),
            Err(DecodeError::AuthUnsupported)
        );
        assert!(Flags::RESPONSE.union(Flags::AUTHENTICATED).is_response());
    }
}
