//! Means, standard deviations and the parsing of echo-client's per-run lines.
//!
//! The bench computes its statistics from the `RUN` lines rather than taking
//! echo-client's `SUMMARY`, because one cell's runs are spread over several
//! interleaved invocations and must be pooled.

/// Mean and sample standard deviation of `n` values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub sd: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(xs: &[f64]) -> Option<Stat> {
        if xs.is_empty() {
            return None;
        }
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let sd = if n < 2 {
            0.0
        } else {
            (xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64).sqrt()
        };
        Some(Stat { mean, sd, n })
    }
}

/// What one echo-client invocation measured.
#[derive(Default, Debug)]
pub struct EchoRuns {
    pub conn_us: Vec<f64>,
    pub data_us: Vec<f64>,
    /// Runs that printed timings but lost or reordered datagrams: their data
    /// time includes a timeout, so they are left out of the means.
    pub lossy: usize,
    /// The first line saying why a run failed, if one did.
    pub failure: Option<String>,
    /// The SUMMARY line, if the client got that far.
    pub summary: Option<String>,
}

/// Parse echo-client's stdout: `RUN i conn_us=X data_us=Y bytes=B` per run,
/// `LOSS run=i ...` before the RUN line of a lossy UDP run, failure lines
/// (`CONNECT-FAILED`, `MISMATCH...`, `IO-ERROR`) and the final `SUMMARY`.
pub fn parse_echo(lines: &[String]) -> EchoRuns {
    let mut r = EchoRuns::default();
    let mut lossy_runs: Vec<String> = Vec::new();
    for line in lines {
        if let Some(rest) = line.strip_prefix("RUN ") {
            let idx = rest.split_whitespace().next().unwrap_or("").to_string();
            if lossy_runs.contains(&idx) {
                r.lossy += 1;
                continue;
            }
            let conn = crate::ctx::field_f64(line, "conn_us");
            let data = crate::ctx::field_f64(line, "data_us");
            if let (Some(c), Some(d)) = (conn, data) {
                r.conn_us.push(c);
                r.data_us.push(d);
            }
        } else if let Some(rest) = line.strip_prefix("LOSS ") {
            if let Some(i) = crate::ctx::field(rest, "run") {
                lossy_runs.push(i);
            }
        } else if line.starts_with("SUMMARY ") {
            r.summary = Some(line.clone());
        } else if r.failure.is_none()
            && (line.starts_with("CONNECT-FAILED")
                || line.starts_with("MISMATCH")
                || line.starts_with("IO-ERROR"))
        {
            r.failure = Some(line.clone());
        }
    }
    r
}

/// Median of a non-empty slice (None if empty); robust against one slow repetition.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The `q`-quantile (0 < q ≤ 1) by nearest rank: the smallest value with at
/// least a share `q` of the values at or below it. None if empty.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_uses_the_sample_sd() {
        let s = Stat::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert!((s.sd - 1.2909944).abs() < 1e-6);
        assert_eq!(Stat::of(&[5.0]).unwrap().sd, 0.0);
        assert!(Stat::of(&[]).is_none());
    }

    #[test]
    fn parses_runs_and_skips_lossy_ones() {
        let lines: Vec<String> = [
            "LOCAL 1.2.3.4:5 PEER 6.7.8.9:10",
            "RUN 0 conn_us=100 data_us=200 bytes=10",
            "LOSS run=1 lost=1 reordered=0",
            "RUN 1 conn_us=100 data_us=5000000 bytes=9",
            "RUN 2 conn_us=300 data_us=400 bytes=10",
            "CONNECT-FAILED ECONNREFUSED: connect: Connection refused",
            "SUMMARY runs=4 ok=2 conn_us_mean=200.0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = parse_echo(&lines);
        assert_eq!(r.conn_us, vec![100.0, 300.0]);
        assert_eq!(r.data_us, vec![200.0, 400.0]);
        assert_eq!(r.lossy, 1);
        assert!(r.failure.unwrap().contains("ECONNREFUSED"));
        assert!(r.summary.is_some());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn quantile_by_nearest_rank() {
        let xs: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&xs, 0.5), Some(50.0));
        assert_eq!(quantile(&xs, 0.99), Some(99.0));
        assert_eq!(quantile(&xs, 1.0), Some(100.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
