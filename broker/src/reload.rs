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

use daemon_kit::reload::{reread, Reloadable};
use daemon_kit::settings::Shared;
use nix::sys::signal::Signal;

use crate::config::{self, Config};
use crate::daemon::Daemon;
use crate::signals;

/// The configuration to run with after a reload: the new live settings on
/// top of the running restart-only ones.
pub fn apply(running: &Config, reread: &Config) -> Config {
    Config {
        limits: reread.limits.clone(),
        shared: running.shared.reloaded(&reread.shared),
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
            self.args.common.config.as_deref(),
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
    const RESTART: &'static [&'static str] = &[
        "listen",
        "public_ip",
        "port_range",
        "metrics_listen",
        "freebind",
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
    use daemon_kit::settings::shared_of;

    fn config(file: &str) -> Config {
        let args = crate::cli::Cli::try_parse_from(["gcb-broker"])
            .unwrap()
            .daemon;
        let shared = shared_of(&args.common, file, None, None).unwrap();
        merge(&args, &parse_file(file).unwrap(), shared, &Env::default()).unwrap()
    }

    /// Every restart-only key is reported as such and keeps its running
    /// value; everything else applies, in the file's terms.
    #[test]
    fn restart_only_settings_wait_and_the_rest_apply() {
        let old = config("listen = \"192.0.2.1\"");
        assert!(changes(&old, &old, false).is_empty());
        let new = config(
            "listen = \"192.0.2.1:7\"\nport_range = \"21000-21999\"\nfreebind = true\n\
             metrics_listen = \"127.0.0.1:9465\"\nmax_relays = 20\n\
             status_allow = \"10.0.0.0/8\"\nlog = \"debug\"",
        );
        let got: Vec<(&str, bool)> = changes(&old, &new, false)
            .iter()
            .map(|c| (c.key, c.live))
            .collect();
        let want = [
            ("listen", false),
            ("port_range", false),
            ("metrics_listen", false),
            ("freebind", false),
            ("max_relays", true),
            ("status_allow", true),
            ("log", true),
        ];
        assert_eq!(got, want);
        let running = apply(&old, &new);
        assert_eq!(
            (running.listen, running.port_range),
            (old.listen, old.port_range)
        );
        assert_eq!(
            (running.shared.metrics_listen, running.freebind),
            (None, false)
        );
        assert_eq!(running.limits, new.limits);
        assert_eq!(running.shared.log_filter, "debug");
        let secret = config("listen = \"192.0.2.1\"\nsecret_file = \"/k\"");
        let rekeyed = changes(&secret, &secret, true);
        assert_eq!((rekeyed[0].key, rekeyed[0].live), ("secret_file", true));
    }
}
