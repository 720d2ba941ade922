//! IP address management on the node: allocation state sharded in
//! IPAMBlock objects, read from a watch-fed cache, written with optimistic
//! concurrency.
//!
//! - Reads rarely go to the API on the allocation path: [`IpamCache`] keeps
//!   every IPPool and the node's own IPAMBlocks (a label-selected watch:
//!   agents do not receive each other's allocation writes), and the pure
//!   planner of `spur-core` ([`spur_core::allocator::PoolBlocks::plan`])
//!   decides from it. Other nodes' blocks are read only when needed (see
//!   *Other nodes' blocks* under [`Ipam`]).
//! - Blocks carry the labels `spur.dev/node` and `spur.dev/pool`
//!   ([`spur_core::ipamblock::block_labels`]), set when the agent creates
//!   one (and added by its next update to a block an older agent created
//!   without them; the controller's usage reconciler labels such blocks
//!   too).
//! - A node claims a block by creating it with its first allocation inside
//!   (one write; `AlreadyExists` means another node won: refresh, re-plan)
//!   and afterwards updates it with `PUT` and the resourceVersion it last
//!   saw. Every object a write returns goes straight into the cache.
//! - A `409 Conflict` refreshes that one block with a GET (the exception
//!   path) and re-plans after an exponential backoff with jitter.
//! - Allocations are serialized per pool inside one agent, and operations
//!   per owner, so concurrent ADDs on one node never conflict with each
//!   other. The per-owner lock of a Pod owner is keyed on the Pod's
//!   namespace, name and interface *without* the container ID, so two
//!   sandboxes of one Pod interface (a new sandbox's ADD, the old one's
//!   late DEL or a retried ADD) are serialized too.
//! - A new sandbox of a Pod takes over the addresses its previous sandbox
//!   holds for the interface when both owners record the same Pod UID
//!   (see [`Ipam`] and `spur_core::allocator`).
//!
//! See [`Ipam`] for the semantics of a request and for what happens when
//! the API does not answer.

mod cache;
mod error;
mod locks;
pub mod show;
mod versioned;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use ipnet::IpNet;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use rand_chacha::ChaCha8Rng;
use spur_core::allocator::{BlockState, Plan};
use spur_core::ipam::{block_name, offset_of, window_of};
use spur_core::ipamblock::{
    block_labels, label_value, missing_block_labels, IPAMBlock, Owner, OwnerKey, POOL_LABEL,
};
use spur_core::ippool::PoolLayout;
use spur_core::pool::Family;
use tokio::time::{timeout, timeout_at, Instant};

pub use cache::IpamCache;
pub use error::IpamError;
pub use spur_core::backoff::{jitter_rng, Backoff, RetryPolicy};
pub use versioned::rv_newer;

use cache::{CacheState, PoolIndex};
use locks::{KeyedGuard, KeyedLocks};

/// Bounds and retry behaviour of [`Ipam`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The longest an [`Ipam::allocate`], [`Ipam::release`] or
    /// [`Ipam::settle`] call takes, undoing included (default 10 s). Four
    /// fifths of it go to the work, the rest to undoing a partial
    /// allocation.
    pub timeout: Duration,
    /// The longest one API request may take (default 5 s; never beyond
    /// what is left of `timeout`).
    pub request_timeout: Duration,
    /// How writes are retried.
    pub retry: RetryPolicy,
    /// Seed of the jitter RNG of the writes' retries and of the cache's
    /// watch restarts (`None`: random per process).
    pub seed: Option<u64>,
    /// The node the agent runs on: [`Ipam::start`] watches only its blocks
    /// from the start. `None`: the cache watches every block until the
    /// first [`Ipam::allocate`], whose [`AllocateRequest::node`] then
    /// narrows the watch ([`IpamCache::narrow_to`]). Agents should set it.
    pub node: Option<String>,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            seed: None,
            node: None,
        }
    }
}

/// What an interface needs addresses for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateRequest {
    /// The node the agent runs on (blocks are claimed for it).
    pub node: String,
    /// Who the addresses are for.
    pub owner: Owner,
    /// IPPools to allocate from, in order of preference.
    pub pools: Vec<String>,
    /// Addresses asked for (`ipam.spur.dev/pod-ips`): at most one per IP
    /// family.
    pub addresses: Vec<IpAddr>,
}

impl AllocateRequest {
    /// A request for any address of `pools`.
    pub fn new<S: Into<String>>(
        node: impl Into<String>,
        owner: Owner,
        pools: impl IntoIterator<Item = S>,
    ) -> AllocateRequest {
        AllocateRequest {
            node: node.into(),
            owner,
            pools: pools.into_iter().map(Into::into).collect(),
            addresses: Vec::new(),
        }
    }

    /// Asks for `ip` in its family.
    pub fn with_address(mut self, ip: IpAddr) -> AllocateRequest {
        self.addresses.push(ip);
        self
    }
}

/// One address handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The pool it came from.
    pub pool: String,
    /// The address with the pool's prefix length (`10.10.1.5/24`).
    pub address: IpNet,
    /// The pool's gateway.
    pub gateway: IpAddr,
    /// The pool's VLAN (0: untagged or unset).
    pub vlan: u16,
    /// When this call took the address over from a dead sandbox of the same
    /// Pod: the owner the record named before. [`Ipam::undo`] gives the
    /// record back to it.
    pub taken_over_from: Option<Owner>,
}

impl Allocated {
    /// The bare address.
    pub fn ip(&self) -> IpAddr {
        self.address.addr()
    }
}

/// Work left over from calls that failed while the API was unavailable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingWork {
    /// Writes whose outcome is unknown (no answer, 5xx).
    pub doubtful_writes: usize,
    /// Addresses of failed calls still to be released.
    pub orphans: usize,
}

/// A block write.
#[derive(Debug, Clone)]
enum Write {
    /// Claim: create the block (create-if-absent).
    Create(IPAMBlock),
    /// Update with the resourceVersion in the object as precondition.
    Replace(IPAMBlock),
}

impl Write {
    fn object(&self) -> &IPAMBlock {
        match self {
            Write::Create(o) | Write::Replace(o) => o,
        }
    }

    fn name(&self) -> &str {
        self.object().metadata.name.as_deref().unwrap_or_default()
    }

    /// The resourceVersion the write was built from.
    fn based_on(&self) -> Option<&str> {
        self.object().metadata.resource_version.as_deref()
    }

    fn describe(&self) -> String {
        match self {
            Write::Create(_) => format!("create of IPAMBlock {}", self.name()),
            Write::Replace(_) => format!(
                "update of IPAMBlock {} at resourceVersion {}",
                self.name(),
                self.based_on().unwrap_or("?")
            ),
        }
    }
}

/// A write sent whose outcome is not known yet.
#[derive(Debug, Clone)]
struct Doubt {
    id: u64,
    write: Write,
    /// The owner whose allocation the write adds or removes.
    owner: Option<OwnerKey>,
}

/// An address a failed call allocated or took over (or may have) and that
/// must go back: released, or, for a takeover, its record given back to
/// the previous holder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Orphan {
    key: OwnerKey,
    ip: IpAddr,
    /// The owner the record named before the call took it over.
    restore: Option<Owner>,
}

/// What a call wrote for its owner and undoes when it fails: the owner's
/// key, the address, and for a takeover the previous holder.
type Fresh = (OwnerKey, IpAddr, Option<Owner>);

#[derive(Debug, Default)]
struct Pending {
    next_id: u64,
    doubts: BTreeMap<String, Vec<Doubt>>,
    orphans: BTreeMap<String, Vec<Orphan>>,
}

/// What a write's answer means.
#[derive(Debug)]
enum Sent {
    /// Stored: the object as the API returned it.
    Stored(Box<IPAMBlock>),
    /// 409 (stale resourceVersion or AlreadyExists): not applied.
    Conflict,
    /// 404 on update: the block is gone; not applied.
    NotFound,
    /// 429: not applied, retry later.
    Busy(String),
    /// No answer, a transport error or 5xx: may or may not be applied.
    Unknown(String),
    /// Refused for good (RBAC, admission, missing CRD): not applied.
    Refused { code: u16, message: String },
}

fn classify(e: kube::Error) -> Sent {
    match e {
        kube::Error::Api(s) => match s.code {
            409 => Sent::Conflict,
            404 => Sent::NotFound,
            429 => Sent::Busy(format!("429 {}", s.message)),
            c if c >= 500 => Sent::Unknown(format!("{c} {}", s.message)),
            code => Sent::Refused {
                code,
                message: s.message,
            },
        },
        other => Sent::Unknown(other.to_string()),
    }
}

/// What one planning step decided.
enum Decision<T> {
    /// Nothing to write.
    Done(T),
    /// Write a block.
    Write(Box<Planned<T>>),
}

/// A block write decided by the planner.
struct Planned<T> {
    /// The block's window.
    base: u128,
    /// The block as it is to be stored.
    state: BlockState,
    /// The answer once stored.
    then: T,
    /// The allocation the write adds or takes over for the call (undone
    /// if the call fails).
    fresh: Option<Fresh>,
    /// The owner whose allocation the write adds or removes.
    owner: Option<OwnerKey>,
}

enum Prepared<T> {
    Done(T),
    Write(Box<Ready<T>>),
}

/// A write ready to send.
struct Ready<T> {
    write: Write,
    then: T,
    fresh: Option<Fresh>,
    owner: Option<OwnerKey>,
}

enum Attempt<T> {
    Done(T),
    /// Conflict or vanished block: re-plan.
    Again,
    /// A create found the window claimed by a block the cache did not know
    /// (another node's): it is read now; re-plan at once.
    Discovered,
}

/// Outcome in one pool.
enum PoolOutcome {
    Got(IpAddr),
    Exhausted,
    NotInPool,
    /// Only other nodes' blocks could serve (borrowing), or none: LIST the
    /// pool's blocks first (the cache does not watch other nodes' blocks).
    NeedList,
}

/// How many windows found claimed by unknown blocks (create answered
/// AlreadyExists) one write is re-planned over before it counts as a
/// conflict; after [`LIST_AFTER_DISCOVERIES`] of them the pool's blocks are
/// listed instead of read one by one.
const MAX_DISCOVERIES: u32 = 8;

/// See [`MAX_DISCOVERIES`].
const LIST_AFTER_DISCOVERIES: u32 = 2;

/// Allocations a call made; whatever is still listed when the call ends
/// without success becomes an orphan (also when the call's future is
/// dropped by a timeout).
struct CallGuard<'a> {
    ipam: &'a Ipam,
    fresh: Vec<(String, Fresh)>,
    armed: bool,
    /// Pools whose blocks this call listed (at most once per pool).
    listed: BTreeSet<String>,
}

impl CallGuard<'_> {
    fn add(&mut self, pool: &str, fresh: &Fresh) {
        let item = (pool.to_string(), fresh.clone());
        if !self.fresh.contains(&item) {
            self.fresh.push(item);
        }
    }

    fn remove(&mut self, pool: &str, key: &OwnerKey, ip: IpAddr) {
        self.fresh
            .retain(|(p, (k, i, _))| !(p == pool && k == key && *i == ip));
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.armed || self.fresh.is_empty() {
            return;
        }
        let mut pending = self.ipam.pending();
        for (pool, (key, ip, restore)) in self.fresh.drain(..) {
            tracing::info!(pool = %pool, address = %ip, "allocation of a failed call is left for release");
            let list = pending.orphans.entry(pool).or_default();
            let o = Orphan { key, ip, restore };
            if !list.contains(&o) {
                list.push(o);
            }
        }
    }
}

/// The block after releasing `ip` held by `key`, or nothing to do.
fn release_decision(ix: &PoolIndex, key: &OwnerKey, ip: IpAddr) -> Decision<bool> {
    let base = window_of(ip);
    let offset = offset_of(ip);
    let Some(mut b) = ix.blocks.block(base).cloned() else {
        return Decision::Done(false);
    };
    if b.owners.get(&offset).is_none_or(|o| o.key() != *key) {
        return Decision::Done(false);
    }
    b.owners.remove(&offset);
    b.used &= !(1u64 << offset);
    Decision::Write(Box::new(Planned {
        base,
        state: b,
        then: true,
        fresh: None,
        owner: Some(key.clone()),
    }))
}

/// Undoes what a failed call did to `ip` for `key`: releases it, or, for a
/// takeover, gives the record back to the owner it named before
/// (`restore`). Nothing to do when `key` no longer holds it.
fn undo_decision(
    ix: &PoolIndex,
    key: &OwnerKey,
    ip: IpAddr,
    restore: Option<&Owner>,
) -> Decision<bool> {
    let Some(previous) = restore else {
        return release_decision(ix, key, ip);
    };
    let base = window_of(ip);
    let offset = offset_of(ip);
    let Some(mut b) = ix.blocks.block(base).cloned() else {
        return Decision::Done(false);
    };
    if b.owners.get(&offset).is_none_or(|o| o.key() != *key) {
        return Decision::Done(false);
    }
    b.owners.insert(offset, previous.clone());
    Decision::Write(Box::new(Planned {
        base,
        state: b,
        then: true,
        fresh: None,
        owner: Some(key.clone()),
    }))
}

/// The key the per-owner lock of `key` is taken on: a Pod owner's without
/// its container ID, so that every operation on one Pod interface (two
/// sandboxes' ADDs, a late DEL of the older one) is serialized in this
/// agent and a takeover never runs beside the other sandbox's allocation
/// or release of the same interface. Operations of different Pods (and of
/// a Pod and a recreated Pod of the same name, which merely wait for each
/// other) are unaffected. StatefulSet keys already name no container.
fn lock_key(key: &OwnerKey) -> OwnerKey {
    match key {
        OwnerKey::Pod(ns, pod, _, interface) => {
            OwnerKey::Pod(ns.clone(), pod.clone(), String::new(), interface.clone())
        }
        other => other.clone(),
    }
}

/// The agent's allocator.
///
/// # A request
///
/// [`Ipam::allocate`] tries the request's pools in order and hands out one
/// address per IP family: once a family has an address, later pools of it
/// are skipped; an exhausted pool is skipped; when every pool of a family is
/// exhausted the error names them all. A requested address is honoured, or
/// refused naming its holder, or refused when no listed pool of its family
/// hands it out. The call is idempotent per owner (a retry returns the same
/// addresses; a StatefulSet ordinal's record is rewritten when a new Pod
/// uses it) and all or nothing: when a family fails, what the call
/// allocated in the others is released before it returns, and a record it
/// took over (below) is given back to its previous holder.
///
/// # A new sandbox of the same Pod (takeover)
///
/// A Pod owner's identity includes the container (sandbox) ID. When a
/// sandbox dies without a DEL (node reboot, an agent crash in the middle of
/// an ADD) the kubelet creates another one with a new ID. An owner that
/// records the Pod's UID ([`Owner::pod_uid`]) takes over, in each pool, the
/// allocation of a Pod owner with the same namespace, Pod name, interface
/// and UID under another container: the record is rewritten to the new
/// container and the address is kept (also when it is a requested fixed
/// address; held by anyone else, a requested address is refused as
/// before). The older sandbox's late DEL releases by its own key and finds
/// nothing once the record names the new container; a DEL of the new
/// container frees the address. Records without a UID are never taken
/// over. The per-owner lock is taken on the Pod interface without the
/// container ID, so a takeover and the other sandbox's ADD or DEL of the
/// same interface never interleave in one agent; across agents (a Pod is
/// on one node at a time) the blocks' optimistic concurrency orders them.
///
/// # Other nodes' blocks
///
/// The cache watches only the node's own blocks (see [`IpamCache`]), so an
/// allocation plans over the node's blocks plus whatever of other nodes'
/// blocks the agent has read (*foreign* blocks, possibly stale):
///
/// - *Claiming a window.* The planner picks a window it believes free and
///   the block is created with a deterministic name (create-if-absent). A
///   409 AlreadyExists means another node claimed it: the block is read
///   with a GET, kept as foreign, and the call re-plans at once (the next
///   window). After two such surprises in one write the pool's blocks are
///   listed instead; after eight they count as conflicts (backoff, bounded
///   attempts).
/// - *Borrowing.* When the node's blocks have no free address and no
///   window is believed free (the plan would borrow from another node's
///   block, or the pool looks exhausted), the pool's blocks are listed
///   (label `spur.dev/pool`; at most one LIST per pool per call) and the
///   call re-plans over them: it claims a window the list shows free, or
///   borrows from a foreign block. The exhaustion pre-check lists the same
///   way before it refuses.
/// - *A requested address* in a window whose block is not known to be the
///   node's: that block is read with a GET first.
/// - Foreign blocks written to stay in the cache; a later write to one
///   carries the resourceVersion last read, so a stale view costs a 409,
///   after which the block is read again (GET) before the next attempt.
/// - *Release.* [`Ipam::release`] looks in the node's blocks and in the
///   foreign blocks the cache holds (those the agent borrowed from, read or
///   listed). It never lists every pool for an owner it does not find (a
///   DEL of a container that never allocated is common): an allocation in
///   another node's block that a restarted agent no longer knows is
///   collected by the controller's garbage collection.
///
/// # When the API does not answer
///
/// Every call is bounded by [`IpamConfig::timeout`] (a `tokio::time::timeout`
/// around the whole call, and per request) and then fails with
/// [`IpamError::Unavailable`], CNI code 11. Nothing half-allocated stays
/// behind, by two records kept in memory and worked off, under the pool's
/// lock, before any later operation on the pool plans anything:
///
/// 1. *Doubtful writes.* A write is recorded before it is sent and the
///    record is dropped only on an answer that says whether it was applied
///    (2xx yes; 409, 404, 4xx no). A timeout, a transport error or a 5xx
///    leaves the record. The next operation on the pool first re-sends the
///    recorded write verbatim, with the same resourceVersion precondition
///    (or as the same create). Optimistic concurrency makes that re-send
///    settle the question: if the block still has the version the write was
///    built on, the original was not applied and now never can be (the
///    re-send moves the version on); if the block has moved on, or exists
///    for a create, the API refuses the re-send with 409 and the block is
///    re-read with a GET, showing whether the original landed. Either way
///    the cache afterwards holds the block's true state, so the planner
///    sees the owner's allocation if there is one (`Plan::Held`) and never
///    allocates it a second address.
/// 2. *Orphans.* Each call lists the allocations it writes (before sending
///    them). When the call fails, it releases them (with the fifth of the
///    bound kept for that); whatever it cannot release, and everything
///    when its future is dropped by the timeout, is recorded as an orphan,
///    released (if the owner still holds it) after the doubts are settled.
///
/// So the state after a call that failed with code 11 is: the owner holds
/// in the API exactly what it held before the call, or, while the API is
/// still unreachable, possibly one address per family that the next
/// operation on that pool releases (a retried `allocate` then plans anew
/// and gets one address per family; `release` finds and frees it;
/// [`Ipam::settle`] does it without a request). The records live in this
/// process: an agent restarted while writes were in doubt relies on the
/// garbage collection of a later issue for those.
pub struct Ipam {
    api: Api<IPAMBlock>,
    cache: IpamCache,
    config: IpamConfig,
    pool_locks: KeyedLocks<String>,
    owner_locks: KeyedLocks<OwnerKey>,
    pending: Mutex<Pending>,
    rng: Mutex<ChaCha8Rng>,
}

impl std::fmt::Debug for Ipam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam")
            .field("config", &self.config)
            .field("pending", &self.pending_work())
            .finish()
    }
}

impl Ipam {
    /// An allocator writing through `client` and reading from `cache`.
    pub fn new(client: Client, cache: IpamCache, config: IpamConfig) -> Ipam {
        let rng = jitter_rng(config.seed);
        Ipam {
            api: Api::all(client),
            cache,
            config,
            pool_locks: KeyedLocks::default(),
            owner_locks: KeyedLocks::default(),
            pending: Mutex::new(Pending::default()),
            rng: Mutex::new(rng),
        }
    }

    /// An allocator with its own cache (started, not waited for: calls
    /// wait for it within their bound). Its watches restart with jitter
    /// drawn from `config.seed`.
    pub fn start(client: Client, config: IpamConfig) -> Ipam {
        let cache = match &config.node {
            Some(node) => IpamCache::start_for_node(client.clone(), config.seed, node),
            None => IpamCache::start_with(client.clone(), config.seed),
        };
        Ipam::new(client, cache, config)
    }

    /// The cache the allocator reads from.
    pub fn cache(&self) -> &IpamCache {
        &self.cache
    }

    /// The configuration.
    pub fn config(&self) -> &IpamConfig {
        &self.config
    }

    /// Work left by failed calls (see [`Ipam`]).
    pub fn pending_work(&self) -> PendingWork {
        let p = self.pending();
        PendingWork {
            doubtful_writes: p.doubts.values().map(Vec::len).sum(),
            orphans: p.orphans.values().map(Vec::len).sum(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates one address per IP family of `req.pools` for `req.owner`
    /// (see [`Ipam`] for the rules and the failure behaviour).
    pub async fn allocate(&self, req: &AllocateRequest) -> Result<Vec<Allocated>, IpamError> {
        let started = Instant::now();
        let bound = self.config.timeout;
        let key = req.owner.key();
        let _owner = self.lock_owner(&lock_key(&key), started + bound).await?;
        self.cache.narrow_to(&req.node);
        let mut guard = CallGuard {
            ipam: self,
            fresh: Vec::new(),
            armed: true,
            listed: BTreeSet::new(),
        };
        let work = async {
            let res = self
                .allocate_phase(req, started + bound.mul_f64(0.8), &mut guard)
                .await;
            if res.is_err() {
                self.rollback(&mut guard, started + bound).await;
            }
            res
        };
        let res = match timeout(bound, work).await {
            Ok(r) => r,
            Err(_) => Err(IpamError::Unavailable {
                what: format!("no answer within {bound:?}"),
            }),
        };
        if res.is_ok() {
            guard.armed = false;
        }
        if let Err(e) = &res {
            tracing::info!(owner = %req.owner, error = %e, "allocation failed");
        }
        res.map(|mut out| {
            for a in &mut out {
                a.taken_over_from = guard
                    .fresh
                    .iter()
                    .find(|(pool, (_, ip, _))| *pool == a.pool && *ip == a.ip())
                    .and_then(|(_, (_, _, restore))| restore.clone());
            }
            out
        })
    }

    /// Undoes a successful [`Ipam::allocate`] of `key` whose caller failed
    /// later (an ADD that could not finish): releases the addresses it
    /// allocated, and gives the records it took over back to the owners
    /// they named before, so the failed call leaves the IPAM as it found
    /// it. What cannot be undone now is kept and done by a later operation
    /// on the pool (or [`Ipam::settle`]). Bounded like [`Ipam::allocate`].
    pub async fn undo(&self, key: &OwnerKey, allocated: &[Allocated]) -> Result<(), IpamError> {
        let started = Instant::now();
        let deadline = started + self.config.timeout;
        let _owner = self.lock_owner(&lock_key(key), deadline).await?;
        let mut first_error = None;
        for a in allocated {
            let ip = a.ip();
            let restore = a.taken_over_from.clone();
            let done = async {
                let _lock = self.lock_pool(&a.pool, deadline).await?;
                self.mutate(&a.pool, deadline, None, |ix| {
                    Ok(undo_decision(ix, key, ip, restore.as_ref()))
                })
                .await
            };
            if let Err(e) = timeout_at(deadline, done).await.unwrap_or_else(|_| {
                Err(IpamError::Unavailable {
                    what: format!("no answer within {:?}", self.config.timeout),
                })
            }) {
                tracing::warn!(pool = %a.pool, address = %ip, error = %e, "cannot undo an allocation now; left for later");
                let o = Orphan {
                    key: key.clone(),
                    ip,
                    restore,
                };
                let mut p = self.pending();
                let list = p.orphans.entry(a.pool.clone()).or_default();
                if !list.contains(&o) {
                    list.push(o);
                }
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Releases every address `key` holds, in every pool. Succeeds with 0
    /// when it holds nothing. Bounded like [`Ipam::allocate`].
    pub async fn release(&self, key: &OwnerKey) -> Result<usize, IpamError> {
        let started = Instant::now();
        let bound = self.config.timeout;
        let deadline = started + bound;
        let _owner = self.lock_owner(&lock_key(key), deadline).await?;
        let work = async {
            self.wait_ready(deadline).await?;
            let mut pools: BTreeSet<String> = self.cache.read(|s: &CacheState| {
                s.pool_names()
                    .into_iter()
                    .filter(|p| s.pool(p).is_some_and(|ix| ix.blocks.find(key).is_some()))
                    .collect()
            });
            {
                let p = self.pending();
                for (pool, list) in &p.doubts {
                    if list.iter().any(|d| d.owner.as_ref() == Some(key)) {
                        pools.insert(pool.clone());
                    }
                }
                for (pool, list) in &p.orphans {
                    if list.iter().any(|o| o.key == *key) {
                        pools.insert(pool.clone());
                    }
                }
            }
            let mut released = 0;
            for pool in pools {
                let _lock = self.lock_pool(&pool, deadline).await?;
                self.settle_locked(&pool, deadline).await?;
                while self
                    .mutate(&pool, deadline, None, |ix| {
                        Ok(match ix.find_any(key) {
                            Some(ip) => release_decision(ix, key, ip),
                            None => Decision::Done(false),
                        })
                    })
                    .await?
                {
                    released += 1;
                }
            }
            Ok(released)
        };
        let res = match timeout(bound, work).await {
            Ok(r) => r,
            Err(_) => Err(IpamError::Unavailable {
                what: format!("no answer within {bound:?}"),
            }),
        };
        if let Err(e) = &res {
            tracing::info!(error = %e, "release failed");
        }
        res
    }

    /// Works off what failed calls left (doubtful writes, orphans) in every
    /// pool, without waiting for the next request. Bounded like
    /// [`Ipam::allocate`]; the agent runs it periodically.
    pub async fn settle(&self) -> Result<(), IpamError> {
        let bound = self.config.timeout;
        let deadline = Instant::now() + bound;
        let work = async {
            let pools: BTreeSet<String> = {
                let p = self.pending();
                p.doubts.keys().chain(p.orphans.keys()).cloned().collect()
            };
            for pool in pools {
                let _lock = self.lock_pool(&pool, deadline).await?;
                self.resolve_doubts_retrying(&pool, deadline).await?;
                self.settle_locked(&pool, deadline).await?;
            }
            Ok(())
        };
        match timeout(bound, work).await {
            Ok(r) => r,
            Err(_) => Err(IpamError::Unavailable {
                what: format!("no answer within {bound:?}"),
            }),
        }
    }

    async fn lock_owner(
        &self,
        key: &OwnerKey,
        deadline: Instant,
    ) -> Result<KeyedGuard<OwnerKey>, IpamError> {
        timeout_at(deadline, self.owner_locks.lock(key))
            .await
            .map_err(|_| IpamError::Unavailable {
                what: "another operation for the same owner is still running".into(),
            })
    }

    async fn lock_pool(
        &self,
        pool: &str,
        deadline: Instant,
    ) -> Result<KeyedGuard<String>, IpamError> {
        timeout_at(deadline, self.pool_locks.lock(&pool.to_string()))
            .await
            .map_err(|_| IpamError::Unavailable {
                what: format!("waiting for another allocation in IPPool {pool}"),
            })
    }

    async fn wait_ready(&self, deadline: Instant) -> Result<(), IpamError> {
        timeout_at(deadline, self.cache.wait_ready())
            .await
            .map_err(|_| IpamError::NotReady {
                what: "the IPPool and IPAMBlock watches have not listed yet".into(),
            })
    }

    async fn allocate_phase(
        &self,
        req: &AllocateRequest,
        deadline: Instant,
        guard: &mut CallGuard<'_>,
    ) -> Result<Vec<Allocated>, IpamError> {
        // The request's shape.
        let mut requested: BTreeMap<Family, IpAddr> = BTreeMap::new();
        for &ip in &req.addresses {
            if let Some(other) = requested.insert(Family::of(ip), ip) {
                if other != ip {
                    return Err(IpamError::InvalidRequest {
                        reason: format!(
                            "two requested addresses of one IP family ({other} and {ip}); at most one per family"
                        ),
                    });
                }
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for p in &req.pools {
            if !names.contains(&p.as_str()) {
                names.push(p);
            }
        }
        if names.is_empty() {
            return match requested.values().next() {
                Some(&ip) => Err(IpamError::RequestedNotInPools {
                    ip,
                    pools: Vec::new(),
                }),
                None => Ok(Vec::new()),
            };
        }
        self.wait_ready(deadline).await?;
        let mut layouts: Vec<PoolLayout> = Vec::with_capacity(names.len());
        for name in &names {
            layouts.push(
                self.cache
                    .layout(name)
                    .ok_or_else(|| IpamError::UnknownPool {
                        pool: name.to_string(),
                    })?,
            );
        }
        let mut families: Vec<Family> = Vec::new();
        for l in &layouts {
            if !families.contains(&l.family) {
                families.push(l.family);
            }
        }
        for (family, &ip) in &requested {
            if !families.contains(family) {
                return Err(IpamError::RequestedNotInPools {
                    ip,
                    pools: Vec::new(),
                });
            }
        }
        self.precheck_exhaustion(req, &layouts, &families, &requested, deadline, guard)
            .await?;

        let mut out = Vec::new();
        // (pool, address, its holder's key): the holder is the owner, or a
        // previous sandbox of its Pod.
        let mut moves: Vec<(String, IpAddr, OwnerKey)> = Vec::new();
        for &family in &families {
            let pools: Vec<&PoolLayout> = layouts.iter().filter(|l| l.family == family).collect();
            let want = requested.get(&family).copied();
            // An address the owner holds already in a listed pool of the
            // family (or that a previous sandbox of its Pod holds, to take
            // over) is its answer (idempotence), unless another is asked
            // for.
            let prior = pools.iter().find_map(|l| {
                self.cache
                    .find_for(&l.name, &req.owner)
                    .map(|(ip, holder)| (l.name.clone(), ip, holder))
            });
            let mut order: Vec<&PoolLayout> = Vec::with_capacity(pools.len());
            if let Some((p, ip, _)) = &prior {
                if want.is_none_or(|w| w == *ip) {
                    order.extend(pools.iter().copied().filter(|l| &l.name == p));
                }
            }
            for l in &pools {
                if !order.iter().any(|o| o.name == l.name) {
                    order.push(l);
                }
            }
            let mut exhausted = Vec::new();
            let mut got = None;
            for layout in order {
                match self
                    .in_pool(&layout.name, req, want, deadline, guard)
                    .await?
                {
                    PoolOutcome::Got(ip) => {
                        got = Some((layout, ip));
                        break;
                    }
                    PoolOutcome::Exhausted => exhausted.push(layout.name.clone()),
                    // in_pool lists and re-plans itself.
                    PoolOutcome::NotInPool | PoolOutcome::NeedList => {}
                }
            }
            let Some((layout, ip)) = got else {
                return Err(match want {
                    Some(ip) => IpamError::RequestedNotInPools {
                        ip,
                        pools: pools.iter().map(|l| l.name.clone()).collect(),
                    },
                    None => IpamError::Exhausted {
                        pools: pools.iter().map(|l| l.name.clone()).collect(),
                    },
                });
            };
            if let Some((p, old, holder)) = prior {
                if old != ip {
                    moves.push((p, old, holder));
                }
            }
            out.push(Allocated {
                pool: layout.name.clone(),
                address: layout
                    .interface_address(ip)
                    .ok_or_else(|| IpamError::UnknownPool {
                        pool: layout.name.clone(),
                    })?,
                gateway: layout.gateway,
                vlan: layout.vlan,
                taken_over_from: None,
            });
        }
        // The owner moved to a requested address: free the one it (or a
        // previous sandbox of its Pod) held.
        for (pool, ip, holder) in moves {
            let done = async {
                let _lock = self.lock_pool(&pool, deadline).await?;
                self.mutate(&pool, deadline, None, |ix| {
                    Ok(release_decision(ix, &holder, ip))
                })
                .await
            }
            .await;
            if let Err(e) = done {
                tracing::warn!(pool = %pool, address = %ip, error = %e, "the address the owner moved away from is left for release");
                self.pending()
                    .orphans
                    .entry(pool)
                    .or_default()
                    .push(Orphan {
                        key: holder,
                        ip,
                        restore: None,
                    });
            }
        }
        Ok(out)
    }

    /// Fails early, without a write, when a family has no free address in
    /// any of its pools as far as the cache knows (after listing, once per
    /// call, the blocks of a pool that looks exhausted while the cache
    /// watches only the node's blocks); the error names every pool of the
    /// families that are exhausted.
    async fn precheck_exhaustion(
        &self,
        req: &AllocateRequest,
        layouts: &[PoolLayout],
        families: &[Family],
        requested: &BTreeMap<Family, IpAddr>,
        deadline: Instant,
        guard: &mut CallGuard<'_>,
    ) -> Result<(), IpamError> {
        let exhausted = |name: &str| {
            self.cache.read(|s| {
                s.pool(name).is_some_and(|ix| {
                    ix.blocks.plan(&req.node, &req.owner, None) == Plan::Exhausted
                })
            })
        };
        let mut names = Vec::new();
        for family in families {
            if requested.contains_key(family) {
                continue;
            }
            let pools: Vec<&PoolLayout> = layouts.iter().filter(|l| l.family == *family).collect();
            if self.cache.node().is_some() && pools.iter().all(|l| exhausted(&l.name)) {
                for l in &pools {
                    self.list_once(&l.name, deadline, guard).await?;
                }
            }
            let all_exhausted = pools.iter().all(|l| exhausted(&l.name));
            if all_exhausted {
                names.extend(pools.iter().map(|l| l.name.clone()));
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        names.sort_by_key(|n| layouts.iter().position(|l| &l.name == n));
        Err(IpamError::Exhausted { pools: names })
    }

    /// One pool: plan and write under the pool's lock.
    async fn in_pool(
        &self,
        pool: &str,
        req: &AllocateRequest,
        want: Option<IpAddr>,
        deadline: Instant,
        guard: &mut CallGuard<'_>,
    ) -> Result<PoolOutcome, IpamError> {
        let _lock = self.lock_pool(pool, deadline).await?;
        self.settle_locked(pool, deadline).await?;
        if let (Some(ip), Some(layout)) = (want, self.cache.layout(pool)) {
            // A requested address in a window the watch does not cover:
            // read that window's block first.
            let name = block_name(pool, layout.family, window_of(ip));
            let own = self.cache.node().is_none()
                || self
                    .cache
                    .block(&name)
                    .is_some_and(|b| !self.cache.is_foreign(&name) && b.spec.node == req.node);
            if !own && layout.contains(ip) {
                self.refresh(&name, deadline).await?;
            }
        }
        loop {
            let may_list = self.cache.node().is_some() && !guard.listed.contains(pool);
            match self
                .in_pool_once(pool, req, want, may_list, deadline, guard)
                .await?
            {
                PoolOutcome::NeedList => self.list_once(pool, deadline, guard).await?,
                other => return Ok(other),
            }
        }
    }

    /// Lists `pool`'s blocks into the cache unless this call did already.
    async fn list_once(
        &self,
        pool: &str,
        deadline: Instant,
        guard: &mut CallGuard<'_>,
    ) -> Result<(), IpamError> {
        if guard.listed.insert(pool.to_string()) {
            self.list_pool(pool, deadline).await?;
        }
        Ok(())
    }

    /// Reads every (labelled) block of `pool` into the cache: how the
    /// agent learns other nodes' blocks when its own are full.
    async fn list_pool(&self, pool: &str, deadline: Instant) -> Result<(), IpamError> {
        let limit = self.request_deadline(deadline);
        let started = self.cache.clock();
        let lp = ListParams::default().labels(&format!("{POOL_LABEL}={}", label_value(pool)));
        match timeout_at(limit, self.api.list(&lp)).await {
            Ok(Ok(list)) => {
                tracing::debug!(pool = %pool, blocks = list.items.len(), "listed the pool's blocks");
                self.cache.merge_pool_list(pool, started, list.items);
                Ok(())
            }
            Ok(Err(e)) => Err(IpamError::Unavailable {
                what: format!("listing the IPAMBlocks of IPPool {pool}: {e}"),
            }),
            Err(_) => Err(IpamError::Unavailable {
                what: format!("listing the IPAMBlocks of IPPool {pool}: no answer in time"),
            }),
        }
    }

    /// One planning round of [`Ipam::in_pool`]: `NeedList` when only
    /// other nodes' blocks (or nothing) could serve and `may_list`.
    async fn in_pool_once(
        &self,
        pool: &str,
        req: &AllocateRequest,
        want: Option<IpAddr>,
        may_list: bool,
        deadline: Instant,
        guard: &mut CallGuard<'_>,
    ) -> Result<PoolOutcome, IpamError> {
        let key = req.owner.key();
        self.mutate(pool, deadline, Some(guard), |ix| {
            let plan = ix.blocks.plan(&req.node, &req.owner, want);
            if may_list && want.is_none() {
                let borrow = match plan {
                    Plan::Take { base, .. } => {
                        ix.blocks.block(base).is_some_and(|b| b.node != req.node)
                    }
                    Plan::Exhausted => true,
                    _ => false,
                };
                if borrow {
                    return Ok(Decision::Done(PoolOutcome::NeedList));
                }
            }
            // For a takeover, who the record named before.
            let previous = match plan {
                Plan::Held {
                    ip, refresh: true, ..
                } => ix.blocks.holder(ip).filter(|h| h.key() != key).cloned(),
                _ => None,
            };
            let write = |then: IpAddr, fresh: bool| {
                let (base, state) =
                    ix.blocks
                        .apply(&plan, &req.node, &req.owner)
                        .ok_or_else(|| IpamError::BadBlock {
                            block: pool.to_string(),
                            reason: format!("the planner gave no block for {plan:?}"),
                        })?;
                Ok(Decision::Write(Box::new(Planned {
                    base,
                    state,
                    then: PoolOutcome::Got(then),
                    fresh: if fresh {
                        Some((key.clone(), then, None))
                    } else {
                        previous.clone().map(|p| (key.clone(), then, Some(p)))
                    },
                    owner: Some(key.clone()),
                })))
            };
            match plan {
                Plan::Held {
                    ip, refresh: false, ..
                } => Ok(Decision::Done(PoolOutcome::Got(ip))),
                Plan::Held {
                    ip, refresh: true, ..
                } => write(ip, false),
                Plan::Take { ip, .. } | Plan::Claim { ip, .. } => write(ip, true),
                Plan::RequestedHeld { ip, ref holder } => Err(IpamError::AddressInUse {
                    ip,
                    pool: pool.to_string(),
                    holder: Box::new(holder.clone()),
                }),
                Plan::RequestedNotInPool { .. } => Ok(Decision::Done(PoolOutcome::NotInPool)),
                Plan::Exhausted => Ok(Decision::Done(PoolOutcome::Exhausted)),
            }
        })
        .await
    }

    /// Releases what a failed call allocated; what cannot be released now
    /// stays in the guard and becomes an orphan.
    async fn rollback(&self, guard: &mut CallGuard<'_>, deadline: Instant) {
        let list = guard.fresh.clone();
        for (pool, (key, ip, restore)) in list {
            let done = async {
                let _lock = self.lock_pool(&pool, deadline).await?;
                self.mutate(&pool, deadline, None, |ix| {
                    Ok(undo_decision(ix, &key, ip, restore.as_ref()))
                })
                .await
            }
            .await;
            match done {
                Ok(_) => guard.remove(&pool, &key, ip),
                Err(e) => {
                    tracing::warn!(pool = %pool, address = %ip, error = %e, "cannot undo an allocation now")
                }
            }
        }
    }

    /// Releases the pool's orphans (doubts are settled first by `mutate`).
    /// Call with the pool's lock held.
    async fn settle_locked(&self, pool: &str, deadline: Instant) -> Result<(), IpamError> {
        loop {
            let next = self
                .pending()
                .orphans
                .get(pool)
                .and_then(|l| l.first().cloned());
            let Some(orphan) = next else {
                return Ok(());
            };
            if self.cache.layout(pool).is_none() {
                // The pool is gone or invalid: keep the record for when it
                // comes back; nothing can be planned in it meanwhile.
                return Ok(());
            }
            let released = self
                .mutate(pool, deadline, None, |ix| {
                    Ok(undo_decision(
                        ix,
                        &orphan.key,
                        orphan.ip,
                        orphan.restore.as_ref(),
                    ))
                })
                .await?;
            if released {
                tracing::info!(pool = %pool, address = %orphan.ip, "released an allocation left by a failed call");
            }
            let mut p = self.pending();
            if let Some(l) = p.orphans.get_mut(pool) {
                l.retain(|o| o != &orphan);
                if l.is_empty() {
                    p.orphans.remove(pool);
                }
            }
        }
    }

    /// Plans and writes until the plan needs no write or the write is
    /// stored: conflicts re-read the block and re-plan after a backoff;
    /// writes without an answer are recorded as doubts and settled first.
    async fn mutate<T>(
        &self,
        pool: &str,
        deadline: Instant,
        mut guard: Option<&mut CallGuard<'_>>,
        mut decide: impl FnMut(&PoolIndex) -> Result<Decision<T>, IpamError>,
    ) -> Result<T, IpamError> {
        let mut backoff = Backoff::new(self.config.retry);
        let mut tries = 0u32;
        let mut discoveries = 0u32;
        loop {
            tries += 1;
            let failure = match self
                .attempt(pool, deadline, guard.as_deref_mut(), &mut decide)
                .await
            {
                Ok(Attempt::Done(t)) => return Ok(t),
                Ok(Attempt::Discovered) if discoveries < MAX_DISCOVERIES => {
                    // The cache learned a block it did not know: re-plan at
                    // once (no contention, just missing knowledge); after a
                    // few, list the pool instead of reading one by one.
                    discoveries += 1;
                    tries -= 1;
                    if discoveries >= LIST_AFTER_DISCOVERIES && self.cache.node().is_some() {
                        if let Some(g) = guard.as_deref_mut() {
                            self.list_once(pool, deadline, g).await?;
                        }
                    }
                    continue;
                }
                Ok(Attempt::Again | Attempt::Discovered) => None,
                Err(e @ IpamError::Unavailable { .. }) => Some(e),
                Err(e) => return Err(e),
            };
            let give_up = |failure: Option<IpamError>| {
                failure.unwrap_or(IpamError::Conflicts {
                    pool: pool.to_string(),
                    attempts: tries,
                })
            };
            if tries >= self.config.retry.max_attempts.max(1) {
                return Err(give_up(failure));
            }
            let delay = {
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                backoff.next_delay(&mut *rng)
            };
            if Instant::now() + delay >= deadline {
                return Err(give_up(failure));
            }
            if let Some(e) = &failure {
                tracing::debug!(pool = %pool, error = %e, ?delay, "retrying");
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt<T>(
        &self,
        pool: &str,
        deadline: Instant,
        mut guard: Option<&mut CallGuard<'_>>,
        decide: &mut impl FnMut(&PoolIndex) -> Result<Decision<T>, IpamError>,
    ) -> Result<Attempt<T>, IpamError> {
        self.resolve_doubts(pool, deadline).await?;
        let prepared = self
            .cache
            .read(|s| {
                s.pool(pool)
                    .map(|ix| decide(ix).and_then(|d| prepare(s, ix, d)))
            })
            .ok_or_else(|| IpamError::UnknownPool {
                pool: pool.to_string(),
            })??;
        let (write, then, fresh, owner) = match prepared {
            Prepared::Done(t) => return Ok(Attempt::Done(t)),
            Prepared::Write(r) => {
                let Ready {
                    write,
                    then,
                    fresh,
                    owner,
                } = *r;
                (write, then, fresh, owner)
            }
        };
        if let (Some(g), Some(f)) = (guard.as_deref_mut(), &fresh) {
            g.add(pool, f);
        }
        let id = self.add_doubt(pool, &write, owner);
        let not_applied = |g: Option<&mut CallGuard<'_>>| {
            self.clear_doubt(pool, id);
            if let (Some(g), Some((k, ip, _))) = (g, &fresh) {
                g.remove(pool, k, *ip);
            }
        };
        match self.send(&write, deadline).await {
            Sent::Stored(obj) => {
                self.clear_doubt(pool, id);
                self.cache.write_through(*obj);
                Ok(Attempt::Done(then))
            }
            Sent::Conflict => {
                not_applied(guard);
                tracing::debug!(block = %write.name(), "conflict; re-reading the block");
                let known = self.cache.block(write.name()).is_some();
                self.refresh(write.name(), deadline).await?;
                Ok(match write {
                    Write::Create(_) if !known => Attempt::Discovered,
                    _ => Attempt::Again,
                })
            }
            Sent::NotFound => {
                not_applied(guard);
                self.cache.forget_block(write.name(), write.based_on());
                Ok(Attempt::Again)
            }
            Sent::Busy(what) => {
                not_applied(guard);
                Err(IpamError::Unavailable { what })
            }
            Sent::Refused { code, message } => {
                not_applied(guard);
                Err(IpamError::Api {
                    what: write.describe(),
                    code,
                    message,
                })
            }
            // The record stays: the write may still be applied.
            Sent::Unknown(what) => Err(IpamError::Unavailable {
                what: format!("{}: {what}", write.describe()),
            }),
        }
    }

    /// Settles the pool's doubtful writes by re-sending them (see [`Ipam`]).
    async fn resolve_doubts(&self, pool: &str, deadline: Instant) -> Result<(), IpamError> {
        loop {
            let next = self
                .pending()
                .doubts
                .get(pool)
                .and_then(|l| l.first().cloned());
            let Some(d) = next else {
                return Ok(());
            };
            match self.send(&d.write, deadline).await {
                Sent::Stored(obj) => {
                    self.clear_doubt(pool, d.id);
                    tracing::info!(block = %d.write.name(), "a write in doubt is settled: applied now");
                    self.cache.write_through(*obj);
                }
                Sent::Conflict => {
                    self.clear_doubt(pool, d.id);
                    tracing::info!(block = %d.write.name(), "a write in doubt is settled: the block moved on; re-reading it");
                    self.refresh(d.write.name(), deadline).await?;
                }
                Sent::NotFound => {
                    self.clear_doubt(pool, d.id);
                    self.cache.forget_block(d.write.name(), d.write.based_on());
                }
                Sent::Refused { code, message } => {
                    self.clear_doubt(pool, d.id);
                    tracing::warn!(block = %d.write.name(), code, message = %message, "a write in doubt is refused now");
                }
                Sent::Busy(what) | Sent::Unknown(what) => {
                    return Err(IpamError::Unavailable {
                        what: format!("{} is still in doubt: {what}", d.write.describe()),
                    })
                }
            }
        }
    }

    /// [`Ipam::resolve_doubts`] with the retry policy.
    async fn resolve_doubts_retrying(
        &self,
        pool: &str,
        deadline: Instant,
    ) -> Result<(), IpamError> {
        let mut backoff = Backoff::new(self.config.retry);
        loop {
            match self.resolve_doubts(pool, deadline).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let delay = {
                        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                        backoff.next_delay(&mut *rng)
                    };
                    if backoff.attempts() >= self.config.retry.max_attempts
                        || Instant::now() + delay >= deadline
                    {
                        return Err(e);
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn add_doubt(&self, pool: &str, write: &Write, owner: Option<OwnerKey>) -> u64 {
        let mut p = self.pending();
        p.next_id += 1;
        let id = p.next_id;
        p.doubts.entry(pool.to_string()).or_default().push(Doubt {
            id,
            write: write.clone(),
            owner,
        });
        id
    }

    fn clear_doubt(&self, pool: &str, id: u64) {
        let mut p = self.pending();
        if let Some(l) = p.doubts.get_mut(pool) {
            l.retain(|d| d.id != id);
            if l.is_empty() {
                p.doubts.remove(pool);
            }
        }
    }

    fn request_deadline(&self, deadline: Instant) -> Instant {
        (Instant::now() + self.config.request_timeout).min(deadline)
    }

    async fn send(&self, write: &Write, deadline: Instant) -> Sent {
        let limit = self.request_deadline(deadline);
        let pp = PostParams::default();
        let request = async {
            match write {
                Write::Create(o) => self.api.create(&pp, o).await,
                Write::Replace(o) => self.api.replace(write.name(), &pp, o).await,
            }
        };
        match timeout_at(limit, request).await {
            Ok(Ok(obj)) => Sent::Stored(Box::new(obj)),
            Ok(Err(e)) => classify(e),
            Err(_) => Sent::Unknown("no answer in time".into()),
        }
    }

    /// Re-reads one block after a conflict and stores it in the cache.
    async fn refresh(&self, name: &str, deadline: Instant) -> Result<(), IpamError> {
        let limit = self.request_deadline(deadline);
        match timeout_at(limit, self.api.get_opt(name)).await {
            Ok(Ok(Some(obj))) => {
                self.cache.write_through(obj);
                Ok(())
            }
            Ok(Ok(None)) => {
                self.cache.forget_block(name, None);
                Ok(())
            }
            Ok(Err(e)) => Err(IpamError::Unavailable {
                what: format!("re-reading IPAMBlock {name}: {e}"),
            }),
            Err(_) => Err(IpamError::Unavailable {
                what: format!("re-reading IPAMBlock {name}: no answer in time"),
            }),
        }
    }
}

/// Turns a decision into the write to send: a create for a new block, an
/// update of the stored object (its metadata kept) for an existing one.
fn prepare<T>(s: &CacheState, ix: &PoolIndex, d: Decision<T>) -> Result<Prepared<T>, IpamError> {
    let (base, state, then, fresh, owner) = match d {
        Decision::Done(t) => return Ok(Prepared::Done(t)),
        Decision::Write(p) => {
            let Planned {
                base,
                state,
                then,
                fresh,
                owner,
            } = *p;
            (base, state, then, fresh, owner)
        }
    };
    if let Some(reason) = ix.quarantined.get(&base) {
        return Err(IpamError::BadBlock {
            block: state.name.clone(),
            reason: reason.clone(),
        });
    }
    let mut body = ix.blocks.to_object(base, &state);
    let write = match (&state.resource_version, s.block(&state.name)) {
        (None, _) => {
            body.metadata.labels = Some(block_labels(&body.spec.node, &body.spec.pool));
            Write::Create(body)
        }
        (Some(rv), Some(stored)) => {
            let mut obj = stored.clone();
            obj.spec = body.spec;
            obj.metadata.resource_version = Some(rv.clone());
            obj.metadata.managed_fields = None;
            // A block an older agent created has no labels: add them.
            let missing = missing_block_labels(&obj);
            if !missing.is_empty() {
                obj.metadata.labels.get_or_insert_default().extend(missing);
            }
            Write::Replace(obj)
        }
        (Some(_), None) => {
            body.metadata.labels = Some(block_labels(&body.spec.node, &body.spec.pool));
            Write::Replace(body)
        }
    };
    Ok(Prepared::Write(Box::new(Ready {
        write,
        then,
        fresh,
        owner,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: format!("m{code}"),
            ..Default::default()
        }))
    }

    /// The agent spawns these futures on a multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_are_send(ipam: &Ipam, req: &AllocateRequest, key: &OwnerKey) {
        fn send<T: Send>(_: T) {}
        send(ipam.allocate(req));
        send(ipam.release(key));
        send(ipam.settle());
    }

    #[test]
    fn answers_are_classified_by_whether_the_write_may_have_applied() {
        assert!(matches!(classify(status(409)), Sent::Conflict));
        assert!(matches!(classify(status(404)), Sent::NotFound));
        assert!(matches!(classify(status(429)), Sent::Busy(_)));
        assert!(matches!(classify(status(500)), Sent::Unknown(_)));
        assert!(matches!(classify(status(504)), Sent::Unknown(_)));
        assert!(matches!(
            classify(status(403)),
            Sent::Refused { code: 403, .. }
        ));
        assert!(matches!(
            classify(kube::Error::LinesCodecMaxLineLengthExceeded),
            Sent::Unknown(_)
        ));
    }
}
