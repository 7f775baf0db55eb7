//! OpenSSH across the NAT (issue 7): Debian's `sshd`, unmodified, on a1 under
//! `scripts/gcb-run`, on a high port with its own configuration, host key and
//! authorized key (made for the run in a scratch directory; nothing of the
//! system's ssh setup is used). `ssh` runs a command that hashes 1 MiB sent on
//! its stdin and reports where it ran; the output must name a1's address and
//! the payload's hash. sshd re-executes itself for every connection, handing the
//! accepted socket to the new image, so this also covers a brokered connection
//! crossing `exec`.
//!
//! GCB mode: ssh from b1 with the shim (relayed, realm B to realm A), and from
//! pub without and with it. DPF mode: from pub.
//!
//! sshd runs as root, as the test does: an unprivileged sshd can only log in
//! its own user, and the test bed has no other account with a shell. It needs
//! /run/sshd, its privilege-separation directory, which is created if missing.
//!
//! Needs root and `cargo build --release` (libgcb.so, gcb-broker, dpfd).

use std::process::Command;
use std::time::Duration;

use testbed::real::{host_port, payload, Mode, RealBed};

fn keygen(path: &std::path::Path) {
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).output().expect("ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

fn ssh_runs_a_command(mode: Mode) {
    let r = RealBed::up(mode);
    let (host_key, client_key) = (r.file("host_key"), r.file("client_key"));
    keygen(&host_key);
    keygen(&client_key);
    let authorized = r.file("authorized_keys");
    std::fs::copy(r.file("client_key.pub"), &authorized).expect("authorized_keys");
    let config = r.file("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port 2222\nListenAddress 0.0.0.0\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nLogLevel VERBOSE\n",
            host_key.display(),
            authorized.display(),
            r.file("sshd.pid").display()
        ),
    )
    .expect("sshd_config");
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let sshd = r.spawn("a1", true, &["/usr/sbin/sshd", "-D", "-e", "-f", config.to_str().unwrap()]);
    let public = r.registered(&sshd, "tcp", "192.0.2.10:2222");
    let (ip, port) = host_port(&public);
    let data = r.file("payload.bin");
    let want = payload(&data, 1 << 20, 21);
    let key = client_key.to_str().unwrap();
    for &(host, shim) in r.client_hosts() {
        let args = [
            "ssh", "-F", "/dev/null", "-i", key, "-p", port, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
            &format!("root@{ip}"), "ip -4 -o addr show dev eth0; sha256sum",
        ];
        let out = r.run_ok(host, shim, &args, Some(&data), Duration::from_secs(60), &sshd);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("inet 192.0.2.10/"), "{host} (shim: {shim}): the command did not run on a1:\n{text}");
        assert!(text.contains(&format!("{want}  -")), "{host} (shim: {shim}): sshd's side hashed other bytes:\n{text}");
    }
    drop(sshd);
    r.down();
}

#[test]
fn ssh_runs_a_command_gcb() {
    ssh_runs_a_command(Mode::Gcb);
}

#[test]
fn ssh_runs_a_command_dpf() {
    ssh_runs_a_command(Mode::Dpf);
}
