//! A daemon's UDP command port: binding it into a new event loop, and
//! draining it, with how many datagrams one loop turn reads and what a
//! receive error means. Each daemon decides what a datagram is; both read
//! their port the same way, so a flood on it is bounded per turn and an
//! error from one peer never stops the port.

use std::io;
use std::net::SocketAddr;

use mio::net::UdpSocket;
use mio::{Interest, Poll};

use crate::signals::Signals;
use crate::tokens::{COMMAND, SIGNALS};

/// Binds the command port at `listen`; also returns the address as bound
/// (port 0 asks the kernel for one). Errors are one line.
pub fn bind(listen: SocketAddr) -> Result<(UdpSocket, SocketAddr), String> {
    bind_with(listen, false)
}

/// [`bind`], with `freebind`: also when this host does not hold the
/// address yet (see `freebind`).
pub fn bind_with(listen: SocketAddr, freebind: bool) -> Result<(UdpSocket, SocketAddr), String> {
    let socket = match freebind {
        false => UdpSocket::bind(listen),
        true => crate::freebind::udp(listen).map(UdpSocket::from_std),
    }
    .map_err(|e| format!("cannot bind the command port udp {listen}: {e}"))?;
    let bound = socket
        .local_addr()
        .map_err(|e| format!("command socket: {e}"))?;
    Ok((socket, bound))
}

/// A new event loop watching the signals and the command port under their
/// fixed tokens.
pub fn event_loop(signals: &Signals, command: &mut UdpSocket) -> Result<Poll, String> {
    let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
    signals
        .register(poll.registry(), SIGNALS)
        .map_err(|e| format!("cannot watch signals: {e}"))?;
    poll.registry()
        .register(command, COMMAND, Interest::READABLE)
        .map_err(|e| format!("cannot watch the command socket: {e}"))?;
    Ok(poll)
}

/// A command port as the drain sees it. `recv` reads the next datagram
/// into the daemon's own buffer; `on_datagram` handles it from there.
pub trait CommandPort {
    fn recv(&mut self) -> io::Result<(usize, SocketAddr)>;
    fn on_datagram(&mut self, len: usize, from: SocketAddr);
    /// A per-datagram error (e.g. an ICMP error queued on the socket):
    /// the kernel reports it once and clears it, so reading goes on.
    fn on_receive_error(&mut self, e: io::Error);
}

/// Reads up to `budget` datagrams, handing each to `on_datagram`. Returns
/// true if it stopped at the budget with datagrams possibly left: the
/// caller must drain again next turn without waiting for a new event (the
/// port's readiness is edge-triggered).
pub fn drain(port: &mut impl CommandPort, budget: usize) -> bool {
    for _ in 0..budget {
        match port.recv() {
            Ok((len, from)) => port.on_datagram(len, from),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => port.on_receive_error(e),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    struct Script {
        input: VecDeque<io::Result<(usize, SocketAddr)>>,
        handled: Vec<usize>,
        errors: usize,
    }

    impl CommandPort for Script {
        fn recv(&mut self) -> io::Result<(usize, SocketAddr)> {
            self.input
                .pop_front()
                .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))
        }
        fn on_datagram(&mut self, len: usize, _: SocketAddr) {
            self.handled.push(len);
        }
        fn on_receive_error(&mut self, _: io::Error) {
            self.errors += 1;
        }
    }

    fn script(input: Vec<io::Result<(usize, SocketAddr)>>) -> Script {
        Script {
            input: input.into(),
            handled: Vec::new(),
            errors: 0,
        }
    }

    #[test]
    fn errors_do_not_stop_the_drain_and_the_budget_does() {
        let from: SocketAddr = "192.0.2.1:7".parse().unwrap();
        let mut s = script(vec![
            Ok((1, from)),
            Err(io::ErrorKind::ConnectionRefused.into()),
            Err(io::ErrorKind::Interrupted.into()),
            Ok((2, from)),
        ]);
        assert!(!drain(&mut s, 10), "emptied");
        assert_eq!((s.handled.as_slice(), s.errors), (&[1, 2][..], 1));

        let mut s = script((0..5).map(|n| Ok((n, from))).collect());
        assert!(drain(&mut s, 3), "stopped at the budget");
        assert_eq!(s.handled, [0, 1, 2]);
        assert!(!drain(&mut s, 3));
        assert_eq!(s.handled, [0, 1, 2, 3, 4]);
    }
}
