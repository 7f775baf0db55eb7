//! The daemon-neutral half of SIGHUP: recording which settings differ
//! between the running and the re-read configuration, and logging them.
//!
//! Each daemon decides which of its keys may change live and applies them;
//! what is shared is the shape of a change, the wording of the report, so
//! operators read the same lines from both daemons (and tests look for
//! them), the switch to a new log filter, and the steps around them
//! ([`reread`]).

use std::fmt::Display;
use std::path::Path;

use tracing::{error, info, warn};

use crate::logging::LogHandle;
use crate::settings::Loaded;
use crate::values::Secret;

/// What the shared half of a reload needs from a daemon's configuration.
pub trait Reloadable {
    fn log_filter(&self) -> &str;
    /// The settings that differ in `reread`, restart-only ones first.
    /// `secret_changed` covers a secret file whose name stayed but whose
    /// contents changed.
    fn changes(&self, reread: &Self, secret_changed: bool) -> Vec<Change>;
}

/// The daemon-neutral steps of SIGHUP: re-read the config file at `path`
/// with `load`, log the warnings and what changed, and switch the log
/// filter. Returns the re-read configuration for the daemon to apply its
/// live settings from; `None`, after logging why, when there is nothing to
/// apply: no config file, a file that does not load, or no change.
pub fn reread<C: Reloadable>(
    path: Option<&Path>,
    running: &C,
    running_secret: Option<&Secret>,
    log: &LogHandle,
    load: impl FnOnce() -> Result<Loaded<C>, String>,
) -> Option<Loaded<C>> {
    let Some(path) = path else {
        info!("SIGHUP: no --config file to re-read; nothing changed");
        return None;
    };
    let loaded = match load() {
        Ok(loaded) => loaded,
        Err(e) => {
            error!("reload failed, keeping the running configuration: {e}");
            return None;
        }
    };
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    let secret_changed = loaded.secret.as_ref() != running_secret;
    let changes = running.changes(&loaded.config, secret_changed);
    if !report(path, &changes) {
        return None;
    }
    switch_log_filter(log, running.log_filter(), loaded.config.log_filter());
    Some(loaded)
}

/// One setting whose value differs in the re-read configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: &'static str,
    pub old: String,
    pub new: String,
    /// Whether the new value takes effect now (true) or at the next restart.
    pub live: bool,
}

/// Adds a `Change` for `key` if the two values differ.
pub fn compare<T: PartialEq + Display>(
    out: &mut Vec<Change>,
    key: &'static str,
    old: T,
    new: T,
    live: bool,
) {
    if old != new {
        out.push(Change {
            key,
            old: old.to_string(),
            new: new.to_string(),
            live,
        });
    }
}

/// The `secret_file` entry, always live. `contents_changed` covers a file
/// whose name stayed but whose contents changed; the secret itself never
/// appears in a `Change`.
pub fn compare_secret_file(
    out: &mut Vec<Change>,
    old: Option<&Path>,
    new: Option<&Path>,
    contents_changed: bool,
) {
    let shown =
        |p: Option<&Path>| p.map_or_else(|| "none".to_string(), |p| p.display().to_string());
    let (old_file, new_file) = (shown(old), shown(new));
    if old_file != new_file {
        compare(out, "secret_file", old_file, new_file, true);
    } else if contents_changed {
        out.push(Change {
            key: "secret_file",
            old: format!("{old_file} (old contents)"),
            new: format!("{new_file} (new contents)"),
            live: true,
        });
    }
}

/// Logs the changes read from `path`: live ones as info, restart-only ones
/// as warnings saying the old value stays, then one line summing them up.
/// Returns false, after saying so, if nothing changed.
pub fn report(path: &Path, changes: &[Change]) -> bool {
    if changes.is_empty() {
        info!("reload: {}: no changes", path.display());
        return false;
    }
    for c in changes {
        if c.live {
            info!("reload: {} changed from {} to {}", c.key, c.old, c.new);
        } else {
            warn!(
                "reload: {} changed from {} to {}, which needs a restart; still using {}",
                c.key, c.old, c.new, c.old
            );
        }
    }
    info!("reload: {}: {}", path.display(), summary(changes));
    true
}

/// "applied a, b; needs a restart: c": the keys by how they took effect.
pub fn summary(changes: &[Change]) -> String {
    let keys = |live: bool| {
        let keys: Vec<&str> = changes
            .iter()
            .filter(|c| c.live == live)
            .map(|c| c.key)
            .collect();
        (!keys.is_empty()).then(|| keys.join(", "))
    };
    match (keys(true), keys(false)) {
        (Some(now), Some(later)) => format!("applied {now}; needs a restart: {later}"),
        (Some(now), None) => format!("applied {now}"),
        (None, Some(later)) => format!("nothing applied; needs a restart: {later}"),
        (None, None) => "no changes".to_string(),
    }
}

/// Switches to the re-read log filter if it differs from the running one.
/// Call it after [`report`], so a new filter cannot hide the report's lines.
pub fn switch_log_filter(log: &LogHandle, running: &str, reread: &str) {
    if reread != running {
        if let Err(e) = log.set(reread) {
            error!("reload: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_add_nothing() {
        let mut out = Vec::new();
        compare(&mut out, "k", 1, 1, true);
        compare_secret_file(&mut out, None, None, false);
        assert!(out.is_empty());
        compare(&mut out, "k", 1, 2, false);
        assert_eq!(
            out,
            [Change {
                key: "k",
                old: "1".into(),
                new: "2".into(),
                live: false
            }]
        );
    }

    #[test]
    fn summary_names_the_keys_by_effect() {
        let change = |key, live| Change {
            key,
            old: "1".into(),
            new: "2".into(),
            live,
        };
        assert_eq!(
            summary(&[
                change("listen", false),
                change("a", true),
                change("b", true)
            ]),
            "applied a, b; needs a restart: listen"
        );
        assert_eq!(summary(&[change("a", true)]), "applied a");
        assert_eq!(
            summary(&[change("listen", false)]),
            "nothing applied; needs a restart: listen"
        );
        assert_eq!(summary(&[]), "no changes");
    }

    #[test]
    fn secret_file_names_and_contents() {
        let mut out = Vec::new();
        compare_secret_file(&mut out, None, Some(Path::new("/k")), false);
        assert_eq!((out[0].old.as_str(), out[0].new.as_str()), ("none", "/k"));
        out.clear();
        let k = Some(Path::new("/k"));
        compare_secret_file(&mut out, k, k, true);
        assert_eq!(out[0].new, "/k (new contents)");
        assert!(out[0].live);
    }
}
