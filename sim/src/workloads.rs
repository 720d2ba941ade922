//! The scheduler and the workload controllers, live: what the harness
//! does once while applying manifests (`spur_testbed::workloads`), done
//! here from watches, so scaling or editing a workload during a run (the
//! world's churn faults) creates and deletes Pods.
//!
//! - Scheduler: a Pod without `spec.nodeName` gets the next node
//!   round-robin ([`Placement`], the harness's rule), in the order Pods
//!   are placed. Pods this module creates are placed before they are
//!   created (as the harness does); the world should place the Pods of
//!   its manifests with [`Workloads::place`] before applying them, so one
//!   counter sees every Pod in creation order. Pods created unplaced by
//!   anyone else are placed when their ADDED event arrives (a merge patch
//!   of `spec.nodeName`: the embedded server has no binding subresource).
//! - StatefulSets: Pods `<name>-<ordinal>` for every ordinal of
//!   `spec.ordinals.start .. + spec.replicas`, created together (as the
//!   harness does); a deleted Pod is recreated under the same name (a new
//!   UID) once it is gone; scale-down deletes from the highest ordinal.
//! - Deployments: Pods `<name>-<10 chars>-<5 chars>` like the harness,
//!   owned by the Deployment (no ReplicaSet objects); scale-up takes the
//!   lowest free replica index, scale-down deletes the newest Pods first;
//!   a template change creates the new Pods, then deletes the old ones.
//!
//! Reconciling reads the owned Pods from the API (a list of the
//! namespace) so a call right after a write sees it; the world may call
//! [`Workloads::reconcile`] right after applying a workload, as the
//! harness creates a workload's Pods before the next manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::{json, Value};
use spur_node::watch_backoff::WatchBackoff;
use spur_testbed::workloads::{
    ordinal_start, replica_pod, replicas, stateful_set_pod, template_hash, workload_kind,
};
use spur_testbed::Placement;

/// A failure of one reconcile (the next event or a retry tries again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{workload}: {reason}")]
pub struct ReconcileError {
    /// `KIND ns/name`.
    pub workload: String,
    /// What failed.
    pub reason: String,
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Pods created, with their nodes, in order.
    pub created: Vec<(String, Option<String>)>,
    /// Pods deleted (gracefully), in order.
    pub deleted: Vec<String>,
}

/// The scheduler and the Deployment / StatefulSet controllers of a run.
/// Clones share the placement counter.
#[derive(Clone)]
pub struct Workloads {
    client: Client,
    seed: u64,
    placement: Arc<Mutex<Placement>>,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("placement", &*lock(&self.placement))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn resource(kind: &str) -> ApiResource {
    let plural = match kind {
        "StatefulSet" => "statefulsets",
        "Deployment" => "deployments",
        _ => "replicasets",
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("apps", "v1", kind), plural)
}

fn pod_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods")
}

fn meta<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
}

fn owned_by(pod: &Value, uid: &str) -> bool {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
}

fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some()
}

impl Workloads {
    /// The controllers of a cluster reached through `client`, placing over
    /// `nodes` (in order); `seed` seeds their watches' backoff.
    pub fn new(client: Client, nodes: Vec<String>, seed: u64) -> Workloads {
        Workloads {
            client,
            seed,
            placement: Arc::new(Mutex::new(Placement::new(nodes))),
        }
    }

    /// Sets `spec.nodeName` of a Pod object without one (the next node
    /// round-robin); returns its node.
    pub fn place(&self, pod: &mut Value) -> Option<String> {
        lock(&self.placement).place(pod)
    }

    /// Reconciles workload `obj` (as stored: its UID owns the Pods): the
    /// Pods it stands for are created, those it no longer wants deleted.
    pub async fn reconcile(&self, obj: &Value) -> Result<Reconciled, ReconcileError> {
        let Some(kind) = workload_kind(obj) else {
            return Ok(Reconciled::default());
        };
        let name = meta(obj, "name").unwrap_or_default();
        let ns = meta(obj, "namespace").unwrap_or("default");
        let uid = meta(obj, "uid").unwrap_or_default();
        let fail = |reason: String| ReconcileError {
            workload: format!("{kind} {ns}/{name}"),
            reason,
        };
        if uid.is_empty() {
            return Err(fail(
                "the object has no metadata.uid (not as stored)".into(),
            ));
        }
        if terminating(obj) {
            // Its Pods go with it (the API's cascade).
            return Ok(Reconciled::default());
        }
        let pods: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &pod_resource());
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| fail(format!("listing the Pods of namespace {ns}: {e}")))?;
        let all: BTreeMap<String, Value> = list
            .items
            .into_iter()
            .filter_map(|p| {
                let v = serde_json::to_value(&p).ok()?;
                Some((meta(&v, "name")?.to_string(), v))
            })
            .collect();
        let owned: BTreeMap<&String, &Value> =
            all.iter().filter(|(_, p)| owned_by(p, uid)).collect();
        let (create, delete): (Vec<Value>, Vec<String>) = match kind {
            "StatefulSet" => {
                let start = ordinal_start(obj);
                let wanted: BTreeSet<u64> = (start..start.saturating_add(replicas(obj))).collect();
                let create = wanted
                    .iter()
                    .filter(|i| !all.contains_key(&format!("{name}-{i}")))
                    .map(|i| stateful_set_pod(obj, uid, *i))
                    .collect();
                let mut extra: Vec<(u64, String)> = owned
                    .iter()
                    .filter(|(_, p)| !terminating(p))
                    .filter_map(|(n, _)| {
                        let ord: u64 = n.strip_prefix(&format!("{name}-"))?.parse().ok()?;
                        (!wanted.contains(&ord)).then(|| (ord, n.to_string()))
                    })
                    .collect();
                extra.sort_by_key(|e| std::cmp::Reverse(e.0));
                (create, extra.into_iter().map(|(_, n)| n).collect())
            }
            "Deployment" | "ReplicaSet" => {
                let hash = template_hash(obj);
                let current = |p: &Value| {
                    kind != "Deployment"
                        || p.pointer("/metadata/labels/pod-template-hash")
                            .and_then(Value::as_str)
                            == Some(hash.as_str())
                };
                let live: Vec<&Value> = owned
                    .values()
                    .copied()
                    .filter(|p| !terminating(p) && current(p))
                    .collect();
                let want = usize::try_from(replicas(obj)).unwrap_or(usize::MAX);
                let mut create = Vec::new();
                let mut delete = Vec::new();
                if live.len() < want {
                    let mut missing = want - live.len();
                    let mut i = 0u64;
                    while missing > 0 && i < u64::from(u32::MAX) {
                        let pod = replica_pod(obj, uid, i);
                        let pname = meta(&pod, "name").unwrap_or_default().to_string();
                        if !all.contains_key(&pname) {
                            create.push(pod);
                            missing -= 1;
                        }
                        i += 1;
                    }
                } else if live.len() > want {
                    let mut newest: Vec<(&str, &str)> = live
                        .iter()
                        .map(|p| {
                            (
                                meta(p, "creationTimestamp").unwrap_or_default(),
                                meta(p, "name").unwrap_or_default(),
                            )
                        })
                        .collect();
                    newest.sort_by(|a, b| b.cmp(a));
                    delete = newest
                        .into_iter()
                        .take(live.len() - want)
                        .map(|(_, n)| n.to_string())
                        .collect();
                }
                // Old templates' Pods go once the new ones are asked for.
                delete.extend(
                    owned
                        .iter()
                        .filter(|(_, p)| !terminating(p) && !current(p))
                        .map(|(n, _)| n.to_string()),
                );
                (create, delete)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let mut out = Reconciled::default();
        for mut pod in create {
            let node = self.place(&mut pod);
            let pname = meta(&pod, "name").unwrap_or_default().to_string();
            let obj: DynamicObject =
                serde_json::from_value(pod).map_err(|e| fail(format!("Pod {pname}: {e}")))?;
            match pods.create(&PostParams::default(), &obj).await {
                Ok(_) => out.created.push((pname, node)),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(fail(format!("creating Pod {ns}/{pname}: {e}"))),
            }
        }
        for pname in delete {
            match pods.delete(&pname, &DeleteParams::default()).await {
                Ok(_) => out.deleted.push(pname),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(fail(format!("deleting Pod {ns}/{pname}: {e}"))),
            }
        }
        Ok(out)
    }

    /// Places an unplaced Pod (a merge patch of `spec.nodeName`).
    async fn schedule(&self, pod: &Value) -> Result<(), kube::Error> {
        if pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
            || terminating(pod)
        {
            return Ok(());
        }
        let Some(node) = lock(&self.placement).next_node() else {
            return Ok(());
        };
        let ns = meta(pod, "namespace").unwrap_or("default");
        let name = meta(pod, "name").unwrap_or_default();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &pod_resource());
        let patch = json!({"spec": {"nodeName": node}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    }

    /// Runs the scheduler and the controllers until dropped: watches of
    /// StatefulSets, Deployments and Pods (seeded backoff); a workload's
    /// event, or the deletion of a Pod it owns, reconciles it; an
    /// unplaced Pod is placed. Failed reconciles are retried on the next
    /// event of the workload or its Pods.
    pub async fn run(&self) {
        let watch = |kind: &'static str| {
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource(kind));
            watcher(api, watcher::Config::default())
                .backoff(WatchBackoff::for_watch(
                    Some(self.seed),
                    &format!("workloads/{kind}"),
                ))
                .boxed()
        };
        let mut sts = watch("StatefulSet");
        let mut deploys = watch("Deployment");
        let pod_api: Api<DynamicObject> = Api::all_with(self.client.clone(), &pod_resource());
        let mut pods = watcher(pod_api, watcher::Config::default())
            .backoff(WatchBackoff::for_watch(Some(self.seed), "workloads/pods"))
            .boxed();
        // Workloads by UID, as last seen.
        let mut known: BTreeMap<String, Value> = BTreeMap::new();
        loop {
            let (kind, ev) = tokio::select! {
                biased;
                ev = sts.next() => ("StatefulSet", ev),
                ev = deploys.next() => ("Deployment", ev),
                ev = pods.next() => ("Pod", ev),
            };
            let from_pods = kind == "Pod";
            let Some(Ok(ev)) = ev else {
                if ev.is_none() {
                    return;
                }
                continue;
            };
            let (obj, deleted) = match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => (o, false),
                watcher::Event::Delete(o) => (o, true),
                watcher::Event::Init | watcher::Event::InitDone => continue,
            };
            let Ok(v) = serde_json::to_value(&obj) else {
                continue;
            };
            if from_pods {
                if !deleted {
                    if let Err(e) = self.schedule(&v).await {
                        tracing::debug!(error = %e, "Pod not placed");
                    }
                    continue;
                }
                // A deleted Pod of a workload: reconcile its owner.
                let owners: Vec<String> = v
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .map(|r| {
                        r.iter()
                            .filter_map(|o| o["uid"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                for uid in owners {
                    if let Some(w) = known.get(&uid).cloned() {
                        if let Err(e) = self.reconcile(&w).await {
                            tracing::debug!(error = %e, "reconcile failed");
                        }
                    }
                }
                continue;
            }
            let uid = meta(&v, "uid").unwrap_or_default().to_string();
            if deleted {
                known.remove(&uid);
                continue;
            }
            let mut w = v;
            w["apiVersion"] = json!("apps/v1");
            w["kind"] = json!(kind);
            known.insert(uid, w.clone());
            if let Err(e) = self.reconcile(&w).await {
                tracing::debug!(error = %e, "reconcile failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;
