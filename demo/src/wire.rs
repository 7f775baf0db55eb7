//! What the pool's members say to each other, and the lines they print.
//!
//! Everything is text: one header line, then for `ECHO` a binary payload of the
//! length the header gives. Text keeps a packet capture readable and lets the
//! report parse the members' stdout with the same code that parses requests.
//!
//! * `AD name=N realm=R mode=M tcp=IP:PORT udp=IP:PORT` — a worker's ad, by TCP
//!   or UDP; the manager answers `ACK name=manager`.
//! * `QUERY` (TCP) — the manager answers every ad it holds, one per line, then `END`.
//! * `ECHO from=N seed=S len=L` and L bytes — answered `ECHO-OK name=N seed=S
//!   len=L` and the same L bytes. The payload is derived from the seed, so both
//!   ends know what must arrive, and the name proves who answered.

use std::fmt;
use std::net::SocketAddrV4;

/// Longest header line anyone accepts; a peer that sends more is not ours.
pub const MAX_LINE: usize = 1024;

/// `key=value` fields of a line after its first word. A `why=` field takes the
/// rest of the line, so error texts may hold spaces.
pub fn fields(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = line.trim_end();
    if let Some(sp) = rest.find(' ') {
        rest = &rest[sp + 1..];
    } else {
        return out;
    }
    while !rest.is_empty() {
        if let Some(why) = rest.strip_prefix("why=") {
            out.push(("why", why));
            break;
        }
        let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Some((k, v)) = word.split_once('=') {
            out.push((k, v));
        }
        rest = tail.trim_start();
    }
    out
}

/// The value of `key` in `fields`.
pub fn field<'a>(fields: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The bytes an `ECHO` with `seed` carries: a xorshift stream, so a byte that
/// arrives out of place or from another exchange does not match by chance.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// How a member is reached: through a GCB broker, a DPF gateway, or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Gcb,
    Dpf,
    Plain,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "gcb" => Some(Mode::Gcb),
            "dpf" => Some(Mode::Dpf),
            "plain" => Some(Mode::Plain),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Gcb => "gcb",
            Mode::Dpf => "dpf",
            Mode::Plain => "plain",
        }
    }
}

/// A member's advertisement: who it is and the addresses its listeners report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ad {
    pub name: String,
    /// The network it sits in (`public`, `A`, `B`, ...), for the report only.
    pub realm: String,
    pub mode: Mode,
    pub tcp: SocketAddrV4,
    pub udp: SocketAddrV4,
}

impl Ad {
    /// Parses the fields of an `AD` or `ANNOUNCE` line.
    pub fn parse(line: &str) -> Option<Ad> {
        let f = fields(line);
        Some(Ad {
            name: field(&f, "name")?.to_string(),
            realm: field(&f, "realm")?.to_string(),
            mode: Mode::parse(field(&f, "mode")?)?,
            tcp: field(&f, "tcp")?.parse().ok()?,
            udp: field(&f, "udp")?.parse().ok()?,
        })
    }
}

impl fmt::Display for Ad {
    /// The fields, without the leading word (`AD` on the wire, `ANNOUNCE` on stdout).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "name={} realm={} mode={} tcp={} udp={}", self.name, self.realm, self.mode.name(), self.tcp, self.udp)
    }
}

/// A name is one word of letters, digits and `-`, so it survives every line format.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_and_why_takes_the_rest() {
        let f = fields("RESULT from=a1 to=b1 status=failed why=connection refused (os error 111)\n");
        assert_eq!(field(&f, "from"), Some("a1"));
        assert_eq!(field(&f, "status"), Some("failed"));
        assert_eq!(field(&f, "why"), Some("connection refused (os error 111)"));
        assert!(fields("QUERY").is_empty());
        assert_eq!(field(&fields("X a=1  junk b=2"), "b"), Some("2"));
    }

    #[test]
    fn ads_round_trip() {
        let ad = Ad {
            name: "a2-dpf".into(),
            realm: "A".into(),
            mode: Mode::Dpf,
            tcp: "203.0.113.1:40000".parse().unwrap(),
            udp: "203.0.113.1:40001".parse().unwrap(),
        };
        assert_eq!(Ad::parse(&format!("AD {ad}")), Some(ad.clone()));
        assert_eq!(Ad::parse(&format!("ANNOUNCE {ad}\n")), Some(ad));
        assert_eq!(Ad::parse("AD name=x realm=A mode=gcb tcp=nonsense udp=1.2.3.4:5"), None);
        assert_eq!(Ad::parse("AD name=x realm=A mode=teleport tcp=1.2.3.4:5 udp=1.2.3.4:5"), None);
    }

    #[test]
    fn payloads_depend_on_the_seed() {
        assert_eq!(payload(7, 100), payload(7, 100));
        assert_ne!(payload(7, 100), payload(8, 100));
        assert_eq!(payload(7, 0), Vec::<u8>::new());
        let p = payload(12345, 4096);
        assert!(p.iter().filter(|&&b| b == p[0]).count() < 100, "not a constant stream");
    }

    #[test]
    fn names_are_single_words() {
        assert!(valid_name("a2-dpf"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(""));
        assert!(!valid_name("x=y"));
    }
}
