//! kube-rs against the embedded API server, in process: the same client
//! code paths the agent and controller use against a real cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, SubnetInfo};
use spur_kubeapi::faults::{Fault, Matcher};
use spur_kubeapi::{ApiServer, Denial};

fn client(server: &ApiServer) -> Client {
    Client::new(server.service(), "default")
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn pod(name: &str, node: &str, labels: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn install_ippool_crd(c: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    crds.create(&PostParams::default(), &IPPool::crd())
        .await
        .unwrap();
}

fn pool(name: &str, cidr: &str, gw: &str) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            ip_ranges: vec![IpRange::cidr(cidr)],
            subnet_info: SubnetInfo {
                gateway: gw.into(),
                prefix_length: 24,
                vlan: Some(100),
            },
            exclude: vec![],
        },
    )
}

#[tokio::test]
async fn crud_conflicts_and_already_exists() {
    let server = ApiServer::in_memory();
    let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let created = cms
        .create(&PostParams::default(), &cm("a", &[("k", "1")]))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1 = created.resource_version().unwrap();

    assert_eq!(
        code(
            cms.create(&PostParams::default(), &cm("a", &[]))
                .await
                .unwrap_err()
        ),
        409
    );

    let mut v = created.clone();
    v.data = Some(BTreeMap::from([("k".into(), "2".into())]));
    let updated = cms.replace("a", &PostParams::default(), &v).await.unwrap();
    assert_ne!(updated.resource_version().unwrap(), rv1);
    // The same stale object again: optimistic concurrency refuses it.
    let err = cms
        .replace("a", &PostParams::default(), &v)
        .await
        .unwrap_err();
    assert_eq!(code(err), 409);

    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "2");
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(code(cms.get("a").await.unwrap_err()), 404);
    assert_eq!(
        code(cms.delete("a", &DeleteParams::default()).await.unwrap_err()),
        404
    );
}

#[tokio::test]
async fn namespaces_must_exist_and_generate_name_works() {
    let server = ApiServer::in_memory();
    let c = client(&server);
    let missing: Api<ConfigMap> = Api::namespaced(c.clone(), "nowhere");
    assert_eq!(
        code(
            missing
                .create(&PostParams::default(), &cm("a", &[]))
                .await
                .unwrap_err()
        ),
        404
    );

    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let mut gen = cm("", &[]);
    gen.metadata.name = None;
    gen.metadata.generate_name = Some("web-".into());
    let a = cms.create(&PostParams::default(), &gen).await.unwrap();
    let b = cms.create(&PostParams::default(), &gen).await.unwrap();
    assert!(a.name_any().starts_with("web-") && a.name_any().len() == "web-".len() + 5);
    assert_ne!(a.name_any(), b.name_any());
}

#[tokio::test]
async fn custom_resources_are_served_from_their_crd() {
    let server = ApiServer::in_memory();
    let c = client(&server);
    let pools: Api<IPPool> = Api::all(c.clone());
    // Before the CRD exists the resource is not served.
    assert_eq!(
        code(pools.list(&ListParams::default()).await.unwrap_err()),
        404
    );
    install_ippool_crd(&c).await;

    let p = pools
        .create(
            &PostParams::default(),
            &pool("vlan100-ipv4", "10.10.1.0/26", "10.10.1.1"),
        )
        .await
        .unwrap();
    assert_eq!(p.spec.subnet_info.vlan, Some(100));
    // Status goes through the status subresource only.
    let status = json!({"status": {"usage": {"total": 62, "used": 2}}});
    let patched = pools
        .patch_status(
            "vlan100-ipv4",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().usage.unwrap().used, 2);
    let mut spec_update = pools.get("vlan100-ipv4").await.unwrap();
    spec_update.spec.exclude = vec!["10.10.1.5".into()];
    spec_update.status = None;
    let after = pools
        .replace("vlan100-ipv4", &PostParams::default(), &spec_update)
        .await
        .unwrap();
    assert_eq!(after.spec.exclude, ["10.10.1.5"]);
    assert_eq!(
        after.status.unwrap().usage.unwrap().used,
        2,
        "a spec update keeps the status"
    );
    assert_eq!(after.metadata.generation, Some(2));

    // Deleting the CRD takes its objects along.
    let crds: Api<CustomResourceDefinition> = Api::all(c);
    crds.delete("ippools.spur.dev", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(code(pools.get("vlan100-ipv4").await.unwrap_err()), 404);
}

#[tokio::test]
async fn selectors_and_paging() {
    let server = ApiServer::in_memory();
    let pods: Api<Pod> = Api::namespaced(client(&server), "default");
    for i in 0..7 {
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        let tier = if i < 3 { "web" } else { "db" };
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{i}"), node, &[("tier", tier)]),
        )
        .await
        .unwrap();
    }
    let names =
        |l: kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    let on_a = pods
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await
        .unwrap();
    assert_eq!(names(on_a), ["p0", "p2", "p4", "p6"]);
    let web_on_b = pods
        .list(
            &ListParams::default()
                .labels("tier=web")
                .fields("spec.nodeName=node-b"),
        )
        .await
        .unwrap();
    assert_eq!(names(web_on_b), ["p1"]);
    let not_web = pods
        .list(&ListParams::default().labels("tier notin (web)"))
        .await
        .unwrap();
    assert_eq!(not_web.items.len(), 4);

    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = pods.list(&lp).await.unwrap();
        seen.extend(names(page.clone()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]);
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version() {
    let server = ApiServer::in_memory();
    let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    let a = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let from = a.resource_version().unwrap();
    cms.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();

    let mut stream = cms
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WatchEvent::Added(o) => got.push(format!("ADDED {}", o.name_any())),
            WatchEvent::Deleted(o) => got.push(format!("DELETED {}", o.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, ["ADDED b", "DELETED a"]);

    // Once compacted, an old resourceVersion is 410 Gone.
    server.store().compact();
    let mut stream = cms
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no watcher event within 10 s")
        .expect("the watcher task ended")
}

#[tokio::test]
async fn kube_runtime_watcher_relists_after_410() {
    let server = ApiServer::in_memory();
    let c = client(&server);
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let w = watcher(cms.clone(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut w = w.boxed();
        while let Some(ev) = w.next().await {
            let text = match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                    format!("apply {}", o.name_any())
                }
                Ok(watcher::Event::Delete(o)) => format!("delete {}", o.name_any()),
                Ok(watcher::Event::Init) => "init".into(),
                Ok(watcher::Event::InitDone) => "init-done".into(),
                Err(e) => format!("error {e}"),
            };
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    assert_eq!(next(&mut rx).await, "init");
    assert_eq!(next(&mut rx).await, "init-done");
    cms.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, "apply a");

    server.expire_watches();
    let mut after = Vec::new();
    loop {
        let ev = next(&mut rx).await;
        let done = ev == "init-done";
        after.push(ev);
        if done {
            break;
        }
    }
    assert!(
        after
            .iter()
            .any(|e| e.starts_with("error") && e.contains("too old resource version")),
        "{after:?}"
    );
    assert!(
        after.contains(&"init".to_string()) && after.contains(&"apply a".to_string()),
        "{after:?}"
    );
    cms.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, "apply b");
    task.abort();
}

#[tokio::test]
async fn reflector_stays_in_sync_through_churn() {
    let server = ApiServer::in_memory();
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let (reader, writer) = reflector::store::<Pod>();
    let stream = reflector::reflector(writer, watcher(pods.clone(), watcher::Config::default()))
        .applied_objects()
        .for_each(|_| async {});
    let task = tokio::spawn(stream);
    tokio::time::timeout(Duration::from_secs(10), reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();

    for i in 0..60u32 {
        let name = format!("p{}", i % 20);
        match i % 3 {
            0 => {
                let _ = pods
                    .create(&PostParams::default(), &pod(&name, "node-a", &[]))
                    .await;
            }
            1 => {
                let patch = json!({"metadata": {"labels": {"round": i.to_string()}}});
                let _ = pods
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
            _ => {
                let _ = pods.delete(&name, &DeleteParams::default()).await;
            }
        }
        if i == 30 {
            // A dropped watch in the middle of the churn.
            server.drop_watches();
        }
    }
    let want = {
        let mut v: Vec<(String, String)> = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| (p.name_any(), p.resource_version().unwrap()))
            .collect();
        v.sort();
        v
    };
    // Wait for the condition: the reflector's store equals the server's.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut have: Vec<(String, String)> = reader
            .state()
            .iter()
            .map(|p| (p.name_any(), p.resource_version().unwrap()))
            .collect();
        have.sort();
        if have == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector out of sync: {have:?} vs {want:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
}

#[tokio::test]
async fn finalizers_and_namespace_deletion() {
    let server = ApiServer::in_memory();
    let c = client(&server);
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "lab"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "lab");
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["spur.dev/test".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.create(&PostParams::default(), &cm("plain", &[]))
        .await
        .unwrap();

    nss.delete("lab", &DeleteParams::default()).await.unwrap();
    // The plain object is gone; the finalized one waits, and so does the namespace.
    assert_eq!(code(cms.get("plain").await.unwrap_err()), 404);
    let waiting = cms.get("held").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    let ns = nss.get("lab").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert_eq!(
        code(
            cms.create(&PostParams::default(), &cm("new", &[]))
                .await
                .unwrap_err()
        ),
        403
    );

    // Removing the finalizer finishes both deletions.
    let patch = json!({"metadata": {"finalizers": null}});
    cms.patch("held", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(code(cms.get("held").await.unwrap_err()), 404);
    assert_eq!(code(nss.get("lab").await.unwrap_err()), 404);
}

#[tokio::test]
async fn admission_refusals_carry_code_and_message() {
    let server = ApiServer::in_memory();
    server.store().admission_mut().add_validator(
        "ippools.spur.dev",
        "spur.dev",
        "ippools",
        Box::new(|req, obj, store| {
            let Some(obj) = obj else { return Ok(()) };
            let others = store.objects_of("spur.dev", "ippools");
            let cidr = obj
                .pointer("/spec/ipRanges/0/cidr")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            for o in others {
                let name = o
                    .pointer("/metadata/name")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                if name != req.name
                    && o.pointer("/spec/ipRanges/0/cidr").and_then(|v| v.as_str()) == Some(cidr)
                {
                    return Err(Denial::new(format!(
                        "IPPool {}: range {cidr} overlaps IPPool {name}",
                        req.name
                    )));
                }
            }
            Ok(())
        }),
    );
    let c = client(&server);
    install_ippool_crd(&c).await;
    let pools: Api<IPPool> = Api::all(c);
    pools
        .create(
            &PostParams::default(),
            &pool("a", "10.10.1.0/26", "10.10.1.1"),
        )
        .await
        .unwrap();
    match pools
        .create(
            &PostParams::default(),
            &pool("b", "10.10.1.0/26", "10.10.1.1"),
        )
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 400);
            assert!(
                s.message.contains("denied the request") && s.message.contains("overlaps IPPool a"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        pools
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn injected_conflicts_and_errors_reach_the_client() {
    let server = ApiServer::in_memory();
    let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    server
        .faults()
        .next(Matcher::writes_to("configmaps"), Fault::Conflict, 2);
    assert_eq!(
        code(
            cms.create(&PostParams::default(), &cm("a", &[]))
                .await
                .unwrap_err()
        ),
        409
    );
    assert_eq!(
        code(
            cms.create(&PostParams::default(), &cm("a", &[]))
                .await
                .unwrap_err()
        ),
        409
    );
    cms.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    server.faults().next(Matcher::any(), Fault::Status(503), 1);
    assert_eq!(code(cms.get("a").await.unwrap_err()), 503);
    cms.get("a").await.unwrap();
    // The request accounting saw two refused writes and one stored object.
    let stats = server.stats()["configmaps"].clone();
    assert_eq!((stats.writes, stats.conflicts), (1, 2));
    assert!(stats.max_object_bytes > 0 && stats.bytes_stored == stats.max_object_bytes);
}

#[tokio::test]
async fn a_paused_server_holds_requests_until_resumed() {
    let server = ApiServer::in_memory();
    let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
    server.pause();
    let pending = tokio::spawn({
        let cms = cms.clone();
        async move { cms.create(&PostParams::default(), &cm("a", &[])).await }
    });
    // Nothing is served while paused.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!pending.is_finished());
    assert!(server.store().objects_of("", "configmaps").is_empty());
    server.resume();
    tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_state_file_survives_a_restart() {
    use spur_kubeapi::persist::FileJournal;
    use spur_kubeapi::{Clock, Store, SystemClock};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.jsonl");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let start = || {
        let records = FileJournal::load(&path).unwrap();
        let mut store = Store::restore(clock.clone(), 0, records, None);
        let j = FileJournal::rewrite(&path, &store.snapshot()).unwrap();
        store.set_journal(Box::new(j));
        ApiServer::new(store, clock.clone(), 0)
    };
    let first = start();
    let c = client(&first);
    install_ippool_crd(&c).await;
    Api::<IPPool>::all(c.clone())
        .create(
            &PostParams::default(),
            &pool("a", "10.10.1.0/26", "10.10.1.1"),
        )
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let last = cms
        .create(&PostParams::default(), &cm("x", &[("k", "v")]))
        .await
        .unwrap();
    drop(first);
    // A torn last line (a crash mid-write) is dropped on load.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"op\":\"put\",\"gro"))
        .unwrap();

    let second = start();
    let c = client(&second);
    let got = Api::<ConfigMap>::namespaced(c.clone(), "default")
        .get("x")
        .await
        .unwrap();
    assert_eq!(got.resource_version(), last.resource_version());
    assert_eq!(
        Api::<IPPool>::all(c.clone())
            .get("a")
            .await
            .unwrap()
            .spec
            .ip_ranges[0]
            .cidr
            .as_deref(),
        Some("10.10.1.0/26")
    );
    // New writes continue above the restored resourceVersion.
    let y = Api::<ConfigMap>::namespaced(c, "default")
        .create(&PostParams::default(), &cm("y", &[]))
        .await
        .unwrap();
    assert!(
        y.resource_version().unwrap().parse::<u64>().unwrap()
            > last.resource_version().unwrap().parse::<u64>().unwrap()
    );
}

#[tokio::test]
async fn the_same_requests_give_the_same_answers() {
    async fn run() -> Vec<String> {
        let clock = std::sync::Arc::new(spur_kubeapi::ManualClock::new(1_795_481_286));
        let server = ApiServer::new(spur_kubeapi::Store::new(clock.clone(), 42), clock, 42);
        let cms: Api<ConfigMap> = Api::namespaced(client(&server), "default");
        let mut out = Vec::new();
        for _ in 0..3 {
            let mut gen = cm("", &[]);
            gen.metadata.name = None;
            gen.metadata.generate_name = Some("g-".into());
            let o = cms.create(&PostParams::default(), &gen).await.unwrap();
            out.push(serde_json::to_string(&o).unwrap());
        }
        out
    }
    assert_eq!(run().await, run().await);
}

#[tokio::test]
async fn bound_pods_are_deleted_gracefully() {
    use spur_kubeapi::{ManualClock, Store};
    use std::sync::Arc;
    let clock = Arc::new(ManualClock::new(1_767_225_600)); // 2026-01-01T00:00:00Z
    let server = ApiServer::new(Store::new(clock.clone(), 7), clock, 7);
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mut watch = pods
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    pods.create(&PostParams::default(), &pod("bound", "node-a", &[]))
        .await
        .unwrap();
    let mut short = pod("short", "node-a", &[]);
    short
        .spec
        .as_mut()
        .unwrap()
        .termination_grace_period_seconds = Some(5);
    pods.create(&PostParams::default(), &short).await.unwrap();
    let unbound: Pod = serde_json::from_value(json!({"metadata": {"name": "unbound"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &unbound).await.unwrap();

    // Bound, no grace period given: marked with the default 30 s and kept.
    pods.delete("bound", &DeleteParams::default())
        .await
        .unwrap();
    let marked = pods.get("bound").await.unwrap();
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    assert_eq!(
        serde_json::to_value(&marked.metadata.deletion_timestamp).unwrap(),
        json!("2026-01-01T00:00:30Z")
    );
    // The Pod's own terminationGracePeriodSeconds is the default.
    pods.delete("short", &DeleteParams::default())
        .await
        .unwrap();
    let s = pods.get("short").await.unwrap();
    assert_eq!(s.metadata.deletion_grace_period_seconds, Some(5));
    // A second graceful delete keeps the first deadline; status writes do
    // not finish it.
    pods.delete("bound", &DeleteParams::default().grace_period(10))
        .await
        .unwrap();
    let again = pods.get("bound").await.unwrap();
    assert_eq!(again.metadata.deletion_grace_period_seconds, Some(30));
    let patch = json!({"status": {"phase": "Running"}});
    pods.patch_status("bound", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(pods.get("bound").await.is_ok());
    // The kubelet's final delete (grace 0) removes it.
    pods.delete("bound", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(code(pods.get("bound").await.unwrap_err()), 404);
    // An unbound Pod goes at once.
    pods.delete("unbound", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(code(pods.get("unbound").await.unwrap_err()), 404);

    // Finalizers hold a Pod past the kubelet's final delete; once they
    // are done it goes.
    let mut held = pod("held", "node-a", &[]);
    held.metadata.finalizers = Some(vec!["spur.dev/test".into()]);
    pods.create(&PostParams::default(), &held).await.unwrap();
    pods.delete("held", &DeleteParams::default()).await.unwrap();
    pods.delete("held", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let h = pods.get("held").await.unwrap();
    assert_eq!(h.metadata.deletion_grace_period_seconds, Some(0));
    let patch = json!({"metadata": {"finalizers": null}});
    pods.patch("held", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(code(pods.get("held").await.unwrap_err()), 404);

    let mut seen = Vec::new();
    while seen.len() < 8 {
        match watch.try_next().await.unwrap().unwrap() {
            WatchEvent::Added(p) => seen.push(format!("ADDED {}", p.name_any())),
            WatchEvent::Modified(p) => seen.push(format!("MODIFIED {}", p.name_any())),
            WatchEvent::Deleted(p) => seen.push(format!("DELETED {}", p.name_any())),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            "ADDED bound",
            "ADDED short",
            "ADDED unbound",
            "MODIFIED bound", // marked
            "MODIFIED short", // marked
            "MODIFIED bound", // its status (the second delete changed nothing)
            "DELETED bound",
            "DELETED unbound",
        ]
    );
}

#[tokio::test]
async fn node_lists_and_label_watches_follow_every_change() {
    let server = ApiServer::in_memory();
    let c = client(&server);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let names =
        |l: kube::core::ObjectList<Pod>| l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>();
    let on = |node: &str| {
        let pods = pods.clone();
        let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
        async move { names(pods.list(&lp).await.unwrap()) }
    };
    pods.create(&PostParams::default(), &pod("a1", "node-a", &[]))
        .await
        .unwrap();
    let unbound: Pod = serde_json::from_value(json!({"metadata": {"name": "p0"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &unbound).await.unwrap();
    assert_eq!(on("node-a").await, ["a1"]);
    assert_eq!(on("").await, ["p0"], "unscheduled Pods have nodeName \"\"");
    // Scheduled: it moves from "" to node-a.
    let bind = json!({"spec": {"nodeName": "node-a"}});
    pods.patch("p0", &PatchParams::default(), &Patch::Merge(&bind))
        .await
        .unwrap();
    assert_eq!(on("node-a").await, ["a1", "p0"]);
    assert!(on("").await.is_empty());
    // Other selectors still apply on top of the node.
    let lp = ListParams::default()
        .fields("spec.nodeName=node-a,metadata.name!=a1")
        .labels("");
    assert_eq!(names(pods.list(&lp).await.unwrap()), ["p0"]);
    // Deleted for good: gone from its node's list.
    pods.delete("a1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(on("node-a").await, ["p0"]);
    assert!(on("node-b").await.is_empty());

    // A watch on one label value sees objects enter and leave it.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let mut stream = cms
        .watch(&WatchParams::default().labels("spur.dev/node=node-a"), "0")
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    let label = |v: &str| json!({"metadata": {"labels": {"spur.dev/node": v}}});
    for v in ["node-b", "node-a", "node-c"] {
        cms.patch("x", &PatchParams::default(), &Patch::Merge(&label(v)))
            .await
            .unwrap();
    }
    let mut y = cm("y", &[]);
    y.metadata.labels = Some([("spur.dev/node".to_string(), "node-a".to_string())].into());
    cms.create(&PostParams::default(), &y).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(o) => got.push(format!("added {}", o.name_any())),
            WatchEvent::Modified(o) => got.push(format!("modified {}", o.name_any())),
            WatchEvent::Deleted(o) => got.push(format!("deleted {}", o.name_any())),
            _ => {}
        }
    }
    assert_eq!(got, ["added x", "deleted x", "added y"]);
}
