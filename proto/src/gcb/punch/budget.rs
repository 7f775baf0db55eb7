//! How long the broker lets a TCP punch try (docs/hole-punching.md, "The
//! budget"): long enough for a few attempts on the measured path, no longer,
//! since a punch that cannot connect holds the program's `connect` for its
//! whole budget before the relay takes over.
//!
//! The budget is [`ROUND_TRIPS`] times the sum of the two sides' round trips
//! to the broker, raised to a floor ([`DEFAULT_FLOOR`] unless the operator
//! set `--punch-budget-min-ms`) and cut to the operator's ceiling
//! (`--punch-budget-ms`):
//!
//! * **The sum, not the larger one.** The punched connection runs between the
//!   two sides, whose round trip the broker cannot see. Going through the
//!   broker is one path between them, so the sum of the two round trips to
//!   it is an estimate from above (the triangle inequality, which real routes
//!   keep within small factors); the larger alone underestimates it by up to
//!   half when the broker sits between them.
//! * **Ten round trips** buy about three attempts: the skew between the two
//!   starts (the smoothed RTTs that line them up can be off by up to about
//!   half a round trip), a first SYN refused at the far gateway (one round
//!   trip for its reset) and the dialer's random wait (up to two round
//!   trips), then a SYN that crosses and the hellos checked (one and a half);
//!   libp2p's DCUtR tries three times too.
//! * **The floor** is for the wake-ups and the dialer's timers rather than
//!   the wire. On the test bed, where a round trip is 5 to 13 µs, most
//!   punches that connect do so within a few milliseconds, but a dialer
//!   replaces an attempt that hangs after 50 ms
//!   (`Schedule::attempt_timeout`), and on the gateways that reset
//!   strangers a fifth of the punches that connected needed such a
//!   replacement: with a 2 s budget, 326 of 400 connects punched on
//!   preserve/preserve and invalid-drop/preserve, 64 in more than 50 ms, 21
//!   in more than 80 ms, 15 in more than 100 ms, the slowest in 167 ms
//!   (docs/nat-punching-notes.md, "The budget"). A punch cut short falls
//!   back all the same and blocks the pair's punching for
//!   `--punch-retry-s`, so the floor keeps room for four attempts, with a
//!   loaded machine's wake-ups on top.
//! * **Without both round trips** (the broker could not read `TCP_INFO`) the
//!   ceiling, as before the budget followed the path.
//!
//! The result is a whole number of milliseconds, the unit `PunchGo` carries,
//! rounded up, so the side's deadline and the broker's agree.

use std::time::Duration;

/// The least budget, when the ceiling allows it and the operator did not
/// set another.
pub const DEFAULT_FLOOR: Duration = Duration::from_millis(200);

/// How many times the sum of the two round trips the budget is.
pub const ROUND_TRIPS: u32 = 10;

/// The budget for a punch between sides with these round trips to the
/// broker, between `floor` and `ceiling`. Never above `ceiling`, never below
/// the lesser of `floor` and `ceiling` (the ceiling wins), and never smaller
/// for longer round trips.
pub fn budget(connector_rtt: Option<Duration>, listener_rtt: Option<Duration>, floor: Duration, ceiling: Duration) -> Duration {
    let (Some(c), Some(l)) = (connector_rtt, listener_rtt) else { return ceiling };
    let scaled = c.saturating_add(l).saturating_mul(ROUND_TRIPS);
    whole_ms(scaled.max(floor)).min(ceiling)
}

/// `d` rounded up to a whole millisecond.
fn whole_ms(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn us(n: u64) -> Option<Duration> {
        Some(Duration::from_micros(n))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const CEILING: Duration = Duration::from_millis(500);
    const FLOOR: Duration = DEFAULT_FLOOR;

    #[test]
    fn the_bed_gets_the_floor_a_real_path_its_round_trips_and_a_far_one_the_ceiling() {
        assert_eq!(budget(us(5), us(6), FLOOR, CEILING), FLOOR, "the bed's microsecond round trips");
        // 12 ms and 20 ms: 320 ms.
        assert_eq!(budget(us(12_000), us(20_000), FLOOR, CEILING), ms(320));
        assert_eq!(budget(us(40_000), us(30_000), FLOOR, CEILING), CEILING);
        // Rounded up to the frame's milliseconds.
        assert_eq!(budget(us(10_050), us(10_000), FLOOR, CEILING), ms(201));
    }

    #[test]
    fn the_default_floor_leaves_room_for_four_attempts_of_the_dialer() {
        let attempt = crate::gcb::punch::Schedule::default().attempt_timeout;
        assert!(DEFAULT_FLOOR >= attempt * 4, "the floor assumes attempts replaced after {attempt:?}");
    }

    #[test]
    fn without_both_round_trips_the_ceiling() {
        assert_eq!(budget(None, us(5), FLOOR, CEILING), CEILING);
        assert_eq!(budget(us(5), None, FLOOR, CEILING), CEILING);
        assert_eq!(budget(None, None, FLOOR, ms(900)), ms(900));
    }

    #[test]
    fn the_operators_floor_and_ceiling() {
        assert_eq!(budget(us(5), us(5), ms(3000), ms(3000)), ms(3000), "a fixed budget, as the floor and the ceiling");
        assert_eq!(budget(us(5), us(5), FLOOR, ms(20)), ms(20), "a ceiling under the floor wins");
        assert_eq!(budget(us(5), us(5), FLOOR, ms(150)), ms(150));
        assert_eq!(budget(us(u64::MAX / 2), us(u64::MAX / 2), FLOOR, ms(20)), ms(20));
    }

    fn rtt() -> impl Strategy<Value = Option<Duration>> {
        prop_oneof![
            1 => Just(None),
            8 => (0u64..2_000_000).prop_map(|n| Some(Duration::from_micros(n))),
            1 => any::<u64>().prop_map(|n| Some(Duration::from_nanos(n))),
        ]
    }

    proptest! {
        #[test]
        fn within_floor_and_ceiling(c in rtt(), l in rtt(), floor_ms in 1u64..70_000, ceiling_ms in 1u64..70_000) {
            let (floor, ceiling) = (ms(floor_ms), ms(ceiling_ms));
            let b = budget(c, l, floor, ceiling);
            prop_assert!(b <= ceiling);
            prop_assert!(b >= floor.min(ceiling));
            prop_assert_eq!(b.subsec_nanos() % 1_000_000, 0, "whole milliseconds");
        }

        #[test]
        fn monotone_in_either_round_trip(c in 0u64..2_000_000, l in 0u64..2_000_000, more in 0u64..2_000_000,
                                         floor_ms in 1u64..70_000, ceiling_ms in 1u64..70_000) {
            let (floor, ceiling) = (ms(floor_ms), ms(ceiling_ms));
            let b = budget(us(c), us(l), floor, ceiling);
            prop_assert!(budget(us(c + more), us(l), floor, ceiling) >= b);
            prop_assert!(budget(us(c), us(l + more), floor, ceiling) >= b);
        }

        #[test]
        fn symmetric(c in rtt(), l in rtt(), ceiling_ms in 1u64..70_000) {
            prop_assert_eq!(budget(c, l, FLOOR, ms(ceiling_ms)), budget(l, c, FLOOR, ms(ceiling_ms)));
        }
    }
}
