//! Tests of the outcome cache: a pair blocked per protocol, both ways, for
//! the retry time; TCP and UDP apart; the bound over both; and a property
//! test against a plain model of what the cache promises.

use proptest::prelude::*;

use super::*;

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, n)
}

const RETRY: Duration = Duration::from_secs(600);
const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;

#[test]
fn a_failure_blocks_the_pair_both_ways_until_the_retry_time() {
    let t = Instant::now();
    let mut c = OutcomeCache::default();
    assert!(!c.blocked(TCP, ip(1), ip(2), t));
    c.failed(TCP, ip(1), ip(2), RETRY, t);
    assert!(c.blocked(TCP, ip(1), ip(2), t));
    assert!(c.blocked(TCP, ip(2), ip(1), t + Duration::from_secs(599)), "unordered");
    assert!(!c.blocked(TCP, ip(1), ip(3), t), "other pairs are not touched");
    assert!(!c.blocked(TCP, ip(1), ip(2), t + RETRY), "tried again after the retry time");
    assert_eq!(c.len(), 0, "the stale entry went");
}

#[test]
fn a_tcp_failure_does_not_block_udp_nor_the_reverse() {
    let t = Instant::now();
    let mut c = OutcomeCache::default();
    c.failed(TCP, ip(1), ip(2), RETRY, t);
    assert!(!c.blocked(UDP, ip(1), ip(2), t));
    assert!(!c.blocked(UDP, ip(2), ip(1), t));
    assert!(c.blocked(TCP, ip(2), ip(1), t), "looking at UDP left TCP's entry");

    let mut c = OutcomeCache::default();
    c.failed(UDP, ip(2), ip(1), RETRY, t);
    assert!(!c.blocked(TCP, ip(1), ip(2), t));
    assert!(c.blocked(UDP, ip(1), ip(2), t));
    assert_eq!(c.blocked_counts(t), [0, 1]);
}

#[test]
fn a_success_decided_before_the_failure_does_not_lift_it() {
    let t = Instant::now();
    let mut c = OutcomeCache::default();
    c.failed(TCP, ip(1), ip(2), RETRY, t + Duration::from_millis(200));
    // A punch decided 100 ms before that failure, and done after it.
    c.succeeded(TCP, ip(1), ip(2), t + Duration::from_millis(100));
    assert!(c.blocked(TCP, ip(1), ip(2), t + Duration::from_millis(300)), "an overlapping success lifted the block");
    // One decided after the failure (at or past it) lifts it.
    c.succeeded(TCP, ip(2), ip(1), t + Duration::from_millis(200));
    assert!(!c.blocked(TCP, ip(1), ip(2), t + Duration::from_millis(300)));
}

#[test]
fn a_success_clears_only_its_own_protocol() {
    let t = Instant::now();
    let mut c = OutcomeCache::default();
    c.failed(TCP, ip(1), ip(2), RETRY, t);
    c.failed(UDP, ip(1), ip(2), RETRY, t);
    c.succeeded(UDP, ip(2), ip(1), t);
    assert!(!c.blocked(UDP, ip(1), ip(2), t));
    assert!(c.blocked(TCP, ip(1), ip(2), t), "a UDP success says nothing of TCP");
    c.succeeded(TCP, ip(2), ip(1), t);
    assert!(!c.blocked(TCP, ip(1), ip(2), t));
    assert_eq!(c.len(), 0);
}

#[test]
fn each_protocol_expires_on_its_own_time() {
    let t = Instant::now();
    let mut c = OutcomeCache::default();
    c.failed(TCP, ip(1), ip(2), RETRY, t);
    c.failed(UDP, ip(1), ip(2), RETRY, t + Duration::from_secs(300));
    let between = t + Duration::from_secs(700);
    assert_eq!(c.blocked_counts(between), [0, 1]);
    assert!(!c.blocked(TCP, ip(1), ip(2), between), "TCP's time is over");
    assert!(c.blocked(UDP, ip(1), ip(2), between), "UDP's is not");
    assert!(!c.blocked(UDP, ip(1), ip(2), t + Duration::from_secs(900)));
    assert_eq!(c.len(), 0);
}

#[test]
fn a_later_failure_restarts_the_time() {
    let t = Instant::now();
    let mut c = OutcomeCache::default();
    c.failed(TCP, ip(1), ip(2), RETRY, t);
    c.failed(TCP, ip(1), ip(2), RETRY, t + Duration::from_secs(500));
    assert!(c.blocked(TCP, ip(1), ip(2), t + Duration::from_secs(1000)));
    assert_eq!(c.len(), 1);
}

#[test]
fn past_capacity_the_least_recently_used_entry_goes_whatever_its_protocol() {
    let t = Instant::now();
    let mut c = OutcomeCache::new(3);
    c.failed(TCP, ip(1), ip(2), RETRY, t);
    c.failed(UDP, ip(1), ip(2), RETRY, t);
    c.failed(TCP, ip(1), ip(4), RETRY, t);
    // Using the oldest makes the second the least recently used.
    assert!(c.blocked(TCP, ip(1), ip(2), t));
    c.failed(UDP, ip(1), ip(5), RETRY, t);
    assert_eq!(c.len(), 3);
    assert!(!c.blocked(UDP, ip(1), ip(2), t), "evicted");
    assert!(c.blocked(TCP, ip(1), ip(2), t), "its TCP twin kept");
    assert!(c.blocked(TCP, ip(1), ip(4), t));
    assert!(c.blocked(UDP, ip(1), ip(5), t));
    assert_eq!(c.blocked_counts(t), [2, 1]);
    let listed = c.blocked_list(t);
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0], Blocked { proto: TCP, ips: [ip(1), ip(2)], left: RETRY });
    assert_eq!(listed[2].proto, UDP);
}

#[test]
fn the_table_never_grows_past_its_capacity() {
    let t = Instant::now();
    let mut c = OutcomeCache::new(64);
    for a in 0..=255u8 {
        for proto in [TCP, UDP] {
            c.failed(proto, ip(a), Ipv4Addr::new(192, 0, 2, a), RETRY, t);
            assert!(c.len() <= 64);
            assert_eq!(c.order.len(), c.entries.len());
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Failed(Proto, u8, u8),
    /// A success of a punch decided this many seconds ago.
    Succeeded(Proto, u8, u8, u16),
    Blocked(Proto, u8, u8),
    /// Time passes, in seconds.
    Wait(u16),
}

fn op() -> impl Strategy<Value = Op> {
    let proto = prop_oneof![Just(TCP), Just(UDP)];
    // Few IPs, so pairs repeat and meet across protocols.
    let n = || 0..5u8;
    prop_oneof![
        (proto.clone(), n(), n()).prop_map(|(p, a, b)| Op::Failed(p, a, b)),
        (proto.clone(), n(), n(), 0..400u16).prop_map(|(p, a, b, ago)| Op::Succeeded(p, a, b, ago)),
        (proto, n(), n()).prop_map(|(p, a, b)| Op::Blocked(p, a, b)),
        (0..400u16).prop_map(Op::Wait),
    ]
}

/// The model's own key, so a fault in the cache's is not shared.
fn model_key(p: Proto, a: u8, b: u8) -> Key {
    (p, ip(a.min(b)), ip(a.max(b)))
}

proptest! {
    /// Against a model with no bound: what the cache says blocked was
    /// failed in that protocol within the retry time and not cleared since
    /// (an eviction may only forget, never invent or cross protocols); with
    /// room for every key it forgets nothing; the bound holds; the gauges
    /// count what the list shows.
    #[test]
    fn the_cache_agrees_with_a_model_per_protocol(
        ops in proptest::collection::vec(op(), 1..200),
        capacity in 1..60usize,
    ) {
        // Late enough that a decision 400 s before any moment is a time.
        let t0 = Instant::now() + Duration::from_secs(400);
        let mut now = t0;
        let mut c = OutcomeCache::new(capacity);
        // Key → (when the failure was recorded, when its block ends).
        let mut model: HashMap<Key, (Instant, Instant)> = HashMap::new();
        // 2 protocols × 15 unordered pairs of 5 IPs.
        let roomy = capacity >= 30;
        for op in ops {
            match op {
                Op::Failed(p, a, b) => {
                    c.failed(p, ip(a), ip(b), RETRY, now);
                    model.insert(model_key(p, a, b), (now, now + RETRY));
                }
                Op::Succeeded(p, a, b, ago) => {
                    let decided = now - Duration::from_secs(ago.into());
                    c.succeeded(p, ip(a), ip(b), decided);
                    // Only a punch decided after the failure lifts it.
                    if model.get(&model_key(p, a, b)).is_some_and(|(since, _)| *since <= decided) {
                        model.remove(&model_key(p, a, b));
                    }
                }
                Op::Blocked(p, a, b) => {
                    let got = c.blocked(p, ip(a), ip(b), now);
                    let want = model.get(&model_key(p, a, b)).is_some_and(|(_, u)| now < *u);
                    prop_assert!(!got || want, "{p} {a}-{b} blocked without a live failure");
                    if roomy {
                        prop_assert_eq!(got, want, "{} {}-{} forgotten with room", p, a, b);
                    }
                }
                Op::Wait(s) => now += Duration::from_secs(s.into()),
            }
            prop_assert!(c.len() <= capacity);
            prop_assert_eq!(c.order.len(), c.entries.len());
            let listed = c.blocked_list(now);
            let counts = c.blocked_counts(now);
            prop_assert_eq!(counts[0] + counts[1], listed.len());
            prop_assert_eq!(counts[1], listed.iter().filter(|b| b.proto == UDP).count());
            for b in listed {
                let until = model.get(&(b.proto, b.ips[0], b.ips[1])).map(|(_, u)| *u);
                prop_assert_eq!(until, Some(now + b.left), "listed but not in the model");
            }
        }
    }
}
