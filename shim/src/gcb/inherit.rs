//! Handing managed listeners and UDP sockets over `exec` (DESIGN.md,
//! "Management sockets").
//!
//! A new process image starts with no shim state, but it may inherit listening
//! sockets (Condor's master hands its command socket to the daemons it starts;
//! `echo-server --exec` does the same), or registered UDP sockets. Before
//! `execve`, the shim adds
//!
//! ```text
//! GCB_INHERITED=FD,MGMT_FD,PROXY|-,LOCAL,SECRET[,uUDP_TOKEN];...
//! ```
//!
//! to the new environment, one entry per managed fd that survives the exec
//! (not close-on-exec), and clears close-on-exec on their management sockets.
//! A UDP entry carries its registration's data-path token (`u` and hex), so
//! the new image keeps the data path and reads the relay header; older images
//! skip such entries. The new image's shim reads it at init ([`adopt`]),
//! checks each fd (a listening TCP socket, or a UDP socket, with that local
//! address), moves the management socket to a high close-on-exec number, and
//! heartbeats it. Inherited listeners are shared: closing them in either image
//! never unregisters them (see `fdops`). DPF hands its forwards over in the same
//! variable and table ([`publish_entries`], `dpf::inherit`).
//!
//! # Why a snapshot, and vfork
//!
//! `exec` may run in a `vfork` child, which borrows the parent's memory while a
//! parent thread may hold the registry lock. So the exec path takes no lock and
//! allocates nothing: the registry publishes its listeners into a fixed static
//! table under a sequence lock ([`publish`], called under the registry lock
//! whenever a listener, a dup of one, or a proxy address changes), and exec reads
//! it with bounded retries. The new environment array and string go into one
//! anonymous `mmap` (a system call, safe anywhere), unmapped if `exec` fails,
//! which also restores close-on-exec on the management sockets.
//!
//! Limits: at most [`SLOTS`] fds are handed over. A UDP socket's receiver list,
//! buffer and channel (`udp`) stay behind: a socket connected through a
//! channel reaches the new image still connected, but its peer's datagrams are
//! then reported from the channel's address. `execl*`,
//! `posix_spawn`, `system` and `popen` reach the kernel without passing the
//! shim's exec hooks (see `hooks/lifetime.rs`), so listeners are not handed over
//! through them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use libc::{c_char, c_int, c_void};

use super::mgmt;
use super::registry::{Listener, Mgmt, Registry};
use super::sys;
use crate::fdtable::{self, Kind};
use crate::real;

pub const VAR: &str = "GCB_INHERITED";
/// Listener fds that can be handed over in one exec.
pub const SLOTS: usize = 64;

/// One managed listener fd as handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub fd: c_int,
    pub mgmt: c_int,
    pub proxy: Option<SocketAddrV4>,
    pub local: SocketAddrV4,
    pub secret: u64,
    /// A registered UDP socket's data-path token; `None` for TCP (and DPF).
    pub udp_token: Option<u64>,
}

const EMPTY: Entry =
    Entry { fd: -1, mgmt: -1, proxy: None, local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), secret: 0, udp_token: None };

/// Words of one packed entry.
const WORDS: usize = 5;

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
            self.secret,
            self.udp_token.unwrap_or(0),
        ]
    }

    fn unpack(w: [u64; WORDS]) -> Entry {
        Entry {
            fd: w[0] as u32 as c_int,
            mgmt: (w[0] >> 32) as u32 as c_int,
            proxy: (w[1] & PRESENT != 0).then(|| bits_addr(w[1] & !PRESENT)),
            local: bits_addr(w[2] & !PRESENT),
            secret: w[3],
            udp_token: (w[2] & PRESENT != 0).then_some(w[4]),
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
static TABLE: [[AtomicU64; WORDS]; SLOTS] = [const { [const { AtomicU64::new(0) }; WORDS] }; SLOTS];

/// Publishes the registry's listener and UDP fds for exec. Call with the
/// registry locked (the lock is what makes this the only writer).
pub fn publish(reg: &Registry) {
    publish_entries(reg.listeners().flat_map(|(_, l)| {
        // A UDP registration always has a token once the broker answered;
        // before, there is no proxy to keep either.
        let udp_token = (l.proto == proto::Proto::Udp).then(|| l.udp_token.map_or(0, |t| t.0));
        l.fds.iter().map(move |&fd| Entry { fd, mgmt: l.mgmt.fd, proxy: l.proxy, local: l.local, secret: l.secret, udp_token })
    }));
}

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

/// A fixed buffer to format into without allocating; overflow is remembered.
struct Buf<const N: usize> {
    bytes: [u8; N],
    len: usize,
    overflow: bool,
}

impl<const N: usize> std::fmt::Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > N {
            self.overflow = true;
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Writes `VAR=entries` and a NUL into `buf`; false if it does not fit.
fn render<const N: usize>(entries: &[Entry], buf: &mut Buf<N>) -> bool {
    let _ = write!(buf, "{VAR}=");
    for (i, e) in entries.iter().enumerate() {
        let sep = if i == 0 { "" } else { ";" };
        let _ = write!(buf, "{sep}{},{},", e.fd, e.mgmt);
        let _ = match e.proxy {
            Some(p) => write!(buf, "{p}"),
            None => write!(buf, "-"),
        };
        let _ = write!(buf, ",{},{:x}", e.local, e.secret);
        if let Some(t) = e.udp_token {
            let _ = write!(buf, ",u{t:x}");
        }
    }
    let _ = buf.write_str("\0");
    !buf.overflow
}

/// Parses the variable's value; malformed entries are skipped.
pub fn parse(value: &str) -> Vec<Entry> {
    let entry = |s: &str| -> Option<Entry> {
        let mut f = s.split(',');
        let (fd, mgmt, proxy, local, secret) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        let udp_token = match f.next() {
            None => None,
            Some(t) => Some(u64::from_str_radix(t.strip_prefix('u')?, 16).ok()?),
        };
        if f.next().is_some() {
            return None;
        }
        let proxy = if proxy == "-" { None } else { Some(proxy.parse().ok()?) };
        let fd: c_int = fd.parse().ok()?;
        let mgmt: c_int = mgmt.parse().ok()?;
        (fd >= 0 && mgmt >= 0).then_some(())?;
        Some(Entry { fd, mgmt, proxy, local: local.parse().ok()?, secret: u64::from_str_radix(secret, 16).ok()?, udp_token })
    };
    value.split(';').filter_map(entry).collect()
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
    let mut text = Buf::<{ SLOTS * 100 }> { bytes: [0; SLOTS * 100], len: 0, overflow: false };
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
    for e in &keep[..k] {
        let fl = real::fcntl(e.mgmt, libc::F_GETFD, 0);
        if fl >= 0 && fl & libc::FD_CLOEXEC != 0 {
            real::fcntl(e.mgmt, libc::F_SETFD, (fl & !libc::FD_CLOEXEC) as libc::c_ulong);
            env.restore[env.nrestore] = e.mgmt;
            env.nrestore += 1;
        }
    }
    Some(env)
}

/// At init in a new image: takes over the listeners `GCB_INHERITED` names.
pub fn adopt() {
    let Some(value) = std::env::var_os(VAR) else { return };
    let entries = parse(&value.to_string_lossy());
    let mut groups: BTreeMap<c_int, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        groups.entry(e.mgmt).or_default().push(e);
    }
    for (mgmt_fd, entries) in groups {
        let Some((broker, mgmt_local)) = valid_mgmt(mgmt_fd) else { continue };
        let first = entries[0];
        let proto = if first.udp_token.is_some() { proto::Proto::Udp } else { proto::Proto::Tcp };
        let valid = |e: &&Entry| e.udp_token.is_some() == (proto == proto::Proto::Udp) && valid_socket(e, proto);
        let fds: Vec<c_int> = entries.iter().filter(valid).map(|e| e.fd).collect();
        if fds.is_empty() {
            // Ours, handed over for a listener that is gone: nobody else uses it.
            // SAFETY: a UDP socket no one in this image knows.
            unsafe { real::close(mgmt_fd) };
            continue;
        }
        let reg_local =
            if first.local.ip().is_unspecified() { SocketAddrV4::new(*mgmt_local.ip(), first.local.port()) } else { first.local };
        let listener = Listener {
            fds: fds.clone(),
            local: first.local,
            reg_local,
            proxy: first.proxy,
            secret: first.secret,
            shared: true,
            mgmt: Mgmt {
                fd: crate::internal::adopt(mgmt_fd),
                broker,
                local: mgmt_local,
                requester: mgmt::new_requester(proto::rudp::RetryPolicy::default()),
                pending: Default::default(),
                // Heartbeat at once: it also tells whether the broker still knows us.
                next_heartbeat: Instant::now(),
                heard: Instant::now(),
            },
            proto,
            udp_token: first.udp_token.filter(|&t| t != 0).map(proto::gcb::Token),
        };
        super::with(|reg| {
            for &fd in &fds {
                fdtable::set(fd, Kind::Managed);
            }
            let (id, _) = reg.add_listener(listener);
            if proto == proto::Proto::Udp {
                for &fd in &fds {
                    reg.udp.entry(fd).listener = Some(id);
                }
                super::udp::control::open_data_path(reg, id);
            }
            publish(reg);
        });
        log!(Debug, "inherited {proto} socket {fds:?} ({reg_local} as {:?}) with management fd {mgmt_fd}", first.proxy);
    }
}

fn valid_mgmt(fd: c_int) -> Option<(SocketAddrV4, SocketAddrV4)> {
    (sys::get_int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok()? == libc::SOCK_DGRAM).then_some(())?;
    Some((sys::peer_addr(fd).ok()?, sys::local_addr(fd).ok()?))
}

/// A listening TCP socket, or a UDP socket, bound to the entry's address.
fn valid_socket(e: &Entry, proto: proto::Proto) -> bool {
    let kind = match proto {
        proto::Proto::Tcp => {
            sys::get_int_opt(e.fd, libc::SOL_SOCKET, libc::SO_TYPE) == Ok(libc::SOCK_STREAM)
                && sys::get_int_opt(e.fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Ok(1)
        }
        proto::Proto::Udp => sys::get_int_opt(e.fd, libc::SOL_SOCKET, libc::SO_TYPE) == Ok(libc::SOCK_DGRAM),
    };
    kind && sys::local_addr(e.fd) == Ok(e.local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry { fd: 3, mgmt: 1000, proxy: Some("203.0.113.10:20001".parse().unwrap()), local: "0.0.0.0:7300".parse().unwrap(), secret: 0xabc, udp_token: None },
            Entry { fd: 4, mgmt: 1000, proxy: None, local: "192.0.2.10:7301".parse().unwrap(), secret: u64::MAX, udp_token: None },
            Entry { fd: 5, mgmt: 1001, proxy: Some("203.0.113.10:20002".parse().unwrap()), local: "0.0.0.0:7302".parse().unwrap(), secret: 1, udp_token: Some(0x5eed) },
        ]
    }

    #[test]
    fn render_parse_round_trip() {
        let mut buf = Buf::<512> { bytes: [0; 512], len: 0, overflow: false };
        assert!(render(&entries(), &mut buf));
        let text = std::str::from_utf8(&buf.bytes[..buf.len]).unwrap();
        assert_eq!(
            text,
            "GCB_INHERITED=3,1000,203.0.113.10:20001,0.0.0.0:7300,abc;4,1000,-,192.0.2.10:7301,ffffffffffffffff;5,1001,203.0.113.10:20002,0.0.0.0:7302,1,u5eed\0"
        );
        let value = text.trim_end_matches('\0').strip_prefix("GCB_INHERITED=").unwrap();
        assert_eq!(parse(value), entries());
        let mut small = Buf::<20> { bytes: [0; 20], len: 0, overflow: false };
        assert!(!render(&entries(), &mut small), "overflow is reported");
    }

    #[test]
    fn parse_skips_malformed_entries() {
        let v = "x,1,-,0.0.0.0:1,0;3,1000,-,0.0.0.0:7,1f;;5,6,-,0.0.0.0:1;7,8,-,0.0.0.0:1,0,9;-1,2,-,0.0.0.0:1,0;9,8,-,0.0.0.0:1,0,ux;10,8,-,0.0.0.0:1,0,u1,2";
        let got = parse(v);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].fd, got[0].secret, got[0].udp_token), (3, 0x1f, None));
        let udp = parse("9,8,-,0.0.0.0:1,0,uff");
        assert_eq!(udp[0].udp_token, Some(0xff), "a UDP entry");
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
