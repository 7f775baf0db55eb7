//! Whether a socket lives on in another process: a standard gateway keeps a
//! mapping until it is deleted or its lease ends, and the delete must come
//! from the last process holding the socket (after `fork` or `exec` several
//! do, each renewing the mapping meanwhile). The kernel knows; two ways to ask:
//!
//! * [`alive`], after this process closed its last fd of the socket: does the
//!   socket still exist? The kernel's socket list for the protocol (netlink
//!   `sock_diag`, only listeners for TCP, so a busy server's connections are
//!   not walked; `/proc/net/tcp|udp[6]` if netlink is refused) is searched
//!   for the socket's inode. Absent means nobody holds it: delete.
//! * [`held_elsewhere`], while this process still holds it (at exit, before
//!   the kernel closes its fds): does another process have an fd on it? Every
//!   `/proc/PID/fd` this user may read is searched for `socket:[INODE]`,
//!   within a time bound. Done only at the exit of a process that shared a
//!   mapping, and only for those mappings.
//!
//! `None` from either means the kernel could not say: the mapping is then
//! left to its lease rather than deleted under another holder.

use std::time::{Duration, Instant};

use libc::c_int;
use proto::Proto;

use crate::client::sys::{self, Sock};
use crate::real;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u32 = 10;
/// Where `inet_diag_msg.idiag_inode` lies in a message after its header:
/// family, state, timer, retrans (4), the socket id (48), expires, rqueue,
/// wqueue, uid (16).
const INODE_AT: usize = 16 + 4 + 48 + 16;
/// The longest a search may take.
const BOUND: Duration = Duration::from_millis(250);

/// `inet_diag_req_v2` after its netlink header; the socket id is all zeros in a dump.
#[repr(C)]
struct Request {
    hdr: libc::nlmsghdr,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: [u8; 48],
}

/// Whether the socket with `inode` (`v6`: AF_INET6) still exists in this
/// network namespace. See the module docs.
pub fn alive(inode: u64, v6: bool, proto: Proto) -> Option<bool> {
    diag(inode, v6, proto).or_else(|| proc_net(inode, v6, proto))
}

fn diag(inode: u64, v6: bool, proto: Proto) -> Option<bool> {
    // SAFETY: plain socket creation; ours alone, closed by `Sock`.
    let fd = unsafe { real::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return None;
    }
    let sock = Sock::from_raw(fd);
    let (protocol, states) = match proto {
        Proto::Tcp => (libc::IPPROTO_TCP, 1u32 << TCP_LISTEN),
        Proto::Udp => (libc::IPPROTO_UDP, u32::MAX),
    };
    let req = Request {
        hdr: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        family: if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8,
        protocol: protocol as u8,
        ext: 0,
        pad: 0,
        states,
        id: [0; 48],
    };
    // SAFETY: a live request of the stated size; the kernel is the peer.
    let sent = unsafe { real::send(sock.raw(), (&req as *const Request).cast(), std::mem::size_of::<Request>(), 0) };
    if sent < 0 {
        return None;
    }
    let end = Instant::now() + BOUND;
    let mut buf = vec![0u8; 32 * 1024];
    let mut found = false;
    // A dump comes in parts until NLMSG_DONE; bounded in count and time.
    for _ in 0..4096 {
        sys::wait_fd(sock.raw(), libc::POLLIN, end).ok()?;
        // SAFETY: a live buffer of the given length.
        let n = unsafe { real::recv(sock.raw(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            match crate::guard::errno() {
                libc::EAGAIN | libc::EINTR => continue,
                _ => return None,
            }
        }
        match scan(&buf[..n as usize], inode as u32) {
            Part::More(hit) => found |= hit,
            Part::Done(hit) => return Some(found || hit),
            Part::Error => return None,
        }
    }
    None
}

enum Part {
    /// More parts follow; whether this one had the inode.
    More(bool),
    /// The last part.
    Done(bool),
    Error,
}

/// One datagram of a `sock_diag` dump: its messages' inodes.
fn scan(mut data: &[u8], inode: u32) -> Part {
    let mut hit = false;
    while data.len() >= 16 {
        let word = |at: usize| u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let len = word(0) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            return Part::Error;
        }
        match ty as c_int {
            libc::NLMSG_DONE => return Part::Done(hit),
            libc::NLMSG_ERROR => return Part::Error,
            _ if ty == SOCK_DIAG_BY_FAMILY && len >= INODE_AT + 4 => hit |= word(INODE_AT) == inode,
            _ => {}
        }
        // Messages are aligned to 4 bytes.
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    Part::More(hit)
}

/// [`alive`] from `/proc/net/{tcp,udp}[6]`: the inode is the tenth column.
fn proc_net(inode: u64, v6: bool, proto: Proto) -> Option<bool> {
    let file = match (proto, v6) {
        (Proto::Tcp, false) => "/proc/net/tcp",
        (Proto::Tcp, true) => "/proc/net/tcp6",
        (Proto::Udp, false) => "/proc/net/udp",
        (Proto::Udp, true) => "/proc/net/udp6",
    };
    let text = std::fs::read_to_string(file).ok()?;
    let inode = inode.to_string();
    Some(text.lines().skip(1).any(|l| l.split_whitespace().nth(9) == Some(inode.as_str())))
}

/// Whether a process other than this one has an fd on the socket with
/// `inode`. See the module docs.
pub fn held_elsewhere(inode: u64) -> Option<bool> {
    let end = Instant::now() + BOUND;
    let me = std::process::id().to_string();
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if pid == me {
            continue;
        }
        if Instant::now() >= end {
            return None;
        }
        // Another user's processes cannot be read, and hold none of ours.
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                return Some(true);
            }
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode_of(fd: c_int) -> u64 {
        super::super::wire::identity(fd).0
    }

    /// Whether `f` gives `want` within 2 s: another test's forked child may
    /// hold a copy of this test's socket for a moment.
    fn becomes(want: Option<bool>, f: impl Fn() -> Option<bool>) -> bool {
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            if f() == want {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A listener and a UDP socket are found while open and gone once closed,
    /// by netlink and by `/proc/net` alike.
    #[test]
    fn a_socket_is_alive_until_closed() {
        for (ty, proto) in [(libc::SOCK_STREAM, Proto::Tcp), (libc::SOCK_DGRAM, Proto::Udp)] {
            let s = sys::socket(ty, true, true).unwrap();
            sys::bind(s.raw(), "127.0.0.1:0".parse().unwrap()).unwrap();
            if proto == Proto::Tcp {
                assert_eq!(unsafe { real::listen(s.raw(), 1) }, 0);
            }
            let inode = inode_of(s.raw());
            assert_eq!(diag(inode, false, proto), Some(true), "{proto} by netlink");
            assert_eq!(proc_net(inode, false, proto), Some(true), "{proto} in /proc/net");
            assert_eq!(diag(inode, true, proto), Some(false), "{proto}: not an AF_INET6 socket");
            assert!(becomes(Some(false), || held_elsewhere(inode)), "{proto}: no other process holds it");
            drop(s);
            assert!(becomes(Some(false), || alive(inode, false, proto)), "{proto} closed");
            assert!(becomes(Some(false), || proc_net(inode, false, proto)), "{proto} closed, /proc/net");
        }
    }

    /// A forked child holding the socket is another holder.
    #[test]
    fn a_child_holding_the_socket_is_found() {
        let s = sys::socket(libc::SOCK_DGRAM, true, true).unwrap();
        sys::bind(s.raw(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let inode = inode_of(s.raw());
        let mut p = [0; 2];
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: the child only reads a pipe and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut b = 0u8;
            unsafe {
                libc::close(p[1]);
                libc::read(p[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        unsafe { libc::close(p[0]) };
        assert_eq!(held_elsewhere(inode), Some(true));
        drop(s);
        assert_eq!(alive(inode, false, Proto::Udp), Some(true), "the child still holds it");
        unsafe {
            libc::close(p[1]);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert!(becomes(Some(false), || alive(inode, false, Proto::Udp)));
    }
}
