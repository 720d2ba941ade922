//! NodeIPAM math: carving per-Node Pod CIDRs out of the cluster CIDRs.
//!
//! A cluster CIDR of prefix length `p` with node mask size `m` has
//! `2^(m - p)` slots; slot `i` is the `/m` block starting `i << (max - m)`
//! addresses after the network address. Slots that overlap the Service CIDR
//! of their family are never handed out. A Node gets one slot per
//! configured family (IPv4, IPv6 or both), all or nothing, lowest free slot
//! first.
//!
//! The allocator keeps only the occupied slots (a sorted set), so a
//! `/32` IPv6 cluster CIDR carved into `/64`s (2^32 slots) costs nothing
//! until Nodes hold them, and finding the lowest free slot walks the
//! occupied slots once: O(occupied + skipped Service slots).
//!
//! The allocator is pure state: the controller rebuilds it after a restart
//! by [`NodeCidrAllocator::occupy`]ing the `podCIDRs` of every existing Node
//! before allocating for new ones.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::{
    NodeIpamConfig, NODE_CIDR_MASK_SIZE_IPV4_RANGE, NODE_CIDR_MASK_SIZE_IPV6_RANGE,
};

/// Why a NodeIPAM operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIpamError {
    /// The configuration has no cluster CIDR.
    #[error("NodeIPAM has no cluster CIDR to carve node CIDRs from (set nodeIPAM.clusterCIDRs)")]
    NoClusterCidrs,
    /// Two cluster CIDRs of one IP family.
    #[error(
        "cluster CIDRs {first} and {second} are of the same IP family; at most one per family is \
         allowed"
    )]
    SameFamily {
        /// The first cluster CIDR of the family.
        first: IpNet,
        /// The second one.
        second: IpNet,
    },
    /// The node mask size does not fit the cluster CIDR or is out of range.
    #[error(
        "node CIDR mask size /{mask} cannot be used with cluster CIDR {cluster_cidr}: it must be \
         between /{min} and /{max}"
    )]
    BadMask {
        /// The cluster CIDR.
        cluster_cidr: IpNet,
        /// The configured node mask size.
        mask: u8,
        /// Smallest acceptable mask size for this cluster CIDR.
        min: u8,
        /// Largest acceptable mask size.
        max: u8,
    },
    /// A CIDR of a family for which no cluster CIDR is configured.
    #[error("{cidr} is an {family} CIDR but no {family} cluster CIDR is configured")]
    NoClusterCidrForFamily {
        /// The CIDR given.
        cidr: IpNet,
        /// `IPv4` or `IPv6`.
        family: &'static str,
    },
    /// The CIDR is not one of the node CIDRs the cluster CIDR is cut into.
    #[error(
        "{cidr} is not a node CIDR of cluster CIDR {cluster_cidr}: node CIDRs are the \
         /{node_prefix_len} blocks inside it"
    )]
    NotASlot {
        /// The CIDR given.
        cidr: IpNet,
        /// The cluster CIDR of its family.
        cluster_cidr: IpNet,
        /// The node mask size of that family.
        node_prefix_len: u8,
    },
    /// [`NodeCidrAllocator::occupy`] of a node CIDR that is already held.
    #[error("node CIDR {cidr} is already assigned")]
    AlreadyAssigned {
        /// The CIDR given.
        cidr: IpNet,
    },
    /// No free node CIDR is left.
    #[error(
        "cluster CIDR {cluster_cidr} has no free /{node_prefix_len} node CIDR left (all \
         {capacity} that do not overlap the Service CIDR are in use)"
    )]
    Exhausted {
        /// The exhausted cluster CIDR.
        cluster_cidr: IpNet,
        /// The node mask size of its family.
        node_prefix_len: u8,
        /// How many node CIDRs it can hold.
        capacity: u128,
    },
}

/// The node CIDRs of one cluster CIDR: which slots exist, which overlap the
/// Service CIDR, which are held.
#[derive(Debug, Clone)]
pub struct ClusterCidrPool {
    cluster: IpNet,
    node_prefix_len: u8,
    /// Number of slots, `2^(node_prefix_len - cluster prefix)`.
    slots: u128,
    /// Inclusive slot range overlapping the Service CIDR.
    excluded: Option<(u128, u128)>,
    held: BTreeSet<u128>,
    /// Every slot below this one is held or excluded: the search for the
    /// lowest free slot starts here, so handing out slots in order costs
    /// O(log held) each instead of a walk from slot 0.
    search_from: u128,
}

impl PartialEq for ClusterCidrPool {
    fn eq(&self, other: &Self) -> bool {
        self.cluster == other.cluster
            && self.node_prefix_len == other.node_prefix_len
            && self.excluded == other.excluded
            && self.held == other.held
    }
}

impl Eq for ClusterCidrPool {}

fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn max_len(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => 32,
        IpNet::V6(_) => 128,
    }
}

fn family_name(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

impl ClusterCidrPool {
    /// Slots of `cluster` cut into `/node_prefix_len` blocks, minus those
    /// overlapping `service` (ignored unless of the same family).
    pub fn new(
        cluster: IpNet,
        node_prefix_len: u8,
        service: Option<IpNet>,
    ) -> Result<Self, NodeIpamError> {
        let cluster = cluster.trunc();
        let (lo, hi) = match cluster {
            IpNet::V4(_) => NODE_CIDR_MASK_SIZE_IPV4_RANGE,
            IpNet::V6(_) => NODE_CIDR_MASK_SIZE_IPV6_RANGE,
        };
        let min = lo.max(cluster.prefix_len());
        if node_prefix_len < min || node_prefix_len > hi {
            return Err(NodeIpamError::BadMask {
                cluster_cidr: cluster,
                mask: node_prefix_len,
                min,
                max: hi,
            });
        }
        // node_prefix_len - prefix <= 126, so the count fits in u128.
        let slots = 1u128 << (node_prefix_len - cluster.prefix_len());
        let mut pool = ClusterCidrPool {
            cluster,
            node_prefix_len,
            slots,
            excluded: None,
            held: BTreeSet::new(),
            search_from: 0,
        };
        if let Some(svc) = service {
            let same_family = matches!(
                (svc, cluster),
                (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
            );
            if same_family {
                let svc = svc.trunc();
                let start = addr_bits(svc.network()).max(addr_bits(cluster.network()));
                let end = addr_bits(svc.broadcast()).min(addr_bits(cluster.broadcast()));
                if start <= end {
                    pool.excluded = Some((pool.index_of_bits(start), pool.index_of_bits(end)));
                }
            }
        }
        Ok(pool)
    }

    fn host_bits(&self) -> u8 {
        max_len(&self.cluster) - self.node_prefix_len
    }

    /// Slot holding the address with these bits (which must lie inside the
    /// cluster CIDR).
    fn index_of_bits(&self, bits: u128) -> u128 {
        (bits - addr_bits(self.cluster.network())) >> self.host_bits()
    }

    fn cidr_of(&self, index: u128) -> IpNet {
        let bits = addr_bits(self.cluster.network()) + (index << self.host_bits());
        match self.cluster {
            IpNet::V4(_) => {
                let a = Ipv4Addr::from(u32::try_from(bits).unwrap_or(u32::MAX));
                IpNet::V4(Ipv4Net::new(a, self.node_prefix_len).unwrap_or_default())
            }
            IpNet::V6(_) => {
                let a = Ipv6Addr::from(bits);
                IpNet::V6(Ipv6Net::new(a, self.node_prefix_len).unwrap_or_default())
            }
        }
    }

    /// The slot index of `cidr`, or `NotASlot`.
    fn index_of(&self, cidr: &IpNet) -> Result<u128, NodeIpamError> {
        let aligned = cidr.addr() == cidr.network();
        if !aligned || cidr.prefix_len() != self.node_prefix_len || !self.cluster.contains(cidr) {
            return Err(NodeIpamError::NotASlot {
                cidr: *cidr,
                cluster_cidr: self.cluster,
                node_prefix_len: self.node_prefix_len,
            });
        }
        Ok(self.index_of_bits(addr_bits(cidr.network())))
    }

    fn is_excluded(&self, index: u128) -> bool {
        matches!(self.excluded, Some((a, b)) if a <= index && index <= b)
    }

    /// The lowest slot that is neither held nor overlapping the Service
    /// CIDR. Walks the held slots from `search_from` once and jumps over
    /// the Service range: O(held) steps at worst, never O(slots).
    fn lowest_free(&self) -> Option<u128> {
        let mut candidate: u128 = self.search_from;
        let mut held = self.held.range(candidate..).peekable();
        loop {
            if let Some((a, b)) = self.excluded {
                if a <= candidate && candidate <= b {
                    candidate = b.checked_add(1)?;
                }
            }
            if candidate >= self.slots {
                return None;
            }
            // Skip held slots below the candidate.
            while held.next_if(|&&h| h < candidate).is_some() {}
            match held.peek() {
                Some(&&h) if h == candidate => {
                    candidate += 1;
                    held.next();
                }
                _ => return Some(candidate),
            }
        }
    }

    /// The cluster CIDR.
    pub fn cluster_cidr(&self) -> IpNet {
        self.cluster
    }

    /// The prefix length of its node CIDRs.
    pub fn node_prefix_len(&self) -> u8 {
        self.node_prefix_len
    }

    /// How many node CIDRs the cluster CIDR holds, not counting those
    /// overlapping the Service CIDR.
    pub fn capacity(&self) -> u128 {
        match self.excluded {
            Some((a, b)) => self.slots - (b - a + 1),
            None => self.slots,
        }
    }

    /// How many node CIDRs are held (including any inside the Service
    /// range that were [`occupied`](NodeCidrAllocator::occupy)).
    pub fn used(&self) -> u128 {
        self.held.len() as u128
    }

    /// How many more node CIDRs can be handed out.
    pub fn available(&self) -> u128 {
        let held_outside = self.held.iter().filter(|&&i| !self.is_excluded(i)).count() as u128;
        self.capacity().saturating_sub(held_outside)
    }

    /// Whether `cidr` is held.
    pub fn is_held(&self, cidr: &IpNet) -> bool {
        self.index_of(cidr)
            .map(|i| self.held.contains(&i))
            .unwrap_or(false)
    }

    /// The held node CIDRs, lowest first.
    pub fn held(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.held.iter().map(|&i| self.cidr_of(i))
    }

    fn exhausted(&self) -> NodeIpamError {
        NodeIpamError::Exhausted {
            cluster_cidr: self.cluster,
            node_prefix_len: self.node_prefix_len,
            capacity: self.capacity(),
        }
    }
}

/// Hands out node CIDRs: one per configured IP family per Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCidrAllocator {
    /// In the order of `clusterCIDRs`.
    pools: Vec<ClusterCidrPool>,
}

impl NodeCidrAllocator {
    /// An empty allocator for a NodeIPAM configuration (normally one
    /// validated by [`crate::config::ControllerConfig::from_yaml`]).
    pub fn new(config: &NodeIpamConfig) -> Result<Self, NodeIpamError> {
        if config.cluster_cidrs.is_empty() {
            return Err(NodeIpamError::NoClusterCidrs);
        }
        let mut pools: Vec<ClusterCidrPool> = Vec::new();
        for cluster in &config.cluster_cidrs {
            if let Some(first) = pools
                .iter()
                .find(|p| family_name(&p.cluster) == family_name(cluster))
            {
                return Err(NodeIpamError::SameFamily {
                    first: first.cluster,
                    second: *cluster,
                });
            }
            let pool = match cluster {
                IpNet::V4(_) => ClusterCidrPool::new(
                    *cluster,
                    config.node_cidr_mask_size_ipv4,
                    config.service_cidr.map(IpNet::V4),
                )?,
                IpNet::V6(_) => ClusterCidrPool::new(
                    *cluster,
                    config.node_cidr_mask_size_ipv6,
                    config.service_cidr_v6.map(IpNet::V6),
                )?,
            };
            pools.push(pool);
        }
        Ok(NodeCidrAllocator { pools })
    }

    /// The per-family pools, in the order of `clusterCIDRs`.
    pub fn pools(&self) -> &[ClusterCidrPool] {
        &self.pools
    }

    fn pool_for(&self, cidr: &IpNet) -> Result<usize, NodeIpamError> {
        self.pools
            .iter()
            .position(|p| family_name(&p.cluster) == family_name(cidr))
            .ok_or(NodeIpamError::NoClusterCidrForFamily {
                cidr: *cidr,
                family: family_name(cidr),
            })
    }

    /// Marks an existing assignment (a Node's `podCIDRs` entry) as held.
    /// Fails if `cidr` is not a node CIDR of its family's cluster CIDR or
    /// is already held. A node CIDR overlapping the Service CIDR is
    /// accepted (it is held, so it is never handed out twice).
    pub fn occupy(&mut self, cidr: IpNet) -> Result<(), NodeIpamError> {
        let p = self.pool_for(&cidr)?;
        let pool = &mut self.pools[p];
        let index = pool.index_of(&cidr)?;
        if !pool.held.insert(index) {
            return Err(NodeIpamError::AlreadyAssigned { cidr });
        }
        Ok(())
    }

    /// Hands out the lowest free node CIDR of every family, in the order of
    /// `clusterCIDRs`. All or nothing: when any family is exhausted nothing
    /// is taken and the error names that family's cluster CIDR.
    pub fn allocate(&mut self) -> Result<Vec<IpNet>, NodeIpamError> {
        let mut picks = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            picks.push(pool.lowest_free().ok_or_else(|| pool.exhausted())?);
        }
        Ok(self
            .pools
            .iter_mut()
            .zip(picks)
            .map(|(pool, index)| {
                pool.held.insert(index);
                pool.search_from = index + 1;
                pool.cidr_of(index)
            })
            .collect())
    }

    /// Returns a node CIDR. `Ok(true)` when it was held, `Ok(false)` when
    /// it was not (releasing twice is harmless); an error when it is not a
    /// node CIDR of the configured cluster CIDRs.
    pub fn release(&mut self, cidr: IpNet) -> Result<bool, NodeIpamError> {
        let p = self.pool_for(&cidr)?;
        let pool = &mut self.pools[p];
        let index = pool.index_of(&cidr)?;
        let was_held = pool.held.remove(&index);
        pool.search_from = pool.search_from.min(index);
        Ok(was_held)
    }

    /// Whether `cidr` is held.
    pub fn is_held(&self, cidr: &IpNet) -> bool {
        self.pool_for(cidr)
            .map(|p| self.pools[p].is_held(cidr))
            .unwrap_or(false)
    }

    /// How many Nodes the cluster CIDRs can serve: the smallest capacity
    /// of the families (dual stack needs one CIDR of each).
    pub fn capacity(&self) -> u128 {
        self.pools.iter().map(|p| p.capacity()).min().unwrap_or(0)
    }

    /// How many node CIDRs are held in the family that holds the most
    /// (the number of Nodes with CIDRs when every Node holds a full set).
    pub fn used(&self) -> u128 {
        self.pools.iter().map(|p| p.used()).max().unwrap_or(0)
    }

    /// How many more [`allocate`](Self::allocate) calls will succeed.
    pub fn available(&self) -> u128 {
        self.pools.iter().map(|p| p.available()).min().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ControllerConfig;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn config(cidrs: &[&str]) -> NodeIpamConfig {
        NodeIpamConfig {
            enable_node_ipam: true,
            cluster_cidrs: cidrs.iter().map(|c| net(c)).collect(),
            ..NodeIpamConfig::default()
        }
    }

    fn allocator(cidrs: &[&str]) -> NodeCidrAllocator {
        NodeCidrAllocator::new(&config(cidrs)).unwrap()
    }

    #[test]
    fn seed_single_stack() {
        let mut a = allocator(&["172.100.0.0/16"]);
        assert_eq!(a.capacity(), 256);
        assert_eq!(a.allocate().unwrap(), vec![net("172.100.0.0/24")]);
        assert_eq!(a.allocate().unwrap(), vec![net("172.100.1.0/24")]);
        assert_eq!(a.used(), 2);
        assert_eq!(a.available(), 254);
    }

    #[test]
    fn seed_dual_stack_from_the_config_file() {
        let c = ControllerConfig::from_yaml(
            "nodeIPAM:\n  enableNodeIPAM: true\n  clusterCIDRs: [172.100.0.0/20, \"fd00:172:100::/60\"]\n",
        )
        .unwrap();
        let mut a = NodeCidrAllocator::new(&c.node_ipam).unwrap();
        assert_eq!(a.pools()[0].capacity(), 16);
        assert_eq!(a.pools()[1].capacity(), 16);
        assert_eq!(a.capacity(), 16);
        for i in 0..16u32 {
            let got = a.allocate().unwrap();
            assert_eq!(
                got,
                vec![
                    net(&format!("172.100.{i}.0/24")),
                    net(&format!("fd00:172:100:{i:x}::/64")),
                ]
            );
        }
        assert_eq!(a.available(), 0);
        assert_eq!(
            a.allocate(),
            Err(NodeIpamError::Exhausted {
                cluster_cidr: net("172.100.0.0/20"),
                node_prefix_len: 24,
                capacity: 16
            })
        );
        assert_eq!(
            a.allocate().unwrap_err().to_string(),
            "cluster CIDR 172.100.0.0/20 has no free /24 node CIDR left (all 16 that do not \
             overlap the Service CIDR are in use)"
        );
    }

    #[test]
    fn dual_stack_capacity_is_the_smaller_and_allocation_is_all_or_nothing() {
        let mut a = allocator(&["fd00:172:100::/56", "172.100.0.0/22"]);
        assert_eq!(a.pools()[0].capacity(), 256);
        assert_eq!(a.pools()[1].capacity(), 4);
        assert_eq!(a.capacity(), 4);
        for _ in 0..4 {
            let got = a.allocate().unwrap();
            // clusterCIDRs order: IPv6 first here.
            assert!(matches!(got[..], [IpNet::V6(_), IpNet::V4(_)]));
        }
        let before = a.clone();
        match a.allocate() {
            Err(NodeIpamError::Exhausted { cluster_cidr, .. }) => {
                assert_eq!(cluster_cidr, net("172.100.0.0/22"))
            }
            other => panic!("{other:?}"),
        }
        // Nothing of the IPv6 family was taken.
        assert_eq!(a, before);
        assert_eq!(a.pools()[0].used(), 4);
    }

    #[test]
    fn service_cidr_slots_are_skipped() {
        let mut c = config(&["10.0.0.0/16"]);
        c.service_cidr = Some("10.0.2.0/23".parse().unwrap());
        let mut a = NodeCidrAllocator::new(&c).unwrap();
        assert_eq!(a.capacity(), 254);
        let got: Vec<IpNet> = (0..4).map(|_| a.allocate().unwrap()[0]).collect();
        assert_eq!(
            got,
            vec![
                net("10.0.0.0/24"),
                net("10.0.1.0/24"),
                net("10.0.4.0/24"),
                net("10.0.5.0/24")
            ]
        );

        // A Service CIDR smaller than a node CIDR removes the node CIDR holding it.
        let mut c = config(&["10.0.0.0/16"]);
        c.service_cidr = Some("10.0.0.128/25".parse().unwrap());
        let mut a = NodeCidrAllocator::new(&c).unwrap();
        assert_eq!(a.capacity(), 255);
        assert_eq!(a.allocate().unwrap(), vec![net("10.0.1.0/24")]);

        // A Service CIDR larger than the cluster CIDR's tail.
        let mut c = config(&["10.0.0.0/16", "fd00::/120"]);
        c.service_cidr = Some("10.0.128.0/17".parse().unwrap());
        c.service_cidr_v6 = Some("fd00::/121".parse().unwrap());
        c.node_cidr_mask_size_ipv6 = 124;
        let mut a = NodeCidrAllocator::new(&c).unwrap();
        assert_eq!(a.pools()[0].capacity(), 128);
        assert_eq!(a.pools()[1].capacity(), 8);
        assert_eq!(
            a.allocate().unwrap(),
            vec![net("10.0.0.0/24"), net("fd00::80/124")]
        );

        // A Service CIDR outside the cluster CIDR changes nothing.
        let mut c = config(&["10.0.0.0/16"]);
        c.service_cidr = Some("10.96.0.0/12".parse().unwrap());
        assert_eq!(NodeCidrAllocator::new(&c).unwrap().capacity(), 256);
    }

    #[test]
    fn restart_occupies_then_allocates_the_next_free() {
        let mut a = allocator(&["172.100.0.0/20", "fd00:172:100::/60"]);
        for c in [
            "172.100.0.0/24",
            "fd00:172:100::/64",
            "172.100.1.0/24",
            "fd00:172:100:1::/64",
            "172.100.3.0/24",
            "fd00:172:100:2::/64",
        ] {
            a.occupy(net(c)).unwrap();
        }
        assert_eq!(a.used(), 3);
        assert_eq!(
            a.allocate().unwrap(),
            vec![net("172.100.2.0/24"), net("fd00:172:100:3::/64")]
        );
        assert_eq!(
            a.allocate().unwrap(),
            vec![net("172.100.4.0/24"), net("fd00:172:100:4::/64")]
        );
        assert_eq!(
            a.occupy(net("172.100.2.0/24")),
            Err(NodeIpamError::AlreadyAssigned {
                cidr: net("172.100.2.0/24")
            })
        );
    }

    #[test]
    fn occupy_refuses_what_is_not_a_slot() {
        let mut a = allocator(&["172.100.0.0/20"]);
        for bad in [
            "172.100.0.0/25",
            "172.100.0.128/24",
            "172.100.16.0/24",
            "10.0.0.0/24",
        ] {
            let e = a.occupy(net(bad)).unwrap_err();
            assert!(matches!(e, NodeIpamError::NotASlot { .. }), "{bad}: {e:?}");
        }
        assert_eq!(
            a.occupy(net("172.100.16.0/24")).unwrap_err().to_string(),
            "172.100.16.0/24 is not a node CIDR of cluster CIDR 172.100.0.0/20: node CIDRs are \
             the /24 blocks inside it"
        );
        assert_eq!(
            a.occupy(net("fd00::/64")),
            Err(NodeIpamError::NoClusterCidrForFamily {
                cidr: net("fd00::/64"),
                family: "IPv6"
            })
        );
        // A node CIDR inside the Service range may be occupied (it is held).
        let mut c = config(&["10.0.0.0/16"]);
        c.service_cidr = Some("10.0.0.0/24".parse().unwrap());
        let mut a = NodeCidrAllocator::new(&c).unwrap();
        a.occupy(net("10.0.0.0/24")).unwrap();
        assert_eq!(a.available(), 255);
        assert_eq!(a.allocate().unwrap(), vec![net("10.0.1.0/24")]);
    }

    #[test]
    fn release_frees_the_lowest_slot_for_reuse() {
        let mut a = allocator(&["172.100.0.0/16"]);
        for _ in 0..5 {
            a.allocate().unwrap();
        }
        assert_eq!(a.release(net("172.100.2.0/24")), Ok(true));
        assert_eq!(a.release(net("172.100.2.0/24")), Ok(false));
        assert!(!a.is_held(&net("172.100.2.0/24")));
        assert!(a.is_held(&net("172.100.3.0/24")));
        assert_eq!(a.allocate().unwrap(), vec![net("172.100.2.0/24")]);
        assert_eq!(a.allocate().unwrap(), vec![net("172.100.5.0/24")]);
        assert!(matches!(
            a.release(net("172.100.0.0/23")),
            Err(NodeIpamError::NotASlot { .. })
        ));
        let held: Vec<IpNet> = a.pools()[0].held().collect();
        assert_eq!(held.len(), 6);
        assert_eq!(held[0], net("172.100.0.0/24"));
    }

    #[test]
    fn configuration_errors() {
        assert_eq!(
            NodeCidrAllocator::new(&NodeIpamConfig::default()),
            Err(NodeIpamError::NoClusterCidrs)
        );
        assert!(matches!(
            NodeCidrAllocator::new(&config(&["10.0.0.0/16", "10.1.0.0/16"])),
            Err(NodeIpamError::SameFamily { .. })
        ));
        let e = NodeCidrAllocator::new(&config(&["10.0.0.0/25"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node CIDR mask size /24 cannot be used with cluster CIDR 10.0.0.0/25: it must be \
             between /25 and /30"
        );
    }

    #[test]
    fn huge_ipv6_spaces_are_never_enumerated() {
        // 2^32 node CIDRs.
        let mut a = allocator(&["fd00:172::/32"]);
        assert_eq!(a.capacity(), 1u128 << 32);
        assert_eq!(a.allocate().unwrap(), vec![net("fd00:172::/64")]);
        // 2^62 node CIDRs, a Service range in the middle.
        let mut c = config(&["fd00::/8"]);
        c.node_cidr_mask_size_ipv6 = 70;
        c.service_cidr_v6 = Some("fd00::/9".parse().unwrap());
        let mut a = NodeCidrAllocator::new(&c).unwrap();
        assert_eq!(a.capacity(), 1u128 << 61);
        assert_eq!(a.allocate().unwrap(), vec![net("fd80::/70")]);
        // 2^118 node CIDRs, last one occupied, many held.
        let mut c = config(&["fc00::/8"]);
        c.node_cidr_mask_size_ipv6 = 126;
        let mut a = NodeCidrAllocator::new(&c).unwrap();
        assert_eq!(a.capacity(), 1u128 << 118);
        a.occupy(net("fcff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126"))
            .unwrap();
        for _ in 0..20_000 {
            a.allocate().unwrap();
        }
        assert_eq!(a.used(), 20_001);
        assert_eq!(a.available(), (1u128 << 118) - 20_001);
    }

    // ----- properties ----------------------------------------------------

    /// A small IPv4 space: cluster /20-/28 inside 10.0.0.0/16, mask at most
    /// 8 bits longer, optional Service CIDR near it.
    fn small_v4() -> impl Strategy<Value = NodeIpamConfig> {
        (
            20u8..=28,
            any::<u16>(),
            0u8..=8,
            proptest::option::of((any::<u16>(), 16u8..=32)),
        )
            .prop_map(|(prefix, base, extra, svc)| {
                let cluster =
                    Ipv4Net::new(Ipv4Addr::new(10, 0, (base >> 8) as u8, base as u8), prefix)
                        .unwrap()
                        .trunc();
                let mask = (prefix + extra).clamp(prefix.max(16), 30);
                let service = svc.map(|(a, p)| {
                    Ipv4Net::new(Ipv4Addr::new(10, 0, (a >> 8) as u8, a as u8), p)
                        .unwrap()
                        .trunc()
                });
                NodeIpamConfig {
                    enable_node_ipam: true,
                    cluster_cidrs: vec![IpNet::V4(cluster)],
                    service_cidr: service,
                    service_cidr_v6: None,
                    node_cidr_mask_size_ipv4: mask,
                    node_cidr_mask_size_ipv6: 64,
                }
            })
            .prop_filter("mask fits", |c| {
                c.node_cidr_mask_size_ipv4 >= c.cluster_cidrs[0].prefix_len()
            })
    }

    /// A small dual-stack space.
    fn small_dual() -> impl Strategy<Value = NodeIpamConfig> {
        (
            small_v4(),
            116u8..=124,
            any::<u16>(),
            0u8..=6,
            proptest::option::of((any::<u16>(), 112u8..=128)),
        )
            .prop_map(|(mut c, prefix, base, extra, svc)| {
                let v6 = |a: u16, p: u8| {
                    Ipv6Net::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, a), p)
                        .unwrap()
                        .trunc()
                };
                c.cluster_cidrs.push(IpNet::V6(v6(base, prefix)));
                c.node_cidr_mask_size_ipv6 = (prefix + extra).min(126);
                c.service_cidr_v6 = svc.map(|(a, p)| v6(a, p));
                c
            })
    }

    fn brute_force_slots(cluster: IpNet, mask: u8, service: Option<IpNet>) -> Vec<IpNet> {
        cluster
            .subnets(mask)
            .unwrap()
            .filter(|s| match service {
                Some(svc) => !(svc.contains(s) || s.contains(&svc)),
                None => true,
            })
            .collect()
    }

    fn check_given(c: &NodeIpamConfig, given: &[IpNet]) -> Result<(), TestCaseError> {
        prop_assert_eq!(given.len(), c.cluster_cidrs.len());
        for (cidr, cluster) in given.iter().zip(&c.cluster_cidrs) {
            prop_assert!(cluster.contains(cidr), "{} not in {}", cidr, cluster);
            let (mask, svc) = match cluster {
                IpNet::V4(_) => (c.node_cidr_mask_size_ipv4, c.service_cidr.map(IpNet::V4)),
                IpNet::V6(_) => (c.node_cidr_mask_size_ipv6, c.service_cidr_v6.map(IpNet::V6)),
            };
            prop_assert_eq!(cidr.prefix_len(), mask);
            prop_assert_eq!(cidr.addr(), cidr.network());
            if let Some(svc) = svc {
                prop_assert!(
                    !svc.contains(cidr) && !cidr.contains(&svc),
                    "{} vs {}",
                    cidr,
                    svc
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn allocate_release_never_duplicates(
            c in prop_oneof![small_v4(), small_dual()],
            ops in proptest::collection::vec(any::<Option<prop::sample::Index>>(), 0..200),
        ) {
            let mut a = NodeCidrAllocator::new(&c).unwrap();
            let slots: Vec<Vec<IpNet>> = a
                .pools()
                .iter()
                .map(|p| {
                    let svc = match p.cluster_cidr() {
                        IpNet::V4(_) => c.service_cidr.map(IpNet::V4),
                        IpNet::V6(_) => c.service_cidr_v6.map(IpNet::V6),
                    };
                    brute_force_slots(p.cluster_cidr(), p.node_prefix_len(), svc)
                })
                .collect();
            let mut held: Vec<Vec<IpNet>> = Vec::new();
            for op in ops {
                match op {
                    None => match a.allocate() {
                        Ok(given) => {
                            check_given(&c, &given)?;
                            // Lowest free first, per family.
                            for (family, g) in slots.iter().zip(&given) {
                                let lowest = family
                                    .iter()
                                    .find(|s| !held.iter().flatten().any(|h| h == *s));
                                prop_assert_eq!(Some(g), lowest);
                            }
                            for g in &given {
                                prop_assert!(
                                    !held.iter().flatten().any(|h| h == g),
                                    "{} handed out twice", g
                                );
                            }
                            held.push(given);
                        }
                        Err(NodeIpamError::Exhausted { cluster_cidr, .. }) => {
                            prop_assert!(c.cluster_cidrs.contains(&cluster_cidr));
                            prop_assert_eq!(a.available(), 0);
                        }
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    },
                    Some(i) if !held.is_empty() => {
                        let set = held.swap_remove(i.index(held.len()));
                        for cidr in set {
                            prop_assert_eq!(a.release(cidr), Ok(true));
                        }
                    }
                    Some(_) => {}
                }
                prop_assert_eq!(a.used(), held.len() as u128);
            }
        }

        #[test]
        fn allocation_count_matches_brute_force(c in prop_oneof![small_v4(), small_dual()]) {
            let mut a = NodeCidrAllocator::new(&c).unwrap();
            let mut expected = u128::MAX;
            for pool in a.pools() {
                let cluster = pool.cluster_cidr();
                let svc = match cluster {
                    IpNet::V4(_) => c.service_cidr.map(IpNet::V4),
                    IpNet::V6(_) => c.service_cidr_v6.map(IpNet::V6),
                };
                let slots = brute_force_slots(cluster, pool.node_prefix_len(), svc);
                prop_assert_eq!(pool.capacity(), slots.len() as u128);
                expected = expected.min(slots.len() as u128);
            }
            prop_assert_eq!(a.capacity(), expected);
            let mut count = 0u128;
            let mut previous: Option<Vec<IpNet>> = None;
            while let Ok(given) = a.allocate() {
                check_given(&c, &given)?;
                // Lowest free first: strictly increasing.
                if let Some(p) = &previous {
                    for (x, y) in p.iter().zip(&given) {
                        prop_assert!(x.network() < y.network());
                    }
                }
                previous = Some(given);
                count += 1;
                prop_assert!(count <= expected);
            }
            prop_assert_eq!(count, expected);
        }

        #[test]
        fn occupy_then_allocate_gives_the_lowest_free(
            c in small_v4(),
            taken in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let cluster = c.cluster_cidrs[0];
            let svc = c.service_cidr.map(IpNet::V4);
            let slots = brute_force_slots(cluster, c.node_cidr_mask_size_ipv4, svc);
            prop_assume!(!slots.is_empty());
            let mut a = NodeCidrAllocator::new(&c).unwrap();
            let mut occupied = std::collections::BTreeSet::new();
            for i in taken {
                let s = slots[i.index(slots.len())];
                let r = a.occupy(s);
                if occupied.insert(s) {
                    prop_assert_eq!(r, Ok(()));
                } else {
                    prop_assert_eq!(r, Err(NodeIpamError::AlreadyAssigned { cidr: s }));
                }
            }
            let expected = slots.iter().find(|s| !occupied.contains(*s));
            match (a.allocate(), expected) {
                (Ok(given), Some(e)) => prop_assert_eq!(given, vec![*e]),
                (Err(NodeIpamError::Exhausted { .. }), None) => {}
                (got, want) => prop_assert!(false, "got {:?}, want {:?}", got, want),
            }
        }
    }
}
