//! The steps between a valid configuration and a daemon's event loop that
//! do not depend on the daemon: `--check-config`'s answer, and blocking the
//! signals and setting up logging in the order that matters.

use tracing::warn;

use crate::exit::Failure;
use crate::logging::{self, LogHandle};
use crate::signals::Signals;

/// `--check-config`'s answer: the warnings on stderr, each as
/// `<program>: warning: ...`, then "configuration ok" on stdout.
pub fn config_ok(name: &str, warnings: &[String]) {
    for warning in warnings {
        eprintln!("{name}: warning: {warning}");
    }
    println!("configuration ok");
}

/// Blocks the signals, then installs logging and logs the configuration's
/// warnings, which had nowhere to go before. Call it before anything could
/// start a thread: see signals.rs.
pub fn signals_and_logging(
    log_filter: &str,
    warnings: &[String],
) -> Result<(Signals, LogHandle), Failure> {
    let signals =
        Signals::new().map_err(|e| Failure::runtime(format!("cannot set up signals: {e}")))?;
    let log = logging::init(log_filter).map_err(Failure::runtime)?;
    for warning in warnings {
        warn!("{warning}");
    }
    Ok((signals, log))
}
