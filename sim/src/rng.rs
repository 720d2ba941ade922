//! The run's randomness: one seed, and from it one independent,
//! reproducible stream per component, named by a stable label
//! (`"agent/node-a"`, `"faults"`, `"kubelet/node-b"`). Deriving by label
//! rather than drawing in sequence means adding a component never shifts
//! the randomness of another, so a seed keeps reproducing its run as the
//! simulator grows.

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// The seed of the component `label` in the run seeded `run_seed`
/// (`spur_core::backoff::derive_seed`, which the agent and the controller
/// derive their watches' seeds with too).
pub fn seed_for(run_seed: u64, label: &str) -> u64 {
    spur_core::backoff::derive_seed(run_seed, label)
}

/// A random stream for the component `label`.
pub fn rng_for(run_seed: u64, label: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed_for(run_seed, label))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn seeds_are_stable_and_independent_per_label() {
        assert_eq!(seed_for(7, "agent/node-a"), seed_for(7, "agent/node-a"));
        assert_ne!(seed_for(7, "agent/node-a"), seed_for(7, "agent/node-b"));
        assert_ne!(seed_for(7, "agent/node-a"), seed_for(8, "agent/node-a"));
        // Pinned: a change here changes every recorded run.
        assert_eq!(seed_for(0, ""), 0xc381_7c01_6ba4_ff30);
        let mut a = rng_for(1, "x");
        let mut b = rng_for(1, "x");
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
