//! `dpfd`, the DPF dynamic port forwarding daemon: entry point.
//!
//! Parses the command line, handles the client subcommands, loads the
//! configuration, checks privileges and runs the daemon's event loop. Every
//! failure ends as one line on stderr, `dpfd: <what is wrong>`, with exit
//! code 2 for usage and configuration errors and 1 for failures at run time,
//! such as missing privileges or a command port that is already taken.

mod cli;
mod command;
mod config;
mod daemon;
mod engine;
mod fault;
mod handler;
mod mirror;
mod net;
mod nft;
mod privilege;
mod probe;
mod reload;
mod status;
mod sync;
mod table;
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

const NAME: &str = "dpfd";

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

    /// The environment refused: privileges, a bind, a system call: exit 1.
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
    if let Some(Command::Status { listen, json }) = cli.command {
        let port = status::parse_target(listen.as_deref()).map_err(Failure::usage)?;
        let doc = status::fetch(port).map_err(Failure::runtime)?;
        if json {
            println!("{doc}");
        } else {
            print!("{}", status::render_text(&doc));
        }
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
    if !privilege::can_admin_network() {
        return Err(Failure::runtime(
            "must run as root or with CAP_NET_ADMIN to change the kernel's NAT rules \
             (--check-config validates the configuration without either)",
        ));
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
