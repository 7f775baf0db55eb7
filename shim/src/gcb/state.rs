//! The GCB client's registry behind its one lock: [`with`], which also gives a
//! forked child's first use its own share of the state, and the `fork`
//! handlers' part in taking and releasing the lock; and the marker through
//! which the modules below start the responder ([`ensure_responder`]).

use super::registry::{bells, serving, Registry};
use super::reversal_listener;
use crate::client::lock::Lock;

static REGISTRY: Lock<Option<Registry>> = Lock::new(None);

/// Runs `f` on the registry, locked. `f` must not block and must not call `with`.
pub fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = REGISTRY.lock();
    let reg = guard.get_or_insert_with(Registry::new);
    let generation = crate::client::lock::fork_generation();
    if reg.generation != generation {
        reg.generation = generation;
        after_fork_in_child(reg);
    }
    f(reg)
}

/// First use in a forked child: the parent's work in progress is the
/// parent's, and so are its management sockets. The child closes its copies
/// and becomes a holder of each registration with a socket of its own
/// (`mgmt_events::on_timers`, run by the child's responder), so the parent's replies
/// and commands never reach it; request ids start afresh (the broker caches
/// replies by source address and id).
fn after_fork_in_child(reg: &mut Registry) {
    bells::forget_in_child(&mut reg.bells);
    serving::forget_in_child(&mut reg.serving, &mut reg.punching);
    reg.parked.forget_in_child();
    reg.connects.forget_in_child();
    reversal_listener::forget_in_child(&mut reg.spare_listener);
    reg.standby.forget_in_child();
    reg.acks_due.clear();
    let now = std::time::Instant::now();
    for (_, l) in reg.listeners_mut() {
        l.shared = true;
        if l.mgmt.fd >= 0 {
            crate::internal::release(l.mgmt.fd);
        }
        l.mgmt.fd = -1;
        l.joined = false;
        l.mgmt.requester = crate::client::exchange::new_requester(proto::rudp::RetryPolicy::default());
        l.mgmt.pending.clear();
        l.mgmt.next_heartbeat = now;
        l.mgmt.heard = now;
    }
}

/// `pthread_atfork` prepare handler.
pub fn prepare_fork() {
    crate::client::options::note_all();
    crate::client::lock::prepare_fork(&REGISTRY, |reg| {
        fault_point!("prepare_fork");
        if let Some(reg) = reg {
            reg.mark_all_shared();
        }
    });
}

/// `pthread_atfork` parent and child handlers.
pub fn after_fork(in_child: bool) {
    if in_child {
        crate::client::lock::note_fork_in_child();
    }
    crate::client::lock::after_fork(&REGISTRY);
}

/// The GCB client's work on the responder thread. Its `Duties` are
/// implemented in [`super::responder`], at the top of the client, so the
/// modules below start the thread through [`ensure_responder`] without importing the code
/// it runs there.
pub struct Duty;

/// Starts this process's responder if needed, and wakes it for new work.
pub fn ensure_responder() {
    crate::responder::ensure::<Duty>();
    crate::responder::wake();
}
