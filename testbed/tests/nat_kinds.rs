//! The NAT kinds of the test bed's gateways (`scripts/netns up --nat-a/--nat-b`)
//! do what `scripts/netns-gateway.bash` says, shown with plain sockets (no shim)
//! from `testbed/programs/nat_probe.py`:
//!
//! * `preserve` maps a private port to the same public port, one mapping for
//!   every destination; a closed port of the gateway answers (RST, ICMP);
//! * `random` gives each destination a new, unpredictable port;
//! * `drop` answers mappings, dpfd's forwards and static DNAT forwards, and drops
//!   a stranger's SYN or datagram to a closed port, counted by its rule;
//! * `invalid-drop` drops a SYN that conntrack calls invalid (one into an entry a
//!   RST has closed), counted by its rule, where `preserve` answers it with RST.
//!
//! Needs root, and `cargo build --release` for the `drop` test (dpfd).

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use testbed::real::{Mode, RealBed};
use testbed::{require_root, wait_for, workspace_root, NatKind, NatKinds, Proc, TestBed};

const STEP: Duration = Duration::from_secs(10);
/// Trials of the port-mapping check; `random` may pick the local port, or the same
/// port twice, by chance (about 1 in 64k each), so one trial may coincide.
const TRIALS: u16 = 5;

fn probe() -> PathBuf {
    workspace_root().join("testbed/programs/nat_probe.py")
}

/// `nat_probe.py ARGS` on `host` in the background, stdin piped (the holding
/// commands run until it closes).
fn spawn(bed: &TestBed, host: &str, args: &[&str]) -> Proc {
    let mut c = bed.cmd(host, testbed::python3());
    c.arg(probe()).args(args).stdin(Stdio::piped());
    bed.spawn_cmd(c).unwrap_or_else(|e| panic!("nat_probe {args:?} on {host}: {e}"))
}

/// A receiver that reports each sender's address as it sees it.
fn listen(bed: &TestBed, host: &str, proto: &str, port: u16, count: u16, abort: bool) -> Proc {
    let (port, count) = (port.to_string(), count.to_string());
    let mut args = vec!["listen", proto, &port, &count, "60"];
    if abort {
        args.push("--abort");
    }
    let p = spawn(bed, host, &args);
    p.wait_line("LISTEN ", STEP).unwrap_or_else(|e| panic!("listener on {host}: {e}"));
    p
}

fn next_peer(p: &Proc, who: &str) -> SocketAddrV4 {
    let rest = p.wait_line("PEER ", STEP).unwrap_or_else(|e| panic!("{who}: {e}\n{}", p.stderr_text()));
    rest.parse().unwrap_or_else(|_| panic!("{who}: bad PEER {rest:?}"))
}

/// One-shot `nat_probe.py connect`: the RESULT word.
fn connect_once(bed: &TestBed, host: &str, proto: &str, local: u16, dest: &str) -> String {
    let probe = probe();
    let local = local.to_string();
    let args = [probe.to_str().unwrap(), "connect", proto, &local, dest, "3"];
    let mut all = vec![testbed::python3().to_str().unwrap()];
    all.extend_from_slice(&args);
    let out = bed.run(host, &all, STEP).unwrap_or_else(|e| panic!("connect on {host}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let result = text.lines().find_map(|l| l.strip_prefix("RESULT "));
    result.unwrap_or_else(|| panic!("connect on {host}: {text}{}", String::from_utf8_lossy(&out.stderr))).to_string()
}

/// A connect (TCP) or a datagram on a connected socket (UDP) left pending, whose
/// state can be looked at without waiting.
struct Pending {
    proc: Proc,
    stdin: std::process::ChildStdin,
}

impl Pending {
    fn start(bed: &TestBed, host: &str, proto: &str, local: u16, dest: &str) -> Pending {
        let mut proc = spawn(bed, host, &["pending", proto, &local.to_string(), dest]);
        proc.wait_line("STARTED", STEP).unwrap_or_else(|e| panic!("pending on {host}: {e}"));
        let stdin = proc.take_stdin().expect("stdin");
        Pending { proc, stdin }
    }

    fn state(&mut self) -> String {
        use std::io::Write;
        writeln!(self.stdin, "state").expect("ask for the state");
        let p = &self.proc;
        p.wait_line("STATE ", STEP).unwrap_or_else(|e| panic!("pending: {e}\n{}", p.stderr_text()))
    }
}

fn counter(bed: &TestBed, gw: &str, name: &str) -> u64 {
    bed.nft_counter(gw, name).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until the gateway's counter `name` passes `before`: the packet was dropped
/// by the rule meant.
fn wait_counted(bed: &TestBed, gw: &str, name: &str, before: u64) {
    wait_for(STEP, &format!("{gw}'s counter {name} to pass {before}"), || {
        (counter(bed, gw, name) > before).then_some(())
    });
}

#[test]
fn preserve_keeps_ports_random_maps_anew_and_closed_ports_answer() {
    require_root();
    let bed = TestBed::up_with_nat(NatKinds::new(NatKind::Random, NatKind::Preserve)).expect("test bed");
    assert_eq!((bed.nat_kind("ga"), bed.nat_kind("gb")), (NatKind::Random, NatKind::Preserve));
    for (proto, recv_port) in [("tcp", 7000), ("udp", 7001)] {
        let on_pub = listen(&bed, "pub", proto, recv_port, 2 * TRIALS, false);
        let on_broker = listen(&bed, "broker", proto, recv_port, 2 * TRIALS, false);
        let dests = [format!("203.0.113.20:{recv_port}"), format!("203.0.113.10:{recv_port}")];
        let mut random_ok = 0;
        for t in 0..TRIALS {
            for (host, gw_ip) in [("a1", "203.0.113.1"), ("b1", "203.0.113.2")] {
                let local = 31000 + 10 * t + u16::from(host == "b1");
                let l = local.to_string();
                let fan = spawn(&bed, host, &["fanout", proto, &l, &dests[0], &dests[1]]);
                for d in &dests {
                    fan.wait_line(&format!("SENT {d}"), STEP).unwrap_or_else(|e| panic!("{host}: {e}"));
                }
                let seen = [next_peer(&on_pub, "pub"), next_peer(&on_broker, "broker")];
                for s in &seen {
                    assert_eq!(s.ip().to_string(), gw_ip, "{proto} from {host} seen as {s}");
                }
                let ports = [seen[0].port(), seen[1].port()];
                if host == "b1" {
                    assert_eq!(ports, [local, local], "{proto} trial {t}: preserve must keep port {local}");
                } else if ports[0] != ports[1] && !ports.contains(&local) {
                    random_ok += 1;
                } else {
                    eprintln!("{proto} trial {t}: random mapped {local} to {ports:?} (a coincidence?)");
                }
                drop(fan);
            }
        }
        assert!(random_ok >= TRIALS - 1, "{proto}: random gave distinct new ports in only {random_ok} of {TRIALS} trials");
    }
    // A closed port of a preserve gateway answers: RST for TCP, ICMP for UDP.
    assert_eq!(connect_once(&bed, "pub", "tcp", 0, "203.0.113.2:7999"), "refused");
    assert_eq!(connect_once(&bed, "pub", "udp", 0, "203.0.113.2:7999"), "refused");
    bed.down().expect("tear down");
}

#[test]
fn drop_answers_mappings_and_forwards_but_not_strangers() {
    let real = RealBed::up_with_nat(Mode::Dpf, 2, &[], NatKinds::new(NatKind::Drop, NatKind::Drop));
    let bed = &real.bed;
    assert_eq!(bed.nat_kind("ga"), NatKind::Drop);

    // A forward dpfd installs on GA passes.
    let server = listen(bed, "a1", "tcp", 7100, 1, false);
    let req = PathBuf::from(env!("CARGO_BIN_EXE_dpf-request"));
    let args = ["forward", "--proto", "tcp", "--local", "192.0.2.10:7100", "--hold"];
    let mut c = bed.cmd("a1", &req);
    c.args(["--server", "192.0.2.1:65433"]).args(args);
    let holder = bed.spawn_cmd(c).expect("dpf-request");
    let public = holder.wait_line("PUBLIC ", STEP).unwrap_or_else(|e| panic!("forward: {e}\n{}", holder.stderr_text()));
    assert!(public.starts_with("203.0.113.1:"), "{public}");
    assert_eq!(connect_once(bed, "pub", "tcp", 0, &public), "connected");
    assert_eq!(next_peer(&server, "a1").ip().to_string(), "203.0.113.20");

    // A static DNAT forward on GB passes, and so do the replies to a mapping.
    let rule = "add rule ip nat pre iifname pub0 tcp dport 7200 dnat to 198.51.100.10:7200";
    let out = bed.run("gb", &["nft", rule], STEP).expect("nft");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = listen(bed, "b1", "tcp", 7200, 1, false);
    assert_eq!(connect_once(bed, "pub", "tcp", 0, "203.0.113.2:7200"), "connected");
    assert_eq!(next_peer(&server, "b1").ip().to_string(), "203.0.113.20");
    let outside = listen(bed, "pub", "tcp", 7300, 1, false);
    assert_eq!(connect_once(bed, "b1", "tcp", 32000, "203.0.113.20:7300"), "connected");
    assert_eq!(next_peer(&outside, "pub").to_string(), "203.0.113.2:32000");

    // A stranger's SYN and datagram to closed ports are dropped by the rule, so the
    // connect stays in progress and the datagram gets no ICMP error.
    for (gw, ip) in [("gb", "203.0.113.2"), ("ga", "203.0.113.1")] {
        for proto in ["tcp", "udp"] {
            let before = counter(bed, gw, "unsolicited_drop");
            let mut p = Pending::start(bed, "pub", proto, 0, &format!("{ip}:7999"));
            wait_counted(bed, gw, "unsolicited_drop", before);
            let want = if proto == "tcp" { "in-progress" } else { "nothing" };
            assert_eq!(p.state(), want, "{proto} to {gw}'s closed port");
            // Closing stops the SYN's retransmissions before the next count.
            drop(p);
        }
    }
    drop(holder);
    real.down();
}

/// `conntrack -L` on `gw` shows the TCP entry from private port `sport` to `dport`
/// in state CLOSE.
fn wait_closed_entry(bed: &TestBed, gw: &str, sport: u16, dport: u16) {
    let want = format!("sport={sport} dport={dport}");
    wait_for(STEP, &format!("a CLOSE entry {want} on {gw}"), || {
        let out = bed.run(gw, &["conntrack", "-L", "-p", "tcp"], STEP).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().any(|l| l.contains(&want) && l.contains(" CLOSE ")).then_some(())
    });
}

#[test]
fn invalid_drop_drops_a_syn_into_a_reset_entry() {
    require_root();
    let bed = TestBed::up_with_nat(NatKinds::new(NatKind::InvalidDrop, NatKind::Preserve)).expect("test bed");
    // On each side: a private host connects out, the public peer aborts the
    // connection with a RST, which leaves the gateway's entry in CLOSE (a reply
    // was seen, so conntrack keeps it). The peer then sends a SYN from the same
    // port to the same mapping: a SYN in the reply direction of a CLOSE entry,
    // which conntrack calls invalid.
    for (host, gw, gw_ip, local, port) in
        [("a1", "ga", "203.0.113.1", 31000, 7400), ("b1", "gb", "203.0.113.2", 32000, 7401)]
    {
        let peer = listen(&bed, "pub", "tcp", port, 1, true);
        let r = connect_once(&bed, host, "tcp", local, &format!("203.0.113.20:{port}"));
        assert!(r == "connected" || r == "error:ECONNRESET", "{host}: {r}");
        assert_eq!(next_peer(&peer, "pub").to_string(), format!("{gw_ip}:{local}"));
        assert!(peer.wait_timeout(STEP).is_some(), "the listener on pub did not exit");
        wait_closed_entry(&bed, gw, local, port);
        let before = counter(&bed, "ga", "invalid_drop_input");
        let mut syn = Pending::start(&bed, "pub", "tcp", port, &format!("{gw_ip}:{local}"));
        if gw == "ga" {
            // invalid-drop: the rule drops it, so no RST comes back.
            wait_counted(&bed, "ga", "invalid_drop_input", before);
            assert_eq!(syn.state(), "in-progress");
        } else {
            // preserve: the invalid SYN is not translated and reaches GB's own
            // stack, which has no such socket and resets it.
            wait_for(STEP, "the SYN to GB refused", || (syn.state() == "refused").then_some(()));
            assert_eq!(counter(&bed, "ga", "invalid_drop_input"), before);
        }
    }
    bed.down().expect("tear down");
}
