//! The shim's settings, from the environment (docs/design.md, "The shim's environment").
//!
//! Read once per process image, on first use, so an `exec`ed program reads its own
//! environment again. A value that is set but invalid turns its feature off and
//! leaves one line in [`Config::problems`] for init to log: a typo in a daemon's
//! environment must be visible, and must never stop the daemon. An empty value
//! counts as unset, as shells make it easy to write one.
//!
//! Parsing is a pure function of a lookup ([`Config::from_lookup`]) so it is tested
//! without touching the process environment.

use std::ffi::{CStr, CString};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use once_cell::race::OnceBox;

use crate::log::Level;
use crate::route;

/// Historic GCB's broker command port.
pub const DEFAULT_GCB_PORT: u16 = 65432;
/// `dpfd`'s port when `DPF_INAGENT` gives only an IP.
pub const DEFAULT_DPF_PORT: u16 = 65433;
/// A PCP or NAT-PMP server's port (RFC 6887 §19.1, RFC 6886 §3.1).
pub const DEFAULT_PCP_PORT: u16 = 5351;
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// The longest heartbeat interval accepted, one day, as the broker's bound.
pub const MAX_HEARTBEAT_S: u64 = 86_400;
pub const MAX_REALM_LEN: usize = 64;

/// Which client the shim is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pass everything through.
    Off,
    /// GCB, with the brokers of `GCB_INAGENT` in order.
    Gcb(Vec<SocketAddr>),
    /// DPF, with the `dpfd` of `DPF_INAGENT`.
    Dpf(SocketAddr),
    /// DPF through a standard gateway, PCP or NAT-PMP (`DPF_INAGENT=pcp://...`).
    Pcp(PcpGateway),
}

/// `DPF_INAGENT=pcp://[IP][:PORT]`: the gateway to ask; no IP means the
/// default route's gateway, looked up when first needed (`dpf::pcp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcpGateway {
    pub ip: Option<Ipv4Addr>,
    pub port: u16,
}

impl fmt::Display for PcpGateway {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "pcp://{ip}:{}", self.port),
            None => write!(f, "pcp:// (the default gateway, port {})", self.port),
        }
    }
}

/// What `DPF_INAGENT` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpfTarget {
    Dpfd(SocketAddr),
    Pcp(PcpGateway),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    /// `GCB_ROUTE`; empty when unset or invalid, so everything is brokered.
    pub routes: route::Table,
    /// `GCB_REALM`; `None` lets the broker derive the realm.
    pub realm: Option<String>,
    pub log_level: Level,
    /// `GCB_LOG_FILE`; `None` logs to stderr.
    pub log_file: Option<CString>,
    pub heartbeat: Duration,
    /// `GCB_PUNCH`: offer the broker TCP hole punching (default on; `0` off).
    pub punch: bool,
    /// `GCB_PUNCH_TTL`: the TTL of a UDP punch's first Dummy (default
    /// [`DEFAULT_PUNCH_TTL`]; 0 sends it like the others). Low, so it makes
    /// the sender's own gateway's mapping and dies before the far gateway
    /// (docs/hole-punching.md, "UDP").
    pub punch_ttl: u8,
    /// `GCB_STANDBY`: after a connect to a listener was punched, keep one
    /// more punched connection to it ready for the next connect (default off;
    /// docs/hole-punching.md, "Standby connections").
    pub standby: bool,
    /// `GCB_SECRET_FILE`'s contents: every request is sealed with it and
    /// every reply and command must be (see `client::seal`).
    pub secret: Option<SharedSecret>,
    /// One line per variable that is set but invalid.
    pub problems: Vec<String>,
}

static CONFIG: OnceBox<Config> = OnceBox::new();

/// This process's configuration. Threads racing on first use may each parse the
/// environment; one result wins and none of them waits.
pub fn get() -> &'static Config {
    CONFIG.get_or_init(|| Box::new(Config::from_env()))
}

impl Config {
    pub fn from_env() -> Config {
        Config::from_lookup(|name| {
            let name = CString::new(name).ok()?;
            // SAFETY: getenv with a valid C string; the value is copied at once.
            let value = unsafe { libc::getenv(name.as_ptr()) };
            (!value.is_null()).then(|| unsafe { CStr::from_ptr(value) }.to_bytes().to_vec())
        })
    }

    /// Builds the configuration from `env`, which returns a variable's raw bytes.
    pub fn from_lookup(env: impl Fn(&str) -> Option<Vec<u8>>) -> Config {
        let env: &dyn Fn(&str) -> Option<Vec<u8>> = &env;
        let mut problems = Vec::new();
        let p = &mut problems;

        let gcb = setting(env, p, "GCB_INAGENT", "GCB is off", parse_inagents);
        let dpf = setting(env, p, "DPF_INAGENT", "DPF is off", parse_dpf);
        // A secret that is configured but unusable must not mean "talk
        // without one": the daemons would refuse every request anyway, and a
        // client that silently dropped authentication would hide the mistake.
        // So brokering is off, the program runs unbrokered, and the problem
        // line says why.
        let secret_file = env("GCB_SECRET_FILE").filter(|v| !v.is_empty());
        let secret = setting(env, p, "GCB_SECRET_FILE", "GCB and DPF are off", load_secret);
        let secret_failed = secret_file.is_some() && secret.is_none();
        let mode = match (gcb, dpf) {
            (Some(_), _) | (_, Some(_)) if secret_failed => Mode::Off,
            (Some(_), Some(_)) => {
                p.push("GCB_INAGENT and DPF_INAGENT are both set, but they are alternatives; GCB and DPF are off".into());
                Mode::Off
            }
            (Some(brokers), None) => Mode::Gcb(brokers),
            (None, Some(DpfTarget::Dpfd(dpfd))) => Mode::Dpf(dpfd),
            (None, Some(DpfTarget::Pcp(gateway))) => Mode::Pcp(gateway),
            (None, None) => Mode::Off,
        };
        let realm = setting(env, p, "GCB_REALM", "the broker derives the realm", parse_realm);
        let log_level = setting(env, p, "GCB_LOG", "logging at warn", |s| {
            Level::parse(s).ok_or_else(|| "is not error, warn, info or debug".to_string())
        });
        let heartbeat = setting(env, p, "GCB_HEARTBEAT_S", "heartbeat every 10 s", parse_heartbeat);
        let routes = setting(env, p, "GCB_ROUTE", "no routes: every destination is brokered", load_routes);
        let punch = setting(env, p, "GCB_PUNCH", "hole punching is offered", parse_switch);
        let punch_ttl = setting(env, p, "GCB_PUNCH_TTL", "a UDP punch's first Dummy has TTL 2", parse_ttl);
        let standby = setting(env, p, "GCB_STANDBY", "no standby connections", parse_switch);
        // A path: any bytes will do.
        let log_file = env("GCB_LOG_FILE").filter(|v| !v.is_empty()).and_then(|v| CString::new(v).ok());

        Config {
            mode,
            routes: routes.unwrap_or_default(),
            realm,
            log_level: log_level.unwrap_or(Level::DEFAULT),
            log_file,
            heartbeat: heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
            punch: punch.unwrap_or(true),
            punch_ttl: punch_ttl.unwrap_or(DEFAULT_PUNCH_TTL),
            standby: standby.unwrap_or(false),
            secret,
            problems,
        }
    }

    /// A one-line summary for the debug log.
    pub fn summary(&self) -> impl fmt::Display + '_ {
        Summary(self)
    }
}

struct Summary<'a>(&'a Config);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let c = self.0;
        match &c.mode {
            Mode::Off => f.write_str("GCB and DPF off")?,
            Mode::Gcb(brokers) => {
                f.write_str("GCB via")?;
                for b in brokers {
                    write!(f, " {b}")?;
                }
                match &c.realm {
                    Some(r) => write!(f, ", realm {r}")?,
                    None => f.write_str(", realm from the broker")?,
                }
                write!(f, ", {} routes", c.routes.len())?;
            }
            Mode::Dpf(addr) => write!(f, "DPF via {addr}")?,
            Mode::Pcp(gateway) => write!(f, "DPF via {gateway}")?,
        }
        if c.secret.is_some() {
            f.write_str(", authenticated")?;
        }
        if !c.punch {
            f.write_str(", no hole punching")?;
        } else if c.standby {
            f.write_str(", standby connections")?;
        }
        write!(f, ", heartbeat {}s, log {}", c.heartbeat.as_secs(), c.log_level.name())
    }
}

/// The shared secret of `GCB_SECRET_FILE`. Debug never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(Vec<u8>);

impl SharedSecret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SharedSecret({} bytes)", self.0.len())
    }
}

/// Reads the secret file as the daemons do (daemon-kit `load_secret`): the
/// bytes without trailing newlines, and not empty.
fn load_secret(path: &str) -> Result<SharedSecret, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(SharedSecret(bytes))
}

/// The usual low TTL: past the host's own gateway (the first hop), and not
/// to the far one, which is further on any path with a router between.
pub const DEFAULT_PUNCH_TTL: u8 = 2;

fn parse_ttl(s: &str) -> Result<u8, String> {
    s.trim().parse::<u8>().map_err(|_| "is not a TTL from 0 (off) to 255".to_string())
}

/// `1` or `0` (also `on`/`off`, `yes`/`no`, `true`/`false`).
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Ok(true),
        "0" | "off" | "no" | "false" => Ok(false),
        _ => Err("is not 1 or 0".into()),
    }
}

/// Reads and parses variable `name`. Unset or empty gives `None`; so does an invalid
/// value, which also adds a problem line ending in `consequence`.
fn setting<T>(
    env: &dyn Fn(&str) -> Option<Vec<u8>>,
    problems: &mut Vec<String>,
    name: &str,
    consequence: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let raw = env(name).filter(|v| !v.is_empty())?;
    let parsed = std::str::from_utf8(&raw).map_err(|_| "is not valid UTF-8".to_string()).and_then(parse);
    let shown = || String::from_utf8_lossy(&raw).into_owned();
    parsed.map_err(|why| problems.push(format!("{name}={:?}: {why}; {consequence}", shown()))).ok()
}

/// `IP` or `IP:PORT` (`[V6]:PORT` for IPv6); a bare IP gets `default_port`.
pub fn parse_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    let addr = match s.parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
            let ip: IpAddr = bare.parse().map_err(|_| format!("'{s}' is not IP or IP:PORT"))?;
            SocketAddr::new(ip, default_port)
        }
    };
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(format!("'{s}' is not an address a client can reach"));
    }
    Ok(addr)
}

/// `DPF_INAGENT`: dpfd's `IP[:PORT]`, or a standard gateway's
/// `pcp://[IP][:PORT]` (IPv4; no IP for the default route's gateway).
pub fn parse_dpf(s: &str) -> Result<DpfTarget, String> {
    let s = s.trim();
    let Some(rest) = s.strip_prefix("pcp://") else { return parse_addr(s, DEFAULT_DPF_PORT).map(DpfTarget::Dpfd) };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(DpfTarget::Pcp(PcpGateway { ip: None, port: DEFAULT_PCP_PORT }));
    }
    if let Some(port) = rest.strip_prefix(':') {
        let port = port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| format!("'{port}' is not a port"))?;
        return Ok(DpfTarget::Pcp(PcpGateway { ip: None, port }));
    }
    match parse_addr(rest, DEFAULT_PCP_PORT)? {
        SocketAddr::V4(a) => Ok(DpfTarget::Pcp(PcpGateway { ip: Some(*a.ip()), port: a.port() })),
        SocketAddr::V6(_) => Err(format!("'{rest}' is not an IPv4 address (the shim maps IPv4 only)")),
    }
}

/// `GCB_INAGENT`: `IP[:PORT][,IP[:PORT]...]`, brokers in order of preference.
pub fn parse_inagents(s: &str) -> Result<Vec<SocketAddr>, String> {
    let mut brokers = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            return Err("has an empty entry".to_string());
        }
        let addr = parse_addr(part, DEFAULT_GCB_PORT)?;
        if !brokers.contains(&addr) {
            brokers.push(addr);
        }
    }
    Ok(brokers)
}

/// `GCB_REALM`: a name other GCB clients compare byte for byte, so it is kept to
/// printable ASCII without spaces.
pub fn parse_realm(s: &str) -> Result<String, String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-:".contains(c);
    if s.len() > MAX_REALM_LEN || !s.chars().all(ok_char) {
        return Err(format!("is not a name of up to {MAX_REALM_LEN} letters, digits, '.', '_', '-' or ':'"));
    }
    Ok(s.to_string())
}

/// `GCB_HEARTBEAT_S`: whole seconds, 1 to a day.
pub fn parse_heartbeat(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_HEARTBEAT_S).contains(n))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("is not a whole number of seconds from 1 to {MAX_HEARTBEAT_S}"))
}

fn load_routes(path: &str) -> Result<route::Table, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let text = String::from_utf8(text).map_err(|_| "is not UTF-8 text".to_string())?;
    route::Table::parse(&text)
}

#[cfg(test)]
mod tests;
