//! Value parsers for flags and config keys: the daemon-wide ones live in
//! `daemon_kit::values`, so both daemons read addresses, ranges, levels and secret
//! files the same way. [`Networks`] is the broker's list form of them.

pub use daemon_kit::values::*;

use std::fmt;
use std::str::FromStr;

/// A comma-separated list of networks (`--status-allow`), as one value, so
/// clap and the config file parse it the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<Cidr>);

impl FromStr for Networks {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_cidr_list(s).map(Networks)
    }
}

impl fmt::Display for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let list: Vec<String> = self.0.iter().map(Cidr::to_string).collect();
        f.write_str(&list.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_print() {
        let n: Networks = "10.0.0.0/8, 192.0.2.1".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8,192.0.2.1/32");
        assert_eq!(Networks::default().to_string(), "none");
        assert!("10.0.0.0/99".parse::<Networks>().is_err());
    }
}
