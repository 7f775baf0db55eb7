//! Command-line interface of `gcb-broker`: the clap definitions only.
//!
//! Every daemon option is an `Option` (or a plain flag) with no clap default,
//! so `config::merge` can tell "given on the command line or in the
//! environment" from "not given" and apply the rule flag > file > default.
//! The defaults are therefore spelled out in the help texts and live as
//! constants in `config.rs`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_COMMAND_PORT;
use crate::values::{listen_on, Networks, PortRange};
use daemon_kit::cli::{Common, Flavor};

/// GCB connection broker.
///
/// Registers the listening and UDP sockets of shim-loaded processes, gives each a proxy address
/// on --public-ip, and brokers connections to them: direct, reversed, or relayed through the
/// broker. Takes GCB commands over UDP on the command port. Settings come from flags, then
/// environment variables, then the --config file, then the built-in defaults. SIGHUP re-reads
/// the config file; SIGTERM or SIGINT stops the broker.
#[derive(Debug, Parser)]
#[command(name = "gcb-broker", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub daemon: DaemonArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Client subcommands; without one, `gcb-broker` runs the daemon.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask a running broker for its status: registrations, relays (bytes, age), pending
    /// pairings, UDP relay rules, free proxy ports, and counters, those of refused and malformed
    /// input on a line of their own. The broker answers only its own host and --status-allow
    /// networks.
    Query {
        /// Command port of the broker to ask, as HOST:PORT (the port defaults to 65432).
        #[arg(value_name = "HOST:PORT")]
        target: String,

        /// Print the answer as one JSON object instead of text.
        #[arg(long)]
        json: bool,

        /// The broker's shared secret, when it runs with --secret-file: requests are then sealed
        /// with it and only sealed answers are believed.
        #[arg(long, value_name = "PATH")]
        secret_file: Option<PathBuf>,
    },
}

/// Options of the daemon itself.
#[derive(Debug, Clone, Default, Args)]
pub struct DaemonArgs {
    /// UDP address of the command port, where clients send GCB commands. Give IP or IP:PORT; the
    /// port defaults to 65432, historic GCB's. Required, here or as `listen` in the config file.
    #[arg(long, value_name = "IP[:PORT]", env = "GCB_BROKER_LISTEN", value_parser = listen_on(DEFAULT_COMMAND_PORT))]
    pub listen: Option<SocketAddr>,

    /// Local address the proxy sockets are bound on; connectors reach the broker at this IP and
    /// the command port. Must be a concrete address, not 0.0.0.0 or ::. [default: the --listen
    /// IP]
    #[arg(long, value_name = "IP", env = "GCB_BROKER_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,

    /// Ports the proxy sockets are taken from. LO must not exceed HI, must be at least 1024
    /// unless running as root, and the range must not contain the command port. [default:
    /// 20000-29999]
    #[arg(long, value_name = "LO-HI", env = "GCB_BROKER_PORT_RANGE")]
    pub port_range: Option<PortRange>,

    /// Seconds without a heartbeat after which a process holding a registered socket is dropped
    /// as its holder (three of its own heartbeat intervals if that is longer); the registration
    /// and its proxy socket go with its last holder. Clients send one every 10 s by default
    /// (GCB_HEARTBEAT_S), so the default allows two to be lost. A holder whose process has
    /// died is dropped sooner, at once, when a command the broker sends it draws an ICMP port
    /// unreachable from its address. [default: 30]
    #[arg(long, value_name = "N", env = "GCB_BROKER_HEARTBEAT_TIMEOUT_S")]
    pub heartbeat_timeout_s: Option<u64>,

    /// Most registered sockets at once; further registrations are refused. [default: 100000]
    #[arg(long, value_name = "N", env = "GCB_BROKER_MAX_REGISTRATIONS")]
    pub max_registrations: Option<u32>,

    /// Most relayed TCP connections at once; further relays are refused. [default: 10000]
    #[arg(long, value_name = "N", env = "GCB_BROKER_MAX_RELAYS")]
    pub max_relays: Option<u32>,

    /// Most commands per second accepted from one source IP; the excess is dropped and
    /// counted. 0 turns the limit off. [default: 200]
    #[arg(long, value_name = "N", env = "GCB_BROKER_RATE_LIMIT")]
    pub rate_limit: Option<u32>,

    /// Seconds a UDP relay rule may stay unused before it is deleted; traffic after that makes a
    /// new rule. [default: 120]
    #[arg(long, value_name = "N", env = "GCB_BROKER_UDP_RULE_IDLE_S")]
    pub udp_rule_idle_s: Option<u64>,

    /// Most UDP relay rules (peer addresses heard from in the last idle time) per
    /// registered UDP socket; a new peer beyond it is refused, so a flood of new
    /// sources cannot evict the peers already talking. A collector hears from
    /// every worker of its pool: size it to the pool. [default: 4096]
    #[arg(long, value_name = "N", env = "GCB_BROKER_UDP_RULES_PER_REGISTRATION")]
    pub udp_rules_per_registration: Option<u32>,

    /// Networks besides the broker's own host that may ask for its status (`gcb-broker query`),
    /// as a comma-separated list of IP or IP/LEN. The status names every client's addresses and
    /// programs, so it is refused to anyone else. [default: none, only loopback and the host's
    /// own addresses]
    #[arg(long, value_name = "CIDR[,CIDR...]", env = "GCB_BROKER_STATUS_ALLOW")]
    pub status_allow: Option<Networks>,

    /// Bind the command port and the rendezvous port even if this host does not hold the
    /// --listen address yet (IP_FREEBIND), and skip the check that it holds --public-ip: for a
    /// standby broker behind a floating IP (keepalived), which starts at boot and begins to
    /// serve when the address moves to it. `--freebind` alone means true. [default: false]
    #[arg(long, value_name = "BOOL", env = "GCB_BROKER_FREEBIND", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub freebind: Option<bool>,

    /// Do not punch holes: connections between two private realms are always relayed, as
    /// with shims that cannot punch. Without it, the broker lets two shims that both offer TCP
    /// hole punching connect directly through their NATs, and relays only when that fails
    /// (docs/hole-punching.md). `--no-punch` alone means true; the config key is `punch`
    /// (true or false). [default: false, punching on]
    #[arg(long, value_name = "BOOL", env = "GCB_BROKER_NO_PUNCH", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub no_punch: Option<bool>,

    /// The most milliseconds each side of a hole punch may spend dialing the other before it
    /// reports failure and the connection falls back to the relay: the ceiling of the budget
    /// the broker gives each punch, which is ten times the sum of the two sides' round trips to
    /// the broker, at least --punch-budget-min-ms, at most this, and this when a round trip is
    /// unknown. A connect between two private realms that cannot punch waits about its budget
    /// for the relay; the broker's own deadline, for reports that do not come, is the budget
    /// plus a margin as long (at least 100 ms). [default: 500]
    #[arg(long, value_name = "MS", env = "GCB_BROKER_PUNCH_BUDGET_MS")]
    pub punch_budget_ms: Option<u64>,

    /// The least milliseconds a hole punch gets, however short the round trips: room for a
    /// few of a side's attempts (it replaces one that hangs after 50 ms) and for a loaded
    /// machine's scheduling. --punch-budget-ms wins if it is lower; both the same fix the
    /// budget. [default: 200]
    #[arg(long, value_name = "MS", env = "GCB_BROKER_PUNCH_BUDGET_MIN_MS")]
    pub punch_budget_min_ms: Option<u64>,

    /// Seconds a pair of realms (named by their public IPs) whose punch failed goes straight
    /// to the relay before punching is tried between them again, TCP and UDP each on its
    /// own (a failed TCP punch leaves the pair's UDP punching); a success of a punch decided
    /// after the failure clears the pair for its protocol. [default: 600]
    #[arg(long, value_name = "N", env = "GCB_BROKER_PUNCH_RETRY_S")]
    pub punch_retry_s: Option<u64>,

    /// Punch even when a side's NAT did not keep its port (the port the broker saw differs
    /// from the side's own): right for NATs that renumber ports but map one port for every
    /// destination; behind a NAT that maps each destination to its own port the punch fails
    /// and costs the budget. Without it such connections are relayed at once.
    /// `--punch-unpredictable` alone means true. [default: false]
    #[arg(long, value_name = "BOOL", env = "GCB_BROKER_PUNCH_UNPREDICTABLE", num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub punch_unpredictable: Option<bool>,

    /// The flags dpfd takes too: --secret-file, --metrics-listen, --config, --log,
    /// --check-config (`daemon_kit::cli`).
    #[command(flatten)]
    pub common: Common<Broker>,
}

/// The broker's side of the shared flags: its environment variables are
/// `GCB_BROKER_*`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Broker;

impl Flavor for Broker {
    const ENV_PREFIX: &'static str = "GCB_BROKER_";
    const AUTHENTICATES: &'static str = "commands";
    const METRICS: &'static str = "every counter of `gcb-broker query`, gauges of registrations, \
        relays, UDP rules and channels and of the limits, and a histogram of the time to decide a \
        brokered connect";
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn listen_takes_ip_or_ip_port() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["gcb-broker", "--listen", "192.0.2.1"]).unwrap();
        assert_eq!(cli.daemon.listen, Some("192.0.2.1:65432".parse().unwrap()));
        let cli = Cli::try_parse_from(["gcb-broker", "--listen", "192.0.2.1:7"]).unwrap();
        assert_eq!(cli.daemon.listen, Some("192.0.2.1:7".parse().unwrap()));
    }

    #[test]
    fn bad_values_are_clap_errors() {
        assert!(Cli::try_parse_from(["gcb-broker", "--port-range", "9-1"]).is_err());
        assert!(Cli::try_parse_from(["gcb-broker", "--log", "loud"]).is_err());
        assert!(Cli::try_parse_from(["gcb-broker", "--max-relays", "-1"]).is_err());
    }

    #[test]
    fn metrics_and_freebind_flags() {
        let cli = Cli::try_parse_from([
            "gcb-broker",
            "--metrics-listen",
            "127.0.0.1:9465",
            "--freebind",
        ])
        .unwrap();
        assert_eq!(
            cli.daemon.common.metrics_listen,
            Some("127.0.0.1:9465".parse().unwrap())
        );
        assert_eq!(cli.daemon.freebind, Some(true));
        let cli = Cli::try_parse_from(["gcb-broker", "--freebind=no"]).unwrap();
        assert_eq!(cli.daemon.freebind, Some(false));
        assert!(Cli::try_parse_from(["gcb-broker", "--metrics-listen", "127.0.0.1"]).is_err());
    }

    #[test]
    fn punch_flags() {
        let cli = Cli::try_parse_from([
            "gcb-broker",
            "--no-punch",
            "--punch-budget-ms",
            "300",
            "--punch-budget-min-ms",
            "100",
            "--punch-retry-s",
            "60",
            "--punch-unpredictable",
        ])
        .unwrap();
        let d = cli.daemon;
        assert_eq!(d.no_punch, Some(true));
        assert_eq!((d.punch_budget_ms, d.punch_budget_min_ms, d.punch_retry_s), (Some(300), Some(100), Some(60)));
        assert_eq!(d.punch_unpredictable, Some(true));
        let cli = Cli::try_parse_from(["gcb-broker", "--no-punch=false"]).unwrap();
        assert_eq!(cli.daemon.no_punch, Some(false));
        assert_eq!(Cli::try_parse_from(["gcb-broker"]).unwrap().daemon.no_punch, None);
    }

    #[test]
    fn query_subcommand_parses() {
        let cli =
            Cli::try_parse_from(["gcb-broker", "query", "192.0.2.1:65432", "--json"]).unwrap();
        match cli.command {
            Some(Command::Query { target, json, .. }) => {
                assert_eq!(target, "192.0.2.1:65432");
                assert!(json);
            }
            None => panic!("no subcommand"),
        }
    }
}
