//! One endpoint's authentication state: the key, its replay guard and the
//! count of refusals per reason, so the broker, dpfd and the shim share one
//! implementation of the receive order documented in [`super`] and only
//! supply their clock and nonces.

use super::{
    seal, verify, AuthError, Key, ReplayGuard, SealError, Stamp, Verified, MAX_SEALED_MESSAGE,
};
use crate::wire::EncodeError;

/// Datagrams refused, per reason. Named `auth_*` in the daemons' status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refusals {
    pub missing: u64,
    pub bad_mac: u64,
    pub stale: u64,
    pub replayed: u64,
}

impl Refusals {
    fn count(&mut self, e: AuthError) {
        let n = match e {
            AuthError::Missing => &mut self.missing,
            AuthError::BadMac => &mut self.bad_mac,
            AuthError::Stale { .. } => &mut self.stale,
            AuthError::Replayed => &mut self.replayed,
        };
        *n += 1;
    }

    /// Every counter by its status name, in a fixed order.
    pub fn fields(&self) -> [(&'static str, u64); 4] {
        [
            ("auth_missing", self.missing),
            ("auth_bad_mac", self.bad_mac),
            ("auth_stale", self.stale),
            ("auth_replayed", self.replayed),
        ]
    }
}

/// Seals what an endpoint sends and checks what it receives.
#[derive(Debug)]
pub struct Authenticator {
    key: Key,
    guard: ReplayGuard,
    refused: Refusals,
}

impl Authenticator {
    pub fn new(secret: &[u8], guard_cap: usize) -> Self {
        Self {
            key: Key::new(secret),
            guard: ReplayGuard::new(guard_cap),
            refused: Refusals::default(),
        }
    }

    /// The key, for receivers that verify without this state (the shim's
    /// threads share one authenticator read-only).
    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn refused(&self) -> Refusals {
        self.refused
    }

    /// Replaces the key (a reloaded secret file), keeping the counters and
    /// the guard: nonces seen under the old key stay refused.
    pub fn rekey(&mut self, secret: &[u8]) {
        self.key = Key::new(secret);
    }

    /// Seals the output of a family encoder, so a call site reads
    /// `auth.seal(gcb::encode(&msg, id), stamp)` and keeps one error type.
    /// Only a message too long for the trailer can fail here.
    pub fn seal(
        &self,
        encoded: Result<Vec<u8>, EncodeError>,
        stamp: Stamp,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut message = encoded?;
        match seal(&mut message, &self.key, stamp) {
            Ok(()) => Ok(message),
            Err(SealError::TooLong) => Err(EncodeError::TooLong {
                what: "sealed datagram",
                len: message.len(),
                max: MAX_SEALED_MESSAGE,
            }),
            // Encoders write a full header with the flag clear.
            Err(SealError::NotAMessage | SealError::AlreadySealed) => {
                Err(EncodeError::BufferFull { at: message.len() })
            }
        }
    }

    /// MAC and window; a refusal is counted.
    pub fn verify(&mut self, datagram: &[u8], now_ms: u64) -> Result<Verified, AuthError> {
        verify(datagram, &self.key, now_ms).inspect_err(|e| self.refused.count(*e))
    }

    /// The replay check, after the reply cache; a refusal is counted.
    pub fn admit(&mut self, stamp: Stamp, now_ms: u64) -> Result<(), AuthError> {
        self.guard
            .admit(stamp, now_ms)
            .inspect_err(|e| self.refused.count(*e))
    }

    /// `verify` then `admit`, for receivers without a reply cache.
    pub fn open(&mut self, datagram: &[u8], now_ms: u64) -> Result<Vec<u8>, AuthError> {
        let verified = self.verify(datagram, now_ms)?;
        self.admit(verified.stamp, now_ms)?;
        Ok(verified.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpf::{self, Message};

    #[test]
    fn refusals_are_counted_per_reason() {
        let mut a = Authenticator::new(b"k", 8);
        let plain = dpf::encode(
            &Message::Query {
                proto: crate::Proto::Tcp,
                public: "192.0.2.1:80".parse().unwrap(),
            },
            1,
        )
        .unwrap();
        let st = Stamp {
            unix_ms: 1_000_000,
            nonce: 5,
        };
        let sealed = a.seal(Ok(plain.clone()), st).unwrap();
        assert_eq!(a.open(&plain, 1_000_000), Err(AuthError::Missing));
        assert_eq!(a.open(&sealed, 1_000_000).as_deref(), Ok(&plain[..]));
        assert_eq!(a.open(&sealed, 1_000_000), Err(AuthError::Replayed));
        assert!(a.open(&sealed, 9_000_000).is_err());
        assert_eq!(
            Authenticator::new(b"x", 8).open(&sealed, 1_000_000),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            a.refused(),
            Refusals {
                missing: 1,
                bad_mac: 0,
                stale: 1,
                replayed: 1
            }
        );
    }
}
