//! Unmodified Python servers across the NAT (issue 7): `python3 -m http.server`
//! fetched with `curl` (a 4 MiB file, SHA-256 checked), bound to 0.0.0.0 and as a
//! dual-stack AF_INET6 listener (on `::` and on a v4-mapped address), and an `asyncio`
//! echo server (epoll-driven) with an `asyncio` client (1 MiB echoed, hashed).
//!
//! Each server runs on a1 under `scripts/gcb-run`; GCB mode: reached from pub
//! without and with the shim and from b1 with it; DPF mode: from pub, plain.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker, dpfd).

use std::time::Duration;

use testbed::real::{payload, sha256_file, Mode, RealBed};
use testbed::{python3, Proc};

const CURL_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `http.server` on a1 port 8080 serving a fresh 4 MiB payload; returns
/// the server, the address it registered as, and the payload's hash.
fn http_server(r: &RealBed, bind: &[&str]) -> (Proc, String, String) {
    let want = payload(&r.file("payload.bin"), 4 << 20, 7);
    let mut args = vec![python3().to_str().unwrap(), "-m", "http.server", "8080"];
    args.extend_from_slice(bind);
    let dir = r.scratch.to_str().unwrap().to_string();
    args.extend(["--directory", &dir]);
    let server = r.spawn("a1", true, &args);
    let public = r.registered(&server, "tcp", "192.0.2.10:8080");
    (server, public, want)
}

/// curl from every client host; every copy must hash like the original.
fn fetch_everywhere(r: &RealBed, server: &Proc, public: &str, want: &str) {
    let url = format!("http://{public}/payload.bin");
    for &(host, shim) in r.client_hosts() {
        let got = r.file(&format!("got-{host}-{shim}"));
        let got_s = got.to_str().unwrap();
        r.run_ok(host, shim, &["curl", "-sS", "--fail", "--max-time", "50", "-o", got_s, &url], None, CURL_TIMEOUT, server);
        assert_eq!(sha256_file(&got), want, "curl from {host} (shim: {shim}) got different bytes");
        let _ = std::fs::remove_file(&got);
    }
}

fn http_server_with_bind(mode: Mode) {
    let r = RealBed::up(mode);
    let (server, public, want) = http_server(&r, &["--bind", "0.0.0.0"]);
    fetch_everywhere(&r, &server, &public, &want);
    drop(server);
    r.down();
}

#[test]
fn http_server_and_curl_gcb() {
    http_server_with_bind(Mode::Gcb);
}

#[test]
fn http_server_and_curl_dpf() {
    http_server_with_bind(Mode::Dpf);
}

/// `http.server` without `--bind` listens on `::` with IPV6_V6ONLY off wherever
/// the resolver prefers IPv6 for the wildcard; the test bed's hosts have IPv6
/// disabled, so there it would pick 0.0.0.0, and `--bind ::` asks for the very
/// same dual-stack listener. The shim must register it like an IPv4 wildcard
/// listener, and name everything with v4-mapped addresses. A listener bound to
/// a v4-mapped address is the same case; a v6-only one stays pass-through.
#[test]
fn dual_stack_http_server_gcb() {
    let r = RealBed::up(Mode::Gcb);
    for bind in ["::", "::ffff:192.0.2.10"] {
        let (server, public, want) = http_server(&r, &["--bind", bind]);
        // http.server prints the address it serves on from getsockname: the
        // proxy, as a v4-mapped IPv6 address.
        let (ip, port) = testbed::real::host_port(&public);
        server
            .wait_line(&format!("Serving HTTP on ::ffff:{ip} port {port} "), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        fetch_everywhere(&r, &server, &public, &want);
        // The access log names each peer (getpeername of the accepted socket) as
        // a v4-mapped address: the plain client on pub came through the broker
        // and is still reported as itself, b1 as its gateway GB.
        // The access log reaches us on a reader thread, perhaps after the clients finish.
        let peer = |ip: &str, whose: &str| {
            if let Err(e) = server.wait_stderr(&format!("::ffff:{ip} - - "), Duration::from_secs(10)) {
                panic!("{bind}: peer of {whose}: {e}");
            }
        };
        peer("203.0.113.20", "the pub clients");
        peer("203.0.113.2", "the relayed b1 client");
        drop(server);
    }
    // Pure IPv6 is left alone: no registration, the kernel's own names. The
    // shim registers inside `listen`, so once the IPv4 listener made after it
    // has registered, a registration of the v6-only one would have been
    // logged (the same stderr, earlier) and would be at the broker.
    let v6only = "import socket\n\
s = socket.socket(socket.AF_INET6)\n\
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n\
s.bind(('::', 8081))\n\
s.listen()\n\
print('NAME', s.getsockname()[:2], flush=True)\n\
v4 = socket.socket()\n\
v4.bind(('0.0.0.0', 8082))\n\
v4.listen()\n\
import time; time.sleep(30)\n";
    let server = r.spawn("a1", true, &[python3().to_str().unwrap(), "-c", v6only]);
    let name = server.wait_line("NAME ", Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(name, "('::', 8081)", "a v6-only listener keeps its own name");
    let v4 = r.registered(&server, "tcp", "192.0.2.10:8082");
    let log = server.stderr_text();
    assert_eq!(log.matches("gcb: registered").count(), 1, "only the IPv4 listener registers: {log}");
    // (The http.servers above may still be listed until the broker retires them.)
    let regs = r.registrations();
    assert!(regs.iter().any(|(_, public, _)| *public == v4), "{v4} is not at the broker: {regs:?}");
    assert!(regs.iter().all(|(_, _, local)| !local.ends_with(":8081")), "the v6-only listener is at the broker: {regs:?}");
    drop(server);
    r.down();
}

/// An asyncio echo server (selector event loop: epoll) and an asyncio client
/// sending 1 MiB and checking every byte that comes back.
const ASYNC_SERVER: &str = r#"
import asyncio, sys
async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()
async def main():
    server = await asyncio.start_server(echo, "0.0.0.0", int(sys.argv[1]))
    host, port = server.sockets[0].getsockname()[:2]
    print(f"LISTEN {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"#;

const ASYNC_CLIENT: &str = r#"
import asyncio, hashlib, sys
async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    data = bytes((i * 2654435761 >> 13) & 255 for i in range(1 << 20))
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 30)
    peer = writer.get_extra_info("peername")
    async def send():
        writer.write(data)
        await writer.drain()
        writer.write_eof()
    sender = asyncio.create_task(send())
    got = bytearray()
    while chunk := await asyncio.wait_for(reader.read(65536), 30):
        got += chunk
    await sender
    print(f"PEER {peer[0]}:{peer[1]}")
    print("SENT", hashlib.sha256(data).hexdigest())
    print("GOT", hashlib.sha256(got).hexdigest(), len(got))
asyncio.run(main())
"#;

fn asyncio_echo(mode: Mode) {
    let r = RealBed::up(mode);
    let server = r.spawn("a1", true, &[python3().to_str().unwrap(), "-c", ASYNC_SERVER, "8090"]);
    let public = r.registered(&server, "tcp", "192.0.2.10:8090");
    let shown = server.wait_line("LISTEN ", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shown, public, "asyncio's getsockname must be the public address");
    for &(host, shim) in r.client_hosts() {
        let out = r.run_ok(host, shim, &[python3().to_str().unwrap(), "-c", ASYNC_CLIENT, &public], None, Duration::from_secs(90), &server);
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().to_string();
        let sent = field("SENT ");
        assert!(!sent.is_empty(), "{text}");
        assert_eq!(field("GOT "), format!("{sent} {}", 1 << 20), "{host} (shim: {shim}): the echo differs");
        assert_eq!(field("PEER "), public, "{host} (shim: {shim}): the client's peer name");
    }
    drop(server);
    r.down();
}

#[test]
fn asyncio_echo_gcb() {
    asyncio_echo(Mode::Gcb);
}

#[test]
fn asyncio_echo_dpf() {
    asyncio_echo(Mode::Dpf);
}
