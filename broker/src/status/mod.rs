//! The status query (`gcb-broker query`), broker side.
//!
//! A `StatusRequest` with snapshot 0 takes a snapshot of the broker's state,
//! renders it once (text or JSON, see `text` and `json`), cuts it into pages of at
//! most [`MAX_STATUS_CHUNK`] bytes and answers page 0 with the snapshot's
//! id; the tool then asks for the other pages of that snapshot, so all
//! pages come from the same moment however long the transfer takes.
//! Snapshots are kept for [`SNAPSHOT_TTL`], at most [`MAX_SNAPSHOTS`] of
//! them, each at most [`MAX_SNAPSHOT_BYTES`]: the memory a status request
//! can make the broker hold is bounded.
//!
//! Who may ask, and the snapshot itself, are the core's (`engine::status`);
//! this module keeps the snapshots and renders them.

mod json;
mod text;
mod view;

pub use json::json;
pub use text::text;
pub use view::{
    BlockedView, Head, HolderView, LimitsView, PendingView, RegView, RelayView, Relayed,
    UdpRuleView, View,
};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proto::gcb::{paginate, ErrorCode, Message, MAX_STATUS_CHUNK};

/// How long the pages of a snapshot can be fetched.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(30);
/// Snapshots kept at once; the oldest goes first.
pub const MAX_SNAPSHOTS: usize = 4;
/// Size of one rendered snapshot; lists are cut to fit.
pub const MAX_SNAPSHOT_BYTES: usize = 4 << 20;

struct Snapshot {
    id: u64,
    taken: Instant,
    pages: Vec<String>,
}

/// Recent snapshots, oldest first.
#[derive(Default)]
pub struct Snapshots {
    list: VecDeque<Snapshot>,
}

impl Snapshots {
    fn expire(&mut self, now: Instant) {
        self.list
            .retain(|s| now.saturating_duration_since(s.taken) < SNAPSHOT_TTL);
    }

    /// Stores a rendered snapshot under `id`. A snapshot is at most
    /// [`MAX_SNAPSHOT_BYTES`], far fewer pages than a reply can count, so
    /// the error is for a text that broke that bound.
    pub fn store(&mut self, id: u64, text: &str, now: Instant) -> Result<(), String> {
        let pages = paginate(text, MAX_STATUS_CHUNK).map_err(|e| e.to_string())?;
        self.expire(now);
        while self.list.len() >= MAX_SNAPSHOTS {
            self.list.pop_front();
        }
        self.list.push_back(Snapshot {
            id,
            taken: now,
            pages,
        });
        Ok(())
    }

    /// Page `page` of snapshot `id` as a reply message.
    pub fn page(&mut self, id: u64, page: u16, now: Instant) -> Message {
        self.expire(now);
        let Some(s) = self.list.iter().find(|s| s.id == id) else {
            return Message::error(
                ErrorCode::UnknownToken,
                "status snapshot expired; ask again",
            );
        };
        let Some(chunk) = s.pages.get(usize::from(page)) else {
            return Message::error(ErrorCode::BadRequest, "no such status page");
        };
        Message::StatusReply {
            snapshot: id,
            page,
            // `paginate` makes at most u16::MAX pages.
            pages: u16::try_from(s.pages.len()).unwrap_or(u16::MAX),
            chunk: chunk.clone(),
        }
    }
}

#[cfg(test)]
mod render_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_paged_bounded_and_expire() {
        let t = Instant::now();
        let mut s = Snapshots::default();
        let big = "x".repeat(MAX_STATUS_CHUNK * 2 + 1);
        s.store(7, &big, t).unwrap();
        match s.page(7, 2, t) {
            Message::StatusReply {
                snapshot,
                page,
                pages,
                chunk,
            } => {
                assert_eq!((snapshot, page, pages, chunk.len()), (7, 2, 3, 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.page(7, 3, t),
            Message::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ));
        assert!(matches!(
            s.page(8, 0, t),
            Message::Error {
                code: ErrorCode::UnknownToken,
                ..
            }
        ));
        for id in 10..10 + MAX_SNAPSHOTS as u64 {
            s.store(id, "x", t).unwrap();
        }
        assert!(
            matches!(s.page(7, 0, t), Message::Error { .. }),
            "oldest dropped at the cap"
        );
        assert!(matches!(s.page(10, 0, t), Message::StatusReply { .. }));
        let later = t + SNAPSHOT_TTL;
        assert!(
            matches!(s.page(10, 0, later), Message::Error { .. }),
            "expired"
        );
    }
}
