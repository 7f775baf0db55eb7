//! Socket plumbing for both clients: address conversion, fds the shim owns for a
//! moment, and connect/send/receive with a deadline.
//!
//! Everything here calls [`crate::real`], never the hooks, and reports failure as
//! an errno value (`Err(Errno)`) instead of leaving it in `errno`, so callers can
//! decide which errno the application finally sees. Every wait takes an absolute
//! deadline: the shim must never hang the application (docs/design.md,
//! "Failing").

use std::mem::{size_of, MaybeUninit};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use libc::{c_int, c_void, sockaddr, sockaddr_in, socklen_t};

use super::family::{self, Family};
use crate::guard::errno;
use crate::real;

pub type Errno = c_int;

/// `Ok(v)` for a non-negative result, else the errno the call left.
fn check(r: c_int) -> Result<c_int, Errno> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

pub fn to_sockaddr(a: SocketAddrV4) -> sockaddr_in {
    sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// The IPv4 endpoint in `sa`, AF_INET or v4-mapped AF_INET6 (see [`family`]).
///
/// # Safety
///
/// `sa` is null or points to at least `len` readable bytes.
pub unsafe fn from_sockaddr(sa: *const sockaddr, len: socklen_t) -> Option<SocketAddrV4> {
    family::decode(sa, len)
}

type NameFn = unsafe fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// `f`'s name for `fd` as IPv4; for its own name (`local`), the wildcard of a
/// dual-stack AF_INET6 socket counts as 0.0.0.0. Pure IPv6 is EAFNOSUPPORT.
fn name_of(fd: c_int, f: NameFn, local: bool) -> Result<SocketAddrV4, Errno> {
    let mut ss = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: a buffer of `len` bytes.
    check(unsafe { f(fd, ss.as_mut_ptr().cast(), &mut len) })?;
    // SAFETY: the kernel wrote at most `len` bytes into the zeroed buffer.
    let v4 = unsafe { if local { family::local_view(fd, ss.as_ptr().cast(), len) } else { family::decode(ss.as_ptr().cast(), len) } };
    v4.ok_or(libc::EAFNOSUPPORT)
}

pub fn local_addr(fd: c_int) -> Result<SocketAddrV4, Errno> {
    name_of(fd, real::getsockname, true)
}

pub fn peer_addr(fd: c_int) -> Result<SocketAddrV4, Errno> {
    name_of(fd, real::getpeername, false)
}

pub fn get_int_opt(fd: c_int, level: c_int, name: c_int) -> Result<c_int, Errno> {
    let mut v: c_int = 0;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: an int-sized buffer.
    check(unsafe { real::getsockopt(fd, level, name, (&mut v as *mut c_int).cast(), &mut len) })?;
    Ok(v)
}

/// The socket's `SO_RCVTIMEO`, if set: the kernel bounds a blocking `accept` or
/// receive by it, so the shim's own waits in those calls must end there too.
pub fn receive_timeout(fd: c_int) -> Option<std::time::Duration> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: a timeval-sized buffer and its length.
    let r = unsafe {
        real::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&mut tv as *mut libc::timeval).cast(), &mut len)
    };
    let t = std::time::Duration::new(tv.tv_sec.max(0) as u64, tv.tv_usec.clamp(0, 999_999) as u32 * 1000);
    (r == 0 && !t.is_zero()).then_some(t)
}

pub fn set_int_opt(fd: c_int, level: c_int, name: c_int, v: c_int) -> Result<(), Errno> {
    let len = size_of::<c_int>() as socklen_t;
    // SAFETY: an int-sized value.
    check(unsafe { real::setsockopt(fd, level, name, (&v as *const c_int).cast(), len) }).map(drop)
}

/// An fd the shim owns for now: closed on drop unless handed over with [`Sock::into_raw`].
#[derive(Debug)]
pub struct Sock(c_int);

impl Sock {
    /// Takes ownership of `fd`.
    pub fn from_raw(fd: c_int) -> Sock {
        Sock(fd)
    }

    pub fn raw(&self) -> c_int {
        self.0
    }

    /// Gives the fd away: the caller closes it.
    pub fn into_raw(self) -> c_int {
        let fd = self.0;
        std::mem::forget(self);
        fd
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        let _errno = crate::guard::ErrnoGuard::new();
        // SAFETY: our fd.
        unsafe { real::close(self.0) };
    }
}

/// A new AF_INET socket of `ty` (`SOCK_STREAM` or `SOCK_DGRAM`), close-on-exec
/// unless `cloexec` is false, non-blocking if `nonblock`.
pub fn socket(ty: c_int, cloexec: bool, nonblock: bool) -> Result<Sock, Errno> {
    socket_of(Family::V4, ty, cloexec, nonblock)
}

/// As [`socket`], of `family`: what the shim puts on an application's fd number
/// must be of the family the application made (an AF_INET6 one stays dual-stack,
/// the kernel's default).
pub fn socket_of(family: Family, ty: c_int, cloexec: bool, nonblock: bool) -> Result<Sock, Errno> {
    let flags = if cloexec { libc::SOCK_CLOEXEC } else { 0 } | if nonblock { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket call.
    check(unsafe { real::socket(family.domain(), ty | flags, 0) }).map(Sock)
}

/// Binds `fd` to `addr`, spelt for `fd`'s family.
pub fn bind(fd: c_int, addr: SocketAddrV4) -> Result<(), Errno> {
    bind_as(fd, family::of(fd), addr)
}

/// [`bind`] for a socket whose family the caller knows (one the shim made).
pub fn bind_as(fd: c_int, fam: Family, addr: SocketAddrV4) -> Result<(), Errno> {
    let raw = family::encode(addr, fam);
    // SAFETY: a socket address of the stated length.
    check(unsafe { real::bind(fd, raw.ptr(), raw.len()) }).map(drop)
}

pub fn get_fl(fd: c_int) -> Result<c_int, Errno> {
    // SAFETY: F_GETFL takes no argument.
    check(unsafe { real::fcntl(fd, libc::F_GETFL, 0) })
}

pub fn set_fl(fd: c_int, flags: c_int) -> Result<(), Errno> {
    // SAFETY: F_SETFL takes an int.
    check(unsafe { real::fcntl(fd, libc::F_SETFL, flags as libc::c_ulong) }).map(drop)
}

/// Sets or clears `O_NONBLOCK` on `fd`'s open file description.
pub fn set_nonblock(fd: c_int, on: bool) -> Result<(), Errno> {
    let fl = get_fl(fd)?;
    let want = if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK };
    if want == fl {
        return Ok(());
    }
    set_fl(fd, want)
}

pub fn is_nonblocking(fd: c_int) -> bool {
    get_fl(fd).is_ok_and(|f| f & libc::O_NONBLOCK != 0)
}

/// Makes `fd` non-blocking until dropped, then puts its flags back: for the shim's
/// bounded exchanges on an application socket.
pub struct NonBlocking {
    fd: c_int,
    old: Option<c_int>,
}

impl NonBlocking {
    pub fn new(fd: c_int) -> Result<NonBlocking, Errno> {
        let old = get_fl(fd)?;
        if old & libc::O_NONBLOCK == 0 {
            set_fl(fd, old | libc::O_NONBLOCK)?;
            return Ok(NonBlocking { fd, old: Some(old) });
        }
        Ok(NonBlocking { fd, old: None })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            let _errno = crate::guard::ErrnoGuard::new();
            let _ = set_fl(self.fd, old);
        }
    }
}

/// Milliseconds from `now` to `deadline` for poll, rounded up so a wait never ends
/// early (which would make the caller spin for the last fraction of a millisecond).
pub fn poll_ms(deadline: Instant, now: Instant) -> c_int {
    let left = deadline.saturating_duration_since(now);
    let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
    ms.min(c_int::MAX as u128) as c_int
}

/// `poll` on `fds` until `deadline` (for ever without one), to the
/// microsecond: ppoll's timespec rather than poll's milliseconds, since a hole
/// punch spaces its attempts by tens of microseconds and a millisecond tick
/// would line both sides' retries up on it (docs/nat-punching-notes.md).
pub fn poll_until(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> c_int {
    let ts = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        libc::timespec { tv_sec: left.as_secs().min(i32::MAX as u64) as libc::time_t, tv_nsec: libc::c_long::from(left.subsec_nanos() as i32) }
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds.len()` pollfds, a timespec that outlives the call or none,
    // and no signal mask.
    unsafe { real::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ts_ptr, std::ptr::null()) }
}

/// Makes the close of our socket `fd` a reset (SO_LINGER with no time): one
/// segment instead of a FIN exchange, and no TIME-WAIT left on its port.
pub fn reset_on_close(fd: c_int) {
    let abort = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a linger struct of the stated size.
    unsafe { real::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&abort as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as libc::socklen_t) };
}

/// Waits until `fd` has one of `events` (or an error or hang-up); `ETIMEDOUT` at
/// the deadline. Signals do not cut the wait short: callers are bounded already.
pub fn wait_fd(fd: c_int, events: i16, deadline: Instant) -> Result<i16, Errno> {
    let mut p = [libc::pollfd { fd, events, revents: 0 }];
    wait_fds(&mut p, deadline)?;
    Ok(p[0].revents)
}

/// [`wait_fd`] for several descriptors: returns once one of them is ready, with
/// each one's `revents` filled in. A negative fd is ignored (poll's rule), so
/// an optional descriptor can take a place as -1.
pub fn wait_fds(fds: &mut [libc::pollfd], deadline: Instant) -> Result<(), Errno> {
    loop {
        let r = poll_until(fds, Some(deadline));
        if r > 0 {
            return Ok(());
        }
        if r < 0 && errno() != libc::EINTR {
            return Err(errno());
        }
        if r == 0 && Instant::now() >= deadline {
            return Err(libc::ETIMEDOUT);
        }
    }
}

/// Connects non-blocking `fd` to `addr` (spelt for `fd`'s family) by `deadline`.
pub fn connect(fd: c_int, addr: SocketAddrV4, deadline: Instant) -> Result<(), Errno> {
    connect_as(fd, family::of(fd), addr, deadline)
}

/// [`connect`] for a socket whose family the caller knows (one the shim made).
pub fn connect_as(fd: c_int, fam: Family, addr: SocketAddrV4, deadline: Instant) -> Result<(), Errno> {
    match connect_start(fd, fam, addr)? {
        true => Ok(()),
        false => finish_connect(fd, deadline),
    }
}

/// Starts connecting non-blocking `fd` (of family `fam`) to `addr`: the SYN is
/// on its way when this returns. `true` if it connected at once (UDP, and
/// loopback may); else [`finish_connect`] waits for the handshake.
pub fn connect_start(fd: c_int, fam: Family, addr: SocketAddrV4) -> Result<bool, Errno> {
    let raw = family::encode(addr, fam);
    // SAFETY: a socket address of the stated length.
    if unsafe { real::connect(fd, raw.ptr(), raw.len()) } == 0 {
        return Ok(true);
    }
    match errno() {
        libc::EINPROGRESS | libc::EINTR | libc::EALREADY => Ok(false),
        e => Err(e),
    }
}

/// Makes connecting socket `fd` hold back the last ACK of its handshake until it
/// sends data, which then carries it: one segment fewer for a connection whose
/// first bytes (a preamble) follow at once. A peer that waits for data anyway
/// (`TCP_DEFER_ACCEPT` on its listener) loses nothing; if no data comes, the
/// kernel sends the ACK on its own after its delayed-ACK time (200 ms). Best
/// effort: without it the handshake is the usual one.
pub fn ack_with_first_data(fd: c_int) {
    let _ = set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 1);
}

/// Waits by `deadline` for the connect started on `fd` to complete; its error if it failed.
pub fn finish_connect(fd: c_int, deadline: Instant) -> Result<(), Errno> {
    wait_fd(fd, libc::POLLOUT, deadline)?;
    match get_int_opt(fd, libc::SOL_SOCKET, libc::SO_ERROR)? {
        0 => Ok(()),
        e => Err(e),
    }
}

/// Sends all of `bytes` on non-blocking `fd` by `deadline`.
pub fn send_all(fd: c_int, mut bytes: &[u8], deadline: Instant) -> Result<(), Errno> {
    while !bytes.is_empty() {
        // SAFETY: a live buffer of the given length.
        let n = unsafe { real::send(fd, bytes.as_ptr().cast::<c_void>(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            bytes = &bytes[n as usize..];
            continue;
        }
        match errno() {
            libc::EAGAIN | libc::EINTR => {
                wait_fd(fd, libc::POLLOUT, deadline)?;
            }
            e => return Err(e),
        }
    }
    Ok(())
}

/// Fills `buf` from `fd` by `deadline`, never reading past it, so the
/// application's bytes that follow a preamble stay in the socket. End of stream
/// before that is `ECONNRESET`.
pub fn recv_exact(fd: c_int, buf: &mut [u8], deadline: Instant) -> Result<(), Errno> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: a live buffer of the given length. MSG_DONTWAIT: a blocking
        // `fd` too waits only in `wait_fd`, bounded.
        let n = unsafe { real::recv(fd, rest.as_mut_ptr().cast::<c_void>(), rest.len(), libc::MSG_DONTWAIT) };
        match n {
            0 => return Err(libc::ECONNRESET),
            n if n > 0 => got += n as usize,
            _ => match errno() {
                libc::EAGAIN | libc::EINTR => {
                    wait_fd(fd, libc::POLLIN, deadline)?;
                }
                e => return Err(e),
            },
        }
    }
    Ok(())
}

/// Whether the real call would have been restarted after the signal that just
/// interrupted the shim's wait: only if every caught signal has `SA_RESTART`.
/// Which signal it was is unknown, so one handler without the flag is enough to
/// report `EINTR`, as the kernel would for that handler.
pub fn signal_restarts() -> bool {
    for sig in 1..=libc::SIGRTMAX() {
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: query only.
        if unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) } != 0 {
            continue;
        }
        // SAFETY: filled in by sigaction.
        let old = unsafe { old.assume_init() };
        let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        if caught && old.sa_flags & libc::SA_RESTART == 0 {
            return false;
        }
    }
    true
}

/// A random u64 from the kernel (for doorbell secrets and request ids), or a
/// clock-and-pid mix if `getrandom` is unavailable.
pub fn random_u64() -> u64 {
    let mut v = [0u8; 8];
    // SAFETY: an 8-byte buffer. GRND_NONBLOCK: never wait for the pool at early boot;
    // the fallback below covers that.
    let n = unsafe { libc::getrandom(v.as_mut_ptr().cast(), v.len(), libc::GRND_NONBLOCK) };
    if n == 8 {
        return u64::from_ne_bytes(v);
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    (t.as_nanos() as u64).rotate_left(17) ^ pid.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Socket options carried to replacement sockets live in `options`.
/// Errors that say "this process or host is out of something", not "no broker".
pub fn out_of_resources(e: Errno) -> bool {
    matches!(e, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
}

/// `CLOCK_MONOTONIC` in whole seconds: the clock every process of a boot shares.
pub fn now_secs() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec; served by the vDSO, no system call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec.max(0) as u64
}

pub use super::options::copy_options;

#[cfg(test)]
mod tests {
    use super::*;

    const SIN_LEN: socklen_t = size_of::<sockaddr_in>() as socklen_t;

    #[test]
    fn sockaddr_round_trip() {
        let a: SocketAddrV4 = "192.0.2.7:4242".parse().unwrap();
        let sin = to_sockaddr(a);
        let back = unsafe { from_sockaddr((&sin as *const sockaddr_in).cast(), SIN_LEN) };
        assert_eq!(back, Some(a));
        assert_eq!(unsafe { from_sockaddr((&sin as *const sockaddr_in).cast(), SIN_LEN - 1) }, None);
    }

    #[test]
    fn poll_ms_rounds_up() {
        let now = Instant::now();
        assert_eq!(poll_ms(now, now), 0);
        assert_eq!(poll_ms(now + Duration::from_micros(10), now), 1);
        assert_eq!(poll_ms(now + Duration::from_millis(5), now), 5);
        assert_eq!(poll_ms(now, now + Duration::from_secs(1)), 0, "past deadlines are zero");
    }

    #[test]
    fn bounded_loopback_exchange() {
        let l = socket(libc::SOCK_STREAM, true, false).unwrap();
        bind(l.raw(), "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(unsafe { real::listen(l.raw(), 4) }, 0);
        let at = local_addr(l.raw()).unwrap();
        let c = socket(libc::SOCK_STREAM, true, true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        connect(c.raw(), at, deadline).unwrap();
        send_all(c.raw(), b"hello", deadline).unwrap();
        let a = Sock::from_raw(unsafe { real::accept4(l.raw(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK) });
        let mut buf = [0u8; 5];
        recv_exact(a.raw(), &mut buf, deadline).unwrap();
        assert_eq!(&buf, b"hello");
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(recv_exact(a.raw(), &mut buf, soon), Err(libc::ETIMEDOUT));
        assert_eq!(peer_addr(a.raw()).unwrap(), local_addr(c.raw()).unwrap());
        set_int_opt(c.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        copy_options(c.raw(), a.raw());
        assert_eq!(get_int_opt(a.raw(), libc::IPPROTO_TCP, libc::TCP_NODELAY), Ok(1));
        assert_ne!(random_u64(), random_u64());
    }
}
