//! Helpers shared by the IPAM integration tests: an embedded API server
//! with Spur's CRDs, pools, agents, and the stored allocation state.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};
use spur_core::ipam::address;
use spur_core::ipamblock::{IPAMBlock, Owner, OwnerKey};
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, SubnetInfo};
use spur_core::pool::Family;
use spur_kubeapi::ApiServer;
use spur_node::ipam::{Ipam, IpamConfig, RetryPolicy};

pub fn client(server: &ApiServer) -> Client {
    Client::new(server.service(), "default")
}

/// A fresh server with the IPPool and IPAMBlock CRDs.
pub async fn server() -> ApiServer {
    let server = ApiServer::in_memory();
    let crds: Api<CustomResourceDefinition> = Api::all(client(&server));
    for crd in [IPPool::crd(), IPAMBlock::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    server
}

/// Creates a pool: ranges are CIDRs or `start-end`.
pub async fn pool(server: &ApiServer, name: &str, ranges: &[&str], gateway: &str, prefix: u8) {
    pool_with_vlan(server, name, ranges, gateway, prefix, None).await
}

pub async fn pool_with_vlan(
    server: &ApiServer,
    name: &str,
    ranges: &[&str],
    gateway: &str,
    prefix: u8,
    vlan: Option<u16>,
) {
    let pools: Api<IPPool> = Api::all(client(server));
    pools
        .create(
            &PostParams::default(),
            &IPPool::new(
                name,
                IPPoolSpec {
                    ip_ranges: ranges
                        .iter()
                        .map(|r| {
                            if r.contains('/') {
                                IpRange::cidr(*r)
                            } else {
                                let (a, b) = r.split_once('-').unwrap();
                                IpRange::start_end(a, b)
                            }
                        })
                        .collect(),
                    subnet_info: SubnetInfo {
                        gateway: gateway.into(),
                        prefix_length: prefix,
                        vlan,
                    },
                    exclude: vec![],
                },
            ),
        )
        .await
        .unwrap();
}

/// Test configuration: small bounds, fast seeded backoff.
pub fn config(seed: u64) -> IpamConfig {
    IpamConfig {
        timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            base: Duration::from_millis(2),
            max: Duration::from_millis(50),
            max_attempts: 16,
        },
        seed: Some(seed),
        node: None,
    }
}

/// An agent's allocator on `node` (its cache watches only that node's
/// blocks from the start), with a synced cache, knowing `pools`.
pub async fn agent_on(server: &ApiServer, seed: u64, node: &str, pools: &[&str]) -> Ipam {
    let ipam = Ipam::start(
        client(server),
        IpamConfig {
            node: Some(node.to_string()),
            ..config(seed)
        },
    );
    tokio::time::timeout(Duration::from_secs(10), ipam.cache().wait_ready())
        .await
        .expect("cache ready");
    for p in pools {
        wait_until(|| ipam.cache().layout(p).is_some()).await;
    }
    ipam
}

/// An agent's allocator with a synced cache, knowing `pools`.
pub async fn agent(server: &ApiServer, seed: u64, pools: &[&str]) -> Ipam {
    let ipam = Ipam::start(client(server), config(seed));
    tokio::time::timeout(Duration::from_secs(10), ipam.cache().wait_ready())
        .await
        .expect("cache ready");
    for p in pools {
        wait_until(|| ipam.cache().layout(p).is_some()).await;
    }
    ipam
}

/// Polls `cond` until it holds (10 s of tokio time at most).
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The blocks as stored (read from the store, not through the API).
pub fn stored_blocks(server: &ApiServer) -> Vec<IPAMBlock> {
    server
        .store()
        .objects_of("spur.dev", "ipamblocks")
        .into_iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect()
}

/// Every stored allocation: address -> (pool, node of the block, owner).
/// Panics when an address appears twice.
pub fn stored(server: &ApiServer) -> BTreeMap<IpAddr, (String, String, Owner)> {
    let mut out = BTreeMap::new();
    for b in stored_blocks(server) {
        let net: ipnet::IpNet = b.spec.cidr.parse().unwrap();
        let family = Family::of_net(&net);
        let base = spur_core::pool::to_u128(net.network());
        for a in &b.spec.allocations {
            let ip = address(family, base, u32::from(a.offset));
            let prev = out.insert(
                ip,
                (b.spec.pool.clone(), b.spec.node.clone(), a.owner.clone()),
            );
            assert!(prev.is_none(), "{ip} is stored twice");
        }
    }
    out
}

/// What `key` holds, as stored.
pub fn held_by(server: &ApiServer, key: &OwnerKey) -> Vec<IpAddr> {
    stored(server)
        .into_iter()
        .filter(|(_, (_, _, o))| o.key() == *key)
        .map(|(ip, _)| ip)
        .collect()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn pod(name: &str) -> Owner {
    Owner::pod("default", name, &format!("c-{name}"), "eth1")
}

/// The layout of a pool made by [`pool`] (one range per CIDR).
pub fn layout(
    name: &str,
    ranges: &[&str],
    gateway: &str,
    prefix: u8,
) -> spur_core::ippool::PoolLayout {
    use spur_core::ippool::{IPPoolSpec, IpRange, PoolLayout, SubnetInfo};
    PoolLayout::from_spec(
        name,
        &IPPoolSpec {
            ip_ranges: ranges.iter().map(|r| IpRange::cidr(*r)).collect(),
            subnet_info: SubnetInfo {
                gateway: gateway.into(),
                prefix_length: prefix,
                vlan: None,
            },
            exclude: vec![],
        },
    )
    .unwrap()
}

/// Where `node`'s first claim in an empty pool lands: the window its name
/// hashes to, at the window's lowest allocatable address.
pub fn first_address(layout: &spur_core::ippool::PoolLayout, node: &str) -> IpAddr {
    use spur_core::ipam::{capacity_mask, claim_start, lowest_free};
    let w = claim_start(layout, node);
    let off = lowest_free(capacity_mask(layout, w), 0).unwrap();
    address(layout.family, w, off)
}

/// `ip` plus `n`.
pub fn plus(ip: IpAddr, n: u128) -> IpAddr {
    spur_core::pool::from_u128(Family::of(ip), spur_core::pool::to_u128(ip) + n)
}

/// Creates NetworkAttachmentDefinition `namespace/name` with `config`, and
/// the Namespace if it does not exist yet.
pub async fn nad(server: &ApiServer, namespace: &str, name: &str, config: serde_json::Value) {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::DynamicObject;
    let c = client(server);
    let _ = Api::<Namespace>::all(c.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).unwrap(),
        )
        .await;
    let nads: Api<DynamicObject> =
        Api::namespaced_with(c, namespace, &spur_node::agent::cluster::nad_resource());
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"config": config.to_string()}}))
    .unwrap();
    nads.create(&PostParams::default(), &obj).await.unwrap();
}

/// An agent of `node` over in-memory switch and links, its caches synced
/// and `pool` known.
pub struct FakeAgent {
    pub agent: std::sync::Arc<spur_node::agent::Agent>,
    pub cluster: spur_node::agent::cluster::KubeCluster,
    pub switch: std::sync::Arc<spur_node::fake::FakeSwitch>,
    pub links: std::sync::Arc<spur_node::fake::FakeLinks>,
}

/// Starts a [`FakeAgent`] with `spur-agent.conf` text `conf`.
pub async fn fake_agent(
    server: &ApiServer,
    node: &str,
    conf: &str,
    seed: u64,
    pool: &str,
) -> FakeAgent {
    use spur_node::agent::{cluster::KubeCluster, Agent, AgentSettings};
    use spur_node::fake::{FakeLinks, FakeSwitch};
    use std::sync::Arc;
    let c = client(server);
    let ipam = Ipam::start(c.clone(), config(seed));
    let cluster = KubeCluster::start(c, node);
    let switch = Arc::new(FakeSwitch::new());
    let links = Arc::new(FakeLinks::new());
    let agent = Arc::new(Agent::new(
        AgentSettings {
            node: node.into(),
            datapath: "netdev".into(),
        },
        spur_core::config::AgentConfig::from_yaml(conf).unwrap(),
        ipam,
        Arc::new(cluster.clone()),
        switch.clone(),
        links.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), cluster.wait_ready())
        .await
        .unwrap();
    agent.ipam().cache().wait_ready().await;
    wait_until(|| agent.ipam().cache().layout(pool).is_some()).await;
    FakeAgent {
        agent,
        cluster,
        switch,
        links,
    }
}
