//! `iperf3` across the NAT (issue 7): the server on a1 under `scripts/gcb-run`,
//! clients on pub (without and with the shim) and on b1 (with it), 2 s each,
//! TCP forward and reverse (`-R`), and UDP (`-u`). The control connection and
//! the data connections all go through the server's one listener, so every
//! test exercises several brokered connections. The byte counts of iperf3's
//! JSON report (sender's and receiver's) are checked.
//!
//! GCB mode for TCP and UDP; DPF mode from pub.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker, dpfd).

use std::time::Duration;

use testbed::json::{self, Value};
use testbed::real::{host_port, Mode, RealBed};

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for k in path {
        at = at.get(k).unwrap_or_else(|| panic!("no {path:?} in iperf3's report; its error: {:?}", v.get("error")));
    }
    match at {
        Value::Num(n) => *n,
        other => panic!("{path:?} is {other:?}"),
    }
}

/// Runs one iperf3 client against `public` and returns its JSON report.
fn client(r: &RealBed, host: &str, shim: bool, public: &str, extra: &[&str], server: &testbed::Proc) -> Value {
    let (ip, port) = host_port(public);
    let mut args = vec!["iperf3", "-c", ip, "-p", port, "-t", "2", "-J", "--connect-timeout", "20000"];
    args.extend_from_slice(extra);
    let out = r.run_ok(host, shim, &args, None, Duration::from_secs(60), server);
    // iperf3 closes its listener after each test and listens again (the shim
    // keeps the public address, see `gcb::released`); like any iperf3 user, wait
    // for it to say so before the next test, or a client may be refused between
    // the two.
    server.wait_line("Server listening on ", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    json::parse(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| panic!("iperf3 {extra:?} from {host}: {e}"))
}

fn iperf3(mode: Mode, udp: bool) {
    let r = RealBed::up(mode);
    let server = r.spawn("a1", true, &["iperf3", "-s", "-p", "5201", "--forceflush"]);
    let public = r.registered(&server, "tcp", "192.0.2.10:5201");
    server.wait_line("Server listening on ", Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    for &(host, shim) in r.client_hosts() {
        if udp {
            for extra in [&["-u", "-b", "20M"][..], &["-u", "-b", "20M", "-R"]] {
                let report = client(&r, host, shim, &public, extra, &server);
                let packets = num(&report, &["end", "sum", "packets"]);
                let lost = num(&report, &["end", "sum", "lost_packets"]);
                let bytes = num(&report, &["end", "sum", "bytes"]);
                assert!(packets > 100.0 && bytes > 1e6, "{host} (shim: {shim}) {extra:?}: {packets} packets, {bytes} bytes");
                assert!(lost <= packets / 10.0, "{host} (shim: {shim}) {extra:?}: {lost} of {packets} lost");
            }
        } else {
            for extra in [&[][..], &["-R"], &["-P", "2"]] {
                let report = client(&r, host, shim, &public, extra, &server);
                let sent = num(&report, &["end", "sum_sent", "bytes"]);
                let received = num(&report, &["end", "sum_received", "bytes"]);
                // TCP delivers what was sent; the sender's count can include
                // bytes still in flight when the test's clock ran out.
                assert!(received > 1e6, "{host} (shim: {shim}) {extra:?}: only {received} bytes received");
                assert!(received <= sent && received >= sent * 0.9, "{host} (shim: {shim}) {extra:?}: sent {sent}, received {received}");
            }
        }
    }
    drop(server);
    r.down();
}

#[test]
fn iperf3_tcp_gcb() {
    iperf3(Mode::Gcb, false);
}

#[test]
fn iperf3_tcp_dpf() {
    iperf3(Mode::Dpf, false);
}

/// iperf3's UDP server `connect`s its listening socket to the first sender
/// (relayed by the broker: a broker channel carries that peer) and binds a
/// fresh socket to the same port for the next one (it joins the registration).
#[test]
fn iperf3_udp_gcb() {
    iperf3(Mode::Gcb, true);
}

#[test]
fn iperf3_udp_dpf() {
    iperf3(Mode::Dpf, true);
}
