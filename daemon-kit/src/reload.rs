//! The daemon-neutral half of SIGHUP: recording which settings differ
//! between the running and the re-read configuration, and logging them.
//!
//! Each daemon decides which of its keys need a restart and applies the
//! rest; what is shared is finding what changed ([`changes`]: the
//! configurations are read as their settings through serde, so a daemon
//! names only its restart-only keys), the shape of a change, the wording of
//! the report, so operators read the same lines from both daemons (and
//! tests look for them), the switch to a new log filter, and the steps
//! around them ([`reread`]).

use std::path::Path;

use serde::{Serialize, Serializer};
use tracing::{error, info, warn};

use crate::fields::fields;
use crate::logging::LogHandle;
use crate::settings::{Loaded, Shared};
use crate::values::Secret;

/// What the shared half of a reload needs from a daemon's configuration:
/// its settings under their config-file keys (`Serialize`, read by
/// [`changes`]), and which of them a running daemon cannot change.
pub trait Reloadable: Serialize {
    /// The keys baked into bound sockets, or naming what already exists: a
    /// change to them is reported and waits for a restart.
    const RESTART: &'static [&'static str];
    /// The settings of the flags both daemons share.
    fn shared(&self) -> &Shared;
}

/// The settings that differ in `new`: the restart-only ones first, so the
/// warnings lead the report, each group in declaration order. A secret file
/// whose name stayed but whose contents changed (`secret_changed`) is a
/// change too; the secret itself never appears in one.
pub fn changes<C: Reloadable>(old: &C, new: &C, secret_changed: bool) -> Vec<Change> {
    let (Ok(old), Ok(new)) = (fields(old), fields(new)) else {
        error!("reload: the configuration cannot be compared; assuming nothing changed");
        return Vec::new();
    };
    let mut out = Vec::new();
    for ((key, old), (_, new)) in old.into_iter().zip(new) {
        let live = !C::RESTART.contains(&key);
        if old != new {
            out.push(Change {
                key,
                old,
                new,
                live,
            });
        } else if key == "secret_file" && secret_changed {
            out.push(Change {
                key,
                old: format!("{old} (old contents)"),
                new: format!("{new} (new contents)"),
                live,
            });
        }
    }
    out.sort_by_key(|c| c.live);
    out
}

/// For `#[serde(serialize_with)]`: an address that may be off, as `off`.
pub fn off_if_none<T: Serialize, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => v.serialize(s),
        None => s.serialize_str("off"),
    }
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
    let changes = changes(running, &loaded.config, secret_changed);
    if !report(path, &changes) {
        return None;
    }
    let (before, after) = (
        &running.shared().log_filter,
        &loaded.config.shared().log_filter,
    );
    switch_log_filter(log, before, after);
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

    #[derive(Serialize, Clone)]
    struct Config {
        listen: String,
        max_relays: u32,
        shared: Shared,
    }

    impl Reloadable for Config {
        const RESTART: &'static [&'static str] = &["listen", "metrics_listen"];
        fn shared(&self) -> &Shared {
            &self.shared
        }
    }

    fn config() -> Config {
        Config {
            listen: "192.0.2.1:7".into(),
            max_relays: 10,
            shared: Shared {
                secret_file: None,
                log_filter: "info".into(),
                metrics_listen: None,
            },
        }
    }

    #[test]
    fn changes_name_each_differing_setting_restart_only_first() {
        let old = config();
        assert!(changes(&old, &old, false).is_empty());
        let mut new = config();
        new.listen = "192.0.2.1:8".into();
        new.max_relays = 20;
        new.shared.metrics_listen = Some("127.0.0.1:9465".parse().unwrap());
        new.shared.log_filter = "debug".into();
        let got = changes(&old, &new, false);
        let keys: Vec<_> = got.iter().map(|c| (c.key, c.live)).collect();
        assert_eq!(
            keys,
            [
                ("listen", false),
                ("metrics_listen", false),
                ("max_relays", true),
                ("log", true)
            ]
        );
        assert_eq!((got[2].old.as_str(), got[2].new.as_str()), ("10", "20"));
        assert_eq!(
            (got[1].old.as_str(), got[1].new.as_str()),
            ("off", "127.0.0.1:9465")
        );
        assert_eq!(
            summary(&got),
            "applied max_relays, log; needs a restart: listen, metrics_listen"
        );
    }

    #[test]
    fn a_secret_file_changes_by_name_or_contents_never_showing_the_secret() {
        let old = config();
        let mut new = config();
        new.shared.secret_file = Some("/k".into());
        let got = changes(&old, &new, true);
        assert_eq!(
            (got[0].key, got[0].old.as_str(), got[0].new.as_str()),
            ("secret_file", "none", "/k")
        );
        let got = changes(&new, &new, true);
        assert_eq!(got[0].new, "/k (new contents)");
        assert!(got[0].live);
        assert!(changes(&new, &new, false).is_empty());
        // A path from the command line need not be UTF-8; it still shows.
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"/k\xff");
        new.shared.secret_file = Some(odd.into());
        let got = changes(&old, &new, false);
        assert_eq!(
            (got[0].key, got[0].new.as_str()),
            ("secret_file", "/k\u{fffd}")
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
}
