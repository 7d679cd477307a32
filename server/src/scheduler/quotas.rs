//! Fleet-wide semaphores and rate limits: a part of the scheduler, which owns it.
//!
//! Every job takes `weight` permits of each scope that applies to it (`queue:<q>`, and
//! `key:<k>` and `tenant:<t>` when it has them) at dispatch, all at once or not at all, and
//! gives them back when its attempt ends, however it ends. A scope with `max_in_flight` never
//! has more permits out than that. A scope with `rate_per_second` is a token bucket of `burst`
//! tokens (at least 1): each dispatch takes one.

use super::HashMap;

use crate::domain::{Blocked, Quota};

#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    /// When `tokens` was last brought up to date (Unix ms).
    at_ms: i64,
}

impl Bucket {
    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at_ms = now_ms;
    }

    /// When the next whole token is there.
    fn next_token_ms(&self) -> i64 {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at_ms + (missing / self.rate * 1000.0).ceil() as i64
    }
}

#[derive(Debug, Clone, Default)]
struct Limits {
    max_in_flight: Option<u32>,
    bucket: Option<Bucket>,
}

/// Why a job cannot take its permits now.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// `scope` has `held` of `limit` permits out; the job needs `weight`.
    Permits {
        scope: String,
        held: u32,
        limit: u32,
        weight: u32,
    },
    /// `scope`'s rate limit has no token until `until_ms`.
    Rate { scope: String, until_ms: i64 },
}

impl Refusal {
    /// The refusal as a job's reason to wait.
    pub fn blocked(&self) -> Blocked {
        match self.clone() {
            Refusal::Permits {
                scope,
                held,
                limit,
                weight,
            } => Blocked::Permit {
                scope,
                held,
                limit,
                weight,
            },
            Refusal::Rate { scope, until_ms } => Blocked::RateLimit { scope, until_ms },
        }
    }
}

/// Limits by scope, and the permits held now.
#[derive(Debug, Default)]
pub struct Quotas {
    limits: HashMap<String, Limits>,
    held: HashMap<String, u32>,
}

impl Quotas {
    /// Sets (or, with no limit set, removes) a scope's limits. Permits already held stay held:
    /// a lowered limit holds from the next dispatch on.
    pub fn set(&mut self, quota: &Quota, now_ms: i64) {
        let bucket = quota.rate_per_second.filter(|r| *r > 0.0).map(|rate| {
            let burst = f64::from(quota.burst.unwrap_or(1).max(1));
            Bucket {
                rate,
                burst,
                tokens: burst,
                at_ms: now_ms,
            }
        });
        if quota.max_in_flight.is_none() && bucket.is_none() {
            self.limits.remove(&quota.scope);
        } else {
            self.limits.insert(
                quota.scope.clone(),
                Limits {
                    max_in_flight: quota.max_in_flight,
                    bucket,
                },
            );
        }
    }

    /// Permits held now in `scope`.
    pub fn held(&self, scope: &str) -> u32 {
        self.held.get(scope).copied().unwrap_or(0)
    }

    /// Whether a job of `weight` in `scopes` may start now; the first reason it may not.
    pub fn check(&mut self, scopes: &[String], weight: u32, now_ms: i64) -> Result<(), Refusal> {
        for scope in scopes {
            let Some(limits) = self.limits.get_mut(scope) else {
                continue;
            };
            if let Some(limit) = limits.max_in_flight {
                let held = self.held.get(scope).copied().unwrap_or(0);
                if held.saturating_add(weight) > limit {
                    return Err(Refusal::Permits {
                        scope: scope.clone(),
                        held,
                        limit,
                        weight,
                    });
                }
            }
            if let Some(bucket) = &mut limits.bucket {
                bucket.refill(now_ms);
                if bucket.tokens < 1.0 {
                    return Err(Refusal::Rate {
                        scope: scope.clone(),
                        until_ms: bucket.next_token_ms(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Takes the permits (and a token of each rate-limited scope). Call after `check`.
    pub fn acquire(&mut self, scopes: &[String], weight: u32, now_ms: i64) {
        for scope in scopes {
            *self.held.entry(scope.clone()).or_default() += weight;
            if let Some(bucket) = self.limits.get_mut(scope).and_then(|l| l.bucket.as_mut()) {
                bucket.refill(now_ms);
                bucket.tokens -= 1.0;
            }
        }
    }

    /// Gives back what `acquire` took (tokens are spent for good).
    pub fn release(&mut self, scopes: &[String], weight: u32) {
        for scope in scopes {
            if let Some(held) = self.held.get_mut(scope) {
                *held = held.saturating_sub(weight);
                if *held == 0 {
                    self.held.remove(scope);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::scopes;

    fn quota(scope: &str, max: Option<u32>, rate: Option<f64>, burst: Option<u32>) -> Quota {
        Quota {
            scope: scope.into(),
            max_in_flight: max,
            rate_per_second: rate,
            burst,
            ..Default::default()
        }
    }

    #[test]
    fn permits_are_all_or_none_across_scopes() {
        let mut q = Quotas::default();
        q.set(&quota("key:k", Some(3), None, None), 0);
        q.set(&quota("tenant:t", Some(2), None, None), 0);
        let both = scopes("q", Some("k"), Some("t"));
        assert!(q.check(&both, 2, 0).is_ok());
        q.acquire(&both, 2, 0);
        // key:k has room for 1 more, tenant:t has none: nothing is taken.
        assert!(
            matches!(q.check(&both, 1, 0), Err(Refusal::Permits { scope, .. }) if scope == "tenant:t")
        );
        assert_eq!(q.held("key:k"), 2);
        q.release(&both, 2);
        assert_eq!(q.held("key:k"), 0);
        assert!(q.check(&both, 2, 0).is_ok());
    }

    #[test]
    fn a_token_bucket_allows_its_burst_then_its_rate() {
        let mut q = Quotas::default();
        q.set(&quota("queue:q", None, Some(10.0), Some(2)), 0);
        let s = scopes("q", None, None);
        for _ in 0..2 {
            assert!(q.check(&s, 1, 0).is_ok());
            q.acquire(&s, 1, 0);
        }
        assert_eq!(
            q.check(&s, 1, 0),
            Err(Refusal::Rate {
                scope: "queue:q".into(),
                until_ms: 100
            })
        );
        assert!(q.check(&s, 1, 100).is_ok(), "one token per 100 ms at 10/s");
    }

    /// A property test over random schedules: however acquisitions, releases, lost workers,
    /// cancellations and limit changes interleave, a scope never has more out than its limit
    /// allowed when they were taken, and the books balance to zero at the end.
    #[test]
    fn permits_never_exceed_the_limit_over_random_schedules() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _round in 0..200 {
            let mut q = Quotas::default();
            let mut limit = rng.u32(1..6);
            q.set(&quota("key:k", Some(limit), None, None), 0);
            let mut running: Vec<(Vec<String>, u32)> = Vec::new();
            for _step in 0..200 {
                match rng.u8(0..10) {
                    // Acquire.
                    0..=4 => {
                        let s = scopes("q", Some("k"), rng.bool().then_some("t"));
                        let weight = rng.u32(1..4);
                        if q.check(&s, weight, 0).is_ok() {
                            q.acquire(&s, weight, 0);
                            running.push((s, weight));
                            assert!(
                                q.held("key:k") <= limit,
                                "held {} > {limit}",
                                q.held("key:k")
                            );
                        }
                    }
                    // Finish, lose a worker, cancel: all give back.
                    5..=8 if !running.is_empty() => {
                        let (s, w) = running.swap_remove(rng.usize(..running.len()));
                        q.release(&s, w);
                    }
                    // Change the limit at run time: it holds for what is taken from then on.
                    _ => {
                        limit = rng.u32(1..6);
                        q.set(&quota("key:k", Some(limit), None, None), 0);
                        if q.held("key:k") <= limit {
                            continue;
                        }
                        // Over the new limit: nothing more is admitted until enough finish.
                        assert!(q.check(&scopes("q", Some("k"), None), 1, 0).is_err());
                    }
                }
                let expected: u32 = running
                    .iter()
                    .filter(|(s, _)| s.iter().any(|x| x == "key:k"))
                    .map(|(_, w)| w)
                    .sum();
                assert_eq!(q.held("key:k"), expected, "the books balance");
            }
            for (s, w) in running.drain(..) {
                q.release(&s, w);
            }
            assert_eq!(q.held("key:k"), 0);
            assert_eq!(q.held("queue:q"), 0);
        }
    }
}
