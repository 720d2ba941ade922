//! `make bench-ipam`: what allocating addresses costs the Kubernetes API,
//! Spur's sharded IPAMBlocks against the single-object scheme.
//!
//! ```text
//! cargo run --release --locked -p spur-node --example ipam-bench -- [--nodes N] [--allocs M] [--seed S]
//! ```
//!
//! 1. *Ours.* One embedded API server with the IPPool and IPAMBlock CRDs and
//!    one pool sized for N×M addresses; N agents, each with its own client,
//!    `IpamCache` (two watches: every IPPool, and the node's own IPAMBlocks,
//!    by label) and `Ipam`, all started and listed; then
//!    the request accounting is reset and every node allocates M addresses
//!    for distinct Pod owners, the nodes concurrently, each node one ADD
//!    after the other. The numbers are the server's accounting of
//!    `ipamblocks`. At the end every address is checked distinct, in the
//!    answers and in the stored blocks; any failed allocation, duplicate or
//!    mismatch makes the bench exit non-zero (after its last line). The
//!    embedded server queues every watch event for every cache without a
//!    bound: should the queues outgrow three quarters of the free memory,
//!    the bench stops with that reason instead of being killed.
//! 2. *The single-object model.* The scheme where one object holds every
//!    allocation of the pool (Antrea keeps them in the IPPool's status) and
//!    every allocation rewrites it with optimistic concurrency: N writers,
//!    each doing M allocations; an attempt reads the object's version, waits
//!    a seeded random 1-4 ms of simulated time (the update's round trip) and
//!    is stored only if the version is unchanged, else the writer re-reads
//!    and retries. Every stored write counts the whole object (what etcd
//!    stores and every watcher receives); lost attempts write nothing. The
//!    object's JSON size is modelled exactly (each entry serialized once,
//!    checked against the serialized final object) and kept in memory.
//!
//! The last line is
//! `ipam-bench writes_per_alloc=X conflicts_per_alloc=Y max_object_bytes=Z bytes_ratio_vs_single_object=R`.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::join_all;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{json, Value};
use spur_core::ipam::{address, window_of};
use spur_core::ipamblock::{IPAMBlock, Owner};
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, SubnetInfo};
use spur_core::pool::{to_u128, Family};
use spur_kubeapi::{ApiServer, ApiService, ResourceStats};
use spur_node::ipam::{AllocateRequest, Ipam, IpamConfig};

/// The pool every node allocates from.
const POOL: &str = "bench-v4";
/// Every Pod's namespace.
const NAMESPACE: &str = "bench";
/// Every Pod's interface.
const IFNAME: &str = "net1";
/// How long the caches are given to list, and to see every write.
const SYNC_BOUND: Duration = Duration::from_secs(600);

#[derive(Parser, Debug)]
#[command(
    name = "ipam-bench",
    about = "API cost of IP allocation: sharded IPAMBlocks against one object holding every allocation"
)]
struct Args {
    /// Simulated nodes (one agent each).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=4096))]
    nodes: u32,
    /// Addresses each node allocates.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=4096))]
    allocs: u32,
    /// Seed of the owners, the agents' jitter and the model's interleaving.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Why the bench failed.
struct BenchError(String);

impl fmt::Debug for BenchError {
    // `main` returning Err prints the Debug form: make it the message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(what: impl Into<String>) -> Result<T, BenchError> {
    Err(BenchError(what.into()))
}

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|e| BenchError(format!("{}: {e}", what())))
    }
}

/// One Pod interface of the workload (the same in both schemes).
#[derive(Debug, Clone)]
struct Pod {
    name: String,
    container_id: String,
}

impl Pod {
    fn owner(&self) -> Owner {
        Owner::pod(NAMESPACE, &self.name, &self.container_id, IFNAME)
    }
}

/// `workload[node][i]`: the Pods of each node, with realistic names
/// (Deployment-style suffixes) and 64-hex container IDs.
fn workload(nodes: u32, allocs: u32, seed: u64) -> Vec<Vec<Pod>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0a11_0c5e_ed00_0001);
    const ALNUM: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(ALNUM[(rng.next_u32() as usize) % ALNUM.len()]))
            .collect()
    };
    let mut out = Vec::with_capacity(nodes as usize);
    for node in 0..nodes {
        let mut pods = Vec::with_capacity(allocs as usize);
        for i in 0..allocs {
            let name = format!("app-{node}-{i}-{}-{}", pick(9), pick(5));
            pods.push(Pod {
                name,
                container_id: String::new(),
            });
        }
        out.push(pods);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc0_47a1_0e00_0002);
    for pods in &mut out {
        for p in pods {
            p.container_id = (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect();
        }
    }
    out
}

fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

/// Process CPU time (user + system), from /proc (Linux); zero elsewhere.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces): utime is
    // the 14th field of the line, the 12th after ") ".
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Clock ticks are 100 Hz on every Linux this runs on.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`); zero where
/// there is none.
fn memory(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Memory the machine can still give (`MemAvailable`), in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// How much memory the bench may use: what it uses now and three quarters
/// of what the machine has left.
fn memory_limit() -> Option<u64> {
    available_memory().map(|a| memory("VmRSS") + a / 4 * 3)
}

/// Wall and CPU time of a phase.
struct Phase {
    wall: Instant,
    cpu: Duration,
}

impl Phase {
    fn start() -> Phase {
        Phase {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }

    fn end(&self) -> (Duration, Duration) {
        (self.wall.elapsed(), cpu_time().saturating_sub(self.cpu))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The pool: an IPv4 CIDR with room for every node's blocks twice over
/// (at least a /16), from 10.0.0.0.
fn pool_cidr(nodes: u32, allocs: u32) -> Result<(Ipv4Addr, u8), BenchError> {
    // A node fills its own block (62+ usable addresses) before it claims the next.
    let windows = u64::from(nodes) * u64::from(allocs).div_ceil(62).max(1);
    let want = (windows * 64 * 2).max(1 << 16);
    let bits = 64 - (want - 1).leading_zeros();
    if bits > 24 {
        return fail(format!(
            "{nodes}×{allocs} addresses do not fit in 10.0.0.0/8"
        ));
    }
    Ok((Ipv4Addr::new(10, 0, 0, 0), (32 - bits) as u8))
}

/// What one scheme cost.
#[derive(Debug, Default, Clone)]
struct Cost {
    allocations: u64,
    writes: u64,
    conflicts: u64,
    bytes: u64,
    max_object_bytes: u64,
}

impl Cost {
    fn per_alloc(&self, v: u64) -> f64 {
        v as f64 / self.allocations.max(1) as f64
    }
}

// ---------------------------------------------------------------------------
// Ours: agents against the embedded API server.

fn client(server: &ApiServer) -> Client {
    Client::new(server.service(), "default")
}

/// IPAMBlock requests by (method, status), counted on the agents' side of
/// the embedded server: which writes conflict (claims are POSTs, updates
/// PUTs).
#[derive(Debug, Default)]
struct Tally(Mutex<BTreeMap<(String, u16), u64>>);

impl Tally {
    fn record(&self, method: String, status: http::StatusCode) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((method, status.as_u16())).or_default() += 1;
    }

    fn take(&self) -> BTreeMap<(String, u16), u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// [`ApiService`] counting IPAMBlock requests (a watch counts once, as
/// `WATCH`, when it is opened).
#[derive(Clone)]
struct Counted {
    inner: ApiService,
    tally: Arc<Tally>,
}

type ApiFuture = Pin<
    Box<
        dyn Future<Output = Result<http::Response<spur_kubeapi::server::ApiBody>, Infallible>>
            + Send,
    >,
>;

impl tower::Service<http::Request<kube::client::Body>> for Counted {
    type Response = http::Response<spur_kubeapi::server::ApiBody>;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> ApiFuture {
        let blocks = req.uri().path().contains("/ipamblocks");
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        let method = if watch {
            "WATCH".to_string()
        } else {
            req.method().to_string()
        };
        let tally = self.tally.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            if blocks {
                tally.record(method, resp.status());
            }
            Ok(resp)
        })
    }
}

fn counted_client(server: &ApiServer, tally: &Arc<Tally>) -> Client {
    Client::new(
        Counted {
            inner: server.service(),
            tally: tally.clone(),
        },
        "default",
    )
}

async fn install(server: &ApiServer, net: Ipv4Addr, prefix: u8) -> Result<(), BenchError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client(server));
    for crd in [IPPool::crd(), IPAMBlock::crd()] {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.create(&PostParams::default(), &crd)
            .await
            .context(|| format!("installing CRD {name}"))?;
    }
    let gateway = Ipv4Addr::from(u32::from(net) + 1);
    let pools: Api<IPPool> = Api::all(client(server));
    pools
        .create(
            &PostParams::default(),
            &IPPool::new(
                POOL,
                IPPoolSpec {
                    ip_ranges: vec![IpRange::cidr(format!("{net}/{prefix}"))],
                    subnet_info: SubnetInfo {
                        gateway: gateway.to_string(),
                        prefix_length: prefix,
                        vlan: None,
                    },
                    exclude: vec![],
                },
            ),
        )
        .await
        .context(|| format!("creating IPPool {POOL}"))?;
    Ok(())
}

/// One node's outcome.
struct NodeRun {
    /// (Pod index, address) of each successful allocation.
    got: Vec<(usize, IpAddr)>,
    /// Failed calls: (Pod index, error).
    failed: Vec<(usize, String)>,
    /// Latency of each call.
    latencies: Vec<Duration>,
}

async fn run_node(ipam: Arc<Ipam>, node: String, pods: Vec<Owner>) -> NodeRun {
    let mut run = NodeRun {
        got: Vec::with_capacity(pods.len()),
        failed: Vec::new(),
        latencies: Vec::with_capacity(pods.len()),
    };
    for (i, owner) in pods.into_iter().enumerate() {
        let req = AllocateRequest::new(node.clone(), owner, [POOL]);
        let t = Instant::now();
        let res = ipam.allocate(&req).await;
        run.latencies.push(t.elapsed());
        match res {
            Ok(a) if a.len() == 1 => run.got.push((i, a[0].ip())),
            Ok(a) => run
                .failed
                .push((i, format!("{} addresses instead of one", a.len()))),
            Err(e) => run.failed.push((i, e.to_string())),
        }
    }
    run
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Every stored allocation: (address, node of the block, owner).
fn stored_allocations(server: &ApiServer) -> Result<Vec<(IpAddr, String, Owner)>, BenchError> {
    let blocks: Vec<Value> = server
        .store()
        .objects_of("spur.dev", "ipamblocks")
        .into_iter()
        .cloned()
        .collect();
    let mut out = Vec::new();
    for v in blocks {
        let b: IPAMBlock = serde_json::from_value(v).context(|| "a stored IPAMBlock".into())?;
        let net: ipnet::IpNet = b
            .spec
            .cidr
            .parse()
            .context(|| format!("the CIDR of IPAMBlock {:?}", b.metadata.name))?;
        let family = Family::of_net(&net);
        let base = to_u128(net.network());
        for a in &b.spec.allocations {
            out.push((
                address(family, base, u32::from(a.offset)),
                b.spec.node.clone(),
                a.owner.clone(),
            ));
        }
    }
    Ok(out)
}

/// What the agents' run showed.
struct Ours {
    cost: Cost,
    stats: ResourceStats,
    /// Allocations that succeeded.
    succeeded: u64,
    /// Wall time of the allocations.
    wall: Duration,
    problems: Vec<String>,
}

async fn ours(args: &Args, pods: &[Vec<Pod>]) -> Result<Ours, BenchError> {
    let n = args.nodes as usize;
    let total = u64::from(args.nodes) * u64::from(args.allocs);
    let (net, prefix) = pool_cidr(args.nodes, args.allocs)?;

    let phase = Phase::start();
    let server = ApiServer::in_memory();
    install(&server, net, prefix).await?;
    let tally = Arc::new(Tally::default());
    let agents: Vec<Arc<Ipam>> = (0..n)
        .map(|i| {
            let config = IpamConfig {
                seed: Some(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64),
                node: Some(node_name(i)),
                ..IpamConfig::default()
            };
            Arc::new(Ipam::start(counted_client(&server, &tally), config))
        })
        .collect();
    let ready = join_all(agents.iter().map(|a| async move {
        a.cache().wait_ready().await;
        while a.cache().layout(POOL).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }));
    tokio::time::timeout(SYNC_BOUND, ready)
        .await
        .context(|| format!("{n} agents' caches did not list within {SYNC_BOUND:?}"))?;
    let (wall, cpu) = phase.end();
    println!(
        "ours: {n} agents started, caches listed (pool {POOL} {net}/{prefix}) in {} wall, {} CPU",
        secs(wall),
        secs(cpu)
    );

    server.reset_stats();
    tally.take();
    let phase = Phase::start();
    let tasks: Vec<_> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let owners = pods[i].iter().map(Pod::owner).collect();
            tokio::spawn(run_node(a.clone(), node_name(i), owners))
        })
        .collect();
    let joined = async {
        let mut runs = Vec::with_capacity(n);
        for (i, t) in tasks.into_iter().enumerate() {
            runs.push(t.await.context(|| format!("node {i}'s task"))?);
        }
        Ok::<_, BenchError>(runs)
    };
    // The embedded server queues every watch event for every cache, with
    // no bound: when the caches decode slower than the nodes write, the
    // queues grow. Stop with the reason rather than be killed for memory.
    let limit = memory_limit();
    let watchdog = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let rss = memory("VmRSS");
            if limit.is_some_and(|l| rss > l) {
                return rss;
            }
        }
    };
    let runs = tokio::select! {
        runs = joined => runs?,
        rss = watchdog => {
            let s = server.stats().get("ipamblocks").cloned().unwrap_or_default();
            return fail(format!(
                "ours: stopped after {} with {} of memory in use ({} writes, {} conflicts so far): the embedded server's watch queues grow, the {n} caches decode events slower than the nodes write",
                secs(phase.wall.elapsed()),
                mib(rss),
                s.writes,
                s.conflicts
            ));
        }
    };
    let (alloc_wall, alloc_cpu) = phase.end();
    let stats = server
        .stats()
        .get("ipamblocks")
        .cloned()
        .unwrap_or_default();

    let mut problems = Vec::new();
    let mut lat: Vec<Duration> = runs
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    lat.sort();
    let requests = tally.take();
    let mut first: Vec<Duration> = runs
        .iter()
        .filter_map(|r| r.latencies.first().copied())
        .collect();
    first.sort();
    let failed: usize = runs.iter().map(|r| r.failed.len()).sum();
    if failed > 0 {
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for r in &runs {
            for (_, e) in &r.failed {
                *kinds.entry(e.clone()).or_default() += 1;
            }
        }
        let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (e, c) in kinds.iter().take(8) {
            println!("ours: {c} allocations failed: {e}");
        }
        if kinds.len() > 8 {
            let rest: usize = kinds[8..].iter().map(|k| k.1).sum();
            println!(
                "ours: {rest} allocations failed for {} other reasons",
                kinds.len() - 8
            );
        }
        problems.push(format!("{failed} of {total} allocations failed"));
    }
    println!(
        "ours: {} allocations by {n} nodes in {} wall, {} CPU ({:.0} allocations/s); per call p50 {:.1}ms p99 {:.1}ms max {:.1}ms",
        total - failed as u64,
        secs(alloc_wall),
        secs(alloc_cpu),
        (total - failed as u64) as f64 / alloc_wall.as_secs_f64().max(1e-9),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    println!(
        "ours: each node's first call (it claims a block): p50 {:.1}ms p99 {:.1}ms max {:.1}ms",
        percentile(&first, 0.5).as_secs_f64() * 1e3,
        percentile(&first, 0.99).as_secs_f64() * 1e3,
        first.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    let listed: Vec<String> = requests
        .iter()
        .map(|((m, code), c)| format!("{m} {code}: {c}"))
        .collect();
    println!(
        "ours: ipamblocks requests by method and status (POST: claims, PUT: updates, GET: re-reads after a conflict, WATCH: watches re-opened): {}",
        listed.join(", ")
    );

    // Correctness: distinct addresses in the answers and in the store, each
    // owner's stored address the one it was given.
    let mut answered: BTreeMap<IpAddr, (usize, usize)> = BTreeMap::new();
    let mut duplicates = 0usize;
    for (node, r) in runs.iter().enumerate() {
        for &(i, ip) in &r.got {
            if answered.insert(ip, (node, i)).is_some() {
                duplicates += 1;
            }
        }
    }
    if duplicates > 0 {
        problems.push(format!("{duplicates} addresses handed out twice"));
    }
    let stored = stored_allocations(&server)?;
    let mut by_ip: BTreeSet<IpAddr> = BTreeSet::new();
    let mut stored_dups = 0usize;
    let mut by_owner: BTreeMap<(String, String), (IpAddr, String)> = BTreeMap::new();
    for (ip, node, owner) in &stored {
        if !by_ip.insert(*ip) {
            stored_dups += 1;
        }
        by_owner.insert(
            (owner.name.clone(), owner.container_id.clone()),
            (*ip, node.clone()),
        );
    }
    if stored_dups > 0 {
        problems.push(format!("{stored_dups} addresses stored twice"));
    }
    if stored.len() as u64 != total {
        problems.push(format!(
            "{} allocations stored, {total} expected",
            stored.len()
        ));
    }
    let mut mismatched = 0usize;
    let mut foreign = 0usize;
    for (&ip, &(node, i)) in &answered {
        let p = &pods[node][i];
        match by_owner.get(&(p.name.clone(), p.container_id.clone())) {
            Some((sip, snode)) if *sip == ip => {
                if *snode != node_name(node) {
                    foreign += 1;
                }
            }
            _ => mismatched += 1,
        }
    }
    if mismatched > 0 {
        problems.push(format!(
            "{mismatched} answered addresses are not what the store holds for their owner"
        ));
    }
    let blocks: BTreeSet<u128> = stored.iter().map(|(ip, _, _)| window_of(*ip)).collect();
    println!(
        "ours: check: {} distinct addresses answered, {} stored in {} IPAMBlocks, {} duplicates, {} in another node's block",
        answered.len(),
        by_ip.len(),
        blocks.len(),
        duplicates + stored_dups,
        foreign
    );

    // How long until every agent's cache has seen every write to its own
    // node's blocks (the watch is label-selected: a write goes to the cache
    // of the block's node only).
    let phase = Phase::start();
    let mut latest: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for v in server.store().objects_of("spur.dev", "ipamblocks") {
        let field = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        if let (Some(name), Some(rv), Some(node)) = (
            field("/metadata/name"),
            field("/metadata/resourceVersion"),
            field("/spec/node"),
        ) {
            latest.entry(node).or_default().push((name, rv));
        }
    }
    let synced = |a: &Ipam, blocks: &[(String, String)]| {
        blocks.iter().all(|(name, rv)| {
            a.cache()
                .block(name)
                .and_then(|b| b.metadata.resource_version)
                .as_ref()
                == Some(rv)
        })
    };
    let converge =
        async {
            loop {
                if agents.iter().enumerate().all(|(i, a)| {
                    synced(a, latest.get(&node_name(i)).map_or(&[][..], Vec::as_slice))
                }) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
    match tokio::time::timeout(SYNC_BOUND, converge).await {
        Ok(()) => {
            let (wall, cpu) = phase.end();
            println!(
                "ours: all {n} caches held their node's blocks' last versions {} wall ({} CPU) after the last allocation",
                secs(wall),
                secs(cpu)
            );
        }
        Err(_) => println!("ours: the caches did not converge within {SYNC_BOUND:?}"),
    }
    let cost = Cost {
        allocations: total,
        writes: stats.writes,
        conflicts: stats.conflicts,
        bytes: stats.bytes_stored,
        max_object_bytes: stats.max_object_bytes,
    };
    drop(agents);
    Ok(Ours {
        cost,
        stats,
        succeeded: total - failed as u64,
        wall: alloc_wall,
        problems,
    })
}

// ---------------------------------------------------------------------------
// The single-object model.

/// The object every writer updates: only its version and JSON size.
#[derive(Debug, Default)]
struct SingleObject {
    version: u64,
    entries: u64,
    /// Sum of the entries' JSON sizes.
    entry_bytes: u64,
}

#[derive(Debug, Default)]
struct ModelTotals {
    writes: u64,
    conflicts: u64,
    bytes: u64,
    max_object_bytes: u64,
}

/// JSON size of a number.
fn digits(v: u64) -> u64 {
    v.checked_ilog10().map_or(1, |d| u64::from(d) + 1)
}

/// The pool object of the single-object scheme, Antrea-style (an
/// `crd.antrea.io` IPPool whose status lists every allocated address).
fn single_object(
    net: Ipv4Addr,
    prefix: u8,
    total: u64,
    version: u64,
    entries: Vec<Value>,
) -> Value {
    let used = entries.len();
    json!({
        "apiVersion": "crd.antrea.io/v1beta1",
        "kind": "IPPool",
        "metadata": {
            "name": POOL,
            "uid": "5f0c8d2e-8a51-4c3e-9b8e-3f6d1f2a9c47",
            "resourceVersion": version.to_string(),
            "generation": 1,
            "creationTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {
            "ipRanges": [{"cidr": format!("{net}/{prefix}")}],
            "subnetInfo": {"gateway": Ipv4Addr::from(u32::from(net) + 1).to_string(), "prefixLength": prefix},
        },
        "status": {
            "ipAddresses": entries,
            "usage": {"total": total, "used": used},
        },
    })
}

/// One allocation's entry in the single object.
fn entry(ip: IpAddr, pod: &Pod) -> Value {
    json!({
        "ipAddress": ip.to_string(),
        "phase": "Allocated",
        "owner": {"pod": {
            "name": pod.name,
            "namespace": NAMESPACE,
            "containerID": pod.container_id,
            "ifName": IFNAME,
        }},
    })
}

struct ModelSetup {
    /// Size of the object with no entry, version 0.
    base: u64,
    /// The k-th address handed out (lowest first, as the scheme allocates).
    addresses: Vec<IpAddr>,
}

impl ModelSetup {
    /// The object's JSON size at `version` with `entries` entries of
    /// `entry_bytes` bytes in all.
    fn size(&self, version: u64, entries: u64, entry_bytes: u64) -> u64 {
        self.base
            + (digits(version) - 1)
            + (digits(entries) - 1)
            + entry_bytes
            + entries.saturating_sub(1)
    }
}

async fn model_writer(
    obj: Arc<Mutex<SingleObject>>,
    totals: Arc<Mutex<ModelTotals>>,
    setup: Arc<ModelSetup>,
    pods: Vec<Pod>,
    mut rng: ChaCha8Rng,
) -> Result<Vec<(u64, usize)>, BenchError> {
    let lock = |m: &Arc<Mutex<SingleObject>>| {
        m.lock()
            .map(|g| g.version)
            .map_err(|_| BenchError("the model's lock is poisoned".into()))
    };
    // (position in the object, Pod index)
    let mut placed = Vec::with_capacity(pods.len());
    for (i, pod) in pods.iter().enumerate() {
        loop {
            // Read the object (its version), then the update's round trip.
            let seen = lock(&obj)?;
            let rtt = Duration::from_millis(1 + rng.next_u64() % 4);
            tokio::time::sleep(rtt).await;
            let mut o = obj
                .lock()
                .map_err(|_| BenchError("the model's lock is poisoned".into()))?;
            let mut t = totals
                .lock()
                .map_err(|_| BenchError("the model's lock is poisoned".into()))?;
            if o.version != seen {
                t.conflicts += 1;
                continue;
            }
            let k = o.entries as usize;
            let Some(&ip) = setup.addresses.get(k) else {
                return fail("the single-object model ran out of addresses");
            };
            let e = serde_json::to_vec(&entry(ip, pod)).context(|| "an entry".into())?;
            o.version += 1;
            o.entries += 1;
            o.entry_bytes += e.len() as u64;
            let size = setup.size(o.version, o.entries, o.entry_bytes);
            t.writes += 1;
            t.bytes += size;
            t.max_object_bytes = t.max_object_bytes.max(size);
            placed.push((o.entries - 1, i));
            break;
        }
    }
    Ok(placed)
}

struct Model {
    cost: Cost,
    final_bytes: u64,
    sim_time: Duration,
    wall: Duration,
}

fn model(args: &Args, pods: &[Vec<Pod>]) -> Result<Model, BenchError> {
    let started = Instant::now();
    let total = u64::from(args.nodes) * u64::from(args.allocs);
    let (net, prefix) = pool_cidr(args.nodes, args.allocs)?;
    let size_total = 1u64 << (32 - prefix);
    let base = serde_json::to_vec(&single_object(net, prefix, size_total - 3, 0, vec![]))
        .context(|| "the single object".into())?
        .len() as u64;
    // The lowest addresses first, skipping the network address and the gateway.
    let addresses: Vec<IpAddr> = (2..size_total - 1)
        .take(total as usize)
        .map(|o| IpAddr::V4(Ipv4Addr::from(u32::from(net) + o as u32)))
        .collect();
    let setup = Arc::new(ModelSetup { base, addresses });

    // Simulated time on one thread: deterministic for a seed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .context(|| "the model's runtime".into())?;
    let obj = Arc::new(Mutex::new(SingleObject::default()));
    let totals = Arc::new(Mutex::new(ModelTotals::default()));
    let (placed, sim_time) = rt.block_on(async {
        let t0 = tokio::time::Instant::now();
        let tasks: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(w, p)| {
                let rng = ChaCha8Rng::seed_from_u64(
                    args.seed.wrapping_mul(0xd1b5_4a32_d192_ed03) ^ (w as u64 + 1),
                );
                tokio::spawn(model_writer(
                    obj.clone(),
                    totals.clone(),
                    setup.clone(),
                    p.clone(),
                    rng,
                ))
            })
            .collect();
        let mut placed = Vec::with_capacity(tasks.len());
        for t in tasks {
            placed.push(t.await.context(|| "a model writer".into())??);
        }
        Ok::<_, BenchError>((placed, t0.elapsed()))
    })?;

    // Check the modelled size against the serialized final object.
    let o = obj
        .lock()
        .map_err(|_| BenchError("the model's lock is poisoned".into()))?;
    let final_bytes = setup.size(o.version, o.entries, o.entry_bytes);
    let mut order: Vec<Option<&Pod>> = vec![None; o.entries as usize];
    for (w, list) in placed.iter().enumerate() {
        for &(k, i) in list {
            order[k as usize] = Some(&pods[w][i]);
        }
    }
    let entries: Vec<Value> = order
        .iter()
        .zip(&setup.addresses)
        .filter_map(|(p, ip)| p.map(|p| entry(*ip, p)))
        .collect();
    let real = serde_json::to_vec(&single_object(
        net,
        prefix,
        size_total - 3,
        o.version,
        entries,
    ))
    .context(|| "the single object".into())?
    .len() as u64;
    if real != final_bytes {
        return fail(format!(
            "the single-object size model is off: {final_bytes} modelled, {real} serialized"
        ));
    }
    let t = totals
        .lock()
        .map_err(|_| BenchError("the model's lock is poisoned".into()))?;
    if o.entries != total || t.writes != total {
        return fail(format!(
            "the single-object model stored {} of {total} allocations",
            o.entries
        ));
    }
    Ok(Model {
        cost: Cost {
            allocations: total,
            writes: t.writes,
            conflicts: t.conflicts,
            bytes: t.bytes,
            max_object_bytes: t.max_object_bytes,
        },
        final_bytes,
        sim_time,
        wall: started.elapsed(),
    })
}

// ---------------------------------------------------------------------------

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn main() -> Result<(), BenchError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let started = Instant::now();
    let pods = workload(args.nodes, args.allocs, args.seed);
    println!(
        "ipam-bench: {} nodes × {} allocations = {} addresses, seed {}",
        args.nodes,
        args.allocs,
        u64::from(args.nodes) * u64::from(args.allocs),
        args.seed
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context(|| "the runtime".into())?;
    let ours = rt.block_on(ours(&args, &pods))?;
    rt.shutdown_timeout(Duration::from_secs(5));
    let c = &ours.cost;
    println!(
        "ours: watch fan-out: every write reaches only the cache of its block's node (label-selected watches): {} events, {} of JSON rendered by the server and decoded by the agents (a cluster-wide watch would deliver {} events to the {} caches)",
        c.writes,
        mib(c.bytes),
        c.writes * u64::from(args.nodes),
        args.nodes
    );
    println!(
        "ours (IPAMBlocks): {} allocations ({} succeeded), {} writes ({:.3} per successful allocation), {} conflicts, {} failed writes, {} reads, {} bytes written ({}), max object {} bytes, {} wall",
        c.allocations,
        ours.succeeded,
        c.writes,
        c.writes as f64 / ours.succeeded.max(1) as f64,
        c.conflicts,
        ours.stats.failed_writes,
        ours.stats.reads,
        c.bytes,
        mib(c.bytes),
        c.max_object_bytes,
        secs(ours.wall)
    );

    let m = model(&args, &pods)?;
    let s = &m.cost;
    println!(
        "single-object model: {} allocations, {} writes, {} conflicts, {} bytes written ({}), max object {} bytes (the final object, {} bytes), {} simulated, {} wall",
        s.allocations,
        s.writes,
        s.conflicts,
        s.bytes,
        mib(s.bytes),
        s.max_object_bytes,
        m.final_bytes,
        secs(m.sim_time),
        secs(m.wall)
    );
    println!(
        "ipam-bench: total {} wall, {} CPU, peak memory {}",
        secs(started.elapsed()),
        secs(cpu_time()),
        mib(memory("VmHWM"))
    );

    let ratio = s.bytes as f64 / c.bytes.max(1) as f64;
    println!(
        "ipam-bench writes_per_alloc={:.3} conflicts_per_alloc={:.4} max_object_bytes={} bytes_ratio_vs_single_object={:.1}",
        c.per_alloc(c.writes),
        c.per_alloc(c.conflicts),
        c.max_object_bytes,
        ratio
    );
    if !ours.problems.is_empty() {
        return fail(format!(
            "ipam-bench: incorrect: {}",
            ours.problems.join("; ")
        ));
    }
    Ok(())
}
