//! The backoff of the controller's watches: kube-runtime's default
//! schedule (800 ms doubling up to 30 s, reset by any successful event)
//! with jitter drawn from a seeded RNG instead of a thread-local one, so a
//! simulated run is reproducible. The schedule, the jitter and the seed
//! derivation live in `spur_core::backoff`; this is kube-runtime's
//! `Backoff` trait over it, seeded per watch with [`seed_for`] from the
//! replica's seed. Without a seed (production) the RNG is seeded from the
//! process's random hasher keys.

use std::time::Duration;

use spur_core::backoff::{derive_seed, watch_policy, Jittered};
pub use spur_core::backoff::{WATCH_BACKOFF_BASE, WATCH_BACKOFF_MAX};

/// A watch's restart delays, for `WatchStreamExt::backoff`.
#[derive(Debug, Clone)]
pub struct WatchBackoff(Jittered);

impl WatchBackoff {
    /// kube-runtime's default schedule, jitter from `seed` (None:
    /// process-random).
    pub fn new(seed: Option<u64>) -> WatchBackoff {
        WatchBackoff(Jittered::new(watch_policy(), seed))
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// The seed of one component (`label`, e.g. `"usage/ippools"`) derived
/// from a replica's `seed` (`spur_core::backoff::derive_seed`); None stays
/// None (process-random).
pub fn seed_for(seed: Option<u64>, label: &str) -> Option<u64> {
    seed.map(|s| derive_seed(s, label))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    #[test]
    fn reset_through_kubes_trait_starts_over() {
        let mut b = WatchBackoff::new(Some(3));
        let first: Vec<Duration> = b.by_ref().take(6).collect();
        assert!(first[5] > WATCH_BACKOFF_BASE);
        b.reset();
        assert!(b.next().is_some_and(|d| d <= WATCH_BACKOFF_BASE));
        assert_eq!(seed_for(None, "x"), None);
        assert_ne!(seed_for(Some(1), "a"), seed_for(Some(1), "b"));
    }
}
