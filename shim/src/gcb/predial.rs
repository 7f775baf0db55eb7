//! Dialing ahead: when the broker's command for a listener arrives while the
//! process is not inside `accept` on it, the AEH starts the TCP handshake to the
//! connector (reversal) or to the broker's rendezvous (relay) at once, before it
//! rings the doorbell. The handshake then runs while the doorbell travels through
//! the application's event loop to its `accept`, instead of after it: one round
//! trip across the NAT less on every brokered connect to an event-loop server.
//!
//! Only the handshake is done ahead. The stream's preamble (`StreamHello`) is sent
//! by the `accept` that answers the doorbell, so the connection still belongs to
//! whichever process accepts: a connection dialed ahead that nobody claims never
//! says hello, and neither side takes it for the real one. The connector's
//! temporary listener defers accepting until data arrives (`TCP_DEFER_ACCEPT`),
//! so a silent connection dialed ahead does not hold up the one that speaks; the
//! broker's rendezvous closes it after its hello timeout.
//!
//! Dialed ahead only for listeners no other process holds (`Listener::shared`):
//! after `fork` or `exec`, the doorbell may be accepted elsewhere, and the
//! handshake would be wasted. A connection dialed ahead is an internal fd until
//! `accept` claims it; it is closed when its doorbell is let go ([`forget`]), in
//! a forked child at once, and by `exec` (close-on-exec).

use std::time::{Duration, Instant};

use libc::c_int;
use proto::gcb::Token;

use super::doorbell::{Dial, Job};
use super::family;
use super::registry::Registry;
use super::sys::{self, Sock};
use crate::fdtable::{self, Kind};

/// A connection dialed ahead is used only this young: the broker's rendezvous
/// closes a connection that has not said hello within 5 s, so an older one is
/// likely dead and a fresh dial is the better bet.
const FRESH_FOR: Duration = Duration::from_secs(2);
/// Connections dialed ahead at once, at most: a flood of commands must not use
/// up the process's descriptors. Past this, `accept` dials as before.
const MAX_AHEAD: usize = 32;

/// A connection dialed ahead for the doorbell of `token`.
#[derive(Debug)]
pub struct Ahead {
    pub token: Token,
    /// Internal fd, connecting or connected, close-on-exec.
    pub fd: c_int,
    pub started: Instant,
}

/// Starts the handshake for `job`, if its listener is this process's alone.
/// Never blocks; a failure only means `accept` dials as before.
pub fn start(job: &Job) {
    let listener_fd = super::with(|reg| {
        let room = reg.ahead.len() < MAX_AHEAD;
        reg.listener(job.listener).filter(|l| room && !l.shared).and_then(|l| l.fds.first().copied())
    });
    let Some(listener_fd) = listener_fd else { return };
    let to = match job.record.dial {
        Dial::Reverse { connector } => connector,
        Dial::Relay { broker } => broker,
    };
    // Of the listener's family, as the accepted fd it will replace.
    let fam = family::of(listener_fd);
    let started = sys::socket_of(fam, libc::SOCK_STREAM, true, true).and_then(|s| {
        sys::ack_with_first_data(s.raw());
        sys::connect_start(s.raw(), fam, to).map(|_| s)
    });
    let s = match started {
        Ok(s) => s,
        Err(e) => {
            log!(Debug, "cannot dial {to} ahead for token {}: {}", job.record.token, std::io::Error::from_raw_os_error(e));
            return;
        }
    };
    let fd = crate::internal::adopt(s.into_raw());
    super::with(|reg| reg.ahead.push(Ahead { token: job.record.token, fd, started: Instant::now() }));
}

/// The connection dialed ahead for `token`, now the caller's (a plain fd of the
/// shim's), if there is one young enough to use. It may still be connecting.
pub fn take(token: Token) -> Option<Sock> {
    let ahead = super::with(|reg| {
        let i = reg.ahead.iter().position(|a| a.token == token)?;
        Some(reg.ahead.swap_remove(i))
    })?;
    fdtable::set(ahead.fd, Kind::Plain);
    let s = Sock::from_raw(ahead.fd);
    (ahead.started.elapsed() < FRESH_FOR).then_some(s)
}

/// The doorbell of `token` was let go: a connection dialed ahead for it that no
/// `accept` here claimed is closed.
pub fn forget(reg: &mut Registry, token: Token) {
    if let Some(i) = reg.ahead.iter().position(|a| a.token == token) {
        crate::internal::release(reg.ahead.swap_remove(i).fd);
    }
}

/// Closes every connection dialed ahead (a forked child's copies: the parent's
/// doorbells are the parent's).
pub fn forget_all(reg: &mut Registry) {
    for a in reg.ahead.drain(..) {
        crate::internal::release(a.fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::doorbell::Record;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// A listener registered in this process's registry, not shared, and a job
    /// for it whose connector is a loopback listener.
    fn setup(shared: bool) -> (Sock, Sock, Job) {
        let app = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        let connector = sys::socket(libc::SOCK_STREAM, true, true).unwrap();
        sys::bind(connector.raw(), SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        assert_eq!(unsafe { crate::real::listen(connector.raw(), 4) }, 0);
        let at = sys::local_addr(connector.raw()).unwrap();
        let id = super::super::with(|reg| {
            let l = super::super::registry::Listener {
                fds: vec![app.raw()],
                local: "0.0.0.0:7000".parse().unwrap(),
                reg_local: "192.0.2.10:7000".parse().unwrap(),
                proxy: Some("203.0.113.10:20001".parse().unwrap()),
                secret: 1,
                shared,
                mgmt: super::super::registry::Mgmt {
                    fd: -1,
                    broker: "203.0.113.10:65432".parse().unwrap(),
                    local: "192.0.2.10:40000".parse().unwrap(),
                    requester: super::super::mgmt::new_requester(proto::rudp::RetryPolicy::default()),
                    pending: Default::default(),
                    next_heartbeat: Instant::now() + Duration::from_secs(60),
                    heard: Instant::now(),
                },
                proto: proto::Proto::Tcp,
                udp_token: None,
            };
            reg.add_listener(l).0
        });
        let token = Token(sys::random_u64() | 1);
        let peer = "198.51.100.10:4000".parse().unwrap();
        let record = Record { secret: 1, token, dial: Dial::Reverse { connector: at }, peer, proxy: peer };
        (app, connector, Job { listener: id, target: "127.0.0.1:7000".parse().unwrap(), record })
    }

    fn unregister(app: &Sock) {
        super::super::with(|reg| drop(reg.remove_fd(app.raw())));
    }

    #[test]
    fn dialed_ahead_once_and_claimed_by_token() {
        let (app, connector, job) = setup(false);
        start(&job);
        assert!(take(Token(job.record.token.0 ^ 2)).is_none(), "another token");
        let s = take(job.record.token).expect("dialed ahead");
        assert_eq!(fdtable::kind(s.raw()), Kind::Plain, "no longer internal");
        sys::finish_connect(s.raw(), Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(sys::peer_addr(s.raw()).unwrap(), sys::local_addr(connector.raw()).unwrap());
        assert!(take(job.record.token).is_none(), "claimed once");
        unregister(&app);
    }

    #[test]
    fn shared_listeners_are_not_dialed_ahead_and_forget_closes() {
        let (app, _connector, job) = setup(true);
        start(&job);
        assert!(take(job.record.token).is_none());
        unregister(&app);
        let (app, _connector, job) = setup(false);
        start(&job);
        let fd = super::super::with(|reg| reg.ahead.iter().find(|a| a.token == job.record.token).map(|a| a.fd)).unwrap();
        assert_eq!(fdtable::kind(fd), Kind::Internal);
        super::super::with(|reg| forget(reg, job.record.token));
        assert!(take(job.record.token).is_none());
        assert_eq!(fdtable::kind(fd), Kind::Plain);
        unregister(&app);
    }
}
