//! Rate limits: a token bucket per caller and route group, answered 429/`4290` with
//! `Retry-After` and the `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers.
//!
//! Who is counted: backoffice calls per token subject and per client address, credential
//! exchanges (`/client/session`, `/auth/token`) per address, public routes per address, and
//! terminal calls per terminal (its `X-Terminal-Id`, else its `X-Device-Id`), never per address
//! and never globally: a merchant's terminals behind one address, or a busy merchant elsewhere,
//! do not take each other's share.
//!
//! Several API nodes share each limit without talking to each other on the request path: each
//! node allows its share, the limit divided by the nodes alive (`Services::live_nodes`, counted
//! from the nodes' checkpoints by housekeeping), which holds the sum to the limit when a load
//! balancer spreads callers over the nodes. A request costs one lock on one of sixteen shards.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::config::RateLimits;
use crate::error::{ApiError, Code};

/// What a caller is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A token subject on backoffice routes.
    Principal,
    /// A client address on backoffice and public routes.
    Address,
    /// A client address on credential exchanges.
    Credentials,
    /// A terminal on terminal routes.
    Terminal,
}

/// The quota left after a call was let through, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Calls a burst may make.
    pub limit: u32,
    /// Calls left now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

const SHARDS: usize = 16;
/// Buckets idle and full are dropped every this many checks.
const SWEEP_EVERY: u64 = 8192;

/// The buckets.
#[derive(Debug)]
pub struct Limiter {
    limits: RateLimits,
    shards: Vec<Mutex<HashMap<(Scope, String), Bucket>>>,
    hasher: std::hash::RandomState,
    checks: AtomicU64,
}

impl Limiter {
    /// Buckets for these limits.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::hash::RandomState::new(),
            checks: AtomicU64::new(0),
        }
    }

    fn rate(&self, scope: Scope) -> u64 {
        match scope {
            Scope::Principal => self.limits.per_principal,
            Scope::Address => self.limits.per_address,
            Scope::Credentials => self.limits.credentials_per_address,
            Scope::Terminal => self.limits.per_terminal,
        }
    }

    /// Takes one call from `who`'s bucket in `scope`, this node's share when `nodes` share
    /// the limit. A limit of 0 lets everything through.
    ///
    /// # Errors
    /// 429/`4290` with `Retry-After` when the bucket is empty.
    pub fn check(
        &self,
        scope: Scope,
        who: &str,
        nodes: usize,
        now: Instant,
    ) -> Result<Option<Quota>, ApiError> {
        let per_sec = self.rate(scope);
        if per_sec == 0 {
            return Ok(None);
        }
        #[allow(
            clippy::cast_precision_loss,
            reason = "limits and node counts are far below 2^52"
        )]
        let rate = (per_sec as f64 / nodes.max(1) as f64).max(1.0);
        let burst = rate * 2.0;
        let key = (scope, who.to_owned());
        let shard = usize::try_from(self.hasher.hash_one(&key) % SHARDS as u64).unwrap_or(0);
        let Some(lock) = self.shards.get(shard) else {
            return Ok(None);
        };
        let mut map = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            map.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.last = now;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "token counts are small and not negative"
        )]
        let whole = |x: f64| x.clamp(0.0, f64::from(u32::MAX)).ceil() as u32;
        if bucket.tokens < 1.0 {
            let wait = whole((1.0 - bucket.tokens) / rate).max(1);
            return Err(
                ApiError::new(Code::RateLimited, "rate limit exceeded; slow down")
                    .with_retry_after(u64::from(wait))
                    .with_quota(whole(burst), 0, whole(burst / rate)),
            );
        }
        bucket.tokens -= 1.0;
        Ok(Some(Quota {
            limit: whole(burst),
            remaining: whole(bucket.tokens.floor()),
            reset: whole((burst - bucket.tokens) / rate),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(per_terminal: u64) -> RateLimits {
        RateLimits {
            per_principal: 0,
            per_address: 0,
            credentials_per_address: 0,
            per_terminal,
        }
    }

    #[test]
    fn a_burst_of_twice_the_rate_then_the_rate_and_each_caller_apart() {
        let l = Limiter::new(limits(5));
        let t0 = Instant::now();
        for i in 0..10 {
            let q = l.check(Scope::Terminal, "TID-1", 1, t0).unwrap().unwrap();
            assert_eq!((q.limit, q.remaining), (10, 9 - i));
        }
        let e = l.check(Scope::Terminal, "TID-1", 1, t0).unwrap_err();
        assert_eq!(e.code(), Code::RateLimited);
        assert_eq!(e.retry_after(), Some(1));
        // Another terminal is untouched; the first refills at 5 a second.
        assert!(l.check(Scope::Terminal, "TID-2", 1, t0).is_ok());
        let later = t0 + Duration::from_millis(400);
        assert!(l.check(Scope::Terminal, "TID-1", 1, later).is_ok());
        assert!(l.check(Scope::Terminal, "TID-1", 1, later).is_ok());
        assert!(l.check(Scope::Terminal, "TID-1", 1, later).is_err());
        // Other scopes have no limit here.
        assert_eq!(l.check(Scope::Principal, "TID-1", 1, t0).unwrap(), None);
    }

    #[test]
    fn nodes_share_the_limit() {
        let l = Limiter::new(limits(10));
        let t0 = Instant::now();
        let allowed = (0..100)
            .filter(|_| l.check(Scope::Terminal, "TID-1", 2, t0).is_ok())
            .count();
        assert_eq!(
            allowed, 10,
            "a burst of twice half the rate on each of two nodes"
        );
    }
}
