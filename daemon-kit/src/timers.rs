//! Deadlines for the event loop: a binary heap ordered by time, whose
//! earliest entry sets the `poll` timeout.
//!
//! The broker will hold one deadline per registration (heartbeat expiry) and
//! per UDP relay rule (idle expiry), so timers must be cheap to add and to
//! cancel in bulk: adding is O(log n), and cancelling only drops the id from
//! the live set; the heap entry is discarded lazily when it reaches the top.
//! A timer wheel would save the log factor but needs a fixed resolution; the
//! heap is exact and simple at the expected sizes (≤ 10^5 entries).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};
use std::time::{Duration, Instant};

/// Names one scheduled deadline, for cancelling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

struct Entry<K> {
    at: Instant,
    id: u64,
    kind: K,
}

// Ordered by time, then by id so equal deadlines fire in scheduling order;
// `kind` takes no part, so it needs no Ord of its own.
impl<K> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.id) == (other.at, other.id)
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Entry<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.id).cmp(&(other.at, other.id))
    }
}

pub struct Timers<K> {
    heap: BinaryHeap<Reverse<Entry<K>>>,
    live: HashSet<u64>,
    next_id: u64,
}

impl<K> Timers<K> {
    pub fn new() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            live: HashSet::new(),
            next_id: 0,
        }
    }

    pub fn schedule(&mut self, at: Instant, kind: K) -> TimerId {
        let id = self.next_id;
        self.next_id += 1;
        self.live.insert(id);
        self.heap.push(Reverse(Entry { at, id, kind }));
        TimerId(id)
    }

    /// Cancels a deadline; cancelling one that already fired is harmless.
    pub fn cancel(&mut self, id: TimerId) {
        self.live.remove(&id.0);
    }

    /// Drops cancelled entries from the top so the top is a live deadline.
    fn skip_cancelled(&mut self) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if self.live.contains(&top.id) {
                break;
            }
            self.heap.pop();
        }
    }

    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.skip_cancelled();
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// How long `poll` may sleep: until the next deadline, or for ever if
    /// there is none. mio rounds sub-millisecond waits up, so a near
    /// deadline does not turn into a busy loop.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        self.next_deadline()
            .map(|at| at.saturating_duration_since(now))
    }

    /// Removes and returns the earliest deadline that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        self.skip_cancelled();
        if self.heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            let Reverse(entry) = self.heap.pop()?;
            self.live.remove(&entry.id);
            return Some(entry.kind);
        }
        None
    }

    /// Live deadlines, for status output and tests.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_time_order_and_fifo_on_ties() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        timers.schedule(t0 + Duration::from_secs(2), "c");
        timers.schedule(t0 + Duration::from_secs(1), "a");
        timers.schedule(t0 + Duration::from_secs(1), "b");
        assert_eq!(timers.poll_timeout(t0), Some(Duration::from_secs(1)));
        assert_eq!(timers.pop_due(t0), None);
        let later = t0 + Duration::from_secs(5);
        let fired: Vec<_> = std::iter::from_fn(|| timers.pop_due(later)).collect();
        assert_eq!(fired, ["a", "b", "c"]);
        assert_eq!(timers.poll_timeout(later), None);
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn cancelled_timers_neither_fire_nor_shorten_the_wait() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        let early = timers.schedule(t0 + Duration::from_secs(1), 1);
        timers.schedule(t0 + Duration::from_secs(3), 2);
        timers.cancel(early);
        timers.cancel(early);
        assert_eq!(timers.poll_timeout(t0), Some(Duration::from_secs(3)));
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(9)), Some(2));
        assert_eq!(timers.pop_due(t0 + Duration::from_secs(9)), None);
    }

    #[test]
    fn overdue_deadline_means_no_wait() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        timers.schedule(t0, ());
        assert_eq!(
            timers.poll_timeout(t0 + Duration::from_secs(1)),
            Some(Duration::ZERO)
        );
    }
}
