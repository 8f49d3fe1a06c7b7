//! Shard supervisors: each owns the ticket actors whose id hashes to it.
//!
//! A shard spawns a ticket's actor on first use (the actor loads itself from the store), forwards requests to
//! it, restarts it from the stored state when it dies mid-request (that request gets an error, nothing else is
//! lost: the store holds every acknowledged write), and passivates actors that stayed idle. Because the shard
//! counts each actor's requests in flight, it only passivates an actor whose mailbox is empty, so two actors
//! for one ticket never live at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::error::TicketError;
use crate::model::Millis;
use crate::ticket_actor::{Env, Reply, Request, TicketActor, TicketMsg};

/// A request routed to the ticket `id`.
#[derive(Message)]
#[rtype(result = "Result<Reply, TicketError>")]
pub struct Route {
    pub id: String,
    pub req: Request,
    pub actor: Arc<str>,
}

/// Passivate idle actors now (the shard also does it on its own timer).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Sweep;

struct Entry {
    addr: Addr<TicketActor>,
    in_flight: u32,
    last_used: Millis,
}

/// See the module docs.
pub struct Shard {
    env: Arc<Env>,
    entries: HashMap<String, Entry>,
    idle_ms: i64,
    sweep_every: Duration,
}

impl Shard {
    pub fn new(env: Arc<Env>, idle_ms: i64, sweep_every: Duration) -> Self {
        Shard { env, entries: HashMap::new(), idle_ms, sweep_every }
    }

    fn spawn(&self, id: &str) -> Addr<TicketActor> {
        self.env.metrics.live.inc();
        TicketActor::new(id.to_owned(), Arc::clone(&self.env)).start()
    }

    fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.env.metrics.live.dec();
            entry.addr.do_send(TicketMsg { req: Request::Passivate, actor: Arc::from("system") });
        }
    }

    fn sweep(&mut self) -> usize {
        let now = self.env.clock.now_ms();
        let idle: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.in_flight == 0 && now - e.last_used >= self.idle_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &idle {
            self.remove(id);
        }
        self.env.metrics.passivated.inc_by(idle.len() as u64);
        idle.len()
    }
}

impl Actor for Shard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(usize::MAX);
        ctx.run_interval(self.sweep_every, |shard, _| {
            shard.sweep();
        });
    }
}

impl Handler<Sweep> for Shard {
    type Result = usize;
    fn handle(&mut self, _: Sweep, _: &mut Context<Self>) -> usize {
        self.sweep()
    }
}

impl Handler<Route> for Shard {
    type Result = ResponseActFuture<Self, Result<Reply, TicketError>>;

    fn handle(&mut self, Route { id, req, actor }: Route, _: &mut Context<Self>) -> Self::Result {
        let now = self.env.clock.now_ms();
        if !self.entries.get(&id).is_some_and(|e| e.addr.connected()) {
            let addr = self.spawn(&id);
            if self.entries.insert(id.clone(), Entry { addr, in_flight: 0, last_used: now }).is_some() {
                // Its actor died without the shard noticing (no request was in flight): count the restart.
                self.env.metrics.live.dec();
                self.env.metrics.restarts.inc();
            }
        }
        let entry = self.entries.get_mut(&id).expect("inserted above");
        entry.in_flight += 1;
        entry.last_used = now;
        let addr = entry.addr.clone();
        let sent = addr.send(TicketMsg { req, actor });
        Box::pin(sent.into_actor(self).map(move |res, shard, _| {
            let current = shard.entries.get_mut(&id).filter(|e| e.addr == addr);
            match res {
                Ok(answer) => {
                    if let Some(e) = current {
                        e.in_flight -= 1;
                        // An actor for a ticket that does not exist (or could not be loaded) is not kept.
                        let useless = matches!(answer, Err(TicketError::NotFound(_) | TicketError::Store(_)));
                        if useless && e.in_flight == 0 {
                            shard.remove(&id);
                        }
                    }
                    answer
                }
                Err(_) => {
                    // The actor died (a panic while handling a message). Restart it from the store.
                    if current.is_some() {
                        tracing::error!(ticket_id = %id, "ticket actor died; restarting it from the stored state");
                        shard.env.metrics.restarts.inc();
                        let addr = shard.spawn(&id);
                        shard.env.metrics.live.dec();
                        let now = shard.env.clock.now_ms();
                        shard.entries.insert(id.clone(), Entry { addr, in_flight: 0, last_used: now });
                    }
                    Err(TicketError::ActorFailed(id))
                }
            }
        }))
    }
}
