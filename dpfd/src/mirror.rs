//! The mirror file: the second of the paper's three representations
//! (section 3.2.2), an append-only log of the mapping table that survives a
//! crash of dpfd or a reboot of the NAT machine.
//!
//! Format: text, one record per line, so an administrator can read it:
//!
//! ```text
//! #dpf-mirror v1
//! add tcp 203.0.113.1:40000 192.0.2.10:7000 5555 17 1712345678 9f1c02aa
//! del tcp 203.0.113.1:40000 192.0.2.10:7000 5555 17 1712345678 0b7d33e1
//! ```
//!
//! Fields: op, proto, public, local, mgmt port, generation, creation time
//! (Unix seconds), and the CRC-32 of everything before the last space.
//! A mapping made through NAT-PMP or PCP (mgmt port 0) has three more
//! fields before the checksum: the protocol (`natpmp` or `pcp`), the lease's
//! expiry (Unix seconds) and the PCP mapping nonce in hex. Lines starting
//! with `#` are comments (the format header).
//!
//! ```text
//! epoch 1712345000 5be1c2d0
//! add udp 203.0.113.1:40001 192.0.2.11:5000 0 18 1712345690 pcp 1712352890 0102030405060708090a0b0c 4c1d9e07
//! ```
//!
//! An `epoch` line records when the state the standard protocols report
//! (their epoch, RFC 6887 §8.5) began; compaction writes it first, and a
//! restart that recovers everything keeps counting from it.
//!
//! Replay: `add` sets the forward at (proto, public), replacing what was
//! there; `del` removes it only if the generation matches. Matching on the
//! generation makes the result independent of how the add and delete
//! records of one group commit interleave (adds are written before the
//! kernel is touched, deletes after), e.g. a delete of generation 5 written
//! after the add of generation 6 at the same public address removes nothing.
//! If a crash left two forwards for one local socket (the add of a move
//! written, the delete of the old address not), the newest generation wins.
//!
//! Damage: a last line without its newline is a torn write and is ignored
//! (and cut off before the next append, so it cannot swallow a new record);
//! a complete line whose checksum or syntax is wrong is counted as corrupt
//! and skipped. Every commit is one `write` and one `fdatasync`; the engine
//! calls it once per event-loop batch (group commit).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddrV4;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use proto::Proto;

use crate::fault;
use crate::table::{Forward, Key, Lease, Via};

pub const HEADER: &str = "#dpf-mirror v1\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub op: Op,
    pub fwd: Forward,
}

/// CRC-32 (IEEE 802.3, as in zlib), table built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, b| {
        CRC_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8)
    })
}

impl Record {
    /// Appends the record's line, newline included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let f = &self.fwd;
        let op = match self.op {
            Op::Add => "add",
            Op::Del => "del",
        };
        let mut body = format!(
            "{op} {} {} {} {} {} {}",
            f.proto, f.public, f.local, f.mgmt_port, f.gen, f.created
        );
        if let Some(l) = f.lease {
            let nonce: String = l.nonce.iter().map(|b| format!("{b:02x}")).collect();
            body += &format!(" {} {} {nonce}", l.via.name(), l.expires);
        }
        checked_line(&body, out);
    }

    /// Parses one line without its newline.
    pub fn parse(line: &[u8]) -> Result<Record, &'static str> {
        let body = checked_body(line)?;
        let mut it = body.split(' ');
        let mut next = || it.next().ok_or("too few fields");
        let op = match next()? {
            "add" => Op::Add,
            "del" => Op::Del,
            _ => return Err("unknown op"),
        };
        let proto = match next()? {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err("unknown proto"),
        };
        let addr = |s: &str| s.parse::<SocketAddrV4>().map_err(|_| "bad address");
        let num = |s: &str| s.parse::<u64>().map_err(|_| "bad number");
        let public = addr(next()?)?;
        let local = addr(next()?)?;
        let mgmt_port = next()?.parse::<u16>().map_err(|_| "bad port")?;
        let gen = num(next()?)?;
        let created = num(next()?)?;
        let lease = match it.next() {
            None => None,
            Some(via) => Some(parse_lease(via, it.next(), it.next())?),
        };
        if it.next().is_some() {
            return Err("too many fields");
        }
        let fwd = Forward {
            proto,
            public,
            local,
            mgmt_port,
            gen,
            created,
            lease,
        };
        Ok(Record { op, fwd })
    }
}

fn parse_lease(
    via: &str,
    expires: Option<&str>,
    nonce: Option<&str>,
) -> Result<Lease, &'static str> {
    let via = match via {
        "pcp" => Via::Pcp,
        "natpmp" => Via::NatPmp,
        _ => return Err("unknown protocol"),
    };
    let expires = expires
        .ok_or("too few fields")?
        .parse::<u64>()
        .map_err(|_| "bad number")?;
    let hex = nonce.ok_or("too few fields")?;
    if hex.len() != 24 || !hex.is_ascii() {
        return Err("bad nonce");
    }
    let mut nonce = [0u8; 12];
    for (i, b) in nonce.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| "bad nonce")?;
    }
    Ok(Lease {
        via,
        nonce,
        expires,
    })
}

/// Appends `body`, a space, its CRC-32 in hex and a newline.
fn checked_line(body: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(format!(" {:08x}\n", crc32(body.as_bytes())).as_bytes());
}

/// The checked body of a line, without its checksum.
fn checked_body(line: &[u8]) -> Result<&str, &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8")?;
    let (body, sum) = text.rsplit_once(' ').ok_or("no checksum")?;
    let sum = u32::from_str_radix(sum, 16).map_err(|_| "bad checksum field")?;
    if sum != crc32(body.as_bytes()) || text.len() != body.len() + 9 {
        return Err("checksum mismatch");
    }
    Ok(body)
}

/// The line recording the epoch's start.
pub fn epoch_line(start: u64, out: &mut Vec<u8>) {
    checked_line(&format!("epoch {start}"), out);
}

/// Parses an `epoch` line; `None` if the line is not one.
fn parse_epoch(line: &[u8]) -> Option<Result<u64, &'static str>> {
    if !line.starts_with(b"epoch ") {
        return None;
    }
    Some(checked_body(line).and_then(|body| {
        body["epoch ".len()..]
            .parse::<u64>()
            .map_err(|_| "bad epoch")
    }))
}

/// What replaying a mirror file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The live forwards, oldest generation first.
    pub live: Vec<Forward>,
    pub records: usize,
    /// 1-based line numbers of corrupt records.
    pub corrupt: Vec<usize>,
    /// Bytes of a torn last record, 0 if none.
    pub torn: usize,
    /// Length of the file up to the end of its last complete line.
    pub valid_len: usize,
    /// Forwards dropped because a newer one claimed the same local socket.
    pub superseded: usize,
    /// When the standard protocols' epoch began (the last `epoch` line).
    pub epoch: Option<u64>,
}

/// Replays the bytes of a mirror file (see the module docs).
pub fn replay(bytes: &[u8]) -> Replay {
    let mut r = Replay::default();
    let mut live: HashMap<Key, Forward> = HashMap::new();
    let valid_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    r.valid_len = valid_len;
    r.torn = bytes.len() - valid_len;
    for (i, line) in bytes[..valid_len].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        match parse_epoch(line) {
            Some(Ok(start)) => {
                r.epoch = Some(start);
                continue;
            }
            Some(Err(_)) => {
                r.corrupt.push(i + 1);
                continue;
            }
            None => {}
        }
        match Record::parse(line) {
            Ok(rec) => {
                r.records += 1;
                let key = rec.fwd.key();
                match rec.op {
                    Op::Add => {
                        live.insert(key, rec.fwd);
                    }
                    Op::Del => {
                        if live.get(&key).is_some_and(|f| f.gen == rec.fwd.gen) {
                            live.remove(&key);
                        }
                    }
                }
            }
            Err(_) => r.corrupt.push(i + 1),
        }
    }
    // One forward per local socket: the newest generation wins.
    let mut newest: HashMap<(Proto, SocketAddrV4), Forward> = HashMap::new();
    for f in live.into_values() {
        let slot = newest.entry((f.proto, f.local)).or_insert(f);
        if f.gen != slot.gen {
            r.superseded += 1;
            if f.gen > slot.gen {
                *slot = f;
            }
        }
    }
    r.live = newest.into_values().collect();
    r.live.sort_by_key(|f| f.gen);
    r
}

/// The compacted contents for a live set: the header, the epoch and one
/// add each.
pub fn compacted(live: &[Forward], epoch: u64) -> Vec<u8> {
    let mut out = HEADER.as_bytes().to_vec();
    epoch_line(epoch, &mut out);
    for f in live {
        Record {
            op: Op::Add,
            fwd: *f,
        }
        .encode(&mut out);
    }
    out
}

/// The open mirror file, locked against a second dpfd using it.
pub struct MirrorFile {
    path: PathBuf,
    file: File,
    /// Records appended since the last commit.
    pending: Vec<u8>,
    /// File length after the last successful commit; a failed write is cut
    /// back to it before the next one.
    durable_len: u64,
    dirty_tail: bool,
    _lock: Flock<File>,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// fsync of the directory, so a rename or a new file survives a crash.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl MirrorFile {
    /// Locks `<path>.lock`, reads and replays the file (creating it if it
    /// does not exist), and cuts off a torn last record.
    pub fn open(path: &Path) -> Result<(MirrorFile, Replay), String> {
        let shown = path.display();
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| format!("mirror lock {}: {e}", lock_path.display()))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                format!(
                    "mirror file {shown} is in use by another dpfd (it holds {})",
                    lock_path.display()
                )
            } else {
                format!("mirror lock {}: {e}", lock_path.display())
            }
        })?;
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("mirror file {shown}: {e}")),
        };
        let replay = replay(&bytes);
        let file = open_append(path).map_err(|e| format!("mirror file {shown}: {e}"))?;
        if replay.torn > 0 {
            file.set_len(replay.valid_len as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| format!("mirror file {shown}: cutting a torn record: {e}"))?;
        }
        let mirror = MirrorFile {
            path: path.to_path_buf(),
            file,
            pending: Vec::new(),
            durable_len: replay.valid_len as u64,
            dirty_tail: false,
            _lock: lock,
        };
        Ok((mirror, replay))
    }

    /// Buffers a record for the next commit.
    pub fn append(&mut self, rec: &Record) {
        rec.encode(&mut self.pending);
    }

    #[cfg(test)]
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the buffered records and waits for them to be durable. On
    /// failure the records are dropped from the buffer (the caller undoes
    /// what they described) and the partial write is cut off next time.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.pending);
        if self.dirty_tail {
            self.file.set_len(self.durable_len)?;
            self.dirty_tail = false;
        }
        if fault::armed("mirror-torn") {
            let _ = self.file.write_all(&data[..data.len() / 2]);
            let _ = self.file.sync_data();
            fault::point("mirror-torn");
        }
        let result = self
            .file
            .write_all(&data)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.durable_len += data.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.dirty_tail = true;
                Err(e)
            }
        }
    }

    /// Reads the file back from disk, for the sync after a probe round.
    pub fn load(&self) -> io::Result<Replay> {
        Ok(replay(&fs::read(&self.path)?))
    }

    /// Replaces the file by one add record per live forward: write a
    /// temporary file, fsync it, rename it over the mirror, fsync the
    /// directory. A crash at any point leaves the old or the new file whole.
    pub fn compact(&mut self, live: &[Forward], epoch: u64) -> io::Result<()> {
        let tmp = PathBuf::from(format!("{}.tmp", self.path.display()));
        let data = compacted(live, epoch);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        fault::point("compact-before-rename");
        fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)?;
        self.file = open_append(&self.path)?;
        self.durable_len = data.len() as u64;
        self.dirty_tail = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
