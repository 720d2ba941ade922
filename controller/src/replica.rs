//! One controller replica, minus its process edges.
//!
//! What lives here: [`run_replica`], everything a `spur-controller`
//! process does once it has a client, its settings and its metrics:
//! leader election on the Lease ([`crate::leader`]), the pool gauges every
//! replica keeps, and, while this replica leads, the leader-only loops:
//! IPPool usage ([`crate::usage`]), address garbage collection
//! ([`crate::gc`]) and, when enabled, NodeIPAM ([`crate::nodeipam`]). They
//! start when leadership is won and stop when it is lost. When `stop`
//! turns true the loops stop first and the Lease is released after, so no
//! two replicas ever run them at once and the other replica takes over at
//! its next try.
//!
//! The binary (`src/bin/spur-controller.rs`) runs one replica; the
//! simulator runs several in one process (a crash is dropping the future:
//! every task a replica spawns lives in a `JoinSet` it owns, so they all
//! end with it, and nothing is released).
//!
//! What does not live here: flags, the config file, the kubeconfig, the
//! metrics HTTP server, the admission webhook and signals (the binary).
//!
//! Determinism: the Lease's and the pools' timestamps come from
//! [`ElectionConfig::clock`] (which the usage loop shares); the watches'
//! backoff jitter is seeded from [`ReplicaConfig::seed`]; every wait is a
//! `tokio::time` wait and every `select!` is biased, stop first.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use spur_core::config::ControllerConfig;
use spur_core::ippool::IPPool;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::SharedClock;
use crate::gc::{GcConfig, GcReconciler};
use crate::leader::{ElectionConfig, Elector, LeaderState};
use crate::metrics::{gc_reason_label, Health, Metrics};
use crate::nodeipam::{NodeIpamLoopConfig, NodeIpamReconciler};
use crate::usage::{stored_usage, UsageConfig, UsageReconciler};
use crate::watchbackoff::seed_for;

/// How often every replica reads the IPPools' `status.usage` into the
/// pool gauges, by default.
pub const DEFAULT_GAUGE_PERIOD: Duration = Duration::from_secs(5);
/// How long a stopping replica waits for the leader loops to stop, and
/// then for the Lease release (well inside the default 30 s termination
/// grace period).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before restarting a leader-only loop that ended with an error.
pub const LOOP_RESTART: Duration = Duration::from_secs(5);

/// Settings of one replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The election (its clock also stamps the pools' conditions and
    /// Events).
    pub election: ElectionConfig,
    /// `spur-controller.conf`.
    pub controller: ControllerConfig,
    /// How often the pool gauges are read ([`DEFAULT_GAUGE_PERIOD`]).
    pub gauge_period: Duration,
    /// Seed of every jitter the replica draws (None in production:
    /// process-random).
    pub seed: Option<u64>,
}

impl ReplicaConfig {
    /// A replica with `election` and `controller`, the default gauge
    /// period and process-random jitter.
    pub fn new(election: ElectionConfig, controller: ControllerConfig) -> ReplicaConfig {
        ReplicaConfig {
            election,
            controller,
            gauge_period: DEFAULT_GAUGE_PERIOD,
            seed: None,
        }
    }
}

/// Runs one replica until `stop` turns true (or its sender is gone): the
/// election, the pool gauges and, while leading, the leader-only loops.
/// Returns once the loops stopped and the Lease was released, each bounded
/// by [`STOP_TIMEOUT`]: loops that do not stop in time leave the Lease to
/// expire (giving it away could let the other replica run beside a write
/// still in flight).
pub async fn run_replica(
    client: Client,
    cfg: ReplicaConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) {
    let ReplicaConfig {
        election,
        controller,
        gauge_period,
        seed,
    } = cfg;
    // Dropped (aborted) when this returns or is dropped.
    let mut background = JoinSet::new();
    background.spawn(pool_gauges(
        client.clone(),
        gauge_period,
        metrics.clone(),
        health.clone(),
    ));
    let clock = election.clock.clone();
    let (mut elector, leader) = Elector::new(client.clone(), election);
    let (loops_tx, loops_rx) = watch::channel(false);
    let mut supervisor = JoinSet::new();
    supervisor.spawn(supervise(
        Leading {
            client,
            config: controller,
            clock,
            seed,
            metrics: metrics.clone(),
        },
        leader,
        loops_rx,
        health.clone(),
    ));
    elector.run(stopped(stop)).await;
    // Leadership is published as lost; stop the loops before giving the
    // Lease away, so no two replicas ever run them at once.
    let _ = loops_tx.send(true);
    match tokio::time::timeout(STOP_TIMEOUT, supervisor.join_next()).await {
        Ok(Some(Ok(()))) | Ok(None) => {}
        Ok(Some(Err(e))) => tracing::error!(error = %e, "leader loops supervisor failed"),
        Err(_) => {
            tracing::warn!("leader loops did not stop in time; the lease is left to expire");
            return;
        }
    }
    match tokio::time::timeout(STOP_TIMEOUT, elector.release()).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::info!("not the leader: nothing to release"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "releasing the lease failed; it expires by itself")
        }
        Err(_) => tracing::warn!("releasing the lease timed out; it expires by itself"),
    }
}

/// Reads every IPPool's `status.usage` into the pool gauges every
/// `period`; the first answer marks the API as connected.
async fn pool_gauges(client: Client, period: Duration, metrics: Arc<Metrics>, health: Arc<Health>) {
    let pools: Api<IPPool> = Api::all(client);
    let mut known = std::collections::BTreeSet::new();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match pools.list(&ListParams::default()).await {
            Ok(list) => {
                health.set_connected();
                let mut seen = std::collections::BTreeSet::new();
                for pool in &list.items {
                    if let Some(u) = stored_usage(pool) {
                        metrics.set_pool_usage(&pool.name_any(), u.total, u.used);
                        seen.insert(pool.name_any());
                    }
                }
                for gone in known.difference(&seen) {
                    metrics.forget_pool(gone);
                }
                known = seen;
            }
            Err(e) => tracing::warn!(error = %e, "listing IPPools for the pool gauges failed"),
        }
    }
}

/// What the leader-only loops need.
struct Leading {
    client: Client,
    config: ControllerConfig,
    clock: SharedClock,
    seed: Option<u64>,
    metrics: Arc<Metrics>,
}

/// Starts the leader-only loops when `leader` turns true, stops them (and
/// waits for them) when it turns false or `stop` is set.
async fn supervise(
    ctx: Leading,
    mut leader: LeaderState,
    mut stop: watch::Receiver<bool>,
    health: Arc<Health>,
) {
    let mut running: Option<(watch::Sender<bool>, JoinSet<()>)> = None;
    loop {
        let leading = *leader.borrow_and_update() && !*stop.borrow();
        ctx.metrics.set_leader(leading);
        if leading {
            // The Lease was written: the API answers.
            health.set_connected();
        }
        match (leading, running.take()) {
            (true, None) => {
                running = Some(start_loops(&ctx));
                tracing::info!("leading: usage, gc and nodeipam loops started");
            }
            (false, Some(loops)) => {
                stop_loops(loops).await;
                tracing::info!("not leading: loops stopped");
            }
            (_, other) => running = other,
        }
        health.set_leading(leading, running.is_some());
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            biased;
            r = stop.changed() => if r.is_err() { break },
            r = leader.changed() => if r.is_err() { break },
        }
    }
    if let Some(loops) = running.take() {
        stop_loops(loops).await;
    }
    ctx.metrics.set_leader(false);
    health.set_leading(false, false);
}

async fn stop_loops((tx, mut set): (watch::Sender<bool>, JoinSet<()>)) {
    let _ = tx.send(true);
    while let Some(r) = set.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "a leader loop panicked");
        }
    }
}

/// Completes once `stop` is set (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn start_loops(ctx: &Leading) -> (watch::Sender<bool>, JoinSet<()>) {
    let (tx, rx) = watch::channel(false);
    let mut set = JoinSet::new();
    {
        let (client, rx, metrics) = (ctx.client.clone(), rx.clone(), ctx.metrics.clone());
        let usage = UsageConfig {
            clock: ctx.clock.clone(),
            seed: seed_for(ctx.seed, "usage"),
            ..UsageConfig::default()
        };
        set.spawn(async move {
            loop {
                let r = UsageReconciler::new(client.clone(), usage.clone())
                    .run(stopped(rx.clone()))
                    .await;
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        metrics.reconcile_error("usage");
                        tracing::warn!(error = %e, "usage loop ended; restarting");
                    }
                }
                if restart_wait(rx.clone()).await {
                    return;
                }
            }
        });
    }
    {
        let gc = GcConfig::from_controller_config(&ctx.config);
        let (client, rx, metrics) = (ctx.client.clone(), rx.clone(), ctx.metrics.clone());
        set.spawn(run_gc(
            GcReconciler::new(client, gc),
            gc.interval,
            rx,
            metrics,
        ));
    }
    if ctx.config.node_ipam.enable_node_ipam {
        let (client, rx, metrics) = (ctx.client.clone(), rx.clone(), ctx.metrics.clone());
        let cfg = ctx.config.node_ipam.clone();
        let settings = NodeIpamLoopConfig {
            seed: seed_for(ctx.seed, "nodeipam"),
            ..NodeIpamLoopConfig::default()
        };
        set.spawn(async move {
            loop {
                let r = match NodeIpamReconciler::new(client.clone(), cfg.clone()) {
                    Ok(n) => n.run(settings, stopped(rx.clone())).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        metrics.reconcile_error("nodeipam");
                        tracing::warn!(error = %e, "nodeipam loop ended; restarting");
                    }
                }
                if restart_wait(rx.clone()).await {
                    return;
                }
            }
        });
    }
    (tx, set)
}

/// Waits [`LOOP_RESTART`]; true if stopped meanwhile.
async fn restart_wait(rx: watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        () = stopped(rx) => true,
        () = tokio::time::sleep(LOOP_RESTART) => false,
    }
}

/// The GC loop with metrics: a round every `interval` (the first right
/// away) until stopped.
async fn run_gc(
    mut gc: GcReconciler,
    interval: Duration,
    rx: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let mut stop = std::pin::pin!(stopped(rx));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            _ = ticks.tick() => {}
        }
        match gc.round().await {
            Ok(r) => {
                metrics.gc_round();
                for rel in &r.released {
                    metrics.gc_released(gc_reason_label(&rel.reason), 1);
                }
                for (block, e) in &r.failed {
                    metrics.reconcile_error("gc");
                    tracing::warn!(block = %block, error = %e, "gc: releasing in a block failed");
                }
                tracing::debug!(
                    allocations = r.allocations,
                    released = r.released.len(),
                    conflicts = r.conflicts.len(),
                    "gc round done"
                );
            }
            Err(e) => {
                metrics.gc_aborted();
                metrics.reconcile_error("gc");
                tracing::warn!(error = %e, "gc round aborted; nothing released");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

    use super::*;
    use crate::clock::WallClock;
    use crate::poolstatus::{EVENT_CONFLICT, EVENT_NAMESPACE, VALID};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kube::api::PostParams;
    use kube::CustomResourceExt;
    use spur_core::ipamblock::IPAMBlock;
    use spur_core::ippool::{IPPoolSpec, IpRange, SubnetInfo};
    use spur_kubeapi::ApiServer;
    use tokio::time::Instant;

    const NS: &str = "kube-system";
    const LEASE: &str = "spur-controller";
    /// 2026-01-01T00:00:00Z.
    const EPOCH: i64 = 1_767_225_600;

    /// A clock standing still at `EPOCH`.
    #[derive(Debug)]
    struct Fixed;

    impl WallClock for Fixed {
        fn now(&self) -> Timestamp {
            Timestamp::from_second(EPOCH).unwrap()
        }
    }

    /// `EPOCH` plus the tokio time elapsed since the clock was made (what
    /// the simulator injects).
    #[derive(Debug)]
    struct Paused(Instant);

    impl WallClock for Paused {
        fn now(&self) -> Timestamp {
            let elapsed = SignedDuration::try_from(self.0.elapsed()).unwrap();
            Timestamp::from_second(EPOCH).unwrap() + elapsed
        }
    }

    async fn cluster() -> (ApiServer, Client) {
        let server = ApiServer::in_memory();
        let client = Client::new(server.service(), "default");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in [IPPool::crd(), IPAMBlock::crd()] {
            crds.create(&PostParams::default(), &crd).await.unwrap();
        }
        (server, client)
    }

    fn pool(name: &str, cidr: &str) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                ip_ranges: vec![IpRange::cidr(cidr)],
                subnet_info: SubnetInfo {
                    gateway: "10.10.1.1".into(),
                    prefix_length: 24,
                    vlan: None,
                },
                exclude: vec![],
            },
        )
    }

    fn config(id: &str, clock: SharedClock) -> ReplicaConfig {
        let mut e = ElectionConfig::new(NS, LEASE, id);
        e.lease_duration = Duration::from_secs(4);
        e.renew_deadline = Duration::from_secs(2);
        e.retry_period = Duration::from_millis(200);
        e.clock = clock;
        ReplicaConfig {
            seed: Some(7),
            ..ReplicaConfig::new(e, ControllerConfig::default())
        }
    }

    struct Replica {
        metrics: Arc<Metrics>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(client: &Client, cfg: ReplicaConfig) -> Replica {
        let metrics = Arc::new(Metrics::new());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run_replica(
            client.clone(),
            cfg,
            metrics.clone(),
            Arc::new(Health::default()),
            rx,
        ));
        Replica {
            metrics,
            stop,
            task,
        }
    }

    impl Replica {
        fn leading(&self) -> bool {
            self.metrics
                .encode()
                .lines()
                .any(|l| l == "spur_controller_is_leader 1")
        }
    }

    async fn lease(client: &Client) -> Option<Lease> {
        Api::<Lease>::namespaced(client.clone(), NS)
            .get_opt(LEASE)
            .await
            .unwrap()
    }

    fn holder(l: &Option<Lease>) -> Option<String> {
        l.as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.clone())
    }

    /// Polls `cond` every 50 ms of (paused) time, up to `limit`.
    async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        while !cond().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_leads_stamps_with_its_clock_and_releases_on_stop() {
        let (_server, client) = cluster().await;
        let pools: Api<IPPool> = Api::all(client.clone());
        for p in [pool("a", "10.10.1.0/24"), pool("b", "10.10.1.0/26")] {
            pools.create(&PostParams::default(), &p).await.unwrap();
        }
        let mut r = start(&client, config("a", Arc::new(Fixed)));
        let at = Timestamp::from_second(EPOCH).unwrap();

        wait_for("the lease", Duration::from_secs(10), || async {
            holder(&lease(&client).await).as_deref() == Some("a")
        })
        .await;
        let spec = lease(&client).await.and_then(|l| l.spec).unwrap();
        assert_eq!(spec.renew_time, Some(MicroTime(at)));
        assert_eq!(spec.acquire_time, Some(MicroTime(at)));
        assert!(r.leading());

        // The usage loop runs: both pools get a status, stamped by the
        // injected clock, and a conflict Event each.
        wait_for("the pools' status", Duration::from_secs(30), || async {
            pools
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .all(|p| stored_usage(p).is_some())
        })
        .await;
        for p in pools.list(&ListParams::default()).await.unwrap().items {
            let conds = p.status.unwrap().conditions;
            let valid = conds.iter().find(|c| c.type_ == VALID).unwrap();
            assert_eq!(valid.status, "False", "{}", p.metadata.name.unwrap());
            for c in &conds {
                assert_eq!(c.last_transition_time, Time(at), "{}", c.type_);
            }
        }
        let events: Api<K8sEvent> = Api::namespaced(client.clone(), EVENT_NAMESPACE);
        wait_for("the conflict events", Duration::from_secs(10), || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len()
                >= 2
        })
        .await;
        let list = events.list(&ListParams::default()).await.unwrap().items;
        // Two Events at one instant of a still clock: their names differ
        // (a clash would have made the second create fail).
        assert_eq!(list.len(), 2, "one event per pool");
        for ev in &list {
            assert_eq!(ev.reason.as_deref(), Some(EVENT_CONFLICT));
            assert_eq!(ev.event_time, Some(MicroTime(at)));
        }

        // Stop: the loops stop and the Lease is released.
        r.stop.send(true).unwrap();
        tokio::time::timeout(3 * STOP_TIMEOUT, &mut r.task)
            .await
            .expect("the replica stops")
            .unwrap();
        let released = lease(&client).await;
        assert_eq!(holder(&released), None);
        let spec = released.and_then(|l| l.spec).unwrap();
        assert_eq!(
            spec.renew_time,
            Some(MicroTime(at)),
            "released at the clock's time"
        );
        assert!(!r.leading());
    }

    #[tokio::test(start_paused = true)]
    async fn of_two_replicas_one_leads_and_a_crash_hands_over_after_the_lease() {
        let (_server, client) = cluster().await;
        let clock: SharedClock = Arc::new(Paused(Instant::now()));
        let a = start(&client, config("a", clock.clone()));
        let b = start(&client, config("b", clock.clone()));
        wait_for("a leader", Duration::from_secs(10), || async {
            a.leading() || b.leading()
        })
        .await;
        // Exactly one, through many renewals.
        for _ in 0..50 {
            assert!(a.leading() != b.leading(), "exactly one leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (leader, follower, follower_id) = if a.leading() {
            (a, b, "b")
        } else {
            (b, a, "a")
        };
        let renewed = lease(&client)
            .await
            .and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
            .unwrap();
        assert!(renewed.0 > Timestamp::from_second(EPOCH).unwrap());
        assert!(renewed.0 <= clock.now());

        // Crash: the task is aborted at its await point, nothing released.
        leader.task.abort();
        let crashed = Instant::now();
        wait_for(
            "the follower to take over",
            Duration::from_secs(20),
            || async { follower.leading() },
        )
        .await;
        let took = crashed.elapsed();
        assert!(
            took >= Duration::from_secs(2),
            "took over after {took:?}, before the lease ran out"
        );
        assert_eq!(holder(&lease(&client).await).as_deref(), Some(follower_id));

        follower.stop.send(true).unwrap();
        tokio::time::timeout(3 * STOP_TIMEOUT, follower.task)
            .await
            .expect("the replica stops")
            .unwrap();
        assert_eq!(holder(&lease(&client).await), None);
    }
}
