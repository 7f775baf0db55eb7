//! What the responder thread (`crate::responder`) does for the DPF client:
//! it waits on every forward's management socket and takes dpfd's probes off
//! its accept queue as they come (`forward::sweep`), so a forward stays while
//! its process lives, whatever the process is doing: sleeping, computing, or
//! blocked in a call the shim does not hook. Without it the probes queue up
//! and dpfd, finding the queue full, deletes the forward. A standard
//! gateway's mappings are renewed instead (`pcp::serve`).

use std::time::Instant;

use crate::responder::{Duties, PollSet};

impl Duties for super::state::Duty {
    fn gather(set: &mut PollSet, now: Instant) -> Option<Instant> {
        if super::mode::standard() {
            return super::pcp::serve::gather(set, now);
        }
        super::state::with(|st| {
            for fd in st.mgmt_fds() {
                set.add(fd, libc::POLLIN, fd as u64);
            }
        });
        None
    }

    fn run(ready: &[(u64, i16)], now: Instant) {
        if super::mode::standard() {
            return super::pcp::serve::run(ready, now);
        }
        if !ready.is_empty() {
            super::forward::sweep();
        }
    }
}
