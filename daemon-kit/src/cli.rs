//! The flags both daemons take, defined once ([`Common`]): the secret file,
//! the `/metrics` address, the config file, the log level and
//! `--check-config`. Each daemon flattens `Common` into its own arguments
//! with a [`Flavor`] that names its environment variables
//! (`GCB_BROKER_LOG`, `DPFD_LOG`), so these flags parse, read their
//! environment and explain themselves the same way in both.
//!
//! Like every daemon flag, none has a clap default, so the merge
//! (`settings`) can tell "given on the command line or in the environment"
//! from "not given" and apply flag > file > default. The argument ids are
//! the field names, which are also the config-file keys (`exit::given`
//! relies on that to warn about a file key a flag overrides).

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

use crate::values::{parse_metrics_listen, LOG_LEVELS};

/// What tells one daemon's common flags from the other's.
pub trait Flavor {
    /// The prefix of the daemon's environment variables, such as
    /// `GCB_BROKER_`.
    const ENV_PREFIX: &'static str;
    /// What the secret authenticates, for `--help`: "commands", "requests".
    const AUTHENTICATES: &'static str;
    /// What `/metrics` holds, for `--help`.
    const METRICS: &'static str;
}

/// The flags every daemon takes (module docs).
pub struct Common<F> {
    /// `--secret-file`: the shared secret that authenticates requests.
    pub secret_file: Option<PathBuf>,
    /// `--metrics-listen`: where `/metrics` is served.
    pub metrics_listen: Option<SocketAddr>,
    /// `--config`: the TOML file, re-read on SIGHUP.
    pub config: Option<PathBuf>,
    /// `--log`: the log level.
    pub log: Option<String>,
    /// `--check-config`: check and exit.
    pub check_config: bool,
    flavor: PhantomData<fn() -> F>,
}

impl<F> Default for Common<F> {
    fn default() -> Self {
        Common {
            secret_file: None,
            metrics_listen: None,
            config: None,
            log: None,
            check_config: false,
            flavor: PhantomData,
        }
    }
}

impl<F> Clone for Common<F> {
    fn clone(&self) -> Self {
        Common {
            secret_file: self.secret_file.clone(),
            metrics_listen: self.metrics_listen,
            config: self.config.clone(),
            log: self.log.clone(),
            check_config: self.check_config,
            flavor: PhantomData,
        }
    }
}

impl<F> fmt::Debug for Common<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("secret_file", &self.secret_file)
            .field("metrics_listen", &self.metrics_listen)
            .field("config", &self.config)
            .field("log", &self.log)
            .field("check_config", &self.check_config)
            .finish()
    }
}

/// `--secret-file`'s help, naming what the daemon authenticates.
fn secret_file_help<F: Flavor>() -> String {
    let what = F::AUTHENTICATES;
    format!(
        "File holding the shared secret that authenticates {what} (HMAC). It must exist and not \
         be empty; a trailing newline is ignored. A warning is logged if others can read it. \
         [default: none, {what} are not authenticated]"
    )
}

/// `--metrics-listen`'s help, naming what the daemon's metrics hold.
fn metrics_listen_help<F: Flavor>() -> String {
    format!(
        "Serve Prometheus metrics over HTTP at http://IP:PORT/metrics: {}. Served from the event \
         loop; the metrics name no client, but bind it where only the monitoring can reach it. \
         [default: off]",
        F::METRICS
    )
}

const CONFIG: &str = "TOML file with the same settings (keys are the flag names with underscores, \
    e.g. port_range). Flags and environment variables override it; unknown keys are an error. \
    SIGHUP re-reads it. [default: none]";
const LOG: &str = "Log level: error, warn, info, debug or trace. Logs go to stderr, one line per \
    event. Without this flag RUST_LOG is honoured if set (it also takes full filter directives), \
    then `log` in the config file. [default: info]";
const CHECK_CONFIG: &str = "Only check the configuration (flags, environment, config file, secret \
    file), print \"configuration ok\" and exit 0, or print what is wrong and exit 2. Needs no \
    privileges.";

impl<F: Flavor> Args for Common<F> {
    fn augment_args(cmd: Command) -> Command {
        let env = |name: &str| format!("{}{name}", F::ENV_PREFIX);
        let path = clap::value_parser!(PathBuf);
        cmd.arg(
            Arg::new("secret_file")
                .long("secret-file")
                .value_name("PATH")
                .env(env("SECRET_FILE"))
                .value_parser(path.clone())
                .help(secret_file_help::<F>()),
        )
        .arg(
            Arg::new("metrics_listen")
                .long("metrics-listen")
                .value_name("IP:PORT")
                .env(env("METRICS_LISTEN"))
                .value_parser(parse_metrics_listen)
                .help(metrics_listen_help::<F>()),
        )
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("PATH")
                .env(env("CONFIG"))
                .value_parser(path)
                .help(CONFIG),
        )
        .arg(
            Arg::new("log")
                .long("log")
                .value_name("LEVEL")
                .env(env("LOG"))
                .value_parser(LOG_LEVELS)
                .help(LOG),
        )
        .arg(
            Arg::new("check_config")
                .long("check-config")
                .action(ArgAction::SetTrue)
                .help(CHECK_CONFIG),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<F> FromArgMatches for Common<F> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Common {
            secret_file: m.get_one::<PathBuf>("secret_file").cloned(),
            metrics_listen: m.get_one::<SocketAddr>("metrics_listen").copied(),
            config: m.get_one::<PathBuf>("config").cloned(),
            log: m.get_one::<String>("log").cloned(),
            check_config: m.get_flag("check_config"),
            flavor: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    struct Test;
    impl Flavor for Test {
        const ENV_PREFIX: &'static str = "DK_CLI_TEST_";
        const AUTHENTICATES: &'static str = "tests";
        const METRICS: &'static str = "every test counter";
    }

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long)]
        max_relays: Option<u32>,
        #[command(flatten)]
        common: Common<Test>,
    }

    #[test]
    fn the_common_flags_parse_and_read_the_environment() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "d",
            "--secret-file",
            "/k",
            "--metrics-listen",
            "127.0.0.1:9465",
            "--log",
            "debug",
            "--check-config",
        ])
        .unwrap();
        let c = cli.common;
        assert_eq!(c.secret_file, Some(PathBuf::from("/k")));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9465".parse().unwrap()));
        assert_eq!(
            (c.log.as_deref(), c.check_config, c.config),
            (Some("debug"), true, None)
        );
        assert!(Cli::try_parse_from(["d", "--log", "loud"]).is_err());
        assert!(Cli::try_parse_from(["d", "--metrics-listen", "127.0.0.1"]).is_err());
        let help = Cli::command().render_help().to_string();
        // Undo the wrapping, which depends on the terminal.
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("DK_CLI_TEST_SECRET_FILE") && help.contains("--check-config"));
        assert!(
            help.contains("authenticates tests") && help.contains("/metrics: every test counter.")
        );
    }

    #[test]
    fn ids_are_the_config_file_keys() {
        let cmd = Cli::command_for_test();
        let m = cmd
            .clone()
            .try_get_matches_from(["d", "--log", "info", "--max-relays", "2"])
            .unwrap();
        let mut given = crate::exit::given(&cmd, &m);
        given.sort();
        assert_eq!(given, ["log", "max_relays"]);
    }

    impl Cli {
        fn command_for_test() -> Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
