//! SIGHUP support: what changed between the running configuration and the
//! re-read one, and which changes can take effect without a restart.
//!
//! The accepted networks, the probe interval, the quota, the rate limit,
//! the secret, the NAT-PMP/PCP lease bounds and whether they are answered
//! without authentication, and the log filter only govern future requests
//! and probes, so they change at once. The command address and the
//! NAT-PMP/PCP port are bound sockets; the public IPs, the port
//! range, the mirror file and the nftables table name the forwards that
//! already exist, so a change to them is reported and ignored until dpfd is
//! restarted (when the mirror file is replayed against the new settings).

use daemon_kit::reload::{reread, Reloadable};
use daemon_kit::settings::Shared;

use crate::config::{self, Config};
use crate::daemon::Daemon;
use crate::net;

/// The configuration to run with after a reload: the new live settings on
/// top of the running restart-only ones.
pub fn apply(running: &Config, reread: &Config) -> Config {
    Config {
        private_nets: reread.private_nets.clone(),
        private_nets_derived: reread.private_nets_derived,
        probe_interval_s: reread.probe_interval_s,
        per_host_quota: reread.per_host_quota,
        rate_limit: reread.rate_limit,
        pcp_min_lifetime_s: reread.pcp_min_lifetime_s,
        pcp_max_lifetime_s: reread.pcp_max_lifetime_s,
        allow_unauthenticated_pcp: reread.allow_unauthenticated_pcp,
        shared: running.shared.reloaded(&reread.shared),
        ..running.clone()
    }
}

impl Daemon {
    /// SIGHUP: re-read the config file and apply what can change live.
    pub(crate) fn reload(&mut self) {
        // Interfaces may have changed since startup; a derived private
        // network follows them.
        self.env.addresses = net::local_addresses();
        let Some(loaded) = reread(
            self.args.common.config.as_deref(),
            &self.config,
            self.secret.as_ref(),
            &self.log,
            || config::load(&self.args, &self.env),
        ) else {
            return;
        };
        let interval_changed = loaded.config.probe_interval_s != self.config.probe_interval_s;
        self.config = apply(&self.config, &loaded.config);
        self.apply_secret(loaded.secret.as_ref());
        self.secret = loaded.secret;
        self.engine.table.set_quota(self.config.per_host_quota);
        self.gate.set_rate(self.config.rate_limit);
        if interval_changed && self.round.is_none() {
            self.schedule_probe();
        }
    }
}

impl Reloadable for Config {
    const RESTART: &'static [&'static str] = &[
        "listen",
        "public_ip",
        "port_range",
        "mirror",
        "nft_table",
        "pcp_port",
        "metrics_listen",
    ];

    fn shared(&self) -> &Shared {
        &self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{merge, parse_file, Env};
    use clap::Parser;
    use daemon_kit::reload::changes;

    fn config(file: &str) -> Config {
        let args = crate::cli::Cli::try_parse_from(["dpfd"]).unwrap().daemon;
        let base = "listen = \"0.0.0.0\"\npublic_ip = \"198.51.100.1\"\nmirror = \"/m\"\n";
        let text = format!("{base}{file}");
        let shared = daemon_kit::settings::shared_of(&args.common, &text, None, None).unwrap();
        let file = parse_file(&text).unwrap();
        merge(&args, &file, shared, None, &Env::default()).unwrap()
    }

    #[test]
    fn no_change_no_entries() {
        let c = config("private_net = \"192.0.2.0/24\"");
        assert!(changes(&c, &c, false).is_empty());
    }

    #[test]
    fn live_and_restart_changes_are_told_apart() {
        let old = config("private_net = \"192.0.2.0/24\"\nprobe_interval_s = 30");
        let new = config(
            "private_net = \"192.0.2.0/24,10.0.0.0/8\"\nprobe_interval_s = 5\nnft_table = \"x\"\nrate_limit = 7",
        );
        let changes = changes(&old, &new, false);
        let keys: Vec<_> = changes.iter().map(|c| (c.key, c.live)).collect();
        assert_eq!(
            keys,
            [
                ("nft_table", false),
                ("private_net", true),
                ("probe_interval_s", true),
                ("rate_limit", true)
            ]
        );
        assert_eq!(changes[1].new, "192.0.2.0/24,10.0.0.0/8");

        let running = apply(&old, &new);
        assert_eq!(running.nft_table, "dpf");
        assert_eq!(running.probe_interval_s, 5);
        assert_eq!(running.private_nets.len(), 2);
        assert_eq!(running.rate_limit, 7);
    }

    #[test]
    fn secret_contents_change_is_reported_without_the_secret() {
        let c = config("private_net = \"192.0.2.0/24\"\nsecret_file = \"/k\"");
        let changes = changes(&c, &c, true);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].new.contains("new contents"));
    }
}
