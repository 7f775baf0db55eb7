//! `tables.md`: the paper's Tables 1-3 in the paper's layout (rows Conn and
//! Data, a column per configuration and protocol), this run's figures as
//! mean (sd) and as ratios to regular, and the paper's own figures and
//! ratios beside them. A cell that could not be measured reads "n/a (reason)",
//! with the full reasons listed under the table.

use crate::paper::{self, Config, Pattern, PATTERNS, PROTOS};
use crate::results::Results;
use crate::tables::{TCP_BYTES, TCP_ROUNDS, UDP_BYTES, UDP_ROUNDS};
use std::fmt::Write as _;

/// A reason shortened for a table cell (full reasons are listed below it).
fn cell_reason(s: &str) -> String {
    let first = s.lines().next().unwrap_or("").replace('|', "\\|");
    if first.chars().count() > 70 {
        format!("{}…", first.chars().take(70).collect::<String>())
    } else {
        first
    }
}

fn header(p: Pattern) -> String {
    let mut h = String::from("| |");
    let mut rule = String::from("|---|");
    for c in p.configs() {
        for proto in PROTOS {
            let _ = write!(h, " {} {proto} |", c.label());
            rule.push_str("---:|");
        }
    }
    format!("{h}\n{rule}\n")
}

/// One table: `cell(config, proto, metric)` gives the text of each cell.
fn table(p: Pattern, cell: impl Fn(Config, &str, &str) -> String) -> String {
    let mut t = header(p);
    for (label, metric) in [("Conn", "conn_us"), ("Data", "data_us")] {
        let _ = write!(t, "| {label} |");
        for c in p.configs() {
            for proto in PROTOS {
                let _ = write!(t, " {} |", cell(*c, proto, metric));
            }
        }
        t.push('\n');
    }
    t
}

pub fn tables_md(res: &Results) -> String {
    let mut s = String::from("# The paper's Tables 1-3, reproduced on the NAT test bed\n\n");
    let runs = res.get("meta.tables.runs_per_cell").unwrap_or(0.0);
    let blocks = res.get("meta.tables.blocks").unwrap_or(0.0);
    let _ = writeln!(
        s,
        "Run {} ({}), kernel {}, {} CPUs. Times in µs, **mean (sd)** over {runs} runs per cell, taken in {blocks} interleaved \
         blocks so that drift hits every configuration alike.\n",
        res.get_str("meta.date").unwrap_or("?"),
        res.get_str("meta.mode").unwrap_or("?"),
        res.get_str("meta.kernel").unwrap_or("?"),
        res.get("meta.cpus").unwrap_or(0.0),
    );
    let _ = writeln!(
        s,
        "Payload: TCP {TCP_BYTES} bytes echoed {TCP_ROUNDS} times per run; UDP {UDP_BYTES}-byte datagrams echoed \
         {UDP_ROUNDS} times, stop and wait. *Conn*: socket creation until connected (UDP: until the first datagram's echo). \
         *Data*: echo of the payload. Client: c-tests echo-client; server: echo-server --mode epoll. The paper's figures \
         are from its section 5 (2003 hardware, Cedar, 100 Mbit/s); compare the ratios, not the µs.\n"
    );
    for p in PATTERNS {
        let _ = writeln!(s, "## {}\n", p.title());
        let path = |c: Config, proto: &str| format!("tables.{}.{}.{proto}", p.key(), c.key());
        let mut reasons: Vec<String> = Vec::new();
        let ours = table(p, |c, proto, m| {
            let base = path(c, proto);
            match (
                res.get(&format!("{base}.{m}.mean")),
                res.get(&format!("{base}.{m}.sd")),
            ) {
                (Some(mean), Some(sd)) => {
                    let star = if res.get(&format!("{base}.failed_runs")).is_some() {
                        "*"
                    } else {
                        ""
                    };
                    format!("{mean:.0} ({sd:.0}){star}")
                }
                _ => format!(
                    "n/a ({})",
                    cell_reason(res.why_missing(&base).unwrap_or("not measured"))
                ),
            }
        });
        for c in p.configs() {
            for proto in PROTOS {
                let base = path(*c, proto);
                if let Some(why) = res.why_missing(&base) {
                    reasons.push(format!(
                        "- {} {proto}: {}",
                        c.label(),
                        why.replace('\n', " ")
                    ));
                } else if let Some(f) = res.get(&format!("{base}.failed_runs")) {
                    reasons.push(format!(
                        "- {} {proto}: * {f} runs failed and are left out",
                        c.label()
                    ));
                }
            }
        }
        let ratio = table(p, |c, proto, m| {
            match res.get(&format!(
                "table_ratios.{}.{}.{proto}.{}",
                p.key(),
                c.key(),
                &m[..4]
            )) {
                Some(r) => format!("{r:.2}×"),
                None => "n/a".into(),
            }
        });
        let theirs = table(p, |c, proto, m| match paper::paper(p, c, proto) {
            Some(((cm, cs), (dm, ds))) => {
                let (mean, sd) = if m == "conn_us" { (cm, cs) } else { (dm, ds) };
                format!("{mean:.0} ({sd:.0})")
            }
            None => "–".into(),
        });
        let theirs_ratio = table(p, |c, proto, m| {
            let pick = |cfg| {
                paper::paper(p, cfg, proto)
                    .map(|(conn, data)| if m == "conn_us" { conn.0 } else { data.0 })
            };
            match (pick(c), pick(Config::Regular)) {
                (Some(v), Some(b)) => format!("{:.2}×", v / b),
                _ => "–".into(),
            }
        });
        let _ = write!(s, "This run:\n\n{ours}\n");
        if !reasons.is_empty() {
            let _ = writeln!(s, "{}\n", reasons.join("\n"));
        }
        let _ = write!(s, "This run, ratio to regular:\n\n{ratio}\nPaper:\n\n{theirs}\nPaper, ratio to regular:\n\n{theirs_ratio}\n");
    }
    s
}
