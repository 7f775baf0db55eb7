//! Tests of the core without a socket, through its entry points alone:
//! datagrams in, effects out, on a fake host and a clock the test turns
//! (`harness`).
//!
//! * `decisions`: every row of the decision table, TCP and UDP, with the
//!   command each sends and the pairing it leaves, and the refusals;
//! * `register`: new registrations, joins, the port policy, the limits;
//! * `expiry`: every expiry rule: holders and registrations, pairings,
//!   UDP rules, channels, commands;
//! * `commands`: the failed-command rule (issue 9) and ICMP errors;
//! * `pipeline`: the command port's checks (malformed, version, rate limit,
//!   reply cache, status);
//! * `punch`: TCP hole punching: the decision, the meeting carried out,
//!   the outcome cache;
//! * `punch_udp`: UDP hole punching: the decision, `PunchHole`, each
//!   reason not to punch, the connector's report;
//! * `punch_standby`: standby connects, punched or refused before any
//!   command;
//! * `punch_cache`: the outcome cache, TCP and UDP apart, and what the
//!   gauges and the status show of it;
//! * `udp`: the UDP data path and channels;
//! * `clients`: the processes the tests speak for, and the configuration;
//! * `proptests`: random sequences of all of it against the invariants of
//!   the module docs and a model of the decision table.

mod clients;
mod commands;
mod decisions;
mod expiry;
pub(super) mod harness;
mod pipeline;
mod proptests;
mod punch;
mod punch_cache;
mod punch_early;
mod punch_standby;
mod punch_udp;
mod register;
mod udp;
