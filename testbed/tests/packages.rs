//! The Debian packages (issue 16): `scripts/package` builds gcb-broker, dpfd
//! and libgcb with cargo-deb; this test installs them on this machine with
//! `dpkg -i` and checks what an administrator relies on:
//!
//! * the installed `gcb-broker` and `dpfd` accept the installed example
//!   configs (`--check-config`), and `systemd-analyze verify` accepts the
//!   installed units, which wait for a real config (ConditionPathExists)
//!   that the packages do not create, so nothing starts with the example;
//! * the installed `gcb-run --check` finds the installed shim without any
//!   path given, and registers a listener with the installed broker;
//! * `dpkg --purge` removes every file the packages installed, their
//!   conffiles, the units' enablement and dpfd's state directory;
//! * lintian finds no error or warning in them.
//!
//! This changes the machine's /usr and /etc, so the packages are purged
//! again however the test ends (a guard), and the test refuses to run if
//! they were installed by someone else. Needs root, cargo-deb, help2man,
//! lintian and dpkg (`.ci/run` installs them) and `cargo build --release`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testbed::{have_command, require_root, run_with_timeout, workspace_root, Proc};

const PACKAGES: [&str; 3] = ["gcb-broker", "dpfd", "libgcb"];
/// Left while this test has the packages installed, so a run killed half
/// way is cleaned up by the next one instead of blocking it.
const MARKER: &str = "/var/lib/gcb-dpf-packages-test";
const LOCK: &str = "/run/lock/gcb-dpf-packages-test.lock";
const LIMIT: Duration = Duration::from_secs(300);

fn run(cmd: Command) -> (bool, String) {
    let out = run_with_timeout(cmd, LIMIT).expect("bounded run");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn sh(script: &str) -> (bool, String) {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    run(c)
}

fn installed(pkg: &str) -> bool {
    sh(&format!("dpkg-query -W -f='${{Status}}' {pkg} 2>/dev/null")).1.contains("install ok installed")
}

/// Purges the packages when dropped, so a failed assertion leaves the
/// machine as it was.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let (ok, out) = sh(&format!("dpkg --purge {}", PACKAGES.join(" ")));
        if !ok {
            eprintln!("dpkg --purge failed:\n{out}");
        }
        let _ = fs::remove_file(MARKER);
    }
}

#[test]
fn packages_install_check_and_purge_cleanly() {
    require_root();
    for tool in ["cargo-deb", "help2man", "dpkg", "systemd-analyze", "lintian"] {
        assert!(have_command(tool), "{tool} is missing; .ci/run installs it");
    }
    // One run at a time on this machine: dpkg has one database.
    let lock = fs::File::create(LOCK).expect("lock file");
    let mut locked = false;
    for _ in 0..1200 {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this test owns until it returns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            locked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(locked, "{LOCK} held for 10 minutes by another run");

    if Path::new(MARKER).exists() {
        let _ = sh(&format!("dpkg --purge {}", PACKAGES.join(" ")));
    }
    for p in PACKAGES {
        assert!(!installed(p), "{p} is installed on this machine by someone else; this test would purge it");
    }

    let root = workspace_root();
    let mut c = Command::new(root.join("scripts/package"));
    c.arg("--no-build").current_dir(&root);
    let (ok, out) = run(c);
    assert!(ok, "scripts/package:\n{out}");
    let debs: Vec<String> = out.lines().filter(|l| l.ends_with(".deb")).map(str::to_string).collect();
    assert_eq!(debs.len(), 3, "three packages:\n{out}");
    for (deb, p) in debs.iter().zip(["gcb-broker_", "dpfd_", "libgcb_"]) {
        assert!(Path::new(deb).file_name().unwrap().to_str().unwrap().starts_with(p), "{debs:?}");
    }

    // Lintian-clean where it matters: no error or warning tags.
    let mut c = Command::new("lintian");
    c.args(["--fail-on", "error,warning"]).args(&debs);
    let (ok, out) = run(c);
    assert!(ok, "lintian:\n{out}");

    fs::write(MARKER, "scripts/package test\n").unwrap();
    let guard = Installed;
    let mut c = Command::new("dpkg");
    c.arg("-i").args(&debs).env("DEBIAN_FRONTEND", "noninteractive");
    let (ok, out) = run(c);
    assert!(ok, "dpkg -i:\n{out}");
    for p in PACKAGES {
        assert!(installed(p), "{p} not installed:\n{out}");
    }
    let files: Vec<String> = PACKAGES
        .iter()
        .flat_map(|p| sh(&format!("dpkg -L {p}")).1.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|f| Path::new(f).is_file())
        .collect();
    let lib = files.iter().find(|f| f.ends_with("/gcb/libgcb.so")).expect("libgcb.so installed");
    assert!(lib.starts_with("/usr/lib/") && lib.matches('/').count() == 5, "multiarch path: {lib}");
    for f in ["/usr/bin/gcb-broker", "/usr/bin/dpfd", "/usr/bin/gcb-run", "/etc/gcb-broker.toml.example", "/etc/dpfd.toml.example", "/usr/lib/sysctl.d/60-gcb-broker.conf"] {
        assert!(files.iter().any(|x| x == f), "{f} not installed: {files:?}");
    }
    // Enabled, but with examples only: a unit must not find a config, so
    // it does not start.
    for (unit, config) in [("gcb-broker", "/etc/gcb-broker.toml"), ("dpfd", "/etc/dpfd.toml")] {
        let wants = format!("/etc/systemd/system/multi-user.target.wants/{unit}.service");
        assert!(fs::symlink_metadata(&wants).is_ok(), "{unit} is not enabled ({wants}):\n{out}");
        assert!(!Path::new(config).exists(), "{config} exists: the package made it, or someone else did");
        let path = format!("/usr/lib/systemd/system/{unit}.service");
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("\nConditionPathExists={config}\n")), "{path}:\n{text}");
        assert!(text.contains(&format!("\nExecStart=/usr/bin/{unit} --config {config}\n")), "{path}:\n{text}");
        let (ok, out) = sh(&format!("systemd-analyze verify --man=no {path}"));
        assert!(ok && out.trim().is_empty(), "systemd-analyze verify {path}:\n{out}");
    }

    // The installed daemons accept the installed examples. dpfd's needs
    // what only its gateway knows (the private network; the mirror's
    // directory exists once its unit ran), given as an operator would.
    let (ok, out) = sh("/usr/bin/gcb-broker --config /etc/gcb-broker.toml.example --check-config");
    assert!(ok && out.contains("configuration ok"), "gcb-broker --check-config:\n{out}");
    let scratch = std::env::temp_dir().join(format!("gcb-packages-{}", std::process::id()));
    fs::create_dir_all(&scratch).unwrap();
    let (ok, out) = sh(&format!(
        "DPFD_PRIVATE_NET=192.0.2.0/24 DPFD_MIRROR={}/mirror /usr/bin/dpfd --config /etc/dpfd.toml.example --check-config",
        scratch.display()
    ));
    assert!(ok && out.contains("configuration ok"), "dpfd --check-config:\n{out}");

    // gcb-run from the package finds the packaged shim by itself: its
    // listener registers with the installed broker.
    let port = 20000 + std::process::id() % 10000;
    let listen = format!("127.0.0.1:{port}");
    let range = format!("{}-{}", port + 1, port + 50);
    let mut c = Command::new("/usr/bin/gcb-broker");
    c.args(["--listen", &listen, "--port-range", &range, "--log", "info"]);
    let broker = Proc::spawn(c).expect("installed gcb-broker");
    let mut ready = false;
    for _ in 0..200 {
        if broker.stderr_text().contains("started: command port") {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready, "the installed broker did not start:\n{}", broker.stderr_text());
    let mut c = Command::new("/usr/bin/gcb-run");
    c.args(["--broker", &listen, "--check"]).env_remove("GCB_LIB").current_dir("/");
    for v in ["GCB_INAGENT", "DPF_INAGENT", "GCB_LOG", "GCB_LOG_FILE", "LD_PRELOAD", "CARGO_TARGET_DIR"] {
        c.env_remove(v);
    }
    let (ok, out) = run(c);
    assert!(
        ok && out.contains(&format!("broker {listen} reachable; a listener here would be reached at 127.0.0.1:")),
        "gcb-run --check with the installed shim:\n{out}\n{}",
        broker.stderr_text()
    );
    broker.terminate();

    // dpfd's state as its unit leaves it (StateDirectory with a dynamic
    // user: the directory under /var/lib/private, a link to it), as if it
    // had run; systemd itself may not run here.
    let made_private = !Path::new("/var/lib/private").exists();
    let (ok, out) = sh(
        "mkdir -p -m 0700 /var/lib/private && mkdir -p /var/lib/private/dpfd && ln -sfn private/dpfd /var/lib/dpfd \
         && echo x >/var/lib/dpfd/mirror",
    );
    assert!(ok, "making dpfd's state: {out}");

    // Purge: nothing the packages installed is left, nor their state.
    drop(guard);
    for p in PACKAGES {
        assert!(!installed(p), "{p} still installed after dpkg --purge");
        let (_, status) = sh(&format!("dpkg-query -W -f='${{Status}}' {p} 2>&1"));
        assert!(!status.contains("config-files"), "{p} left conffiles: {status}");
    }
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    for gone in [
        "/var/lib/dpfd",
        "/var/lib/private/dpfd",
        "/etc/systemd/system/multi-user.target.wants/gcb-broker.service",
        "/etc/systemd/system/multi-user.target.wants/dpfd.service",
        "/var/lib/systemd/deb-systemd-helper-enabled/gcb-broker.service.dsh-also",
        "/var/lib/systemd/deb-systemd-helper-enabled/dpfd.service.dsh-also",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    if made_private {
        let _ = fs::remove_dir("/var/lib/private");
    }
    fs::remove_dir_all(&scratch).unwrap();
}
