//! Unit tests of config-file parsing, the flag > file > default merge, the
//! derived private network, and the cross-setting checks.

use super::*;
use clap::Parser;
use std::fs;

fn args(argv: &[&str]) -> DaemonArgs {
    let mut full = vec!["dpfd"];
    full.extend_from_slice(argv);
    crate::cli::Cli::try_parse_from(full)
        .expect("test argv parses")
        .daemon
}

/// A gateway with a private leg 192.0.2.1/24 and a public one 198.51.100.1/24.
fn gateway() -> Env {
    let addr = |ip: &str, prefix| IfAddr {
        ip: ip.parse().unwrap(),
        prefix,
    };
    Env {
        rust_log: None,
        addresses: vec![addr("192.0.2.1", 24), addr("198.51.100.1", 24)],
        flags: Vec::new(),
    }
}

const MINIMAL: [&str; 6] = [
    "--listen",
    "192.0.2.1",
    "--public-ip",
    "198.51.100.1",
    "--mirror",
    "/var/lib/dpf/mirror",
];

/// Merges `argv` over the config file `text` of /etc/dpf, with `env`.
fn merged_in(argv: &[&str], text: &str, env: &Env) -> Result<Config, String> {
    let (args, dir) = (args(argv), Some(Path::new("/etc/dpf")));
    let shared = settings::shared_of(&args.common, text, dir, env.rust_log.as_deref())?;
    merge(&args, &parse_file(text)?, shared, dir, env)
}

fn merged(argv: &[&str], file: &str) -> Result<Config, String> {
    merged_in(argv, file, &gateway())
}

/// MINIMAL without its --listen, plus `extra`.
fn but_listen(extra: &[&'static str]) -> Vec<&'static str> {
    MINIMAL[2..].iter().chain(extra).copied().collect()
}

#[test]
fn defaults_and_derived_private_net() {
    let c = merged(&MINIMAL, "").unwrap();
    assert_eq!(c.listen, "192.0.2.1:65433".parse().unwrap());
    assert_eq!(c.public_ips, ["198.51.100.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(c.port_range, DEFAULT_PORT_RANGE);
    assert_eq!(c.mirror, PathBuf::from("/var/lib/dpf/mirror"));
    assert_eq!(c.nft_table, "dpf");
    assert_eq!(c.private_nets, ["192.0.2.0/24".parse::<Cidr>().unwrap()]);
    assert!(c.private_nets_derived);
    assert_eq!((c.probe_interval_s, c.per_host_quota), (30, 1024));
    assert_eq!(c.rate_limit, DEFAULT_RATE_LIMIT);
    assert_eq!(c.shared.secret_file, None);
    assert_eq!(c.shared.log_filter, "info");
}

#[test]
fn required_settings_are_named() {
    let err = merged(&["--public-ip", "198.51.100.1", "--mirror", "m"], "").unwrap_err();
    assert!(err.contains("--listen"), "{err}");
    let err = merged(&["--listen", "192.0.2.1", "--mirror", "m"], "").unwrap_err();
    assert!(err.contains("--public-ip"), "{err}");
    let err = merged(
        &["--listen", "192.0.2.1", "--public-ip", "198.51.100.1"],
        "",
    )
    .unwrap_err();
    assert!(err.contains("--mirror"), "{err}");
}

#[test]
fn private_net_cannot_be_derived_from_a_wildcard_or_foreign_address() {
    let err = merged(
        &[
            "--listen",
            "0.0.0.0",
            "--public-ip",
            "198.51.100.1",
            "--mirror",
            "m",
        ],
        "",
    )
    .unwrap_err();
    assert!(err.contains("--private-net must name"), "{err}");
    let err = merged(
        &[
            "--listen",
            "10.9.9.9",
            "--public-ip",
            "198.51.100.1",
            "--mirror",
            "m",
        ],
        "",
    )
    .unwrap_err();
    assert!(err.contains("not an address of this host"), "{err}");
    let c = merged(
        &[
            "--listen",
            "0.0.0.0:5",
            "--public-ip",
            "198.51.100.1",
            "--mirror",
            "m",
        ],
        "private_net = [\"10.0.0.0/8\", \"192.0.2.0/24\"]",
    )
    .unwrap();
    assert_eq!(c.private_nets.len(), 2);
    assert!(!c.private_nets_derived);
}

#[test]
fn flag_beats_file_beats_default() {
    let file = r#"
        listen = "192.0.2.1:7000"
        public_ip = "198.51.100.1, 198.51.100.2"
        mirror = "state/mirror"
        nft_table = "from_file"
        probe_interval_s = 5
        per_host_quota = 10
        rate_limit = 50
        log = "debug"
    "#;
    let c = merged(
        &[
            "--per-host-quota",
            "3",
            "--public-ip",
            "198.51.100.9",
            "--rate-limit",
            "0",
        ],
        file,
    )
    .unwrap();
    assert_eq!(c.listen, "192.0.2.1:7000".parse().unwrap());
    assert_eq!(c.public_ips, ["198.51.100.9".parse::<IpAddr>().unwrap()]);
    assert_eq!(c.mirror, PathBuf::from("/etc/dpf/state/mirror"));
    assert_eq!(
        (c.nft_table.as_str(), c.probe_interval_s, c.per_host_quota),
        ("from_file", 5, 3)
    );
    assert_eq!((c.shared.log_filter.as_str(), c.rate_limit), ("debug", 0));
    let c = merged(&["--public-ip", "198.51.100.9"], file).unwrap();
    assert_eq!((c.public_ips.len(), c.rate_limit), (1, 50));
    let c = merged(&[], file).unwrap();
    assert_eq!(c.public_ips.len(), 2);
}

#[test]
fn rust_log_sits_between_flag_and_file() {
    let env = Env {
        rust_log: Some("dpfd=trace".into()),
        ..gateway()
    };
    let file = "log = \"warn\"";
    let c = merged_in(&MINIMAL, file, &env).unwrap();
    assert_eq!(c.shared.log_filter, "dpfd=trace");
    let error = but_listen(&["--listen", "192.0.2.1", "--log", "error"]);
    let c = merged_in(&error, file, &env).unwrap();
    assert_eq!(c.shared.log_filter, "error");
    let c = merged_in(&MINIMAL, file, &gateway()).unwrap();
    assert_eq!(c.shared.log_filter, "warn");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let err = parse_file("listen = \"192.0.2.1\"\n\nnft_tabel = \"x\"\n").unwrap_err();
    assert!(err.contains("line 3") && err.contains("nft_tabel"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn bad_file_values_name_the_key() {
    for (file, key) in [
        ("public_ip = [\"198.51.100.1\", \"x\"]", "public_ip"),
        ("private_net = \"192.0.2.1/24\"", "private_net"),
        ("private_net = []", "private_net"),
        ("nft_table = \"no-dash\"", "nft_table"),
        ("port_range = \"5\"", "port_range"),
        ("probe_interval_s = 0", "probe_interval_s"),
        ("per_host_quota = 0", "per_host_quota"),
        ("log = \"loud\"", "log"),
        ("public_ip = 5", "line 2 `public_ip = 5`: invalid type"),
    ] {
        let err = merged(&MINIMAL[..4], &format!("mirror = \"m\"\n{file}")).unwrap_err();
        assert!(err.contains(key), "{file}: {err}");
    }
}

#[test]
fn public_ips_must_be_concrete_unique_and_public() {
    let base = ["--listen", "192.0.2.1", "--mirror", "m", "--public-ip"];
    let run = |ips: &'static str| {
        let argv: Vec<&str> = base.iter().copied().chain([ips]).collect();
        merged(&argv, "").unwrap_err()
    };
    assert!(run("0.0.0.0").contains("concrete"));
    assert!(run("224.0.0.1").contains("concrete"));
    assert!(run("198.51.100.1,198.51.100.1").contains("twice"));
    assert!(run("192.0.2.77").contains("inside the private network 192.0.2.0/24"));
}

#[test]
fn command_port_collides_only_when_exposed() {
    assert!(merged(&but_listen(&["--listen", "192.0.2.1:40001"]), "").is_ok());
    let err = merged(
        &but_listen(&[
            "--listen",
            "198.51.100.1:40001",
            "--private-net",
            "192.0.2.0/24",
        ]),
        "",
    )
    .unwrap_err();
    assert!(err.contains("contains the command port 40001"), "{err}");
    let err = merged(
        &but_listen(&["--listen", "0.0.0.0:40001", "--private-net", "192.0.2.0/24"]),
        "",
    )
    .unwrap_err();
    assert!(err.contains("forwards would capture it"), "{err}");
}

#[test]
fn load_checks_the_mirror_directory_and_warns_on_foreign_public_ips() {
    let dir = std::env::temp_dir().join(format!("dpfd-load-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("dpfd.toml");
    fs::write(&conf, "mirror = \"mirror\"\n").unwrap();
    let mut argv = MINIMAL[..4].to_vec();
    argv.extend(["--config", conf.to_str().unwrap()]);
    let loaded = load(&args(&argv), &gateway()).unwrap();
    assert_eq!(loaded.config.mirror, dir.join("mirror"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    fs::write(&conf, "mirror = \"missing/mirror\"\n").unwrap();
    let err = load(&args(&argv), &gateway()).unwrap_err();
    assert!(err.contains("directory"), "{err}");
    fs::write(&conf, format!("mirror = \"{}\"\n", dir.display())).unwrap();
    assert!(load(&args(&argv), &gateway())
        .unwrap_err()
        .contains("not a regular file"));

    fs::write(&conf, "mirror = \"mirror\"\n").unwrap();
    argv[3] = "198.51.100.200";
    let loaded = load(&args(&argv), &gateway()).unwrap();
    assert!(loaded.warnings[0].contains("not an address of this host"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn example_file_is_valid_and_complete() {
    let text = include_str!("../../dpfd.example.toml");
    parse_file(text).unwrap();
    // Every key, uncommented, must parse: the example documents them all.
    let f = parse_file(&settings::uncommented(text)).unwrap();
    assert!(f.listen.is_some() && f.public_ip.is_some() && f.port_range.is_some());
    assert!(f.mirror.is_some() && f.nft_table.is_some() && f.private_net.is_some());
    assert!(f.probe_interval_s.is_some() && f.per_host_quota.is_some());
    assert!(f.rate_limit.is_some());
    assert!(f.secret_file.is_some() && f.log.is_some());
}
