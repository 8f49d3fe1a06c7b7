//! When a shard next has an SLA instant due: the shard sleeps until then instead of polling its wake-up index.
//!
//! The index used to be checked every `tick_every` (20 ms) whether anything was due: 16 shards × 50 wake-ups a
//! second of an idle service, most of its idle CPU. Now the shard publishes its earliest instant here; a task
//! sleeps until it (at least `tick_every` after the previous tick, which keeps a burst of due timers batched as
//! before; at most [`IDLE_RECHECK`], so an instant stays safe from a clock that jumps) and is woken early when an
//! earlier instant is armed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::model::Millis;
use crate::ports::clock::Clock;

/// The longest a shard sleeps without looking at its index (nothing armed, or the next instant far ahead).
pub const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Nothing armed.
const NEVER: Millis = Millis::MAX;

/// The earliest instant of a shard's wake-up index, and a bell rung when it moves earlier.
#[derive(Debug)]
pub struct WakeTimer {
    at: AtomicI64,
    bell: Notify,
}

impl Default for WakeTimer {
    fn default() -> Self {
        WakeTimer { at: AtomicI64::new(NEVER), bell: Notify::new() }
    }
}

impl WakeTimer {
    /// An instant was armed: wake the sleeper if it is earlier than the one it sleeps towards.
    pub fn armed(&self, due: Millis) {
        if self.at.fetch_min(due, Ordering::SeqCst) > due {
            self.bell.notify_one();
        }
    }

    /// After a tick: the index's earliest instant now (`None`: nothing armed).
    pub fn reset(&self, earliest: Option<Millis>) {
        self.at.store(earliest.unwrap_or(NEVER), Ordering::SeqCst);
    }

    /// How long to sleep from `now` until the next tick: until the earliest instant, but at least `gap` (the
    /// tick resolution) and at most [`IDLE_RECHECK`].
    fn wait(&self, now: Millis, gap: Duration) -> Duration {
        let at = self.at.load(Ordering::SeqCst);
        let until = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
        Duration::from_millis(until).clamp(gap, IDLE_RECHECK.max(gap))
    }

    /// Call `tick` whenever the earliest instant is due, until `tick` answers false (the shard is gone).
    pub async fn run(self: Arc<Self>, clock: Arc<dyn Clock>, gap: Duration, mut tick: impl FnMut() -> bool) {
        loop {
            // Listening before the instant is read: an earlier one armed meanwhile is not missed.
            let bell = self.bell.notified();
            tokio::select! {
                _ = tokio::time::sleep(self.wait(clock.now_ms(), gap)) => {}
                // An earlier instant was armed: sleep again, towards it.
                _ = bell => continue,
            }
            if !tick() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::ports::clock::ManualClock;

    const GAP: Duration = Duration::from_millis(20);

    #[test]
    fn an_idle_shard_sleeps_long_and_a_due_one_after_the_gap() {
        let t = WakeTimer::default();
        assert_eq!(t.wait(1_000, GAP), IDLE_RECHECK, "nothing armed");
        t.armed(1_500);
        assert_eq!(t.wait(1_000, GAP), Duration::from_millis(500));
        t.armed(900);
        assert_eq!(t.wait(1_000, GAP), GAP, "already due: after the gap, not at once");
        t.armed(5_000);
        assert_eq!(t.wait(1_000, GAP), GAP, "a later instant does not move the earliest");
        t.reset(Some(100_000));
        assert_eq!(t.wait(1_000, GAP), IDLE_RECHECK, "far ahead: looked at again after a second");
        t.reset(None);
        assert_eq!(t.wait(1_000, GAP), IDLE_RECHECK);
    }

    #[tokio::test(start_paused = true)]
    async fn an_instant_armed_during_a_long_sleep_is_ticked_after_the_gap_not_the_sleep() {
        let timer = Arc::new(WakeTimer::default());
        let ticks = Arc::new(AtomicUsize::new(0));
        let (counted, shard) = (Arc::clone(&ticks), Arc::clone(&timer));
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(1_000));
        tokio::spawn(Arc::clone(&timer).run(clock, GAP, move || {
            counted.fetch_add(1, Ordering::SeqCst);
            // As the shard's tick does: what is left in the index, here an instant 200 ms ahead.
            shard.reset(Some(1_200));
            true
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 0, "nothing armed: asleep");
        timer.armed(1_000); // due now
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 1, "woken by the arm, ticked one gap later, not after the sleep");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 1, "the next instant is 200 ms ahead");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 2, "ticked at it");
    }
}
