//! The allocation decision: given a pool, the blocks of that pool as last
//! seen, a node and an owner, which address to hand out and which single
//! write does it. Pure and incremental: every decision costs
//! `O(log blocks)`, whatever the pool's size and however full it is.
//!
//! Order of preference, for one owner and one pool:
//! 1. the address the owner already holds (a retried ADD is idempotent);
//!    failing that, the address a previous sandbox of the same Pod holds
//!    for the interface (*takeover*, below);
//! 2. a requested address: refused when another owner holds it or the pool
//!    cannot hand it out (a previous sandbox of the same Pod holding it is
//!    not another owner: it is taken over);
//! 3. the lowest free address of the lowest block affine to the node;
//! 4. a new block: the first unclaimed window from a start that a hash of
//!    the node's name picks (so nodes starting together do not race for
//!    the same window), claimed for the node by creating it with the
//!    allocation in it (one write);
//! 5. the lowest free address of another node's block (borrowing, only when
//!    the pool has no unclaimed window left);
//! 6. exhausted.
//!
//! # Takeover by Pod UID
//!
//! A Pod owner's identity ([`OwnerKey`]) includes the container (sandbox)
//! ID, and a Pod whose sandbox died without a CNI DEL (node reboot, an
//! agent crash in the middle of an ADD) gets a new sandbox with a new ID.
//! When the owner asking carries a Pod UID ([`Owner::pod_uid`]) and the
//! pool holds an allocation of a Pod owner with the same namespace, Pod
//! name, interface and UID under another container ID
//! ([`Owner::may_take_over`]), the plan is [`Plan::Held`] with `refresh`:
//! the record is rewritten to the new container and the address stays,
//! exactly as a StatefulSet ordinal's record is re-pointed to a new Pod.
//! The kubelet runs one sandbox per Pod, so the older one is gone or being
//! torn down; its late DEL releases by its own key and finds nothing once
//! the record names the new container. Records without a UID (written
//! before agents recorded it) are never taken over, and neither are
//! records of another UID (a recreated Pod of the same name).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::ipam::{
    address, capacity_mask, claim_start, first_unclaimed_window_from, lowest_free, offset_of,
    window_of, Claimed, BLOCK_SIZE,
};
use crate::ipamblock::{BlockAllocation, IPAMBlock, Owner, OwnerKey};
use crate::ippool::PoolLayout;
use crate::pool::{to_u128, Family};

/// What the allocator knows of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockState {
    /// Object name.
    pub name: String,
    /// The node the block is affine to.
    pub node: String,
    /// Offsets the pool may hand out.
    pub capacity: u64,
    /// Offsets held.
    pub used: u64,
    /// Holder of each held offset.
    pub owners: BTreeMap<u32, Owner>,
    /// resourceVersion of the object the state was read from.
    pub resource_version: Option<String>,
}

impl BlockState {
    /// True when the block can hand out another address.
    pub fn has_free(&self) -> bool {
        self.capacity & !self.used != 0
    }
}

/// What to do for an allocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The owner holds `ip` already. `refresh` is true when the stored
    /// record differs from the owner given (a StatefulSet ordinal used by a
    /// new Pod, a new sandbox of a Pod taking over its previous sandbox's
    /// allocation, see the module documentation): the record should be
    /// rewritten, the address stays.
    Held {
        /// The address.
        ip: IpAddr,
        /// Window of the block.
        base: u128,
        /// Offset in the block.
        offset: u32,
        /// Whether the stored owner record is stale.
        refresh: bool,
    },
    /// Add the allocation to the existing block at `base`.
    Take {
        /// The address.
        ip: IpAddr,
        /// Window of the block.
        base: u128,
        /// Offset in the block.
        offset: u32,
    },
    /// Create the block at `base` for the node, holding this allocation.
    Claim {
        /// The address.
        ip: IpAddr,
        /// Window of the block.
        base: u128,
        /// Offset in the block.
        offset: u32,
    },
    /// The requested address is held by another owner.
    RequestedHeld {
        /// The address.
        ip: IpAddr,
        /// Who holds it.
        holder: Owner,
    },
    /// The requested address is not one the pool hands out.
    RequestedNotInPool {
        /// The address.
        ip: IpAddr,
    },
    /// No free address is left in the pool.
    Exhausted,
}

/// Why a block object cannot be taken into account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block belongs to another pool.
    #[error("IPAMBlock {block}: belongs to pool {pool:?}, not {expected:?}")]
    WrongPool {
        /// Block name.
        block: String,
        /// Its pool.
        pool: String,
        /// The pool it was offered to.
        expected: String,
    },
    /// `spec.cidr` is not a window of this pool's family and size.
    #[error("IPAMBlock {block}: spec.cidr = {cidr:?}: not a {family} window of 64 addresses")]
    BadCidr {
        /// Block name.
        block: String,
        /// The CIDR.
        cidr: String,
        /// The pool's family.
        family: Family,
    },
    /// An offset outside the window.
    #[error("IPAMBlock {block}: spec.allocations offset {offset} is outside the window (0-63)")]
    BadOffset {
        /// Block name.
        block: String,
        /// The offset.
        offset: u32,
    },
    /// Two allocations of one offset.
    #[error("IPAMBlock {block}: offset {offset} is allocated twice ({first} and {second})")]
    DoubleAllocation {
        /// Block name.
        block: String,
        /// The offset.
        offset: u32,
        /// First holder.
        first: Box<Owner>,
        /// Second holder.
        second: Box<Owner>,
    },
}

/// The blocks of one pool as the allocator sees them, with the indexes the
/// decisions need.
#[derive(Debug, Clone)]
pub struct PoolBlocks {
    layout: PoolLayout,
    blocks: BTreeMap<u128, BlockState>,
    claimed: Claimed,
    /// Where each owner holds addresses. Normally one place per owner, but
    /// the stored blocks can hold two for a while (an owner moving to a
    /// requested address, two nodes racing for a StatefulSet ordinal), and
    /// rewriting one of them must not make the other unfindable.
    by_owner: HashMap<OwnerKey, Places>,
    /// Where the Pod owners that record a Pod UID hold addresses, by Pod
    /// interface and UID (whatever the container): what a new sandbox of
    /// the Pod may take over.
    by_pod: HashMap<PodSlot, Places>,
    /// Blocks with a free address, per affine node.
    free_by_node: HashMap<String, BTreeSet<u128>>,
    /// Blocks with a free address.
    free_any: BTreeSet<u128>,
    used: u128,
}

/// (namespace, Pod, interface, Pod UID) of a Pod owner that records its
/// Pod's UID.
type PodSlot = (String, String, String, String);

fn pod_slot(o: &Owner) -> Option<PodSlot> {
    (o.kind == crate::ipamblock::OwnerKind::Pod && !o.pod_uid.is_empty()).then(|| {
        (
            o.namespace.clone(),
            o.name.clone(),
            o.interface.clone(),
            o.pod_uid.clone(),
        )
    })
}

/// Where one owner holds addresses: almost always one place, so the common
/// case costs no allocation beyond the map entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Places {
    One((u128, u32)),
    Many(BTreeSet<(u128, u32)>),
}

impl Places {
    /// The lowest place.
    fn first(&self) -> Option<&(u128, u32)> {
        match self {
            Places::One(p) => Some(p),
            Places::Many(set) => set.first(),
        }
    }

    /// Every place, ascending.
    fn iter(&self) -> impl Iterator<Item = &(u128, u32)> {
        let (one, many) = match self {
            Places::One(p) => (Some(p), None),
            Places::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn insert(&mut self, place: (u128, u32)) {
        match self {
            Places::One(p) if *p == place => {}
            Places::One(p) => *self = Places::Many(BTreeSet::from([*p, place])),
            Places::Many(set) => {
                set.insert(place);
            }
        }
    }

    /// Removes a place; true when none is left.
    fn remove(&mut self, place: (u128, u32)) -> bool {
        match self {
            Places::One(p) => *p == place,
            Places::Many(set) => {
                set.remove(&place);
                match (set.len(), set.first().copied()) {
                    (1, Some(only)) => {
                        *self = Places::One(only);
                        false
                    }
                    (n, _) => n == 0,
                }
            }
        }
    }
}

fn add_place<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Places>, key: K, place: (u128, u32)) {
    match map.get_mut(&key) {
        Some(places) => places.insert(place),
        None => {
            map.insert(key, Places::One(place));
        }
    }
}

fn remove_place<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Places>,
    key: &K,
    place: (u128, u32),
) {
    if let Some(places) = map.get_mut(key) {
        if places.remove(place) {
            map.remove(key);
        }
    }
}

/// The CIDR of the window at `base`.
pub fn window_cidr(family: Family, base: u128) -> IpNet {
    let bits = family.bits() - BLOCK_SIZE.trailing_zeros() as u8;
    let addr = crate::pool::from_u128(family, base);
    // `bits` is below the family's width, so this never falls back.
    IpNet::new(addr, bits).unwrap_or_else(|_| IpNet::from(addr))
}

impl PoolBlocks {
    /// A pool with no block yet.
    pub fn new(layout: PoolLayout) -> PoolBlocks {
        PoolBlocks {
            layout,
            blocks: BTreeMap::new(),
            claimed: Claimed::new(),
            by_owner: HashMap::new(),
            by_pod: HashMap::new(),
            free_by_node: HashMap::new(),
            free_any: BTreeSet::new(),
            used: 0,
        }
    }

    /// The pool.
    pub fn layout(&self) -> &PoolLayout {
        &self.layout
    }

    /// Takes a changed pool into account (new ranges or excludes change
    /// what blocks may hand out; what is held stays held).
    pub fn set_layout(&mut self, layout: PoolLayout) {
        self.layout = layout;
        let bases: Vec<u128> = self.blocks.keys().copied().collect();
        for base in bases {
            if let Some(mut b) = self.blocks.remove(&base) {
                self.unindex(base, &b);
                b.capacity = capacity_mask(&self.layout, base);
                self.index(base, &b);
                self.blocks.insert(base, b);
            }
        }
    }

    /// Addresses held in the pool.
    pub fn used(&self) -> u128 {
        self.used
    }

    /// The blocks, by window.
    pub fn blocks(&self) -> &BTreeMap<u128, BlockState> {
        &self.blocks
    }

    /// The block at `base`.
    pub fn block(&self, base: u128) -> Option<&BlockState> {
        self.blocks.get(&base)
    }

    /// Who holds `ip`.
    pub fn holder(&self, ip: IpAddr) -> Option<&Owner> {
        self.blocks.get(&window_of(ip))?.owners.get(&offset_of(ip))
    }

    /// The address an owner holds in this pool, with its block and offset
    /// (the lowest, in the rare case it holds several).
    pub fn find(&self, key: &OwnerKey) -> Option<(IpAddr, u128, u32)> {
        let &(base, offset) = self.by_owner.get(key)?.first()?;
        Some((address(self.layout.family, base, offset), base, offset))
    }

    /// The address a previous sandbox of `owner`'s Pod holds for the same
    /// interface, which `owner` may take over (see the module
    /// documentation), with its block, offset and current holder; the
    /// lowest when there are several. `None` when `owner` records no Pod
    /// UID.
    pub fn predecessor(&self, owner: &Owner) -> Option<(IpAddr, u128, u32, &Owner)> {
        let slot = pod_slot(owner)?;
        self.by_pod.get(&slot)?.iter().find_map(|&(base, offset)| {
            let holder = self.blocks.get(&base)?.owners.get(&offset)?;
            owner.may_take_over(holder).then(|| {
                (
                    address(self.layout.family, base, offset),
                    base,
                    offset,
                    holder,
                )
            })
        })
    }

    /// The address `owner` holds in this pool, or else the one it would
    /// take over from a previous sandbox of its Pod ([`Self::predecessor`]),
    /// with the key of the record's current holder.
    pub fn find_for(&self, owner: &Owner) -> Option<(IpAddr, OwnerKey)> {
        let key = owner.key();
        if let Some((ip, _, _)) = self.find(&key) {
            return Some((ip, key));
        }
        self.predecessor(owner)
            .map(|(ip, _, _, holder)| (ip, holder.key()))
    }

    /// Every holder, in address order.
    pub fn holders(&self) -> impl Iterator<Item = (IpAddr, &str, &Owner)> + '_ {
        let family = self.layout.family;
        self.blocks.iter().flat_map(move |(&base, b)| {
            b.owners
                .iter()
                .map(move |(&off, o)| (address(family, base, off), b.node.as_str(), o))
        })
    }

    /// Replaces what is known of a block with the stored object.
    pub fn upsert_block(&mut self, block: &IPAMBlock) -> Result<u128, BlockError> {
        let name = block.metadata.name.clone().unwrap_or_default();
        if block.spec.pool != self.layout.name {
            return Err(BlockError::WrongPool {
                block: name,
                pool: block.spec.pool.clone(),
                expected: self.layout.name.clone(),
            });
        }
        let family = self.layout.family;
        let bad_cidr = || BlockError::BadCidr {
            block: name.clone(),
            cidr: block.spec.cidr.clone(),
            family,
        };
        let net: IpNet = block.spec.cidr.parse().map_err(|_| bad_cidr())?;
        let base = to_u128(net.network());
        if Family::of_net(&net) != family || window_cidr(family, base) != net {
            return Err(bad_cidr());
        }
        let mut owners = BTreeMap::new();
        let mut used = 0u64;
        for a in &block.spec.allocations {
            let offset = u32::from(a.offset);
            if offset >= BLOCK_SIZE {
                return Err(BlockError::BadOffset {
                    block: name,
                    offset,
                });
            }
            if let Some(first) = owners.insert(offset, a.owner.clone()) {
                return Err(BlockError::DoubleAllocation {
                    block: name,
                    offset,
                    first: Box::new(first),
                    second: Box::new(a.owner.clone()),
                });
            }
            used |= 1 << offset;
        }
        let state = BlockState {
            name,
            node: block.spec.node.clone(),
            capacity: capacity_mask(&self.layout, base),
            used,
            owners,
            resource_version: block.metadata.resource_version.clone(),
        };
        self.put(base, state);
        Ok(base)
    }

    /// Replaces what is known of the block at `base`. Only the allocations
    /// that differ from the known state are re-indexed, so the cost of a
    /// change is independent of how full the block is.
    pub fn put(&mut self, base: u128, state: BlockState) {
        match self.blocks.remove(&base) {
            Some(old) => {
                for (&off, owner) in &old.owners {
                    if state.owners.get(&off) != Some(owner) {
                        self.unindex_owner(owner, (base, off));
                    }
                }
                for (&off, owner) in &state.owners {
                    if old.owners.get(&off) != Some(owner) {
                        self.index_owner(owner, (base, off));
                    }
                }
                self.used = self.used - old.owners.len() as u128 + state.owners.len() as u128;
                self.unindex_free(base, &old);
                self.index_free(base, &state);
            }
            None => self.index(base, &state),
        }
        self.blocks.insert(base, state);
    }

    /// Forgets the block at `base` (it was deleted).
    pub fn remove(&mut self, base: u128) -> Option<BlockState> {
        let old = self.blocks.remove(&base)?;
        self.unindex(base, &old);
        Some(old)
    }

    fn index(&mut self, base: u128, b: &BlockState) {
        self.claimed.insert(base);
        for (&off, o) in &b.owners {
            self.index_owner(o, (base, off));
        }
        self.used += b.owners.len() as u128;
        self.index_free(base, b);
    }

    fn unindex(&mut self, base: u128, b: &BlockState) {
        self.claimed.remove(base);
        for (&off, o) in &b.owners {
            self.unindex_owner(o, (base, off));
        }
        self.used -= b.owners.len() as u128;
        self.unindex_free(base, b);
    }

    fn index_owner(&mut self, owner: &Owner, place: (u128, u32)) {
        add_place(&mut self.by_owner, owner.key(), place);
        if let Some(slot) = pod_slot(owner) {
            add_place(&mut self.by_pod, slot, place);
        }
    }

    fn unindex_owner(&mut self, owner: &Owner, place: (u128, u32)) {
        remove_place(&mut self.by_owner, &owner.key(), place);
        if let Some(slot) = pod_slot(owner) {
            remove_place(&mut self.by_pod, &slot, place);
        }
    }

    fn index_free(&mut self, base: u128, b: &BlockState) {
        if b.has_free() {
            self.free_any.insert(base);
            self.free_by_node
                .entry(b.node.clone())
                .or_default()
                .insert(base);
        }
    }

    fn unindex_free(&mut self, base: u128, b: &BlockState) {
        self.free_any.remove(&base);
        if let Some(set) = self.free_by_node.get_mut(&b.node) {
            set.remove(&base);
            if set.is_empty() {
                self.free_by_node.remove(&b.node);
            }
        }
    }

    /// Decides how `owner` gets an address on `node` (see the module
    /// documentation for the order of preference and for takeover).
    pub fn plan(&self, node: &str, owner: &Owner, requested: Option<IpAddr>) -> Plan {
        let family = self.layout.family;
        if let Some((ip, base, offset)) = self.find(&owner.key()) {
            let refresh = self
                .blocks
                .get(&base)
                .and_then(|b| b.owners.get(&offset))
                .is_some_and(|stored| stored != owner);
            if requested.is_none_or(|r| r == ip) {
                return Plan::Held {
                    ip,
                    base,
                    offset,
                    refresh,
                };
            }
            // The owner holds another address than it now asks for: the
            // caller must release it first; report who holds the request.
        } else if let Some((ip, base, offset, _)) = self.predecessor(owner) {
            // A previous sandbox of the same Pod holds an address for the
            // interface: take it over.
            if requested.is_none_or(|r| r == ip) {
                return Plan::Held {
                    ip,
                    base,
                    offset,
                    refresh: true,
                };
            }
        }
        if let Some(ip) = requested {
            let base = window_of(ip);
            let offset = offset_of(ip);
            if let Some(holder) = self.blocks.get(&base).and_then(|b| b.owners.get(&offset)) {
                if owner.may_take_over(holder) {
                    return Plan::Held {
                        ip,
                        base,
                        offset,
                        refresh: true,
                    };
                }
                return Plan::RequestedHeld {
                    ip,
                    holder: holder.clone(),
                };
            }
            if !self.layout.contains(ip) {
                return Plan::RequestedNotInPool { ip };
            }
            return if self.blocks.contains_key(&base) {
                Plan::Take { ip, base, offset }
            } else {
                Plan::Claim { ip, base, offset }
            };
        }
        let take = |base: u128| {
            let b = self.blocks.get(&base)?;
            let offset = lowest_free(b.capacity, b.used)?;
            Some(Plan::Take {
                ip: address(family, base, offset),
                base,
                offset,
            })
        };
        if let Some(plan) = self
            .free_by_node
            .get(node)
            .and_then(|set| set.iter().find_map(|&b| take(b)))
        {
            return plan;
        }
        let start = claim_start(&self.layout, node);
        if let Some(base) = first_unclaimed_window_from(&self.layout, &self.claimed, start) {
            if let Some(offset) = lowest_free(capacity_mask(&self.layout, base), 0) {
                return Plan::Claim {
                    ip: address(family, base, offset),
                    base,
                    offset,
                };
            }
        }
        self.free_any
            .iter()
            .find_map(|&b| take(b))
            .unwrap_or(Plan::Exhausted)
    }

    /// The block object after `plan` (Take or Claim) is carried out for
    /// `owner` on `node`, or after a Held record is refreshed; `None` for
    /// the other plans.
    pub fn apply(&self, plan: &Plan, node: &str, owner: &Owner) -> Option<(u128, BlockState)> {
        let (base, offset) = match *plan {
            Plan::Take { base, offset, .. }
            | Plan::Claim { base, offset, .. }
            | Plan::Held {
                base,
                offset,
                refresh: true,
                ..
            } => (base, offset),
            _ => return None,
        };
        let mut b = self
            .blocks
            .get(&base)
            .cloned()
            .unwrap_or_else(|| BlockState {
                name: crate::ipam::block_name(&self.layout.name, self.layout.family, base),
                node: node.to_string(),
                capacity: capacity_mask(&self.layout, base),
                used: 0,
                owners: BTreeMap::new(),
                resource_version: None,
            });
        b.used |= 1 << offset;
        b.owners.insert(offset, owner.clone());
        Some((base, b))
    }

    /// The block after releasing what `key` holds (the lowest address, when
    /// it holds several), or `None` when it holds nothing in this pool.
    pub fn release(&self, key: &OwnerKey) -> Option<(u128, BlockState)> {
        let &(base, offset) = self.by_owner.get(key)?.first()?;
        let mut b = self.blocks.get(&base)?.clone();
        b.used &= !(1 << offset);
        b.owners.remove(&offset);
        Some((base, b))
    }

    /// The object of a block state, for writing.
    pub fn to_object(&self, base: u128, state: &BlockState) -> IPAMBlock {
        let mut obj = IPAMBlock::new(
            &state.name,
            crate::ipamblock::IPAMBlockSpec {
                pool: self.layout.name.clone(),
                cidr: window_cidr(self.layout.family, base).to_string(),
                node: state.node.clone(),
                allocations: state
                    .owners
                    .iter()
                    .map(|(&offset, owner)| BlockAllocation {
                        offset: offset as u8,
                        owner: owner.clone(),
                    })
                    .collect(),
            },
        );
        obj.metadata.resource_version = state.resource_version.clone();
        obj
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::claim_start;
    use crate::ippool::{IPPoolSpec, IpRange, SubnetInfo};
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn layout(cidr: &str, gw: &str, prefix: u8) -> PoolLayout {
        PoolLayout::from_spec(
            "p",
            &IPPoolSpec {
                ip_ranges: vec![IpRange::cidr(cidr)],
                subnet_info: SubnetInfo {
                    gateway: gw.into(),
                    prefix_length: prefix,
                    vlan: None,
                },
                exclude: vec![],
            },
        )
        .unwrap()
    }

    fn commit(pb: &mut PoolBlocks, plan: &Plan, node: &str, owner: &Owner) {
        let (base, state) = pb.apply(plan, node, owner).unwrap();
        pb.put(base, state);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nodes_fill_their_own_blocks_then_claim_then_borrow() {
        let mut pb = PoolBlocks::new(layout("10.0.0.0/25", "10.0.0.1", 24));
        // Two windows: .0-.63 (first free .2: .0 opens the cidr, .1 is the
        // gateway) and .64-.127.
        let (w0, w1) = (window_of(ip("10.0.0.0")), window_of(ip("10.0.0.64")));
        let first = |w: u128| if w == w0 { 2 } else { 0 };
        let at = |w: u128, off: u32| address(Family::V4, w, off);
        // node-a claims the window its name hashes to.
        let wa = claim_start(pb.layout(), "node-a");
        let a1 = Owner::pod("ns", "a1", "c", "eth1");
        let p = pb.plan("node-a", &a1, None);
        assert_eq!(
            p,
            Plan::Claim {
                ip: at(wa, first(wa)),
                base: wa,
                offset: first(wa)
            }
        );
        commit(&mut pb, &p, "node-a", &a1);
        // Retried: the same address.
        assert!(matches!(
            pb.plan("node-a", &a1, None),
            Plan::Held { refresh: false, .. }
        ));
        // Another node claims the other window, wherever its search starts.
        let wb = if wa == w0 { w1 } else { w0 };
        let b1 = Owner::pod("ns", "b1", "c", "eth1");
        let p = pb.plan("node-b", &b1, None);
        assert_eq!(
            p,
            Plan::Claim {
                ip: at(wb, first(wb)),
                base: wb,
                offset: first(wb)
            }
        );
        commit(&mut pb, &p, "node-b", &b1);
        // node-a keeps using its block.
        let a2 = Owner::pod("ns", "a2", "c", "eth1");
        assert_eq!(
            pb.plan("node-a", &a2, None),
            Plan::Take {
                ip: at(wa, first(wa) + 1),
                base: wa,
                offset: first(wa) + 1
            }
        );
        // A third node has no window left: it borrows the lowest free address
        // of the lowest block.
        let c1 = Owner::pod("ns", "c1", "c", "eth1");
        assert_eq!(
            pb.plan("node-c", &c1, None),
            Plan::Take {
                ip: ip("10.0.0.3"),
                base: w0,
                offset: 3
            }
        );
        // Requested addresses.
        let a1_ip = at(wa, first(wa));
        assert_eq!(
            pb.plan("node-c", &c1, Some(a1_ip)),
            Plan::RequestedHeld {
                ip: a1_ip,
                holder: a1.clone()
            }
        );
        assert_eq!(
            pb.plan("node-c", &c1, Some(ip("10.0.0.1"))),
            Plan::RequestedNotInPool { ip: ip("10.0.0.1") }
        );
        assert_eq!(
            pb.plan("node-c", &c1, Some(ip("10.0.0.70"))),
            Plan::Take {
                ip: ip("10.0.0.70"),
                base: w1,
                offset: 6
            }
        );
        // Release.
        let (base, state) = pb.release(&a1.key()).unwrap();
        pb.put(base, state);
        assert_eq!(pb.holder(a1_ip), None);
        assert_eq!(pb.release(&a1.key()), None, "releasing twice finds nothing");
        assert_eq!(pb.used(), 1);
    }

    #[test]
    fn nodes_starting_together_claim_different_windows() {
        let mut pb = PoolBlocks::new(layout("10.0.0.0/16", "10.0.0.1", 16));
        let mut bases = BTreeSet::new();
        for n in 0..50 {
            let node = format!("node-{n}");
            let o = Owner::pod("ns", &node, "c", "eth1");
            // Every node plans against the same (empty) view, as nodes that
            // start at the same moment do.
            if let Plan::Claim { base, .. } =
                PoolBlocks::new(pb.layout().clone()).plan(&node, &o, None)
            {
                bases.insert(base);
            }
            let p = pb.plan(&node, &o, None);
            commit(&mut pb, &p, &node, &o);
        }
        // 50 nodes in 1024 windows: a few may share a start, most do not.
        assert!(bases.len() >= 45, "{} distinct first windows", bases.len());
        assert_eq!(
            pb.blocks().len(),
            50,
            "each node claimed a block of its own"
        );
    }

    #[test]
    fn statefulset_ordinals_keep_their_address() {
        let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
        let first = Owner::stateful_set("ns", "db", 0, "eth1", "db-0", "c1");
        let p = pb.plan("node-a", &first, None);
        let Plan::Claim { ip: first_ip, .. } = p else {
            panic!("{p:?}")
        };
        commit(&mut pb, &p, "node-a", &first);
        let again = Owner::stateful_set("ns", "db", 0, "eth1", "db-0", "c2");
        match pb.plan("node-b", &again, None) {
            Plan::Held {
                ip: got, refresh, ..
            } => {
                assert_eq!(got, first_ip);
                assert!(refresh, "the new container is recorded");
            }
            other => panic!("{other:?}"),
        }
    }

    fn pod(name: &str, container: &str, uid: &str) -> Owner {
        Owner::pod("ns", name, container, "eth1").with_pod_uid(uid)
    }

    /// Allocates for `o` on node `n` and returns the address.
    fn alloc(pb: &mut PoolBlocks, o: &Owner, want: Option<IpAddr>) -> IpAddr {
        let p = pb.plan("n", o, want);
        let (Plan::Claim { ip, .. } | Plan::Take { ip, .. }) = p else {
            panic!("{p:?}")
        };
        commit(pb, &p, "n", o);
        ip
    }

    #[test]
    fn a_new_sandbox_takes_over_its_pods_address() {
        let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
        let c1 = pod("web", "c1", "u1");
        let first = alloc(&mut pb, &c1, None);
        // Another Pod allocates after, so a new address would differ.
        alloc(&mut pb, &pod("other", "c", "u9"), None);
        let c2 = pod("web", "c2", "u1");
        assert_eq!(pb.find_for(&c2), Some((first, c1.key())));
        let p = pb.plan("n", &c2, None);
        let Plan::Held {
            ip,
            refresh: true,
            base,
            offset,
        } = p
        else {
            panic!("takeover expected, got {p:?}")
        };
        assert_eq!(ip, first);
        assert_eq!(pb.predecessor(&c2).map(|t| t.3), Some(&c1));
        commit(&mut pb, &p, "n", &c2);
        assert_eq!(pb.holder(first), Some(&c2), "the record names c2");
        assert_eq!(pb.find(&c1.key()), None, "c1 holds nothing any more");
        assert_eq!(pb.find(&c2.key()), Some((first, base, offset)));
        assert_eq!(
            pb.release(&c1.key()),
            None,
            "a late DEL of c1 finds nothing"
        );
        assert_eq!(pb.used(), 2, "nothing is held twice");
        // Retried: idempotent, no further rewrite.
        assert!(matches!(
            pb.plan("n", &c2, None),
            Plan::Held { refresh: false, ip, .. } if ip == first
        ));
        // A third sandbox takes it over from c2 in turn.
        let c3 = pod("web", "c3", "u1");
        assert!(matches!(
            pb.plan("n", &c3, None),
            Plan::Held { refresh: true, ip, .. } if ip == first
        ));
    }

    #[test]
    fn another_pod_uid_is_not_taken_over() {
        let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
        let old = pod("web", "c1", "u1");
        let first = alloc(&mut pb, &old, None);
        // The Pod was deleted and recreated under the same name.
        let recreated = pod("web", "c2", "u2");
        assert_eq!(pb.find_for(&recreated), None);
        let p = pb.plan("n", &recreated, None);
        assert!(matches!(p, Plan::Take { ip, .. } if ip != first), "{p:?}");
        // Nor does another interface of the same Pod take it.
        let eth2 = Owner::pod("ns", "web", "c2", "eth2").with_pod_uid("u1");
        assert!(matches!(pb.plan("n", &eth2, None), Plan::Take { .. }));
        // Asking for the old address is refused, naming its holder.
        assert_eq!(
            pb.plan("n", &recreated, Some(first)),
            Plan::RequestedHeld {
                ip: first,
                holder: old
            }
        );
    }

    #[test]
    fn owners_without_pod_uid_are_not_taken_over() {
        let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
        // A record written before agents recorded the UID.
        let legacy = Owner::pod("ns", "web", "c1", "eth1");
        let first = alloc(&mut pb, &legacy, None);
        let c2 = pod("web", "c2", "u1");
        assert_eq!(pb.predecessor(&c2), None);
        assert!(matches!(pb.plan("n", &c2, None), Plan::Take { ip, .. } if ip != first));
        assert!(matches!(
            pb.plan("n", &c2, Some(first)),
            Plan::RequestedHeld { .. }
        ));
        // An asking owner without UID takes nothing over either.
        let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
        let first = alloc(&mut pb, &pod("web", "c1", "u1"), None);
        let no_uid = Owner::pod("ns", "web", "c2", "eth1");
        assert!(matches!(pb.plan("n", &no_uid, None), Plan::Take { ip, .. } if ip != first));
        assert!(matches!(
            pb.plan("n", &no_uid, Some(first)),
            Plan::RequestedHeld { .. }
        ));
    }

    #[test]
    fn a_fixed_address_held_by_the_same_pod_is_taken_over() {
        let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
        let fixed = ip("10.0.0.77");
        let c1 = pod("web", "c1", "u1");
        assert_eq!(alloc(&mut pb, &c1, Some(fixed)), fixed);
        let c2 = pod("web", "c2", "u1");
        let p = pb.plan("n", &c2, Some(fixed));
        assert!(
            matches!(p, Plan::Held { ip, refresh: true, .. } if ip == fixed),
            "{p:?}"
        );
        commit(&mut pb, &p, "n", &c2);
        assert_eq!(pb.holder(fixed), Some(&c2));
        assert_eq!(pb.used(), 1);
        // The previous sandbox held another address than the one asked for
        // now (the annotation changed): the request is served anew and the
        // old address stays findable for the caller to release.
        let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
        let old = alloc(&mut pb, &c1, None);
        let p = pb.plan("n", &c2, Some(fixed));
        assert!(
            matches!(p, Plan::Take { ip, .. } | Plan::Claim { ip, .. } if ip == fixed),
            "{p:?}"
        );
        assert_eq!(pb.find_for(&c2), Some((old, c1.key())));
        // Held by another Pod: refused as before.
        let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
        let x = pod("x", "c1", "u7");
        alloc(&mut pb, &x, Some(fixed));
        assert_eq!(
            pb.plan("n", &c2, Some(fixed)),
            Plan::RequestedHeld {
                ip: fixed,
                holder: x
            }
        );
    }

    #[test]
    fn an_owner_holding_two_addresses_stays_findable_while_either_changes() {
        let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
        let o = Owner::pod("ns", "o", "c", "eth1");
        let other = Owner::pod("ns", "x", "c", "eth1");
        // o moves to a requested address: for a while it holds both.
        let p = pb.plan("n", &o, None);
        let (Plan::Claim { ip: first_ip, .. } | Plan::Take { ip: first_ip, .. }) = p else {
            panic!("{p:?}")
        };
        commit(&mut pb, &p, "n", &o);
        let moved = if first_ip == ip("10.0.0.70") {
            ip("10.0.0.200")
        } else {
            ip("10.0.0.70")
        };
        let p = pb.plan("n", &o, Some(moved));
        assert!(matches!(p, Plan::Claim { .. } | Plan::Take { .. }), "{p:?}");
        commit(&mut pb, &p, "n", &o);
        // Another owner's allocation rewrites one of o's blocks, o's entry in
        // it included; then o's lower address goes.
        let p = pb.plan("n", &other, None);
        commit(&mut pb, &p, "n", &other);
        let (low, high) = if to_u128(first_ip) < to_u128(moved) {
            (first_ip, moved)
        } else {
            (moved, first_ip)
        };
        let (base, state) = pb.release(&o.key()).unwrap();
        assert_eq!(base, window_of(low), "the lowest goes first");
        pb.put(base, state);
        assert_eq!(pb.find(&o.key()).map(|f| f.0), Some(high));
        let (base, state) = pb.release(&o.key()).unwrap();
        pb.put(base, state);
        assert_eq!(pb.find(&o.key()), None);
        assert_eq!(pb.used(), 1);
    }

    #[test]
    fn exhaustion() {
        let mut pb = PoolBlocks::new(layout("10.0.0.0/30", "10.0.0.1", 30));
        // /30 with mask == prefix: .0 first, .3 broadcast, .1 gateway: one address.
        let a = Owner::pod("ns", "a", "c", "eth1");
        let p = pb.plan("n", &a, None);
        commit(&mut pb, &p, "n", &a);
        assert_eq!(
            pb.plan("n", &Owner::pod("ns", "b", "c", "eth1"), None),
            Plan::Exhausted
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc {
            node: u8,
            owner: u8,
            requested: Option<u8>,
        },
        Release {
            owner: u8,
        },
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                3 => (0u8..3, 0u8..60, proptest::option::weighted(0.2, 0u8..200)).prop_map(|(node, owner, requested)| Op::Alloc { node, owner, requested }),
                1 => (0u8..60).prop_map(|owner| Op::Release { owner }),
            ],
            0..200,
        )
    }

    proptest! {
        /// Random allocations and releases from three nodes in a pool of
        /// about 150 addresses: no address has two owners, every owner has
        /// at most one address, every address is allocatable, and the
        /// indexes agree with the blocks.
        #[test]
        fn invariants_hold_under_random_operations(ops in ops()) {
            let mut pb = PoolBlocks::new(layout("10.0.0.0/24", "10.0.0.1", 24));
            for op in ops {
                match op {
                    Op::Alloc { node, owner, requested } => {
                        let node = format!("node-{node}");
                        let o = Owner::pod("ns", &format!("p{owner}"), "c", "eth1");
                        let req = requested.map(|r| IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, r)));
                        let plan = pb.plan(&node, &o, req);
                        match &plan {
                            Plan::Held { ip, .. } => prop_assert_eq!(pb.holder(*ip), Some(&o)),
                            Plan::Take { ip, .. } | Plan::Claim { ip, .. } => {
                                prop_assert!(pb.holder(*ip).is_none());
                                prop_assert!(pb.layout().contains(*ip));
                                prop_assert!(pb.find(&o.key()).is_none() || req.is_some());
                                if pb.find(&o.key()).is_some() { continue; }
                                commit(&mut pb, &plan, &node, &o);
                            }
                            Plan::RequestedHeld { ip, holder } => prop_assert_eq!(pb.holder(*ip), Some(holder)),
                            Plan::RequestedNotInPool { ip } => prop_assert!(!pb.layout().contains(*ip)),
                            Plan::Exhausted => prop_assert!(pb.used() == pb.layout().size()),
                        }
                    }
                    Op::Release { owner } => {
                        let o = Owner::pod("ns", &format!("p{owner}"), "c", "eth1");
                        if let Some((base, state)) = pb.release(&o.key()) {
                            pb.put(base, state);
                        }
                        prop_assert!(pb.find(&o.key()).is_none());
                    }
                }
                // Invariants.
                let mut seen_ips = HashSet::new();
                let mut seen_owners = HashSet::new();
                for (ip, _, o) in pb.holders() {
                    prop_assert!(seen_ips.insert(ip), "address held twice");
                    prop_assert!(seen_owners.insert(o.key()), "owner holds two addresses");
                    prop_assert!(pb.layout().contains(ip));
                    prop_assert_eq!(pb.find(&o.key()).map(|f| f.0), Some(ip));
                }
                prop_assert_eq!(pb.used(), seen_ips.len() as u128);
                // Round trip through the object form.
                for (&base, b) in pb.blocks() {
                    let obj = pb.to_object(base, b);
                    let mut other = PoolBlocks::new(pb.layout().clone());
                    prop_assert_eq!(other.upsert_block(&obj), Ok(base));
                    prop_assert_eq!(other.block(base), Some(b));
                }
            }
        }
    }
}
