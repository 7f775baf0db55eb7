//! The daemon-neutral half of SIGHUP: recording which settings differ
//! between the running and the re-read configuration, and logging them.
//!
//! Each daemon decides which of its keys may change live and applies them;
//! what is shared is the shape of a change, the wording of the report, so
//! operators read the same lines from both daemons (and tests look for
//! them), and the switch to a new log filter.

use std::fmt::Display;
use std::path::Path;

use tracing::{error, info, warn};

use crate::logging::LogHandle;

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
/// as warnings saying the old value stays. Returns false, after saying so,
/// if nothing changed.
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
    true
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
