//! What a shim can do beyond the paper's protocol. A shim says so in its
//! `Connect` and `Register` requests, and the broker offers a feature only to
//! shims that said they have it, so an older shim is served as before.
//!
//! On the wire the features are one byte in the optional tail of those two
//! requests (`codec`); a request without features is byte-for-byte the one an
//! older shim sends. Bits this build does not know are kept and ignored.

use std::fmt;

/// A set of protocol features (bit flags).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u8);

impl Features {
    /// No feature beyond the paper's protocol.
    pub const NONE: Features = Features(0);
    /// TCP hole punching between private realms (docs/hole-punching.md):
    /// the shim understands `Decision::PunchTcp`, `PunchConnect` and the
    /// punch frames.
    pub const PUNCH_TCP: Features = Features(1);
    /// UDP hole punching: the shim understands `Decision::PunchUdp` and
    /// `PunchHole`.
    pub const PUNCH_UDP: Features = Features(2);
    /// A standby connection (docs/hole-punching.md, "Standby connections"):
    /// in a TCP `Connect` that also offers `PUNCH_TCP`, "this connect asks
    /// for a standby connection: a punched one or none". The broker then
    /// punches (and tells the listener `PunchConnect` with `standby`) or
    /// refuses with `Error{Unsupported}`, never relays or reverses. Means
    /// nothing in a `Register`, nor in a UDP `Connect`.
    pub const STANDBY: Features = Features(4);
    /// In a TCP `Connect` that also offers `PUNCH_TCP`: "my rendezvous
    /// connection is already on its way" (docs/hole-punching.md, "The
    /// connector's rendezvous comes with its Connect"). The shim opened it
    /// beside the `Connect` and may have said its early `PunchHello`, naming
    /// the `Connect`'s request id, already. A broker that punches the connect
    /// answers `PunchTcp` with `early` set and takes that connection as the
    /// connector's side of the meeting; the connector then uses the punched
    /// connection as soon as its own check passes, without the verdict.
    /// In a `Register` (with `PUNCH_TCP`): "my punches can follow such a
    /// connector": the broker may set `PunchGo::commit` in their go, and the
    /// listener's shim uses the connection at the connector's proof. Every
    /// holder of a registration must offer it.
    pub const PUNCH_EARLY: Features = Features(8);
    const KNOWN: [(Features, &'static str); 4] = [
        (Features::PUNCH_TCP, "PUNCH_TCP"),
        (Features::PUNCH_UDP, "PUNCH_UDP"),
        (Features::STANDBY, "STANDBY"),
        (Features::PUNCH_EARLY, "PUNCH_EARLY"),
    ];

    pub const fn from_bits(bits: u8) -> Self {
        Features(bits)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<String> = Features::KNOWN.iter().filter(|(f, _)| self.contains(*f)).map(|(_, n)| n.to_string()).collect();
        let unknown = Features::KNOWN.iter().fold(self.0, |bits, (f, _)| bits & !f.0);
        if unknown != 0 {
            names.push(format!("{unknown:#04x}"));
        }
        write!(f, "Features({})", if names.is_empty() { "NONE".to_string() } else { names.join("|") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_names() {
        assert!(Features::NONE.is_empty());
        assert!(Features::PUNCH_TCP.contains(Features::PUNCH_TCP));
        assert!(!Features::NONE.contains(Features::PUNCH_TCP));
        assert!(Features::PUNCH_TCP.contains(Features::NONE));
        let odd = Features::from_bits(0x81);
        assert!(odd.contains(Features::PUNCH_TCP), "unknown bits do not hide known ones");
        assert_eq!(odd.bits(), 0x81, "unknown bits are kept");
        assert_eq!(format!("{odd:?}"), "Features(PUNCH_TCP|0x80)");
        assert_eq!(format!("{:?}", Features::PUNCH_TCP.union(Features::PUNCH_UDP)), "Features(PUNCH_TCP|PUNCH_UDP)");
        assert_eq!(format!("{:?}", Features::NONE), "Features(NONE)");
        assert_eq!(Features::NONE.union(Features::PUNCH_TCP), Features::PUNCH_TCP);
        let standby = Features::PUNCH_TCP.union(Features::STANDBY);
        assert_eq!(standby.bits(), 5);
        assert_eq!(format!("{standby:?}"), "Features(PUNCH_TCP|STANDBY)");
        assert_eq!(format!("{:?}", Features::from_bits(0x0c)), "Features(STANDBY|PUNCH_EARLY)");
        assert_eq!(format!("{:?}", Features::from_bits(0x14)), "Features(STANDBY|0x10)");
        assert_eq!(Features::PUNCH_EARLY.bits(), 8);
    }
}
