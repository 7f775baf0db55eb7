//! The daemons' Prometheus metrics (issue 16), scraped by a real Prometheus
//! (Debian `prometheus`) while `scripts/demo --ci --prometheus` runs the
//! pool, and checked through Prometheus's HTTP API while the demo holds its
//! test bed (`--hold`):
//!
//! * the registration gauge and the relay counters equal what
//!   `gcb-broker query --json` shows, and dpfd's forward gauge what
//!   `dpfd status --json` shows, taken around the same scrape;
//! * the decision-time histogram counted every Connect;
//! * every counter `query` and `status` show is a metric with help text;
//! * `promtool check metrics` accepts both daemons' output;
//! * every query of the Grafana dashboard in deploy/ runs, on metrics that
//!   exist.
//!
//! Needs root, prometheus (`.ci/run` installs it), curl,
//! `cargo build --release --workspace`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::json::{self, Value};
use testbed::{have_command, release_bin, require_root, run_with_timeout, target_dir, workspace_root, Proc};

const LIMIT: Duration = Duration::from_secs(30);
const BROKER_METRICS: &str = "http://203.0.113.10:9465/metrics";
const DPFD_METRICS: &str = "http://203.0.113.1:9466/metrics";

/// The demo, released from its hold (and so torn down) when dropped.
struct Demo {
    proc: Proc,
    hold: PathBuf,
    prefix: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.hold);
        let end = Instant::now() + Duration::from_secs(60);
        while self.proc.try_wait().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Demo {
    fn run(&self, host: &str, args: &[&str]) -> String {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &format!("{}-{host}", self.prefix)]).args(args).stdin(Stdio::null());
        let out = run_with_timeout(c, LIMIT).expect("bounded");
        assert!(out.status.success(), "{args:?} on {host}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, host: &str, args: &[&str]) -> Value {
        let text = self.run(host, args);
        json::parse(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// An instant query: the result vector.
    fn prom(&self, query: &str) -> Vec<Value> {
        let q = format!("query={query}");
        let v = self.json("broker", &["curl", "-sf", "-G", "--data-urlencode", &q, "http://127.0.0.1:9090/api/v1/query"]);
        assert_eq!(v.get("status").and_then(Value::as_str), Some("success"), "{query}: {v:?}");
        v.get("data").and_then(|d| d.get("result")).and_then(Value::as_array).unwrap_or(&[]).to_vec()
    }

    /// The value of a query with one result; None with none.
    fn prom_value(&self, query: &str) -> Option<f64> {
        let r = self.prom(query);
        assert!(r.len() <= 1, "{query}: {r:?}");
        let v = r.first()?.get("value")?.as_array()?.get(1)?.as_str()?;
        Some(v.parse().unwrap_or_else(|_| panic!("{query}: {v}")))
    }
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = v.get(p).unwrap_or_else(|| panic!("no {path:?} in {v:?}"));
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number"))
}

fn len(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_array).unwrap_or_else(|| panic!("no {key} list")).len() as f64
}

/// What the broker and dpfd say, and what Prometheus has of the same.
#[derive(Debug, PartialEq)]
struct Figures {
    registrations: f64,
    relays_opened: f64,
    relays_active: f64,
    bytes: [f64; 2],
    connects: f64,
    forwards: f64,
}

fn from_daemons(d: &Demo) -> (Figures, Value, Value) {
    let broker = release_bin("gcb-broker");
    let q = d.json("broker", &[broker.to_str().unwrap(), "query", "203.0.113.10:65432", "--json"]);
    let dpfd = release_bin("dpfd");
    let s = d.json("ga", &[dpfd.to_str().unwrap(), "status", "--json"]);
    let f = Figures {
        registrations: len(&q, "registrations"),
        relays_opened: num(&q, &["counters", "relays_opened"]),
        relays_active: len(&q, "relays"),
        bytes: [num(&q, &["bytes_relayed", "to_listener"]), num(&q, &["bytes_relayed", "to_connector"])],
        connects: num(&q, &["counters", "connects"]),
        forwards: len(&s, "forwards"),
    };
    (f, q, s)
}

fn from_prometheus(d: &Demo) -> Figures {
    let v = |q: &str| d.prom_value(q).unwrap_or_else(|| panic!("Prometheus has no {q}"));
    Figures {
        registrations: v("gcb_broker_registrations"),
        relays_opened: v("gcb_broker_relays_opened_total"),
        relays_active: v("gcb_broker_relays_active"),
        bytes: [
            v("gcb_broker_relayed_bytes_total{direction=\"to_listener\"}"),
            v("gcb_broker_relayed_bytes_total{direction=\"to_connector\"}"),
        ],
        connects: v("gcb_broker_connect_decision_seconds_count"),
        forwards: v("sum(dpfd_forwards)"),
    }
}

/// The help text of metric `name` in a scrape, if it is there.
fn help<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
}

/// Every numeric leaf of a JSON tree, by path.
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Obj(m) => {
            for (k, c) in m {
                path.push(k.clone());
                leaves(c, path, out);
                path.pop();
            }
        }
        Value::Num(_) => out.push(path.clone()),
        _ => {}
    }
}

#[test]
fn prometheus_sees_what_query_and_status_show() {
    require_root();
    assert!(have_command("prometheus") && have_command("promtool"), "prometheus is missing; .ci/run installs it");
    for b in ["libgcb.so", "gcb-broker", "dpfd", "pool-demo"] {
        assert!(release_bin(b).exists(), "{b} is missing: cargo build --release --workspace");
    }
    let hold = std::env::temp_dir().join(format!("gcb-metrics-hold-{}", std::process::id()));
    let _ = fs::remove_file(&hold);
    let mut c = Command::new(workspace_root().join("scripts/demo"));
    c.args(["--ci", "--prometheus", "--hold"]).arg(&hold);
    c.env("CARGO_TARGET_DIR", target_dir()).current_dir(workspace_root());
    let proc = Proc::spawn(c).expect("scripts/demo");
    let end = Instant::now() + Duration::from_secs(240);
    while !hold.exists() {
        if let Some(st) = proc.try_wait() {
            panic!("scripts/demo ended ({st}) before holding:\n{}", proc.stderr_text());
        }
        assert!(Instant::now() < end, "scripts/demo did not hold within 240 s:\n{}", proc.stderr_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let prefix = fs::read_to_string(&hold).unwrap().trim().to_string();
    let d = Demo { proc, hold, prefix };

    // Scraped during the pool, and the last scrapes equal the daemons'
    // own figures. Those may still move (a heartbeat, a probe), so the
    // figures count when they stand still around a scrape.
    let scrapes = d.prom_value("sum_over_time(up{job=\"gcb-broker\"}[10m])").unwrap_or(0.0);
    assert!(scrapes >= 2.0, "Prometheus scraped the broker {scrapes} times");
    assert!(d.prom_value("sum_over_time(up{job=\"dpfd\"}[10m])").unwrap_or(0.0) >= 2.0);
    let end = Instant::now() + Duration::from_secs(30);
    let (before, q, s) = loop {
        let (before, q, s) = from_daemons(&d);
        let asked = d.prom_value("vector(time())").unwrap();
        let scraped = |job: &str| d.prom_value(&format!("timestamp(up{{job=\"{job}\"}})")).unwrap_or(0.0);
        let wait = Instant::now() + Duration::from_secs(10);
        while (scraped("gcb-broker") <= asked || scraped("dpfd") <= asked) && Instant::now() < wait {
            std::thread::sleep(Duration::from_millis(100));
        }
        let seen = from_prometheus(&d);
        let (after, _, _) = from_daemons(&d);
        if before == after && seen == before {
            break (before, q, s);
        }
        assert!(Instant::now() < end, "Prometheus {seen:?}\nbroker and dpfd {before:?}, then {after:?}");
    };
    assert!(before.registrations > 0.0 && before.relays_opened > 0.0 && before.forwards > 0.0, "{before:?}");

    // Both outputs pass promtool, and carry every counter of query and
    // status, with help.
    let broker_text = d.run("broker", &["curl", "-sf", BROKER_METRICS]);
    let dpfd_text = d.run("broker", &["curl", "-sf", DPFD_METRICS]);
    for (what, text) in [("gcb-broker", &broker_text), ("dpfd", &dpfd_text)] {
        let file = write_tmp(what, text);
        let mut c = Command::new("sh");
        c.args(["-c", "promtool check metrics < \"$0\"", &file]);
        let out = run_with_timeout(c, LIMIT).expect("promtool");
        fs::remove_file(&file).unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics on {what}:\n{said}");
    }
    for name in q.get("counters").and_then(Value::as_object).expect("counters").keys() {
        let gauge = name.ends_with("_active") || name == "commands_in_flight";
        let metric = if gauge { format!("gcb_broker_{name}") } else { format!("gcb_broker_{name}_total") };
        let h = help(&broker_text, &metric).unwrap_or_else(|| panic!("query's {name} is not a metric ({metric})"));
        assert!(h.len() > 1, "{metric} has no help text");
    }
    let mut paths = Vec::new();
    for top in ["counters", "probes", "changes"] {
        leaves(s.get(top).expect(top), &mut vec![top.to_string()], &mut paths);
    }
    assert!(paths.len() > 30, "{paths:?}");
    for p in paths {
        let parts = if p[0] == "counters" { &p[1..] } else { &p[..] };
        // dpfd's rule for parts that are no Prometheus names (pcp.NO_RESOURCES).
        let prom = |part: &String| -> String {
            part.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
        };
        let metric = format!("dpfd_{}_total", parts.iter().map(prom).collect::<Vec<_>>().join("_"));
        let h = help(&dpfd_text, &metric).unwrap_or_else(|| panic!("status's {p:?} is not a metric ({metric})"));
        assert!(h.len() > 1, "{metric} has no help text");
    }

    // The dashboard's queries run, on metrics the daemons have.
    let dash = fs::read_to_string(workspace_root().join("deploy/grafana-dashboard.json")).unwrap();
    let dash = json::parse(&dash).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dash.get("panels").and_then(Value::as_array).unwrap() {
        for t in panel.get("targets").and_then(Value::as_array).unwrap_or(&[]) {
            exprs.push(t.get("expr").and_then(Value::as_str).unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in &exprs {
        let q = e.replace("$__rate_interval", "1m").replace("$broker", ".*").replace("$dpfd", ".*");
        d.prom(&q);
        for name in q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if (name.starts_with("gcb_broker_") || name.starts_with("dpfd_")) && !name.ends_with('_') {
                let known = broker_text.lines().chain(dpfd_text.lines()).any(|l| l.starts_with(name));
                assert!(known, "the dashboard's {name} is no metric of the daemons ({e})");
            }
        }
    }
    eprintln!("prometheus: {before:?} after {scrapes} scrapes of the broker; {} dashboard queries ran", exprs.len());
    drop(d);
}

fn write_tmp(what: &str, text: &str) -> String {
    let p = std::env::temp_dir().join(format!("gcb-metrics-{what}-{}.txt", std::process::id()));
    fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}
