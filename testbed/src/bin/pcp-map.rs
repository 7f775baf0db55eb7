//! pcp-map: a port-mapping client for tests, run inside a test-bed host:
//! `proto::portmap::MapClient` (PCP MAP, falling back to NAT-PMP) over a
//! real UDP socket, so its behaviour against dpfd and miniupnpd is tested
//! as the shim will use it; and one-shot PCP requests crafted field by
//! field, for the refusals a well-behaved client never provokes.
//!
//! ```text
//! pcp-map --gateway IP map --proto tcp|udp --internal IP:PORT [--suggest PORT]
//!         [--prefer-failure] [--lifetime N] [--hold SECONDS] [--bound SECONDS]
//! pcp-map --gateway IP request --proto P --internal IP:PORT [--client IP]
//!         [--suggest IP:PORT] [--prefer-failure] [--third-party IP] [--lifetime N]
//! ```
//!
//! `map` prints `MAPPED ip:port LIFETIME VIA MICROS` (the time from the
//! first request to the answer) on every grant, `REFUSED code` or
//! `GAVE_UP`; with `--hold` it keeps the mapping (renewing it, following
//! announcements) for that many seconds or until stdin closes, then
//! deletes it and prints `DELETED`. `request` prints `RESULT CODE LIFETIME
//! EPOCH ip:port` or `NO REPLY`. Exit codes: 0 success, 2 usage, 3 refused,
//! 4 no answer.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proto::pcp::{self, Opt};
use proto::portmap::{Config, Event, MapClient, Retry};
use proto::Proto;

fn value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    let i = words.iter().position(|w| w == flag)?;
    words.get(i + 1).map(String::as_str)
}

fn parse<T: std::str::FromStr>(words: &[String], flag: &str) -> Result<Option<T>, String> {
    value(words, flag)
        .map(|v| v.parse().map_err(|_| format!("{flag}: bad value {v:?}")))
        .transpose()
}

fn need<T: std::str::FromStr>(words: &[String], flag: &str) -> Result<T, String> {
    parse(words, flag)?.ok_or_else(|| format!("{flag} is required"))
}

fn proto(words: &[String]) -> Result<Proto, String> {
    match value(words, "--proto").unwrap_or("tcp") {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        other => Err(format!("--proto: {other:?} is not tcp or udp")),
    }
}

/// 12 bytes that differ per run, without a dependency: time and pid.
fn nonce() -> [u8; 12] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&t.to_be_bytes());
    n[8..].copy_from_slice(&std::process::id().to_be_bytes());
    n
}

fn socket(gateway: Ipv4Addr, internal: SocketAddrV4) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind(SocketAddrV4::new(*internal.ip(), 0)).map_err(|e| format!("bind: {e}"))?;
    s.connect(SocketAddrV4::new(gateway, proto::natpmp::SERVER_PORT))
        .map_err(|e| format!("connect: {e}"))?;
    Ok(s)
}

fn map(gateway: Ipv4Addr, words: &[String]) -> Result<u8, String> {
    let internal: SocketAddrV4 = need(words, "--internal")?;
    let mut cfg = Config::new(proto(words)?, internal, nonce(), u64::from(std::process::id()));
    cfg.suggested_port = parse(words, "--suggest")?.unwrap_or(0);
    cfg.prefer_failure = words.iter().any(|w| w == "--prefer-failure");
    cfg.lifetime = parse(words, "--lifetime")?.unwrap_or(7200);
    let bound = Duration::from_secs(parse(words, "--bound")?.unwrap_or(30));
    cfg.pcp_retry = Retry {
        max_duration: bound,
        ..Retry::PCP
    };
    cfg.natpmp_retry = Retry {
        max_duration: bound,
        ..Retry::NATPMP
    };
    let hold: Option<u64> = parse(words, "--hold")?;
    let sock = socket(gateway, internal)?;
    // Stdin closing ends a hold early; a thread reads it.
    let (tx, stdin_closed) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let mut client = MapClient::new(cfg);
    let started = Instant::now();
    let hold_until = hold.map(|s| started + Duration::from_secs(s));
    let mut out = client.start(started);
    let mut deleting = false;
    let mut buf = [0u8; 1500];
    loop {
        for d in &out.send {
            let _ = sock.send(d);
        }
        for e in &out.events {
            match e {
                Event::Mapped { external, lifetime, via } => {
                    println!("MAPPED {external} {lifetime} {via} {}", started.elapsed().as_micros());
                    if hold_until.is_none() {
                        return Ok(0);
                    }
                }
                Event::Refused { code, .. } => {
                    println!("REFUSED {code}");
                    return Ok(3);
                }
                Event::GaveUp => {
                    println!("GAVE_UP");
                    return Ok(4);
                }
                Event::Deleted => {
                    println!("DELETED");
                    return Ok(0);
                }
            }
        }
        let now = Instant::now();
        let end_hold = hold_until.is_some_and(|h| now >= h) || stdin_closed.try_recv().is_ok();
        if end_hold && !deleting && client.mapping().is_some() {
            deleting = true;
            out = client.delete(now);
            continue;
        }
        let mut wake = client.next_deadline().unwrap_or(now + Duration::from_secs(1));
        if let Some(h) = hold_until.filter(|_| !deleting) {
            wake = wake.min(h);
        }
        // Short sleeps, so a closed stdin is noticed soon.
        let wait = wake.saturating_duration_since(now).clamp(Duration::from_millis(1), Duration::from_millis(200));
        sock.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
        out = match sock.recv(&mut buf) {
            Ok(n) => client.on_datagram(&buf[..n], Instant::now()),
            Err(_) => client.poll_timeout(Instant::now()),
        };
    }
}

fn request(gateway: Ipv4Addr, words: &[String]) -> Result<u8, String> {
    let internal: SocketAddrV4 = need(words, "--internal")?;
    let client: Ipv4Addr = parse(words, "--client")?.unwrap_or(*internal.ip());
    let suggest: SocketAddrV4 = parse(words, "--suggest")?.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let mut options = Vec::new();
    if let Some(ip) = parse::<Ipv4Addr>(words, "--third-party")? {
        options.push(Opt::ThirdParty(pcp::mapped(ip)));
    }
    if words.iter().any(|w| w == "--prefer-failure") {
        options.push(Opt::PreferFailure);
    }
    let req = pcp::Request {
        opcode: pcp::OP_MAP,
        lifetime: parse(words, "--lifetime")?.unwrap_or(3600),
        client: pcp::mapped(client),
        map: Some(pcp::MapData {
            nonce: nonce(),
            protocol: proto(words)?.wire(),
            internal_port: internal.port(),
            external_port: suggest.port(),
            external_ip: pcp::mapped(*suggest.ip()),
        }),
        options,
    };
    let sock = socket(gateway, internal)?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let bytes = pcp::encode_request(&req);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        let _ = sock.send(&bytes);
        if let Ok(n) = sock.recv(&mut buf) {
            let r = pcp::decode_response(&buf[..n]).map_err(|e| format!("answer: {e}"))?;
            let ext = r.map.map(|m| {
                let ip = pcp::unmapped(m.external_ip).unwrap_or(Ipv4Addr::UNSPECIFIED);
                SocketAddr::V4(SocketAddrV4::new(ip, m.external_port))
            });
            let ext = ext.map_or("-".to_string(), |a| a.to_string());
            println!("RESULT {} {} {} {ext}", r.result.name(), r.lifetime, r.epoch);
            return Ok(if r.result == pcp::ResultCode::Success { 0 } else { 3 });
        }
    }
    println!("NO REPLY");
    Ok(4)
}

fn main() -> ExitCode {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let run = || -> Result<u8, String> {
        let gateway: Ipv4Addr = need(&words, "--gateway")?;
        match words.iter().find(|w| *w == "map" || *w == "request").map(String::as_str) {
            Some("map") => map(gateway, &words),
            Some("request") => request(gateway, &words),
            _ => Err("say map or request".into()),
        }
    };
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("pcp-map: {e}");
            ExitCode::from(2)
        }
    }
}
