//! The header on UDP datagrams relayed through a broker proxy socket.
//!
//! A registered UDP socket's path through the broker is its proxy socket:
//! the client opened it with `Dummy{udp_token}` (see `RegisterOk`) and keeps
//! it open with every heartbeat. On that path every datagram carries this
//! 12-byte header, so one proxy socket serves any number of remote peers:
//!
//! * broker → client: `peer` is the original sender, which the shim reports
//!   from `recvfrom` and records in its receiver list;
//! * client → broker: `peer` is the destination the application named; the
//!   broker sends the payload, without the header, from the proxy socket, but
//!   only to a peer with a live relay rule there (one that sent to the proxy
//!   recently), so the broker never becomes an open relay.
//!
//! Remote peers exchange plain payloads with the proxy socket and never see
//! the header.
//!
//! | offset | size | field                     |
//! | -----: | ---: | ------------------------- |
//! |      0 |    4 | magic `b"GCBU"`           |
//! |      4 |    1 | version (1)               |
//! |      5 |    1 | reserved, zero            |
//! |      6 |    6 | peer address              |
//! |     12 |    … | payload                   |
//!
//! So the largest payload through the relay is
//! [`MAX_RELAY_PAYLOAD`] = 65507 − 12 = 65495 bytes; a larger send on a
//! relayed path fails with EMSGSIZE.

use crate::header::{MAX_UDP_PAYLOAD, VERSION};
use crate::wire::{DecodeError, EncodeError, Reader, SliceSink, Writer};
use std::net::SocketAddrV4;

/// Length of the relay header.
pub const RELAY_HEADER_LEN: usize = 12;
/// Largest application payload that fits behind the relay header.
pub const MAX_RELAY_PAYLOAD: usize = MAX_UDP_PAYLOAD - RELAY_HEADER_LEN;

const MAGIC: [u8; 4] = *b"GCBU";

/// Header of a relayed datagram; see the module docs for the direction rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRelayHeader {
    pub peer: SocketAddrV4,
}

impl UdpRelayHeader {
    /// The header alone, for a scatter-gather send without copying the payload.
    pub fn to_bytes(&self) -> [u8; RELAY_HEADER_LEN] {
        let mut out = [0u8; RELAY_HEADER_LEN];
        let mut w = Writer::new(SliceSink::new(&mut out));
        w.bytes(&MAGIC);
        w.u8(VERSION);
        w.u8(0);
        w.addr(&self.peer);
        debug_assert!(w.finish().is_ok());
        out
    }

    /// Header and payload as one datagram.
    pub fn encode(&self, payload: &[u8]) -> Result<Vec<u8>, EncodeError> {
        if payload.len() > MAX_RELAY_PAYLOAD {
            return Err(EncodeError::TooLong {
                what: "relayed payload",
                len: payload.len(),
                max: MAX_RELAY_PAYLOAD,
            });
        }
        let mut v = Vec::with_capacity(RELAY_HEADER_LEN + payload.len());
        v.extend_from_slice(&self.to_bytes());
        v.extend_from_slice(payload);
        Ok(v)
    }

    /// Splits a relayed datagram into header and payload. Foreign datagrams
    /// are `NotProtocol` without further checks.
    pub fn decode(datagram: &[u8]) -> Result<(UdpRelayHeader, &[u8]), DecodeError> {
        let n = datagram.len().min(MAGIC.len());
        if datagram[..n] != MAGIC[..n] {
            return Err(DecodeError::NotProtocol);
        }
        let mut r = Reader::new(datagram);
        let head = r.take(RELAY_HEADER_LEN)?;
        let mut r = Reader::new(&head[MAGIC.len()..]);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion {
                version,
                kind: 0,
                request_id: 0,
            });
        }
        if r.u8()? != 0 {
            return Err(DecodeError::BadValue("relay header reserved"));
        }
        let peer = r.addr()?;
        Ok((UdpRelayHeader { peer }, &datagram[RELAY_HEADER_LEN..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_and_round_trip() {
        let h = UdpRelayHeader {
            peer: "203.0.113.5:9000".parse().unwrap(),
        };
        let d = h.encode(b"hi").unwrap();
        assert_eq!(d, b"GCBU\x01\x00\xcb\x00\x71\x05\x23\x28hi");
        assert_eq!(UdpRelayHeader::decode(&d), Ok((h, &b"hi"[..])));
        assert_eq!(MAX_RELAY_PAYLOAD, 65495);
    }

    #[test]
    fn limits_and_foreign_input() {
        let h = UdpRelayHeader {
            peer: "192.0.2.1:1".parse().unwrap(),
        };
        assert!(h.encode(&vec![0; MAX_RELAY_PAYLOAD]).is_ok());
        assert!(h.encode(&vec![0; MAX_RELAY_PAYLOAD + 1]).is_err());
        assert_eq!(
            UdpRelayHeader::decode(b"hello"),
            Err(DecodeError::NotProtocol)
        );
        assert_eq!(UdpRelayHeader::decode(b"GCB"), Err(DecodeError::Truncated));
        let mut d = h.encode(b"").unwrap();
        d[5] = 1;
        assert!(UdpRelayHeader::decode(&d).is_err());
        d[5] = 0;
        d[4] = 9;
        assert!(matches!(
            UdpRelayHeader::decode(&d),
            Err(DecodeError::UnsupportedVersion { version: 9, .. })
        ));
    }
}
