//! The test bed's topology as `scripts/netns list --json` describes it: hosts,
//! their namespaces, addresses and realms. Parsing it (rather than repeating the
//! addresses here) keeps the script the single source of truth, and checking it
//! strictly catches a script and a test crate that disagree.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::{json, NatKind, HOSTS};

/// A prefix `scripts/netns` accepts: ^[a-z0-9]{1,10}$.
pub fn valid_prefix(p: &str) -> bool {
    (1..=10).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Which network a host sits in. Gateways carry the realm they serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    Public,
    A,
    B,
}

/// One host of the test bed as `scripts/netns list --json` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    pub netns: String,
    /// Public address first for gateways.
    pub ips: Vec<Ipv4Addr>,
    pub realm: Realm,
    pub gateway: bool,
    /// A gateway's NAT kind; None for other hosts, and for a gateway whose kind
    /// the listing could not tell (its filter table was replaced by hand).
    pub nat: Option<NatKind>,
}

/// The whole topology of one test bed.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub prefix: String,
    pub hosts: BTreeMap<String, HostInfo>,
}

impl Topology {
    /// Parse the output of `scripts/netns list PREFIX --json`.
    pub fn from_json(text: &str) -> Result<Topology, String> {
        let v = json::parse(text)?;
        let prefix = v
            .get("prefix")
            .and_then(|p| p.as_str())
            .ok_or("list --json: no \"prefix\" string")?;
        if !valid_prefix(prefix) {
            return Err(format!("list --json: bad prefix {prefix:?}"));
        }
        let hosts_v = v
            .get("hosts")
            .and_then(|h| h.as_object())
            .ok_or("list --json: no \"hosts\" object")?;
        let mut hosts = BTreeMap::new();
        for (name, h) in hosts_v {
            let bad = |what: &str| format!("list --json: host {name:?}: {what}");
            let netns = h
                .get("netns")
                .and_then(|n| n.as_str())
                .ok_or_else(|| bad("no netns"))?;
            if netns != format!("{prefix}-{name}") {
                return Err(bad(&format!("netns {netns:?} does not match the prefix")));
            }
            let ips = h
                .get("ips")
                .and_then(|a| a.as_array())
                .ok_or_else(|| bad("no ips array"))?
                .iter()
                .map(|ip| {
                    ip.as_str()
                        .and_then(|s| s.parse::<Ipv4Addr>().ok())
                        .ok_or_else(|| bad("bad IPv4 address"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ips.is_empty() {
                return Err(bad("no addresses"));
            }
            let realm = match h.get("realm").and_then(|r| r.as_str()) {
                Some("public") => Realm::Public,
                Some("A") => Realm::A,
                Some("B") => Realm::B,
                other => return Err(bad(&format!("bad realm {other:?}"))),
            };
            // Older listings may lack the flag; a gateway is the host with two addresses.
            let gateway = h
                .get("gateway")
                .and_then(|g| g.as_bool())
                .unwrap_or(ips.len() > 1);
            // Older listings lack "nat"; null means the gateway's kind is unknown.
            let nat = match h.get("nat") {
                None | Some(json::Value::Null) => None,
                Some(v) => Some(
                    v.as_str()
                        .ok_or_else(|| bad("\"nat\" is not a string"))?
                        .parse::<NatKind>()
                        .map_err(|e| bad(&e))?,
                ),
            };
            if nat.is_some() && !gateway {
                return Err(bad("a NAT kind on a host that is not a gateway"));
            }
            hosts.insert(
                name.clone(),
                HostInfo {
                    netns: netns.to_string(),
                    ips,
                    realm,
                    gateway,
                    nat,
                },
            );
        }
        for h in HOSTS.iter().filter(|h| **h != "sw") {
            if !hosts.contains_key(*h) {
                return Err(format!("list --json: host {h:?} missing"));
            }
        }
        Ok(Topology {
            prefix: prefix.to_string(),
            hosts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"prefix":"gcb0a1b2c","hosts":{"broker":{"netns":"gcb0a1b2c-broker","ips":["203.0.113.10"],"realm":"public","gateway":false},"pub":{"netns":"gcb0a1b2c-pub","ips":["203.0.113.20"],"realm":"public","gateway":false},"ga":{"netns":"gcb0a1b2c-ga","ips":["203.0.113.1","192.0.2.1"],"realm":"A","gateway":true,"nat":"random"},"a1":{"netns":"gcb0a1b2c-a1","ips":["192.0.2.10"],"realm":"A","gateway":false},"a2":{"netns":"gcb0a1b2c-a2","ips":["192.0.2.11"],"realm":"A","gateway":false},"gb":{"netns":"gcb0a1b2c-gb","ips":["203.0.113.2","198.51.100.1"],"realm":"B","gateway":true,"nat":null},"b1":{"netns":"gcb0a1b2c-b1","ips":["198.51.100.10"],"realm":"B","gateway":false}}}"#;

    #[test]
    fn prefix_validation() {
        for ok in ["gcb0a1b2c", "a", "t1", "0123456789"] {
            assert!(valid_prefix(ok), "{ok}");
        }
        for bad in ["", "01234567890", "Gcb", "gcb-1", "a b", "a_b", "é", "../x"] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn parses_list_json() {
        let t = Topology::from_json(SAMPLE).unwrap();
        assert_eq!(t.prefix, "gcb0a1b2c");
        assert_eq!(t.hosts.len(), 7);
        let ga = &t.hosts["ga"];
        assert_eq!(ga.netns, "gcb0a1b2c-ga");
        assert_eq!(
            ga.ips,
            vec![Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(192, 0, 2, 1)]
        );
        assert_eq!(ga.realm, Realm::A);
        assert!(ga.gateway);
        assert_eq!(ga.nat, Some(NatKind::Random));
        assert_eq!(t.hosts["gb"].nat, None);
        assert_eq!(t.hosts["a1"].nat, None);
        assert_eq!(t.hosts["b1"].realm, Realm::B);
        assert_eq!(t.hosts["broker"].realm, Realm::Public);
        assert!(!t.hosts["a1"].gateway);
    }

    #[test]
    fn rejects_inconsistent_list_json() {
        let cases = [
            SAMPLE.replace("\"gcb0a1b2c-pub\"", "\"other-pub\""),
            SAMPLE.replace("203.0.113.20", "203.0.113.300"),
            SAMPLE.replace(
                "\"realm\":\"B\",\"gateway\":false",
                "\"realm\":\"C\",\"gateway\":false",
            ),
            SAMPLE
                .replace("\"b1\":", "\"zz\":")
                .replace("gcb0a1b2c-b1", "gcb0a1b2c-zz"),
            SAMPLE.replace("\"prefix\":\"gcb0a1b2c\"", "\"prefix\":\"BAD\""),
            SAMPLE.replace("\"nat\":\"random\"", "\"nat\":\"cone\""),
            SAMPLE.replace("\"nat\":\"random\"", "\"nat\":7"),
            SAMPLE.replace(
                "\"realm\":\"B\",\"gateway\":false",
                "\"realm\":\"B\",\"gateway\":false,\"nat\":\"drop\"",
            ),
            SAMPLE[..SAMPLE.len() - 1].to_string(),
        ];
        for c in &cases {
            assert!(Topology::from_json(c).is_err(), "accepted {c}");
        }
    }
}
