//! Command-line interface of `dpfd`: the clap definitions only.
//!
//! Every daemon option is an `Option`, an empty-by-default list or a plain
//! flag, with no clap default, so `config::merge` can tell "given on the
//! command line or in the environment" from "not given" and apply the rule
//! flag > file > default. The defaults are spelled out in the help texts and
//! live as constants in `config.rs`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use daemon_kit::cli::{Common, Flavor};

use crate::config::DEFAULT_COMMAND_PORT;
use crate::net::Cidr;
use crate::values::{listen_on, parse_table_name, PortRange};

/// Names dpfd's environment variables for the flags it shares with the
/// broker: `DPFD_*`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dpfd;

impl Flavor for Dpfd {
    const ENV_PREFIX: &'static str = "DPFD_";
    const AUTHENTICATES: &'static str = "requests";
    const METRICS: &'static str = "every counter of `dpfd status`, gauges of the forwards and \
        free ports, and a histogram of the time each change of the kernel's NAT map takes";
}

/// DPF dynamic port forwarding daemon, for the Linux NAT gateway of a private cluster.
///
/// Takes requests from shim-loaded processes on the private side and forwards a public port of
/// --public-ip to the requesting host in the kernel's NAT (nftables), keeping a mirror file so the
/// forwards survive a restart. Runs as root or with CAP_NET_ADMIN. Settings come from flags, then
/// environment variables, then the --config file, then the built-in defaults. SIGHUP re-reads the
/// config file; SIGTERM or SIGINT stops the daemon.
#[derive(Debug, Parser)]
#[command(name = "dpfd", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Client subcommands; without one, `dpfd` runs the daemon.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask a running dpfd for its status: forwards (age, last probe), free ports per protocol,
    /// limits, and counters of requests (refused by reason, malformed by class, from outside,
    /// rate limited), probes, recovery and sync. Answers root and dpfd's own user.
    Status {
        /// Command port of the dpfd to ask, as IP:PORT, IP or PORT; only the port matters: the
        /// status socket is local to this host and network namespace. [default: 65433]
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<String>,

        /// Print the answer as one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Options of the daemon itself.
#[derive(Debug, Clone, Default, Args)]
pub struct DaemonArgs {
    /// UDP address of the command port on the private side, where clients send DPF requests.
    /// Give IP or IP:PORT; the port defaults to 65433. Required, here or as `listen` in the
    /// config file.
    #[arg(long, value_name = "IP[:PORT]", env = "DPFD_LISTEN", value_parser = listen_on(DEFAULT_COMMAND_PORT))]
    pub listen: Option<SocketAddr>,

    /// Public addresses of this gateway that forwarded ports are opened on, comma-separated or
    /// repeated. Each must be concrete (not 0.0.0.0) and outside the private networks. Required,
    /// here or as `public_ip` in the config file.
    #[arg(
        long,
        value_name = "IP[,IP...]",
        env = "DPFD_PUBLIC_IP",
        value_delimiter = ','
    )]
    pub public_ip: Vec<IpAddr>,

    /// Public ports forwards are taken from, on every public IP. LO must not exceed HI. [default:
    /// 40000-49999]
    #[arg(long, value_name = "LO-HI", env = "DPFD_PORT_RANGE")]
    pub port_range: Option<PortRange>,

    /// The mirror file: the forwards as an append-only log, replayed at startup. Its directory
    /// must exist. Required, here or as `mirror` in the config file.
    #[arg(long, value_name = "PATH", env = "DPFD_MIRROR")]
    pub mirror: Option<PathBuf>,

    /// nftables table of dpfd's own, holding its rules and maps; nothing outside it is ever
    /// changed. 1 to 32 letters, digits or underscores. [default: dpf]
    #[arg(long, value_name = "NAME", env = "DPFD_NFT_TABLE", value_parser = parse_table_name)]
    pub nft_table: Option<String>,

    /// Networks requests are accepted from, comma-separated or repeated; requests from elsewhere
    /// are dropped and counted. [default: the subnet of the interface that holds the --listen
    /// address, with that interface's netmask; required if --listen is a wildcard address]
    #[arg(
        long,
        value_name = "CIDR[,CIDR...]",
        env = "DPFD_PRIVATE_NET",
        value_delimiter = ','
    )]
    pub private_net: Vec<Cidr>,

    /// Seconds between probes of the clients' management sockets; forwards whose socket is gone
    /// are deleted, then the mirror file is compacted and synced. [default: 30]
    #[arg(long, value_name = "N", env = "DPFD_PROBE_INTERVAL_S")]
    pub probe_interval_s: Option<u64>,

    /// Most forwards one private host may hold at once; further requests are refused. [default:
    /// 1024]
    #[arg(long, value_name = "N", env = "DPFD_PER_HOST_QUOTA")]
    pub per_host_quota: Option<u32>,

    /// Most requests per second accepted from one source IP; the excess is dropped and counted
    /// (`rate_limited` in `dpfd status`). A host may send a second's worth at once, so the
    /// default lets one host ask for its whole default quota in a burst. 0 turns the limit off.
    /// [default: 1000]
    #[arg(long, value_name = "N", env = "DPFD_RATE_LIMIT")]
    pub rate_limit: Option<u32>,

    /// UDP port for NAT-PMP (RFC 6886) and PCP (RFC 6887) on the --listen IP, so standard
    /// clients (natpmpc, libnatpmp, libp2p, ...) get forwards under the same rules as DPF
    /// requests: only to themselves, inside --port-range, within --per-host-quota and
    /// --rate-limit, kept in the mirror file. Their mappings expire at the end of their lease
    /// unless renewed. 0 turns both protocols off. [default: 5351]
    #[arg(long, value_name = "PORT", env = "DPFD_PCP_PORT")]
    pub pcp_port: Option<u16>,

    /// Shortest lease granted to a NAT-PMP or PCP mapping, in seconds; shorter requests are
    /// raised to it. [default: 120]
    #[arg(long, value_name = "N", env = "DPFD_PCP_MIN_LIFETIME_S")]
    pub pcp_min_lifetime_s: Option<u32>,

    /// Longest lease granted to a NAT-PMP or PCP mapping, in seconds (at most 86400); longer
    /// requests are cut to it. [default: 86400]
    #[arg(long, value_name = "N", env = "DPFD_PCP_MAX_LIFETIME_S")]
    pub pcp_max_lifetime_s: Option<u32>,

    /// With --secret-file, answer NAT-PMP and PCP anyway. They carry no authentication, so by
    /// default a dpfd with a secret refuses them all (NOT_AUTHORIZED); with this flag any host
    /// of the private networks can open forwards to itself without the secret.
    #[arg(long, env = "DPFD_ALLOW_UNAUTHENTICATED_PCP")]
    pub allow_unauthenticated_pcp: bool,

    /// --secret-file, --metrics-listen, --config, --log and --check-config, as the broker
    /// takes them (`daemon_kit::cli`).
    #[command(flatten)]
    pub common: Common<Dpfd>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn lists_take_commas_and_repeats() {
        let cli = Cli::try_parse_from([
            "dpfd",
            "--public-ip",
            "198.51.100.1,198.51.100.2",
            "--public-ip",
            "198.51.100.3",
            "--private-net",
            "192.0.2.0/24,10.0.0.0/8",
            "--listen",
            "192.0.2.1",
        ])
        .unwrap();
        assert_eq!(cli.daemon.public_ip.len(), 3);
        assert_eq!(cli.daemon.private_net.len(), 2);
        assert_eq!(cli.daemon.listen, Some("192.0.2.1:65433".parse().unwrap()));
    }

    #[test]
    fn bad_values_are_clap_errors() {
        for argv in [
            ["dpfd", "--port-range", "9-1"],
            ["dpfd", "--nft-table", "a-b"],
            ["dpfd", "--private-net", "192.0.2.1/24"],
            ["dpfd", "--public-ip", "nowhere"],
            ["dpfd", "--log", "loud"],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?} accepted");
        }
    }

    #[test]
    fn status_subcommand_parses() {
        let cli = Cli::try_parse_from(["dpfd", "status", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Status {
                listen: None,
                json: true
            })
        ));
    }
}
