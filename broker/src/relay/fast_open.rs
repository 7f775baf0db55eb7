//! TCP Fast Open on the rendezvous port (docs/hole-punching.md, "The
//! connector's rendezvous comes with its Connect"): a shim's hello rides in
//! its connection's SYN, so the broker has it half a round trip after the
//! shim sent it, not a round trip and a half. The kernel takes data in a SYN
//! only where `net.ipv4.tcp_fastopen` has the server bit (2) and the listener
//! asked for it here; without either, connections are made as always.

use std::os::fd::AsRawFd;

use mio::net::TcpListener;
use tracing::{debug, info};

/// Connections whose SYN carried data that may wait for `accept` at once.
const QUEUE: nix::libc::c_int = 256;

/// Asks the kernel to accept data in SYNs on `listener`; says in the log
/// whether the host lets it.
pub(crate) fn enable(listener: &TcpListener) {
    use nix::libc;
    let qlen = QUEUE;
    // SAFETY: setsockopt reads an int from a live local on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            (&qlen as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!(
            "rendezvous: no TCP Fast Open: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen").ok().and_then(|s| s.trim().parse::<u32>().ok()) {
        Some(bits) if bits & 2 != 0 => debug!("rendezvous: TCP Fast Open on"),
        _ => info!("rendezvous: TCP Fast Open is off on this host (sysctl net.ipv4.tcp_fastopen=3 turns it on): a punched connect takes one round trip more"),
    }
}
