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
//! The backlog given to `listen` bounds the brokered connections that may
//! wait for `accept` (`Registry::room_for`), as it bounds the kernel's queue.
//!
//! `accept` is in `accept`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use libc::c_int;
use proto::Proto;

use super::mgmt::{self, NoAnswer};
use super::registry::Mgmt;
use crate::client::sys::{self, Sock};
use crate::fdtable::{self, Kind};
use crate::guard::set_errno;
use crate::real;

/// The backlog assumed for a listener whose `listen` this process did not
/// see (inherited, received, socket-activated).
pub const UNKNOWN_BACKLOG: usize = 128;

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
    // The socket listens: a panic in what follows leaves that so (`hook`,
    // rule 4), and the socket unregistered.
    let registered = crate::guard::bookkeep(|| {
        // Registered already (at `bind`, `client::pinned`, which made it
        // `Managed`): the queue's new length. A watched socket (the usual
        // case, and the only one on loopback) is not, and takes no lock here.
        if fdtable::kind(fd) == Kind::Managed {
            let known = super::state::with(|reg| {
                let id = reg.listener_id(fd)?;
                reg.listener_mut(id).map(|l| l.backlog = effective_backlog(backlog))
            });
            if known.is_some() {
                return Ok(true);
            }
        }
        register(fd, Proto::Tcp, Kind::Watched, effective_backlog(backlog))
    });
    match registered {
        Some(Err(e)) => fail(e),
        _ => 0,
    }
}

/// Registers the bound socket `fd` (TCP at `listen`, UDP at `bind`), whose fd
/// kind is `watched` now; it becomes `Managed`, or `Plain` if it is bound to
/// loopback or is pure IPv6. Returns whether the fd is now managed. Fails only
/// when the process has no descriptor (or memory) for the management socket:
/// the caller reports that errno, the socket stays unregistered, and a later
/// `listen` registers it.
pub fn register(fd: c_int, proto: Proto, watched: Kind, backlog: usize) -> Result<bool, sys::Errno> {
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
    Ok(adopt(fd, proto, watched, local, registered, backlog))
}

/// The queue length `listen(fd, backlog)` gets: the kernel caps it at
/// `net.core.somaxconn`, and takes a negative one as that cap.
pub fn effective_backlog(backlog: c_int) -> usize {
    let cap = somaxconn();
    if backlog < 0 {
        cap
    } else {
        (backlog as usize).clamp(1, cap)
    }
}

/// `net.core.somaxconn`, read once.
fn somaxconn() -> usize {
    static CAP: AtomicUsize = AtomicUsize::new(0);
    let cap = CAP.load(Relaxed);
    if cap != 0 {
        return cap;
    }
    let read = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse::<usize>().ok());
    let cap = read.filter(|&c| c > 0).unwrap_or(4096);
    CAP.store(cap, Relaxed);
    cap
}

/// Records `fd` (bound to `local`, of kind `watched`) as the listener
/// `registered`, and marks it `Managed`. False if the application closed the
/// fd meanwhile: the registration is then undone.
pub(super) fn adopt(fd: c_int, proto: Proto, watched: Kind, local: SocketAddrV4, registered: Registered, backlog: usize) -> bool {
    let Registered { sock, broker, mgmt_local, reg_local, proxy, udp_token } = registered;
    let interval = crate::config::get().heartbeat;
    let mgmt_fd = crate::internal::adopt(sock.into_raw());
    let listener = super::registry::Listener {
        fds: vec![fd],
        local,
        reg_local,
        joined: proxy.is_some(),
        lost: false,
        proxy,
        shared: false,
        family: crate::client::family::of(fd),
        backlog,
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
    let adopted = super::state::with(|reg| {
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
        Ok(()) => {
            super::state::ensure_responder();
            true
        }
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
    let candidates = super::state::with(|reg| reg.brokers.loaded().candidates(Instant::now()));
    let mut fallback = None;
    let (mut looked_up, mut desired) = (false, None);
    for broker in candidates {
        let (sock, mgmt_local) = match crate::client::exchange::open(broker) {
            Ok(s) => s,
            Err(e) => {
                log!(Warn, "cannot reach the broker {broker} to register {proto} {local}: {}", std::io::Error::from_raw_os_error(e));
                if crate::client::sys::out_of_resources(e) {
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
            desired = super::state::with(|reg| reg.released.take(reg_local).or_else(|| reg.twin_proxy(proto, reg_local))).map(|p| p.port());
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
        super::state::with(|reg| {
            let set = reg.brokers.loaded();
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

fn fail(e: c_int) -> c_int {
    set_errno(e);
    -1
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
}
