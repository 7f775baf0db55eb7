//! `bind` to a reported address, end to end: a server under the shim learns its
//! public address, stops, and is started again bound to exactly that address
//! (as a daemon restarted from its address file or `NETWORK_INTERFACE` would
//! be). The address is not local to a1, so without the shim the kernel refuses;
//! under it the socket must get that very address back and be reached there.
//!
//! * GCB, TCP: `python3 -m http.server --bind 203.0.113.10 PORT` (its banner
//!   prints `getsockname`), fetched with `curl` from pub (plain and under the
//!   shim) and from b1, every copy hashed; and by a Python client on b1 whose
//!   socket is bound to the proxy IP before it connects (it must be brokered);
//! * GCB, UDP: `socat UDP4-RECVFROM:PORT,bind=203.0.113.10,fork PIPE`, a
//!   3000-byte datagram echoed to the same clients;
//! * DPF, TCP: `http.server --bind 203.0.113.1 PORT` reached from pub;
//! * the refusals, from a Python one-liner: the port still held (GCB: by the
//!   first server; DPF: outside dpfd's range) fails with EADDRINUSE, an address
//!   nobody reports keeps the kernel's EADDRNOTAVAIL, and the same socket binds
//!   again after either.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker, dpfd).

use std::time::Duration;

use testbed::real::{host_port, payload, sha256_file, sha256_of, Mode, RealBed, STARTUP};
use testbed::{python3, wait_for, Proc};

const RUN: Duration = Duration::from_secs(60);

/// Binds a fresh socket of `sys.argv[3]` (tcp or udp) to `argv[1]:argv[2]`
/// and prints `bound IP:PORT` (its `getsockname`) or `errno N`; after a
/// failure, binds the same socket to the wildcard to show it is usable.
const BINDER: &str = r#"
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[3] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
    print("bound %s:%d" % s.getsockname(), flush=True)
except OSError as e:
    print("errno", e.errno, flush=True)
    s.bind(("0.0.0.0", 0))
    print("rebound", flush=True)
"#;

/// What [`BINDER`] printed for `ip:port` on a1 under the shim.
fn bind_once(r: &RealBed, ip: &str, port: &str, proto: &str) -> String {
    let out = r.run_ok("a1", true, &[python3().to_str().unwrap(), "-c", BINDER, ip, port, proto], None, RUN, &r.daemon);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until the broker has let `proto public` go (its owner stopped without
/// a word: the registration expires after three missed heartbeats).
fn broker_released(r: &RealBed, proto: &str, public: &str) {
    wait_for(Duration::from_secs(45), &format!("the broker to let {proto} {public} go"), || {
        let log = r.daemon.stderr_text();
        let gone = [format!("expired {proto} {public} "), format!("unregistered {proto} {public}")];
        gone.iter().any(|g| log.contains(g.as_str())).then_some(())
    });
}

/// Waits for the shim's line for a socket bound to its reported address, and
/// checks it names `public`.
fn pinned(server: &Proc, proto: &str, public: &str) {
    let needle = format!(" as {public}, the address the program bound");
    wait_for(STARTUP, &format!("{needle:?} in the server's stderr"), || {
        let text = server.stderr_text();
        text.lines().any(|l| l.contains(&format!("gcb: registered {proto} ")) && l.ends_with(&needle)).then_some(())
    });
}

/// `http.server` on a1 under the shim; `bind` as given.
fn http_server(r: &RealBed, port: &str, bind: &str) -> Proc {
    let dir = r.scratch.to_str().unwrap().to_string();
    r.spawn("a1", true, &[python3().to_str().unwrap(), "-m", "http.server", port, "--bind", bind, "--directory", &dir])
}

fn fetch_everywhere(r: &RealBed, server: &Proc, public: &str, want: &str) {
    let url = format!("http://{public}/payload.bin");
    for &(host, shim) in r.client_hosts() {
        let got = r.file(&format!("got-{host}-{shim}"));
        r.run_ok(host, shim, &["curl", "-sS", "--fail", "--max-time", "50", "-o", got.to_str().unwrap(), &url], None, RUN, server);
        assert_eq!(sha256_file(&got), want, "curl from {host} (shim: {shim}) got different bytes");
        let _ = std::fs::remove_file(&got);
    }
}

/// Fetches `/payload.bin` from `argv[1]` (IP:PORT) over a connection whose
/// source is bound to `argv[2]` port 0 first (`source_address`, as Condor binds
/// its outgoing sockets to its `NETWORK_INTERFACE`); prints the hash.
const BOUND_CLIENT: &str = r#"
import hashlib, http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(sys.argv[2], 0))
c.request("GET", "/payload.bin")
r = c.getresponse()
print(r.status, hashlib.sha256(r.read()).hexdigest(), flush=True)
"#;

/// The restarted `http.server` bound to `public` itself: its banner (from
/// `getsockname`) names `public`, and every client gets the file. In GCB mode
/// also a client on b1 whose socket is bound to the proxy IP before it
/// connects: registered at `bind`, it must still be brokered (punched or
/// relayed).
fn restarted_http_server(r: &RealBed, public: &str, want: &str) {
    let (ip, port) = host_port(public);
    let server = http_server(r, port, ip);
    server
        .wait_line(&format!("Serving HTTP on {ip} port {port} "), STARTUP)
        .unwrap_or_else(|e| panic!("{e}\nserver stderr:\n{}", server.stderr_text()));
    pinned(&server, "tcp", public);
    fetch_everywhere(r, &server, public, want);
    if r.mode == Mode::Gcb {
        let out = r.run_ok("b1", true, &[python3().to_str().unwrap(), "-c", BOUND_CLIENT, public, ip], None, RUN, &server);
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("200 {want}"), "{log}");
        // Brokered by its own shim (punched, or relayed when the punch fell
        // back), not dialed at the proxy socket as a plain client would.
        let brokered = ["relay", "punched"].iter().any(|path| log.contains(&format!("gcb: connect tcp {public} via {path}")));
        assert!(brokered, "{log}");
    }
    drop(server);
}

#[test]
fn http_server_restarted_on_its_proxy_address_gcb() {
    let r = RealBed::up(Mode::Gcb);
    let want = payload(&r.file("payload.bin"), 1 << 20, 5);
    let first = http_server(&r, "8080", "0.0.0.0");
    let public = r.registered(&first, "tcp", "192.0.2.10:8080");
    let (ip, port) = host_port(&public);
    // While the first server holds the proxy port, nobody else gets it; a
    // foreign address is the kernel's business. Either way the socket is
    // usable again.
    assert_eq!(bind_once(&r, ip, port, "tcp"), format!("errno {}\nrebound", libc::EADDRINUSE));
    assert_eq!(bind_once(&r, "198.51.100.77", port, "tcp"), format!("errno {}\nrebound", libc::EADDRNOTAVAIL));
    drop(first);
    broker_released(&r, "tcp", &public);
    restarted_http_server(&r, &public, &want);
    // Port 0 on the proxy IP: a proxy address of the broker's choosing.
    let any = bind_once(&r, ip, "0", "tcp");
    assert!(any.starts_with(&format!("bound {ip}:")) && !any.ends_with(":0"), "{any}");
    r.down();
}

#[test]
fn socat_udp_restarted_on_its_proxy_address_gcb() {
    let r = RealBed::up(Mode::Gcb);
    let file = r.file("datagram.txt");
    let text: String = (0..3000u32).map(|i| char::from(b'a' + (i * 11 % 26) as u8)).collect();
    std::fs::write(&file, &text).expect("datagram");
    let want = sha256_file(&file);
    let first = r.spawn("a1", true, &["socat", "-T", "5", "UDP4-RECVFROM:7100,fork", "PIPE"]);
    let public = r.registered(&first, "udp", "192.0.2.10:7100");
    let (ip, port) = host_port(&public);
    assert_eq!(bind_once(&r, ip, port, "udp"), format!("errno {}\nrebound", libc::EADDRINUSE));
    drop(first);
    broker_released(&r, "udp", &public);
    let server = r.spawn("a1", true, &["socat", "-T", "5", &format!("UDP4-RECVFROM:{port},bind={ip},fork"), "PIPE"]);
    pinned(&server, "udp", &public);
    for &(host, shim) in r.client_hosts() {
        let out = r.run_ok(host, shim, &["socat", "-t", "3", "-", &format!("UDP4:{public}")], Some(&file), RUN, &server);
        assert_eq!(sha256_of(&out.stdout), want, "{host} (shim: {shim}): the echoed datagram differs");
    }
    drop(server);
    r.down();
}

#[test]
fn http_server_restarted_on_its_public_address_dpf() {
    let r = RealBed::up(Mode::Dpf);
    let want = payload(&r.file("payload.bin"), 1 << 20, 6);
    let first = http_server(&r, "8080", "0.0.0.0");
    let public = r.registered(&first, "tcp", "192.0.2.10:8080");
    let (ip, port) = host_port(&public);
    // dpfd's range is 40000-40999: a port outside it cannot be had.
    assert_eq!(bind_once(&r, ip, "50000", "tcp"), format!("errno {}\nrebound", libc::EADDRINUSE));
    assert_eq!(bind_once(&r, "198.51.100.77", port, "tcp"), format!("errno {}\nrebound", libc::EADDRNOTAVAIL));
    drop(first);
    // No wait: a forward of the same host is replaced by the new request.
    restarted_http_server(&r, &public, &want);
    r.down();
}
