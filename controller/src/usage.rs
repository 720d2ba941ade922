//! Pool usage: `status.usage` (`total`, `used`) of every IPPool, kept
//! current by one writer.
//!
//! Agents never touch a pool object when they allocate: allocations live
//! in IPAMBlocks (see `spur_core::ipam`). This module derives each pool's
//! usage from the blocks and writes it to the pool's status subresource:
//!
//! - [`compute_usage`] is the pure part: per pool, the size of its
//!   allocatable set and the number of distinct allocated offsets in the
//!   blocks whose `spec.pool` names it. Blocks of unknown pools are
//!   ignored; a pool whose spec is invalid has `total` 0 (it hands out
//!   nothing) and still counts what its blocks hold.
//! - [`UsageReconciler`] is the I/O part, level-driven: a pass compares the
//!   computed usage with the stored one and merge-patches `/status` of the
//!   pools whose usage differs, and of no other. [`UsageReconciler::run`]
//!   feeds passes from reflectors (kube-runtime watchers) of IPPools and
//!   IPAMBlocks, coalescing bursts of events into one pass per
//!   [`UsageConfig::debounce`], so the number of status writes follows the
//!   number of changes of a pool's usage per debounce window, never the
//!   number of allocations.
//!
//! The same patch carries the pool's conditions (`Exhausted`, `Valid`;
//! decided in [`crate::poolstatus`]), and after a write that turns a pool
//! exhausted or conflicting, a Warning Event (`PoolExhausted`,
//! `PoolConflict`) regarding the pool is published, once per transition.
//!
//! Blocks' labels: the same passes give every IPAMBlock the labels agents
//! select blocks by (`spur.dev/node`, `spur.dev/pool`:
//! [`spur_core::ipamblock::block_labels`]) when it lacks them, as blocks
//! created by older agents do, with a merge patch carrying the block's
//! resourceVersion (idempotent; a 409 waits for the next pass). So a fleet
//! upgrades by itself: an agent that watches only its node's blocks sees
//! its older blocks once they are labelled.
//!
//! Only the elected controller runs this: two writers would not corrupt
//! anything (the patch is idempotent) but would double the writes.
//!
//! Determinism: condition and Event times come from
//! [`UsageConfig::clock`]; the watches restart with a
//! [`WatchBackoff`] seeded from [`UsageConfig::seed`]; pools are written in
//! name order.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use spur_core::ipamblock::{missing_block_labels, IPAMBlock};
use spur_core::ippool::{IPPool, PoolLayout, PoolUsage};
use tokio::time::Instant;

use crate::clock::{system_clock, SharedClock};
use crate::poolstatus;
use crate::watchbackoff::{seed_for, WatchBackoff};

/// Window offsets of a block are 0-63.
const BLOCK_OFFSETS: u8 = 64;

/// Usage of every pool in `pools`, by pool name, from `blocks` (see the
/// module documentation for the rules).
pub fn compute_usage<'a>(
    pools: impl IntoIterator<Item = &'a IPPool>,
    blocks: impl IntoIterator<Item = &'a IPAMBlock>,
) -> BTreeMap<String, PoolUsage> {
    let mut used: BTreeMap<&str, u128> = BTreeMap::new();
    for b in blocks {
        let mut offsets = 0u64;
        for a in b
            .spec
            .allocations
            .iter()
            .filter(|a| a.offset < BLOCK_OFFSETS)
        {
            offsets |= 1 << a.offset;
        }
        *used.entry(b.spec.pool.as_str()).or_default() += u128::from(offsets.count_ones());
    }
    pools
        .into_iter()
        .map(|p| {
            let name = p.name_any();
            let total = PoolLayout::from_pool(p).map_or(0, |l| l.size());
            let held = used.get(name.as_str()).copied().unwrap_or(0);
            (name, PoolUsage::new(total, held))
        })
        .collect()
}

/// The usage stored in a pool's status, if any.
pub fn stored_usage(pool: &IPPool) -> Option<PoolUsage> {
    pool.status.as_ref().and_then(|s| s.usage)
}

/// Settings of the usage loop.
#[derive(Debug, Clone)]
pub struct UsageConfig {
    /// How long events are collected before a pass runs: the first event
    /// after a pass schedules the next pass this much later, and every
    /// event until then is served by it.
    pub debounce: Duration,
    /// How long to wait before retrying a pass in which a write failed.
    pub retry: Duration,
    /// Where conditions' `lastTransitionTime` and Events' `eventTime` are
    /// read from.
    pub clock: SharedClock,
    /// Seed of the watches' backoff jitter (None: process-random).
    pub seed: Option<u64>,
}

impl Default for UsageConfig {
    /// One second of debounce, five seconds before a retry, the system
    /// clock, process-random jitter.
    fn default() -> Self {
        UsageConfig {
            debounce: Duration::from_secs(1),
            retry: Duration::from_secs(5),
            clock: system_clock(),
            seed: None,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct UsagePass {
    /// Pools looked at.
    pub pools: usize,
    /// Pools whose status was written.
    pub written: Vec<String>,
    /// Pools whose status write failed, and blocks whose labelling failed,
    /// with the error (tried again by the next pass).
    pub failed: Vec<(String, kube::Error)>,
    /// Blocks given their missing labels.
    pub labelled: Vec<String>,
}

/// Why the usage loop stopped or a pass could not run.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// Listing a resource failed (a pass needs the whole picture).
    #[error("listing {resource}: {source}")]
    List {
        /// `ippools` or `ipamblocks`.
        resource: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The watch streams ended (they never end while the client works).
    #[error("the IPPool and IPAMBlock watches ended")]
    WatchEnded,
}

/// A usage (and conditions) this reconciler wrote, with the resourceVersions of the pool
/// before and after the write, so that a cached copy that has not caught
/// up with the write yet is read as if it had.
#[derive(Debug, Clone)]
struct Written {
    usage: PoolUsage,
    conditions: Vec<Condition>,
    over: Option<String>,
    after: Option<String>,
}

/// Keeps `status.usage` of every IPPool equal to what its blocks hold.
pub struct UsageReconciler {
    pools: Api<IPPool>,
    blocks: Api<IPAMBlock>,
    events: Api<K8sEvent>,
    config: UsageConfig,
    /// The last write per pool, so that a pass over a cache that has not
    /// seen it yet neither writes the same value again nor misses a change.
    written: BTreeMap<String, Written>,
    /// The name stamp of the last Event published: names stay unique when
    /// the clock stands still (simulated time) or goes backwards.
    last_stamp: i128,
    /// Blocks labelled, with the resourceVersion the patch was based on, so
    /// a cached copy that has not caught up is not patched again.
    labelled: BTreeMap<String, Option<String>>,
}

/// What a watch event means for the loop.
enum Signal {
    /// Something changed: schedule a pass.
    Changed,
    /// One of the two caches finished its (re)list.
    Ready(Source),
    /// Nothing to do (events inside a relist).
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Pools,
    Blocks,
}

fn signal<K>(source: Source, ev: &watcher::Event<K>) -> Signal {
    match ev {
        watcher::Event::Apply(_) | watcher::Event::Delete(_) => Signal::Changed,
        watcher::Event::InitDone => Signal::Ready(source),
        watcher::Event::Init | watcher::Event::InitApply(_) => Signal::Nothing,
    }
}

impl UsageReconciler {
    /// A reconciler writing through `client`.
    pub fn new(client: Client, config: UsageConfig) -> UsageReconciler {
        UsageReconciler {
            pools: Api::all(client.clone()),
            blocks: Api::all(client.clone()),
            events: Api::namespaced(client, poolstatus::EVENT_NAMESPACE),
            config,
            written: BTreeMap::new(),
            last_stamp: i128::MIN,
            labelled: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> UsageConfig {
        self.config.clone()
    }

    /// One pass over freshly listed pools and blocks.
    pub async fn reconcile_all(&mut self) -> Result<UsagePass, UsageError> {
        let lp = ListParams::default();
        let pools = self
            .pools
            .list(&lp)
            .await
            .map_err(|source| UsageError::List {
                resource: "ippools",
                source,
            })?;
        let blocks = self
            .blocks
            .list(&lp)
            .await
            .map_err(|source| UsageError::List {
                resource: "ipamblocks",
                source,
            })?;
        Ok(self.reconcile(&pools.items, &blocks.items).await)
    }

    /// One pass over the given pools and blocks (as a cache last saw them):
    /// writes the status of each pool whose usage differs from the stored
    /// one. A write that fails is reported, not retried here.
    pub async fn reconcile(&mut self, pools: &[IPPool], blocks: &[IPAMBlock]) -> UsagePass {
        self.reconcile_refs(pools.iter(), blocks.iter()).await
    }

    async fn reconcile_refs<'a>(
        &mut self,
        pools: impl Iterator<Item = &'a IPPool> + Clone,
        blocks: impl Iterator<Item = &'a IPAMBlock>,
    ) -> UsagePass {
        let blocks: Vec<&IPAMBlock> = blocks.collect();
        let desired = compute_usage(pools.clone(), blocks.iter().copied());
        let problems = poolstatus::find_conflicts(pools.clone());
        let now = Time(self.config.clock.now());
        let mut pass = UsagePass::default();
        self.label_blocks(&blocks, &mut pass).await;
        self.written.retain(|name, _| desired.contains_key(name));
        for pool in pools {
            pass.pools += 1;
            let name = pool.name_any();
            let Some(&want) = desired.get(&name) else {
                continue;
            };
            let rv = pool.metadata.resource_version.clone();
            let mut stored = stored_usage(pool);
            let mut stored_conditions = pool
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            if let Some(w) = self.written.get(&name) {
                if w.over == rv {
                    // The copy predates our write: the pool holds what we wrote.
                    stored = Some(w.usage);
                    stored_conditions = w.conditions.clone();
                } else if w.after != rv {
                    // Someone wrote after us: the copy knows best.
                    self.written.remove(&name);
                }
            }
            let conditions = poolstatus::merge_conditions(
                &stored_conditions,
                poolstatus::desired_conditions(want, problems.get(&name), &now),
            );
            if stored == Some(want) && conditions == stored_conditions {
                continue;
            }
            match self.write(&name, want, &conditions).await {
                Ok(after) => {
                    tracing::debug!(pool = %name, total = want.total, used = want.used, "pool status written");
                    for t in poolstatus::transitions(&stored_conditions, &conditions) {
                        self.publish(pool, &t).await;
                    }
                    self.written.insert(
                        name.clone(),
                        Written {
                            usage: want,
                            conditions,
                            over: rv,
                            after,
                        },
                    );
                    pass.written.push(name);
                }
                // Deleted since the cache saw it: nothing to keep current.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(pool = %name, error = %e, "writing pool usage failed");
                    pass.failed.push((name, e));
                }
            }
        }
        pass
    }

    /// Gives the blocks that lack them their labels (see the module
    /// documentation): one merge patch per block, with its resourceVersion
    /// as precondition.
    async fn label_blocks(&mut self, blocks: &[&IPAMBlock], pass: &mut UsagePass) {
        let names: std::collections::BTreeSet<&str> = blocks
            .iter()
            .filter_map(|b| b.metadata.name.as_deref())
            .collect();
        self.labelled.retain(|n, _| names.contains(n.as_str()));
        for b in blocks {
            let missing = missing_block_labels(b);
            let Some(name) = b.metadata.name.clone() else {
                continue;
            };
            if missing.is_empty() {
                self.labelled.remove(&name);
                continue;
            }
            let rv = b.metadata.resource_version.clone();
            if self.labelled.get(&name) == Some(&rv) {
                continue;
            }
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": rv, "labels": missing}
            });
            match self
                .blocks
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(block = %name, "labelled an IPAMBlock an older agent created");
                    self.labelled.insert(name.clone(), rv);
                    pass.labelled.push(name);
                }
                // Changed or deleted since the cache saw it: the next pass
                // (its watch event schedules one) sees the new version.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(block = %name, error = %e, "labelling an IPAMBlock failed");
                    pass.failed.push((name, e));
                }
            }
        }
    }

    /// Publishes a Warning Event regarding `pool`
    /// ([`poolstatus::warning_event`], stamped by the injected clock); a
    /// failure is logged (the condition, already written, stays the
    /// record). Each transition is its own Event: the pool's
    /// resourceVersion differs between two transitions, so kube-runtime's
    /// recorder would not have folded them into a series either.
    async fn publish(&mut self, pool: &IPPool, t: &poolstatus::Transition) {
        let now = self.config.clock.now();
        let stamp = now.as_nanosecond().max(self.last_stamp.saturating_add(1));
        self.last_stamp = stamp;
        let ev = poolstatus::warning_event(pool, t, now, stamp);
        let name = pool.name_any();
        match self
            .events
            .create(&PostParams::default(), &ev)
            .await
            .map(|_| ())
        {
            Ok(()) => {
                tracing::info!(pool = %name, reason = t.reason, note = %t.note, "event published")
            }
            Err(e) => {
                tracing::warn!(pool = %name, reason = t.reason, error = %e, "publishing event failed")
            }
        }
    }

    /// Patches the usage and the conditions into the pool's status; the
    /// pool's resourceVersion after the write.
    async fn write(
        &self,
        name: &str,
        usage: PoolUsage,
        conditions: &[Condition],
    ) -> Result<Option<String>, kube::Error> {
        let patch = serde_json::json!({
            "status": {
                "usage": {"total": usage.total, "used": usage.used},
                "conditions": conditions,
            }
        });
        self.pools
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|p| p.metadata.resource_version)
    }

    /// Runs until `shutdown` completes: watches IPPools and IPAMBlocks into
    /// caches, runs a pass once both are listed, then one pass per burst of
    /// changes ([`UsageConfig::debounce`] after the burst's first event),
    /// and a retry pass ([`UsageConfig::retry`]) after a failed write.
    /// Watch errors are logged and the watches resume with backoff.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), UsageError> {
        let (pool_cache, pool_writer) = reflector::store::<IPPool>();
        let (block_cache, block_writer) = reflector::store::<IPAMBlock>();
        let pool_events = reflector::reflector(
            pool_writer,
            watcher(self.pools.clone(), watcher::Config::default()).backoff(WatchBackoff::new(
                seed_for(self.config.seed, "usage/ippools"),
            )),
        )
        .map(|ev| ev.map(|e| signal(Source::Pools, &e)));
        let block_events = reflector::reflector(
            block_writer,
            watcher(self.blocks.clone(), watcher::Config::default()).backoff(WatchBackoff::new(
                seed_for(self.config.seed, "usage/ipamblocks"),
            )),
        )
        .map(|ev| ev.map(|e| signal(Source::Blocks, &e)));
        let mut events = std::pin::pin!(futures::stream::select(pool_events, block_events));
        let mut shutdown = std::pin::pin!(shutdown);
        let (mut pools_ready, mut blocks_ready) = (false, false);
        let mut due: Option<Instant> = None;
        loop {
            let deadline = due;
            let timer = async move {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            // Stop first; then the watch events, so a due pass sees every
            // event already delivered; then the timer.
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                ev = next(&mut events) => {
                    let now = Instant::now();
                    match ev {
                        None => return Err(UsageError::WatchEnded),
                        Some(Err(e)) => tracing::warn!(error = %e, "watch failed; resuming"),
                        Some(Ok(Signal::Nothing)) => {}
                        Some(Ok(Signal::Ready(source))) => {
                            let first = !(pools_ready && blocks_ready);
                            match source {
                                Source::Pools => pools_ready = true,
                                Source::Blocks => blocks_ready = true,
                            }
                            if pools_ready && blocks_ready {
                                // The first pass right away; after a relist,
                                // as after any change.
                                let at = if first { now } else { now + self.config.debounce };
                                due = Some(due.map_or(at, |d| d.min(at)));
                            }
                        }
                        Some(Ok(Signal::Changed)) => {
                            if pools_ready && blocks_ready && due.is_none() {
                                due = Some(now + self.config.debounce);
                            }
                        }
                    }
                }
                () = timer => {
                    due = None;
                    // The caches hand their objects out in hash order: name
                    // order makes the writes (and the conflict each pool
                    // reports) the same from run to run.
                    let mut pools = pool_cache.state();
                    pools.sort_by_key(|p| p.name_any());
                    let mut blocks = block_cache.state();
                    blocks.sort_by_key(|b| b.name_any());
                    let pass = self
                        .reconcile_refs(
                            pools.iter().map(|p| p.as_ref()),
                            blocks.iter().map(|b| b.as_ref()),
                        )
                        .await;
                    if !pass.failed.is_empty() {
                        due = Some(Instant::now() + self.config.retry);
                    }
                }
            }
        }
    }
}

async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    s.next().await
}

/// Runs the usage loop with the default [`UsageConfig`] until `shutdown`
/// completes.
pub async fn run_usage(
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), UsageError> {
    UsageReconciler::new(client, UsageConfig::default())
        .run(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use spur_core::ipamblock::{BlockAllocation, IPAMBlockSpec, Owner};
    use spur_core::ippool::{IPPoolSpec, IpRange, SubnetInfo};

    fn pool(name: &str, cidr: &str, gw: &str) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                ip_ranges: vec![IpRange::cidr(cidr)],
                subnet_info: SubnetInfo {
                    gateway: gw.into(),
                    prefix_length: 24,
                    vlan: None,
                },
                exclude: vec![],
            },
        )
    }

    fn block(pool: &str, cidr: &str, offsets: &[u8]) -> IPAMBlock {
        IPAMBlock::new(
            &format!("{pool}-{}", cidr.replace(['.', '/'], "-")),
            IPAMBlockSpec {
                pool: pool.into(),
                cidr: cidr.into(),
                node: "node-a".into(),
                allocations: offsets
                    .iter()
                    .map(|&o| BlockAllocation {
                        offset: o,
                        owner: Owner::pod("ns", &format!("p{o}"), "c", "eth1"),
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn usage_counts_allocations_of_each_pool() {
        let pools = [
            pool("a", "10.10.1.0/24", "10.10.1.1"),
            pool("b", "10.10.2.0/26", "10.10.2.1"),
        ];
        let blocks = [
            block("a", "10.10.1.0/26", &[2, 3, 4]),
            block("a", "10.10.1.64/26", &[0]),
            block("b", "10.10.2.0/26", &[]),
            block("gone", "10.10.9.0/26", &[2, 3]),
        ];
        let u = compute_usage(&pools, &blocks);
        assert_eq!(u.len(), 2, "blocks of unknown pools are ignored");
        assert_eq!(
            u["a"],
            PoolUsage {
                total: 253,
                used: 4
            }
        );
        // A /26 range in a /24 subnet: only its first address is out, and
        // the gateway.
        assert_eq!(u["b"], PoolUsage { total: 62, used: 0 });
    }

    #[test]
    fn invalid_pools_have_no_total_but_keep_their_count() {
        let pools = [pool("bad", "10.10.1.0/24", "not-an-ip")];
        let u = compute_usage(&pools, &[block("bad", "10.10.1.0/26", &[5])]);
        assert_eq!(u["bad"], PoolUsage { total: 0, used: 1 });
    }

    #[test]
    fn a_corrupt_block_counts_each_offset_once() {
        let pools = [pool("a", "10.10.1.0/24", "10.10.1.1")];
        let mut b = block("a", "10.10.1.0/26", &[7, 7, 200]);
        b.spec.allocations[1].owner = Owner::pod("ns", "other", "c", "eth1");
        assert_eq!(compute_usage(&pools, &[b])["a"].used, 1);
    }

    #[test]
    fn default_config_debounces_one_second() {
        assert_eq!(UsageConfig::default().debounce, Duration::from_secs(1));
    }
}
