//! The exit contract both daemons keep: every failure ends as one line on
//! stderr, `<program>: <what is wrong>`, with exit code 2 for usage and
//! configuration errors and 1 for failures at run time. Scripts and service
//! managers can then tell "fix the flags" from "fix the machine", and a log
//! holds the whole reason on one line.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

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
/// `run` with it and turns any failure into the one line and the exit code.
pub fn main<C: Parser>(name: &str, run: impl FnOnce(C) -> Result<(), Failure>) -> ExitCode {
    let cli = match C::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_failure(name, e),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{name}: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
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
