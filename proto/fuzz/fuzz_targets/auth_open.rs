//! Fuzzes `auth::open` and `auth::verify`: arbitrary datagrams must never
//! panic, never verify under a key the fuzzer does not know, and a datagram
//! sealed from the input must open to exactly the input once and then be a
//! replay.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::auth::{open, seal, verify, AuthError, Key, ReplayGuard, Stamp};

const NOW: u64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let key = Key::new(b"fuzzing key the input cannot know");
    let now = data.get(..8).map_or(NOW, |b| u64::from_be_bytes(b.try_into().unwrap()));
    assert!(verify(data, &key, now).is_err());

    let mut sealed = data.to_vec();
    if seal(&mut sealed, &key, Stamp { unix_ms: NOW, nonce: 1 }).is_ok() {
        let mut guard = ReplayGuard::new(4);
        let opened = open(&sealed, &key, NOW, &mut guard).expect("own seal opens");
        let mut expected = data.to_vec();
        expected[6] &= !0x02;
        assert_eq!(opened, expected);
        assert_eq!(open(&sealed, &key, NOW, &mut guard), Err(AuthError::Replayed));
    }
});
