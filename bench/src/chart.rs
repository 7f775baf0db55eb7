//! `tables.png`: grouped bars on a log scale, made with gnuplot. Four panels:
//! this run's connection and data times, and the paper's, each with a group
//! per pattern and protocol and a bar per configuration (error bars ± sd).
//! A missing figure leaves a gap in its group rather than a made-up bar.

use crate::ctx::Ctx;
use crate::paper::{self, Config, PATTERNS, PROTOS};
use crate::results::Results;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

const COLOURS: [&str; 5] = ["#4477aa", "#228833", "#ccbb44", "#ee6677", "#aa3377"];

/// One panel's data block: a row per (pattern, protocol), then for each
/// configuration mean, low and high end of the error bar (NaN when missing).
fn block(fig: impl Fn(paper::Pattern, Config, &str) -> Option<(f64, f64)>) -> String {
    let mut s = String::new();
    for p in PATTERNS {
        for proto in PROTOS {
            let _ = write!(s, "\"{} {proto}\"", p.short());
            for c in Config::ALL {
                match fig(p, c, proto).filter(|(m, _)| *m > 0.0) {
                    // On a log axis the bar's low end must stay positive.
                    Some((m, sd)) => {
                        let _ = write!(s, " {m} {} {}", (m - sd).max(m * 0.05), m + sd);
                    }
                    None => s.push_str(" NaN NaN NaN"),
                }
            }
            s.push('\n');
        }
    }
    s
}

pub fn draw(ctx: &Ctx, res: &Results) -> Result<PathBuf, String> {
    if !testbed::have_command("gnuplot") {
        return Err("gnuplot is not installed (scripts/bench installs gnuplot-nox)".into());
    }
    let ours = |m: &'static str| {
        move |p: paper::Pattern, c: Config, proto: &str| {
            let base = format!("tables.{}.{}.{proto}.{m}", p.key(), c.key());
            Some((
                res.get(&format!("{base}.mean"))?,
                res.get(&format!("{base}.sd"))?,
            ))
        }
    };
    let theirs = |conn: bool| {
        move |p: paper::Pattern, c: Config, proto: &str| {
            paper::paper(p, c, proto).map(|(cf, df)| if conn { cf } else { df })
        }
    };
    let data = [
        block(ours("conn_us")),
        block(ours("data_us")),
        block(theirs(true)),
        block(theirs(false)),
    ]
    .join("\n\n");
    let dat = ctx.out_dir.join("tables.dat");
    let png = ctx.out_dir.join("tables.png");
    std::fs::write(&dat, data).map_err(|e| format!("{}: {e}", dat.display()))?;

    let titles = [
        "This run: connection time",
        "This run: data time",
        "Paper (2003): connection time",
        "Paper (2003): data time",
    ];
    let mut gp = String::new();
    let _ = writeln!(
        gp,
        "set terminal pngcairo size 1600,1100 font 'DejaVu Sans,11'"
    );
    let _ = writeln!(gp, "set output '{}'", png.display());
    let _ = writeln!(
        gp,
        "set multiplot layout 2,2 title 'GCB and DPF vs regular: mean ± sd, µs, log scale ({}); a gap is n/a, see tables.md' font ',14' \\\n  margins 0.06,0.98,0.05,0.88 spacing 0.07,0.1",
        res.get_str("meta.mode").unwrap_or("")
    );
    gp.push_str(
        "set style data histogram\nset style histogram errorbars gap 1.5 lw 1\nset style fill solid 0.85 border -1\n\
         set boxwidth 0.9\nset logscale y\nset format y '10^{%L}'\nset ylabel 'µs'\nset grid ytics\n\
         set key at screen 0.5,0.95 center top horizontal font ',11' samplen 1.5 width 2\nset xtics nomirror font ',10'\nset datafile missing 'NaN'\n",
    );
    for (i, title) in titles.iter().enumerate() {
        let _ = writeln!(gp, "set title '{title}'");
        if i == 1 {
            // One legend for all four panels, under the page title.
            gp.push_str("unset key\n");
        }
        let mut plots = Vec::new();
        for (k, c) in Config::ALL.iter().enumerate() {
            let col = 2 + 3 * k;
            let xtic = if k == 0 { ":xtic(1)" } else { "" };
            let file = if k == 0 {
                format!("'{}'", dat.display())
            } else {
                "''".into()
            };
            plots.push(format!(
                "{file} index {i} using {col}:{}:{}{xtic} title '{}' lc rgb '{}'",
                col + 1,
                col + 2,
                c.label(),
                COLOURS[k]
            ));
        }
        let _ = writeln!(gp, "plot {}", plots.join(", \\\n     "));
    }
    gp.push_str("unset multiplot\n");
    let script = ctx.out_dir.join("tables.gp");
    std::fs::write(&script, &gp).map_err(|e| format!("{}: {e}", script.display()))?;
    let mut cmd = std::process::Command::new("gnuplot");
    cmd.arg(&script);
    let o = testbed::run_with_timeout(cmd, Duration::from_secs(60))?;
    if !o.status.success() || !png.exists() {
        return Err(format!(
            "gnuplot failed: {}",
            crate::ctx::last_line(&String::from_utf8_lossy(&o.stderr))
        ));
    }
    Ok(png)
}
