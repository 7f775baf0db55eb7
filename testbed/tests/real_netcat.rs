//! `socat` and `ncat` across the NAT (issue 7), both unmodified, the servers on
//! a1 under `scripts/gcb-run`:
//!
//! * `socat -b 4096 TCP-LISTEN:…,fork PIPE`: an echo server forking a worker per
//!   connection; a `socat` client sends 1 MiB and must get the same bytes back.
//! * `ncat -l -k -c CMD`: ncat forks and execs a shell command per connection;
//!   one server sends a 1 MiB file to `ncat --recv-only`, another hashes what
//!   `ncat --send-only` sends it; both hashes must match the file's.
//! * `socat UDP4-RECVFROM:…,fork PIPE`: a UDP echo server; a `socat` client's
//!   datagram must come back intact.
//!
//! GCB mode from pub without and with the shim and from b1 with it; DPF mode
//! from pub; TCP and UDP alike.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker, dpfd).

use std::time::Duration;

use testbed::real::{host_port, payload, sha256_file, sha256_of, Mode, RealBed};
use testbed::wait_for;

const RUN: Duration = Duration::from_secs(60);

/// The echo server's block size: one page. socat's default (8192 bytes) can
/// deadlock `PIPE` by itself, with or without the shim: its worker is the only
/// reader of its own pipe, `select` says a pipe is writable once one page is
/// free, and a blocking 8192-byte write then waits for a second page that only
/// the blocked worker could free. It happens when the worker keeps reading the
/// socket while it cannot write it (the client lags), until the 64 KiB pipe is
/// full, so it shows on direct paths (reversal, a plain direct connection) and
/// hardly ever through the broker's relay, whose buffers absorb the lag. A write
/// of at most a page always fits in the free page `select` promised.
const SOCAT_BLOCK: &str = "4096";

fn socat_tcp_echo(mode: Mode) {
    let r = RealBed::up(mode);
    let file = r.file("payload.bin");
    let want = payload(&file, 1 << 20, 11);
    // -t 30 on the server too: once the client's end of stream arrives, socat
    // closes after -t (0.5 s by default) even with echo still in its pipe, which
    // truncated the echo on a loaded CI machine.
    let server = r.spawn("a1", true, &["socat", "-b", SOCAT_BLOCK, "-t", "30", "TCP4-LISTEN:7000,fork,reuseaddr", "PIPE"]);
    let public = r.registered(&server, "tcp", "192.0.2.10:7000");
    for &(host, shim) in r.client_hosts() {
        let to = format!("TCP4:{public}");
        // -t: after stdin's end, wait for the echo's end rather than 0.5 s.
        let out = r.run_ok(host, shim, &["socat", "-t", "30", "-", &to], Some(&file), RUN, &server);
        assert!(
            out.stdout.len() == 1 << 20 && sha256_of(&out.stdout) == want,
            "{host} (shim: {shim}): {} bytes came back, not the 1 MiB sent\nclient stderr:\n{}\nserver stderr:\n{}",
            out.stdout.len(),
            String::from_utf8_lossy(&out.stderr),
            server.stderr_text()
        );
    }
    drop(server);
    r.down();
}

/// The client on pub under the shim makes this a reversed connection (a1 dials
/// pub directly); its stall under load, once ignored here, was socat's own
/// `PIPE` deadlock (see [`SOCAT_BLOCK`]), reproduced without the shim on a
/// direct path. `gcb_tcp.rs` stresses reversed connections with the C echo
/// programs, which cannot deadlock by themselves.
#[test]
fn socat_tcp_echo_gcb() {
    socat_tcp_echo(Mode::Gcb);
}

#[test]
fn socat_tcp_echo_dpf() {
    socat_tcp_echo(Mode::Dpf);
}

fn ncat_both_directions(mode: Mode) {
    let r = RealBed::up(mode);
    let file = r.file("payload.bin");
    let want = payload(&file, 1 << 20, 12);
    let sender = r.spawn("a1", true, &["ncat", "-l", "-k", "7001", "-c", &format!("cat {}", file.display())]);
    let send_at = r.registered(&sender, "tcp", "192.0.2.10:7001");
    let sink_dir = r.file("sink");
    std::fs::create_dir_all(&sink_dir).expect("sink dir");
    // Each connection's worker writes the hash of what it received to its own file.
    let sink_cmd = format!("sha256sum > {}/got.$$", sink_dir.display());
    let sink = r.spawn("a1", true, &["ncat", "-l", "-k", "7002", "-c", &sink_cmd]);
    let sink_at = r.registered(&sink, "tcp", "192.0.2.10:7002");
    for (i, &(host, shim)) in r.client_hosts().iter().enumerate() {
        let (ip, port) = host_port(&send_at);
        let out = r.run_ok(host, shim, &["ncat", "--recv-only", ip, port], None, RUN, &sender);
        assert_eq!(sha256_of(&out.stdout), want, "{host} (shim: {shim}): what ncat sent differs");

        let (ip, port) = host_port(&sink_at);
        r.run_ok(host, shim, &["ncat", "--send-only", ip, port], Some(&file), RUN, &sink);
        let hashes = wait_for(Duration::from_secs(15), "the sink's workers wrote their hashes", || {
            let got: Vec<String> = std::fs::read_dir(&sink_dir)
                .ok()?
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .filter(|t| t.ends_with('\n'))
                .collect();
            (got.len() == i + 1).then_some(got)
        });
        for h in hashes {
            assert_eq!(h.split_whitespace().next(), Some(want.as_str()), "{host} (shim: {shim}): what ncat received differs");
        }
    }
    drop((sender, sink));
    r.down();
}

#[test]
fn ncat_both_directions_gcb() {
    ncat_both_directions(Mode::Gcb);
}

#[test]
fn ncat_both_directions_dpf() {
    ncat_both_directions(Mode::Dpf);
}

/// One datagram of 3000 bytes of text, echoed by a worker socat forks for it.
fn socat_udp_echo(mode: Mode) {
    let r = RealBed::up(mode);
    let file = r.file("datagram.txt");
    let text: String = (0..3000u32).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
    std::fs::write(&file, &text).expect("datagram");
    let want = sha256_file(&file);
    let server = r.spawn("a1", true, &["socat", "-T", "5", "UDP4-RECVFROM:7100,fork", "PIPE"]);
    let public = r.registered(&server, "udp", "192.0.2.10:7100");
    for &(host, shim) in r.client_hosts() {
        for round in 0..3 {
            let to = format!("UDP4:{public}");
            let out = r.run_ok(host, shim, &["socat", "-t", "3", "-", &to], Some(&file), RUN, &server);
            assert_eq!(sha256_of(&out.stdout), want, "{host} (shim: {shim}) round {round}: the echoed datagram differs");
        }
    }
    drop(server);
    r.down();
}

#[test]
fn socat_udp_echo_gcb() {
    socat_udp_echo(Mode::Gcb);
}

#[test]
fn socat_udp_echo_dpf() {
    socat_udp_echo(Mode::Dpf);
}
