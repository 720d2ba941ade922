//! Exponential backoff with jitter, for retried writes (conflicts, 5xx,
//! timeouts) and restarted watches. The jitter comes from an injectable,
//! seeded RNG so tests and the simulator are reproducible; processes seed it
//! from the random keys of the standard library's hashers.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// How writes are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay's upper bound.
    pub base: Duration,
    /// The largest upper bound a delay may have.
    pub max: Duration,
    /// Attempts (writes tried) per pool and operation before giving up.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 10 ms doubling up to 1 s, 16 attempts.
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
            max_attempts: 16,
        }
    }
}

/// The delays of one retried operation: attempt `n` waits between half and
/// all of `min(max, base * 2^n)` ("equal jitter": never zero, so two agents
/// that collided do not retry in lockstep, and never more than the cap).
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
}

impl Backoff {
    /// A fresh sequence.
    pub fn new(policy: RetryPolicy) -> Backoff {
        Backoff { policy, attempt: 0 }
    }

    /// Delays handed out so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.policy
            .base
            .checked_mul(factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// The next delay, drawn from `rng`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        let spread = (cap - half).as_nanos() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            rng.next_u64() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }
}

/// The RNG jitter is drawn from: seeded from `seed`, or, without one, from
/// the random keys the standard library gives each process's hashers.
pub fn jitter_rng(seed: Option<u64>) -> ChaCha8Rng {
    let seed = seed.unwrap_or_else(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    ChaCha8Rng::seed_from_u64(seed)
}

/// The first delay's upper bound of a watch restart (kube-runtime's
/// default).
pub const WATCH_BACKOFF_BASE: Duration = Duration::from_millis(800);
/// The largest delay of a watch restart (kube-runtime's default).
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The schedule of watch restarts: [`WATCH_BACKOFF_BASE`] doubling up to
/// [`WATCH_BACKOFF_MAX`], never giving up.
pub fn watch_policy() -> RetryPolicy {
    RetryPolicy {
        base: WATCH_BACKOFF_BASE,
        max: WATCH_BACKOFF_MAX,
        max_attempts: u32::MAX,
    }
}

/// The seed of one component (`label`, e.g. `"agent/node-a"` or
/// `"usage/ippools"`) derived from a run's or a process's `seed`: FNV-1a of
/// the label, then SplitMix64 of the seed mixed with it. Stable across
/// platforms and versions, so adding a component never shifts another's
/// randomness.
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = (seed ^ h).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An endless sequence of jittered delays with its own RNG, restartable:
/// what a watch needs between restarts (the agent's and the controller's
/// watches wrap it in kube-runtime's `Backoff` trait).
#[derive(Debug, Clone)]
pub struct Jittered {
    policy: RetryPolicy,
    backoff: Backoff,
    rng: ChaCha8Rng,
}

impl Jittered {
    /// Delays of `policy`, jitter drawn from `seed` (None: process-random).
    pub fn new(policy: RetryPolicy, seed: Option<u64>) -> Jittered {
        Jittered {
            policy,
            backoff: Backoff::new(policy),
            rng: jitter_rng(seed),
        }
    }

    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        self.backoff = Backoff::new(self.policy);
    }
}

impl Iterator for Jittered {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.backoff.next_delay(&mut self.rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(300),
            max_attempts: 8,
        }
    }

    #[test]
    fn delays_grow_exponentially_within_equal_jitter_bounds() {
        let mut rng = jitter_rng(Some(1));
        let mut b = Backoff::new(policy());
        let caps = [10u64, 20, 40, 80, 160, 300, 300, 300];
        for (i, cap) in caps.iter().enumerate() {
            assert_eq!(b.cap(), Duration::from_millis(*cap), "attempt {i}");
            let d = b.next_delay(&mut rng);
            let cap = Duration::from_millis(*cap);
            assert!(
                d >= cap / 2 && d <= cap,
                "attempt {i}: {d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
        }
        assert_eq!(b.attempts(), 8);
        // Far past the shift width the cap stays at max.
        let mut far = Backoff::new(policy());
        for _ in 0..100 {
            far.next_delay(&mut rng);
        }
        assert_eq!(far.cap(), Duration::from_millis(300));
    }

    #[test]
    fn jitter_is_reproducible_per_seed_and_differs_between_seeds() {
        let run = |seed| {
            let mut rng = jitter_rng(Some(seed));
            let mut b = Backoff::new(policy());
            (0..8).map(|_| b.next_delay(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // Two agents that collided at the same moment spread apart.
        let a = run(1);
        let b = run(2);
        assert!(a.iter().zip(&b).any(|(x, y)| x != y));
    }

    #[test]
    fn zero_base_means_no_wait() {
        let mut rng = jitter_rng(Some(3));
        let mut b = Backoff::new(RetryPolicy {
            base: Duration::ZERO,
            max: Duration::ZERO,
            max_attempts: 3,
        });
        assert_eq!(b.next_delay(&mut rng), Duration::ZERO);
    }

    #[test]
    fn watch_delays_follow_kubes_schedule_and_restart_on_reset() {
        let mut a = Jittered::new(watch_policy(), Some(42));
        let first: Vec<Duration> = a.by_ref().take(8).collect();
        let caps = [800u64, 1600, 3200, 6400, 12800, 25600, 30000, 30000];
        for (d, cap) in first.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(
                *d >= cap / 2 && *d <= cap,
                "{d:?} outside its bounds {cap:?}"
            );
        }
        let again: Vec<Duration> = Jittered::new(watch_policy(), Some(42)).take(8).collect();
        assert_eq!(first, again);
        a.reset();
        assert!(a.next().is_some_and(|d| d <= WATCH_BACKOFF_BASE));
    }

    #[test]
    fn derived_seeds_are_stable_and_distinct() {
        assert_eq!(derive_seed(7, "a"), derive_seed(7, "a"));
        assert_ne!(derive_seed(7, "a"), derive_seed(7, "b"));
        assert_ne!(derive_seed(7, "a"), derive_seed(8, "a"));
    }
}
