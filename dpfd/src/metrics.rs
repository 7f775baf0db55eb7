//! dpfd's Prometheus metrics (`--metrics-listen`): what a scrape shows, and
//! the time each change of the kernel's NAT map takes. The HTTP side and
//! the text format are `daemon_kit::metrics`; the server is one more source
//! of the event loop, under tokens of its own.
//!
//! Every counter of `dpfd status` is a counter here, named by its place in
//! the status document with `_` between the parts and the top `counters`
//! left out: `counters.requests.forward` is `dpfd_requests_forward_total`,
//! `changes.added` is `dpfd_changes_added_total`. A part that is no
//! Prometheus name (the standard port's refusal reasons, such as
//! `pcp.NO_RESOURCES`) is lowercased with `_` for every other character:
//! `counters.standard.refused.pcp.NO_RESOURCES` is
//! `dpfd_standard_refused_pcp_no_resources_total`; Prometheus rejects a
//! whole scrape for one bad name. The counters come from
//! the same function as the status document's (`Daemon::counter_tree`), so
//! the two cannot drift apart. The forwards, free ports and the last
//! recovery and sync are gauges.

use std::net::SocketAddr;
use std::time::Instant;

use daemon_kit::metrics::http::{self, Server};
use daemon_kit::metrics::{render, Snapshot, Timing};
use mio::{Registry, Token};
use proto::Proto;
use serde_json::Value;

use crate::daemon::Daemon;

/// Bucket bounds of one kernel change, in seconds: one `nft -f -` run,
/// a process start and a netlink transaction, so milliseconds.
const KERNEL_BUCKETS: [f64; 11] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The histogram of kernel changes, made before the engine that observes it.
pub fn kernel_timing() -> Timing {
    Timing::new(
        "kernel_change",
        "Time to apply one batch of changes to the kernel's NAT maps (one nft transaction, \
         the forwards of one event-loop turn)",
        &KERNEL_BUCKETS,
    )
}

/// The metrics server, if configured, and the timings it reports.
pub struct Metrics {
    server: Option<Server>,
    kernel: Timing,
}

impl Metrics {
    /// Binds `listen` if given. Errors are one line, for exit code 1.
    pub fn start(
        listen: Option<SocketAddr>,
        registry: &Registry,
        kernel: Timing,
    ) -> Result<Metrics, String> {
        let server = http::start(listen, registry)?;
        Ok(Metrics { server, kernel })
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.server.as_ref().and_then(Server::next_deadline)
    }
}

/// Whether an event is the metrics server's.
pub fn owns(token: Token) -> bool {
    http::owns(token)
}

impl Daemon {
    pub(crate) fn on_metrics_event(&mut self, token: Token) {
        // Out of `self` while it runs, so rendering can read the rest.
        let Some(mut server) = self.metrics.server.take() else {
            return;
        };
        server.on_event(self.poll.registry(), token, Instant::now(), &mut || {
            self.scrape()
        });
        self.metrics.server = Some(server);
    }

    pub(crate) fn expire_metrics(&mut self, now: Instant) {
        if let Some(server) = self.metrics.server.as_mut() {
            server.expire(self.poll.registry(), now);
        }
    }

    fn scrape(&self) -> String {
        let mut s = Snapshot::new();
        counters(&self.counter_tree(), &mut s);
        if let Some(server) = &self.metrics.server {
            server.report(&mut s);
        }
        let table = &self.engine.table;
        for proto in [Proto::Tcp, Proto::Udp] {
            let n = table.forwards(proto);
            s.gauge_with(
                "forwards",
                "Forwards in the mapping table, by protocol",
                vec![("proto", proto.to_string())],
                n as f64,
            );
        }
        for proto in [Proto::Tcp, Proto::Udp] {
            s.gauge_with(
                "free_ports",
                "Public ports free for new forwards, by protocol",
                vec![("proto", proto.to_string())],
                table.free_ports(proto) as f64,
            );
        }
        let r = &self.recovery;
        s.gauge(
            "recovery_forwards",
            "Forwards recovered from the mirror file at start",
            r.live as f64,
        );
        s.gauge(
            "recovery_seconds",
            "Time the recovery at start took",
            r.millis as f64 / 1e3,
        );
        if let Some((at, rep)) = &self.last_sync {
            s.gauge(
                "last_sync_age_seconds",
                "Seconds since the last sync after a probe round",
                at.elapsed().as_secs_f64(),
            );
            s.gauge(
                "last_sync_seconds",
                "Time the last sync took",
                rep.millis as f64 / 1e3,
            );
        }
        s.gauge(
            "per_host_quota",
            "The --per-host-quota limit",
            self.config.per_host_quota.into(),
        );
        s.gauge(
            "uptime_seconds",
            "Seconds since dpfd started",
            self.started.elapsed().as_secs_f64(),
        );
        render("dpfd", s, &[&self.metrics.kernel])
    }
}

/// Adds every number of the status counters as a counter, and every flag
/// as a 0/1 gauge, named by its path (see the module docs).
pub(crate) fn counters(tree: &Value, s: &mut Snapshot) {
    fn walk(v: &Value, path: &mut Vec<String>, s: &mut Snapshot) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, s);
                    path.pop();
                }
            }
            Value::Number(n) => {
                let name = name(path);
                s.counter(&name, help(&name), n.as_u64().unwrap_or(0));
            }
            Value::Bool(b) => {
                let name = name(path);
                s.gauge(&name, help(&name), if *b { 1.0 } else { 0.0 });
            }
            _ => {}
        }
    }
    walk(tree, &mut Vec::new(), s);
}

/// `counters.requests.forward` → `requests_forward`; other parts stay,
/// made into Prometheus names (see the module docs).
fn name(path: &[String]) -> String {
    let parts = match path.first().map(String::as_str) {
        Some("counters") => &path[1..],
        _ => path,
    };
    let part = |p: &String| -> String {
        p.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    parts.iter().map(part).collect::<Vec<_>>().join("_")
}

/// Help for each counter of the status document. A counter added there
/// needs a line here: the end-to-end metrics test checks every one.
pub(crate) fn help(name: &str) -> &'static str {
    if name.starts_with("refused_") {
        return "Requests refused, by the reason in the name";
    }
    if name.starts_with("standard_refused_") {
        return "NAT-PMP and PCP requests answered with an error, by the protocol and result code in the name";
    }
    match name {
        "received" => "Datagrams read from the command port",
        "foreign" => "Requests dropped: from outside the private networks",
        "rate_limited" => "Requests dropped by the per-source rate limit",
        "malformed" => "Datagrams dropped: not a well-formed DPF request",
        "malformed_by_not_dpf" => "Datagrams dropped: not the DPF protocol",
        "malformed_by_truncated" => "Datagrams dropped: truncated",
        "malformed_by_oversize" => "Datagrams dropped: a field over its bound",
        "malformed_by_invalid" => "Datagrams dropped: an invalid value",
        "malformed_by_reply" => "Datagrams dropped: a DPF reply sent to the command port",
        "duplicates" => "Retransmitted requests answered from the reply cache",
        "requests_forward" => "FORWARD requests served",
        "requests_delete" => "DELETE requests served",
        "requests_query" => "QUERY requests served",
        "auth_missing" => "Requests without the authentication a secret requires",
        "auth_bad_mac" => "Requests whose authentication code is wrong",
        "auth_stale" => "Authenticated requests outside the time window",
        "auth_replayed" => "Authenticated requests seen before (replays)",
        "receive_errors" => "Errors reading the command port",
        "send_errors" => "Errors sending replies",
        "probes_ok" => "Probes of client management sockets that connected",
        "probes_refused" => "Probes refused: the client's socket is gone",
        "probes_unreachable" => "Probes whose host was unreachable",
        "probes_timeout" => "Probes without an answer in time",
        "probes_error" => "Probes that failed otherwise",
        "probes_round_in_progress" => "1 while a probe round runs",
        "changes_added" => "Forwards added",
        "changes_reused" => "Requests answered with an existing forward",
        "changes_updated" => "Forwards changed in place",
        "changes_moved" => "Forwards moved to another public port",
        "changes_deleted_by_client" => "Forwards deleted at the client's request",
        "changes_deleted_by_probe" => "Forwards deleted because the probe found the client gone",
        "changes_leased" => "NAT-PMP and PCP mappings granted with a lease",
        "changes_renewed" => "NAT-PMP and PCP leases renewed",
        "changes_expired" => "NAT-PMP and PCP mappings removed because their lease ran out",
        "changes_commits" => "Batches written (mirror file, kernel)",
        "changes_kernel_batches" => "Transactions sent to the kernel's NAT maps",
        "changes_kernel_errors" => "Failed kernel transactions",
        "changes_mirror_errors" => "Failed mirror file writes",
        "changes_syncs" => "Syncs of the three representations",
        "standard_received" => "Datagrams read from the NAT-PMP and PCP port",
        "standard_foreign" => "NAT-PMP and PCP requests dropped: from outside the private networks",
        "standard_rate_limited" => "NAT-PMP and PCP requests dropped by the per-source rate limit",
        "standard_malformed" => "Datagrams on the NAT-PMP and PCP port dropped without an answer",
        "standard_malformed_by_truncated" => "NAT-PMP and PCP datagrams dropped: truncated",
        "standard_malformed_by_oversize" => {
            "NAT-PMP and PCP datagrams dropped: a field over its bound"
        }
        "standard_malformed_by_invalid" => "NAT-PMP and PCP datagrams dropped: an invalid value",
        "standard_requests_pcp_map" => "PCP MAP requests served",
        "standard_requests_pcp_announce" => "PCP ANNOUNCE requests served",
        "standard_requests_natpmp_map" => "NAT-PMP mapping requests served",
        "standard_requests_natpmp_address" => "NAT-PMP public address requests served",
        "standard_receive_errors" => "Errors reading the NAT-PMP and PCP port",
        "standard_send_errors" => "Errors sending NAT-PMP and PCP answers",
        "standard_announcements" => {
            "Datagrams announcing a restart sent to 224.0.0.1 (PCP and NAT-PMP)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_counters_become_named_counters() {
        let tree = json!({
            "counters": { "received": 5, "requests": { "forward": 2 }, "refused": { "quota": 1 } },
            "probes": { "ok": 3, "round_in_progress": true },
        });
        let mut s = Snapshot::new();
        counters(&tree, &mut s);
        let text = render("dpfd", s, &[]);
        for line in [
            "dpfd_received_total 5",
            "dpfd_requests_forward_total 2",
            "dpfd_refused_quota_total 1",
            "dpfd_probes_ok_total 3",
            "dpfd_probes_round_in_progress 1.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert!(!text.contains("Help.\n") && text.contains("# HELP dpfd_received_total Datagrams"));
    }

    /// The standard port's counters, whose refusal reasons are no
    /// Prometheus names as they stand (`pcp.NO_RESOURCES`): one bad name
    /// makes Prometheus reject the whole scrape.
    #[test]
    fn standard_counters_have_prometheus_names_and_help() {
        let mut c = crate::standard::Counters::default();
        c.refuse("pcp.NO_RESOURCES".into());
        let tree = json!({
            "counters": { "standard": c.json() },
            "changes": { "leased": 1, "renewed": 2, "expired": 3 },
        });
        let mut s = Snapshot::new();
        counters(&tree, &mut s);
        let names: Vec<String> = s.names().map(str::to_string).collect();
        assert!(names.len() > 20, "{names:?}");
        for n in &names {
            let ok = n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            assert!(ok, "{n} is no Prometheus name");
            assert!(!help(n).is_empty(), "{n} has no help");
        }
        let text = render("dpfd", s, &[]);
        assert!(
            text.lines()
                .any(|l| l == "dpfd_standard_refused_pcp_no_resources_total 1"),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l == "dpfd_changes_expired_total 3"),
            "{text}"
        );
    }
}
