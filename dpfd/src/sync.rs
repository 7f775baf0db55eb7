//! Synchronisation of the three representations (paper 3.2.2.1) and
//! recovery at startup.
//!
//! Sync runs after each probe round, between two event-loop batches, so
//! nothing is half-written. It follows the mirror file, as the paper says:
//! 1. read the mirror file back and replay it: that is the live set;
//! 2. compact the file to the live set (temporary file, fsync, rename,
//!    fsync of the directory): deprecated records go away;
//! 3. make the mapping table match the live set (in normal operation it
//!    already does; a difference is logged);
//! 4. make the kernel match: read our table back, add missing elements,
//!    delete elements of our maps that the mirror does not have, and rebuild
//!    the table if a map, chain or rule is missing. Nothing outside our
//!    table is read or changed: the paper's caution about rules "set by
//!    other methods" is met by never looking at them.
//!
//! Recovery is the same with the replay done at open: load the live set
//! into an empty table, compact, and install the kernel side (after a
//! reboot or `nft flush ruleset` the table is recreated from scratch).

use std::collections::HashMap;
use std::time::Instant;

use tracing::{info, warn};

use crate::engine::{Engine, Kernel, Mirror};
use crate::fault;
use crate::mirror::Replay;
use crate::table::{Change, Forward, Key, Table};

/// What a sync or recovery did, for the log and status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub live: usize,
    pub records: usize,
    pub corrupt: usize,
    pub torn: bool,
    /// Forwards whose public address is outside the configuration.
    pub dropped: usize,
    /// Leased mappings whose lease ended while dpfd was down.
    pub expired: usize,
    /// Recovery kept the epoch of the previous run: nothing a client had
    /// been told of was lost.
    pub epoch_kept: bool,
    pub table_fixes: usize,
    pub kernel_ops: usize,
    pub millis: u128,
}

/// Splits the replayed live set into forwards this configuration can serve
/// and those it cannot (public IP or port range changed since they were
/// written).
fn usable(table: &Table, replay: &Replay) -> (Vec<Forward>, usize) {
    let (ok, bad): (Vec<Forward>, Vec<Forward>) =
        replay.live.iter().partition(|f| table.in_range(f.public));
    for f in &bad {
        warn!(
            "mirror file: dropping {} {} -> {}: the public address is outside --public-ip/--port-range",
            f.proto, f.public, f.local
        );
    }
    (ok, bad.len())
}

fn log_damage(replay: &Replay) {
    if !replay.corrupt.is_empty() {
        let shown: Vec<String> = replay
            .corrupt
            .iter()
            .take(10)
            .map(usize::to_string)
            .collect();
        warn!(
            "mirror file: {} corrupt records skipped (lines {}{})",
            replay.corrupt.len(),
            shown.join(","),
            if replay.corrupt.len() > 10 {
                ",..."
            } else {
                ""
            }
        );
    }
    if replay.torn > 0 {
        warn!(
            "mirror file: ignored a torn last record ({} bytes)",
            replay.torn
        );
    }
}

impl<M: Mirror, K: Kernel> Engine<M, K> {
    /// Startup: load `replay` (read when the mirror file was opened) into
    /// the empty table, compact the file, install the kernel side. `started`
    /// is when recovery began, so the report includes reading the file;
    /// `now` is Unix seconds, against which leases are judged.
    ///
    /// The standard protocols' epoch goes on from the previous run when
    /// the file recorded it and nothing was lost (no corrupt record, no
    /// forward outside the configuration; leases that ended meanwhile
    /// ended as they would have anyway). Otherwise it starts again now,
    /// which tells PCP and NAT-PMP clients to map again (RFC 6887 §8.5).
    pub fn recover(
        &mut self,
        replay: &Replay,
        started: Instant,
        now: u64,
    ) -> Result<SyncReport, String> {
        log_damage(replay);
        let (live, dropped) = usable(&self.table, replay);
        let (live, ended): (Vec<Forward>, Vec<Forward>) = live
            .into_iter()
            .partition(|f| match f.lease {
                Some(l) => l.expires > now,
                None => true,
            });
        let lost = !replay.corrupt.is_empty() || dropped > 0;
        let kept = replay.epoch.filter(|e| !lost && *e <= now);
        self.epoch_start = kept.unwrap_or(now);
        for f in &live {
            self.table.load(*f);
        }
        self.mirror
            .compact(&live, self.epoch_start)
            .map_err(|e| format!("mirror file: compaction at startup failed: {e}"))?;
        fault::point("after-recovery-mirror");
        let kernel_ops = self
            .kernel_full_sync()
            .map_err(|e| format!("installing the nft table: {e}"))?;
        Ok(SyncReport {
            live: live.len(),
            records: replay.records,
            corrupt: replay.corrupt.len(),
            torn: replay.torn > 0,
            dropped,
            expired: ended.len(),
            epoch_kept: kept.is_some(),
            table_fixes: 0,
            kernel_ops,
            millis: started.elapsed().as_millis(),
        })
    }

    /// The sync after a probe round (module docs). Call with no batch
    /// pending; an error leaves everything as it was for the next round.
    pub fn sync(&mut self) -> Result<SyncReport, String> {
        debug_assert!(!self.has_pending(), "sync in the middle of a batch");
        let started = Instant::now();
        let replay = self
            .mirror
            .load()
            .map_err(|e| format!("reading the mirror file: {e}"))?;
        log_damage(&replay);
        let (live, dropped) = usable(&self.table, &replay);
        self.mirror
            .compact(&live, self.epoch_start)
            .map_err(|e| format!("compacting the mirror file: {e}"))?;
        let table_fixes = self.table_follow(&live);
        let kernel_ops = self.kernel_full_sync().map_err(|e| {
            self.shadow = None;
            format!("kernel: {e}")
        })?;
        self.stats.syncs += 1;
        Ok(SyncReport {
            live: live.len(),
            records: replay.records,
            corrupt: replay.corrupt.len(),
            torn: replay.torn > 0,
            dropped,
            expired: 0,
            epoch_kept: true,
            table_fixes,
            kernel_ops,
            millis: started.elapsed().as_millis(),
        })
    }

    /// Makes the table hold exactly `live` (one forward per key and per
    /// local socket, as replay guarantees). Unchanged forwards keep their
    /// probe state. Returns the number of forwards changed.
    fn table_follow(&mut self, live: &[Forward]) -> usize {
        let want: HashMap<Key, Forward> = live.iter().map(|f| (f.key(), *f)).collect();
        let stale: Vec<Forward> = self
            .table
            .entries()
            .map(|e| e.fwd)
            .filter(|f| want.get(&f.key()) != Some(f))
            .collect();
        for f in &stale {
            warn!(
                "sync: {} {} -> {} is not in the mirror file; removed",
                f.proto, f.public, f.local
            );
            self.table.apply(Change::Removed(*f));
        }
        let mut fixes = stale.len();
        for f in live {
            if self.table.get(&f.key()).is_none() {
                warn!(
                    "sync: {} {} -> {} from the mirror file was missing; restored",
                    f.proto, f.public, f.local
                );
                self.table.load(*f);
                fixes += 1;
            }
        }
        if fixes > 0 {
            info!("sync: mapping table changed to follow the mirror file ({fixes} forwards)");
        }
        fixes
    }
}
