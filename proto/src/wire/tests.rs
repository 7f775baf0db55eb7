//! Codec tests: byte order, limits, strictness, fixed buffers.

use super::*;

#[test]
fn integers_and_addresses_are_big_endian() {
    let mut w = Writer::new(Vec::new());
    w.u16(0x0102);
    w.u32(0x0304_0506);
    w.u64(0x0708_090a_0b0c_0d0e);
    w.addr(&"192.0.2.1:65432".parse().unwrap());
    let v = w.finish().unwrap();
    assert_eq!(
        v,
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 192, 0, 2, 1, 0xff, 0x98]
    );
    let mut r = Reader::new(&v);
    assert_eq!(r.u16(), Ok(0x0102));
    assert_eq!(r.u32(), Ok(0x0304_0506));
    assert_eq!(r.u64(), Ok(0x0708_090a_0b0c_0d0e));
    assert_eq!(r.addr(), Ok("192.0.2.1:65432".parse().unwrap()));
    assert_eq!(r.finish(), Ok(()));
    assert_eq!(r.u8(), Err(DecodeError::Truncated));
}

#[test]
fn strings_respect_limits_both_ways() {
    let mut w = Writer::new(Vec::new());
    w.str8("abc", 3, "s");
    w.str16("de", 10, "t");
    let v = w.finish().unwrap();
    assert_eq!(v, b"\x03abc\x00\x02de");
    let mut r = Reader::new(&v);
    assert_eq!(
        r.str8(2, "s"),
        Err(DecodeError::TooLong {
            what: "s",
            len: 3,
            max: 2
        })
    );
    let mut r = Reader::new(&v);
    assert_eq!(r.str8(3, "s").as_deref(), Ok("abc"));
    assert_eq!(r.str16(10, "t").as_deref(), Ok("de"));

    let mut w = Writer::new(Vec::new());
    w.str8("abcd", 3, "s");
    w.u8(1); // ignored after the first error
    assert_eq!(
        w.finish(),
        Err(EncodeError::TooLong {
            what: "s",
            len: 4,
            max: 3
        })
    );

    let bad_utf8 = [2u8, 0xff, 0xfe];
    assert_eq!(
        Reader::new(&bad_utf8).str8(9, "s"),
        Err(DecodeError::BadValue("s"))
    );
    let short = [5u8, b'a'];
    assert_eq!(
        Reader::new(&short).str8(9, "s"),
        Err(DecodeError::Truncated)
    );
}

#[test]
fn truncation_keeps_utf8_valid() {
    assert_eq!(truncate_str("abc", 5), "abc");
    assert_eq!(truncate_str("abc", 2), "ab");
    assert_eq!(truncate_str("aé", 2), "a");
    assert_eq!(truncate_str("é", 0), "");
}

#[test]
fn counts_are_checked_against_remaining_input() {
    // 200 claimed items of 6 bytes cannot fit in 3 bytes: rejected early.
    let buf = [200u8, 0, 0, 0];
    assert_eq!(
        Reader::new(&buf).count8(255, 6, "l"),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        Reader::new(&buf).count8(100, 6, "l"),
        Err(DecodeError::TooLong {
            what: "l",
            len: 200,
            max: 100
        })
    );
    let mut w = Writer::new(Vec::new());
    assert!(!w.count8(300, 255, "l"));
    assert!(w.finish().is_err());
}

#[test]
fn option_tags_are_strict() {
    assert_eq!(
        Reader::new(&[2]).opt_tag(),
        Err(DecodeError::BadValue("option tag"))
    );
    let mut w = Writer::new(Vec::new());
    w.opt_u16(Some(7));
    w.opt_u16(None);
    w.opt_addr(&None);
    let v = w.finish().unwrap();
    assert_eq!(v, [1, 0, 7, 0, 0]);
    let mut r = Reader::new(&v);
    assert_eq!(r.opt_u16(), Ok(Some(7)));
    assert_eq!(r.opt_u16(), Ok(None));
    assert_eq!(r.opt_addr(), Ok(None));
}

#[test]
fn slice_sink_reports_overflow_without_panicking() {
    let mut buf = [0u8; 3];
    let mut w = Writer::new(SliceSink::new(&mut buf));
    w.u16(0xabcd);
    w.u16(0xef01);
    assert_eq!(w.finish().unwrap_err(), EncodeError::BufferFull { at: 2 });

    let mut buf = [0u8; 4];
    let mut w = Writer::new(SliceSink::new(&mut buf));
    w.u32(0xdead_beef);
    assert_eq!(w.finish().unwrap().len(), 4);
    assert_eq!(buf, [0xde, 0xad, 0xbe, 0xef]);
}

proptest::proptest! {
    #![proptest_config(crate::strategies::config())]

    /// Status pages and error details are cut with this: the cut is a
    /// prefix, within the limit, on a character boundary, and as long as
    /// the limit allows.
    #[test]
    fn truncate_str_cuts_on_a_boundary_within_the_limit(s in "\\PC{0,40}", max in 0usize..130) {
        let cut = truncate_str(&s, max);
        proptest::prop_assert!(s.starts_with(cut));
        proptest::prop_assert!(cut.len() <= max);
        let next = s[cut.len()..].chars().next();
        proptest::prop_assert!(cut.len() == s.len() || cut.len() + next.unwrap().len_utf8() > max);
    }
}
