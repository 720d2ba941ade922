//! Address-set math: sets of IP addresses as sorted, disjoint spans.
//!
//! An IPPool's allocatable set can be huge (an IPv6 /64 holds 2^64
//! addresses), so nothing here enumerates addresses. A set is a list of
//! closed spans of one family kept sorted and merged, with the cumulative
//! sizes beside them: size is a sum, membership and the n-th address are
//! binary searches over the spans, and subtracting a list of spans is one
//! merge pass. Addresses are handled as `u128` (IPv4 in the low 32 bits).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4
    V4,
    /// IPv6
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Family {
        Family::of(net.addr())
    }

    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The highest address of the family as a number.
    pub fn max(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as a number (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family` whose number is `v` (truncated to the family's
/// width).
pub fn from_u128(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// A closed span `[lo, hi]` of addresses, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    /// First address.
    pub lo: u128,
    /// Last address (inclusive).
    pub hi: u128,
}

impl Span {
    /// A span; `lo` must not exceed `hi`.
    pub fn new(lo: u128, hi: u128) -> Span {
        debug_assert!(lo <= hi);
        Span { lo, hi }
    }

    /// A span of one address.
    pub fn single(ip: IpAddr) -> Span {
        let v = to_u128(ip);
        Span { lo: v, hi: v }
    }

    /// Every address of a network, network and broadcast included.
    pub fn of_net(net: &IpNet) -> Span {
        Span {
            lo: to_u128(net.network()),
            hi: to_u128(net.broadcast()),
        }
    }

    /// Number of addresses (saturating at `u128::MAX` for the whole IPv6
    /// space, which no pool can hold).
    pub fn len(&self) -> u128 {
        (self.hi - self.lo).saturating_add(1)
    }

    /// Never true: a span holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when the spans share an address.
    pub fn overlaps(&self, other: &Span) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }

    /// True when `other` lies inside this span.
    pub fn covers(&self, other: &Span) -> bool {
        self.lo <= other.lo && other.hi <= self.hi
    }
}

/// A set of addresses of one family: sorted, disjoint, non-adjacent spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSet {
    family: Family,
    spans: Vec<Span>,
    /// `before[i]` is the number of addresses in `spans[..i]`.
    before: Vec<u128>,
}

impl AddrSet {
    /// The empty set of a family.
    pub fn empty(family: Family) -> AddrSet {
        AddrSet {
            family,
            spans: Vec::new(),
            before: Vec::new(),
        }
    }

    /// The union of `spans` (in any order, overlapping or not).
    pub fn from_spans(family: Family, spans: impl IntoIterator<Item = Span>) -> AddrSet {
        AddrSet::from_normalized(family, normalize(spans.into_iter().collect()))
    }

    fn from_normalized(family: Family, spans: Vec<Span>) -> AddrSet {
        let mut before = Vec::with_capacity(spans.len());
        let mut total: u128 = 0;
        for s in &spans {
            before.push(total);
            total = total.saturating_add(s.len());
        }
        AddrSet {
            family,
            spans,
            before,
        }
    }

    /// This set without the addresses of `remove`, in one merge pass.
    pub fn subtract(&self, remove: impl IntoIterator<Item = Span>) -> AddrSet {
        let remove = normalize(remove.into_iter().collect());
        let mut out = Vec::with_capacity(self.spans.len() + remove.len());
        let mut r = 0;
        for s in &self.spans {
            let mut lo = s.lo;
            let hi = s.hi;
            // Skip removals that end before this span.
            while r < remove.len() && remove[r].hi < lo {
                r += 1;
            }
            let mut k = r;
            let mut alive = true;
            while k < remove.len() && remove[k].lo <= hi {
                let cut = remove[k];
                if cut.lo > lo {
                    out.push(Span::new(lo, cut.lo - 1));
                }
                if cut.hi >= hi {
                    alive = false;
                    break;
                }
                lo = cut.hi + 1;
                k += 1;
            }
            if alive {
                out.push(Span::new(lo, hi));
            }
        }
        AddrSet::from_normalized(self.family, out)
    }

    /// The family of the set.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The spans, sorted and disjoint.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Number of addresses, computed from the spans (never enumerated).
    pub fn len(&self) -> u128 {
        match (self.before.last(), self.spans.last()) {
            (Some(b), Some(s)) => b.saturating_add(s.len()),
            _ => 0,
        }
    }

    /// True when the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    fn span_index(&self, v: u128) -> Option<usize> {
        let i = self.spans.partition_point(|s| s.hi < v);
        (i < self.spans.len() && self.spans[i].lo <= v).then_some(i)
    }

    /// True when `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && self.span_index(to_u128(ip)).is_some()
    }

    /// The `n`-th address of the set in ascending order (0-based).
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        if n >= self.len() {
            return None;
        }
        // The last span whose first index is <= n.
        let i = self.before.partition_point(|&b| b <= n) - 1;
        Some(from_u128(
            self.family,
            self.spans[i].lo + (n - self.before[i]),
        ))
    }

    /// The position of `ip` in the set (inverse of [`AddrSet::nth`]).
    pub fn index_of(&self, ip: IpAddr) -> Option<u128> {
        if Family::of(ip) != self.family {
            return None;
        }
        let v = to_u128(ip);
        let i = self.span_index(v)?;
        Some(self.before[i] + (v - self.spans[i].lo))
    }

    /// Every address in ascending order. Lazy: callers bound what they take.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let family = self.family;
        self.spans
            .iter()
            .flat_map(move |s| (s.lo..=s.hi).map(move |v| from_u128(family, v)))
    }
}

/// Sorts and merges overlapping or adjacent spans.
fn normalize(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.lo <= last.hi.saturating_add(1) => last.hi = last.hi.max(s.hi),
            _ => out.push(s),
        }
    }
    out
}

/// Renders a span as `a` or `a-b` for messages.
pub fn span_text(family: Family, s: Span) -> String {
    if s.lo == s.hi {
        from_u128(family, s.lo).to_string()
    } else {
        format!("{}-{}", from_u128(family, s.lo), from_u128(family, s.hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn subtract_splits_spans() {
        let set = AddrSet::from_spans(Family::V4, [Span::new(10, 20), Span::new(30, 40)]);
        let out = set.subtract([Span::new(10, 10), Span::new(15, 32), Span::new(40, 50)]);
        assert_eq!(out.spans(), &[Span::new(11, 14), Span::new(33, 39)]);
        assert_eq!(out.len(), 4 + 7);
        assert_eq!(out.nth(0), Some(from_u128(Family::V4, 11)));
        assert_eq!(out.nth(4), Some(from_u128(Family::V4, 33)));
        assert_eq!(out.nth(11), None);
        assert_eq!(out.index_of(from_u128(Family::V4, 35)), Some(6));
        assert_eq!(out.index_of(from_u128(Family::V4, 20)), None);
    }

    #[test]
    fn ipv6_slash_64_is_never_enumerated() {
        let net: IpNet = "fd00:10::/64".parse().unwrap();
        let set = AddrSet::from_spans(Family::V6, [Span::of_net(&net)]);
        let set = set.subtract([Span::single(net.network())]);
        assert_eq!(set.len(), (1u128 << 64) - 1);
        let last = set.nth((1u128 << 64) - 2).unwrap();
        assert_eq!(
            last,
            "fd00:10::ffff:ffff:ffff:ffff".parse::<IpAddr>().unwrap()
        );
        assert_eq!(set.index_of(last), Some((1u128 << 64) - 2));
        assert!(!set.contains("fd00:10::".parse().unwrap()));
        assert!(!set.contains(v4("10.0.0.1")));
    }

    fn small_spans() -> impl Strategy<Value = Vec<Span>> {
        prop::collection::vec((0u128..300, 0u128..40), 0..8)
            .prop_map(|v| v.into_iter().map(|(lo, n)| Span::new(lo, lo + n)).collect())
    }

    fn brute(spans: &[Span]) -> BTreeSet<u128> {
        spans.iter().flat_map(|s| s.lo..=s.hi).collect()
    }

    proptest! {
        #[test]
        fn set_math_agrees_with_enumeration(keep in small_spans(), cut in small_spans()) {
            let set = AddrSet::from_spans(Family::V4, keep.clone()).subtract(cut.clone());
            let expect: Vec<u128> = brute(&keep).difference(&brute(&cut)).copied().collect();
            prop_assert_eq!(set.len(), expect.len() as u128);
            let got: Vec<u128> = set.iter().map(to_u128).collect();
            prop_assert_eq!(&got, &expect);
            for (i, v) in expect.iter().enumerate() {
                let ip = from_u128(Family::V4, *v);
                prop_assert_eq!(set.nth(i as u128), Some(ip));
                prop_assert_eq!(set.index_of(ip), Some(i as u128));
            }
            for v in 0u128..360 {
                let ip = from_u128(Family::V4, v);
                prop_assert_eq!(set.contains(ip), expect.binary_search(&v).is_ok());
            }
            // Spans stay sorted, disjoint and non-adjacent.
            for w in set.spans().windows(2) {
                prop_assert!(w[0].hi + 1 < w[1].lo);
            }
        }
    }
}
