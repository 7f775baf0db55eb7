//! No lock on the fast path: calls on fds the shim has no business with, and
//! on GCB-mode sockets whose calls turn out ordinary (loopback, a host known
//! to be plain, a port probe), take neither the GCB registry's lock nor the
//! DPF state's. Test builds count every `Lock` acquisition per thread
//! (`client::lock::taken_by_this_thread`), so each step asserts the count did
//! not move. The unit tests run with neither mode on: GCB-mode kinds are
//! marked by hand, as the `socket` hook marks them, and DPF mode's calls are
//! `dpf::ops`, which `managed` sends every `bind`, `listen` and `connect` to.

use std::net::{Ipv4Addr, SocketAddrV4};

use libc::{c_int, sockaddr, socklen_t};

use crate::fdtable::{self, Kind};
use crate::client::lock::taken_by_this_thread;
use crate::client::sys;
use crate::real;

/// Runs `f` and asserts this thread took no lock in it.
fn no_lock<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let before = taken_by_this_thread();
    let r = f();
    assert_eq!(taken_by_this_thread(), before, "{what} took a lock");
    r
}

fn addr_of(a: SocketAddrV4) -> (libc::sockaddr_in, socklen_t) {
    (sys::to_sockaddr(a), std::mem::size_of::<libc::sockaddr_in>() as socklen_t)
}

fn ptr(sin: &libc::sockaddr_in) -> *const sockaddr {
    (sin as *const libc::sockaddr_in).cast()
}

/// A socket as the `socket` hook makes it in GCB mode (`kind`), or plain.
fn socket(ty: c_int, nonblock: bool, kind: Kind) -> c_int {
    let fd = sys::socket(ty, true, nonblock).unwrap().into_raw();
    fdtable::set(fd, kind);
    fd
}

/// A loopback TCP listener of the test's own (plain).
fn listener() -> (c_int, SocketAddrV4) {
    let l = socket(libc::SOCK_STREAM, false, Kind::Plain);
    sys::bind(l, "127.0.0.1:0".parse().unwrap()).unwrap();
    // SAFETY: our socket.
    assert_eq!(unsafe { real::listen(l, 16) }, 0);
    (l, sys::local_addr(l).unwrap())
}

fn warm_up() {
    // The first hooked call of the process may run init.
    // SAFETY: F_GETFD of stdin only asks.
    unsafe { super::lifetime::fcntl(0, libc::F_GETFD, 0) };
}

#[test]
fn the_counter_counts() {
    let before = taken_by_this_thread();
    crate::gcb::state::with(|_| ());
    crate::dpf::state::with(|_| ());
    assert_eq!(taken_by_this_thread(), before + 2);
}

#[test]
fn plain_fds_take_no_lock() {
    warm_up();
    let mut sv = [0; 2];
    // SAFETY: socketpair writes two fds.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) }, 0);
    let (a, b) = (sv[0], sv[1]);
    let mut buf = [0u8; 8];
    no_lock("plain data, dups and closes", || unsafe {
        assert_eq!(super::data::write(a, b"hi".as_ptr().cast(), 2), 2);
        assert_eq!(super::data::read(b, buf.as_mut_ptr().cast(), 8), 2);
        assert_eq!(super::data::send(b, b"yo".as_ptr().cast(), 2, 0), 2);
        assert_eq!(super::data::recv(a, buf.as_mut_ptr().cast(), 8, 0), 2);
        let d = super::lifetime::dup(a);
        let e = super::lifetime::fcntl(a, libc::F_DUPFD_CLOEXEC, 0);
        assert!(d >= 0 && e >= 0);
        assert_eq!(super::lifetime::dup2(a, d), d);
        for fd in [d, e, a, b] {
            assert_eq!(super::lifetime::close(fd), 0);
        }
    });
}

#[test]
fn ordinary_gcb_mode_tcp_sockets_take_no_lock() {
    warm_up();
    let (l, at) = listener();
    no_lock("a watched socket listening on loopback", || unsafe {
        let s = socket(libc::SOCK_STREAM, false, Kind::Watched);
        let one: c_int = 1;
        super::socket::setsockopt(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const c_int).cast(), 4);
        let (sin, len) = addr_of("127.0.0.1:0".parse().unwrap());
        assert_eq!(super::socket::bind(s, ptr(&sin), len), 0);
        assert_eq!(super::socket::listen(s, 8), 0);
        assert_eq!(fdtable::kind(s), Kind::Plain, "loopback never registers");
        assert_eq!(super::lifetime::close(s), 0);
    });
    no_lock("a watched socket connecting to loopback", || unsafe {
        let s = socket(libc::SOCK_STREAM, false, Kind::Watched);
        let (sin, len) = addr_of(at);
        assert_eq!(super::connect::connect(s, ptr(&sin), len), 0);
        assert_eq!(fdtable::kind(s), Kind::Plain);
        assert_eq!(super::lifetime::close(s), 0);
    });
    no_lock("a port probe: bound, named, closed", || unsafe {
        let s = socket(libc::SOCK_STREAM, false, Kind::Watched);
        let (sin, len) = addr_of("0.0.0.0:0".parse().unwrap());
        assert_eq!(super::socket::bind(s, ptr(&sin), len), 0);
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut olen = std::mem::size_of::<libc::sockaddr_in>() as socklen_t;
        assert_eq!(super::socket::getsockname(s, (&mut out as *mut libc::sockaddr_in).cast(), &mut olen), 0);
        assert_ne!(out.sin_port, 0);
        assert_eq!(super::lifetime::close(s), 0);
        assert_eq!(fdtable::kind(s), Kind::Plain);
    });
    // A host this process found plain: its connects go straight out.
    let plain_host = Ipv4Addr::new(192, 0, 2, 77);
    crate::gcb::negcache::local().insert(plain_host, crate::client::sys::now_secs(), 60);
    no_lock("a watched socket connecting to a host known to be plain", || unsafe {
        let s = socket(libc::SOCK_STREAM, true, Kind::Watched);
        let (sin, len) = addr_of(SocketAddrV4::new(plain_host, 9));
        let r = super::connect::connect(s, ptr(&sin), len);
        let e = crate::guard::errno();
        assert!(r == -1 && e != libc::EIO, "the kernel's own answer: {}", std::io::Error::from_raw_os_error(e));
        assert_eq!(fdtable::kind(s), Kind::Plain);
        assert_eq!(super::lifetime::close(s), 0);
    });
    // SAFETY: ours.
    unsafe { real::close(l) };
}

#[test]
fn ordinary_gcb_mode_udp_sockets_take_no_lock() {
    warm_up();
    no_lock("watched UDP sockets on loopback: bind, send, connect, close", || unsafe {
        let server = socket(libc::SOCK_DGRAM, false, Kind::WatchedUdp);
        let (sin, len) = addr_of("127.0.0.1:0".parse().unwrap());
        assert_eq!(super::socket::bind(server, ptr(&sin), len), 0);
        assert_eq!(fdtable::kind(server), Kind::Plain, "loopback never registers");
        let at = sys::local_addr(server).unwrap();
        let client = socket(libc::SOCK_DGRAM, false, Kind::WatchedUdp);
        let (to, tolen) = addr_of(at);
        assert_eq!(super::data::sendto(client, b"one".as_ptr().cast(), 3, 0, ptr(&to), tolen), 3);
        assert_eq!(super::connect::connect(client, ptr(&to), tolen), 0);
        assert_eq!(super::data::send(client, b"two".as_ptr().cast(), 3, 0), 3);
        let mut buf = [0u8; 8];
        assert_eq!(super::data::recv(server, buf.as_mut_ptr().cast(), 8, 0), 3);
        assert_eq!(super::data::recv(server, buf.as_mut_ptr().cast(), 8, 0), 3);
        assert_eq!(&buf[..3], b"two");
        assert_eq!(super::lifetime::close(client), 0);
        assert_eq!(super::lifetime::close(server), 0);
    });
}

#[test]
fn dpf_mode_calls_take_no_lock_unless_the_destination_is_dpfd_s() {
    warm_up();
    let gateway = Ipv4Addr::new(203, 0, 113, 1);
    crate::dpf::public::KNOWN.learn_all(&[gateway]);
    let (l, at) = listener();
    no_lock("DPF bind, listen and connect of sockets it does not forward", || unsafe {
        let s = socket(libc::SOCK_STREAM, false, Kind::Plain);
        let (sin, len) = addr_of("127.0.0.1:0".parse().unwrap());
        assert_eq!(crate::dpf::ops::bind(s, ptr(&sin), len), 0);
        assert_eq!(crate::dpf::ops::listen(s, 4), 0);
        real::close(s);
        let u = socket(libc::SOCK_DGRAM, false, Kind::Plain);
        assert_eq!(crate::dpf::ops::bind(u, ptr(&sin), len), 0);
        real::close(u);
        let c = socket(libc::SOCK_STREAM, false, Kind::Plain);
        let (to, tolen) = addr_of(at);
        assert_eq!(crate::dpf::ops::connect(c, ptr(&to), tolen), 0);
        real::close(c);
        // Not one of dpfd's IPs: no Query, so no cache and no lock.
        let c = socket(libc::SOCK_STREAM, true, Kind::Plain);
        let (to, tolen) = addr_of(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 9));
        crate::dpf::ops::connect(c, ptr(&to), tolen);
        real::close(c);
    });
    no_lock("DPF bind and listen of a unix socket", || unsafe {
        let u = real::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let mut sun: libc::sockaddr_un = std::mem::zeroed();
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        // Just the family: the kernel picks an abstract name (autobind).
        let len = std::mem::size_of::<libc::sa_family_t>() as socklen_t;
        assert_eq!(crate::dpf::ops::bind(u, (&sun as *const libc::sockaddr_un).cast(), len), 0);
        assert_eq!(crate::dpf::ops::listen(u, 4), 0);
        real::close(u);
    });
    // And one of dpfd's IPs is looked up in the Query cache, under the lock.
    let before = taken_by_this_thread();
    let c = socket(libc::SOCK_STREAM, true, Kind::Plain);
    let (to, tolen) = addr_of(SocketAddrV4::new(gateway, 9));
    // SAFETY: a valid address.
    unsafe { crate::dpf::ops::connect(c, ptr(&to), tolen) };
    assert!(taken_by_this_thread() > before, "a connect to dpfd's public IP asks the cache");
    // SAFETY: ours.
    unsafe {
        real::close(c);
        real::close(l);
    }
}
