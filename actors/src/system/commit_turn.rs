//! One turn, shared by the group-commit writers, for their small commits.
//!
//! There is one persistence actor per arbiter, so that encoding and database I/O use every core. Under a steady
//! stream of writes, though, each writer's queue is short, and two writers committing side by side make two
//! small transactions where one writer would have made one of twice the size. With 1 000 creates/s admitted
//! on one core shared with PostgreSQL (`ticket-bench faults --scenarios overload-grpc --pin`, BENCHMARKS.md),
//! PostgreSQL took 41–43 % of the core with two writers side by side and 19–20 % with this turn; the calls the
//! service refused meanwhile waited p50 290–450 ms for their answer, against 18–23 ms. A burst (100 000 SLA
//! breaches due at once) is the other way round: its batches are large, and a single writer committed it in
//! 7.9–8.2 s where two took 5.1–6.0 s.
//!
//! So a commit of fewer than [`SHARED_BELOW`] units (`PERSIST_TURN_BELOW`) waits for this turn, and the writers take it one after the
//! other: while one small commit runs, the other writers' queues keep filling, as a single writer's does. A
//! larger commit takes the turn if it is free and otherwise runs beside the others, as before. The turn is
//! handed over in the order the writers asked for it, so no writer waits behind another's steady stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use actix::prelude::*;

/// Commits of fewer units than this take turns across writers by default; larger ones may run side by side.
pub const SHARED_BELOW: usize = 64;

/// Sent to a writer the turn was handed to: it should commit what it has queued.
#[derive(Message)]
#[rtype(result = "()")]
pub struct YourTurn;

/// See the module docs. Writers are known by an index of their own choosing, unique among those sharing it.
pub struct CommitTurn {
    state: Mutex<State>,
    /// Commits of fewer units than this wait for the turn.
    below: usize,
}

#[derive(Default)]
struct State {
    /// The writer whose turn it is.
    holder: Option<usize>,
    /// Its commits running on the turn (0 right after the turn was handed to it).
    commits: usize,
    /// Writers waiting for the turn, in the order they asked.
    waiting: VecDeque<(usize, Recipient<YourTurn>)>,
}

/// One commit running on the turn. Dropping it gives the turn back, also when the commit does not end normally
/// (a panic, or the writer's arbiter stopping), so the other writers never wait for good.
pub struct OnTurn {
    turn: Arc<CommitTurn>,
    writer: usize,
}

impl Drop for OnTurn {
    fn drop(&mut self) {
        self.turn.done(self.writer);
    }
}

impl CommitTurn {
    /// A turn for the commits of fewer than `below` units.
    pub fn new(below: usize) -> Self {
        CommitTurn { state: Mutex::default(), below }
    }

    /// Whether a commit of `units` must wait for the turn (if not, it takes it only when free).
    pub fn is_small(&self, units: usize) -> bool {
        units < self.below
    }

    /// Take the turn for one commit of `writer`, or queue `writer` for it: `None` means wait for [`YourTurn`].
    pub fn take_or_wait(self: &Arc<Self>, writer: usize, wake: impl FnOnce() -> Recipient<YourTurn>) -> Option<OnTurn> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = self.take(&mut s, writer) {
            return Some(held);
        }
        if !s.waiting.iter().any(|(w, _)| *w == writer) {
            s.waiting.push_back((writer, wake()));
        }
        None
    }

    /// Take the turn for one commit of `writer` if it is free (or already its own); never waits.
    pub fn try_take(self: &Arc<Self>, writer: usize) -> Option<OnTurn> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.take(&mut s, writer)
    }

    /// The turn for one more commit of `writer`, if it is free or already `writer`'s.
    fn take(self: &Arc<Self>, s: &mut State, writer: usize) -> Option<OnTurn> {
        if s.holder.is_some_and(|h| h != writer) {
            return None;
        }
        s.holder = Some(writer);
        s.commits += 1;
        Some(OnTurn { turn: Arc::clone(self), writer })
    }

    /// A commit of `writer` that held the turn has ended.
    fn done(&self, writer: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(s.holder, Some(writer), "only the holder's commits run on the turn");
        s.commits = s.commits.saturating_sub(1);
        Self::pass_on(s);
    }

    /// After `writer` was handed the turn ([`YourTurn`]) and flushed its queue: if it started no commit on it
    /// (nothing small queued, or its own commits in flight), the next one gets it.
    pub fn pass_if_unused(&self, writer: usize) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.holder == Some(writer) {
            Self::pass_on(s);
        }
    }

    fn pass_on(mut s: std::sync::MutexGuard<'_, State>) {
        if s.commits > 0 {
            return;
        }
        let next = s.waiting.pop_front();
        s.holder = next.as_ref().map(|(w, _)| *w);
        drop(s);
        if let Some((_, wake)) = next {
            wake.do_send(YourTurn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the turns handed to it.
    struct Writer(Arc<AtomicUsize>);

    impl Actor for Writer {
        type Context = Context<Self>;
    }

    impl Handler<YourTurn> for Writer {
        type Result = ();
        fn handle(&mut self, _: YourTurn, _: &mut Context<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[actix_rt::test]
    async fn small_commits_take_turns_in_the_order_asked() {
        let turn = Arc::new(CommitTurn::new(SHARED_BELOW));
        let (woken_1, woken_2) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let w1 = Writer(Arc::clone(&woken_1)).start().recipient();
        let w2 = Writer(Arc::clone(&woken_2)).start().recipient();

        let first = turn.take_or_wait(0, || unreachable!("free: nobody waits")).expect("free");
        assert!(turn.take_or_wait(1, || w1.clone()).is_none(), "writer 0's commit runs: writer 1 waits");
        assert!(turn.take_or_wait(1, || w1.clone()).is_none(), "asking again does not queue it twice");
        assert!(turn.take_or_wait(2, || w2.clone()).is_none());
        let second = turn.take_or_wait(0, || unreachable!()).expect("the holder's second commit runs on the turn");
        drop(first);
        settle().await;
        assert_eq!(woken_1.load(Ordering::SeqCst), 0, "writer 0 still has a commit on the turn");
        drop(second);
        settle().await;
        assert_eq!(
            (woken_1.load(Ordering::SeqCst), woken_2.load(Ordering::SeqCst)),
            (1, 0),
            "first asked, first served"
        );
        assert!(turn.take_or_wait(0, || w2.clone()).is_none(), "the turn is writer 1's now, even before it used it");
        drop(turn.take_or_wait(1, || unreachable!()).expect("handed to writer 1"));
        settle().await;
        assert_eq!(woken_2.load(Ordering::SeqCst), 1, "then the next in line");
    }

    #[actix_rt::test]
    async fn an_unused_turn_is_passed_on_and_large_commits_do_not_wait() {
        let turn = Arc::new(CommitTurn::new(SHARED_BELOW));
        let woken = Arc::new(AtomicUsize::new(0));
        let w1 = Writer(Arc::clone(&woken)).start().recipient();
        let large = turn.try_take(0).expect("a large commit takes a free turn");
        assert!(turn.try_take(1).is_none(), "and another one runs beside it without the turn");
        assert!(turn.take_or_wait(1, || w1.clone()).is_none());
        drop(large);
        settle().await;
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        // Writer 1 found nothing left to commit: the turn must not stay with it.
        turn.pass_if_unused(1);
        let held = turn.take_or_wait(0, || unreachable!("the turn is free again")).expect("free");
        turn.pass_if_unused(0);
        assert!(turn.try_take(1).is_none(), "a turn in use is not passed on");
        drop(held);
        assert!(turn.try_take(1).is_some(), "a commit's end gives the turn back");
    }
}
