//! miniupnpd (Debian's `miniupnpd-nftables`) as a standard NAT-PMP/PCP
//! gateway on the test bed's GA, for tests of clients against a gateway
//! that is not dpfd.
//!
//! miniupnpd refuses to map on an external address in a reserved range,
//! the documentation ranges of the bed included, so GA's outside interface
//! gets one ordinary address more, [`EXT_IP`] (a /32), and the public host
//! a host route to it via GA. The bed has no route out of its namespaces,
//! so nothing leaves the machine. Its nftables rules go into a table of
//! its own, `inet miniupnpd`, created here with the chains its nft backend
//! expects (Debian's package does not create them). UPnP IGD is off; the
//! permission rules limit it to realm A's hosts and unprivileged ports.

use std::path::Path;
use std::time::Duration;

use crate::{wait_for, Proc, TestBed};

/// GA's extra outside address, where miniupnpd maps.
pub const EXT_IP: &str = "100.0.0.1";

/// The chains miniupnpd's nft backend writes to, hooked in.
const TABLES: &str = "table inet miniupnpd {
    chain forward { type filter hook forward priority -1; policy accept; jump forward_miniupnpd; }
    chain forward_miniupnpd { }
    chain prerouting { type nat hook prerouting priority -101; policy accept; jump prerouting_miniupnpd; }
    chain prerouting_miniupnpd { }
    chain postrouting { type nat hook postrouting priority 99; policy accept; jump postrouting_miniupnpd; }
    chain postrouting_miniupnpd { }
}
";

/// Settings a test may change.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Shortest PCP lease it grants (its `min_lifetime`; default 120).
    pub min_lifetime: u32,
    pub max_lifetime: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            min_lifetime: 120,
            max_lifetime: 86_400,
        }
    }
}

fn config(opts: &Options) -> String {
    format!(
        "ext_ifname=pub0
listening_ip=priv0
ext_ip={EXT_IP}
enable_natpmp=yes
enable_upnp=no
secure_mode=yes
min_lifetime={}
max_lifetime={}
uuid=00000000-0000-4000-8000-000000000014
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=forward_miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 192.0.2.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
",
        opts.min_lifetime, opts.max_lifetime
    )
}

fn must(bed: &TestBed, host: &str, args: &[&str]) {
    let out = bed
        .run(host, args, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{args:?} on {host}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Prepares GA once (address, route, nft table); idempotent, so a test
/// can restart miniupnpd with [`start`] as often as it likes.
pub fn prepare(bed: &TestBed, dir: &Path) {
    let has_ip = bed
        .run("ga", &["ip", "-4", "addr", "show", "dev", "pub0"], Duration::from_secs(10))
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{EXT_IP}/32")))
        .unwrap_or(false);
    if !has_ip {
        must(bed, "ga", &["ip", "addr", "add", &format!("{EXT_IP}/32"), "dev", "pub0"]);
        must(bed, "pub", &["ip", "route", "add", &format!("{EXT_IP}/32"), "via", &bed.ip("ga").to_string()]);
    }
    let has_table = bed
        .run("ga", &["nft", "list", "table", "inet", "miniupnpd"], Duration::from_secs(10))
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_table {
        let file = dir.join("tables.nft");
        std::fs::write(&file, TABLES).expect("write tables.nft");
        must(bed, "ga", &["nft", "-f", file.to_str().unwrap()]);
    }
}

/// Starts miniupnpd on GA with its files in `dir` (which must exist) and
/// waits, bounded by `within`, until it listens for NAT-PMP/PCP.
pub fn start(bed: &TestBed, dir: &Path, opts: &Options, within: Duration) -> Proc {
    prepare(bed, dir);
    let conf = dir.join("miniupnpd.conf");
    std::fs::write(&conf, config(opts)).expect("write miniupnpd.conf");
    let pid = dir.join("miniupnpd.pid");
    let args = [
        "miniupnpd",
        "-4",
        "-d",
        "-f",
        conf.to_str().unwrap(),
        "-P",
        pid.to_str().unwrap(),
    ];
    let p = bed.spawn("ga", &args).expect("start miniupnpd");
    wait_for(within, "miniupnpd listening for NAT-PMP/PCP", || {
        p.stderr_text()
            .contains("Listening for NAT-PMP/PCP traffic")
            .then_some(())
    });
    p
}

/// miniupnpd's NAT rules as nft lists them.
pub fn rules(bed: &TestBed) -> String {
    let out = bed
        .run("ga", &["nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd"], Duration::from_secs(10))
        .expect("nft list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
