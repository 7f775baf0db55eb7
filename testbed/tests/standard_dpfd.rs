//! dpfd as a standard port-mapping server on the NAT test bed's gateway GA:
//! Debian's `natpmpc` (NAT-PMP) and `pcp-map` (the `proto::portmap`
//! client the shim uses, PCP MAP) get TCP and UDP forwards that a plain
//! public client reaches through kernel NAT; lifetime 0 deletes; a lease
//! nobody renews expires; and the refusals (another host's address,
//! THIRD_PARTY, a port outside the range with PREFER_FAILURE, the quota)
//! change nothing.
//!
//! Needs root, natpmpc, `cargo build --release` and `make -C c-tests`.

use std::path::PathBuf;
use std::time::Duration;

use testbed::{have_command, json, release_bin, require_root, wait_for, workspace_root, Proc, TestBed};

const STEP: Duration = Duration::from_secs(20);
const GA: &str = "192.0.2.1";

struct Bed {
    bed: TestBed,
    dir: PathBuf,
}

impl Bed {
    fn run(&self, host: &str, args: &[&str]) -> (i32, String) {
        let out = self
            .bed
            .run(host, args, STEP)
            .unwrap_or_else(|e| panic!("{args:?} on {host}: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    fn ok(&self, host: &str, args: &[&str]) -> String {
        let (code, text) = self.run(host, args);
        assert_eq!(code, 0, "{args:?} on {host}: {text}");
        text
    }

    /// `natpmpc -a PUBLIC PRIVATE PROTO LIFETIME` on `host`: the mapped
    /// public port, or the output if nothing was mapped.
    fn natpmpc(&self, host: &str, public: u16, private: u16, proto: &str, lifetime: u32) -> Result<u16, String> {
        let (p, q, l) = (public.to_string(), private.to_string(), lifetime.to_string());
        let (_, out) = self.run(host, &["natpmpc", "-g", GA, "-a", &p, &q, proto, &l]);
        let port = out
            .lines()
            .find_map(|l| l.strip_prefix("Mapped public port "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok());
        port.ok_or(out)
    }

    fn pcp_map(&self, host: &str, args: &[&str]) -> (i32, String) {
        let tool = PathBuf::from(env!("CARGO_BIN_EXE_pcp-map"));
        let mut all = vec![tool.to_str().unwrap(), "--gateway", GA];
        all.extend_from_slice(args);
        self.run(host, &all)
    }

    fn echo(&self, proto: &str, dest: &str) {
        let c = workspace_root().join("c-tests/build/echo-client");
        let out = self.ok(
            "pub",
            &[c.to_str().unwrap(), "--proto", proto, "--connect", dest, "--bytes", "2000", "--rounds", "3"],
        );
        assert!(out.contains("SUMMARY runs=1 ok=1") && out.contains("lost=0"), "echo {proto} -> {dest}: {out}");
    }

    /// The forwards as `proto public local via`, and the kernel's maps.
    fn state(&self) -> (Vec<String>, String) {
        let dpfd = release_bin("dpfd");
        let status = self.ok("ga", &[dpfd.to_str().unwrap(), "status", "--json"]);
        let doc = json::parse(&status).expect("status is JSON");
        let forwards = doc
            .get("forwards")
            .and_then(json::Value::as_array)
            .unwrap_or(&[])
            .iter()
            .map(|f| {
                let field = |k| f.get(k).and_then(json::Value::as_str).unwrap_or("?");
                format!("{} {} {} {}", field("proto"), field("public"), field("local"), field("via"))
            })
            .collect();
        let maps = self.ok("ga", &["nft", "list", "table", "ip", "dpf"]);
        (forwards, maps)
    }

    fn has(&self, forward: &str) -> bool {
        self.state().0.iter().any(|f| f == forward)
    }
}

fn start(b: &Bed, extra: &[&str]) -> Proc {
    let dpfd = release_bin("dpfd");
    let mirror = b.dir.join("mirror");
    let mut args = vec![
        dpfd.to_str().unwrap(),
        "--listen",
        GA,
        "--public-ip",
        "203.0.113.1",
        "--port-range",
        "40000-40999",
        "--mirror",
        mirror.to_str().unwrap(),
        "--log",
        "debug",
    ];
    args.extend_from_slice(extra);
    let p = b.bed.spawn("ga", &args).expect("start dpfd");
    wait_for(STEP, "dpfd started", || {
        p.stderr_text().contains("started: command port udp").then_some(())
    });
    p
}

#[test]
fn natpmpc_and_pcp_get_forwards_from_dpfd_under_its_rules() {
    require_root();
    assert!(have_command("natpmpc"), "natpmpc is missing: .ci/run installs it");
    let bed = TestBed::up().expect("test bed");
    let dir = std::env::temp_dir().join(format!("pcp-bed-{}", bed.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let b = Bed { bed, dir };
    let _dpfd = start(&b, &["--per-host-quota", "3", "--pcp-min-lifetime-s", "1"]);
    let server = workspace_root().join("c-tests/build/echo-server");
    let s = server.to_str().unwrap();
    let mut servers = Vec::new();
    for (proto, port) in [("tcp", "7000"), ("udp", "7001"), ("tcp", "7002")] {
        let ready = format!("LISTEN {proto} ");
        let (p, _) = b
            .bed
            .spawn_server("a1", &[s, "--proto", proto, "--port", port], &ready, STEP)
            .unwrap();
        servers.push(p);
    }

    // NAT-PMP: TCP and UDP forwards a plain public client reaches.
    let tcp = b.natpmpc("a1", 0, 7000, "tcp", 3600).expect("tcp mapping");
    let udp = b.natpmpc("a1", 0, 7001, "udp", 3600).expect("udp mapping");
    b.echo("tcp", &format!("203.0.113.1:{tcp}"));
    b.echo("udp", &format!("203.0.113.1:{udp}"));
    let tcp_fwd = format!("tcp 203.0.113.1:{tcp} 192.0.2.10:7000 natpmp");
    assert!(b.has(&tcp_fwd), "{:?}", b.state().0);

    // Refused: a port outside the range with PREFER_FAILURE, another
    // host's address in the client field or as THIRD_PARTY; a delete of
    // a1's port from a2 touches nothing.
    let before = b.state();
    let (code, out) = b.pcp_map(
        "a1",
        &["request", "--internal", "192.0.2.10:7003", "--suggest", "203.0.113.1:80", "--prefer-failure"],
    );
    assert_eq!((code, out.split_whitespace().nth(1)), (3, Some("CANNOT_PROVIDE_EXTERNAL")), "{out}");
    let (_, out) = b.pcp_map("a1", &["request", "--internal", "192.0.2.10:7003", "--client", "192.0.2.11"]);
    assert!(out.starts_with("RESULT ADDRESS_MISMATCH "), "{out}");
    let (_, out) = b.pcp_map(
        "a1",
        &["request", "--internal", "192.0.2.10:7003", "--third-party", "192.0.2.11"],
    );
    assert!(out.starts_with("RESULT NOT_AUTHORIZED "), "{out}");
    assert_eq!(b.natpmpc("a2", 0, 7000, "tcp", 0), Ok(0), "a delete answers port 0");
    assert_eq!(b.state(), before, "refusals change nothing");

    // Without PREFER_FAILURE a port outside the range is a hint: NAT-PMP
    // maps another one, inside the range.
    let other = b.natpmpc("a1", 80, 7002, "tcp", 3600).expect("mapping");
    assert!((40000..=40999).contains(&other), "{other}");
    let before = b.state();
    // Over the quota (a1 holds 3).
    let err = b.natpmpc("a1", 0, 7003, "tcp", 3600).expect_err("over the quota");
    assert!(err.contains("out of resources"), "{err}");
    let (code, out) = b.pcp_map("a1", &["map", "--internal", "192.0.2.10:7003", "--bound", "5"]);
    assert_eq!((code, out.trim()), (3, "REFUSED PCP USER_EX_QUOTA (10)"));
    assert_eq!(b.state(), before, "refusals change nothing");

    // Lifetime 0 deletes, in dpfd and in the kernel.
    assert_eq!(b.natpmpc("a1", 0, 7002, "tcp", 0), Ok(0), "a delete answers port 0");
    let (forwards, maps) = b.state();
    assert!(!forwards.iter().any(|f| f.contains(":7002 ")), "{forwards:?}");
    assert!(!maps.contains(&format!("203.0.113.1 . {other} ")), "{maps}");
    assert_eq!(b.natpmpc("a1", 0, 7001, "udp", 0), Ok(0), "a delete answers port 0");

    // PCP through the client state machine: with a suggested port, then
    // without, held and deleted when its stdin closes.
    let (code, out) = b.pcp_map("a1", &["map", "--internal", "192.0.2.10:7002", "--suggest", "40500"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("MAPPED 203.0.113.1:40500 7200 PCP "), "{out}");
    b.echo("tcp", "203.0.113.1:40500");
    // Only its nonce may delete it: this request has another.
    let (_, out) = b.pcp_map("a1", &["request", "--internal", "192.0.2.10:7002", "--lifetime", "0"]);
    assert!(out.starts_with("RESULT NOT_AUTHORIZED "), "{out}");
    let tool = PathBuf::from(env!("CARGO_BIN_EXE_pcp-map"));
    let mut held = b.bed.cmd("a1", &tool);
    held.args(["--gateway", GA, "map", "--proto", "udp", "--internal", "192.0.2.10:7001", "--hold", "60"]);
    held.stdin(std::process::Stdio::piped());
    let mut holder = b.bed.spawn_cmd(held).unwrap();
    let line = holder.wait_line("MAPPED ", STEP).unwrap();
    let public = line.split_whitespace().next().unwrap().to_string();
    b.echo("udp", &public);
    drop(holder.take_stdin());
    holder.wait_line("DELETED", STEP).unwrap();
    assert!(!b.has(&format!("udp {public} 192.0.2.10:7001 pcp")));

    // A lease nobody renews ends.
    let (code, out) = b.pcp_map("a1", &["map", "--internal", "192.0.2.10:7004", "--lifetime", "2"]);
    assert_eq!(code, 0, "{out}");
    let public = out.split_whitespace().nth(1).unwrap().to_string();
    let fwd = format!("tcp {public} 192.0.2.10:7004 pcp");
    assert!(b.has(&fwd));
    wait_for(STEP, "the lease to end", || (!b.has(&fwd)).then_some(()));
    b.bed.down().unwrap();
    let _ = std::fs::remove_dir_all(&b.dir);
}
