//! Value parsers for flags and config keys: the daemon-wide ones come from
//! `daemon_kit::values`; what only dpfd needs (nftables names) is here.

pub use daemon_kit::values::*;

/// Checks an nftables table name. The rule set is ours alone inside this
/// table, so the name goes into `nft` commands verbatim: allowing only
/// `[A-Za-z0-9_]{1,32}` keeps it a plain identifier that needs no quoting.
pub fn parse_table_name(s: &str) -> Result<String, String> {
    let ok =
        (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "table name '{s}' must be 1 to 32 letters, digits or underscores"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert_eq!(parse_table_name("dpf_1").unwrap(), "dpf_1");
        assert!(parse_table_name(&"a".repeat(32)).is_ok());
        for bad in ["", "a-b", "a b", "t;flush ruleset", "é", &"a".repeat(33)] {
            assert!(parse_table_name(bad).is_err(), "{bad} accepted");
        }
    }
}
