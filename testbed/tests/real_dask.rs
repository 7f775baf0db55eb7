//! Dask distributed across realms A and B (issue 12, "Real programs"): a real
//! distributed-computing framework from PyPI whose workers connect to each
//! other, unmodified.
//!
//! * The scheduler runs on pub, plain: a public host needs no GCB, and the
//!   issue's failure is on the workers' side; keeping the scheduler off the
//!   shim makes every brokered path in this test one that a worker's
//!   listener serves (scheduler to worker and nanny: a plain public client
//!   through the broker's relay; worker to worker: realm B to realm A and
//!   back, relayed between two realms).
//! * One worker on a1 and one on b1, each `dask worker --worker-port PORT`
//!   with its nanny (the default) under `scripts/gcb-run`.
//!   The nanny spawns the worker process (multiprocessing, spawn context),
//!   which is the child-spawning the issue reports as fatal; both the nanny
//!   and the worker must register, and the worker must advertise its proxy
//!   address ("Start worker at", and the scheduler's view).
//! * A plain client on pub runs `spawn_support/dask_job.py`: 4 MiB scattered
//!   to each worker, each digest computed on the other worker (pinned with
//!   `workers=`, `allow_other_workers=False`) and one digest of both, so the
//!   job cannot finish without worker-to-worker transfers both ways. Results
//!   are checked exactly against the client's own digests, each worker's own
//!   transfer log must show the other's input fetched from the other worker
//!   (4 MiB each way), and the scheduler calls both nannies. The broker lists the four
//!   registrations with the proxy addresses they got at the start.
//!
//! Needs root, `cargo build --release`, and the test venv that `.ci/run`
//! makes (`GCB_TEST_VENV`, default `~/.cache/gcb-dpf/test-venv`, pinned in
//! `.ci/test-venv.txt`); it fails, never skips, when the venv is missing.

#[path = "spawn_support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::script;
use testbed::real::{Mode, RealBed};
use testbed::Proc;

const SCHEDULER: &str = "tcp://203.0.113.20:8786";
/// Starting a Dask process means importing a lot of Python on a loaded machine.
const START: Duration = Duration::from_secs(60);
/// The job's own timeouts are 60 to 90 s per stage.
const JOB: Duration = Duration::from_secs(150);

/// The venv with Dask: `GCB_TEST_VENV`, else where `.ci/run` puts it.
fn venv() -> PathBuf {
    let v = std::env::var_os("GCB_TEST_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/gcb-dpf/test-venv"));
    assert!(
        v.join("bin/dask").exists(),
        "no Dask in the test venv {}: run .ci/run, which makes it \
         (python3 -m venv DIR && DIR/bin/pip install -r .ci/test-venv.txt), or set GCB_TEST_VENV",
        v.display()
    );
    v
}

/// The last `n` lines of a long log.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn logs(r: &RealBed, procs: &[(&str, &Proc)]) -> String {
    let mut s = String::new();
    for (name, p) in procs {
        s += &format!("--- {name} stderr (tail):\n{}\n", tail(&p.stderr_text(), 40));
    }
    s + &format!("--- broker stderr (tail):\n{}", tail(&r.daemon.stderr_text(), 40))
}

/// Starts a worker with its nanny on `host` under the shim.
fn start_worker(r: &RealBed, dask: &str, host: &str, name: &str, port: u16) -> Proc {
    let dir = r.file(name);
    std::fs::create_dir_all(&dir).expect("local directory");
    // `--worker-port`, not `--listen-address`: with a listen address and no
    // contact address, Dask advertises the listen address as given (0.0.0.0)
    // without asking its socket; with a port, it asks `getsockname`.
    let worker_port = port.to_string();
    let nanny_port = (port + 10_000).to_string();
    let args = [
        dask, "worker", SCHEDULER, "--worker-port", &worker_port, "--nanny-port", &nanny_port, "--nthreads", "1",
        "--name", name, "--no-dashboard", "--death-timeout", "120", "--local-directory", dir.to_str().unwrap(),
    ];
    r.spawn(host, true, &args)
}

/// Waits until the worker on `host` registered its nanny's and its own
/// listener and advertised the latter's proxy address; returns the worker's
/// and the nanny's proxy addresses.
fn worker_up(r: &RealBed, p: &Proc, host: &str, name: &str, port: u16) -> (String, String) {
    let ip = r.bed.ip(host);
    let nanny = r.registered(p, "tcp", &format!("{ip}:{}", port + 10_000));
    let public = r.registered(p, "tcp", &format!("{ip}:{port}"));
    let start = p.wait_stderr("Start worker at:", START).unwrap_or_else(|e| panic!("{e}"));
    let said = start.lines().find_map(|l| l.split("Start worker at:").nth(1)).unwrap_or_default().trim().to_string();
    assert_eq!(said, format!("tcp://{public}"), "{name} must advertise its proxy address\n{}", logs(r, &[(name, p)]));
    (public, nanny)
}

#[test]
fn dask_workers_in_two_realms_transfer_to_each_other() {
    let venv = venv();
    let dask = venv.join("bin/dask").to_str().unwrap().to_string();
    let python = venv.join("bin/python").to_str().unwrap().to_string();
    let r = RealBed::up(Mode::Gcb);
    let t0 = Instant::now();
    let sched = r.spawn("pub", false, &[&dask, "scheduler", "--host", "203.0.113.20", "--port", "8786", "--no-dashboard"]);
    sched.wait_stderr(&format!("Scheduler at:   {SCHEDULER}"), START).unwrap_or_else(|e| panic!("{e}"));
    let wa = start_worker(&r, &dask, "a1", "wa", 9001);
    let wb = start_worker(&r, &dask, "b1", "wb", 9002);
    let (a_public, a_nanny) = worker_up(&r, &wa, "a1", "wa", 9001);
    let (b_public, b_nanny) = worker_up(&r, &wb, "b1", "wb", 9002);
    let started = t0.elapsed();
    let all = [("scheduler", &sched), ("worker a1", &wa), ("worker b1", &wb)];

    let t1 = Instant::now();
    let mut c = r.cmd("pub", &python, false);
    c.args([&script("dask_job.py"), SCHEDULER, "wa", "wb"]);
    let out = testbed::run_with_timeout(c, JOB).unwrap_or_else(|e| panic!("{e}\n{}", logs(&r, &all)));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let failure = || format!("job stdout:\n{text}\njob stderr (tail):\n{}\n{}", tail(&String::from_utf8_lossy(&out.stderr), 30), logs(&r, &all));
    assert!(out.status.success(), "the Dask job failed ({}):\n{}", out.status, failure());
    let field = |k: &str| -> Vec<String> { text.lines().filter_map(|l| l.strip_prefix(k)).map(str::to_string).collect() };

    let (wa_addr, wb_addr) = (format!("tcp://{a_public}"), format!("tcp://{b_public}"));
    assert_eq!(field("WORKER "), [format!("wa {wa_addr}"), format!("wb {wb_addr}")], "the scheduler's view\n{}", failure());
    let expect = field("EXPECT ");
    assert_eq!(expect.len(), 3, "{}", failure());
    assert_eq!(field("RESULT "), expect, "results differ\n{}", failure());
    let mut fetched: Vec<String> = field("FETCHED ")
        .iter()
        .map(|f| {
            let (head, bytes) = f.rsplit_once(' ').unwrap_or((f, ""));
            assert!(bytes.parse::<u64>().is_ok_and(|b| b >= 4 << 20), "a whole input per transfer: {f}\n{}", failure());
            head.to_string()
        })
        .collect();
    fetched.sort();
    let mut want = [format!("{wa_addr} from {wb_addr} b"), format!("{wb_addr} from {wa_addr} a")];
    want.sort();
    assert_eq!(fetched, want, "each worker fetched the other's input from it\n{}", failure());
    let ran = [format!("a-on-b {wb_addr}"), format!("b-on-a {wa_addr}"), format!("both-on-a {wa_addr}")];
    assert_eq!(field("RAN "), ran, "{}", failure());
    let nannies = field("NANNY ");
    assert_eq!(nannies.len(), 2, "the scheduler called both nannies\n{}", failure());
    let job = t1.elapsed();

    let regs = r.registrations();
    for (public, local) in [(&a_public, "192.0.2.10:9001"), (&a_nanny, "192.0.2.10:19001"), (&b_public, "198.51.100.10:9002"), (&b_nanny, "198.51.100.10:19002")] {
        assert!(
            regs.iter().any(|(p, proxy, l)| p == "tcp" && proxy == public && l == local),
            "the broker no longer lists {public} for {local}: {regs:?}\n{}",
            failure()
        );
    }
    let seconds = field("SECONDS ").join(", ");
    eprintln!("dask: workers {wa_addr} (a1), {wb_addr} (b1); nannies {a_nanny}, {b_nanny}");
    eprintln!("dask: cluster up in {} ms, job in {} ms ({seconds} s); results equal", started.as_millis(), job.as_millis());
    drop((wa, wb, sched));
    r.down();
}
