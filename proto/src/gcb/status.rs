//! Status paging, free of I/O: the broker cuts a rendered status snapshot
//! into [`Message::StatusReply`] pages ([`paginate`]), and `gcb-broker query`
//! asks for them one by one and puts the text back together
//! ([`StatusFetch`]).
//!
//! A page must hold at least one character whatever the limit asked for,
//! or a character wider than the limit could never be sent: limits are
//! clamped to [`MIN_STATUS_PAGE`]..=[`MAX_STATUS_CHUNK`], the upper bound
//! being what a `StatusReply` can carry. A page count travels as a `u16`, so
//! a text that would need more pages than that is refused, never sent with
//! a wrong count.

use std::fmt;

use super::message::{ErrorCode, Message, StatusFormat, MAX_STATUS_CHUNK};
use crate::wire::truncate_str;

/// The smallest page: the widest UTF-8 character.
pub const MIN_STATUS_PAGE: usize = 4;
/// The most pages one snapshot can have (`StatusReply.pages` is a `u16`).
pub const MAX_STATUS_PAGES: usize = u16::MAX as usize;

/// `text` needs more than [`MAX_STATUS_PAGES`] pages at this limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyPages {
    pub bytes: usize,
    pub page_limit: usize,
}

impl fmt::Display for TooManyPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a status of {} bytes needs more than {MAX_STATUS_PAGES} pages of {} bytes",
            self.bytes, self.page_limit
        )
    }
}

/// The page limit actually used for a requested `limit`.
pub fn page_limit(limit: usize) -> usize {
    limit.clamp(MIN_STATUS_PAGE, MAX_STATUS_CHUNK)
}

/// Cuts `text` into pages of at most [`page_limit`]`(limit)` bytes on
/// character boundaries. Every page is non-empty and as full as the next
/// character allows; an empty text is one empty page.
pub fn paginate(text: &str, limit: usize) -> Result<Vec<String>, TooManyPages> {
    let limit = page_limit(limit);
    let mut pages = Vec::with_capacity(text.len() / limit + 1);
    let mut rest = text;
    loop {
        // Never empty: the limit holds the widest character.
        let page = truncate_str(rest, limit);
        pages.push(page.to_owned());
        if pages.len() > MAX_STATUS_PAGES {
            return Err(TooManyPages {
                bytes: text.len(),
                page_limit: limit,
            });
        }
        rest = &rest[page.len()..];
        if rest.is_empty() {
            return Ok(pages);
        }
    }
}

/// Why a fetch stopped without the whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The broker answered with an error (not an expired snapshot).
    Refused { code: ErrorCode, detail: String },
    /// A reply that is not a status page, or not the page asked for.
    Unexpected(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Refused { code, detail } => write!(f, "refused: {detail} ({code:?})"),
            FetchError::Unexpected(what) => write!(f, "unexpected reply: {what}"),
        }
    }
}

/// What a reply did to a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Ask [`StatusFetch::request`] for the next page.
    More,
    /// Every page arrived: take the text with [`StatusFetch::text`].
    Done,
    /// The snapshot expired between pages; the fetch starts over at page 0
    /// of a new snapshot. The caller bounds how often it lets that happen.
    Restarted,
}

/// The client side of one status transfer: which page to ask for next, and
/// the text so far. Replies must be the page asked for, of the snapshot the
/// first page named, with the same page count throughout.
#[derive(Debug, Clone)]
pub struct StatusFetch {
    format: StatusFormat,
    /// 0 until the first page names the snapshot.
    snapshot: u64,
    next: u16,
    pages: u16,
    text: String,
}

impl StatusFetch {
    pub fn new(format: StatusFormat) -> StatusFetch {
        StatusFetch {
            format,
            snapshot: 0,
            next: 0,
            pages: 1,
            text: String::new(),
        }
    }

    /// The request for the next page; `None` once every page arrived.
    pub fn request(&self) -> Option<Message> {
        (self.next < self.pages).then_some(Message::StatusRequest {
            snapshot: self.snapshot,
            page: self.next,
            format: self.format,
        })
    }

    /// Takes the reply to the last [`request`](Self::request).
    pub fn on_reply(&mut self, reply: Message) -> Result<Progress, FetchError> {
        let (snapshot, page, pages, chunk) = match reply {
            Message::StatusReply {
                snapshot,
                page,
                pages,
                chunk,
            } => (snapshot, page, pages, chunk),
            Message::Error {
                code: ErrorCode::UnknownToken,
                ..
            } if self.snapshot != 0 => {
                *self = StatusFetch::new(self.format);
                return Ok(Progress::Restarted);
            }
            Message::Error { code, detail } => return Err(FetchError::Refused { code, detail }),
            other => return Err(FetchError::Unexpected(format!("{:?}", other.kind()))),
        };
        let first = self.snapshot == 0;
        if snapshot == 0
            || pages == 0
            || page != self.next
            || (!first && (snapshot != self.snapshot || pages != self.pages))
        {
            return Err(FetchError::Unexpected(format!(
                "page {page} of {pages} of snapshot {snapshot:x}, asked for page {} of {}",
                self.next,
                if first {
                    "a new snapshot".to_string()
                } else {
                    format!("snapshot {:x}", self.snapshot)
                }
            )));
        }
        self.snapshot = snapshot;
        self.pages = pages;
        self.text.push_str(&chunk);
        self.next += 1;
        Ok(if self.next == self.pages {
            Progress::Done
        } else {
            Progress::More
        })
    }

    /// The text received so far; all of it once `on_reply` said `Done`.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }
}
