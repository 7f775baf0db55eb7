//! Asking the broker at a destination's IP who dials whom, for a blocking
//! connect (`connector`) and for the responder's non-blocking ones
//! (`connecting`) alike: which destinations are worth asking, the `Connect`
//! on a connected UDP socket with the hidden listener's address in it, what
//! the answer comes to, and the negative cache of IPs with no broker.

use std::net::{IpAddr, SocketAddrV4};
use std::time::Instant;

use proto::gcb::{Decision, ErrorCode, Features, Message, COMMAND_PORT};
use proto::rudp::RetryPolicy;
use proto::Proto;

use super::mgmt;
use super::punch::Early;
use super::registry::connects::Asking;
use super::reversal_listener::TempListener;
use super::spare;
use crate::client::family::Family;
use crate::client::sys::{self, Errno, Sock};
use crate::config;
use crate::route::Route;

/// What the destination's command port said.
pub(crate) enum Asked {
    /// No broker there: connect directly.
    NotGcb,
    /// Our own broker did not answer in time: connect directly this once (a
    /// proxy address still reaches the listener, relayed), but do not remember it.
    Silent,
    /// A broker refused the request.
    Refused(ErrorCode),
    /// A broker decided; in case it is a reversal, the temporary listener and
    /// the socket the `Connect` went out on (the broker's `ConnectFailed`
    /// arrives there); in case it is an early punch, the rendezvous
    /// connection opened beside the `Connect` (`punch::early`).
    Decision(Decision, Option<TempListener>, Option<Sock>, Option<Early>),
    /// The shim could not make its own sockets for the exchange (EMFILE,
    /// ENFILE, ENOBUFS, ENOMEM): the caller gets that errno and may retry; the
    /// destination is not cached as "not GCB" for it.
    NoResources(Errno),
}

/// The one info line per brokered connect that operators (and `scripts/demo`)
/// read to learn which way a connection went: `gcb: connect tcp DEST via PATH
/// [to ADDR] in N us`. The time runs from the application's call to the moment
/// it gets its answer, so a non-blocking direct connect counts until EINPROGRESS.
/// The same line serves UDP (`connect udp DEST via PATH`), logged when a
/// destination's receiver-list record is made.
pub(crate) fn log_path(proto: Proto, dest: SocketAddrV4, d: &Decision, since: Instant) {
    let us = since.elapsed().as_micros();
    match d {
        Decision::Direct { addr } => log!(Info, "connect {proto} {dest} via direct to {addr} in {us} us"),
        Decision::SameRealm { addr } => log!(Info, "connect {proto} {dest} via same-realm to {addr} in {us} us"),
        Decision::Reversal { .. } => log!(Info, "connect {proto} {dest} via reversal in {us} us"),
        Decision::Relay { via, .. } => log!(Info, "connect {proto} {dest} via relay at {via} in {us} us"),
        Decision::PunchTcp { .. } => log!(Info, "connect {proto} {dest} via punched in {us} us"),
        Decision::NotRegistered | Decision::PunchUdp { .. } => {}
    }
}

/// Records that `ip` has no broker, for this process and the user's others
/// (`negcache`). One of our own brokers that refused is down, not absent: it is
/// asked again next time rather than routed around for a minute.
pub(crate) fn remember_no_broker(ip: std::net::Ipv4Addr) {
    if our_broker(ip).is_some() {
        return;
    }
    super::negcache::remember_not_gcb(ip);
}

/// Whether `dest` may be brokered and is not known not to be.
pub(crate) fn worth_asking(dest: SocketAddrV4) -> bool {
    let ip = *dest.ip();
    if ip.is_loopback() || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || dest.port() == 0 {
        return false;
    }
    if config::get().routes.lookup(IpAddr::V4(ip)) == Route::Direct {
        return false;
    }
    // Our own brokers never enter the negative cache (`remember_no_broker`),
    // so a connect to a proxy address does not map the shared one on a
    // process's first connect.
    if our_broker(ip).is_some() {
        return true;
    }
    // Lock-free: a connect to a host known to be plain costs no wait (`negcache`).
    !super::negcache::known_not_gcb(ip)
}

/// One of `GCB_INAGENT`'s brokers, if `ip` is one.
pub(crate) fn our_broker(ip: std::net::Ipv4Addr) -> Option<std::net::SocketAddr> {
    match &config::get().mode {
        config::Mode::Gcb(brokers) => brokers.iter().find(|b| b.ip() == IpAddr::V4(ip)).copied(),
        _ => None,
    }
}

/// The command port to ask at `ip`: our own broker's, if `ip` is one of ours and
/// it uses another port, else the historic default.
pub(crate) fn command_port(ip: std::net::Ipv4Addr) -> u16 {
    our_broker(ip).map_or(COMMAND_PORT, |b| b.port())
}

/// Prepares asking the broker at `dest`'s IP. A destination on one of our own
/// brokers is known to be brokered: it gets the normal command retry policy
/// rather than the short probe, and silence there is not remembered as "no
/// broker". `Err` when there is nothing to ask.
pub(crate) fn prepare_ask(dest: SocketAddrV4, family: Family) -> Result<Asking, Asked> {
    prepare(dest, family, false)
}

/// Prepares asking for a standby connection to `dest` (`standby`): a punch
/// or nothing, so no hidden listener goes along.
pub(crate) fn prepare_standby_ask(dest: SocketAddrV4, family: Family) -> Result<Asking, Asked> {
    prepare(dest, family, true)
}

/// A standby's is prepared by the responder under the registry lock, so it
/// must not take the lock: it skips `spare::take`, which does.
fn prepare(dest: SocketAddrV4, family: Family, standby: bool) -> Result<Asking, Asked> {
    let ours = our_broker(*dest.ip()).is_some();
    let cmd = SocketAddrV4::new(*dest.ip(), command_port(*dest.ip()));
    let (probe, local) = match crate::client::exchange::open(cmd) {
        Ok(p) => p,
        Err(e) if sys::out_of_resources(e) => return Err(Asked::NoResources(e)),
        Err(_) => return Err(Asked::NotGcb),
    };
    let tmp = if standby {
        None
    } else {
        match spare::take(*local.ip(), family) {
            Ok(t) => Some(t),
            Err(e) if sys::out_of_resources(e) => return Err(Asked::NoResources(e)),
            Err(_) => None,
        }
    };
    let connector = tmp.as_ref().map_or(SocketAddrV4::new(*local.ip(), 0), |t| t.at);
    let request_id = sys::random_u64();
    let early = if standby { None } else { open_early(dest, family, cmd, request_id) };
    let mut features = super::punch::offered();
    if standby {
        features = features.union(Features::STANDBY);
    }
    if early.is_some() {
        features = features.union(Features::PUNCH_EARLY);
    }
    let msg = Message::Connect {
        proto: Proto::Tcp,
        target: dest,
        connector,
        connector_id: None,
        realm: config::get().realm.clone(),
        features,
        asked_from_port: local.port(),
    };
    let policy = if ours { RetryPolicy::default() } else { RetryPolicy::probe() };
    Ok(Asking { probe, cmd, tmp, msg, policy, ours, early, request_id })
}

/// The rendezvous connection opened beside the `Connect` that goes as
/// `request_id` (`punch::early`): only to one of our own brokers (a proxy
/// address), when this process punches, and when the destination's last
/// connect was punched this way or not tried. A failure costs nothing: the
/// `Connect` goes without it.
fn open_early(dest: SocketAddrV4, family: Family, cmd: SocketAddrV4, request_id: u64) -> Option<Early> {
    let offered = super::punch::offered().contains(Features::PUNCH_TCP);
    if !offered || our_broker(*dest.ip()).is_none() {
        return None;
    }
    if super::state::with(|reg| reg.not_early.skips(dest, Instant::now())) {
        return None;
    }
    match Early::open(family, cmd, request_id) {
        Ok(e) => Some(e),
        Err(e) => {
            log!(Debug, "connect to {dest}: no early rendezvous: {}", std::io::Error::from_raw_os_error(e));
            None
        }
    }
}

/// What the exchange `asked` came to.
pub(crate) fn answered(asked: Asking, got: Result<Message, crate::client::exchange::NoAnswer>, dest: SocketAddrV4) -> Asked {
    let Asking { probe, cmd, tmp, ours, early, .. } = asked;
    if early.is_some() {
        let punched_early = matches!(&got, Ok(Message::ConnectDecision(Decision::PunchTcp { early: true, .. })));
        super::state::with(|reg| reg.not_early.note(dest, punched_early, Instant::now()));
    }
    match got {
        Ok(reply) => match mgmt::decision_of(reply) {
            Ok(d @ Decision::PunchTcp { early: true, .. }) => Asked::Decision(d, tmp, Some(probe), early),
            Ok(d) => Asked::Decision(d, tmp, Some(probe), None),
            Err(Some(ErrorCode::NotRegistered)) => Asked::Decision(Decision::NotRegistered, tmp, None, None),
            Err(Some(code)) => Asked::Refused(code),
            Err(None) => Asked::NotGcb,
        },
        Err(why) => {
            log!(Debug, "Connect for {dest} at {cmd}: {why:?}");
            match why {
                crate::client::exchange::NoAnswer::Timeout if ours => Asked::Silent,
                crate::client::exchange::NoAnswer::Io(e) if sys::out_of_resources(e) => Asked::NoResources(e),
                _ => Asked::NotGcb,
            }
        }
    }
}

/// One step of the responder's exchange `ex` for `asking`, woken by its
/// socket (`readable`) or its timer: what the broker's answer came to, or
/// the exchange back to wait on.
pub(crate) fn step(asking: Box<Asking>, mut ex: crate::client::exchange::Exchange, readable: bool, now: Instant, dest: SocketAddrV4) -> Result<Asked, (Box<Asking>, crate::client::exchange::Exchange)> {
    let fd = asking.probe.raw();
    let got = if readable { ex.on_readable(fd, &mgmt::CODEC) } else { ex.on_timeout(fd, now).map(Err) };
    match got {
        Some(got) => Ok(answered(*asking, got, dest)),
        None => Err((asking, ex)),
    }
}

/// Asks the broker at `dest`'s IP, waiting for the answer (a blocking connect).
pub(crate) fn ask(dest: SocketAddrV4, family: Family) -> Asked {
    match prepare_ask(dest, family) {
        Ok(a) => {
            let got = mgmt::exchange_as(a.probe.raw(), a.cmd, a.policy, &a.msg, a.request_id);
            answered(a, got, dest)
        }
        Err(asked) => asked,
    }
}

/// A decision this shim did not offer to follow (`PunchUdp` for a TCP
/// connect, or a punch with `GCB_PUNCH=0`): a broker that breaks the
/// protocol, so EPROTO.
pub(crate) fn unoffered(d: &Decision) -> Errno {
    log!(Warn, "the broker decided {d:?}, which this shim did not offer");
    libc::EPROTO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_special_destinations_are_not_asked() {
        for d in ["127.0.0.1:80", "0.0.0.0:80", "255.255.255.255:80", "224.0.0.1:80", "192.0.2.1:0"] {
            assert!(!worth_asking(d.parse().unwrap()), "{d}");
        }
        let ip = "198.51.100.77".parse().unwrap();
        assert!(worth_asking(SocketAddrV4::new(ip, 80)));
        super::super::negcache::local().insert(ip, crate::client::sys::now_secs(), 60);
        assert!(!worth_asking(SocketAddrV4::new(ip, 80)), "negative cache hit");
        assert_eq!(command_port(ip), COMMAND_PORT);
    }
}
