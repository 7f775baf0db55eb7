//! The network-situation rules of docs/design.md ("Network situation"), as pure
//! functions: who is public, which realm a party is in, and, for a listener
//! and a connector, who dials whom.
//!
//! A party is public when the address it reports for itself (the management
//! socket's `getsockname` for a listener, the connector socket's address for
//! a connector) is the address its request arrived from: no NAT rewrote it.
//! Otherwise it is private, and its realm (the private network it is in) is
//! its public source IP, unless it names one with `GCB_REALM`.
//!
//! | listener | connector            | path      |
//! | -------- | -------------------- | --------- |
//! | public   | any                  | Direct    |
//! | private  | same realm           | SameRealm |
//! | private  | public               | Reversal  |
//! | private  | private, other realm | Relay     |
//!
//! The rows are tried in this order. So a public connector whose realm
//! equals a private listener's realm dials the listener's local address:
//! that happens when the connector runs on the NAT gateway itself (its own
//! public IP is the realm's source IP), where the local address is indeed
//! reachable.

use std::fmt;
use std::net::Ipv4Addr;

/// The private network a party is in, for the same-realm test. A realm
/// named with `GCB_REALM` and one guessed from a source IP never match each
/// other, even if the name spells that IP: the administrator who names
/// realms names them on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Realm {
    /// Given by the client (`GCB_REALM`).
    Named(String),
    /// The client's public source IP, the broker's guess.
    Ip(Ipv4Addr),
}

impl fmt::Display for Realm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Realm::Named(name) => write!(f, "\"{name}\""),
            Realm::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Where a party sits, as far as brokering is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Situation {
    pub public: bool,
    pub realm: Realm,
}

impl fmt::Display for Situation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.public { "public" } else { "private" };
        write!(f, "{place}, realm {}", self.realm)
    }
}

/// Classifies a party from the IP it reports for itself, the IP its request
/// came from, and its `GCB_REALM` (an empty name counts as none, since an
/// empty environment variable usually means "unset").
pub fn situation(reported: Ipv4Addr, source: Ipv4Addr, realm: Option<&str>) -> Situation {
    let realm = match realm {
        Some(name) if !name.is_empty() => Realm::Named(name.to_owned()),
        _ => Realm::Ip(source),
    };
    Situation {
        public: reported == source,
        realm,
    }
}

/// Who dials whom: the decision without its addresses and tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// The connector dials the listener's real (local) address.
    Direct,
    /// The connector dials the listener's local address in their realm.
    SameRealm,
    /// The listener dials the connector.
    Reversal,
    /// Both dial the broker's rendezvous port, which relays.
    Relay,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::SameRealm => "same realm",
            Path::Reversal => "reversal",
            Path::Relay => "relay",
        })
    }
}

/// The decision table (module docs).
pub fn decide(listener: &Situation, connector: &Situation) -> Path {
    if listener.public {
        Path::Direct
    } else if listener.realm == connector.realm {
        Path::SameRealm
    } else if connector.public {
        Path::Reversal
    } else {
        Path::Relay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A public host, a host behind NAT gateway A, one behind gateway B.
    fn public() -> Situation {
        situation(ip("203.0.113.5"), ip("203.0.113.5"), None)
    }
    fn in_a() -> Situation {
        situation(ip("192.168.1.10"), ip("198.51.100.1"), None)
    }
    fn in_b() -> Situation {
        situation(ip("192.168.1.20"), ip("198.51.100.2"), None)
    }

    #[test]
    fn classification() {
        assert_eq!(
            public(),
            Situation {
                public: true,
                realm: Realm::Ip(ip("203.0.113.5"))
            }
        );
        let a = in_a();
        assert!(!a.public);
        assert_eq!(a.realm, Realm::Ip(ip("198.51.100.1")));
        let named = situation(ip("10.0.0.1"), ip("198.51.100.1"), Some("lab"));
        assert_eq!(named.realm, Realm::Named("lab".into()));
        assert_eq!(named.to_string(), "private, realm \"lab\"");
        let empty = situation(ip("10.0.0.1"), ip("198.51.100.1"), Some(""));
        assert_eq!(empty.realm, Realm::Ip(ip("198.51.100.1")));
    }

    #[test]
    fn row_1_public_listener_is_dialed_directly_by_anyone() {
        for connector in [public(), in_a(), in_b()] {
            assert_eq!(decide(&public(), &connector), Path::Direct);
        }
    }

    #[test]
    fn row_2_same_realm_dials_the_local_address() {
        let other_host_in_a = situation(ip("192.168.1.11"), ip("198.51.100.1"), None);
        assert_eq!(decide(&in_a(), &other_host_in_a), Path::SameRealm);
        // Named realms match by name, whatever the source IPs.
        let l = situation(ip("10.0.0.1"), ip("198.51.100.1"), Some("lab"));
        let c = situation(ip("10.0.0.2"), ip("198.51.100.9"), Some("lab"));
        assert_eq!(decide(&l, &c), Path::SameRealm);
        // A connector on the gateway itself: public, and in the realm.
        let gateway = situation(ip("198.51.100.1"), ip("198.51.100.1"), None);
        assert_eq!(decide(&in_a(), &gateway), Path::SameRealm);
    }

    #[test]
    fn row_3_private_listener_public_connector_is_reversed() {
        assert_eq!(decide(&in_a(), &public()), Path::Reversal);
        let named = situation(ip("10.0.0.1"), ip("198.51.100.1"), Some("lab"));
        assert_eq!(decide(&named, &public()), Path::Reversal);
    }

    #[test]
    fn row_4_private_to_other_private_is_relayed() {
        assert_eq!(decide(&in_a(), &in_b()), Path::Relay);
        // A name and a guessed IP never match, even behind the same NAT.
        let named = situation(ip("192.168.1.11"), ip("198.51.100.1"), Some("lab"));
        assert_eq!(decide(&in_a(), &named), Path::Relay);
        assert_eq!(Path::Relay.to_string(), "relay");
    }
}
