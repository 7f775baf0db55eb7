//! Building blocks of a daemon's configuration merge: flag (or its
//! environment variable) over config file over default, with errors that
//! point at where the offending value came from, and the TOML file read
//! with errors cut to one line.
//!
//! The merge itself stays in each daemon, since the settings and the checks
//! between them are its own; these are the parts whose wording must match
//! across daemons, the settings of the flags they share ([`Shared`], from
//! `cli::Common`), and [`load`], the steps around the merge: read the file
//! named by --config, merge the shared settings and hand them to the
//! daemon's merge, read the secret file.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cli::Common;
use crate::logging::check_filter;
use crate::values::{load_secret, parse_level, parse_listen, parse_metrics_listen, Secret};

/// The log level when neither a flag, RUST_LOG nor the file names one.
pub const DEFAULT_LOG: &str = "info";
/// Longest accepted duration setting, one day. The bound keeps
/// `now + setting` deadlines far from overflowing `Instant`, and nothing
/// sensible is longer.
pub const MAX_SECONDS: u64 = 86_400;

/// Where a merged value came from, so an error can point at the right place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    File,
    Default,
}

/// The flag's value if given, else the file's, else the default.
pub fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> (T, Origin) {
    match (flag, file) {
        (Some(v), _) => (v, Origin::Flag),
        (None, Some(v)) => (v, Origin::File),
        (None, None) => (default, Origin::Default),
    }
}

/// "--max-relays" or "max_relays in the config file": the key is the flag
/// name with underscores, so one name gives both spellings. A default is
/// blamed on the flag, the way to change it.
pub fn place(key: &str, origin: Origin) -> String {
    match origin {
        Origin::Flag | Origin::Default => format!("--{}", key.replace('_', "-")),
        Origin::File => format!("{key} in the config file"),
    }
}

/// Parses a value from the file with the same parser as its flag.
pub fn from_file<T>(
    key: &str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    value
        .map(|s| parse(s).map_err(|e| format!("{key} in the config file: {e}")))
        .transpose()
}

/// The picked value if it lies in `min..=max`, else an error naming its place.
pub fn in_bounds<T: PartialOrd + std::fmt::Display>(
    key: &str,
    (value, origin): (T, Origin),
    min: T,
    max: T,
) -> Result<T, String> {
    if value < min || value > max {
        return Err(format!(
            "{} is {value}; it must be between {min} and {max}",
            place(key, origin)
        ));
    }
    Ok(value)
}

/// A path from the config file, taken relative to the file's directory as
/// an administrator editing the file would expect.
pub fn relative_to(dir: Option<&Path>, path: &Path) -> PathBuf {
    match dir {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// The log filter: --log if given, else RUST_LOG (full directives, checked
/// here so a typo is a configuration error), else `log` from the file, else
/// `default`.
pub fn log_filter(
    flag: Option<&str>,
    rust_log: Option<&str>,
    file: Option<&str>,
    default: &str,
) -> Result<String, String> {
    if let Some(level) = flag {
        Ok(level.to_string())
    } else if let Some(filter) = rust_log {
        check_filter(filter).map_err(|e| format!("RUST_LOG: {e}"))?;
        Ok(filter.to_string())
    } else {
        Ok(from_file("log", file, parse_level)?.unwrap_or_else(|| default.to_string()))
    }
}

/// RUST_LOG from the process environment, unless unset or blank.
pub fn rust_log_from_env() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// The command port: --listen, else `listen` in the file (a bare IP gets
/// `default_port`); one of them is required.
pub fn command_port(
    flag: Option<SocketAddr>,
    file: Option<&str>,
    default_port: u16,
) -> Result<SocketAddr, String> {
    let file = from_file("listen", file, |s| parse_listen(s, default_port))?;
    flag.or(file).ok_or_else(|| {
        "no command port: give --listen IP[:PORT] or `listen` in the config file".to_string()
    })
}

/// A configuration ready to run, with the secret read and any warnings that
/// could only be logged once logging is set up.
#[derive(Debug)]
pub struct Loaded<C> {
    pub config: C,
    pub secret: Option<Secret>,
    pub warnings: Vec<String>,
}

/// The settings of the flags every daemon shares (`cli::Common`), merged:
/// flag (or its environment variable) > file > default. They serialize
/// under their config-file keys, for the reload report (`reload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shared {
    #[serde(serialize_with = "crate::values::shown_opt_path")]
    pub secret_file: Option<PathBuf>,
    /// A tracing-subscriber `EnvFilter` directive: a level, or RUST_LOG's text.
    #[serde(rename = "log")]
    pub log_filter: String,
    /// Where `/metrics` is served, if anywhere.
    #[serde(serialize_with = "crate::reload::off_if_none")]
    pub metrics_listen: Option<SocketAddr>,
}

impl Shared {
    /// What runs after a reload: the re-read secret and log filter (they
    /// only govern what comes next), the running `/metrics` address (a
    /// bound socket).
    pub fn reloaded(&self, reread: &Shared) -> Shared {
        Shared {
            metrics_listen: self.metrics_listen,
            ..reread.clone()
        }
    }
}

/// The shared keys of a config file, read beside the daemon's own struct
/// (which lists them too, so that its `deny_unknown_fields` accepts them).
#[derive(Debug, Default, Deserialize)]
struct SharedFile {
    secret_file: Option<PathBuf>,
    log: Option<String>,
    metrics_listen: Option<String>,
}

/// The shared settings of `flags` over the config file `text` (whose
/// directory is `dir`) over the defaults, RUST_LOG between --log and the
/// file's `log`. [`load`] does this; a daemon's tests call it to merge a
/// file without writing one.
pub fn shared_of<V>(
    flags: &Common<V>,
    text: &str,
    dir: Option<&Path>,
    rust_log: Option<&str>,
) -> Result<Shared, String> {
    shared(flags, &parse_toml(text)?, dir, rust_log)
}

fn shared<V>(
    flags: &Common<V>,
    file: &SharedFile,
    dir: Option<&Path>,
    rust_log: Option<&str>,
) -> Result<Shared, String> {
    let file_metrics = from_file(
        "metrics_listen",
        file.metrics_listen.as_deref(),
        parse_metrics_listen,
    )?;
    Ok(Shared {
        secret_file: flags
            .secret_file
            .clone()
            .or_else(|| file.secret_file.as_deref().map(|p| relative_to(dir, p))),
        log_filter: log_filter(
            flags.log.as_deref(),
            rust_log,
            file.log.as_deref(),
            DEFAULT_LOG,
        )?,
        metrics_listen: flags.metrics_listen.or(file_metrics),
    })
}

/// Reads the config file named by `common.config` (if any) into the
/// daemon's file struct `F`, merges the shared settings, hands both to
/// `merge` with the file's directory (relative paths in the file are
/// relative to it), then reads the secret file. `flags` are the options
/// given on the command line or in the environment (`exit::given`): a file
/// key one of them overrides gets a warning, since editing it would
/// otherwise change nothing, silently. Errors are one line, without the
/// program name.
pub fn load<F, C, V>(
    common: &Common<V>,
    rust_log: Option<&str>,
    flags: &[String],
    merge: impl FnOnce(&F, Shared, Option<&Path>) -> Result<C, String>,
) -> Result<Loaded<C>, String>
where
    F: DeserializeOwned + Default,
{
    let mut warnings = Vec::new();
    let path = common.config.as_deref();
    let (file, file_shared) = match path {
        Some(path) => {
            let shown = path.display();
            let text = fs::read_to_string(path).map_err(|e| format!("config file {shown}: {e}"))?;
            let file = parse_toml(&text).map_err(|e| format!("config file {shown}: {e}"))?;
            let shared = parse_toml(&text).map_err(|e| format!("config file {shown}: {e}"))?;
            warnings.extend(overridden(&text, flags).into_iter().map(|key| {
                format!(
                    "{key} in the config file {shown} is overridden by --{} (command line or \
                     environment); the file's value is not used",
                    key.replace('_', "-")
                )
            }));
            (file, shared)
        }
        None => (F::default(), SharedFile::default()),
    };
    let dir = path.and_then(Path::parent);
    let shared = shared(common, &file_shared, dir, rust_log)?;
    let secret_file = shared.secret_file.clone();
    let config = merge(&file, shared, dir)?;
    let secret = match secret_file {
        Some(path) => {
            let (secret, warning) = load_secret(&path)?;
            warnings.extend(warning);
            Some(secret)
        }
        None => None,
    };
    Ok(Loaded {
        config,
        secret,
        warnings,
    })
}

/// An example config file with every commented-out `# key = value` line
/// uncommented: what a test parses to check the example documents every
/// key.
pub fn uncommented(example: &str) -> String {
    example
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|r| r.contains(" = "))
                .unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The keys of the config file `text` that one of `flags` overrides.
fn overridden(text: &str, flags: &[String]) -> Vec<String> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    table
        .keys()
        .filter(|key| flags.iter().any(|f| f == *key))
        .cloned()
        .collect()
}

/// Reads and parses a config file; the error names the file.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let shown = path.display();
    let text = fs::read_to_string(path).map_err(|e| format!("config file {shown}: {e}"))?;
    parse_toml(&text).map_err(|e| format!("config file {shown}: {e}"))
}

/// Parses the TOML text; the error names the line and, for a typo (with
/// `deny_unknown_fields`), the key.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| {
        // toml's Display draws a multi-line snippet; the contract is one line.
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        match e.span() {
            Some(span) => {
                // Type errors do not name the key, so quote the line itself.
                let start = span.start.min(text.len());
                let number = text[..start].matches('\n').count() + 1;
                let line = text.lines().nth(number - 1).unwrap_or("").trim();
                let quoted: String = line.chars().take(60).collect();
                let more = if quoted.len() < line.len() { "..." } else { "" };
                format!("line {number} `{quoted}{more}`: {message}")
            }
            None => message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_over_file_over_default() {
        assert_eq!(pick(Some(1), Some(2), 3), (1, Origin::Flag));
        assert_eq!(pick(None, Some(2), 3), (2, Origin::File));
        assert_eq!(pick(None, None, 3), (3, Origin::Default));
    }

    #[test]
    fn errors_name_the_place() {
        let err = in_bounds("max_relays", (0u32, Origin::File), 1, 9).unwrap_err();
        assert_eq!(
            err,
            "max_relays in the config file is 0; it must be between 1 and 9"
        );
        assert_eq!(place("max_relays", Origin::Default), "--max-relays");
    }

    #[derive(Debug, Default, serde::Deserialize)]
    struct File {
        max_relays: Option<u32>,
        log: Option<String>,
    }

    #[test]
    fn file_keys_a_flag_overrides_are_warned_about() {
        let dir = std::env::temp_dir().join(format!("dk-settings-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.toml");
        fs::write(&path, "max_relays = 5\nlog = \"debug\"\n").unwrap();
        let flags = ["max_relays".to_string(), "listen".to_string()];
        let mut common = Common::<()>::default();
        common.config = Some(path.clone());
        let loaded = load(&common, None, &flags, |f: &File, shared, _| {
            Ok((f.max_relays, f.log.clone(), shared.log_filter))
        })
        .unwrap();
        let debug = Some("debug".to_string());
        assert_eq!(loaded.config, (Some(5), debug, "debug".to_string()));
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].starts_with("max_relays in the config file ")
                && loaded.warnings[0].contains("is overridden by --max-relays"),
            "{}",
            loaded.warnings[0]
        );
        let quiet = load(&common, None, &[], |_: &File, _, _| Ok(())).unwrap();
        assert!(quiet.warnings.is_empty());
        // The shared settings: a secret path relative to the file, the
        // --log flag over RUST_LOG over the file.
        fs::write(
            &path,
            "secret_file = \"k\"\nlog = \"warn\"\nmetrics_listen = \"127.0.0.1:9\"\n",
        )
        .unwrap();
        fs::write(dir.join("k"), "key").unwrap();
        let loaded = load(&common, Some("debug"), &[], |_: &File, s, _| Ok(s)).unwrap();
        let s = loaded.config;
        assert_eq!(s.secret_file, Some(dir.join("k")));
        assert_eq!(s.log_filter, "debug", "RUST_LOG over the file");
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(loaded.secret.unwrap().bytes(), b"key");
        let running = Shared {
            metrics_listen: None,
            ..s.clone()
        };
        assert_eq!(
            running.reloaded(&s).metrics_listen,
            None,
            "a bound socket stays"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
