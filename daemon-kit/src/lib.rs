//! The parts of a daemon that `gcb-broker` and `dpfd` share, so each daemon crate
//! holds only its own protocol and state: signals delivered through a signalfd
//! registered in the event loop, a deadline heap, the mio token slab, tracing
//! setup with a reloadable level, and the value parsers flags and config files
//! have in common.

pub mod logging;
pub mod signals;
pub mod timers;
pub mod tokens;
pub mod values;
