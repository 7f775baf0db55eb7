//! The parts of a daemon that `gcb-broker` and `dpfd` share, so each daemon
//! crate holds only its own protocol and state: signals delivered through a
//! signalfd registered in the event loop, the drain of the UDP command port,
//! a deadline heap, the mio token slab, tracing setup with a reloadable
//! level, the value parsers flags and config files have in common, kernel
//! randomness, per-source rate limiting, log-line throttling, the open-files
//! limit, the exit contract (one line, exit code 2 or 1), the startup steps
//! before the event loop, binding an address not held yet (IP_FREEBIND),
//! the flags both daemons take and the settings behind them, the
//! config-merge helpers, finding and reporting what a SIGHUP reload
//! changed, and the Prometheus `/metrics` endpoint served from the event
//! loop. With the `testing` feature it also holds the helpers of both
//! daemons' end-to-end tests.

pub mod auth;
pub mod cli;
pub mod command_port;
pub mod exit;
mod fields;
pub mod freebind;
pub mod logging;
pub mod metrics;
pub mod random;
pub mod ratelimit;
pub mod reload;
pub mod rlimit;
pub mod settings;
pub mod signals;
pub mod startup;
#[cfg(feature = "testing")]
pub mod testing;
pub mod throttle;
pub mod timers;
pub mod tokens;
pub mod turn;
pub mod values;
