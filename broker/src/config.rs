//! The broker's effective configuration: the TOML file format, the merge of
//! flags, file and defaults (flag or environment > file > default), and the
//! checks that involve several settings at once.
//!
//! Merging is a pure function of its inputs so it can be tested without a
//! process, and so SIGHUP can rerun it with the original command line and the
//! re-read file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use daemon_kit::settings::{self, from_file, in_bounds, pick, Shared, MAX_SECONDS};
use daemon_kit::values::shown;
use serde::{Deserialize, Serialize};

use crate::cli::DaemonArgs;
use crate::values::{parse_ip, Networks, PortRange, Secret};

/// Historic GCB's command port, used when --listen gives only an IP.
pub const DEFAULT_COMMAND_PORT: u16 = 65432;
/// The proxy ports when nothing names them.
pub const DEFAULT_PORT_RANGE: PortRange = PortRange {
    lo: 20000,
    hi: 29999,
};

/// The limits when nothing sets them: a heartbeat timeout of three times
/// the shim's default interval of 10 s; room in the UDP rules for every
/// worker of a large pool reporting to one collector socket (a rule is
/// about a hundred bytes); status for this host alone.
pub const DEFAULT_LIMITS: Limits = Limits {
    heartbeat_timeout_s: 30,
    max_registrations: 100_000,
    max_relays: 10_000,
    rate_limit: 200,
    udp_rule_idle_s: 120,
    udp_rules_per_registration: 4096,
    status_allow: Networks(Vec::new()),
    punch: DEFAULT_PUNCH,
};

/// The most time each side may punch (docs/hole-punching.md): the budget's
/// ceiling; about five round trips across a continent.
pub const DEFAULT_PUNCH_BUDGET_MS: u64 = 500;
/// The least (proto's `punch::budget` says why, from the bed's measurements).
pub const DEFAULT_PUNCH_BUDGET_MIN_MS: u64 = proto::gcb::punch::budget::DEFAULT_FLOOR.as_millis() as u64;
/// How long a pair of realms whose punch failed is relayed at once.
pub const DEFAULT_PUNCH_RETRY_S: u64 = 600;
/// The bounds of the punch budget's ceiling and floor: a frame carries at
/// most u16 milliseconds.
pub const PUNCH_BUDGET_MS: (u64, u64) = (10, 60_000);
/// Hole punching when nothing sets it: on, for predictable mappings only.
pub const DEFAULT_PUNCH: Punch = Punch {
    enabled: true,
    budget_ms: DEFAULT_PUNCH_BUDGET_MS,
    budget_min_ms: DEFAULT_PUNCH_BUDGET_MIN_MS,
    retry_s: DEFAULT_PUNCH_RETRY_S,
    unpredictable: false,
};

/// The merged and checked configuration the daemon runs with. It
/// serializes as its settings under their config-file keys, for the reload
/// report (`reload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub public_ip: IpAddr,
    #[serde(serialize_with = "shown")]
    pub port_range: PortRange,
    pub limits: Limits,
    /// The secret file, the log filter, `/metrics`.
    pub shared: Shared,
    /// Bind the startup sockets with IP_FREEBIND (daemon_kit::freebind).
    pub freebind: bool,
}

/// Settings that SIGHUP may change while the broker runs: they only bound
/// or govern future work (the limits, who may ask for the status) and need
/// no socket to be re-created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub heartbeat_timeout_s: u64,
    pub max_registrations: u32,
    pub max_relays: u32,
    /// Commands per second per source IP; 0 means no limit.
    pub rate_limit: u32,
    pub udp_rule_idle_s: u64,
    pub udp_rules_per_registration: u32,
    /// Networks besides the host itself that may query the status.
    #[serde(serialize_with = "shown")]
    pub status_allow: Networks,
    /// Hole punching between private realms (docs/hole-punching.md).
    pub punch: Punch,
}

/// The hole-punching settings, under their config-file keys; they only
/// govern future connects, so a reload changes them live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Punch {
    #[serde(rename = "punch")]
    pub enabled: bool,
    #[serde(rename = "punch_budget_ms")]
    pub budget_ms: u64,
    #[serde(rename = "punch_budget_min_ms")]
    pub budget_min_ms: u64,
    #[serde(rename = "punch_retry_s")]
    pub retry_s: u64,
    #[serde(rename = "punch_unpredictable")]
    pub unpredictable: bool,
}

impl Default for Punch {
    fn default() -> Self {
        DEFAULT_PUNCH
    }
}

/// The config file as written. Every key is optional; unknown keys are an
/// error so that a typo never silently leaves a setting at its default.
/// The keys of the flags both daemons take are `daemon_kit::settings`'s to
/// read; they are named here so that they are known.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub public_ip: Option<String>,
    pub port_range: Option<String>,
    pub heartbeat_timeout_s: Option<u64>,
    pub max_registrations: Option<u32>,
    pub max_relays: Option<u32>,
    pub rate_limit: Option<u32>,
    pub udp_rule_idle_s: Option<u64>,
    pub udp_rules_per_registration: Option<u32>,
    pub status_allow: Option<String>,
    pub freebind: Option<bool>,
    pub secret_file: Option<PathBuf>,
    pub log: Option<String>,
    pub metrics_listen: Option<String>,
    pub punch: Option<bool>,
    pub punch_budget_ms: Option<u64>,
    pub punch_budget_min_ms: Option<u64>,
    pub punch_retry_s: Option<u64>,
    pub punch_unpredictable: Option<bool>,
}

/// What merging needs from the process environment, passed in so tests can
/// choose it.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub rust_log: Option<String>,
    pub is_root: bool,
    /// The options given on the command line or in the environment.
    pub flags: Vec<String>,
}

impl Env {
    pub fn from_process(flags: Vec<String>) -> Env {
        Env {
            rust_log: settings::rust_log_from_env(),
            is_root: nix::unistd::geteuid().is_root(),
            flags,
        }
    }
}

pub type Loaded = settings::Loaded<Config>;

/// Reads the config file named by --config (if any), merges, checks, and
/// reads the secret file. The error is one line, without the program name.
pub fn load(args: &DaemonArgs, env: &Env) -> Result<Loaded, String> {
    let merge = |file: &FileConfig, shared, _: Option<&Path>| merge(args, file, shared, env);
    settings::load(&args.common, env.rust_log.as_deref(), &env.flags, merge)
}

/// Parses the TOML text as a `FileConfig`, for tests; the daemon reads the
/// file through `settings::read_toml`, which gives the same errors.
#[cfg(test)]
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    settings::parse_toml(text)
}

/// Merges flags (and their environment variables) over the file over the
/// defaults, then checks the result as a whole; `shared` holds the settings
/// of the flags both daemons take, merged the same way.
pub fn merge(
    args: &DaemonArgs,
    file: &FileConfig,
    shared: Shared,
    env: &Env,
) -> Result<Config, String> {
    let listen = settings::command_port(args.listen, file.listen.as_deref(), DEFAULT_COMMAND_PORT)?;
    let file_public = from_file("public_ip", file.public_ip.as_deref(), parse_ip)?;
    let (public_ip, public_origin) = pick(args.public_ip, file_public, listen.ip());
    let file_range = from_file("port_range", file.port_range.as_deref(), |s| s.parse())?;
    let (port_range, range_origin) = pick(args.port_range, file_range, DEFAULT_PORT_RANGE);

    let (d, most) = (DEFAULT_LIMITS, u32::MAX);
    let file_allow = from_file("status_allow", file.status_allow.as_deref(), |s| s.parse())?;
    let limits = Limits {
        heartbeat_timeout_s: in_bounds(
            "heartbeat_timeout_s",
            pick(
                args.heartbeat_timeout_s,
                file.heartbeat_timeout_s,
                d.heartbeat_timeout_s,
            ),
            1,
            MAX_SECONDS,
        )?,
        max_registrations: in_bounds(
            "max_registrations",
            pick(
                args.max_registrations,
                file.max_registrations,
                d.max_registrations,
            ),
            1,
            most,
        )?,
        max_relays: in_bounds(
            "max_relays",
            pick(args.max_relays, file.max_relays, d.max_relays),
            1,
            most,
        )?,
        rate_limit: pick(args.rate_limit, file.rate_limit, d.rate_limit).0,
        udp_rule_idle_s: in_bounds(
            "udp_rule_idle_s",
            pick(
                args.udp_rule_idle_s,
                file.udp_rule_idle_s,
                d.udp_rule_idle_s,
            ),
            1,
            MAX_SECONDS,
        )?,
        udp_rules_per_registration: in_bounds(
            "udp_rules_per_registration",
            pick(
                args.udp_rules_per_registration,
                file.udp_rules_per_registration,
                d.udp_rules_per_registration,
            ),
            1,
            most,
        )?,
        status_allow: pick(args.status_allow.clone(), file_allow, d.status_allow).0,
        punch: Punch {
            enabled: pick(args.no_punch.map(|no| !no), file.punch, d.punch.enabled).0,
            budget_ms: in_bounds(
                "punch_budget_ms",
                pick(args.punch_budget_ms, file.punch_budget_ms, d.punch.budget_ms),
                PUNCH_BUDGET_MS.0,
                PUNCH_BUDGET_MS.1,
            )?,
            budget_min_ms: in_bounds(
                "punch_budget_min_ms",
                pick(args.punch_budget_min_ms, file.punch_budget_min_ms, d.punch.budget_min_ms),
                PUNCH_BUDGET_MS.0,
                PUNCH_BUDGET_MS.1,
            )?,
            retry_s: in_bounds(
                "punch_retry_s",
                pick(args.punch_retry_s, file.punch_retry_s, d.punch.retry_s),
                0,
                MAX_SECONDS,
            )?,
            unpredictable: pick(args.punch_unpredictable, file.punch_unpredictable, d.punch.unpredictable).0,
        },
    };

    let freebind = pick(args.freebind, file.freebind, false).0;

    checks::addresses(listen, public_ip, public_origin)?;
    checks::port_range(listen, port_range, range_origin, env.is_root)?;
    Ok(Config {
        listen,
        public_ip,
        port_range,
        limits,
        shared,
        freebind,
    })
}

impl Config {
    /// The one-line startup summary, with the command address as bound (it
    /// differs from `listen` when port 0 asked the kernel to choose); never
    /// shows the secret itself.
    pub fn summary(&self, bound: SocketAddr, secret: Option<&Secret>) -> String {
        let l = &self.limits;
        let rate = match l.rate_limit {
            0 => "off".to_string(),
            n => format!("{n}/s per source IP"),
        };
        let status = match l.status_allow.0.len() {
            0 => String::new(),
            _ => format!(" and {}", l.status_allow),
        };
        let auth = match secret {
            Some(s) => format!("HMAC with {s}"),
            None => "off".to_string(),
        };
        let metrics = match self.shared.metrics_listen {
            Some(m) => format!(", metrics http://{m}/metrics"),
            None => String::new(),
        };
        let freebind = if self.freebind { ", freebind" } else { "" };
        let p = &l.punch;
        let punch = match (p.enabled, p.unpredictable) {
            (false, _) => "off".to_string(),
            (true, u) => format!(
                "on (budget {}-{} ms, retry {}s{})",
                p.budget_min_ms.min(p.budget_ms),
                p.budget_ms,
                p.retry_s,
                if u { ", unpredictable mappings too" } else { "" }
            ),
        };
        format!(
            "command port udp {bound}, rendezvous tcp {bound}, proxies on {} ports {} ({} ports), heartbeat timeout {}s, \
             max registrations {}, max relays {}, rate limit {rate}, udp rule idle {}s, \
             udp rules per registration {}, hole punching {punch}, status from this host{status}, \
             authentication {auth}, log {}{metrics}{freebind}",
            self.public_ip,
            self.port_range,
            self.port_range.len(),
            l.heartbeat_timeout_s,
            l.max_registrations,
            l.max_relays,
            l.udp_rule_idle_s,
            l.udp_rules_per_registration,
            self.shared.log_filter,
        )
    }
}

mod checks;
#[cfg(test)]
mod tests;
