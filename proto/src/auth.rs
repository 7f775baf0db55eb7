//! Shared-secret authentication of GCB and DPF datagrams (docs/design.md,
//! "Security"): sealing a message with an HMAC trailer, and opening it again.
//!
//! [`seal`] takes a complete encoded message (header and body), sets the
//! header's authenticated flag and appends the trailer documented in
//! [`crate::header`]: 8-byte timestamp (ms since the Unix epoch), 8-byte
//! nonce, and HMAC-SHA256 over everything before the MAC, i.e. the header as
//! sent (flag set), the body, the timestamp and the nonce.
//!
//! Opening is split in two so a responder can put its reply cache between
//! them: [`verify`] checks the MAC and the time window and returns the
//! message as the family decoders expect it (flag cleared, trailer removed);
//! [`ReplayGuard::admit`] then refuses a nonce seen before. [`open`] does
//! both for receivers without a reply cache.
//!
//! # Retransmissions
//!
//! The reliable layer resends a request byte for byte, so a legitimate
//! retransmission carries the nonce of its first copy. Responders therefore
//! check, in this order: MAC and window, then their reply cache, then the
//! replay guard. A retransmission whose first copy was handled finds its reply
//! in the cache and gets that same reply again (the request is not executed a
//! second time, so a replay gains an attacker nothing but a copy of a reply
//! sent to the original address); one whose first copy was lost was never
//! admitted and passes the guard. Only a copy that is neither cached nor new
//! is refused as `Replayed`.
//!
//! Requesters verify replies with their own guard: a reply that arrives twice
//! (a cached reply resent after a lost one) is refused the second time, which
//! is harmless since its request is already complete.
//!
//! # Window and clocks
//!
//! Messages whose timestamp differs from the receiver's clock by more than
//! [`WINDOW_MS`] either way are `Stale`. Hosts must keep their clocks within
//! that of each other (NTP does far better); the guard remembers nonces for as
//! long as their timestamp is inside the window, which bounds its memory by
//! the authenticated message rate, never by what an attacker sends.

mod authenticator;

pub use authenticator::{Authenticator, Refusals};

use std::collections::BTreeSet;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::header::{Flags, AUTH_TRAILER_LEN, HEADER_LEN, MAX_UDP_PAYLOAD};

/// Largest accepted difference between a message's timestamp and the
/// receiver's clock, either way.
pub const WINDOW_MS: u64 = 60_000;
/// Length of the MAC at the end of the trailer.
pub const MAC_LEN: usize = 32;
/// Offset of the flags byte in the header.
const FLAGS_AT: usize = 6;
/// Largest message that still fits a UDP datagram once sealed.
pub const MAX_SEALED_MESSAGE: usize = MAX_UDP_PAYLOAD - AUTH_TRAILER_LEN;

type HmacSha256 = Hmac<Sha256>;

/// A shared secret ready for use: the HMAC state after absorbing the key, so
/// each message costs only its own bytes. Debug never shows key material.
#[derive(Clone)]
pub struct Key {
    mac: HmacSha256,
}

impl Key {
    /// Any length works (HMAC hashes long keys and pads short ones), but a
    /// secret of fewer than 16 random bytes is guessable offline from one
    /// captured datagram; the daemons warn about short files.
    pub fn new(secret: &[u8]) -> Key {
        // HMAC accepts keys of every length, so this never fails; the
        // fallback keeps the function total without a panic path.
        let mac = HmacSha256::new_from_slice(secret)
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
        Key { mac }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// The per-message values the sender chooses: its clock and a random nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub unix_ms: u64,
    pub nonce: u64,
}

/// Why a datagram was refused. Receivers count each reason separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthError {
    /// No authentication flag or no room for a trailer: an unauthenticated
    /// (or truncated) message.
    Missing,
    /// The MAC does not match: a wrong key, or bytes changed on the way.
    BadMac,
    /// Authentic but outside the time window; `skew_ms` is the message's
    /// timestamp minus the receiver's clock.
    Stale { skew_ms: i64 },
    /// Authentic and fresh, but its nonce was seen already (or it is older
    /// than what a full guard can still vouch for).
    Replayed,
}

impl AuthError {
    /// Stable short name, for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::BadMac => "bad_mac",
            AuthError::Stale { .. } => "stale",
            AuthError::Replayed => "replayed",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => write!(f, "not authenticated"),
            AuthError::BadMac => write!(f, "bad MAC (wrong secret or altered)"),
            AuthError::Stale { skew_ms } => write!(
                f,
                "timestamp {skew_ms} ms off this clock, outside ±{WINDOW_MS} ms"
            ),
            AuthError::Replayed => write!(f, "replayed"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Why [`seal`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// Shorter than a header: not a message.
    NotAMessage,
    /// The authenticated flag is set already.
    AlreadySealed,
    /// The trailer would push the datagram past the UDP limit.
    TooLong,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::NotAMessage => write!(f, "shorter than a header"),
            SealError::AlreadySealed => write!(f, "already sealed"),
            SealError::TooLong => write!(f, "too long to seal"),
        }
    }
}

impl std::error::Error for SealError {}

/// Seals an encoded message in place: sets the authenticated flag and
/// appends timestamp, nonce and MAC.
pub fn seal(message: &mut Vec<u8>, key: &Key, stamp: Stamp) -> Result<(), SealError> {
    if message.len() < HEADER_LEN {
        return Err(SealError::NotAMessage);
    }
    if message.len() > MAX_SEALED_MESSAGE {
        return Err(SealError::TooLong);
    }
    if message[FLAGS_AT] & Flags::AUTHENTICATED.bits() != 0 {
        return Err(SealError::AlreadySealed);
    }
    message[FLAGS_AT] |= Flags::AUTHENTICATED.bits();
    message.extend_from_slice(&stamp.unix_ms.to_be_bytes());
    message.extend_from_slice(&stamp.nonce.to_be_bytes());
    let mut mac = key.mac.clone();
    mac.update(message);
    message.extend_from_slice(&mac.finalize().into_bytes());
    Ok(())
}

/// A datagram whose MAC and timestamp checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The message as the family decoders expect it: authenticated flag
    /// cleared, trailer removed.
    pub message: Vec<u8>,
    pub stamp: Stamp,
}

/// Checks the MAC (in constant time) and then the time window. Never panics,
/// whatever `datagram` holds.
pub fn verify(datagram: &[u8], key: &Key, now_ms: u64) -> Result<Verified, AuthError> {
    if datagram.len() < HEADER_LEN + AUTH_TRAILER_LEN
        || datagram[FLAGS_AT] & Flags::AUTHENTICATED.bits() == 0
    {
        return Err(AuthError::Missing);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - MAC_LEN);
    let mut mac = key.mac.clone();
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| AuthError::BadMac)?;
    let (message, fields) = signed.split_at(signed.len() - 16);
    let stamp = Stamp {
        unix_ms: u64::from_be_bytes(fields[..8].try_into().unwrap_or_default()),
        nonce: u64::from_be_bytes(fields[8..].try_into().unwrap_or_default()),
    };
    let skew_ms = skew(stamp.unix_ms, now_ms);
    if skew_ms.unsigned_abs() > WINDOW_MS {
        return Err(AuthError::Stale { skew_ms });
    }
    let mut message = message.to_vec();
    message[FLAGS_AT] &= !Flags::AUTHENTICATED.bits();
    Ok(Verified { message, stamp })
}

/// `verify` then `guard.admit`: for receivers without a reply cache.
pub fn open(
    datagram: &[u8],
    key: &Key,
    now_ms: u64,
    guard: &mut ReplayGuard,
) -> Result<Vec<u8>, AuthError> {
    let verified = verify(datagram, key, now_ms)?;
    guard.admit(verified.stamp, now_ms)?;
    Ok(verified.message)
}

/// `stamp - now`, saturated into an i64.
fn skew(stamp_ms: u64, now_ms: u64) -> i64 {
    let diff = i128::from(stamp_ms) - i128::from(now_ms);
    diff.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The nonces of admitted messages whose timestamps are still in the window.
///
/// Invariants (checked by the tests):
/// * at most `cap` stamps are held;
/// * a stamp is admitted at most once for the guard's whole life: while it is
///   inside the window it is held (or lies at or below `floor`, which is
///   refused), and once outside the window `verify` refuses it as stale;
/// * `floor` only grows: when the guard is full, the oldest stamp is dropped
///   and `floor` rises to its timestamp, so everything not newer than
///   anything forgotten is refused. A full guard thus fails closed, refusing
///   old-but-legitimate messages rather than admitting a replay; only a peer
///   holding the key can fill it, and the cap is far above any real rate.
#[derive(Debug)]
pub struct ReplayGuard {
    cap: usize,
    /// Ordered by timestamp, so expiry and eviction take the first entries.
    seen: BTreeSet<Stamp>,
    floor: Option<u64>,
}

impl ReplayGuard {
    /// For daemons: 65536 stamps (about 3 MiB at most), over 1000
    /// authenticated messages a second sustained across the window.
    pub const DAEMON_CAP: usize = 65_536;
    /// For the shim, which only sees replies to its own requests and the
    /// broker's commands to its listeners.
    pub const CLIENT_CAP: usize = 1024;

    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            seen: BTreeSet::new(),
            floor: None,
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Admits a verified stamp once; refuses it on every later call.
    pub fn admit(&mut self, stamp: Stamp, now_ms: u64) -> Result<(), AuthError> {
        let oldest_fresh = now_ms.saturating_sub(WINDOW_MS);
        if stamp.unix_ms < oldest_fresh {
            return Err(AuthError::Stale {
                skew_ms: skew(stamp.unix_ms, now_ms),
            });
        }
        while self.seen.first().is_some_and(|s| s.unix_ms < oldest_fresh) {
            self.seen.pop_first();
        }
        if self.floor.is_some_and(|f| stamp.unix_ms <= f) || self.seen.contains(&stamp) {
            return Err(AuthError::Replayed);
        }
        while self.seen.len() >= self.cap {
            if let Some(oldest) = self.seen.pop_first() {
                self.floor = Some(self.floor.map_or(oldest.unix_ms, |f| f.max(oldest.unix_ms)));
            }
        }
        if self.floor.is_some_and(|f| stamp.unix_ms <= f) {
            return Err(AuthError::Replayed);
        }
        self.seen.insert(stamp);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
