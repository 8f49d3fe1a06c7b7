//! [`CircuitStore`]: while the database is known to be unreachable, store calls fail at once.
//!
//! Why: with the database down, every call that needs a new connection waits the pool's acquire timeout
//! before it fails, so a request answered 503 still took seconds, and requests piled up meanwhile. Once a call
//! fails with [`StoreError::Unavailable`] the circuit opens: calls are answered `Unavailable` without touching
//! the pool. After `open_for`, one call is let through as a trial (the rest still fail at once); its success
//! closes the circuit, its failure opens it for another `open_for`. So recovery needs no restart and no
//! background task (a task spawned on an actor's runtime could die with it and leave the circuit stuck), and
//! at most one caller per window pays the acquire timeout. `/ready` pings through the circuit, so it answers
//! 503 at once during an outage and its own pings serve as trials when no other traffic comes.
//!
//! A saturated pool is not an outage: a call that waited out the acquire timeout while every connection was
//! busy fails `Unavailable` too (the driver cannot tell the two apart), but other calls kept succeeding
//! meanwhile. So a failure opens the circuit only if no call succeeded since the failed one began; otherwise
//! that one call fails and the rest go on. (Under a burst of load, one such timeout used to fail every store
//! call for a whole window — `ticket-bench crud`, 2026-12-06.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::store::{StoreError, TicketStore};

use super::layer::{Layered, Op, StoreLayer};

/// The answer of every call refused while the circuit is open.
const OPEN: &str = "the database was unreachable moments ago; retrying the connection in the background";

/// The circuit's state, shared by every caller.
pub struct Circuit {
    /// Milliseconds since `epoch` (+1) when it last opened; 0 while closed.
    opened: AtomicU64,
    /// Milliseconds since `epoch` (+1) when a call last ended without finding the store unreachable.
    last_ok: AtomicU64,
    /// A trial call is running.
    trial: AtomicBool,
    epoch: Instant,
    open_for: Duration,
}

/// How a call was let through.
pub enum Pass<'a> {
    /// Let through while closed; the call began at this instant (milliseconds since `epoch`, +1).
    Closed(u64),
    /// The one trial call; the guard frees the trial slot however the call ends (a cancelled caller too).
    Trial(TrialGuard<'a>),
}

/// Holds the trial slot; frees it when dropped.
pub struct TrialGuard<'a>(&'a AtomicBool);

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Circuit {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn admit(&self) -> Result<Pass<'_>, StoreError> {
        let opened = self.opened.load(Ordering::Acquire);
        if opened == 0 {
            return Ok(Pass::Closed(self.now()));
        }
        let waited = self.now().saturating_sub(opened);
        if waited >= self.open_for.as_millis() as u64 && !self.trial.swap(true, Ordering::AcqRel) {
            return Ok(Pass::Trial(TrialGuard(&self.trial)));
        }
        Err(StoreError::Unavailable(OPEN.into()))
    }

    /// Record how a call that was let through ended: `unreachable` when it failed with `Unavailable`.
    fn record(&self, pass: Pass<'_>, unreachable: bool) {
        if !unreachable {
            self.last_ok.fetch_max(self.now(), Ordering::AcqRel);
        }
        match (pass, unreachable) {
            // Another call succeeded while this one waited: the store is reachable, only busy.
            (Pass::Closed(began), true) if self.last_ok.load(Ordering::Acquire) > began => {
                tracing::debug!("a store call failed while others succeeded: not opening the circuit");
            }
            (Pass::Closed(_), true) => {
                if self.opened.compare_exchange(0, self.now(), Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    tracing::warn!(
                        open_ms = self.open_for.as_millis() as u64,
                        "ticket store unreachable: failing store calls at once until a trial call succeeds"
                    );
                }
            }
            (Pass::Trial(_guard), true) => self.opened.store(self.now(), Ordering::Release),
            (Pass::Trial(_guard), false) => {
                self.opened.store(0, Ordering::Release);
                tracing::info!("ticket store reachable again: circuit closed");
            }
            // A call that started before the circuit opened proves nothing about now; only a trial closes it.
            (Pass::Closed(_), false) => {}
        }
    }
}

/// Calls fail at once while the circuit is open; a call that fails `Unavailable` opens it.
impl StoreLayer for Circuit {
    type Pass<'a> = Pass<'a>;

    fn enter(&self, _op: Op) -> Result<Pass<'_>, StoreError> {
        self.admit()
    }

    fn leave(&self, pass: Pass<'_>, unreachable: bool) {
        self.record(pass, unreachable)
    }
}

/// A [`TicketStore`] that fails fast while the store behind it is unreachable (see the module docs).
pub type CircuitStore = Layered<Circuit>;

impl CircuitStore {
    /// `inner`, behind a circuit that stays open `open_for` after each failure.
    pub fn new(inner: Arc<dyn TicketStore>, open_for: Duration) -> Self {
        let circuit = Circuit {
            opened: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
            trial: AtomicBool::new(false),
            epoch: Instant::now(),
            open_for,
        };
        Layered::with_layer(inner, circuit)
    }

    /// `inner` behind a circuit, as a trait object; `inner` itself when `open_for` is zero (circuit off).
    pub fn wrap(inner: Arc<dyn TicketStore>, open_for: Duration) -> Arc<dyn TicketStore> {
        if open_for.is_zero() {
            inner
        } else {
            Arc::new(CircuitStore::new(inner, open_for))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(open_for: Duration) -> Circuit {
        Circuit {
            opened: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
            trial: AtomicBool::new(false),
            epoch: Instant::now(),
            open_for,
        }
    }

    fn refused(c: &Circuit) -> bool {
        matches!(c.enter(Op::Get), Err(StoreError::Unavailable(_)))
    }

    #[test]
    fn an_unreachable_store_opens_it_and_one_trial_at_a_time_may_close_it() {
        let c = circuit(Duration::from_millis(300));
        let pass = c.enter(Op::Get).unwrap();
        c.leave(pass, false);
        assert!(!refused(&c), "a call that did not find the store unreachable leaves it closed");
        let pass = c.enter(Op::Get).unwrap();
        c.leave(pass, true);
        assert!(refused(&c), "open: refused at once");

        std::thread::sleep(Duration::from_millis(350));
        let trial = c.enter(Op::Ping).unwrap();
        assert!(matches!(trial, Pass::Trial(_)));
        assert!(refused(&c), "one trial at a time");
        drop(trial);
        let trial = c.enter(Op::Ping).expect("an abandoned trial frees its slot");
        c.leave(trial, true);
        assert!(refused(&c), "a failed trial opens it for another window");

        std::thread::sleep(Duration::from_millis(350));
        let trial = c.enter(Op::Ping).unwrap();
        c.leave(trial, false);
        assert!(matches!(c.enter(Op::Get), Ok(Pass::Closed(_))), "a successful trial closes it");
    }

    #[test]
    fn a_call_failing_while_others_succeed_is_a_busy_pool_not_an_outage() {
        let c = circuit(Duration::from_secs(60));
        let waiting = c.enter(Op::Get).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let other = c.enter(Op::Get).unwrap();
        c.leave(other, false);
        c.leave(waiting, true);
        assert!(!refused(&c), "another call succeeded since the failed one began: still closed");

        let failing = c.enter(Op::Get).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        c.leave(failing, true);
        assert!(refused(&c), "nothing succeeded since it began: open");
    }
}
