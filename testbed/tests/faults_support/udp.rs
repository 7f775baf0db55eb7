//! UDP programs for the fault tests: a server that connects its socket to its
//! client (iperf3's UDP server does; under the shim that is a broker channel),
//! optionally in a forked child too, and a plain client that streams numbered
//! datagrams and checks every echo, byte for byte and by its source.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testbed::Proc;

use super::{wait_for, Faults, STARTUP};

/// `server.py PORT one|fork`: binds 0.0.0.0:PORT (SO_REUSEADDR and
/// SO_REUSEPORT), prints `LISTEN udp NAME`, takes its first client's
/// datagram and connects to it. `fork`: then binds a second socket to the
/// same address (it joins the registration), forks, and the child serves the
/// next client on it, connected likewise, while the parent serves the first.
/// Each serving process prints `CONNECTED WHO PEER FD`, echoes on its
/// connected socket until `stop`, prints `NAME WHO ADDR` whenever
/// `getsockname` changes (a failover) and `DONE WHO PEER FD ECHOES` at the end.
const SERVER: &str = r#"
import os, socket, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
def bound():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    s.settimeout(120)
    return s
def serve(s, who, data):
    print("CONNECTED %s %s:%d %d" % ((who,) + s.getpeername() + (s.fileno(),)), flush=True)
    name, n, end = s.getsockname(), 0, time.time() + 150
    s.settimeout(0.5)
    while data != b"stop" and time.time() < end:
        if data is not None:
            s.send(b"echo:" + data)
            n += 1
        try:
            data = s.recv(65536)
        except socket.timeout:
            data = None
        if s.getsockname() != name:
            name = s.getsockname()
            print("NAME %s %s:%d" % ((who,) + name), flush=True)
    print("DONE %s %s:%d %d %d" % ((who,) + s.getpeername() + (s.fileno(), n)), flush=True)
    s.send(b"done")
a = bound()
print("LISTEN udp %s:%d" % a.getsockname(), flush=True)
data, peer = a.recvfrom(65536)
a.connect(peer)
if mode == "fork":
    b = bound()
    print("READY", flush=True)
    pid = os.fork()
    if pid == 0:
        data2, peer2 = b.recvfrom(65536)
        b.connect(peer2)
        serve(b, "child", data2)
        os._exit(0)
serve(a, "parent", data)
if mode == "fork":
    os.waitpid(pid, 0)
"#;

/// `client.py DEST STOPFILE`: sends a numbered datagram every 100 ms to DEST
/// (`IP:PORT`, or `@FILE` holding it, read before every datagram: a client
/// that looks the service up again) until STOPFILE exists; prints
/// `REPLY seq sent_unix_ms ok|BAD ...` per echo (ok: every byte, and from the
/// address that datagram was sent to), then stops the server (`DONE`).
const CLIENT: &str = r#"
import os, socket, sys, time
def dest():
    t = sys.argv[1]
    if t.startswith("@"):
        with open(t[1:]) as f:
            t = f.read().strip()
    ip, port = t.split(":")
    return (ip, int(port))
def payload(n):
    return ("seq:%d:" % n).encode() + bytes((n * 7 + i) % 256 for i in range(200))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, n, end = {}, 0, time.time() + 150
while time.time() < end and not os.path.exists(sys.argv[2]):
    n += 1
    to = dest()
    sent[n] = (time.time(), to)
    s.sendto(payload(n), to)
    tick = time.time() + 0.1
    while time.time() < tick:
        s.settimeout(max(tick - time.time(), 0.001))
        try:
            data, src = s.recvfrom(65536)
        except socket.timeout:
            break
        k = int(data.split(b":")[2]) if data.startswith(b"echo:seq:") else 0
        ok = k in sent and data == b"echo:" + payload(k) and src == sent[k][1]
        at = int(sent[k][0] * 1000) if k in sent else 0
        print("REPLY %d %d %s" % (k, at, "ok" if ok else "BAD %r from %s" % (data[:40], src)), flush=True)
s.settimeout(0.2)
for _ in range(50):
    s.sendto(b"stop", dest())
    try:
        if s.recvfrom(65536)[0] == b"done":
            print("DONE", flush=True)
            break
    except socket.timeout:
        pass
"#;

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn py() -> String {
    testbed::python3().to_str().unwrap().to_string()
}

/// The connected-socket server on a1:`port` under the shim with `brokers`;
/// returns it and the address it advertised.
pub fn server(f: &Faults, brokers: &str, port: u16, fork: bool) -> (Proc, String) {
    let mode = if fork { "fork" } else { "one" };
    let p = f.bed.spawn_cmd(f.cmd("a1", Some(brokers), &[&py(), "-u", "-c", SERVER, &port.to_string(), mode])).expect("udp server");
    let name = p.wait_line("LISTEN udp ", STARTUP).unwrap_or_else(|e| panic!("{e}"));
    (p, name)
}

/// A line of `p`'s stdout starting with `prefix`, seen so far or within
/// `within` (lines are not consumed: the server's come in any order).
pub fn line(p: &Proc, prefix: &str, within: Duration, context: &dyn Fn() -> String) -> String {
    wait_for(within, || format!("a line {prefix:?} from the server: {:?}\n{}", p.stdout_seen(), context()), || {
        p.stdout_seen().iter().find_map(|l| l.strip_prefix(prefix).map(str::to_string))
    })
}

/// A streaming plain client on pub.
pub struct Stream {
    pub client: Proc,
    stop: PathBuf,
}

impl Stream {
    /// Streams to `dest` (`IP:PORT` or `@FILE`) until [`Stream::stop`].
    pub fn start(f: &Faults, dest: &str, stop: &Path) -> Stream {
        let _ = std::fs::remove_file(stop);
        let client = f.bed.spawn_cmd(f.cmd("pub", None, &[&py(), "-u", "-c", CLIENT, dest, stop.to_str().unwrap()])).expect("client");
        Stream { client, stop: stop.to_path_buf() }
    }

    /// The next echo, verified; the unix time its datagram was sent at.
    pub fn reply(&self, within: Duration, context: &dyn Fn() -> String) -> u64 {
        let line = self.client.wait_line("REPLY ", within).unwrap_or_else(|e| panic!("{e}\n{}", context()));
        let fields: Vec<&str> = line.splitn(3, ' ').collect();
        assert_eq!(fields[2], "ok", "an echo's bytes or source: {line}\n{}", context());
        fields[1].parse().unwrap()
    }

    /// Waits for the echo of a datagram sent at or after `since_ms` (echoes
    /// of older ones may still be queued); how long after `since` it came.
    pub fn first_echo_after(&self, since: Instant, since_ms: u64, bound: Duration, context: &dyn Fn() -> String) -> Duration {
        while self.reply(bound.saturating_sub(since.elapsed()), context) < since_ms {}
        since.elapsed()
    }

    /// Makes the client stop the server, and waits for its `DONE`.
    pub fn stop(&self, context: &dyn Fn() -> String) {
        std::fs::write(&self.stop, b"").expect("stop file");
        self.client.wait_line("DONE", STARTUP).unwrap_or_else(|e| panic!("{e}\n{}", context()));
        let _ = std::fs::remove_file(&self.stop);
    }
}
