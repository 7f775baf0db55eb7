//! Handing managed listeners and UDP sockets over `exec` (docs/design.md,
//! "Management sockets and the shim's own fds").
//!
//! A new process image starts with no shim state, but it may inherit listening
//! sockets (Condor's master hands its command socket to the daemons it starts;
//! `echo-server --exec` does the same), or registered UDP sockets. Before
//! `execve`, the shim adds
//!
//! ```text
//! GCB_INHERITED=FD,MGMT_FD,PROXY|-,LOCAL,BACKLOG[,uUDP_TOKEN[,cPEER/CHANNEL/TOKEN]][,nNONCE];...
//! ```
//!
//! to the new environment, one entry per managed fd that survives the exec
//! (not close-on-exec). A GCB entry names no management socket (-1): the new
//! image is a process of its own, and joins the registration from a socket of
//! its own; DPF hands its management socket over (dpfd probes it), and the
//! shim clears its close-on-exec for the exec.
//! A UDP entry carries its registration's data-path token (`u` and hex), so
//! the new image keeps the data path and reads the relay header; older images
//! skip such entries. A UDP socket connected through a broker channel
//! (`udp::channel`) also carries the channel (`c`, its peer, its address and
//! its token in hex; token 0 while it is being asked for again), so the new
//! image names the peer's datagrams after the peer, `getpeername` included,
//! and keeps the channel open; images without this field skip such entries.
//! A DPF forward that a standard gateway made carries its PCP mapping nonce
//! (`n` and 24 hex digits), so the new image renews the same mapping.
//! The new image's shim reads it at init (`gcb::adopt`, `dpf::adopt`),
//! checks each fd (a listening TCP socket, or a UDP socket, with that local
//! address), and has its responder join the registration. Inherited listeners
//! are shared (see `fdops`). DPF hands its forwards over in the same variable
//! and table ([`publish_entries`], `dpf::inherit`).
//!
//! # Why a snapshot, and vfork
//!
//! `exec` may run in a `vfork` child, which borrows the parent's memory while a
//! parent thread may hold the registry lock. So the exec path takes no lock and
//! allocates nothing: the registry publishes its listeners into a fixed static
//! table under a sequence lock (`gcb::inherit::publish`, called under the registry lock
//! whenever a listener, a dup of one, or a proxy address changes), and exec reads
//! it with bounded retries. The new environment array and string go into one
//! anonymous `mmap` (a system call, safe anywhere), unmapped if `exec` fails,
//! which also restores close-on-exec on the management sockets.
//!
//! Limits: at most [`SLOTS`] fds are handed over. A UDP socket's receiver list
//! and buffer (`udp`) stay behind. `execl*`,
//! `posix_spawn`, `system` and `popen` reach the kernel without passing the
//! shim's exec hooks (see `hooks/lifetime.rs`), so listeners are not handed over
//! through them.
//!
//! Here: the published table and the exec side, shared by both clients; the
//! entries and the variable's text in `text`. What GCB publishes is
//! `gcb::inherit`'s, what DPF publishes `dpf::inherit`'s; the new image's side
//! is `gcb::adopt` and `dpf::adopt`.

mod text;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

use libc::{c_char, c_int, c_void};

use crate::fdtable::{self, Kind};
use crate::real;
pub use text::{parse, ChannelEntry, Entry, VAR};
use text::{render, Buf};

/// Listener fds that can be handed over in one exec.
pub const SLOTS: usize = 64;

const EMPTY: Entry =
    Entry { fd: -1, mgmt: -1, proxy: None, local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), backlog: 0, udp_token: None, channel: None, nonce: None };

/// Words of one packed entry.
const WORDS: usize = 10;

fn addr_bits(a: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

fn bits_addr(b: u64) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from((b >> 16) as u32), b as u16)
}

const PRESENT: u64 = 1 << 48;

impl Entry {
    fn pack(&self) -> [u64; WORDS] {
        [
            u64::from(self.fd as u32) | (u64::from(self.mgmt as u32) << 32),
            self.proxy.map_or(0, |p| addr_bits(p) | PRESENT),
            addr_bits(self.local) | if self.udp_token.is_some() { PRESENT } else { 0 },
            self.backlog,
            self.udp_token.unwrap_or(0),
            self.channel.map_or(0, |c| addr_bits(c.peer) | PRESENT),
            self.channel.map_or(0, |c| addr_bits(c.addr)),
            self.channel.map_or(0, |c| c.token),
            self.nonce.map_or(0, |n| u64::from_ne_bytes(n[..8].try_into().expect("8 bytes"))),
            self.nonce.map_or(0, |n| u64::from(u32::from_ne_bytes(n[8..].try_into().expect("4 bytes"))) | PRESENT),
        ]
    }

    fn unpack(w: [u64; WORDS]) -> Entry {
        Entry {
            fd: w[0] as u32 as c_int,
            mgmt: (w[0] >> 32) as u32 as c_int,
            proxy: (w[1] & PRESENT != 0).then(|| bits_addr(w[1] & !PRESENT)),
            local: bits_addr(w[2] & !PRESENT),
            backlog: w[3],
            udp_token: (w[2] & PRESENT != 0).then_some(w[4]),
            channel: (w[5] & PRESENT != 0).then(|| ChannelEntry { peer: bits_addr(w[5] & !PRESENT), addr: bits_addr(w[6]), token: w[7] }),
            nonce: (w[9] & PRESENT != 0).then(|| {
                let mut n = [0u8; 12];
                n[..8].copy_from_slice(&w[8].to_ne_bytes());
                n[8..].copy_from_slice(&(w[9] as u32).to_ne_bytes());
                n
            }),
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
static TABLE: [[AtomicU64; WORDS]; SLOTS] = [const { [const { AtomicU64::new(0) }; WORDS] }; SLOTS];

/// Publishes `entries` as the fds to hand over at exec. One client writes the
/// table per process (GCB and DPF are exclusive modes), under its own lock.
/// DPF hands its forwarded sockets over in the same format (`dpf::inherit`).
pub fn publish_entries(entries: impl Iterator<Item = Entry>) {
    let s = SEQ.load(Ordering::Relaxed);
    SEQ.store(s.wrapping_add(1), Ordering::Relaxed);
    fence(Ordering::Release);
    let mut n = 0;
    for e in entries.take(SLOTS) {
        for (slot, w) in TABLE[n].iter().zip(e.pack()) {
            slot.store(w, Ordering::Relaxed);
        }
        n += 1;
    }
    LEN.store(n, Ordering::Relaxed);
    SEQ.store(s.wrapping_add(2), Ordering::Release);
}

/// Reads the published table; 0 entries if a writer kept it busy too long.
fn snapshot(out: &mut [Entry; SLOTS]) -> usize {
    for _ in 0..10_000 {
        let s1 = SEQ.load(Ordering::Acquire);
        if s1 & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let n = LEN.load(Ordering::Relaxed).min(SLOTS);
        for (o, slot) in out.iter_mut().zip(&TABLE).take(n) {
            *o = Entry::unpack(std::array::from_fn(|i| slot[i].load(Ordering::Relaxed)));
        }
        fence(Ordering::Acquire);
        if SEQ.load(Ordering::Relaxed) == s1 {
            return n;
        }
    }
    0
}

/// The environment and fd changes for one exec; undone if the exec fails.
pub struct ExecEnv {
    map: *mut c_void,
    size: usize,
    restore: [c_int; SLOTS],
    nrestore: usize,
}

/// Bound on the environment's length, against a corrupt `envp`.
const MAX_ENV: usize = 1 << 20;

impl ExecEnv {
    /// The new environment: the caller's, without an old `GCB_INHERITED`, plus ours.
    pub fn envp(&self) -> *const *const c_char {
        self.map.cast()
    }

    /// The exec failed: the process goes on as before.
    ///
    /// # Safety
    ///
    /// Not after a successful exec (there is nothing left to undo then).
    pub unsafe fn undo(self) {
        for &fd in &self.restore[..self.nrestore] {
            let fl = real::fcntl(fd, libc::F_GETFD, 0);
            if fl >= 0 {
                real::fcntl(fd, libc::F_SETFD, (fl | libc::FD_CLOEXEC) as libc::c_ulong);
            }
        }
        libc::munmap(self.map, self.size);
    }
}

unsafe fn starts_with(p: *const c_char, prefix: &[u8]) -> bool {
    prefix.iter().enumerate().all(|(i, &b)| *p.add(i) as u8 == b)
}

/// Prepares an exec with environment `envp` (or `environ` for the exec calls
/// without one). `None`: nothing to hand over, exec as asked. Lock-free and
/// allocation-free (module docs).
///
/// # Safety
///
/// `envp` is null or a NULL-terminated array of C strings.
pub unsafe fn prepare(envp: *const *const c_char) -> Option<ExecEnv> {
    if LEN.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut all = [EMPTY; SLOTS];
    let n = snapshot(&mut all);
    let mut keep = [EMPTY; SLOTS];
    let mut k = 0;
    for e in &all[..n] {
        let fl = real::fcntl(e.fd, libc::F_GETFD, 0);
        // Managed: a GCB listener or DPF TCP listener; Named: a DPF UDP socket.
        if fl >= 0 && fl & libc::FD_CLOEXEC == 0 && matches!(fdtable::kind(e.fd), Kind::Managed | Kind::Named) {
            keep[k] = *e;
            k += 1;
        }
    }
    if k == 0 {
        return None;
    }
    let mut text = Buf::<{ SLOTS * 160 }> { bytes: [0; SLOTS * 160], len: 0, overflow: false };
    if !render(&keep[..k], &mut text) {
        return None;
    }
    let mut count = 0;
    while !envp.is_null() && count < MAX_ENV && !(*envp.add(count)).is_null() {
        count += 1;
    }
    let ptrs = (count + 2) * std::mem::size_of::<*const c_char>();
    let size = ptrs + text.len;
    let map = libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
    if map == libc::MAP_FAILED {
        return None;
    }
    let arr = map.cast::<*const c_char>();
    let string = map.cast::<u8>().add(ptrs);
    std::ptr::copy_nonoverlapping(text.bytes.as_ptr(), string, text.len);
    let prefix = b"GCB_INHERITED=";
    let mut j = 0;
    for i in 0..count {
        let p = *envp.add(i);
        if !starts_with(p, prefix) {
            *arr.add(j) = p;
            j += 1;
        }
    }
    *arr.add(j) = string.cast();
    *arr.add(j + 1) = std::ptr::null();
    let mut env = ExecEnv { map, size, restore: [-1; SLOTS], nrestore: 0 };
    for e in keep[..k].iter().filter(|e| e.mgmt >= 0) {
        let fl = real::fcntl(e.mgmt, libc::F_GETFD, 0);
        if fl >= 0 && fl & libc::FD_CLOEXEC != 0 {
            real::fcntl(e.mgmt, libc::F_SETFD, (fl & !libc::FD_CLOEXEC) as libc::c_ulong);
            env.restore[env.nrestore] = e.mgmt;
            env.nrestore += 1;
        }
    }
    Some(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn entries() -> Vec<Entry> {
        vec![
            Entry { fd: 3, mgmt: 1000, proxy: Some("203.0.113.10:20001".parse().unwrap()), local: "0.0.0.0:7300".parse().unwrap(), backlog: 0xabc, udp_token: None, channel: None, nonce: None },
            Entry { fd: 4, mgmt: 1000, proxy: None, local: "192.0.2.10:7301".parse().unwrap(), backlog: u64::MAX, udp_token: None, channel: None, nonce: Some(*b"\x00nonce-nonce") },
            Entry { fd: 5, mgmt: 1001, proxy: Some("203.0.113.10:20002".parse().unwrap()), local: "0.0.0.0:7302".parse().unwrap(), backlog: 1, udp_token: Some(0x5eed), channel: None, nonce: None },
            Entry {
                fd: 6,
                mgmt: 1001,
                proxy: Some("203.0.113.10:20002".parse().unwrap()),
                local: "0.0.0.0:7302".parse().unwrap(),
                backlog: 1,
                udp_token: Some(0x5eed),
                channel: Some(ChannelEntry { peer: "203.0.113.20:5000".parse().unwrap(), addr: "203.0.113.10:20003".parse().unwrap(), token: 0xc4 }),
                nonce: None,
            },
        ]
    }

    #[test]
    fn pack_unpack_and_snapshot() {
        for e in entries() {
            assert_eq!(Entry::unpack(e.pack()), e);
        }
        let mut out = [EMPTY; SLOTS];
        let _ = snapshot(&mut out); // whatever other tests published; must not hang
    }
}
