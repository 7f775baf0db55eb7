//! The shim's failures reach the program as the errno of the call it made,
//! with one `GCB_LOG` line saying why, never a crash or a hang: in the NAT
//! test bed, two listeners on a1 register and are then killed with SIGKILL,
//! so the broker still holds their registrations; a GCB connector in realm B
//! (a relay) to one and one on the public host (a reversal) to the other
//! each get an error from `connect` within a bounded time and exactly one
//! warning naming the proxy address. The reversal's is ECONNREFUSED, told
//! by the broker (`ConnectFailed`) as soon as the listener fails to answer,
//! well before the connector's own 20 s timeout; the broker then drops the
//! registration, so the next connect is refused at once (`NotRegistered`).
//! With the broker stopped, `listen` still succeeds, with one warning that
//! the listener stays unregistered.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker).

use std::time::Duration;

use testbed::{python3, release_bin, require_root, wait_for, TestBed};

const BROKER: &str = "203.0.113.10";
/// A connector waits for a reversed connection 20 s before ETIMEDOUT.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);
/// A behaviour bound, not a benchmark: the broker gives up on a silent
/// listener after about 2.4 s, the connector's own timeout is 20 s.
const TOLD_WITHIN_S: f64 = 10.0;

/// Runs `script` under the shim on `host`; its stdout and the shim's log.
fn under_shim(bed: &TestBed, host: &str, script: &str) -> (String, String) {
    let mut c = bed.cmd(host, python3());
    c.env("LD_PRELOAD", release_bin("libgcb.so"))
        .env("GCB_INAGENT", BROKER)
        .env("GCB_LOG", "info")
        .env_remove("GCB_LOG_FILE")
        .args(["-c", script]);
    let out = testbed::run_with_timeout(c, CONNECT_LIMIT).expect("bounded run");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!stderr.contains("panicked"), "the shim panicked on {host}:\n{stderr}");
    (stdout, stderr)
}

/// Connects to the proxy port and prints the outcome and how long
/// `connect` took, in seconds.
fn connect_script(port: u16) -> String {
    format!(
        "
import errno, socket, time
s = socket.socket()
t = time.monotonic()
try:
    s.connect(('{BROKER}', {port}))
    print('CONNECTED')
except OSError as e:
    print('ERRNO', errno.errorcode.get(e.errno, e.errno), time.monotonic() - t)
"
    )
}

/// Runs `connect_script` on `host`: the errno's name, the seconds it took,
/// and the shim's log.
fn failed_connect(bed: &TestBed, host: &str, port: u16) -> (String, f64, String) {
    let (out, log) = under_shim(bed, host, &connect_script(port));
    let failed = out.trim().strip_prefix("ERRNO ").unwrap_or_else(|| panic!("{host}: connect did not fail: {out}\n{log}"));
    let (errno, secs) = failed.split_once(' ').unwrap_or_else(|| panic!("{host}: {out}"));
    (errno.to_owned(), secs.parse().unwrap(), log)
}

/// The shim's warnings in `log`.
fn warnings(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.starts_with("gcb: warning: ")).collect()
}

/// A test bed with a broker on the broker host.
fn bed_with_broker() -> (TestBed, testbed::Proc) {
    require_root();
    let bin = release_bin("gcb-broker");
    assert!(bin.exists(), "{} is missing: run `cargo build --release`", bin.display());
    let bed = TestBed::up().expect("test bed");
    let args = [bin.to_str().unwrap(), "--listen", "203.0.113.10:65432", "--port-range", "20000-20099"];
    let broker = bed.spawn("broker", &args).expect("gcb-broker");
    wait_for(STEP, "broker started", || broker.stderr_text().contains("started:").then_some(()));
    (bed, broker)
}

#[test]
fn a_dead_listener_is_an_errno_and_one_line() {
    let (bed, broker) = bed_with_broker();

    let kill_after_listen = |port: u16| {
        format!(
            "
import os, socket
s = socket.socket()
s.bind(('0.0.0.0', {port}))
s.listen()
print('LISTEN %s:%d' % s.getsockname(), flush=True)
os.kill(os.getpid(), 9)
"
        )
    };
    let dead_listener = |port| {
        let (out, log) = under_shim(&bed, "a1", &kill_after_listen(port));
        let proxy = out.trim().strip_prefix("LISTEN 203.0.113.10:").unwrap_or_else(|| panic!("not registered: {out}\n{log}"));
        proxy.parse::<u16>().unwrap()
    };
    let (cross_realm, reversed) = (dead_listener(7000), dead_listener(7002));

    let (errno, _, log) = failed_connect(&bed, "b1", cross_realm);
    assert!(["ECONNREFUSED", "ETIMEDOUT", "ECONNRESET"].contains(&errno.as_str()), "b1: {errno}");
    let w = warnings(&log);
    assert_eq!(w.len(), 1, "b1: one warning, not {w:?}\n{log}");
    // Between two private realms the broker decides a punch (or, for a pair
    // whose punch failed before, the relay); either names its way.
    let want = ["punch", "relay"].map(|way| format!("gcb: warning: connect to 203.0.113.10:{cross_realm} by {way} failed: "));
    assert!(want.iter().any(|p| w[0].starts_with(p)), "b1: {}\nwant one of {want:?}", w[0]);

    let (errno, secs, log) = failed_connect(&bed, "pub", reversed);
    assert_eq!(errno, "ECONNREFUSED", "pub: the broker tells the connector the listener is gone\n{log}");
    assert!(secs < TOLD_WITHIN_S, "pub: refused after {secs:.1} s, not as soon as the broker knew\n{log}");
    let w = warnings(&log);
    assert_eq!(w.len(), 1, "pub: one warning, not {w:?}\n{log}");
    let want = format!("gcb: warning: connect to 203.0.113.10:{reversed} by reversal failed: ");
    assert!(w[0].starts_with(&want), "pub: {}\nwant {want}", w[0]);
    eprintln!("reversal to a dead listener refused after {secs:.2} s");

    // The broker dropped the registration: the next connect is refused by
    // its answer, with no reversal tried.
    let (errno, _, log) = failed_connect(&bed, "pub", reversed);
    assert_eq!(errno, "ECONNREFUSED", "pub again\n{log}");
    assert!(log.contains("nothing is registered there"), "pub again: not NotRegistered\n{log}");
    assert_eq!(warnings(&log), Vec::<&str>::new(), "pub again: {log}");

    broker.kill();
    drop(broker);
    let listen = "
import socket
s = socket.socket()
s.bind(('0.0.0.0', 7001))
s.listen()
print('LISTEN %s:%d' % s.getsockname())
";
    let (out, log) = under_shim(&bed, "b1", listen);
    assert_eq!(out.trim(), "LISTEN 0.0.0.0:7001", "{log}");
    let w = warnings(&log);
    assert_eq!(w.len(), 1, "{log}");
    assert!(w[0].contains("stays unregistered"), "{}", w[0]);
    bed.down().expect("test bed down");
}

/// A registered UDP socket on a1 whose process died, sent to from a GCB
/// sender on pub (a reversal: the broker asks the dead listener for a hole).
/// UDP has no call that waits for the listener, so nothing needs telling, as
/// a TCP connector does (`ConnectFailed`): the sender's datagrams go through
/// the proxy meanwhile, and once the broker gives up on the hole (about
/// 2.4 s) it drops the registration and closes the proxy port. Then a
/// connected sender gets ECONNREFUSED from its next send, as from any dead
/// UDP peer, an unconnected one's `sendto` goes on succeeding (as plain UDP
/// to a dead peer does), and a new `connect` is refused at once.
#[test]
fn a_dead_udp_listener_is_refused_as_plain_udp_would_be() {
    let (bed, broker) = bed_with_broker();
    let die = "
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 7010))
print('BOUND %s:%d' % s.getsockname(), flush=True)
os.kill(os.getpid(), 9)
";
    let (out, log) = under_shim(&bed, "a1", die);
    let port: u16 = out.trim().strip_prefix("BOUND 203.0.113.10:").unwrap_or_else(|| panic!("not registered: {out}\n{log}")).parse().unwrap();

    let send = format!(
        "
import errno, socket, time
dest = ('{BROKER}', {port})
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(dest)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t, refused, unconnected = time.monotonic(), None, 'ok'
while refused is None and time.monotonic() - t < 20:
    try:
        c.send(b'to a dead listener')
    except OSError as e:
        refused = '%s %.2f' % (errno.errorcode.get(e.errno, e.errno), time.monotonic() - t)
    try:
        u.sendto(b'to a dead listener', dest)
    except OSError as e:
        unconnected = errno.errorcode.get(e.errno, e.errno)
    time.sleep(0.05)
print('CONNECTED', refused)
print('UNCONNECTED', unconnected)
n = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    n.connect(dest)
    print('AGAIN connected')
except OSError as e:
    print('AGAIN', errno.errorcode.get(e.errno, e.errno))
"
    );
    let (out, log) = under_shim(&bed, "pub", &send);
    let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_else(|| panic!("no {k}: {out}\n{log}")).trim().to_string();
    let connected = field("CONNECTED ");
    let (errno, secs) = connected.split_once(' ').unwrap_or_else(|| panic!("the connected sender never failed: {out}\n{log}"));
    assert_eq!(errno, "ECONNREFUSED", "{out}\n{log}\n{}", broker.stderr_text());
    let secs: f64 = secs.parse().unwrap();
    assert!(secs < TOLD_WITHIN_S, "refused after {secs:.1} s\n{log}");
    eprintln!("a connected UDP sender to a dead listener refused after {secs:.2} s");
    assert_eq!(field("UNCONNECTED "), "ok", "sendto as plain UDP: {out}\n{log}");
    assert_eq!(field("AGAIN "), "ECONNREFUSED", "{out}\n{log}");
    assert!(log.contains("nothing is registered there"), "the broker answered NotRegistered:\n{log}");
    assert_eq!(warnings(&log), Vec::<&str>::new(), "no warning for what plain UDP does too: {log}");
    broker.kill();
    drop(broker);
    bed.down().expect("test bed down");
}
