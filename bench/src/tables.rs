//! The paper's Tables 1-3: connection and data time for three patterns, each
//! configuration, TCP and UDP, measured by the c-tests echo-client.
//!
//! All servers of a pattern are started first, then the clients run in small
//! blocks that take turns (regular, DPF, GCB..., then again), so slow drift of
//! the machine hits every configuration alike and the ratios stay honest. Each
//! cell's runs are pooled over its blocks. A cell whose setup or client fails
//! is reported with the reason, never with numbers, and the others go on.

use crate::ctx::{self, Ctx, Shim, BROKER_IP, BROKER_PORT, GA_PRIVATE_IP, GA_PUBLIC_IP};
use crate::paper::{Config, Pattern, PATTERNS, PROTOS};
use crate::results::Results;
use crate::stats::{parse_echo, Stat};
use std::time::Duration;
use testbed::{Proc, TestBed};

/// The payload, chosen like the paper's: TCP data time is dominated by moving
/// bytes (the paper's ~20 ms was some hundreds of KB over 2003 Ethernet), UDP
/// is stop-and-wait small datagrams.
pub const TCP_BYTES: u64 = 64 * 1024;
pub const TCP_ROUNDS: u32 = 4;
pub const UDP_BYTES: u64 = 1024;
pub const UDP_ROUNDS: u32 = 10;

const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The shim each side runs under: (server, client).
fn shims(p: Pattern, c: Config) -> (Shim, Shim) {
    match (p, c) {
        (_, Config::Regular) => (Shim::None, Shim::None),
        (Pattern::PrivateToPublic, Config::Dpf) => (Shim::None, Shim::Dpf),
        (Pattern::PrivateToPublic, Config::GcbRegularPublic) => (Shim::None, Shim::Gcb),
        (_, Config::Dpf) => (Shim::Dpf, Shim::None),
        (_, Config::GcbRegularPublic) => (Shim::Gcb, Shim::None),
        (_, Config::GcbGcbPublic) | (_, Config::Gcb) => (Shim::Gcb, Shim::Gcb),
    }
}

/// One (configuration, protocol) cell of one table while it is being measured.
struct Cell {
    config: Config,
    proto: &'static str,
    port: u16,
    server: Option<Proc>,
    dial: Option<String>,
    conn: Vec<f64>,
    data: Vec<f64>,
    failed_runs: usize,
    lossy: usize,
    err: Option<String>,
}

/// Daemons shared by all tables; None if running, Some(reason) if not.
struct Daemons {
    broker: Option<String>,
    dpfd: Option<String>,
}

pub fn run(ctx: &Ctx, res: &mut Results) -> Result<(), String> {
    let bed = TestBed::up()?;
    // Runs are cheap on the test bed (a TCP run is ~1 ms), so even --quick
    // takes enough for a stable mean; the full run has the paper's "many".
    let runs = ctx.pick(100, 500);
    let blocks = ctx.pick(5, 20);
    res.int("meta.tables.runs_per_cell", runs as i64);
    res.int("meta.tables.blocks", blocks as i64);
    res.text(
        "meta.tables.payload",
        format!(
            "TCP: {TCP_BYTES} bytes echoed {TCP_ROUNDS} times per run; UDP: {UDP_BYTES}-byte datagrams, {UDP_ROUNDS} stop-and-wait echoes per run"
        ),
    );

    // Keep the daemon processes alive until every pattern has run.
    let mut keep: Vec<Proc> = Vec::new();
    let broker = start_broker(ctx, &bed).map(|p| keep.push(p)).err();
    let scratch = ctx::scratch_dir(&bed, "tables")?;
    let mirror = format!("{scratch}/dpfd.mirror");
    let dpfd = start_dpfd(ctx, &bed, &mirror).map(|p| keep.push(p)).err();
    let daemons = Daemons { broker, dpfd };

    let mut outcome = Ok(());
    for (pi, p) in PATTERNS.iter().enumerate() {
        if let Err(e) = run_pattern(ctx, &bed, *p, pi, runs, blocks, &daemons, res) {
            outcome = Err(e);
            break;
        }
    }
    drop(keep);
    drop(bed);
    ctx::scratch_done(&scratch);
    outcome
}

fn start_broker(ctx: &Ctx, bed: &TestBed) -> Result<Proc, String> {
    // A cell's client makes hundreds of brokered connects a second from one
    // realm (a fresh socket per run), past the default per-IP rate limit;
    // the cells measure the protocol, not that protection (whose drops cost
    // a run a 50 ms retransmission), as the nbconnect part does too.
    start_broker_with(ctx, bed, &["--rate-limit", "0"])
}

/// The tables' broker, with `extra` flags after the usual ones.
pub(crate) fn start_broker_with(ctx: &Ctx, bed: &TestBed, extra: &[&str]) -> Result<Proc, String> {
    ctx.need(&ctx.paths.broker)?;
    let listen = format!("{BROKER_IP}:{BROKER_PORT}");
    let args = [
        "--listen",
        &listen,
        "--public-ip",
        BROKER_IP,
        "--port-range",
        "20000-20999",
    ];
    let mut c = bed.cmd("broker", &ctx.paths.broker);
    c.args(args).args(extra);
    let p = bed.spawn_cmd(c)?;
    ctx::expect_alive(&p, "gcb-broker", Duration::from_millis(500))?;
    Ok(p)
}

fn start_dpfd(ctx: &Ctx, bed: &TestBed, mirror: &str) -> Result<Proc, String> {
    ctx.need(&ctx.paths.dpfd)?;
    let args = [
        "--listen",
        GA_PRIVATE_IP,
        "--public-ip",
        GA_PUBLIC_IP,
        "--port-range",
        "40000-40999",
        "--mirror",
        mirror,
    ];
    let mut c = bed.cmd("ga", &ctx.paths.dpfd);
    c.args(args);
    let p = bed.spawn_cmd(c)?;
    ctx::expect_alive(&p, "dpfd", Duration::from_millis(500))?;
    Ok(p)
}

#[allow(clippy::too_many_arguments)]
fn run_pattern(
    ctx: &Ctx,
    bed: &TestBed,
    p: Pattern,
    pi: usize,
    runs: usize,
    blocks: usize,
    daemons: &Daemons,
    res: &mut Results,
) -> Result<(), String> {
    eprintln!("bench: tables: {}", p.key());
    let mut cells: Vec<Cell> = Vec::new();
    for (ci, c) in p.configs().iter().enumerate() {
        for (k, proto) in PROTOS.iter().enumerate() {
            cells.push(Cell {
                config: *c,
                proto,
                port: 7000 + (pi * 100 + ci * 10 + k) as u16,
                server: None,
                dial: None,
                conn: Vec::new(),
                data: Vec::new(),
                failed_runs: 0,
                lossy: 0,
                err: None,
            });
        }
    }

    // Start every server first, so their (bounded) startups overlap.
    for cell in cells.iter_mut() {
        cell.err = start_server(ctx, bed, p, cell, daemons).err();
    }
    for cell in cells.iter_mut().filter(|c| c.err.is_none()) {
        match server_address(p, cell) {
            Ok(a) => cell.dial = Some(a),
            Err(e) => cell.err = Some(e),
        }
    }

    let per_block = runs.div_ceil(blocks);
    for b in 0..blocks {
        ctx::check_stop()?;
        eprintln!("bench: tables: {} block {}/{blocks}", p.key(), b + 1);
        let n = cells.len();
        // Rotate the order each block so no configuration always runs first.
        for i in 0..n {
            let cell = &mut cells[(i + b) % n];
            if cell.err.is_none() {
                run_block(ctx, bed, p, cell, per_block)?;
            }
        }
    }

    for cell in &cells {
        record(res, p, cell);
    }
    record_ratios(res, p);
    Ok(())
}

fn start_server(
    ctx: &Ctx,
    bed: &TestBed,
    p: Pattern,
    cell: &mut Cell,
    d: &Daemons,
) -> Result<(), String> {
    let (server_shim, client_shim) = shims(p, cell.config);
    for shim in [server_shim, client_shim] {
        let why = match shim {
            Shim::Gcb => d.broker.as_ref(),
            Shim::Dpf => d.dpfd.as_ref(),
            Shim::None => None,
        };
        if let Some(why) = why {
            return Err(why.clone());
        }
        if shim != Shim::None {
            ctx.need(&ctx.paths.libgcb)?;
        }
    }
    let host = p.server_host();
    if server_shim == Shim::None && host == "a1" {
        ctx::static_forward(bed, cell.proto, cell.port)?;
    }
    let port = cell.port.to_string();
    let args = ["--proto", cell.proto, "--port", &port, "--mode", "epoll"];
    let cmd = ctx::prog(ctx, bed, host, server_shim, &ctx.paths.echo_server, &args);
    cell.server = Some(bed.spawn_cmd(cmd)?);
    Ok(())
}

/// The address the client dials: what the server advertises under GCB or DPF
/// (checked to be a broker proxy or GA public address, so an unregistered
/// socket is reported instead of silently measured), else the pattern's
/// public path to the plain server.
fn server_address(p: Pattern, cell: &Cell) -> Result<String, String> {
    let server = cell.server.as_ref().ok_or("no server")?;
    let listen = ctx::wait_line(server, &format!("LISTEN {} ", cell.proto), LISTEN_TIMEOUT)
        .map_err(|e| format!("echo-server did not listen: {e}"))?;
    let (ip, port) = listen
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| format!("bad LISTEN line {listen:?}"))?;
    let (server_shim, _) = shims(p, cell.config);
    let want = match server_shim {
        Shim::Gcb => BROKER_IP,
        Shim::Dpf => GA_PUBLIC_IP,
        Shim::None => {
            let ip = if p.server_host() == "a1" {
                GA_PUBLIC_IP
            } else {
                "203.0.113.20"
            };
            return Ok(format!("{ip}:{port}"));
        }
    };
    if ip != want {
        let what = if server_shim == Shim::Gcb {
            "a proxy address on the broker"
        } else {
            "a public address of GA"
        };
        return Err(format!(
            "the server's socket was not registered: it reports {listen}, not {what} {want}"
        ));
    }
    Ok(listen.trim().to_string())
}

fn run_block(
    ctx: &Ctx,
    bed: &TestBed,
    p: Pattern,
    cell: &mut Cell,
    runs: usize,
) -> Result<(), String> {
    let dial = cell.dial.clone().unwrap_or_default();
    let runs_s = runs.to_string();
    let (bytes, rounds, timeout_ms) = if cell.proto == "tcp" {
        (TCP_BYTES, TCP_ROUNDS, 5000)
    } else {
        (UDP_BYTES, UDP_ROUNDS, 2000)
    };
    let (bytes, rounds, timeout_ms) = (
        bytes.to_string(),
        rounds.to_string(),
        timeout_ms.to_string(),
    );
    let args = [
        "--proto",
        cell.proto,
        "--connect",
        &dial,
        "--bytes",
        &bytes,
        "--rounds",
        &rounds,
        "--runs",
        &runs_s,
        "--timeout-ms",
        &timeout_ms,
    ];
    let (_, client_shim) = shims(p, cell.config);
    let mut cmd = ctx::prog(
        ctx,
        bed,
        p.client_host(),
        client_shim,
        &ctx.paths.echo_client,
        &args,
    );
    if p == Pattern::PrivateToPrivate && client_shim == Shim::Gcb {
        // The paper's Table 3 measures GCB's relay, and so does this cell,
        // comparable with it and with earlier runs; the `punch` part measures
        // the same pair with hole punching beside it.
        cmd.env("GCB_PUNCH", "0");
    }
    let limit = Duration::from_secs(30 + 2 * runs as u64);
    let fin = match ctx::run_in(bed, cmd, limit) {
        Ok(f) => f,
        Err(e) => {
            ctx::check_stop()?;
            cell.err = Some(format!("echo-client: {e}"));
            return Ok(());
        }
    };
    let r = parse_echo(&fin.stdout);
    let ok = r.conn_us.len();
    cell.conn.extend(r.conn_us);
    cell.data.extend(r.data_us);
    cell.lossy += r.lossy;
    cell.failed_runs += runs.saturating_sub(ok + r.lossy);
    if !fin.success && ok == 0 {
        // Nothing measured: the configuration does not work (yet); stop trying.
        let why = r.failure.unwrap_or_else(|| fin.why());
        cell.err = Some(format!("echo-client failed: {why}"));
    }
    Ok(())
}

fn cell_path(p: Pattern, c: Config, proto: &str) -> String {
    format!("tables.{}.{}.{}", p.key(), c.key(), proto)
}

fn record(res: &mut Results, p: Pattern, cell: &Cell) {
    let path = cell_path(p, cell.config, cell.proto);
    match (Stat::of(&cell.conn), Stat::of(&cell.data)) {
        (Some(c), Some(d)) => {
            res.num(&format!("{path}.conn_us.mean"), c.mean);
            res.num(&format!("{path}.conn_us.sd"), c.sd);
            res.num(&format!("{path}.data_us.mean"), d.mean);
            res.num(&format!("{path}.data_us.sd"), d.sd);
            res.int(&format!("{path}.runs"), c.n as i64);
            if cell.failed_runs > 0 {
                res.int(&format!("{path}.failed_runs"), cell.failed_runs as i64);
            }
            if cell.lossy > 0 {
                res.int(&format!("{path}.lossy_runs"), cell.lossy as i64);
            }
            if let Some(e) = &cell.err {
                res.text(&format!("{path}.stopped_early"), e.clone());
            }
        }
        _ => res.error(
            &path,
            cell.err
                .clone()
                .unwrap_or_else(|| "no run succeeded".into()),
        ),
    }
}

/// Every cell as a ratio to the regular cell of the same pattern and protocol.
fn record_ratios(res: &mut Results, p: Pattern) {
    for c in p.configs() {
        for proto in PROTOS {
            for m in ["conn_us", "data_us"] {
                let base = res.get(&format!(
                    "{}.{m}.mean",
                    cell_path(p, Config::Regular, proto)
                ));
                let this = res.get(&format!("{}.{m}.mean", cell_path(p, *c, proto)));
                if let (Some(b), Some(t)) = (base, this) {
                    if b > 0.0 {
                        let key =
                            format!("table_ratios.{}.{}.{proto}.{}", p.key(), c.key(), &m[..4]);
                        res.num(&key, t / b);
                    }
                }
            }
        }
    }
}
