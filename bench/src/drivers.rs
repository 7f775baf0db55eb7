//! Load drivers that speak the wire protocols directly (through `proto`),
//! run as `gcb-bench` subcommands inside a test-bed host, and take commands
//! on stdin so the bench can measure the daemon between steps:
//!
//! * `register`: GCB `Register` requests from many management sockets, as
//!   if from many shim-loaded processes; `reg N TIMEOUT_S` per step.
//! * `dpf-driver`: DPF `Forward`/`Delete` requests, with the management
//!   socket dpfd probes kept open and answered; `add N T`, `del N T`,
//!   `fwd PORT T` per step.
//!
//! Each step prints one line: `REG|ADD|DEL ok= failed= secs= error=REASON`
//! (the reason runs to the end of the line), or `FWD IP:PORT` / `FWD-FAILED`.

use crate::rpc::{self, Limits, Req};
use proto::{Family, Proto};
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::time::Duration;

/// Bound on the commands one driver takes, so its loop ends.
const MAX_STEPS: usize = 10_000;
/// First local port the drivers name; far from the echo servers' 7xxx ports.
const FIRST_LOCAL_PORT: u16 = 20000;

fn v4(a: SocketAddr) -> Result<SocketAddrV4, String> {
    match a {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(format!("{a} is not IPv4")),
    }
}

fn say(line: String) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// Read commands until `quit`, EOF or the step bound; `f` handles one line.
fn command_loop(mut f: impl FnMut(&[&str]) -> Option<String>) {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    for _ in 0..MAX_STEPS {
        let Some(Ok(line)) = lines.next() else { return };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"quit") {
            return;
        }
        if let Some(out) = f(&words) {
            say(out);
        }
    }
}

fn arg<T: std::str::FromStr>(words: &[&str], i: usize, default: T) -> T {
    words.get(i).and_then(|w| w.parse().ok()).unwrap_or(default)
}

fn limits(window: usize, timeout_s: f64) -> Limits {
    Limits {
        window,
        rto: Duration::from_millis(200),
        max_tries: 6,
        deadline: Duration::from_secs_f64(timeout_s.clamp(0.5, 600.0)),
    }
}

/// Count replies: ok ones by `is_ok`, and the first failure's reason.
fn tally(
    replies: &[Option<Vec<u8>>],
    mut verdict: impl FnMut(&[u8]) -> Result<(), String>,
) -> (usize, usize, String) {
    let (mut ok, mut failed, mut first) = (0, 0, None);
    for r in replies {
        match r.as_deref().map(&mut verdict) {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                failed += 1;
                first.get_or_insert(e);
            }
            None => {
                failed += 1;
                first.get_or_insert_with(|| "no reply".to_string());
            }
        }
    }
    (ok, failed, first.unwrap_or_else(|| "none".into()))
}

/// `register --broker IP:PORT --local-ip IP --sockets S --window W`.
pub fn register(
    broker: SocketAddr,
    local_ip: Ipv4Addr,
    sockets: usize,
    window: usize,
) -> Result<(), String> {
    let socks = rpc::sockets(broker, sockets.max(1))?;
    let mgmt: Vec<SocketAddrV4> = socks
        .iter()
        .map(|s| s.local_addr().map_err(|e| e.to_string()).and_then(v4))
        .collect::<Result<_, _>>()?;
    let mut next_port = FIRST_LOCAL_PORT;
    let mut next_id = rpc::id_base();
    say(format!("READY sockets={}", socks.len()));
    command_loop(|w| {
        if w.first() != Some(&"reg") {
            return Some(format!("UNKNOWN {}", w.join(" ")));
        }
        let n: usize = arg(w, 1, 1);
        let timeout: f64 = arg(w, 2, 10.0);
        let mut reqs = Vec::with_capacity(n);
        for i in 0..n {
            let sock = i % socks.len();
            let msg = proto::gcb::Message::Register {
                proto: Proto::Tcp,
                local: SocketAddrV4::new(local_ip, next_port),
                realm: None,
                desired_port: None,
                port_required: false,
                // A long heartbeat interval: the registrations must outlive the
                // measurement without the driver heartbeating.
                mgmt: proto::gcb::MgmtInfo::new(mgmt[sock], std::process::id(), 3600, "gcb-bench"),
            };
            next_port = next_port.wrapping_add(1).max(1024);
            next_id += 1;
            match proto::gcb::encode(&msg, next_id) {
                Ok(bytes) => reqs.push(Req {
                    sock,
                    id: next_id,
                    bytes,
                }),
                Err(e) => return Some(format!("REG ok=0 failed={n} secs=0 error=encode: {e:?}")),
            }
        }
        let out = rpc::pipeline(&socks, Family::Gcb, &reqs, &limits(window, timeout));
        let (ok, failed, err) = tally(&out.replies, |b| match proto::gcb::decode(b) {
            Ok((_, proto::gcb::Message::RegisterOk { .. })) => Ok(()),
            Ok((_, proto::gcb::Message::Error { code, detail })) => {
                Err(format!("{code:?}: {detail}"))
            }
            Ok((_, m)) => Err(format!("unexpected reply {:?}", m.kind())),
            Err(e) => Err(format!("undecodable reply: {e:?}")),
        });
        Some(format!(
            "REG ok={ok} failed={failed} secs={:.6} error={err}",
            out.secs
        ))
    });
    Ok(())
}

/// `dpf-driver --dpfd IP:PORT --local-ip IP --sockets S --window W`.
pub fn dpf_driver(
    dpfd: SocketAddr,
    local_ip: Ipv4Addr,
    sockets: usize,
    window: usize,
) -> Result<(), String> {
    use proto::dpf::{MappingKey, Message};
    // The management socket dpfd probes with a TCP connect; accepting (and
    // closing) keeps its backlog from filling, which would look like death.
    let mgmt = TcpListener::bind("0.0.0.0:0").map_err(|e| format!("mgmt bind: {e}"))?;
    let mgmt_port = mgmt.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for _ in 0..10_000_000u64 {
            if mgmt.accept().is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let socks: Vec<UdpSocket> = rpc::sockets(dpfd, sockets.max(1))?;
    let mut added: Vec<SocketAddrV4> = Vec::new();
    let mut next_port = FIRST_LOCAL_PORT;
    let mut next_id = rpc::id_base();
    let forward = |local: SocketAddrV4| Message::Forward {
        proto: Proto::Tcp,
        local,
        mgmt_port,
        desired: None,
    };
    say(format!("READY mgmt_port={mgmt_port}"));
    command_loop(|w| {
        let n: usize = arg(w, 1, 1);
        let timeout: f64 = arg(w, 2, 10.0);
        let (tag, msgs): (&str, Vec<(SocketAddrV4, Message)>) = match w.first().copied() {
            Some("add") => {
                let v = (0..n)
                    .map(|_| {
                        let l = SocketAddrV4::new(local_ip, next_port);
                        next_port = next_port.wrapping_add(1).max(1024);
                        (l, forward(l))
                    })
                    .collect();
                ("ADD", v)
            }
            Some("del") => {
                let keep = added.len().saturating_sub(n);
                let v = added.split_off(keep);
                let msgs = v
                    .iter()
                    .map(|l| {
                        (
                            *l,
                            Message::Delete {
                                proto: Proto::Tcp,
                                key: MappingKey::Local(*l),
                            },
                        )
                    })
                    .collect();
                ("DEL", msgs)
            }
            Some("fwd") => {
                let l = SocketAddrV4::new(local_ip, arg(w, 1, 0u16));
                ("FWD", vec![(l, forward(l))])
            }
            _ => return Some(format!("UNKNOWN {}", w.join(" "))),
        };
        let mut reqs = Vec::with_capacity(msgs.len());
        for (i, (_, m)) in msgs.iter().enumerate() {
            next_id += 1;
            let bytes = proto::dpf::encode(m, next_id).unwrap_or_default();
            reqs.push(Req {
                sock: i % socks.len(),
                id: next_id,
                bytes,
            });
        }
        let out = rpc::pipeline(&socks, Family::Dpf, &reqs, &limits(window, timeout));
        let mut public = None;
        let mut kept = Vec::new();
        let (mut ok, mut failed, mut first) = (0, 0, None);
        for ((local, _), reply) in msgs.iter().zip(&out.replies) {
            let verdict = match reply.as_deref().map(proto::dpf::decode) {
                None => Err("no reply".to_string()),
                Some(Ok((_, Message::ForwardOk { public: p }))) => {
                    public = Some(p);
                    kept.push(*local);
                    Ok(())
                }
                Some(Ok((_, Message::DeleteOk))) => Ok(()),
                Some(Ok((_, Message::Error { code, detail }))) => {
                    Err(format!("{code:?}: {detail}"))
                }
                Some(Ok((_, m))) => Err(format!("unexpected reply {:?}", m.kind())),
                Some(Err(e)) => Err(format!("undecodable reply: {e:?}")),
            };
            match verdict {
                Ok(()) => ok += 1,
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e);
                }
            }
        }
        let err = first.unwrap_or_else(|| "none".into());
        if tag == "FWD" {
            return Some(match (public, ok) {
                (Some(p), 1) => format!("FWD {p}"),
                _ => format!("FWD-FAILED {err}"),
            });
        }
        if tag == "ADD" {
            added.extend(kept);
        }
        Some(format!(
            "{tag} ok={ok} failed={failed} secs={:.6} error={err}",
            out.secs
        ))
    });
    Ok(())
}
