//! Parked connections: brokered connections that are established end to end
//! and wait, like connections in a kernel backlog, for the program to accept
//! them. The responder parks each one here (`serve`) and rings a doorbell for
//! it (`doorbell`); the `accept` that takes the doorbell takes the connection.
//!
//! The accepting process may be another one than the parking process: after
//! `fork` or `exec`, or when the listener was handed over `SCM_RIGHTS`, any
//! process holding the listener can accept the doorbell. So each process that
//! parks runs a *park socket*: an abstract `AF_UNIX` `SOCK_SEQPACKET` listener
//! named after its uid, pid and a random nonce (the doorbell record names it).
//! The accepting process connects there, sends the record's key, and receives
//! the connection's fd with `SCM_RIGHTS` ([`fetch`]). The accepting process
//! itself is usually the parking one, and then takes it from the table
//! ([`take_local`]) with no socket in between.
//!
//! Who may take a connection: only who knows its key (random per connection,
//! carried only in its doorbell) and runs as the same user (`SO_PEERCRED`,
//! checked on both ends): a stranger's doorbell names nothing a park would
//! hand out, and a stranger's park is not trusted.
//!
//! # Invariants
//!
//! 1. Every parked fd is internal (hidden from the program) and in the table
//!    under exactly one key until it is handed out or let go.
//! 2. A parked connection is let go when its doorbell ends without it having
//!    been taken (the listener closed, or the accepting side gave up).
//! 3. Parked connections of a listener count against its backlog
//!    (`Registry::room_for`).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::{c_int, c_void, sockaddr_un, socklen_t};
use proto::gcb::doorbell::{Park, Record};

use super::registry::parking::{Parked, Request, Server};
use super::registry::{ListenerId, Registry};
use crate::client::sys::{self, Errno, Sock};
use crate::fdtable::{self, Kind};
use crate::{process, real};

/// How long a fetch may take, and how long the park waits for a request's key.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests waiting for their key at once, at most.
const MAX_REQUESTS: usize = 64;

/// The abstract name of a park socket.
fn address(park: Park) -> (sockaddr_un, socklen_t) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let name = format!("gcb-park/{uid}/{}/{:08x}", park.pid, park.nonce);
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut sa: sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // sun_path[0] stays 0: the abstract namespace.
    for (dst, &b) in sa.sun_path[1..].iter_mut().zip(name.as_bytes()) {
        *dst = b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len().min(sa.sun_path.len() - 1);
    (sa, len as socklen_t)
}

/// Opens this process's park socket (non-blocking; nothing here waits).
fn open_server() -> Result<Server, Errno> {
    let park = Park { pid: process::owner() as u32, nonce: sys::random_u64() as u32 };
    let s = unix_socket()?;
    let (sa, len) = address(park);
    // SAFETY: a valid address of the given length.
    if unsafe { real::bind(s.raw(), (&sa as *const sockaddr_un).cast(), len) } < 0 {
        return Err(crate::guard::errno());
    }
    // SAFETY: our socket.
    if unsafe { real::listen(s.raw(), MAX_REQUESTS as c_int) } < 0 {
        return Err(crate::guard::errno());
    }
    Ok(Server { fd: crate::internal::adopt(s.into_raw()), park })
}

fn unix_socket() -> Result<Sock, Errno> {
    // SAFETY: plain socket creation.
    let fd = unsafe { real::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        Err(crate::guard::errno())
    } else {
        Ok(Sock::from_raw(fd))
    }
}

/// Whether the process at the other end of unix socket `fd` runs as this user.
fn same_user(fd: c_int) -> bool {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as socklen_t;
    // SAFETY: a ucred-sized buffer.
    let r = unsafe { real::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    // SAFETY: geteuid has no preconditions.
    r == 0 && cred.uid == unsafe { libc::geteuid() }
}

/// Parks connection `fd` (internal) for listener `id` and rings its doorbell
/// (under the registry lock; nothing here blocks); false if the connection
/// was lost instead (closed).
pub fn park(reg: &mut Registry, id: ListenerId, fd: c_int, peer: SocketAddrV4, proxy: SocketAddrV4, now: Instant) -> bool {
    let Some(target) = reg.listener(id).map(|l| l.doorbell_target()) else {
        crate::internal::release(fd);
        return false;
    };
    if !ready(reg) {
        log!(Warn, "a brokered connection from {peer} to {proxy} is lost: no park socket");
        crate::internal::release(fd);
        return false;
    }
    let park = reg.parked.server.as_ref().map(|s| s.park).expect("opened by ready");
    let key = sys::random_u64();
    reg.parked.by_key.insert(key, Parked { listener: id, fd, since: now });
    let record = Record { key, park, peer, proxy };
    if !super::doorbell::ring(reg, target, &record, now) {
        reg.parked.let_go(key);
        return false;
    }
    true
}

/// Whether this process can park: its park socket is open (opened now if
/// need be). For a caller that must know before it commits to parking (a
/// standby's answer, `standby::incoming`).
pub fn ready(reg: &mut Registry) -> bool {
    if reg.parked.server.is_some() {
        return true;
    }
    match open_server() {
        Ok(s) => {
            reg.parked.server = Some(s);
            true
        }
        Err(e) => {
            log!(Warn, "cannot open the park socket ({})", std::io::Error::from_raw_os_error(e));
            false
        }
    }
}

/// The connection `record` names, if this process parked it: now a plain fd
/// of the caller's.
pub fn take_local(record: &Record) -> Option<c_int> {
    super::state::with(|reg| {
        let ours = reg.parked.server.as_ref().is_some_and(|s| s.park == record.park);
        let p = if ours { reg.parked.by_key.remove(&record.key)? } else { return None };
        fdtable::set(p.fd, Kind::Plain);
        Some(p.fd)
    })
}

/// Whether `record`'s park is this process's.
pub fn is_local(record: &Record) -> bool {
    super::state::with(|reg| reg.parked.server.as_ref().is_some_and(|s| s.park == record.park))
}

/// Fetches the connection `record` names from the process that parked it
/// (the accepting thread waits, bounded by [`FETCH_TIMEOUT`]). Close-on-exec.
pub fn fetch(record: &Record) -> Result<Sock, Errno> {
    let deadline = Instant::now() + FETCH_TIMEOUT;
    let s = unix_socket()?;
    let (sa, len) = address(record.park);
    // SAFETY: a valid address of the given length.
    if unsafe { real::connect(s.raw(), (&sa as *const sockaddr_un).cast(), len) } < 0 {
        let e = crate::guard::errno();
        if e != libc::EAGAIN && e != libc::EINPROGRESS {
            return Err(e);
        }
        sys::wait_fd(s.raw(), libc::POLLOUT, deadline)?;
    }
    if !same_user(s.raw()) {
        log!(Warn, "the park socket of process {} belongs to another user; not trusted", record.park.pid);
        return Err(libc::EPERM);
    }
    sys::send_all(s.raw(), &record.key.to_ne_bytes(), deadline)?;
    sys::wait_fd(s.raw(), libc::POLLIN, deadline)?;
    match receive_fd(s.raw())? {
        Some(fd) => Ok(Sock::from_raw(fd)),
        None => Err(libc::ECONNABORTED),
    }
}

/// The fd sent with the one-byte answer on `fd`; `None` for a refusal.
fn receive_fd(fd: c_int) -> Result<Option<c_int>, Errno> {
    let mut status = [0u8; 1];
    let mut iov = libc::iovec { iov_base: status.as_mut_ptr().cast(), iov_len: 1 };
    // Room for one fd's control message, aligned as cmsg requires.
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; the buffers live across the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: as above.
    let n = unsafe { real::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(crate::guard::errno());
    }
    let mut got = None;
    // SAFETY: walking the control buffer the kernel filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let fds = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<c_int>();
                for i in 0..fds / std::mem::size_of::<c_int>() {
                    let f = std::ptr::read_unaligned(data.add(i));
                    if got.is_none() {
                        got = Some(f);
                    } else {
                        real::close(f);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    match (n, status[0], got) {
        (1, 1, Some(f)) => Ok(Some(f)),
        (_, _, Some(f)) => {
            // SAFETY: an fd we were just given.
            unsafe { real::close(f) };
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Sends the answer to a request: `fd` with status 1, or status 0 alone.
fn answer(to: c_int, fd: Option<c_int>) {
    let mut status = [u8::from(fd.is_some())];
    let mut iov = libc::iovec { iov_base: status.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; the buffers live across the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE of one int fits the 32-byte buffer.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<c_int>() as u32) } as usize;
        // SAFETY: the control buffer is large enough for one header and fd.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), fd);
        }
    }
    // SAFETY: as above; non-blocking, and a seqpacket socket takes one small message.
    unsafe { real::sendmsg(to, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
}

/// The responder's work on the park socket `fd` (new requests) or a request.
pub fn on_ready(reg: &mut Registry, fd: c_int, now: Instant) {
    if reg.parked.is_server(fd) {
        for _ in 0..MAX_REQUESTS {
            if reg.parked.requests.len() >= MAX_REQUESTS {
                break;
            }
            // SAFETY: no address wanted.
            let c = unsafe { real::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) };
            if c < 0 {
                break;
            }
            if !same_user(c) {
                // SAFETY: the connection we just accepted.
                unsafe { real::close(c) };
                continue;
            }
            reg.parked.requests.push(Request { fd: crate::internal::adopt(c), deadline: now + FETCH_TIMEOUT });
        }
        return;
    }
    let Some(i) = reg.parked.requests.iter().position(|r| r.fd == fd) else { return };
    let r = reg.parked.requests.swap_remove(i);
    let mut key = [0u8; 8];
    // SAFETY: an 8-byte buffer.
    let n = unsafe { real::recv(r.fd, key.as_mut_ptr().cast::<c_void>(), 8, libc::MSG_DONTWAIT) };
    if n == 8 {
        match reg.parked.by_key.remove(&u64::from_ne_bytes(key)) {
            Some(p) => {
                answer(r.fd, Some(p.fd));
                crate::internal::release(p.fd);
            }
            None => answer(r.fd, None),
        }
    }
    crate::internal::release(r.fd);
}

/// Drops requests that never sent their key.
pub fn on_timers(reg: &mut Registry, now: Instant) {
    let (late, keep): (Vec<Request>, Vec<Request>) = reg.parked.requests.drain(..).partition(|r| now >= r.deadline);
    reg.parked.requests = keep;
    for r in late {
        crate::internal::release(r.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection parked here is fetched through the park socket, as by
    /// another process, with its key only.
    #[test]
    fn fetched_over_the_park_socket_with_the_key_only() {
        let (a, b) = {
            let mut sv = [0; 2];
            assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) }, 0);
            (sv[0], sv[1])
        };
        crate::process::claim();
        let now = Instant::now();
        let key = super::super::state::with(|reg| {
            if reg.parked.server.is_none() {
                reg.parked.server = Some(open_server().unwrap());
            }
            let key = sys::random_u64();
            reg.parked.by_key.insert(key, Parked { listener: 999_999, fd: crate::internal::adopt(a), since: now });
            key
        });
        let park = super::super::state::with(|reg| reg.parked.server.as_ref().unwrap().park);
        let peer = "198.51.100.10:1".parse().unwrap();
        let record = |key| Record { key, park, peer, proxy: peer };
        // The responder's part, run by a thread of ours.
        let serve = std::thread::spawn(move || {
            for _ in 0..200 {
                let fds: Vec<c_int> = super::super::state::with(|reg| reg.parked.poll_fds().collect());
                for fd in fds {
                    super::super::state::with(|reg| on_ready(reg, fd, Instant::now()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        assert_eq!(fetch(&record(key ^ 1)).err(), Some(libc::ECONNABORTED), "a wrong key gets nothing");
        let got = fetch(&record(key)).unwrap();
        assert_eq!(unsafe { real::write(b, b"x".as_ptr().cast(), 1) }, 1);
        let mut buf = [0u8; 1];
        sys::recv_exact(got.raw(), &mut buf, Instant::now() + Duration::from_secs(2)).unwrap();
        assert_eq!(&buf, b"x", "the parked connection itself");
        assert!(super::super::state::with(|reg| !reg.parked.by_key.contains_key(&key)), "handed out once");
        serve.join().unwrap();
        unsafe { libc::close(b) };
    }
}
