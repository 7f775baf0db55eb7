//! Prometheus metrics for both daemons: what a scrape is made of, and its
//! rendering in the Prometheus text format (version 0.0.4) through the
//! `prometheus-client` crate. The HTTP side is [`http`].
//!
//! The daemons already count everything in plain integers owned by their
//! one thread (what `gcb-broker query` and `dpfd status` show). Copying
//! each of them into an atomic counter at every increment would touch all
//! their code for nothing, so a scrape instead takes a [`Snapshot`] of
//! those integers and the live gauges at that moment, and hands it to the
//! crate as a collector. Only the histograms, which the daemons cannot
//! summarise from integers, are kept as the crate's own metrics
//! ([`Timing`]), observed where the time is spent.
//!
//! A snapshot holds a few hundred numbers whatever the daemon's size (no
//! per-client labels), so a scrape costs the same with ten clients or a
//! hundred thousand.

pub mod http;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Label pairs of one sample, e.g. `[("proto", "tcp")]`.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
enum Values {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, f64)>),
}

#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: &'static str,
    values: Values,
}

/// The counters and gauges of one scrape, in the order they were added.
/// Samples added under the name of the family added just before join it
/// (one `# HELP`/`# TYPE` for all label sets).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    families: Vec<Family>,
}

impl Snapshot {
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// A counter: a count since the daemon started. Prometheus adds the
    /// `_total` suffix, so `name` must not have it.
    pub fn counter(&mut self, name: &str, help: &'static str, value: u64) {
        self.counter_with(name, help, Vec::new(), value);
    }

    pub fn counter_with(&mut self, name: &str, help: &'static str, labels: Labels, value: u64) {
        match self.family(name, help, true) {
            Values::Counter(v) => v.push((labels, value)),
            Values::Gauge(_) => unreachable!("family() matched the kind"),
        }
    }

    /// A gauge: a value at this moment.
    pub fn gauge(&mut self, name: &str, help: &'static str, value: f64) {
        self.gauge_with(name, help, Vec::new(), value);
    }

    pub fn gauge_with(&mut self, name: &str, help: &'static str, labels: Labels, value: f64) {
        match self.family(name, help, false) {
            Values::Gauge(v) => v.push((labels, value)),
            Values::Counter(_) => unreachable!("family() matched the kind"),
        }
    }

    /// The last family if it has this name and kind, else a new one.
    fn family(&mut self, name: &str, help: &'static str, counter: bool) -> &mut Values {
        // Prometheus drops the whole scrape for one bad name, so tests
        // (debug builds) stop at it rather than a scraper far away.
        debug_assert!(valid_name(name), "{name:?} is no Prometheus metric name");
        let same = self
            .families
            .last()
            .is_some_and(|f| f.name == name && matches!(f.values, Values::Counter(_)) == counter);
        if !same {
            let values = if counter {
                Values::Counter(Vec::new())
            } else {
                Values::Gauge(Vec::new())
            };
            self.families.push(Family {
                name: name.to_string(),
                help,
                values,
            });
        }
        &mut self.families.last_mut().expect("pushed above").values
    }

    /// The names of the families, for tests that check coverage.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.families.iter().map(|f| f.name.as_str())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            // Sentences, as the registry writes the histograms' help.
            let help = format!("{}.", f.help);
            match &f.values {
                Values::Counter(samples) => {
                    let mut m =
                        encoder.encode_descriptor(&f.name, &help, None, MetricType::Counter)?;
                    for (labels, v) in samples {
                        let c = ConstCounter::new(*v);
                        if labels.is_empty() {
                            c.encode(m.encode_family(&Vec::<(&str, String)>::new())?)?;
                        } else {
                            c.encode(m.encode_family(labels)?)?;
                        }
                    }
                }
                Values::Gauge(samples) => {
                    let mut m =
                        encoder.encode_descriptor(&f.name, &help, None, MetricType::Gauge)?;
                    for (labels, v) in samples {
                        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` may be a Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A histogram of durations in seconds, kept for the whole run and shared
/// (cheaply cloned) between the code that observes and the scrape.
#[derive(Debug, Clone)]
pub struct Timing {
    name: &'static str,
    help: &'static str,
    histogram: Histogram,
}

impl Timing {
    /// `buckets` are upper bounds in seconds, ascending.
    pub fn new(name: &'static str, help: &'static str, buckets: &[f64]) -> Timing {
        Timing {
            name,
            help,
            histogram: Histogram::new(buckets.iter().copied()),
        }
    }

    pub fn observe(&self, d: Duration) {
        self.histogram.observe(d.as_secs_f64());
    }
}

/// Renders one scrape: the snapshot and the timings, every name under
/// `prefix` (e.g. `gcb_broker`), in the Prometheus text format.
pub fn render(prefix: &str, snapshot: Snapshot, timings: &[&Timing]) -> String {
    let mut registry = Registry::with_prefix(prefix);
    registry.register_collector(Box::new(snapshot));
    for t in timings {
        registry.register_with_unit(t.name, t.help, Unit::Seconds, t.histogram.clone());
    }
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in
    // a name, and the scrape then shows what was written before it.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_in_the_text_format() {
        let mut s = Snapshot::new();
        s.counter("received", "Datagrams read", 7);
        s.gauge("registrations", "Registered sockets now", 3.0);
        s.gauge_with(
            "forwards",
            "Forwards now",
            vec![("proto", "tcp".into())],
            2.0,
        );
        s.gauge_with(
            "forwards",
            "Forwards now",
            vec![("proto", "udp".into())],
            1.0,
        );
        let t = Timing::new("decision", "Time to decide", &[0.001, 0.01]);
        t.observe(Duration::from_micros(500));
        t.observe(Duration::from_millis(5));
        let text = render("x", s, &[&t]);
        for line in [
            "# HELP x_received_total Datagrams read.",
            "# TYPE x_received_total counter",
            "x_received_total 7",
            "# TYPE x_registrations gauge",
            "x_registrations 3.0",
            "x_forwards{proto=\"tcp\"} 2.0",
            "x_forwards{proto=\"udp\"} 1.0",
            "# TYPE x_decision_seconds histogram",
            "x_decision_seconds_bucket{le=\"0.001\"} 1",
            "x_decision_seconds_bucket{le=\"0.01\"} 2",
            "x_decision_seconds_bucket{le=\"+Inf\"} 2",
            "x_decision_seconds_count 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert_eq!(text.matches("# TYPE x_forwards gauge").count(), 1, "{text}");
        assert!(
            !text.contains("# EOF"),
            "Prometheus text, not OpenMetrics:\n{text}"
        );
    }

    #[test]
    fn names_prometheus_accepts() {
        for ok in [
            "received",
            "standard_refused_pcp_no_resources",
            "_x",
            "a:b9",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "refused_pcp.NO_RESOURCES", "9lives", "a-b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
