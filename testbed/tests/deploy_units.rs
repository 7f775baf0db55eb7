//! The systemd units in `deploy/` against the binaries they start: each unit
//! passes `systemd-analyze verify` (when systemd-analyze is installed) with
//! its `ExecStart` pointed at the built binary; its `ExecStart` line,
//! with the example config file, passes the daemon's own `--check-config`;
//! it reloads with SIGHUP, runs as a user of its own and keeps hardening
//! on; and every environment variable its comments tell operators to set is
//! one the daemon reads.
//!
//! Needs `cargo build --release`; no root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testbed::{have_command, release_bin, run_with_timeout, workspace_root};

const LIMIT: Duration = Duration::from_secs(30);

struct Unit {
    name: &'static str,
    binary: &'static str,
    example: &'static str,
    /// Settings the example cannot know on a machine that is not the
    /// gateway it describes, given the way an operator would.
    env: &'static [(&'static str, &'static str)],
    /// The variable that moves the example's state into a scratch
    /// directory, if the daemon keeps state.
    state_env: Option<(&'static str, &'static str)>,
}

const UNITS: [Unit; 2] = [
    Unit {
        name: "gcb-broker.service",
        binary: "gcb-broker",
        example: "broker/gcb-broker.example.toml",
        env: &[],
        state_env: None,
    },
    Unit {
        name: "dpfd.service",
        binary: "dpfd",
        example: "dpfd/dpfd.example.toml",
        env: &[("DPFD_PRIVATE_NET", "192.0.2.0/24")],
        state_env: Some(("DPFD_MIRROR", "mirror")),
    },
];

fn text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of every `Key=` line, comments left out.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deploy-units-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn output(cmd: Command) -> (bool, String) {
    let out = run_with_timeout(cmd, LIMIT).expect("bounded run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn units_verify_and_start_what_the_daemons_accept() {
    for u in UNITS {
        let unit = text(&workspace_root().join("deploy").join(u.name));
        let bin = release_bin(u.binary);
        assert!(bin.exists(), "{} is missing: run `cargo build --release`", bin.display());
        let installed = format!("/usr/local/bin/{}", u.binary);
        let dir = scratch(u.binary);

        let exec = values(&unit, "ExecStart");
        assert_eq!(exec.len(), 1, "{}: one ExecStart", u.name);
        let mut argv: Vec<&str> = exec[0].split_whitespace().collect();
        assert_eq!(argv[0], installed, "{}", u.name);

        // .ci/run installs systemd: without systemd-analyze the unit is
        // not verified, and that fails the test, never skips a part of it.
        assert!(have_command("systemd-analyze"), "systemd-analyze is needed: apt-get install systemd (.ci/run does)");
        let local = dir.join(u.name);
        fs::write(&local, unit.replace(&installed, bin.to_str().unwrap())).unwrap();
        let mut c = Command::new("systemd-analyze");
        c.args(["verify", "--man=no"]).arg(&local);
        let (ok, out) = output(c);
        assert!(ok && out.trim().is_empty(), "systemd-analyze verify {}:\n{out}", u.name);

        // The command line as systemd runs it, with the example as the
        // config file and the state directory in a scratch one.
        let example = workspace_root().join(u.example);
        let state = dir.join("state");
        fs::create_dir_all(&state).unwrap();
        let mut c = Command::new(&bin);
        for arg in argv.drain(1..) {
            let arg = arg.replace(&format!("/etc/{}.toml", u.binary), example.to_str().unwrap());
            c.arg(arg.replace(&format!("/var/lib/{}", u.binary), state.to_str().unwrap()));
        }
        c.arg("--check-config").env_clear().env("PATH", "/usr/bin:/bin").envs(u.env.iter().copied());
        if let Some((var, file)) = u.state_env {
            c.env(var, state.join(file));
        }
        let (ok, out) = output(c);
        assert!(ok && out.contains("configuration ok"), "{}'s ExecStart with the example config:\n{out}", u.name);

        assert_eq!(values(&unit, "ExecReload"), ["/bin/kill -HUP $MAINPID"], "{}", u.name);
        assert_eq!(values(&unit, "DynamicUser"), ["yes"], "{}: a user of its own", u.name);
        for key in ["NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet", "SystemCallFilter"] {
            assert!(!values(&unit, key).is_empty(), "{} lacks {key}", u.name);
        }

        // Variables the comments name (`Environment=NAME=...`) must be
        // ones the daemon reads, as its --help lists them.
        let (_, help) = output({
            let mut c = Command::new(&bin);
            c.arg("--help");
            c
        });
        for line in unit.lines().filter_map(|l| l.trim_start_matches(['#', ' ']).strip_prefix("Environment=")) {
            let var = line.split('=').next().unwrap();
            assert!(help.contains(&format!("[env: {var}=")), "{}: {var} is not a variable of {}", u.name, u.binary);
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
