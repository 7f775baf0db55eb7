//! The text form of `dpfd status`, rendered from the JSON document so the
//! two forms never disagree. Missing fields print as `?` rather than fail:
//! a newer daemon may be asked by an older client.

use serde_json::Value;

fn num(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return "?".into(),
        }
    }
    match cur {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        _ => "?".into(),
    }
}

/// `3725` → `1h2m5s`.
fn duration(secs: &str) -> String {
    let Ok(s) = secs.parse::<u64>() else {
        return secs.to_string();
    };
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// `name n, name n, ...` for the numeric fields of an object.
fn pairs(v: Option<&Value>) -> String {
    let Some(Value::Object(m)) = v else {
        return "?".into();
    };
    m.iter()
        .filter(|(_, n)| n.is_number())
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn render_text(v: &Value) -> String {
    let mut out = format!(
        "dpfd {} (pid {}), command port {}, up {}\n",
        num(v, &["dpfd"]),
        num(v, &["pid"]),
        num(v, &["listen"]),
        duration(&num(v, &["uptime_s"]))
    );
    let publics: Vec<&str> = v["public_ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    out += &format!(
        "public {} ports {}, nft table {}, mirror {}, probe every {}s\n",
        publics.join(","),
        num(v, &["port_range"]),
        num(v, &["nft_table"]),
        num(v, &["mirror"]),
        num(v, &["probe_interval_s"])
    );
    let rate = match num(v, &["rate_limit"]).as_str() {
        "0" => "off".to_string(),
        n => format!("{n}/s per source IP"),
    };
    out += &format!(
        "limits: {} forwards per host, rate {rate}\n",
        num(v, &["per_host_quota"])
    );
    let forwards = v["forwards"].as_array().cloned().unwrap_or_default();
    out += &format!(
        "forwards: {} (free ports: tcp {}, udp {})\n",
        forwards.len(),
        num(v, &["free_ports", "tcp"]),
        num(v, &["free_ports", "udp"])
    );
    if !forwards.is_empty() {
        out += &format!(
            "  {:<5} {:<21} {:<21} {:<6} {:>5} {:>8} {:>8}  {}\n",
            "PROTO", "PUBLIC", "LOCAL", "VIA", "MGMT", "AGE", "LEASE", "LAST PROBE"
        );
        for f in &forwards {
            let last = match f.get("last_probe").and_then(Value::as_str) {
                Some(r) => match f.get("timeouts").and_then(Value::as_u64) {
                    Some(t) if t > 0 => format!("{r} ({t} timeouts in a row)"),
                    _ => r.to_string(),
                },
                None => "-".to_string(),
            };
            // A leased mapping shows its remaining lease; a DPF forward, "-".
            let lease = match f.get("lifetime_s").and_then(Value::as_u64) {
                Some(s) => duration(&s.to_string()),
                None => "-".to_string(),
            };
            out += &format!(
                "  {:<5} {:<21} {:<21} {:<6} {:>5} {:>8} {:>8}  {last}\n",
                num(f, &["proto"]),
                num(f, &["public"]),
                num(f, &["local"]),
                f.get("via").and_then(Value::as_str).unwrap_or("dpf"),
                num(f, &["mgmt_port"]),
                duration(&num(f, &["age_s"])),
                lease
            );
        }
    }
    if let Some(std) = v.get("standard").filter(|s| s.is_object()) {
        let listen = std.get("listen").and_then(Value::as_str).unwrap_or("off");
        out += &format!(
            "NAT-PMP/PCP: udp {listen}, epoch {} s ({}), leases {} s, without authentication: {}\n",
            num(std, &["epoch_s"]),
            match std.get("epoch_kept").and_then(Value::as_bool) {
                Some(true) => "kept across restarts",
                _ => "since this start",
            },
            num(std, &["lifetime_s"]),
            num(std, &["unauthenticated"])
        );
        let c = v.pointer("/counters/standard");
        let refused: Vec<String> = c
            .and_then(|c| c.get("refused"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out += &format!(
            "  requests: received {} ({}), malformed {} ({}), from outside {}, rate limited {}, refused: {}\n",
            num(v, &["counters", "standard", "received"]),
            pairs(c.and_then(|c| c.get("requests"))),
            num(v, &["counters", "standard", "malformed"]),
            pairs(c.and_then(|c| c.get("malformed_by"))),
            num(v, &["counters", "standard", "foreign"]),
            num(v, &["counters", "standard", "rate_limited"]),
            if refused.is_empty() { "none".to_string() } else { refused.join(", ") }
        );
    }
    out += &format!(
        "requests: received {} ({}), malformed {}, from outside {}, rate limited {}, duplicates {}\n",
        num(v, &["counters", "received"]),
        pairs(v.pointer("/counters/requests")),
        num(v, &["counters", "malformed"]),
        num(v, &["counters", "foreign"]),
        num(v, &["counters", "rate_limited"]),
        num(v, &["counters", "duplicates"])
    );
    out += &format!(
        "malformed by class: {}\n",
        pairs(v.pointer("/counters/malformed_by"))
    );
    out += &format!("refused: {}\n", pairs(v.pointer("/counters/refused")));
    out += &format!(
        "authentication refused: {}\n",
        pairs(v.pointer("/counters/auth"))
    );
    out += &format!("probes: {}\n", pairs(v.get("probes")));
    out += &format!("changes: {}\n", pairs(v.get("changes")));
    out += &format!(
        "recovery: {} forwards from {} records in {} ms ({} corrupt, {} dropped)\n",
        num(v, &["recovery", "forwards"]),
        num(v, &["recovery", "records"]),
        num(v, &["recovery", "ms"]),
        num(v, &["recovery", "corrupt"]),
        num(v, &["recovery", "dropped"])
    );
    match v.get("last_sync") {
        Some(s) if s.is_object() => {
            out += &format!(
                "last sync: {} ago, {} forwards, kernel changes {}, table fixes {}\n",
                duration(&num(s, &["ago_s"])),
                num(s, &["forwards"]),
                num(s, &["kernel_changes"]),
                num(s, &["table_fixes"])
            )
        }
        _ => out += "last sync: none yet\n",
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_leased_mappings_and_the_standard_protocols() {
        let v = json!({
            "forwards": [{"proto": "udp", "public": "203.0.113.1:40001", "local": "192.0.2.11:5000",
                          "via": "natpmp", "mgmt_port": 0, "age_s": 5, "lifetime_s": 3595}],
            "standard": {"listen": "192.0.2.1:5351", "epoch_s": 42, "epoch_kept": true,
                         "lifetime_s": "120-86400", "unauthenticated": "none"},
            "counters": {"standard": {"received": 3, "requests": {"natpmp_map": 2},
                         "refused": {"natpmp.not_authorized": 1, "pcp.NO_RESOURCES": 0}}},
        });
        let text = render_text(&v);
        assert!(text.contains("natpmp     0       5s   59m55s  -"), "{text}");
        assert!(
            text.contains("NAT-PMP/PCP: udp 192.0.2.1:5351, epoch 42 s (kept across restarts)"),
            "{text}"
        );
        assert!(
            text.contains("refused: natpmp.not_authorized 1\n"),
            "{text}"
        );
    }

    #[test]
    fn renders_forwards_and_tolerates_missing_fields() {
        let v = json!({
            "dpfd": "0.1.0", "pid": 7, "listen": "192.0.2.1:65433", "uptime_s": 3725,
            "forwards": [{"proto": "tcp", "public": "203.0.113.1:40000", "local": "192.0.2.10:7000",
                          "mgmt_port": 5555, "age_s": 61, "last_probe": "timeout", "timeouts": 2}],
            "per_host_quota": 2, "rate_limit": 0,
            "counters": {"refused": {"not_local": 1}, "rate_limited": 4},
        });
        let text = render_text(&v);
        assert!(
            text.starts_with("dpfd 0.1.0 (pid 7), command port 192.0.2.1:65433, up 1h2m5s\n"),
            "{text}"
        );
        assert!(text.contains("203.0.113.1:40000"), "{text}");
        assert!(
            text.contains("1m1s        -  timeout (2 timeouts in a row)"),
            "{text}"
        );
        assert!(text.contains("refused: not_local 1\n"), "{text}");
        assert!(
            text.contains("limits: 2 forwards per host, rate off\n"),
            "{text}"
        );
        assert!(text.contains(", rate limited 4, "), "{text}");
        assert!(text.contains("free ports: tcp ?, udp ?"), "{text}");
        assert!(text.contains("last sync: none yet"));
    }
}
