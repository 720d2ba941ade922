//! The real `spur-controller` binary's address garbage collection and pool
//! usage, against the embedded API server over TCP (`gcIntervalSeconds: 1`),
//! seen the way an operator sees them: the IPAMBlocks, the pools'
//! `status.usage` and /metrics. Allocations are written by the agent's own
//! allocator (`spur_node::ipam::Ipam`, in process against the same API),
//! which then "goes away" without any CNI DEL.
//!
//! - Pods deleted while the agent is down lose exactly their addresses;
//!   a Pod recreated under its name (new UID) loses the old sandbox's
//!   address, a Pod whose sandbox was replaced the older container's; the
//!   live holders keep theirs unchanged; usage and
//!   `spur_gc_released_total{reason}` follow.
//! - StatefulSet reservations: scaling 3 -> 1 frees ordinals 1 and 2 (an
//!   ordinal whose Pod still terminates only once the Pod is gone), never
//!   0; deleting the StatefulSet frees 0.
//! - While Pod lists fail, rounds abort and nothing is released although
//!   the Pod is gone; once lists succeed, it is.
//! - `status.usage` (total, used) follows allocations and releases, by
//!   CNI DEL and by GC, up to a full pool; the pool gauges follow.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    cluster, free_port, logs, metric, serve_tcp, start, wait_metric_at_least, wait_metrics,
    write_config, Proc,
};
use ipnet::IpNet;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::Client;
use spur_core::ipamblock::{IPAMBlock, Owner};
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, PoolUsage, SubnetInfo};
use spur_kubeapi::faults::{Fault, Matcher, Rule};
use spur_kubeapi::ApiServer;
use spur_node::ipam::{AllocateRequest, Ipam, IpamConfig};
use tempfile::TempDir;

const ROUNDS: &str = "spur_gc_rounds_total";
const ABORTED: &str = "spur_gc_aborted_total";
const NODE: &str = "node-a";
/// How long any one condition may take to come true.
const WAIT: Duration = Duration::from_secs(10);

/// The running binary and what the test needs to talk to it.
struct Controller {
    dir: TempDir,
    port: u16,
    _proc: Proc,
}

impl Controller {
    /// Serves `server` over TCP, starts the binary (GC every second) and
    /// waits until it leads.
    async fn start(server: &ApiServer) -> Controller {
        let url = serve_tcp(server).await;
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &url, "gcIntervalSeconds: 1\n");
        let port = free_port();
        let proc = start(dir.path(), "controller", port);
        wait_metrics(
            port,
            &["spur_controller_is_leader 1"],
            Duration::from_secs(15),
            dir.path(),
        )
        .await;
        Controller {
            dir,
            port,
            _proc: proc,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(self.port, series).await.expect("metrics answer")
    }

    /// Waits until the collector completed two rounds that both started
    /// after this call (so both saw the cluster as it is now).
    async fn two_full_rounds(&self) {
        let now = self.metric(ROUNDS).await;
        wait_metric_at_least(self.port, ROUNDS, now + 2.0, WAIT, self.dir()).await;
    }

    /// Waits until `spur_gc_released_total` shows exactly these counts
    /// (reasons not named stay absent).
    async fn wait_released(&self, counts: &[(&str, u32)]) {
        let want: Vec<String> = counts
            .iter()
            .map(|(r, n)| format!("spur_gc_released_total{{reason=\"{r}\"}} {n}"))
            .collect();
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        let body = wait_metrics(self.port, &want, WAIT, self.dir()).await;
        let released: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("spur_gc_released_total{"))
            .collect();
        assert_eq!(released.len(), counts.len(), "{released:?}");
    }
}

// ---- The cluster ----------------------------------------------------------

async fn create_pool(client: &Client, name: &str, range: IpRange, gateway: &str) {
    let pools: Api<IPPool> = Api::all(client.clone());
    let pool = IPPool::new(
        name,
        IPPoolSpec {
            ip_ranges: vec![range],
            subnet_info: SubnetInfo {
                gateway: gateway.into(),
                prefix_length: 24,
                vlan: None,
            },
            exclude: vec![],
        },
    );
    pools.create(&PostParams::default(), &pool).await.unwrap();
}

async fn create_pod(client: &Client, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    let p = pods.create(&PostParams::default(), &pod).await.unwrap();
    p.metadata.uid.unwrap()
}

/// Deletes a Pod and waits until it is gone.
async fn delete_pod(client: &Client, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while pods.get_opt(name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "Pod {name} stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_set(client: &Client, name: &str, replicas: i32) {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let set: StatefulSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
}

// ---- The agent --------------------------------------------------------------

/// The agent's allocator, its cache synced and knowing `pools`.
async fn agent(client: &Client, pools: &[&str]) -> Ipam {
    let ipam = Ipam::start(
        client.clone(),
        IpamConfig {
            timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            seed: Some(7),
            ..IpamConfig::default()
        },
    );
    tokio::time::timeout(WAIT, ipam.cache().wait_ready())
        .await
        .expect("agent cache ready");
    let deadline = Instant::now() + WAIT;
    while !pools.iter().all(|p| ipam.cache().layout(p).is_some()) {
        assert!(Instant::now() < deadline, "agent never saw {pools:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ipam
}

/// What CNI ADD does in the agent: one address of `pool` for `owner`.
async fn add(agent: &Ipam, owner: &Owner, pool: &str) -> IpAddr {
    let got = agent
        .allocate(&AllocateRequest::new(NODE, owner.clone(), [pool]))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    got[0].ip()
}

fn pod_owner(pod: &str, container: &str) -> Owner {
    Owner::pod("default", pod, container, "eth1")
}

fn set_owner(set: &str, ordinal: u32) -> Owner {
    Owner::stateful_set(
        "default",
        set,
        ordinal,
        "eth1",
        &format!("{set}-{ordinal}"),
        &format!("sandbox-{set}-{ordinal}"),
    )
}

// ---- What is stored -------------------------------------------------------

/// One stored allocation: its address, its block, and the record exactly
/// as the API returns it (unknown fields included).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    ip: IpAddr,
    block: String,
    /// The allocation's JSON as served (keys sorted).
    json: String,
    owner: Owner,
}

/// Every allocation of every block, by address, read untyped so that no
/// field of a record escapes the comparison.
async fn stored(client: &Client) -> Vec<Held> {
    let ar = ApiResource::erase::<IPAMBlock>(&());
    let blocks: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut out = Vec::new();
    for b in blocks.list(&Default::default()).await.unwrap().items {
        let spec = &b.data["spec"];
        let net: IpNet = spec["cidr"].as_str().unwrap().parse().unwrap();
        for a in spec["allocations"].as_array().into_iter().flatten() {
            let offset = u8::try_from(a["offset"].as_u64().unwrap()).unwrap();
            out.push(Held {
                ip: nth(net, offset),
                block: b.metadata.name.clone().unwrap(),
                json: a.to_string(),
                owner: serde_json::from_value(a["owner"].clone()).unwrap(),
            });
        }
    }
    out.sort();
    out
}

fn nth(net: IpNet, offset: u8) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4((u32::from(n.network()) + u32::from(offset)).into()),
        IpNet::V6(n) => IpAddr::V6((u128::from(n.network()) + u128::from(offset)).into()),
    }
}

/// The stored allocations of `owners` (by identity).
fn of(held: &[Held], owners: &[&Owner]) -> Vec<Held> {
    held.iter()
        .filter(|h| owners.iter().any(|o| **o == h.owner))
        .cloned()
        .collect()
}

/// Polls `f` until it gives `want`, for [`WAIT`] at most; on timeout
/// panics with the last value, `what` and the binary's log.
async fn wait_eq<T, F, Fut>(what: &str, dir: &Path, want: T, f: F)
where
    T: PartialEq + std::fmt::Debug,
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let got = f().await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}:\n{got:#?}\nwant:\n{want:#?}\nlogs:\n{}",
            logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the stored allocations are exactly `want`.
async fn wait_stored(client: &Client, dir: &Path, want: &[Held]) {
    wait_eq("stored allocations", dir, want.to_vec(), || stored(client)).await;
}

async fn usage(client: &Client, pool: &str) -> Option<PoolUsage> {
    let pools: Api<IPPool> = Api::all(client.clone());
    pools.get(pool).await.unwrap().status.and_then(|s| s.usage)
}

/// Waits until `pool`'s `status.usage` is `total`/`used`.
async fn wait_usage(client: &Client, dir: &Path, pool: &str, total: i64, used: i64) {
    let what = format!("usage of pool {pool}");
    let want = Some(PoolUsage { total, used });
    wait_eq(&what, dir, want, || usage(client, pool)).await;
}

// ---- The tests --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_gone_while_the_agent_was_down_lose_exactly_their_addresses() {
    let (server, client) = cluster().await;
    create_pool(&client, "blue", IpRange::cidr("10.20.0.0/24"), "10.20.0.1").await;
    for p in ["web-a", "web-b", "web-c", "web-d", "web-e"] {
        create_pod(&client, p).await;
    }
    let (a, b, c, d1, e1) = (
        pod_owner("web-a", "sandbox-a1"),
        pod_owner("web-b", "sandbox-b1"),
        pod_owner("web-c", "sandbox-c1"),
        pod_owner("web-d", "sandbox-d1"),
        pod_owner("web-e", "sandbox-e1"),
    );
    let ipam = agent(&client, &["blue"]).await;
    for o in [&a, &b, &c, &d1, &e1] {
        add(&ipam, o, "blue").await;
    }
    let before = stored(&client).await;
    assert_eq!(before.len(), 5, "{before:#?}");

    let ctl = Controller::start(&server).await;
    wait_usage(&client, ctl.dir(), "blue", 253, 5).await;
    // The collector knows every live Pod with its allocation (and UID)
    // and frees nothing of theirs.
    ctl.two_full_rounds().await;
    assert_eq!(stored(&client).await, before);
    assert_eq!(ctl.metric(ABORTED).await, 0.0);

    // The agent goes away: no CNI DEL from now on.
    drop(ipam);
    delete_pod(&client, "web-a").await;
    delete_pod(&client, "web-b").await;
    // web-d is deleted and recreated under its name: a new UID.
    let old_uid = {
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        pods.get("web-d").await.unwrap().metadata.uid.unwrap()
    };
    delete_pod(&client, "web-d").await;
    let new_uid = create_pod(&client, "web-d").await;
    assert_ne!(old_uid, new_uid);

    // The agent comes back with its state lost: it serves the new web-d
    // sandbox and a replaced sandbox of web-e (the kubelet's DEL of the old
    // one never reached it); the old sandboxes' container IDs match no
    // running sandbox any more.
    let ipam = agent(&client, &["blue"]).await;
    let d2 = pod_owner("web-d", "sandbox-d2");
    let e2 = pod_owner("web-e", "sandbox-e2");
    add(&ipam, &d2, "blue").await;
    add(&ipam, &e2, "blue").await;
    drop(ipam);
    let new = of(&stored(&client).await, &[&d2, &e2]);
    assert_eq!(new.len(), 2);

    // Released: web-a, web-b (Pod gone), web-d's old sandbox (Pod
    // recreated), web-e's old sandbox (newer container). Everything else
    // stays as it was, byte for byte.
    let mut keep = of(&before, &[&c]);
    keep.extend(new);
    keep.sort();
    wait_stored(&client, ctl.dir(), &keep).await;
    ctl.wait_released(&[
        ("container-replaced", 1),
        ("pod-gone", 2),
        ("pod-replaced", 1),
    ])
    .await;
    wait_usage(&client, ctl.dir(), "blue", 253, 3).await;

    // And it stays so.
    ctl.two_full_rounds().await;
    assert_eq!(stored(&client).await, keep);
    ctl.wait_released(&[
        ("container-replaced", 1),
        ("pod-gone", 2),
        ("pod-replaced", 1),
    ])
    .await;
    assert_eq!(ctl.metric(ABORTED).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_reservations_are_released_by_scale_down_and_deletion() {
    let (server, client) = cluster().await;
    create_pool(&client, "blue", IpRange::cidr("10.20.0.0/24"), "10.20.0.1").await;
    create_set(&client, "db", 3).await;
    let owners: Vec<Owner> = (0..3).map(|i| set_owner("db", i)).collect();
    let ipam = agent(&client, &["blue"]).await;
    for o in &owners {
        create_pod(&client, &o.pod).await;
        add(&ipam, o, "blue").await;
    }
    drop(ipam);
    let before = stored(&client).await;
    assert_eq!(before.len(), 3);

    let ctl = Controller::start(&server).await;
    wait_usage(&client, ctl.dir(), "blue", 253, 3).await;
    ctl.two_full_rounds().await;
    assert_eq!(stored(&client).await, before, "every ordinal is kept");

    // Scale to 1. The StatefulSet controller deletes db-2 first; db-1's
    // Pod is still terminating for a while.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    delete_pod(&client, "db-2").await;
    let keep01 = of(&before, &[&owners[0], &owners[1]]);
    wait_stored(&client, ctl.dir(), &keep01).await;
    ctl.wait_released(&[("scaled-down", 1)]).await;
    // Ordinal 1 was out of range in the same rounds: its Pod keeps it.
    ctl.two_full_rounds().await;
    assert_eq!(stored(&client).await, keep01);

    delete_pod(&client, "db-1").await;
    let keep0 = of(&before, &[&owners[0]]);
    wait_stored(&client, ctl.dir(), &keep0).await;
    ctl.wait_released(&[("scaled-down", 2)]).await;
    wait_usage(&client, ctl.dir(), "blue", 253, 1).await;
    // Ordinal 0 is kept, also without its Pod (rescheduling).
    delete_pod(&client, "db-0").await;
    ctl.two_full_rounds().await;
    assert_eq!(stored(&client).await, keep0, "ordinal 0 stays");

    // Deleting the StatefulSet frees ordinal 0.
    sets.delete("db", &DeleteParams::default()).await.unwrap();
    wait_stored(&client, ctl.dir(), &[]).await;
    ctl.wait_released(&[("scaled-down", 2), ("statefulset-gone", 1)])
        .await;
    wait_usage(&client, ctl.dir(), "blue", 253, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_released_while_pod_lists_fail() {
    let (server, client) = cluster().await;
    create_pool(&client, "blue", IpRange::cidr("10.20.0.0/24"), "10.20.0.1").await;
    let (gone, live) = (
        pod_owner("gone", "sandbox-1"),
        pod_owner("live", "sandbox-2"),
    );
    let ipam = agent(&client, &["blue"]).await;
    for o in [&gone, &live] {
        create_pod(&client, &o.name).await;
        add(&ipam, o, "blue").await;
    }
    drop(ipam);
    let before = stored(&client).await;
    assert_eq!(before.len(), 2);

    let ctl = Controller::start(&server).await;
    ctl.two_full_rounds().await;
    assert_eq!(stored(&client).await, before);

    // Every cluster-wide Pod list fails from now on.
    server.faults().add(Rule {
        matcher: Matcher {
            methods: vec!["GET".into()],
            resource: Some("pods".into()),
            path_contains: Some("/api/v1/pods".into()),
        },
        fault: Fault::Status(500),
        probability: 1.0,
        remaining: None,
    });
    // Once a round has aborted, no round in flight can complete any more.
    let aborted = ctl.metric(ABORTED).await;
    wait_metric_at_least(ctl.port, ABORTED, aborted + 1.0, WAIT, ctl.dir()).await;
    let rounds = ctl.metric(ROUNDS).await;

    delete_pod(&client, "gone").await;
    // Three more rounds, each aborted: two would free a gone Pod's address.
    let aborted = ctl.metric(ABORTED).await;
    wait_metric_at_least(ctl.port, ABORTED, aborted + 3.0, WAIT, ctl.dir()).await;
    assert_eq!(stored(&client).await, before, "nothing released");
    assert_eq!(ctl.metric(ROUNDS).await, rounds, "no round completed");
    assert!(ctl.metric("spur_reconcile_errors_total{loop=\"gc\"}").await >= 4.0);
    let body = wait_metrics(ctl.port, &[], WAIT, ctl.dir()).await;
    assert!(!body.contains("spur_gc_released_total{"), "{body}");

    // Lists work again: the gone Pod's address goes, the live one's stays.
    server.faults().clear();
    wait_stored(&client, ctl.dir(), &of(&before, &[&live])).await;
    ctl.wait_released(&[("pod-gone", 1)]).await;
    wait_usage(&client, ctl.dir(), "blue", 253, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_usage_follows_allocations_and_releases() {
    let (server, client) = cluster().await;
    // Ten addresses (.10-.19), and a pool nobody uses.
    create_pool(
        &client,
        "green",
        IpRange::start_end("10.30.0.10", "10.30.0.19"),
        "10.30.0.1",
    )
    .await;
    create_pool(&client, "blue", IpRange::cidr("10.20.0.0/24"), "10.20.0.1").await;
    let ctl = Controller::start(&server).await;
    wait_usage(&client, ctl.dir(), "green", 10, 0).await;
    wait_usage(&client, ctl.dir(), "blue", 253, 0).await;

    let ipam = agent(&client, &["green", "blue"]).await;
    let owners: Vec<Owner> = (0..10)
        .map(|i| pod_owner(&format!("p{i}"), &format!("sandbox-{i}")))
        .collect();
    for o in &owners[..4] {
        create_pod(&client, &o.name).await;
        add(&ipam, o, "green").await;
    }
    wait_usage(&client, ctl.dir(), "green", 10, 4).await;

    // CNI DEL of p0, then its Pod goes.
    assert_eq!(ipam.release(&owners[0].key()).await.unwrap(), 1);
    delete_pod(&client, "p0").await;
    wait_usage(&client, ctl.dir(), "green", 10, 3).await;

    // p1 goes without a DEL: the collector frees it.
    delete_pod(&client, "p1").await;
    wait_usage(&client, ctl.dir(), "green", 10, 2).await;
    ctl.wait_released(&[("pod-gone", 1)]).await;

    // Fill the pool.
    for o in &owners[4..] {
        create_pod(&client, &o.name).await;
        add(&ipam, o, "green").await;
    }
    wait_usage(&client, ctl.dir(), "green", 10, 8).await;
    let more = [
        pod_owner("p10", "sandbox-10"),
        pod_owner("p11", "sandbox-11"),
    ];
    for o in &more {
        create_pod(&client, &o.name).await;
        add(&ipam, o, "green").await;
    }
    wait_usage(&client, ctl.dir(), "green", 10, 10).await;
    assert_eq!(stored(&client).await.len(), 10);
    assert_eq!(usage(&client, "blue").await, Some(PoolUsage::new(253, 0)));
    // Every replica's gauges read status.usage.
    wait_metrics(
        ctl.port,
        &[
            "spur_ippool_addresses_total{pool=\"green\"} 10",
            "spur_ippool_addresses_used{pool=\"green\"} 10",
            "spur_ippool_addresses_used{pool=\"blue\"} 0",
        ],
        WAIT,
        ctl.dir(),
    )
    .await;
}
