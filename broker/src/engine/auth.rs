//! The core's side of shared-secret authentication (proto `auth`): with
//! `--secret-file`, everything it sends is sealed and everything it receives
//! on the command port and as a UDP `Dummy` must open, or is dropped without
//! an answer and counted (`auth_*` in the status).
//!
//! Receive order on the command port, so retransmissions stay legitimate
//! (see proto `auth`, Retransmissions): MAC and window first, before even the
//! rate limit, since nothing unauthenticated may cost the broker more than
//! one HMAC; then the reply cache; then the replay guard, only for requests
//! that will actually be executed and for replies to the broker's commands.

use std::net::SocketAddrV4;

use daemon_kit::auth::unix_ms;
use proto::auth::{Stamp, Verified};
use tracing::debug;

use super::Engine;

/// What `Engine::authenticate` made of a datagram.
pub(super) enum Inbound {
    /// No secret configured: decode the datagram as it is.
    Plain,
    /// MAC and window checked: decode `message`, and `admit` the stamp
    /// before acting on it.
    Verified(Verified),
    /// Refused and counted; drop it silently.
    Refused,
}

/// What a datagram on a UDP proxy or channel socket is, as far as control
/// goes.
pub(super) enum UdpControl {
    /// Not a control message (or not one without a secret): relay data.
    Data,
    /// A GCB message, authenticated if a secret is configured.
    Message(proto::Header, proto::gcb::Message),
    /// A sealed message that failed to open: dropped and counted.
    Refused,
}

impl Engine {
    /// Checks MAC and window of `datagram` from `from` (`what` names the
    /// socket, for the debug line).
    pub(super) fn authenticate(
        &mut self,
        datagram: &[u8],
        from: SocketAddrV4,
        what: &str,
    ) -> Inbound {
        let Some(auth) = self.auth.as_mut() else {
            return Inbound::Plain;
        };
        match auth.verify(datagram, unix_ms()) {
            Ok(v) => Inbound::Verified(v),
            Err(e) => {
                debug!("{what}: dropped {} bytes from {from}: {e}", datagram.len());
                Inbound::Refused
            }
        }
    }

    /// The replay check, just before a verified datagram is acted on. True
    /// when it may proceed (always, without a secret).
    pub(super) fn admit(&mut self, stamp: Option<Stamp>, from: SocketAddrV4, what: &str) -> bool {
        let (Some(auth), Some(stamp)) = (self.auth.as_mut(), stamp) else {
            return true;
        };
        match auth.admit(stamp, unix_ms()) {
            Ok(()) => true,
            Err(e) => {
                debug!("{what}: dropped a datagram from {from}: {e}");
                false
            }
        }
    }

    /// The `auth_*` counters, zero without a secret.
    pub(super) fn auth_counters(&self) -> [(&'static str, u64); 4] {
        self.auth
            .as_ref()
            .map(|a| a.refused())
            .unwrap_or_default()
            .fields()
    }

    /// Classifies a proxy-socket datagram. With a secret, only a sealed GCB
    /// message is control; an unsealed `Dummy` is plain data to the relay,
    /// so nobody without the key can move a registration's data path.
    pub(super) fn udp_control(&mut self, data: &[u8], from: SocketAddrV4) -> UdpControl {
        let Some(auth) = self.auth.as_mut() else {
            return match proto::gcb::decode(data) {
                Ok((h, m)) => UdpControl::Message(h, m),
                Err(_) => UdpControl::Data,
            };
        };
        let sealed = proto::Family::of(data) == Some(proto::Family::Gcb)
            && data
                .get(6)
                .is_some_and(|f| f & proto::Flags::AUTHENTICATED.bits() != 0);
        if !sealed {
            return UdpControl::Data;
        }
        let decoded = auth
            .open(data, unix_ms())
            .map_err(|e| e.to_string())
            .and_then(|m| proto::gcb::decode(&m).map_err(|e| e.to_string()));
        match decoded {
            Ok((h, m)) => UdpControl::Message(h, m),
            Err(e) => {
                debug!("proxy udp: dropped {} bytes from {from}: {e}", data.len());
                UdpControl::Refused
            }
        }
    }
}
