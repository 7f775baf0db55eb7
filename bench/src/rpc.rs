//! Many requests over UDP at once: the load generator for the broker's
//! registrations and dpfd's forwards.
//!
//! Each socket keeps up to `window` requests outstanding, retransmits a
//! request whose reply is late (the daemons answer duplicates from their reply
//! caches, docs/design.md, "Requests over UDP"), and gives up after `max_tries` or the
//! overall deadline. Replies are matched by the request id in the shared
//! 15-byte header, so the engine needs no knowledge of the message kinds.

use proto::header::Header;
use proto::Family;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// One request: which socket sends it, its id, and its encoded bytes.
pub struct Req {
    pub sock: usize,
    pub id: u64,
    pub bytes: Vec<u8>,
}

pub struct Limits {
    pub window: usize,
    pub rto: Duration,
    pub max_tries: u32,
    pub deadline: Duration,
}

/// Replies in request order (None: no reply), and the wall time taken.
pub struct Outcome {
    pub replies: Vec<Option<Vec<u8>>>,
    pub secs: f64,
}

/// `n` UDP sockets connected to `server`, non-blocking.
pub fn sockets(server: SocketAddr, n: usize) -> Result<Vec<UdpSocket>, String> {
    (0..n)
        .map(|_| {
            let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
            s.connect(server)
                .map_err(|e| format!("connect {server}: {e}"))?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(s)
        })
        .collect()
}

struct InFlight {
    idx: usize,
    sent: Instant,
    tries: u32,
}

pub fn pipeline(socks: &[UdpSocket], family: Family, reqs: &[Req], lim: &Limits) -> Outcome {
    let t0 = Instant::now();
    let mut replies: Vec<Option<Vec<u8>>> = vec![None; reqs.len()];
    // Per socket: the requests still to send, in order, and those in flight.
    let mut queue: Vec<std::collections::VecDeque<usize>> = vec![Default::default(); socks.len()];
    for (i, r) in reqs.iter().enumerate() {
        if let Some(q) = queue.get_mut(r.sock) {
            q.push_back(i);
        }
    }
    let mut flight: Vec<HashMap<u64, InFlight>> =
        (0..socks.len()).map(|_| HashMap::new()).collect();
    let mut done = reqs.len() - queue.iter().map(|q| q.len()).sum::<usize>();
    let mut buf = vec![0u8; 65536];

    while done < reqs.len() && t0.elapsed() < lim.deadline && !crate::ctx::stopped() {
        let now = Instant::now();
        for (s, sock) in socks.iter().enumerate() {
            // Retransmit or abandon late requests.
            let mut dead = Vec::new();
            for (id, f) in flight[s].iter_mut() {
                if now.duration_since(f.sent) >= lim.rto {
                    if f.tries >= lim.max_tries {
                        dead.push(*id);
                    } else {
                        let _ = sock.send(&reqs[f.idx].bytes);
                        f.sent = now;
                        f.tries += 1;
                    }
                }
            }
            for id in dead {
                flight[s].remove(&id);
                done += 1;
            }
            // Fill the window.
            while flight[s].len() < lim.window {
                let Some(i) = queue[s].pop_front() else { break };
                match sock.send(&reqs[i].bytes) {
                    Ok(_) => {
                        flight[s].insert(
                            reqs[i].id,
                            InFlight {
                                idx: i,
                                sent: now,
                                tries: 1,
                            },
                        );
                    }
                    Err(_) => {
                        // A full socket buffer: try again on the next turn.
                        queue[s].push_front(i);
                        break;
                    }
                }
            }
        }
        wait_readable(socks, Duration::from_millis(5));
        for (s, sock) in socks.iter().enumerate() {
            // Bounded per turn so one busy socket cannot starve the rest.
            for _ in 0..1024 {
                let n = match sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(_) => break,
                };
                let Ok((h, _)) = Header::parse(&buf[..n], family) else {
                    continue;
                };
                if let Some(f) = flight[s].remove(&h.request_id) {
                    replies[f.idx] = Some(buf[..n].to_vec());
                    done += 1;
                }
            }
        }
    }
    Outcome {
        replies,
        secs: t0.elapsed().as_secs_f64(),
    }
}

fn wait_readable(socks: &[UdpSocket], timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: fds is a valid array of pollfd of the given length.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        );
    }
}

/// A request-id base distinct per process, so ids from a restarted driver
/// never collide with replies a daemon still has cached for the old one.
pub fn id_base() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (u64::from(std::process::id()) << 40) ^ (nanos & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::header::{Flags, HEADER_LEN};

    /// An echo "daemon" that answers every request with a response header,
    /// ignoring the first copy of every third request to force retransmits.
    #[test]
    fn pipeline_matches_replies_and_retransmits() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                let (h, _) = Header::parse(&buf[..n], Family::Dpf).unwrap();
                if h.request_id % 3 == 0 && seen.insert(h.request_id) {
                    continue;
                }
                let r = Header::new(Family::Dpf, 0x82, Flags::RESPONSE, h.request_id);
                let _ = server.send_to(&r.to_bytes(), from);
            }
        });
        let socks = sockets(addr, 3).unwrap();
        let reqs: Vec<Req> = (0..300u64)
            .map(|i| Req {
                sock: (i % 3) as usize,
                id: i,
                bytes: Header::new(Family::Dpf, 0x02, Flags::empty(), i)
                    .to_bytes()
                    .to_vec(),
            })
            .collect();
        let lim = Limits {
            window: 8,
            rto: Duration::from_millis(20),
            max_tries: 5,
            deadline: Duration::from_secs(10),
        };
        let out = pipeline(&socks, Family::Dpf, &reqs, &lim);
        assert!(out
            .replies
            .iter()
            .all(|r| r.as_ref().is_some_and(|b| b.len() == HEADER_LEN)));
    }
}
