//! Value parsers for flags and config keys: the daemon-wide ones live in
//! `daemon_kit::values`, so both daemons read addresses, ranges, levels and secret
//! files the same way.

pub use daemon_kit::values::*;
