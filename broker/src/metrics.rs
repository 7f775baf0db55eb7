//! The broker's Prometheus metrics (`--metrics-listen`): what a scrape
//! shows, and the timing of brokered-connect decisions. The HTTP side and
//! the text format are `daemon_kit::metrics`; the server is one more
//! source of the event loop, under tokens of its own.
//!
//! Names are `gcb_broker_` and the names `gcb-broker query` uses: each of
//! its counters is a counter here (`gcb_broker_received_total`, ...), its
//! live counts are gauges, and the limits are gauges too so a dashboard
//! can show how close the broker is to them.

use std::time::Instant;

use daemon_kit::metrics::http::Server;
use daemon_kit::metrics::{render, Snapshot};
use mio::Token;

use crate::daemon::Daemon;
use crate::engine::Ports;

impl Daemon {
    /// An event of the metrics server's (`daemon_kit::metrics::http::owns`).
    /// The server is out of `self` while it runs, so a scrape can read the
    /// rest.
    pub(crate) fn on_metrics_event(&mut self, token: Token) {
        if let Some(mut server) = self.metrics.take() {
            let now = Instant::now();
            server.on_event(self.io.poll.registry(), token, now, &mut || self.scrape());
            self.metrics = Some(server);
        }
    }

    /// Closes `/metrics` connections past their time.
    pub(crate) fn expire_metrics(&mut self, now: Instant) {
        if let Some(server) = self.metrics.as_mut() {
            server.expire(self.io.poll.registry(), now);
        }
    }

    /// When the metrics server next needs a turn.
    pub(crate) fn metrics_deadline(&self) -> Option<Instant> {
        self.metrics.as_ref().and_then(Server::next_deadline)
    }

    /// One scrape's text.
    pub(crate) fn scrape(&self) -> String {
        render(
            "gcb_broker",
            self.snapshot(),
            &[self.engine.decision_timing()],
        )
    }

    /// Everything a scrape shows but the timings.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::new();
        for (name, value) in self.engine.counter_fields() {
            s.counter(name, help(name), value);
        }
        let closed = self.engine.counters().bytes_closed;
        let running = self.io.relays.bytes_running();
        for (direction, n) in [
            ("to_listener", closed[0] + running[0]),
            ("to_connector", closed[1] + running[1]),
        ] {
            s.counter_with(
                "relayed_bytes",
                "Bytes relayed over TCP, running and closed relays, by direction",
                vec![("direction", direction.into())],
                n,
            );
        }
        if let Some(server) = &self.metrics {
            server.report(&mut s);
        }
        let g = self.engine.gauges(Instant::now());
        for (name, help, v) in [
            (
                "registrations",
                "Registered sockets (TCP and UDP)",
                g.registrations,
            ),
            ("relays_active", "TCP connections being relayed", g.relays),
            (
                "pending_pairings",
                "Reversals and relays waiting for their connections",
                g.pending_pairings,
            ),
            (
                "commands_in_flight",
                "Commands to listeners not yet acknowledged",
                g.commands_in_flight,
            ),
            (
                "udp_rules_active",
                "UDP relay rules (peers allowed)",
                g.udp_rules,
            ),
            ("udp_channels_active", "UDP channels open", g.udp_channels),
            (
                "punches_active",
                "TCP hole punches whose sides are both at the rendezvous",
                g.punches,
            ),
            (
                "punch_blocked_pairs",
                "Pairs of realms relayed at once after a failed punch (the outcome cache), \
                 TCP and UDP together",
                g.punch_blocked_pairs,
            ),
        ] {
            s.gauge(name, help, v as f64);
        }
        for (proto, n) in [("tcp", g.punch_blocked[0]), ("udp", g.punch_blocked[1])] {
            s.gauge_with(
                "punch_blocked_pairs_by_proto",
                "Pairs of realms whose connects of this protocol are relayed at once after a \
                 failed punch",
                vec![("proto", proto.into())],
                n as f64,
            );
        }
        let per_pool = |s: &mut Snapshot, what: &str, help, n: fn(&Ports) -> usize| {
            for pool in &g.ports {
                let labels = vec![("proto", pool.proto.to_string())];
                s.gauge_with(what, help, labels, n(pool) as f64);
            }
        };
        per_pool(
            &mut s,
            "proxy_ports_in_use",
            "Proxy ports bound, by protocol",
            |p| p.in_use,
        );
        per_pool(
            &mut s,
            "proxy_ports_free",
            "Proxy ports free, by protocol",
            |p| p.free,
        );
        per_pool(
            &mut s,
            "proxy_ports_quarantined",
            "Proxy ports held for their last owner, by protocol",
            |p| p.quarantined,
        );
        let l = self.engine.limits();
        s.gauge(
            "max_registrations",
            "The --max-registrations limit",
            l.max_registrations.into(),
        );
        s.gauge("max_relays", "The --max-relays limit", l.max_relays.into());
        s.gauge(
            "uptime_seconds",
            "Seconds since the broker started",
            self.engine.uptime(Instant::now()).as_secs_f64(),
        );
        s
    }
}

/// The help text of each counter `Counters::fields` and the authenticator
/// name. A counter added there needs a line here: a unit test checks.
pub(crate) fn help(name: &str) -> &'static str {
    match name {
        "received" => "Datagrams read from the command port",
        "malformed" => "Command datagrams dropped as not the protocol or not decodable",
        "malformed_not_gcb" => "Command datagrams dropped: not the GCB protocol",
        "malformed_truncated" => "Command datagrams dropped: truncated",
        "malformed_oversize" => "Command datagrams dropped: a field over its bound",
        "malformed_invalid" => "Command datagrams dropped: an invalid value",
        "version_mismatch" => "Requests of a protocol version this broker does not speak",
        "duplicates" => "Retransmitted requests answered from the reply cache",
        "rate_limited" => "Command datagrams dropped by the per-source rate limit",
        "unsupported" => "Requests this broker does not serve",
        "stray_replies" => "Replies that answer no command of this broker's",
        "receive_errors" => "Errors reading the command port",
        "send_errors" => "Errors sending on the command port",
        "registered" => "New registrations",
        "unregistered" => "Registrations ended by their client",
        "expired" => "Registrations dropped for want of heartbeats",
        "refused" => "Registrations and relays refused at a limit",
        "connects" => "Connect requests",
        "decided_direct" => "Connects decided: direct",
        "decided_same_realm" => "Connects decided: same realm",
        "decided_reversal" => "Connects decided: reversal",
        "decided_relay" => "Connects decided: relay",
        "decided_not_registered" => "Connects to an address not registered here",
        "regular_accepted" => "Connections from non-GCB clients accepted on proxy sockets",
        "bad_hellos" => "Rendezvous connections without a valid hello in time",
        "bad_hellos_garbage" => "Rendezvous connections that sent bytes that are no hello",
        "bad_hellos_closed" => "Rendezvous connections closed before a whole hello",
        "bad_hellos_silent" => "Rendezvous connections silent past the hello timeout",
        "bad_hellos_overflow" => "Rendezvous connections closed: too many waiting",
        "rendezvous_rejected" => "Rendezvous connections answered Rejected",
        "pairings_expired" => "Reversals and relays whose other half never came",
        "commands_failed" => "Commands to listeners refused or unanswered",
        "commands_failed_timeout" => "Commands no holder answered (the connector is told Timeout)",
        "commands_failed_not_registered" => "Commands whose holders said they no longer hold the socket",
        "commands_failed_full" => "Commands a listener refused because its accept queue was full",
        "commands_failed_other" => "Commands refused for another reason",
        "commands_resent" => "Commands sent once more to another holder after one failed",
        "holders_joined" => "Processes that joined an existing registration as holders",
        "holders_replaced" => "Holders replaced by a joining one (the same process after a NAT remap, or a silent one)",
        "holders_left" => "Holders that unregistered while others still held the registration",
        "holders_expired" => "Holders dropped at their heartbeat deadline",
        "holders_disowned" => "Holders that answered a command saying they no longer hold the socket",
        "holders_gone" => "Holders whose management socket was gone (ICMP port unreachable)",
        "icmp_port_unreachable" => "ICMP port-unreachable errors acted on (a client's socket is gone)",
        "icmp_untrusted" => "ICMP errors not believed (no command in flight to that address)",
        "icmp_other" => "ICMP errors of other kinds on the command socket",
        "relays_opened" => "TCP relays opened",
        "punch_attempts" => "TCP hole punches decided between private realms",
        "punch_succeeded" => "TCP hole punches that ended with a direct connection",
        "punch_fallbacks_timeout" => "Punches relayed: a side's budget ran out with no connection",
        "punch_fallbacks_check_failed" => "Punches relayed: connections came but failed the token check",
        "punch_fallbacks_local_error" => "Punches relayed: a side could not use its port",
        "punch_fallbacks_no_report" => "Punches relayed: a report missing at the broker's deadline",
        "punch_skipped_unpredictable_mapping" => {
            "Connects not punched: a NAT did not keep the side's port"
        }
        "punch_skipped_cached_failure" => {
            "Connects not punched: the pair of realms failed to punch recently"
        }
        "punch_skipped_not_capable" => "Connects not punched: a side's shim does not offer it",
        "punch_skipped_disabled" => "Connects not punched: --no-punch",
        "punch_vanished" => "Punches a side left before the verdict or never came to (no connection)",
        "punch_standby_attempts" => "TCP hole punches decided for a shim's standby connection (also in punch_attempts)",
        "punch_standby_refused" => "Standby connects refused: the pair would not have been punched",
        "punch_early" => "TCP hole punches decided for a connector that opened its rendezvous with its Connect (also in punch_attempts)",
        "punch_early_joined" => "Early TCP hole punches whose connector's hello came before the decision, naming its Connect",
        "udp_punch_attempts" => "UDP hole punches decided between private realms (PunchHole sent)",
        "udp_punch_direct" => "UDP hole punches whose connector reported its direct path open",
        "udp_relayed_to_client" => "UDP datagrams relayed from peers to clients",
        "udp_relayed_to_peer" => "UDP datagrams relayed from clients to peers",
        "udp_refused" => "Client datagrams naming a peer without a live rule",
        "udp_rule_cap" => "New UDP peers refused at a registration's rule cap",
        "udp_oversize" => "Peer datagrams too large to relay behind the header",
        "udp_malformed" => "Client datagrams without a valid relay header",
        "udp_no_path" => "Peer datagrams dropped: the client has sent no Dummy yet",
        "udp_dummies" => "Valid data-path Dummies taken (not answered)",
        "udp_dummies_dropped" => "Dummy or DummyAck datagrams dropped",
        "udp_rules_created" => "UDP relay rules created",
        "udp_rules_expired" => "UDP relay rules expired",
        "udp_send_errors" => "Errors sending UDP relay datagrams",
        "udp_channels_opened" => "UDP channels opened",
        "udp_channels_closed" => "UDP channels closed",
        "udp_channels_refused" => "UDP channel requests refused",
        "udp_channel_strangers" => "Datagrams at a channel socket from anyone but its client",
        "auth_missing" => "Datagrams without the authentication a secret requires",
        "auth_bad_mac" => "Datagrams whose authentication code is wrong",
        "auth_stale" => "Authenticated datagrams outside the time window",
        "auth_replayed" => "Authenticated datagrams seen before (replays)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counters;

    #[test]
    fn every_counter_has_help() {
        let auth = proto::auth::Refusals::default();
        let names: Vec<&str> = Counters::default()
            .fields()
            .into_iter()
            .map(|(n, _)| n)
            .chain(auth.fields().into_iter().map(|(n, _)| n))
            .collect();
        let missing: Vec<&&str> = names.iter().filter(|n| help(n).is_empty()).collect();
        assert!(
            missing.is_empty(),
            "counters without help text in broker/src/metrics.rs: {missing:?}"
        );
    }
}
