//! Reconnect delays: exponential from `min` to `max`, with jitter so that a fleet of workers
//! that lost the same coordinator does not come back in one wave.

use std::time::Duration;

/// Delays between reconnect attempts. The n-th delay is drawn from
/// `[c/2, c]` where `c = min(max, min_delay * 2^n)` ("equal jitter": never less than half the
/// ceiling, so a fast retry loop cannot happen by chance).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff::with_rng(min, max, fastrand::Rng::new())
    }

    /// A backoff whose jitter comes from `rng` (seeded: repeatable).
    pub fn with_rng(min: Duration, max: Duration, rng: fastrand::Rng) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
            rng,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        // 2^20 × min is far past any sensible max; capping the exponent avoids overflow.
        let factor = 1_u32 << self.attempt.min(20);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos().min(u64::MAX as u128) as u64;
        half + Duration::from_nanos(self.rng.u64(0..=spread))
    }

    /// Back to `min`: called once a connection has been welcomed.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn doubles_up_to_the_cap() {
        let mut backoff = Backoff::with_rng(MIN, MAX, fastrand::Rng::with_seed(1));
        let ceilings: Vec<Duration> = (0..10)
            .map(|_| {
                let ceiling = backoff.ceiling();
                backoff.next_delay();
                ceiling
            })
            .collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            ceilings,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                MAX,
                MAX,
                MAX,
                MAX
            ]
        );
    }

    #[test]
    fn jitter_stays_within_half_and_full_ceiling() {
        for seed in 0..50 {
            let mut backoff = Backoff::with_rng(MIN, MAX, fastrand::Rng::with_seed(seed));
            for _ in 0..12 {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{delay:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_workers_apart() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|seed| Backoff::with_rng(MIN, MAX, fastrand::Rng::with_seed(seed)).next_delay())
            .collect();
        assert!(delays.len() > 10, "only {} distinct delays", delays.len());
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::with_rng(MIN, MAX, fastrand::Rng::with_seed(3));
        for _ in 0..30 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), MAX, "no overflow after many attempts");
        backoff.reset();
        assert_eq!(backoff.ceiling(), MIN);
        assert!(backoff.next_delay() <= MIN);
    }
}
