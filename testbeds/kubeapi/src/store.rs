//! The object store: every object, the global resourceVersion, the event
//! log watches resume from, the watchers, admission, finalizers, cascading
//! deletion and the journal that makes a lab survive a restart.
//!
//! The store is synchronous and deterministic: it reads no clock of its own
//! (a [`Clock`] is injected), draws names and UIDs from a seeded RNG, and
//! keeps every collection ordered, so the same requests in the same order
//! give the same answers. The HTTP layer ([`crate::http`]) sits on top.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::admission::{Admission, AdmissionRequest, Operation};
use crate::error::ApiError;
use crate::resources::{Registry, Resource, StoreKey};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::table::format_rfc3339;

/// Where the time comes from: the real clock in the binary, simulated time
/// in the simulator.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// A clock that stands still unless moved (tests, simulation).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    /// A clock at `unix` seconds.
    pub fn new(unix: i64) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(unix))
    }

    /// Sets the time.
    pub fn set(&self, unix: i64) {
        self.0.store(unix, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A change of state, as the journal records it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Mutation {
    /// An object was created or replaced.
    Put {
        /// Group of the resource.
        group: String,
        /// Plural of the resource.
        plural: String,
        /// The object as stored.
        object: Value,
    },
    /// An object was removed.
    Delete {
        /// Group of the resource.
        group: String,
        /// Plural of the resource.
        plural: String,
        /// Namespace ("" when cluster-scoped).
        namespace: String,
        /// Name.
        name: String,
        /// The resourceVersion of the deletion.
        rv: u64,
    },
}

/// Persists mutations before they are acknowledged.
pub trait Journal: Send {
    /// Records a mutation durably; an error fails the request that caused
    /// it and leaves the store unchanged.
    fn record(&mut self, m: &Mutation) -> std::io::Result<()>;
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// An object appeared (or entered the selector).
    Added,
    /// An object changed.
    Modified,
    /// An object went away (or left the selector).
    Deleted,
    /// The watch has seen everything up to this resourceVersion.
    Bookmark,
    /// The watch failed; the object is a Status.
    Error,
}

impl EventType {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
            EventType::Bookmark => "BOOKMARK",
            EventType::Error => "ERROR",
        }
    }
}

/// One event sent to a watcher.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// Event type.
    pub type_: EventType,
    /// The object (already in the watched version), shared by every
    /// watcher of that version.
    pub object: Arc<SharedObject>,
}

/// An object sent to many watchers: one copy, serialized at most once.
#[derive(Debug)]
pub struct SharedObject {
    /// The object.
    pub value: Value,
    json: std::sync::OnceLock<Vec<u8>>,
}

impl SharedObject {
    /// Wraps an object.
    pub fn new(value: Value) -> Arc<SharedObject> {
        Arc::new(SharedObject {
            value,
            json: std::sync::OnceLock::new(),
        })
    }

    /// The object as JSON, serialized on first use.
    pub fn json(&self) -> &[u8] {
        self.json
            .get_or_init(|| serde_json::to_vec(&self.value).unwrap_or_default())
    }
}

impl PartialEq for SharedObject {
    fn eq(&self, other: &SharedObject) -> bool {
        self.value == other.value
    }
}

#[derive(Debug, Clone)]
struct Logged {
    rv: u64,
    key: StoreKey,
    namespace: String,
    type_: EventType,
    /// The object after the change (for DELETED: the last state).
    object: Value,
    /// The object before the change (MODIFIED only), for selector moves.
    old: Option<Value>,
}

/// What a watch is interested in.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// The resource (and version) watched.
    pub resource: Resource,
    /// Namespace, or every namespace.
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Whether BOOKMARK events are wanted.
    pub bookmarks: bool,
}

struct Watcher {
    spec: WatchSpec,
    tx: mpsc::UnboundedSender<WatchEvent>,
}

/// The open watches, indexed so that a change is offered only to the
/// watches that can see it: by resource, and, for a watch whose selector
/// asks for one value of a field (a kubelet's or an agent's
/// `spec.nodeName=NODE`, as kube-apiserver's watch cache indexes Pods by
/// node) or else of a label (an agent's `spur.dev/node=NODE` on its
/// IPAMBlocks), by that value. Ids ascend in creation order; every
/// iteration is in id order, so watchers are served in the same order in
/// every run.
#[derive(Default)]
struct Watchers {
    all: BTreeMap<u64, Watcher>,
    /// Store key -> watches of that resource.
    by_key: BTreeMap<StoreKey, KeyWatchers>,
}

/// What a watch is indexed by: one value of a field or of a label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum IndexKey {
    /// (field path, value).
    Field(String, String),
    /// (label key, value).
    Label(String, String),
}

#[derive(Default)]
struct KeyWatchers {
    /// Watches not indexed.
    any: BTreeSet<u64>,
    /// Index key -> watches asking for exactly that value.
    indexed: BTreeMap<IndexKey, BTreeSet<u64>>,
}

impl Watchers {
    fn insert(&mut self, id: u64, w: Watcher) {
        let group = self.by_key.entry(w.spec.resource.store_key()).or_default();
        match index_key(&w.spec) {
            Some(k) => {
                group.indexed.entry(k).or_default().insert(id);
            }
            None => {
                group.any.insert(id);
            }
        }
        self.all.insert(id, w);
    }

    fn remove(&mut self, id: u64) {
        let Some(w) = self.all.remove(&id) else {
            return;
        };
        if let Some(group) = self.by_key.get_mut(&w.spec.resource.store_key()) {
            match index_key(&w.spec) {
                Some(k) => {
                    if let Some(set) = group.indexed.get_mut(&k) {
                        set.remove(&id);
                        if set.is_empty() {
                            group.indexed.remove(&k);
                        }
                    }
                }
                None => {
                    group.any.remove(&id);
                }
            }
        }
    }

    /// The watches that may see a change of `key` from `old` to `new`, in
    /// id order.
    fn candidates(&self, key: &StoreKey, new: &Value, old: Option<&Value>) -> Vec<u64> {
        let Some(group) = self.by_key.get(key) else {
            return Vec::new();
        };
        let mut ids: BTreeSet<u64> = group.any.clone();
        if !group.indexed.is_empty() {
            // The distinct fields and labels indexed (few: one or two).
            let mut fields: BTreeSet<&str> = BTreeSet::new();
            let mut labels: BTreeSet<&str> = BTreeSet::new();
            for k in group.indexed.keys() {
                match k {
                    IndexKey::Field(p, _) => fields.insert(p.as_str()),
                    IndexKey::Label(l, _) => labels.insert(l.as_str()),
                };
            }
            for obj in std::iter::once(new).chain(old) {
                for &path in &fields {
                    let v = crate::selectors::field_value(obj, path);
                    if let Some(set) = group.indexed.get(&IndexKey::Field(path.to_string(), v)) {
                        ids.extend(set);
                    }
                }
                for &label in &labels {
                    let Some(v) = label_of(obj, label) else {
                        continue;
                    };
                    let k = IndexKey::Label(label.to_string(), v.to_string());
                    if let Some(set) = group.indexed.get(&k) {
                        ids.extend(set);
                    }
                }
            }
        }
        ids.into_iter().collect()
    }
}

/// What a watch is indexed by: its field selector's first equality
/// requirement, or else its label selector's first (one value of a label).
fn index_key(spec: &WatchSpec) -> Option<IndexKey> {
    spec.fields
        .requirements
        .iter()
        .find(|r| r.operator == crate::selectors::FieldOperator::Equals)
        .map(|r| IndexKey::Field(r.path.clone(), r.value.clone()))
        .or_else(|| {
            spec.labels.requirements.iter().find_map(|r| {
                let one = matches!(
                    r.operator,
                    crate::selectors::LabelOperator::Equals | crate::selectors::LabelOperator::In
                ) && r.values.len() == 1;
                one.then(|| r.values.iter().next())
                    .flatten()
                    .map(|v| IndexKey::Label(r.key.clone(), v.clone()))
            })
        })
}

/// The value of label `key` of an object.
fn label_of<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")?.get("labels")?.get(key)?.as_str()
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size (0: everything).
    pub limit: usize,
    /// Continue token of the previous page.
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The objects, in the requested version.
    pub items: Vec<Value>,
    /// resourceVersion of the list.
    pub resource_version: u64,
    /// Token of the next page, if any.
    pub continue_token: Option<String>,
    /// How many matching objects follow this page.
    pub remaining: Option<usize>,
}

/// Preconditions and propagation of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Required UID.
    pub uid: Option<String>,
    /// Required resourceVersion.
    pub resource_version: Option<String>,
    /// `Orphan` keeps dependents; anything else deletes them.
    pub orphan: bool,
    /// Validate only.
    pub dry_run: bool,
    /// `gracePeriodSeconds`: `Some(0)` deletes a Pod bound to a node at
    /// once; absent or positive, such a Pod is only marked (its kubelet
    /// deletes it with 0 once its containers are gone).
    pub grace_period_seconds: Option<i64>,
}

/// The state of the server.
pub struct Store {
    registry: Registry,
    objects: BTreeMap<StoreKey, BTreeMap<(String, String), Value>>,
    rv: u64,
    log: VecDeque<Logged>,
    compacted_rv: u64,
    history_limit: usize,
    watchers: Watchers,
    next_watch_id: u64,
    rng: ChaCha8Rng,
    clock: Arc<dyn Clock>,
    admission: Admission,
    journal: Option<Box<dyn Journal>>,
    /// owner UID -> dependents (store key, namespace, name).
    dependents: BTreeMap<String, BTreeSet<(StoreKey, String, String)>>,
    /// Pods by `spec.nodeName` ("" for unscheduled ones) -> (namespace,
    /// name): a kubelet's or an agent's list reads only its node's Pods,
    /// as kube-apiserver's watch cache serves them.
    pods_by_node: BTreeMap<String, BTreeSet<(String, String)>>,
}

/// The path Pods are indexed by (see [`Store::list`]).
const NODE_NAME_FIELD: &str = "spec.nodeName";

/// Namespaces every cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The NetworkAttachmentDefinition CRD every Spur lab has installed.
const NAD_CRD: &str =
    include_str!("../../../deploy/crds/k8s.cni.cncf.io_network-attachment-definitions.yaml");

impl Store {
    /// An empty cluster: the system namespaces and the
    /// NetworkAttachmentDefinition CRD, at resourceVersion 1 and up.
    pub fn new(clock: Arc<dyn Clock>, seed: u64) -> Store {
        let mut s = Store {
            registry: Registry::builtin(),
            objects: BTreeMap::new(),
            rv: 0,
            log: VecDeque::new(),
            compacted_rv: 0,
            history_limit: 100_000,
            watchers: Watchers::default(),
            next_watch_id: 1,
            rng: ChaCha8Rng::seed_from_u64(seed),
            clock,
            admission: Admission::default(),
            journal: None,
            dependents: BTreeMap::new(),
            pods_by_node: BTreeMap::new(),
        };
        s.bootstrap();
        s
    }

    /// The system namespaces and the NetworkAttachmentDefinition CRD (a
    /// constant manifest, so creating them cannot fail).
    fn bootstrap(&mut self) {
        for ns in SYSTEM_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            if let Some(res) = self.registry.get("", "v1", "namespaces").cloned() {
                let _ = self.create(&res, None, obj, false);
            }
        }
        if let Ok(mut crd) = serde_yaml::from_str::<Value>(NAD_CRD) {
            // As if a lab had `kubectl apply`-ed it: applying the same
            // manifest again is then "unchanged", without a warning.
            let applied = serde_json::to_string(&crd).unwrap_or_default();
            crd["metadata"]["annotations"] =
                json!({"kubectl.kubernetes.io/last-applied-configuration": applied});
            if let Some(res) = self
                .registry
                .get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
                .cloned()
            {
                let _ = self.create(&res, None, crd, false);
            }
        }
    }

    /// Rebuilds a store from journal records (in order) and attaches the
    /// journal that further mutations go to. Watches cannot resume across a
    /// restart: the event log starts empty, so an older resourceVersion gets
    /// 410 Gone and the client lists again.
    pub fn restore(
        clock: Arc<dyn Clock>,
        seed: u64,
        records: impl IntoIterator<Item = Mutation>,
        journal: Option<Box<dyn Journal>>,
    ) -> Store {
        let records: Vec<Mutation> = records.into_iter().collect();
        let mut s = Store::new(clock, seed);
        if !records.is_empty() {
            // The records hold the bootstrap objects too.
            s.objects.clear();
            s.dependents.clear();
            s.pods_by_node.clear();
            s.registry = Registry::builtin();
            s.rv = 0;
        }
        s.log.clear();
        for m in records {
            match m {
                Mutation::Put {
                    group,
                    plural,
                    object,
                } => {
                    let rv = object_rv(&object);
                    s.rv = s.rv.max(rv);
                    if group == "apiextensions.k8s.io" && plural == "customresourcedefinitions" {
                        let _ = s.registry.apply_crd(&object);
                    }
                    let key = StoreKey { group, plural };
                    let id = (namespace_of(&object), name_of(&object));
                    s.reindex(&key, &id.0, &id.1, None, Some(&object));
                    s.objects.entry(key).or_default().insert(id, object);
                }
                Mutation::Delete {
                    group,
                    plural,
                    namespace,
                    name,
                    rv,
                } => {
                    s.rv = s.rv.max(rv);
                    if group == "apiextensions.k8s.io" && plural == "customresourcedefinitions" {
                        s.registry.remove_crd(&name);
                    }
                    let key = StoreKey { group, plural };
                    let old = s
                        .objects
                        .get_mut(&key)
                        .and_then(|m| m.remove(&(namespace.clone(), name.clone())));
                    s.reindex(&key, &namespace, &name, old.as_ref(), None);
                }
            }
        }
        s.compacted_rv = s.rv;
        s.journal = journal;
        // Names and UIDs drawn after a restart must not repeat the ones
        // drawn before it.
        s.rng = ChaCha8Rng::seed_from_u64(seed ^ s.rv.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        s
    }

    /// Every object as journal records (for compacting a journal).
    pub fn snapshot(&self) -> Vec<Mutation> {
        let mut out = Vec::new();
        // CRDs first, so that their resources exist when replaying.
        let crd_key = StoreKey {
            group: "apiextensions.k8s.io".into(),
            plural: "customresourcedefinitions".into(),
        };
        let mut keys: Vec<&StoreKey> = self.objects.keys().collect();
        keys.sort_by_key(|k| (**k != crd_key, (*k).clone()));
        for key in keys {
            for obj in self.objects[key].values() {
                out.push(Mutation::Put {
                    group: key.group.clone(),
                    plural: key.plural.clone(),
                    object: obj.clone(),
                });
            }
        }
        out
    }

    /// Attaches a journal: every later mutation is recorded before it is
    /// acknowledged.
    pub fn set_journal(&mut self, journal: Box<dyn Journal>) {
        self.journal = Some(journal);
    }

    /// How many events watches can resume from (older ones answer 410).
    pub fn set_history_limit(&mut self, n: usize) {
        self.history_limit = n.max(1);
        self.trim_log();
    }

    /// Runs the validating functions, then lets the admission chain record
    /// or check the request (webhook dry runs, see [`crate::webhook`]).
    fn admit(&mut self, req: &AdmissionRequest<'_>, obj: Option<&Value>) -> Result<(), ApiError> {
        self.admission.validate(req, obj, self)?;
        if self.admission.capturing() {
            self.admission
                .capture_one(crate::admission::CapturedRequest::of(req, obj))?;
        }
        Ok(())
    }

    /// Records, for a dry-run delete, the deletes the real one would
    /// cascade to: dependents by ownerReferences (recursively) and, for a
    /// Namespace, everything in it. Their validating functions are not run
    /// (the real delete runs them).
    fn capture_cascade(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        old: &Value,
    ) -> Result<(), ApiError> {
        let mut queue: VecDeque<(StoreKey, String, String)> = VecDeque::new();
        let mut visited: BTreeSet<(StoreKey, String, String)> = BTreeSet::new();
        visited.insert((res.store_key(), ns.to_string(), name.to_string()));
        let push_dependents =
            |store: &Store, obj: &Value, queue: &mut VecDeque<(StoreKey, String, String)>| {
                if let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) {
                    if let Some(deps) = store.dependents.get(uid) {
                        queue.extend(deps.iter().cloned());
                    }
                }
            };
        push_dependents(self, old, &mut queue);
        if res.group.is_empty() && res.plural == "namespaces" {
            for (key, objs) in &self.objects {
                for (ons, oname) in objs.keys() {
                    if ons == name {
                        queue.push_back((key.clone(), ons.clone(), oname.clone()));
                    }
                }
            }
        }
        while let Some(id) = queue.pop_front() {
            if !visited.insert(id.clone()) {
                continue;
            }
            let (key, ons, oname) = id;
            let (Some(dep_res), Some(obj)) = (
                self.resource_for_key(&key),
                self.get_raw(&key, &ons, &oname).cloned(),
            ) else {
                continue;
            };
            push_dependents(self, &obj, &mut queue);
            self.admission
                .capture_one(crate::admission::CapturedRequest {
                    operation: Operation::Delete,
                    resource: dep_res,
                    namespace: ons,
                    name: oname,
                    subresource: None,
                    object: None,
                    old_object: Some(obj),
                })?;
        }
        Ok(())
    }

    /// True when deleting the object would cascade to others (it has
    /// dependents, or it is a Namespace).
    pub fn has_dependents(&self, res: &Resource, ns: Option<&str>, name: &str) -> bool {
        if res.group.is_empty() && res.plural == "namespaces" {
            return true;
        }
        let ns = ns.unwrap_or_default();
        self.get_raw(&res.store_key(), ns, name)
            .and_then(|o| o.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            .is_some_and(|uid| self.dependents.contains_key(uid))
    }

    /// The state of the name and UID generator (to replay a dry run's
    /// draws in the real request, see [`crate::webhook`]).
    pub fn rng_state(&self) -> ChaCha8Rng {
        self.rng.clone()
    }

    /// Restores the name and UID generator saved by [`Store::rng_state`].
    pub fn set_rng_state(&mut self, rng: ChaCha8Rng) {
        self.rng = rng;
    }

    /// The admission chain.
    pub fn admission_mut(&mut self) -> &mut Admission {
        &mut self.admission
    }

    /// The served resources.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The clock's time.
    pub fn now_unix(&self) -> i64 {
        self.clock.now_unix()
    }

    /// Every stored object of a resource (any version), in namespace/name
    /// order; for admission functions and tests.
    pub fn objects_of(&self, group: &str, plural: &str) -> Vec<&Value> {
        let key = StoreKey {
            group: group.into(),
            plural: plural.into(),
        };
        self.objects
            .get(&key)
            .map(|m| m.values().collect())
            .unwrap_or_default()
    }

    fn get_raw(&self, key: &StoreKey, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(key)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// One object.
    pub fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let ns = scope_ns(res, ns)?;
        self.get_raw(&res.store_key(), &ns, name)
            .map(|o| in_version(o, res))
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// A list, filtered and paged. Pages continue after the last key of the
    /// previous page; they are served from the current state.
    pub fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage, ApiError> {
        let after =
            match &opts.continue_token {
                Some(t) => Some(decode_continue(t).ok_or_else(|| {
                    ApiError::bad_request(format!("invalid continue token {t:?}"))
                })?),
                None => None,
            };
        let empty = BTreeMap::new();
        let key = res.store_key();
        let all = self.objects.get(&key).unwrap_or(&empty);
        // Pods of one node: only those the index names (same order).
        let node = (key.group.is_empty() && key.plural == "pods")
            .then(|| {
                opts.fields.requirements.iter().find(|r| {
                    r.operator == crate::selectors::FieldOperator::Equals
                        && r.path == NODE_NAME_FIELD
                })
            })
            .flatten();
        let candidates: Box<dyn Iterator<Item = (&(String, String), &Value)>> = match node {
            Some(r) => Box::new(
                self.pods_by_node
                    .get(&r.value)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| all.get_key_value(id)),
            ),
            None => Box::new(all.iter()),
        };
        let mut items = Vec::new();
        let mut last_key = None;
        let mut remaining = 0usize;
        for ((ons, oname), obj) in candidates {
            if let Some(n) = ns {
                if ons != n {
                    continue;
                }
            }
            if let Some((ans, aname)) = &after {
                if (ons, oname) <= (ans, aname) {
                    continue;
                }
            }
            if !selected(obj, &opts.labels, &opts.fields) {
                continue;
            }
            if opts.limit > 0 && items.len() == opts.limit {
                remaining += 1;
                continue;
            }
            last_key = Some((ons.clone(), oname.clone()));
            items.push(in_version(obj, res));
        }
        let continue_token = if remaining > 0 {
            last_key.map(|(a, b)| encode_continue(&a, &b))
        } else {
            None
        };
        Ok(ListPage {
            items,
            resource_version: self.rv,
            continue_token,
            remaining: (remaining > 0).then_some(remaining),
        })
    }

    fn random_suffix(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..n)
            .map(|_| ALPHABET[(self.rng.next_u32() as usize) % ALPHABET.len()] as char)
            .collect()
    }

    fn new_uid(&mut self) -> String {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// Creates an object.
    pub fn create(
        &mut self,
        res: &Resource,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let ns = scope_ns(res, ns)?;
        check_type(res, &mut obj)?;
        let meta = metadata_mut(&mut obj)?;
        match meta.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if res.namespaced && !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                )));
            }
            _ => {}
        }
        if res.namespaced {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        } else {
            meta.remove("namespace");
        }
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    res,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
            loop {
                let candidate = format!("{prefix}{}", self.random_suffix(5));
                if self.get_raw(&res.store_key(), &ns, &candidate).is_none() {
                    name = candidate;
                    break;
                }
            }
        }
        if let Some(problem) = name_problem(res, &name) {
            return Err(ApiError::invalid(
                res,
                &name,
                "metadata.name",
                &format!("Invalid value: {name:?}: {problem}"),
            ));
        }
        if res.namespaced {
            match self.get_raw(
                &StoreKey {
                    group: String::new(),
                    plural: "namespaces".into(),
                },
                "",
                &ns,
            ) {
                None => {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        format!("namespaces \"{ns}\" not found"),
                    )
                    .with_details(&ns, "", "namespaces"));
                }
                Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            res.qualified()
                        ),
                    ));
                }
                _ => {}
            }
        }
        if self.get_raw(&res.store_key(), &ns, &name).is_some() {
            return Err(ApiError::already_exists(res, &name));
        }
        let now = format_rfc3339(self.clock.now_unix());
        let uid = self.new_uid();
        {
            let meta = metadata_mut(&mut obj)?;
            meta.insert("name".into(), Value::String(name.clone()));
            meta.insert("uid".into(), Value::String(uid));
            meta.insert("creationTimestamp".into(), Value::String(now));
            meta.insert("generation".into(), json!(1));
            for k in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "selfLink",
                "managedFields",
            ] {
                meta.remove(k);
            }
        }
        if res.custom && res.status_subresource {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        default_status(res, &mut obj);
        let req = AdmissionRequest {
            operation: Operation::Create,
            resource: res,
            namespace: &ns,
            name: &name,
            subresource: None,
            dry_run,
            old_object: None,
        };
        self.admission.mutate(&req, &mut obj, self)?;
        self.admit(&req, Some(&obj))?;
        let is_crd = is_crd(res);
        let mut next_registry = None;
        if is_crd {
            let mut reg = self.registry.clone();
            reg.apply_crd(&obj)
                .map_err(|m| ApiError::invalid(res, &name, "spec", &m))?;
            crd_established(&mut obj);
            next_registry = Some(reg);
        }
        if dry_run {
            return Ok(in_version(&obj, res));
        }
        let rv = self.rv + 1;
        set_rv(&mut obj, rv);
        self.journal(Mutation::Put {
            group: res.group.clone(),
            plural: res.plural.clone(),
            object: obj.clone(),
        })?;
        self.rv = rv;
        if let Some(reg) = next_registry {
            self.registry = reg;
        }
        let key = res.store_key();
        self.reindex(&key, &ns, &name, None, Some(&obj));
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.clone(), name), obj.clone());
        self.emit(Logged {
            rv,
            key,
            namespace: ns,
            type_: EventType::Added,
            object: obj.clone(),
            old: None,
        });
        Ok(in_version(&obj, res))
    }

    /// Replaces an object (PUT), or its status (`subresource` = `status`).
    pub fn update(
        &mut self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        subresource: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let ns = scope_ns(res, ns)?;
        check_type(res, &mut obj)?;
        let key = res.store_key();
        let old = self
            .get_raw(&key, &ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let body_name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or(name);
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            if !rv.is_empty() && rv != object_rv(&old).to_string() {
                return Err(ApiError::conflict(res, name));
            }
        }
        if let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) {
            if !uid.is_empty() && Some(uid) != old.pointer("/metadata/uid").and_then(Value::as_str)
            {
                return Err(ApiError::conflict_msg(
                    res,
                    name,
                    "Precondition failed: UID in object meta does not match the stored object",
                ));
            }
        }
        let mut new = match subresource {
            Some("status") => {
                if !res.status_subresource {
                    return Err(ApiError::not_found(res, name));
                }
                let mut n = old.clone();
                if let Some(o) = n.as_object_mut() {
                    match obj.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
                n
            }
            Some(other) => return Err(ApiError::not_found(res, &format!("{name}/{other}"))),
            None => {
                let mut n = obj;
                if res.status_subresource {
                    if let Some(o) = n.as_object_mut() {
                        match old.get("status") {
                            Some(s) => o.insert("status".into(), s.clone()),
                            None => o.remove("status"),
                        };
                    }
                }
                n
            }
        };
        // Fields the server owns.
        {
            let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
            let meta = metadata_mut(&mut new)?;
            for k in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old_meta.get(k) {
                    Some(v) => meta.insert(k.into(), v.clone()),
                    None => meta.remove(k),
                };
            }
            meta.remove("managedFields");
        }
        if spec_of(&new) != spec_of(&old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("generation".into(), json!(g + 1));
            }
        }
        self.commit_update(res, &ns, name, old, new, subresource, dry_run)
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_update(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        old: Value,
        mut new: Value,
        subresource: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let req = AdmissionRequest {
            operation: Operation::Update,
            resource: res,
            namespace: ns,
            name,
            subresource,
            dry_run,
            old_object: Some(&old),
        };
        self.admission.mutate(&req, &mut new, self)?;
        self.admit(&req, Some(&new))?;
        let mut next_registry = None;
        if is_crd(res) {
            let mut reg = self.registry.clone();
            reg.apply_crd(&new)
                .map_err(|m| ApiError::invalid(res, name, "spec", &m))?;
            crd_established(&mut new);
            next_registry = Some(reg);
        }
        if new == old {
            // Nothing changed: no new resourceVersion, no event.
            return Ok(in_version(&old, res));
        }
        if dry_run {
            return Ok(in_version(&new, res));
        }
        // An object whose last finalizer is gone is deleted for good
        // (Namespaces finish when they are empty instead).
        let is_namespace = res.group.is_empty() && res.plural == "namespaces";
        // (As the real server: only once the grace period is 0; a Pod in
        // its graceful termination stays until its kubelet deletes it.)
        let finishing = !is_namespace
            && new.pointer("/metadata/deletionTimestamp").is_some()
            && old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0
            && finalizers(&new).is_empty();
        if finishing {
            return self
                .remove(res.store_key(), ns, name, Some(new))
                .map(|o| in_version(&o, res));
        }
        let rv = self.rv + 1;
        set_rv(&mut new, rv);
        self.journal(Mutation::Put {
            group: res.group.clone(),
            plural: res.plural.clone(),
            object: new.clone(),
        })?;
        self.rv = rv;
        if let Some(reg) = next_registry {
            self.registry = reg;
        }
        let key = res.store_key();
        self.reindex(&key, ns, name, Some(&old), Some(&new));
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name.to_string()), new.clone());
        self.emit(Logged {
            rv,
            key,
            namespace: ns.to_string(),
            type_: EventType::Modified,
            object: new.clone(),
            old: Some(old),
        });
        Ok(in_version(&new, res))
    }

    /// Applies a patch (`patched` computes the new object from the current
    /// one). A patch that names a resourceVersion other than the current one
    /// is a conflict. `create_if_absent` serves server-side apply.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        dry_run: bool,
        create_if_absent: bool,
        patched: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let nsv = scope_ns(res, ns)?;
        let current = match self.get_raw(&res.store_key(), &nsv, name) {
            Some(o) => in_version(o, res),
            None if create_if_absent && subresource.is_none() => {
                let base = json!({"apiVersion": res.api_version(), "kind": res.kind, "metadata": {"name": name}});
                let obj = patched(&base)?;
                return self.create(res, ns, obj, dry_run);
            }
            None => return Err(ApiError::not_found(res, name)),
        };
        // A resourceVersion in the patch is a precondition: update() refuses
        // one that is not the current version.
        let new = patched(&current)?;
        self.update(res, ns, name, new, subresource, dry_run)
    }

    /// Deletes an object: at once, or by setting deletionTimestamp while
    /// finalizers remain. Dependents (by ownerReferences) are deleted too
    /// unless orphaned; deleting a Namespace deletes what it holds.
    pub fn delete(
        &mut self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let ns = scope_ns(res, ns)?;
        let key = res.store_key();
        let old = self
            .get_raw(&key, &ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, name))?;
        if let Some(uid) = &opts.uid {
            if Some(uid.as_str()) != old.pointer("/metadata/uid").and_then(Value::as_str) {
                return Err(ApiError::conflict_msg(
                    res,
                    name,
                    "Precondition failed: UID does not match",
                ));
            }
        }
        if let Some(rv) = &opts.resource_version {
            if *rv != object_rv(&old).to_string() {
                return Err(ApiError::conflict_msg(
                    res,
                    name,
                    "Precondition failed: ResourceVersion does not match",
                ));
            }
        }
        let req = AdmissionRequest {
            operation: Operation::Delete,
            resource: res,
            namespace: &ns,
            name,
            subresource: None,
            dry_run: opts.dry_run,
            old_object: Some(&old),
        };
        self.admit(&req, None)?;
        if opts.dry_run {
            if self.admission.recording() {
                self.capture_cascade(res, &ns, name, &old)?;
            }
            return Ok(in_version(&old, res));
        }
        let is_namespace = res.group.is_empty() && res.plural == "namespaces";
        if let Some(grace) = graceful_pod_grace(res, &old, opts) {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                // Already terminating: the first deadline stands.
                return Ok(in_version(&old, res));
            }
            return self.mark_pod_terminating(res, &ns, name, old, grace);
        }
        let result = if !finalizers(&old).is_empty() || is_namespace {
            let grace_left = old
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if old.pointer("/metadata/deletionTimestamp").is_some() && grace_left > 0 {
                // A Pod terminating gracefully that still has finalizers:
                // its grace period is over (it goes once they are done).
                self.mark_pod_terminating(res, &ns, name, old.clone(), 0)?
            } else if old.pointer("/metadata/deletionTimestamp").is_some() {
                in_version(&old, res)
            } else {
                let mut marked = old.clone();
                let now = format_rfc3339(self.clock.now_unix());
                if let Some(m) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("deletionTimestamp".into(), Value::String(now));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                if is_namespace {
                    marked["status"] = json!({"phase": "Terminating"});
                }
                let rv = self.rv + 1;
                set_rv(&mut marked, rv);
                self.journal(Mutation::Put {
                    group: res.group.clone(),
                    plural: res.plural.clone(),
                    object: marked.clone(),
                })?;
                self.rv = rv;
                self.objects
                    .entry(key.clone())
                    .or_default()
                    .insert((ns.clone(), name.to_string()), marked.clone());
                self.emit(Logged {
                    rv,
                    key: key.clone(),
                    namespace: ns.clone(),
                    type_: EventType::Modified,
                    object: marked.clone(),
                    old: Some(old.clone()),
                });
                in_version(&marked, res)
            }
        } else {
            let gone = self.remove(key.clone(), &ns, name, None)?;
            in_version(&gone, res)
        };
        if !opts.orphan {
            if let Some(uid) = old.pointer("/metadata/uid").and_then(Value::as_str) {
                self.delete_dependents(uid)?;
            }
        }
        if is_namespace {
            self.empty_namespace(name)?;
        }
        Ok(result)
    }

    /// Graceful deletion of a Pod bound to a node (as the real server's
    /// Pod strategy): `deletionTimestamp` = now + `grace` and
    /// `deletionGracePeriodSeconds` = `grace`; the object stays (a MODIFIED
    /// event) until a DELETE with grace period 0 (the kubelet's, once the
    /// containers are gone). Dependents are left to that final delete.
    fn mark_pod_terminating(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        old: Value,
        grace: i64,
    ) -> Result<Value, ApiError> {
        let key = res.store_key();
        let mut marked = old.clone();
        let when = format_rfc3339(self.clock.now_unix().saturating_add(grace));
        if let Some(m) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("deletionTimestamp".into(), Value::String(when));
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
        let rv = self.rv + 1;
        set_rv(&mut marked, rv);
        self.journal(Mutation::Put {
            group: res.group.clone(),
            plural: res.plural.clone(),
            object: marked.clone(),
        })?;
        self.rv = rv;
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.to_string(), name.to_string()), marked.clone());
        self.emit(Logged {
            rv,
            key,
            namespace: ns.to_string(),
            type_: EventType::Modified,
            object: marked.clone(),
            old: Some(old),
        });
        Ok(in_version(&marked, res))
    }

    /// Removes an object for good (its finalizers are done).
    fn remove(
        &mut self,
        key: StoreKey,
        ns: &str,
        name: &str,
        last: Option<Value>,
    ) -> Result<Value, ApiError> {
        let Some(old) = self.get_raw(&key, ns, name).cloned() else {
            return Err(ApiError::new(404, "NotFound", format!("{name} not found")));
        };
        let mut gone = last.unwrap_or_else(|| old.clone());
        let rv = self.rv + 1;
        self.journal(Mutation::Delete {
            group: key.group.clone(),
            plural: key.plural.clone(),
            namespace: ns.to_string(),
            name: name.to_string(),
            rv,
        })?;
        self.rv = rv;
        set_rv(&mut gone, rv);
        if let Some(m) = self.objects.get_mut(&key) {
            m.remove(&(ns.to_string(), name.to_string()));
        }
        self.reindex(&key, ns, name, Some(&old), None);
        if key.group == "apiextensions.k8s.io" && key.plural == "customresourcedefinitions" {
            for r in self.registry.remove_crd(name) {
                // Objects of a deleted CRD go with it.
                let k = r.store_key();
                if self.registry.all().any(|x| x.store_key() == k) {
                    continue;
                }
                let ids: Vec<(String, String)> = self
                    .objects
                    .get(&k)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                for (ons, oname) in ids {
                    self.remove(k.clone(), &ons, &oname, None)?;
                }
            }
        }
        self.emit(Logged {
            rv,
            key,
            namespace: ns.to_string(),
            type_: EventType::Deleted,
            object: gone.clone(),
            old: None,
        });
        if !ns.is_empty() {
            self.finish_namespace_if_empty(ns)?;
        }
        Ok(gone)
    }

    fn resource_for_key(&self, key: &StoreKey) -> Option<Resource> {
        self.registry
            .all()
            .find(|r| r.store_key() == *key && r.version == r.storage_version)
            .or_else(|| self.registry.all().find(|r| r.store_key() == *key))
            .cloned()
    }

    fn delete_dependents(&mut self, owner_uid: &str) -> Result<(), ApiError> {
        let deps: Vec<(StoreKey, String, String)> = self
            .dependents
            .get(owner_uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for (key, ns, name) in deps {
            if let Some(res) = self.resource_for_key(&key) {
                let ns_opt = (!ns.is_empty()).then_some(ns.as_str());
                match self.delete(&res, ns_opt, &name, &DeleteOptions::default()) {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn empty_namespace(&mut self, ns: &str) -> Result<(), ApiError> {
        let keys: Vec<StoreKey> = self.objects.keys().cloned().collect();
        for key in keys {
            let Some(res) = self.resource_for_key(&key) else {
                continue;
            };
            if !res.namespaced {
                continue;
            }
            let names: Vec<String> = self.objects[&key]
                .keys()
                .filter(|(ons, _)| ons == ns)
                .map(|(_, n)| n.clone())
                .collect();
            for n in names {
                match self.delete(&res, Some(ns), &n, &DeleteOptions::default()) {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.finish_namespace_if_empty(ns)
    }

    fn finish_namespace_if_empty(&mut self, ns: &str) -> Result<(), ApiError> {
        let ns_key = StoreKey {
            group: String::new(),
            plural: "namespaces".into(),
        };
        let terminating = self
            .get_raw(&ns_key, "", ns)
            .is_some_and(|n| n.pointer("/metadata/deletionTimestamp").is_some());
        if !terminating {
            return Ok(());
        }
        let occupied = self
            .objects
            .iter()
            .any(|(k, m)| *k != ns_key && m.keys().any(|(ons, _)| ons == ns));
        if !occupied {
            self.remove(ns_key, "", ns, None)?;
        }
        Ok(())
    }

    /// Keeps the indexes (dependents by owner UID, Pods by node) in step
    /// with a change of one object from `old` to `new`.
    fn reindex(
        &mut self,
        key: &StoreKey,
        ns: &str,
        name: &str,
        old: Option<&Value>,
        new: Option<&Value>,
    ) {
        let id = (key.clone(), ns.to_string(), name.to_string());
        for uid in owner_uids(old) {
            if let Some(set) = self.dependents.get_mut(&uid) {
                set.remove(&id);
                if set.is_empty() {
                    self.dependents.remove(&uid);
                }
            }
        }
        for uid in owner_uids(new) {
            self.dependents.entry(uid).or_default().insert(id.clone());
        }
        if key.group.is_empty() && key.plural == "pods" {
            let pod = (ns.to_string(), name.to_string());
            if let Some(o) = old {
                let node = crate::selectors::field_value(o, NODE_NAME_FIELD);
                if let Some(set) = self.pods_by_node.get_mut(&node) {
                    set.remove(&pod);
                    if set.is_empty() {
                        self.pods_by_node.remove(&node);
                    }
                }
            }
            if let Some(n) = new {
                let node = crate::selectors::field_value(n, NODE_NAME_FIELD);
                self.pods_by_node.entry(node).or_default().insert(pod);
            }
        }
    }

    fn journal(&mut self, m: Mutation) -> Result<(), ApiError> {
        if let Some(j) = self.journal.as_mut() {
            j.record(&m).map_err(|e| {
                ApiError::new(
                    500,
                    "InternalError",
                    format!("the state file could not be written: {e}"),
                )
            })?;
        }
        Ok(())
    }

    fn emit(&mut self, ev: Logged) {
        // One copy of the object per served version, shared by its watchers.
        let mut copies: Vec<(String, Arc<SharedObject>)> = Vec::new();
        let mut closed = Vec::new();
        for id in self
            .watchers
            .candidates(&ev.key, &ev.object, ev.old.as_ref())
        {
            let Some(w) = self.watchers.all.get(&id) else {
                continue;
            };
            let Some(type_) = event_type_for(&w.spec, &ev) else {
                continue;
            };
            let version = w.spec.resource.api_version();
            let object = match copies.iter().find(|(v, _)| *v == version) {
                Some((_, o)) => o.clone(),
                None => {
                    let o = SharedObject::new(in_version(&ev.object, &w.spec.resource));
                    copies.push((version, o.clone()));
                    o
                }
            };
            if w.tx.send(WatchEvent { type_, object }).is_err() {
                closed.push(id);
            }
        }
        for id in closed {
            self.watchers.remove(id);
        }
        self.log.push_back(ev);
        self.trim_log();
    }

    fn trim_log(&mut self) {
        while self.log.len() > self.history_limit {
            if let Some(e) = self.log.pop_front() {
                self.compacted_rv = e.rv;
            }
        }
    }

    /// Drops the whole event log: watches from any earlier resourceVersion
    /// get 410 Gone (as after an etcd compaction).
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted_rv = self.rv;
    }

    /// Starts a watch. `rv` = None or "0": synthetic ADDED events for the
    /// current state first; otherwise every event after `rv`, or 410 Gone
    /// when those events have been compacted. `initial_events` serves
    /// `sendInitialEvents=true` (current state, then a BOOKMARK marking its
    /// end).
    pub fn watch(
        &mut self,
        spec: WatchSpec,
        rv: Option<&str>,
        initial_events: bool,
    ) -> Result<(u64, mpsc::UnboundedReceiver<WatchEvent>), ApiError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let res = spec.resource.clone();
        let from = match rv {
            None | Some("") | Some("0") => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
            ),
        };
        if initial_events || from.is_none() {
            for obj in self
                .objects
                .get(&res.store_key())
                .into_iter()
                .flat_map(|m| m.values())
            {
                if ns_matches(&spec, obj) && selected(obj, &spec.labels, &spec.fields) {
                    let _ = tx.send(WatchEvent {
                        type_: EventType::Added,
                        object: SharedObject::new(in_version(obj, &res)),
                    });
                }
            }
            if initial_events {
                let _ = tx.send(WatchEvent {
                    type_: EventType::Bookmark,
                    object: SharedObject::new(json!({
                        "kind": res.kind, "apiVersion": res.api_version(),
                        "metadata": {"resourceVersion": self.rv.to_string(),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}
                    })),
                });
            }
        } else if let Some(from) = from {
            if from < self.compacted_rv {
                let _ = tx.send(gone_event(from, self.compacted_rv));
                return Ok((0, rx));
            }
            for ev in self.log.iter().filter(|e| e.rv > from) {
                if let Some(out) = event_for(&spec, ev) {
                    let _ = tx.send(out);
                }
            }
        }
        let id = self.next_watch_id;
        self.next_watch_id += 1;
        self.watchers.insert(id, Watcher { spec, tx });
        Ok((id, rx))
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that
    /// asked for bookmarks (the embedder calls this on its own timer).
    pub fn send_bookmarks(&mut self) {
        let closed: Vec<u64> = self
            .watchers
            .all
            .iter()
            .filter(|(_, w)| w.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            self.watchers.remove(id);
        }
        let rv = self.rv.to_string();
        for w in self.watchers.all.values() {
            if w.spec.bookmarks {
                let _ = w.tx.send(WatchEvent {
                    type_: EventType::Bookmark,
                    object: SharedObject::new(json!({"kind": w.spec.resource.kind, "apiVersion": w.spec.resource.api_version(),
                                   "metadata": {"resourceVersion": rv}})),
                });
            }
        }
    }

    /// Ends every watch stream (clients see the connection close).
    pub fn drop_watches(&mut self) {
        self.watchers = Watchers::default();
    }

    /// Ends every watch with a 410 Gone error event and compacts the log,
    /// so clients must list again.
    pub fn expire_watches(&mut self) {
        self.compact();
        for w in std::mem::take(&mut self.watchers).all.into_values() {
            let _ = w.tx.send(gone_event(self.rv, self.rv));
        }
    }

    /// Ends one watch.
    pub fn stop_watch(&mut self, id: u64) {
        self.watchers.remove(id);
    }

    /// Number of open watches.
    pub fn watch_count(&self) -> usize {
        self.watchers
            .all
            .values()
            .filter(|w| !w.tx.is_closed())
            .count()
    }
}

fn gone_event(from: u64, oldest: u64) -> WatchEvent {
    WatchEvent {
        type_: EventType::Error,
        object: SharedObject::new(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({oldest})"),
            "reason": "Expired", "code": 410
        })),
    }
}

fn ns_matches(spec: &WatchSpec, obj: &Value) -> bool {
    match &spec.namespace {
        Some(ns) => namespace_of(obj) == *ns,
        None => true,
    }
}

/// The event a watcher sees for a logged change, if any.
fn event_for(spec: &WatchSpec, ev: &Logged) -> Option<WatchEvent> {
    event_type_for(spec, ev).map(|type_| WatchEvent {
        type_,
        object: SharedObject::new(in_version(&ev.object, &spec.resource)),
    })
}

/// The type of event a watcher sees for a logged change, if any: selector
/// moves turn MODIFIED into ADDED or DELETED, as the real apiserver does.
fn event_type_for(spec: &WatchSpec, ev: &Logged) -> Option<EventType> {
    if ev.key != spec.resource.store_key() {
        return None;
    }
    if let Some(ns) = &spec.namespace {
        if ev.namespace != *ns {
            return None;
        }
    }
    let now = selected(&ev.object, &spec.labels, &spec.fields);
    let type_ = match ev.type_ {
        EventType::Modified => {
            let before = ev
                .old
                .as_ref()
                .is_some_and(|o| selected(o, &spec.labels, &spec.fields));
            match (before, now) {
                (true, true) => EventType::Modified,
                (false, true) => EventType::Added,
                (true, false) => EventType::Deleted,
                (false, false) => return None,
            }
        }
        t if now => t,
        _ => return None,
    };
    Some(type_)
}

fn selected(obj: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    labels.matches(obj.pointer("/metadata/labels")) && fields.matches(obj)
}

fn owner_uids(obj: Option<&Value>) -> Vec<String> {
    obj.and_then(|o| o.pointer("/metadata/ownerReferences"))
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The grace period of a DELETE of `old` that only marks it: a Pod bound
/// to a node (`spec.nodeName`), deleted with `gracePeriodSeconds` absent
/// (the Pod's `spec.terminationGracePeriodSeconds`, else 30) or positive.
/// `None`: the delete proceeds as for any object. A Pod already
/// terminating gracefully keeps its deadline (`Some` of its period).
fn graceful_pod_grace(res: &Resource, old: &Value, opts: &DeleteOptions) -> Option<i64> {
    if !(res.group.is_empty() && res.plural == "pods") {
        return None;
    }
    let bound = old
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !bound {
        return None;
    }
    let grace = match opts.grace_period_seconds {
        Some(g) if g <= 0 => return None,
        Some(g) => g,
        None => old
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .filter(|g| *g > 0)
            .unwrap_or(30),
    };
    match old
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        // Already terminating: its period stands.
        Some(current) if old.pointer("/metadata/deletionTimestamp").is_some() => {
            (current > 0).then_some(current)
        }
        _ => Some(grace),
    }
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn is_crd(res: &Resource) -> bool {
    res.group == "apiextensions.k8s.io" && res.plural == "customresourcedefinitions"
}

fn crd_established(obj: &mut Value) {
    let names = obj.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    obj["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
        ],
        "storedVersions": obj.pointer("/spec/versions").and_then(Value::as_array)
            .map(|vs| vs.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>())
            .unwrap_or_default(),
    });
}

fn default_status(res: &Resource, obj: &mut Value) {
    if res.custom {
        return;
    }
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "namespaces") => {
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
        }
        ("", "pods") if obj.pointer("/status/phase").is_none() => {
            if obj.get("status").is_none_or(|s| !s.is_object()) {
                obj["status"] = json!({});
            }
            obj["status"]["phase"] = json!("Pending");
        }
        _ => {}
    }
}

/// The object as seen in a resource's version (CRDs without conversion:
/// only apiVersion differs).
fn in_version(obj: &Value, res: &Resource) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(res.api_version()));
        m.insert("kind".into(), Value::String(res.kind.clone()));
    }
    o
}

fn spec_of(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

fn check_type(res: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body is not a JSON object".into(),
        ));
    };
    let kind = o.get("kind").and_then(Value::as_str).unwrap_or_default();
    if !kind.is_empty() && kind != res.kind {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the resource {} ({})",
            res.qualified(),
            res.kind
        )));
    }
    let av = o
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !av.is_empty() {
        let (g, _) = crate::resources::split_api_version(av);
        if g != res.group {
            return Err(ApiError::bad_request(format!(
                "the apiVersion of the object ({av}) does not match the resource {}",
                res.qualified()
            )));
        }
    }
    o.insert("kind".into(), Value::String(res.kind.clone()));
    o.insert("apiVersion".into(), Value::String(res.api_version()));
    if !o.contains_key("metadata") {
        o.insert("metadata".into(), json!({}));
    }
    Ok(())
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    obj.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::bad_request("metadata must be an object".into()))
}

fn scope_ns(res: &Resource, ns: Option<&str>) -> Result<String, ApiError> {
    match (res.namespaced, ns) {
        (true, Some(n)) if !n.is_empty() => Ok(n.to_string()),
        (true, _) => Err(ApiError::bad_request(format!(
            "{} is namespaced: the request needs a namespace",
            res.qualified()
        ))),
        (false, _) => Ok(String::new()),
    }
}

fn name_problem(res: &Resource, name: &str) -> Option<&'static str> {
    if res.group.is_empty() && res.plural == "namespaces" {
        return spur_dns_label(name);
    }
    if name.len() > 253 {
        return Some("must be no more than 253 characters");
    }
    let ok = name.split('.').all(|l| spur_dns_label(l).is_none());
    (!ok).then_some(
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
    )
}

fn spur_dns_label(s: &str) -> Option<&'static str> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Some("must be 1-63 characters");
    }
    if !b.iter().all(|&c| alnum(c) || c == b'-') || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Some(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        );
    }
    None
}

/// The namespace of an object ("" when cluster-scoped).
pub fn namespace_of(obj: &Value) -> String {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The name of an object.
pub fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The resourceVersion of a stored object.
pub fn object_rv(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

fn encode_continue(ns: &str, name: &str) -> String {
    let raw = format!("{ns}/{name}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(t: &str) -> Option<(String, String)> {
    if !t.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..t.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(t.get(i..i + 2)?, 16).ok())
        .collect();
    let s = String::from_utf8(bytes?).ok()?;
    let (ns, name) = s.split_once('/')?;
    Some((ns.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue("default", "pod-1");
        assert_eq!(
            decode_continue(&t),
            Some(("default".into(), "pod-1".into()))
        );
        assert_eq!(decode_continue("zz"), None);
    }
}
