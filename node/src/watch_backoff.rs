//! The backoff of the agent's restarted watches (reflectors and watchers
//! of kube-runtime): kube's default policy (800 ms doubling to 30 s, reset
//! after a successful event) with the jitter drawn from a seeded RNG
//! ([`spur_core::backoff::jitter_rng`]) instead of the thread RNG, so the
//! simulator replays a run's watch restarts bit for bit.
//!
//! Each watch gets its own sequence: [`WatchBackoff::for_watch`] derives a
//! watch's seed from the component's seed and a stable label, so the
//! watches of one agent do not retry in lockstep and adding a watch never
//! shifts another's delays.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use spur_core::backoff::{jitter_rng, Backoff, RetryPolicy};

/// The first delay's upper bound (kube-runtime's default: 800 ms).
pub const WATCH_BACKOFF_BASE: Duration = Duration::from_millis(800);
/// The largest delay (kube-runtime's default: 30 s).
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The policy of a watch's restarts: [`WATCH_BACKOFF_BASE`] doubling up to
/// [`WATCH_BACKOFF_MAX`], never giving up (`max_attempts` is not used by
/// [`WatchBackoff`]).
pub fn watch_policy() -> RetryPolicy {
    RetryPolicy {
        base: WATCH_BACKOFF_BASE,
        max: WATCH_BACKOFF_MAX,
        max_attempts: u32::MAX,
    }
}

/// A seed for the watch (or other sub-component) `label` of a component
/// seeded with `seed`: stable across runs, builds and platforms (FNV-1a of
/// the label mixed with the seed by SplitMix64).
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ h;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A [`kube::runtime::utils::Backoff`] over
/// [`spur_core::backoff::Backoff`]: equal-jitter exponential delays,
/// endless, reset by kube-runtime's `StreamBackoff` on every successful
/// event. Use it with `WatchStreamExt::backoff` in place of
/// `default_backoff()`.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    policy: RetryPolicy,
    backoff: Backoff,
    rng: ChaCha8Rng,
}

impl WatchBackoff {
    /// The [`watch_policy`] with jitter from `seed` (`None`: random per
    /// process, as in production).
    pub fn new(seed: Option<u64>) -> WatchBackoff {
        WatchBackoff::with_policy(watch_policy(), seed)
    }

    /// The backoff of the watch `label` of a component seeded with `seed`
    /// (see [`derive_seed`]).
    pub fn for_watch(seed: Option<u64>, label: &str) -> WatchBackoff {
        WatchBackoff::new(seed.map(|s| derive_seed(s, label)))
    }

    /// Another policy (tests), jitter from `seed`.
    pub fn with_policy(policy: RetryPolicy, seed: Option<u64>) -> WatchBackoff {
        WatchBackoff {
            policy,
            backoff: Backoff::new(policy),
            rng: jitter_rng(seed),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    /// The next delay; never `None` (a watch is retried forever).
    fn next(&mut self) -> Option<Duration> {
        Some(self.backoff.next_delay(&mut self.rng))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    /// Back to the first delay's bound; the RNG goes on (a reset does not
    /// replay the same jitter).
    fn reset(&mut self) {
        self.backoff = Backoff::new(self.policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    fn take(b: &mut WatchBackoff, n: usize) -> Vec<Duration> {
        b.by_ref().take(n).collect()
    }

    #[test]
    fn same_seed_same_delays_and_bounds_like_kube_default() {
        let a = take(&mut WatchBackoff::new(Some(42)), 10);
        let b = take(&mut WatchBackoff::new(Some(42)), 10);
        assert_eq!(a, b);
        assert_ne!(a, take(&mut WatchBackoff::new(Some(43)), 10));
        // 800 ms doubling to 30 s, each delay within [cap/2, cap].
        let caps_ms = [
            800u64, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000, 30000,
        ];
        for (d, cap) in a.iter().zip(caps_ms) {
            let cap = Duration::from_millis(cap);
            assert!(
                *d >= cap / 2 && *d <= cap,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
        }
    }

    #[test]
    fn reset_starts_over_from_the_first_bound() {
        let mut b = WatchBackoff::new(Some(7));
        let first = take(&mut b, 6);
        assert!(first[5] >= Duration::from_millis(12_800));
        b.reset();
        let again = b.next().unwrap_or_default();
        assert!(again >= Duration::from_millis(400) && again <= WATCH_BACKOFF_BASE);
        // Deterministic across resets too.
        let mut c = WatchBackoff::new(Some(7));
        take(&mut c, 6);
        c.reset();
        assert_eq!(c.next(), Some(again));
    }

    #[test]
    fn watches_of_one_component_get_distinct_stable_seeds() {
        assert_eq!(derive_seed(1, "pods"), derive_seed(1, "pods"));
        assert_ne!(derive_seed(1, "pods"), derive_seed(1, "namespaces"));
        assert_ne!(derive_seed(1, "pods"), derive_seed(2, "pods"));
        let a = take(&mut WatchBackoff::for_watch(Some(5), "pods"), 4);
        let b = take(&mut WatchBackoff::for_watch(Some(5), "pods"), 4);
        assert_eq!(a, b);
    }
}
