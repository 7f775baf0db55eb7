//! The parts of a daemon that `gcb-broker` and `dpfd` share, so each daemon crate
//! holds only its own protocol and state: signals delivered through a signalfd
//! registered in the event loop, a deadline heap, the mio token slab, tracing
//! setup with a reloadable level, the value parsers flags and config files
//! have in common, kernel randomness, per-source rate limiting, log-line
//! throttling, and the open-files limit.

pub mod logging;
pub mod random;
pub mod ratelimit;
pub mod rlimit;
pub mod signals;
pub mod throttle;
pub mod timers;
pub mod tokens;
pub mod values;
