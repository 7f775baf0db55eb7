//! Unit tests of config-file parsing, the flag > file > default merge, and
//! the cross-setting checks.

use super::*;
use clap::Parser;
use std::fs;

fn args(argv: &[&str]) -> DaemonArgs {
    let argv = std::iter::once("gcb-broker").chain(argv.iter().copied());
    let cli = crate::cli::Cli::try_parse_from(argv).expect("test argv parses");
    cli.daemon
}

fn user() -> Env {
    Env {
        rust_log: None,
        is_root: false,
        flags: Vec::new(),
    }
}

/// Merges `argv` over the config file `text` of /etc/gcb, with `env`.
fn merged_with(argv: &[&str], text: &str, env: &Env) -> Result<Config, String> {
    let args = args(argv);
    let dir = Some(Path::new("/etc/gcb"));
    let shared = settings::shared_of(&args.common, text, dir, env.rust_log.as_deref())?;
    merge(&args, &parse_file(text)?, shared, env)
}

fn merged(argv: &[&str], file: &str) -> Result<Config, String> {
    merged_with(argv, file, &user())
}

#[test]
fn defaults_fill_everything_but_listen() {
    let c = merged(&["--listen", "192.0.2.1"], "").unwrap();
    assert_eq!(c.listen, "192.0.2.1:65432".parse().unwrap());
    assert_eq!(c.public_ip, "192.0.2.1".parse::<IpAddr>().unwrap());
    assert_eq!(c.port_range, DEFAULT_PORT_RANGE);
    assert_eq!(c.limits.heartbeat_timeout_s, 30);
    assert_eq!(c.limits.max_registrations, 100_000);
    assert_eq!(c.limits.max_relays, 10_000);
    assert_eq!(c.limits.rate_limit, 200);
    assert_eq!(c.limits.udp_rule_idle_s, 120);
    assert_eq!(c.limits.udp_rules_per_registration, 4096);
    assert_eq!(c.shared.secret_file, None);
    assert_eq!(c.shared.log_filter, "info");
}

#[test]
fn listen_is_required() {
    let err = merged(&[], "").unwrap_err();
    assert!(err.contains("--listen"), "{err}");
}

#[test]
fn flag_beats_file_beats_default() {
    let file = r#"
        listen = "192.0.2.1:7000"
        max_relays = 5
        rate_limit = 0
        port_range = "30000-30009"
        log = "debug"
    "#;
    let c = merged(&["--max-relays", "9", "--log", "warn"], file).unwrap();
    assert_eq!(c.listen, "192.0.2.1:7000".parse().unwrap());
    assert_eq!(c.limits.max_relays, 9);
    assert_eq!(c.limits.rate_limit, 0);
    assert_eq!(
        c.port_range,
        PortRange {
            lo: 30000,
            hi: 30009
        }
    );
    assert_eq!(c.shared.log_filter, "warn");
    assert_eq!(c.limits.max_registrations, DEFAULT_LIMITS.max_registrations);
}

#[test]
fn rust_log_sits_between_flag_and_file() {
    let file = "listen = \"192.0.2.1\"\nlog = \"debug\"";
    let env = Env {
        rust_log: Some("broker=trace".into()),
        is_root: false,
        flags: Vec::new(),
    };
    let c = merged_with(&[], file, &env).unwrap();
    assert_eq!(c.shared.log_filter, "broker=trace");
    let c = merged_with(&["--log", "error"], file, &env).unwrap();
    assert_eq!(c.shared.log_filter, "error");
    let c = merged_with(&[], file, &user()).unwrap();
    assert_eq!(c.shared.log_filter, "debug");
    let bad = Env {
        rust_log: Some("=[".into()),
        is_root: false,
        flags: Vec::new(),
    };
    assert!(merged_with(&[], file, &bad)
        .unwrap_err()
        .starts_with("RUST_LOG"));
}

/// A typo'd key, a value a key's parser refuses, a value out of bounds: the
/// error is one line naming the key (and for TOML errors, the line).
#[test]
fn bad_file_keys_and_values_are_named() {
    let cases = [
        ("listen = \"192.0.2.1\"\nmax_relay = 3\n", "line 2"),
        ("listen = \"192.0.2.1\"\nmax_relay = 3\n", "max_relay"),
        ("max_relays = -1", "line 1"),
        ("listen = \"nowhere\"", "listen"),
        ("listen = \"192.0.2.1\"\npublic_ip = \"x\"", "public_ip"),
        ("listen = \"192.0.2.1\"\nport_range = \"2-1\"", "port_range"),
        ("listen = \"192.0.2.1\"\nlog = \"loud\"", "log"),
        ("listen = \"192.0.2.1\"\nmax_relays = 0", "max_relays"),
        (
            "listen = \"192.0.2.1\"\nheartbeat_timeout_s = 100000",
            "heartbeat_timeout_s",
        ),
    ];
    for (file, named) in cases {
        let err = merged(&[], file).unwrap_err();
        assert!(err.contains(named) && !err.contains('\n'), "{file}: {err}");
    }
}

#[test]
fn out_of_range_flag_is_named_as_a_flag() {
    let err = merged(&["--listen", "192.0.2.1", "--udp-rule-idle-s", "0"], "").unwrap_err();
    assert!(err.starts_with("--udp-rule-idle-s is 0"), "{err}");
}

#[test]
fn public_ip_must_be_concrete() {
    let err = merged(&["--listen", "0.0.0.0"], "").unwrap_err();
    assert!(err.contains("--public-ip"), "{err}");
    let err = merged(&["--listen", "192.0.2.1", "--public-ip", "0.0.0.0"], "").unwrap_err();
    assert!(err.contains("concrete"), "{err}");
    let c = merged(&["--listen", "0.0.0.0:5", "--public-ip", "192.0.2.1"], "").unwrap();
    assert_eq!(c.public_ip, "192.0.2.1".parse::<IpAddr>().unwrap());
    assert!(merged(&["--listen", "0.0.0.0", "--public-ip", "::1"], "").is_err());
}

#[test]
fn command_port_must_be_on_the_public_ip() {
    let err = merged(&["--listen", "192.0.2.1", "--public-ip", "192.0.2.2"], "").unwrap_err();
    assert!(err.contains("PUBLIC_IP:COMMAND_PORT"), "{err}");
}

#[test]
fn port_range_checks() {
    let err = merged(&["--listen", "192.0.2.1:20005"], "").unwrap_err();
    assert!(err.contains("contains the command port 20005"), "{err}");
    let err = merged(&["--listen", "192.0.2.1", "--port-range", "1000-2000"], "").unwrap_err();
    assert!(err.contains("below 1024"), "{err}");
    let root = Env {
        rust_log: None,
        is_root: true,
        flags: Vec::new(),
    };
    let ok = merged_with(
        &["--listen", "192.0.2.1", "--port-range", "1000-2000"],
        "",
        &root,
    );
    assert!(ok.is_ok());
    let err = merged(&["--listen", "192.0.2.1:1"], "port_range = \"1-10\"").unwrap_err();
    assert!(err.starts_with("port_range in the config file"), "{err}");
}

#[test]
fn relative_secret_path_follows_the_file() {
    let c = merged(&["--listen", "192.0.2.1"], "secret_file = \"key\"").unwrap();
    assert_eq!(c.shared.secret_file, Some(PathBuf::from("/etc/gcb/key")));
    let c = merged(&["--listen", "192.0.2.1"], "secret_file = \"/k\"").unwrap();
    assert_eq!(c.shared.secret_file, Some(PathBuf::from("/k")));
    let c = merged(
        &["--listen", "192.0.2.1", "--secret-file", "k2"],
        "secret_file = \"key\"",
    )
    .unwrap();
    assert_eq!(c.shared.secret_file, Some(PathBuf::from("k2")));
}

#[test]
fn load_reads_file_and_secret() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("gcb-broker-load-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("broker.toml");
    fs::write(dir.join("key"), "k").unwrap();
    fs::set_permissions(dir.join("key"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(&conf, "listen = \"127.0.0.1:7\"\nsecret_file = \"key\"\n").unwrap();
    let loaded = load(&args(&["--config", conf.to_str().unwrap()]), &user()).unwrap();
    assert_eq!(loaded.secret.unwrap().bytes(), b"k");
    assert!(loaded.warnings.is_empty());
    let err = load(
        &args(&["--config", dir.join("none.toml").to_str().unwrap()]),
        &user(),
    )
    .unwrap_err();
    assert!(err.starts_with("config file"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

/// The example file parses, and documents every key: uncommented, each
/// one is there and parses too.
#[test]
fn example_file_is_valid_and_complete() {
    let text = include_str!("../../gcb-broker.example.toml");
    parse_file(text).unwrap();
    let all = settings::uncommented(text);
    parse_file(&all).unwrap();
    let keys: toml::Table = all.parse().unwrap();
    let documented = |key: &&str| keys.contains_key(*key);
    let missing: Vec<&str> = [
        "listen",
        "public_ip",
        "port_range",
        "heartbeat_timeout_s",
        "max_registrations",
        "max_relays",
        "rate_limit",
        "udp_rule_idle_s",
        "udp_rules_per_registration",
        "status_allow",
        "freebind",
        "secret_file",
        "log",
        "metrics_listen",
        "punch",
        "punch_budget_ms",
        "punch_budget_min_ms",
        "punch_retry_s",
        "punch_unpredictable",
    ]
    .into_iter()
    .filter(|k| !documented(k))
    .collect();
    assert!(missing.is_empty(), "the example lacks {missing:?}");
}

#[test]
fn punch_settings_from_flag_file_and_default() {
    let c = merged(&["--listen", "192.0.2.1"], "").unwrap();
    assert_eq!(c.limits.punch, Punch::default());
    assert!(c.limits.punch.enabled && !c.limits.punch.unpredictable);
    assert_eq!((c.limits.punch.budget_ms, c.limits.punch.retry_s), (500, 600));
    assert_eq!(c.limits.punch.budget_min_ms, 200);
    let file = "punch = false\npunch_budget_ms = 250\npunch_budget_min_ms = 50\npunch_retry_s = 30\npunch_unpredictable = true";
    let c = merged(&["--listen", "192.0.2.1"], file).unwrap();
    let want = Punch { enabled: false, budget_ms: 250, budget_min_ms: 50, retry_s: 30, unpredictable: true };
    assert_eq!(c.limits.punch, want);
    // --no-punch=false beats the file's punch = false.
    let c = merged(&["--listen", "192.0.2.1", "--no-punch=false", "--punch-budget-ms", "900"], file).unwrap();
    assert!(c.limits.punch.enabled);
    assert_eq!(c.limits.punch.budget_ms, 900);
    let err = merged(&["--listen", "192.0.2.1", "--punch-budget-ms", "0"], "").unwrap_err();
    assert!(err.contains("--punch-budget-ms"), "{err}");
    let err = merged(&["--listen", "192.0.2.1", "--punch-budget-min-ms", "70000"], "").unwrap_err();
    assert!(err.contains("--punch-budget-min-ms"), "{err}");
}

#[test]
fn status_allow_comes_from_flag_or_file() {
    let c = merged(&["--listen", "192.0.2.1"], "").unwrap();
    assert!(c.limits.status_allow.0.is_empty());
    let c = merged(
        &["--listen", "192.0.2.1"],
        "status_allow = \"10.0.0.0/8, 192.0.2.7\"",
    )
    .unwrap();
    assert_eq!(c.limits.status_allow.to_string(), "10.0.0.0/8,192.0.2.7/32");
    let c = merged(
        &["--listen", "192.0.2.1", "--status-allow", "198.51.100.0/24"],
        "status_allow = \"10.0.0.0/8\"",
    )
    .unwrap();
    assert_eq!(c.limits.status_allow.to_string(), "198.51.100.0/24");
    let err = merged(&["--listen", "192.0.2.1"], "status_allow = \"10.0.0.0/40\"").unwrap_err();
    assert!(err.starts_with("status_allow in the config file"), "{err}");
}
