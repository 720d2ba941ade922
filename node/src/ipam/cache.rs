//! The agent's view of every IPPool and of the IPAMBlocks it needs, fed by
//! watches, so the allocation path rarely reads from the API.
//!
//! # What is watched, and why
//!
//! - Every IPPool (cluster-wide watch): pools are few and change rarely.
//! - Only the node's own IPAMBlocks: a watch with the label selector
//!   `spur.dev/node=<label_value(node)>` ([`spur_core::ipamblock::NODE_LABEL`]).
//!   A cluster-wide block watch would deliver every allocation write of
//!   every node to every agent (O(nodes x allocations) events, API server
//!   egress and agent CPU); the agent needs other nodes' blocks only to
//!   avoid claiming their windows and to borrow from them when its pool has
//!   no unclaimed window left, and learns them on demand (the allocator in
//!   [`super`] does): a create that answers AlreadyExists is followed by a
//!   GET of that block, a pool that looks exhausted by a LIST of the pool's
//!   blocks (`spur.dev/pool=<label_value(pool)>`), a requested address in
//!   a window that is not the node's by a GET of that window's block. These
//!   *foreign* blocks stay in the cache as last read: the watch does not
//!   refresh them and its re-lists never drop them (only a later LIST of
//!   their pool does). A stale foreign block is harmless, since every write
//!   carries a resourceVersion precondition (409: re-read, re-plan) or is a
//!   create-if-absent.
//!
//! Which node is "own" is set when the cache starts
//! ([`IpamCache::start_for_node`]) or, for a cache started without a node
//! ([`IpamCache::start_with`]), by the first allocation
//! ([`IpamCache::narrow_to`]): until then the cache watches every block, as
//! older agents did, and narrows the watch then.
//!
//! The allocator writes every object the API returns to it straight back in
//! ([`IpamCache::write_through`]). All paths merge by resourceVersion (see
//! [`super::versioned`]), so the cache always holds the newest version it
//! has seen of each object. For every valid pool the cache keeps a
//! [`PoolBlocks`], the allocator's indexed view of the pool's known blocks,
//! rebuilt with [`PoolBlocks::set_layout`] when the pool changes. Invalid
//! pools are skipped with a warning; malformed blocks are quarantined:
//! their window counts as claimed and full, so nothing is planned into
//! them, and writes to them are refused.
//!
//! Deterministic for the simulator: the index is ordered (BTreeMap), and
//! the watches restart with a [`WatchBackoff`] seeded from the seed given
//! to [`IpamCache::start_with`] (the [`super::IpamConfig`]'s seed).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use ipnet::IpNet;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use spur_core::allocator::{window_cidr, BlockState, PoolBlocks};
use spur_core::ipamblock::{
    label_value, labelled_for_node, IPAMBlock, Owner, OwnerKey, NODE_LABEL, POOL_LABEL,
};
use spur_core::ippool::{IPPool, PoolLayout};
use spur_core::pool::{to_u128, Family};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::versioned::{Change, VersionedMap};
use crate::watch_backoff::WatchBackoff;

/// One valid pool: its blocks as the allocator sees them.
#[derive(Debug, Clone)]
pub(crate) struct PoolIndex {
    pub(crate) blocks: PoolBlocks,
    /// Windows whose block object is malformed, with the reason.
    pub(crate) quarantined: BTreeMap<u128, String>,
}

impl PoolIndex {
    fn new(layout: PoolLayout) -> PoolIndex {
        PoolIndex {
            blocks: PoolBlocks::new(layout),
            quarantined: BTreeMap::new(),
        }
    }

    /// Marks the window of a malformed block claimed and full.
    fn quarantine(&mut self, base: u128, obj: &IPAMBlock, reason: String) {
        self.blocks.put(
            base,
            BlockState {
                name: obj.metadata.name.clone().unwrap_or_default(),
                node: obj.spec.node.clone(),
                capacity: 0,
                used: 0,
                owners: BTreeMap::new(),
                resource_version: obj.metadata.resource_version.clone(),
            },
        );
        self.quarantined.insert(base, reason);
    }

    fn set_layout(&mut self, layout: PoolLayout) {
        self.blocks.set_layout(layout);
        // set_layout recomputed every capacity: quarantined windows stay full.
        let bases: Vec<u128> = self.quarantined.keys().copied().collect();
        for base in bases {
            if let Some(mut b) = self.blocks.block(base).cloned() {
                b.capacity = 0;
                self.blocks.put(base, b);
            }
        }
    }

    /// The (lowest) address `key` holds in the pool.
    pub(crate) fn find_any(&self, key: &OwnerKey) -> Option<IpAddr> {
        self.blocks.find(key).map(|f| f.0)
    }
}

/// The window of a block object's `spec.cidr`, when it is one of `family`.
fn window_base(obj: &IPAMBlock, family: Family) -> Option<u128> {
    let net: IpNet = obj.spec.cidr.parse().ok()?;
    let base = to_u128(net.network());
    (Family::of_net(&net) == family && window_cidr(family, base) == net).then_some(base)
}

/// Everything the cache knows.
#[derive(Debug, Default)]
pub(crate) struct CacheState {
    pools: VersionedMap<IPPool>,
    blocks: VersionedMap<IPAMBlock>,
    index: BTreeMap<String, PoolIndex>,
    /// The node whose blocks the block watch returns: (node, its label
    /// value). `None`: the watch returns every block.
    scope: Option<(String, String)>,
}

impl CacheState {
    pub(crate) fn pool(&self, name: &str) -> Option<&PoolIndex> {
        self.index.get(name)
    }

    pub(crate) fn block(&self, name: &str) -> Option<&IPAMBlock> {
        self.blocks.get(name)
    }

    pub(crate) fn pool_names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    pub(crate) fn apply_pool(&mut self, obj: IPPool) {
        if let Some(c) = self.pools.apply(obj) {
            self.pool_changed(c);
        }
    }

    pub(crate) fn delete_pool(&mut self, obj: &IPPool) {
        if let Some(c) = self.pools.delete(obj) {
            self.pool_changed(c);
        }
    }

    pub(crate) fn begin_pool_relist(&mut self) {
        self.pools.begin_relist();
    }

    pub(crate) fn relist_pool(&mut self, obj: IPPool) {
        self.pools.relist_item(obj);
    }

    pub(crate) fn end_pool_relist(&mut self) {
        for c in self.pools.end_relist() {
            self.pool_changed(c);
        }
    }

    /// Takes a block unless a newer version is held. True when taken.
    pub(crate) fn apply_block(&mut self, obj: IPAMBlock) -> bool {
        match self.blocks.apply(obj) {
            Some(c) => {
                self.block_changed(c);
                true
            }
            None => false,
        }
    }

    pub(crate) fn delete_block(&mut self, obj: &IPAMBlock) {
        if let Some(c) = self.blocks.delete(obj) {
            self.block_changed(c);
        }
    }

    pub(crate) fn forget_block(&mut self, name: &str, based_on: Option<&str>) {
        if let Some(c) = self.blocks.forget(name, based_on) {
            self.block_changed(c);
        }
    }

    pub(crate) fn begin_block_relist(&mut self) {
        self.blocks.begin_relist();
    }

    pub(crate) fn relist_block(&mut self, obj: IPAMBlock) {
        self.blocks.relist_item(obj);
    }

    pub(crate) fn end_block_relist(&mut self) {
        let scope = self.scope.as_ref().map(|(_, label)| label.clone());
        let changes = self.blocks.end_relist_where(|b| match &scope {
            Some(label) => labelled_for_node(b, label),
            None => true,
        });
        for c in changes {
            self.block_changed(c);
        }
    }

    /// The node the block watch is narrowed to, if it is.
    pub(crate) fn scope_node(&self) -> Option<&str> {
        self.scope.as_ref().map(|(n, _)| n.as_str())
    }

    /// Narrows what the block watch covers to `node`'s blocks.
    pub(crate) fn set_scope(&mut self, node: &str) {
        self.scope = Some((node.to_string(), label_value(node)));
    }

    /// True when `block` is another node's while the cache is narrowed to
    /// one node (the watch does not keep it current).
    pub(crate) fn is_foreign(&self, block: &str) -> bool {
        match (&self.scope, self.blocks.get(block)) {
            (Some((node, _)), Some(b)) => b.spec.node != *node,
            _ => false,
        }
    }

    /// The local clock, to pass to [`CacheState::merge_pool_list`].
    pub(crate) fn clock(&self) -> u64 {
        self.blocks.clock()
    }

    /// Merges a LIST of `pool`'s blocks (label `spur.dev/pool`) that
    /// started at `started`: newer versions are taken, and the labelled
    /// blocks of the pool the list did not return are dropped (unless
    /// learned of after it started).
    pub(crate) fn merge_pool_list(&mut self, pool: &str, started: u64, items: Vec<IPAMBlock>) {
        let label = label_value(pool);
        let changes = self.blocks.merge_list(started, items, |b| {
            b.spec.pool == pool
                && b.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(POOL_LABEL))
                    .is_some_and(|v| *v == label)
        });
        for c in changes {
            self.block_changed(c);
        }
    }

    fn pool_changed(&mut self, c: Change<IPPool>) {
        match c {
            Change::Upsert { new, .. } => {
                let name = new.metadata.name.clone().unwrap_or_default();
                match PoolLayout::from_pool(&new) {
                    Ok(layout) => {
                        if let Some(ix) = self.index.get_mut(&name) {
                            if ix.blocks.layout() != &layout {
                                ix.set_layout(layout);
                            }
                            return;
                        }
                        let mut ix = PoolIndex::new(layout);
                        for b in self.blocks.values().filter(|b| b.spec.pool == name) {
                            index_block(&mut ix, b);
                        }
                        self.index.insert(name, ix);
                    }
                    Err(e) => {
                        tracing::warn!(pool = %name, error = %e, "IPPool is invalid: no address is allocated from it");
                        self.index.remove(&name);
                    }
                }
            }
            Change::Removed(old) => {
                let name = old.metadata.name.clone().unwrap_or_default();
                self.index.remove(&name);
            }
        }
    }

    fn block_changed(&mut self, c: Change<IPAMBlock>) {
        match c {
            Change::Upsert { old, new } => {
                if let Some(old) = old {
                    if old.spec.pool != new.spec.pool || old.spec.cidr != new.spec.cidr {
                        self.unindex(&old);
                    }
                }
                if let Some(ix) = self.index.get_mut(&new.spec.pool) {
                    index_block(ix, &new);
                }
            }
            Change::Removed(old) => self.unindex(&old),
        }
    }

    fn unindex(&mut self, old: &IPAMBlock) {
        let Some(ix) = self.index.get_mut(&old.spec.pool) else {
            return;
        };
        let Some(base) = window_base(old, ix.blocks.layout().family) else {
            return;
        };
        if ix
            .blocks
            .block(base)
            .is_some_and(|b| Some(&b.name) == old.metadata.name.as_ref())
        {
            ix.blocks.remove(base);
            ix.quarantined.remove(&base);
        }
    }
}

fn index_block(ix: &mut PoolIndex, obj: &IPAMBlock) {
    match ix.blocks.upsert_block(obj) {
        Ok(base) => {
            ix.quarantined.remove(&base);
        }
        Err(e) => {
            let family = ix.blocks.layout().family;
            match window_base(obj, family) {
                Some(base) => {
                    tracing::warn!(error = %e, "IPAMBlock is malformed: its window is not used until it is fixed");
                    ix.quarantine(base, obj, e.to_string());
                }
                None => tracing::warn!(error = %e, "IPAMBlock is malformed and ignored"),
            }
        }
    }
}

/// Which watcher has listed once.
const POOLS_LISTED: u8 = 1;
const BLOCKS_LISTED: u8 = 2;

struct Core {
    state: RwLock<CacheState>,
    listed: watch::Sender<u8>,
}

struct Handle {
    core: Arc<Core>,
    client: Client,
    seed: Option<u64>,
    /// The IPPool watch and the IPAMBlock watch.
    tasks: Mutex<(Option<AbortHandle>, Option<AbortHandle>)>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|p| p.into_inner());
        for t in [tasks.0.take(), tasks.1.take()].into_iter().flatten() {
            t.abort();
        }
    }
}

/// Every IPPool of the cluster and the node's own IPAMBlocks, kept current
/// by watches, plus the other nodes' blocks the allocator read (see the
/// module documentation). Cheap to clone; the watches stop when the last
/// clone is dropped.
#[derive(Clone)]
pub struct IpamCache {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for IpamCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpamCache")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl IpamCache {
    /// Starts the IPPool and IPAMBlock watchers on the current tokio
    /// runtime (call it from within one). The cache is usable at once and
    /// complete after [`IpamCache::wait_ready`]. The watches' restart
    /// jitter is random per process ([`IpamCache::start_with`] without a
    /// seed). The block watch covers every block until
    /// [`IpamCache::narrow_to`].
    pub fn start(client: Client) -> IpamCache {
        IpamCache::start_with(client, None)
    }

    /// [`IpamCache::start`] with the watches' restart jitter drawn from
    /// `seed` (one [`WatchBackoff`] per watch, derived from `seed`).
    pub fn start_with(client: Client, seed: Option<u64>) -> IpamCache {
        IpamCache::start_scoped(client, seed, None)
    }

    /// [`IpamCache::start_with`] watching only `node`'s blocks from the
    /// start (what an agent should use).
    pub fn start_for_node(client: Client, seed: Option<u64>, node: &str) -> IpamCache {
        IpamCache::start_scoped(client, seed, Some(node))
    }

    fn start_scoped(client: Client, seed: Option<u64>, node: Option<&str>) -> IpamCache {
        let mut state = CacheState::default();
        if let Some(n) = node {
            state.set_scope(n);
        }
        let core = Arc::new(Core {
            state: RwLock::new(state),
            listed: watch::channel(0).0,
        });
        let pools = tokio::spawn(watch_pools(
            Api::all(client.clone()),
            core.clone(),
            WatchBackoff::for_watch(seed, "ippools"),
        ));
        let blocks = spawn_block_watch(&client, &core, seed, node);
        IpamCache {
            handle: Arc::new(Handle {
                core,
                client,
                seed,
                tasks: Mutex::new((Some(pools.abort_handle()), Some(blocks))),
            }),
        }
    }

    /// Narrows the block watch to `node`'s blocks, unless it is narrowed
    /// already (to whatever node: the first call wins). The blocks the
    /// cache holds stay; the other nodes' among them become foreign (kept
    /// as they are, refreshed only on demand). Call from within a tokio
    /// runtime.
    pub fn narrow_to(&self, node: &str) {
        let mut tasks = self.handle.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if self.read(|s| s.scope_node().is_some()) {
            return;
        }
        tracing::info!(node = %node, "watching only the node's IPAMBlocks from now on");
        self.write(|s| s.set_scope(node));
        if let Some(old) = tasks.1.take() {
            old.abort();
        }
        tasks.1 = Some(spawn_block_watch(
            &self.handle.client,
            &self.handle.core,
            self.handle.seed,
            Some(node),
        ));
    }

    /// The node the block watch is narrowed to, if it is.
    pub fn node(&self) -> Option<String> {
        self.read(|s| s.scope_node().map(str::to_string))
    }

    /// True when the block named `name` is held and is another node's
    /// while the watch is narrowed to one node (so the watch does not keep
    /// it current).
    pub fn is_foreign(&self, name: &str) -> bool {
        self.read(|s| s.is_foreign(name))
    }

    /// Merges a LIST of `pool`'s blocks started at `started`
    /// ([`IpamCache::clock`]).
    pub(crate) fn merge_pool_list(&self, pool: &str, started: u64, items: Vec<IPAMBlock>) {
        self.write(|s| s.merge_pool_list(pool, started, items));
    }

    /// The cache's local clock (see [`IpamCache::merge_pool_list`]).
    pub(crate) fn clock(&self) -> u64 {
        self.read(|s| s.clock())
    }

    /// Waits until both watchers have listed once.
    pub async fn wait_ready(&self) {
        let mut rx = self.handle.core.listed.subscribe();
        // The sender lives as long as `self`: wait_for cannot fail here.
        let _ = rx
            .wait_for(|l| *l & (POOLS_LISTED | BLOCKS_LISTED) == POOLS_LISTED | BLOCKS_LISTED)
            .await;
    }

    /// True once both watchers have listed once.
    pub fn is_ready(&self) -> bool {
        *self.handle.core.listed.borrow() == POOLS_LISTED | BLOCKS_LISTED
    }

    /// A snapshot of a valid pool's blocks (`None`: unknown or invalid).
    pub fn pool(&self, name: &str) -> Option<PoolBlocks> {
        self.read(|s| s.pool(name).map(|ix| ix.blocks.clone()))
    }

    /// The layout of a valid pool.
    pub fn layout(&self, name: &str) -> Option<PoolLayout> {
        self.read(|s| s.pool(name).map(|ix| ix.blocks.layout().clone()))
    }

    /// The names of the valid pools, sorted.
    pub fn pool_names(&self) -> Vec<String> {
        self.read(|s| s.pool_names())
    }

    /// The newest version seen of a block object.
    pub fn block(&self, name: &str) -> Option<IPAMBlock> {
        self.read(|s| s.block(name).cloned())
    }

    /// The address `key` holds in `pool`, as far as the cache knows.
    pub fn find(&self, pool: &str, key: &OwnerKey) -> Option<IpAddr> {
        self.read(|s| s.pool(pool).and_then(|ix| ix.find_any(key)))
    }

    /// The address `owner` holds in `pool`, or else the one it would take
    /// over from a previous sandbox of its Pod, with the key of the
    /// record's current holder, as far as the cache knows.
    pub fn find_for(&self, pool: &str, owner: &Owner) -> Option<(IpAddr, OwnerKey)> {
        self.read(|s| s.pool(pool).and_then(|ix| ix.blocks.find_for(owner)))
    }

    /// Every allocation whose owner satisfies `pred`, as (pool, address,
    /// owner). Walks every allocation of every pool: for DEL and garbage
    /// collection, never for the allocation path.
    pub fn owners_where(&self, pred: impl Fn(&Owner) -> bool) -> Vec<(String, IpAddr, Owner)> {
        self.read(|s| {
            let mut out = Vec::new();
            for name in s.pool_names() {
                if let Some(ix) = s.pool(&name) {
                    for (ip, _, owner) in ix.blocks.holders() {
                        if pred(owner) {
                            out.push((name.clone(), ip, owner.clone()));
                        }
                    }
                }
            }
            out
        })
    }

    /// Stores an object the API just returned (after a write or a GET),
    /// unless a newer version is held. True when taken.
    pub fn write_through(&self, obj: IPAMBlock) -> bool {
        self.write(|s| s.apply_block(obj))
    }

    /// The API answered 404 for a block: forget it unless a version newer
    /// than `based_on` is held.
    pub fn forget_block(&self, name: &str, based_on: Option<&str>) {
        self.write(|s| s.forget_block(name, based_on));
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&CacheState) -> R) -> R {
        let s = self
            .handle
            .core
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner());
        f(&s)
    }

    fn write<R>(&self, f: impl FnOnce(&mut CacheState) -> R) -> R {
        let mut s = self
            .handle
            .core
            .state
            .write()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }
}

impl Core {
    fn update(&self, f: impl FnOnce(&mut CacheState)) {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    fn mark_listed(&self, bit: u8) {
        self.listed.send_if_modified(|l| {
            let changed = *l & bit == 0;
            *l |= bit;
            changed
        });
    }
}

async fn watch_pools(api: Api<IPPool>, core: Arc<Core>, backoff: WatchBackoff) {
    let mut events = watcher(api, watcher::Config::default())
        .backoff(backoff)
        .boxed();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => core.update(|s| s.begin_pool_relist()),
            Ok(watcher::Event::InitApply(p)) => core.update(|s| s.relist_pool(p)),
            Ok(watcher::Event::InitDone) => {
                core.update(|s| s.end_pool_relist());
                core.mark_listed(POOLS_LISTED);
            }
            Ok(watcher::Event::Apply(p)) => core.update(|s| s.apply_pool(p)),
            Ok(watcher::Event::Delete(p)) => core.update(|s| s.delete_pool(&p)),
            Err(e) => tracing::warn!(error = %e, "IPPool watch failed; retrying"),
        }
    }
}

/// Spawns the block watch: `node`'s blocks (label selector), or every
/// block.
fn spawn_block_watch(
    client: &Client,
    core: &Arc<Core>,
    seed: Option<u64>,
    node: Option<&str>,
) -> AbortHandle {
    let config = match node {
        Some(n) => watcher::Config::default().labels(&format!("{NODE_LABEL}={}", label_value(n))),
        None => watcher::Config::default(),
    };
    tokio::spawn(watch_blocks(
        Api::all(client.clone()),
        config,
        core.clone(),
        WatchBackoff::for_watch(seed, "ipamblocks"),
    ))
    .abort_handle()
}

async fn watch_blocks(
    api: Api<IPAMBlock>,
    config: watcher::Config,
    core: Arc<Core>,
    backoff: WatchBackoff,
) {
    let mut events = watcher(api, config).backoff(backoff).boxed();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Init) => core.update(|s| s.begin_block_relist()),
            Ok(watcher::Event::InitApply(b)) => core.update(|s| s.relist_block(b)),
            Ok(watcher::Event::InitDone) => {
                core.update(|s| s.end_block_relist());
                core.mark_listed(BLOCKS_LISTED);
            }
            Ok(watcher::Event::Apply(b)) => core.update(|s| {
                s.apply_block(b);
            }),
            Ok(watcher::Event::Delete(b)) => core.update(|s| s.delete_block(&b)),
            Err(e) => tracing::warn!(error = %e, "IPAMBlock watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spur_core::allocator::Plan;
    use spur_core::ipam::window_of as window;
    use spur_core::ipamblock::{BlockAllocation, IPAMBlockSpec, Owner};
    use spur_core::ippool::{IPPoolSpec, IpRange, SubnetInfo};

    fn pool(name: &str, rv: &str, exclude: &[&str]) -> IPPool {
        let mut p = IPPool::new(
            name,
            IPPoolSpec {
                ip_ranges: vec![IpRange::cidr("10.0.0.0/24")],
                subnet_info: SubnetInfo {
                    gateway: "10.0.0.1".into(),
                    prefix_length: 24,
                    vlan: None,
                },
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
        );
        p.metadata.resource_version = Some(rv.into());
        p
    }

    fn block(name: &str, cidr: &str, rv: &str, allocs: &[(u8, &str)]) -> IPAMBlock {
        let mut b = IPAMBlock::new(
            name,
            IPAMBlockSpec {
                pool: "p".into(),
                cidr: cidr.into(),
                node: "node-a".into(),
                allocations: allocs
                    .iter()
                    .map(|(o, pod)| BlockAllocation {
                        offset: *o,
                        owner: Owner::pod("ns", pod, "c", "eth1"),
                    })
                    .collect(),
            },
        );
        b.metadata.resource_version = Some(rv.into());
        b
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn holder(s: &CacheState, a: &str) -> Option<String> {
        s.pool("p")
            .and_then(|ix| ix.blocks.holder(ip(a)).map(|o| o.name.clone()))
    }

    #[test]
    fn blocks_before_pools_and_write_through_beats_a_lagging_watch() {
        let mut s = CacheState::default();
        // A block arrives before its pool: indexed when the pool arrives.
        s.apply_block(block("p-10-0-0-0", "10.0.0.0/26", "5", &[(2, "a")]));
        assert!(s.pool("p").is_none());
        s.apply_pool(pool("p", "1", &[]));
        assert_eq!(holder(&s, "10.0.0.2").as_deref(), Some("a"));
        // Write-through of our own write (rv 7), then the watch lags with rv 6.
        assert!(s.apply_block(block(
            "p-10-0-0-0",
            "10.0.0.0/26",
            "7",
            &[(2, "a"), (3, "b")]
        )));
        assert!(!s.apply_block(block("p-10-0-0-0", "10.0.0.0/26", "6", &[(2, "a")])));
        assert_eq!(holder(&s, "10.0.0.3").as_deref(), Some("b"));
        let rv = s
            .pool("p")
            .and_then(|ix| ix.blocks.block(window(ip("10.0.0.0"))))
            .and_then(|b| b.resource_version.clone());
        assert_eq!(
            rv.as_deref(),
            Some("7"),
            "the next write uses the newest version"
        );
        // A pool change keeps what is held and applies the new excludes.
        s.apply_pool(pool("p", "2", &["10.0.0.4..10.0.0.63"]));
        assert_eq!(holder(&s, "10.0.0.3").as_deref(), Some("b"));
        let pb = &s.pool("p").unwrap().blocks;
        assert!(matches!(
            pb.plan("node-a", &Owner::pod("ns", "new", "c", "eth1"), None),
            Plan::Claim { ip: got, .. } if got == ip("10.0.0.64")
        ));
        // The delete of an older incarnation is ignored; the current one applies.
        s.delete_block(&block("p-10-0-0-0", "10.0.0.0/26", "6", &[]));
        assert!(holder(&s, "10.0.0.3").is_some());
        s.delete_block(&block("p-10-0-0-0", "10.0.0.0/26", "7", &[]));
        assert!(holder(&s, "10.0.0.3").is_none());
        assert_eq!(s.pool("p").unwrap().blocks.blocks().len(), 0);
    }

    #[test]
    fn invalid_pools_are_skipped_and_malformed_blocks_quarantined() {
        let mut s = CacheState::default();
        let mut bad = pool("p", "1", &[]);
        bad.spec.subnet_info.gateway = "nonsense".into();
        s.apply_pool(bad);
        assert!(s.pool("p").is_none());
        s.apply_pool(pool("p", "2", &[]));
        assert!(s.pool("p").is_some());
        // Offset 2 allocated twice: the window counts as claimed and full.
        s.apply_block(block(
            "p-10-0-0-0",
            "10.0.0.0/26",
            "3",
            &[(2, "a"), (2, "b")],
        ));
        let ix = s.pool("p").unwrap();
        assert!(ix.quarantined.contains_key(&window(ip("10.0.0.0"))));
        assert!(matches!(
            ix.blocks.plan("node-a", &Owner::pod("ns", "x", "c", "eth1"), None),
            Plan::Claim { ip: got, .. } if got == ip("10.0.0.64")
        ));
        // A layout change keeps it full.
        s.apply_pool(pool("p", "4", &["10.0.0.200"]));
        let ix = s.pool("p").unwrap();
        assert_eq!(ix.blocks.block(window(ip("10.0.0.0"))).unwrap().capacity, 0);
        // Fixed: usable again.
        s.apply_block(block("p-10-0-0-0", "10.0.0.0/26", "5", &[(2, "a")]));
        let ix = s.pool("p").unwrap();
        assert!(ix.quarantined.is_empty());
        assert_eq!(holder(&s, "10.0.0.2").as_deref(), Some("a"));
        // The pool is deleted: unknown.
        s.delete_pool(&pool("p", "4", &[]));
        assert!(s.pool("p").is_none());
    }

    #[test]
    fn a_relist_drops_blocks_deleted_while_the_watch_was_down() {
        let mut s = CacheState::default();
        s.apply_pool(pool("p", "1", &[]));
        s.apply_block(block("p-10-0-0-0", "10.0.0.0/26", "5", &[(2, "a")]));
        s.apply_block(block("p-10-0-0-64", "10.0.0.64/26", "6", &[(0, "b")]));
        s.begin_block_relist();
        s.relist_block(block("p-10-0-0-64", "10.0.0.64/26", "6", &[(0, "b")]));
        s.end_block_relist();
        assert!(holder(&s, "10.0.0.2").is_none());
        assert_eq!(holder(&s, "10.0.0.64").as_deref(), Some("b"));
    }
}
