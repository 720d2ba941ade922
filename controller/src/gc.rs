//! Address garbage collection: releasing allocations of IPAMBlocks whose
//! holder is gone, without ever freeing an address a live Pod uses.
//!
//! What lives here: the pure decision ([`decide`]) with the memory it keeps
//! between rounds ([`GcMemory`]), and the thin I/O around it
//! ([`GcReconciler`]): a round lists the IPAMBlocks first (the snapshot),
//! then every Pod and StatefulSet, decides, and releases by replacing each
//! affected block with the snapshot's `resourceVersion`.
//!
//! What does not: how agents allocate (`spur-node`), the block format
//! (`spur_core::ipamblock`), metrics, Events and leader election (the
//! binary wires those; a round only returns its counts in [`GcRound`]).
//!
//! # Rules
//!
//! An allocation is *stale* in a round when:
//!
//! - **Pod owner, Pod gone**: no Pod of the owner's namespace and name
//!   exists.
//! - **Pod owner, Pod replaced**: a Pod of that name exists, but with a UID
//!   other than the one this collector saw for that name in an earlier
//!   round in which the allocation was already in the snapshot. The API
//!   does not carry the sandbox (container) ID an allocation names, so the
//!   UID is what can be observed: the snapshot is taken before the Pod
//!   list, so the allocation's Pod existed when the earlier list saw UID
//!   `A` (it is `A` or an older Pod of the name); a later, different UID
//!   is a newer Pod, which cannot hold the older sandbox's address. When
//!   the agent recorded the Pod's UID in the owner (`podUID`), that UID is
//!   the one compared, from the first round the allocation is seen, with
//!   no need of the collector's memory (a new leader decides it too).
//! - **Pod owner, container replaced**: the same Pod (same UID as when
//!   both were seen) holds another allocation for the same interface
//!   under another container ID that first appeared in a *later* round
//!   than this one. The kubelet runs one sandbox per Pod and stops the
//!   old one before it creates a new one, so the older container's
//!   address is unused. When both were first seen in the same round (a
//!   new leader starts with no memory, so after a failover that is the
//!   usual case), the Pod's `k8s.v1.cni.cncf.io/network-status` annotation
//!   decides: if the addresses it reports for the interface are exactly
//!   those of the other container, and none of this one's, this one is the
//!   replaced sandbox. An annotation that matches neither (an ADD in
//!   flight) decides nothing.
//! - **StatefulSet owner**: the StatefulSet is gone, or its ordinal is
//!   outside `[start, start + replicas)` (`spec.ordinals.start`, default 0;
//!   `spec.replicas`, default 1) — *and* no Pod named after the ordinal
//!   (`<set>-<ordinal>`, nor the owner's recorded Pod) exists: a scaled-down
//!   Pod that is still terminating keeps its address.
//!
//! Pods that are terminating or in a terminal phase still count as live:
//! their network namespace may still hold the address until the kubelet
//! tears it down. An owner whose record is inconsistent (a StatefulSet
//! owner without ordinal) is never judged stale.
//!
//! # Grace
//!
//! Blocks carry no per-allocation timestamp, so age is counted in rounds:
//! an allocation is released only when it was stale, with the same owner
//! at the same offset of the same block, in two consecutive completed
//! rounds. A round that fails to list anything is aborted before deciding
//! and does not count; the memory is kept as it was.
//!
//! # Writes
//!
//! A release replaces the block with the snapshot's allocations minus the
//! released ones, carrying the snapshot's `resourceVersion`. If an agent
//! wrote the block since, the API answers 409 and the block is skipped this
//! round (its stale allocations stay candidates and are looked at again
//! next round): an agent's newer write is never overwritten.
//!
//! Determinism: every map is ordered (blocks, allocations and releases are
//! visited in the same order from run to run) and nothing reads the time
//! of day; rounds are paced by `tokio::time`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use spur_core::config::{ControllerConfig, DEFAULT_GC_INTERVAL_SECONDS};
use spur_core::ipam::address;
use spur_core::ipamblock::{IPAMBlock, Owner, OwnerKind};
use spur_core::pool::Family;
use spur_core::status::{self, NETWORK_STATUS_ANNOTATION};
use spur_core::Subject;

/// Page size of the lists a round makes.
const PAGE: u32 = 500;

/// A Pod as the collector needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid` (empty when the API did not give one).
    pub uid: String,
    /// The addresses its network-status annotation reports, by interface
    /// (empty without a readable annotation): what its current sandbox got.
    pub reported: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl PodView {
    /// The view of a Pod object.
    pub fn of(pod: &Pod) -> PodView {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let reported = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NETWORK_STATUS_ANNOTATION))
            .and_then(|text| {
                status::parse(text, &Subject::new("Pod", Some(&namespace), &name)).ok()
            })
            .map(|entries| {
                let mut by_if: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
                for e in entries {
                    if let Some(i) = e.interface {
                        by_if.entry(i).or_default().extend(e.ips);
                    }
                }
                by_if
            })
            .unwrap_or_default();
        PodView {
            namespace,
            name,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            reported,
        }
    }
}

/// A StatefulSet as the collector needs it: the ordinals it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatefulSetView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// First ordinal (`spec.ordinals.start`, default 0).
    pub start: u32,
    /// `spec.replicas` (default 1).
    pub replicas: u32,
}

impl StatefulSetView {
    /// The view of a StatefulSet object. Negative numbers (which the API
    /// refuses) count as 0.
    pub fn of(set: &StatefulSet) -> StatefulSetView {
        let spec = set.spec.as_ref();
        let start = spec
            .and_then(|s| s.ordinals.as_ref())
            .and_then(|o| o.start)
            .unwrap_or(0);
        let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
        StatefulSetView {
            namespace: set.namespace().unwrap_or_default(),
            name: set.name_any(),
            start: u32::try_from(start).unwrap_or(0),
            replicas: u32::try_from(replicas).unwrap_or(0),
        }
    }

    /// Whether the set keeps `ordinal`.
    pub fn keeps(&self, ordinal: u32) -> bool {
        ordinal >= self.start
            && u64::from(ordinal) < u64::from(self.start) + u64::from(self.replicas)
    }
}

/// One allocation: a block, an offset in it, and its owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId {
    /// The IPAMBlock's name.
    pub block: String,
    /// The offset in the block's window.
    pub offset: u8,
    /// Who holds it.
    pub owner: Owner,
}

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block {} offset {} ({})",
            self.block, self.offset, self.owner
        )
    }
}

/// Why an allocation is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No Pod of the owner's name exists.
    PodGone,
    /// The Pod of the owner's name was recreated.
    PodReplaced {
        /// The UID seen with the allocation earlier.
        old_uid: String,
        /// The UID of the Pod now.
        new_uid: String,
    },
    /// The same Pod holds a newer allocation for the same interface.
    ContainerReplaced {
        /// The newer allocation's container ID.
        by: String,
    },
    /// The StatefulSet no longer exists.
    StatefulSetGone,
    /// The StatefulSet no longer keeps the ordinal.
    ScaledDown {
        /// First ordinal kept.
        start: u32,
        /// Replicas.
        replicas: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::PodGone => write!(f, "Pod is gone"),
            Reason::PodReplaced { old_uid, new_uid } => {
                write!(f, "Pod was recreated (uid {old_uid} -> {new_uid})")
            }
            Reason::ContainerReplaced { by } => {
                write!(f, "Pod has a newer container {by} on the interface")
            }
            Reason::StatefulSetGone => write!(f, "StatefulSet is gone"),
            Reason::ScaledDown { start, replicas } => write!(
                f,
                "StatefulSet keeps ordinals {start}..{} only",
                u64::from(*start) + u64::from(*replicas)
            ),
        }
    }
}

/// An allocation to release and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The allocation.
    pub id: AllocationId,
    /// Why.
    pub reason: Reason,
}

/// What the collector remembers about an allocation it has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// The round it was first in the snapshot.
    first_round: u64,
    /// The Pod UID seen for the owner's Pod in a round where the
    /// allocation was in the snapshot (Pod owners).
    pod_uid: Option<String>,
}

/// What the collector carries from one completed round to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcMemory {
    /// Completed rounds.
    round: u64,
    /// Allocations of the last snapshot.
    seen: BTreeMap<AllocationId, Seen>,
    /// Allocations stale in the last round.
    stale: BTreeMap<AllocationId, Reason>,
}

impl GcMemory {
    /// Completed rounds so far.
    pub fn rounds(&self) -> u64 {
        self.round
    }

    /// Whether `id` was stale in the last completed round.
    pub fn is_candidate(&self, id: &AllocationId) -> bool {
        self.stale.contains_key(id)
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allocations to release now (stale in this and the previous round).
    pub release: Vec<Release>,
    /// Allocations stale in this round for the first time (released next
    /// round if still stale).
    pub candidates: Vec<Release>,
    /// The memory for the next round.
    pub memory: GcMemory,
}

/// The pure decision of one round: `blocks` is the snapshot, listed
/// before `pods` and `sets`; `memory` is what the previous completed round
/// left. See the module documentation for the rules.
pub fn decide(
    memory: &GcMemory,
    blocks: &[IPAMBlock],
    pods: &[PodView],
    sets: &[StatefulSetView],
) -> Decision {
    let round = memory.round + 1;
    let pods_by_name: BTreeMap<(&str, &str), &str> = pods
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), p.uid.as_str()))
        .collect();
    let reported: BTreeMap<(&str, &str), &BTreeMap<String, BTreeSet<IpAddr>>> = pods
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), &p.reported))
        .collect();
    // Where each block's window starts, to turn offsets into addresses.
    let windows: BTreeMap<String, (Family, u128)> = blocks
        .iter()
        .filter_map(|b| {
            let net: ipnet::IpNet = b.spec.cidr.parse().ok()?;
            Some(match net.network() {
                IpAddr::V4(a) => (b.name_any(), (Family::V4, u128::from(u32::from(a)))),
                IpAddr::V6(a) => (b.name_any(), (Family::V6, u128::from(a))),
            })
        })
        .collect();
    let address_of = |id: &AllocationId| {
        windows
            .get(&id.block)
            .map(|(f, base)| address(*f, *base, u32::from(id.offset)))
    };
    let sets_by_name: BTreeMap<(&str, &str), &StatefulSetView> = sets
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
        .collect();

    // Every allocation of the snapshot with what is remembered of it.
    let mut seen: BTreeMap<AllocationId, Seen> = BTreeMap::new();
    for b in blocks {
        let block = b.name_any();
        for a in &b.spec.allocations {
            let id = AllocationId {
                block: block.clone(),
                offset: a.offset,
                owner: a.owner.clone(),
            };
            let mut s = memory.seen.get(&id).cloned().unwrap_or(Seen {
                first_round: round,
                pod_uid: None,
            });
            if a.owner.kind == OwnerKind::Pod && !a.owner.pod_uid.is_empty() {
                // The agent recorded the Pod's UID with the allocation: that
                // is the Pod it belongs to, whatever this collector saw.
                s.pod_uid = Some(a.owner.pod_uid.clone());
            } else if a.owner.kind == OwnerKind::Pod && s.pod_uid.is_none() {
                let uid = pods_by_name
                    .get(&(a.owner.namespace.as_str(), pod_name(&a.owner)))
                    .filter(|u| !u.is_empty());
                s.pod_uid = uid.map(|u| (*u).to_owned());
            }
            seen.insert(id, s);
        }
    }

    // Pod allocations by (namespace, Pod, interface), to find superseded
    // containers.
    let mut by_interface: BTreeMap<InterfaceKey<'_>, Vec<(&AllocationId, &Seen)>> = BTreeMap::new();
    for (id, s) in &seen {
        if id.owner.kind == OwnerKind::Pod {
            by_interface
                .entry((
                    id.owner.namespace.as_str(),
                    pod_name(&id.owner),
                    id.owner.interface.as_str(),
                ))
                .or_default()
                .push((id, s));
        }
    }

    let mut stale: BTreeMap<AllocationId, Reason> = BTreeMap::new();
    for (id, s) in &seen {
        let o = &id.owner;
        let reason = match o.kind {
            OwnerKind::Pod => match pods_by_name.get(&(o.namespace.as_str(), pod_name(o))) {
                None => Some(Reason::PodGone),
                Some(uid) => match &s.pod_uid {
                    Some(old) if !uid.is_empty() && old != uid => Some(Reason::PodReplaced {
                        old_uid: old.clone(),
                        new_uid: (*uid).to_owned(),
                    }),
                    Some(old) => {
                        let key = (o.namespace.as_str(), pod_name(o), o.interface.as_str());
                        let peers = by_interface.get(&key);
                        // A newer container of the same Pod interface, seen
                        // first in a later round.
                        let newer = peers.and_then(|peers| {
                            peers
                                .iter()
                                .filter(|(p, ps)| {
                                    p.owner.container_id != o.container_id
                                        && ps.first_round > s.first_round
                                        && ps.pod_uid.as_ref() == Some(old)
                                })
                                .map(|(p, _)| p.owner.container_id.clone())
                                .min()
                        });
                        // Else (both first seen in one round, e.g. by a new
                        // leader): the container whose addresses are exactly
                        // those the Pod's network-status reports for the
                        // interface is the current one.
                        let current = || {
                            let said = reported
                                .get(&(o.namespace.as_str(), pod_name(o)))
                                .and_then(|r| r.get(&o.interface))
                                .filter(|a| !a.is_empty())?;
                            let mut by_container: BTreeMap<&str, BTreeSet<IpAddr>> =
                                BTreeMap::new();
                            for (p, ps) in peers? {
                                if ps.pod_uid.as_ref() == Some(old) {
                                    if let Some(a) = address_of(p) {
                                        by_container
                                            .entry(p.owner.container_id.as_str())
                                            .or_default()
                                            .insert(a);
                                    }
                                }
                            }
                            let mine = by_container.get(o.container_id.as_str())?;
                            if !mine.is_disjoint(said) {
                                return None;
                            }
                            by_container
                                .iter()
                                .find(|(c, a)| **c != o.container_id && *a == said)
                                .map(|(c, _)| (*c).to_string())
                        };
                        newer
                            .or_else(current)
                            .map(|by| Reason::ContainerReplaced { by })
                    }
                    None => None,
                },
            },
            OwnerKind::StatefulSet => o.ordinal.and_then(|ordinal| {
                let reason = match sets_by_name.get(&(o.namespace.as_str(), o.name.as_str())) {
                    None => Reason::StatefulSetGone,
                    Some(set) if set.keeps(ordinal) => return None,
                    Some(set) => Reason::ScaledDown {
                        start: set.start,
                        replicas: set.replicas,
                    },
                };
                let ordinal_pod = format!("{}-{ordinal}", o.name);
                let pod_lives = pods_by_name.contains_key(&(o.namespace.as_str(), &ordinal_pod))
                    || (!o.pod.is_empty()
                        && pods_by_name.contains_key(&(o.namespace.as_str(), o.pod.as_str())));
                (!pod_lives).then_some(reason)
            }),
        };
        if let Some(r) = reason {
            stale.insert(id.clone(), r);
        }
    }

    let mut release = Vec::new();
    let mut candidates = Vec::new();
    for (id, reason) in &stale {
        let r = Release {
            id: id.clone(),
            reason: reason.clone(),
        };
        if memory.stale.contains_key(id) {
            release.push(r);
        } else {
            candidates.push(r);
        }
    }
    release.sort_by(|a, b| a.id.cmp(&b.id));
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    Decision {
        release,
        candidates,
        memory: GcMemory { round, seen, stale },
    }
}

/// (namespace, Pod, interface) of an owner.
type InterfaceKey<'a> = (&'a str, &'a str, &'a str);

/// The Pod an owner names (Pod owners: the Pod; StatefulSet owners: the
/// Pod using the reservation).
fn pod_name(o: &Owner) -> &str {
    if o.pod.is_empty() {
        &o.name
    } else {
        &o.pod
    }
}

/// Settings of the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcConfig {
    /// Time between the starts of two rounds.
    pub interval: Duration,
}

impl Default for GcConfig {
    /// One round a minute.
    fn default() -> Self {
        GcConfig {
            interval: Duration::from_secs(u64::from(DEFAULT_GC_INTERVAL_SECONDS)),
        }
    }
}

impl GcConfig {
    /// The settings `spur-controller.conf` asks for (`gcIntervalSeconds`).
    pub fn from_controller_config(c: &ControllerConfig) -> GcConfig {
        GcConfig {
            interval: Duration::from_secs(u64::from(c.gc_interval_seconds.max(1))),
        }
    }
}

/// Why a round was aborted (nothing was released).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// A list failed: the round needs the whole picture.
    #[error("listing {resource}: {source}")]
    List {
        /// `ipamblocks`, `pods` or `statefulsets`.
        resource: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// The snapshot of a round: every IPAMBlock, listed first.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The blocks, as listed.
    pub blocks: Vec<IPAMBlock>,
}

/// The cluster as a round sees it after its snapshot.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Every Pod.
    pub pods: Vec<PodView>,
    /// Every StatefulSet.
    pub sets: Vec<StatefulSetView>,
}

/// What one round did.
#[derive(Debug, Default)]
pub struct GcRound {
    /// Blocks in the snapshot.
    pub blocks: usize,
    /// Allocations in the snapshot.
    pub allocations: usize,
    /// Allocations stale for the first time (released next round if still
    /// stale).
    pub candidates: usize,
    /// Allocations released.
    pub released: Vec<Release>,
    /// Blocks skipped because an agent wrote them since the snapshot (409).
    pub conflicts: Vec<String>,
    /// Blocks whose write failed otherwise, with the error.
    pub failed: Vec<(String, kube::Error)>,
}

/// The garbage collector: rounds of snapshot, lists, decision, releases.
pub struct GcReconciler {
    blocks: Api<IPAMBlock>,
    pods: Api<Pod>,
    sets: Api<StatefulSet>,
    config: GcConfig,
    memory: GcMemory,
}

impl GcReconciler {
    /// A collector working through `client`.
    pub fn new(client: Client, config: GcConfig) -> GcReconciler {
        GcReconciler {
            blocks: Api::all(client.clone()),
            pods: Api::all(client.clone()),
            sets: Api::all(client),
            config,
            memory: GcMemory::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> GcConfig {
        self.config
    }

    /// What the collector remembers.
    pub fn memory(&self) -> &GcMemory {
        &self.memory
    }

    /// Step 1 of a round: lists every IPAMBlock.
    pub async fn snapshot(&self) -> Result<Snapshot, GcError> {
        let blocks = list_all(&self.blocks, "ipamblocks").await?;
        Ok(Snapshot { blocks })
    }

    /// Step 2 of a round, after [`GcReconciler::snapshot`]: lists every
    /// Pod and StatefulSet.
    pub async fn observe(&self) -> Result<Observed, GcError> {
        let pods = list_all(&self.pods, "pods").await?;
        let sets = list_all(&self.sets, "statefulsets").await?;
        Ok(Observed {
            pods: pods.iter().map(PodView::of).collect(),
            sets: sets.iter().map(StatefulSetView::of).collect(),
        })
    }

    /// Step 3 of a round: decides and releases. `observed` must have been
    /// listed after `snapshot`.
    pub async fn finish(&mut self, snapshot: &Snapshot, observed: &Observed) -> GcRound {
        let d = decide(
            &self.memory,
            &snapshot.blocks,
            &observed.pods,
            &observed.sets,
        );
        self.memory = d.memory;
        let mut round = GcRound {
            blocks: snapshot.blocks.len(),
            allocations: snapshot
                .blocks
                .iter()
                .map(|b| b.spec.allocations.len())
                .sum(),
            candidates: d.candidates.len(),
            ..GcRound::default()
        };
        for c in &d.candidates {
            tracing::debug!(allocation = %c.id, reason = %c.reason, "allocation stale; released next round if still stale");
        }
        let mut by_block: BTreeMap<&str, Vec<&Release>> = BTreeMap::new();
        for r in &d.release {
            by_block.entry(r.id.block.as_str()).or_default().push(r);
        }
        for block in &snapshot.blocks {
            let name = block.name_any();
            let Some(rels) = by_block.get(name.as_str()) else {
                continue;
            };
            let gone: BTreeSet<(u8, &Owner)> =
                rels.iter().map(|r| (r.id.offset, &r.id.owner)).collect();
            let mut updated = block.clone();
            updated
                .spec
                .allocations
                .retain(|a| !gone.contains(&(a.offset, &a.owner)));
            match self
                .blocks
                .replace(&name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => {
                    for r in rels {
                        tracing::info!(allocation = %r.id, reason = %r.reason, "address released");
                        round.released.push((*r).clone());
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(block = %name, "block written since the snapshot; skipped this round");
                    round.conflicts.push(name);
                }
                // Deleted since the snapshot: nothing left to release.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(block = %name, error = %e, "releasing addresses failed");
                    round.failed.push((name, e));
                }
            }
        }
        round
    }

    /// One whole round. On error nothing was released and the memory is
    /// unchanged.
    pub async fn round(&mut self) -> Result<GcRound, GcError> {
        let snapshot = self.snapshot().await?;
        let observed = self.observe().await?;
        Ok(self.finish(&snapshot, &observed).await)
    }

    /// Runs a round every [`GcConfig::interval`] (the first right away)
    /// until `shutdown` completes. A failed round is logged and the next
    /// one runs on schedule.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ticks = tokio::time::interval(self.config.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                _ = ticks.tick() => {
                    match self.round().await {
                        Ok(r) => tracing::debug!(
                            blocks = r.blocks,
                            allocations = r.allocations,
                            candidates = r.candidates,
                            released = r.released.len(),
                            conflicts = r.conflicts.len(),
                            failed = r.failed.len(),
                            "gc round done"
                        ),
                        Err(e) => tracing::warn!(error = %e, "gc round aborted; nothing released"),
                    }
                }
            }
        }
    }
}

/// Every object of `api`, page by page; any failing page fails the whole
/// list (a partial list is never used).
async fn list_all<K>(api: &Api<K>, resource: &'static str) -> Result<Vec<K>, GcError>
where
    K: Clone + DeserializeOwned + fmt::Debug,
{
    let mut items = Vec::new();
    let mut lp = ListParams::default().limit(PAGE);
    loop {
        let page = api
            .list(&lp)
            .await
            .map_err(|source| GcError::List { resource, source })?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use spur_core::ipamblock::{BlockAllocation, IPAMBlockSpec};

    fn block(name: &str, allocs: &[(u8, Owner)]) -> IPAMBlock {
        IPAMBlock::new(
            name,
            IPAMBlockSpec {
                pool: "p".into(),
                cidr: "10.10.1.0/26".into(),
                node: "node-a".into(),
                allocations: allocs
                    .iter()
                    .map(|(o, w)| BlockAllocation {
                        offset: *o,
                        owner: w.clone(),
                    })
                    .collect(),
            },
        )
    }

    fn pod(ns: &str, name: &str, uid: &str) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            reported: BTreeMap::new(),
        }
    }

    fn set(ns: &str, name: &str, start: u32, replicas: u32) -> StatefulSetView {
        StatefulSetView {
            namespace: ns.into(),
            name: name.into(),
            start,
            replicas,
        }
    }

    /// Runs rounds over the same inputs; the last decision.
    fn rounds(
        n: usize,
        m: &mut GcMemory,
        blocks: &[IPAMBlock],
        pods: &[PodView],
        sets: &[StatefulSetView],
    ) -> Decision {
        let mut last = None;
        for _ in 0..n {
            let d = decide(m, blocks, pods, sets);
            *m = d.memory.clone();
            last = Some(d);
        }
        last.unwrap()
    }

    #[test]
    fn a_gone_pod_is_released_on_the_second_round_only() {
        let b = [block("b", &[(2, Owner::pod("ns", "web", "c1", "eth1"))])];
        let mut m = GcMemory::default();
        let d = rounds(1, &mut m, &b, &[], &[]);
        assert!(d.release.is_empty());
        assert_eq!(d.candidates.len(), 1);
        assert_eq!(d.candidates[0].reason, Reason::PodGone);
        let d = rounds(1, &mut m, &b, &[], &[]);
        assert_eq!(d.release.len(), 1);
        assert_eq!(d.release[0].id.offset, 2);
        assert_eq!(d.release[0].reason, Reason::PodGone);
    }

    #[test]
    fn a_live_pod_is_never_released() {
        let b = [block("b", &[(2, Owner::pod("ns", "web", "c1", "eth1"))])];
        let mut m = GcMemory::default();
        let d = rounds(5, &mut m, &b, &[pod("ns", "web", "u1")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
        // Same name in another namespace does not keep it.
        let mut m = GcMemory::default();
        let d = rounds(2, &mut m, &b, &[pod("other", "web", "u1")], &[]);
        assert_eq!(d.release.len(), 1);
    }

    #[test]
    fn staleness_must_be_consecutive() {
        let b = [block("b", &[(2, Owner::pod("ns", "web", "c1", "eth1"))])];
        let mut m = GcMemory::default();
        rounds(1, &mut m, &b, &[], &[]);
        // The Pod shows up (a slow list elsewhere): no longer a candidate.
        let d = rounds(1, &mut m, &b, &[pod("ns", "web", "u1")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
        let d = rounds(1, &mut m, &b, &[], &[]);
        assert!(d.release.is_empty(), "stale once again: candidate only");
    }

    #[test]
    fn a_new_owner_at_the_same_offset_starts_over() {
        let mut m = GcMemory::default();
        rounds(
            1,
            &mut m,
            &[block("b", &[(2, Owner::pod("ns", "a", "c1", "eth1"))])],
            &[],
            &[],
        );
        let d = rounds(
            1,
            &mut m,
            &[block("b", &[(2, Owner::pod("ns", "b", "c2", "eth1"))])],
            &[],
            &[],
        );
        assert!(d.release.is_empty());
    }

    #[test]
    fn a_recreated_pod_frees_the_old_allocation() {
        let b = [block("b", &[(2, Owner::pod("ns", "web", "c1", "eth1"))])];
        let mut m = GcMemory::default();
        rounds(1, &mut m, &b, &[pod("ns", "web", "u1")], &[]);
        let d = rounds(1, &mut m, &b, &[pod("ns", "web", "u2")], &[]);
        assert!(d.release.is_empty());
        assert_eq!(
            d.candidates[0].reason,
            Reason::PodReplaced {
                old_uid: "u1".into(),
                new_uid: "u2".into()
            }
        );
        let d = rounds(1, &mut m, &b, &[pod("ns", "web", "u2")], &[]);
        assert_eq!(d.release.len(), 1);
    }

    #[test]
    fn a_recorded_pod_uid_decides_without_memory() {
        let old = Owner::pod("ns", "web", "c1", "eth1").with_pod_uid("u1");
        let b = [block("b", &[(2, old.clone())])];
        // A collector with no memory (a new leader) sees the Pod with
        // another UID: stale from the first round, released on the second.
        let mut m = GcMemory::default();
        let d = rounds(1, &mut m, &b, &[pod("ns", "web", "u2")], &[]);
        assert!(d.release.is_empty());
        assert_eq!(
            d.candidates.iter().map(|r| &r.reason).collect::<Vec<_>>(),
            [&Reason::PodReplaced {
                old_uid: "u1".into(),
                new_uid: "u2".into()
            }]
        );
        let d = rounds(1, &mut m, &b, &[pod("ns", "web", "u2")], &[]);
        assert_eq!(d.release.len(), 1);
        assert_eq!(d.release[0].id.owner, old);
        // The recorded UID beats what an earlier round saw.
        let mut m = GcMemory::default();
        rounds(1, &mut m, &b, &[pod("ns", "web", "u0")], &[]);
        let d = rounds(3, &mut m, &b, &[pod("ns", "web", "u1")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
        // The same UID: live, kept; a Pod without UID tells nothing.
        let mut m = GcMemory::default();
        let d = rounds(3, &mut m, &b, &[pod("ns", "web", "u1")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
        let mut m = GcMemory::default();
        let d = rounds(3, &mut m, &b, &[pod("ns", "web", "")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
        // Gone is gone, UID or not.
        let mut m = GcMemory::default();
        let d = rounds(2, &mut m, &b, &[], &[]);
        assert_eq!(d.release[0].reason, Reason::PodGone);
    }

    #[test]
    fn an_allocation_first_seen_with_the_new_uid_is_kept() {
        // Never saw the old UID: cannot tell, keep.
        let b = [block("b", &[(2, Owner::pod("ns", "web", "c1", "eth1"))])];
        let mut m = GcMemory::default();
        let d = rounds(4, &mut m, &b, &[pod("ns", "web", "u2")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
        // A Pod without UID tells nothing either.
        let mut m = GcMemory::default();
        rounds(1, &mut m, &b, &[pod("ns", "web", "")], &[]);
        let d = rounds(3, &mut m, &b, &[pod("ns", "web", "u2")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
    }

    #[test]
    fn a_newer_container_of_the_same_pod_supersedes_the_older() {
        let old = (2, Owner::pod("ns", "web", "c1", "eth1"));
        let new = (3, Owner::pod("ns", "web", "c2", "eth1"));
        let other_if = (4, Owner::pod("ns", "web", "c2", "eth2"));
        let p = [pod("ns", "web", "u1")];
        let mut m = GcMemory::default();
        rounds(
            1,
            &mut m,
            &[block("b", std::slice::from_ref(&old))],
            &p,
            &[],
        );
        let both = [block("b", &[old.clone(), new.clone(), other_if])];
        let d = rounds(1, &mut m, &both, &p, &[]);
        assert_eq!(d.candidates.len(), 1);
        assert_eq!(d.candidates[0].id.offset, 2);
        assert_eq!(
            d.candidates[0].reason,
            Reason::ContainerReplaced { by: "c2".into() }
        );
        let d = rounds(1, &mut m, &both, &p, &[]);
        assert_eq!(d.release.len(), 1);
        assert_eq!(d.release[0].id.offset, 2);
    }

    #[test]
    fn first_seen_together_the_network_status_names_the_current_container() {
        // A new leader (no memory) finds the old sandbox's address next to
        // the new one's; the annotation reports the new one's.
        let b = [block(
            "b",
            &[
                (2, Owner::pod("ns", "web", "c1", "eth1")),
                (3, Owner::pod("ns", "web", "c2", "eth1")),
            ],
        )];
        let with = |ips: &[&str]| {
            let mut p = pod("ns", "web", "u1");
            p.reported.insert(
                "eth1".into(),
                ips.iter().map(|i| i.parse().unwrap()).collect(),
            );
            p
        };
        let mut m = GcMemory::default();
        let d = rounds(2, &mut m, &b, &[with(&["10.10.1.3"])], &[]);
        assert_eq!(d.release.len(), 1, "{d:?}");
        assert_eq!(d.release[0].id.offset, 2);
        assert_eq!(
            d.release[0].reason,
            Reason::ContainerReplaced { by: "c2".into() }
        );
        // An annotation matching neither (an ADD in flight), or both, or
        // another interface only, decides nothing.
        for ips in [&["10.10.1.9"][..], &["10.10.1.2", "10.10.1.3"], &[]] {
            let mut m = GcMemory::default();
            let d = rounds(3, &mut m, &b, &[with(ips)], &[]);
            assert!(
                d.release.is_empty() && d.candidates.is_empty(),
                "{ips:?}: {d:?}"
            );
        }
    }

    #[test]
    fn the_network_status_of_a_pod_is_read_by_interface() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "annotations": {
                NETWORK_STATUS_ANNOTATION: r#"[{"name":"k8s-pod-network","interface":"eth0","ips":["10.244.0.5"],"default":true},{"name":"ns/vlan100","interface":"eth1","ips":["10.10.1.3","fd00::3"]}]"#
            }}
        }))
        .unwrap();
        let v = PodView::of(&pod);
        assert_eq!(v.reported["eth1"].len(), 2);
        assert!(v.reported.contains_key("eth0"));
        let bare: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        assert!(PodView::of(&bare).reported.is_empty());
    }

    #[test]
    fn two_containers_first_seen_together_are_kept() {
        let b = [block(
            "b",
            &[
                (2, Owner::pod("ns", "web", "c1", "eth1")),
                (3, Owner::pod("ns", "web", "c2", "eth1")),
            ],
        )];
        let mut m = GcMemory::default();
        let d = rounds(4, &mut m, &b, &[pod("ns", "web", "u1")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
    }

    #[test]
    fn dual_stack_allocations_of_one_container_are_kept() {
        let o = Owner::pod("ns", "web", "c1", "eth1");
        let b = [
            block("v4", &[(2, o.clone())]),
            block("v6", &[(5, o.clone())]),
        ];
        let mut m = GcMemory::default();
        let d = rounds(3, &mut m, &b, &[pod("ns", "web", "u1")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
    }

    fn sts(ordinal: u32) -> Owner {
        Owner::stateful_set("ns", "db", ordinal, "eth1", &format!("db-{ordinal}"), "c1")
    }

    #[test]
    fn statefulset_ordinals_in_range_are_kept_without_a_pod() {
        let b = [block("b", &[(2, sts(0)), (3, sts(2))])];
        let mut m = GcMemory::default();
        let d = rounds(4, &mut m, &b, &[], &[set("ns", "db", 0, 3)]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
    }

    #[test]
    fn statefulset_scaled_below_an_ordinal_frees_it() {
        let b = [block("b", &[(2, sts(0)), (3, sts(2))])];
        let mut m = GcMemory::default();
        let d = rounds(2, &mut m, &b, &[], &[set("ns", "db", 0, 2)]);
        assert_eq!(d.release.len(), 1);
        assert_eq!(d.release[0].id.offset, 3);
        assert_eq!(
            d.release[0].reason,
            Reason::ScaledDown {
                start: 0,
                replicas: 2
            }
        );
    }

    #[test]
    fn statefulset_start_ordinal_counts() {
        let b = [block("b", &[(2, sts(0)), (3, sts(5))])];
        let mut m = GcMemory::default();
        let d = rounds(2, &mut m, &b, &[], &[set("ns", "db", 5, 1)]);
        assert_eq!(d.release.len(), 1);
        assert_eq!(d.release[0].id.offset, 2);
    }

    #[test]
    fn a_terminating_ordinal_pod_keeps_its_address() {
        let b = [block("b", &[(3, sts(2))])];
        let mut m = GcMemory::default();
        let d = rounds(
            4,
            &mut m,
            &b,
            &[pod("ns", "db-2", "u")],
            &[set("ns", "db", 0, 2)],
        );
        assert!(d.release.is_empty() && d.candidates.is_empty());
        // Deleted StatefulSet (orphaned Pods live on): kept too.
        let d = rounds(4, &mut m, &b, &[pod("ns", "db-2", "u")], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
    }

    #[test]
    fn a_deleted_statefulset_frees_every_ordinal() {
        let b = [block("b", &[(2, sts(0)), (3, sts(1))])];
        let mut m = GcMemory::default();
        let d = rounds(2, &mut m, &b, &[], &[set("other", "db", 0, 3)]);
        assert_eq!(d.release.len(), 2);
        assert!(d
            .release
            .iter()
            .all(|r| r.reason == Reason::StatefulSetGone));
    }

    #[test]
    fn an_inconsistent_statefulset_owner_is_kept() {
        let mut o = sts(0);
        o.ordinal = None;
        let b = [block("b", &[(2, o)])];
        let mut m = GcMemory::default();
        let d = rounds(3, &mut m, &b, &[], &[]);
        assert!(d.release.is_empty() && d.candidates.is_empty());
    }

    #[test]
    fn keeps_handles_the_top_of_the_range() {
        let s = set("ns", "db", u32::MAX, 1);
        assert!(s.keeps(u32::MAX));
        assert!(!s.keeps(u32::MAX - 1));
        assert!(!set("ns", "db", 0, 0).keeps(0));
    }

    #[test]
    fn default_interval_is_a_minute() {
        assert_eq!(GcConfig::default().interval, Duration::from_secs(60));
    }

    fn arb_owner() -> impl Strategy<Value = Owner> {
        prop_oneof![
            (0..4u8, 0..3u8, 0..2u8).prop_map(|(p, c, i)| Owner::pod(
                "ns",
                &format!("p{p}"),
                &format!("c{c}"),
                &format!("eth{i}")
            )),
            (0..2u8, 0..4u32).prop_map(|(s, o)| Owner::stateful_set(
                "ns",
                &format!("s{s}"),
                o,
                "eth1",
                &format!("s{s}-{o}"),
                "c"
            )),
        ]
    }

    #[derive(Debug, Clone)]
    struct World {
        allocs: Vec<(u8, Owner)>,
        pods: Vec<PodView>,
        sets: Vec<StatefulSetView>,
    }

    fn arb_world() -> impl Strategy<Value = World> {
        (
            proptest::collection::vec((0..8u8, arb_owner()), 0..8),
            proptest::collection::vec((0..6u8, 0..2u8), 0..6),
            proptest::collection::vec((0..2u8, 0..4u32), 0..2),
        )
            .prop_map(|(allocs, pods, sets)| World {
                allocs,
                pods: pods
                    .into_iter()
                    .map(|(p, u)| {
                        let name = if p < 4 {
                            format!("p{p}")
                        } else {
                            format!("s{}-{}", p - 4, u)
                        };
                        pod("ns", &name, &format!("u{u}"))
                    })
                    .collect(),
                sets: sets
                    .into_iter()
                    .map(|(s, r)| set("ns", &format!("s{s}"), 0, r))
                    .collect(),
            })
    }

    fn dedup_pods(mut pods: Vec<PodView>) -> Vec<PodView> {
        let mut names = BTreeSet::new();
        pods.retain(|p| names.insert(p.name.clone()));
        pods
    }

    proptest! {
        /// Over any sequence of rounds: only allocations stale in two
        /// consecutive rounds are released; a Pod owner whose Pod is listed
        /// with the UID it had when first seen is never released; a
        /// StatefulSet ordinal still kept, or whose Pod is listed, never is.
        #[test]
        fn releases_are_never_of_live_holders(worlds in proptest::collection::vec(arb_world(), 1..5)) {
            let mut m = GcMemory::default();
            let mut first_uid: BTreeMap<AllocationId, String> = BTreeMap::new();
            let mut prev_stale: BTreeSet<AllocationId> = BTreeSet::new();
            for w in worlds {
                let pods = dedup_pods(w.pods);
                let b = [block("b", &w.allocs)];
                let d = decide(&m, &b, &pods, &w.sets);
                for r in &d.release {
                    prop_assert!(prev_stale.contains(&r.id), "released without being a candidate: {}", r.id);
                    let o = &r.id.owner;
                    match o.kind {
                        OwnerKind::Pod => {
                            if let Some(p) = pods.iter().find(|p| p.name == o.pod) {
                                if let Some(u) = first_uid.get(&r.id) {
                                    if *u == p.uid {
                                        let ok = matches!(r.reason, Reason::ContainerReplaced { .. });
                                        prop_assert!(ok, "live pod freed: {:?}", r);
                                    }
                                }
                            }
                        }
                        OwnerKind::StatefulSet => {
                            let ord = o.ordinal.unwrap();
                            prop_assert!(!w.sets.iter().any(|s| s.name == o.name && s.keeps(ord)));
                            prop_assert!(!pods.iter().any(|p| p.name == o.pod));
                        }
                    }
                }
                first_uid.retain(|id, _| d.memory.seen.contains_key(id));
                for (id, s) in &d.memory.seen {
                    if let Some(u) = &s.pod_uid {
                        first_uid.entry(id.clone()).or_insert_with(|| u.clone());
                    }
                }
                prev_stale = d.memory.stale.keys().cloned().collect();
                m = d.memory;
            }
        }
    }
}
