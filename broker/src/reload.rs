//! SIGHUP support: what changed between the running configuration and the
//! re-read one, and which changes can take effect without a restart.
//!
//! Limits, the status networks, the log filter and the secret only govern
//! future work, so they change at once (the core updates the rate limiter
//! and the registrations' deadlines on the spot, `Engine::reconfigure`). The command address,
//! the public IP and the port range are baked into bound sockets and into
//! proxy addresses that clients have already advertised, so a change to
//! them is reported and ignored until the broker is restarted.
//!
//! The signal handling itself (`Daemon::on_signals`, `Daemon::reload`) is
//! here too, next to the rules it applies.

use daemon_kit::reload::{compare, compare_secret_file, reread, Change, Reloadable};
use nix::sys::signal::Signal;

use crate::config::{self, Config};
use crate::daemon::Daemon;
use crate::signals;

/// The configuration to run with after a reload: the new live settings on
/// top of the running restart-only ones.
pub fn apply(running: &Config, reread: &Config) -> Config {
    Config {
        limits: reread.limits.clone(),
        status_allow: reread.status_allow.clone(),
        secret_file: reread.secret_file.clone(),
        log_filter: reread.log_filter.clone(),
        ..running.clone()
    }
}

impl Daemon {
    /// Returns the stop signal if one arrived; a reload is done on the spot.
    pub(crate) fn on_signals(&mut self) -> Option<Signal> {
        let requests = self.signals.pending();
        signals::handle(requests, || self.reload())
    }

    /// SIGHUP: re-read the config file and apply what can change live.
    fn reload(&mut self) {
        let Some(loaded) = reread(
            self.args.config.as_deref(),
            self.engine.config(),
            self.engine.secret(),
            &self.log,
            || config::load(&self.args, &self.env),
        ) else {
            return;
        };
        let config = apply(self.engine.config(), &loaded.config);
        self.engine.reconfigure(config, loaded.secret);
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
        compare(&mut out, "public_ip", old.public_ip, new.public_ip, false);
        compare(
            &mut out,
            "port_range",
            old.port_range,
            new.port_range,
            false,
        );
        compare(
            &mut out,
            "metrics_listen",
            old.metrics_listen.map_or("off".into(), |a| a.to_string()),
            new.metrics_listen.map_or("off".into(), |a| a.to_string()),
            false,
        );
        compare(&mut out, "freebind", old.freebind, new.freebind, false);
        let (o, n) = (&old.limits, &new.limits);
        compare(
            &mut out,
            "heartbeat_timeout_s",
            o.heartbeat_timeout_s,
            n.heartbeat_timeout_s,
            true,
        );
        compare(
            &mut out,
            "max_registrations",
            o.max_registrations,
            n.max_registrations,
            true,
        );
        compare(&mut out, "max_relays", o.max_relays, n.max_relays, true);
        compare(&mut out, "rate_limit", o.rate_limit, n.rate_limit, true);
        compare(
            &mut out,
            "udp_rule_idle_s",
            o.udp_rule_idle_s,
            n.udp_rule_idle_s,
            true,
        );
        compare(
            &mut out,
            "udp_rules_per_registration",
            o.udp_rules_per_registration,
            n.udp_rules_per_registration,
            true,
        );
        let (op, np) = (&o.punch, &n.punch);
        compare(&mut out, "punch", op.enabled, np.enabled, true);
        compare(&mut out, "punch_budget_ms", op.budget_ms, np.budget_ms, true);
        compare(&mut out, "punch_retry_s", op.retry_s, np.retry_s, true);
        compare(&mut out, "punch_unpredictable", op.unpredictable, np.unpredictable, true);
        compare(
            &mut out,
            "status_allow",
            &old.status_allow,
            &new.status_allow,
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
        let args = crate::cli::Cli::try_parse_from(["gcb-broker"])
            .unwrap()
            .daemon;
        merge(&args, &parse_file(file).unwrap(), None, &Env::default()).unwrap()
    }

    #[test]
    fn no_change_no_entries() {
        let c = config("listen = \"192.0.2.1\"");
        assert!(c.changes(&c, false).is_empty());
    }

    #[test]
    fn live_and_restart_changes_are_told_apart() {
        let old = config("listen = \"192.0.2.1\"\nmax_relays = 10");
        let new = config("listen = \"192.0.2.1:7\"\nmax_relays = 20\nlog = \"debug\"");
        let changes = old.changes(&new, false);
        let keys: Vec<_> = changes.iter().map(|c| (c.key, c.live)).collect();
        assert_eq!(
            keys,
            [("listen", false), ("max_relays", true), ("log", true)]
        );
        assert_eq!(
            (changes[1].old.as_str(), changes[1].new.as_str()),
            ("10", "20")
        );

        let running = apply(&old, &new);
        assert_eq!(running.listen, old.listen);
        assert_eq!(running.limits.max_relays, 20);
        assert_eq!(running.log_filter, "debug");
    }

    #[test]
    fn secret_contents_change_is_reported_without_the_secret() {
        let c = config("listen = \"192.0.2.1\"\nsecret_file = \"/k\"");
        let changes = c.changes(&c, true);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].key, "secret_file");
        assert!(changes[0].new.contains("new contents"));
    }
}
