//! wan-delay: the latency of the test bed's WAN (`scripts/netns up --wan-hop
//! --wan-delay-us N`). It holds every packet the kernel routes into a TUN
//! device for a fixed time, then writes it back into the device, so the
//! kernel routes it on as if it had just arrived there.
//!
//! This kernel is built without the netem qdisc (`CONFIG_NET_SCH_NETEM` is
//! off), the usual way to add delay, so the delay is made in user space, in
//! the bed's `wan` router, where every packet between realm B's gateway and
//! the rest of the public network passes. The delay is constant, so packets
//! leave in the order they came (a FIFO, no reordering); the queue is
//! bounded, and a packet that finds it full is dropped and counted, as a
//! router's full buffer drops.
//!
//! ```text
//! wan-delay --tun NAME --delay-us N [--max-packets N] [--netns NAME]
//! ```
//!
//! It exits when its namespace is gone (`--netns`: `/run/netns/NAME` no longer
//! exists; checked every second), when the device goes away, or on SIGTERM,
//! which `scripts/netns down` sends by PID. It prints `READY` once it holds
//! the device, and one line of counts when it ends.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The largest packet a TUN device without offloads hands over (its MTU is
/// at most 64 KiB).
const MAX_PACKET: usize = 65536;
/// Packets read per wake-up at most, so a steady inflow cannot hold back the
/// ones that are due.
const READS_PER_WAKE: usize = 64;

struct Args {
    tun: String,
    delay: Duration,
    max_packets: usize,
    netns: Option<String>,
}

const USAGE: &str = "usage: wan-delay --tun NAME --delay-us N [--max-packets N] [--netns NAME]";

fn parse_args() -> Result<Args, String> {
    let words: Vec<String> = std::env::args().skip(1).collect();
    if words.iter().any(|w| w == "--help" || w == "-h") {
        println!("{USAGE}");
        println!("Holds every packet routed into TUN device NAME for N microseconds, then writes it back");
        println!("into the device (the test bed's WAN latency: scripts/netns up --wan-hop --wan-delay-us N).");
        println!("  --max-packets N  packets held at most; more are dropped and counted (default 10000)");
        println!("  --netns NAME     exit once /run/netns/NAME is gone");
        std::process::exit(0);
    }
    let value = |flag: &str| -> Option<String> {
        let i = words.iter().position(|w| w == flag)?;
        words.get(i + 1).cloned()
    };
    for w in words.iter().filter(|w| w.starts_with("--")) {
        if !["--tun", "--delay-us", "--max-packets", "--netns"].contains(&w.as_str()) {
            return Err(format!("unknown flag {w}"));
        }
    }
    let tun = value("--tun").ok_or("--tun NAME is required")?;
    if tun.is_empty() || tun.len() >= libc::IFNAMSIZ {
        return Err(format!("--tun: bad device name {tun:?}"));
    }
    let delay_us: u64 = value("--delay-us")
        .ok_or("--delay-us N is required")?
        .parse()
        .map_err(|_| "--delay-us: not a number of microseconds")?;
    if delay_us > 10_000_000 {
        return Err("--delay-us: at most 10 s".into());
    }
    let max_packets = match value("--max-packets") {
        Some(v) => v.parse().map_err(|_| "--max-packets: not a number")?,
        None => 10_000,
    };
    Ok(Args { tun, delay: Duration::from_micros(delay_us), max_packets, netns: value("--netns") })
}

/// Attaches to the TUN device `name` (made by `ip tuntap add`, or made now),
/// non-blocking, packets without the 4-byte packet-information header.
fn open_tun(name: &str) -> std::io::Result<OwnedFd> {
    // SAFETY: a constant path; the fd is owned below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Packets held, in the order they arrived, each with the time it is due.
struct Held {
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// Buffers of packets sent, for the next ones to arrive.
    spare: Vec<Vec<u8>>,
    /// Where each packet is read; only its bytes are queued.
    scratch: Vec<u8>,
    delay: Duration,
    max: usize,
    passed: u64,
    dropped: u64,
}

impl Held {
    fn new(delay: Duration, max: usize) -> Held {
        Held { queue: VecDeque::new(), spare: Vec::new(), scratch: vec![0; MAX_PACKET], delay, max, passed: 0, dropped: 0 }
    }

    /// Reads the packets waiting on `fd`, up to [`READS_PER_WAKE`], each due
    /// its delay after it was read; false if the device is gone.
    fn take_in(&mut self, fd: i32) -> bool {
        for _ in 0..READS_PER_WAKE {
            // SAFETY: a live buffer of scratch.len() bytes.
            let n = unsafe { libc::read(fd, self.scratch.as_mut_ptr().cast(), self.scratch.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR));
            }
            if n == 0 {
                return false;
            }
            if self.queue.len() >= self.max {
                self.dropped += 1;
                continue;
            }
            let mut buf = self.spare.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(&self.scratch[..n as usize]);
            self.queue.push_back((Instant::now() + self.delay, buf));
        }
        true
    }

    /// Writes back every packet due by `now`.
    fn send_due(&mut self, fd: i32, now: Instant) {
        while self.queue.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, buf)) = self.queue.pop_front() else { break };
            // SAFETY: a live buffer of buf.len() bytes.
            let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
            if n == buf.len() as isize {
                self.passed += 1;
            } else {
                self.dropped += 1;
            }
            // Kept for reuse only if MTU-sized: a rare large one is let go.
            if self.spare.len() < 64 && buf.capacity() <= 2048 {
                self.spare.push(buf);
            }
        }
    }
}

fn run(args: Args) -> Result<(u64, u64), String> {
    let tun = open_tun(&args.tun).map_err(|e| format!("cannot attach to TUN device {}: {e}", args.tun))?;
    // Wake-ups on time to the microsecond, not the default 50 µs slack.
    // SAFETY: a plain prctl on this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let netns_file = args.netns.as_ref().map(|n| std::path::PathBuf::from(format!("/run/netns/{n}")));
    let mut held = Held::new(args.delay, args.max_packets);
    let fd = tun.as_raw_fd();
    println!("READY");
    let mut next_check = Instant::now() + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if now >= next_check {
            if netns_file.as_ref().is_some_and(|f| !f.exists()) {
                return Ok((held.passed, held.dropped));
            }
            next_check = now + Duration::from_secs(1);
        }
        let until = held.queue.front().map_or(next_check, |(due, _)| (*due).min(next_check));
        let wait = until.saturating_duration_since(now);
        let ts = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as libc::c_long };
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd and a timespec we own.
        let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(format!("ppoll: {}", std::io::Error::last_os_error()));
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Ok((held.passed, held.dropped));
        }
        if pfd.revents & libc::POLLIN != 0 && !held.take_in(fd) {
            return Ok((held.passed, held.dropped));
        }
        held.send_due(fd, Instant::now());
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wan-delay: {e}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok((passed, dropped)) => {
            println!("ENDED passed={passed} dropped={dropped}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wan-delay: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram socket pair stands in for the device: each write is one
    /// packet "routed in", each read one packet back.
    fn packet_pair() -> (i32, i32) {
        let mut fds = [0; 2];
        // SAFETY: a socket pair of our own, non-blocking.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK, 0, fds.as_mut_ptr()) };
        assert_eq!(r, 0);
        (fds[0], fds[1])
    }

    fn put(fd: i32, bytes: &[u8]) {
        // SAFETY: a live buffer.
        assert_eq!(unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }, bytes.len() as isize);
    }

    fn get(fd: i32) -> Option<Vec<u8>> {
        let mut out = [0u8; 64];
        // SAFETY: a live buffer.
        let n = unsafe { libc::read(fd, out.as_mut_ptr().cast(), out.len()) };
        (n > 0).then(|| out[..n as usize].to_vec())
    }

    fn close(fds: (i32, i32)) {
        // SAFETY: our fds.
        unsafe {
            libc::close(fds.0);
            libc::close(fds.1);
        }
    }

    #[test]
    fn packets_leave_whole_in_arrival_order_each_its_delay_after_it_came() {
        let (device, router) = packet_pair();
        let delay = Duration::from_millis(50);
        let mut h = Held::new(delay, 10);
        let before = Instant::now();
        put(router, b"first");
        put(router, b"second");
        assert!(h.take_in(device));
        std::thread::sleep(Duration::from_millis(5));
        put(router, b"third");
        assert!(h.take_in(device));
        let after = Instant::now();
        assert_eq!(h.queue.len(), 3);
        for (due, _) in &h.queue {
            assert!(*due >= before + delay && *due <= after + delay, "each due its delay after it was read");
        }
        assert!(h.queue[2].0 >= h.queue[1].0 + Duration::from_millis(5), "the later packet is due later");
        // Nothing is due before the first packet's time.
        h.send_due(device, before + delay - Duration::from_millis(1));
        assert_eq!((h.queue.len(), h.passed), (3, 0));
        assert_eq!(get(router), None);
        // Once all are due they leave whole and in order.
        h.send_due(device, after + delay);
        assert_eq!((h.queue.len(), h.passed, h.dropped), (0, 3, 0));
        assert_eq!(get(router).as_deref(), Some(&b"first"[..]));
        assert_eq!(get(router).as_deref(), Some(&b"second"[..]));
        assert_eq!(get(router).as_deref(), Some(&b"third"[..]));
        close((device, router));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (device, router) = packet_pair();
        let mut h = Held::new(Duration::from_millis(1), 1);
        put(router, b"kept");
        put(router, b"dropped");
        assert!(h.take_in(device));
        assert_eq!((h.queue.len(), h.dropped), (1, 1));
        assert_eq!(h.queue[0].1, b"kept");
        close((device, router));
    }

    #[test]
    fn one_wake_up_reads_a_bounded_number_of_packets() {
        let (device, router) = packet_pair();
        let mut h = Held::new(Duration::from_millis(1), 1000);
        for i in 0..READS_PER_WAKE + 3 {
            put(router, &[i as u8]);
        }
        assert!(h.take_in(device));
        assert_eq!(h.queue.len(), READS_PER_WAKE);
        assert!(h.take_in(device));
        assert_eq!(h.queue.len(), READS_PER_WAKE + 3);
        close((device, router));
    }
}
