//! What serving `/metrics` costs the daemons (issue 16): gcb-broker and dpfd
//! run with `--metrics-listen`, idle, and their CPU time is measured over
//! equal windows without a scraper, with one scraping both every second (a
//! curl loop on the broker host, as often as a Prometheus at a 1 s
//! interval), and without again; the two unscraped windows average out
//! drift. CPU time is the kernel's per-task run time in nanoseconds
//! (/proc/PID/schedstat), since a scrape costs far less than a clock tick.

use crate::ctx::{self, Ctx, BROKER_IP, BROKER_PORT, GA_PRIVATE_IP, GA_PUBLIC_IP};
use crate::procfs;
use crate::results::Results;
use std::time::Duration;
use testbed::{Proc, TestBed};

const BROKER_METRICS: &str = "203.0.113.10:9465";
const DPFD_METRICS: &str = "203.0.113.1:9466";

pub fn run(ctx: &Ctx, res: &mut Results) -> Result<(), String> {
    ctx.need(&ctx.paths.broker)?;
    ctx.need(&ctx.paths.dpfd)?;
    let bed = TestBed::up()?;
    let scratch = ctx::scratch_dir(&bed, "metrics")?;
    let r = measure(ctx, &bed, &scratch, res);
    drop(bed);
    ctx::scratch_done(&scratch);
    r
}

fn spawn(
    bed: &TestBed,
    host: &str,
    bin: &std::path::Path,
    args: &[&str],
    what: &str,
) -> Result<Proc, String> {
    let mut c = bed.cmd(host, bin);
    c.args(args);
    let p = bed.spawn_cmd(c)?;
    ctx::expect_alive(&p, what, Duration::from_millis(500))
        .map_err(|e| format!("{e} (a {what} without --metrics-listen cannot be measured here)"))?;
    Ok(p)
}

fn measure(ctx: &Ctx, bed: &TestBed, scratch: &str, res: &mut Results) -> Result<(), String> {
    let listen = format!("{BROKER_IP}:{BROKER_PORT}");
    let broker = spawn(
        bed,
        "broker",
        &ctx.paths.broker,
        &[
            "--listen",
            &listen,
            "--port-range",
            "20000-20999",
            "--metrics-listen",
            BROKER_METRICS,
        ],
        "gcb-broker",
    )?;
    let mirror = format!("{scratch}/dpfd.mirror");
    let dpfd = spawn(
        bed,
        "ga",
        &ctx.paths.dpfd,
        &[
            "--listen",
            GA_PRIVATE_IP,
            "--public-ip",
            GA_PUBLIC_IP,
            "--port-range",
            "40000-40999",
            "--mirror",
            &mirror,
            "--nft-table",
            "gcbbenchm",
            "--metrics-listen",
            DPFD_METRICS,
        ],
        "dpfd",
    )?;
    let pids = [
        ("gcb-broker", procfs::exec_pid(broker.pid(), "gcb-broker")),
        ("dpfd", procfs::exec_pid(dpfd.pid(), "dpfd")),
    ];
    // What one scrape is, in bytes.
    for (name, url) in [("gcb-broker", BROKER_METRICS), ("dpfd", DPFD_METRICS)] {
        let out = ctx::sh(
            bed,
            "broker",
            &[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                &format!("http://{url}/metrics"),
            ],
        )?;
        res.int(
            &format!("metrics.{name}.scrape_bytes"),
            out.trim().parse().unwrap_or(0),
        );
    }

    let window = ctx.pick(10u64, 30);
    let cpu = |pid: u32| procfs::cpu_ns(pid).ok_or_else(|| format!("no /proc/{pid}/schedstat"));
    let mut idle = [0u64; 2];
    let mut scraped = [0u64; 2];
    let mut scrapes = 0u64;
    for phase in ["idle", "scraped", "idle"] {
        ctx::check_stop()?;
        eprintln!("bench: metrics: {window} s {phase}");
        let before = [cpu(pids[0].1)?, cpu(pids[1].1)?];
        if phase == "idle" {
            std::thread::sleep(Duration::from_secs(window));
        } else {
            let script = format!(
                "i=0; end=$(( $(date +%s) + {window} )); while [ $(date +%s) -lt $end ]; do \
                 curl -sf -o /dev/null http://{BROKER_METRICS}/metrics && curl -sf -o /dev/null http://{DPFD_METRICS}/metrics \
                 && i=$((i+1)); sleep 1; done; echo SCRAPES $i"
            );
            let out = bed.run(
                "broker",
                &["sh", "-c", &script],
                Duration::from_secs(window + 30),
            )?;
            let out = String::from_utf8_lossy(&out.stdout);
            scrapes = out
                .lines()
                .find_map(|l| l.strip_prefix("SCRAPES ")?.trim().parse().ok())
                .ok_or_else(|| format!("the scraper said {out:?}"))?;
        }
        let after = [cpu(pids[0].1)?, cpu(pids[1].1)?];
        let sums = if phase == "idle" {
            &mut idle
        } else {
            &mut scraped
        };
        for i in 0..2 {
            sums[i] += after[i].saturating_sub(before[i]);
        }
    }
    res.int("metrics.window_s", window as i64);
    res.int("metrics.scrapes", scrapes as i64);
    for (i, (name, _)) in pids.iter().enumerate() {
        // Milliseconds of CPU per second of wall time.
        let idle_ms = idle[i] as f64 / 2.0 / 1e6 / window as f64;
        let scraped_ms = scraped[i] as f64 / 1e6 / window as f64;
        res.num(&format!("metrics.{name}.cpu_ms_per_s_idle"), idle_ms);
        res.num(&format!("metrics.{name}.cpu_ms_per_s_scraped"), scraped_ms);
        if scrapes > 0 {
            let per = (scraped_ms - idle_ms) * window as f64 / scrapes as f64;
            res.num(&format!("metrics.{name}.cpu_ms_per_scrape"), per.max(0.0));
        }
    }
    Ok(())
}
