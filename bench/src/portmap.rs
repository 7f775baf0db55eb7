//! The time to map one port, from the first request to the answer that
//! names the public address, measured from a1 in-process (`gcb-bench
//! map-driver`) so no process start is counted:
//!
//! * PCP MAP through `proto::portmap` (the client the shim will use), on
//!   dpfd and on miniupnpd (on GA, in turn: both want UDP 5351 there);
//! * dpfd's own protocol, a DPF Forward, beside it.
//!
//! Maps are sequential, each of a new local port, and each is deleted
//! before the next (the delete is not timed), so every figure is one round
//! trip plus the gateway's work for one new mapping (dpfd: mirror fsync and
//! one nft transaction; miniupnpd: its netlink rules).

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use crate::ctx::{self, Ctx, A1_IP, DPFD_PORT, GA_PRIVATE_IP, GA_PUBLIC_IP};
use crate::results::Results;
use proto::portmap::{Config, Event, MapClient};
use proto::{dpf, Proto};
use testbed::{miniupnpd, TestBed};

const FIRST_PORT: u16 = 21000;

pub fn run(ctx: &Ctx, res: &mut Results) -> Result<(), String> {
    ctx.need(&ctx.paths.dpfd)?;
    let bed = TestBed::up()?;
    let scratch = ctx::scratch_dir(&bed, "portmap")?;
    let r = measure(ctx, &bed, &scratch, res);
    drop(bed);
    ctx::scratch_done(&scratch);
    r
}

fn driver(ctx: &Ctx, bed: &TestBed, via: &str, count: u32) -> Result<Vec<f64>, String> {
    let n = count.to_string();
    let args = ["map-driver", "--gateway", GA_PRIVATE_IP, "--local-ip", A1_IP, "--via", via, "--count", &n];
    let out = bed.run("a1", &[ctx.paths.bench.to_str().unwrap_or_default()].iter().copied().chain(args).collect::<Vec<_>>(), Duration::from_secs(120))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("MAPTIMES "))
        .ok_or_else(|| format!("map-driver {via}: {}{}", text, String::from_utf8_lossy(&out.stderr)))?;
    Ok(line.split_whitespace().filter_map(|v| v.parse().ok()).collect())
}

fn record(res: &mut Results, key: &str, mut us: Vec<f64>) {
    if us.is_empty() {
        res.error(key, "no sample");
        return;
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    res.num(&format!("{key}.p50_us"), at(0.5));
    res.num(&format!("{key}.p90_us"), at(0.9));
    res.int(&format!("{key}.n"), us.len() as i64);
}

fn measure(ctx: &Ctx, bed: &TestBed, scratch: &str, res: &mut Results) -> Result<(), String> {
    let count = ctx.pick(20, 200);
    let mirror = format!("{scratch}/dpfd.mirror");
    let args = [
        "--listen", GA_PRIVATE_IP, "--public-ip", GA_PUBLIC_IP, "--port-range", "40000-40999",
        "--mirror", &mirror, "--rate-limit", "0",
    ];
    let mut c = bed.cmd("ga", &ctx.paths.dpfd);
    c.args(args);
    let dpfd = bed.spawn_cmd(c)?;
    ctx::expect_alive(&dpfd, "dpfd", Duration::from_millis(500))?;
    match driver(ctx, bed, "pcp", count) {
        Ok(v) => record(res, "portmap.pcp_dpfd", v),
        Err(e) => res.error("portmap.pcp_dpfd", e),
    }
    match driver(ctx, bed, "dpf", count) {
        Ok(v) => record(res, "portmap.dpf_dpfd", v),
        Err(e) => res.error("portmap.dpf_dpfd", e),
    }
    dpfd.terminate();
    if !testbed::have_command("miniupnpd") {
        res.error("portmap.pcp_miniupnpd", "miniupnpd is not installed (Debian: miniupnpd-nftables)");
        return Ok(());
    }
    let dir = std::path::Path::new(scratch);
    let gw = miniupnpd::start(bed, dir, &miniupnpd::Options::default(), Duration::from_secs(20));
    match driver(ctx, bed, "pcp", count) {
        Ok(v) => record(res, "portmap.pcp_miniupnpd", v),
        Err(e) => res.error("portmap.pcp_miniupnpd", e),
    }
    gw.terminate();
    Ok(())
}

/// `gcb-bench map-driver`: maps `count` ports one after another through
/// `via` (pcp or dpf) and prints `MAPTIMES us us ...`.
pub fn map_driver(gateway: Ipv4Addr, local_ip: Ipv4Addr, via: &str, count: u32) -> Result<(), String> {
    let mut times = Vec::new();
    let mgmt = TcpListener::bind((local_ip, 0)).map_err(|e| format!("mgmt socket: {e}"))?;
    let mgmt_port = mgmt.local_addr().map_err(|e| e.to_string())?.port();
    for i in 0..count {
        let local = SocketAddrV4::new(local_ip, FIRST_PORT + i as u16);
        let t = match via {
            "pcp" => pcp_once(gateway, local, i)?,
            "dpf" => dpf_once(gateway, local, mgmt_port, u64::from(i))?,
            other => return Err(format!("--via {other:?}: pcp or dpf")),
        };
        times.push(t.as_secs_f64() * 1e6);
    }
    let list: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    println!("MAPTIMES {}", list.join(" "));
    Ok(())
}

fn pcp_once(gateway: Ipv4Addr, local: SocketAddrV4, i: u32) -> Result<Duration, String> {
    let sock = UdpSocket::bind(SocketAddrV4::new(*local.ip(), 0)).map_err(|e| e.to_string())?;
    sock.connect((gateway, proto::natpmp::SERVER_PORT)).map_err(|e| e.to_string())?;
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&i.to_be_bytes());
    nonce[4..8].copy_from_slice(&std::process::id().to_be_bytes());
    let mut client = MapClient::new(Config::new(Proto::Tcp, local, nonce, u64::from(i)));
    let started = Instant::now();
    let mut out = client.start(started);
    let mut mapped = None;
    let mut buf = [0u8; 1500];
    loop {
        for d in &out.send {
            let _ = sock.send(d);
        }
        for e in &out.events {
            match e {
                Event::Mapped { .. } if mapped.is_none() => {
                    mapped = Some(started.elapsed());
                }
                Event::Deleted => return mapped.ok_or_else(|| "deleted before mapped".to_string()),
                Event::Refused { code, .. } => return Err(format!("refused: {code}")),
                Event::GaveUp => return Err("no answer".into()),
                _ => {}
            }
        }
        if mapped.is_some() && out.events.iter().any(|e| matches!(e, Event::Mapped { .. })) {
            out = client.delete(Instant::now());
            continue;
        }
        let wait = client
            .next_deadline()
            .map_or(Duration::from_millis(100), |d| d.saturating_duration_since(Instant::now()));
        sock.set_read_timeout(Some(wait.max(Duration::from_millis(1)))).map_err(|e| e.to_string())?;
        out = match sock.recv(&mut buf) {
            Ok(n) => client.on_datagram(&buf[..n], Instant::now()),
            Err(_) => client.poll_timeout(Instant::now()),
        };
    }
}

fn dpf_exchange(sock: &UdpSocket, msg: &dpf::Message, id: u64) -> Result<dpf::Message, String> {
    let bytes = dpf::encode(msg, id).map_err(|e| format!("{e:?}"))?;
    let mut buf = [0u8; 1500];
    for _ in 0..5 {
        sock.send(&bytes).map_err(|e| e.to_string())?;
        if let Ok(n) = sock.recv(&mut buf) {
            if let Ok((h, m)) = dpf::decode(&buf[..n]) {
                if h.request_id == id {
                    return Ok(m);
                }
            }
        }
    }
    Err("no answer from dpfd".into())
}

fn dpf_once(gateway: Ipv4Addr, local: SocketAddrV4, mgmt_port: u16, i: u64) -> Result<Duration, String> {
    let sock = UdpSocket::bind(SocketAddrV4::new(*local.ip(), 0)).map_err(|e| e.to_string())?;
    sock.connect((gateway, DPFD_PORT)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(1))).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let fwd = dpf::Message::Forward {
        proto: Proto::Tcp,
        local,
        mgmt_port,
        desired: None,
    };
    let took = match dpf_exchange(&sock, &fwd, 2 * i + 1)? {
        dpf::Message::ForwardOk { .. } => started.elapsed(),
        other => return Err(format!("forward: {other:?}")),
    };
    let del = dpf::Message::Delete {
        proto: Proto::Tcp,
        key: dpf::MappingKey::Local(local),
    };
    dpf_exchange(&sock, &del, 2 * i + 2)?;
    Ok(took)
}
