//! `gcb-broker`, the GCB connection broker: entry point.
//!
//! Parses the command line, handles the client subcommand (`query`), loads
//! the configuration and runs the daemon's event loop. Every failure ends as
//! one line on stderr, `gcb-broker: <what is wrong>`, with exit code 2 for
//! usage and configuration errors and 1 for failures at run time, such as a
//! command port that is already taken or a broker that does not answer.
//!
//! Modules, from the outside in:
//! * `cli`, `config`, `reload`, `values`: settings;
//! * `daemon`: the event loop and the state it owns;
//! * `command`: the UDP command port (decode, rate limit, reply cache);
//! * `handlers`: what Register, Heartbeat, Unregister and Connect do, with
//!   `decide` (the network-situation rules), `registry` and `ports` (the
//!   registration table and proxy ports), `pairing` (tokens waiting for
//!   their connections) and `async_cmd` (commands to listeners);
//! * `relay`: proxy sockets, the rendezvous port and the splice relays;
//! * `status` and `query`: the status query, broker and tool side;
//! * `counters`: what is counted.

mod async_cmd;
mod cli;
mod command;
mod config;
mod counters;
mod daemon;
mod decide;
mod handlers;
mod pairing;
mod ports;
mod query;
mod registry;
mod relay;
mod reload;
mod status;
mod values;

use daemon_kit::{logging, signals, timers, tokens};

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use tracing::warn;

use crate::cli::{Cli, Command};
use crate::config::Env;
use crate::daemon::Daemon;
use crate::signals::Signals;

const NAME: &str = "gcb-broker";

/// A failure to report: the exit code and the line to print.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Bad flags, bad configuration, unsupported request: exit 2.
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// The environment refused: a bind, a system call: exit 1.
    fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_failure(e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{NAME}: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Help and version print as clap renders them. Any other clap error is cut
/// to its first paragraph on one line, to keep the one-line error contract.
fn clap_failure(e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    let rendered = e.render().to_string();
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = first.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("{NAME}: {line} (see {NAME} --help)");
    ExitCode::from(2)
}

fn run(cli: Cli) -> Result<(), Failure> {
    if let Some(Command::Query { target, json }) = cli.command {
        let text = query::fetch(&target, json).map_err(Failure::runtime)?;
        print!("{text}");
        return Ok(());
    }
    let args = cli.daemon;
    let env = Env::from_process();
    let loaded = config::load(&args, &env).map_err(Failure::usage)?;
    if args.check_config {
        for warning in &loaded.warnings {
            eprintln!("{NAME}: warning: {warning}");
        }
        println!("configuration ok");
        return Ok(());
    }

    // Before anything could start a thread: see signals.rs.
    let signals =
        Signals::new().map_err(|e| Failure::runtime(format!("cannot set up signals: {e}")))?;
    let log = logging::init(&loaded.config.log_filter).map_err(Failure::runtime)?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    let mut daemon = Daemon::start(loaded, args, env, log, signals).map_err(Failure::runtime)?;
    daemon.run().map_err(Failure::runtime)?;
    Ok(())
}
