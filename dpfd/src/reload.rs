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

use daemon_kit::reload::{compare, compare_secret_file, reread, Change, Reloadable};

use crate::config::{self, list, Config};
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
        secret_file: reread.secret_file.clone(),
        pcp_min_lifetime_s: reread.pcp_min_lifetime_s,
        pcp_max_lifetime_s: reread.pcp_max_lifetime_s,
        allow_unauthenticated_pcp: reread.allow_unauthenticated_pcp,
        log_filter: reread.log_filter.clone(),
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
            self.args.config.as_deref(),
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
    fn log_filter(&self) -> &str {
        &self.log_filter
    }

    /// Lists the differences, restart-only settings first. The secret
    /// itself never appears in a `Change`.
    fn changes(&self, new: &Config, secret_changed: bool) -> Vec<Change> {
        let old = self;
        let mut out = Vec::new();
        compare(&mut out, "listen", old.listen, new.listen, false);
        compare(&mut out, "pcp_port", old.pcp_port, new.pcp_port, false);
        compare(
            &mut out,
            "public_ip",
            list(&old.public_ips),
            list(&new.public_ips),
            false,
        );
        compare(
            &mut out,
            "port_range",
            old.port_range,
            new.port_range,
            false,
        );
        compare(
            &mut out,
            "mirror",
            old.mirror.display().to_string(),
            new.mirror.display().to_string(),
            false,
        );
        compare(&mut out, "nft_table", &old.nft_table, &new.nft_table, false);
        compare(
            &mut out,
            "metrics_listen",
            old.metrics_listen.map_or("off".into(), |a| a.to_string()),
            new.metrics_listen.map_or("off".into(), |a| a.to_string()),
            false,
        );
        compare(
            &mut out,
            "private_net",
            list(&old.private_nets),
            list(&new.private_nets),
            true,
        );
        compare(
            &mut out,
            "probe_interval_s",
            old.probe_interval_s,
            new.probe_interval_s,
            true,
        );
        compare(
            &mut out,
            "per_host_quota",
            old.per_host_quota,
            new.per_host_quota,
            true,
        );
        compare(&mut out, "rate_limit", old.rate_limit, new.rate_limit, true);
        compare(
            &mut out,
            "pcp_lifetime_s",
            format!("{}-{}", old.pcp_min_lifetime_s, old.pcp_max_lifetime_s),
            format!("{}-{}", new.pcp_min_lifetime_s, new.pcp_max_lifetime_s),
            true,
        );
        compare(
            &mut out,
            "allow_unauthenticated_pcp",
            old.allow_unauthenticated_pcp,
            new.allow_unauthenticated_pcp,
            true,
        );
        compare_secret_file(
            &mut out,
            old.secret_file.as_deref(),
            new.secret_file.as_deref(),
            secret_changed,
        );
        compare(&mut out, "log", &old.log_filter, &new.log_filter, true);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{merge, parse_file, Env};
    use clap::Parser;

    fn config(file: &str) -> Config {
        let args = crate::cli::Cli::try_parse_from(["dpfd"]).unwrap().daemon;
        let base = "listen = \"0.0.0.0\"\npublic_ip = \"198.51.100.1\"\nmirror = \"/m\"\n";
        merge(
            &args,
            &parse_file(&format!("{base}{file}")).unwrap(),
            None,
            &Env::default(),
        )
        .unwrap()
    }

    #[test]
    fn no_change_no_entries() {
        let c = config("private_net = \"192.0.2.0/24\"");
        assert!(c.changes(&c, false).is_empty());
    }

    #[test]
    fn live_and_restart_changes_are_told_apart() {
        let old = config("private_net = \"192.0.2.0/24\"\nprobe_interval_s = 30");
        let new = config(
            "private_net = \"192.0.2.0/24,10.0.0.0/8\"\nprobe_interval_s = 5\nnft_table = \"x\"\nrate_limit = 7",
        );
        let changes = old.changes(&new, false);
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
        let changes = c.changes(&c, true);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].new.contains("new contents"));
    }
}
