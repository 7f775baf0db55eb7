//! The doorbell record: the fixed-size message one shim-loaded process sends
//! over loopback to a listener it manages (possibly in another process that
//! inherited the listener) to make it dial a reversed or relayed connection.
//! The shim owns the mechanism (`shim/src/gcb/doorbell.rs`); the codec lives
//! here, free of I/O, because its input comes from other local processes and
//! is fuzzed with the other decoders.
//!
//! | offset | size | field                                        |
//! | -----: | ---: | -------------------------------------------- |
//! |      0 |    4 | magic `b"GCBD"`                              |
//! |      4 |    1 | version (1)                                  |
//! |      5 |    1 | kind: 1 reverse, 2 relay                     |
//! |      6 |    2 | reserved, zero                               |
//! |      8 |    8 | the listener's doorbell secret               |
//! |     16 |    8 | token                                        |
//! |     24 |    6 | dial address (connector, or broker rendezvous) |
//! |     30 |    6 | peer address (for `getpeername`)             |
//! |     36 |    6 | proxy address (for `getsockname`)            |

use std::net::SocketAddrV4;

use super::Token;
use crate::wire::{Reader, SliceSink, Writer};

/// Bytes in one record; a doorbell carries exactly one.
pub const RECORD_LEN: usize = 42;
const MAGIC: [u8; 4] = *b"GCBD";
const VERSION: u8 = 1;

/// Whom the listener dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// `ReverseConnect`: the connector's temporary listener.
    Reverse { connector: SocketAddrV4 },
    /// `RelayConnect`: the broker's rendezvous port.
    Relay { broker: SocketAddrV4 },
}

/// A doorbell's content: one connection to make for a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Proves the ringer knows the listener's secret: any local process can
    /// connect from the reserved range, only the shim's own know this.
    pub secret: u64,
    pub token: Token,
    pub dial: Dial,
    /// The original peer, reported by `getpeername`.
    pub peer: SocketAddrV4,
    /// The listener's proxy address, reported by `getsockname`.
    pub proxy: SocketAddrV4,
}

impl Record {
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        let mut w = Writer::new(SliceSink::new(&mut out));
        w.bytes(&MAGIC);
        w.u8(VERSION);
        let (kind, dial) = match self.dial {
            Dial::Reverse { connector } => (1, connector),
            Dial::Relay { broker } => (2, broker),
        };
        w.u8(kind);
        w.u16(0);
        w.u64(self.secret);
        w.u64(self.token.0);
        w.addr(&dial);
        w.addr(&self.peer);
        w.addr(&self.proxy);
        debug_assert!(w.finish().is_ok());
        out
    }

    /// Decodes a record; `None` for anything that is not exactly one of ours.
    pub fn decode(buf: &[u8; RECORD_LEN]) -> Option<Record> {
        let mut r = Reader::new(buf);
        if r.array::<4>().ok()? != MAGIC || r.u8().ok()? != VERSION {
            return None;
        }
        let kind = r.u8().ok()?;
        if r.u16().ok()? != 0 {
            return None;
        }
        let secret = r.u64().ok()?;
        let token = Token(r.u64().ok()?);
        let at = r.addr().ok()?;
        let dial = match kind {
            1 => Dial::Reverse { connector: at },
            2 => Dial::Relay { broker: at },
            _ => return None,
        };
        let (peer, proxy) = (r.addr().ok()?, r.addr().ok()?);
        r.finish().ok()?;
        Some(Record {
            secret,
            token,
            dial,
            peer,
            proxy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(dial: Dial) -> Record {
        Record {
            secret: 0x1122_3344_5566_7788,
            token: Token(0xdead_beef),
            dial,
            peer: "198.51.100.10:40000".parse().unwrap(),
            proxy: "203.0.113.10:20001".parse().unwrap(),
        }
    }

    #[test]
    fn round_trip_and_golden_bytes() {
        for dial in [
            Dial::Reverse {
                connector: "203.0.113.20:33000".parse().unwrap(),
            },
            Dial::Relay {
                broker: "203.0.113.10:65432".parse().unwrap(),
            },
        ] {
            let r = record(dial);
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        let relay = Dial::Relay {
            broker: "203.0.113.10:65432".parse().unwrap(),
        };
        let b = record(relay).encode();
        assert_eq!(&b[..8], b"GCBD\x01\x02\x00\x00");
        assert_eq!(&b[24..30], &[203, 0, 113, 10, 0xff, 0x98]);
    }

    #[test]
    fn rejects_foreign_input() {
        let reverse = Dial::Reverse {
            connector: "203.0.113.20:1".parse().unwrap(),
        };
        let good = record(reverse).encode();
        for (at, v) in [(0, b'X'), (4, 2), (5, 3), (6, 1), (7, 1)] {
            let mut bad = good;
            bad[at] = v;
            assert_eq!(Record::decode(&bad), None, "byte {at} = {v}");
        }
        assert_eq!(Record::decode(&[0; RECORD_LEN]), None);
    }

    proptest! {
        #![proptest_config(crate::strategies::config())]

        #[test]
        fn arbitrary_bytes_never_panic_and_accepted_ones_are_canonical(
            b in proptest::array::uniform32(any::<u8>()),
            tail in proptest::array::uniform10(any::<u8>()),
            keep_header in any::<bool>(),
        ) {
            let mut buf = [0u8; RECORD_LEN];
            buf[..32].copy_from_slice(&b);
            buf[32..].copy_from_slice(&tail);
            if keep_header {
                buf[..8].copy_from_slice(b"GCBD\x01\x01\x00\x00");
                buf[5] = 1 + (b[5] & 1);
            }
            if let Some(r) = Record::decode(&buf) {
                prop_assert_eq!(r.encode(), buf);
            }
            prop_assert_eq!(Record::decode(&buf).is_some(), keep_header);
        }
    }
}
