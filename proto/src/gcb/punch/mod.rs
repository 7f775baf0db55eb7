//! TCP hole punching between two private realms (docs/hole-punching.md):
//! the frames on the rendezvous and punched connections (`frames`, and
//! `first`, which tells a punch's hello from a relay's), the per-role proof
//! each side shows on the punched connection (`proof`), the broker's meeting
//! of the two sides (`meeting`) with the time it gives them (`budget`), and
//! each side's dialing (`dialer`), and the claim of a held standby
//! connection (`standby`). No I/O here: the broker and the shim
//! carry the effects out.

pub mod budget;
mod dialer;
mod first;
mod frames;
mod meeting;
mod proof;
mod standby;

pub use first::{FirstFrame, FirstFrameReader};
pub use dialer::{ConnId, DialFailure, Dialer, Do, Schedule};
pub use frames::{BrokerFrame, BrokerFrameReader, PunchFailure, PunchGo, PunchHello, PunchReport, PunchVerdict};
pub use proof::{PeerHello, PunchProof};
pub use standby::{STANDBY_CLAIM, STANDBY_TAKEN};
pub use meeting::{line_up, Arrival, Effect, FallbackReason, Meeting, Outcome, Policy, SkipReason};

#[cfg(test)]
mod tests;
