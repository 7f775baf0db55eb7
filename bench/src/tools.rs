//! Small helper programs the bench runs inside the test bed as subcommands of
//! `gcb-bench`, so LD_PRELOAD and namespaces apply to them like to any program:
//!
//! * `pingpong`: round trips on an unmanaged socket (the shim's fast path);
//! * `sink` / `source`: one verified bulk TCP stream, for relay throughput;
//! * `hold`: many concurrent TCP connections to an echo server, every byte
//!   verified, held open until told to close.
//!
//! Each prints one result line in `KEY k=v ...` form and bounds every wait.

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The bulk stream is the byte sequence `offset % 251`; a chunk that is a
/// multiple of 251 bytes long makes every chunk identical, so the sender
/// never computes and the sink verifies with one memcmp per read.
const PERIOD: usize = 251;
const CHUNK: usize = PERIOD * 1024;
/// Bound on the connections one sink serves, so its loop ends.
const SINK_MAX_CONNS: usize = 10_000;
const IO_TIMEOUT: Duration = Duration::from_secs(60);

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % PERIOD) as u8).collect()
}

/// `pingpong --messages N [--transport tcp|unix]`: N round trips of an 8-byte
/// message to an echo thread, over loopback TCP or a socketpair.
pub fn pingpong(messages: u64, transport: &str) -> Result<(), String> {
    pin_to_one_cpu();
    let (mut a, b): (Box<dyn ReadWrite>, Box<dyn ReadWrite + Send>) = match transport {
        "tcp" => {
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
            let a = TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?)
                .map_err(|e| format!("connect: {e}"))?;
            let (b, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
            // Without NODELAY, Nagle and delayed ACKs would dominate the timing.
            a.set_nodelay(true).map_err(|e| e.to_string())?;
            b.set_nodelay(true).map_err(|e| e.to_string())?;
            (Box::new(a), Box::new(b))
        }
        "unix" => {
            let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
            (Box::new(a), Box::new(b))
        }
        t => return Err(format!("unknown --transport {t}")),
    };
    let echo = std::thread::spawn(move || {
        let mut b = b;
        let mut buf = [0u8; 8];
        for _ in 0..messages {
            if b.read_exact(&mut buf).is_err() || b.write_all(&buf).is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 8];
    let t0 = Instant::now();
    for i in 0..messages {
        a.write_all(&i.to_le_bytes())
            .map_err(|e| format!("write: {e}"))?;
        a.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
        if u64::from_le_bytes(buf) != i {
            return Err(format!("echo mismatch at message {i}"));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = echo.join();
    println!(
        "PINGPONG transport={transport} messages={messages} secs={secs:.6} ns_per_rt={:.1}",
        secs * 1e9 / messages.max(1) as f64
    );
    Ok(())
}

/// Both threads on one CPU: a round trip is then two context switches, not
/// cross-CPU wake-ups whose cost swings with whatever else the machine runs,
/// which would drown a 2% difference. The last CPU, as builds favour CPU 0.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t filled with the libc helpers, for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return;
        }
        let Some(last) = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|c| libc::CPU_ISSET(*c, &set))
        else {
            return;
        };
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(last, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// `sink --port P`: accept connections one after the other, read each to its
/// end checking the pattern, and answer 16 bytes: the byte count and 1 if
/// every byte matched (else 0).
pub fn sink(port: u16) -> Result<(), String> {
    let l = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind: {e}"))?;
    // getsockname: under the shim this is the proxy or public address.
    println!("LISTEN tcp {}", l.local_addr().map_err(|e| e.to_string())?);
    let _ = std::io::stdout().flush();
    let reference = pattern(CHUNK + PERIOD);
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..SINK_MAX_CONNS {
        let (mut s, _) = match l.accept() {
            Ok(x) => x,
            Err(_) => continue,
        };
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let (mut total, mut good) = (0u64, true);
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let off = (total % PERIOD as u64) as usize;
                    // Compare in pieces no longer than the reference window.
                    let mut done = 0;
                    while done < n {
                        let k = (n - done).min(CHUNK);
                        let o = (off + done) % PERIOD;
                        good &= buf[done..done + k] == reference[o..o + k];
                        done += k;
                    }
                    total += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    good = false;
                    break;
                }
            }
        }
        let mut ack = [0u8; 16];
        ack[..8].copy_from_slice(&total.to_be_bytes());
        ack[8..].copy_from_slice(&u64::from(good).to_be_bytes());
        let _ = s.write_all(&ack);
    }
    Ok(())
}

/// `source --connect IP:PORT --bytes N`: send N pattern bytes, half-close, and
/// wait for the sink's count. The time runs from the established connection
/// to the count's arrival, so it covers delivery of the last byte.
pub fn source(addr: SocketAddr, bytes: u64) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let chunk = pattern(CHUNK);
    let t0 = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        s.write_all(&chunk[..k])
            .map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut ack = [0u8; 16];
    s.read_exact(&mut ack)
        .map_err(|e| format!("waiting for the sink's count: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(ack[..8].try_into().unwrap_or_default());
    let good = u64::from_be_bytes(ack[8..].try_into().unwrap_or_default()) == 1 && got == bytes;
    println!(
        "SENT bytes={bytes} received={got} verified={} secs={secs:.6} gbps={:.4}",
        u8::from(good),
        bytes as f64 * 8.0 / secs / 1e9
    );
    if good {
        Ok(())
    } else {
        Err(format!(
            "sink received {got} of {bytes} bytes or saw a wrong byte"
        ))
    }
}

/// Byte `off` of connection `conn`'s payload in `hold`, distinct per
/// connection so crossed relays are caught.
fn hold_byte(conn: usize, off: usize) -> u8 {
    ((off * 7 + conn * 13) % 251) as u8
}

/// `hold --connect IP:PORT --conns M --bytes K`: open M connections, send K
/// bytes on each, read every echo back and verify it, print `HELD`, keep them
/// open until a line (or EOF) arrives on stdin or 10 minutes pass, print `DONE`.
pub fn hold(addr: SocketAddr, conns: usize, bytes: usize) -> Result<(), String> {
    let t0 = Instant::now();
    let mut socks = Vec::with_capacity(conns);
    let mut first_err = None;
    for _ in 0..conns {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
                socks.push(s);
            }
            Err(e) => {
                first_err.get_or_insert(format!("connect: {e}"));
            }
        }
    }
    let connected = socks.len();
    // All writes first: the payload fits the socket buffers, and every relay
    // then carries data at the same time.
    let mut alive = vec![true; connected];
    for (i, s) in socks.iter_mut().enumerate() {
        let payload: Vec<u8> = (0..bytes).map(|o| hold_byte(i, o)).collect();
        if let Err(e) = s.write_all(&payload) {
            alive[i] = false;
            first_err.get_or_insert(format!("write: {e}"));
        }
    }
    let mut verified = 0;
    let mut buf = vec![0u8; bytes];
    for (i, s) in socks.iter_mut().enumerate() {
        if !alive[i] {
            continue;
        }
        match s.read_exact(&mut buf) {
            Ok(()) if buf.iter().enumerate().all(|(o, b)| *b == hold_byte(i, o)) => verified += 1,
            Ok(()) => {
                first_err.get_or_insert(format!("connection {i}: echoed bytes differ"));
            }
            Err(e) => {
                first_err.get_or_insert(format!("connection {i}: read: {e}"));
            }
        }
    }
    println!(
        "HELD conns={conns} connected={connected} verified={verified} secs={:.6} error={}",
        t0.elapsed().as_secs_f64(),
        first_err.unwrap_or_else(|| "none".into()).replace(' ', "_")
    );
    let _ = std::io::stdout().flush();
    wait_stdin_line(Duration::from_secs(600));
    drop(socks);
    println!("DONE");
    Ok(())
}

/// Block until stdin gives a line or EOF, at most `bound` (a thread reads, so
/// the bound holds even if nobody ever writes).
pub fn wait_stdin_line(bound: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(bound);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_and_sink_agree_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        std::thread::spawn(move || sink(port));
        std::thread::sleep(Duration::from_millis(100));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        source(addr, 3 * CHUNK as u64 + 1234).unwrap();
        source(addr, 17).unwrap();
    }

    #[test]
    fn pingpong_runs_on_both_transports() {
        pingpong(1000, "tcp").unwrap();
        pingpong(1000, "unix").unwrap();
    }
}
