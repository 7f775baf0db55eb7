//! dpfd on the NAT test bed's gateway GA, driven by `dpf-request` from the
//! private hosts, with the paper's unmodified echo programs as the
//! forwarded servers and their public peers: forwards that really carry
//! traffic through kernel NAT (TCP and UDP, on two public IPs, from the
//! public side, hairpin from inside, and from the gateway itself), the
//! probe deleting a dead client's forward, recovery after `kill -9` and
//! after our nft table is deleted, the sync repairing the kernel while a
//! hand-made table on GA survives, and refusals that change nothing.
//!
//! Needs root, `cargo build --release` (dpfd) and `make -C c-tests`.

use std::path::PathBuf;
use std::time::Duration;

use testbed::{release_bin, require_root, wait_for, workspace_root, Proc, TestBed};

const SERVER: &str = "192.0.2.1:65433";
const STEP: Duration = Duration::from_secs(10);
/// Probe interval 1 s + probe timeout 1 s + commit, with room for a busy machine.
const PROBE_BOUND: Duration = Duration::from_secs(8);

fn bin(path: PathBuf, hint: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {hint}", path.display());
    path
}

fn dpfd_bin() -> PathBuf {
    bin(release_bin("dpfd"), "run `cargo build --release -p dpfd`")
}

fn ctest(name: &str) -> PathBuf {
    bin(
        workspace_root().join("c-tests/build").join(name),
        "run `make -C c-tests`",
    )
}

fn requester() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dpf-request"))
}

struct Bed {
    bed: TestBed,
    mirror: PathBuf,
}

impl Bed {
    fn run(&self, host: &str, args: &[&str]) -> (i32, String) {
        let out = self
            .bed
            .run(host, args, STEP)
            .unwrap_or_else(|e| panic!("{args:?} on {host}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    fn ok(&self, host: &str, args: &[&str]) -> String {
        let (code, text) = self.run(host, args);
        assert_eq!(code, 0, "{args:?} on {host}: {text}");
        text
    }

    fn start_dpfd(&self) -> Proc {
        let mirror = self.mirror.to_str().unwrap();
        let dpfd = dpfd_bin();
        let args = [
            dpfd.to_str().unwrap(),
            "--listen",
            "192.0.2.1",
            "--public-ip",
            "203.0.113.1,203.0.113.3",
            "--port-range",
            "40000-40999",
            "--mirror",
            mirror,
            "--probe-interval-s",
            "1",
            "--log",
            "debug",
        ];
        let p = self.bed.spawn("ga", &args).expect("start dpfd");
        wait_for(STEP, "dpfd started", || {
            p.stderr_text()
                .contains("started: command port udp")
                .then_some(())
        });
        p
    }

    /// `dpf-request --server GA ARGS` on `host`: exit code and output.
    fn request(&self, host: &str, args: &[&str]) -> (i32, String) {
        let r = requester();
        let mut all = vec![r.to_str().unwrap(), "--server", SERVER];
        all.extend_from_slice(args);
        self.run(host, &all)
    }

    /// A client holding a forward of `local` and its management socket.
    fn hold(&self, proto: &str, local: &str) -> (Proc, String) {
        let r = requester();
        let args = [
            r.to_str().unwrap(),
            "--server",
            SERVER,
            "forward",
            "--proto",
            proto,
            "--local",
            local,
            "--hold",
        ];
        let p = self.bed.spawn("a1", &args).expect("start dpf-request");
        let public = p
            .wait_line("PUBLIC ", STEP)
            .unwrap_or_else(|e| panic!("forward of {local}: {e}"));
        (p, public)
    }

    fn echo(&self, from: &str, proto: &str, dest: &str) {
        let c = ctest("echo-client");
        let out = self.ok(
            from,
            &[
                c.to_str().unwrap(),
                "--proto",
                proto,
                "--connect",
                dest,
                "--bytes",
                "2000",
                "--rounds",
                "3",
            ],
        );
        assert!(
            out.contains("SUMMARY runs=1 ok=1") && out.contains("lost=0"),
            "echo {proto} {from} -> {dest}: {out}"
        );
    }

    fn map(&self, proto: &str) -> String {
        self.ok(
            "ga",
            &["nft", "list", "map", "ip", "dpf", &format!("fwd_{proto}")],
        )
    }

    fn element(public: &str, local: &str) -> String {
        format!("{} : {}", nft_addr(public), nft_addr(local))
    }

    fn status(&self) -> String {
        self.ok("ga", &[dpfd_bin().to_str().unwrap(), "status", "--json"])
    }
}

/// `ip:port` as nft prints a concatenated key: `ip . port`.
fn nft_addr(addr: &str) -> String {
    addr.replace(':', " . ")
}

fn kill9(p: &Proc) {
    // SAFETY: kill(2) on a child we have not reaped, so the PID is its own.
    assert_eq!(
        unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGKILL) },
        0
    );
    assert!(
        p.wait_timeout(STEP).is_some(),
        "SIGKILL did not end {}",
        p.pid()
    );
}

#[test]
fn dpfd_forwards_probes_recovers_and_refuses() {
    require_root();
    let bed = TestBed::up().expect("test bed");
    let dir = std::env::temp_dir().join(format!("dpfd-bed-{}", bed.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let b = Bed {
        bed,
        mirror: dir.join("mirror"),
    };

    // A rule of the administrator's own, which dpfd must never touch.
    b.ok("ga", &["nft", "add", "table", "ip", "handmade"]);
    b.ok(
        "ga",
        &[
            "nft",
            "add chain ip handmade pre { type nat hook prerouting priority -100; }",
        ],
    );
    b.ok(
        "ga",
        &[
            "nft",
            "add",
            "rule",
            "ip",
            "handmade",
            "pre",
            "tcp",
            "dport",
            "9999",
            "dnat",
            "to",
            "192.0.2.11:9999",
        ],
    );

    // A second public address on GA, so forwards spread over two IPs.
    b.ok(
        "ga",
        &["ip", "addr", "add", "203.0.113.3/24", "dev", "pub0"],
    );
    let mut dpfd = b.start_dpfd();
    let server = ctest("echo-server");
    let s = server.to_str().unwrap();
    let (_tcp_srv, _) = b
        .bed
        .spawn_server(
            "a1",
            &[s, "--proto", "tcp", "--port", "7000"],
            "LISTEN tcp ",
            STEP,
        )
        .unwrap();
    let (_udp_srv, _) = b
        .bed
        .spawn_server(
            "a1",
            &[s, "--proto", "udp", "--port", "7001"],
            "LISTEN udp ",
            STEP,
        )
        .unwrap();

    // Forwards carry traffic: public side, hairpin from a2, the gateway itself.
    let (tcp_holder, tcp_pub) = b.hold("tcp", "192.0.2.10:7000");
    let (_udp_holder, udp_pub) = b.hold("udp", "192.0.2.10:7001");
    assert_eq!(tcp_pub, "203.0.113.1:40000");
    b.echo("pub", "tcp", &tcp_pub);
    b.echo("pub", "udp", &udp_pub);
    b.echo("a2", "tcp", &tcp_pub);
    b.echo("ga", "tcp", &tcp_pub);
    assert!(b
        .map("tcp")
        .contains(&Bed::element(&tcp_pub, "192.0.2.10:7000")));
    assert!(b
        .map("udp")
        .contains(&Bed::element(&udp_pub, "192.0.2.10:7001")));
    wait_for(PROBE_BOUND, "a probe that finds the clients alive", || {
        b.status().contains("\"last_probe\":\"ok\"").then_some(())
    });
    let (_, out) = b.request("a2", &["query", "--proto", "tcp", "--public", &tcp_pub]);
    assert_eq!(out.trim(), "QUERY_OK 192.0.2.10:7000");
    let (_, out) = b.request(
        "a2",
        &["query", "--proto", "tcp", "--public", "203.0.113.1:40998"],
    );
    assert_eq!(out.trim(), "QUERY_NAK");

    // Refusals: the right error, and nothing changes.
    let (maps, forwards) = (
        b.map("tcp") + &b.map("udp"),
        b.status().matches("\"public\"").count(),
    );
    let (code, out) = b.request(
        "a1",
        &["forward", "--proto", "tcp", "--local", "192.0.2.11:7000"],
    );
    assert_eq!(
        (code, out.split_whitespace().take(2).collect::<Vec<_>>()),
        (3, vec!["ERROR", "not_local"])
    );
    let (code, out) = b.request(
        "a1",
        &[
            "forward",
            "--proto",
            "tcp",
            "--local",
            "192.0.2.10:7002",
            "--desired",
            "203.0.113.1:50000",
        ],
    );
    assert_eq!(
        (code, out.split_whitespace().take(2).collect::<Vec<_>>()),
        (3, vec!["ERROR", "port_out_of_range"])
    );
    let (code, out) = b.request("a1", &["raw", "445046310001ff00"]);
    assert_eq!((code, out.trim()), (0, "NO REPLY"));
    let (code, out) = b.request("a2", &["delete", "--proto", "tcp", "--public", &tcp_pub]);
    assert_eq!(
        (code, out.split_whitespace().take(2).collect::<Vec<_>>()),
        (3, vec!["ERROR", "not_local"])
    );
    assert_eq!(b.map("tcp") + &b.map("udp"), maps);
    let status = b.status();
    assert_eq!(status.matches("\"public\"").count(), forwards);
    assert!(
        status.contains("\"not_local\":2") && status.contains("\"port_out_of_range\":1"),
        "{status}"
    );
    let malformed = testbed::json::parse(&status)
        .ok()
        .and_then(|v| v.get("counters")?.get("malformed")?.as_f64());
    assert!(malformed.is_some_and(|n| n > 0.0), "{status}");

    // The client dies: the probe deletes its forward within an interval.
    kill9(&tcp_holder);
    wait_for(
        PROBE_BOUND,
        "the dead client's forward gone from the kernel",
        || (!b.map("tcp").contains(&nft_addr(&tcp_pub))).then_some(()),
    );
    dpfd.wait_stderr("probe refused", PROBE_BOUND).unwrap_or_else(|e| panic!("{e}"));

    // kill -9 of dpfd, restart: the forward still works.
    let (_tcp_holder, tcp_pub) = b.hold("tcp", "192.0.2.10:7000");
    // The next slot of the allocation order is on the second public IP.
    assert_eq!(tcp_pub, "203.0.113.3:40000");
    b.echo("pub", "tcp", &tcp_pub);
    kill9(&dpfd);
    dpfd = b.start_dpfd();
    dpfd.wait_stderr("recovered 2 forwards", PROBE_BOUND).unwrap_or_else(|e| panic!("{e}"));
    b.echo("pub", "tcp", &tcp_pub);

    // Our table deleted while dpfd is down: restored from the mirror file.
    kill9(&dpfd);
    b.ok("ga", &["nft", "delete", "table", "ip", "dpf"]);
    dpfd = b.start_dpfd();
    assert!(dpfd
        .stderr_text()
        .contains("nft table is missing: creating it"));
    b.echo("pub", "tcp", &tcp_pub);
    b.echo("pub", "udp", &udp_pub);

    // ... and while it runs: the sync after the next probe round repairs it,
    // and removes an element of our map that the mirror file does not know.
    b.ok("ga", &["nft", "delete", "table", "ip", "dpf"]);
    wait_for(PROBE_BOUND, "the table rebuilt by the sync", || {
        b.run("ga", &["nft", "list", "table", "ip", "dpf"])
            .1
            .contains(&nft_addr(&tcp_pub))
            .then_some(())
    });
    b.ok(
        "ga",
        &[
            "nft",
            "add element ip dpf fwd_tcp { 203.0.113.1 . 40999 : 192.0.2.11 . 1 }",
        ],
    );
    wait_for(PROBE_BOUND, "the stray element removed by the sync", || {
        (!b.map("tcp").contains("40999")).then_some(())
    });
    b.echo("pub", "tcp", &tcp_pub);
    let handmade = b.ok("ga", &["nft", "list", "table", "ip", "handmade"]);
    assert!(
        handmade.contains("tcp dport 9999 dnat to 192.0.2.11:9999"),
        "{handmade}"
    );

    // A client deletes its own forward.
    let (code, out) = b.request(
        "a1",
        &["delete", "--proto", "udp", "--local", "192.0.2.10:7001"],
    );
    assert_eq!((code, out.trim()), (0, "DELETED"));
    assert!(!b.map("udp").contains(&nft_addr(&udp_pub)));

    drop(dpfd);
    b.bed.down().expect("tear down test bed");
    let _ = std::fs::remove_dir_all(dir);
}
