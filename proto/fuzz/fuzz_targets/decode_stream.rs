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

/// The broker's punch frames, read the same way: a frame it accepts is the
/// one-shot decoding of exactly the bytes it took.
fn broker_frames(chunks: &[u8], data: &[u8]) {
    let mut reader = BrokerFrameReader::new();
    let mut pos = 0;
    for i in 0..=data.len() {
        let step = chunks.get(i % chunks.len().max(1)).map_or(1, |c| usize::from(c % 8) + 1);
        let end = (pos + step.min(reader.missing())).min(data.len());
        match reader.feed(&data[pos..end]) {
            Ok((used, frame)) => {
                pos += used;
                match frame {
                    Some(BrokerFrame::Go(g)) => assert_eq!((pos, Ok(g)), (PunchGo::LEN, PunchGo::decode(data))),
                    Some(BrokerFrame::Verdict(v)) => assert_eq!((pos, Ok(v)), (PunchVerdict::LEN, PunchVerdict::decode(data))),
                    None if pos == data.len() => return,
                    None => continue,
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// The rendezvous port's first frame, read the same way.
fn first_frames(chunks: &[u8], data: &[u8]) {
    let mut reader = FirstFrameReader::new();
    let mut pos = 0;
    for i in 0..=data.len() {
        let step = chunks.get(i % chunks.len().max(1)).map_or(1, |c| usize::from(c % 8) + 1);
        let end = (pos + step.min(reader.missing())).min(data.len());
        match reader.feed(&data[pos..end]) {
            Ok((used, frame)) => {
                pos += used;
                match frame {
                    Some(FirstFrame::Stream(h)) => assert_eq!((pos, Ok(h)), (StreamHello::LEN, StreamHello::decode(data))),
                    Some(FirstFrame::Punch(h)) => assert_eq!((pos, Ok(h)), (PunchHello::LEN, PunchHello::decode(data))),
                    None if pos == data.len() => return,
                    None => continue,
                }
                return;
            }
            Err(_) => return,
        }
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
