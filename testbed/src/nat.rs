//! The NAT kinds a test bed's gateways can have (`scripts/netns up --nat-a KIND
//! --nat-b KIND`; what each does is in `scripts/netns-gateway.bash`), and reading
//! the named nft counters their dropping rules count into, so a test can show that
//! a packet was dropped by the rule meant, rather than inferring it from silence.

use std::fmt;
use std::str::FromStr;

/// How one gateway translates and what it does with unsolicited packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NatKind {
    /// Masquerade keeping the private source port when free (the bed's default).
    #[default]
    Preserve,
    /// `masquerade fully-random`: a random public port for every mapping.
    Random,
    /// Preserve, and new packets to the public side that no DNAT rule claims are
    /// dropped silently (counter `unsolicited_drop`).
    Drop,
    /// Preserve, and `ct state invalid drop` (counters `invalid_drop_input`,
    /// `invalid_drop_forward`).
    InvalidDrop,
}

impl NatKind {
    pub const ALL: [NatKind; 4] = [
        NatKind::Preserve,
        NatKind::Random,
        NatKind::Drop,
        NatKind::InvalidDrop,
    ];

    /// The name `scripts/netns` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::Preserve => "preserve",
            NatKind::Random => "random",
            NatKind::Drop => "drop",
            NatKind::InvalidDrop => "invalid-drop",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NatKind {
    type Err = String;
    fn from_str(s: &str) -> Result<NatKind, String> {
        NatKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown NAT kind {s:?} (kinds: preserve, random, drop, invalid-drop)")
            })
    }
}

/// The kinds of the two gateways of one bed, and the path between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatKinds {
    /// Gateway GA (realm A).
    pub a: NatKind,
    /// Gateway GB (realm B).
    pub b: NatKind,
    /// A router (host `wan`) between GB and the public switch
    /// (`scripts/netns up --wan-hop`): the gateways are two routed hops
    /// apart instead of neighbours, so a packet whose TTL runs out between
    /// them can be sent (the low-TTL first Dummy of a UDP punch).
    pub wan_hop: bool,
    /// One-way delay the `wan` router adds to every packet it forwards, µs
    /// (`scripts/netns up --wan-hop --wan-delay-us N`; 0: none): every path
    /// to or from realm B then has the round-trip time of a real WAN.
    pub wan_delay_us: u32,
}

impl NatKinds {
    pub fn new(a: NatKind, b: NatKind) -> NatKinds {
        NatKinds { a, b, wan_hop: false, wan_delay_us: 0 }
    }

    /// The same gateways with the router between them.
    pub fn with_wan_hop(self) -> NatKinds {
        NatKinds { wan_hop: true, ..self }
    }

    /// The same gateways with the router between them, adding `us` µs each
    /// way to everything to or from realm B.
    pub fn with_wan_delay_us(self, us: u32) -> NatKinds {
        NatKinds { wan_hop: true, wan_delay_us: us, ..self }
    }
}

/// The packet count in the output of `nft list counter inet filter NAME`
/// (`packets N bytes M`).
pub fn parse_counter_packets(listing: &str) -> Result<u64, String> {
    let mut words = listing.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("nft counter: no number after \"packets\" in {listing:?}"));
        }
    }
    Err(format!("nft counter: no \"packets\" in {listing:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in NatKind::ALL {
            assert_eq!(k.as_str().parse::<NatKind>(), Ok(k));
        }
        assert!("fully-random".parse::<NatKind>().is_err());
        assert_eq!(
            NatKinds::default(),
            NatKinds::new(NatKind::Preserve, NatKind::Preserve)
        );
    }

    #[test]
    fn reads_the_packets_of_a_counter() {
        let text =
            "table inet filter {\n\tcounter unsolicited_drop {\n\t\tpackets 3 bytes 180\n\t}\n}\n";
        assert_eq!(parse_counter_packets(text), Ok(3));
        assert!(parse_counter_packets("table inet filter {}").is_err());
        assert!(parse_counter_packets("packets x").is_err());
    }
}
