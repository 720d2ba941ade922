//! Address garbage collection against the embedded API server: addresses
//! of Pods deleted while their agent was down are freed, live Pods' never
//! are (whatever the ordering of a round against a new allocation),
//! StatefulSet reservations follow the StatefulSet, a failed list frees
//! nothing, and an agent's write since the snapshot is never overwritten.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use spur_controller::gc::{GcConfig, GcError, GcReconciler, Reason};
use spur_core::ipamblock::{BlockAllocation, IPAMBlock, IPAMBlockSpec, Owner};
use spur_kubeapi::faults::{Fault, Matcher};
use spur_kubeapi::ApiServer;

async fn cluster() -> (ApiServer, Client) {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &IPAMBlock::crd())
        .await
        .unwrap();
    (server, client)
}

fn gc(client: &Client) -> GcReconciler {
    GcReconciler::new(client.clone(), GcConfig::default())
}

async fn create_pod(client: &Client, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    let p = pods.create(&PostParams::default(), &pod).await.unwrap();
    p.metadata.uid.unwrap()
}

/// Deletes a Pod and waits until it is gone (the server may delete
/// gracefully).
async fn delete_pod(client: &Client, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while pods.get_opt(name).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "Pod {name} stays");
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

async fn scale_set(client: &Client, name: &str, replicas: i32) {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    sets.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
}

async fn create_block(client: &Client, name: &str, allocs: &[(u8, Owner)]) {
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    let b = IPAMBlock::new(
        name,
        IPAMBlockSpec {
            pool: "vlan100-ipv4".into(),
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
    );
    blocks.create(&PostParams::default(), &b).await.unwrap();
}

/// What an agent does: adds an allocation with a read-modify-write.
async fn agent_allocates(client: &Client, block: &str, offset: u8, owner: Owner) {
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    let mut b = blocks.get(block).await.unwrap();
    b.spec.allocations.push(BlockAllocation { offset, owner });
    blocks
        .replace(block, &PostParams::default(), &b)
        .await
        .unwrap();
}

async fn offsets(client: &Client, block: &str) -> Vec<u8> {
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    let mut o: Vec<u8> = blocks
        .get(block)
        .await
        .unwrap()
        .spec
        .allocations
        .iter()
        .map(|a| a.offset)
        .collect();
    o.sort_unstable();
    o
}

fn pod_owner(name: &str, container: &str) -> Owner {
    Owner::pod("default", name, container, "eth1")
}

fn set_owner(set: &str, ordinal: u32) -> Owner {
    Owner::stateful_set(
        "default",
        set,
        ordinal,
        "eth1",
        &format!("{set}-{ordinal}"),
        "c1",
    )
}

#[tokio::test]
async fn pods_deleted_while_the_agent_is_down_are_freed() {
    let (_server, client) = cluster().await;
    create_pod(&client, "web-a").await;
    create_pod(&client, "web-b").await;
    create_block(
        &client,
        "b0",
        &[(2, pod_owner("web-a", "c1")), (3, pod_owner("web-b", "c1"))],
    )
    .await;
    let mut gc = gc(&client);
    let r = gc.round().await.unwrap();
    assert_eq!((r.blocks, r.allocations, r.candidates), (1, 2, 0));
    // The agent is down: nobody calls CNI DEL for web-a.
    delete_pod(&client, "web-a").await;
    let r = gc.round().await.unwrap();
    assert_eq!(r.candidates, 1);
    assert!(r.released.is_empty(), "one round is not enough");
    assert_eq!(offsets(&client, "b0").await, [2, 3]);
    let r = gc.round().await.unwrap();
    assert_eq!(r.released.len(), 1);
    assert_eq!(r.released[0].id.offset, 2);
    assert_eq!(r.released[0].reason, Reason::PodGone);
    assert_eq!(offsets(&client, "b0").await, [3], "web-b keeps its address");
    for _ in 0..3 {
        let r = gc.round().await.unwrap();
        assert!(r.released.is_empty() && r.candidates == 0);
    }
    assert_eq!(offsets(&client, "b0").await, [3]);
}

#[tokio::test]
async fn a_pod_created_after_the_snapshot_keeps_its_new_address() {
    let (_server, client) = cluster().await;
    create_block(&client, "b0", &[]).await;
    let mut gc = gc(&client);
    for _ in 0..2 {
        // Snapshot first; then the Pod is created and its address
        // allocated; then the Pod list sees it.
        let snap = gc.snapshot().await.unwrap();
        if snap.blocks[0].spec.allocations.is_empty() {
            create_pod(&client, "fresh").await;
            agent_allocates(&client, "b0", 5, pod_owner("fresh", "c1")).await;
        }
        let seen = gc.observe().await.unwrap();
        let r = gc.finish(&snap, &seen).await;
        assert!(r.released.is_empty() && r.candidates == 0);
    }
    // And the other way round: allocated before the snapshot, Pod listed
    // after it.
    create_block(&client, "b1", &[]).await;
    create_pod(&client, "fresh2").await;
    agent_allocates(&client, "b1", 7, pod_owner("fresh2", "c1")).await;
    for _ in 0..3 {
        let r = gc.round().await.unwrap();
        assert!(r.released.is_empty() && r.candidates == 0);
    }
    assert_eq!(offsets(&client, "b0").await, [5]);
    assert_eq!(offsets(&client, "b1").await, [7]);

    // Why the order matters: Pods listed *before* an allocation that the
    // block list then shows would make a live Pod's address stale.
    let mut wrong = GcReconciler::new(client.clone(), GcConfig::default());
    let early = wrong.observe().await.unwrap();
    create_block(&client, "b2", &[]).await;
    create_pod(&client, "late").await;
    agent_allocates(&client, "b2", 1, pod_owner("late", "c1")).await;
    let snap = wrong.snapshot().await.unwrap();
    assert_eq!(wrong.finish(&snap, &early).await.candidates, 1);
    // (Not executed further: a second such round would free it.)
    let r = gc.round().await.unwrap();
    assert!(r.released.is_empty() && r.candidates == 0);
}

#[tokio::test]
async fn a_pod_recreated_with_the_same_name_frees_the_old_address() {
    let (_server, client) = cluster().await;
    let old_uid = create_pod(&client, "web").await;
    create_block(&client, "b0", &[(2, pod_owner("web", "c1"))]).await;
    let mut gc = gc(&client);
    gc.round().await.unwrap();
    // Deleted and recreated while the agent was down: the new Pod's
    // sandbox gets a new address; the old one leaks.
    delete_pod(&client, "web").await;
    let new_uid = create_pod(&client, "web").await;
    assert_ne!(old_uid, new_uid);
    agent_allocates(&client, "b0", 3, pod_owner("web", "c2")).await;
    let r = gc.round().await.unwrap();
    assert_eq!(r.candidates, 1);
    let r = gc.round().await.unwrap();
    assert_eq!(r.released.len(), 1);
    assert_eq!(
        r.released[0].reason,
        Reason::PodReplaced {
            old_uid,
            new_uid: new_uid.clone()
        }
    );
    assert_eq!(offsets(&client, "b0").await, [3], "the new Pod keeps its");
    for _ in 0..3 {
        assert!(gc.round().await.unwrap().released.is_empty());
    }
    assert_eq!(offsets(&client, "b0").await, [3]);
}

#[tokio::test]
async fn statefulset_reservations_follow_the_statefulset() {
    let (_server, client) = cluster().await;
    create_set(&client, "db", 3).await;
    create_set(&client, "cache", 1).await;
    create_block(
        &client,
        "b0",
        &[
            (2, set_owner("db", 0)),
            (3, set_owner("db", 1)),
            (4, set_owner("db", 2)),
            (5, set_owner("cache", 0)),
            (6, set_owner("cache", 1)),
        ],
    )
    .await;
    // No Pods at all: in-range ordinals keep their reservation.
    let mut gc = gc(&client);
    for _ in 0..3 {
        gc.round().await.unwrap();
    }
    // cache-1 was out of range from the start: freed.
    assert_eq!(offsets(&client, "b0").await, [2, 3, 4, 5]);

    // Scale db to 1; db-2's Pod is still terminating, db-1's is gone.
    create_pod(&client, "db-2").await;
    scale_set(&client, "db", 1).await;
    for _ in 0..3 {
        gc.round().await.unwrap();
    }
    assert_eq!(offsets(&client, "b0").await, [2, 4, 5]);
    delete_pod(&client, "db-2").await;
    gc.round().await.unwrap();
    let r = gc.round().await.unwrap();
    assert_eq!(r.released.len(), 1);
    assert_eq!(
        r.released[0].reason,
        Reason::ScaledDown {
            start: 0,
            replicas: 1
        }
    );
    assert_eq!(offsets(&client, "b0").await, [2, 5]);

    // Deleting the StatefulSet frees all of it.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    sets.delete("db", &DeleteParams::default()).await.unwrap();
    gc.round().await.unwrap();
    let r = gc.round().await.unwrap();
    assert_eq!(r.released.len(), 1);
    assert_eq!(r.released[0].reason, Reason::StatefulSetGone);
    assert_eq!(offsets(&client, "b0").await, [5], "cache keeps ordinal 0");
}

#[tokio::test]
async fn a_failed_list_frees_nothing() {
    let (server, client) = cluster().await;
    create_block(&client, "b0", &[(2, pod_owner("gone", "c1"))]).await;
    let mut gc = gc(&client);
    gc.round().await.unwrap();
    let get_pods = Matcher {
        methods: vec!["GET".into()],
        resource: Some("pods".into()),
        path_contains: None,
    };
    server.faults().next(get_pods, Fault::Status(500), 1);
    match gc.round().await {
        Err(GcError::List { resource, .. }) => assert_eq!(resource, "pods"),
        other => panic!("want a failed pods list, got {other:?}"),
    }
    assert_eq!(offsets(&client, "b0").await, [2]);
    assert_eq!(gc.memory().rounds(), 1, "an aborted round does not count");
    let get_sets = Matcher {
        methods: vec!["GET".into()],
        resource: Some("statefulsets".into()),
        path_contains: None,
    };
    server.faults().next(get_sets, Fault::Status(503), 1);
    assert!(gc.round().await.is_err());
    assert_eq!(offsets(&client, "b0").await, [2]);
    // Healthy again: the candidate of the last completed round goes.
    let r = gc.round().await.unwrap();
    assert_eq!(r.released.len(), 1);
    assert!(offsets(&client, "b0").await.is_empty());
}

#[tokio::test]
async fn lists_are_paged_to_the_end() {
    let (_server, client) = cluster().await;
    // More Pods than a page holds; the live one is listed last.
    let mut allocs = Vec::new();
    for i in 0..3u8 {
        allocs.push((i, pod_owner(&format!("gone-{i}"), "c1")));
    }
    allocs.push((10, pod_owner("zz-live", "c1")));
    create_block(&client, "b0", &allocs).await;
    for i in 0..510 {
        create_pod(&client, &format!("filler-{i:03}")).await;
    }
    create_pod(&client, "zz-live").await;
    let mut gc = gc(&client);
    gc.round().await.unwrap();
    gc.round().await.unwrap();
    assert_eq!(offsets(&client, "b0").await, [10]);
}

#[tokio::test]
async fn an_agent_write_since_the_snapshot_is_not_overwritten() {
    let (_server, client) = cluster().await;
    create_block(&client, "b0", &[(2, pod_owner("gone", "c1"))]).await;
    let mut gc = gc(&client);
    gc.round().await.unwrap();
    let snap = gc.snapshot().await.unwrap();
    // The agent allocates for a new Pod after the snapshot.
    create_pod(&client, "new").await;
    agent_allocates(&client, "b0", 9, pod_owner("new", "c1")).await;
    let seen = gc.observe().await.unwrap();
    let r = gc.finish(&snap, &seen).await;
    assert_eq!(r.conflicts, ["b0"]);
    assert!(r.released.is_empty());
    assert_eq!(
        offsets(&client, "b0").await,
        [2, 9],
        "the agent's write stands"
    );
    // Next round: from a fresh snapshot, the stale one goes, the new stays.
    let r = gc.round().await.unwrap();
    assert_eq!(r.released.len(), 1);
    assert!(r.conflicts.is_empty());
    assert_eq!(offsets(&client, "b0").await, [9]);
}

#[tokio::test]
async fn run_collects_every_interval_until_shutdown() {
    let (_server, client) = cluster().await;
    create_block(&client, "b0", &[(2, pod_owner("gone", "c1"))]).await;
    let r = GcReconciler::new(
        client.clone(),
        GcConfig {
            interval: Duration::from_millis(50),
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(r.run(async {
        let _ = rx.await;
    }));
    // Two rounds are needed: the first right away, the second one
    // interval later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !offsets(&client, "b0").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(()).unwrap();
    task.await.unwrap();
}
