//! Unit and property tests of sealing, verification and the replay guard.

use super::*;
use crate::gcb::{self, Message};
use crate::strategies;
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000;

fn key() -> Key {
    Key::new(b"correct horse battery staple")
}

fn stamp(nonce: u64) -> Stamp {
    Stamp {
        unix_ms: NOW,
        nonce,
    }
}

fn sealed(msg: &Message, id: u64, st: Stamp) -> Vec<u8> {
    let mut bytes = gcb::encode(msg, id).unwrap();
    seal(&mut bytes, &key(), st).unwrap();
    bytes
}

#[test]
fn round_trip_restores_the_decodable_message() {
    let msg = Message::Heartbeat { held: vec![] };
    let plain = gcb::encode(&msg, 7).unwrap();
    let bytes = sealed(&msg, 7, stamp(1));
    assert_eq!(bytes.len(), plain.len() + AUTH_TRAILER_LEN);
    assert_ne!(bytes[6] & Flags::AUTHENTICATED.bits(), 0);
    // A receiver without the key refuses the sealed form outright.
    assert_eq!(
        gcb::decode(&bytes),
        Err(crate::DecodeError::AuthUnsupported)
    );
    let mut guard = ReplayGuard::new(16);
    let opened = open(&bytes, &key(), NOW + 5, &mut guard).unwrap();
    assert_eq!(opened, plain);
    assert_eq!(gcb::decode(&opened).unwrap().1, msg);
}

#[test]
fn golden_trailer_layout() {
    let msg = Message::Heartbeat { held: vec![] };
    let bytes = sealed(
        &msg,
        1,
        Stamp {
            unix_ms: 0x0102030405060708,
            nonce: 0x1112131415161718,
        },
    );
    let n = bytes.len();
    assert_eq!(&bytes[n - 48..n - 40], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        &bytes[n - 40..n - 32],
        &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
    );
    let mut mac = HmacSha256::new_from_slice(b"correct horse battery staple").unwrap();
    mac.update(&bytes[..n - 32]);
    assert_eq!(&bytes[n - 32..], &mac.finalize().into_bytes()[..]);
}

#[test]
fn unauthenticated_wrong_key_and_short_input_are_refused() {
    let msg = Message::Heartbeat { held: vec![] };
    let plain = gcb::encode(&msg, 7).unwrap();
    assert_eq!(verify(&plain, &key(), NOW), Err(AuthError::Missing));
    assert_eq!(verify(&[], &key(), NOW), Err(AuthError::Missing));
    let bytes = sealed(&msg, 7, stamp(1));
    assert_eq!(
        verify(&bytes, &Key::new(b"other"), NOW),
        Err(AuthError::BadMac)
    );
    // Stripping the trailer but keeping the flag: short, or a bad MAC.
    assert!(verify(&bytes[..bytes.len() - 1], &key(), NOW).is_err());
}

#[test]
fn stale_both_ways_and_window_edges() {
    let msg = Message::Heartbeat { held: vec![] };
    let old = sealed(
        &msg,
        1,
        Stamp {
            unix_ms: NOW - WINDOW_MS - 1,
            nonce: 1,
        },
    );
    assert_eq!(
        verify(&old, &key(), NOW),
        Err(AuthError::Stale {
            skew_ms: -(WINDOW_MS as i64) - 1
        })
    );
    let future = sealed(
        &msg,
        1,
        Stamp {
            unix_ms: NOW + WINDOW_MS + 1,
            nonce: 1,
        },
    );
    assert!(matches!(
        verify(&future, &key(), NOW),
        Err(AuthError::Stale { .. })
    ));
    let edge = sealed(
        &msg,
        1,
        Stamp {
            unix_ms: NOW - WINDOW_MS,
            nonce: 1,
        },
    );
    assert!(verify(&edge, &key(), NOW).is_ok());
    let extreme = sealed(
        &msg,
        1,
        Stamp {
            unix_ms: u64::MAX,
            nonce: 1,
        },
    );
    assert!(matches!(
        verify(&extreme, &key(), 0),
        Err(AuthError::Stale { .. })
    ));
}

#[test]
fn replay_is_refused_but_a_new_nonce_passes() {
    let msg = Message::Heartbeat { held: vec![] };
    let first = sealed(&msg, 1, stamp(1));
    let mut guard = ReplayGuard::new(16);
    assert!(open(&first, &key(), NOW, &mut guard).is_ok());
    assert_eq!(
        open(&first, &key(), NOW + 1000, &mut guard),
        Err(AuthError::Replayed)
    );
    assert!(open(&sealed(&msg, 1, stamp(2)), &key(), NOW, &mut guard).is_ok());
    // Once out of the window the stamp is forgotten, and refused as stale.
    assert!(matches!(
        open(&first, &key(), NOW + WINDOW_MS + 1, &mut guard),
        Err(AuthError::Stale { .. })
    ));
    // Admitting anything later prunes the stamps that left the window.
    let later = NOW + WINDOW_MS + 1;
    guard
        .admit(
            Stamp {
                unix_ms: later,
                nonce: 3,
            },
            later,
        )
        .unwrap();
    assert_eq!(guard.len(), 1);
}

#[test]
fn sealing_twice_or_garbage_is_refused() {
    let msg = Message::Heartbeat { held: vec![] };
    let mut bytes = sealed(&msg, 1, stamp(1));
    assert_eq!(
        seal(&mut bytes, &key(), stamp(2)),
        Err(SealError::AlreadySealed)
    );
    assert_eq!(
        seal(&mut vec![1, 2], &key(), stamp(2)),
        Err(SealError::NotAMessage)
    );
    let mut huge = vec![0u8; MAX_SEALED_MESSAGE + 1];
    assert_eq!(seal(&mut huge, &key(), stamp(2)), Err(SealError::TooLong));
}

#[test]
fn full_guard_fails_closed_on_what_it_forgot() {
    let mut guard = ReplayGuard::new(3);
    for i in 0..3 {
        guard
            .admit(
                Stamp {
                    unix_ms: NOW + i,
                    nonce: i,
                },
                NOW,
            )
            .unwrap();
    }
    // A fourth pushes out the oldest (NOW + 0): it, and anything not newer,
    // can no longer be vouched for.
    guard
        .admit(
            Stamp {
                unix_ms: NOW + 3,
                nonce: 3,
            },
            NOW,
        )
        .unwrap();
    assert_eq!(guard.len(), 3);
    assert_eq!(
        guard.admit(
            Stamp {
                unix_ms: NOW,
                nonce: 0
            },
            NOW
        ),
        Err(AuthError::Replayed)
    );
    assert_eq!(
        guard.admit(
            Stamp {
                unix_ms: NOW,
                nonce: 99
            },
            NOW
        ),
        Err(AuthError::Replayed)
    );
    assert!(guard
        .admit(
            Stamp {
                unix_ms: NOW + 4,
                nonce: 4
            },
            NOW
        )
        .is_ok());
}

proptest! {
    #![proptest_config(strategies::config())]

    #[test]
    fn any_tampered_byte_fails(msg in strategies::gcb_message(), id: u64, nonce: u64,
                               at: prop::sample::Index, flip in 1u8..=255) {
        let mut bytes = gcb::encode(&msg, id).unwrap();
        seal(&mut bytes, &key(), Stamp { unix_ms: NOW, nonce }).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(verify(&bytes, &key(), NOW).is_err());
    }

    #[test]
    fn every_message_round_trips(msg in strategies::gcb_message(), id: u64, nonce: u64,
                                 skew in -(WINDOW_MS as i64)..=(WINDOW_MS as i64)) {
        let plain = gcb::encode(&msg, id).unwrap();
        let mut bytes = plain.clone();
        let st = Stamp { unix_ms: NOW, nonce };
        seal(&mut bytes, &key(), st).unwrap();
        let now = NOW.checked_add_signed(skew).unwrap();
        let mut guard = ReplayGuard::new(4);
        prop_assert_eq!(open(&bytes, &key(), now, &mut guard), Ok(plain));
        prop_assert_eq!(open(&bytes, &key(), now, &mut guard), Err(AuthError::Replayed));
    }

    #[test]
    fn garbage_never_panics_and_never_verifies(bytes in prop::collection::vec(any::<u8>(), 0..200),
                                               now: u64) {
        prop_assert!(verify(&bytes, &key(), now).is_err());
    }

    #[test]
    fn guard_stays_bounded_and_admits_each_stamp_once(
        stamps in prop::collection::vec((0u64..5_000, 0u64..8), 1..300), cap in 1usize..32) {
        let mut guard = ReplayGuard::new(cap);
        let mut admitted = std::collections::HashSet::new();
        for (offset, nonce) in stamps {
            let st = Stamp { unix_ms: NOW + offset, nonce };
            if guard.admit(st, NOW).is_ok() {
                prop_assert!(admitted.insert(st), "{st:?} admitted twice");
            }
            prop_assert!(guard.len() <= cap);
        }
    }
}
