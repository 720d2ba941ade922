//! IPPool conditions and Events against the embedded API server: an
//! exhausted pool says so once, a freed address flips it back, and pools
//! that overlap (created without Spur's admission hooks) name each other.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, CustomResourceExt};
use spur_controller::poolstatus::{
    EVENT_CONFLICT, EVENT_EXHAUSTED, EXHAUSTED, REASON_CONFLICT, REASON_NO_FREE,
    REPORTING_CONTROLLER, VALID,
};
use spur_controller::usage::{UsageConfig, UsageReconciler};
use spur_core::ipamblock::{BlockAllocation, IPAMBlock, IPAMBlockSpec, Owner};
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, SubnetInfo};
use spur_kubeapi::ApiServer;

/// A server without Spur's admission hooks: overlapping pools get in.
async fn cluster() -> (ApiServer, Client) {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [IPPool::crd(), IPAMBlock::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    (server, client)
}

fn pool(name: &str, range: IpRange) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            ip_ranges: vec![range],
            subnet_info: SubnetInfo {
                gateway: "10.10.1.1".into(),
                prefix_length: 24,
                vlan: None,
            },
            exclude: vec![],
        },
    )
}

fn block(name: &str, pool: &str, offsets: &[u8]) -> IPAMBlock {
    IPAMBlock::new(
        name,
        IPAMBlockSpec {
            pool: pool.into(),
            cidr: "10.10.1.0/26".into(),
            node: "node-a".into(),
            allocations: offsets
                .iter()
                .map(|&o| BlockAllocation {
                    offset: o,
                    owner: Owner::pod("default", &format!("web-{o}"), "c1", "eth1"),
                })
                .collect(),
        },
    )
}

async fn condition(pools: &Api<IPPool>, name: &str, type_: &str) -> Condition {
    let p = pools.get(name).await.unwrap();
    p.status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("pool {name} has no {type_} condition"))
}

/// Events regarding pool `name` with `reason`.
async fn events(client: &Client, name: &str, reason: &str) -> Vec<K8sEvent> {
    let api: Api<K8sEvent> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect()
}

#[tokio::test]
async fn exhaustion_is_a_condition_and_one_event_per_transition() {
    let (_server, client) = cluster().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    pools
        .create(
            &PostParams::default(),
            &pool("small", IpRange::start_end("10.10.1.10", "10.10.1.12")),
        )
        .await
        .unwrap();
    blocks
        .create(
            &PostParams::default(),
            &block("small-0", "small", &[10, 11]),
        )
        .await
        .unwrap();
    let mut r = UsageReconciler::new(client.clone(), UsageConfig::default());
    r.reconcile_all().await.unwrap();
    let c = condition(&pools, "small", EXHAUSTED).await;
    assert_eq!(c.status, "False");
    assert_eq!(condition(&pools, "small", VALID).await.status, "True");
    assert!(events(&client, "small", EVENT_EXHAUSTED).await.is_empty());

    // The last address.
    let mut b = blocks.get("small-0").await.unwrap();
    b.spec.allocations = block("small-0", "small", &[10, 11, 12]).spec.allocations;
    blocks
        .replace("small-0", &PostParams::default(), &b)
        .await
        .unwrap();
    let pass = r.reconcile_all().await.unwrap();
    assert_eq!(pass.written, ["small"]);
    let full = condition(&pools, "small", EXHAUSTED).await;
    assert_eq!(full.status, "True");
    assert_eq!(full.reason, REASON_NO_FREE);
    let ev = events(&client, "small", EVENT_EXHAUSTED).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        ev[0].reporting_controller.as_deref(),
        Some(REPORTING_CONTROLLER)
    );

    // Nothing changed: no write, no second event, even from a new reconciler.
    assert!(r.reconcile_all().await.unwrap().written.is_empty());
    let mut fresh = UsageReconciler::new(client.clone(), UsageConfig::default());
    assert!(fresh.reconcile_all().await.unwrap().written.is_empty());
    assert_eq!(events(&client, "small", EVENT_EXHAUSTED).await.len(), 1);
    assert_eq!(
        condition(&pools, "small", EXHAUSTED)
            .await
            .last_transition_time,
        full.last_transition_time
    );

    // Releasing an address flips it back, with a new transition time.
    let mut b = blocks.get("small-0").await.unwrap();
    b.spec.allocations.pop();
    blocks
        .replace("small-0", &PostParams::default(), &b)
        .await
        .unwrap();
    // Timestamps have second precision on the wire: make the flip later.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while k8s_openapi::jiff::Timestamp::now().as_second() <= full.last_transition_time.0.as_second()
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    r.reconcile_all().await.unwrap();
    let freed = condition(&pools, "small", EXHAUSTED).await;
    assert_eq!(freed.status, "False");
    assert!(
        freed.last_transition_time.0 > full.last_transition_time.0,
        "{freed:?} after {full:?}"
    );
    assert_eq!(events(&client, "small", EVENT_EXHAUSTED).await.len(), 1);
}

#[tokio::test]
async fn overlapping_pools_get_a_conflict_naming_each_other() {
    let (_server, client) = cluster().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    pools
        .create(
            &PostParams::default(),
            &pool("left", IpRange::cidr("10.10.1.0/24")),
        )
        .await
        .unwrap();
    pools
        .create(
            &PostParams::default(),
            &pool("right", IpRange::start_end("10.10.1.100", "10.10.1.110")),
        )
        .await
        .unwrap();
    let mut r = UsageReconciler::new(client.clone(), UsageConfig::default());
    r.reconcile_all().await.unwrap();
    for (me, other) in [("left", "right"), ("right", "left")] {
        let c = condition(&pools, me, VALID).await;
        assert_eq!(c.status, "False", "{me}: {c:?}");
        assert_eq!(c.reason, REASON_CONFLICT);
        assert!(
            c.message.contains(&format!("IPPool {other}")),
            "{me}: {}",
            c.message
        );
        let ev = events(&client, me, EVENT_CONFLICT).await;
        assert_eq!(ev.len(), 1, "{me}: {ev:?}");
        assert!(ev[0].note.as_deref().unwrap().contains(other));
    }
    assert!(r.reconcile_all().await.unwrap().written.is_empty());
    assert_eq!(events(&client, "left", EVENT_CONFLICT).await.len(), 1);
}
