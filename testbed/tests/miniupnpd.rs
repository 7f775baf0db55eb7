//! A standard gateway that is not dpfd: miniupnpd (`miniupnpd-nftables`,
//! NAT-PMP and PCP on, limited to realm A) on GA, with Debian's `natpmpc`
//! and `pcp-map` (the `proto::portmap` client the shim uses). A plain public
//! client reaches servers on a1 at the mapped addresses over TCP and UDP;
//! lifetime 0 deletes the rule; after miniupnpd restarts, a client holding
//! its mapping gets it back at its next renewal.
//!
//! Needs root, natpmpc, miniupnpd, `cargo build --release` and
//! `make -C c-tests`.

use std::path::PathBuf;
use std::time::Duration;

use testbed::miniupnpd::{self, Options, EXT_IP};
use testbed::{have_command, require_root, wait_for, workspace_root, TestBed};

const STEP: Duration = Duration::from_secs(20);

fn run(bed: &TestBed, host: &str, args: &[&str]) -> (i32, String) {
    let out = bed
        .run(host, args, STEP)
        .unwrap_or_else(|e| panic!("{args:?} on {host}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn echo(bed: &TestBed, proto: &str, dest: &str) {
    let c = workspace_root().join("c-tests/build/echo-client");
    let args = [c.to_str().unwrap(), "--proto", proto, "--connect", dest, "--bytes", "2000", "--rounds", "3"];
    let (code, out) = run(bed, "pub", &args);
    assert!(
        code == 0 && out.contains("SUMMARY runs=1 ok=1") && out.contains("lost=0"),
        "echo {proto} -> {dest}: {out}"
    );
}

#[test]
fn natpmpc_and_pcp_map_through_miniupnpd() {
    require_root();
    for cmd in ["natpmpc", "miniupnpd"] {
        assert!(have_command(cmd), "{cmd} is missing: .ci/run installs it");
    }
    let bed = TestBed::up().expect("test bed");
    let dir = std::env::temp_dir().join(format!("miniupnpd-{}", bed.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = Options {
        min_lifetime: 2,
        ..Options::default()
    };
    let gw = miniupnpd::start(&bed, &dir, &opts, STEP);
    let server = workspace_root().join("c-tests/build/echo-server");
    let s = server.to_str().unwrap();
    let mut servers = Vec::new();
    for (proto, port) in [("tcp", "7000"), ("udp", "7001")] {
        let ready = format!("LISTEN {proto} ");
        servers.push(bed.spawn_server("a1", &[s, "--proto", proto, "--port", port], &ready, STEP).unwrap().0);
    }

    // NAT-PMP with natpmpc: the public address, then a TCP mapping.
    let (code, out) = run(&bed, "a1", &["natpmpc", "-g", "192.0.2.1", "-a", "40100", "7000", "tcp", "3600"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("Public IP address : {EXT_IP}")), "{out}");
    assert!(out.contains("Mapped public port 40100 protocol TCP to local port 7000"), "{out}");
    echo(&bed, "tcp", &format!("{EXT_IP}:40100"));
    assert!(miniupnpd::rules(&bed).contains("dport 40100 dnat ip to 192.0.2.10:7000"));
    let (code, out) = run(&bed, "a1", &["natpmpc", "-g", "192.0.2.1", "-a", "40100", "7000", "tcp", "0"]);
    assert_eq!(code, 0, "{out}");
    wait_for(STEP, "the rule gone after lifetime 0", || {
        (!miniupnpd::rules(&bed).contains("dport 40100 ")).then_some(())
    });

    // PCP with the portmap client: UDP, held, renewed every ~2 s.
    let tool = PathBuf::from(env!("CARGO_BIN_EXE_pcp-map"));
    let mut cmd = bed.cmd("a1", &tool);
    cmd.args(["--gateway", "192.0.2.1", "map", "--proto", "udp", "--internal", "192.0.2.10:7001"]);
    cmd.args(["--suggest", "40200", "--lifetime", "4", "--hold", "120"]);
    cmd.stdin(std::process::Stdio::piped());
    let mut holder = bed.spawn_cmd(cmd).unwrap();
    let line = holder.wait_line("MAPPED ", STEP).unwrap();
    assert!(line.starts_with(&format!("{EXT_IP}:40200 4 PCP ")), "{line}");
    echo(&bed, "udp", &format!("{EXT_IP}:40200"));

    // miniupnpd restarts and forgets: the held mapping is back within one
    // renewal, and carries traffic again.
    // Its rules are flushed as well, so only a new request brings them back.
    gw.terminate();
    for chain in ["prerouting_miniupnpd", "forward_miniupnpd"] {
        let (code, out) = run(&bed, "ga", &["nft", "flush", "chain", "inet", "miniupnpd", chain]);
        assert_eq!(code, 0, "{out}");
    }
    assert!(!miniupnpd::rules(&bed).contains("dport 40200 "));
    let _gw = miniupnpd::start(&bed, &dir, &opts, STEP);
    wait_for(STEP, "the rule back in miniupnpd's table", || {
        miniupnpd::rules(&bed).contains("dport 40200 ").then_some(())
    });
    echo(&bed, "udp", &format!("{EXT_IP}:40200"));
    drop(holder.take_stdin());
    holder.wait_line("DELETED", STEP).unwrap();
    drop(servers);
    bed.down().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
