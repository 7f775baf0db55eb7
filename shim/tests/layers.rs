//! The shim's layers, checked: no module file imports one in a layer above
//! its own, neither client imports the other, and no import cycle joins
//! module files (lib.rs describes the layers). The import graph is read from
//! the sources ([`scan`]); `cargo test -p shim --test layers -- --nocapture`
//! prints it.

#[path = "layers/scan.rs"]
mod scan;

use std::collections::BTreeMap;
use std::path::Path;

use scan::{Crate, Module};

/// Each module's layer, by the longest matching module path ("" is lib.rs
/// alone). A file imports only from its own layer or the ones below it; a
/// module that matches no entry is a breach, so a new top-level module gets
/// its layer here.
const LAYERS: &[(&str, Layer)] = &[
    ("", Layer::Hooks),
    ("hooks", Layer::Hooks),
    ("hook", Layer::Hooks),
    ("init", Layer::Dispatch),
    ("managed", Layer::Dispatch),
    ("detour", Layer::Dispatch),
    ("reclaim", Layer::Dispatch),
    ("gcb", Layer::Clients),
    ("dpf", Layer::Clients),
    ("client", Layer::Core),
    ("fdtable", Layer::Core),
    ("internal", Layer::Core),
    ("responder", Layer::Core),
    ("process", Layer::Core),
    ("guard", Layer::Base),
    ("real", Layer::Base),
    ("log", Layer::Base),
    ("config", Layer::Base),
    ("route", Layer::Base),
];

/// From the bottom up; `proto`, a crate of its own, lies below them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    /// Needs nothing of the shim: libc's functions, errno, logging, configuration.
    Base,
    /// What both clients build on: fd records, the shim's own fds, the responder.
    Core,
    /// The GCB and DPF clients.
    Clients,
    /// The one place that decides whether the shim handles a call, and init.
    Dispatch,
    /// The exported functions and the `hook!` machinery.
    Hooks,
}

fn layer_of(table: &[(&str, Layer)], m: &str) -> Option<Layer> {
    table
        .iter()
        .filter(|(p, _)| m == *p || (!p.is_empty() && m.starts_with(&format!("{p}::"))))
        .max_by_key(|(p, _)| p.len())
        .map(|&(_, l)| l)
}

/// The top-level module `m` belongs to (`gcb` for `gcb::udp::send`).
fn top(m: &str) -> &str {
    m.split("::").next().unwrap_or(m)
}

/// Every breach of the rules: cycles, upward imports, one client importing
/// the other, modules without a layer.
fn breaches(krate: &Crate, table: &[(&str, Layer)]) -> Vec<String> {
    let edges = krate.edges();
    let mut out = vec![];
    for cycle in scan::cycles(&edges) {
        out.push(format!("cycle: {}", cycle.join(" ")));
    }
    for ((from, to), why) in &edges {
        match (layer_of(table, from), layer_of(table, to)) {
            (Some(a), Some(b)) if a < b => out.push(format!("up: {from} ({a:?}) -> {to} ({b:?}) by {why}")),
            // The clients are peers: what they share lives in the core.
            (Some(Layer::Clients), Some(Layer::Clients)) if top(from) != top(to) => {
                out.push(format!("across: {from} -> {to} by {why}"))
            }
            (Some(_), Some(_)) => {}
            _ => out.push(format!("no layer: {from} or {to}")),
        }
    }
    out
}

fn read_tree(dir: &Path, root: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            read_tree(&path, root, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            files.insert(rel, std::fs::read_to_string(&path).expect("read source"));
        }
    }
}

fn shim() -> Crate {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    read_tree(&root, &root, &mut files);
    assert!(files.len() > 50, "found only {} files under {}", files.len(), root.display());
    Crate::new(&files)
}

#[test]
fn no_cycle_and_no_upward_import() {
    let krate = shim();
    let edges = krate.edges();
    let mut by_module: BTreeMap<&Module, Vec<&Module>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        by_module.entry(from).or_default().push(to);
    }
    for (from, tos) in &by_module {
        let layer = layer_of(LAYERS, from).map(|l| format!("{l:?}")).unwrap_or_default();
        println!("{from:>28} {layer:>8} -> {}", tos.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(" "));
    }
    let found = breaches(&krate, LAYERS);
    assert!(found.is_empty(), "{} breaches of the shim's layers:\n{}", found.len(), found.join("\n"));
}

fn synthetic(files: &[(&str, &str)]) -> Crate {
    Crate::new(&files.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect())
}

#[test]
fn the_checker_finds_a_cycle_and_an_upward_import() {
    let krate = synthetic(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod low;"),
        ("c.rs", "pub fn z() { crate::low::leaf::h() }"),
        ("a.rs", "use crate::b::{self, X as Y};\nfn f() { b::g(); }"),
        ("b.rs", "pub fn g() { crate::a::f() }"),
        ("low/mod.rs", "pub mod leaf;"),
        ("low/leaf.rs", "pub fn h() { super::super::a::f() }"),
    ]);
    let table = [("", Layer::Hooks), ("a", Layer::Clients), ("b", Layer::Clients), ("low", Layer::Base)];
    assert_eq!(
        breaches(&krate, &table),
        vec![
            "cycle: a b".to_string(),
            "across: a -> b by crate::b".to_string(),
            "across: b -> a by crate::a::f".to_string(),
            "no layer: c or low::leaf".to_string(),
            "up: low::leaf (Base) -> a (Clients) by super::super::a::f".to_string(),
        ]
    );
}

#[test]
fn the_checker_sees_parents_children_macros_and_skips_comments_and_tests() {
    let krate = synthetic(&[
        ("lib.rs", "#[macro_use] pub mod log; pub mod p;"),
        ("log.rs", "macro_rules! log { () => { $crate::p::no() } }"),
        ("p/mod.rs", "pub mod c; pub mod d; pub mod e; #[cfg(test)] mod t;\nuse c::Thing;\npub fn f() {}"),
        ("p/c.rs", "// crate::p::d::x()\npub fn g() { let s = \"crate::p::d\"; super::f(); log!(); }"),
        ("p/e.rs", "use crate::p;\npub fn h() { p::c::g() }"),
        ("p/d.rs", "#[cfg(test)]\nmod tests { use crate::p::c; }\n#[cfg(test)] use crate::p::c::g;"),
        ("p/t.rs", "use crate::p::d;"),
    ]);
    let edges: Vec<_> = krate.edges().into_keys().collect();
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(edges, vec![pair("p", "p::c"), pair("p::c", "log"), pair("p::c", "p"), pair("p::e", "p"), pair("p::e", "p::c")]);
    assert_eq!(scan::cycles(&krate.edges()), vec![vec!["p".to_string(), "p::c".to_string()]]);
}
