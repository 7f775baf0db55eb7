//! Tests of environment parsing, with a fake environment.

use super::*;

fn config(vars: &[(&str, &str)]) -> Config {
    let vars: Vec<(String, Vec<u8>)> = vars.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
    Config::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn empty_environment_is_pass_through() {
    let c = config(&[]);
    assert_eq!(c.mode, Mode::Off);
    assert!(c.routes.is_empty() && c.realm.is_none() && c.log_file.is_none());
    assert_eq!(c.log_level, Level::Warn);
    assert_eq!(c.heartbeat, Duration::from_secs(10));
    assert!(c.problems.is_empty());
    assert_eq!(c.summary().to_string(), "GCB and DPF off, heartbeat 10s, log warn");
}

#[test]
fn empty_values_count_as_unset() {
    let c = config(&[("GCB_INAGENT", ""), ("GCB_LOG", ""), ("GCB_LOG_FILE", ""), ("GCB_HEARTBEAT_S", "")]);
    assert_eq!(c, config(&[]));
}

#[test]
fn gcb_brokers_with_default_port() {
    let c = config(&[("GCB_INAGENT", "192.0.2.1, 198.51.100.7:7000,[2001:db8::1],192.0.2.1")]);
    let want = vec![addr("192.0.2.1:65432"), addr("198.51.100.7:7000"), addr("[2001:db8::1]:65432")];
    assert_eq!(c.mode, Mode::Gcb(want));
    assert!(c.problems.is_empty());
    assert!(c.summary().to_string().starts_with("GCB via 192.0.2.1:65432 198.51.100.7:7000"));
}

#[test]
fn dpf_agent() {
    let c = config(&[("DPF_INAGENT", "203.0.113.1")]);
    assert_eq!(c.mode, Mode::Dpf(addr("203.0.113.1:65433")));
    let c = config(&[("DPF_INAGENT", "203.0.113.1:6000")]);
    assert_eq!(c.mode, Mode::Dpf(addr("203.0.113.1:6000")));
}

#[test]
fn pcp_gateway() {
    let gw = |ip: Option<&str>, port| Mode::Pcp(PcpGateway { ip: ip.map(|i| i.parse().unwrap()), port });
    for (value, want) in [
        ("pcp://", gw(None, 5351)),
        ("pcp:///", gw(None, 5351)),
        ("pcp://:6000", gw(None, 6000)),
        ("pcp://192.0.2.1", gw(Some("192.0.2.1"), 5351)),
        (" pcp://192.0.2.1:5000/ ", gw(Some("192.0.2.1"), 5000)),
    ] {
        let c = config(&[("DPF_INAGENT", value)]);
        assert_eq!(c.mode, want, "{value}");
        assert!(c.problems.is_empty(), "{value}: {:?}", c.problems);
    }
    assert_eq!(config(&[("DPF_INAGENT", "pcp://")]).summary().to_string().split(',').next(), Some("DPF via pcp:// (the default gateway"));
    assert!(config(&[("DPF_INAGENT", "pcp://192.0.2.1")]).summary().to_string().starts_with("DPF via pcp://192.0.2.1:5351,"));
    for bad in ["pcp://[2001:db8::1]", "pcp://gateway", "pcp://:0", "pcp://0.0.0.0", "pcp://192.0.2.1:x"] {
        let c = config(&[("DPF_INAGENT", bad)]);
        assert_eq!(c.mode, Mode::Off, "{bad}");
        assert_eq!(c.problems.len(), 1, "{bad}");
        assert!(c.problems[0].starts_with("DPF_INAGENT=") && c.problems[0].ends_with("DPF is off"), "{:?}", c.problems);
    }
}

#[test]
fn invalid_values_turn_the_feature_off_with_one_line_each() {
    let c = config(&[
        ("GCB_INAGENT", "192.0.2.1,broker.example"),
        ("GCB_REALM", "has space"),
        ("GCB_LOG", "verbose"),
        ("GCB_HEARTBEAT_S", "0"),
        ("GCB_ROUTE", "/nonexistent/gcb-routes"),
    ]);
    assert_eq!(c.mode, Mode::Off);
    assert_eq!((c.realm.clone(), c.log_level, c.heartbeat), (None, Level::Warn, DEFAULT_HEARTBEAT));
    assert!(c.routes.is_empty());
    assert_eq!(c.problems.len(), 5, "{:#?}", c.problems);
    let expect = [
        "GCB_INAGENT=\"192.0.2.1,broker.example\": 'broker.example' is not IP or IP:PORT; GCB is off",
        "GCB_REALM=\"has space\": is not a name",
        "GCB_LOG=\"verbose\": is not error, warn, info or debug; logging at warn",
        "GCB_HEARTBEAT_S=\"0\": is not a whole number of seconds from 1 to 86400",
        "GCB_ROUTE=\"/nonexistent/gcb-routes\": cannot read it",
    ];
    for (line, want) in c.problems.iter().zip(expect) {
        assert!(line.starts_with(want), "{line:?} should start with {want:?}");
        assert!(!line.contains('\n'));
    }
}

#[test]
fn both_agents_is_a_conflict() {
    let c = config(&[("GCB_INAGENT", "192.0.2.1"), ("DPF_INAGENT", "192.0.2.2")]);
    assert_eq!(c.mode, Mode::Off);
    assert_eq!(c.problems.len(), 1);
    assert!(c.problems[0].contains("both set"));
    // One valid, one not: the invalid one is reported and the valid one used.
    let c = config(&[("GCB_INAGENT", "192.0.2.1"), ("DPF_INAGENT", "nope")]);
    assert_eq!(c.mode, Mode::Gcb(vec![addr("192.0.2.1:65432")]));
    assert_eq!(c.problems.len(), 1);
}

#[test]
fn non_utf8_values() {
    let c = Config::from_lookup(|name| match name {
        "GCB_REALM" => Some(b"lab\xff".to_vec()),
        "GCB_LOG_FILE" => Some(b"/tmp/gcb-\xff.log".to_vec()),
        _ => None,
    });
    assert_eq!(c.realm, None);
    assert_eq!(c.problems.len(), 1);
    assert!(c.problems[0].contains("is not valid UTF-8"));
    assert_eq!(c.log_file.as_deref().map(CStr::to_bytes), Some(&b"/tmp/gcb-\xff.log"[..]));
}

#[test]
fn valid_settings() {
    let dir = std::env::temp_dir().join(format!("gcb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let routes = dir.join("routes");
    std::fs::write(&routes, "10.0.0.0/8 direct\n").unwrap();
    let c = config(&[
        ("GCB_INAGENT", "192.0.2.1"),
        ("GCB_REALM", "lab-A.cs"),
        ("GCB_LOG", "DEBUG"),
        ("GCB_LOG_FILE", "/var/log/gcb.log"),
        ("GCB_HEARTBEAT_S", " 30 "),
        ("GCB_ROUTE", routes.to_str().unwrap()),
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.realm.as_deref(), Some("lab-A.cs"));
    assert_eq!(c.log_level, Level::Debug);
    assert_eq!(c.log_file.as_deref(), Some(c"/var/log/gcb.log"));
    assert_eq!(c.heartbeat, Duration::from_secs(30));
    assert_eq!(c.routes.len(), 1);
    assert_eq!(
        c.summary().to_string(),
        "GCB via 192.0.2.1:65432, realm lab-A.cs, 1 routes, heartbeat 30s, log debug"
    );
}

#[test]
fn route_file_errors_name_file_line() {
    let dir = std::env::temp_dir().join(format!("gcb-config-test-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let routes = dir.join("routes");
    std::fs::write(&routes, "10.0.0.0/8 direct\nbogus\n").unwrap();
    let c = config(&[("GCB_ROUTE", routes.to_str().unwrap())]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(c.routes.is_empty());
    assert_eq!(c.problems.len(), 1);
    assert!(c.problems[0].contains("line 2: 'bogus' is not 'CIDR direct|gcb'"), "{}", c.problems[0]);
}

#[test]
fn address_parsing() {
    assert_eq!(parse_addr("192.0.2.1", 1).unwrap(), addr("192.0.2.1:1"));
    assert_eq!(parse_addr("[2001:db8::2]", 9).unwrap(), addr("[2001:db8::2]:9"));
    assert_eq!(parse_addr("2001:db8::2", 9).unwrap(), addr("[2001:db8::2]:9"));
    for bad in ["0.0.0.0", "192.0.2.1:0", "192.0.2.1:70000", "192.0.2.1:", "", "::"] {
        assert!(parse_addr(bad, 1).is_err(), "{bad:?} accepted");
    }
    assert!(parse_inagents("192.0.2.1,,192.0.2.2").is_err());
}

#[test]
fn realm_and_heartbeat_bounds() {
    assert!(parse_realm(&"a".repeat(MAX_REALM_LEN)).is_ok());
    assert!(parse_realm(&"a".repeat(MAX_REALM_LEN + 1)).is_err());
    assert!(parse_realm("tab\there").is_err());
    assert_eq!(parse_heartbeat("86400").unwrap(), Duration::from_secs(86_400));
    for bad in ["86401", "-1", "1.5", "10s", "0"] {
        assert!(parse_heartbeat(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn secret_file_is_read_once_and_an_unusable_one_turns_brokering_off() {
    let dir = std::env::temp_dir().join(format!("gcb-shim-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good");
    std::fs::write(&good, b"s3cret\n").unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, b"\n").unwrap();
    let good = good.to_str().unwrap();

    let c = config(&[("GCB_INAGENT", "192.0.2.1"), ("GCB_SECRET_FILE", good)]);
    assert_eq!(c.secret.as_ref().map(SharedSecret::bytes), Some(&b"s3cret"[..]));
    assert!(matches!(c.mode, Mode::Gcb(_)) && c.problems.is_empty());
    assert!(c.summary().to_string().contains(", authenticated"));
    assert_eq!(format!("{:?}", c.secret), "Some(SharedSecret(6 bytes))");

    for bad in [empty.to_str().unwrap(), "/nonexistent/gcb-secret"] {
        for agent in ["GCB_INAGENT", "DPF_INAGENT"] {
            let c = config(&[(agent, "192.0.2.1"), ("GCB_SECRET_FILE", bad)]);
            assert_eq!(c.mode, Mode::Off, "{bad}");
            assert_eq!(c.problems.len(), 1, "{:#?}", c.problems);
            assert!(c.problems[0].starts_with("GCB_SECRET_FILE=") && c.problems[0].ends_with("GCB and DPF are off"));
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hole_punching_is_offered_unless_switched_off() {
    assert!(config(&[]).punch, "on by default");
    for off in ["0", "off", "NO", "false"] {
        let c = config(&[("GCB_PUNCH", off)]);
        assert!(!c.punch, "{off}");
        assert!(c.problems.is_empty());
    }
    assert!(config(&[("GCB_PUNCH", "yes")]).punch);
    let c = config(&[("GCB_PUNCH", "maybe")]);
    assert!(c.punch, "an invalid value leaves the default");
    assert_eq!(c.problems, vec!["GCB_PUNCH=\"maybe\": is not 1 or 0; hole punching is offered".to_string()]);
}

#[test]
fn a_punch_s_first_dummy_has_a_low_ttl_unless_told_otherwise() {
    assert_eq!(config(&[]).punch_ttl, DEFAULT_PUNCH_TTL);
    assert_eq!(config(&[("GCB_PUNCH_TTL", "0")]).punch_ttl, 0, "off");
    assert_eq!(config(&[("GCB_PUNCH_TTL", " 3 ")]).punch_ttl, 3);
    let c = config(&[("GCB_PUNCH_TTL", "256")]);
    assert_eq!(c.punch_ttl, DEFAULT_PUNCH_TTL, "an invalid value leaves the default");
    assert_eq!(c.problems, vec!["GCB_PUNCH_TTL=\"256\": is not a TTL from 0 (off) to 255; a UDP punch's first Dummy has TTL 2".to_string()]);
}

#[test]
fn standby_connections_are_kept_only_when_asked_for() {
    assert!(!config(&[]).standby);
    assert!(config(&[("GCB_STANDBY", "1")]).standby);
    assert!(!config(&[("GCB_STANDBY", "0")]).standby);
    let c = config(&[("GCB_STANDBY", "2")]);
    assert!(!c.standby, "an invalid value leaves the default");
    assert_eq!(c.problems, vec!["GCB_STANDBY=\"2\": is not 1 or 0; no standby connections".to_string()]);
}
