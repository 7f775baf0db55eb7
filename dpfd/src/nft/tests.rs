//! nftables backend tests: the batch texts are golden strings (they are what
//! the kernel gets), and the listing parser runs on real `nft -j` output
//! (nftables 1.0.6) captured in `listing.json`.

use super::*;

fn key(proto: Proto, port: u16) -> Key {
    Key {
        proto,
        public: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), port),
    }
}

fn local(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), port)
}

const DEFINITION: &str = "table ip dpf {
\tmap fwd_tcp {
\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service
\t}
\tmap fwd_udp {
\t\ttype ipv4_addr . inet_service : ipv4_addr . inet_service
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tdnat ip to ip daddr . tcp dport map @fwd_tcp
\t\tdnat ip to ip daddr . udp dport map @fwd_udp
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tdnat ip to ip daddr . tcp dport map @fwd_tcp
\t\tdnat ip to ip daddr . udp dport map @fwd_udp
\t}
}
";

#[test]
fn golden_table_definition() {
    assert_eq!(table_definition("dpf"), DEFINITION);
}

#[test]
fn golden_element_batch_deletes_first() {
    let ops = [
        ElemOp::Add(key(Proto::Tcp, 40000), local(7000)),
        ElemOp::Del(key(Proto::Udp, 40001)),
        ElemOp::Add(key(Proto::Udp, 40002), local(7002)),
        ElemOp::Del(key(Proto::Tcp, 40003)),
        ElemOp::Add(key(Proto::Tcp, 40003), local(7004)),
    ];
    assert_eq!(
        elements_batch("dpf", &ops),
        "delete element ip dpf fwd_tcp { 203.0.113.1 . 40003 }\n\
         delete element ip dpf fwd_udp { 203.0.113.1 . 40001 }\n\
         add element ip dpf fwd_tcp { 203.0.113.1 . 40000 : 192.0.2.10 . 7000, 203.0.113.1 . 40003 : 192.0.2.10 . 7004 }\n\
         add element ip dpf fwd_udp { 203.0.113.1 . 40002 : 192.0.2.10 . 7002 }\n"
    );
    assert_eq!(elements_batch("dpf", &[]), "");
}

#[test]
fn large_batches_are_split_into_commands() {
    let ops: Vec<ElemOp> = (0..2500)
        .map(|i| ElemOp::Add(key(Proto::Tcp, 40000 + i), local(1)))
        .collect();
    let text = elements_batch("t", &ops);
    assert_eq!(text.lines().count(), 3);
    assert!(text
        .lines()
        .all(|l| l.starts_with("add element ip t fwd_tcp { ")));
    assert_eq!(text.matches(" : ").count(), 2500);
}

#[test]
fn golden_install_batch() {
    let mut elements = Elements::new();
    elements.insert(key(Proto::Udp, 40001), local(53));
    elements.insert(key(Proto::Tcp, 40000), local(80));
    assert_eq!(
        install_batch("dpf", &elements),
        format!(
            "add table ip dpf\ndelete table ip dpf\n{DEFINITION}\
             add element ip dpf fwd_tcp {{ 203.0.113.1 . 40000 : 192.0.2.10 . 80 }}\n\
             add element ip dpf fwd_udp {{ 203.0.113.1 . 40001 : 192.0.2.10 . 53 }}\n"
        )
    );
}

const LISTING: &str = include_str!("listing.json");

#[test]
fn parses_a_real_listing() {
    let l = parse_listing(LISTING, "dpf").unwrap();
    assert!(l.present && l.structure_ok, "{l:?}");
    let mut want = Elements::new();
    want.insert(key(Proto::Tcp, 40000), local(7000));
    want.insert(key(Proto::Tcp, 40001), local(80));
    want.insert(
        key(Proto::Udp, 40002),
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 53),
    );
    assert_eq!(l.elements, want);
}

#[test]
fn damaged_structure_is_noticed() {
    let v: Value = serde_json::from_str(LISTING).unwrap();
    let items = v["nftables"].as_array().unwrap().clone();
    let without = |pred: &dyn Fn(&Value) -> bool| {
        let kept: Vec<Value> = items.iter().filter(|i| !pred(i)).cloned().collect();
        let text = serde_json::json!({ "nftables": kept }).to_string();
        parse_listing(&text, "dpf").unwrap()
    };
    // A rule missing from one chain.
    let l = without(&|i| {
        i.get("rule")
            .is_some_and(|r| r["chain"] == "output" && r.to_string().contains("fwd_udp"))
    });
    assert!(l.present && !l.structure_ok);
    // A map missing.
    let l = without(&|i| i.get("map").is_some_and(|m| m["name"] == "fwd_udp"));
    assert!(!l.structure_ok);
    assert_eq!(l.elements.len(), 2, "the TCP map's elements are still read");
    // A chain missing.
    assert!(!without(&|i| i.get("chain").is_some_and(|c| c["name"] == "prerouting")).structure_ok);
    // Another table's name is not ours.
    let other = parse_listing(LISTING, "other").unwrap();
    assert!(!other.present && other.elements.is_empty());
}

#[test]
fn garbage_listing_is_an_error() {
    assert!(parse_listing("not json", "dpf").is_err());
    assert!(parse_listing("{}", "dpf").is_err());
    let bad_elem = LISTING.replace("\"192.0.2.10\", 7000", "\"192.0.2.10\", \"x\"");
    assert!(parse_listing(&bad_elem, "dpf").is_err());
}
