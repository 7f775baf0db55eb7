//! The `GCB_ROUTE` table: which destinations never need brokering.
//!
//! One rule per line, `CIDR direct|gcb`, matched longest prefix first. Blank lines
//! and `#` comments are allowed. A bare address is a host route. A destination no
//! rule matches is `gcb`: the connector asks the broker (docs/design.md, "Non-GCB peers").

use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Connect straight to the address given; never ask the broker.
    Direct,
    /// Ask the broker first.
    Gcb,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    net: IpAddr,
    prefix: u8,
    route: Route,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Longest prefix first, so the first match wins.
    rules: Vec<Rule>,
}

impl Table {
    /// Parses the file's text. The error names the line: `line 3: ...`.
    pub fn parse(text: &str) -> Result<Table, String> {
        let mut rules: Vec<(usize, Rule)> = Vec::new();
        for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let rule = parse_rule(line).map_err(|e| format!("line {n}: {e}"))?;
            if let Some((first, _)) = rules.iter().find(|(_, r)| (r.net, r.prefix) == (rule.net, rule.prefix)) {
                return Err(format!("line {n}: {}/{} is already on line {first}", rule.net, rule.prefix));
            }
            rules.push((n, rule));
        }
        let mut rules: Vec<Rule> = rules.into_iter().map(|(_, r)| r).collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.prefix));
        Ok(Table { rules })
    }

    /// The route for `dest`: the longest matching prefix, or [`Route::Gcb`].
    pub fn lookup(&self, dest: IpAddr) -> Route {
        let dest = dest.to_canonical();
        self.rules.iter().find(|r| contains(r.net, r.prefix, dest)).map_or(Route::Gcb, |r| r.route)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    let mut words = line.split_whitespace();
    let (Some(cidr), Some(route), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("'{line}' is not 'CIDR direct|gcb'"));
    };
    let route = match route {
        r if r.eq_ignore_ascii_case("direct") => Route::Direct,
        r if r.eq_ignore_ascii_case("gcb") => Route::Gcb,
        r => return Err(format!("'{r}' is not direct or gcb")),
    };
    let (addr, prefix) = match cidr.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (cidr, None),
    };
    let net: IpAddr = addr.parse().map_err(|_| format!("'{addr}' is not an IP address"))?;
    let net = net.to_canonical();
    let bits = if net.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => bits,
        Some(p) => p.parse::<u8>().ok().filter(|&p| p <= bits).ok_or_else(|| {
            format!("'/{p}' is not a prefix length from 0 to {bits}")
        })?,
    };
    let masked = mask(net, prefix);
    if masked != net {
        return Err(format!("'{cidr}' has host bits set (did you mean {masked}/{prefix}?)"));
    }
    Ok(Rule { net, prefix, route })
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

fn contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    net.is_ipv4() == ip.is_ipv4() && mask(ip, prefix) == net
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let t = Table::parse(
            "# campus\n10.0.0.0/8 direct\n10.1.0.0/16 gcb   # the lab behind NAT\n\n10.1.2.3 direct\n",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(ip("10.9.9.9")), Route::Direct);
        assert_eq!(t.lookup(ip("10.1.9.9")), Route::Gcb);
        assert_eq!(t.lookup(ip("10.1.2.3")), Route::Direct);
        assert_eq!(t.lookup(ip("192.0.2.1")), Route::Gcb, "unmatched asks the broker");
        assert_eq!(t.lookup(ip("::ffff:10.9.9.9")), Route::Direct, "mapped v4 matches v4 rules");
    }

    #[test]
    fn default_route_and_ipv6() {
        let t = Table::parse("0.0.0.0/0 DIRECT\n2001:db8::/32 gcb\n").unwrap();
        assert_eq!(t.lookup(ip("203.0.113.9")), Route::Direct);
        assert_eq!(t.lookup(ip("2001:db8::1")), Route::Gcb);
        assert_eq!(t.lookup(ip("2001:db9::1")), Route::Gcb);
        assert!(Table::parse("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("10.0.0.0/8\n", "line 1: '10.0.0.0/8' is not"),
            ("\n10.0.0.0/8 relay\n", "line 2: 'relay' is not direct or gcb"),
            ("10.0.0.0/33 direct", "line 1: '/33' is not a prefix length"),
            ("10.0.0.0/x direct", "'/x' is not a prefix length"),
            ("host.example direct", "'host.example' is not an IP address"),
            ("10.0.0.1/8 direct", "did you mean 10.0.0.0/8?"),
            ("10.0.0.0/8 direct extra", "is not 'CIDR direct|gcb'"),
            ("10.0.0.0/8 direct\n10.0.0.0/8 gcb", "line 2: 10.0.0.0/8 is already on line 1"),
        ];
        for (text, want) in cases {
            let err = Table::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }
}
