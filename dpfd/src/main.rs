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
    let loaded = config::load(&args, &env);
    let privileged = || match privilege::can_admin_network() {
        true => Ok(()),
        false => Err(Failure::runtime(
            "must run as root or with CAP_NET_ADMIN to change the kernel's NAT rules \
             (--check-config validates the configuration without either)",
        )),
    };
    let check_only = args.common.check_config;
    startup::daemon(
        NAME,
        loaded,
        check_only,
        privileged,
        |loaded, signals, log| {
            Daemon::start(loaded, args, env, log, signals)?
                .run()
                .map(drop)
        },
    )
}
