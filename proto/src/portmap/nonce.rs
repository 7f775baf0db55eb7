//! Mapping nonces derived from a client's secret (RFC 6887 §11.1 asks only
//! that a nonce be unguessable by others). A PCP server lets only the
//! holder of a mapping's nonce renew or delete it, and refuses anyone else a
//! mapping of the same internal address until its lease ends. A client
//! whose nonce is a keyed hash of the internal address, with a secret kept
//! between its runs, is that holder again after a crash or a restart: it
//! renews the mapping its predecessor left, at the same external address,
//! rather than waiting out the lease. Without the secret nobody can.

use std::net::SocketAddrV4;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::common::Proto;

/// The nonce for `proto` `internal` under `secret`: the first 96 bits of
/// HMAC-SHA256 over a label, the protocol and the address.
pub fn derived_nonce(secret: &[u8], proto: Proto, internal: SocketAddrV4) -> [u8; 12] {
    // HMAC takes keys of every length, so this never falls back.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(b"pcp mapping nonce\0");
    mac.update(&[proto.wire()]);
    mac.update(&internal.ip().octets());
    mac.update(&internal.port().to_be_bytes());
    let tag = mac.finalize().into_bytes();
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&tag[..12]);
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_nonce_per_secret_protocol_and_address() {
        let a: SocketAddrV4 = "192.0.2.10:7000".parse().unwrap();
        let b: SocketAddrV4 = "192.0.2.10:7001".parse().unwrap();
        let n = derived_nonce(b"secret", Proto::Tcp, a);
        assert_eq!(n, derived_nonce(b"secret", Proto::Tcp, a), "stable");
        let others = [
            derived_nonce(b"secret", Proto::Udp, a),
            derived_nonce(b"secret", Proto::Tcp, b),
            derived_nonce(b"other", Proto::Tcp, a),
            derived_nonce(b"", Proto::Tcp, a),
        ];
        assert!(others.iter().all(|o| *o != n), "{others:?}");
    }
}
