//! testbed: helpers for tests that need real NAT, built on `scripts/netns`.
//!
//! A [`TestBed`] is one private copy of the topology of docs/testbed.md:
//! network namespaces with a unique prefix, a public switch, and two NAT gateways.
//! Every test makes its own, so tests can run in parallel threads, and dropping it
//! stops the processes started through it and removes the namespaces, also when the
//! test panics. The topology is read back from `scripts/netns list --json` rather than
//! duplicated here, so the script stays the single source of truth.
//!
//! Only std and libc are used, to keep this crate light and its behaviour obvious.

pub mod daemons;
pub mod json;
pub mod miniupnpd;
mod nat;
pub mod proc;
pub mod real;
mod topology;

pub use nat::{parse_counter_packets, NatKind, NatKinds};
pub use topology::{valid_prefix, HostInfo, Realm, Topology};

pub use proc::{run_with_timeout, wait_for, Proc, ServerProc};

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Every host name `scripts/netns exec` accepts; "sw" is the public switch.
pub const HOSTS: [&str; 8] = ["sw", "broker", "pub", "ga", "a1", "a2", "gb", "b1"];

/// Bound for `scripts/netns up`/`list`/`down`; they normally take well under a second.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// True when running as root (effective UID 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panic unless root. Tests that need namespaces call this first, so that a non-root
/// run fails loudly instead of passing without having tested anything.
pub fn require_root() {
    if !is_root() {
        panic!("these tests need root (network namespaces); run scripts/test as root");
    }
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cargo target directory: CARGO_TARGET_DIR if set (relative paths are taken
/// from the workspace root, as cargo does when run there), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Path of a release build artefact, e.g. `release_bin("dpfd")` or
/// `release_bin("libgcb.so")`. Does not check that it exists.
pub fn release_bin(name: &str) -> PathBuf {
    target_dir().join("release").join(name)
}

/// Path of `scripts/netns`.
pub fn netns_script() -> PathBuf {
    workspace_root().join("scripts").join("netns")
}

/// The real python3 binary. Resolved once, because `ip netns exec` would otherwise
/// go through wrapper shims (pyenv and the like) on every call, which is slow.
pub fn python3() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let mut c = Command::new("python3");
        c.args(["-c", "import sys; print(sys.executable)"])
            .stdin(Stdio::null());
        match run_with_timeout(c, Duration::from_secs(10)) {
            Ok(o) if o.status.success() => {
                let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
                if p.is_absolute() && p.exists() {
                    p
                } else {
                    PathBuf::from("python3")
                }
            }
            _ => PathBuf::from("python3"),
        }
    })
}

/// True if `name` is an executable file in a PATH directory.
pub fn have_command(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Run `scripts/netns ARGS...` with a time bound; Ok(stdout) on success.
fn netns_script_run(args: &[&str]) -> Result<String, String> {
    let mut c = Command::new("bash");
    c.arg(netns_script()).args(args).stdin(Stdio::null());
    let o = run_with_timeout(c, SCRIPT_TIMEOUT)?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(format!(
            "scripts/netns {}: {} ({})",
            args.join(" "),
            err.trim(),
            o.status
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// One NAT test bed. See the crate documentation.
pub struct TestBed {
    topo: Topology,
    /// Children started through `spawn*`, stopped before the namespaces go.
    children: Mutex<Vec<Arc<Mutex<Child>>>>,
    torn_down: bool,
}

impl TestBed {
    /// Create a test bed with a fresh random prefix.
    pub fn up() -> Result<TestBed, String> {
        Self::create(None, false, NatKinds::default())
    }

    /// Create a test bed whose gateways have the given NAT kinds
    /// (`scripts/netns up --nat-a A --nat-b B`, `--wan-hop` with
    /// [`NatKinds::wan_hop`], `--wan-delay-us` with [`NatKinds::wan_delay_us`]).
    pub fn up_with_nat(nat: NatKinds) -> Result<TestBed, String> {
        Self::create(None, false, nat)
    }

    /// Create a test bed with a second broker host, `broker2` (203.0.113.11,
    /// public), for broker failover (`scripts/netns up --broker2`).
    pub fn up_with_broker2() -> Result<TestBed, String> {
        Self::create(None, true, NatKinds::default())
    }

    /// Create a test bed with a chosen prefix (fails if it is in use).
    pub fn up_with_prefix(prefix: &str) -> Result<TestBed, String> {
        if !valid_prefix(prefix) {
            return Err(format!(
                "bad test-bed prefix {prefix:?} (must match ^[a-z0-9]{{1,10}}$)"
            ));
        }
        Self::create(Some(prefix), false, NatKinds::default())
    }

    fn create(prefix: Option<&str>, broker2: bool, nat: NatKinds) -> Result<TestBed, String> {
        if !is_root() {
            return Err(
                "these tests need root (network namespaces); run scripts/test as root".into(),
            );
        }
        let mut args = vec!["up"];
        if let Some(p) = prefix {
            args.extend(["--prefix", p]);
        }
        if broker2 {
            args.push("--broker2");
        }
        args.extend(["--nat-a", nat.a.as_str(), "--nat-b", nat.b.as_str()]);
        if nat.wan_hop {
            args.push("--wan-hop");
        }
        let delay = nat.wan_delay_us.to_string();
        if nat.wan_delay_us > 0 {
            args.extend(["--wan-delay-us", &delay]);
        }
        let out = netns_script_run(&args)?;
        let p = out.trim().to_string();
        if !valid_prefix(&p) {
            // We cannot know what to remove; say so rather than guess.
            return Err(format!("scripts/netns up printed {out:?}, not a prefix"));
        }
        let topo = netns_script_run(&["list", &p, "--json"])
            .and_then(|j| Topology::from_json(&j))
            .and_then(|t| match t.prefix == p {
                true => Ok(t),
                false => Err(format!(
                    "list --json reported prefix {:?}, expected {p:?}",
                    t.prefix
                )),
            })
            .and_then(|t| {
                let got = |g: &str| t.hosts.get(g).and_then(|h| h.nat);
                let hop = t.hosts.contains_key("wan");
                match (got("ga"), got("gb")) {
                    (Some(a), Some(b)) if NatKinds { a, b, wan_hop: hop, ..nat } == nat => Ok(t),
                    other => Err(format!("list --json reported NAT kinds {other:?}, asked for {nat:?}")),
                }
            });
        let topo = match topo {
            Ok(t) => t,
            Err(e) => {
                // The bed exists but is unusable: remove it before reporting.
                let _ = netns_script_run(&["down", &p]);
                return Err(e);
            }
        };
        Ok(TestBed {
            topo,
            children: Mutex::new(Vec::new()),
            torn_down: false,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.topo.prefix
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    fn host(&self, host: &str) -> &HostInfo {
        self.topo.hosts.get(host).unwrap_or_else(|| {
            panic!(
                "unknown test-bed host {host:?} (hosts: {})",
                HOSTS[1..].join(", ")
            )
        })
    }

    /// Namespace name of `host` (any of [`HOSTS`], including "sw"). Panics on an
    /// unknown host: that is a bug in the test.
    pub fn netns(&self, host: &str) -> String {
        if host == "sw" {
            return format!("{}-sw", self.topo.prefix);
        }
        self.host(host).netns.clone()
    }

    /// Primary address of `host`: the public one for gateways.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        self.host(host).ips[0]
    }

    /// All addresses of `host`, public first.
    pub fn ips(&self, host: &str) -> &[Ipv4Addr] {
        &self.host(host).ips
    }

    /// The private (realm-side) address of a gateway ("ga" or "gb").
    pub fn private_ip(&self, gateway: &str) -> Ipv4Addr {
        let h = self.host(gateway);
        assert!(h.gateway && h.ips.len() > 1, "{gateway:?} is not a gateway");
        h.ips[1]
    }

    /// The NAT kind of a gateway ("ga" or "gb") as the bed was made.
    pub fn nat_kind(&self, gateway: &str) -> NatKind {
        let h = self.host(gateway);
        assert!(h.gateway, "{gateway:?} is not a gateway");
        h.nat.unwrap_or_else(|| panic!("the listing of {gateway:?} had no NAT kind"))
    }

    /// Packets counted so far by the named nft counter `name` of a gateway's
    /// `table inet filter` (see [`NatKind`] for which kind has which counter).
    pub fn nft_counter(&self, gateway: &str, name: &str) -> Result<u64, String> {
        let out = self.run(gateway, &["nft", "list", "counter", "inet", "filter", name], SCRIPT_TIMEOUT)?;
        if !out.status.success() {
            return Err(format!(
                "nft list counter inet filter {name} on {gateway}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        parse_counter_packets(&String::from_utf8_lossy(&out.stdout))
    }

    /// `ip netns exec NETNS PROGRAM`, ready for more args. Stdin is /dev/null (set it
    /// again for a piped stdin); stdout and stderr are left to the caller.
    pub fn cmd(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns")
            .arg("exec")
            .arg(self.netns(host))
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// `cmd(host, args[0])` with the remaining args.
    fn cmd_args<S: AsRef<OsStr>>(&self, host: &str, args: &[S]) -> Command {
        assert!(!args.is_empty(), "empty command for host {host:?}");
        let mut c = self.cmd(host, &args[0]);
        c.args(&args[1..]);
        c
    }

    /// Run a program in `host` to completion, killed if it exceeds `timeout`.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        host: &str,
        args: &[S],
        timeout: Duration,
    ) -> Result<Output, String> {
        run_with_timeout(self.cmd_args(host, args), timeout)
    }

    /// Start a background program in `host`. The test bed stops it on drop (as does
    /// dropping the returned `Proc`).
    pub fn spawn<S: AsRef<OsStr>>(&self, host: &str, args: &[S]) -> Result<Proc, String> {
        self.spawn_cmd(self.cmd_args(host, args))
    }

    /// Start a prepared command (usually from [`TestBed::cmd`]) and record it.
    pub fn spawn_cmd(&self, cmd: Command) -> Result<Proc, String> {
        let p = Proc::spawn(cmd)?;
        proc_lock(&self.children).push(p.child_handle());
        Ok(p)
    }

    /// Start a server and wait until it prints a line starting with `ready_prefix`
    /// (e.g. "LISTEN tcp "). Returns the process and the rest of that line; later
    /// lines stay readable through the `Proc`.
    pub fn spawn_server<S: AsRef<OsStr>>(
        &self,
        host: &str,
        args: &[S],
        ready_prefix: &str,
        timeout: Duration,
    ) -> Result<(ServerProc, String), String> {
        let p = self.spawn(host, args)?;
        let rest = p.wait_line(ready_prefix, timeout)?;
        Ok((p, rest))
    }

    /// Stop recorded children, then remove the namespaces; reports failure instead of
    /// only logging it as `Drop` does.
    pub fn down(mut self) -> Result<(), String> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), String> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        // Our own children first, through their Child handles (safe against PID
        // reuse); `scripts/netns down` then catches anything they left behind.
        let children = std::mem::take(&mut *proc_lock(&self.children));
        for c in children {
            proc::terminate_child(&mut proc_lock(&c), proc::TERM_GRACE);
        }
        netns_script_run(&["down", &self.topo.prefix]).map(|_| ())
    }
}

fn proc_lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            // Drop cannot fail; leave a trace, and `scripts/netns down-all` cleans up.
            eprintln!("testbed: teardown of {} failed: {e}", self.topo.prefix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_workspace() {
        assert!(workspace_root().join("Cargo.toml").exists());
        assert!(netns_script().ends_with("scripts/netns"));
        let b = release_bin("dpfd");
        assert!(b.ends_with("release/dpfd"), "{}", b.display());
    }

    #[test]
    fn root_check_is_consistent() {
        // Cannot test both outcomes in one run; check that the two agree.
        let r = std::panic::catch_unwind(require_root);
        assert_eq!(r.is_ok(), is_root());
    }
}
