//! Node-scoped IPAM: an agent's cache watches only its own node's
//! IPAMBlocks (label `spur.dev/node`) and learns other nodes' blocks on
//! demand: a GET after a create answered AlreadyExists, a LIST of the pool
//! when only other nodes' blocks could serve, a GET of the block of a
//! requested address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::Client;
use spur_core::ipam::{block_name, capacity_mask, window_of};
use spur_core::ipamblock::{block_labels, BlockAllocation, IPAMBlock, IPAMBlockSpec, NODE_LABEL};
use spur_core::pool::Family;
use spur_kubeapi::server::ApiBody;
use spur_kubeapi::ApiServer;
use spur_node::ipam::{AllocateRequest, Ipam, IpamConfig, IpamError};

fn req(node: &str, name: &str, pools: &[&str]) -> AllocateRequest {
    AllocateRequest::new(node, pod(name), pools.iter().copied())
}

/// Every IPAMBlock request a client sent: (method or WATCH, path and
/// query, status).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(String, String, u16)>>>);

impl Log {
    fn take(&self) -> Vec<(String, String, u16)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[derive(Clone)]
struct Logged {
    inner: spur_kubeapi::server::ApiService,
    log: Log,
}

type ApiFuture = Pin<Box<dyn Future<Output = Result<http::Response<ApiBody>, Infallible>> + Send>>;

impl tower::Service<http::Request<kube::client::Body>> for Logged {
    type Response = http::Response<ApiBody>;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> ApiFuture {
        let uri = req.uri().to_string();
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        let method = if watch {
            "WATCH".to_string()
        } else {
            req.method().to_string()
        };
        let log = self.log.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            if uri.contains("/ipamblocks") {
                log.0
                    .lock()
                    .unwrap()
                    .push((method, uri, resp.status().as_u16()));
            }
            Ok(resp)
        })
    }
}

/// An agent on `node` whose IPAMBlock requests are logged.
async fn logged_agent(server: &ApiServer, seed: u64, node: &str, pools: &[&str]) -> (Ipam, Log) {
    let log = Log::default();
    let client = Client::new(
        Logged {
            inner: server.service(),
            log: log.clone(),
        },
        "default",
    );
    let ipam = Ipam::start(
        client,
        IpamConfig {
            node: Some(node.into()),
            ..config(seed)
        },
    );
    tokio::time::timeout(Duration::from_secs(10), ipam.cache().wait_ready())
        .await
        .expect("cache ready");
    for p in pools {
        wait_until(|| ipam.cache().layout(p).is_some()).await;
    }
    (ipam, log)
}

/// Creates a block of `node` in the window of `at` holding `offsets`
/// (labelled unless `legacy`), as another node's agent would.
async fn foreign_block(
    server: &ApiServer,
    pool: &str,
    node: &str,
    at: &str,
    offsets: impl IntoIterator<Item = u8>,
    legacy: bool,
) -> IPAMBlock {
    let base = window_of(ip(at));
    let name = block_name(pool, Family::V4, base);
    let mut b = IPAMBlock::new(
        &name,
        IPAMBlockSpec {
            pool: pool.into(),
            cidr: spur_core::allocator::window_cidr(Family::V4, base).to_string(),
            node: node.into(),
            allocations: offsets
                .into_iter()
                .map(|o| BlockAllocation {
                    offset: o,
                    owner: pod(&format!("{node}-{o}")),
                })
                .collect(),
        },
    );
    if !legacy {
        b.metadata.labels = Some(block_labels(node, pool));
    }
    let api: Api<IPAMBlock> = Api::all(client(server));
    api.create(&PostParams::default(), &b).await.unwrap()
}

fn count(log: &[(String, String, u16)], method: &str, status: u16) -> usize {
    log.iter()
        .filter(|(m, _, s)| m == method && *s == status)
        .count()
}

#[tokio::test]
async fn an_agent_receives_no_watch_event_for_another_nodes_allocation() {
    let server = server().await;
    pool(&server, "p", &["10.40.0.0/24"], "10.40.0.1", 24).await;
    let a = agent_on(&server, 1, "node-a", &["p"]).await;
    let b = agent_on(&server, 2, "node-b", &["p"]).await;
    // A watcher with node-b's selector counts what node-b's agent is sent.
    let events = Arc::new(Mutex::new(0usize));
    let seen = events.clone();
    let blocks: Api<IPAMBlock> = Api::all(client(&server));
    let selector = format!("{NODE_LABEL}=node-b");
    let counter = tokio::spawn(async move {
        let mut s = watcher(blocks, watcher::Config::default().labels(&selector)).boxed();
        while let Some(ev) = s.next().await {
            if let Ok(watcher::Event::Apply(_) | watcher::Event::InitApply(_)) = ev {
                *seen.lock().unwrap() += 1;
            }
        }
    });
    for i in 0..20 {
        a.allocate(&req("node-a", &format!("a{i}"), &["p"]))
            .await
            .unwrap();
    }
    // node-a's agent sees its own writes; the blocks carry the labels.
    let stored = stored_blocks(&server);
    assert!(!stored.is_empty());
    for blk in &stored {
        assert_eq!(blk.metadata.labels, Some(block_labels("node-a", "p")));
    }
    wait_until(|| a.cache().pool("p").is_some_and(|p| p.used() == 20)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*events.lock().unwrap(), 0, "no event for node-b");
    assert!(
        b.cache().pool("p").unwrap().blocks().is_empty(),
        "node-b's cache holds none of node-a's blocks"
    );
    // node-b's own allocation is seen by the watcher for node-b only.
    b.allocate(&req("node-b", "b0", &["p"])).await.unwrap();
    wait_until(|| *events.lock().unwrap() >= 1).await;
    counter.abort();
}

#[tokio::test]
async fn a_cache_started_without_a_node_narrows_at_the_first_allocation() {
    let server = server().await;
    pool(&server, "p", &["10.41.0.0/24"], "10.41.0.1", 24).await;
    let a = agent_on(&server, 1, "node-a", &["p"]).await;
    let b = agent(&server, 2, &["p"]).await;
    a.allocate(&req("node-a", "a0", &["p"])).await.unwrap();
    // Not narrowed yet: node-b's cache sees node-a's block.
    wait_until(|| b.cache().pool("p").is_some_and(|p| p.used() == 1)).await;
    assert_eq!(b.cache().node(), None);
    b.allocate(&req("node-b", "b0", &["p"])).await.unwrap();
    assert_eq!(b.cache().node().as_deref(), Some("node-b"));
    for i in 1..5 {
        a.allocate(&req("node-a", &format!("a{i}"), &["p"]))
            .await
            .unwrap();
    }
    b.allocate(&req("node-b", "b1", &["p"])).await.unwrap();
    wait_until(|| b.cache().pool("p").is_some_and(|p| p.used() == 3)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        b.cache().pool("p").unwrap().used(),
        3,
        "node-a's later allocations are not delivered to node-b"
    );
}

#[tokio::test]
async fn claiming_a_window_another_node_holds_conflicts_then_takes_the_next() {
    let server = server().await;
    pool(&server, "p", &["10.42.0.0/24"], "10.42.0.1", 24).await;
    let l = layout("p", &["10.42.0.0/24"], "10.42.0.1", 24);
    let start = first_address(&l, "node-b");
    // node-x holds the window node-b would claim first.
    foreign_block(&server, "p", "node-x", &start.to_string(), [5], false).await;
    let (b, log) = logged_agent(&server, 3, "node-b", &["p"]).await;
    log.take();
    let got = b.allocate(&req("node-b", "b0", &["p"])).await.unwrap()[0].ip();
    assert_ne!(window_of(got), window_of(start), "the next window");
    let (_, node, _) = &stored(&server)[&got];
    assert_eq!(node, "node-b", "claimed, not borrowed");
    let entries = log.take();
    assert_eq!(count(&entries, "POST", 409), 1, "{entries:?}");
    assert_eq!(
        count(&entries, "GET", 200),
        1,
        "the block is read: {entries:?}"
    );
    assert_eq!(count(&entries, "POST", 201), 1, "{entries:?}");
    assert_eq!(entries.len(), 3, "nothing else: {entries:?}");
    // The next allocation takes from node-b's new block: one write.
    b.allocate(&req("node-b", "b1", &["p"])).await.unwrap();
    let entries = log.take();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(count(&entries, "PUT", 200), 1, "{entries:?}");
}

#[tokio::test]
async fn borrowing_when_every_window_is_claimed_lists_the_pool_once() {
    let server = server().await;
    // Two windows: 10.43.0.0/26 and 10.43.0.64/26.
    pool(&server, "p", &["10.43.0.0/25"], "10.43.0.1", 24).await;
    let l = layout("p", &["10.43.0.0/25"], "10.43.0.1", 24);
    let (b, log) = logged_agent(&server, 4, "node-b", &["p"]).await;
    // node-b claims its window and fills it.
    let first = b.allocate(&req("node-b", "b0", &["p"])).await.unwrap()[0].ip();
    let own = window_of(first);
    let cap = capacity_mask(&l, own).count_ones();
    for i in 1..cap {
        let got = b
            .allocate(&req("node-b", &format!("b{i}"), &["p"]))
            .await
            .unwrap()[0]
            .ip();
        assert_eq!(window_of(got), own);
    }
    // node-x holds the other window, with room.
    let other = if own == window_of(ip("10.43.0.0")) {
        "10.43.0.64"
    } else {
        "10.43.0.0"
    };
    foreign_block(&server, "p", "node-x", other, [10, 11], false).await;
    log.take();
    let got = b.allocate(&req("node-b", "borrow", &["p"])).await.unwrap()[0].ip();
    assert_eq!(window_of(got), window_of(ip(other)), "borrowed");
    let (_, node, owner) = &stored(&server)[&got];
    assert_eq!((node.as_str(), owner.name.as_str()), ("node-x", "borrow"));
    let entries = log.take();
    let lists: Vec<_> = entries
        .iter()
        .filter(|(m, uri, _)| m == "GET" && uri.contains("labelSelector"))
        .collect();
    assert_eq!(lists.len(), 1, "one LIST: {entries:?}");
    assert!(
        lists[0].1.contains("pool"),
        "by the pool label: {entries:?}"
    );
    // The create of the unknown window conflicted first (one GET), then
    // the LIST, then the write into node-x's block.
    assert_eq!(count(&entries, "PUT", 200), 1, "{entries:?}");
    // The borrowed address is released through the foreign block kept in
    // the cache.
    assert_eq!(b.release(&pod("borrow").key()).await.unwrap(), 1);
    assert!(!stored(&server).contains_key(&got));
    // Exhaustion is concluded after a LIST, once per call.
    for i in 0..(capacity_mask(&l, window_of(ip(other))).count_ones() - 2) {
        b.allocate(&req("node-b", &format!("more{i}"), &["p"]))
            .await
            .unwrap();
    }
    log.take();
    let e = b
        .allocate(&req("node-b", "late", &["p"]))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    let entries = log.take();
    assert_eq!(entries.len(), 1, "one LIST, no write: {entries:?}");
}

#[tokio::test]
async fn a_fixed_address_in_another_nodes_block() {
    let server = server().await;
    pool(&server, "p", &["10.44.0.0/24"], "10.44.0.1", 24).await;
    foreign_block(&server, "p", "node-x", "10.44.0.128", [2], false).await;
    let (b, log) = logged_agent(&server, 5, "node-b", &["p"]).await;
    log.take();
    // Held by node-x's Pod: refused naming it, after one GET of the block.
    let e = b
        .allocate(&req("node-b", "fixed", &["p"]).with_address(ip("10.44.0.130")))
        .await
        .unwrap_err();
    match e {
        IpamError::AddressInUse { holder, .. } => assert_eq!(holder.name, "node-x-2"),
        other => panic!("{other}"),
    }
    let entries = log.take();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(count(&entries, "GET", 200), 1);
    // A free one in the same block: GET, then one write into it.
    let got = b
        .allocate(&req("node-b", "fixed", &["p"]).with_address(ip("10.44.0.131")))
        .await
        .unwrap();
    assert_eq!(got[0].ip(), ip("10.44.0.131"));
    let entries = log.take();
    assert_eq!(count(&entries, "GET", 200), 1, "{entries:?}");
    assert_eq!(count(&entries, "PUT", 200), 1, "{entries:?}");
    let (_, node, _) = &stored(&server)[&ip("10.44.0.131")];
    assert_eq!(node, "node-x");
    // In a window nobody claimed: a GET (404), then the claim.
    let got = b
        .allocate(&req("node-b", "fixed2", &["p"]).with_address(ip("10.44.0.200")))
        .await
        .unwrap();
    assert_eq!(got[0].ip(), ip("10.44.0.200"));
    let (_, node, _) = &stored(&server)[&ip("10.44.0.200")];
    assert_eq!(node, "node-b");
    // Released again through the cache.
    assert_eq!(b.release(&pod("fixed").key()).await.unwrap(), 1);
    assert!(!stored(&server).contains_key(&ip("10.44.0.131")));
}

#[tokio::test]
async fn an_update_labels_a_block_an_older_agent_created() {
    let server = server().await;
    pool(&server, "p", &["10.45.0.0/24"], "10.45.0.1", 24).await;
    let l = layout("p", &["10.45.0.0/24"], "10.45.0.1", 24);
    let start = first_address(&l, "node-b");
    // An older agent of node-b created its block without labels: the new
    // agent's watch does not see it, its claim conflicts, reads it (its
    // own) and writes the allocation with the labels added.
    foreign_block(&server, "p", "node-b", &start.to_string(), [3], true).await;
    let b = agent_on(&server, 6, "node-b", &["p"]).await;
    let got = b.allocate(&req("node-b", "b0", &["p"])).await.unwrap()[0].ip();
    assert_eq!(window_of(got), window_of(start), "its own block is used");
    let blk = stored_blocks(&server)
        .into_iter()
        .find(|x| x.spec.node == "node-b")
        .unwrap();
    assert_eq!(blk.metadata.labels, Some(block_labels("node-b", "p")));
}
