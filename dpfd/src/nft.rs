//! The nftables backend: the third of the paper's representations, the
//! kernel's NAT rules, kept in one table of dpfd's own (docs/design.md,
//! "DPF tables"):
//!
//! ```text
//! table ip dpf {
//!     map fwd_tcp { type ipv4_addr . inet_service : ipv4_addr . inet_service }
//!     map fwd_udp { ... same ... }
//!     chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//!         dnat ip to ip daddr . tcp dport map @fwd_tcp
//!         dnat ip to ip daddr . udp dport map @fwd_udp }
//!     chain output { type nat hook output priority -100; ... same rules ... }
//! }
//! ```
//!
//! One static DNAT rule per protocol looks the packet's destination up in a
//! map, so a forward is one map element and a lookup costs the same for 10
//! or 100,000 forwards. `prerouting` serves traffic arriving at the gateway,
//! from the public side and, for hairpin, from the private side; `output`
//! serves programs on the gateway itself. Hairpin also needs a masquerade so
//! the private server answers through the gateway; dpfd does not add one
//! (a source NAT rule is the administrator's policy, and the test bed's
//! gateway has it): clients inside use QUERY and dial the local address.
//!
//! Every change is a batch of `nft -f -` commands, which nftables applies
//! as one transaction. Only `table ip NAME` is ever named: dpfd reads it
//! back with `nft -j list table ip NAME`, and never lists or changes any
//! other table. The table is dpfd's alone; a hand-made rule inside it would
//! be lost when dpfd rebuilds a damaged table.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};

use proto::Proto;
use serde_json::Value;

use crate::table::Key;

/// Statements per `add element`/`delete element` command, so one line never
/// grows without bound.
const ELEMENTS_PER_COMMAND: usize = 1000;

pub fn map_name(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp => "fwd_tcp",
        Proto::Udp => "fwd_udp",
    }
}

const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];

/// One change of a kernel map element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemOp {
    Add(Key, SocketAddrV4),
    Del(Key),
}

/// The kernel's element set of our maps.
pub type Elements = HashMap<Key, SocketAddrV4>;

/// The table definition, without elements.
pub fn table_definition(table: &str) -> String {
    let mut s = format!("table ip {table} {{\n");
    for p in PROTOS {
        s += &format!(
            "\tmap {} {{\n\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service\n\t}}\n",
            map_name(p)
        );
    }
    for (chain, hook) in [
        ("prerouting", "prerouting priority dstnat"),
        ("output", "output priority -100"),
    ] {
        s += &format!("\tchain {chain} {{\n\t\ttype nat hook {hook}; policy accept;\n");
        for p in PROTOS {
            s += &format!("\t\tdnat ip to ip daddr . {p} dport map @{}\n", map_name(p));
        }
        s += "\t}\n";
    }
    s + "}\n"
}

fn elem_key(k: &Key) -> String {
    format!("{} . {}", k.public.ip(), k.public.port())
}

/// Appends `verb element ip TABLE MAP { ... }` commands for `items`.
fn element_commands(out: &mut String, verb: &str, table: &str, proto: Proto, items: &[String]) {
    for chunk in items.chunks(ELEMENTS_PER_COMMAND) {
        out.push_str(&format!(
            "{verb} element ip {table} {} {{ {} }}\n",
            map_name(proto),
            chunk.join(", ")
        ));
    }
}

/// A batch applying `ops`: all deletes first, then all adds, per map, so a
/// key whose value changes is deleted before it is added again.
pub fn elements_batch(table: &str, ops: &[ElemOp]) -> String {
    let mut out = String::new();
    for p in PROTOS {
        let dels: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                ElemOp::Del(k) if k.proto == p => Some(elem_key(k)),
                _ => None,
            })
            .collect();
        element_commands(&mut out, "delete", table, p, &dels);
    }
    for p in PROTOS {
        let adds: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                ElemOp::Add(k, local) if k.proto == p => Some(format!(
                    "{} : {} . {}",
                    elem_key(k),
                    local.ip(),
                    local.port()
                )),
                _ => None,
            })
            .collect();
        element_commands(&mut out, "add", table, p, &adds);
    }
    out
}

/// A batch that replaces the whole table by a fresh one holding `elements`,
/// atomically: `add table` makes the `delete` valid when the table is
/// missing, and the kernel never sees a moment without forwards.
pub fn install_batch(table: &str, elements: &Elements) -> String {
    let mut sorted: Vec<(&Key, &SocketAddrV4)> = elements.iter().collect();
    sorted.sort();
    let ops: Vec<ElemOp> = sorted
        .into_iter()
        .map(|(k, v)| ElemOp::Add(*k, *v))
        .collect();
    format!(
        "add table ip {table}\ndelete table ip {table}\n{}{}",
        table_definition(table),
        elements_batch(table, &ops)
    )
}

/// What `nft -j list table` showed of our table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    pub present: bool,
    /// Both maps, both chains and exactly our four rules are there.
    pub structure_ok: bool,
    pub elements: Elements,
}

fn concat_addr(v: &Value) -> Option<SocketAddrV4> {
    let parts = v.get("concat")?.as_array()?;
    let [ip, port] = parts.as_slice() else {
        return None;
    };
    let ip: Ipv4Addr = ip.as_str()?.parse().ok()?;
    let port = match port {
        Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    Some(SocketAddrV4::new(ip, port))
}

/// Parses the JSON of `nft -j list table ip TABLE`.
pub fn parse_listing(json: &str, table: &str) -> Result<Listing, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("nft -j output: {e}"))?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft -j output has no \"nftables\" array")?;
    let mut listing = Listing::default();
    let mut maps_ok = 0;
    let mut chains_ok = 0;
    let mut rules: HashMap<String, Vec<String>> = HashMap::new();
    for item in items {
        let ours = |o: &Value, key: &str| o.get(key).and_then(Value::as_str) == Some(table);
        if let Some(t) = item.get("table") {
            listing.present |= t.get("name").and_then(Value::as_str) == Some(table);
        } else if let Some(m) = item.get("map").filter(|m| ours(m, "table")) {
            let Some(proto) = PROTOS
                .into_iter()
                .find(|p| m.get("name").and_then(Value::as_str) == Some(map_name(*p)))
            else {
                continue;
            };
            let key_type = serde_json::json!(["ipv4_addr", "inet_service"]);
            if m.get("type") == Some(&key_type)
                && m.get("map").and_then(Value::as_str) == Some("ipv4_addr . inet_service")
            {
                maps_ok += 1;
            }
            for e in m
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                // Plain `[key, value]`, or wrapped as {"elem": {"val": ...}}
                // when an element carries options.
                let pair = e.as_array().and_then(|p| match p.as_slice() {
                    [k, v] => Some((k, v)),
                    _ => None,
                });
                let Some((k, val)) = pair else {
                    return Err(format!("unexpected element {e}"));
                };
                let k = k.get("elem").and_then(|x| x.get("val")).unwrap_or(k);
                match (concat_addr(k), concat_addr(val)) {
                    (Some(public), Some(local)) => {
                        listing.elements.insert(Key { proto, public }, local);
                    }
                    _ => return Err(format!("unexpected element {e}")),
                }
            }
        } else if let Some(c) = item.get("chain").filter(|c| ours(c, "table")) {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            let want = match name {
                "prerouting" => ("prerouting", -100),
                "output" => ("output", -100),
                _ => continue,
            };
            let hook_ok = c.get("hook").and_then(Value::as_str) == Some(want.0)
                && c.get("type").and_then(Value::as_str) == Some("nat")
                && c.get("prio").and_then(Value::as_i64) == Some(want.1);
            chains_ok += usize::from(hook_ok);
        } else if let Some(r) = item.get("rule").filter(|r| ours(r, "table")) {
            let chain = r
                .get("chain")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let expr = r.get("expr").map(Value::to_string).unwrap_or_default();
            rules.entry(chain).or_default().push(expr);
        }
    }
    let rules_ok = ["prerouting", "output"].iter().all(|chain| {
        let r = rules.get(*chain).map(Vec::as_slice).unwrap_or(&[]);
        r.len() == 2
            && PROTOS.iter().all(|p| {
                r.iter().any(|e| {
                    e.contains("\"dnat\"")
                        && e.contains(&format!("\"@{}\"", map_name(*p)))
                        && e.contains(&format!("\"protocol\":\"{p}\""))
                })
            })
    });
    listing.structure_ok = listing.present && maps_ok == 2 && chains_ok == 2 && rules_ok;
    Ok(listing)
}

/// Runs `nft` for one table.
#[derive(Debug, Clone)]
pub struct Nft {
    pub table: String,
    pub program: String,
    /// Each transaction's time, for `/metrics` (see `metrics`).
    pub timing: Option<daemon_kit::metrics::Timing>,
}

impl Nft {
    pub fn new(table: &str) -> Nft {
        Nft {
            table: table.to_string(),
            program: "nft".to_string(),
            timing: None,
        }
    }

    /// Applies a batch as one transaction. nft talks netlink to the local
    /// kernel and does not block on anything else, so it is waited for
    /// without a timer; its stderr becomes the error.
    pub fn run(&self, script: &str) -> Result<(), String> {
        if script.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = self.run_nft(script);
        if let Some(t) = &self.timing {
            t.observe(started.elapsed());
        }
        result
    }

    fn run_nft(&self, script: &str) -> Result<(), String> {
        let mut child = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        let written = child
            .stdin
            .take()
            .map(|mut s| s.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{}: {e}", self.program))?;
        if let Some(Err(e)) = written {
            return Err(format!("{}: writing the batch: {e}", self.program));
        }
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err.lines().next().unwrap_or("").trim();
            return Err(format!("nft -f - failed ({}): {first}", out.status));
        }
        Ok(())
    }

    /// Reads our table back; a missing table is an empty listing.
    pub fn list(&self) -> Result<Listing, String> {
        let out = Command::new(&self.program)
            .args(["-j", "list", "table", "ip", &self.table])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.program))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if err.contains("No such file or directory") {
                return Ok(Listing::default());
            }
            return Err(format!(
                "nft list table ip {}: {}",
                self.table,
                err.lines().next().unwrap_or("").trim()
            ));
        }
        parse_listing(&String::from_utf8_lossy(&out.stdout), &self.table)
    }
}

#[cfg(test)]
mod tests;
