//! Writing the results: `results.json`, `tables.md` (the paper's layout, ours
//! beside the paper's, both also as ratios to regular), `report.md` (all
//! parts and the targets) and `tables.png`; the report also goes to stdout.

use crate::ctx::Ctx;
use crate::results::Results;
use crate::targets::Verdict;
use std::fmt::Write as _;

/// Facts about the run that every reader of the figures needs.
pub fn meta(res: &mut Results, quick: bool, parts: &[String]) {
    res.flag("meta.quick", quick);
    res.text("meta.mode", if quick { "quick" } else { "full" });
    res.text("meta.parts", parts.join(","));
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    if let Ok(o) = date {
        res.text("meta.date", String::from_utf8_lossy(&o.stdout).trim());
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    res.text("meta.kernel", kernel.trim());
    res.int(
        "meta.cpus",
        std::thread::available_parallelism()
            .map(|n| n.get() as i64)
            .unwrap_or(0),
    );
}

pub fn write_all(
    ctx: &Ctx,
    res: &Results,
    verdicts: &[Verdict],
    ran_tables: bool,
) -> Result<(), String> {
    let write = |name: &str, text: &str| {
        let p = ctx.out_dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("results.json", &res.to_json())?;
    let mut report = String::new();
    if ran_tables {
        let t = crate::tables_md::tables_md(res);
        write("tables.md", &t)?;
        report.push_str(&t);
        match crate::chart::draw(ctx, res) {
            Ok(p) => eprintln!("bench: chart written to {}", p.display()),
            Err(e) => {
                eprintln!("bench: no chart: {e}");
                let _ = writeln!(report, "\n(No chart: {e})");
            }
        }
    }
    report.push_str(&parts_md(res));
    report.push_str(&targets_md(verdicts));
    write("report.md", &report)?;
    println!("{report}");
    println!(
        "Results in {}: results.json, report.md{}",
        ctx.out_dir.display(),
        if ran_tables {
            ", tables.md, tables.png"
        } else {
            ""
        }
    );
    Ok(())
}

/// Rows of (label, path of the figure, unit, path of its baseline ratio).
type Row<'a> = (&'a str, &'a str, &'a str, Option<&'a str>);

fn rows_md(res: &Results, rows: &[Row]) -> String {
    let mut s = String::from("| figure | value | ratio to baseline |\n|---|---:|---:|\n");
    for (label, path, unit, ratio) in rows {
        let v = match res.get(path) {
            Some(v) if v.abs() >= 100.0 => format!("{v:.0}{unit}"),
            Some(v) => format!("{v:.3}{unit}"),
            None => format!(
                "n/a ({})",
                res.why_missing(path)
                    .unwrap_or("not measured")
                    .replace('|', "\\|")
                    .replace('\n', " ")
            ),
        };
        let r = match ratio.and_then(|p| res.get(p)) {
            Some(r) => format!("{r:.3}×"),
            None if ratio.is_some() && res.get(path).is_some() => "n/a".into(),
            None => String::new(),
        };
        let _ = writeln!(s, "| {label} | {v} | {r} |");
    }
    s
}

fn parts_md(res: &Results) -> String {
    let mut s = String::new();
    let parts = res.get_str("meta.parts").unwrap_or("").to_string();
    let has = |p: &str| parts.split(',').any(|x| x == p);
    if has("tables") {
        s.push_str(&crate::reference::md(res));
    }
    if has("shim") {
        let n = res.get("shim_overhead.messages").unwrap_or(0.0);
        let _ = writeln!(s, "\n## Shim fast-path overhead ({n:.0} round trips of 8 bytes per repetition, unmanaged sockets)\n");
        s.push_str(&rows_md(
            res,
            &[
                (
                    "loopback TCP, plain (baseline), median ns per round trip",
                    "shim_overhead.tcp_loopback.plain_ns_median",
                    " ns",
                    None,
                ),
                (
                    "loopback TCP, LD_PRELOAD=libgcb.so",
                    "shim_overhead.tcp_loopback.preload_ns_median",
                    " ns",
                    Some("shim_overhead.tcp_loopback.preload_ratio"),
                ),
                (
                    "loopback TCP, preload + GCB_INAGENT",
                    "shim_overhead.tcp_loopback.gcb_env_ns_median",
                    " ns",
                    Some("shim_overhead.tcp_loopback.gcb_env_ratio"),
                ),
                (
                    "socketpair, plain (baseline)",
                    "shim_overhead.unix_socketpair.plain_ns_median",
                    " ns",
                    None,
                ),
                (
                    "socketpair, LD_PRELOAD=libgcb.so",
                    "shim_overhead.unix_socketpair.preload_ns_median",
                    " ns",
                    Some("shim_overhead.unix_socketpair.preload_ratio"),
                ),
                (
                    "socketpair, preload + GCB_INAGENT",
                    "shim_overhead.unix_socketpair.gcb_env_ns_median",
                    " ns",
                    Some("shim_overhead.unix_socketpair.gcb_env_ratio"),
                ),
            ],
        ));
    }
    if has("nbconnect") {
        s.push_str(&crate::nbconnect::md(res));
    }
    if has("relay") {
        let mb = res.get("relay.bytes_per_transfer").unwrap_or(0.0) / (1 << 20) as f64;
        let _ = writeln!(s, "\n## Relay throughput (b1 in realm B → a1 in realm A, {mb:.0} MiB per transfer, verified)\n");
        s.push_str(&rows_md(
            res,
            &[
                (
                    "direct through a static forward (baseline), Gbit/s",
                    "relay.direct_gbps",
                    "",
                    None,
                ),
                (
                    "through the GCB relay, Gbit/s",
                    "relay.gcb_relay_gbps",
                    "",
                    Some("relay.gcb_relay_ratio_to_direct"),
                ),
                (
                    "through socat on the broker host, Gbit/s",
                    "relay.socat_relay_gbps",
                    "",
                    Some("relay.socat_relay_ratio_to_direct"),
                ),
                (
                    "gcb-broker CPU seconds per GB",
                    "relay.gcb_cpu_s_per_gb",
                    " s",
                    Some("relay.gcb_cpu_ratio_to_socat"),
                ),
                (
                    "socat CPU seconds per GB (baseline for the broker's)",
                    "relay.socat_cpu_s_per_gb",
                    " s",
                    None,
                ),
            ],
        ));
    }
    if has("broker") {
        s.push_str("\n## Broker scale\n\n");
        s.push_str(&rows_md(
            res,
            &[
                ("RSS, idle (baseline)", "broker.rss_mb_idle", " MB", None),
                (
                    "registrations per second, to 1k",
                    "broker.registrations.r1k.per_s",
                    "/s",
                    None,
                ),
                (
                    "RSS with 1k registrations",
                    "broker.registrations.r1k.rss_mb",
                    " MB",
                    Some("broker.registrations.r1k.rss_ratio_to_idle"),
                ),
                (
                    "registrations per second, 1k to 10k",
                    "broker.registrations.r10k.per_s",
                    "/s",
                    None,
                ),
                (
                    "RSS with 10k registrations",
                    "broker.registrations.r10k.rss_mb",
                    " MB",
                    Some("broker.registrations.r10k.rss_ratio_to_idle"),
                ),
                (
                    "100 relayed connections: verified",
                    "broker.relays.c100.verified",
                    "",
                    None,
                ),
                (
                    "RSS with 100 relays open",
                    "broker.relays.c100.rss_mb",
                    " MB",
                    Some("broker.relays.c100.rss_ratio_to_idle"),
                ),
                (
                    "1,000 relayed connections: verified",
                    "broker.relays.c1000.verified",
                    "",
                    None,
                ),
                (
                    "RSS with 1,000 relays open",
                    "broker.relays.c1000.rss_mb",
                    " MB",
                    Some("broker.relays.c1000.rss_ratio_to_idle"),
                ),
                (
                    "plain connects/s through a static forward (baseline)",
                    "broker.connects_per_s.regular",
                    "/s",
                    None,
                ),
                (
                    "brokered connects/s, reversal (pub → a1)",
                    "broker.connects_per_s.reversal",
                    "/s",
                    Some("broker.connects_per_s.reversal_ratio_to_regular"),
                ),
                (
                    "brokered connects/s, relay (b1 → a1)",
                    "broker.connects_per_s.relay",
                    "/s",
                    Some("broker.connects_per_s.relay_ratio_to_regular"),
                ),
            ],
        ));
    }
    if has("dpfd") {
        s.push_str("\n## dpfd\n\n");
        s.push_str(&rows_md(res, &[
            ("forwards added per second (pipelined, 10 → 10,000)", "dpfd.add_per_s", "/s", None),
            ("forwards deleted per second (10,000 → 10)", "dpfd.delete_per_s", "/s", None),
            ("restart with an empty kernel table (as after a reboot): until every forward is back", "dpfd.recovery_kernel_s", " s", None),
            ("the same restart: until the log says recovered", "dpfd.recovery_log_s", " s", None),
            ("one listing of the kernel map (resolution of the above)", "dpfd.kernel_listing_s", " s", None),
            ("TCP conn through a forward, 10 forwards (baseline), µs", "dpfd.conn_us_10_forwards.mean", " µs", None),
            ("TCP conn through a forward, 10,000 forwards, µs", "dpfd.conn_us_10000_forwards.mean", " µs", Some("dpfd.lookup_ratio_10000_to_10")),
        ]));
    }
    if has("metrics") {
        s.push_str("\n## Metrics: the daemons' CPU, scraped every second vs not\n\n");
        s.push_str(&rows_md(res, &[
            ("gcb-broker CPU, not scraped, ms per s", "metrics.gcb-broker.cpu_ms_per_s_idle", " ms/s", None),
            ("gcb-broker CPU, scraped every second, ms per s", "metrics.gcb-broker.cpu_ms_per_s_scraped", " ms/s", None),
            ("gcb-broker CPU per scrape", "metrics.gcb-broker.cpu_ms_per_scrape", " ms", None),
            ("gcb-broker scrape size", "metrics.gcb-broker.scrape_bytes", " B", None),
            ("dpfd CPU, not scraped, ms per s", "metrics.dpfd.cpu_ms_per_s_idle", " ms/s", None),
            ("dpfd CPU, scraped every second, ms per s", "metrics.dpfd.cpu_ms_per_s_scraped", " ms/s", None),
            ("dpfd CPU per scrape", "metrics.dpfd.cpu_ms_per_scrape", " ms", None),
            ("dpfd scrape size", "metrics.dpfd.scrape_bytes", " B", None),
        ]));
    }
    if has("portmap") {
        s.push_str("\n## Mapping a port: PCP on dpfd and miniupnpd, beside DPF\n\n");
        s.push_str(&rows_md(
            res,
            &[
                ("PCP MAP on dpfd, median µs", "portmap.pcp_dpfd.p50_us", " µs", None),
                ("PCP MAP on dpfd, 90th percentile µs", "portmap.pcp_dpfd.p90_us", " µs", None),
                ("DPF Forward on dpfd, median µs", "portmap.dpf_dpfd.p50_us", " µs", None),
                ("DPF Forward on dpfd, 90th percentile µs", "portmap.dpf_dpfd.p90_us", " µs", None),
                ("PCP MAP on miniupnpd, median µs", "portmap.pcp_miniupnpd.p50_us", " µs", None),
                ("PCP MAP on miniupnpd, 90th percentile µs", "portmap.pcp_miniupnpd.p90_us", " µs", None),
            ],
        ));
    }
    if has("punch") {
        s.push_str(&crate::punch_md::md(res));
    }
    for key in ["shim_overhead", "nbconnect", "relay", "broker", "dpfd", "metrics", "portmap", "punch"] {
        // An error at the part's own key: the part could not run at all.
        if let Some(why) = res.why_missing(key) {
            let _ = writeln!(s, "\n{key}: not run: {why}");
        }
    }
    s
}

fn targets_md(verdicts: &[Verdict]) -> String {
    if verdicts.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n## Targets (goals, not assertions)\n\n");
    for v in verdicts {
        let _ = writeln!(s, "- **{}**: {} — {}", v.verdict, v.goal, v.value);
    }
    s
}
