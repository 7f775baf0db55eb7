//! `dpfd`, the DPF dynamic port forwarding daemon: entry point.
//!
//! Parses the command line, handles the client subcommands, loads the
//! configuration, checks privileges and runs the daemon's event loop. Every
//! failure ends as one line on stderr, `dpfd: <what is wrong>`, with exit
//! code 2 for usage and configuration errors and 1 for failures at run time,
//! such as missing privileges or a command port that is already taken.

mod auth;
mod cli;
mod command;
mod config;
mod daemon;
mod engine;
mod fault;
mod handler;
mod metrics;
mod mirror;
mod net;
mod nft;
mod privilege;
mod probe;
mod reload;
mod standard;
mod status;
mod sync;
mod table;
mod values;

use daemon_kit::{logging, signals, timers, tokens};

use std::process::ExitCode;

use daemon_kit::exit::{self, Failure};
use daemon_kit::startup;

use crate::cli::{Cli, Command};
use crate::config::Env;
use crate::daemon::Daemon;

const NAME: &str = "dpfd";

fn main() -> ExitCode {
    exit::main(NAME, run)
}

fn run(cli: Cli, flags: Vec<String>) -> Result<(), Failure> {
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
    let env = Env::from_process(flags);
    let loaded = config::load(&args, &env).map_err(Failure::usage)?;
    if args.check_config {
        startup::config_ok(NAME, &loaded.warnings);
        return Ok(());
    }
    if !privilege::can_admin_network() {
        return Err(Failure::runtime(
            "must run as root or with CAP_NET_ADMIN to change the kernel's NAT rules \
             (--check-config validates the configuration without either)",
        ));
    }

    // Before anything could start a thread: see signals.rs.
    let (signals, log) = startup::signals_and_logging(&loaded.config.log_filter, &loaded.warnings)?;
    let mut daemon = Daemon::start(loaded, args, env, log, signals).map_err(Failure::runtime)?;
    daemon.run().map_err(Failure::runtime)?;
    Ok(())
}
