//! NodeIPAM: giving every Node its Pod CIDRs (`spec.podCIDR`,
//! `spec.podCIDRs`), one per configured IP family, when `nodeIPAM` is
//! enabled in `spur-controller.conf`.
//!
//! What lives here: the level-driven reconciler. The CIDRs in use are the
//! ones recorded in the Nodes' `spec.podCIDRs`, so a restarted controller
//! rebuilds its state from the Nodes and never reassigns, and a deleted
//! Node's CIDRs are free because no Node holds them any more. A Node
//! without podCIDRs gets the lowest free CIDR of every family, in the order
//! of `clusterCIDRs`. A Node whose podCIDRs clash with an older Node's, lie
//! outside the cluster CIDRs or lack a configured family is reported
//! ([`NodeProblem`], a `tracing` warning), never rewritten: Kubernetes does
//! not let podCIDRs change once set.
//!
//! Two controllers running at once (before leader election) must not give
//! one CIDR to two Nodes. A resourceVersion on the Node write alone does
//! not prevent that (the two writes go to different Nodes), so every round
//! that assigns first records its claims, Node name to CIDRs, in one ledger
//! ConfigMap ([`LEDGER_NAMESPACE`]/[`LEDGER_NAME`]) written with the
//! resourceVersion it read: of two rounds planned from the same state only
//! one gets through, the other is aborted and retried from fresh state.
//! The ledger holds only claims not yet visible on their Node; claims of
//! Nodes that hold CIDRs or are gone are dropped. The Node itself is then
//! merge-patched with its resourceVersion.
//!
//! What does not live here: the carving math (slots, Service CIDR
//! exclusion, lowest free first, exhaustion), which is
//! `spur_core::nodeipam`; the configuration rules (`spur_core::config`).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use spur_core::config::NodeIpamConfig;
use spur_core::nodeipam::{NodeCidrAllocator, NodeIpamError};
use tokio::time::Instant;

use crate::watchbackoff::{seed_for, WatchBackoff};

/// Namespace of the ledger ConfigMap of pending CIDR claims.
pub const LEDGER_NAMESPACE: &str = "kube-system";
/// Name of the ledger ConfigMap of pending CIDR claims.
pub const LEDGER_NAME: &str = "spur-nodeipam";

/// Something wrong with a Node's Pod CIDRs that the reconciler reports and
/// leaves alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeProblem {
    /// A podCIDRs entry that is not a CIDR.
    #[error("Node {node}: spec.podCIDRs entry {value:?} is not a CIDR; left as is")]
    Unparseable {
        /// The Node.
        node: String,
        /// The entry.
        value: String,
    },
    /// A podCIDRs entry that is not a node CIDR of the cluster CIDRs.
    #[error("Node {node}: spec.podCIDRs entry {cidr} is not usable: {reason}; left as is")]
    Outside {
        /// The Node.
        node: String,
        /// The entry.
        cidr: IpNet,
        /// Why (outside the cluster CIDR, wrong size, no cluster CIDR of
        /// its family).
        reason: NodeIpamError,
    },
    /// A podCIDRs entry an older Node holds too.
    #[error("Node {node}: spec.podCIDRs entry {cidr} is also held by Node {holder}; left as is")]
    Conflict {
        /// The Node.
        node: String,
        /// The entry.
        cidr: IpNet,
        /// The Node that holds it (created first).
        holder: String,
    },
    /// podCIDRs set without a CIDR of a configured family.
    #[error(
        "Node {node}: spec.podCIDRs has no {family} CIDR although cluster CIDR {cluster_cidr} is \
         configured; podCIDRs cannot change once set, left as is"
    )]
    MissingFamily {
        /// The Node.
        node: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The cluster CIDR of that family.
        cluster_cidr: IpNet,
    },
    /// No free CIDR left for a Node that has none.
    #[error("Node {node}: no Pod CIDRs assigned: {source}")]
    Exhausted {
        /// The Node.
        node: String,
        /// The exhaustion, naming the cluster CIDR.
        source: NodeIpamError,
    },
}

/// CIDRs to write to one Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The Node.
    pub node: String,
    /// Its resourceVersion in the snapshot (a write precondition).
    pub resource_version: Option<String>,
    /// Its podCIDRs, in the order of `clusterCIDRs`.
    pub cidrs: Vec<IpNet>,
}

/// What a round decided from one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIpamPlan {
    /// CIDRs to write, by Node, in Node order (oldest first).
    pub assignments: Vec<Assignment>,
    /// Nodes left alone, and why.
    pub problems: Vec<NodeProblem>,
    /// The ledger's new content: the claims of Nodes that exist and hold no
    /// CIDRs yet.
    pub claims: BTreeMap<String, Vec<IpNet>>,
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

/// A Node's recorded Pod CIDRs: `spec.podCIDRs`, or `spec.podCIDR` when
/// only that is set (older writers).
pub fn node_pod_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    match (&spec.pod_cidrs, &spec.pod_cidr) {
        (Some(list), _) if !list.is_empty() => list.clone(),
        (_, Some(one)) if !one.is_empty() => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// Decides a round (pure): occupies the CIDRs the Nodes hold (oldest Node
/// first, so a clash is reported on the younger one), honours the ledger's
/// claims of Nodes still without CIDRs when they are still free, and
/// allocates for the remaining Nodes without CIDRs.
pub fn plan(
    config: &NodeIpamConfig,
    nodes: &[Node],
    claims: &BTreeMap<String, Vec<IpNet>>,
) -> Result<NodeIpamPlan, NodeIpamError> {
    let mut alloc = NodeCidrAllocator::new(config)?;
    let mut ordered: Vec<&Node> = nodes.iter().collect();
    ordered.sort_by(|a, b| {
        let key = |n: &Node| {
            (
                n.metadata.creation_timestamp.as_ref().map(|t| t.0),
                n.name_any(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut out = NodeIpamPlan::default();
    let mut holders: BTreeMap<IpNet, String> = BTreeMap::new();
    let mut without: Vec<&Node> = Vec::new();
    for node in &ordered {
        let name = node.name_any();
        let recorded = node_pod_cidrs(node);
        if recorded.is_empty() {
            without.push(node);
            continue;
        }
        let mut families: Vec<&'static str> = Vec::new();
        for value in recorded {
            let cidr: IpNet = match value.parse() {
                Ok(c) => c,
                Err(_) => {
                    out.problems.push(NodeProblem::Unparseable {
                        node: name.clone(),
                        value,
                    });
                    continue;
                }
            };
            families.push(family(&cidr));
            match alloc.occupy(cidr) {
                Ok(()) => {
                    holders.insert(cidr, name.clone());
                }
                Err(NodeIpamError::AlreadyAssigned { .. }) => {
                    out.problems.push(NodeProblem::Conflict {
                        node: name.clone(),
                        cidr,
                        holder: holders.get(&cidr).cloned().unwrap_or_default(),
                    });
                }
                Err(reason) => out.problems.push(NodeProblem::Outside {
                    node: name.clone(),
                    cidr,
                    reason,
                }),
            }
        }
        for pool in alloc.pools() {
            let cluster_cidr = pool.cluster_cidr();
            if !families.contains(&family(&cluster_cidr)) {
                out.problems.push(NodeProblem::MissingFamily {
                    node: name.clone(),
                    family: family(&cluster_cidr),
                    cluster_cidr,
                });
            }
        }
    }
    // Claims first: a claim may already be on its way to the Node.
    let mut unclaimed: Vec<&Node> = Vec::new();
    for node in without {
        let name = node.name_any();
        let claim = claims.get(&name).filter(|c| {
            c.len() == alloc.pools().len()
                && c.iter()
                    .zip(alloc.pools())
                    .all(|(cidr, pool)| family(cidr) == family(&pool.cluster_cidr()))
        });
        let taken = claim.and_then(|c| {
            let mut done: Vec<IpNet> = Vec::new();
            for cidr in c {
                if alloc.occupy(*cidr).is_err() {
                    for d in done {
                        // Just occupied, so releasing cannot fail.
                        let _ = alloc.release(d);
                    }
                    return None;
                }
                done.push(*cidr);
            }
            Some(done)
        });
        match taken {
            Some(cidrs) => {
                out.claims.insert(name.clone(), cidrs.clone());
                out.assignments.push(Assignment {
                    node: name,
                    resource_version: node.metadata.resource_version.clone(),
                    cidrs,
                });
            }
            None => unclaimed.push(node),
        }
    }
    for node in unclaimed {
        let name = node.name_any();
        match alloc.allocate() {
            Ok(cidrs) => {
                out.claims.insert(name.clone(), cidrs.clone());
                out.assignments.push(Assignment {
                    node: name,
                    resource_version: node.metadata.resource_version.clone(),
                    cidrs,
                });
            }
            Err(source) => out
                .problems
                .push(NodeProblem::Exhausted { node: name, source }),
        }
    }
    out.assignments
        .sort_by_key(|a| ordered.iter().position(|n| n.name_any() == a.node));
    Ok(out)
}

/// The claims recorded in a ledger ConfigMap: key Node name, value the
/// CIDRs separated by commas. Entries that do not parse are dropped (with
/// a warning): the next write of the ledger removes them.
pub fn parse_claims(ledger: &ConfigMap) -> BTreeMap<String, Vec<IpNet>> {
    let mut out = BTreeMap::new();
    for (node, value) in ledger.data.iter().flatten() {
        let parsed: Result<Vec<IpNet>, _> = value.split(',').map(|s| s.trim().parse()).collect();
        match parsed {
            Ok(cidrs) => {
                out.insert(node.clone(), cidrs);
            }
            Err(_) => tracing::warn!(
                configmap = %ledger.name_any(), key = %node, value = %value,
                "dropping a NodeIPAM claim that is not a list of CIDRs"
            ),
        }
    }
    out
}

/// The ledger data for `claims` (the inverse of [`parse_claims`]).
pub fn claims_data(claims: &BTreeMap<String, Vec<IpNet>>) -> BTreeMap<String, String> {
    claims
        .iter()
        .map(|(node, cidrs)| {
            let joined: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
            (node.clone(), joined.join(","))
        })
        .collect()
}

/// The state one round starts from: the ledger, then the Nodes, read in
/// that order (a claim is dropped from the ledger only once its Node shows
/// the CIDRs, so reading the ledger first never misses a claim).
#[derive(Debug, Clone)]
pub struct NodeIpamSnapshot {
    /// The ledger ConfigMap, if it exists.
    pub ledger: Option<ConfigMap>,
    /// Every Node.
    pub nodes: Vec<Node>,
}

impl NodeIpamSnapshot {
    /// The claims the ledger holds.
    pub fn claims(&self) -> BTreeMap<String, Vec<IpNet>> {
        self.ledger.as_ref().map(parse_claims).unwrap_or_default()
    }
}

/// What a round did.
#[derive(Debug, Default)]
pub struct NodeIpamRound {
    /// Nodes given CIDRs in this round.
    pub assigned: Vec<(String, Vec<IpNet>)>,
    /// Nodes left alone, and why.
    pub problems: Vec<NodeProblem>,
    /// Node writes that failed (a Node changed or went away since the
    /// snapshot), with the error; the next round decides again.
    pub failed: Vec<(String, kube::Error)>,
}

/// Why a NodeIPAM round or loop could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeIpamRunError {
    /// `nodeIPAM.enableNodeIPAM` is false.
    #[error("NodeIPAM is disabled (nodeIPAM.enableNodeIPAM is false)")]
    Disabled,
    /// The configuration cannot be carved.
    #[error("nodeIPAM configuration: {0}")]
    Config(#[from] NodeIpamError),
    /// Listing Nodes failed (a round needs them all).
    #[error("listing nodes: {0}")]
    ListNodes(#[source] kube::Error),
    /// Reading or writing the ledger failed.
    #[error("ConfigMap {namespace}/{name} (NodeIPAM ledger): {source}")]
    Ledger {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Another writer changed the ledger since the snapshot: the round was
    /// aborted before writing any Node.
    #[error(
        "ConfigMap {namespace}/{name} (NodeIPAM ledger) changed since it was read (another \
         controller assigning?); round aborted, nothing assigned"
    )]
    LedgerConflict {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The Node watch ended (it never ends while the client works).
    #[error("the Node watch ended")]
    WatchEnded,
}

/// Settings of the NodeIPAM loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeIpamLoopConfig {
    /// How long Node events are collected before a round runs.
    pub debounce: Duration,
    /// How long to wait before another round after one that failed,
    /// conflicted or left a Node write failed.
    pub retry: Duration,
    /// Seed of the Node watch's backoff jitter (None: process-random).
    pub seed: Option<u64>,
}

impl Default for NodeIpamLoopConfig {
    /// 200 ms of debounce, two seconds before a retry, process-random
    /// jitter.
    fn default() -> Self {
        NodeIpamLoopConfig {
            debounce: Duration::from_millis(200),
            retry: Duration::from_secs(2),
            seed: None,
        }
    }
}

/// Assigns Pod CIDRs to Nodes (see the module documentation).
pub struct NodeIpamReconciler {
    nodes: Api<Node>,
    ledger: Api<ConfigMap>,
    ledger_namespace: String,
    ledger_name: String,
    config: NodeIpamConfig,
}

impl NodeIpamReconciler {
    /// A reconciler for `config`, writing through `client`, with the ledger
    /// at [`LEDGER_NAMESPACE`]/[`LEDGER_NAME`]. Fails when NodeIPAM is
    /// disabled or the cluster CIDRs cannot be carved.
    pub fn new(client: Client, config: NodeIpamConfig) -> Result<Self, NodeIpamRunError> {
        Self::with_ledger(client, config, LEDGER_NAMESPACE, LEDGER_NAME)
    }

    /// As [`new`](Self::new), with the ledger ConfigMap elsewhere.
    pub fn with_ledger(
        client: Client,
        config: NodeIpamConfig,
        namespace: &str,
        name: &str,
    ) -> Result<Self, NodeIpamRunError> {
        if !config.enable_node_ipam {
            return Err(NodeIpamRunError::Disabled);
        }
        NodeCidrAllocator::new(&config)?;
        Ok(NodeIpamReconciler {
            nodes: Api::all(client.clone()),
            ledger: Api::namespaced(client, namespace),
            ledger_namespace: namespace.to_string(),
            ledger_name: name.to_string(),
            config,
        })
    }

    fn ledger_error(&self, source: kube::Error) -> NodeIpamRunError {
        if matches!(&source, kube::Error::Api(s) if s.code == 409) {
            return NodeIpamRunError::LedgerConflict {
                namespace: self.ledger_namespace.clone(),
                name: self.ledger_name.clone(),
            };
        }
        NodeIpamRunError::Ledger {
            namespace: self.ledger_namespace.clone(),
            name: self.ledger_name.clone(),
            source,
        }
    }

    /// Reads the ledger, then lists the Nodes.
    pub async fn snapshot(&self) -> Result<NodeIpamSnapshot, NodeIpamRunError> {
        let ledger = self
            .ledger
            .get_opt(&self.ledger_name)
            .await
            .map_err(|e| self.ledger_error(e))?;
        let nodes = self
            .nodes
            .list(&ListParams::default())
            .await
            .map_err(NodeIpamRunError::ListNodes)?;
        Ok(NodeIpamSnapshot {
            ledger,
            nodes: nodes.items,
        })
    }

    /// The plan for a snapshot.
    pub fn plan(&self, snapshot: &NodeIpamSnapshot) -> Result<NodeIpamPlan, NodeIpamRunError> {
        Ok(plan(&self.config, &snapshot.nodes, &snapshot.claims())?)
    }

    /// Carries out `plan`, made from `snapshot`: writes the ledger (with
    /// the snapshot's resourceVersion) when the claims change or a Node is
    /// to be written, then patches each Node (with its resourceVersion).
    /// A ledger that changed since the snapshot aborts the round before
    /// any Node is written.
    pub async fn apply(
        &self,
        snapshot: &NodeIpamSnapshot,
        plan: NodeIpamPlan,
    ) -> Result<NodeIpamRound, NodeIpamRunError> {
        for p in &plan.problems {
            tracing::warn!(problem = %p, "NodeIPAM");
        }
        let mut round = NodeIpamRound {
            problems: plan.problems,
            ..NodeIpamRound::default()
        };
        if plan.claims != snapshot.claims() || !plan.assignments.is_empty() {
            self.write_ledger(snapshot.ledger.as_ref(), &plan.claims)
                .await?;
        }
        for a in plan.assignments {
            let cidrs: Vec<String> = a.cidrs.iter().map(ToString::to_string).collect();
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": a.resource_version},
                "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
            });
            match self
                .nodes
                .patch(&a.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %a.node, pod_cidrs = ?cidrs, "Pod CIDRs assigned");
                    round.assigned.push((a.node, a.cidrs));
                }
                Err(e) => {
                    tracing::warn!(node = %a.node, pod_cidrs = ?cidrs, error = %e,
                        "writing the Node's Pod CIDRs failed; the next round decides again");
                    round.failed.push((a.node, e));
                }
            }
        }
        Ok(round)
    }

    async fn write_ledger(
        &self,
        current: Option<&ConfigMap>,
        claims: &BTreeMap<String, Vec<IpNet>>,
    ) -> Result<(), NodeIpamRunError> {
        let data = claims_data(claims);
        let result = match current {
            Some(cm) => {
                let mut cm = cm.clone();
                cm.data = Some(data);
                self.ledger
                    .replace(&self.ledger_name, &PostParams::default(), &cm)
                    .await
            }
            None => {
                let mut cm = ConfigMap {
                    data: Some(data),
                    ..ConfigMap::default()
                };
                cm.metadata.name = Some(self.ledger_name.clone());
                cm.metadata.namespace = Some(self.ledger_namespace.clone());
                self.ledger.create(&PostParams::default(), &cm).await
            }
        };
        result.map(|_| ()).map_err(|e| self.ledger_error(e))
    }

    /// One round: snapshot, plan, apply.
    pub async fn reconcile_once(&self) -> Result<NodeIpamRound, NodeIpamRunError> {
        let snapshot = self.snapshot().await?;
        let plan = self.plan(&snapshot)?;
        self.apply(&snapshot, plan).await
    }

    /// Runs until `shutdown` completes: watches Nodes, runs a round once
    /// the watch has listed them and then one per burst of Node changes
    /// ([`NodeIpamLoopConfig::debounce`] after the burst's first event),
    /// and retries ([`NodeIpamLoopConfig::retry`]) after a round that
    /// failed, was aborted by a ledger conflict or left a Node write
    /// failed. A pending ledger claim is a Node write left to do, so it is
    /// retried too. Watch errors are logged and the watch resumes with
    /// backoff.
    pub async fn run(
        self,
        settings: NodeIpamLoopConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NodeIpamRunError> {
        let mut events = std::pin::pin!(watcher(self.nodes.clone(), watcher::Config::default())
            .backoff(WatchBackoff::new(seed_for(settings.seed, "nodeipam/nodes"))));
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ready = false;
        let mut due: Option<Instant> = None;
        loop {
            let deadline = due;
            let timer = async move {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            // Stop first; then the watch events, so a due round sees every
            // event already delivered; then the timer.
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                ev = events.next() => {
                    let now = Instant::now();
                    match ev {
                        None => return Err(NodeIpamRunError::WatchEnded),
                        Some(Err(e)) => tracing::warn!(error = %e, "Node watch failed; resuming"),
                        Some(Ok(watcher::Event::InitDone)) => {
                            let at = if ready { now + settings.debounce } else { now };
                            ready = true;
                            due = Some(due.map_or(at, |d| d.min(at)));
                        }
                        Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {
                            if ready && due.is_none() {
                                due = Some(now + settings.debounce);
                            }
                        }
                        Some(Ok(_)) => {}
                    }
                }
                () = timer => {
                    due = None;
                    match self.reconcile_once().await {
                        Ok(round) if round.failed.is_empty() => {}
                        Ok(_) => due = Some(Instant::now() + settings.retry),
                        Err(e) => {
                            tracing::warn!(error = %e, "NodeIPAM round failed; retrying");
                            due = Some(Instant::now() + settings.retry);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

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

    fn node(name: &str, age: i64, cidrs: &[&str]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.resource_version = Some(format!("rv-{name}"));
        n.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_000_000 - age).unwrap(),
        ));
        if !cidrs.is_empty() {
            n.spec = Some(NodeSpec {
                pod_cidr: Some(cidrs[0].into()),
                pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
                ..NodeSpec::default()
            });
        }
        n
    }

    #[test]
    fn assigns_lowest_free_around_held_cidrs() {
        let c = config(&["10.0.0.0/16"]);
        let nodes = [
            node("a", 3, &["10.0.0.0/24"]),
            node("b", 2, &[]),
            node("c", 1, &[]),
        ];
        let p = plan(&c, &nodes, &BTreeMap::new()).unwrap();
        assert!(p.problems.is_empty());
        let got: Vec<(&str, Vec<IpNet>)> = p
            .assignments
            .iter()
            .map(|a| (a.node.as_str(), a.cidrs.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b", vec![net("10.0.1.0/24")]),
                ("c", vec![net("10.0.2.0/24")])
            ]
        );
        assert_eq!(p.assignments[0].resource_version.as_deref(), Some("rv-b"));
        assert_eq!(p.claims.len(), 2);
    }

    #[test]
    fn conflicts_are_reported_on_the_younger_node() {
        let c = config(&["10.0.0.0/16"]);
        let nodes = [
            node("young", 1, &["10.0.0.0/24"]),
            node("old", 5, &["10.0.0.0/24"]),
        ];
        let p = plan(&c, &nodes, &BTreeMap::new()).unwrap();
        assert_eq!(
            p.problems,
            vec![NodeProblem::Conflict {
                node: "young".into(),
                cidr: net("10.0.0.0/24"),
                holder: "old".into()
            }]
        );
        assert!(p.assignments.is_empty());
    }

    #[test]
    fn outside_unparseable_and_missing_family_are_reported() {
        let c = config(&["10.0.0.0/16", "fd00::/48"]);
        let nodes = [
            node("x", 3, &["192.168.0.0/24", "fd00::/64"]),
            node("y", 2, &["bogus"]),
        ];
        let p = plan(&c, &nodes, &BTreeMap::new()).unwrap();
        let text: Vec<String> = p.problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 4, "{text:?}");
        assert!(text[0].starts_with("Node x: spec.podCIDRs entry 192.168.0.0/24 is not usable"));
        assert_eq!(
            text[1],
            "Node y: spec.podCIDRs entry \"bogus\" is not a CIDR; left as is"
        );
        assert_eq!(
            text[2],
            "Node y: spec.podCIDRs has no IPv4 CIDR although cluster CIDR 10.0.0.0/16 is \
             configured; podCIDRs cannot change once set, left as is"
        );
        assert!(text[3].starts_with("Node y: spec.podCIDRs has no IPv6 CIDR"));
    }

    #[test]
    fn valid_claims_are_honoured_and_stale_ones_dropped() {
        let c = config(&["10.0.0.0/16"]);
        let nodes = [
            node("holder", 4, &["10.0.5.0/24"]),
            node("claimed", 3, &[]),
            node("clash", 2, &[]),
        ];
        let claims = BTreeMap::from([
            ("claimed".to_string(), vec![net("10.0.7.0/24")]),
            ("clash".to_string(), vec![net("10.0.5.0/24")]),
            ("holder".to_string(), vec![net("10.0.5.0/24")]),
            ("gone".to_string(), vec![net("10.0.9.0/24")]),
        ]);
        let p = plan(&c, &nodes, &claims).unwrap();
        assert_eq!(
            p.claims,
            BTreeMap::from([
                ("claimed".to_string(), vec![net("10.0.7.0/24")]),
                ("clash".to_string(), vec![net("10.0.0.0/24")]),
            ])
        );
        assert_eq!(p.assignments[0].node, "claimed");
        assert_eq!(p.assignments[1].node, "clash");
    }

    #[test]
    fn exhaustion_names_node_and_cluster_cidr() {
        let mut c = config(&["10.0.0.0/23"]);
        c.node_cidr_mask_size_ipv4 = 24;
        let nodes = [node("a", 3, &[]), node("b", 2, &[]), node("c", 1, &[])];
        let p = plan(&c, &nodes, &BTreeMap::new()).unwrap();
        assert_eq!(p.assignments.len(), 2);
        assert_eq!(
            p.problems[0].to_string(),
            "Node c: no Pod CIDRs assigned: cluster CIDR 10.0.0.0/23 has no free /24 node CIDR \
             left (all 2 that do not overlap the Service CIDR are in use)"
        );
    }

    #[test]
    fn claims_round_trip_and_bad_entries_drop() {
        let claims =
            BTreeMap::from([("n1".to_string(), vec![net("10.0.0.0/24"), net("fd00::/64")])]);
        let mut cm = ConfigMap {
            data: Some(claims_data(&claims)),
            ..ConfigMap::default()
        };
        assert_eq!(parse_claims(&cm), claims);
        if let Some(d) = cm.data.as_mut() {
            d.insert("n2".into(), "nonsense".into());
        }
        assert_eq!(parse_claims(&cm), claims);
    }
}
