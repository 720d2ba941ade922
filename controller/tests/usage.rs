//! Pool usage against the embedded API server: statuses follow the blocks,
//! and the number of status writes follows changes, not allocations.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, CustomResourceExt};
use spur_controller::usage::{stored_usage, UsageConfig, UsageReconciler};
use spur_core::ipamblock::{BlockAllocation, IPAMBlock, IPAMBlockSpec, Owner};
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, PoolUsage, SubnetInfo};
use spur_kubeapi::ApiServer;

async fn cluster() -> (ApiServer, Client) {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [IPPool::crd(), IPAMBlock::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    (server, client)
}

fn pool(name: &str, cidr: &str, gw: &str) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            ip_ranges: vec![IpRange::cidr(cidr)],
            subnet_info: SubnetInfo {
                gateway: gw.into(),
                prefix_length: 24,
                vlan: None,
            },
            exclude: vec![],
        },
    )
}

fn block(name: &str, pool: &str, cidr: &str, offsets: impl IntoIterator<Item = u8>) -> IPAMBlock {
    IPAMBlock::new(
        name,
        IPAMBlockSpec {
            pool: pool.into(),
            cidr: cidr.into(),
            node: "node-a".into(),
            allocations: offsets
                .into_iter()
                .map(|o| BlockAllocation {
                    offset: o,
                    owner: Owner::pod("default", &format!("web-{o}"), "c1", "eth1"),
                })
                .collect(),
        },
    )
}

/// Writes `offsets` as the allocations of an existing block (one update).
async fn set_allocations(
    blocks: &Api<IPAMBlock>,
    name: &str,
    offsets: impl IntoIterator<Item = u8>,
) {
    let mut b = blocks.get(name).await.unwrap();
    let fresh = block(name, &b.spec.pool, &b.spec.cidr, offsets);
    b.spec.allocations = fresh.spec.allocations;
    blocks
        .replace(name, &PostParams::default(), &b)
        .await
        .unwrap();
}

async fn usage(pools: &Api<IPPool>, name: &str) -> Option<PoolUsage> {
    stored_usage(&pools.get(name).await.unwrap())
}

fn status_writes(server: &ApiServer) -> u64 {
    server.stats().get("ippools").map_or(0, |s| s.writes)
}

/// Waits until pool `name` shows `want` (the loop runs in the background).
async fn eventually(pools: &Api<IPPool>, name: &str, want: PoolUsage) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = usage(pools, name).await;
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool {name}: usage {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_pass_writes_changed_usage_only() {
    let (server, client) = cluster().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    pools
        .create(
            &PostParams::default(),
            &pool("a", "10.10.1.0/24", "10.10.1.1"),
        )
        .await
        .unwrap();
    pools
        .create(
            &PostParams::default(),
            &pool("b", "10.10.2.0/24", "10.10.2.1"),
        )
        .await
        .unwrap();
    blocks
        .create(
            &PostParams::default(),
            &block("a-0", "a", "10.10.1.0/26", [2, 3, 4]),
        )
        .await
        .unwrap();
    // A block of a pool that does not exist (any more) is ignored.
    blocks
        .create(
            &PostParams::default(),
            &block("gone-0", "gone", "10.10.9.0/26", [2]),
        )
        .await
        .unwrap();

    let mut r = UsageReconciler::new(client.clone(), UsageConfig::default());
    let pass = r.reconcile_all().await.unwrap();
    assert_eq!(pass.pools, 2);
    assert_eq!(pass.written, ["a", "b"]);
    assert_eq!(
        usage(&pools, "a").await,
        Some(PoolUsage {
            total: 253,
            used: 3
        })
    );
    assert_eq!(
        usage(&pools, "b").await,
        Some(PoolUsage {
            total: 253,
            used: 0
        })
    );

    // Nothing changed: nothing written.
    let before = status_writes(&server);
    let pass = r.reconcile_all().await.unwrap();
    assert!(pass.written.is_empty() && pass.failed.is_empty());
    assert_eq!(status_writes(&server), before);

    // 64 allocations in one block update: one status write.
    blocks
        .create(
            &PostParams::default(),
            &block("a-64", "a", "10.10.1.64/26", []),
        )
        .await
        .unwrap();
    set_allocations(&blocks, "a-64", 0..64).await;
    let pass = r.reconcile_all().await.unwrap();
    assert_eq!(pass.written, ["a"]);
    assert_eq!(status_writes(&server), before + 1);
    assert_eq!(
        usage(&pools, "a").await,
        Some(PoolUsage {
            total: 253,
            used: 67
        })
    );

    // Releases and a deleted block are followed.
    set_allocations(&blocks, "a-0", [2]).await;
    blocks
        .delete("a-64", &DeleteParams::default())
        .await
        .unwrap();
    r.reconcile_all().await.unwrap();
    assert_eq!(
        usage(&pools, "a").await,
        Some(PoolUsage {
            total: 253,
            used: 1
        })
    );

    // A spec change of the pool changes its total.
    let mut a = pools.get("a").await.unwrap();
    a.spec.exclude = vec!["10.10.1.100..10.10.1.109".into()];
    pools
        .replace("a", &PostParams::default(), &a)
        .await
        .unwrap();
    r.reconcile_all().await.unwrap();
    assert_eq!(
        usage(&pools, "a").await,
        Some(PoolUsage {
            total: 243,
            used: 1
        })
    );

    // A cache that has not seen the reconciler's own write yet does not
    // make it write the same value again.
    let stale_pools = pools.list(&Default::default()).await.unwrap().items;
    set_allocations(&blocks, "a-0", [2, 3]).await;
    let now_blocks = blocks.list(&Default::default()).await.unwrap().items;
    let before = status_writes(&server);
    assert_eq!(r.reconcile(&stale_pools, &now_blocks).await.written, ["a"]);
    assert!(r
        .reconcile(&stale_pools, &now_blocks)
        .await
        .written
        .is_empty());
    assert!(r.reconcile_all().await.unwrap().written.is_empty());
    assert_eq!(status_writes(&server), before + 1);
    // ... but a new change over the same stale copy is written.
    set_allocations(&blocks, "a-0", [2]).await;
    let now_blocks = blocks.list(&Default::default()).await.unwrap().items;
    assert_eq!(r.reconcile(&stale_pools, &now_blocks).await.written, ["a"]);
    assert_eq!(
        usage(&pools, "a").await,
        Some(PoolUsage {
            total: 243,
            used: 1
        })
    );

    // An invalid pool has no total.
    pools
        .create(
            &PostParams::default(),
            &pool("bad", "10.10.3.0/24", "10.10.4.1"),
        )
        .await
        .unwrap();
    r.reconcile_all().await.unwrap();
    assert_eq!(
        usage(&pools, "bad").await,
        Some(PoolUsage { total: 0, used: 0 })
    );
}

#[tokio::test]
async fn the_loop_follows_blocks_with_writes_bounded_by_changes() {
    let (server, client) = cluster().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    pools
        .create(
            &PostParams::default(),
            &pool("a", "10.10.1.0/24", "10.10.1.1"),
        )
        .await
        .unwrap();
    blocks
        .create(
            &PostParams::default(),
            &block("a-0", "a", "10.10.1.0/26", [2]),
        )
        .await
        .unwrap();

    let config = UsageConfig {
        debounce: Duration::from_millis(300),
        retry: Duration::from_millis(300),
        ..UsageConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        UsageReconciler::new(client.clone(), config.clone()).run(async {
            let _ = stopped.await;
        }),
    );

    // The first pass runs once both caches are listed.
    eventually(
        &pools,
        "a",
        PoolUsage {
            total: 253,
            used: 1,
        },
    )
    .await;
    let after_start = status_writes(&server);

    // 64 allocations written in one block update: one status write.
    blocks
        .create(
            &PostParams::default(),
            &block("a-64", "a", "10.10.1.64/26", []),
        )
        .await
        .unwrap();
    set_allocations(&blocks, "a-64", 0..64).await;
    eventually(
        &pools,
        "a",
        PoolUsage {
            total: 253,
            used: 65,
        },
    )
    .await;
    // Let the loop see its own write come back through the watch.
    tokio::time::sleep(config.debounce * 3).await;
    assert_eq!(
        status_writes(&server),
        after_start + 1,
        "one block update, one status write"
    );

    // A burst of 30 single-allocation updates inside one debounce window:
    // at most two status writes (the burst may straddle a window).
    let burst_start = status_writes(&server);
    for n in 3..33u8 {
        set_allocations(&blocks, "a-0", 2..n).await;
    }
    eventually(
        &pools,
        "a",
        PoolUsage {
            total: 253,
            used: 94,
        },
    )
    .await;
    tokio::time::sleep(config.debounce * 3).await;
    let burst_writes = status_writes(&server) - burst_start;
    assert!(
        (1..=2).contains(&burst_writes),
        "30 allocations in a burst took {burst_writes} status writes"
    );

    // Someone else overwrites the status: the loop puts it back.
    let patch = serde_json::json!({"status": {"usage": {"total": 1, "used": 1}}});
    pools
        .patch_status(
            "a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    eventually(
        &pools,
        "a",
        PoolUsage {
            total: 253,
            used: 94,
        },
    )
    .await;

    // Quiet: no writes at all.
    let quiet = status_writes(&server);
    tokio::time::sleep(config.debounce * 3).await;
    assert_eq!(status_writes(&server), quiet);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_failed_write_is_retried() {
    use spur_kubeapi::faults::{Fault, Matcher};
    let (server, client) = cluster().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    pools
        .create(
            &PostParams::default(),
            &pool("a", "10.10.1.0/24", "10.10.1.1"),
        )
        .await
        .unwrap();
    blocks
        .create(
            &PostParams::default(),
            &block("a-0", "a", "10.10.1.0/26", [2, 3]),
        )
        .await
        .unwrap();
    server
        .faults()
        .next(Matcher::writes_to("ippools"), Fault::Status(503), 2);
    let config = UsageConfig {
        debounce: Duration::from_millis(50),
        retry: Duration::from_millis(100),
        ..UsageConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(UsageReconciler::new(client.clone(), config).run(async {
        let _ = stopped.await;
    }));
    eventually(
        &pools,
        "a",
        PoolUsage {
            total: 253,
            used: 2,
        },
    )
    .await;
    assert_eq!(server.stats()["ippools"].failed_writes, 2);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn blocks_of_older_agents_are_labelled_and_then_seen_by_their_agent() {
    use spur_core::ipamblock::block_labels;
    use spur_node::ipam::{Ipam, IpamConfig};
    let (server, client) = cluster().await;
    let pp = PostParams::default();
    let pools: Api<IPPool> = Api::all(client.clone());
    let blocks: Api<IPAMBlock> = Api::all(client.clone());
    pools
        .create(&pp, &pool("p", "10.9.0.0/24", "10.9.0.1"))
        .await
        .unwrap();
    // An older agent of node-a created its block without labels.
    let legacy = blocks
        .create(&pp, &block("p-10-9-0-0", "p", "10.9.0.0/26", [2, 3]))
        .await
        .unwrap();
    assert!(legacy.metadata.labels.is_none());
    // A new agent of node-a watches only labelled blocks of its node.
    let agent = Ipam::start(
        client.clone(),
        IpamConfig {
            node: Some("node-a".into()),
            seed: Some(1),
            ..IpamConfig::default()
        },
    );
    tokio::time::timeout(Duration::from_secs(10), agent.cache().wait_ready())
        .await
        .unwrap();
    assert!(agent.cache().block("p-10-9-0-0").is_none());
    let mut r = UsageReconciler::new(client.clone(), UsageConfig::default());
    // A stale copy (the block moved on since) is refused (409) and left
    // for the next pass: no failure.
    set_allocations(&blocks, "p-10-9-0-0", [2, 3, 4]).await;
    let pass = r
        .reconcile(&[pools.get("p").await.unwrap()], &[legacy])
        .await;
    assert!(
        pass.labelled.is_empty() && pass.failed.is_empty(),
        "{pass:?}"
    );
    let pass = r.reconcile_all().await.unwrap();
    assert_eq!(pass.labelled, vec!["p-10-9-0-0".to_string()]);
    let stored = blocks.get("p-10-9-0-0").await.unwrap();
    assert_eq!(stored.metadata.labels, Some(block_labels("node-a", "p")));
    assert_eq!(stored.spec.allocations.len(), 3, "only the labels changed");
    // Idempotent: the next pass writes no block.
    server.reset_stats();
    let pass = r.reconcile_all().await.unwrap();
    assert!(pass.labelled.is_empty());
    assert_eq!(server.stats().get("ipamblocks").map_or(0, |s| s.writes), 0);
    // The agent sees its block now.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while agent.cache().pool("p").is_none_or(|p| p.used() != 3) {
        assert!(tokio::time::Instant::now() < deadline, "never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
