//! The steps between a configuration and a daemon's event loop that do not
//! depend on the daemon ([`daemon`]): `--check-config`'s answer, and
//! blocking the signals and setting up logging in the order that matters.

use tracing::warn;

use crate::exit::Failure;
use crate::logging::{self, LogHandle};
use crate::reload::Reloadable;
use crate::settings::Loaded;
use crate::signals::Signals;

/// The daemon side of `main`, once the flags are parsed: a configuration
/// that did not load is a usage error (exit 2); with `check_only`
/// (`--check-config`) the warnings and "configuration ok"; otherwise
/// `ready` (what the machine must allow, such as privileges), then signals
/// and logging, then `serve`, whose error is a failure at run time.
pub fn daemon<C: Reloadable>(
    name: &str,
    loaded: Result<Loaded<C>, String>,
    check_only: bool,
    ready: impl FnOnce() -> Result<(), Failure>,
    serve: impl FnOnce(Loaded<C>, Signals, LogHandle) -> Result<(), String>,
) -> Result<(), Failure> {
    let loaded = loaded.map_err(Failure::usage)?;
    if check_only {
        config_ok(name, &loaded.warnings);
        return Ok(());
    }
    ready()?;
    // Before anything could start a thread: see signals.rs.
    let filter = loaded.config.shared().log_filter.clone();
    let (signals, log) = signals_and_logging(&filter, &loaded.warnings)?;
    serve(loaded, signals, log).map_err(Failure::runtime)
}

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
