//! The claim of a standby connection (docs/hole-punching.md, "Standby
//! connections"). After a punched connect, the connector's shim may punch
//! one more connection to the same listener and hold it; both ends keep it
//! hidden from their programs. When the connector's program next connects
//! there, its shim takes the held connection and sends [`STANDBY_CLAIM`]
//! as the first bytes on it, after the peer hellos; only on reading those
//! exact 8 bytes does the listener's shim queue the connection for its
//! program's `accept`, and it answers [`STANDBY_TAKEN`], which the
//! connector's shim reads before its program's `connect` returns: so the
//! connect completes once the connection waits in the listener's queue, as a
//! kernel connect does, and a listener that has gone is found out in time to
//! broker the connect instead.
//!
//! Layout, in the style of the punch frames (`frames`): magic `b"GCBC"`,
//! version 1, three reserved zero bytes. It is fixed, so it is compared
//! whole: any other 8 bytes, or the end of the stream before them, and the
//! listener discards the standby. The magic is unlike the `PeerHello` that
//! precedes it on the connection, so a claim is never mistaken for one.

/// The 8 bytes that claim a held standby connection (module docs).
pub const STANDBY_CLAIM: [u8; 8] = *b"GCBC\x01\0\0\0";

/// The listener's answer to [`STANDBY_CLAIM`]: queued for `accept`. The
/// same layout, with the first reserved byte 1.
pub const STANDBY_TAKEN: [u8; 8] = *b"GCBC\x01\x01\0\0";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcb::punch::PeerHello;
    use crate::gcb::Frame;

    #[test]
    fn the_claim_is_its_documented_bytes_and_no_hello() {
        assert_eq!(STANDBY_CLAIM, [0x47, 0x43, 0x42, 0x43, 1, 0, 0, 0]);
        assert_ne!(STANDBY_CLAIM[..4], PeerHello::MAGIC, "a claim's magic is not a peer hello's");
        assert_eq!(STANDBY_TAKEN, [0x47, 0x43, 0x42, 0x43, 1, 1, 0, 0]);
        assert_ne!(STANDBY_TAKEN, STANDBY_CLAIM, "an answer is not a claim");
    }
}
