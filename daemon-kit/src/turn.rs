//! The wait at the top of each turn of a daemon's event loop: in `poll`
//! until an event or the next deadline, or not at all when a source stopped
//! at its budget last turn (edge-triggered readiness would not report it
//! again). A signal interrupting the wait is no error: the turn starts over
//! and the signalfd reports it.

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

/// Waits for events into `events`. Returns false when a signal cut the wait
/// short (wait again); an error is the loop's own failure, one line.
pub fn wait(
    poll: &mut Poll,
    events: &mut Events,
    busy: bool,
    deadline: Option<Instant>,
) -> Result<bool, String> {
    let timeout = match busy {
        true => Some(Duration::ZERO),
        false => deadline.map(|at| at.saturating_duration_since(Instant::now())),
    };
    match poll.poll(events, timeout) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(format!("event loop: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_does_not_wait_and_a_deadline_bounds_the_wait() {
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(4);
        let started = Instant::now();
        assert!(wait(&mut poll, &mut events, true, None).unwrap());
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(wait(&mut poll, &mut events, false, Some(soon)).unwrap());
        assert!(Instant::now() >= soon, "waited until the deadline");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(events.is_empty());
    }
}
