//! The goals of issues 6, 12 and 13, checked against this run's figures: each is met,
//! missed, or n/a (with the reason the figure is missing). Goals, not
//! assertions: a missed target is reported, never an error.

use crate::paper::{Config, PATTERNS, PROTOS};
use crate::results::Results;

pub struct Verdict {
    pub key: &'static str,
    pub part: &'static str,
    pub goal: &'static str,
    /// What was measured, for the summary line.
    pub value: String,
    /// "met", "missed" or "n/a".
    pub verdict: &'static str,
}

/// Worst (largest, or smallest if `low`) of the figures at `paths`, judged
/// against `ok`. All must be present for "met"; one bad one is "missed".
fn judge(
    res: &Results,
    paths: &[String],
    low: bool,
    ok: impl Fn(f64) -> bool,
    unit: &str,
) -> (String, &'static str) {
    let mut worst: Option<(f64, &str)> = None;
    let mut missing: Vec<&String> = Vec::new();
    for p in paths {
        match res.get(p) {
            Some(v) => {
                let worse = match worst {
                    None => true,
                    Some((w, _)) => {
                        if low {
                            v < w
                        } else {
                            v > w
                        }
                    }
                };
                if worse {
                    worst = Some((v, p));
                }
            }
            None => missing.push(p),
        }
    }
    let reason = |p: &String| {
        // A ratio is missing because its cell is: ask for the cell's reason.
        let vs = format!("table_ratios_vs_{}.", crate::reference::COMMIT);
        let cell = match p
            .strip_prefix("table_ratios.")
            .or_else(|| p.strip_prefix(vs.as_str()))
        {
            Some(rest) => format!("tables.{}", rest.rsplit_once('.').map_or(rest, |(c, _)| c)),
            None => p.clone(),
        };
        res.why_missing(&cell).unwrap_or("not measured").to_string()
    };
    match worst {
        None => {
            let why = missing
                .first()
                .map(|p| reason(p))
                .unwrap_or_else(|| "not measured".into());
            (format!("n/a ({})", short(&why)), "n/a")
        }
        Some((v, at)) => {
            // Four decimals on small figures, so 1.1003× never reads "1.100× missed".
            let shown = if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.4}")
            };
            let mut value = format!(
                "{} {shown}{unit} at {}",
                if low { "lowest" } else { "highest" },
                at
            );
            if !ok(v) {
                return (value, "missed");
            }
            if !missing.is_empty() {
                value.push_str(&format!(
                    "; {} of {} not measured: {}",
                    missing.len(),
                    paths.len(),
                    short(&reason(missing[0]))
                ));
                return (value, "n/a");
            }
            (value, "met")
        }
    }
}

fn short(s: &str) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() > 110 {
        format!("{}…", first.chars().take(110).collect::<String>())
    } else {
        first.to_string()
    }
}

fn ratio_paths(
    configs: &[Config],
    protos: &[&str],
    metric: &str,
    patterns_filter: Option<&str>,
) -> Vec<String> {
    let mut v = Vec::new();
    for p in PATTERNS {
        if patterns_filter.is_some_and(|f| f != p.key()) {
            continue;
        }
        for c in p.configs().iter().filter(|c| configs.contains(c)) {
            for proto in protos {
                v.push(format!(
                    "table_ratios.{}.{}.{proto}.{metric}",
                    p.key(),
                    c.key()
                ));
            }
        }
    }
    v
}

/// Judge every target of the parts that ran, and store the verdicts in `res`.
pub fn evaluate(res: &mut Results, parts: &[String]) -> Vec<Verdict> {
    let gcb: Vec<Config> = Config::ALL.into_iter().filter(|c| c.is_gcb()).collect();
    let mut out = Vec::new();
    let mut push = |key, part, goal, (value, verdict): (String, &'static str)| {
        out.push(Verdict {
            key,
            part,
            goal,
            value,
            verdict,
        })
    };
    let le = |lim: f64| move |v: f64| v <= lim;
    let ge = |lim: f64| move |v: f64| v >= lim;

    push(
        "dpf_tcp_conn",
        "tables",
        "DPF TCP conn ≤ 1.10× regular",
        judge(
            res,
            &ratio_paths(&[Config::Dpf], &["tcp"], "conn", None),
            false,
            le(1.10),
            "×",
        ),
    );
    push(
        "gcb_pub_to_priv_tcp_conn",
        "tables",
        "GCB TCP conn public→private with GCB public peer ≤ 3× regular",
        judge(
            res,
            &ratio_paths(
                &[Config::GcbGcbPublic],
                &["tcp"],
                "conn",
                Some("public_to_private"),
            ),
            false,
            le(3.0),
            "×",
        ),
    );
    push(
        "gcb_priv_to_priv_tcp_conn",
        "tables",
        "GCB TCP conn private→private ≤ 4× regular",
        judge(
            res,
            &ratio_paths(&[Config::Gcb], &["tcp"], "conn", Some("private_to_private")),
            false,
            le(4.0),
            "×",
        ),
    );
    push(
        "gcb_data",
        "tables",
        "data time, any GCB path (TCP and UDP) ≤ 1.2× regular",
        judge(
            res,
            &ratio_paths(&gcb, &PROTOS, "data", None),
            false,
            le(1.2),
            "×",
        ),
    );

    push(
        "gcb_conn_vs_f261631",
        "tables",
        "GCB conn ratios no worse than the full run at f261631 (issue 12; this/that ≤ 1)",
        judge(
            res,
            &crate::reference::quotient_paths(),
            false,
            le(1.0),
            "×",
        ),
    );
    let nb: Vec<String> = ["negcache", "direct", "reversal", "relay"]
        .iter()
        .map(|k| format!("nbconnect.{k}.call_us.p99"))
        .collect();
    push(
        "nbconnect_call",
        "nbconnect",
        "non-blocking connect under the shim returns within 1 ms (issue 12; p99 of the call, each path)",
        judge(res, &nb, false, le(1000.0), " µs"),
    );

    let relay = judge(
        res,
        &["relay.gcb_relay_ratio_to_direct".into()],
        true,
        ge(0.8),
        "×",
    );
    let cpu = judge(
        res,
        &["relay.gcb_cpu_ratio_to_socat".into()],
        false,
        |v| v < 1.0,
        "×",
    );
    push(
        "relay_throughput",
        "relay",
        "GCB relay ≥ 0.8× direct throughput",
        relay,
    );
    push(
        "relay_cpu",
        "relay",
        "GCB relay CPU/GB below socat's (ratio < 1)",
        cpu,
    );

    let shim: Vec<String> = ["tcp_loopback", "unix_socketpair"]
        .iter()
        .flat_map(|t| ["preload", "gcb_env"].map(|m| format!("shim_overhead.{t}.{m}_ratio")))
        .collect();
    push(
        "shim_overhead",
        "shim",
        "shim fast-path overhead ≤ 1.02×",
        judge(res, &shim, false, le(1.02), "×"),
    );

    let regs = res
        .get("broker.registrations.r10k.registered")
        .unwrap_or(0.0);
    let mut rss = judge(
        res,
        &["broker.registrations.r10k.rss_mb".into()],
        false,
        le(50.0),
        " MB",
    );
    if rss.1 == "met" && regs < 10_000.0 {
        rss = (format!("{}; only {regs} registered", rss.0), "missed");
    }
    push(
        "broker_rss_10k",
        "broker",
        "broker RSS with 10k registrations ≤ 50 MB",
        rss,
    );
    push(
        "broker_relays_1000",
        "broker",
        "1,000 concurrent relays, all bytes verified",
        judge(
            res,
            &["broker.relays.c1000.verified".into()],
            true,
            ge(1000.0),
            "",
        ),
    );
    push(
        "broker_connects",
        "broker",
        "≥ 2,000 brokered connects/s (reversal and relay)",
        judge(
            res,
            &[
                "broker.connects_per_s.reversal".into(),
                "broker.connects_per_s.relay".into(),
            ],
            true,
            ge(2000.0),
            "/s",
        ),
    );
    push(
        "dpfd_changes",
        "dpfd",
        "dpfd ≥ 5,000 changes/s (adds and deletes)",
        judge(
            res,
            &["dpfd.add_per_s".into(), "dpfd.delete_per_s".into()],
            true,
            ge(5000.0),
            "/s",
        ),
    );
    let mut rec = judge(
        res,
        &["dpfd.recovery_kernel_s".into()],
        false,
        |v| v < 1.0,
        " s",
    );
    let back = res.get("dpfd.recovered_forwards").unwrap_or(0.0);
    if rec.1 == "met" && back < 10_000.0 {
        rec = (
            format!("{}; only {back} forwards recovered", rec.0),
            "missed",
        );
    }
    push(
        "dpfd_recovery",
        "dpfd",
        "10,000 forwards recovered < 1 s",
        rec,
    );

    // The runs that were punched: a fallback's 500 ms budget would swamp the mean.
    let punched = |m: &str| vec![format!("punch.table3.gb_drop.gcb_punch.punched.{m}_ratio")];
    push(
        "punch_table3_conn",
        "punch",
        "Table 3 TCP, the punched runs (GB drop): conn ≤ 3× regular (issue 13)",
        judge(res, &punched("conn"), false, le(3.0), "×"),
    );
    push(
        "punch_table3_data",
        "punch",
        "Table 3 TCP, the punched runs (GB drop): data ≤ 1.05× regular (issue 13)",
        judge(res, &punched("data"), false, le(1.05), "×"),
    );
    // With standbys (GCB_STANDBY=1): the connects that took one, and the
    // whole cell (each client process's first connect is punched, or falls back).
    let standby = |m: &str| vec![format!("punch.table3.gb_drop.gcb_standby.standby.{m}_ratio")];
    push(
        "punch_standby_conn",
        "punch",
        "Table 3 TCP with standbys, the runs that took one (GB drop): conn ≤ 3× regular (issue 13)",
        judge(res, &standby("conn"), false, le(3.0), "×"),
    );
    push(
        "punch_standby_data",
        "punch",
        "Table 3 TCP with standbys, the runs that took one (GB drop): data ≤ 1.05× regular (issue 13)",
        judge(res, &standby("data"), false, le(1.05), "×"),
    );
    // The same on the bed with a WAN's round trip (`punch::WAN_DELAY_US`), where a connect's
    // round trips weigh as they do between real sites.
    let wan = |way: &str, m: &str| vec![format!("punch.table3.wan.{way}.{m}_ratio")];
    push(
        "punch_wan_table3_conn",
        "punch",
        concat!("Table 3 TCP, the punched runs (", crate::wan_rtt!(), "): conn ≤ 3× regular (issue 13)"),
        judge(res, &wan("gcb_punch.punched", "conn"), false, le(3.0), "×"),
    );
    push(
        "punch_wan_table3_data",
        "punch",
        concat!("Table 3 TCP, the punched runs (", crate::wan_rtt!(), "): data ≤ 1.05× regular (issue 13)"),
        judge(res, &wan("gcb_punch.punched", "data"), false, le(1.05), "×"),
    );
    push(
        "punch_wan_standby_conn",
        "punch",
        concat!("Table 3 TCP with standbys, the runs that took one (", crate::wan_rtt!(), "): conn ≤ 3× regular (issue 13)"),
        judge(res, &wan("gcb_standby.standby", "conn"), false, le(3.0), "×"),
    );
    push(
        "punch_wan_standby_data",
        "punch",
        concat!("Table 3 TCP with standbys, the runs that took one (", crate::wan_rtt!(), "): data ≤ 1.05× regular (issue 13)"),
        judge(res, &wan("gcb_standby.standby", "data"), false, le(1.05), "×"),
    );
    push(
        "punch_wan_standby_cell_conn",
        "punch",
        concat!("Table 3 TCP with standbys, every run of the cell (", crate::wan_rtt!(), "): conn ≤ 3× regular (issue 13)"),
        judge(res, &["punch.table3.wan.gcb_standby.conn_ratio".into()], false, le(3.0), "×"),
    );
    push(
        "punch_wan_standby_cell_data",
        "punch",
        concat!("Table 3 TCP with standbys, every run of the cell (", crate::wan_rtt!(), "): data ≤ 1.05× regular (issue 13)"),
        judge(res, &["punch.table3.wan.gcb_standby.data_ratio".into()], false, le(1.05), "×"),
    );
    push(
        "punch_throughput",
        "punch",
        "a punched connection ≥ 0.95× direct throughput (issue 13)",
        judge(res, &["punch.throughput.punched_ratio_to_direct".into()], true, ge(0.95), "×"),
    );

    out.retain(|v| parts.iter().any(|p| p == v.part));
    for v in &out {
        res.text(&format!("targets.{}.goal", v.key), v.goal);
        res.text(&format!("targets.{}.value", v.key), v.value.clone());
        res.text(&format!("targets.{}.verdict", v.key), v.verdict);
    }
    out
}
