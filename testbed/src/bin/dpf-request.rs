//! dpf-request: a small DPF client for tests, run inside a test-bed host.
//! It speaks the wire protocol through `proto` with no shim involved, so a
//! test can check dpfd on its own.
//!
//! ```text
//! dpf-request --server IP:PORT forward --proto tcp|udp --local IP:PORT
//!             [--desired IP:PORT] [--mgmt-port N] [--hold]
//! dpf-request --server IP:PORT delete --proto P (--local IP:PORT | --public IP:PORT)
//! dpf-request --server IP:PORT query --proto P --public IP:PORT
//! dpf-request --server IP:PORT raw HEX
//! dpf-request --server IP:PORT bench --count N [--window W] [--proto P] [--base-port N] [--keep]
//! ```
//!
//! Output is one line a test can match: `PUBLIC ip:port`, `DELETED`,
//! `QUERY_OK ip:port`, `QUERY_NAK`, `ERROR code detail`, `REPLY hex`,
//! `NO REPLY`, `BENCH ...`. With `--hold`, `forward` first opens the
//! management socket (a TCP listener on the local IP; `--mgmt-port` or any
//! port), prints `MGMT ip:port`, and after the reply stays alive, accepting
//! and closing probe connections as a well-behaved client does, until it
//! is killed. Exit codes: 0 success, 2 usage, 3 error reply, 4 no reply.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use proto::dpf::{self, ErrorCode, MappingKey, Message};
use proto::Proto;

/// Transmissions of one request, with a doubling wait starting at this.
const TRIES: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_millis(200);

struct Args {
    words: Vec<String>,
}

impl Args {
    fn value(&self, flag: &str) -> Option<&str> {
        let i = self.words.iter().position(|w| w == flag)?;
        self.words.get(i + 1).map(String::as_str)
    }

    fn has(&self, flag: &str) -> bool {
        self.words.iter().any(|w| w == flag)
    }

    fn parse<T: std::str::FromStr>(&self, flag: &str) -> Result<Option<T>, String> {
        self.value(flag)
            .map(|v| v.parse().map_err(|_| format!("{flag}: bad value {v:?}")))
            .transpose()
    }

    fn need<T: std::str::FromStr>(&self, flag: &str) -> Result<T, String> {
        self.parse(flag)?
            .ok_or_else(|| format!("{flag} is required"))
    }

    fn proto(&self) -> Result<Proto, String> {
        match self.value("--proto").unwrap_or("tcp") {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(format!("--proto: {other:?} is not tcp or udp")),
        }
    }
}

fn code_name(code: ErrorCode) -> String {
    match code {
        ErrorCode::Refused => "refused".into(),
        ErrorCode::NotLocal => "not_local".into(),
        ErrorCode::PortOutOfRange => "port_out_of_range".into(),
        ErrorCode::Quota => "quota".into(),
        ErrorCode::Exists => "exists".into(),
        ErrorCode::NotFound => "not_found".into(),
        ErrorCode::BadRequest => "bad_request".into(),
        ErrorCode::Unauthorized => "unauthorized".into(),
        ErrorCode::VersionMismatch => "version_mismatch".into(),
        ErrorCode::Internal => "internal".into(),
        ErrorCode::Other(c) => format!("code_{c}"),
    }
}

/// Sends `bytes` and waits for a reply to `id` (any datagram if `id` is
/// None), retransmitting the same bytes as the reliable layer would.
fn exchange(
    sock: &UdpSocket,
    bytes: &[u8],
    id: Option<u64>,
    tries: u32,
) -> Result<Option<Vec<u8>>, String> {
    let mut buf = vec![0u8; 65536];
    let mut wait = FIRST_WAIT;
    for _ in 0..tries {
        sock.send(bytes).map_err(|e| format!("send: {e}"))?;
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| e.to_string())?;
            match sock.recv(&mut buf) {
                Ok(n) => match (id, dpf::decode(&buf[..n])) {
                    (None, _) => return Ok(Some(buf[..n].to_vec())),
                    (Some(id), Ok((h, _))) if h.request_id == id => {
                        return Ok(Some(buf[..n].to_vec()))
                    }
                    _ => {}
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                // ECONNREFUSED from an earlier send: nobody listens (yet).
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        wait *= 2;
    }
    Ok(None)
}

/// A request id that differs between runs, as real clients' do.
fn fresh_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40)
}

/// Sends one request and prints its reply line; returns the exit code.
fn request(sock: &UdpSocket, msg: &Message) -> Result<(u8, Option<Message>), String> {
    let id = fresh_id();
    let bytes = dpf::encode(msg, id).map_err(|e| format!("encode: {e:?}"))?;
    let Some(reply) = exchange(sock, &bytes, Some(id), TRIES)? else {
        println!("NO REPLY");
        return Ok((4, None));
    };
    let (_, reply) = dpf::decode(&reply).map_err(|e| format!("bad reply: {e:?}"))?;
    let code = match &reply {
        Message::ForwardOk { public } => {
            println!("PUBLIC {public}");
            0
        }
        Message::DeleteOk => {
            println!("DELETED");
            0
        }
        Message::QueryOk { local } => {
            println!("QUERY_OK {local}");
            0
        }
        Message::QueryNak => {
            println!("QUERY_NAK");
            0
        }
        Message::Error { code, detail } => {
            println!("ERROR {} {detail}", code_name(*code));
            3
        }
        other => return Err(format!("unexpected reply {other:?}")),
    };
    Ok((code, Some(reply)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).ok().filter(|d| d.len() == 2);
            digits
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| "raw: give an even number of hex digits".to_string())
        })
        .collect()
}

/// Keeps the management socket open and drains it, for ever.
fn hold(listener: TcpListener) -> ! {
    loop {
        // Each accepted probe connection is closed at once.
        let _ = listener.accept();
    }
}

fn forward(sock: &UdpSocket, args: &Args) -> Result<u8, String> {
    let local: SocketAddrV4 = args.need("--local")?;
    let listener = if args.has("--hold") {
        let port = args.parse::<u16>("--mgmt-port")?.unwrap_or(0);
        let l = TcpListener::bind(SocketAddrV4::new(*local.ip(), port))
            .map_err(|e| format!("mgmt socket: {e}"))?;
        println!("MGMT {}", l.local_addr().map_err(|e| e.to_string())?);
        Some(l)
    } else {
        None
    };
    let mgmt_port = match &listener {
        Some(l) => l.local_addr().map_err(|e| e.to_string())?.port(),
        None => args.parse("--mgmt-port")?.unwrap_or(1),
    };
    let msg = Message::Forward {
        proto: args.proto()?,
        local,
        mgmt_port,
        desired: args.parse("--desired")?,
    };
    let (code, _) = request(sock, &msg)?;
    match listener {
        Some(l) if code == 0 => hold(l),
        _ => Ok(code),
    }
}

/// Pipelined forwards (and then deletes) of `--count` local ports of this
/// host, `--window` in flight, to measure dpfd's changes per second.
fn bench(sock: &UdpSocket, args: &Args) -> Result<u8, String> {
    let count: u16 = args.need("--count")?;
    let window: usize = args.parse("--window")?.unwrap_or(256);
    let base: u16 = args.parse("--base-port")?.unwrap_or(20000);
    let proto = args.proto()?;
    let SocketAddr::V4(me) = sock.local_addr().map_err(|e| e.to_string())? else {
        return Err("bench: not IPv4".into());
    };
    let make = |i: u16, delete: bool| {
        let local = SocketAddrV4::new(*me.ip(), base + i);
        match delete {
            // Each forward names its own management port (nothing listens
            // there), so a probe round has one target per forward.
            false => Message::Forward {
                proto,
                local,
                mgmt_port: base + i,
                desired: None,
            },
            true => Message::Delete {
                proto,
                key: MappingKey::Local(local),
            },
        }
    };
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    // --keep leaves the forwards in place, e.g. to time a recovery.
    let phases: &[(&str, bool)] = if args.has("--keep") {
        &[("forwards", false)]
    } else {
        &[("forwards", false), ("deletes", true)]
    };
    for &(phase, delete) in phases {
        let started = Instant::now();
        let mut pending: HashMap<u64, (Vec<u8>, Instant)> = HashMap::new();
        let (mut next, mut done, mut errors) = (0u16, 0u32, 0u32);
        let base_id = fresh_id();
        while done < u32::from(count) {
            while pending.len() < window && next < count {
                let id = base_id.wrapping_add(u64::from(next));
                let bytes = dpf::encode(&make(next, delete), id).map_err(|e| format!("{e:?}"))?;
                sock.send(&bytes).map_err(|e| format!("send: {e}"))?;
                pending.insert(id, (bytes, Instant::now()));
                next += 1;
            }
            match sock.recv(&mut buf) {
                Ok(n) => {
                    if let Ok((h, reply)) = dpf::decode(&buf[..n]) {
                        if pending.remove(&h.request_id).is_some() {
                            done += 1;
                            errors += u32::from(matches!(reply, Message::Error { .. }));
                        }
                    }
                }
                Err(_) => {
                    for (bytes, sent) in pending.values_mut() {
                        if sent.elapsed() > Duration::from_secs(1) {
                            let _ = sock.send(bytes);
                            *sent = Instant::now();
                        }
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(format!(
                    "bench: {phase} not done after 120 s ({done} of {count})"
                ));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "BENCH {phase} {count} in {:.0} ms = {:.0}/s, errors {errors}",
            secs * 1000.0,
            f64::from(count) / secs
        );
    }
    Ok(0)
}

fn run() -> Result<u8, String> {
    let args = Args {
        words: std::env::args().skip(1).collect(),
    };
    let server: SocketAddr = args.need("--server")?;
    let Some(cmd) = ["forward", "delete", "query", "raw", "bench"]
        .into_iter()
        .find(|c| args.has(c))
    else {
        return Err(
            "give one of forward, delete, query, raw, bench (see the source's docs)".into(),
        );
    };
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    sock.connect(server)
        .map_err(|e| format!("connect {server}: {e}"))?;
    match cmd {
        "forward" => forward(&sock, &args),
        "delete" => {
            let key = match (args.parse("--local")?, args.parse("--public")?) {
                (Some(l), None) => MappingKey::Local(l),
                (None, Some(p)) => MappingKey::Public(p),
                _ => return Err("delete: give --local or --public".into()),
            };
            Ok(request(
                &sock,
                &Message::Delete {
                    proto: args.proto()?,
                    key,
                },
            )?
            .0)
        }
        "query" => Ok(request(
            &sock,
            &Message::Query {
                proto: args.proto()?,
                public: args.need("--public")?,
            },
        )?
        .0),
        "raw" => {
            let i = args
                .words
                .iter()
                .position(|w| w == "raw")
                .expect("found above");
            let bytes = unhex(args.words.get(i + 1).ok_or("raw: give the bytes in hex")?)?;
            // Garbage is expected to get no answer: do not wait long for it.
            match exchange(&sock, &bytes, None, 2)? {
                Some(reply) => println!("REPLY {}", hex(&reply)),
                None => println!("NO REPLY"),
            }
            Ok(0)
        }
        _ => bench(&sock, &args),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dpf-request: {e}");
            ExitCode::from(2)
        }
    }
}
