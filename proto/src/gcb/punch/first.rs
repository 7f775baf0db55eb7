//! The first frame on a connection to the broker's rendezvous port: a relay's
//! `StreamHello` ("GCBH", 16 bytes) or a punch's `PunchHello` ("GCBJ", 22
//! bytes). The magic says which, and so how long; like the other readers,
//! [`FirstFrameReader`] never takes a byte past the frame (a relay's
//! application bytes may follow a `StreamHello` at once).

use super::frames::PunchHello;
use crate::gcb::stream::{Frame, StreamHello};
use crate::wire::DecodeError;

/// What a rendezvous connection said first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirstFrame {
    /// A relayed connection's half.
    Stream(StreamHello),
    /// A hole punch's side.
    Punch(PunchHello),
}

/// Reads one [`FirstFrame`] from a byte stream that may deliver it in pieces.
#[derive(Debug, Default)]
pub struct FirstFrameReader {
    buf: [u8; PunchHello::LEN],
    len: usize,
}

impl FirstFrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The frame's length once the magic is known; `NotProtocol` as soon
    /// as the bytes present match neither magic.
    fn frame_len(&self) -> Result<Option<usize>, DecodeError> {
        let n = self.len.min(4);
        let stream = self.buf[..n] == StreamHello::MAGIC[..n];
        let punch = self.buf[..n] == PunchHello::MAGIC[..n];
        match (stream, punch) {
            (false, false) => Err(DecodeError::NotProtocol),
            _ if n < 4 => Ok(None),
            (true, _) => Ok(Some(StreamHello::LEN)),
            (_, true) => Ok(Some(PunchHello::LEN)),
        }
    }

    /// Bytes still wanted: read at most this many.
    pub fn missing(&self) -> usize {
        match self.frame_len() {
            Ok(Some(n)) => n - self.len,
            Ok(None) => 4 - self.len,
            Err(_) => 0,
        }
    }

    /// Takes bytes from `input` (at most what the frame still needs);
    /// returns how many it took and, once complete, the frame. After a
    /// frame or an error the reader must not be fed again.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<FirstFrame>), DecodeError> {
        let mut used = 0;
        loop {
            let take = self.missing().min(input.len() - used);
            self.buf[self.len..self.len + take].copy_from_slice(&input[used..used + take]);
            self.len += take;
            used += take;
            match self.frame_len()? {
                Some(n) if self.len == n => {
                    let bytes = &self.buf[..n];
                    let frame = match n {
                        StreamHello::LEN => FirstFrame::Stream(StreamHello::decode(bytes)?),
                        _ => FirstFrame::Punch(PunchHello::decode(bytes)?),
                    };
                    return Ok((used, Some(frame)));
                }
                // The magic just completed: go on with the rest of the frame.
                Some(_) if take > 0 && used < input.len() => continue,
                _ => return Ok((used, None)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcb::{Role, Token};

    fn hello() -> StreamHello {
        StreamHello { token: Token(0x1122334455667788), role: Role::Connector }
    }

    fn punch() -> PunchHello {
        PunchHello::new(Token(7), Role::Listener, "192.0.2.10:40000".parse().unwrap())
    }

    /// Feeds `bytes` `step` at a time, as the loop reads them.
    fn read(bytes: &[u8], step: usize) -> (usize, Result<Option<FirstFrame>, DecodeError>) {
        let mut r = FirstFrameReader::new();
        let mut pos = 0;
        loop {
            let end = (pos + step.min(r.missing())).min(bytes.len());
            match r.feed(&bytes[pos..end]) {
                Ok((used, Some(f))) => return (pos + used, Ok(Some(f))),
                Ok((used, None)) if pos + used == bytes.len() || used == 0 => return (pos + used, Ok(None)),
                Ok((used, None)) => pos += used,
                Err(e) => return (pos, Err(e)),
            }
        }
    }

    #[test]
    fn each_magic_gives_its_frame_and_not_a_byte_more() {
        for step in [1, 3, 4, 5, 64] {
            let mut bytes = hello().to_bytes().to_vec();
            bytes.extend_from_slice(b"application data");
            assert_eq!(read(&bytes, step), (16, Ok(Some(FirstFrame::Stream(hello())))), "step {step}");
            let mut bytes = punch().to_bytes().to_vec();
            bytes.extend_from_slice(b"GCBR");
            assert_eq!(read(&bytes, step), (22, Ok(Some(FirstFrame::Punch(punch())))), "step {step}");
        }
        // One feed of everything takes the frame alone, too.
        let mut bytes = punch().to_bytes().to_vec();
        bytes.extend_from_slice(&[0; 30]);
        assert_eq!(FirstFrameReader::new().feed(&bytes), Ok((22, Some(FirstFrame::Punch(punch())))));
    }

    #[test]
    fn a_partial_frame_waits_and_foreign_bytes_fail_at_once() {
        assert_eq!(read(&punch().to_bytes()[..10], 3), (10, Ok(None)));
        assert_eq!(read(b"GCBX", 1).1, Err(DecodeError::NotProtocol));
        let mut r = FirstFrameReader::new();
        assert_eq!(r.feed(b"G"), Ok((1, None)));
        assert_eq!(r.feed(b"E"), Err(DecodeError::NotProtocol), "the second byte already tells");
        // Other frames of the family are not first frames.
        let go = super::super::frames::PunchReport::Punched.to_bytes();
        assert_eq!(read(&go, 8).1, Err(DecodeError::NotProtocol));
        // A punch hello with a bad role is refused once complete.
        let mut bad = punch().to_bytes();
        bad[5] = 9;
        assert!(read(&bad, 22).1.is_err());
    }
}
