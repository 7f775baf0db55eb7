//! The config file as written: TOML keys named like the flags, and lists
//! that may be written either as TOML arrays or as comma-separated strings.
//! Reading it, with TOML errors cut to one line naming the place, is
//! `daemon_kit::settings::read_toml`.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Every key is optional; unknown keys are an error so that a typo never
/// silently leaves a setting at its default. The keys of the flags both
/// daemons take are read by `daemon_kit::settings`; named here, they are
/// known.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct FileConfig {
    pub listen: Option<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub public_ip: Option<Vec<String>>,
    pub port_range: Option<String>,
    pub mirror: Option<PathBuf>,
    pub nft_table: Option<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub private_net: Option<Vec<String>>,
    pub probe_interval_s: Option<u64>,
    pub per_host_quota: Option<u32>,
    pub rate_limit: Option<u32>,
    pub pcp_port: Option<u16>,
    pub pcp_min_lifetime_s: Option<u32>,
    pub pcp_max_lifetime_s: Option<u32>,
    pub allow_unauthenticated_pcp: Option<bool>,
    pub secret_file: Option<PathBuf>,
    pub log: Option<String>,
    pub metrics_listen: Option<String>,
}

/// Lists may be written as TOML arrays or, like the flags, as one
/// comma-separated string: `public_ip = "198.51.100.1,198.51.100.2"`.
fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an array of strings")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<String>, E> {
            Ok(s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                out.push(item);
            }
            Ok(out)
        }
    }

    d.deserialize_any(ListVisitor).map(Some)
}

/// Parses the TOML text as a `FileConfig`, for tests; the daemon reads the
/// file through `settings::read_toml`, which gives the same errors.
#[cfg(test)]
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    daemon_kit::settings::parse_toml(text)
}
