//! Fuzzes the TCP preamble frames, the hole-punching frames and the UDP relay
//! header: one-shot decoding and incremental decoding with chunk sizes taken
//! from the input must agree, never panic, and never consume bytes past the
//! frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::gcb::punch::{BrokerFrame, BrokerFrameReader, FirstFrame, FirstFrameReader, PeerHello, PunchGo, PunchHello, PunchReport, PunchVerdict};
use proto::gcb::{Frame, FrameReader, StreamHello, StreamPeer, UdpRelayHeader};

/// Feeds `data` in chunks of 1..=8 bytes (sizes cycling through `chunks`)
/// and checks the result against one-shot decoding.
fn incremental<F: Frame + PartialEq + std::fmt::Debug>(chunks: &[u8], data: &[u8]) {
    let mut reader = FrameReader::<F>::new();
    let mut pos = 0;
    let mut i = 0;
    let outcome = loop {
        let step = chunks.get(i % chunks.len().max(1)).map_or(1, |c| usize::from(c % 8) + 1);
        i += 1;
        let end = (pos + step).min(data.len());
        match reader.feed(&data[pos..end]) {
            Ok((used, frame)) => {
                assert!(used <= end - pos);
                pos += used;
                assert!(pos <= F::LEN);
                if frame.is_some() {
                    break Ok(frame);
                }
                if pos == data.len() {
                    break Ok(None);
                }
            }
            Err(e) => break Err(e),
        }
    };
    match (outcome, F::decode(data)) {
        (Ok(Some(a)), Ok(b)) => assert_eq!(a, b),
        (Ok(Some(_)), Err(e)) => panic!("incremental accepted what one-shot refused: {e}"),
        (Ok(None), r) => assert!(r.is_err()),
        (Err(_), r) => assert!(r.is_err()),
    }
}

/// Feeds `data` to `reader` in the steps `chunks` picks, never past what it
/// asks for; the first frame it completes and the bytes it took by then, or
/// `None` when it refused the bytes or they ran out first.
fn feed_in_steps<R, F, E>(
    reader: &mut R,
    missing: fn(&R) -> usize,
    feed: fn(&mut R, &[u8]) -> Result<(usize, Option<F>), E>,
    chunks: &[u8],
    data: &[u8],
) -> Option<(usize, F)> {
    let mut pos = 0;
    for i in 0..=data.len() {
        let step = chunks.get(i % chunks.len().max(1)).map_or(1, |c| usize::from(c % 8) + 1);
        let end = (pos + step.min(missing(reader))).min(data.len());
        let (used, frame) = feed(reader, &data[pos..end]).ok()?;
        pos += used;
        match frame {
            Some(f) => return Some((pos, f)),
            None if pos == data.len() => return None,
            None => {}
        }
    }
    None
}

/// The broker's punch frames, read the same way: a frame it accepts is the
/// one-shot decoding of exactly the bytes it took.
fn broker_frames(chunks: &[u8], data: &[u8]) {
    match feed_in_steps(&mut BrokerFrameReader::new(), BrokerFrameReader::missing, BrokerFrameReader::feed, chunks, data) {
        Some((pos, BrokerFrame::Go(g))) => assert_eq!((pos, Ok(g)), (PunchGo::LEN, PunchGo::decode(data))),
        Some((pos, BrokerFrame::Verdict(v))) => assert_eq!((pos, Ok(v)), (PunchVerdict::LEN, PunchVerdict::decode(data))),
        None => {}
    }
}

/// The rendezvous port's first frame, read the same way.
fn first_frames(chunks: &[u8], data: &[u8]) {
    match feed_in_steps(&mut FirstFrameReader::new(), FirstFrameReader::missing, FirstFrameReader::feed, chunks, data) {
        Some((pos, FirstFrame::Stream(h))) => assert_eq!((pos, Ok(h)), (StreamHello::LEN, StreamHello::decode(data))),
        Some((pos, FirstFrame::Punch(h))) => assert_eq!((pos, Ok(h)), (PunchHello::LEN, PunchHello::decode(data))),
        None => {}
    }
}

fuzz_target!(|input: &[u8]| {
    let (chunks, data) = input.split_at(input.len().min(4));
    incremental::<StreamHello>(chunks, data);
    incremental::<StreamPeer>(chunks, data);
    incremental::<PunchHello>(chunks, data);
    incremental::<PeerHello>(chunks, data);
    incremental::<PunchGo>(chunks, data);
    incremental::<PunchReport>(chunks, data);
    incremental::<PunchVerdict>(chunks, data);
    broker_frames(chunks, data);
    first_frames(chunks, data);
    if let Ok((header, payload)) = UdpRelayHeader::decode(data) {
        if let Ok(again) = header.encode(payload) {
            assert_eq!(again, data);
        }
    }
});
