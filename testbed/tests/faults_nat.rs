//! NAT state lost on a gateway (issue 8): clients recover by themselves.
//!
//! A registered echo server on a1 (realm A, behind GA), heartbeat 1 s.
//!
//! * `conntrack -F` on GA drops the mapping of its management socket, so the
//!   broker's commands to it are lost until its next heartbeat re-creates the
//!   mapping. A plain client on pub (relayed from the proxy socket, which needs a
//!   command to a1) and a GCB client on b1 (relay) must work again within one
//!   heartbeat interval plus the broker's command retransmissions (~2.4 s), with
//!   slack for a loaded machine.
//! * GA's masquerade address changes: a second public address, 203.0.113.3, is
//!   added to its outside interface, the masquerade becomes `snat to
//!   203.0.113.3`, and conntrack is flushed. The next heartbeat arrives from the
//!   new address. The broker follows a client whose NAT port changed, but not one
//!   whose IP changed: without authentication that is indistinguishable from
//!   another host claiming the registration. So it asks the client to register
//!   again; the old proxy port stays reserved for its old owner, and the listener
//!   gets a new proxy address — the same consequence for advertised addresses as
//!   a broker failover (README, "Faults"). The test asserts that recovery: a
//!   new name through `getsockname` within the bound, every path working to it
//!   without restarting anything, and the old registration expiring.
//!
//! Needs root, `cargo build --release` and `make -C c-tests`.

#[path = "faults_support/mod.rs"]
mod support;

use std::time::Duration;
use support::{Faults, BROKER};

const HEARTBEAT_S: u64 = 1;

/// One heartbeat, the broker's retransmissions of a command, and slack.
const RECOVERY: Duration = Duration::from_secs(HEARTBEAT_S + 3 + 10);

#[test]
fn conntrack_flush_and_a_new_masquerade_address() {
    let f = Faults::up(HEARTBEAT_S);
    let (server, proxy) = f.peer_server("a1", BROKER, 7400);
    let context = || format!("{}\nserver:\n{}", f.broker_logs(), server.stderr_text());
    f.echo("pub", None, &proxy, &[], &context);
    f.echo("b1", Some(BROKER), &proxy, &[], &context);

    f.must("ga", &["conntrack", "-F"]);
    let took = f.echo_until_ok("pub", None, &proxy, RECOVERY);
    eprintln!("after conntrack -F on GA: plain connects work again after {took:?}");
    f.echo_until_ok("b1", Some(BROKER), &proxy, RECOVERY);

    f.must("ga", &["ip", "addr", "add", "203.0.113.3/24", "dev", "pub0"]);
    f.must("ga", &["nft", "flush", "chain", "ip", "nat", "post"]);
    f.must("ga", &["nft", "add", "rule", "ip", "nat", "post", "oifname", "pub0", "snat", "to", "203.0.113.3"]);
    f.must("ga", &["nft", "add", "rule", "ip", "nat", "post", "iifname", "priv0", "oifname", "priv0", "ct", "status", "dnat", "masquerade"]);
    f.must("ga", &["conntrack", "-F"]);
    let renamed = server.wait_line("NAME ", RECOVERY).unwrap_or_else(|e| panic!("no new name: {e}\n{}", context()));
    assert!(renamed.starts_with("203.0.113.10:") && renamed != proxy, "{proxy} became {renamed}");
    let took = f.echo_until_ok("pub", None, &renamed, RECOVERY);
    eprintln!("after GA's masquerade address changed: plain connects work again after {took:?}");
    f.echo("b1", Some(BROKER), &renamed, &["--nonblock"], &context); // relay
    f.echo("pub", Some(BROKER), &renamed, &[], &context); // reversal: a1 dials out from the new address
    f.echo("a2", Some(BROKER), &renamed, &[], &context); // realm A's other host
    support::wait_for(RECOVERY, || format!("{proxy} expired:\n{}", context()), || {
        let regs = f.registrations(BROKER);
        (regs.contains(&renamed) && !regs.contains(&proxy)).then_some(())
    });
    drop(server);
    f.bed.down().expect("tear down");
}
