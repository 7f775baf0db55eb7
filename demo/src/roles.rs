//! The two roles of the pool, after Condor: a central manager that collects
//! ads (by UDP and TCP, like a collector) and answers queries, and workers that
//! advertise themselves, look the pool up, and talk to every other member. The
//! manager also calls each worker back, so every pair is tried in both
//! directions, over both protocols.
//!
//! Each member prints `ANNOUNCE` once its listeners are up, one `RESULT` per
//! exchange, and `DONE` when it has started nothing more; then it keeps serving
//! for `linger`, so slower members can still reach it, and exits.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::node::{self, Node, Outcome, Serving};
use crate::wire::{Ad, Mode};

/// Who this member is and how long it may take.
pub struct Common {
    pub name: String,
    pub realm: String,
    pub mode: Mode,
    pub port: u16,
    pub advertise_ip: Ipv4Addr,
    /// Workers the pool should hold.
    pub expect: usize,
    /// Bound on the whole run before `DONE`.
    pub deadline: Instant,
    /// How long to keep serving after `DONE`.
    pub linger: Duration,
}

impl Common {
    fn ad(&self) -> Ad {
        let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
        Ad { name: self.name.clone(), realm: self.realm.clone(), mode: self.mode, tcp: any, udp: any }
    }
}

/// One `RESULT` line. Seeds differ per exchange so no answer can pass for another.
fn report(from: &str, to: &str, proto: &str, kind: &str, dest: SocketAddrV4, outcome: &Outcome) {
    match outcome {
        Ok((took, bytes)) => println!(
            "RESULT from={from} to={to} proto={proto} kind={kind} dest={dest} status=ok time_us={} bytes={bytes}",
            took.as_micros()
        ),
        Err(why) => println!("RESULT from={from} to={to} proto={proto} kind={kind} dest={dest} status=failed why={why}"),
    }
}

fn seed() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64) << 32 ^ NEXT.fetch_add(1, Ordering::Relaxed) as u64
}

/// TCP and UDP echo with `peer`, each reported.
fn talk_to(me: &str, peer: &Ad) {
    let tcp = node::tcp_echo(me, peer.tcp, &peer.name, seed());
    report(me, &peer.name, "tcp", "echo", peer.tcp, &tcp);
    let udp = node::udp_echo(me, peer.udp, &peer.name, seed());
    report(me, &peer.name, "udp", "echo", peer.udp, &udp);
}

fn finish(c: &Common) {
    println!("DONE name={}", c.name);
    std::thread::sleep(c.linger);
}

pub fn manager(c: Common) -> Result<(), String> {
    let called_back = Arc::new(AtomicUsize::new(0));
    let me = c.name.clone();
    let counter = called_back.clone();
    let on_new: node::OnNewAd = Arc::new(move |ad: Ad| {
        talk_to(&me, &ad);
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let registry = node::Registry::default();
    let serving = Serving { name: c.name.clone(), registry: Some((registry, on_new)) };
    let node = Node::start(c.ad(), c.port, c.advertise_ip, serving)?;
    println!("ANNOUNCE {}", node.ad);
    while called_back.load(Ordering::SeqCst) < c.expect && Instant::now() < c.deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = called_back.load(Ordering::SeqCst);
    if n < c.expect {
        println!("NOTE name={} why=only {n} of {} workers advertised themselves in time", c.name, c.expect);
    }
    finish(&c);
    Ok(())
}

pub fn worker(c: Common, manager_tcp: SocketAddrV4, manager_udp: SocketAddrV4) -> Result<(), String> {
    let node = Node::start(c.ad(), c.port, c.advertise_ip, Serving { name: c.name.clone(), registry: None })?;
    println!("ANNOUNCE {}", node.ad);
    let ad_line = format!("AD {}\n", node.ad);
    let acked = |reply: &[u8]| if reply.starts_with(b"ACK name=manager") { Ok(()) } else { Err("not the manager's ACK".to_string()) };
    let by_udp = node::udp_request(manager_udp, ad_line.as_bytes(), acked).map(|(t, r)| (t, ad_line.len() + r.len()));
    report(&c.name, "manager", "udp", "ad", manager_udp, &by_udp);
    let by_tcp = node::tcp_request(manager_tcp, &ad_line, "ACK").and_then(|(t, r)| {
        acked(r.as_bytes())?;
        Ok((t, ad_line.len() + r.len()))
    });
    report(&c.name, "manager", "tcp", "ad", manager_tcp, &by_tcp);
    let peers = look_up_pool(&c, manager_tcp);
    let threads: Vec<_> = peers
        .into_iter()
        .filter(|p| p.name != c.name)
        .map(|p| {
            let me = c.name.clone();
            std::thread::spawn(move || talk_to(&me, &p))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    finish(&c);
    Ok(())
}

/// Queries the manager until it holds `expect` workers or time runs out, and
/// reports the last query.
fn look_up_pool(c: &Common, manager: SocketAddrV4) -> Vec<Ad> {
    let seen = Mutex::new(Vec::new());
    let mut outcome: Outcome = Err("never asked".into());
    while Instant::now() < c.deadline {
        outcome = node::tcp_request(manager, "QUERY\n", "END").map(|(t, answer)| {
            let ads: Vec<Ad> = answer.lines().filter(|l| l.starts_with("AD ")).filter_map(Ad::parse).collect();
            let bytes = answer.len() + "QUERY\n".len();
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = ads;
            (t, bytes)
        });
        if outcome.is_ok() && seen.lock().unwrap_or_else(|p| p.into_inner()).len() >= c.expect {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ads = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    if outcome.is_ok() && ads.len() < c.expect {
        outcome = Err(format!("the manager knows {} of {} workers", ads.len(), c.expect));
    }
    report(&c.name, "manager", "tcp", "query", manager, &outcome);
    ads
}
