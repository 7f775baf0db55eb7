//! Mirror file tests: the record codec, replay rules, torn and corrupt
//! records, group commit, compaction, and the lock.

use super::*;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

fn fwd(public_port: u16, local_port: u16, gen: u64) -> Forward {
    Forward {
        proto: Proto::Tcp,
        public: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), public_port),
        local: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), local_port),
        mgmt_port: 5555,
        gen,
        created: 1_700_000_000,
        lease: None,
    }
}

fn add(f: Forward) -> Record {
    Record {
        op: Op::Add,
        fwd: f,
    }
}

fn del(f: Forward) -> Record {
    Record {
        op: Op::Del,
        fwd: f,
    }
}

fn bytes(records: &[Record]) -> Vec<u8> {
    let mut out = HEADER.as_bytes().to_vec();
    for r in records {
        r.encode(&mut out);
    }
    out
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dpfd-mirror-{}-{n}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn golden_record_and_round_trip() {
    let mut out = Vec::new();
    add(fwd(40000, 7000, 17)).encode(&mut out);
    let line = String::from_utf8(out.clone()).unwrap();
    let body = "add tcp 203.0.113.1:40000 192.0.2.10:7000 5555 17 1700000000";
    assert_eq!(line, format!("{body} {:08x}\n", crc32(body.as_bytes())));
    assert_eq!(
        Record::parse(&out[..out.len() - 1]),
        Ok(add(fwd(40000, 7000, 17)))
    );
    let mut udp = del(fwd(1, 2, 3));
    udp.fwd.proto = Proto::Udp;
    let mut out = Vec::new();
    udp.encode(&mut out);
    assert!(out.starts_with(b"del udp "));
    assert_eq!(Record::parse(&out[..out.len() - 1]), Ok(udp));
}

#[test]
fn parse_rejects_damage() {
    let mut out = Vec::new();
    add(fwd(40000, 7000, 17)).encode(&mut out);
    let line = &out[..out.len() - 1];
    for i in 0..line.len() {
        let mut bad = line.to_vec();
        bad[i] ^= 0x01;
        assert!(Record::parse(&bad).is_err(), "flip at {i} accepted");
    }
    assert!(Record::parse(b"").is_err());
    assert!(Record::parse(b"add tcp x").is_err());
    assert!(Record::parse(&line[..line.len() - 1]).is_err());
}

#[test]
fn replay_applies_adds_and_generation_matched_deletes() {
    let a = fwd(40000, 7000, 1);
    let b = fwd(40001, 7001, 2);
    let a2 = Forward {
        mgmt_port: 6000,
        ..a
    };
    // A delete of generation 1 after generation 3 took the address: no-op.
    let c = fwd(40000, 7002, 3);
    let r = replay(&bytes(&[add(a), add(b), add(a2), del(b), add(c), del(a)]));
    assert_eq!(r.live, vec![c]);
    assert_eq!((r.records, r.torn, r.corrupt.len()), (6, 0, 0));

    let r = replay(&bytes(&[add(a), add(a2)]));
    assert_eq!(
        r.live,
        vec![a2],
        "an add overwrites: the reuse with new client info"
    );
}

#[test]
fn replay_keeps_the_newest_forward_of_a_local_socket() {
    // A move whose delete record never made it: two forwards for 7000.
    let old = fwd(40000, 7000, 1);
    let new = fwd(40005, 7000, 2);
    let r = replay(&bytes(&[add(old), add(new)]));
    assert_eq!((r.live, r.superseded), (vec![new], 1));
}

#[test]
fn torn_last_record_is_ignored() {
    let good = bytes(&[add(fwd(40000, 7000, 1)), add(fwd(40001, 7001, 2))]);
    let mut torn = good.clone();
    let mut last = Vec::new();
    add(fwd(40002, 7002, 3)).encode(&mut last);
    torn.extend_from_slice(&last[..20]);
    let r = replay(&torn);
    assert_eq!(r.live.len(), 2);
    assert_eq!((r.torn, r.valid_len, r.corrupt.len()), (20, good.len(), 0));
}

#[test]
fn corrupt_records_are_counted_and_skipped() {
    let mut data = bytes(&[
        add(fwd(40000, 7000, 1)),
        add(fwd(40001, 7001, 2)),
        add(fwd(40002, 7002, 3)),
    ]);
    // Damage the second record (line 3, after the header).
    let start = data
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0
        + 1;
    data[start + 10] = b'9';
    let r = replay(&data);
    assert_eq!(r.corrupt, vec![3]);
    assert_eq!(r.live.iter().map(|f| f.gen).collect::<Vec<_>>(), [1, 3]);
    // A corrupt last record (complete line) is skipped the same way.
    let len = data.len();
    data[len - 3] ^= 0x04;
    assert_eq!(replay(&data).live.len(), 1);
}

#[test]
fn file_append_commit_reopen_and_torn_tail_cut() {
    let dir = temp_dir();
    let path = dir.join("mirror");
    let (mut m, r) = MirrorFile::open(&path).unwrap();
    assert_eq!(r, Replay::default());
    m.append(&add(fwd(40000, 7000, 1)));
    m.append(&add(fwd(40001, 7001, 2)));
    assert!(m.has_pending());
    m.commit().unwrap();
    assert!(!m.has_pending());
    m.append(&del(fwd(40000, 7000, 1)));
    m.commit().unwrap();
    drop(m);

    // A crash in the middle of a write leaves half a record.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"add tcp 203.0.113.1:40002 192.0").unwrap();
    drop(f);
    let (mut m, r) = MirrorFile::open(&path).unwrap();
    assert_eq!(r.live, vec![fwd(40001, 7001, 2)]);
    assert!(r.torn > 0);
    // The next record is whole, not glued to the torn bytes.
    m.append(&add(fwd(40003, 7003, 4)));
    m.commit().unwrap();
    let r = m.load().unwrap();
    assert_eq!((r.live.len(), r.torn, r.corrupt.len()), (2, 0, 0));
    drop(m);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn compaction_keeps_only_the_live_set() {
    let dir = temp_dir();
    let path = dir.join("mirror");
    let (mut m, _) = MirrorFile::open(&path).unwrap();
    for i in 0..50 {
        m.append(&add(fwd(40000 + i, 7000 + i, u64::from(i) + 1)));
    }
    for i in 0..45 {
        m.append(&del(fwd(40000 + i, 7000 + i, u64::from(i) + 1)));
    }
    m.commit().unwrap();
    let live = m.load().unwrap().live;
    assert_eq!(live.len(), 5);
    let before = fs::metadata(&path).unwrap().len();
    m.compact(&live, 1_700_000_000).unwrap();
    let after = fs::metadata(&path).unwrap().len();
    assert!(after < before / 10, "{before} -> {after}");
    assert_eq!(fs::read(&path).unwrap(), compacted(&live, 1_700_000_000));
    assert_eq!(m.load().unwrap().epoch, Some(1_700_000_000));
    assert!(!dir.join("mirror.tmp").exists());
    // Appends go to the new file.
    m.append(&del(live[0]));
    m.commit().unwrap();
    assert_eq!(m.load().unwrap().live, live[1..]);
    drop(m);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn second_opener_is_refused() {
    let dir = temp_dir();
    let path = dir.join("mirror");
    let (m, _) = MirrorFile::open(&path).unwrap();
    let err = MirrorFile::open(&path).err().unwrap();
    assert!(err.contains("in use by another dpfd"), "{err}");
    drop(m);
    assert!(MirrorFile::open(&path).is_ok());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn leased_records_and_the_epoch_line() {
    let mut f = fwd(40001, 5000, 18);
    f.mgmt_port = 0;
    f.lease = Some(Lease {
        via: Via::Pcp,
        nonce: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        expires: 1_700_007_200,
    });
    let mut out = Vec::new();
    add(f).encode(&mut out);
    let line = String::from_utf8(out.clone()).unwrap();
    assert!(
        line.starts_with(
            "add tcp 203.0.113.1:40001 192.0.2.10:5000 0 18 1700000000 pcp 1700007200 0102030405060708090a0b0c "
        ),
        "{line}"
    );
    assert_eq!(Record::parse(&out[..out.len() - 1]), Ok(add(f)));
    let mut natpmp = f;
    natpmp.lease = Some(Lease {
        via: Via::NatPmp,
        nonce: [0; 12],
        expires: 5,
    });
    let mut bytes = HEADER.as_bytes().to_vec();
    epoch_line(1_699_999_000, &mut bytes);
    add(natpmp).encode(&mut bytes);
    let r = replay(&bytes);
    assert_eq!(
        (r.epoch, r.live.clone(), r.corrupt.clone()),
        (Some(1_699_999_000), vec![natpmp], vec![])
    );
    // A damaged epoch line is corrupt like any record; a later one wins.
    let mut bad = bytes.clone();
    bad.extend_from_slice(b"epoch 12 00000000\n");
    epoch_line(1_699_999_500, &mut bad);
    let r = replay(&bad);
    assert_eq!((r.epoch, r.corrupt), (Some(1_699_999_500), vec![4]));
    for broken in ["pcp 1", "xyz 1 00", "pcp 1 0102"] {
        let body = format!("add tcp 203.0.113.1:40001 192.0.2.10:5000 0 18 1700000000 {broken}");
        let mut line = Vec::new();
        checked_line(&body, &mut line);
        assert!(Record::parse(&line[..line.len() - 1]).is_err(), "{broken}");
    }
}
