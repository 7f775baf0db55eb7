//! The exit contract both daemons keep: every failure ends as one line on
//! stderr, `<program>: <what is wrong>`, with exit code 2 for usage and
//! configuration errors and 1 for failures at run time. Scripts and service
//! managers can then tell "fix the flags" from "fix the machine", and a log
//! holds the whole reason on one line.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, Command, Parser};

/// A failure to report: the exit code and the line to print.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// Bad flags, bad configuration, unsupported request: exit 2.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    /// The environment refused: privileges, a bind, a system call: exit 1.
    pub fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}

/// The whole of a daemon's `main`: parses the command line as `C`, runs
/// `run` with it and the names of the options given on the command line or
/// in the environment (see [`given`]), and turns any failure into the one
/// line and the exit code.
pub fn main<C: Parser>(
    name: &str,
    run: impl FnOnce(C, Vec<String>) -> Result<(), Failure>,
) -> ExitCode {
    let command = C::command();
    let parsed = command
        .clone()
        .try_get_matches()
        .and_then(|m| C::from_arg_matches(&m).map(|cli| (cli, given(&command, &m))));
    let (cli, given) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return clap_failure(name, e),
    };
    match run(cli, given) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{name}: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// The ids of the top-level options given on the command line or in the
/// environment: the field names, which are also the config-file keys, so a
/// file key that a flag overrides can be named. Groups (clap's derive makes
/// one per struct) are not options.
pub fn given(command: &Command, matches: &ArgMatches) -> Vec<String> {
    matches
        .ids()
        .filter(|id| command.get_arguments().any(|a| a.get_id() == *id))
        .filter(|id| {
            matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.as_str().to_string())
        .collect()
}

/// Help and version print as clap renders them. Any other clap error is cut
/// to its first paragraph on one line, to keep the one-line error contract.
fn clap_failure(name: &str, e: clap::Error) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    eprintln!("{name}: {} (see {name} --help)", one_line(&e));
    ExitCode::from(2)
}

/// The first paragraph of clap's rendering, joined, without "error: ".
fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = first.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long)]
        max_relays: Option<u32>,
        #[arg(long, env = "DK_EXIT_TEST_LOG")]
        log: Option<String>,
        #[arg(long)]
        check_config: bool,
    }

    #[test]
    fn given_names_what_the_command_line_set() {
        let cmd = Cli::command();
        let m = cmd
            .clone()
            .try_get_matches_from(["d", "--max-relays", "3", "--check-config"]);
        let mut ids = given(&cmd, &m.unwrap());
        ids.sort();
        assert_eq!(ids, ["check_config", "max_relays"]);
        let m = cmd.clone().try_get_matches_from(["d"]).unwrap();
        assert!(given(&cmd, &m).is_empty(), "defaults are not given");
    }
}
