//! IPv4 endpoints as the application's socket family spells them.
//!
//! GCB and DPF speak IPv4 only, but many programs open AF_INET6 sockets and
//! reach IPv4 through them: a dual-stack listener bound to `::` with
//! `IPV6_V6ONLY` off (`python3 -m http.server` without `--bind`, redis' default
//! `bind * -::*`), or one bound to a v4-mapped address `::ffff:a.b.c.d`, or a
//! connect to a v4-mapped address. The shim manages those exactly like AF_INET
//! sockets; only the spelling of the names differs: the application reads and
//! writes `sockaddr_in6` holding v4-mapped addresses, and every socket the shim
//! puts on its fd numbers has its family, so `IPPROTO_IPV6` options keep working.
//!
//! Pure IPv6 (a v6-only socket, or a real IPv6 address) is not IPv4 and stays
//! pass-through: [`decode`] returns `None` for it, and callers let it go.

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use libc::{c_int, sockaddr, sockaddr_in, sockaddr_in6, socklen_t};

use crate::real;

/// The family of a socket whose IPv4 names the shim reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// AF_INET: `sockaddr_in`.
    V4,
    /// AF_INET6 reaching IPv4: `sockaddr_in6` with v4-mapped addresses.
    Mapped,
}

impl Family {
    pub fn domain(self) -> c_int {
        match self {
            Family::V4 => libc::AF_INET,
            Family::Mapped => libc::AF_INET6,
        }
    }

    /// The size of this family's socket address.
    pub(crate) fn len(self) -> socklen_t {
        match self {
            Family::V4 => size_of::<sockaddr_in>() as socklen_t,
            Family::Mapped => size_of::<sockaddr_in6>() as socklen_t,
        }
    }
}

/// The family of socket `fd` (`SO_DOMAIN`); anything but AF_INET6 counts as
/// AF_INET, the only other family the shim manages.
pub fn of(fd: c_int) -> Family {
    let mut v: c_int = 0;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: an int-sized buffer.
    let r = unsafe { real::getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, (&mut v as *mut c_int).cast(), &mut len) };
    if r == 0 && v == libc::AF_INET6 {
        Family::Mapped
    } else {
        Family::V4
    }
}

/// Whether AF_INET6 socket `fd` refuses IPv4 (`IPV6_V6ONLY` on, or unknown).
pub fn v6only(fd: c_int) -> bool {
    let mut v: c_int = 1;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: an int-sized buffer.
    let r = unsafe { real::getsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&mut v as *mut c_int).cast(), &mut len) };
    r != 0 || v != 0
}

/// A socket address of either family, ready for a system call.
pub struct Raw {
    storage: libc::sockaddr_storage,
    len: socklen_t,
}

impl Raw {
    pub fn ptr(&self) -> *const sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    pub(crate) fn len(&self) -> socklen_t {
        self.len
    }
}

fn v4(a: SocketAddrV4) -> sockaddr_in {
    sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// `a` spelt for `family`: a `sockaddr_in`, or a `sockaddr_in6` holding
/// `::ffff:a.b.c.d` (the unspecified 0.0.0.0 becomes `::`, which a dual-stack
/// socket reads the same way).
pub fn encode(a: SocketAddrV4, family: Family) -> Raw {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let dst = (&mut storage as *mut libc::sockaddr_storage).cast::<u8>();
    match family {
        Family::V4 => {
            let sin = v4(a);
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::copy_nonoverlapping((&sin as *const sockaddr_in).cast::<u8>(), dst, size_of::<sockaddr_in>()) };
        }
        Family::Mapped => {
            let ip = if a.ip().is_unspecified() { Ipv6Addr::UNSPECIFIED } else { a.ip().to_ipv6_mapped() };
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sin6: sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = ip.octets();
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::copy_nonoverlapping((&sin6 as *const sockaddr_in6).cast::<u8>(), dst, size_of::<sockaddr_in6>()) };
        }
    }
    Raw { storage, len: family.len() }
}

/// The IPv4 endpoint in `sa`: an AF_INET address, or an AF_INET6 one holding a
/// v4-mapped address. `None` for anything else, pure IPv6 included, or when
/// `len` does not cover it. (`::` is not IPv4 by itself; see [`local_view`].)
///
/// # Safety
///
/// `sa` is null or points to at least `len` readable bytes.
pub unsafe fn decode(sa: *const sockaddr, len: socklen_t) -> Option<SocketAddrV4> {
    if sa.is_null() || (len as usize) < size_of::<libc::sa_family_t>() {
        return None;
    }
    // The caller's buffer need not be aligned.
    let family = std::ptr::read_unaligned(sa.cast::<libc::sa_family_t>());
    match c_int::from(family) {
        libc::AF_INET if len >= Family::V4.len() => {
            let sin = std::ptr::read_unaligned(sa.cast::<sockaddr_in>());
            Some(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 if len >= Family::Mapped.len() => {
            let sin6 = std::ptr::read_unaligned(sa.cast::<sockaddr_in6>());
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_ipv4_mapped()?;
            Some(SocketAddrV4::new(ip, u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

/// The IPv4 view of a socket's own address `sa` (from `getsockname`): as
/// [`decode`], and a dual-stack AF_INET6 socket bound to `::` is the IPv4
/// wildcard 0.0.0.0.
///
/// # Safety
///
/// As [`decode`]; `fd` is the socket `sa` names.
pub unsafe fn local_view(fd: c_int, sa: *const sockaddr, len: socklen_t) -> Option<SocketAddrV4> {
    if let Some(a) = decode(sa, len) {
        return Some(a);
    }
    if len < Family::Mapped.len() || c_int::from(std::ptr::read_unaligned(sa.cast::<libc::sa_family_t>())) != libc::AF_INET6 {
        return None;
    }
    let sin6 = std::ptr::read_unaligned(sa.cast::<sockaddr_in6>());
    let wildcard = Ipv6Addr::from(sin6.sin6_addr.s6_addr).is_unspecified();
    (wildcard && !v6only(fd)).then(|| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, u16::from_be(sin6.sin6_port)))
}

/// Writes `addr`, spelt for `family`, to a caller's `(out, len)` pair the way the
/// kernel does: at most `*len` bytes, and `*len` set to the full size. Null
/// pointers mean "not wanted".
///
/// # Safety
///
/// `out` is null or has `*len` writable bytes; `len` is null or valid.
pub unsafe fn copy_out(addr: SocketAddrV4, family: Family, out: *mut sockaddr, len: *mut socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    let raw = encode(addr, family);
    let n = (*len).min(raw.len()) as usize;
    std::ptr::copy_nonoverlapping(raw.ptr().cast::<u8>(), out.cast::<u8>(), n);
    *len = raw.len();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &Raw) -> Option<SocketAddrV4> {
        unsafe { decode(raw.ptr(), raw.len()) }
    }

    #[test]
    fn both_spellings_round_trip() {
        let a: SocketAddrV4 = "203.0.113.10:20001".parse().unwrap();
        for f in [Family::V4, Family::Mapped] {
            let raw = encode(a, f);
            assert_eq!(raw.len(), f.len());
            assert_eq!(decoded(&raw), Some(a), "{f:?}");
            assert_eq!(unsafe { decode(raw.ptr(), raw.len() - 1) }, None, "{f:?}: short length");
        }
        let mapped = encode(a, Family::Mapped);
        let sin6 = unsafe { std::ptr::read_unaligned(mapped.ptr().cast::<sockaddr_in6>()) };
        assert_eq!(Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_string(), "::ffff:203.0.113.10");
    }

    #[test]
    fn pure_ipv6_is_not_ipv4() {
        let mut sin6: sockaddr_in6 = unsafe { std::mem::zeroed() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = 80u16.to_be();
        for ip in ["2001:db8::1", "::1", "::"] {
            sin6.sin6_addr.s6_addr = ip.parse::<Ipv6Addr>().unwrap().octets();
            let n = unsafe { decode((&sin6 as *const sockaddr_in6).cast(), Family::Mapped.len()) };
            assert_eq!(n, None, "{ip}");
        }
        assert_eq!(encode(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80), Family::Mapped).len(), Family::Mapped.len());
    }

    #[test]
    fn copy_out_truncates_like_the_kernel() {
        let a: SocketAddrV4 = "192.0.2.7:4242".parse().unwrap();
        let mut out = [0xffu8; 4];
        let mut len: socklen_t = 4;
        unsafe { copy_out(a, Family::Mapped, out.as_mut_ptr().cast(), &mut len) };
        assert_eq!(len, Family::Mapped.len(), "the full size is reported");
        assert_eq!(&out[2..4], &4242u16.to_be_bytes());
        unsafe { copy_out(a, Family::V4, std::ptr::null_mut(), &mut len) };
    }

    /// The wildcard `::` is IPv4's 0.0.0.0 only while the socket is dual-stack.
    #[test]
    fn the_ipv6_wildcard_is_ipv4_only_when_dual_stack() {
        for v6only_on in [false, true] {
            let fd = unsafe { real::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0);
            let flag: c_int = v6only_on.into();
            unsafe { real::setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&flag as *const c_int).cast(), 4) };
            assert_eq!(of(fd), Family::Mapped);
            assert_eq!(v6only(fd), v6only_on);
            let raw = encode(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), Family::Mapped);
            assert_eq!(unsafe { local_view(fd, raw.ptr(), raw.len()) }.is_some(), !v6only_on, "v6only {v6only_on}");
            unsafe { real::close(fd) };
        }
    }
}
