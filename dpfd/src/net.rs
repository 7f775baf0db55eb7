//! Networks: the CIDR type of --private-net, and the host's interface
//! addresses, from which the private network is derived when --private-net
//! is not given.
//!
//! dpfd accepts requests only from the private side (docs/design.md, "Security").
//! If the administrator names no network, the one that is certainly private
//! is the subnet of the interface dpfd listens on: that is what it derives,
//! with the interface's real netmask rather than a guessed /24, which could
//! be too wide (letting the public side in) or too narrow.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network, `ADDRESS/PREFIX`, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Clears the host bits of `addr` beyond `prefix`.
fn network(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

impl Cidr {
    /// The network `addr` belongs to with a `prefix`-bit mask.
    pub fn containing(addr: IpAddr, prefix: u8) -> Cidr {
        let prefix = prefix.min(max_prefix(addr));
        Cidr {
            addr: network(addr, prefix),
            prefix,
        }
    }

    /// Whether `ip` is inside; an IPv4-mapped IPv6 address (as a dual-stack
    /// socket reports IPv4 peers) counts as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && network(ip, self.prefix) == self.addr
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not a network ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("network '{s}': '{addr}' is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max_prefix(addr))
            .ok_or_else(|| format!("network '{s}': '{prefix}' is not a prefix length"))?;
        let cidr = Cidr::containing(addr, prefix);
        // A typo such as 192.0.2.5/24 for 192.0.2.0/24 is refused rather than
        // silently widened: this list decides who may open the NAT.
        if cidr.addr != addr {
            return Err(format!(
                "network '{s}' has host bits set; did you mean {cidr}?"
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One address of a local interface, with its netmask as a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    pub ip: IpAddr,
    pub prefix: u8,
}

/// The host's interface addresses. A failure to list them leaves the list
/// empty: derivation then fails with a message asking for --private-net.
pub fn local_addresses() -> Vec<IfAddr> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in list {
        let (Some(addr), Some(mask)) = (entry.address, entry.netmask) else {
            continue;
        };
        if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            let prefix = u32::from(m.ip()).count_ones() as u8;
            out.push(IfAddr {
                ip: IpAddr::V4(a.ip()),
                prefix,
            });
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            let prefix = u128::from(m.ip()).count_ones() as u8;
            out.push(IfAddr {
                ip: IpAddr::V6(a.ip()),
                prefix,
            });
        }
    }
    out
}

/// The subnet of the interface that carries `ip`, if any does.
pub fn subnet_of(ip: IpAddr, addresses: &[IfAddr]) -> Option<Cidr> {
    addresses
        .iter()
        .find(|a| a.ip == ip)
        .map(|a| Cidr::containing(a.ip, a.prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_contain() {
        let net: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(net.contains(ip("192.0.2.200")));
        assert!(!net.contains(ip("192.0.3.1")));
        assert!(net.contains(ip("::ffff:192.0.2.9")));
        assert!(!net.contains(ip("2001:db8::1")));
        assert_eq!(net.to_string(), "192.0.2.0/24");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        let host: Cidr = "198.51.100.7/32".parse().unwrap();
        assert!(host.contains(ip("198.51.100.7")) && !host.contains(ip("198.51.100.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
    }

    #[test]
    fn bad_networks() {
        for bad in [
            "192.0.2.0",
            "192.0.2.0/33",
            "x/24",
            "192.0.2.0/-1",
            "::/129",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
        let err = "192.0.2.5/24".parse::<Cidr>().unwrap_err();
        assert!(err.contains("did you mean 192.0.2.0/24"), "{err}");
    }

    #[test]
    fn subnet_comes_from_the_interface_mask() {
        let addrs = [
            IfAddr {
                ip: ip("203.0.113.1"),
                prefix: 24,
            },
            IfAddr {
                ip: ip("10.1.2.3"),
                prefix: 16,
            },
        ];
        assert_eq!(
            subnet_of(ip("10.1.2.3"), &addrs),
            Some("10.1.0.0/16".parse().unwrap())
        );
        assert_eq!(subnet_of(ip("10.1.2.4"), &addrs), None);
    }

    #[test]
    fn loopback_is_listed() {
        let addrs = local_addresses();
        assert!(
            addrs.contains(&IfAddr {
                ip: ip("127.0.0.1"),
                prefix: 8
            }),
            "{addrs:?}"
        );
    }
}
