//! Status paging: the cut at every limit (those below a character's width
//! included), the page-count bound, and a whole transfer between
//! `paginate` and `StatusFetch` through the codec.

use super::status::*;
use super::{decode, encode, ErrorCode, Message, StatusFormat, MAX_STATUS_CHUNK};
use crate::strategies;
use proptest::prelude::*;

/// Serves `pages` as the broker does: page `page` of snapshot `id`, or
/// `BadRequest` past the end. Every message goes through the codec, as on
/// the wire.
fn serve(pages: &[String], id: u64, request: &Message) -> Message {
    let request = decode(&encode(request, 1).unwrap()).unwrap().1;
    let Message::StatusRequest { snapshot, page, .. } = request else {
        panic!("not a status request: {request:?}");
    };
    assert!(
        snapshot == 0 || snapshot == id,
        "asked for snapshot {snapshot:x}"
    );
    let reply = match pages.get(usize::from(page)) {
        Some(chunk) => Message::StatusReply {
            snapshot: id,
            page,
            pages: u16::try_from(pages.len()).unwrap(),
            chunk: chunk.clone(),
        },
        None => Message::error(ErrorCode::BadRequest, "no such status page"),
    };
    decode(&encode(&reply, 1).unwrap()).unwrap().1
}

/// Fetches all of `pages` with a `StatusFetch`; the text and the number of
/// requests it took.
fn fetch(pages: &[String]) -> (String, usize) {
    let mut f = StatusFetch::new(StatusFormat::Text);
    let mut asked = 0;
    while let Some(req) = f.request() {
        asked += 1;
        assert!(asked <= pages.len(), "more requests than pages");
        let progress = f.on_reply(serve(pages, 0xfeed, &req)).unwrap();
        assert_eq!(progress == Progress::Done, asked == pages.len());
    }
    (f.into_text(), asked)
}

#[test]
fn limits_below_a_character_still_carry_it() {
    // The old cut stopped at the first character wider than the limit and
    // dropped the rest of the text.
    for limit in 0..MIN_STATUS_PAGE {
        assert_eq!(
            paginate("a😀b", limit).unwrap(),
            ["a", "😀", "b"],
            "limit {limit}"
        );
        assert_eq!(paginate("😀😀", limit).unwrap(), ["😀", "😀"]);
    }
    assert_eq!(paginate("abcdefghij", 0).unwrap(), ["abcd", "efgh", "ij"]);
    assert_eq!(paginate("", 0).unwrap(), [""]);
}

#[test]
fn limits_above_a_reply_are_cut_to_what_a_reply_carries() {
    let text = "x".repeat(MAX_STATUS_CHUNK + 1);
    let pages = paginate(&text, usize::MAX).unwrap();
    assert_eq!(
        pages.iter().map(String::len).collect::<Vec<_>>(),
        [MAX_STATUS_CHUNK, 1]
    );
    assert_eq!(page_limit(usize::MAX), MAX_STATUS_CHUNK);
}

#[test]
fn a_text_needing_more_pages_than_a_u16_counts_is_refused() {
    let fits = "x".repeat(MAX_STATUS_PAGES * MIN_STATUS_PAGE);
    assert_eq!(paginate(&fits, 1).unwrap().len(), MAX_STATUS_PAGES);
    let over = format!("{fits}y");
    let err = paginate(&over, 1).unwrap_err();
    assert_eq!(
        err,
        TooManyPages {
            bytes: over.len(),
            page_limit: MIN_STATUS_PAGE
        }
    );
    assert!(err.to_string().contains("more than 65535 pages"), "{err}");
}

#[test]
fn an_expired_snapshot_restarts_the_fetch_once_it_has_one() {
    let mut f = StatusFetch::new(StatusFormat::Json);
    let expired = Message::error(
        ErrorCode::UnknownToken,
        "status snapshot expired; ask again",
    );
    // Before any page, there is no snapshot to have expired.
    assert!(matches!(
        f.clone().on_reply(expired.clone()),
        Err(FetchError::Refused { .. })
    ));
    let page = |page, pages, chunk: &str| Message::StatusReply {
        snapshot: 7,
        page,
        pages,
        chunk: chunk.into(),
    };
    assert_eq!(f.on_reply(page(0, 2, "ab")), Ok(Progress::More));
    assert_eq!(
        f.request(),
        Some(Message::StatusRequest {
            snapshot: 7,
            page: 1,
            format: StatusFormat::Json
        })
    );
    assert_eq!(f.on_reply(expired), Ok(Progress::Restarted));
    assert_eq!(f.text(), "");
    assert_eq!(
        f.request(),
        Some(Message::StatusRequest {
            snapshot: 0,
            page: 0,
            format: StatusFormat::Json
        })
    );
}

#[test]
fn replies_out_of_step_are_errors_not_text() {
    let page = |snapshot, page, pages| Message::StatusReply {
        snapshot,
        page,
        pages,
        chunk: "x".into(),
    };
    let started = || {
        let mut f = StatusFetch::new(StatusFormat::Text);
        f.on_reply(page(7, 0, 3)).unwrap();
        f
    };
    for bad in [page(7, 2, 3), page(8, 1, 3), page(7, 1, 4), page(0, 1, 3)] {
        let err = started().on_reply(bad.clone()).unwrap_err();
        assert!(matches!(err, FetchError::Unexpected(_)), "{bad:?}: {err:?}");
    }
    let mut f = StatusFetch::new(StatusFormat::Text);
    assert!(f.on_reply(page(7, 0, 0)).is_err(), "zero pages");
    let refused = Message::error(ErrorCode::Unauthorized, "not you");
    assert_eq!(
        started().on_reply(refused),
        Err(FetchError::Refused {
            code: ErrorCode::Unauthorized,
            detail: "not you".into()
        })
    );
    assert!(started().on_reply(Message::HeartbeatAck).is_err());
}

proptest! {
    #![proptest_config(strategies::config())]

    /// At any limit, the pages join back to the text, each within the
    /// limit actually used, none empty (but the one page of an empty text),
    /// each but the last as full as the next character allows.
    #[test]
    fn pages_join_back_within_the_limit(text in strategies::text(200), limit in 0usize..40) {
        let pages = paginate(&text, limit).unwrap();
        let used = page_limit(limit);
        prop_assert_eq!(pages.concat(), text.clone());
        prop_assert!(pages.len() == 1 || pages.iter().all(|p| !p.is_empty()));
        let mut at = 0;
        for (i, p) in pages.iter().enumerate() {
            prop_assert!(p.len() <= used);
            at += p.len();
            if i + 1 < pages.len() {
                let next = text[at..].chars().next().unwrap();
                prop_assert!(p.len() + next.len_utf8() > used);
            }
        }
    }

    /// Any text, cut at any limit, travels page by page through the codec
    /// and comes out whole, in exactly one request per page.
    #[test]
    fn a_fetch_gets_back_every_text(text in strategies::text(300), limit in 0usize..64) {
        let pages = paginate(&text, limit).unwrap();
        let (got, asked) = fetch(&pages);
        prop_assert_eq!(got, text);
        prop_assert_eq!(asked, pages.len());
    }
}
