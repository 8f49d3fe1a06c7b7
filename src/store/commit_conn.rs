//! The connections of one-statement group commits ([`Dialect::commit_statement`](super::Dialect::commit_statement)):
//! each opened by the thread that commits on it, and kept between its commits.
//!
//! Why opened by that thread: a socket is registered with the runtime of the thread that opened it, and that
//! runtime is woken when an answer arrives, whichever task waits for it. The pool's connections are opened by
//! whoever first needed one (the main thread at startup, a gRPC thread for a read), so a persistence actor
//! committing on one of them heard each of PostgreSQL's answers through another thread: that thread woke, then
//! woke the actor's arbiter (about one extra wake-up per group commit; BENCHMARKS.md, twenty-seventh session).
//!
//! Why kept: sqlx pings every connection returned to its pool (a round trip, and a wake-up of both processes, per
//! commit). One idle for [`PING_IF_IDLE_FOR`] is pinged before use, as the pool
//! does, so one left broken by a database restart is found out and replaced.
//!
//! They are opened outside the pool, which is made smaller by as many (`postgres::pool_options`), so the
//! process never holds more than `POSTGRES_POOL_SIZE` connections. When every one is in use, a commit takes one
//! from the pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::{Connection, Database, Pool};

use super::PING_IF_IDLE_FOR;

/// The commit connections of one store.
pub(super) struct CommitConnections<DB: Database> {
    /// The idle ones, each with when it was last used.
    idle: Mutex<Vec<(Owned<DB>, Instant)>>,
    /// How many are open (idle or in use).
    open: Arc<AtomicUsize>,
    /// How many may be.
    most: usize,
}

/// A connection a store opened for its commits, on `thread`. Dropping it closes it and frees its slot.
pub(super) struct Owned<DB: Database> {
    conn: DB::Connection,
    thread: ThreadId,
    _slot: Slot,
}

/// One of the `most` connections counted as open, from its reservation on (so a commit cancelled while it
/// connects gives its slot back too) until it is dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection to commit on: one of the store's own, or the pool's when all of those are in use.
pub(super) enum CommitConnection<DB: Database> {
    Owned(Owned<DB>),
    Pooled(PoolConnection<DB>),
}

impl<DB: Database> std::ops::Deref for CommitConnection<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match self {
            CommitConnection::Owned(o) => &o.conn,
            CommitConnection::Pooled(p) => p,
        }
    }
}

impl<DB: Database> std::ops::DerefMut for CommitConnection<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            CommitConnection::Owned(o) => &mut o.conn,
            CommitConnection::Pooled(p) => p,
        }
    }
}

impl<DB: Database> CommitConnections<DB> {
    /// At most `most` connections of its own (0: every commit takes the pool's).
    pub(super) fn new(most: usize) -> Self {
        CommitConnections { idle: Mutex::default(), open: Arc::default(), most }
    }

    /// A connection to commit on from this thread: an idle one it opened; else a new one, opened here, while
    /// fewer than `most` are open; else another thread's idle one; else the pool's. A new connection gets the
    /// pool's acquire timeout; if it fails, the error is the answer (one attempt per commit, as with the pool).
    pub(super) async fn take(&self, pool: &Pool<DB>) -> Result<CommitConnection<DB>, sqlx::Error> {
        let here = std::thread::current().id();
        loop {
            let mine = {
                let mut idle = self.idle.lock().expect("not poisoned");
                idle.iter().rposition(|(c, _)| c.thread == here).map(|i| idle.swap_remove(i))
            };
            let (mut conn, used) = match mine {
                Some(found) => found,
                None => match self.reserve() {
                    Some(slot) => {
                        let options = pool.connect_options();
                        let timeout = pool.options().get_acquire_timeout();
                        let conn = tokio::time::timeout(timeout, DB::Connection::connect_with(&options))
                            .await
                            .map_err(|_| sqlx::Error::PoolTimedOut)??;
                        return Ok(CommitConnection::Owned(Owned { conn, thread: here, _slot: slot }));
                    }
                    None => {
                        let other = self.idle.lock().expect("not poisoned").pop();
                        match other {
                            Some(found) => found,
                            None => return pool.acquire().await.map(CommitConnection::Pooled),
                        }
                    }
                },
            };
            if used.elapsed() >= PING_IF_IDLE_FOR {
                if let Err(e) = conn.conn.ping().await {
                    // Dropped, so closed and no longer counted: look again (a new one may be opened).
                    tracing::debug!(error = %e, "a commit connection is broken; dropping it");
                    continue;
                }
            }
            return Ok(CommitConnection::Owned(conn));
        }
    }

    /// Keep the connection for the next commit (a pooled one goes back to the pool). One that may be broken is
    /// dropped instead.
    pub(super) fn keep(&self, conn: CommitConnection<DB>) {
        if let CommitConnection::Owned(conn) = conn {
            self.idle.lock().expect("not poisoned").push((conn, Instant::now()));
        }
    }

    /// A slot for one more connection, if fewer than `most` are open.
    fn reserve(&self) -> Option<Slot> {
        let counted = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.most).then_some(n + 1));
        counted.is_ok().then(|| Slot(Arc::clone(&self.open)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_more_than_most_are_reserved_and_a_dropped_slot_makes_room() {
        let c = CommitConnections::<sqlx::Postgres>::new(2);
        let (first, _second) = (c.reserve().unwrap(), c.reserve().unwrap());
        assert!(c.reserve().is_none(), "a third is refused");
        drop(first); // a closed connection, or a connect that failed or was cancelled
        assert!(c.reserve().is_some(), "one dropped makes room");
        assert!(CommitConnections::<sqlx::Postgres>::new(0).reserve().is_none(), "0: always the pool's");
    }
}
