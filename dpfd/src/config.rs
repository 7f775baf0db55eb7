//! dpfd's effective configuration: the TOML file format, the merge of
//! flags, file and defaults (flag or environment > file > default), and the
//! checks that involve several settings at once.
//!
//! Merging is a pure function of its inputs (the host's interface addresses
//! are passed in) so it can be tested without a process, and so SIGHUP can
//! rerun it with the original command line and the re-read file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use daemon_kit::settings::{self, from_file, in_bounds, pick, relative_to, Shared, MAX_SECONDS};
use daemon_kit::values::{shown, shown_list, shown_path};
use serde::Serialize;

use crate::cli::DaemonArgs;
use crate::net::{self, Cidr, IfAddr};
use crate::values::{parse_ip, parse_table_name, PortRange, Secret};

mod checks;
mod file;
use checks::{check_mirror, check_port_range, check_public_ips, derive_private_net};
#[cfg(test)]
pub use file::parse_file;
pub use file::FileConfig;

/// dpfd's command port when --listen gives only an IP: one above GCB's
/// 65432, so both daemons can share a gateway.
pub const DEFAULT_COMMAND_PORT: u16 = 65433;
pub const DEFAULT_PORT_RANGE: PortRange = PortRange {
    lo: 40000,
    hi: 49999,
};
pub const DEFAULT_NFT_TABLE: &str = "dpf";
pub const DEFAULT_PROBE_INTERVAL_S: u64 = 30;
pub const DEFAULT_PER_HOST_QUOTA: u32 = 1024;
/// Requests per second per source IP: the burst covers a host asking for
/// its whole default quota at once.
pub const DEFAULT_RATE_LIMIT: u32 = 1000;
/// NAT-PMP's and PCP's port (RFC 6886, RFC 6887).
pub const DEFAULT_PCP_PORT: u16 = 5351;
/// RFC 6887 §15 suggests no shorter lease, so a client's renewals stay rare.
pub const DEFAULT_PCP_MIN_LIFETIME_S: u32 = 120;
/// A day, as miniupnpd grants at most.
pub const DEFAULT_PCP_MAX_LIFETIME_S: u32 = 86_400;

/// The merged and checked configuration the daemon runs with. It
/// serializes as its settings under their config-file keys, for the reload
/// report (`reload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    /// NAT-PMP and PCP port on the --listen IP; 0 turns them off.
    pub pcp_port: u16,
    #[serde(rename = "public_ip", serialize_with = "shown_list")]
    pub public_ips: Vec<IpAddr>,
    #[serde(serialize_with = "shown")]
    pub port_range: PortRange,
    #[serde(serialize_with = "shown_path")]
    pub mirror: PathBuf,
    pub nft_table: String,
    #[serde(rename = "private_net", serialize_with = "shown_list")]
    pub private_nets: Vec<Cidr>,
    /// The private network was derived from --listen, not given.
    #[serde(skip)]
    pub private_nets_derived: bool,
    pub probe_interval_s: u64,
    pub per_host_quota: u32,
    /// Requests per second per source IP; 0 means no limit.
    pub rate_limit: u32,
    pub pcp_min_lifetime_s: u32,
    pub pcp_max_lifetime_s: u32,
    /// Answer NAT-PMP and PCP even with a secret (they cannot carry it).
    pub allow_unauthenticated_pcp: bool,
    /// The secret file, the log filter, `/metrics`.
    pub shared: Shared,
}

/// What merging needs from the process and the host, passed in so tests can
/// choose it.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub rust_log: Option<String>,
    pub addresses: Vec<IfAddr>,
    /// The options given on the command line or in the environment.
    pub flags: Vec<String>,
}

impl Env {
    pub fn from_process(flags: Vec<String>) -> Env {
        Env {
            rust_log: settings::rust_log_from_env(),
            addresses: net::local_addresses(),
            flags,
        }
    }
}

pub type Loaded = settings::Loaded<Config>;

/// Reads the config file named by --config (if any), merges, checks (also
/// against the file system), and reads the secret file. The error is one
/// line, without the program name.
pub fn load(args: &DaemonArgs, env: &Env) -> Result<Loaded, String> {
    let rust_log = env.rust_log.as_deref();
    let mut loaded = settings::load(&args.common, rust_log, &env.flags, |file, shared, dir| {
        let config = merge(args, file, shared, dir, env)?;
        check_mirror(&config.mirror)?;
        Ok(config)
    })?;
    for ip in &loaded.config.public_ips {
        if !env.addresses.iter().any(|a| a.ip == *ip) {
            loaded.warnings.push(format!(
                "public IP {ip} is not an address of this host; its forwards work only if \
                 traffic for it is routed here"
            ));
        }
    }
    Ok(loaded)
}

/// Parses every entry of a list from the file; `None` if the key is absent.
fn list_from_file<T>(
    key: &str,
    values: Option<&[String]>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<Vec<T>>, String> {
    let parse_one = |s: &String| parse(s).map_err(|e| format!("{key} in the config file: {e}"));
    values
        .map(|list| list.iter().map(parse_one).collect())
        .transpose()
}

/// Merges flags (and their environment variables) over the file over the
/// defaults, then checks the result as a whole. Relative paths in the file
/// are taken relative to the file's directory; on the command line, to the
/// working directory.
pub fn merge(
    args: &DaemonArgs,
    file: &FileConfig,
    shared: Shared,
    file_dir: Option<&Path>,
    env: &Env,
) -> Result<Config, String> {
    let listen = settings::command_port(args.listen, file.listen.as_deref(), DEFAULT_COMMAND_PORT)?;

    let file_public = list_from_file("public_ip", file.public_ip.as_deref(), parse_ip)?;
    let flag_public = Some(args.public_ip.clone()).filter(|v| !v.is_empty());
    let (public_ips, public_origin) = pick(flag_public, file_public, Vec::new());
    if public_ips.is_empty() {
        return Err(
            "no public address: give --public-ip IP[,IP...] or `public_ip` in the \
                    config file"
                .to_string(),
        );
    }

    let file_range = from_file("port_range", file.port_range.as_deref(), |s| s.parse())?;
    let (port_range, range_origin) = pick(args.port_range, file_range, DEFAULT_PORT_RANGE);

    let mirror = args
        .mirror
        .clone()
        .or_else(|| file.mirror.as_deref().map(|p| relative_to(file_dir, p)))
        .ok_or_else(|| {
            "no mirror file: give --mirror PATH or `mirror` in the config file".to_string()
        })?;

    let file_table = from_file("nft_table", file.nft_table.as_deref(), parse_table_name)?;
    let nft_table = pick(
        args.nft_table.clone(),
        file_table,
        DEFAULT_NFT_TABLE.to_string(),
    )
    .0;

    let file_nets = list_from_file("private_net", file.private_net.as_deref(), |s| s.parse())?;
    let flag_nets = Some(args.private_net.clone()).filter(|v| !v.is_empty());
    let (private_nets, private_nets_derived) = match flag_nets.or(file_nets) {
        Some(nets) if !nets.is_empty() => (nets, false),
        Some(_) => return Err("private_net in the config file is an empty list".to_string()),
        None => (vec![derive_private_net(listen, &env.addresses)?], true),
    };

    let probe_interval_s = in_bounds(
        "probe_interval_s",
        pick(
            args.probe_interval_s,
            file.probe_interval_s,
            DEFAULT_PROBE_INTERVAL_S,
        ),
        1,
        MAX_SECONDS,
    )?;
    let per_host_quota = in_bounds(
        "per_host_quota",
        pick(
            args.per_host_quota,
            file.per_host_quota,
            DEFAULT_PER_HOST_QUOTA,
        ),
        1,
        u32::MAX,
    )?;
    let rate_limit = pick(args.rate_limit, file.rate_limit, DEFAULT_RATE_LIMIT).0;

    let pcp_port = pick(args.pcp_port, file.pcp_port, DEFAULT_PCP_PORT).0;
    let pcp_min_lifetime_s = in_bounds(
        "pcp_min_lifetime_s",
        pick(
            args.pcp_min_lifetime_s,
            file.pcp_min_lifetime_s,
            DEFAULT_PCP_MIN_LIFETIME_S,
        ),
        1,
        MAX_SECONDS as u32,
    )?;
    let pcp_max_lifetime_s = in_bounds(
        "pcp_max_lifetime_s",
        pick(
            args.pcp_max_lifetime_s,
            file.pcp_max_lifetime_s,
            DEFAULT_PCP_MAX_LIFETIME_S,
        ),
        pcp_min_lifetime_s,
        MAX_SECONDS as u32,
    )?;
    let allow_unauthenticated_pcp =
        args.allow_unauthenticated_pcp || file.allow_unauthenticated_pcp.unwrap_or(false);

    check_public_ips(&public_ips, public_origin, &private_nets)?;
    check_port_range(listen, &public_ips, port_range, range_origin)?;
    Ok(Config {
        listen,
        public_ips,
        port_range,
        mirror,
        nft_table,
        private_nets,
        private_nets_derived,
        probe_interval_s,
        per_host_quota,
        rate_limit,
        pcp_port,
        pcp_min_lifetime_s,
        pcp_max_lifetime_s,
        allow_unauthenticated_pcp,
        shared,
    })
}

/// Comma-joined, for the summary and the reload report.
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

impl Config {
    /// The one-line startup summary, with the command address as bound (it
    /// differs from `listen` when port 0 asked the kernel to choose); never
    /// shows the secret itself.
    pub fn summary(&self, bound: SocketAddr, secret: Option<&Secret>) -> String {
        let derived = if self.private_nets_derived {
            " (subnet of --listen)"
        } else {
            ""
        };
        let auth = secret.map_or_else(|| "off".to_string(), |s| format!("HMAC with {s}"));
        let rate = match self.rate_limit {
            0 => "off".to_string(),
            n => format!("{n}/s per source IP"),
        };
        let metrics = self
            .shared
            .metrics_listen
            .map_or_else(String::new, |m| format!(", metrics http://{m}/metrics"));
        let standard = match (
            self.pcp_port,
            secret.is_some() && !self.allow_unauthenticated_pcp,
        ) {
            (0, _) => "off".to_string(),
            (port, refused) => format!(
                "udp port {port}, leases {}-{} s{}",
                self.pcp_min_lifetime_s,
                self.pcp_max_lifetime_s,
                if refused {
                    ", refused (--secret-file)"
                } else {
                    ""
                }
            ),
        };
        format!(
            "command port udp {bound}, requests from {}{derived}, forwards on {} ports {} \
             ({} ports), nft table {}, mirror {}, probe every {}s, per-host quota {}, \
             rate limit {rate}, authentication {auth}, NAT-PMP/PCP {standard}, log {}{metrics}",
            list(&self.private_nets),
            list(&self.public_ips),
            self.port_range,
            self.port_range.len(),
            self.nft_table,
            self.mirror.display(),
            self.probe_interval_s,
            self.per_host_quota,
            self.shared.log_filter,
        )
    }
}

#[cfg(test)]
mod tests;
