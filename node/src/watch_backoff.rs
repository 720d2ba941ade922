//! The backoff of the agent's watches: kube-runtime's default schedule
//! (800 ms doubling up to 30 s, reset by any successful event) with jitter
//! drawn from a seeded RNG instead of a thread-local one, so a simulated
//! run is reproducible. The schedule, the jitter and the seed derivation
//! live in `spur_core::backoff`; this is kube-runtime's `Backoff` trait
//! over it. Without a seed (production) the RNG is seeded from the
//! process's random hasher keys.

use std::time::Duration;

pub use spur_core::backoff::{derive_seed, watch_policy, WATCH_BACKOFF_BASE, WATCH_BACKOFF_MAX};
use spur_core::backoff::{Jittered, RetryPolicy};

/// A watch's restart delays, for `WatchStreamExt::backoff`.
#[derive(Debug, Clone)]
pub struct WatchBackoff(Jittered);

impl WatchBackoff {
    /// kube-runtime's default schedule, jitter from `seed` (None:
    /// process-random).
    pub fn new(seed: Option<u64>) -> WatchBackoff {
        WatchBackoff::with_policy(watch_policy(), seed)
    }

    /// The backoff of the watch `label`, its seed derived from `seed`.
    pub fn for_watch(seed: Option<u64>, label: &str) -> WatchBackoff {
        WatchBackoff::new(seed.map(|s| derive_seed(s, label)))
    }

    /// Another schedule.
    pub fn with_policy(policy: RetryPolicy, seed: Option<u64>) -> WatchBackoff {
        WatchBackoff(Jittered::new(policy, seed))
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

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff as _;

    #[test]
    fn reset_through_kubes_trait_starts_over_and_watches_get_distinct_seeds() {
        let mut b = WatchBackoff::new(Some(7));
        let first: Vec<Duration> = b.by_ref().take(6).collect();
        b.reset();
        assert!(b.next().is_some_and(|d| d <= WATCH_BACKOFF_BASE));
        assert!(first[5] > WATCH_BACKOFF_BASE);
        let pods: Vec<Duration> = WatchBackoff::for_watch(Some(1), "pods").take(4).collect();
        let nads: Vec<Duration> = WatchBackoff::for_watch(Some(1), "nads").take(4).collect();
        assert_ne!(pods, nads);
    }
}
