//! A tiny big-endian codec that every wire format in this crate is built on.
//!
//! [`Writer`] appends fields to a [`Sink`]: a growable `Vec<u8>`, or a
//! [`SliceSink`] over a fixed buffer for callers that must not allocate (the
//! shim inside an interposed call). Writing never panics; the first problem
//! (a string or list over its limit, a full buffer) is remembered and reported
//! once by [`Writer::finish`], so encoders stay a flat list of field writes.
//!
//! [`Reader`] walks a `&[u8]` and returns [`DecodeError`] on truncation or on
//! an invalid value. It never panics on any input, and it never allocates more
//! than the input itself justifies: strings are copied only after their bytes
//! are known to be present, and list capacities are clamped to what the
//! remaining bytes could hold.
//!
//! Shared encodings: integers are big-endian; an IPv4 socket address is 4
//! address bytes then a 2-byte port; an `Option` is a tag byte (0 absent,
//! 1 present) then the value; a string is a length prefix (u8 or u16) then
//! that many UTF-8 bytes.

mod read;
mod write;

pub use read::Reader;
pub use write::{Sink, SliceSink, Writer};

use std::fmt;

/// Why a byte string could not be decoded. Every decoder in the crate returns
/// this; receivers drop the input and count it (docs/design.md, "Security").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input does not start with the expected magic: it is not this
    /// protocol at all (a non-GCB service answered, or stray traffic).
    NotProtocol,
    /// The magic matched but the version is not one we speak. The request id
    /// and kind are reported so the receiver can answer `VersionMismatch`.
    UnsupportedVersion {
        version: u8,
        kind: u8,
        request_id: u64,
    },
    /// The input ended before the value was complete.
    Truncated,
    /// The message kind byte names no message of this family.
    UnknownKind(u8),
    /// Reserved flag bits were set, or the response bit disagrees with the kind.
    BadFlags(u8),
    /// The authenticated flag was set: the datagram is sealed and must be
    /// opened with `auth` first, which a receiver without a secret cannot do.
    AuthUnsupported,
    /// A field held a value outside its domain (bad tag, bad UTF-8, ...).
    BadValue(&'static str),
    /// A string or list was longer than its documented maximum.
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// Bytes were left over after a complete message.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotProtocol => write!(f, "not a GCB/DPF message (magic mismatch)"),
            Self::UnsupportedVersion { version, .. } => {
                write!(f, "unsupported protocol version {version}")
            }
            Self::Truncated => write!(f, "message truncated"),
            Self::UnknownKind(k) => write!(f, "unknown message kind {k:#04x}"),
            Self::BadFlags(b) => write!(f, "invalid flags {b:#04x}"),
            Self::AuthUnsupported => write!(
                f,
                "authenticated (sealed) message, and no secret is configured here"
            ),
            Self::BadValue(what) => write!(f, "invalid value for {what}"),
            Self::TooLong { what, len, max } => write!(f, "{what} too long: {len} > {max}"),
            Self::TrailingBytes(n) => write!(f, "{n} trailing bytes after message"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded. Only limits can fail: a well-formed
/// message within the documented maxima always encodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or list exceeds the maximum its field allows.
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A fixed output buffer ran out after `at` bytes had been written.
    BufferFull { at: usize },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { what, len, max } => write!(f, "{what} too long: {len} > {max}"),
            Self::BufferFull { at } => write!(f, "output buffer full after {at} bytes"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Wire length of an IPv4 socket address.
pub const ADDR_LEN: usize = 6;

/// The longest prefix of `s` that is at most `max` bytes and ends on a
/// character boundary: for callers fitting free text (error details, program
/// names) into a bounded field instead of failing.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
