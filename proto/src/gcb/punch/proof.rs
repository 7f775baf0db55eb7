//! What each side shows on a punched TCP connection instead of the token
//! (docs/hole-punching.md, step 4): a per-role proof.
//!
//! The first hello on a punched connection goes to whoever connected from
//! the peer's mapping, which a host behind the peer's gateway (or the gateway
//! itself) can do. Were that hello to carry the token, such a host could
//! replay it with the role flipped and pass the other side's check. So each
//! side sends [`PunchProof::of`] its own role and checks the peer's against
//! the opposite role: the first 8 bytes of HMAC-SHA256 keyed with the token
//! over a fixed label and the role byte. Whoever learns one side's proof
//! still cannot make the other's without the token.
//!
//! The rendezvous connection to the broker keeps the raw token
//! ([`PunchHello`](super::PunchHello)): the broker finds the meeting by it,
//! and that connection does not go through a punched mapping.

use std::net::SocketAddrV4;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::frames::{hello_bytes, hello_fields, role_byte, PunchHello};
use crate::gcb::{Frame, Role, Token};
use crate::wire::DecodeError;

/// Bound into every proof, so that it is no other use of HMAC with the token.
const LABEL: &[u8] = b"gcb punch proof\0";

/// A side's proof of the token for its role, as sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PunchProof(pub [u8; 8]);

fn mac(token: Token, role: Role) -> Hmac<Sha256> {
    // HMAC takes keys of every length, so this never falls back.
    let mut mac = Hmac::<Sha256>::new_from_slice(&token.0.to_be_bytes()).unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
    mac.update(LABEL);
    mac.update(&[role_byte(role)]);
    mac
}

impl PunchProof {
    /// The proof a side of `role` shows for `token`.
    pub fn of(token: Token, role: Role) -> Self {
        let tag = mac(token, role).finalize().into_bytes();
        let mut proof = [0u8; 8];
        proof.copy_from_slice(&tag[..8]);
        PunchProof(proof)
    }

    /// Whether this is the proof of `role` for `token`, compared in constant
    /// time (a stranger may try many).
    pub fn proves(&self, token: Token, role: Role) -> bool {
        mac(token, role).verify_truncated_left(&self.0).is_ok()
    }
}

/// First bytes each side sends on a punched connection: [`PunchHello`]'s
/// layout and magic, with the sender's proof where the token would be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerHello {
    pub proof: PunchProof,
    pub role: Role,
    /// The sending socket's own address; not checked (the peer's address is).
    pub local: SocketAddrV4,
}

impl PeerHello {
    pub fn to_bytes(&self) -> [u8; 22] {
        hello_bytes(self.role, 0, self.proof.0, self.local)
    }

    /// Whether this is the hello of the side opposite `ours` in the punch
    /// for `token`: that role, and that role's proof.
    pub fn is_peer_of(&self, token: Token, ours: Role) -> bool {
        let theirs = match ours {
            Role::Connector => Role::Listener,
            Role::Listener => Role::Connector,
        };
        self.role == theirs && self.proof.proves(token, theirs)
    }
}

impl Frame for PeerHello {
    const LEN: usize = PunchHello::LEN;
    const MAGIC: [u8; 4] = PunchHello::MAGIC;

    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let (role, _, proof, local) = hello_fields::<Self>(buf, 0)?;
        Ok(PeerHello { proof: PunchProof(proof), role, local })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategies::{self, hex};
    use proptest::prelude::*;

    const TOKEN: Token = Token(0x1122_3344_5566_7788);

    fn hello(proof: PunchProof, role: Role) -> PeerHello {
        PeerHello { proof, role, local: "192.0.2.10:40000".parse().unwrap() }
    }

    /// The vectors were computed apart from this code, with Python's `hmac`:
    /// `hmac.new(token.to_bytes(8, "big"), b"gcb punch proof\0" + bytes([role]), "sha256")`.
    #[test]
    fn proofs_golden() {
        assert_eq!(PunchProof::of(TOKEN, Role::Connector), PunchProof(hex("c42fdb4de610d1fe").try_into().unwrap()));
        assert_eq!(PunchProof::of(TOKEN, Role::Listener), PunchProof(hex("a99b672449d9cf27").try_into().unwrap()));
        let h = hello(PunchProof::of(Token(0xa1b2), Role::Listener), Role::Listener);
        assert_eq!(h.to_bytes().to_vec(), hex("4743424a 01 02 0000 96af1b751f56f254 c000020a 9c40"), "the rendezvous hello's layout, the proof in the token's place");
        assert_eq!(PeerHello::decode(&h.to_bytes()), Ok(h));
    }

    #[test]
    fn a_proof_belongs_to_one_role_of_one_token() {
        let c = PunchProof::of(TOKEN, Role::Connector);
        let l = PunchProof::of(TOKEN, Role::Listener);
        assert_ne!(c, l);
        assert_ne!(c, PunchProof::of(Token(TOKEN.0 ^ 1), Role::Connector));
        assert_ne!(c.0, TOKEN.0.to_be_bytes(), "not the token");
        assert!(c.proves(TOKEN, Role::Connector) && l.proves(TOKEN, Role::Listener));
        assert!(!c.proves(TOKEN, Role::Listener) && !l.proves(TOKEN, Role::Connector));
        assert!(!c.proves(Token(TOKEN.0 ^ 1), Role::Connector));
    }

    /// The connector accepts the listener's hello and nothing a stranger
    /// could make from what it saw: the token itself (an older shim's hello,
    /// or a leaked one), the connector's own proof sent back with the role
    /// flipped (the replay), its own hello unchanged, or another punch's proof.
    #[test]
    fn only_the_opposite_roles_proof_passes() {
        let ours = Role::Connector;
        assert!(hello(PunchProof::of(TOKEN, Role::Listener), Role::Listener).is_peer_of(TOKEN, ours));
        let refused = [
            hello(PunchProof(TOKEN.0.to_be_bytes()), Role::Listener),
            hello(PunchProof::of(TOKEN, Role::Connector), Role::Listener),
            hello(PunchProof::of(TOKEN, Role::Connector), Role::Connector),
            hello(PunchProof::of(TOKEN, Role::Listener), Role::Connector),
            hello(PunchProof::of(Token(7), Role::Listener), Role::Listener),
        ];
        for h in refused {
            assert!(!h.is_peer_of(TOKEN, ours), "{h:?}");
        }
        assert!(hello(PunchProof::of(TOKEN, Role::Connector), Role::Connector).is_peer_of(TOKEN, Role::Listener));
    }

    proptest! {
        #![proptest_config(strategies::config())]

        #[test]
        fn each_side_accepts_the_others_hello_and_no_replay(token in any::<u64>(), connector in any::<bool>(), local in strategies::addr()) {
            let (token, ours) = (Token(token), if connector { Role::Connector } else { Role::Listener });
            let theirs = if connector { Role::Listener } else { Role::Connector };
            let h = PeerHello { proof: PunchProof::of(token, theirs), role: theirs, local };
            prop_assert_eq!(PeerHello::decode(&h.to_bytes()), Ok(h));
            prop_assert!(h.is_peer_of(token, ours));
            let replay = PeerHello { proof: PunchProof::of(token, ours), role: theirs, local };
            prop_assert!(!replay.is_peer_of(token, ours));
            let raw = PeerHello { proof: PunchProof(token.0.to_be_bytes()), role: theirs, local };
            prop_assert!(!raw.is_peer_of(token, ours));
        }
    }
}
