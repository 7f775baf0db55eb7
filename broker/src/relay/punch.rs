//! A hole punch's rendezvous connections in the loop (docs/hole-punching.md):
//! the core (`engine::punch`) decides, this reads and writes. Each side's
//! connection stays parked; while the core awaits its report it is watched,
//! and read never a byte past the one 8-byte `PunchReport`, so whatever
//! follows stays for the relay. The end of the stream, an error, or bytes
//! that are no report before it are the side gone.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Token;
use proto::gcb::punch::{PunchReport, PunchVerdict};
use proto::gcb::{ErrorCode, Frame};
use tracing::debug;

use crate::daemon::Daemon;
use crate::engine::StreamId;
use crate::io::Dynamic;

/// The connection's smoothed round-trip time (`TCP_INFO`), which the
/// meeting uses to line the two sides' SYNs up. Right after the handshake
/// it is the handshake's own round trip.
pub(crate) fn smoothed_rtt(stream: &TcpStream) -> Option<Duration> {
    use nix::libc;
    // SAFETY: an all-zero tcp_info is a valid value of the plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a live
    // struct of that size, on a socket this process owns.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0 && info.tcpi_rtt > 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// Tells a punch's side it will not be paired, then closes its connection.
pub(crate) fn reject_punch(mut stream: TcpStream, code: ErrorCode) {
    let _ = io::Write::write(&mut stream, &PunchVerdict::Rejected { code }.to_bytes());
}

/// What reading a watched connection came to.
enum Read1 {
    Wait,
    Report(PunchReport),
    Gone(String),
}

impl Daemon {
    /// A watched punch connection is readable.
    pub(crate) fn on_punch_readable(&mut self, token: Token) {
        let Some(Dynamic::Punch { stream: id, .. }) = self.io.slab.get(token) else {
            return;
        };
        let id: StreamId = *id;
        let outcome = self.read_report(token, id);
        let now = Instant::now();
        match outcome {
            Read1::Wait => return,
            Read1::Report(report) => {
                // A side reports once; what follows is not read here.
                self.io.unwatch_parked(id);
                let rtt = self.io.parked_mut(id).and_then(|s| smoothed_rtt(s));
                self.engine.on_punch_report(id, report, rtt, now);
            }
            Read1::Gone(why) => {
                debug!("punch: a rendezvous connection ended: {why}");
                self.io.unwatch_parked(id);
                self.engine.on_punch_gone(id, now);
            }
        }
        self.carry_out();
    }

    fn read_report(&mut self, token: Token, id: StreamId) -> Read1 {
        let mut buf = [0u8; PunchReport::LEN];
        loop {
            let Some(Dynamic::Punch { reader, .. }) = self.io.slab.get_mut(token) else {
                return Read1::Wait;
            };
            let want = reader.missing();
            let Some(stream) = self.io.parked_mut(id) else {
                return Read1::Gone("not parked".into());
            };
            let got = stream.read(&mut buf[..want]);
            let Some(Dynamic::Punch { reader, .. }) = self.io.slab.get_mut(token) else {
                return Read1::Wait;
            };
            match got {
                Ok(0) => return Read1::Gone("closed".into()),
                Ok(n) => match reader.feed(&buf[..n]) {
                    Ok((_, Some(report))) => return Read1::Report(report),
                    Ok((_, None)) => {}
                    Err(e) => return Read1::Gone(format!("not a report: {e}")),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read1::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Read1::Gone(e.to_string()),
            }
        }
    }
}
