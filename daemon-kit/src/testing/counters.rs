//! Counter checks for the hostile-input tests of both daemons: which
//! counters moved between two status readings and by how much, checked
//! exactly (every counter that moved, and no other), with bounded polling
//! because a daemon counts after datagrams a test cannot watch arrive.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

/// Counters by name, as a status output shows them.
pub type Counters = BTreeMap<String, u64>;

/// The counters that differ between `before` and `after`, by how much.
pub fn moved(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .filter_map(|(k, n)| {
            let was = before.get(k).copied().unwrap_or(0);
            (*n != was).then(|| (k.clone(), n.wrapping_sub(was)))
        })
        .collect()
}

/// Polls `read` until exactly the counters in `want` have moved by exactly
/// those amounts since `before`; panics with what did move after `within`.
pub fn expect_moved(
    before: &Counters,
    want: &[(&str, u64)],
    within: Duration,
    mut read: impl FnMut() -> Counters,
) {
    let want: Counters = want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    let deadline = Instant::now() + within;
    loop {
        let got = moved(before, &read());
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counters moved {got:?}, want {want:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `read` until two readings 100 ms apart agree (at most 5 s): the
/// counters once a daemon has worked through a flood.
pub fn settled(mut read: impl FnMut() -> Counters) -> Counters {
    let mut last = read();
    for _ in 0..50 {
        thread::sleep(Duration::from_millis(100));
        let now = read();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(pairs: &[(&str, u64)]) -> Counters {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn only_changes_are_reported() {
        let before = c(&[("a", 1), ("b", 2)]);
        let after = c(&[("a", 1), ("b", 5), ("new", 3)]);
        assert_eq!(moved(&before, &after), c(&[("b", 3), ("new", 3)]));
    }

    #[test]
    #[should_panic(expected = "counters moved")]
    fn an_extra_counter_fails() {
        let before = c(&[("a", 1)]);
        expect_moved(&before, &[("a", 1)], Duration::ZERO, || {
            c(&[("a", 2), ("b", 1)])
        });
    }
}
