//! What both sides of `standby` do with a standby connection: how long they
//! keep it, whether it is still alive (and keepalives that find out while it
//! waits), and reading the 8-byte frames they exchange on it (the claim and
//! its answer).

use std::time::Duration;

use libc::c_int;

use crate::gcb::registry::standby::Keepalive;

/// How long the connector keeps an unclaimed standby.
pub const KEEP_FOR: Duration = Duration::from_secs(30);
/// How long the listener holds one: a bound for a connector that never
/// closes it (its process stopped), far above [`KEEP_FOR`].
pub const HOLD_FOR: Duration = Duration::from_secs(120);
/// A claim that the listener's host has not acknowledged after this long
/// went down a path that died (a gateway restarted and lost its state): the
/// connect is brokered instead. Far above any round trip with its
/// retransmission, and short of what a program would call a hang.
pub const LOST_AFTER: Duration = Duration::from_secs(1);

/// Keepalive probes on a waiting standby: idle 10 s, then one every 2 s, 3
/// unanswered and the kernel ends the connection, which the side's
/// responder sees and drops it. A path that died is found in about 16 s,
/// within the connector's [`KEEP_FOR`].
const PROBES: [(libc::c_int, libc::c_int, libc::c_int); 4] = [
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 2),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
];

/// Turns keepalive probes on for a waiting standby; what it had before.
pub fn watch_path(fd: c_int) -> Keepalive {
    let mut before = [None; 4];
    for (slot, &(level, name, value)) in before.iter_mut().zip(PROBES.iter()) {
        *slot = crate::client::sys::get_int_opt(fd, level, name).ok();
        let _ = crate::client::sys::set_int_opt(fd, level, name, value);
    }
    Keepalive(before)
}

/// Gives a standby its keepalive settings back before a program gets it.
pub fn unwatch_path(fd: c_int, before: Keepalive) {
    for (value, &(level, name, _)) in before.0.iter().zip(PROBES.iter()) {
        if let Some(v) = value {
            let _ = crate::client::sys::set_int_opt(fd, level, name, *v);
        }
    }
}

/// Whether bytes sent on `fd` still wait for the peer's acknowledgement.
pub fn unacked(fd: c_int) -> bool {
    let mut queued: c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one int.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) };
    r == 0 && queued > 0
}

/// What is next to read on a standby connection, without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Nothing: open both ways, as it was left.
    Nothing,
    Bytes,
    /// The end of the stream, or an error (a reset).
    End,
}

fn peek(fd: c_int) -> Next {
    let mut byte = 0u8;
    // SAFETY: a live one-byte buffer.
    let n = unsafe { crate::real::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        1.. => Next::Bytes,
        n if n < 0 && matches!(crate::guard::errno(), libc::EAGAIN | libc::EINTR) => Next::Nothing,
        _ => Next::End,
    }
}

/// Whether connection `fd` is still as it was left: open both ways with
/// nothing to read. The listener's end says nothing after the punch's hello,
/// and the connector's says nothing before its claim, so anything readable is
/// the end of the stream, a reset, or a peer breaking the protocol.
pub(super) fn quiet(fd: c_int) -> bool {
    peek(fd) == Next::Nothing
}

/// Whether the peer has already closed or reset connection `fd`: the end of
/// the stream (or an error) is next to read. Bytes waiting are not an end.
pub(crate) fn ended(fd: c_int) -> bool {
    peek(fd) == Next::End
}

/// What the first bytes waiting on a standby say, against the frame expected.
pub(crate) enum Said {
    /// The frame, now taken from the socket: what follows is the program's.
    Frame,
    /// Nothing yet.
    NotYet,
    /// The end of the stream, an error, other bytes, or part of the frame.
    Other,
}

/// Reads `frame` from `fd` if it is there whole, never past it. Each side
/// sends its frame with one `send` on a connection with nothing else in
/// flight, so it arrives in one segment: part of one is a peer that broke
/// off or breaks the protocol, not one to wait for (polled, it would keep
/// the responder spinning).
pub(crate) fn expect(fd: c_int, frame: &[u8; 8]) -> Said {
    let mut buf = [0u8; 8];
    // SAFETY: a live buffer of the given length.
    let n = unsafe { crate::real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 && matches!(crate::guard::errno(), libc::EAGAIN | libc::EINTR) {
        return Said::NotYet;
    }
    if n as usize != frame.len() || buf != *frame {
        return Said::Other;
    }
    // SAFETY: as above; takes the bytes peeked.
    unsafe { crate::real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    Said::Frame
}

/// Whether `fd` holds a whole claim with the end of the stream behind it.
#[cfg(test)]
pub(super) fn ended_after_claim_for_tests(fd: c_int) -> bool {
    let mut buf = [0u8; 9];
    // SAFETY: a live buffer of the given length.
    let n = unsafe { crate::real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    // A peek of 9 stops at 8 either way; the FIN is seen through poll's POLLRDHUP.
    let mut p = [libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 }];
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(p.as_mut_ptr(), 1, 0) };
    n == 8 && r == 1 && p[0].revents & libc::POLLRDHUP != 0
}
