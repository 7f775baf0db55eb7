//! Logging: `tracing` events to stderr, one line each, through a filter that
//! SIGHUP can swap without restarting.
//!
//! Colours are used only when stderr is a terminal, so logs captured by
//! systemd, a file or a test stay plain text.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Changes the active filter of the global subscriber.
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

/// Checks that `spec` is a valid `EnvFilter` directive (a level such as
/// "debug", or RUST_LOG syntax such as "gcb_broker=trace" or "dpfd=debug").
pub fn check_filter(spec: &str) -> Result<(), String> {
    EnvFilter::try_new(spec)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Installs the global subscriber. Called once, after the configuration is
/// known to be valid, so configuration errors are printed plainly first.
pub fn init(spec: &str) -> Result<LogHandle, String> {
    let filter = EnvFilter::try_new(spec).map_err(|e| format!("log filter '{spec}': {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let output = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Module paths add noise and no information for a single-binary daemon.
        .with_target(false);
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(LogHandle(handle))
}

impl LogHandle {
    /// Replaces the filter; used by SIGHUP when the log level changed.
    pub fn set(&self, spec: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(spec).map_err(|e| format!("log filter '{spec}': {e}"))?;
        self.0
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))
    }
}
