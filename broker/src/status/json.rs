//! `query --json`: the status snapshot ([`View`]) as one JSON object,
//! through serde (the types in `view` are the document's shape), bounded
//! like the text.
//!
//! The formatter keeps the output byte for byte what readers have always
//! got: durations with three decimals (`61.000`), and every control
//! character other than tab, newline and carriage return as `\u00XX`.

use std::io;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::ser::{CharEscape, Formatter};

use super::view::{
    BlockedView, Head, PendingView, RegView, RelayView, Relayed, UdpRuleView, View,
};

/// serde_json's compact output, with the broker's number and escape style.
struct Style;

impl Formatter for Style {
    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        write!(w, "{value:.3}")
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        match escape {
            CharEscape::Backspace => w.write_all(b"\\u0008"),
            CharEscape::FormFeed => w.write_all(b"\\u000c"),
            other => serde_json::ser::CompactFormatter.write_char_escape(w, other),
        }
    }
}

/// The counters as one object, in their fixed order.
fn counters<S: Serializer>(list: &&[(&'static str, u64)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(list.len()))?;
    for (k, v) in list.iter() {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

/// The document: the view, its lists cut to the budget.
#[derive(Serialize)]
struct Doc<'a> {
    #[serde(flatten)]
    head: &'a Head,
    registrations: &'a [RegView],
    relays: &'a [RelayView],
    pending: &'a [PendingView],
    udp_rules: &'a [UdpRuleView],
    /// Added after the others: readers of older output never saw it.
    punch_blocked: &'a [BlockedView],
    bytes_relayed: Relayed,
    #[serde(serialize_with = "counters")]
    counters: &'a [(&'static str, u64)],
    truncated: bool,
}

fn to_string<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Style);
    // Plain data with string keys: serializing it cannot fail.
    let _ = value.serialize(&mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// How many of `items` fit once `used` bytes are spent: items are taken
/// while less than `budget` is used, each counting its own length.
fn fitting<T: Serialize>(items: &[T], used: &mut usize, budget: usize) -> usize {
    for (n, item) in items.iter().enumerate() {
        if *used >= budget {
            return n;
        }
        *used += to_string(item).len() + 1;
    }
    items.len()
}

/// One JSON object. Lists are cut at about `budget` bytes;
/// `"truncated": true` then says so.
pub fn json(v: &View, budget: usize) -> String {
    let mut used = to_string(&v.head).len();
    let regs = fitting(&v.registrations, &mut used, budget);
    let relays = fitting(&v.relays, &mut used, budget);
    let pending = fitting(&v.pending, &mut used, budget);
    let rules = fitting(&v.udp_rules, &mut used, budget);
    let blocked = fitting(&v.punch_blocked, &mut used, budget);
    let truncated = regs < v.registrations.len()
        || relays < v.relays.len()
        || pending < v.pending.len()
        || rules < v.udp_rules.len()
        || blocked < v.punch_blocked.len();
    to_string(&Doc {
        head: &v.head,
        registrations: &v.registrations[..regs],
        relays: &v.relays[..relays],
        pending: &v.pending[..pending],
        udp_rules: &v.udp_rules[..rules],
        punch_blocked: &v.punch_blocked[..blocked],
        bytes_relayed: v.bytes_relayed,
        counters: &v.counters,
        truncated,
    })
}
