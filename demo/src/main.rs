//! pool-demo: a tiny Condor-like pool for `scripts/demo`.
//!
//! `pool-demo manager` and `pool-demo worker` are ordinary socket programs with no
//! knowledge of GCB or DPF; the demo runs them under `scripts/gcb-run` on the
//! hosts of the NAT test bed. `pool-demo watch` reads what they print and what
//! the shim logged for each of them, and turns it into the live table of which
//! path every connection took (see `report`).

mod report;
mod roles;
mod node;
mod wire;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

const USAGE: &str = "\
Usage:
  pool-demo manager --name NAME --realm R --mode gcb|dpf|plain --advertise-ip IP
                    [--port P] [--expect N] [--timeout S] [--linger S]
  pool-demo worker  --name NAME --realm R --mode gcb|dpf|plain --advertise-ip IP
                    --manager IP:PORT --manager-udp IP:PORT
                    [--port P] [--expect N] [--timeout S] [--linger S]
  pool-demo watch   --dir DIR --members NAME,NAME,... [--proxies IP:LOW-HIGH] [--timeout S]

manager  listens on TCP and UDP port P (default 9618, Condor's collector port),
         takes workers' ads by either protocol, answers QUERY, and calls every
         worker back by TCP and UDP.
worker   listens on TCP and UDP (port P, default any), advertises itself to the
         manager by UDP and by TCP, queries the pool until it holds N workers
         (--expect), and exchanges verified bytes with every other worker.
         Both print ANNOUNCE, one RESULT line per exchange, and DONE, then keep
         serving for --linger seconds (default 20) and exit. --timeout (default
         60) bounds the run before DONE. --realm and --mode only label the ad
         for the report; --advertise-ip is used when getsockname reports the
         wildcard address (no shim, or a socket the shim does not manage).
watch    follows DIR/NAME.out (a member's stdout) and DIR/NAME.shim.log (its
         GCB_LOG_FILE) for each member, prints a row per exchange as it
         happens (the path it took, its time, the bytes verified), then a
         summary. Exit 0 when every member finished and every exchange that this
         build should manage worked; 1 otherwise. --proxies gives the broker's
         proxy IP and port range, to recognise proxy addresses; --timeout
         (default 90) bounds the wait.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return;
    }
    let code = match run(&args[0], &args[1..]) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pool-demo: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// `--key value` pairs; every key must be one the role knows.
struct Opts(Vec<(String, String)>);

impl Opts {
    fn parse(args: &[String], known: &[&str]) -> Result<Opts, String> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k.strip_prefix("--").filter(|k| known.contains(k)).ok_or_else(|| format!("unknown argument {k:?} (see --help)"))?;
            let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
            out.push((key.to_string(), v.clone()));
        }
        Ok(Opts(out))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn need(&self, key: &str) -> Result<&str, String> {
        self.get(key).ok_or_else(|| format!("--{key} is required"))
    }

    fn parsed<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Result<T, String> {
        match (self.get(key), default) {
            (Some(v), _) => v.parse().map_err(|_| format!("--{key}: {v:?} is not valid")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!("--{key} is required")),
        }
    }
}

/// The manager takes the first eight; workers also name the manager.
const MEMBER_KEYS: [&str; 10] =
    ["name", "realm", "mode", "advertise-ip", "port", "expect", "timeout", "linger", "manager", "manager-udp"];

fn run(cmd: &str, args: &[String]) -> Result<i32, String> {
    match cmd {
        "manager" | "worker" => {
            let o = Opts::parse(args, &MEMBER_KEYS[..if cmd == "manager" { 8 } else { 10 }])?;
            let name = o.need("name")?.to_string();
            if !wire::valid_name(&name) {
                return Err(format!("--name {name:?}: one word of letters, digits and '-'"));
            }
            let mode = wire::Mode::parse(o.need("mode")?).ok_or("--mode: gcb, dpf or plain")?;
            let realm = o.need("realm")?.to_string();
            if !wire::valid_name(&realm) {
                return Err(format!("--realm {realm:?}: one word"));
            }
            let common = roles::Common {
                name,
                realm,
                mode,
                port: o.parsed("port", Some(if cmd == "manager" { 9618 } else { 0 }))?,
                advertise_ip: o.parsed::<Ipv4Addr>("advertise-ip", None)?,
                expect: o.parsed("expect", Some(1))?,
                deadline: Instant::now() + Duration::from_secs(o.parsed("timeout", Some(60))?),
                linger: Duration::from_secs(o.parsed("linger", Some(20))?),
            };
            if cmd == "manager" {
                roles::manager(common)?;
            } else {
                let m: SocketAddrV4 = o.parsed("manager", None)?;
                let mu: SocketAddrV4 = o.parsed("manager-udp", None)?;
                roles::worker(common, m, mu)?;
            }
            Ok(0)
        }
        "watch" => {
            let o = Opts::parse(args, &["dir", "members", "proxies", "timeout"])?;
            let members: Vec<String> = o.need("members")?.split(',').map(str::to_string).collect();
            if let Some(bad) = members.iter().find(|m| !wire::valid_name(m)) {
                return Err(format!("--members: bad name {bad:?}"));
            }
            let proxies = match o.get("proxies") {
                None => None,
                Some(s) => Some(
                    s.split_once(':')
                        .and_then(|(ip, ports)| report::Proxies::parse(ip, ports))
                        .ok_or_else(|| format!("--proxies {s:?}: want IP:LOW-HIGH"))?,
                ),
            };
            let timeout = Duration::from_secs(o.parsed("timeout", Some(90))?);
            Ok(report::watch(o.need("dir")?.as_ref(), &members, proxies.as_ref(), timeout))
        }
        other => Err(format!("unknown command {other:?} (manager, worker or watch; see --help)")),
    }
}
