//! Every figure the bench produces, stored under a dotted path such as
//! `tables.public_to_private.dpf.tcp.conn_us.mean`, and written out as JSON.
//!
//! A figure that could not be measured is stored instead as an error under
//! the same path; the JSON puts the errors in a separate `errors` object whose
//! shape mirrors the figures', so a consumer finds the reason for a missing
//! figure at the same path. The JSON is written by hand (no serde): the values
//! are only numbers, strings and booleans, and the writer below escapes
//! strings and turns non-finite numbers into `null`.

use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Num(f64),
    Int(i64),
    Str(String),
    Bool(bool),
}

#[derive(Default)]
pub struct Results {
    /// In insertion order, which is the order the JSON keeps.
    items: Vec<(String, Val)>,
    errors: Vec<(String, String)>,
}

impl Results {
    pub fn set(&mut self, path: &str, v: Val) {
        match self.items.iter_mut().find(|(p, _)| p == path) {
            Some(slot) => slot.1 = v,
            None => self.items.push((path.to_string(), v)),
        }
    }

    pub fn num(&mut self, path: &str, v: f64) {
        self.set(path, Val::Num(v));
    }

    pub fn int(&mut self, path: &str, v: i64) {
        self.set(path, Val::Int(v));
    }

    pub fn text(&mut self, path: &str, v: impl Into<String>) {
        self.set(path, Val::Str(v.into()));
    }

    pub fn flag(&mut self, path: &str, v: bool) {
        self.set(path, Val::Bool(v));
    }

    /// Record why the figure (or the whole group of figures) at `path` is missing.
    pub fn error(&mut self, path: &str, reason: impl Into<String>) {
        let reason = reason.into();
        match self.errors.iter_mut().find(|(p, _)| p == path) {
            Some(slot) => slot.1 = reason,
            None => self.errors.push((path.to_string(), reason)),
        }
    }

    pub fn get(&self, path: &str) -> Option<f64> {
        self.items
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, v)| match v {
                Val::Num(x) => Some(*x),
                Val::Int(i) => Some(*i as f64),
                _ => None,
            })
    }

    pub fn get_str(&self, path: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, v)| match v {
                Val::Str(s) => Some(s.as_str()),
                _ => None,
            })
    }

    /// Why `path` has no figure: an error recorded at it or at any prefix of it
    /// (an error for a whole configuration covers all its figures).
    pub fn why_missing(&self, path: &str) -> Option<&str> {
        let mut best: Option<(&str, usize)> = None;
        for (p, reason) in &self.errors {
            let covers = path == p
                || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'.'));
            if covers && !matches!(best, Some((_, l)) if p.len() <= l) {
                best = Some((reason.as_str(), p.len()));
            }
        }
        best.map(|(r, _)| r)
    }

    /// The whole document: figures, then `errors`.
    pub fn to_json(&self) -> String {
        let mut root = Node::Obj(Vec::new());
        for (p, v) in &self.items {
            root.insert(p, Node::Leaf(v.clone()));
        }
        if !self.errors.is_empty() {
            let mut errs = Node::Obj(Vec::new());
            for (p, r) in &self.errors {
                errs.insert(p, Node::Leaf(Val::Str(r.clone())));
            }
            if let Node::Obj(kids) = &mut root {
                kids.push(("errors".into(), errs));
            }
        }
        let mut out = String::new();
        root.write(&mut out, 0);
        out.push('\n');
        out
    }
}

enum Node {
    Leaf(Val),
    Obj(Vec<(String, Node)>),
}

impl Node {
    fn insert(&mut self, path: &str, leaf: Node) {
        let (head, rest) = match path.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (path, None),
        };
        if !matches!(self, Node::Obj(_)) {
            // A figure and a group under the same name: the group wins, since a
            // leaf there would be a bug in the caller, not something to hide.
            *self = Node::Obj(Vec::new());
        }
        let Node::Obj(kids) = self else { return };
        let idx = match kids.iter().position(|(k, _)| k == head) {
            Some(i) => i,
            None => {
                kids.push((head.to_string(), Node::Obj(Vec::new())));
                kids.len() - 1
            }
        };
        match rest {
            None => kids[idx].1 = leaf,
            Some(r) => kids[idx].1.insert(r, leaf),
        }
    }

    fn write(&self, out: &mut String, indent: usize) {
        match self {
            Node::Leaf(v) => write_val(out, v),
            Node::Obj(kids) if kids.is_empty() => out.push_str("{}"),
            Node::Obj(kids) => {
                out.push_str("{\n");
                for (i, (k, v)) in kids.iter().enumerate() {
                    out.push_str(&"  ".repeat(indent + 1));
                    write_str(out, k);
                    out.push_str(": ");
                    v.write(out, indent + 1);
                    if i + 1 < kids.len() {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str(&"  ".repeat(indent));
                out.push('}');
            }
        }
    }
}

fn write_val(out: &mut String, v: &Val) {
    match v {
        // JSON has no NaN or infinity; a non-finite figure is "no figure".
        Val::Num(x) if !x.is_finite() => out.push_str("null"),
        Val::Num(x) => {
            // Six significant digits are far below the noise of any timing here.
            let _ = write!(out, "{}", round_sig(*x, 6));
        }
        Val::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Str(s) => write_str(out, s),
    }
}

fn round_sig(x: f64, digits: i32) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_nests_paths_and_round_trips_through_a_parser() {
        let mut r = Results::default();
        r.num("tables.p.regular.tcp.conn_us.mean", 123.456789);
        r.num("tables.p.regular.tcp.conn_us.sd", f64::NAN);
        r.int("relay.bytes", 1 << 30);
        r.text("meta.payload", "64 KiB \"x\"\n\u{1}");
        r.flag("meta.quick", true);
        r.error("tables.p.dpf", "dpfd exited: bad flag");
        let j = r.to_json();
        let v = testbed::json::parse(&j).expect("valid JSON");
        let mean = v
            .get("tables")
            .and_then(|t| t.get("p"))
            .and_then(|p| p.get("regular"));
        assert!(mean.is_some(), "{j}");
        assert!(j.contains("123.457"), "{j}");
        assert!(j.contains("\"sd\": null"), "{j}");
        let e = v
            .get("errors")
            .and_then(|e| e.get("tables"))
            .and_then(|t| t.get("p"))
            .and_then(|p| p.get("dpf"));
        assert_eq!(e.and_then(|e| e.as_str()), Some("dpfd exited: bad flag"));
    }

    #[test]
    fn errors_cover_their_subpaths_only() {
        let mut r = Results::default();
        r.error("relay.gcb", "broker down");
        r.error("relay.gcb.cpu", "no pid");
        assert_eq!(r.why_missing("relay.gcb.gbps"), Some("broker down"));
        assert_eq!(r.why_missing("relay.gcb.cpu"), Some("no pid"));
        assert_eq!(r.why_missing("relay.gcbx"), None);
    }

    #[test]
    fn set_replaces_in_place() {
        let mut r = Results::default();
        r.num("a.b", 1.0);
        r.num("a.c", 2.0);
        r.num("a.b", 3.0);
        assert_eq!(r.get("a.b"), Some(3.0));
        assert!(r.to_json().find("\"b\"").unwrap() < r.to_json().find("\"c\"").unwrap());
    }
}
