//! The backoff of the controller's watches: kube-runtime's default
//! schedule (800 ms doubling up to 30 s, reset by any successful event)
//! with jitter drawn from a seeded RNG instead of a process-random one.
//!
//! kube-runtime's `default_backoff()` draws its jitter from a thread-local
//! random generator, which would make a simulated run irreproducible.
//! [`WatchBackoff`] implements the same `kube::runtime::utils::Backoff`
//! trait over `spur_core::backoff` (equal jitter: each delay lies between
//! half and all of its cap), seeded per watch with [`seed_for`] from the
//! replica's seed. Without a seed (production) the RNG is seeded from the
//! process's random hasher keys, as `spur_core::backoff::jitter_rng`
//! does.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use spur_core::backoff::{jitter_rng, Backoff, RetryPolicy};

/// The first delay's upper bound (kube-runtime's default).
pub const WATCH_BACKOFF_BASE: Duration = Duration::from_millis(800);
/// The largest delay (kube-runtime's default).
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A watch's restart delays: [`WATCH_BACKOFF_BASE`] doubling up to
/// [`WATCH_BACKOFF_MAX`], never ending, reset after a success.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    policy: RetryPolicy,
    backoff: Backoff,
    rng: ChaCha8Rng,
}

impl WatchBackoff {
    /// A backoff drawing its jitter from `seed` (None: process-random).
    pub fn new(seed: Option<u64>) -> WatchBackoff {
        let policy = RetryPolicy {
            base: WATCH_BACKOFF_BASE,
            max: WATCH_BACKOFF_MAX,
            max_attempts: u32::MAX,
        };
        WatchBackoff {
            policy,
            backoff: Backoff::new(policy),
            rng: jitter_rng(seed),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.backoff.next_delay(&mut self.rng))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.backoff = Backoff::new(self.policy);
    }
}

/// The seed of one component (`label`, e.g. `"usage/ippools"`) derived
/// from a replica's `seed`: a stable mix (FNV-1a of the label, then
/// SplitMix64), so adding a component never shifts another's jitter.
/// None stays None (process-random).
pub fn seed_for(seed: Option<u64>, label: &str) -> Option<u64> {
    let seed = seed?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = (seed ^ h).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    Some(z ^ (z >> 31))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    #[test]
    fn doubles_from_800ms_to_30s_within_equal_jitter() {
        let mut b = WatchBackoff::new(Some(1));
        let caps = [800u64, 1600, 3200, 6400, 12_800, 25_600, 30_000, 30_000];
        for (i, cap) in caps.iter().enumerate() {
            let d = b.next().unwrap_or_default();
            let cap = Duration::from_millis(*cap);
            assert!(d >= cap / 2 && d <= cap, "attempt {i}: {d:?} vs {cap:?}");
        }
        for _ in 0..100 {
            assert!(b.next().is_some_and(|d| d <= WATCH_BACKOFF_MAX));
        }
        b.reset();
        let d = b.next().unwrap_or_default();
        assert!(d <= WATCH_BACKOFF_BASE && d >= WATCH_BACKOFF_BASE / 2);
    }

    #[test]
    fn same_seed_same_delays() {
        let run = |seed| {
            let mut b = WatchBackoff::new(Some(seed));
            (0..10).filter_map(|_| b.next()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn derived_seeds_are_stable_and_distinct() {
        assert_eq!(seed_for(None, "a"), None);
        assert_eq!(seed_for(Some(1), "a"), seed_for(Some(1), "a"));
        assert_ne!(seed_for(Some(1), "a"), seed_for(Some(1), "b"));
        assert_ne!(seed_for(Some(1), "a"), seed_for(Some(2), "a"));
    }
}
