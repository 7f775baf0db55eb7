//! The `punch` part of `report.md`: Table 3 with punching beside the relay,
//! the throughput of a punched connection, and the NAT-kind matrix, each
//! with the path counts the shims logged, so a ratio is never read as a
//! punched one when the connects went through the relay.

use crate::results::Results;
use std::fmt::Write as _;

fn us(v: Option<f64>) -> String {
    match v {
        Some(v) => format!("{v:.0}"),
        None => "-".into(),
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |r| format!("{r:.2}×"))
}

fn why(res: &Results, path: &str) -> String {
    let w = res.why_missing(path).unwrap_or("not measured");
    w.lines().next().unwrap_or("").replace('|', "\\|")
}

/// Mean (sd) of a cell's figure.
fn mean_sd(res: &Results, path: &str) -> String {
    match (res.get(&format!("{path}.mean")), res.get(&format!("{path}.sd"))) {
        (Some(m), Some(sd)) => format!("{m:.0} ({sd:.0})"),
        (Some(m), None) => format!("{m:.0}"),
        _ => "-".into(),
    }
}

/// The WAN bed's label (`punch::WAN_DELAY_US`, checked by a test there).
pub(crate) const WAN_BED: &str = concat!("GA preserve / GB preserve, ", crate::wan_rtt!(), " (`--wan-delay-us 500`), broker `--punch-retry-s 0`");

const BEDS: [(&str, &str); 3] = [
    ("gb_drop", "GA preserve / GB drop, broker `--punch-retry-s 0`"),
    ("preserve", "GA preserve / GB preserve (the bed's default), broker as shipped"),
    ("wan", WAN_BED),
];

const CELLS: [(&str, &str); 4] = [
    ("regular", "Regular (static forward on GA)"),
    ("gcb_relay", "GCB, relayed (client GCB_PUNCH=0)"),
    ("gcb_punch", "GCB with punching"),
    ("gcb_standby", "GCB with punching and standbys (client GCB_STANDBY=1)"),
];

fn table3(res: &Results, s: &mut String) {
    let runs = res.get("meta.punch.runs_per_cell").unwrap_or(0.0);
    let blocks = res.get("meta.punch.blocks").unwrap_or(0.0);
    let _ = writeln!(s, "\n### Table 3 with punching (TCP, client on b1 in realm B, server on a1 in realm A; {runs:.0} runs per cell in {blocks:.0} interleaved blocks)\n");
    s.push_str("µs, mean (sd) and median; ratios of the means to regular on the same bed. *Paths* counts the connects the client's shim logged `via punched` / `via punched (standby)` / `via relay`; each client process makes 25 connects in a row, so with standbys its first one is punched and the later ones take a standby when it is ready. UDP is not measured here (`testbed/tests/punch_udp.rs` checks that it is punched).\n\n");
    s.push_str("| bed | configuration | conn | conn p50 | conn ratio | data | data ratio | paths punched / standby / relayed |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for (bk, bl) in BEDS {
        for (ck, cl) in CELLS {
            let p = format!("punch.table3.{bk}.{ck}");
            if res.get(&format!("{p}.conn_us.mean")).is_none() {
                let _ = writeln!(s, "| {bl} | {cl} | n/a ({}) |||||| ", why(res, &p));
                continue;
            }
            let ways = match (res.get(&format!("{p}.via_punched")), res.get(&format!("{p}.via_relay"))) {
                (Some(a), Some(b)) => {
                    let unknown = res.get(&format!("{p}.path_unknown")).map_or(String::new(), |u| format!(" ({u:.0} unknown)"));
                    let standby = res.get(&format!("{p}.via_standby")).unwrap_or(0.0);
                    format!("{a:.0} / {standby:.0} / {b:.0}{unknown}")
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {bl} | {cl} | {} | {} | {} | {} | {} | {ways} |",
                mean_sd(res, &format!("{p}.conn_us")),
                us(res.get(&format!("{p}.conn_us.p50"))),
                ratio(res.get(&format!("{p}.conn_ratio"))),
                mean_sd(res, &format!("{p}.data_us")),
                ratio(res.get(&format!("{p}.data_ratio"))),
            );
            let ways_taken: Vec<&str> = ["punched", "standby", "relayed"]
                .into_iter()
                .filter(|w| res.get(&format!("{p}.via_{}", if *w == "relayed" { "relay" } else { w })).unwrap_or(0.0) > 0.0)
                .collect();
            if ck != "gcb_relay" && ways_taken.len() > 1 {
                for way in ways_taken {
                    let _ = writeln!(
                        s,
                        "| {bl} | … the runs {way} | {} | {} | {} | {} | {} | |",
                        us(res.get(&format!("{p}.{way}.conn_us.mean"))),
                        us(res.get(&format!("{p}.{way}.conn_us.p50"))),
                        ratio(res.get(&format!("{p}.{way}.conn_ratio"))),
                        us(res.get(&format!("{p}.{way}.data_us.mean"))),
                        ratio(res.get(&format!("{p}.{way}.data_ratio"))),
                    );
                }
            }
        }
    }
    if let (Some(c), Some(d)) = (
        res.get("table_ratios.private_to_private.gcb.tcp.conn"),
        res.get("table_ratios.private_to_private.gcb.tcp.data"),
    ) {
        let _ = writeln!(s, "\nTable 3's own GCB TCP cell in this run (the `tables` part, bed default, a plain relayed path): conn {c:.2}×, data {d:.2}× regular.");
    }
}

fn throughput(res: &Results, s: &mut String) {
    let mb = res.get("punch.throughput.bytes_per_transfer").unwrap_or(0.0) / (1 << 20) as f64;
    let reps = res.get("punch.throughput.transfers_each").unwrap_or(0.0);
    let _ = writeln!(s, "\n### Throughput of a punched connection (b1 → a1, GA preserve / GB drop, {mb:.0} MiB per transfer, {reps:.0} each, taking turns)\n");
    s.push_str("| path | Gbit/s | sd | ratio to direct |\n|---|---:|---:|---:|\n");
    for (k, label) in [
        ("direct", "direct through a static forward on GA (baseline)"),
        ("punched", "punched (both under the shim)"),
        ("relayed", "relayed (sender with GCB_PUNCH=0)"),
    ] {
        let p = format!("punch.throughput.{k}_gbps");
        let other = res.get(&format!("punch.throughput.{k}_other_path")).map_or(String::new(), |n| format!(" ({n:.0} transfers took another path, left out)"));
        match res.get(&p) {
            Some(v) => {
                let sd = res.get(&format!("{p}_sd")).map_or("-".into(), |x| format!("{x:.2}"));
                let _ = writeln!(s, "| {label}{other} | {v:.2} | {sd} | {} |", ratio(res.get(&format!("punch.throughput.{k}_ratio_to_direct"))));
            }
            None => {
                let _ = writeln!(s, "| {label} | n/a ({}) | | |", why(res, &p));
            }
        }
    }
    if let Some(r) = res.get("relay.gcb_relay_ratio_to_direct") {
        let _ = writeln!(s, "\nThe `relay` part in this run (default bed, plain sender): the GCB relay at {r:.2}× direct.");
    }
}

fn matrix(res: &Results, s: &mut String) {
    let n = res.get("meta.punch.matrix_connects").unwrap_or(0.0);
    let _ = writeln!(s, "\n### NAT-kind matrix ({n:.0} connects b1 → a1 per pair of gateway kinds, broker with `--punch-retry-s 0` so each connect tries)\n");
    s.push_str("Times are the client's shim's, from `connect` to its answer, µs. *Fallback*: connects that went to the relay (a punch that failed within the budget, or the relay at once for an unpredictable mapping). Broker counters: attempts, succeeded, fallbacks by reason (timeout / check failed / local error / no report), skipped for an unpredictable mapping.\n\n");
    s.push_str("| GA / GB | punched | punched p50 | p90 | fallback p50 | max | attempts | succeeded | fallbacks t/c/l/n | skipped unpredictable |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let quick = res.get_str("meta.mode") == Some("quick");
    for (a, b) in crate::punch_matrix::pairs(quick) {
        let pair = crate::punch_matrix::key(a, b);
        let p = format!("punch.matrix.{pair}");
        let Some(connects) = res.get(&format!("{p}.connects")) else {
            let _ = writeln!(s, "| {pair} | n/a ({}) |||||||||", why(res, &p));
            continue;
        };
        let c = |k: &str| res.get(&format!("{p}.broker.punch_{k}")).map_or("-".into(), |v| format!("{v:.0}"));
        let fb = testbed::real::PUNCH_FALLBACKS.map(|k| c(&format!("fallbacks_{k}"))).join("/");
        let failed = res.get_str(&format!("{p}.failures")).map_or(String::new(), |f| format!(" ({})", f.replace('|', "\\|")));
        let _ = writeln!(
            s,
            "| {pair} | {:.0}/{connects:.0}{failed} | {} | {} | {} | {} | {} | {} | {fb} | {} |",
            res.get(&format!("{p}.punched")).unwrap_or(0.0),
            us(res.get(&format!("{p}.punched_us.p50"))),
            us(res.get(&format!("{p}.punched_us.p90"))),
            us(res.get(&format!("{p}.fallback_us.p50"))),
            us(res.get(&format!("{p}.fallback_us.max"))),
            c("attempts"),
            c("succeeded"),
            c("skipped_unpredictable_mapping"),
        );
    }
}

pub fn md(res: &Results) -> String {
    let mut s = String::from("\n## Hole punching (TCP; UDP punching is checked by the tests, not measured here)\n");
    table3(res, &mut s);
    throughput(res, &mut s);
    matrix(res, &mut s);
    s
}
