//! The one door between the shim's messages and the wire: every GCB and DPF
//! datagram the shim sends is encoded here (and sealed when
//! `GCB_SECRET_FILE` is set), and every one it receives is opened here
//! before it is decoded. Call sites use [`gcb_encode`]/[`dpf_encode`] in
//! place of the proto encoders and [`gcb_decode`]/[`dpf_decode`] or
//! [`verify`] in place of the decoders, so none can forget the secret.
//!
//! What is checked where (proto `auth` explains the order):
//! * replies to the shim's own requests ([`gcb_decode`], [`dpf_decode`]):
//!   MAC and time window. No replay guard: the requester accepts a reply only
//!   for a request id it has in flight, once, so a replayed reply is either
//!   for a request long gone or a copy of the one just accepted;
//! * the broker's commands to a listener (`gcb::mgmt`): [`verify`], then the
//!   reply cache, then [`admit`] with the registry's guard, so a forged or
//!   replayed `ReverseConnect`/`RelayConnect` never makes a listener dial.
//!
//! Without a secret these are the plain proto encoders and decoders; a
//! sealed datagram then fails to decode (`AuthUnsupported`) and is dropped.

use std::time::{SystemTime, UNIX_EPOCH};

use once_cell::race::OnceBox;
use proto::auth::{AuthError, Authenticator, ReplayGuard, Stamp};
use proto::{dpf, gcb, DecodeError, EncodeError, Family, Header};

use crate::config;
use crate::client::sys;

/// The sealing key, built once from the configuration.
static AUTH: OnceBox<Option<Authenticator>> = OnceBox::new();

fn auth() -> Option<&'static Authenticator> {
    AUTH.get_or_init(|| {
        Box::new(config::get().secret.as_ref().map(|s| Authenticator::new(s.bytes(), 1)))
    })
    .as_ref()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seals the output of any encoder (for messages added later, e.g. a
/// family's new kinds); passes it through without a secret.
pub fn seal(encoded: Result<Vec<u8>, EncodeError>) -> Result<Vec<u8>, EncodeError> {
    match auth() {
        Some(a) => a.seal(encoded, Stamp { unix_ms: unix_ms(), nonce: sys::random_u64() }),
        None => encoded,
    }
}

/// `gcb::encode`, sealed when a secret is configured.
pub fn gcb_encode(msg: &gcb::Message, request_id: u64) -> Result<Vec<u8>, EncodeError> {
    seal(gcb::encode(msg, request_id))
}

/// `dpf::encode`, sealed when a secret is configured.
pub fn dpf_encode(msg: &dpf::Message, request_id: u64) -> Result<Vec<u8>, EncodeError> {
    seal(dpf::encode(msg, request_id))
}

/// A received datagram opened for decoding: its plain bytes, and the stamp
/// to [`admit`] before acting on it (`None` without a secret).
pub struct Opened<'a> {
    pub message: std::borrow::Cow<'a, [u8]>,
    pub stamp: Option<Stamp>,
}

/// Checks MAC and window when a secret is configured.
pub fn verify(datagram: &[u8]) -> Result<Opened<'_>, AuthError> {
    let Some(key) = auth() else {
        return Ok(Opened { message: datagram.into(), stamp: None });
    };
    // Verification needs no mutable state: the shim's threads share the
    // key read-only, and counting refusals is the daemons' business.
    let v = proto::auth::verify(datagram, key.key(), unix_ms())?;
    Ok(Opened { message: v.message.into(), stamp: Some(v.stamp) })
}

/// The replay check for an opened datagram, with the caller's guard.
pub fn admit(guard: &mut ReplayGuard, stamp: Option<Stamp>) -> Result<(), AuthError> {
    match stamp {
        Some(s) => guard.admit(s, unix_ms()),
        None => Ok(()),
    }
}

/// A guard sized for one client.
pub fn new_guard() -> ReplayGuard {
    ReplayGuard::new(ReplayGuard::CLIENT_CAP)
}

/// An authentication failure as the decoders' error: foreign input stays
/// `NotProtocol` (the exchange gives up on it at once), anything else is an
/// unusable datagram that is dropped while the retransmissions go on.
fn refused(datagram: &[u8], family: Family) -> impl FnOnce(AuthError) -> DecodeError {
    let foreign = Family::of(datagram) != Some(family);
    move |_| if foreign { DecodeError::NotProtocol } else { DecodeError::BadValue("authentication") }
}

/// Opens and decodes a GCB reply.
pub fn gcb_decode(datagram: &[u8]) -> Result<(Header, gcb::Message), DecodeError> {
    gcb::decode(&verify(datagram).map_err(refused(datagram, Family::Gcb))?.message)
}

/// Opens and decodes a DPF reply.
pub fn dpf_decode(datagram: &[u8]) -> Result<(Header, dpf::Message), DecodeError> {
    dpf::decode(&verify(datagram).map_err(refused(datagram, Family::Dpf))?.message)
}
