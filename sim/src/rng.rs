//! The run's randomness: one seed, and from it one independent,
//! reproducible stream per component, named by a stable label
//! (`"agent/node-a"`, `"faults"`, `"kubelet/node-b"`). Deriving by label
//! rather than drawing in sequence means adding a component never shifts
//! the randomness of another, so a seed keeps reproducing its run as the
//! simulator grows.

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// The seed of the component `label` in the run seeded `run_seed`.
pub fn seed_for(run_seed: u64, label: &str) -> u64 {
    // FNV-1a over the label, then SplitMix64 over (run seed ^ label hash):
    // well spread, stable across platforms and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(run_seed ^ h)
}

/// A random stream for the component `label`.
pub fn rng_for(run_seed: u64, label: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed_for(run_seed, label))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
        assert_eq!(seed_for(0, ""), splitmix64(0xcbf2_9ce4_8422_2325));
        let mut a = rng_for(1, "x");
        let mut b = rng_for(1, "x");
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
