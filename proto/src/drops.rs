//! Why received bytes were dropped, in the few classes operators count.
//!
//! Every decoder returns a detailed [`DecodeError`]; a daemon facing hostile
//! or broken peers wants to see at a glance *what kind* of junk arrives:
//! stray traffic that is not the protocol at all, cut-off datagrams, ones
//! longer than any valid message, and well-framed ones with a bad field.
//! Both daemons count their command ports' drops with [`DecodeDrops`] and
//! show the four counters in their status.

use crate::wire::DecodeError;

/// Drops of undecodable input, by class. A version mismatch is not a drop
/// here: the daemons answer it (`VersionMismatch`) and count it on their own;
/// handed to [`count`](Self::count) anyway it is `invalid`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeDrops {
    /// Wrong magic: not GCB/DPF at all (scanners, stray or misdirected traffic).
    pub not_protocol: u64,
    /// Ended before the message was complete.
    pub truncated: u64,
    /// Longer than the message allows: bytes after a complete message, or a
    /// string or list past its maximum.
    pub oversize: u64,
    /// Well framed, but a field is outside its domain (unknown kind, flags,
    /// tag, UTF-8, ...).
    pub invalid: u64,
}

impl DecodeDrops {
    /// Counts one drop under its class.
    pub fn count(&mut self, e: &DecodeError) {
        match e {
            DecodeError::NotProtocol => self.not_protocol += 1,
            DecodeError::Truncated => self.truncated += 1,
            DecodeError::TrailingBytes(_) | DecodeError::TooLong { .. } => self.oversize += 1,
            // Wildcard on purpose: a decode error added later is still
            // counted somewhere rather than breaking every daemon's build.
            #[allow(unreachable_patterns)]
            _ => self.invalid += 1,
        }
    }

    /// All drops counted.
    pub fn total(&self) -> u64 {
        self.not_protocol + self.truncated + self.oversize + self.invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{dpf, gcb};
    use proptest::prelude::*;

    /// What each class means on real datagrams, not just on error values.
    #[test]
    fn real_datagrams_land_in_their_class() {
        let mut drops = DecodeDrops::default();
        let ack = gcb::encode(&gcb::Message::HeartbeatAck, 7).unwrap();
        let mut long = ack.clone();
        long.resize(64 * 1024, 0xAB);
        let mut bad_kind = ack.clone();
        bad_kind[5] = 0xEE;
        for bytes in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            &ack[..ack.len() - 1],
            &long[..],
            &bad_kind[..],
        ] {
            let e = gcb::decode(bytes).expect_err("junk");
            drops.count(&e);
        }
        let query = dpf::Message::Query {
            proto: crate::Proto::Tcp,
            public: "203.0.113.1:40000".parse().unwrap(),
        };
        let q = dpf::encode(&query, 1).unwrap();
        drops.count(&dpf::decode(&q[..q.len() - 2]).expect_err("cut"));
        assert_eq!(
            drops,
            DecodeDrops {
                not_protocol: 1,
                truncated: 2,
                oversize: 1,
                invalid: 1
            }
        );
        assert_eq!(drops.total(), 5);
    }

    proptest! {
        #![proptest_config(crate::strategies::config())]

        /// Whatever the input, each failed decode is counted exactly once.
        #[test]
        fn every_failure_is_counted_once(
            inputs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..20)
        ) {
            let mut drops = DecodeDrops::default();
            let mut failures = 0;
            for b in &inputs {
                for e in [gcb::decode(b).err(), dpf::decode(b).err()].into_iter().flatten() {
                    drops.count(&e);
                    failures += 1;
                }
            }
            prop_assert_eq!(drops.total(), failures);
        }
    }
}
