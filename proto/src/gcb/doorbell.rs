//! The doorbell record: the fixed-size message a shim-loaded process sends over
//! loopback to a listener it manages (possibly in another process that holds
//! the same listener) to say "a connection for you is parked with me". The
//! shim owns the mechanism (`shim/src/gcb/doorbell.rs`, `park.rs`); the codec
//! lives here, free of I/O, because its input comes from other local processes
//! and is fuzzed with the other decoders.
//!
//! The connection itself is already established end to end when the doorbell
//! rings: the process that parked it hands it to whichever process accepts the
//! doorbell, over its park socket, in exchange for the key.
//!
//! | offset | size | field                                            |
//! | -----: | ---: | ------------------------------------------------ |
//! |      0 |    4 | magic `b"GCBD"`                                  |
//! |      4 |    1 | version (2)                                      |
//! |      5 |    1 | kind: 1, a parked connection                     |
//! |      6 |    2 | reserved, zero                                   |
//! |      8 |    8 | key: what the park asks for the connection       |
//! |     16 |    4 | the parking process's pid                        |
//! |     20 |    4 | its park socket's nonce                          |
//! |     24 |    6 | peer address (for `getpeername`)                 |
//! |     30 |    6 | proxy address (for `getsockname`)                |
//! |     36 |    6 | reserved, zero                                   |

use std::net::SocketAddrV4;

use crate::wire::{Reader, SliceSink, Writer};

/// Bytes in one record; a doorbell carries exactly one.
pub const RECORD_LEN: usize = 42;
const MAGIC: [u8; 4] = *b"GCBD";
const VERSION: u8 = 2;
const PARKED: u8 = 1;

/// Where a parked connection waits: a process and its park socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Park {
    pub pid: u32,
    /// Random per park socket, so a recycled pid never names another's.
    pub nonce: u32,
}

/// A doorbell's content: one parked connection for a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Random per connection: the park hands the connection only to who
    /// names it, so a stranger's doorbell gets nothing.
    pub key: u64,
    pub park: Park,
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
        w.u8(PARKED);
        w.u16(0);
        w.u64(self.key);
        w.u32(self.park.pid);
        w.u32(self.park.nonce);
        w.addr(&self.peer);
        w.addr(&self.proxy);
        w.bytes(&[0; 6]);
        debug_assert!(w.finish().is_ok());
        out
    }

    /// Decodes a record; `None` for anything that is not exactly one of ours.
    pub fn decode(buf: &[u8; RECORD_LEN]) -> Option<Record> {
        let mut r = Reader::new(buf);
        if r.array::<4>().ok()? != MAGIC || r.u8().ok()? != VERSION || r.u8().ok()? != PARKED {
            return None;
        }
        if r.u16().ok()? != 0 {
            return None;
        }
        let key = r.u64().ok()?;
        let park = Park { pid: r.u32().ok()?, nonce: r.u32().ok()? };
        let (peer, proxy) = (r.addr().ok()?, r.addr().ok()?);
        if r.array::<6>().ok()? != [0; 6] {
            return None;
        }
        r.finish().ok()?;
        Some(Record { key, park, peer, proxy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> Record {
        Record {
            key: 0x1122_3344_5566_7788,
            park: Park { pid: 4242, nonce: 0xdead_beef },
            peer: "198.51.100.10:40000".parse().unwrap(),
            proxy: "203.0.113.10:20001".parse().unwrap(),
        }
    }

    #[test]
    fn round_trip_and_golden_bytes() {
        let r = record();
        let b = r.encode();
        assert_eq!(Record::decode(&b), Some(r));
        assert_eq!(&b[..8], b"GCBD\x02\x01\x00\x00");
        assert_eq!(&b[16..24], &[0, 0, 0x10, 0x92, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&b[30..36], &[203, 0, 113, 10, 0x4e, 0x21]);
        assert_eq!(&b[36..], &[0; 6]);
    }

    #[test]
    fn rejects_foreign_input() {
        let good = record().encode();
        for (at, v) in [(0, b'X'), (4, 1), (5, 2), (6, 1), (7, 1), (36, 1), (41, 1)] {
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
                buf[..8].copy_from_slice(b"GCBD\x02\x01\x00\x00");
                buf[36..].copy_from_slice(&[0; 6]);
            }
            if let Some(r) = Record::decode(&buf) {
                prop_assert_eq!(r.encode(), buf);
            }
            prop_assert_eq!(Record::decode(&buf).is_some(), keep_header);
        }
    }
}
