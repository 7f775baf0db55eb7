//! The engine: the mapping table, the mirror file and the kernel kept in
//! step, with the write orders of paper 3.2.2 and group commit.
//!
//! Requests (`handler.rs`) and probe results only change the mapping table
//! and queue their replies; `commit`, called once at the end of each
//! event-loop turn, writes everything the turn produced:
//!
//! 1. add records of the batch to the mirror file, one `fdatasync`;
//! 2. the kernel: one `nft -f -` transaction for every key the batch
//!    touched, computed against what the kernel is believed to hold;
//! 3. delete records to the mirror file, one `fdatasync`;
//! 4. the replies, now that every representation is written.
//!
//! So for each forward, add = table → mirror → kernel and delete = table →
//! kernel → mirror, while a busy turn of hundreds of requests costs two
//! fsyncs and one nft run. Adds and deletes of one batch may interleave
//! differently in the mirror than in the table; the generation numbers make
//! replay come out the same (see `mirror.rs`).
//!
//! Failure of step 1 or 2 undoes the whole batch in the table (and writes
//! the inverse records if step 1 had succeeded), and state-changing
//! requests are answered `Internal`. A failure of step 3 leaves table and
//! kernel changed and answers `Internal`; the next sync, which follows the
//! mirror file, brings the forwards back for the probe to judge.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;

use proto::dpf::{ErrorCode, Message};
use tracing::{error, info, warn};

use crate::fault;
use crate::mirror::{MirrorFile, Op, Record, Replay};
use crate::nft::{elements_batch, install_batch, ElemOp, Elements, Listing, Nft};
use crate::table::{Change, Forward, Key, Table};

/// The mirror file as the engine uses it; a fake records calls in tests.
pub trait Mirror {
    fn append(&mut self, rec: &Record);
    fn commit(&mut self) -> io::Result<()>;
    fn load(&mut self) -> io::Result<Replay>;
    /// Rewrites the file as `live`, recording `epoch` (see `mirror.rs`).
    fn compact(&mut self, live: &[Forward], epoch: u64) -> io::Result<()>;
}

/// The kernel's map elements as the engine uses them.
pub trait Kernel {
    fn apply(&mut self, ops: &[ElemOp]) -> Result<(), String>;
    fn list(&mut self) -> Result<Listing, String>;
    fn install(&mut self, elements: &Elements) -> Result<(), String>;
}

impl Mirror for MirrorFile {
    fn append(&mut self, rec: &Record) {
        MirrorFile::append(self, rec);
    }
    fn commit(&mut self) -> io::Result<()> {
        MirrorFile::commit(self)
    }
    fn load(&mut self) -> io::Result<Replay> {
        MirrorFile::load(self)
    }
    fn compact(&mut self, live: &[Forward], epoch: u64) -> io::Result<()> {
        MirrorFile::compact(self, live, epoch)
    }
}

impl Kernel for Nft {
    fn apply(&mut self, ops: &[ElemOp]) -> Result<(), String> {
        self.run(&elements_batch(&self.table, ops))
    }
    fn list(&mut self) -> Result<Listing, String> {
        Nft::list(self)
    }
    fn install(&mut self, elements: &Elements) -> Result<(), String> {
        self.run(&install_batch(&self.table, elements))
    }
}

/// A reply the daemon sends once the batch is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub to: SocketAddr,
    pub request_id: u64,
    pub msg: Message,
}

struct Pending {
    reply: Reply,
    /// The request changed the table, so a failed commit turns its reply
    /// into `Internal`.
    changed: bool,
}

/// A NAT-PMP or PCP answer, encoded both ways at decision time: `ok` if
/// the batch is written, `failed` if a request that changed the table
/// could not be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdPending {
    pub to: SocketAddr,
    pub ok: Vec<u8>,
    pub failed: Vec<u8>,
    pub changed: bool,
}

/// A NAT-PMP or PCP answer ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdReply {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

impl StdPending {
    fn resolve(self, failed: bool) -> StdReply {
        StdReply {
            to: self.to,
            bytes: if failed && self.changed {
                self.failed
            } else {
                self.ok
            },
        }
    }
}

/// What one event-loop turn has done to the table and not yet written.
#[derive(Default)]
pub(crate) struct Batch {
    pub changes: Vec<Change>,
    pending: Vec<Pending>,
    pub std: Vec<StdPending>,
    /// Info lines to log once the changes are durable.
    pub events: Vec<String>,
}

/// Engine-level counters for status and the stop line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub added: u64,
    pub reused: u64,
    pub updated: u64,
    pub moved: u64,
    pub deleted_by_client: u64,
    pub deleted_by_probe: u64,
    /// Leased mappings (NAT-PMP, PCP): made, renewed, expired.
    pub leased: u64,
    pub renewed: u64,
    pub expired: u64,
    pub commits: u64,
    pub mirror_errors: u64,
    pub kernel_batches: u64,
    pub kernel_errors: u64,
    pub syncs: u64,
}

pub struct Engine<M, K> {
    pub table: Table,
    pub(crate) mirror: M,
    pub(crate) kernel: K,
    /// What the kernel map is believed to hold; `None` after a failure,
    /// which makes the next kernel step read the kernel back first.
    pub(crate) shadow: Option<Elements>,
    pub(crate) batch: Batch,
    pub stats: Stats,
    /// Unix seconds when the standard protocols' epoch began: set by
    /// recovery, kept in the mirror file.
    pub epoch_start: u64,
    /// Answers of the last commit for the standard protocols' socket.
    std_out: Vec<StdReply>,
}

/// The kernel elements the table implies.
pub(crate) fn desired(table: &Table) -> Elements {
    table
        .entries()
        .map(|e| (e.fwd.key(), e.fwd.local))
        .collect()
}

/// Element operations turning `actual` into `desired` for `keys`.
pub(crate) fn diff<'a>(
    actual: &Elements,
    desired: &Elements,
    keys: impl Iterator<Item = &'a Key>,
) -> Vec<ElemOp> {
    let mut ops = Vec::new();
    for k in keys {
        let (have, want) = (actual.get(k), desired.get(k));
        if have == want {
            continue;
        }
        if have.is_some() {
            ops.push(ElemOp::Del(*k));
        }
        if let Some(local) = want {
            ops.push(ElemOp::Add(*k, *local));
        }
    }
    ops
}

impl<M: Mirror, K: Kernel> Engine<M, K> {
    pub fn new(table: Table, mirror: M, kernel: K) -> Self {
        Engine {
            table,
            mirror,
            kernel,
            shadow: None,
            batch: Batch::default(),
            stats: Stats::default(),
            epoch_start: 0,
            std_out: Vec::new(),
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.batch.pending.is_empty()
            || !self.batch.changes.is_empty()
            || !self.batch.std.is_empty()
    }

    /// The standard protocols' epoch at `now` (Unix seconds).
    pub fn epoch(&self, now: u64) -> u32 {
        now.saturating_sub(self.epoch_start)
            .min(u64::from(u32::MAX)) as u32
    }

    /// The NAT-PMP and PCP answers the last [`commit`](Self::commit) made.
    pub fn take_std_replies(&mut self) -> Vec<StdReply> {
        std::mem::take(&mut self.std_out)
    }

    /// Queues a reply; `changed` says whether the request changed the table.
    pub(crate) fn queue_reply(
        &mut self,
        to: SocketAddr,
        request_id: u64,
        msg: Message,
        changed: bool,
    ) {
        let reply = Reply {
            to,
            request_id,
            msg,
        };
        self.batch.pending.push(Pending { reply, changed });
    }

    /// Makes the kernel hold exactly what the table implies, reading it back
    /// first; rebuilds our table if its structure is damaged or missing.
    /// Returns the number of element operations (or elements installed).
    pub(crate) fn kernel_full_sync(&mut self) -> Result<usize, String> {
        let want = desired(&self.table);
        let listing = self.kernel.list()?;
        self.stats.kernel_batches += 1;
        let n = if listing.structure_ok {
            let keys: HashSet<&Key> = listing.elements.keys().chain(want.keys()).collect();
            let ops = diff(&listing.elements, &want, keys.into_iter());
            if !ops.is_empty() {
                self.kernel.apply(&ops)?;
            }
            ops.len()
        } else {
            if listing.present {
                warn!("nft table is damaged (a map, chain or rule is missing or changed): rebuilding it");
            } else {
                info!("nft table is missing: creating it");
            }
            self.kernel.install(&want)?;
            want.len()
        };
        self.shadow = Some(want);
        Ok(n)
    }

    /// Step 2: the kernel update for the keys this batch touched. A failed
    /// transaction usually means the kernel was changed behind our back (an
    /// element or the table deleted by hand), so it is retried once against
    /// the kernel's real contents before giving up.
    fn kernel_step(&mut self, changes: &[Change]) -> Result<(), String> {
        let keys: HashSet<Key> = changes.iter().flat_map(change_keys).collect();
        if keys.is_empty() {
            return Ok(());
        }
        if let Some(shadow) = &self.shadow {
            let want = desired(&self.table);
            let ops = diff(shadow, &want, keys.iter());
            if ops.is_empty() {
                return Ok(());
            }
            self.stats.kernel_batches += 1;
            match self.kernel.apply(&ops) {
                Ok(()) => {
                    let shadow = self.shadow.get_or_insert_with(Elements::new);
                    for op in ops {
                        match op {
                            ElemOp::Add(k, v) => shadow.insert(k, v),
                            ElemOp::Del(k) => shadow.remove(&k),
                        };
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.stats.kernel_errors += 1;
                    warn!("kernel update failed, reading the table back and retrying: {e}");
                    self.shadow = None;
                }
            }
        }
        self.kernel_full_sync().map(drop).inspect_err(|_| {
            self.stats.kernel_errors += 1;
            self.shadow = None;
        })
    }

    /// Writes the batch in the paper's orders and returns the replies.
    pub fn commit(&mut self) -> Vec<Reply> {
        if !self.has_pending() {
            return Vec::new();
        }
        let batch = std::mem::take(&mut self.batch);
        self.stats.commits += 1;
        fault::point("after-table");
        for c in &batch.changes {
            if let Change::Added(f) | Change::Updated { new: f, .. } = c {
                self.mirror.append(&Record {
                    op: Op::Add,
                    fwd: *f,
                });
            }
        }
        if let Err(e) = self.mirror.commit() {
            self.stats.mirror_errors += 1;
            error!(
                "mirror file write failed, {} changes undone: {e}",
                batch.changes.len()
            );
            return self.fail(batch, false);
        }
        fault::point("after-mirror");
        if let Err(e) = self.kernel_step(&batch.changes) {
            error!(
                "kernel update failed, {} changes undone: {e}",
                batch.changes.len()
            );
            return self.fail(batch, true);
        }
        fault::point("after-kernel");
        for c in &batch.changes {
            if let Change::Removed(f) = c {
                self.mirror.append(&Record {
                    op: Op::Del,
                    fwd: *f,
                });
            }
        }
        let mut internal = false;
        if let Err(e) = self.mirror.commit() {
            self.stats.mirror_errors += 1;
            error!("mirror file write of deletions failed; the next sync restores them for the probe to judge: {e}");
            internal = batch
                .changes
                .iter()
                .any(|c| matches!(c, Change::Removed(_)));
        }
        fault::point("before-reply");
        for line in &batch.events {
            info!("{line}");
        }
        self.std_out = batch.std.into_iter().map(|p| p.resolve(internal)).collect();
        batch
            .pending
            .into_iter()
            .map(|p| match internal && p.changed {
                true => Reply {
                    msg: Message::error(ErrorCode::Internal, "mirror file write failed"),
                    ..p.reply
                },
                false => p.reply,
            })
            .collect()
    }

    /// Undoes a batch whose step 1 or 2 failed. If the add records are
    /// durable (`mirror_written`), inverse records cancel them.
    fn fail(&mut self, batch: Batch, mirror_written: bool) -> Vec<Reply> {
        for c in batch.changes.iter().rev() {
            self.table.undo(*c);
            if mirror_written {
                match c {
                    Change::Added(f) => self.mirror.append(&Record {
                        op: Op::Del,
                        fwd: *f,
                    }),
                    Change::Updated { old, .. } => self.mirror.append(&Record {
                        op: Op::Add,
                        fwd: *old,
                    }),
                    Change::Removed(_) => {}
                }
            }
        }
        if let Err(e) = self.mirror.commit() {
            self.stats.mirror_errors += 1;
            error!("mirror file: cannot cancel the undone changes; the probe will clean up: {e}");
        }
        self.std_out = batch.std.into_iter().map(|p| p.resolve(true)).collect();
        batch
            .pending
            .into_iter()
            .map(|p| match p.changed {
                true => Reply {
                    msg: Message::error(ErrorCode::Internal, "dpfd could not store the forward"),
                    ..p.reply
                },
                false => p.reply,
            })
            .collect()
    }
}

fn change_keys(c: &Change) -> Vec<Key> {
    match c {
        Change::Added(f) | Change::Removed(f) => vec![f.key()],
        Change::Updated { old, new } => vec![old.key(), new.key()],
    }
}

#[cfg(test)]
mod failure_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
