//! Random interleavings against the embedded API server: three nodes, each
//! with its own allocator and cache on one server, allocating and releasing
//! concurrently, agents restarting (a new cache listed from the API), and
//! injected conflict storms. After every step: no address has two owners,
//! no acknowledged allocation is lost, and the stored blocks hold exactly
//! the live allocations the test tracks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use common::*;
use futures::future::join_all;
use proptest::prelude::*;
use spur_core::ipamblock::Owner;
use spur_kubeapi::faults::{Fault, Matcher};
use spur_kubeapi::ApiServer;
use spur_node::ipam::{AllocateRequest, Ipam, IpamError, PendingWork};

const NODES: u8 = 3;
const OWNERS: u8 = 36;
/// 10.70.0.50-10.70.0.70: 14 addresses in one window, 7 in the next, so
/// the third node borrows and the pool runs out.
const POOL_SIZE: usize = 21;

#[derive(Debug, Clone)]
enum Action {
    /// Owner `owner` (on node `owner % 3`) asks for an address, maybe a
    /// given one (10.70.0.`50 + want`).
    Alloc {
        owner: u8,
        want: Option<u8>,
    },
    Release {
        owner: u8,
    },
}

#[derive(Debug, Clone)]
enum Step {
    /// Up to three actions at once.
    Together(Vec<Action>),
    /// A node's agent restarts: its allocator and cache are rebuilt.
    Restart { node: u8 },
    /// The next `k` writes to IPAMBlocks are refused with 409.
    Conflicts { k: u8 },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0..OWNERS, proptest::option::weighted(0.15, 0u8..24))
            .prop_map(|(owner, want)| Action::Alloc { owner, want }),
        1 => (0..OWNERS).prop_map(|owner| Action::Release { owner }),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::collection::vec(action(), 1..4).prop_map(Step::Together),
            1 => (0..NODES).prop_map(|node| Step::Restart { node }),
            1 => (1u8..6).prop_map(|k| Step::Conflicts { k }),
        ],
        1..40,
    )
}

fn owner(i: u8) -> Owner {
    pod(&format!("o{i}"))
}

fn node_of(i: u8) -> u8 {
    i % NODES
}

fn want_ip(w: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 70, 0, 50 + w))
}

async fn run(steps: Vec<Step>, seed: u64) -> Result<(), TestCaseError> {
    let server: ApiServer = server().await;
    pool(&server, "p", &["10.70.0.50-10.70.0.70"], "10.70.0.1", 24).await;
    let mut agents: Vec<Ipam> = Vec::new();
    for n in 0..NODES {
        agents.push(agent(&server, seed * 10 + u64::from(n), &["p"]).await);
    }
    let mut live: BTreeMap<u8, IpAddr> = BTreeMap::new();
    let mut restarts = 0u64;
    for step in steps {
        match step {
            Step::Restart { node } => {
                restarts += 1;
                let fresh = agent(&server, seed * 1000 + restarts, &["p"]).await;
                agents[usize::from(node)] = fresh;
            }
            Step::Conflicts { k } => {
                server.faults().next(
                    Matcher::writes_to("ipamblocks"),
                    Fault::Conflict,
                    u64::from(k),
                );
            }
            Step::Together(actions) => {
                // One action per owner in a step.
                let mut seen = BTreeSet::new();
                let actions: Vec<Action> = actions
                    .into_iter()
                    .filter(|a| match a {
                        Action::Alloc { owner, .. } | Action::Release { owner } => {
                            seen.insert(*owner)
                        }
                    })
                    .collect();
                let futures = actions.iter().map(|a| {
                    let agents = &agents;
                    async move {
                        match *a {
                            Action::Alloc { owner: o, want } => {
                                let mut r = AllocateRequest::new(
                                    format!("node-{}", node_of(o)),
                                    owner(o),
                                    ["p"],
                                );
                                if let Some(w) = want {
                                    r = r.with_address(want_ip(w));
                                }
                                Err(agents[usize::from(node_of(o))].allocate(&r).await)
                            }
                            Action::Release { owner: o } => Ok(agents[usize::from(node_of(o))]
                                .release(&owner(o).key())
                                .await),
                        }
                    }
                });
                let before = live.clone();
                let results = join_all(futures).await;
                for (a, res) in actions.iter().zip(results) {
                    match (a, res) {
                        (Action::Alloc { owner: o, want }, Err(Ok(got))) => {
                            prop_assert_eq!(got.len(), 1);
                            let ip = got[0].ip();
                            if let Some(w) = want {
                                prop_assert_eq!(ip, want_ip(*w), "the requested address");
                            } else if let Some(prev) = before.get(o) {
                                prop_assert_eq!(
                                    ip,
                                    *prev,
                                    "a retried allocate returns the same address"
                                );
                            }
                            live.insert(*o, ip);
                        }
                        (Action::Alloc { owner: o, want }, Err(Err(e))) => match e {
                            IpamError::Exhausted { ref pools } => {
                                prop_assert_eq!(pools, &vec!["p".to_string()]);
                                prop_assert!(
                                    !before.contains_key(o),
                                    "an owner holding an address is never refused"
                                );
                            }
                            IpamError::AddressInUse { ip, ref holder, .. } => {
                                prop_assert_eq!(Some(ip), want.map(want_ip));
                                // Held by another owner before or during the step.
                                prop_assert!(holder.key() != owner(*o).key());
                            }
                            IpamError::RequestedNotInPools { ip, .. } => {
                                prop_assert_eq!(Some(ip), want.map(want_ip));
                                prop_assert!(want.is_some_and(|w| 50 + w > 70));
                            }
                            other => prop_assert!(false, "allocate of o{o} failed: {other}"),
                        },
                        (Action::Release { owner: o }, Ok(Ok(n))) => {
                            prop_assert_eq!(
                                n,
                                usize::from(before.contains_key(o)),
                                "release of o{}",
                                o
                            );
                            live.remove(o);
                        }
                        (Action::Release { owner: o }, Ok(Err(e))) => {
                            prop_assert!(false, "release of o{o} failed: {e}");
                        }
                        _ => unreachable!(),
                    }
                }
            }
        }
        // Invariants on the stored state (stored() panics on an address
        // stored twice).
        let s = stored(&server);
        let mut by_owner: BTreeMap<String, IpAddr> = BTreeMap::new();
        for (ip, (pool, _node, o)) in &s {
            prop_assert_eq!(pool.as_str(), "p");
            prop_assert!(
                by_owner.insert(o.name.clone(), *ip).is_none(),
                "{} holds two addresses",
                o.name
            );
            let v = match ip {
                IpAddr::V4(v) => v.octets()[3],
                IpAddr::V6(_) => 0,
            };
            prop_assert!((50..=70).contains(&v), "{ip} is outside the pool");
        }
        let want: BTreeMap<String, IpAddr> =
            live.iter().map(|(o, ip)| (format!("o{o}"), *ip)).collect();
        prop_assert_eq!(&by_owner, &want, "stored state equals the live allocations");
        prop_assert!(s.len() <= POOL_SIZE);
        for a in &agents {
            prop_assert_eq!(a.pending_work(), PendingWork::default());
        }
    }
    server.faults().clear();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_one_owner_per_address_and_lose_nothing(
        steps in steps(),
        seed in 0u64..1_000_000,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(steps, seed))?;
    }
}
