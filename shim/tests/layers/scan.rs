//! The import graph between the shim's module files, read from their sources.
//!
//! Not a Rust parser: enough of one for this crate's code. Comments, strings
//! and char literals are blanked first (doc links and log text name modules
//! without depending on them), `#[cfg(test)]` modules and `use`s are cut
//! (tests may reach anywhere), and then every path is resolved to the module
//! file that defines its longest prefix:
//!
//! * `crate::a::b`, `super::x`, `self::x`, with `{...}` groups in `use`;
//! * a bare `child::x` naming a module file under the current one, and
//!   `m::x` where a `use` named module `m` whole;
//! * `name!` invoking a `macro_rules! name` defined in another file.
//!
//! A parent's `mod child;` is not an edge; a child naming its parent's items
//! (`super::f`) is one, as is a parent's `use child::X` or `pub use`.

use std::collections::{BTreeMap, BTreeSet};

/// A module path, `gcb::sys`; `""` is the crate root.
pub type Module = String;

/// Module files by module path: sources with comments and tests removed.
pub struct Crate {
    pub sources: BTreeMap<Module, String>,
    /// Modules declared under `#[cfg(test)]`, with everything below them.
    pub tests: BTreeSet<Module>,
}

impl Crate {
    /// `files` maps paths relative to `src/` (`gcb/sys.rs`) to their text.
    pub fn new(files: &BTreeMap<String, String>) -> Crate {
        let mut sources = BTreeMap::new();
        let mut test_children = BTreeSet::new();
        for (path, text) in files {
            for file in test_module_files(path, text) {
                test_children.insert(module_of(&file));
            }
            sources.insert(module_of(path), cut_tests(&blank(text)));
        }
        let tests = sources
            .keys()
            .filter(|m| test_children.iter().any(|t| *m == t || m.starts_with(&format!("{t}::"))))
            .cloned()
            .collect();
        Crate { sources, tests }
    }

    /// Edges between non-test module files, each with one path that makes it.
    pub fn edges(&self) -> BTreeMap<(Module, Module), String> {
        let macros: BTreeMap<String, Module> = self
            .sources
            .iter()
            .flat_map(|(m, s)| macro_defs(s).into_iter().map(move |name| (name, m.clone())))
            .collect();
        let mut edges = BTreeMap::new();
        for (from, src) in &self.sources {
            if self.tests.contains(from) {
                continue;
            }
            let mut add = |to: Module, why: String| {
                if to != *from && !self.tests.contains(&to) {
                    edges.entry((from.clone(), to)).or_insert(why);
                }
            };
            let all = paths(src);
            // Modules named whole (`use crate::gcb::{self, mgmt}`), by the name
            // they go by here, so that `mgmt::udp::f` counts as the module it reaches.
            let aliases: BTreeMap<&String, Vec<String>> = all
                .iter()
                .filter_map(|path| Some((path.last()?, self.absolute(from, path)?)))
                .filter(|(_, abs)| !abs.is_empty() && self.is_mod_file(&abs.join("::")))
                .collect();
            for path in &all {
                let abs = self.absolute(from, path).or_else(|| {
                    let base = aliases.get(&path[0])?;
                    Some(base.iter().chain(&path[1..]).cloned().collect())
                });
                if let Some(to) = abs.and_then(|abs| self.resolve(&abs)) {
                    add(to, path.join("::"));
                }
            }
            for (name, to) in &macros {
                if invokes(src, name) {
                    add(to.clone(), format!("{name}!"));
                }
            }
        }
        edges
    }

    fn is_mod_file(&self, m: &str) -> bool {
        self.sources.contains_key(m)
    }

    /// The absolute segments of `path` as written in module `from`.
    fn absolute(&self, from: &str, path: &[String]) -> Option<Vec<String>> {
        let mut base: Vec<String> = if from.is_empty() { vec![] } else { from.split("::").map(String::from).collect() };
        let mut rest = path;
        match path.first()?.as_str() {
            "crate" => {
                base.clear();
                rest = &path[1..];
            }
            "self" => rest = &path[1..],
            "super" => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            child if self.is_mod_file(&join(from, child)) => {}
            _ => return None,
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The module file defining the longest prefix of `abs`.
    fn resolve(&self, abs: &[String]) -> Option<Module> {
        (0..=abs.len()).rev().map(|n| abs[..n].join("::")).find(|m| self.is_mod_file(m))
    }
}

pub fn module_of(path: &str) -> Module {
    let path = path.trim_end_matches(".rs");
    let mut parts: Vec<&str> = path.split('/').collect();
    if matches!(parts.last(), Some(&"mod") | Some(&"lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn join(parent: &str, child: &str) -> Module {
    if parent.is_empty() { child.to_string() } else { format!("{parent}::{child}") }
}

/// `text` with comments, string and char literals replaced by spaces.
pub fn blank(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let skip_to = |out: &mut String, from: usize, to: usize| {
        for &c in &b[from..to.min(b.len())] {
            out.push(if c == '\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = (i..b.len()).find(|&j| b[j] == '\n').unwrap_or(b.len());
            skip_to(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j] == '/' && b.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if b[j] == '*' && b.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            skip_to(&mut out, i, j);
            i = j;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_char(i.checked_sub(1).map(|p| b[p])) {
            let hashes = b[i + 1..].iter().take_while(|&&h| h == '#').count();
            if b.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"').chain(std::iter::repeat('#').take(hashes)).collect();
            let body = i + 2 + hashes;
            let rest: String = b[body..].iter().collect();
            let end = rest.find(&close).map(|k| body + rest[..k].chars().count() + close.len()).unwrap_or(b.len());
            skip_to(&mut out, i, end);
            i = end;
        } else if c == '"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                j += if b[j] == '\\' { 2 } else { 1 };
            }
            skip_to(&mut out, i, j + 1);
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), left alone.
            let end = if next == Some('\\') {
                (i + 2..b.len()).find(|&j| b[j] == '\'').map(|j| j + 1)
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    skip_to(&mut out, i, end);
                    i = end;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

const CFG_TEST: &str = "#[cfg(test)]";

/// The files of the modules that `path` declares `#[cfg(test)] mod NAME;`,
/// relative to `src/` like `path`, with their `#[path]` if they have one.
fn test_module_files(path: &str, text: &str) -> Vec<String> {
    let dir = path.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default();
    let own = path.trim_end_matches(".rs");
    let children = if own.ends_with("/mod") || !own.contains('/') && (own == "lib" || own == "mod") {
        dir.clone()
    } else {
        format!("{own}/")
    };
    let mut out = vec![];
    for (at, _) in text.match_indices(CFG_TEST) {
        let mut item = text[at + CFG_TEST.len()..].trim_start();
        let mut file = None;
        if let Some(rest) = item.strip_prefix("#[path = \"") {
            let (name, rest) = rest.split_once("\"]").unwrap_or((rest, ""));
            file = Some(format!("{dir}{name}"));
            item = rest.trim_start();
        }
        let item = item.strip_prefix("pub(crate) ").or(item.strip_prefix("pub ")).unwrap_or(item);
        if let Some(rest) = item.strip_prefix("mod ") {
            let name: String = rest.chars().take_while(|&c| ident_char(Some(c))).collect();
            if rest[name.len()..].trim_start().starts_with(';') {
                out.push(file.unwrap_or_else(|| format!("{children}{name}.rs")));
                out.push(format!("{children}{name}/mod.rs"));
            }
        }
    }
    out
}

/// `src` without the items under `#[cfg(test)]`: inline modules, `use`s, fns.
fn cut_tests(src: &str) -> String {
    let mut out = src.to_string();
    while let Some(at) = out.find(CFG_TEST) {
        let bytes = out.as_bytes();
        let mut j = at + CFG_TEST.len();
        // The item ends at its first `;` outside braces, or the `}` closing its first `{`.
        // A field or argument ends at a `,` or at the `}` closing what holds it.
        let mut depth = 0usize;
        while j < bytes.len() {
            match bytes[j] {
                b'{' | b'(' | b'[' => depth += 1,
                b'}' | b')' | b']' if depth == 0 => break,
                b')' | b']' => depth -= 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    j += 1;
                    break;
                }
                b',' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        out.replace_range(at..j.min(out.len()), "");
    }
    out
}

/// `macro_rules! NAME` definitions in `src`.
fn macro_defs(src: &str) -> Vec<String> {
    src.match_indices("macro_rules!")
        .map(|(at, m)| src[at + m.len()..].trim_start().chars().take_while(|&c| ident_char(Some(c))).collect())
        .collect()
}

fn invokes(src: &str, name: &str) -> bool {
    src.match_indices(&format!("{name}!")).any(|(at, _)| {
        let before = src[..at].chars().next_back();
        let after = src[at + name.len() + 1..].trim_start().chars().next();
        !ident_char(before) && before != Some('$') && matches!(after, Some('(' | '{' | '['))
            && !src[..at].trim_end().ends_with("macro_rules!")
    })
}

/// Every path in `src` with at least two segments, `use` groups expanded.
pub fn paths(src: &str) -> Vec<Vec<String>> {
    let toks = tokens(src);
    let mut out = vec![];
    let mut i = 0;
    while i < toks.len() {
        let starts = toks.get(i + 1).map(String::as_str) == Some("::")
            && ident_char(toks[i].chars().next())
            && !matches!(i.checked_sub(1).map(|p| toks[p].as_str()), Some("::" | "." | "$"));
        if starts {
            i = tree(&toks, i, vec![], &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// Parses a path (tree) at `toks[i]` under `prefix`; returns the index after it.
fn tree(toks: &[String], mut i: usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    loop {
        match toks.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                while toks.get(i).is_some_and(|t| t != "}") {
                    if toks[i] == "," {
                        i += 1;
                        continue;
                    }
                    i = tree(toks, i, prefix.clone(), out);
                }
                return i + 1;
            }
            Some("*") => {
                out.push(prefix);
                return i + 1;
            }
            Some(t) if ident_char(t.chars().next()) => {
                if t != "self" || prefix.is_empty() {
                    prefix.push(t.to_string());
                }
                i += 1;
                if toks.get(i).map(String::as_str) == Some("::") {
                    i += 1;
                    continue;
                }
                if prefix.len() > 1 || matches!(prefix[0].as_str(), "crate" | "super" | "self") {
                    out.push(prefix);
                }
                if toks.get(i).map(String::as_str) == Some("as") {
                    i += 2;
                }
                return i;
            }
            _ => {
                if !prefix.is_empty() {
                    out.push(prefix);
                }
                return i;
            }
        }
    }
}

/// Identifiers, `::`, and single punctuation characters.
fn tokens(src: &str) -> Vec<String> {
    let b: Vec<char> = src.chars().collect();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if ident_char(Some(c)) {
            let start = i;
            while i < b.len() && ident_char(Some(b[i])) {
                i += 1;
            }
            out.push(b[start..i].iter().collect());
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// Groups of two or more modules that import each other, round about.
pub fn cycles(edges: &BTreeMap<(Module, Module), String>) -> Vec<Vec<Module>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
        next.entry(b).or_default();
    }
    // Kosaraju: finish order on the graph, then components on its reverse.
    let mut order = vec![];
    let mut seen = BTreeSet::new();
    for &start in next.keys() {
        let mut stack = vec![(start, 0usize)];
        if !seen.insert(start) {
            continue;
        }
        while let Some((v, k)) = stack.pop() {
            if let Some(&w) = next[v].get(k) {
                stack.push((v, k + 1));
                if seen.insert(w) {
                    stack.push((w, 0));
                }
            } else {
                order.push(v);
            }
        }
    }
    let mut prev: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        prev.entry(b).or_default().push(a);
    }
    let mut done = BTreeSet::new();
    let mut out = vec![];
    for &v in order.iter().rev() {
        if !done.insert(v) {
            continue;
        }
        let mut comp = vec![v.to_string()];
        let mut stack = vec![v];
        while let Some(x) = stack.pop() {
            for &w in prev.get(x).into_iter().flatten() {
                if done.insert(w) {
                    comp.push(w.to_string());
                    stack.push(w);
                }
            }
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}
