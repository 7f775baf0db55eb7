//! One pool member's network side: its TCP and UDP listeners, the threads that
//! serve them, and the client exchanges it starts. Every exchange ends in one
//! `RESULT` line on stdout, ok only when every byte came back as sent and from
//! the member that was meant.
//!
//! The listeners bind the wildcard address, as Condor daemons do; the address
//! they advertise is what `getsockname` reports, which under the shim is the
//! broker's proxy address or the gateway's forwarded one. Where it reports the
//! wildcard (no shim, or a socket the shim did not register) the member falls
//! back to the IP it was told to advertise.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::wire::{self, field, fields, payload, Ad};

/// Bounds on every wait, generous for a loaded machine.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// UDP: a reply within this long, else send again, this many times.
const UDP_WAIT: Duration = Duration::from_millis(500);
const UDP_TRIES: u32 = 6;
pub const TCP_ECHO_LEN: usize = 64 * 1024;
pub const UDP_ECHO_LEN: usize = 1000;

/// The ads a manager holds; workers hold none.
pub type Registry = Arc<Mutex<BTreeMap<String, Ad>>>;

/// Called by the manager's server for each worker's first ad.
pub type OnNewAd = Arc<dyn Fn(Ad) + Send + Sync>;

pub struct Node {
    pub ad: Ad,
}

/// What this member serves besides `ECHO`.
#[derive(Clone)]
pub struct Serving {
    pub name: String,
    pub registry: Option<(Registry, OnNewAd)>,
}

impl Node {
    /// Binds both listeners on `port` (0: any), starts serving them, and works
    /// out the ad. Errors are one line for the operator.
    pub fn start(mut ad: Ad, port: u16, advertise_ip: Ipv4Addr, serving: Serving) -> Result<Node, String> {
        let tcp = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("TCP listener on port {port}: {e}"))?;
        let udp = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("UDP socket on port {port}: {e}"))?;
        ad.tcp = advertised(tcp.local_addr(), advertise_ip)?;
        ad.udp = advertised(udp.local_addr(), advertise_ip)?;
        let s = serving.clone();
        std::thread::spawn(move || serve_tcp(tcp, s));
        std::thread::spawn(move || serve_udp(udp, serving));
        Ok(Node { ad })
    }
}

fn advertised(local: std::io::Result<SocketAddr>, ip: Ipv4Addr) -> Result<SocketAddrV4, String> {
    match local.map_err(|e| format!("getsockname: {e}"))? {
        SocketAddr::V4(a) if a.ip().is_unspecified() => Ok(SocketAddrV4::new(ip, a.port())),
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(format!("an IPv6 address {a}; the pool is IPv4")),
    }
}

fn serve_tcp(l: TcpListener, s: Serving) {
    for conn in l.incoming() {
        let Ok(c) = conn else { continue };
        let s = s.clone();
        std::thread::spawn(move || {
            if let Err(e) = handle_tcp(c, &s) {
                eprintln!("pool-demo {}: a TCP request failed: {e}", s.name);
            }
        });
    }
}

fn handle_tcp(c: TcpStream, s: &Serving) -> std::io::Result<()> {
    c.set_read_timeout(Some(IO_TIMEOUT))?;
    c.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut r = BufReader::new(c.try_clone()?);
    let mut w = c;
    let head = read_line(&mut r)?;
    let word = head.split(' ').next().unwrap_or("").trim_end();
    match (word, &s.registry) {
        ("ECHO", _) => {
            let f = fields(&head);
            let (seed, len) = echo_params(&f).ok_or_else(|| bad("bad ECHO header"))?;
            if len > TCP_ECHO_LEN {
                return Err(bad("ECHO too long"));
            }
            let mut data = vec![0; len];
            r.read_exact(&mut data)?;
            writeln!(w, "ECHO-OK name={} seed={seed} len={len}", s.name)?;
            w.write_all(&data)
        }
        ("AD", Some((reg, on_new))) => {
            let ad = Ad::parse(&head).filter(|a| wire::valid_name(&a.name)).ok_or_else(|| bad("bad AD"))?;
            store(reg, on_new, ad);
            writeln!(w, "ACK name={}", s.name)
        }
        ("QUERY", Some((reg, _))) => {
            let mut out = String::new();
            for ad in reg.lock().unwrap_or_else(|p| p.into_inner()).values() {
                out += &format!("AD {ad}\n");
            }
            out += "END\n";
            w.write_all(out.as_bytes())
        }
        _ => Err(bad("unknown request")),
    }
}

fn serve_udp(u: UdpSocket, s: Serving) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = u.recv_from(&mut buf) else { continue };
        let d = &buf[..n];
        let nl = d.iter().position(|&b| b == b'\n').unwrap_or(n);
        let Ok(head) = std::str::from_utf8(&d[..nl]) else { continue };
        let body = d.get(nl + 1..).unwrap_or(&[]);
        let reply = match (head.split(' ').next().unwrap_or(""), &s.registry) {
            ("ECHO", _) => match echo_params(&fields(head)) {
                Some((seed, len)) if len == body.len() => {
                    let mut r = format!("ECHO-OK name={} seed={seed} len={len}\n", s.name).into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                _ => continue,
            },
            ("AD", Some((reg, on_new))) => match Ad::parse(head).filter(|a| wire::valid_name(&a.name)) {
                Some(ad) => {
                    store(reg, on_new, ad);
                    format!("ACK name={}\n", s.name).into_bytes()
                }
                None => continue,
            },
            _ => continue,
        };
        let _ = u.send_to(&reply, from);
    }
}

/// Keeps the newest ad per name; the first one from a name starts the manager's call-back.
fn store(reg: &Registry, on_new: &OnNewAd, ad: Ad) {
    let first = reg.lock().unwrap_or_else(|p| p.into_inner()).insert(ad.name.clone(), ad.clone()).is_none();
    if first {
        let cb = on_new.clone();
        std::thread::spawn(move || cb(ad));
    }
}

fn echo_params(f: &[(&str, &str)]) -> Option<(u64, usize)> {
    Some((field(f, "seed")?.parse().ok()?, field(f, "len")?.parse().ok()?))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// One line, bounded; the newline is kept off.
fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = Vec::new();
    r.take(wire::MAX_LINE as u64).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(bad("no complete line"));
    }
    line.pop();
    String::from_utf8(line).map_err(|_| bad("not text"))
}

/// How an exchange went: the time to connect (TCP) or to the first good reply
/// (UDP), and the bytes verified both ways.
pub type Outcome = Result<(Duration, usize), String>;

/// Sends an `ECHO` of `len` bytes over TCP to `dest`, expecting `peer` to answer.
pub fn tcp_echo(me: &str, dest: SocketAddrV4, peer: &str, seed: u64) -> Outcome {
    let want = payload(seed, TCP_ECHO_LEN);
    let (c, took) = tcp_connect(dest)?;
    let mut w = c.try_clone().map_err(err)?;
    w.write_all(format!("ECHO from={me} seed={seed} len={}\n", want.len()).as_bytes()).map_err(err)?;
    w.write_all(&want).map_err(err)?;
    let mut r = BufReader::new(c);
    let head = read_line(&mut r).map_err(err)?;
    check_echo_header(&head, peer, seed, want.len())?;
    let mut got = vec![0; want.len()];
    r.read_exact(&mut got).map_err(err)?;
    verify(&want, &got)?;
    Ok((took, 2 * want.len()))
}

/// Sends `line` (an `AD` or `QUERY`) over TCP and returns the whole answer.
pub fn tcp_request(dest: SocketAddrV4, line: &str, until: &str) -> Result<(Duration, String), String> {
    let (c, took) = tcp_connect(dest)?;
    (&c).write_all(line.as_bytes()).map_err(err)?;
    let mut r = BufReader::new(c);
    let mut all = String::new();
    for _ in 0..10_000 {
        let l = read_line(&mut r).map_err(err)?;
        all += &l;
        all.push('\n');
        if l.starts_with(until) {
            return Ok((took, all));
        }
    }
    Err("answer too long".into())
}

fn tcp_connect(dest: SocketAddrV4) -> Result<(TcpStream, Duration), String> {
    let t = Instant::now();
    let c = TcpStream::connect_timeout(&dest.into(), CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    let took = t.elapsed();
    c.set_read_timeout(Some(IO_TIMEOUT)).map_err(err)?;
    c.set_write_timeout(Some(IO_TIMEOUT)).map_err(err)?;
    Ok((c, took))
}

/// Sends one datagram to `dest` until an answer `accept` takes arrives, from a
/// fresh socket; returns the time to that answer and the answer.
pub fn udp_request(dest: SocketAddrV4, datagram: &[u8], accept: impl Fn(&[u8]) -> Result<(), String>) -> Result<(Duration, Vec<u8>), String> {
    let u = UdpSocket::bind(("0.0.0.0", 0)).map_err(err)?;
    u.set_read_timeout(Some(UDP_WAIT)).map_err(err)?;
    let t = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut last = String::from("no answer");
    for _ in 0..UDP_TRIES {
        if let Err(e) = u.send_to(datagram, dest) {
            last = format!("send: {e}");
            std::thread::sleep(UDP_WAIT);
            continue;
        }
        let sent = Instant::now();
        while sent.elapsed() < UDP_WAIT {
            match u.recv_from(&mut buf) {
                Ok((n, _)) => match accept(&buf[..n]) {
                    Ok(()) => return Ok((t.elapsed(), buf[..n].to_vec())),
                    Err(e) => last = e,
                },
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                Err(e) => {
                    last = format!("receive: {e}");
                    std::thread::sleep(UDP_WAIT / 5);
                }
            }
        }
    }
    Err(format!("{last} after {UDP_TRIES} datagrams, {:.1} s", t.elapsed().as_secs_f64()))
}

/// An `ECHO` of [`UDP_ECHO_LEN`] bytes by UDP to `dest`, expecting `peer`.
pub fn udp_echo(me: &str, dest: SocketAddrV4, peer: &str, seed: u64) -> Outcome {
    let want = payload(seed, UDP_ECHO_LEN);
    let mut d = format!("ECHO from={me} seed={seed} len={}\n", want.len()).into_bytes();
    d.extend_from_slice(&want);
    let (took, _) = udp_request(dest, &d, |reply| {
        let nl = reply.iter().position(|&b| b == b'\n').ok_or("an answer without a header")?;
        let head = std::str::from_utf8(&reply[..nl]).map_err(|_| "a header that is not text")?;
        check_echo_header(head, peer, seed, want.len())?;
        verify(&want, &reply[nl + 1..])
    })?;
    Ok((took, 2 * want.len()))
}

fn check_echo_header(head: &str, peer: &str, seed: u64, len: usize) -> Result<(), String> {
    let f = fields(head);
    if !head.starts_with("ECHO-OK ") {
        return Err(format!("unexpected answer {head:?}"));
    }
    if field(&f, "name") != Some(peer) {
        return Err(format!("answered by {:?}, not {peer}", field(&f, "name").unwrap_or("?")));
    }
    if echo_params(&f) != Some((seed, len)) {
        return Err(format!("answer to another request: {head:?}"));
    }
    Ok(())
}

fn verify(want: &[u8], got: &[u8]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} bytes came back, {} sent", got.len(), want.len()));
    }
    match want.iter().zip(got).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(format!("byte {i} differs")),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_header_checks_name_seed_and_length() {
        assert!(check_echo_header("ECHO-OK name=b1 seed=5 len=10", "b1", 5, 10).is_ok());
        assert!(check_echo_header("ECHO-OK name=a1 seed=5 len=10", "b1", 5, 10).unwrap_err().contains("answered by \"a1\""));
        assert!(check_echo_header("ECHO-OK name=b1 seed=6 len=10", "b1", 5, 10).is_err());
        assert!(check_echo_header("ACK name=b1", "b1", 5, 10).is_err());
    }

    #[test]
    fn verify_finds_the_first_bad_byte() {
        assert!(verify(b"abc", b"abc").is_ok());
        assert_eq!(verify(b"abc", b"abd").unwrap_err(), "byte 2 differs");
        assert!(verify(b"abc", b"ab").is_err());
    }

    #[test]
    fn tcp_and_udp_echo_on_loopback() {
        let ad = Ad { name: "w".into(), realm: "public".into(), mode: wire::Mode::Plain, tcp: "0.0.0.0:0".parse().unwrap(), udp: "0.0.0.0:0".parse().unwrap() };
        let n = Node::start(ad, 0, Ipv4Addr::LOCALHOST, Serving { name: "w".into(), registry: None }).unwrap();
        assert_eq!(*n.ad.tcp.ip(), Ipv4Addr::LOCALHOST, "the wildcard is replaced by the advertised IP");
        let (_, bytes) = tcp_echo("t", n.ad.tcp, "w", 42).unwrap();
        assert_eq!(bytes, 2 * TCP_ECHO_LEN);
        assert!(udp_echo("t", n.ad.udp, "w", 43).is_ok());
        assert!(tcp_echo("t", n.ad.tcp, "someone-else", 44).unwrap_err().contains("answered by"));
    }
}
