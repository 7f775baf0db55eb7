//! The brokered-connect cells of the full run at `f261631` (README,
//! "Benchmarks", 2026-11-25), the reference issue 12 names: "no
//! brokered-connect ratio gets worse than the full run at f261631". Each GCB
//! cell's conn ratio of this run is stored against it
//! (`table_ratios_vs_f261631`, this ratio / that one, so above 1 is worse)
//! and shown with both runs' µs, regular included: the ratios move with the
//! regular baseline, and a machine that got faster at plain connects makes
//! every ratio look worse without a brokered connect getting slower.

use crate::paper::{Config, Pattern};
use crate::results::Results;
use std::fmt::Write as _;

/// The commit the figures below were measured at.
pub const COMMIT: &str = "f261631";

/// (pattern, configuration, protocol, conn µs mean) of that run, regular
/// cells first in each pattern since the ratios are taken to them.
const CONN_US: [(Pattern, Config, &str, f64); 16] = [
    (Pattern::PrivateToPublic, Config::Regular, "tcp", 61.0),
    (Pattern::PrivateToPublic, Config::Regular, "udp", 73.0),
    (
        Pattern::PrivateToPublic,
        Config::GcbRegularPublic,
        "tcp",
        71.0,
    ),
    (
        Pattern::PrivateToPublic,
        Config::GcbRegularPublic,
        "udp",
        75.0,
    ),
    (Pattern::PrivateToPublic, Config::GcbGcbPublic, "tcp", 171.0),
    (Pattern::PrivateToPublic, Config::GcbGcbPublic, "udp", 186.0),
    (Pattern::PublicToPrivate, Config::Regular, "tcp", 56.0),
    (Pattern::PublicToPrivate, Config::Regular, "udp", 48.0),
    (
        Pattern::PublicToPrivate,
        Config::GcbRegularPublic,
        "tcp",
        42.0,
    ),
    (
        Pattern::PublicToPrivate,
        Config::GcbRegularPublic,
        "udp",
        84.0,
    ),
    (Pattern::PublicToPrivate, Config::GcbGcbPublic, "tcp", 245.0),
    (Pattern::PublicToPrivate, Config::GcbGcbPublic, "udp", 187.0),
    (Pattern::PrivateToPrivate, Config::Regular, "tcp", 63.0),
    (Pattern::PrivateToPrivate, Config::Regular, "udp", 63.0),
    (Pattern::PrivateToPrivate, Config::Gcb, "tcp", 317.0),
    (Pattern::PrivateToPrivate, Config::Gcb, "udp", 183.0),
];

/// The conn ratios that run printed (README, "This run, ratio to regular"),
/// rounded as printed; recomputing them from the rounded µs above would
/// differ in the second decimal.
const CONN_RATIO: [(Pattern, Config, &str, f64); 10] = [
    (
        Pattern::PrivateToPublic,
        Config::GcbRegularPublic,
        "tcp",
        1.15,
    ),
    (
        Pattern::PrivateToPublic,
        Config::GcbRegularPublic,
        "udp",
        1.03,
    ),
    (Pattern::PrivateToPublic, Config::GcbGcbPublic, "tcp", 2.79),
    (Pattern::PrivateToPublic, Config::GcbGcbPublic, "udp", 2.56),
    (
        Pattern::PublicToPrivate,
        Config::GcbRegularPublic,
        "tcp",
        0.75,
    ),
    (
        Pattern::PublicToPrivate,
        Config::GcbRegularPublic,
        "udp",
        1.76,
    ),
    (Pattern::PublicToPrivate, Config::GcbGcbPublic, "tcp", 4.36),
    (Pattern::PublicToPrivate, Config::GcbGcbPublic, "udp", 3.93),
    (Pattern::PrivateToPrivate, Config::Gcb, "tcp", 5.02),
    (Pattern::PrivateToPrivate, Config::Gcb, "udp", 2.92),
];

fn cell(p: Pattern, c: Config, proto: &str) -> String {
    format!("{}.{}.{proto}", p.key(), c.key())
}

fn old_us(p: Pattern, c: Config, proto: &str) -> Option<f64> {
    CONN_US
        .iter()
        .find(|(pp, cc, pr, _)| *pp == p && *cc == c && *pr == proto)
        .map(|x| x.3)
}

/// The paths of the stored quotients, for the target.
pub fn quotient_paths() -> Vec<String> {
    CONN_RATIO
        .iter()
        .map(|(p, c, proto, _)| format!("table_ratios_vs_{COMMIT}.{}.conn", cell(*p, *c, proto)))
        .collect()
}

/// Store this run's conn ratio of every brokered cell over the reference's.
pub fn compare(res: &mut Results) {
    for (p, c, proto, old) in CONN_RATIO {
        let key = cell(p, c, proto);
        if let Some(now) = res.get(&format!("table_ratios.{key}.conn")) {
            res.num(&format!("table_ratios_vs_{COMMIT}.{key}.conn"), now / old);
        }
    }
}

/// The comparison as a table for report.md.
pub fn md(res: &Results) -> String {
    let mut s = format!("\n## Brokered connects against the full run at `{COMMIT}`\n\n");
    s.push_str("Conn µs (mean) and ratio to regular of each GCB cell, then and now; *vs* is this run's ratio over that run's (above 1: worse). Regular µs shown, since the ratios move with it. A quick run's ratios are noisier than a full run's.\n\n");
    s.push_str(&format!(
        "| cell | {COMMIT} µs | {COMMIT} ratio | this run µs | this run ratio | vs |\n|---|---:|---:|---:|---:|---:|\n"
    ));
    let f = |v: Option<f64>, d: usize| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.d$}"));
    for (p, c, proto, _) in CONN_US {
        let key = cell(p, c, proto);
        let old_ratio = CONN_RATIO
            .iter()
            .find(|(pp, cc, pr, _)| *pp == p && *cc == c && *pr == proto)
            .map(|x| x.3);
        let regular = c == Config::Regular;
        let _ = writeln!(
            s,
            "| {} {} {proto} | {} | {} | {} | {} | {} |",
            p.short(),
            c.label(),
            f(old_us(p, c, proto), 0),
            if regular {
                "1.00×".into()
            } else {
                f(old_ratio, 2) + "×"
            },
            f(res.get(&format!("tables.{key}.conn_us.mean")), 0),
            f(res.get(&format!("table_ratios.{key}.conn")), 2) + "×",
            if regular {
                String::new()
            } else {
                f(res.get(&format!("table_ratios_vs_{COMMIT}.{key}.conn")), 2) + "×"
            },
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotients_are_this_run_over_the_reference() {
        let mut r = Results::default();
        r.num("table_ratios.private_to_private.gcb.tcp.conn", 2.51);
        compare(&mut r);
        let q = r.get("table_ratios_vs_f261631.private_to_private.gcb.tcp.conn");
        assert!((q.unwrap() - 0.5).abs() < 1e-9, "{q:?}");
        assert!(r
            .get("table_ratios_vs_f261631.private_to_private.gcb.udp.conn")
            .is_none());
        assert_eq!(quotient_paths().len(), 10);
        let md = md(&r);
        assert!(
            md.contains("| priv→priv GCB tcp | 317 | 5.02× | n/a | 2.51× | 0.50× |"),
            "{md}"
        );
    }

    #[test]
    fn every_brokered_cell_has_its_microseconds() {
        for (p, c, proto, _) in CONN_RATIO {
            assert!(old_us(p, c, proto).is_some(), "{}", cell(p, c, proto));
            assert!(p.configs().contains(&c));
        }
    }
}
