//! The listener side: `listen` registers with the broker, `accept` hands out the
//! kernel's connections and the shim's brokered ones, in establishment order.
//!
//! # listen
//!
//! On a GCB-mode TCP socket bound to anything but loopback, after the real
//! `listen` (which also picks the port of an unbound socket), and on a UDP
//! socket at `bind` (`udp`): open a management socket to this process's broker
//! (`brokers`: the next one if it is silent), `Register` in a bounded blocking
//! exchange, and mark the fd managed. `getsockname` then reports the proxy
//! address. An unreachable or refusing broker costs one warning; `listen` still
//! succeeds and the AEH retries every heartbeat interval.
//!
//! An AF_INET6 TCP socket counts when it reaches IPv4: bound to `::` with
//! `IPV6_V6ONLY` off, or to a v4-mapped address. Its names are then v4-mapped
//! (see `family`), and the connections it hands out are AF_INET6 sockets too.
//! Pure IPv6 listeners are left alone.
//!
//! # accept
//!
//! The connection queue of paper 4.2.1 is the kernel's own: brokered connections
//! enter it as doorbells (see `doorbell`). `accept` waits in the AEH; the real
//! `accept4` gets the shim's own address buffer, so a doorbell is recognised by
//! its peer address at no extra cost, read, dialed and put on the kernel's fd
//! number with `dup3`. When the AEH receives a command for this very listener
//! while the kernel has nothing queued, the connection is dialed at once and
//! returned from this call. A non-blocking `accept` runs one AEH pass without
//! waiting, and never blocks beyond the bounded dial of a connection it hands out.

use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use libc::{c_int, sockaddr, socklen_t};
use proto::Proto;

use super::aeh::{self, Waited};
use super::doorbell::{self, Job, Record, RECORD_LEN};
use super::mgmt::{self, NoAnswer};
use super::options::Options;
use super::registry::{ListenerId, Mgmt, Names};
use super::sys::{self, Sock};
use super::{dial, family, fdops};
use crate::fdtable::{self, Kind};
use crate::hook::{errno, set_errno};
use crate::real;

/// Doorbells are written right after their connect; a record still missing after
/// a few of TCP's retransmissions means a stray connection.
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// Doorbells whose dial fails in one non-blocking `accept` before it gives up.
const NONBLOCKING_ROUNDS: usize = 64;

/// `listen`, for a watched socket.
///
/// # Safety
///
/// The C contract of `listen`.
pub unsafe fn listen(fd: c_int, backlog: c_int) -> c_int {
    let r = real::listen(fd, backlog);
    if r != 0 {
        return r;
    }
    let registered = {
        let _errno = crate::hook::ErrnoGuard::new();
        register(fd, Proto::Tcp, Kind::Watched)
    };
    match registered {
        Ok(_) => 0,
        Err(e) => fail(e),
    }
}

/// Registers the bound socket `fd` (TCP at `listen`, UDP at `bind`), whose fd
/// kind is `watched` now; it becomes `Managed`, or `Plain` if it is bound to
/// loopback or is pure IPv6. Returns whether the fd is now managed. Fails only
/// when the process has no descriptor (or memory) for the management socket:
/// the caller reports that errno, the socket stays unregistered, and a later
/// `listen` registers it.
pub fn register(fd: c_int, proto: Proto, watched: Kind) -> Result<bool, sys::Errno> {
    // Pure IPv6 (v6-only, or a real IPv6 address) is not ours to register.
    let Ok(local) = sys::local_addr(fd) else {
        fdtable::replace(fd, watched, Kind::Plain);
        return Ok(false);
    };
    if !registrable(*local.ip()) {
        fdtable::replace(fd, watched, Kind::Plain);
        return Ok(false);
    }
    let Some(registered) = register_somewhere(local, proto)? else {
        return Ok(false);
    };
    Ok(adopt(fd, proto, watched, local, registered))
}

/// Records `fd` (bound to `local`, of kind `watched`) as the listener
/// `registered`, and marks it `Managed`. False if the application closed the
/// fd meanwhile: the registration is then undone.
pub(super) fn adopt(fd: c_int, proto: Proto, watched: Kind, local: SocketAddrV4, registered: Registered) -> bool {
    let Registered { sock, broker, mgmt_local, reg_local, proxy, udp_token } = registered;
    let interval = crate::config::get().heartbeat;
    let mgmt_fd = crate::internal::adopt(sock.into_raw());
    let listener = super::registry::Listener {
        fds: vec![fd],
        local,
        reg_local,
        proxy,
        secret: sys::random_u64(),
        shared: false,
        mgmt: Mgmt {
            fd: mgmt_fd,
            broker,
            local: mgmt_local,
            requester: mgmt::new_requester(proto::rudp::RetryPolicy::default()),
            pending: Default::default(),
            next_heartbeat: Instant::now() + interval,
            heard: Instant::now(),
        },
        proto,
        udp_token,
    };
    let adopted = super::with(|reg| {
        // The application may have closed the fd while we were registering.
        if !fdtable::replace(fd, watched, Kind::Managed) && fdtable::kind(fd) != Kind::Managed {
            return Err(Box::new(listener));
        }
        let (id, _) = reg.add_listener(listener);
        if proto == Proto::Udp {
            reg.udp.entry(fd).listener = Some(id);
            super::udp::control::open_data_path(reg, id);
        }
        super::inherit::publish(reg);
        Ok(())
    });
    match adopted {
        Ok(()) => true,
        Err(mut l) => {
            if l.proxy.is_some() {
                mgmt::send_unregister(&mut l);
            }
            crate::internal::release(l.mgmt.fd);
            false
        }
    }
}

/// Where a new listener ended up: its management socket, pointed at `broker`.
pub(super) struct Registered {
    pub sock: Sock,
    pub broker: SocketAddrV4,
    pub mgmt_local: SocketAddrV4,
    pub reg_local: SocketAddrV4,
    /// `None` if no broker registered it; the AEH retries every heartbeat and
    /// fails over from a silent broker (`brokers`).
    pub proxy: Option<SocketAddrV4>,
    /// UDP only: the token of the Dummies that keep the data path open.
    pub udp_token: Option<proto::gcb::Token>,
}

/// Registers `local` with the first of this process's brokers that answers, in
/// `brokers`' order. A broker that answers, even with a refusal, is kept; one
/// that is silent or refuses the datagram is marked dead and the next tried. With
/// none answering, the listener stays with the preferred broker, unregistered.
fn register_somewhere(local: SocketAddrV4, proto: Proto) -> Result<Option<Registered>, sys::Errno> {
    let candidates = super::with(|reg| super::brokers::set(reg).candidates(Instant::now()));
    let mut fallback = None;
    let (mut looked_up, mut desired) = (false, None);
    for broker in candidates {
        let (sock, mgmt_local) = match mgmt::open(broker) {
            Ok(s) => s,
            Err(e) => {
                log!(Warn, "cannot reach the broker {broker} to register {proto} {local}: {}", std::io::Error::from_raw_os_error(e));
                if super::connector::out_of_resources(e) {
                    return Err(e);
                }
                continue;
            }
        };
        let reg_local = if local.ip().is_unspecified() { SocketAddrV4::new(*mgmt_local.ip(), local.port()) } else { local };
        // A re-listen on the same local address keeps the address clients know,
        // and TCP and UDP on one local port share one proxy port number (looked
        // up once: a later broker in the loop is asked for the same port).
        if !looked_up {
            looked_up = true;
            desired = super::with(|reg| reg.released.take(reg_local).or_else(|| reg.twin_proxy(proto, reg_local))).map(|p| p.port());
        }
        let msg = mgmt::register_message(proto, reg_local, mgmt_local, desired);
        let answered = match mgmt::exchange(sock.raw(), broker, proto::rudp::RetryPolicy::default(), &msg) {
            Ok(proto::gcb::Message::RegisterOk { proxy, udp_token, .. }) => {
                log!(Info, "registered {proto} {reg_local} as {proxy}");
                Some(Some((proxy, udp_token)))
            }
            Ok(proto::gcb::Message::Error { code, detail }) => {
                log!(Warn, "the broker {broker} refused to register {proto} {reg_local}: {code:?} {detail}; retrying every heartbeat");
                Some(None)
            }
            Ok(_) | Err(NoAnswer::NotProtocol) => {
                log!(Warn, "{broker} does not answer as a GCB broker; {proto} {reg_local} stays unregistered, retrying every heartbeat");
                None
            }
            Err(e) => {
                let why = match e {
                    NoAnswer::Refused => "connection refused".to_string(),
                    NoAnswer::Timeout => "no answer".to_string(),
                    NoAnswer::NotProtocol => "not a GCB broker".to_string(),
                    NoAnswer::Io(e) => std::io::Error::from_raw_os_error(e).to_string(),
                };
                log!(Warn, "the broker {broker} is unreachable ({why}); {proto} {reg_local} stays unregistered, retrying every heartbeat");
                None
            }
        };
        let now = Instant::now();
        let interval = crate::config::get().heartbeat;
        super::with(|reg| {
            let set = super::brokers::set(reg);
            if answered.is_some() { set.mark_alive(broker) } else { set.mark_dead(broker, now, interval) }
        });
        match answered {
            Some(got) => {
                let (proxy, udp_token) = got.map_or((None, None), |(p, t)| (Some(p), t));
                return Ok(Some(Registered { sock, broker, mgmt_local, reg_local, proxy, udp_token }));
            }
            None if fallback.is_none() => {
                fallback = Some(Registered { sock, broker, mgmt_local, reg_local, proxy: None, udp_token: None });
            }
            None => {}
        }
    }
    Ok(fallback)
}

/// `accept4` on a managed listener; `accept` is this with no flags.
///
/// # Safety
///
/// The C contract of `accept4`.
pub unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let Some(id) = super::with(|reg| reg.listener_id(fd)) else { return real::accept4(fd, addr, len, flags) };
    let nonblocking = sys::is_nonblocking(fd);
    // A blocking accept bounded by SO_RCVTIMEO fails with EAGAIN at the bound, as
    // the kernel's would.
    let bound = if nonblocking { None } else { sys::receive_timeout(fd).map(|t| Instant::now() + t) };
    let saved = errno();
    let mut rounds = 0;
    loop {
        rounds += 1;
        if nonblocking && rounds > NONBLOCKING_ROUNDS {
            return fail(libc::EAGAIN);
        }
        let mut p = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }];
        let deadline = if nonblocking { Some(Instant::now()) } else { bound };
        match aeh::wait(&mut p, deadline, std::ptr::null(), Some(id)) {
            Waited::Failed(libc::EINTR) if aeh::signal_restarts() => continue,
            Waited::Failed(libc::EINTR) => return fail(libc::EINTR),
            Waited::Ready(0) if !nonblocking => return fail(libc::EAGAIN),
            Waited::Failed(_) | Waited::Ready(_) => {}
            Waited::Job(job) => match dial_now(fd, &job, flags, addr, len) {
                Some(n) => return ok(n, saved),
                None => continue,
            },
        }
        let mut sin: libc::sockaddr_storage = std::mem::zeroed();
        let mut sl = size_of::<libc::sockaddr_storage>() as socklen_t;
        let n = real::accept4(fd, (&mut sin as *mut libc::sockaddr_storage).cast(), &mut sl, flags);
        if n < 0 {
            let e = errno();
            if !nonblocking && e == libc::EAGAIN {
                continue; // another process took the connection the poll saw
            }
            return fail(e);
        }
        let peer = sys::from_sockaddr((&sin as *const libc::sockaddr_storage).cast(), sl);
        if peer.is_some_and(|p| doorbell::is_doorbell_peer(*p.ip())) {
            match answer_doorbell(id, fd, n, flags) {
                Some((peer, fam)) => {
                    family::copy_out(peer, fam, addr, len);
                    return ok(n, saved);
                }
                None => continue,
            }
        }
        named_accepted(id, n, None);
        copy_raw(&sin, sl, addr, len);
        return ok(n, saved);
    }
}

fn fail(e: c_int) -> c_int {
    set_errno(e);
    -1
}

/// Success leaves `errno` as the application had it, whatever the shim's own
/// calls on the way did to it.
fn ok(fd: c_int, saved: c_int) -> c_int {
    set_errno(saved);
    fd
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

/// Records the names of a connection accepted from listener `id`: the proxy
/// address as its own (the address the peer dialed), and `peer` if brokered.
fn named_accepted(id: ListenerId, fd: c_int, peer: Option<SocketAddrV4>) {
    super::with(|reg| {
        let proxy = reg.listener(id).and_then(|l| l.proxy);
        if proxy.is_none() && peer.is_none() {
            fdops::unmark(reg, fd);
            return;
        }
        reg.set_names(fd, Names { local: proxy, peer });
        fdtable::set(fd, Kind::Named);
    });
}

/// Dials `job` inside `accept` and returns the new fd, set up as `accept4` would
/// have it; `None` if the dial failed (the caller waits for the next connection).
unsafe fn dial_now(listener: c_int, job: &Job, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> Option<c_int> {
    let cloexec = flags & libc::SOCK_CLOEXEC != 0;
    let fam = family::of(listener);
    let (sock, peer) = match dial::for_listener(&job.record, fam, cloexec, flags & libc::SOCK_NONBLOCK != 0) {
        Ok(s) => s,
        Err(e) => {
            dial_failed(&job.record, e);
            return None;
        }
    };
    carry_options(job.listener, listener, sock.raw());
    let fd = sock.into_raw();
    named_accepted(job.listener, fd, Some(peer));
    family::copy_out(peer, fam, addr, len);
    Some(fd)
}

/// Gives `to` the options of listener `id` (fd `listener`) that an accepted
/// socket inherits: only those the application set, unless another process
/// holds the listener and may have set others (`options`).
fn carry_options(id: ListenerId, listener: c_int, to: c_int) {
    let shared = super::with(|reg| reg.listener(id).map_or(true, |l| l.shared));
    let options = if shared { Options::read(listener) } else { Options::read_noted(listener) };
    options.apply(to);
}

fn dial_failed(record: &Record, e: sys::Errno) {
    let e = std::io::Error::from_raw_os_error(e);
    log!(Warn, "brokered connection from {} to {} failed: {e}", record.peer, record.proxy);
}

/// A doorbell came out of the kernel's queue as fd `n`: read its record, dial, and
/// put the dialed connection on `n`. Returns the peer to report and the
/// listener's family, or `None` (with `n` closed) for a stray connection or a
/// failed dial.
fn answer_doorbell(id: ListenerId, listener: c_int, n: c_int, flags: c_int) -> Option<(SocketAddrV4, family::Family)> {
    let bell = Sock::from_raw(n);
    let mut buf = [0u8; RECORD_LEN];
    // The doorbell's own flags do not matter: its fd is replaced or closed.
    let read = sys::recv_exact(n, &mut buf, Instant::now() + RECORD_TIMEOUT);
    let secret = super::with(|reg| reg.listener(id).map(|l| l.secret));
    let record = match (read, Record::decode(&buf)) {
        (Ok(()), Some(r)) if Some(r.secret) == secret => r,
        _ => {
            log!(Warn, "a connection from the reserved range 127.71.0.0/16 to a managed listener was not a doorbell; closed");
            return None;
        }
    };
    // Of the listener's family, as the doorbell on `n` it replaces.
    let fam = family::of(listener);
    let (sock, peer) = match dial::for_doorbell(&record, fam, flags & libc::SOCK_NONBLOCK != 0) {
        Ok(s) => s,
        Err(e) => {
            dial_failed(&record, e);
            return None;
        }
    };
    // The doorbell inherited the listener's options, as the application expects of
    // an accepted socket; carry them over (accept4's flags are set already).
    carry_options(id, listener, sock.raw());
    let dup_flags = if flags & libc::SOCK_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
    // The doorbell ends with a reset when `dup3` closes it: one segment instead
    // of a FIN exchange, and no TIME-WAIT; the ringing side lets go on either.
    let abort = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a linger struct of the stated size.
    unsafe { real::setsockopt(n, libc::SOL_SOCKET, libc::SO_LINGER, (&abort as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as socklen_t) };
    // SAFETY: both fds are ours; `n` is replaced atomically.
    if unsafe { real::dup3(sock.raw(), n, dup_flags) } < 0 {
        dial_failed(&record, errno());
        return None;
    }
    let n = bell.into_raw();
    named_accepted(id, n, Some(peer));
    Some((peer, fam))
}

/// Whether `ip` may register: loopback listeners are local business.
pub fn registrable(ip: Ipv4Addr) -> bool {
    !ip.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_not_registered() {
        assert!(!registrable(Ipv4Addr::new(127, 0, 0, 1)));
        assert!(registrable(Ipv4Addr::UNSPECIFIED));
        assert!(registrable(Ipv4Addr::new(192, 0, 2, 10)));
    }

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
