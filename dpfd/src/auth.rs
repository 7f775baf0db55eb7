//! dpfd's side of shared-secret authentication (proto `auth`): with
//! `--secret-file`, every request must be sealed with the key and every
//! reply is sealed. A request that does not open is dropped without an
//! answer and counted (`auth` in `dpfd status`): nobody without the key can
//! open, delete or look up a forward.
//!
//! Receive order (see proto `auth`, Retransmissions): private-network source
//! check, MAC and window, decode, reply cache and same-turn duplicates, then
//! the replay guard, so a retransmission gets its cached reply and only a
//! request about to be executed is checked for replay. Probes carry no
//! payload (a TCP connect to the client's management socket) and the status
//! socket is local and checked by SO_PEERCRED, so neither needs the key.

use std::net::SocketAddr;

use daemon_kit::auth::unix_ms;
pub(crate) use daemon_kit::auth::{authenticator, seal};
use proto::auth::{Stamp, Verified};
use tracing::debug;

use crate::daemon::Daemon;
use crate::values::Secret;

impl Daemon {
    /// MAC and window of a datagram. `Ok(None)`: no secret, decode it as it
    /// is; `Err(())`: refused, counted, and to be dropped silently.
    pub(crate) fn authenticate(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
    ) -> Result<Option<Verified>, ()> {
        let Some(auth) = self.auth.as_mut() else {
            return Ok(None);
        };
        auth.verify(datagram, unix_ms()).map(Some).map_err(|e| {
            debug!(
                "command port: dropped {} bytes from {from}: {e}",
                datagram.len()
            );
        })
    }

    /// The replay check just before a request is executed; true when it may
    /// proceed (always, without a secret).
    pub(crate) fn admit(&mut self, stamp: Option<Stamp>, from: SocketAddr) -> bool {
        let (Some(auth), Some(stamp)) = (self.auth.as_mut(), stamp) else {
            return true;
        };
        auth.admit(stamp, unix_ms())
            .map_err(|e| debug!("command port: dropped a request from {from}: {e}"))
            .is_ok()
    }

    /// Follows a reloaded secret: added, removed or replaced.
    pub(crate) fn apply_secret(&mut self, secret: Option<&Secret>) {
        daemon_kit::auth::reload(&mut self.auth, secret);
    }
}

impl Daemon {
    /// Requests refused by authentication, per reason, for `dpfd status`
    /// (all zero without a secret).
    pub(crate) fn auth_counters(&self) -> serde_json::Value {
        let refused = self.auth.as_ref().map(|a| a.refused()).unwrap_or_default();
        serde_json::json!({
            "missing": refused.missing,
            "bad_mac": refused.bad_mac,
            "stale": refused.stale,
            "replayed": refused.replayed,
        })
    }
}
