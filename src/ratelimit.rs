//! Per-caller rate limits (issue #22): a noisy caller must not take the capacity the others need. The admission
//! bound of the actor system (`ACTOR_MAILBOX_CAPACITY`) is global per shard; this is per caller, before it.
//!
//! A caller is its principal (a token subject, or the SPIFFE ID of a mapped client certificate) when it
//! authenticated, else its peer address (no token, a token that does not verify, `AUTH_MODE=disabled`). Each
//! route class — reads, writes, ticket-token minting — has its own budget per caller (GCRA, `governor`): a rate
//! per second and a burst of `RATE_LIMIT_BURST_SECONDS` seconds' worth. Beyond it: 429 with `Retry-After` on
//! REST, RESOURCE_EXHAUSTED with `google.rpc.RetryInfo` (and a `retry-after` metadata entry) on gRPC, counted in
//! `rate_limited_total{principal_kind, route_class}`. Only the two API front ends call this: Kafka ingestion,
//! SLA timers, webhook deliveries and the probes (`/health`, `/ready`, `/metrics`, gRPC health) never are.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus::IntCounterVec;

use crate::config::RateLimitSettings;

/// What a call does, for its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Read,
    Write,
    /// Minting a ticket-scoped token.
    Token,
}

impl RouteClass {
    /// The `route_class` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Read => "read",
            RouteClass::Write => "write",
            RouteClass::Token => "token",
        }
    }
}

/// Whose budget a call is taken from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    /// An authenticated principal: a token subject or a mapped SPIFFE ID.
    Principal(String),
    /// An unauthenticated caller, by its address.
    Peer(IpAddr),
    /// An unauthenticated caller whose address is not known (not a TCP connection): one budget for all of them.
    Unknown,
}

/// How the caller was identified: the `principal_kind` label of `rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A service token.
    Service,
    /// A client certificate's SPIFFE ID mapped to the service role.
    Spiffe,
    /// A ticket-scoped token.
    Ticket,
    /// No (valid) credentials: by peer address.
    Peer,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Service => "service",
            PrincipalKind::Spiffe => "spiffe",
            PrincipalKind::Ticket => "ticket",
            PrincipalKind::Peer => "peer",
        }
    }
}

/// A call refused by its caller's budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit of {class} calls exceeded for this caller; retry in {} ms", retry_after.as_millis())]
pub struct RateLimited {
    pub class: &'static str,
    /// When the call would be allowed.
    pub retry_after: Duration,
}

impl RateLimited {
    /// Whole seconds for a `Retry-After` header (at least 1).
    pub fn retry_after_seconds(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// How often forgotten callers' state is dropped (their budget has refilled: keeping it changes nothing).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The limiters of one service instance; cheap to clone.
#[derive(Clone)]
pub struct RateLimits {
    inner: Arc<Inner>,
}

struct Inner {
    read: Option<DefaultKeyedRateLimiter<CallerKey>>,
    write: Option<DefaultKeyedRateLimiter<CallerKey>>,
    token: Option<DefaultKeyedRateLimiter<CallerKey>>,
    clock: DefaultClock,
    limited: IntCounterVec,
    started: Instant,
    /// Milliseconds since `started` of the last sweep.
    swept: AtomicU64,
}

fn limiter(per_second: u32, burst_seconds: u32) -> Option<DefaultKeyedRateLimiter<CallerKey>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(burst_seconds)).unwrap_or(rate);
    Some(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
}

impl RateLimits {
    /// Limiters for `settings` (a class with a rate of 0 is not limited), counting refusals in `limited`
    /// (`rate_limited_total{principal_kind, route_class}`).
    pub fn new(settings: &RateLimitSettings, limited: IntCounterVec) -> Self {
        let b = settings.burst_seconds;
        RateLimits {
            inner: Arc::new(Inner {
                read: limiter(settings.reads_per_second, b),
                write: limiter(settings.writes_per_second, b),
                token: limiter(settings.tokens_per_second, b),
                clock: DefaultClock::default(),
                limited,
                started: Instant::now(),
                swept: AtomicU64::new(0),
            }),
        }
    }

    /// Take one call of `class` from `key`'s budget, or say how long to wait.
    pub fn check(&self, class: RouteClass, key: &CallerKey, kind: PrincipalKind) -> Result<(), RateLimited> {
        let i = &self.inner;
        let limiter = match class {
            RouteClass::Read => &i.read,
            RouteClass::Write => &i.write,
            RouteClass::Token => &i.token,
        };
        let Some(limiter) = limiter else { return Ok(()) };
        self.sweep();
        match limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                i.limited.with_label_values(&[kind.as_str(), class.as_str()]).inc();
                let retry_after = not_until.wait_time_from(i.clock.now());
                Err(RateLimited { class: class.as_str(), retry_after })
            }
        }
    }

    /// Now and then, forget the callers whose budget is full again (a keyed limiter keeps one entry per key it
    /// saw: peer addresses would otherwise pile up).
    fn sweep(&self) {
        let i = &self.inner;
        let now = i.started.elapsed().as_millis() as u64;
        let last = i.swept.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY.as_millis() as u64
            || i.swept.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        for limiter in [&i.read, &i.write, &i.token].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    /// One read a second with a burst of five: the budget refills slowly enough that a stalled test thread does
    /// not refill it between two checks.
    fn limits() -> RateLimits {
        let counter = IntCounterVec::new(Opts::new("rate_limited_total", "t"), &["principal_kind", "route_class"]);
        let settings =
            RateLimitSettings { reads_per_second: 1, writes_per_second: 0, tokens_per_second: 1, burst_seconds: 5 };
        RateLimits::new(&settings, counter.unwrap())
    }

    /// Each caller has its own budget per class; beyond it the answer says how long to wait; a rate of 0 is off.
    #[test]
    fn budgets_are_per_caller_and_per_class() {
        let l = limits();
        let noisy = CallerKey::Principal("noisy".into());
        let quiet = CallerKey::Peer("10.0.0.1".parse().unwrap());
        for _ in 0..5 {
            l.check(RouteClass::Read, &noisy, PrincipalKind::Service).unwrap();
        }
        let refused = l.check(RouteClass::Read, &noisy, PrincipalKind::Service).unwrap_err();
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1), "{refused:?}");
        assert_eq!((refused.class, refused.retry_after_seconds()), ("read", 1));
        l.check(RouteClass::Read, &quiet, PrincipalKind::Peer).expect("another caller's budget");
        l.check(RouteClass::Token, &noisy, PrincipalKind::Service).expect("another class's budget");
        for _ in 0..10_000 {
            l.check(RouteClass::Write, &noisy, PrincipalKind::Service).expect("writes are not limited");
        }
        assert_eq!(l.inner.limited.with_label_values(&["service", "read"]).get(), 1);
    }
}
