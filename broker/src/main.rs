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
//! * `daemon`: the event loop, around the core; `io` (the sockets it holds
//!   for the core), `command` (the command port and the core's effects),
//!   `relay` (proxy listeners, the rendezvous port, the splice relays),
//!   `udp::io` (proxy and channel UDP sockets), `icmp::errqueue`, and
//!   `metrics` (what `/metrics` shows): the I/O, with no decision in it;
//! * `engine`: the pure core: what every request and event does, the
//!   decisions and all their state, tested without sockets; its tables are
//!   `decide` (the network-situation rules), `registry` and `ports` (the
//!   registration table, its holders and the proxy ports), `pairing`
//!   (tokens waiting for their connections), `async_cmd` (commands to
//!   listeners), `udp::rules` and `udp::channels`, `icmp` (what an ICMP
//!   error means) and `status` (snapshots and their rendering);
//! * `query`: the status query, tool side;
//! * `counters`: what is counted.

mod async_cmd;
mod cli;
mod command;
mod config;
mod counters;
mod daemon;
mod decide;
mod engine;
mod icmp;
mod io;
mod metrics;
mod pairing;
mod ports;
mod punch_cache;
mod query;
mod registry;
mod relay;
mod reload;
mod status;
mod udp;
mod values;

use daemon_kit::{logging, signals, timers, tokens};

use std::process::ExitCode;

use daemon_kit::exit::{self, Failure};
use daemon_kit::startup;

use crate::cli::{Cli, Command};
use crate::config::Env;
use crate::daemon::Daemon;

const NAME: &str = "gcb-broker";

fn main() -> ExitCode {
    exit::main(NAME, run)
}

fn run(cli: Cli, flags: Vec<String>) -> Result<(), Failure> {
    if let Some(Command::Query {
        target,
        json,
        secret_file,
    }) = cli.command
    {
        let auth = match secret_file {
            Some(path) => Some(daemon_kit::auth::authenticator(
                &values::load_secret(&path).map_err(Failure::usage)?.0,
            )),
            None => None,
        };
        let text = query::fetch(&target, json, auth).map_err(Failure::runtime)?;
        print!("{text}");
        return Ok(());
    }
    let args = cli.daemon;
    let env = Env::from_process(flags);
    let loaded = config::load(&args, &env);
    let check_only = args.common.check_config;
    startup::daemon(
        NAME,
        loaded,
        check_only,
        || Ok(()),
        |loaded, signals, log| {
            Daemon::start(loaded, (args, env), log, signals)?
                .run()
                .map(drop)
        },
    )
}
