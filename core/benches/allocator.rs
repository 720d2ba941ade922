//! The allocation decision at scale: allocate + release of one address in
//! pools that are 90% full, for an IPv4 /24, /16 and /8 and an IPv6 /64.
//!
//! Each pool's state is built directly (block states handed to
//! `PoolBlocks::put`, not through `plan()`): the pool's windows in address
//! order are filled to their capacity until 90% of the pool's allocatable
//! addresses are held; the last block filled is the benchmark node's and
//! holds 58 allocations in every pool (so that the block the measured
//! operation rewrites costs the same everywhere), the others are spread
//! over 100 other nodes.
//!
//! Nobody can hold 90% of a /64 (2^64 addresses), so for the /64 the 90% is
//! of the allocatable addresses of its first 2^24 addresses' windows (2^18
//! windows), which gives it as many blocks and allocations as the /8 (about
//! 235k blocks, 15M allocations; the filler owners are small so that this
//! fits in memory: the run peaks at about 16 GiB).
//!
//! The measured operation is the same code path in all four pools:
//! `plan()` for a new owner on the node whose block has a free address
//! (a `Take` from that block) + `apply()` + `put()`, then `release()` +
//! `put()`, which leaves the state as it was, at 90%. The target is the /8
//! and the /64 within 2x of the /24.
//!
//! Run with `make bench-alloc`.

#![allow(missing_docs)] // criterion's macros generate undocumented items
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup is a failed benchmark

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use spur_core::allocator::{BlockState, Plan, PoolBlocks};
use spur_core::ipam::{block_name, capacity_mask, windows};
use spur_core::ipamblock::{Owner, OwnerKind};
use spur_core::ippool::{IPPoolSpec, IpRange, PoolLayout, SubnetInfo};

/// The node whose block has free addresses.
const NODE: &str = "bench-node";
/// Nodes holding the full blocks.
const OTHER_NODES: usize = 100;

fn layout(name: &str, cidr: &str, gateway: &str, prefix: u8) -> PoolLayout {
    PoolLayout::from_spec(
        name,
        &IPPoolSpec {
            ip_ranges: vec![IpRange::cidr(cidr)],
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

/// A small owner: unique by name, nothing else allocated.
fn filler(n: u64) -> Owner {
    Owner {
        kind: OwnerKind::Pod,
        namespace: String::new(),
        name: format!("f{n}"),
        ordinal: None,
        interface: String::new(),
        container_id: String::new(),
        pod: String::new(),
        pod_uid: String::new(),
    }
}

/// Allocations in the benchmark node's block: the block the measured
/// operation takes from and gives back to holds as many owners in every
/// pool, so that its cost (cloning and re-indexing the block) is the same.
const NODE_BLOCK_HELD: u32 = 58;

/// A block holding the lowest `n` offsets of `cap`, by filler owners.
fn fill(cap: u64, n: u32, serial: &mut u64) -> (u64, BTreeMap<u32, Owner>) {
    let mut owners = BTreeMap::new();
    let mut used = 0u64;
    let mut free = cap;
    while free != 0 && (used.count_ones()) < n {
        let off = free.trailing_zeros();
        free &= free - 1;
        used |= 1 << off;
        owners.insert(off, filler(*serial));
        *serial += 1;
    }
    (used, owners)
}

/// The pool 90% full over its first `max_windows` windows, and how many
/// addresses it holds. Windows are filled in address order: full blocks
/// of other nodes, one partly full block of another node for the
/// remainder, then the benchmark node's block with [`NODE_BLOCK_HELD`]
/// allocations.
fn filled(layout: PoolLayout, max_windows: usize) -> (PoolBlocks, u128) {
    let caps: Vec<(u128, u64)> = windows(&layout)
        .take(max_windows)
        .map(|w| (w, capacity_mask(&layout, w)))
        .collect();
    let space: u128 = caps.iter().map(|(_, m)| u128::from(m.count_ones())).sum();
    let target = space * 9 / 10;
    let mut others = target - u128::from(NODE_BLOCK_HELD);
    let mut pb = PoolBlocks::new(layout.clone());
    let mut serial = 0u64;
    let state = |base: u128, node: String, cap: u64, (used, owners)| BlockState {
        name: block_name(&layout.name, layout.family, base),
        node,
        capacity: cap,
        used,
        owners,
        resource_version: Some("1".into()),
    };
    for (i, &(base, cap)) in caps.iter().enumerate() {
        if others == 0 {
            assert!(
                cap.count_ones() > NODE_BLOCK_HELD,
                "the node's block has room"
            );
            let block = fill(cap, NODE_BLOCK_HELD, &mut serial);
            pb.put(base, state(base, NODE.to_string(), cap, block));
            break;
        }
        let n = u128::from(cap.count_ones()).min(others) as u32;
        others -= u128::from(n);
        let block = fill(cap, n, &mut serial);
        let node = format!("node-{}", i % OTHER_NODES);
        pb.put(base, state(base, node, cap, block));
    }
    (pb, target)
}

/// plan + apply + put, then release + put. Never inlined, so that a
/// profile can tell it from the setup.
#[inline(never)]
fn allocate_and_release(pb: &mut PoolBlocks, owner: &Owner) -> Plan {
    let plan = pb.plan(NODE, owner, None);
    let (base, state) = pb.apply(&plan, NODE, owner).expect("a Take plan");
    pb.put(base, state);
    let (base, state) = pb
        .release(&owner.key())
        .expect("the owner holds an address");
    pb.put(base, state);
    plan
}

fn bench(c: &mut Criterion) {
    let owner = Owner::pod(
        "default",
        "web-7d9f8c6b5-x2x4z",
        "3f9a1c0e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f",
        "eth1",
    );
    let cases: [(&str, &str, &str, u8, usize); 4] = [
        ("ipv4 /24", "10.0.0.0/24", "10.0.0.1", 24, usize::MAX),
        ("ipv4 /16", "10.0.0.0/16", "10.0.0.1", 16, usize::MAX),
        ("ipv4 /8", "10.0.0.0/8", "10.0.0.1", 8, usize::MAX),
        ("ipv6 /64", "fd00:10::/64", "fd00:10::1", 64, 1 << 18),
    ];
    let mut group = c.benchmark_group("allocate+release at 90%");
    for (name, cidr, gw, prefix, max_windows) in cases {
        let started = Instant::now();
        let (mut pb, held) = filled(layout("bench", cidr, gw, prefix), max_windows);
        eprintln!(
            "{name}: {} blocks, {held} addresses held, built in {:.1?}",
            pb.blocks().len(),
            started.elapsed()
        );
        // The same code path everywhere: a Take from the node's own block.
        let plan = allocate_and_release(&mut pb, &owner);
        assert!(
            matches!(plan, Plan::Take { base, .. } if pb.block(base).is_some_and(|b| b.node == NODE)),
            "{name}: {plan:?}"
        );
        assert_eq!(pb.used(), held, "{name}: the state stays at 90%");
        group.bench_function(name, |b| {
            b.iter(|| black_box(allocate_and_release(&mut pb, &owner)))
        });
        assert_eq!(pb.used(), held);
        drop(pb);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
