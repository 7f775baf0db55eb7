//! What both daemons need around proto `auth`: an authenticator for the
//! loaded secret, and sealing with the wall clock and a kernel-random nonce.
//! Where each daemon puts the checks in its receive path is its own
//! business (broker and dpfd `auth` modules).

use std::time::{SystemTime, UNIX_EPOCH};

use proto::auth::{Authenticator, ReplayGuard, Stamp};
use proto::EncodeError;

use crate::values::Secret;

/// The wall clock in ms since the Unix epoch, as the trailer carries it.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The clock and a fresh nonce, for one outgoing datagram.
pub fn stamp_now() -> Stamp {
    Stamp {
        unix_ms: unix_ms(),
        nonce: crate::random::random_u64(),
    }
}

/// Seals an encoded message when a secret is configured and passes it
/// through otherwise; every datagram a daemon sends goes through here.
pub fn seal(
    auth: Option<&Authenticator>,
    encoded: Result<Vec<u8>, EncodeError>,
) -> Result<Vec<u8>, EncodeError> {
    match auth {
        Some(a) => a.seal(encoded, stamp_now()),
        None => encoded,
    }
}

/// The authenticator for a loaded secret, with a daemon-sized replay guard.
pub fn authenticator(secret: &Secret) -> Authenticator {
    Authenticator::new(secret.bytes(), ReplayGuard::DAEMON_CAP)
}

/// Follows a reloaded secret: added, removed or replaced. Counters and the
/// replay guard survive a replacement, so nonces seen stay refused.
pub fn reload(auth: &mut Option<Authenticator>, secret: Option<&Secret>) {
    match (secret, auth.as_mut()) {
        (None, _) => *auth = None,
        (Some(s), Some(a)) => a.rekey(s.bytes()),
        (Some(s), None) => *auth = Some(authenticator(s)),
    }
}
