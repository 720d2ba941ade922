//! The scheduler and workload controllers against the embedded API server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use spur_kubeapi::{ApiServer, Store};
use spur_testbed::workloads::workload_pods;

use super::*;
use crate::clock::SimClock;

fn server(seed: u64) -> (ApiServer, Client) {
    let clock = Arc::new(SimClock::start());
    let server = ApiServer::new(Store::new(clock.clone(), seed), clock, seed);
    let client = Client::new(server.service(), "default");
    (server, client)
}

fn nodes() -> Vec<String> {
    vec!["node-a".into(), "node-b".into()]
}

fn sts(replicas: u64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"replicas": replicas, "serviceName": "db",
                 "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
}

fn deploy(replicas: u64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas,
                 "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
}

async fn create(c: &Client, kind: &str, obj: &Value) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &resource(kind));
    let o: DynamicObject = serde_json::from_value(obj.clone()).unwrap();
    serde_json::to_value(api.create(&PostParams::default(), &o).await.unwrap()).unwrap()
}

async fn scale(c: &Client, kind: &str, name: &str, replicas: u64) {
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &resource(kind));
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await
    .unwrap();
}

/// Pods as (name, node, uid, terminating), by name.
async fn pods(c: &Client) -> Vec<(String, String, String, bool)> {
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &pod_resource());
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| {
            let v = serde_json::to_value(&p).unwrap();
            (
                v["metadata"]["name"].as_str().unwrap().to_string(),
                v["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["metadata"]["uid"].as_str().unwrap().to_string(),
                v["metadata"]["deletionTimestamp"].is_string(),
            )
        })
        .collect()
}

async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn spawn(w: &Workloads) -> tokio::task::JoinHandle<()> {
    let w = w.clone();
    tokio::spawn(async move { w.run().await })
}

#[tokio::test(start_paused = true)]
async fn stateful_sets_recreate_pods_and_scale_down_from_the_top() {
    let (_s, c) = server(1);
    let w = Workloads::new(c.clone(), nodes(), 1);
    let task = spawn(&w);
    create(&c, "StatefulSet", &sts(3)).await;
    settle().await;
    let got = pods(&c).await;
    let names: Vec<(&str, &str)> = got.iter().map(|p| (p.0.as_str(), p.1.as_str())).collect();
    assert_eq!(
        names,
        [("db-0", "node-a"), ("db-1", "node-b"), ("db-2", "node-a")]
    );
    // A deleted Pod comes back under its name with a new UID.
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &pod_resource());
    let old_uid = got[1].2.clone();
    api.delete("db-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    settle().await;
    let got = pods(&c).await;
    let db1 = got.iter().find(|p| p.0 == "db-1").unwrap();
    assert_ne!(db1.2, old_uid);
    assert_eq!(db1.1, "node-b", "round-robin goes on");
    // Scale down: the highest ordinals go (gracefully: bound Pods stay
    // terminating until their kubelet deletes them).
    scale(&c, "StatefulSet", "db", 1).await;
    settle().await;
    let got = pods(&c).await;
    let state: Vec<(&str, bool)> = got.iter().map(|p| (p.0.as_str(), p.3)).collect();
    assert_eq!(state, [("db-0", false), ("db-1", true), ("db-2", true)]);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn deployments_scale_up_and_down() {
    let (_s, c) = server(2);
    let w = Workloads::new(c.clone(), nodes(), 2);
    let task = spawn(&w);
    let stored = create(&c, "Deployment", &deploy(2)).await;
    settle().await;
    let got = pods(&c).await;
    assert_eq!(got.len(), 2);
    // The harness's names.
    let uid = stored["metadata"]["uid"].as_str().unwrap();
    let want: Vec<String> = workload_pods(&deploy(2), uid, &[])
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut have: Vec<String> = got.iter().map(|p| p.0.clone()).collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    have.sort();
    assert_eq!(have, want_sorted);
    for n in &have {
        assert!(
            n.starts_with("web-") && n.len() == "web-".len() + 10 + 1 + 5,
            "{n}"
        );
    }
    scale(&c, "Deployment", "web", 4).await;
    settle().await;
    let got = pods(&c).await;
    assert_eq!(got.iter().filter(|p| !p.3).count(), 4);
    scale(&c, "Deployment", "web", 1).await;
    settle().await;
    let got = pods(&c).await;
    assert_eq!(got.iter().filter(|p| !p.3).count(), 1, "{got:?}");
    assert_eq!(got.iter().filter(|p| p.3).count(), 3, "{got:?}");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn placement_follows_the_harness_rule() {
    let (_s, c) = server(3);
    let w = Workloads::new(c.clone(), nodes(), 3);
    // As the harness applies manifests: a Pod, a StatefulSet (its Pods
    // right after it), another Pod.
    let mut harness = spur_testbed::Placement::new(nodes());
    let mut expected = Vec::new();
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "solo", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}});
    let mut hp = pod.clone();
    expected.push(("solo".to_string(), harness.place(&mut hp).unwrap()));
    w.place(&mut pod);
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &pod_resource());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(pod).unwrap(),
    )
    .await
    .unwrap();
    let stored = create(&c, "StatefulSet", &sts(3)).await;
    for mut p in workload_pods(&sts(3), "u", &[]) {
        let n = p["metadata"]["name"].as_str().unwrap().to_string();
        expected.push((n, harness.place(&mut p).unwrap()));
    }
    let done = w.reconcile(&stored).await.unwrap();
    assert_eq!(done.created.len(), 3);
    // An unplaced Pod created by someone else is placed by the scheduler.
    let task = spawn(&w);
    let bare = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "late", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}});
    let mut hp = bare.clone();
    expected.push(("late".to_string(), harness.place(&mut hp).unwrap()));
    api.create(
        &PostParams::default(),
        &serde_json::from_value(bare).unwrap(),
    )
    .await
    .unwrap();
    settle().await;
    let mut got: Vec<(String, String)> = pods(&c).await.into_iter().map(|p| (p.0, p.1)).collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    task.abort();
}
