//! Reliable-layer tests: the exact default schedule, reply matching, and
//! properties of the retransmission timers and the reply cache's bounds.

use super::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn body(id: u64) -> Result<Vec<u8>, crate::wire::EncodeError> {
    Ok(id.to_be_bytes().to_vec())
}

#[test]
fn default_schedule_is_exact() {
    let t0 = Instant::now();
    let mut r = Requester::new(RetryPolicy::default(), 100, 8);
    let (id, bytes) = r.send("broker", t0, body).unwrap();
    assert_eq!((id, bytes), (100, &100u64.to_be_bytes()[..]));
    let mut sends = vec![0];
    let mut gave_up = None;
    while let Some(t) = r.next_deadline() {
        for ev in r.poll_timeout(t) {
            match ev {
                Timeout::Retransmit {
                    id: 100,
                    peer: "broker",
                    bytes,
                } => {
                    assert_eq!(bytes, 100u64.to_be_bytes());
                    sends.push((t - t0).as_millis());
                }
                Timeout::GaveUp { id: 100, .. } => gave_up = Some((t - t0).as_millis()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(sends, [0, 50, 150, 350, 750, 1550]);
    assert_eq!(gave_up, Some(2350));
    assert!(r.is_empty());
}

#[test]
fn total_deadline_cuts_the_schedule_short() {
    let t0 = Instant::now();
    let mut r = Requester::new(RetryPolicy::probe(), 0, 8);
    r.send((), t0, body).unwrap();
    let mut times = vec![];
    while let Some(t) = r.next_deadline() {
        for ev in r.poll_timeout(t) {
            times.push(((t - t0).as_millis(), matches!(ev, Timeout::GaveUp { .. })));
        }
    }
    // Sends at 0, 50, 150; the third timer (200 ms) is cut to 350 ms total.
    assert_eq!(times, [(50, false), (150, false), (350, true)]);
}

#[test]
fn responses_complete_once_and_only_from_the_peer() {
    let t0 = Instant::now();
    let mut r = Requester::new(RetryPolicy::default(), u64::MAX, 2);
    let (a, _) = r.send(1u8, t0, body).unwrap();
    let (b, _) = r.send(2u8, t0, body).unwrap();
    assert_eq!((a, b), (u64::MAX, 0), "ids wrap around");
    assert_eq!(r.send(3u8, t0, body).unwrap_err(), SendError::Full);
    assert_eq!(r.on_response(a, &2u8, t0), None, "wrong peer");
    r.poll_timeout(t0 + ms(60));
    let done = r.on_response(a, &1u8, t0 + ms(70)).unwrap();
    assert_eq!((done.tries, done.elapsed), (2, ms(70)));
    assert_eq!(r.on_response(a, &1u8, t0 + ms(80)), None, "duplicate reply");
    assert!(r.cancel(b));
    assert!(!r.cancel(b));
    assert_eq!(r.next_deadline(), None);
    assert!(r.poll_timeout(t0 + ms(10_000)).is_empty());
}

#[test]
fn encode_failure_starts_nothing() {
    let mut r = Requester::<()>::new(RetryPolicy::default(), 0, 2);
    let err = crate::wire::EncodeError::BufferFull { at: 0 };
    assert_eq!(
        r.send((), Instant::now(), |_| Err(err.clone()))
            .unwrap_err(),
        SendError::Encode(err)
    );
    assert!(r.is_empty());
    assert_eq!(r.next_deadline(), None);
}

#[test]
fn cancel_peer_drops_only_that_peer() {
    let t0 = Instant::now();
    let mut r = Requester::new(RetryPolicy::default(), 10, 8);
    for p in [1u8, 2, 1] {
        r.send(p, t0, body).unwrap();
    }
    assert_eq!(r.cancel_peer(&1), vec![10, 12]);
    assert_eq!(r.len(), 1);
    assert!(r.contains(11));
}

#[test]
fn degenerate_policies_are_repaired() {
    let p = RetryPolicy {
        initial_rto: Duration::ZERO,
        max_rto: Duration::ZERO,
        max_tries: 0,
        total: Duration::ZERO,
    }
    .sanitized();
    assert!(p.initial_rto > Duration::ZERO && p.max_tries == 1 && p.max_rto >= p.initial_rto);
    // Absurd durations must not overflow `Instant` arithmetic.
    let huge = RetryPolicy {
        initial_rto: Duration::MAX,
        max_rto: Duration::MAX,
        max_tries: 3,
        total: Duration::MAX,
    };
    let t0 = Instant::now();
    let mut r = Requester::new(huge, 0, 1);
    r.send((), t0, body).unwrap();
    let d = r.next_deadline().unwrap();
    assert_eq!(r.poll_timeout(d).len(), 1);
}

fn policy() -> impl Strategy<Value = RetryPolicy> {
    (1u64..200, 1u64..2000, 0u32..10, 0u64..5000).prop_map(|(i, m, n, t)| RetryPolicy {
        initial_rto: ms(i),
        max_rto: ms(m),
        max_tries: n,
        total: ms(t),
    })
}

proptest! {
    #![proptest_config(crate::strategies::config())]

    /// Requests started at random times, polled at random (late) times, some
    /// answered: transmissions stay within max_tries, deadlines rise and stay
    /// inside the total, each request ends exactly once.
    #[test]
    fn retransmission_schedule_is_bounded(
        policy in policy(),
        starts in proptest::collection::vec(0u64..3000, 1..8),
        poll_gaps in proptest::collection::vec(0u64..400, 1..200),
        answer_at in proptest::collection::vec(proptest::option::of(0u64..4000), 8),
    ) {
        let p = policy.sanitized();
        let t0 = Instant::now();
        let mut r = Requester::new(policy, 7, 64);
        let mut sends: HashMap<u64, u32> = HashMap::new();
        let mut first: HashMap<u64, Instant> = HashMap::new();
        let mut last_deadline: HashMap<u64, Instant> = HashMap::new();
        let mut answer: HashMap<u64, u64> = HashMap::new();
        let mut ended: HashMap<u64, u32> = HashMap::new();
        let mut starts = starts;
        starts.sort_unstable();
        let mut next_start = 0;
        let mut now_ms = 0u64;
        let mut gaps = poll_gaps.into_iter().cycle();
        // Bounded: at most this many steps, and the requester drains itself.
        for _ in 0..2000 {
            while next_start < starts.len() && starts[next_start] <= now_ms {
                let now = t0 + ms(now_ms);
                let (id, _) = r.send((), now, body).unwrap();
                sends.insert(id, 1);
                first.insert(id, now);
                if let Some(at) = answer_at[next_start] {
                    answer.insert(id, now_ms + at);
                }
                next_start += 1;
            }
            let now = t0 + ms(now_ms);
            for ev in r.poll_timeout(now) {
                match ev {
                    Timeout::Retransmit { id, .. } => *sends.get_mut(&id).unwrap() += 1,
                    Timeout::GaveUp { id, .. } => *ended.entry(id).or_default() += 1,
                }
            }
            for (&id, &at) in &answer {
                if at <= now_ms && r.contains(id) {
                    prop_assert!(r.on_response(id, &(), now).is_some());
                    *ended.entry(id).or_default() += 1;
                }
            }
            for (&id, &f) in &first {
                if let Some(d) = r.deadline_of(id) {
                    prop_assert!(d <= f + p.total);
                    if let Some(&prev) = last_deadline.get(&id) {
                        prop_assert!(d >= prev);
                    }
                    last_deadline.insert(id, d);
                }
            }
            if next_start == starts.len() && r.is_empty() {
                break;
            }
            now_ms += gaps.next().unwrap();
        }
        for (id, n) in &sends {
            prop_assert!(*n <= p.max_tries, "request {} sent {} times", id, n);
        }
        for n in ended.values() {
            prop_assert_eq!(*n, 1);
        }
    }

    /// Deadlines of one request strictly increase when polled exactly on time.
    #[test]
    fn deadlines_strictly_increase(policy in policy()) {
        let t0 = Instant::now();
        let mut r = Requester::new(policy, 0, 1);
        let (id, _) = r.send((), t0, body).unwrap();
        let mut prev = t0;
        let mut n = 0;
        while let Some(d) = r.next_deadline() {
            prop_assert!(d > prev);
            prev = d;
            r.poll_timeout(d);
            n += 1;
            prop_assert!(n <= 64);
        }
        prop_assert!(!r.contains(id));
    }

    /// Whatever the operations, the cache stays within both caps, its byte
    /// count is exact, and a reply just stored is found.
    #[test]
    fn reply_cache_is_bounded(
        max_entries in 0usize..20,
        max_bytes in 0usize..200,
        ops in proptest::collection::vec((0u8..4, 0u64..30, 0usize..60, 0u64..3000), 1..300),
    ) {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(ms(1000), max_entries, max_bytes);
        let mut now_ms = 0;
        for (peer, id, len, step) in ops {
            now_ms += step / 10;
            let now = t0 + ms(now_ms);
            if id % 3 == 0 {
                let _ = c.lookup(&peer, id, now);
            } else if c.insert(peer, id, vec![id as u8; len], now) {
                prop_assert_eq!(c.lookup(&peer, id, now), Some(&vec![id as u8; len][..]));
            }
            prop_assert!(c.len() <= max_entries);
            prop_assert!(c.bytes() <= max_bytes);
        }
        c.expire(t0 + ms(now_ms + 1000));
        prop_assert_eq!((c.len(), c.bytes()), (0, 0));
    }
}
