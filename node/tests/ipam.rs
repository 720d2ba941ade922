//! The agent's IPAM against the embedded API server, in process: blocks,
//! concurrency between nodes, request semantics, and what happens when the
//! API is paused, fails or conflicts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures::future::join_all;
use spur_core::cni::ErrorCode;
use spur_core::ipamblock::Owner;
use spur_kubeapi::faults::{Fault, Matcher};
use spur_node::ipam::{AllocateRequest, IpamError, PendingWork};
use tokio::time::Instant;

fn req(node: &str, owner: Owner, pools: &[&str]) -> AllocateRequest {
    AllocateRequest::new(node, owner, pools.iter().copied())
}

#[tokio::test]
async fn claim_then_take_costs_one_write_per_allocation_and_no_read() {
    let server = server().await;
    pool(&server, "p", &["10.10.1.0/24"], "10.10.1.1", 24).await;
    let a = agent_on(&server, 1, "node-a", &["p"]).await;
    server.reset_stats();
    let n = 70;
    let mut got = Vec::new();
    for i in 0..n {
        let r = a
            .allocate(&req("node-a", pod(&format!("p{i}")), &["p"]))
            .await
            .unwrap();
        assert_eq!(r.len(), 1);
        got.push(r[0].ip());
    }
    // The node's first window fills lowest first, then it claims another.
    let l = layout("p", &["10.10.1.0/24"], "10.10.1.1", 24);
    let w = spur_core::ipam::window_of(got[0]);
    assert_eq!(got[0], first_address(&l, "node-a"));
    let in_first = got
        .iter()
        .take_while(|a| spur_core::ipam::window_of(**a) == w)
        .count();
    assert_eq!(
        in_first as u32,
        spur_core::ipam::capacity_mask(&l, w).count_ones()
    );
    assert_eq!(
        got[in_first - 1],
        plus(got[0], in_first as u128 - 1),
        "consecutive"
    );
    assert!(got[in_first..]
        .iter()
        .all(|a| spur_core::ipam::window_of(*a) != w));
    let stats = server.stats()["ipamblocks"].clone();
    assert_eq!(
        (stats.writes, stats.conflicts, stats.reads),
        (n, 0, 0),
        "each allocation is one write (the claim carries the first), no conflict with itself, no read"
    );
    assert!(stats.max_object_bytes < 16 * 1024, "{stats:?}");
    let blocks = stored_blocks(&server);
    assert_eq!(blocks.len(), 2);
    assert!(blocks.iter().all(|b| b.spec.node == "node-a"));
    assert_eq!(stored(&server).len(), n as usize);
}

#[tokio::test]
async fn concurrent_adds_on_one_node_do_not_conflict() {
    let server = server().await;
    pool(&server, "p", &["10.10.2.0/24"], "10.10.2.1", 24).await;
    let a = agent(&server, 2, &["p"]).await;
    server.reset_stats();
    let reqs: Vec<AllocateRequest> = (0..30)
        .map(|i| req("node-a", pod(&format!("c{i}")), &["p"]))
        .collect();
    let results = join_all(reqs.iter().map(|r| a.allocate(r))).await;
    let ips: BTreeSet<_> = results.into_iter().map(|r| r.unwrap()[0].ip()).collect();
    assert_eq!(ips.len(), 30, "distinct addresses");
    let stats = server.stats()["ipamblocks"].clone();
    assert_eq!((stats.writes, stats.conflicts), (30, 0));
}

#[tokio::test]
async fn two_nodes_keep_to_their_own_blocks_until_no_window_is_left() {
    let server = server().await;
    // 10.20.0.0/24: four windows, 253 addresses.
    pool(&server, "p", &["10.20.0.0/24"], "10.20.0.1", 24).await;
    let a = agent_on(&server, 3, "node-a", &["p"]).await;
    let b = agent_on(&server, 4, "node-b", &["p"]).await;
    // node-a claims the first window; then both nodes allocate at once.
    // node-b does not watch node-a's blocks: it learns of them when a
    // claim of its collides (409 AlreadyExists, then a GET).
    a.allocate(&req("node-a", pod("a0"), &["p"])).await.unwrap();
    let ra: Vec<_> = (1..40)
        .map(|i| req("node-a", pod(&format!("a{i}")), &["p"]))
        .collect();
    let rb: Vec<_> = (0..40)
        .map(|i| req("node-b", pod(&format!("b{i}")), &["p"]))
        .collect();
    let (xa, xb) = tokio::join!(
        join_all(ra.iter().map(|r| a.allocate(r))),
        join_all(rb.iter().map(|r| b.allocate(r)))
    );
    let mut all = BTreeSet::new();
    for r in xa.into_iter().chain(xb) {
        assert!(
            all.insert(r.unwrap()[0].ip()),
            "an address handed out twice"
        );
    }
    assert_eq!(all.len(), 79);
    let node_of_owner = |o: &Owner| format!("node-{}", &o.name[..1]);
    for (ip, (_, node, owner)) in stored(&server) {
        assert_eq!(
            node,
            node_of_owner(&owner),
            "{ip}: allocated in another node's block"
        );
    }
    // node-a fills its block and claims the windows left, then borrows.
    let l = layout("p", &["10.20.0.0/24"], "10.20.0.1", 24);
    let b_window = stored(&server)
        .iter()
        .find(|(_, (_, n, _))| n == "node-b")
        .map(|(a, _)| spur_core::ipam::window_of(*a))
        .unwrap();
    let b_cap = spur_core::ipam::capacity_mask(&l, b_window).count_ones() as usize;
    let a_total = 253 - b_cap;
    for i in 40..a_total {
        a.allocate(&req("node-a", pod(&format!("a{i}")), &["p"]))
            .await
            .unwrap();
    }
    let s = stored(&server);
    assert!(
        s.values()
            .all(|(_, node, owner)| *node == node_of_owner(owner)),
        "no borrowing while a window is unclaimed"
    );
    assert_eq!(s.len(), a_total + 40);
    // No unclaimed window left: the next address comes from node-b's block.
    let borrowed = a
        .allocate(&req("node-a", pod("borrowed"), &["p"]))
        .await
        .unwrap()[0]
        .ip();
    let (_, node, _) = &stored(&server)[&borrowed];
    assert_eq!(node, "node-b", "{borrowed} borrowed from node-b's block");
    // The rest of node-b's block, then exhaustion naming the pool.
    for i in 0..(b_cap - 40 - 1) {
        a.allocate(&req("node-a", pod(&format!("rest{i}")), &["p"]))
            .await
            .unwrap();
    }
    assert_eq!(stored(&server).len(), 253);
    let e = a
        .allocate(&req("node-a", pod("late"), &["p"]))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        IpamError::Exhausted {
            pools: vec!["p".into()]
        }
    );
    assert_eq!(e.code(), ErrorCode::Exhausted);
    // node-b finds the pool full too (it lists the pool's blocks first).
    assert!(matches!(
        b.allocate(&req("node-b", pod("late-b"), &["p"])).await,
        Err(IpamError::Exhausted { .. })
    ));
}

#[tokio::test]
async fn retried_allocate_returns_the_same_address_without_a_write() {
    let server = server().await;
    pool(&server, "p", &["10.10.3.0/24"], "10.10.3.1", 24).await;
    let a = agent(&server, 5, &["p"]).await;
    let r = req("node-a", pod("web"), &["p"]);
    let first = a.allocate(&r).await.unwrap();
    server.reset_stats();
    let again = a.allocate(&r).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(server.stats().get("ipamblocks").map_or(0, |s| s.writes), 0);
    // A restarted agent (a new cache listed from the API) finds it too.
    drop(a);
    let restarted = agent(&server, 6, &["p"]).await;
    assert_eq!(restarted.allocate(&r).await.unwrap(), first);
    assert_eq!(server.stats().get("ipamblocks").map_or(0, |s| s.writes), 0);
}

#[tokio::test]
async fn a_statefulset_ordinal_keeps_its_address_across_pods_and_nodes() {
    let server = server().await;
    pool(&server, "p", &["10.10.4.0/24"], "10.10.4.1", 24).await;
    let a = agent(&server, 7, &["p"]).await;
    let b = agent(&server, 8, &["p"]).await;
    let first = Owner::stateful_set("db", "pg", 0, "eth1", "pg-0", "c1");
    let got = a
        .allocate(&req("node-a", first.clone(), &["p"]))
        .await
        .unwrap();
    // The Pod is re-created on node-b with a new container.
    let again = Owner::stateful_set("db", "pg", 0, "eth1", "pg-0", "c2");
    wait_until(|| b.cache().find("p", &again.key()).is_some()).await;
    let moved = b
        .allocate(&req("node-b", again.clone(), &["p"]))
        .await
        .unwrap();
    assert_eq!(moved, got);
    let s = stored(&server);
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[&got[0].ip()].2.container_id,
        "c2",
        "the record names the new container"
    );
    // Releasing the ordinal frees it.
    assert_eq!(b.release(&again.key()).await.unwrap(), 1);
    assert!(stored(&server).is_empty());
}

#[tokio::test]
async fn requested_addresses_are_honoured_or_refused_naming_the_holder() {
    let server = server().await;
    pool(&server, "p", &["10.10.5.0/24"], "10.10.5.1", 24).await;
    let a = agent(&server, 9, &["p"]).await;
    let x = pod("x");
    let got = a
        .allocate(&req("node-a", x.clone(), &["p"]).with_address(ip("10.10.5.50")))
        .await
        .unwrap();
    assert_eq!(got[0].address.to_string(), "10.10.5.50/24");
    let e = a
        .allocate(&req("node-a", pod("y"), &["p"]).with_address(ip("10.10.5.50")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AddressInUse);
    assert!(e.to_string().contains(&x.to_string()), "{e}");
    for bad in ["10.99.0.5", "10.10.5.1", "10.10.5.255"] {
        let e = a
            .allocate(&req("node-a", pod("z"), &["p"]).with_address(ip(bad)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidConfig, "{bad}: {e}");
        assert!(e.to_string().contains(bad), "{e}");
    }
    let e = a
        .allocate(
            &req("node-a", pod("z"), &["p"])
                .with_address(ip("10.10.5.7"))
                .with_address(ip("10.10.5.8")),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::InvalidRequest { .. }), "{e}");
    // The owner asks for another address: it moves, the old one is freed.
    let moved = a
        .allocate(&req("node-a", x.clone(), &["p"]).with_address(ip("10.10.5.60")))
        .await
        .unwrap();
    assert_eq!(moved[0].ip(), ip("10.10.5.60"));
    assert_eq!(held_by(&server, &x.key()), vec![ip("10.10.5.60")]);
    assert_eq!(stored(&server).len(), 1);
}

#[tokio::test]
async fn pools_are_tried_in_order_and_all_exhausted_names_every_pool() {
    let server = server().await;
    pool(
        &server,
        "small-a",
        &["10.30.0.10-10.30.0.11"],
        "10.30.0.1",
        24,
    )
    .await;
    pool(
        &server,
        "small-b",
        &["10.30.0.20-10.30.0.20"],
        "10.30.0.1",
        24,
    )
    .await;
    let a = agent(&server, 10, &["small-a", "small-b"]).await;
    let pools = ["small-a", "small-b"];
    let mut got = Vec::new();
    for i in 0..3 {
        let r = a
            .allocate(&req("node-a", pod(&format!("p{i}")), &pools))
            .await
            .unwrap();
        got.push((r[0].pool.clone(), r[0].ip()));
    }
    assert_eq!(
        got,
        vec![
            ("small-a".to_string(), ip("10.30.0.10")),
            ("small-a".to_string(), ip("10.30.0.11")),
            ("small-b".to_string(), ip("10.30.0.20")),
        ]
    );
    let e = a
        .allocate(&req("node-a", pod("p3"), &pools))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        IpamError::Exhausted {
            pools: vec!["small-a".into(), "small-b".into()]
        }
    );
    assert_eq!(
        e.to_string(),
        "IPAM: no free address in IPPool small-a, IPPool small-b"
    );
    assert_eq!(e.code().code(), 100);
    // A release makes room in the first pool again.
    assert_eq!(a.release(&pod("p0").key()).await.unwrap(), 1);
    let r = a.allocate(&req("node-a", pod("p3"), &pools)).await.unwrap();
    assert_eq!(
        (r[0].pool.as_str(), r[0].ip()),
        ("small-a", ip("10.30.0.10"))
    );
    // Unknown pools are named.
    let e = a
        .allocate(&req("node-a", pod("q"), &["nope"]))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        IpamError::UnknownPool {
            pool: "nope".into()
        }
    );
    assert_eq!(e.code(), ErrorCode::InvalidConfig);
}

#[tokio::test]
async fn dual_stack_gets_one_address_per_family_and_is_all_or_nothing() {
    let server = server().await;
    pool_with_vlan(
        &server,
        "v4a",
        &["10.40.0.0/24"],
        "10.40.0.1",
        24,
        Some(100),
    )
    .await;
    pool(&server, "v4b", &["10.41.0.0/24"], "10.41.0.1", 24).await;
    pool(&server, "v6", &["fd00:40::/120"], "fd00:40::1", 64).await;
    let a = agent(&server, 11, &["v4a", "v4b", "v6"]).await;
    let v6_first = first_address(
        &layout("v6", &["fd00:40::/120"], "fd00:40::1", 64),
        "node-a",
    );
    let got = a
        .allocate(&req("node-a", pod("ds"), &["v4a", "v4b", "v6"]))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (
            got[0].pool.as_str(),
            got[0].address.to_string(),
            got[0].gateway,
            got[0].vlan
        ),
        (
            "v4a",
            format!(
                "{}/24",
                first_address(&layout("v4a", &["10.40.0.0/24"], "10.40.0.1", 24), "node-a")
            ),
            ip("10.40.0.1"),
            100
        )
    );
    assert_eq!(
        (
            got[1].pool.as_str(),
            got[1].address.to_string(),
            got[1].vlan
        ),
        ("v6", format!("{}/64", v6_first), 0)
    );
    // The IPv6 address asked for is held: the IPv4 address this call
    // allocated is released again before the error is returned.
    let holder = pod("ds");
    let e = a
        .allocate(&req("node-a", pod("other"), &["v4a", "v6"]).with_address(v6_first))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AddressInUse);
    assert!(e.to_string().contains(&holder.to_string()), "{e}");
    assert!(held_by(&server, &pod("other").key()).is_empty());
    assert_eq!(a.pending_work(), PendingWork::default());
    // Releasing the dual-stack owner frees both, and again frees nothing.
    assert_eq!(a.release(&holder.key()).await.unwrap(), 2);
    assert_eq!(a.release(&holder.key()).await.unwrap(), 0);
    assert!(stored(&server).is_empty());
    assert_eq!(a.release(&pod("never").key()).await.unwrap(), 0);
}

#[tokio::test]
async fn an_ipv6_slash_64_pool_works() {
    let server = server().await;
    pool(&server, "v6", &["fd00:10::/64"], "fd00:10::1", 64).await;
    let a = agent(&server, 12, &["v6"]).await;
    let mut got = Vec::new();
    for i in 0..3 {
        got.push(
            a.allocate(&req("node-a", pod(&format!("p{i}")), &["v6"]))
                .await
                .unwrap()[0]
                .address
                .to_string(),
        );
    }
    // The window node-a's name hashes to, somewhere in the 2^58 windows.
    let l = layout("v6", &["fd00:10::/64"], "fd00:10::1", 64);
    let first = first_address(&l, "node-a");
    let want: Vec<String> = (0..3).map(|i| format!("{}/64", plus(first, i))).collect();
    assert_eq!(got, want);
    let blocks = stored_blocks(&server);
    assert_eq!(blocks.len(), 1);
    assert_eq!(
        blocks[0].spec.cidr,
        format!(
            "{}/122",
            spur_core::pool::from_u128(
                spur_core::pool::Family::V6,
                spur_core::ipam::window_of(first)
            )
        )
    );
    // Another node claims a window of its own.
    let b = agent(&server, 13, &["v6"]).await;
    wait_until(|| b.cache().pool("v6").is_some_and(|p| p.used() == 3)).await;
    let r = b.allocate(&req("node-b", pod("q"), &["v6"])).await.unwrap();
    assert_eq!(r[0].ip(), first_address(&l, "node-b"));
}

#[tokio::test]
async fn injected_conflict_storms_are_retried() {
    let server = server().await;
    pool(&server, "p", &["10.50.0.0/24"], "10.50.0.1", 24).await;
    let a = agent(&server, 14, &["p"]).await;
    let first = a
        .allocate(&req("node-a", pod("first"), &["p"]))
        .await
        .unwrap()[0]
        .ip();
    server.reset_stats();
    server
        .faults()
        .next(Matcher::writes_to("ipamblocks"), Fault::Conflict, 5);
    let r = a
        .allocate(&req("node-a", pod("second"), &["p"]))
        .await
        .unwrap();
    assert_eq!(r[0].ip(), plus(first, 1));
    let stats = server.stats()["ipamblocks"].clone();
    assert_eq!((stats.writes, stats.conflicts), (1, 5));
    assert_eq!(stats.reads, 5, "one GET of the block per conflict");
    // A storm longer than the retry budget: code 11, nothing stored.
    server
        .faults()
        .next(Matcher::writes_to("ipamblocks"), Fault::Conflict, 1000);
    let e = a
        .allocate(&req("node-a", pod("third"), &["p"]))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::Conflicts { .. }), "{e}");
    assert_eq!(e.code(), ErrorCode::TryAgainLater);
    server.faults().clear();
    assert!(held_by(&server, &pod("third").key()).is_empty());
    assert_eq!(a.pending_work(), PendingWork::default());
    assert_eq!(
        a.allocate(&req("node-a", pod("third"), &["p"]))
            .await
            .unwrap()[0]
            .ip(),
        plus(first, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_api_fails_with_code_11_within_the_bound_and_leaves_nothing() {
    let server = server().await;
    pool(&server, "p", &["10.60.0.0/24"], "10.60.0.1", 24).await;
    let a = agent(&server, 15, &["p"]).await;
    let owner = pod("stuck");
    let r = req("node-a", owner.clone(), &["p"]);
    server.pause();
    let t0 = Instant::now();
    let e = a.allocate(&r).await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(e.code(), ErrorCode::TryAgainLater, "{e}");
    assert!(took <= a.config().timeout, "took {took:?}");
    // The create was never served: nothing is stored. The agent remembers
    // the write in doubt and the address as an orphan.
    assert!(held_by(&server, &owner.key()).is_empty());
    assert_eq!(
        a.pending_work(),
        PendingWork {
            doubtful_writes: 1,
            orphans: 1
        }
    );
    // A release while paused fails the same way, within the bound.
    let t0 = Instant::now();
    assert_eq!(
        a.release(&owner.key()).await.unwrap_err().code(),
        ErrorCode::TryAgainLater
    );
    assert!(t0.elapsed() <= a.config().timeout);
    server.resume();
    assert!(held_by(&server, &owner.key()).is_empty());
    // Settling re-sends the write in doubt (it lands now) and releases the
    // orphan: the owner holds nothing, and nothing is left to do.
    a.settle().await.unwrap();
    assert!(held_by(&server, &owner.key()).is_empty());
    assert_eq!(a.pending_work(), PendingWork::default());
    // The retry then gets exactly one address.
    let got = a.allocate(&r).await.unwrap();
    assert_eq!(held_by(&server, &owner.key()), vec![got[0].ip()]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_a_pause_returns_exactly_one_address() {
    let server = server().await;
    pool(&server, "p", &["10.61.0.0/24"], "10.61.0.1", 24).await;
    let a = agent(&server, 16, &["p"]).await;
    // Another owner first, so the write in doubt is an update of a block.
    a.allocate(&req("node-a", pod("before"), &["p"]))
        .await
        .unwrap();
    let owner = pod("stuck");
    let r = req("node-a", owner.clone(), &["p"]);
    server.pause();
    assert_eq!(
        a.allocate(&r).await.unwrap_err().code(),
        ErrorCode::TryAgainLater
    );
    server.resume();
    // The retry works off the doubt and the orphan, then allocates anew.
    let got = a.allocate(&r).await.unwrap();
    assert_eq!(held_by(&server, &owner.key()), vec![got[0].ip()]);
    assert_eq!(a.allocate(&r).await.unwrap(), got, "and stays idempotent");
    assert_eq!(a.pending_work(), PendingWork::default());
    assert_eq!(stored(&server).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn server_errors_fail_with_code_11_and_transient_ones_are_retried() {
    let server = server().await;
    pool(&server, "p", &["10.62.0.0/24"], "10.62.0.1", 24).await;
    let a = agent(&server, 17, &["p"]).await;
    let owner = pod("e");
    let r = req("node-a", owner.clone(), &["p"]);
    server.faults().next(
        Matcher::writes_to("ipamblocks"),
        Fault::Status(503),
        100_000,
    );
    let t0 = Instant::now();
    let e = a.allocate(&r).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::TryAgainLater, "{e}");
    assert!(t0.elapsed() <= a.config().timeout);
    server.faults().clear();
    assert!(held_by(&server, &owner.key()).is_empty());
    a.settle().await.unwrap();
    assert!(held_by(&server, &owner.key()).is_empty());
    assert_eq!(a.pending_work(), PendingWork::default());
    // Two 503s: retried within the call.
    server
        .faults()
        .next(Matcher::writes_to("ipamblocks"), Fault::Status(503), 2);
    let got = a.allocate(&r).await.unwrap();
    assert_eq!(held_by(&server, &owner.key()), vec![got[0].ip()]);
    assert_eq!(a.pending_work(), PendingWork::default());
}

#[tokio::test(start_paused = true)]
async fn a_failure_in_the_second_family_releases_the_first() {
    let server = server().await;
    pool(&server, "v4", &["10.63.0.0/24"], "10.63.0.1", 24).await;
    pool(&server, "v6", &["fd00:63::/120"], "fd00:63::1", 64).await;
    let a = agent(&server, 18, &["v4", "v6"]).await;
    // The IPv6 block exists, so its write is an update whose path names it.
    a.allocate(&req("node-a", pod("v6-first"), &["v6"]))
        .await
        .unwrap();
    let owner = pod("ds");
    server.faults().next(
        spur_kubeapi::faults::Matcher {
            path_contains: Some("v6-".into()),
            ..Matcher::writes_to("ipamblocks")
        },
        Fault::Status(503),
        100_000,
    );
    let e = a
        .allocate(&req("node-a", owner.clone(), &["v4", "v6"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TryAgainLater, "{e}");
    assert!(
        held_by(&server, &owner.key()).is_empty(),
        "the IPv4 address was released before the error returned"
    );
    server.faults().clear();
    a.settle().await.unwrap();
    assert!(held_by(&server, &owner.key()).is_empty());
    assert_eq!(a.pending_work(), PendingWork::default());
    let got = a
        .allocate(&req("node-a", owner.clone(), &["v4", "v6"]))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(held_by(&server, &owner.key()).len(), 2);
}

#[tokio::test]
async fn unready_cache_and_unknown_api_state_are_bounded() {
    // No CRDs at all: the watches never list; calls fail with code 11
    // within the bound instead of allocating from an empty view.
    let server = spur_kubeapi::ApiServer::in_memory();
    let mut cfg = config(19);
    cfg.timeout = Duration::from_millis(300);
    let a = spur_node::ipam::Ipam::start(client(&server), cfg);
    let t0 = std::time::Instant::now();
    let e = a
        .allocate(&req("node-a", pod("x"), &["p"]))
        .await
        .unwrap_err();
    assert!(matches!(e, IpamError::NotReady { .. }), "{e}");
    assert_eq!(e.code(), ErrorCode::TryAgainLater);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_late_stale_block_version_does_not_make_the_node_conflict_with_itself() {
    use kube::api::Api;
    use spur_core::ipamblock::IPAMBlock;
    let server = server().await;
    pool(&server, "p", &["10.64.0.0/24"], "10.64.0.1", 24).await;
    let a = agent(&server, 20, &["p"]).await;
    let x = a.allocate(&req("node-a", pod("x"), &["p"])).await.unwrap()[0].ip();
    let name = stored_blocks(&server)[0].metadata.name.clone().unwrap();
    let blocks: Api<IPAMBlock> = Api::all(client(&server));
    let v1 = blocks.get(&name).await.unwrap();
    a.allocate(&req("node-a", pod("y"), &["p"])).await.unwrap();
    // v1 arrives late (a lagging watch, a slow GET): the cache keeps the
    // version its own write returned.
    assert!(!a.cache().write_through(v1));
    server.reset_stats();
    let z = a.allocate(&req("node-a", pod("z"), &["p"])).await.unwrap();
    assert_eq!(z[0].ip(), plus(x, 2));
    let stats = server.stats()["ipamblocks"].clone();
    assert_eq!((stats.writes, stats.conflicts), (1, 0));
}

/// A sandbox of Pod `name` (UID `uid`) with container `container`.
fn sandbox(name: &str, uid: &str, container: &str) -> Owner {
    Owner::pod("default", name, container, "eth1").with_pod_uid(uid)
}

#[tokio::test]
async fn a_new_sandbox_of_the_same_pod_takes_over_its_addresses() {
    let server = server().await;
    pool(&server, "v4", &["10.70.0.0/24"], "10.70.0.1", 24).await;
    pool(&server, "v6", &["fd00:70::/120"], "fd00:70::1", 64).await;
    let a = agent(&server, 30, &["v4", "v6"]).await;
    let c1 = sandbox("web", "u1", "c1");
    let first = a
        .allocate(&req("node-a", c1.clone(), &["v4", "v6"]))
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    // Another Pod allocates in between: a new address would differ.
    a.allocate(&req("node-a", pod("other"), &["v4", "v6"]))
        .await
        .unwrap();
    // The sandbox died without DEL; the next one of the same Pod.
    let c2 = sandbox("web", "u1", "c2");
    let again = a
        .allocate(&req("node-a", c2.clone(), &["v4", "v6"]))
        .await
        .unwrap();
    assert_eq!(addrs(&again), addrs(&first), "the same addresses");
    assert!(again.iter().all(|x| x
        .taken_over_from
        .as_ref()
        .is_some_and(|o| o.container_id == "c1")));
    let s = stored(&server);
    assert_eq!(s.len(), 4, "nothing is held twice");
    for got in &first {
        let o = &s[&got.ip()].2;
        assert_eq!((o.container_id.as_str(), o.pod_uid.as_str()), ("c2", "u1"));
    }
    assert!(held_by(&server, &c1.key()).is_empty());
    // A late DEL of c1 finds nothing; the addresses stay c2's.
    assert_eq!(a.release(&c1.key()).await.unwrap(), 0);
    assert_eq!(held_by(&server, &c2.key()).len(), 2);
    // A retry of c2 writes nothing.
    server.reset_stats();
    assert_eq!(
        a.allocate(&req("node-a", c2.clone(), &["v4", "v6"]))
            .await
            .unwrap(),
        first
    );
    assert_eq!(server.stats().get("ipamblocks").map_or(0, |s| s.writes), 0);
    // A DEL of c2 frees them.
    assert_eq!(a.release(&c2.key()).await.unwrap(), 2);
    assert_eq!(stored(&server).len(), 2, "only the other Pod's remain");
    assert_eq!(a.pending_work(), PendingWork::default());
}

#[tokio::test]
async fn a_fixed_address_follows_the_pod_to_its_new_sandbox_only() {
    let server = server().await;
    pool(&server, "p", &["10.71.0.0/24"], "10.71.0.1", 24).await;
    let a = agent(&server, 31, &["p"]).await;
    let fixed = ip("10.71.0.77");
    let c1 = sandbox("db", "u1", "c1");
    let got = a
        .allocate(&req("node-a", c1.clone(), &["p"]).with_address(fixed))
        .await
        .unwrap();
    assert_eq!(got[0].ip(), fixed);
    let c2 = sandbox("db", "u1", "c2");
    let got = a
        .allocate(&req("node-a", c2.clone(), &["p"]).with_address(fixed))
        .await
        .unwrap();
    assert_eq!(got[0].ip(), fixed);
    assert_eq!(held_by(&server, &c2.key()), vec![fixed]);
    // A recreated Pod of the same name (another UID) is refused while the
    // old one's allocation stands, naming the holder.
    let other = sandbox("db", "u2", "c3");
    let e = a
        .allocate(&req("node-a", other.clone(), &["p"]).with_address(fixed))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AddressInUse);
    assert!(e.to_string().contains("container c2"), "{e}");
    // A record without UID (written by an older agent) is not taken over.
    let legacy = Owner::pod("default", "old", "c1", "eth1");
    let fixed2 = ip("10.71.0.78");
    a.allocate(&req("node-a", legacy, &["p"]).with_address(fixed2))
        .await
        .unwrap();
    let e = a
        .allocate(&req("node-a", sandbox("old", "u5", "c2"), &["p"]).with_address(fixed2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AddressInUse);
}

#[tokio::test]
async fn a_new_sandbox_takes_over_from_the_pool_it_was_in() {
    let server = server().await;
    pool(&server, "small", &["10.72.0.0/30"], "10.72.0.1", 30).await;
    pool(&server, "big", &["10.73.0.0/24"], "10.73.0.1", 24).await;
    let a = agent(&server, 32, &["small", "big"]).await;
    // `small` has one address; it is taken, so c1 lands in `big`.
    let filler = a
        .allocate(&req("node-a", pod("filler"), &["small"]))
        .await
        .unwrap();
    let c1 = sandbox("web", "u1", "c1");
    let first = a
        .allocate(&req("node-a", c1.clone(), &["small", "big"]))
        .await
        .unwrap();
    assert_eq!(first[0].pool, "big");
    // `small` has room again when c2 comes: it still takes over in `big`.
    a.release(&pod("filler").key()).await.unwrap();
    let c2 = sandbox("web", "u1", "c2");
    let again = a
        .allocate(&req("node-a", c2.clone(), &["small", "big"]))
        .await
        .unwrap();
    assert_eq!(addrs(&again), addrs(&first));
    assert_eq!(stored(&server).len(), 1);
    assert_ne!(filler[0].ip(), again[0].ip());
}

#[tokio::test]
async fn concurrent_adds_of_two_sandboxes_of_one_pod_interface_serialize() {
    let server = server().await;
    pool(&server, "p", &["10.74.0.0/24"], "10.74.0.1", 24).await;
    let a = agent(&server, 33, &["p"]).await;
    let c1 = sandbox("web", "u1", "c1");
    let first = a.allocate(&req("node-a", c1, &["p"])).await.unwrap();
    let r2 = req("node-a", sandbox("web", "u1", "c2"), &["p"]);
    let r3 = req("node-a", sandbox("web", "u1", "c3"), &["p"]);
    let (g2, g3) = tokio::join!(a.allocate(&r2), a.allocate(&r3));
    assert_eq!(addrs(&g2.unwrap()), addrs(&first));
    assert_eq!(addrs(&g3.unwrap()), addrs(&first));
    let s = stored(&server);
    assert_eq!(s.len(), 1, "one address for the Pod interface");
    assert!(["c2", "c3"].contains(&s[&first[0].ip()].2.container_id.as_str()));
}

#[tokio::test(start_paused = true)]
async fn a_failed_takeover_gives_the_records_back() {
    let server = server().await;
    pool(&server, "v4", &["10.75.0.0/24"], "10.75.0.1", 24).await;
    pool(&server, "v6", &["fd00:75::/120"], "fd00:75::1", 64).await;
    let a = agent(&server, 34, &["v4", "v6"]).await;
    let c1 = sandbox("ds", "u1", "c1");
    let first = a
        .allocate(&req("node-a", c1.clone(), &["v4", "v6"]))
        .await
        .unwrap();
    server.faults().next(
        Matcher {
            path_contains: Some("v6-".into()),
            ..Matcher::writes_to("ipamblocks")
        },
        Fault::Status(503),
        100_000,
    );
    let c2 = sandbox("ds", "u1", "c2");
    let e = a
        .allocate(&req("node-a", c2.clone(), &["v4", "v6"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::TryAgainLater, "{e}");
    // The IPv4 record went back to c1 before the error returned.
    let v4 = first[0].ip();
    assert_eq!(stored(&server)[&v4].2, c1);
    server.faults().clear();
    a.settle().await.unwrap();
    assert_eq!(a.pending_work(), PendingWork::default());
    let mut held = held_by(&server, &c1.key());
    held.sort();
    let mut want: Vec<_> = first.iter().map(|g| g.ip()).collect();
    want.sort();
    assert_eq!(held, want, "c1 holds what it held before the call");
    // The next sandbox takes both over.
    let c3 = sandbox("ds", "u1", "c3");
    let got = a
        .allocate(&req("node-a", c3.clone(), &["v4", "v6"]))
        .await
        .unwrap();
    assert_eq!(addrs(&got), addrs(&first));
    assert_eq!(stored(&server).len(), 2);
}

/// The pools and addresses of an allocation (what a caller sees of it).
fn addrs(a: &[spur_node::ipam::Allocated]) -> Vec<(String, std::net::IpAddr)> {
    a.iter().map(|x| (x.pool.clone(), x.ip())).collect()
}
