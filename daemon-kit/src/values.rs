//! Parsers and small value types shared by the command line and the config
//! file: command-port addresses, port ranges, networks (CIDR), log levels and
//! the secret file.
//!
//! Flags and file keys go through the same parsers so a value means the same
//! thing wherever it is written, and errors read the same.

use std::fmt;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Log levels `--log` and the `log` key accept, quietest first.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// A clap value parser for `--listen`: [`parse_listen`] with the daemon's
/// default command port.
pub fn listen_on(
    default_port: u16,
) -> impl Fn(&str) -> Result<SocketAddr, String> + Clone + Send + Sync + 'static {
    move |s| parse_listen(s, default_port)
}

/// Parses `IP` or `IP:PORT` (`[V6]:PORT` for IPv6); a bare IP gets `default_port`.
pub fn parse_listen(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A bare IPv6 address may come bracketed, as it would be with a port.
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, default_port)),
        Err(_) => Err(format!("'{s}' is not IP or IP:PORT")),
    }
}

/// Parses `--metrics-listen` and its config key: `IP:PORT`, the port
/// given (no daemon owns a well-known metrics port).
pub fn parse_metrics_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not IP:PORT (e.g. 127.0.0.1:9465)"))
}

/// Parses one IP address, as `--public-ip` and its config key take it.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an IP address"))
}

/// An inclusive range of ports, written `LO-HI`; never empty and never
/// containing port 0, which would mean "any port" to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }

    /// How many ports the range holds, for the startup summary.
    #[allow(clippy::len_without_is_empty)] // a range always holds at least one port
    pub fn len(&self) -> u32 {
        u32::from(self.hi) - u32::from(self.lo) + 1
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (lo, hi) = s
            .split_once('-')
            .ok_or_else(|| format!("port range '{s}' is not LO-HI"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("port range '{s}': '{}' is not a port number", p.trim()))
        };
        let (lo, hi) = (port(lo)?, port(hi)?);
        if lo == 0 {
            return Err(format!(
                "port range '{s}' starts at port 0, which is not a usable port"
            ));
        }
        if lo > hi {
            return Err(format!("port range '{s}' is empty: LO must not exceed HI"));
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

/// An IP network written `IP/LEN`, or a bare IP meaning that one host. The
/// address is kept as given; only its first `len` bits take part in
/// matching, so `192.0.2.7/24` means 192.0.2.0/24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` lies in the network. An IPv4 network never contains an
    /// IPv6 address or the reverse, mapped addresses included: a rule should
    /// mean exactly what it says.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not IP or IP/LEN"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => return Err(format!("'{s}': the prefix length must be 0 to {max}")),
            },
        };
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A comma-separated list of networks, as one flag or config value takes it;
/// an empty string is the empty list.
pub fn parse_cidr_list(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect()
}

/// Checks a log level written in the config file; clap checks the flag.
pub fn parse_level(s: &str) -> Result<String, String> {
    let level = s.trim().to_ascii_lowercase();
    if LOG_LEVELS.contains(&level.as_str()) {
        Ok(level)
    } else {
        Err(format!(
            "log level '{s}' is not one of {}",
            LOG_LEVELS.join(", ")
        ))
    }
}

/// The shared secret that authenticates commands. Debug and Display never
/// show the bytes, so the secret cannot leak into a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub path: PathBuf,
    bytes: Vec<u8>,
}

impl Secret {
    /// The key bytes, for the HMAC code that will use them.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Secret({}, {} bytes)",
            self.path.display(),
            self.bytes.len()
        )
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.path.display(), self.bytes.len())
    }
}

/// Reads the secret file. Returns the secret and, if others may read the
/// file, a warning for the caller to log once logging is up.
pub fn load_secret(path: &Path) -> Result<(Secret, Option<String>), String> {
    let shown = path.display();
    let meta = fs::metadata(path).map_err(|e| format!("secret file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("secret file {shown} is not a regular file"));
    }
    let mut bytes = fs::read(path).map_err(|e| format!("secret file {shown}: {e}"))?;
    // `echo key > file` adds a newline that is not meant as part of the key.
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("secret file {shown} is empty"));
    }
    let warning = (meta.permissions().mode() & 0o004 != 0)
        .then(|| format!("secret file {shown} is readable by every user; chmod o-r it"));
    Ok((
        Secret {
            path: path.to_path_buf(),
            bytes,
        },
        warning,
    ))
}

/// For `#[serde(serialize_with)]`: a value as its display text.
pub fn shown<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// For `#[serde(serialize_with)]`: a path as its display text, so a path
/// that is not UTF-8 (possible on the command line) still shows rather
/// than failing the whole value.
pub fn shown_path<P: AsRef<Path>, S: serde::Serializer>(p: &P, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.as_ref().display())
}

/// [`shown_path`] for a path that may be absent.
pub fn shown_opt_path<P: AsRef<Path>, S: serde::Serializer>(
    p: &Option<P>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => shown_path(p, s),
        None => s.serialize_none(),
    }
}

/// For `#[serde(serialize_with)]`: a list as its items' display texts,
/// joined by commas.
pub fn shown_list<T: fmt::Display, S: serde::Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    let texts: Vec<String> = v.iter().map(T::to_string).collect();
    s.serialize_str(&texts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("192.0.2.1", 65432).unwrap(),
            "192.0.2.1:65432".parse().unwrap()
        );
        assert_eq!(
            parse_listen("192.0.2.1:1", 65432).unwrap(),
            "192.0.2.1:1".parse().unwrap()
        );
        assert_eq!(parse_listen("::1", 9).unwrap(), "[::1]:9".parse().unwrap());
        assert_eq!(
            parse_listen("[::1]", 9).unwrap(),
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:5", 9).unwrap(),
            "[::1]:5".parse().unwrap()
        );
        assert!(parse_listen("example.org", 9).is_err());
        assert!(parse_listen("192.0.2.1:99999", 9).is_err());
        assert!(parse_listen("", 9).is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "20000-29999".parse::<PortRange>().unwrap(),
            PortRange {
                lo: 20000,
                hi: 29999
            }
        );
        assert_eq!("5 - 5".parse::<PortRange>().unwrap().len(), 1);
        for bad in ["", "20000", "2-1", "0-10", "1-70000", "a-b", "1-2-3"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad} accepted");
        }
        let r = PortRange { lo: 10, hi: 20 };
        assert!(r.contains(10) && r.contains(20) && !r.contains(9) && !r.contains(21));
        assert_eq!(r.to_string(), "10-20");
    }

    #[test]
    fn networks() {
        let net: Cidr = "192.0.2.7/24".parse().unwrap();
        assert!(net.contains("192.0.2.200".parse().unwrap()));
        assert!(!net.contains("192.0.3.1".parse().unwrap()));
        assert!(!net.contains("::ffff:192.0.2.1".parse().unwrap()));
        let host: Cidr = "198.51.100.1".parse().unwrap();
        assert_eq!(host.to_string(), "198.51.100.1/32");
        assert!(host.contains("198.51.100.1".parse().unwrap()));
        assert!(!host.contains("198.51.100.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!("::/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("::1".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "::/129", "host/8", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
        assert_eq!(parse_cidr_list(" 10.0.0.0/8 , ::1").unwrap().len(), 2);
        assert_eq!(parse_cidr_list("").unwrap(), vec![]);
        assert!(parse_cidr_list("10.0.0.0/8,bad").is_err());
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("DEBUG").unwrap(), "debug");
        assert!(parse_level("verbose").is_err());
    }

    #[test]
    fn secret_file_rules() {
        let dir = std::env::temp_dir().join(format!("gcb-broker-secret-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");

        fs::write(&path, "s3cret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let (secret, warning) = load_secret(&path).unwrap();
        assert_eq!(secret.bytes(), b"s3cret");
        assert!(warning.is_none());
        assert!(!format!("{secret:?} {secret}").contains("s3cret"));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_secret(&path)
            .unwrap()
            .1
            .unwrap()
            .contains("readable by every user"));

        fs::write(&path, "\n").unwrap();
        assert!(load_secret(&path).unwrap_err().contains("is empty"));
        assert!(load_secret(&dir.join("missing")).is_err());
        assert!(load_secret(&dir)
            .unwrap_err()
            .contains("not a regular file"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
