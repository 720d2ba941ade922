//! Sharded allocation state: the math of allocation blocks.
//!
//! A pool's addresses are cut into aligned windows of [`BLOCK_SIZE`]
//! addresses. A window that holds allocatable addresses can be claimed as a
//! block by one node (node affinity), and every allocation lives in the
//! block of its window, so no API object holds more than [`BLOCK_SIZE`]
//! allocations and, in the common case, a node writes only blocks no other
//! node writes. Windows are aligned on addresses, not on positions in the
//! allocatable set, so adding ranges or excludes to a pool never moves an
//! existing allocation to another block.
//!
//! Nothing here enumerates a pool: finding the first unclaimed window walks
//! the pool's spans and the claimed windows (`O(claimed + spans)`), and a
//! window's capacity is a 64-bit mask computed from the spans that touch it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::ippool::PoolLayout;
use crate::pool::{from_u128, to_u128, Family};

/// Addresses per block window (a power of two; 64 fits a `u64` mask).
pub const BLOCK_SIZE: u32 = 64;
const BLOCK_MASK: u128 = BLOCK_SIZE as u128 - 1;

/// The window holding `ip`: its first address as a number.
pub fn window_of(ip: IpAddr) -> u128 {
    to_u128(ip) & !BLOCK_MASK
}

/// Which offsets of the window at `base` the pool may hand out (bit `i`
/// set: `base + i` is allocatable).
pub fn capacity_mask(layout: &PoolLayout, base: u128) -> u64 {
    let set = layout.allocatable();
    let end = base + BLOCK_MASK;
    let spans = set.spans();
    let first = spans.partition_point(|s| s.hi < base);
    let mut mask = 0u64;
    for s in spans[first..].iter().take_while(|s| s.lo <= end) {
        let lo = s.lo.max(base) - base;
        let hi = s.hi.min(end) - base;
        let width = hi - lo + 1;
        let bits = if width >= 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        mask |= bits << lo;
    }
    mask
}

/// Every window of the pool that holds at least one allocatable address,
/// ascending, lazily.
pub fn windows(layout: &PoolLayout) -> impl Iterator<Item = u128> + '_ {
    window_runs(layout).flat_map(|(from, count)| {
        (0..count).map(move |i| from + (i << BLOCK_SIZE.trailing_zeros()))
    })
}

/// The pool's windows as runs `(first window, number of windows)`, one per
/// span, ascending, each window listed once (two spans can share a window).
fn window_runs(layout: &PoolLayout) -> impl Iterator<Item = (u128, u128)> + '_ {
    let mut last: Option<u128> = None;
    layout.allocatable().spans().iter().filter_map(move |s| {
        let first = s.lo & !BLOCK_MASK;
        let lastw = s.hi & !BLOCK_MASK;
        let from = match last {
            Some(l) if l >= first => l + BLOCK_SIZE as u128,
            _ => first,
        };
        last = Some(last.map_or(lastw, |l| l.max(lastw)));
        (from <= lastw).then(|| (from, ((lastw - from) >> BLOCK_SIZE.trailing_zeros()) + 1))
    })
}

/// Claimed windows of a pool, kept as merged runs of consecutive windows so
/// that finding the first unclaimed one does not walk every claimed block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimed {
    /// Run start -> run end (both window bases, inclusive).
    runs: BTreeMap<u128, u128>,
    count: usize,
}

impl Claimed {
    /// No window claimed.
    pub fn new() -> Claimed {
        Claimed::default()
    }

    /// Number of claimed windows.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no window is claimed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The run holding window `w`, if any.
    fn run_of(&self, w: u128) -> Option<(u128, u128)> {
        let (&s, &e) = self.runs.range(..=w).next_back()?;
        (w <= e).then_some((s, e))
    }

    /// True when window `w` is claimed.
    pub fn contains(&self, w: u128) -> bool {
        self.run_of(w).is_some()
    }

    /// Marks window `w` claimed (idempotent).
    pub fn insert(&mut self, w: u128) {
        if self.contains(w) {
            return;
        }
        let step = BLOCK_SIZE as u128;
        let mut start = w;
        let mut end = w;
        if let Some((s, e)) = w.checked_sub(step).and_then(|p| self.run_of(p)) {
            self.runs.remove(&s);
            start = s;
            end = end.max(e);
        }
        if let Some(e) = w.checked_add(step).and_then(|n| self.runs.remove(&n)) {
            end = e;
        }
        self.runs.insert(start, end);
        self.count += 1;
    }

    /// Marks window `w` unclaimed (idempotent).
    pub fn remove(&mut self, w: u128) {
        let Some((s, e)) = self.run_of(w) else { return };
        let step = BLOCK_SIZE as u128;
        self.runs.remove(&s);
        if s < w {
            self.runs.insert(s, w - step);
        }
        if w < e {
            self.runs.insert(w + step, e);
        }
        self.count -= 1;
    }

    /// Every claimed window, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u128> + '_ {
        let step = BLOCK_SIZE as u128;
        self.runs.iter().flat_map(move |(&s, &e)| {
            let n = (e - s) / step + 1;
            (0..n).map(move |i| s + i * step)
        })
    }
}

/// The lowest window of the pool that holds allocatable addresses and is
/// not claimed. Costs `O(spans + runs skipped)`, whatever the pool's size
/// and however many windows are claimed.
pub fn first_unclaimed_window(layout: &PoolLayout, claimed: &Claimed) -> Option<u128> {
    unclaimed_at_or_above(layout, claimed, 0)
}

/// The first unclaimed window at or above `from`, wrapping around to the
/// lowest one: nodes that start their search at different windows do not
/// race each other for the same block.
pub fn first_unclaimed_window_from(
    layout: &PoolLayout,
    claimed: &Claimed,
    from: u128,
) -> Option<u128> {
    unclaimed_at_or_above(layout, claimed, from)
        .or_else(|| unclaimed_at_or_above(layout, claimed, 0))
}

fn unclaimed_at_or_above(layout: &PoolLayout, claimed: &Claimed, from: u128) -> Option<u128> {
    let step = BLOCK_SIZE as u128;
    let mut floor: u128 = from & !BLOCK_MASK;
    for s in layout.allocatable().spans() {
        if s.hi < floor {
            continue;
        }
        let mut w = (s.lo & !BLOCK_MASK).max(floor);
        let last = s.hi & !BLOCK_MASK;
        while w <= last {
            match claimed.run_of(w) {
                Some((_, end)) => match end.checked_add(step) {
                    Some(next) => w = next,
                    None => return None,
                },
                None => return Some(w),
            }
        }
        floor = w;
    }
    None
}

/// Where a node starts looking for a window to claim: a window chosen by a
/// hash of the node's name, so that nodes starting together spread over
/// the pool instead of all claiming its lowest window. Stable for a node
/// and a pool.
pub fn claim_start(layout: &PoolLayout, node: &str) -> u128 {
    let count = window_count(layout);
    if count == 0 {
        return 0;
    }
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain(layout.name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    nth_window(layout, u128::from(h) % count).unwrap_or(0)
}

/// The `k`-th window (ascending) of the pool that holds allocatable
/// addresses, in `O(spans)`.
pub fn nth_window(layout: &PoolLayout, mut k: u128) -> Option<u128> {
    for (from, n) in window_runs(layout) {
        if k < n {
            return Some(from + (k << BLOCK_SIZE.trailing_zeros()));
        }
        k -= n;
    }
    None
}

/// How many windows of the pool hold allocatable addresses (without
/// enumerating them when the pool is large).
pub fn window_count(layout: &PoolLayout) -> u128 {
    window_runs(layout).map(|(_, n)| n).sum()
}

/// The lowest free offset of a block: allocatable, and not in `used`.
pub fn lowest_free(capacity: u64, used: u64) -> Option<u32> {
    let free = capacity & !used;
    (free != 0).then(|| free.trailing_zeros())
}

/// The address at `offset` of the window at `base`.
pub fn address(family: Family, base: u128, offset: u32) -> IpAddr {
    from_u128(family, base + offset as u128)
}

/// The offset of `ip` in its window.
pub fn offset_of(ip: IpAddr) -> u32 {
    (to_u128(ip) & BLOCK_MASK) as u32
}

/// The object name of a pool's block at `base`: the pool name and the
/// window's first address with `.`/`:` written as `-`. Kept within the 253
/// characters of a Kubernetes name.
pub fn block_name(pool: &str, family: Family, base: u128) -> String {
    let addr = match family {
        Family::V4 => from_u128(family, base).to_string().replace('.', "-"),
        Family::V6 => format!("{base:032x}"),
    };
    let max_pool = 253 - addr.len() - 1;
    let pool = if pool.len() > max_pool {
        pool[..max_pool].trim_end_matches(['-', '.'])
    } else {
        pool
    };
    format!("{pool}-{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ippool::{IPPoolSpec, IpRange, SubnetInfo};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn layout(ranges: Vec<IpRange>, gw: &str, prefix: u8, exclude: &[&str]) -> PoolLayout {
        PoolLayout::from_spec(
            "p",
            &IPPoolSpec {
                ip_ranges: ranges,
                subnet_info: SubnetInfo {
                    gateway: gw.into(),
                    prefix_length: prefix,
                    vlan: None,
                },
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
        )
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn capacity_follows_the_allocation_rules() {
        let p = layout(
            vec![IpRange::cidr("10.0.0.0/24")],
            "10.0.0.1",
            24,
            &["10.0.0.10..10.0.0.12"],
        );
        let w0 = window_of(ip("10.0.0.0"));
        let m = capacity_mask(&p, w0);
        // .0 (first of the cidr) and .1 (gateway) and .10-.12 are out.
        assert_eq!(m & 0b11, 0);
        assert_eq!(m >> 10 & 0b111, 0);
        assert_eq!(m.count_ones(), 64 - 5);
        // The last window loses the broadcast address.
        let w3 = window_of(ip("10.0.0.192"));
        assert_eq!(capacity_mask(&p, w3).count_ones(), 63);
        assert_eq!(lowest_free(m, 0b100), Some(3));
        assert_eq!(address(Family::V4, w0, 3), ip("10.0.0.3"));
        assert_eq!(offset_of(ip("10.0.0.200")), 8);
    }

    #[test]
    fn windows_of_a_slash_64_are_never_enumerated() {
        let p = layout(vec![IpRange::cidr("fd00:1::/64")], "fd00:1::1", 64, &[]);
        assert_eq!(window_count(&p), 1u128 << 58);
        let mut claimed = Claimed::new();
        let first = first_unclaimed_window(&p, &claimed).unwrap();
        assert_eq!(from_u128(Family::V6, first), ip("fd00:1::"));
        claimed.insert(first);
        claimed.insert(first + 64);
        assert_eq!(first_unclaimed_window(&p, &claimed), Some(first + 128));
        assert_eq!(capacity_mask(&p, first).count_ones(), 62);
        assert_eq!(
            block_name("vlan100-ipv6", Family::V6, first),
            "vlan100-ipv6-fd000001000000000000000000000000"
        );
        assert_eq!(
            block_name("vlan100-ipv4", Family::V4, window_of(ip("10.10.1.64"))),
            "vlan100-ipv4-10-10-1-64"
        );
        assert!(block_name(&"p".repeat(300), Family::V6, first).len() <= 253);
    }

    #[test]
    fn exhausted_pool_has_no_unclaimed_window() {
        let p = layout(
            vec![IpRange::start_end("10.0.0.60", "10.0.0.70")],
            "10.0.0.1",
            24,
            &[],
        );
        let mut all = Claimed::new();
        windows(&p).for_each(|w| all.insert(w));
        assert_eq!(all.len(), 2);
        assert_eq!(first_unclaimed_window(&p, &all), None);
    }

    /// Small pools with random ranges and excludes in 10.0.0.0/22.
    fn small_layout() -> impl Strategy<Value = PoolLayout> {
        (
            prop::collection::vec((0u32..1024, 0u32..200), 1..4),
            prop::collection::vec((0u32..1024, 0u32..30), 0..4),
        )
            .prop_filter_map("overlapping ranges", |(ranges, excl)| {
                let a = |v: u32| std::net::Ipv4Addr::from(0x0a00_0000 + v.min(1023)).to_string();
                let spec = IPPoolSpec {
                    ip_ranges: ranges
                        .iter()
                        .map(|&(s, n)| IpRange::start_end(a(s), a(s + n)))
                        .collect(),
                    subnet_info: SubnetInfo {
                        gateway: "10.0.0.1".into(),
                        prefix_length: 22,
                        vlan: None,
                    },
                    exclude: excl
                        .iter()
                        .map(|&(s, n)| format!("{}..{}", a(s), a(s + n)))
                        .collect(),
                };
                PoolLayout::from_spec("p", &spec).ok()
            })
    }

    proptest! {
        #[test]
        fn claimed_runs_agree_with_a_set(ops in prop::collection::vec((any::<bool>(), 0u128..40), 0..80)) {
            let mut claimed = Claimed::new();
            let mut model = BTreeSet::new();
            for (insert, slot) in ops {
                let w = slot * BLOCK_SIZE as u128;
                if insert {
                    claimed.insert(w);
                    model.insert(w);
                } else {
                    claimed.remove(w);
                    model.remove(&w);
                }
                prop_assert_eq!(claimed.len(), model.len());
                prop_assert_eq!(claimed.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
                for s in 0u128..42 {
                    prop_assert_eq!(claimed.contains(s * 64), model.contains(&(s * 64)));
                }
            }
        }

        #[test]
        fn windows_and_masks_agree_with_enumeration(p in small_layout(), claim_every in 1usize..4) {
            // Brute force: the windows of every allocatable address.
            let brute: BTreeSet<u128> = p.allocatable().iter().map(window_of).collect();
            let lazy: Vec<u128> = windows(&p).collect();
            prop_assert_eq!(lazy.iter().copied().collect::<BTreeSet<_>>(), brute.clone());
            prop_assert_eq!(lazy.len(), brute.len(), "windows are listed once");
            prop_assert_eq!(window_count(&p), brute.len() as u128);
            let mut total = 0u32;
            for &w in &brute {
                let m = capacity_mask(&p, w);
                for i in 0..64u32 {
                    let a = address(Family::V4, w, i);
                    prop_assert_eq!(m >> i & 1 == 1, p.contains(a));
                }
                total += m.count_ones();
            }
            prop_assert_eq!(total as u128, p.size());
            // Claim some windows; the first unclaimed is the lowest other one.
            let picked: BTreeSet<u128> = brute.iter().copied().step_by(claim_every).collect();
            let mut claimed = Claimed::new();
            picked.iter().for_each(|&w| claimed.insert(w));
            let expect = brute.iter().copied().find(|w| !picked.contains(w));
            prop_assert_eq!(first_unclaimed_window(&p, &claimed), expect);
            for (k, &w) in brute.iter().enumerate() {
                prop_assert_eq!(nth_window(&p, k as u128), Some(w));
                let wrapped = brute.iter().copied().filter(|x| *x >= w).chain(brute.iter().copied())
                    .find(|x| !picked.contains(x));
                prop_assert_eq!(first_unclaimed_window_from(&p, &claimed, w), wrapped);
            }
            prop_assert_eq!(nth_window(&p, brute.len() as u128), None);
            if !brute.is_empty() {
                prop_assert!(brute.contains(&claim_start(&p, "node-a")));
            }
        }
    }
}
