//! `accept` on a managed listener: the kernel's connections and the shim's
//! brokered ones, in the order they were established (paper 4.2.1).
//!
//! The connection queue is the kernel's own. Brokered connections are made by
//! the responder before the program accepts them (`serve`), parked, and enter
//! the queue as doorbells (`doorbell`), so `accept` is the real call, blocking
//! or not as the program's socket is, with its own signal and `SO_RCVTIMEO`
//! semantics. The real `accept4` gets the shim's address buffer, so a doorbell
//! is recognised by its peer address at no extra cost; its record is read, the
//! parked connection taken (from this process, or fetched from the one that
//! parked it, `park`) and put on the fd number the kernel returned with
//! `dup3`. A doorbell that names nothing this process can take (its
//! connection already gone, or a stranger's) is closed and the next
//! connection accepted, as the kernel skips a connection reset in the queue.

use std::mem::size_of;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::{c_int, sockaddr, socklen_t};

use super::doorbell::{self, Record, RECORD_LEN};
use crate::client::family;
use super::fdops;
use crate::client::options::Options;
use super::registry::{ListenerId, Names};
use crate::client::sys::{self, Sock};
use crate::fdtable::{self, Kind};
use crate::guard::{errno, set_errno};
use crate::real;

/// Doorbells are written right after their connect, usually before they are
/// accepted; a record still missing after this is a stranger's connection.
const RECORD_TIMEOUT: Duration = Duration::from_secs(1);
/// Doorbells skipped in one call before a non-blocking `accept` says EAGAIN.
const SKIPPED_PER_CALL: usize = 64;

/// `accept4` on a managed listener; `accept` is this with no flags.
///
/// # Safety
///
/// The C contract of `accept4`.
pub unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let Some(id) = super::state::with(|reg| reg.listener_id(fd)) else { return real::accept4(fd, addr, len, flags) };
    let saved = errno();
    let mut skipped = 0;
    loop {
        let mut sin: libc::sockaddr_storage = std::mem::zeroed();
        let mut sl = size_of::<libc::sockaddr_storage>() as socklen_t;
        let n = real::accept4(fd, (&mut sin as *mut libc::sockaddr_storage).cast(), &mut sl, flags);
        if n < 0 {
            return n;
        }
        // From here on the kernel has handed out `n`: what follows is
        // bookkeeping, whose panic must neither lose `n` nor accept again
        // (`hook`, rule 4).
        let peer = sys::from_sockaddr((&sin as *const libc::sockaddr_storage).cast(), sl);
        if !peer.is_some_and(|p| doorbell::is_doorbell_peer(*p.ip())) {
            accepted(id, n, None);
            copy_raw(&sin, sl, addr, len);
            set_errno(saved);
            return n;
        }
        // A panic while answering the doorbell closes it (its `Sock`) and
        // skips it, as a doorbell that named nothing.
        if let Some(peer) = crate::guard::bookkeep(|| answer_doorbell(id, fd, n, flags)).flatten() {
            accepted(id, n, Some(peer));
            family::copy_out(peer, family::of(fd), addr, len);
            set_errno(saved);
            return n;
        }
        skipped += 1;
        if skipped >= SKIPPED_PER_CALL && sys::is_nonblocking(fd) {
            set_errno(libc::EAGAIN);
            return -1;
        }
    }
}

/// Copies the kernel's peer address to the caller's buffer, truncating like the kernel.
unsafe fn copy_raw(sin: &libc::sockaddr_storage, sl: socklen_t, addr: *mut sockaddr, len: *mut socklen_t) {
    if addr.is_null() || len.is_null() {
        return;
    }
    let n = (*len).min(sl) as usize;
    std::ptr::copy_nonoverlapping((sin as *const libc::sockaddr_storage).cast::<u8>(), addr.cast::<u8>(), n);
    *len = sl;
}

/// [`named_accepted`], contained: the connection is the program's whatever
/// happens, and a fresh fd starts plain if its names could not be recorded.
fn accepted(id: ListenerId, fd: c_int, peer: Option<SocketAddrV4>) {
    if crate::guard::bookkeep(|| named_accepted(id, fd, peer)).is_none() {
        fdtable::set(fd, Kind::Plain);
    }
}

/// Records the names of a connection accepted from listener `id`: the proxy
/// address as its own (the address the peer dialed), and `peer` if brokered.
fn named_accepted(id: ListenerId, fd: c_int, peer: Option<SocketAddrV4>) {
    super::state::with(|reg| {
        let proxy = reg.listener(id).and_then(|l| l.proxy);
        if proxy.is_none() && peer.is_none() {
            fdops::unmark(reg, fd);
            return;
        }
        reg.set_names(fd, Names { local: proxy, peer });
        fdtable::set(fd, Kind::Named);
    });
}

/// Gives `to` the options of listener `id` (fd `listener`) that an accepted
/// socket inherits: only those the application set, unless another process
/// holds the listener and may have set others (`options`).
fn carry_options(id: ListenerId, listener: c_int, to: c_int) {
    let shared = super::state::with(|reg| reg.listener(id).map_or(true, |l| l.shared));
    let options = if shared { Options::read(listener) } else { Options::read_noted(listener) };
    options.apply(to);
}

/// A doorbell came out of the kernel's queue as fd `n`: read its record, take
/// the parked connection, and put it on `n`. The peer to report (the caller
/// records the names), or `None` with `n` closed.
fn answer_doorbell(id: ListenerId, listener: c_int, n: c_int, flags: c_int) -> Option<SocketAddrV4> {
    let bell = Sock::from_raw(n);
    let mut buf = [0u8; RECORD_LEN];
    let read = sys::recv_exact(n, &mut buf, Instant::now() + RECORD_TIMEOUT);
    let Some(record) = read.ok().and_then(|()| Record::decode(&buf)) else {
        log!(Warn, "a connection from the reserved range 127.71.0.0/16 to a managed listener was not a doorbell; closed");
        return None;
    };
    let conn = match super::park::take_local(&record) {
        Some(fd) => Sock::from_raw(fd),
        None if super::park::is_local(&record) => {
            log!(Debug, "the connection of a doorbell is gone (its peer left, or another accept took it)");
            return None;
        }
        None => match super::park::fetch(&record) {
            Ok(s) => s,
            Err(e) => {
                log!(Warn, "cannot take the connection parked by process {}: {}", record.park.pid, std::io::Error::from_raw_os_error(e));
                return None;
            }
        },
    };
    // The doorbell inherited the listener's options, as the application expects
    // of an accepted socket; so does the connection that takes its place.
    carry_options(id, listener, conn.raw());
    let nonblocking = flags & libc::SOCK_NONBLOCK != 0;
    if sys::set_fl(conn.raw(), if nonblocking { libc::O_NONBLOCK } else { 0 }).is_err() {
        return None;
    }
    let dup_flags = if flags & libc::SOCK_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
    // The doorbell ends with a reset when `dup3` closes it; the ringing side
    // lets go on either.
    sys::reset_on_close(n);
    // SAFETY: both fds are ours; `n` is replaced atomically.
    if unsafe { real::dup3(conn.raw(), n, dup_flags) } < 0 {
        log!(Warn, "a brokered connection from {} is lost: {}", record.peer, std::io::Error::last_os_error());
        return None;
    }
    let _ = bell.into_raw();
    Some(record.peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_raw_truncates() {
        let sin = sys::to_sockaddr("192.0.2.1:80".parse().unwrap());
        let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        unsafe { std::ptr::copy_nonoverlapping((&sin as *const libc::sockaddr_in).cast::<u8>(), (&mut st as *mut libc::sockaddr_storage).cast::<u8>(), 16) };
        let mut out = [0u8; 8];
        let mut len: socklen_t = 8;
        unsafe { copy_raw(&st, 16, out.as_mut_ptr().cast(), &mut len) };
        assert_eq!((len, out[2], out[3]), (16, 0, 80));
    }
}
