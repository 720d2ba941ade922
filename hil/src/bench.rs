//! `spur-hil bench-cni` (`make bench-cni`): ADD and DEL latency of one
//! VLAN interface through the real `spur` plugin and `spur-agent`, against
//! Debian's `macvlan` + `host-local` in the same run on the same machine,
//! and of `spur` as the IPAM plugin under Debian's `macvlan`.
//!
//! A one-node lab is brought up the way `spur-hil run` does it
//! ([`crate::lab`], [`crate::api`]): node `bench` with NICs `eth1` (the
//! uplink of OVS bridge `br-bench`) and `eth2` (the macvlan master), the
//! embedded API server with two IPPools (a /16 each), the
//! NetworkAttachmentDefinitions, one Pod object whose name and UID every
//! call carries, and the real `spur-agent` in the node's namespace. Then,
//! cycle by cycle, the three [`Case`]s run interleaved (the first case
//! rotates each cycle), each in a fresh Pod namespace with a fresh
//! container id: ADD timed, DEL timed (the namespace is made and removed
//! outside the timed region). Plugins run inside the node's namespace
//! through [`crate::kubelet::invoke`]: by default ([`Spawn::Setns`])
//! started from a thread that entered the namespace, as a runtime on a
//! real node starts them with no wrapper, or with `ip netns exec` as the
//! harness does. Warm-up cycles are not counted. Any failed call aborts the bench with its error. At
//! the end nothing may be left: no IPAM allocation of the Pod, no Spur
//! access port, no `host-local` reservation.
//!
//! Output ([`render`]): a table (p50, p90, p99, max of ADD and DEL per
//! case, in ms, nearest-rank percentiles), where spur's time goes (the
//! agent's own time per request from its log, the `spur` plugin's STATUS
//! round trip, starting `true` the way plugins are started), the
//! targets, and as the last line exactly
//! `cni-bench vlan_add_p50_ratio=A vlan_add_p99_ratio=B ipam_add_p50_ratio=C
//! vlan_add_p50_ms=D macvlan_add_p50_ms=E` ([`Summary::line`]).
//!
//! What does not live here: the lab's plumbing ([`crate::lab`]), the API
//! server ([`crate::api`]), CNI invocation ([`crate::kubelet::cni`]), and
//! Spur itself (the bench runs the project's binaries).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use spur_testbed::{parse_manifests, PodRef, TestbedSpec};

use crate::api::{self, ApiError, Cluster, NodeInfo};
use crate::cleanup::{self, Cleanup, Interrupts};
use crate::kubelet::cni::{plugin_config, NetConfList};
use crate::kubelet::{self, invoke, CniCallError, CniCommand, CniEnv, SPUR_CNI_SOCKET_ENV};
use crate::lab::{Lab, LabError, LabOptions, NodeLab};
use crate::probe;
use crate::progress::{secs, Progress};

/// Counted cycles when `--cycles` is not given.
pub const DEFAULT_CYCLES: usize = 200;
/// Uncounted cycles before the counted ones.
pub const DEFAULT_WARMUP: usize = 10;
/// The bench node's name.
pub const NODE: &str = "bench";
/// The NIC that is the uplink of the bench's OVS bridge.
pub const UPLINK: &str = "eth1";
/// The NIC that is the macvlan master.
pub const MACVLAN_MASTER: &str = "eth2";
/// The bench's OVS bridge.
pub const BRIDGE: &str = "br-bench";
/// The pool of the VLAN network.
pub const VLAN_POOL: &str = "bench-pool";
/// The pool of the IPAM case.
pub const IPAM_POOL: &str = "bench-pool-2";
/// `host-local`'s range in the macvlan case (as large as the pools).
pub const HOST_LOCAL_SUBNET: &str = "10.22.0.0/16";
/// The interface every case creates in its Pod namespace.
pub const IFNAME: &str = "net1";
/// The namespace of the bench Pod.
pub const POD_NAMESPACE: &str = "default";
/// The bench Pod every call names.
pub const POD_NAME: &str = "bench-pod";
/// How long one plugin call may take before it is killed.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The issue's targets: (summary key, the most it may be). Each is met
/// when the value as printed (2 decimals) is at most the target.
pub const TARGETS: [(&str, f64); 3] = [
    ("vlan_add_p50_ratio", 0.7),
    ("vlan_add_p99_ratio", 1.0),
    ("ipam_add_p50_ratio", 1.0),
];

/// The bench's one-node testbed.
const TESTBED: &str = "
cniMode: multus
nodes:
  - name: bench
    nics: [eth1, eth2]
fabric:
  - name: uplink
    ports: [bench/eth1]
  - name: macvlan
    ports: [bench/eth2]
";

/// The bench's objects: the agent config (one bridge, `eth1` its
/// uplink), the two pools, the NetworkAttachmentDefinitions of the cases
/// (for whoever looks at the cluster; the calls carry their configs) and
/// the Pod.
const MANIFESTS: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: spur-config, namespace: kube-system}
data:
  spur-agent.conf: |
    secondaryNetwork:
      ovsBridges: [{"bridgeName": "br-bench", "physicalInterfaces": ["eth1"]}]
---
apiVersion: spur.dev/v1beta1
kind: IPPool
metadata: {name: bench-pool}
spec:
  ipRanges: [{cidr: 10.20.0.0/16}]
  subnetInfo: {gateway: 10.20.0.1, prefixLength: 16, vlan: 100}
---
apiVersion: spur.dev/v1beta1
kind: IPPool
metadata: {name: bench-pool-2}
spec:
  ipRanges: [{cidr: 10.21.0.0/16}]
  subnetInfo: {gateway: 10.21.0.1, prefixLength: 16}
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: bench-vlan, namespace: default}
spec:
  config: '{"cniVersion":"1.0.0","type":"spur","networkType":"vlan","vlan":100,"ipam":{"type":"spur","ippools":["bench-pool"]}}'
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: bench-ipam, namespace: default}
spec:
  config: '{"cniVersion":"1.0.0","type":"macvlan","master":"eth2","mode":"bridge","ipam":{"type":"spur","ippools":["bench-pool-2"]}}'
---
apiVersion: v1
kind: Pod
metadata: {name: bench-pod, namespace: default}
spec:
  nodeName: bench
  containers: [{name: bench, image: registry.k8s.io/pause:3.10}]
"#;

/// Why the bench could not produce its numbers.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// `--cycles 0`.
    #[error("--cycles must be at least 1")]
    NoCycles,
    /// The bench's own testbed or manifests do not load (a bug of the
    /// bench).
    #[error("the bench's built-in {what} does not load: {reason}")]
    BuiltIn {
        /// Which text.
        what: &'static str,
        /// The loader's complaint.
        reason: String,
    },
    /// The lab cannot be built or used.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The API server failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The API refused one of the bench's objects.
    #[error("the API refused the bench's {object}: {reason}")]
    Refused {
        /// The object.
        object: String,
        /// Why.
        reason: String,
    },
    /// The async runtime or the signal handlers cannot be set up.
    #[error("cannot start the bench's runtime: {0}")]
    Runtime(std::io::Error),
    /// A Pod namespace of a cycle cannot be made or removed.
    #[error("cycle {cycle}, case {case}: {reason}")]
    Netns {
        /// The cycle (warm-up cycles count).
        cycle: usize,
        /// The case.
        case: Case,
        /// What failed.
        reason: String,
    },
    /// A plugin call failed: the bench stops.
    #[error("cycle {cycle}, case {case}, CNI {command} (container {container_id}): {source}")]
    Call {
        /// The cycle (warm-up cycles count).
        cycle: usize,
        /// The case.
        case: Case,
        /// The verb.
        command: CniCommand,
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// The failure.
        source: CniCallError,
    },
    /// Starting a process in the node's namespace failed (the baseline
    /// `true`, or a thread entering the namespace).
    #[error("cycle {cycle}: {what} in network namespace {netns}: {reason}")]
    Spawn {
        /// The cycle.
        cycle: usize,
        /// What was started.
        what: String,
        /// The node namespace.
        netns: String,
        /// What failed.
        reason: String,
    },
    /// Something was left behind after every DEL.
    #[error("after every DEL, something is left: {}", .0.join("; "))]
    Leaks(Vec<String>),
    /// A case has no samples (cannot happen with at least one cycle).
    #[error("case {0} has no ADD samples: no ratio can be computed")]
    NoSamples(Case),
    /// The bench was interrupted (SIGINT/SIGTERM/SIGHUP); the lab was
    /// torn down.
    #[error("interrupted; the lab was torn down")]
    Interrupted,
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Case {
    /// `spur` as the Multus-delegate main plugin: a VLAN 100 interface on
    /// `br-bench` with an address of [`VLAN_POOL`].
    Vlan,
    /// Debian's `macvlan` (master [`MACVLAN_MASTER`], bridge mode) with
    /// `host-local`.
    Macvlan,
    /// Debian's `macvlan` with `spur` as its IPAM plugin ([`IPAM_POOL`]).
    Ipam,
}

impl Case {
    /// Every case, in table order.
    pub const ALL: [Case; 3] = [Case::Vlan, Case::Macvlan, Case::Ipam];

    /// The case's name in the table and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Case::Vlan => "vlan",
            Case::Macvlan => "macvlan",
            Case::Ipam => "ipam",
        }
    }

    /// One line saying what the case runs.
    pub fn describe(self) -> &'static str {
        match self {
            Case::Vlan => {
                "spur (networkType vlan, VLAN 100, IPAM spur pool bench-pool) as Multus's delegate"
            }
            Case::Macvlan => "Debian macvlan (master eth2, bridge mode) + host-local",
            Case::Ipam => "Debian macvlan (master eth2, bridge mode) + spur as IPAM (bench-pool-2)",
        }
    }

    /// The network's name (the config's `name`).
    pub fn network(self) -> &'static str {
        match self {
            Case::Vlan => "bench-vlan",
            Case::Macvlan => "bench-macvlan",
            Case::Ipam => "bench-ipam",
        }
    }

    /// The plugin the runtime calls.
    pub fn plugin(self) -> &'static str {
        match self {
            Case::Vlan => crate::lab::PLUGIN_BIN,
            Case::Macvlan | Case::Ipam => "macvlan",
        }
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How plugins are started inside the node's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spawn {
    /// `ip netns exec NODE_NS plugin`, as the harness runs them (it also
    /// makes a mount namespace and remounts /sys: about 1.8 ms here, a
    /// cost of the lab that no real node has, paid by every plugin alike).
    IpNetnsExec,
    /// Started directly from a thread that entered the node's namespace,
    /// as a container runtime on a real node starts them (the default: it
    /// times the plugins, not the lab).
    #[default]
    Setns,
}

impl Spawn {
    /// The option's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Spawn::IpNetnsExec => "ip-netns-exec",
            Spawn::Setns => "setns",
        }
    }
}

impl std::fmt::Display for Spawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Spawn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ip-netns-exec" => Ok(Spawn::IpNetnsExec),
            "setns" => Ok(Spawn::Setns),
            other => Err(format!(
                "`{other}` is not a way to start plugins: ip-netns-exec or setns"
            )),
        }
    }
}

/// The network config of `case` (`host_local_dir`: `host-local`'s
/// `dataDir`).
pub fn case_config(case: Case, host_local_dir: &Path) -> Value {
    match case {
        Case::Vlan => json!({
            "cniVersion": "1.0.0", "name": case.network(), "type": "spur",
            "networkType": "vlan", "vlan": 100,
            "ipam": {"type": "spur", "ippools": [VLAN_POOL]},
        }),
        Case::Macvlan => json!({
            "cniVersion": "1.0.0", "name": case.network(), "type": "macvlan",
            "master": MACVLAN_MASTER, "mode": "bridge",
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": HOST_LOCAL_SUBNET}]],
                "dataDir": host_local_dir,
            },
        }),
        Case::Ipam => json!({
            "cniVersion": "1.0.0", "name": case.network(), "type": "macvlan",
            "master": MACVLAN_MASTER, "mode": "bridge",
            "ipam": {"type": "spur", "ippools": [IPAM_POOL]},
        }),
    }
}

/// The order of the cases in cycle `cycle`: every case once, the first
/// one rotating, so no case always runs right after another.
pub fn order(cycle: usize) -> [Case; 3] {
    let k = cycle % Case::ALL.len();
    [Case::ALL[k], Case::ALL[(k + 1) % 3], Case::ALL[(k + 2) % 3]]
}

/// The nearest-rank `percent` percentile of `sorted` (ascending): the
/// smallest sample such that at least `percent`% of the samples are at
/// most it. `percent` 0 gives the minimum, 100 (and more) the maximum;
/// `None` without samples.
pub fn percentile(sorted: &[Duration], percent: u32) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let p = usize::try_from(percent.min(100)).unwrap_or(100);
    // ceil(p * n / 100), at least 1.
    let rank = (p * n).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// The figures of one series of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// How many samples.
    pub n: usize,
    /// Median (nearest rank).
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The slowest.
    pub max: Duration,
}

impl Stats {
    /// The figures of `samples` (any order); `None` without samples.
    pub fn of(samples: &[Duration]) -> Option<Stats> {
        let mut s = samples.to_vec();
        s.sort_unstable();
        Some(Stats {
            n: s.len(),
            p50: percentile(&s, 50)?,
            p90: percentile(&s, 90)?,
            p99: percentile(&s, 99)?,
            max: percentile(&s, 100)?,
        })
    }
}

/// The ADD and DEL times of one case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Samples {
    /// ADD, process start to exit.
    pub add: Vec<Duration>,
    /// DEL, process start to exit.
    pub del: Vec<Duration>,
}

/// Everything the bench measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchResults {
    /// Counted cycles.
    pub cycles: usize,
    /// Uncounted warm-up cycles.
    pub warmup: usize,
    /// Per case, the plugin calls as the runtime sees them.
    pub cases: BTreeMap<Case, Samples>,
    /// Per case whose calls reach the agent (vlan, ipam), the agent's own
    /// time per request from its log (`ms` of "CNI request served").
    pub agent: BTreeMap<Case, Samples>,
    /// How plugins were started.
    pub spawn: Spawn,
    /// Starting `true` the way plugins are started: what every call pays
    /// before the plugin runs.
    pub spawn_baseline: Vec<Duration>,
    /// The `spur` plugin's STATUS, started the way ADD is: its process and
    /// its round trip to the agent, which does no work for it.
    pub spur_status: Vec<Duration>,
}

/// The numbers of the last line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// A: vlan ADD p50 / macvlan ADD p50.
    pub vlan_add_p50_ratio: f64,
    /// B: vlan ADD p99 / macvlan ADD p99.
    pub vlan_add_p99_ratio: f64,
    /// C: ipam ADD p50 / macvlan ADD p50.
    pub ipam_add_p50_ratio: f64,
    /// D: vlan ADD p50 in ms.
    pub vlan_add_p50_ms: f64,
    /// E: macvlan ADD p50 in ms.
    pub macvlan_add_p50_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Summary {
    /// The summary of `results`.
    pub fn of(results: &BenchResults) -> Result<Summary, BenchError> {
        let add = |c: Case| {
            results
                .cases
                .get(&c)
                .and_then(|s| Stats::of(&s.add))
                .filter(|s| !s.p50.is_zero() && !s.p99.is_zero())
                .ok_or(BenchError::NoSamples(c))
        };
        let (vlan, macvlan, ipam) = (add(Case::Vlan)?, add(Case::Macvlan)?, add(Case::Ipam)?);
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        Ok(Summary {
            vlan_add_p50_ratio: ratio(vlan.p50, macvlan.p50),
            vlan_add_p99_ratio: ratio(vlan.p99, macvlan.p99),
            ipam_add_p50_ratio: ratio(ipam.p50, macvlan.p50),
            vlan_add_p50_ms: ms(vlan.p50),
            macvlan_add_p50_ms: ms(macvlan.p50),
        })
    }

    /// The bench's last line, exactly.
    pub fn line(&self) -> String {
        format!(
            "cni-bench vlan_add_p50_ratio={:.2} vlan_add_p99_ratio={:.2} ipam_add_p50_ratio={:.2} \
             vlan_add_p50_ms={:.2} macvlan_add_p50_ms={:.2}",
            self.vlan_add_p50_ratio,
            self.vlan_add_p99_ratio,
            self.ipam_add_p50_ratio,
            self.vlan_add_p50_ms,
            self.macvlan_add_p50_ms
        )
    }

    /// Each target of [`TARGETS`] as (key, value reached, target, met),
    /// judged on the value as printed (2 decimals).
    pub fn targets(&self) -> Vec<(&'static str, f64, f64, bool)> {
        let values = [
            self.vlan_add_p50_ratio,
            self.vlan_add_p99_ratio,
            self.ipam_add_p50_ratio,
        ];
        TARGETS
            .iter()
            .zip(values)
            .map(|(&(name, target), v)| (name, v, target, (v * 100.0).round() <= target * 100.0))
            .collect()
    }
}

fn stats_row(out: &mut String, label: &str, verb: &str, samples: &[Duration]) {
    match Stats::of(samples) {
        Some(s) => {
            let _ = writeln!(
                out,
                "{label:<16} {verb:<4} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                s.n,
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max)
            );
        }
        None => {
            let _ = writeln!(out, "{label:<16} {verb:<4}     0 (no samples)");
        }
    }
}

/// The bench's output: the table, the agent's share, the baseline, the
/// targets, and [`Summary::line`] last.
pub fn render(results: &BenchResults, summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "CNI latency, {} cycles (after {} warm-up), cases interleaved, plugins started with {}; \
         ms, nearest rank:",
        results.cycles,
        results.warmup,
        match results.spawn {
            Spawn::IpNetnsExec => "`ip netns exec NODE_NS`",
            Spawn::Setns => "a thread in the node's namespace (no wrapper)",
        }
    );
    for c in Case::ALL {
        let _ = writeln!(out, "  {:<8} {}", c.name(), c.describe());
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<4} {:>5} {:>8} {:>8} {:>8} {:>8}",
        "case", "verb", "n", "p50", "p90", "p99", "max"
    );
    for (c, s) in &results.cases {
        stats_row(&mut out, c.name(), "ADD", &s.add);
        stats_row(&mut out, c.name(), "DEL", &s.del);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Where the time goes: starting `true` as plugins are started; spur's STATUS (plugin \
         process and agent round trip, no work); the agent's own time per request (its log):"
    );
    stats_row(&mut out, "start `true`", "-", &results.spawn_baseline);
    stats_row(&mut out, "spur STATUS", "-", &results.spur_status);
    for (c, s) in &results.agent {
        let label = format!("{} (agent)", c.name());
        stats_row(&mut out, &label, "ADD", &s.add);
        stats_row(&mut out, &label, "DEL", &s.del);
    }
    let _ = writeln!(out);
    let targets: Vec<String> = summary
        .targets()
        .iter()
        .map(|(name, v, t, ok)| {
            format!(
                "{name} {v:.2} {} {t:.2}",
                if *ok { "<=" } else { "> (MISSED)" }
            )
        })
        .collect();
    let _ = writeln!(out, "targets: {}", targets.join(", "));
    let _ = writeln!(out, "{}", summary.line());
    out
}

/// One request the agent served, from its log.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRequest {
    /// `ADD`, `DEL`, ...
    pub command: String,
    /// The container id.
    pub container: String,
    /// How long the agent took.
    pub elapsed: Duration,
}

/// Reads one line of the agent's log: `Some` for a "CNI request served"
/// line (fields `command=`, `container="..."`, `ms=`).
pub fn parse_agent_line(line: &str) -> Option<AgentRequest> {
    let (_, fields) = line.split_once("CNI request served")?;
    let mut command = None;
    let mut container = None;
    let mut elapsed = None;
    for token in fields.split_whitespace() {
        let Some((k, v)) = token.split_once('=') else {
            continue;
        };
        let v = v.trim_matches('"');
        match k {
            "command" => command = Some(v.to_string()),
            "container" => container = Some(v.to_string()),
            "ms" => {
                elapsed = v
                    .parse::<f64>()
                    .ok()
                    .filter(|m| m.is_finite() && *m >= 0.0)
                    .map(|m| Duration::from_secs_f64(m / 1e3))
            }
            _ => {}
        }
    }
    Some(AgentRequest {
        command: command?,
        container: container?,
        elapsed: elapsed?,
    })
}

/// The agent's time for the counted calls of each case: `log` is the
/// agent's log, `containers` the counted container ids of each case.
pub fn agent_samples(
    log: &str,
    containers: &BTreeMap<Case, BTreeSet<String>>,
) -> BTreeMap<Case, Samples> {
    let mut out: BTreeMap<Case, Samples> = BTreeMap::new();
    for r in log.lines().filter_map(parse_agent_line) {
        let Some(case) = containers
            .iter()
            .find(|(_, ids)| ids.contains(&r.container))
            .map(|(c, _)| *c)
        else {
            continue;
        };
        let s = out.entry(case).or_default();
        match r.command.as_str() {
            "ADD" => s.add.push(r.elapsed),
            "DEL" => s.del.push(r.elapsed),
            _ => {}
        }
    }
    out
}

/// The reservations `host-local` still holds: the names in its network
/// directory that are addresses (it also keeps `lock` and
/// `last_reserved_ip.N`).
pub fn host_local_reservations(names: &[String]) -> Vec<String> {
    let mut v: Vec<String> = names
        .iter()
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .cloned()
        .collect();
    v.sort();
    v
}

/// What `spur-hil bench-cni` was asked to do.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Counted cycles.
    pub cycles: usize,
    /// Uncounted warm-up cycles.
    pub warmup: usize,
    /// Where `spur-agent` and `spur` are.
    pub bin_dir: PathBuf,
    /// Where lab directories live.
    pub root: PathBuf,
    /// `RUST_LOG` of the agent (its `ms` per request is logged at info).
    pub agent_log_filter: String,
    /// How plugins are started in the node's namespace.
    pub spawn: Spawn,
    /// Where to copy the agent's log before the lab goes (`None`: not
    /// kept).
    pub keep_agent_log: Option<PathBuf>,
}

/// What the bench produced.
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    /// The samples.
    pub results: BenchResults,
    /// The last line's numbers.
    pub summary: Summary,
    /// Problems of the lab's teardown (the numbers stand).
    pub cleanup_problems: Vec<String>,
}

/// Runs the bench (see the module documentation). Progress goes to
/// stderr through `progress`; the caller prints [`render`].
pub fn bench_cni(opts: &BenchOptions, progress: &Progress) -> Result<BenchOutcome, BenchError> {
    if opts.cycles == 0 {
        return Err(BenchError::NoCycles);
    }
    let spec = TestbedSpec::parse(Path::new("bench-cni testbed"), TESTBED).map_err(|e| {
        BenchError::BuiltIn {
            what: "testbed",
            reason: e
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }
    })?;
    let manifests = parse_manifests(Path::new("bench-cni manifests"), MANIFESTS).map_err(|e| {
        BenchError::BuiltIn {
            what: "manifests",
            reason: e
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }
    })?;
    // Dropped last: the runtime (the cluster's tasks and the signal
    // handlers live on it).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let cleanup = Cleanup::new();
    let interrupts =
        Interrupts::install(rt.handle(), cleanup.clone()).map_err(BenchError::Runtime)?;
    let lab_opts = LabOptions {
        root: opts.root.clone(),
        bin_dir: opts.bin_dir.clone(),
        real_nics: Vec::new(),
        real_pfs: Vec::new(),
    };
    let lab = Lab::up(&spec, &lab_opts, cleanup, progress)?;
    let result = with_lab(&lab, &rt, &manifests, opts, &interrupts, progress);
    let down = Instant::now();
    let cleanup_problems = lab.teardown();
    for p in &cleanup_problems {
        progress.say(format!("cleanup: {p}"));
    }
    progress.say(format!("lab down in {}", secs(down.elapsed())));
    if interrupts.interrupted() {
        return Err(BenchError::Interrupted);
    }
    let results = result?;
    let summary = Summary::of(&results)?;
    Ok(BenchOutcome {
        results,
        summary,
        cleanup_problems,
    })
}

/// The cluster, the agent and the cycles on a lab that is up.
fn with_lab(
    lab: &Lab,
    rt: &tokio::runtime::Runtime,
    manifests: &[spur_testbed::Manifest],
    opts: &BenchOptions,
    interrupts: &Interrupts,
    progress: &Progress,
) -> Result<BenchResults, BenchError> {
    let node = lab
        .node(NODE)
        .ok_or_else(|| LabError::Unsupported(format!("the bench lab has no node {NODE}")))?;
    let cluster = rt.block_on(Cluster::start(
        IpAddr::V4(lab.plan.mgmt.host()),
        &lab.plan.kubeconfig,
    ))?;
    progress.say(format!(
        "API server at {} (KUBECONFIG={})",
        cluster.url,
        cluster.kubeconfig.display()
    ));
    let info = NodeInfo {
        name: node.name.clone(),
        pod_cidr: node.pod_cidr,
        address: IpAddr::V4(node.mgmt_ip),
    };
    rt.block_on(api::create_nodes(&cluster.client, &[info]))?;
    let applied = rt.block_on(api::apply_manifests(
        &cluster.client,
        manifests,
        std::slice::from_ref(&node.name),
    ))?;
    if let Some(r) = applied.rejected.first() {
        return Err(BenchError::Refused {
            object: r.object.to_string(),
            reason: r.reason.clone(),
        });
    }
    let pod_ref = PodRef::new(POD_NAMESPACE, POD_NAME);
    let pod = rt.block_on(api::get_pod(&cluster.client, &pod_ref))?;
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    let config = crate::run::agent_config_text(manifests, &applied.rejected);
    lab.start_agent(node, &config, &cluster.kubeconfig, &opts.agent_log_filter)?;
    let took = lab.wait_agent_ready(node)?;
    progress.say(format!("{}: spur-agent ready ({})", node.name, secs(took)));
    check_interrupted(interrupts)?;

    let bench = Bench {
        node,
        spawn: opts.spawn,
        cni_bin_dir: lab.plan.cni_bin_dir.clone(),
        host_local_dir: node.dir.join("bench-host-local"),
        args: format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={POD_NAME};\
             K8S_POD_INFRA_CONTAINER_ID={{}};K8S_POD_UID={pod_uid}"
        ),
    };
    let mut results = BenchResults {
        cycles: opts.cycles,
        warmup: opts.warmup,
        spawn: opts.spawn,
        ..BenchResults::default()
    };
    let mut counted: BTreeMap<Case, BTreeSet<String>> = BTreeMap::new();
    let total = opts.warmup + opts.cycles;
    let start = Instant::now();
    for cycle in 0..total {
        check_interrupted(interrupts)?;
        let counts = cycle >= opts.warmup;
        for case in order(cycle) {
            let (container_id, add, del) = bench.cycle(cycle, case)?;
            if counts {
                let s = results.cases.entry(case).or_default();
                s.add.push(add);
                s.del.push(del);
                counted.entry(case).or_default().insert(container_id);
            }
        }
        let base = bench.start_true(cycle)?;
        let status = bench.spur_status(cycle)?;
        if counts {
            results.spawn_baseline.push(base);
            results.spur_status.push(status);
        }
        if (cycle + 1) % 50 == 0 || cycle + 1 == total {
            progress.say(format!(
                "{}/{} cycles ({} warm-up) in {}",
                cycle + 1,
                total,
                opts.warmup,
                secs(start.elapsed())
            ));
        }
    }
    let leaks = bench.leaks(rt, &cluster.client, &pod_ref);
    // The agent's own time, before the lab (and its log) goes.
    counted.remove(&Case::Macvlan);
    match std::fs::read_to_string(&node.agent_log) {
        Ok(log) => results.agent = agent_samples(&log, &counted),
        Err(e) => progress.say(format!(
            "warning: cannot read the agent's log {}: {e}",
            node.agent_log.display()
        )),
    }
    if let Some(to) = &opts.keep_agent_log {
        match std::fs::copy(&node.agent_log, to) {
            Ok(_) => progress.say(format!("the agent's log is kept in {}", to.display())),
            Err(e) => progress.say(format!(
                "warning: cannot copy the agent's log {} to {}: {e}",
                node.agent_log.display(),
                to.display()
            )),
        }
    }
    lab.check_alive(&crate::lab::agent_what(&node.name))?;
    if !leaks.is_empty() {
        return Err(BenchError::Leaks(leaks));
    }
    progress.say("every DEL left nothing behind");
    Ok(results)
}

fn check_interrupted(interrupts: &Interrupts) -> Result<(), BenchError> {
    if interrupts.interrupted() {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}

/// What every cycle needs.
struct Bench<'a> {
    node: &'a NodeLab,
    spawn: Spawn,
    cni_bin_dir: PathBuf,
    host_local_dir: PathBuf,
    /// `CNI_ARGS` with `{}` for the container id.
    args: String,
}

impl Bench<'_> {
    fn env(&self, command: CniCommand, container_id: &str, netns: &str) -> CniEnv {
        CniEnv {
            command,
            container_id: container_id.to_string(),
            netns: crate::probe::sys::netns_path(netns).display().to_string(),
            ifname: IFNAME.to_string(),
            args: self.args.replace("{}", container_id),
            path: self.cni_bin_dir.clone(),
            extra: vec![(
                SPUR_CNI_SOCKET_ENV.to_string(),
                self.node.cni_socket.display().to_string(),
            )],
            run_in: match self.spawn {
                Spawn::IpNetnsExec => Some(self.node.netns.clone()),
                Spawn::Setns => None,
            },
            timeout: CALL_TIMEOUT,
        }
    }

    /// Runs `plugin` with `env` and `config` in the node's namespace, the
    /// way [`Spawn`] says; the time is the plugin process's (a thread
    /// entering the namespace is not counted).
    fn invoke(
        &self,
        cycle: usize,
        plugin: &Path,
        env: CniEnv,
        config: Value,
    ) -> Result<Result<(Value, Duration), CniCallError>, BenchError> {
        match self.spawn {
            Spawn::IpNetnsExec => Ok(invoke(plugin, &env, &config)),
            Spawn::Setns => {
                let what = format!("CNI {} of {}", env.command, plugin.display());
                let plugin = plugin.to_path_buf();
                probe::sys::in_netns(&self.node.netns, move || Ok(invoke(&plugin, &env, &config)))
                    .map_err(|e| BenchError::Spawn {
                        cycle,
                        what,
                        netns: self.node.netns.clone(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// One case of one cycle: a fresh namespace and container id, ADD and
    /// DEL timed, the namespace removed. Returns the container id and the
    /// two times.
    fn cycle(&self, cycle: usize, case: Case) -> Result<(String, Duration, Duration), BenchError> {
        let netns = format!("{}-b{}-{cycle}", self.node.netns, case.name());
        let container_id = kubelet::random_hex(64);
        kubelet::create_netns(&netns).map_err(|reason| BenchError::Netns {
            cycle,
            case,
            reason,
        })?;
        let timed = self.add_del(cycle, case, &container_id, &netns);
        let removed = cleanup::delete_netns(&netns);
        let (add, del) = timed?;
        removed.map_err(|reason| BenchError::Netns {
            cycle,
            case,
            reason,
        })?;
        Ok((container_id, add, del))
    }

    fn add_del(
        &self,
        cycle: usize,
        case: Case,
        container_id: &str,
        netns: &str,
    ) -> Result<(Duration, Duration), BenchError> {
        let conf = case_config(case, &self.host_local_dir);
        let list = NetConfList::from_config(&conf, case.network()).map_err(|reason| {
            BenchError::BuiltIn {
                what: "network config",
                reason,
            }
        })?;
        let plugin = self.cni_bin_dir.join(case.plugin());
        let fail = |command, source| BenchError::Call {
            cycle,
            case,
            command,
            container_id: container_id.to_string(),
            source,
        };
        let add_conf = plugin_config(&list, &conf, None, &Map::new());
        let env = self.env(CniCommand::Add, container_id, netns);
        let (result, add) = self
            .invoke(cycle, &plugin, env, add_conf)?
            .map_err(|e| fail(CniCommand::Add, e))?;
        // As libcni: DEL gets the ADD result as prevResult (CNI >= 0.4.0).
        let del_conf = plugin_config(&list, &conf, Some(&result), &Map::new());
        let env = self.env(CniCommand::Del, container_id, netns);
        let (_, del) = self
            .invoke(cycle, &plugin, env, del_conf)?
            .map_err(|e| fail(CniCommand::Del, e))?;
        Ok((add, del))
    }

    /// How long starting `true` takes, the way plugins are started.
    fn start_true(&self, cycle: usize) -> Result<Duration, BenchError> {
        let fail = |reason: String| BenchError::Spawn {
            cycle,
            what: "`true`".to_string(),
            netns: self.node.netns.clone(),
            reason,
        };
        let run = |program: &str, args: &[&str]| {
            let start = Instant::now();
            let status = std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            (status, start.elapsed())
        };
        let (status, took) = match self.spawn {
            Spawn::IpNetnsExec => run("ip", &["netns", "exec", self.node.netns.as_str(), "true"]),
            Spawn::Setns => probe::sys::in_netns(&self.node.netns, move || Ok(run("true", &[])))
                .map_err(|e| fail(e.to_string()))?,
        };
        let status = status.map_err(|e| fail(e.to_string()))?;
        if !status.success() {
            return Err(fail(status.to_string()));
        }
        Ok(took)
    }

    /// How long the `spur` plugin's STATUS takes, started as ADD is.
    fn spur_status(&self, cycle: usize) -> Result<Duration, BenchError> {
        let plugin = self.cni_bin_dir.join(crate::lab::PLUGIN_BIN);
        // STATUS names no container, namespace or interface.
        let env = CniEnv {
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            args: String::new(),
            ..self.env(CniCommand::Status, "", "")
        };
        let config = json!({"cniVersion": "1.1.0", "name": "spur", "type": "spur"});
        let (_, took) = self
            .invoke(cycle, &plugin, env, config)?
            .map_err(|source| BenchError::Call {
                cycle,
                case: Case::Vlan,
                command: CniCommand::Status,
                container_id: String::new(),
                source,
            })?;
        Ok(took)
    }

    /// What every DEL should have removed and is still there.
    fn leaks(
        &self,
        rt: &tokio::runtime::Runtime,
        client: &kube::Client,
        pod: &PodRef,
    ) -> Vec<String> {
        let mut leaks = Vec::new();
        let ours: BTreeSet<PodRef> = [pod.clone()].into();
        match rt.block_on(api::leaked_allocations(client, &ours)) {
            Ok(l) => leaks.extend(l),
            Err(e) => leaks.push(format!("the IPAM leak check failed: {e}")),
        }
        match probe::access_ports(&self.node.netns, &self.node.ovs.db_socket()) {
            Ok(ports) => leaks.extend(ports.iter().map(|p| {
                format!(
                    "node {}'s OVS still has access port {}",
                    self.node.name, p.name
                )
            })),
            Err(e) => leaks.push(format!("the access-port leak check failed: {e}")),
        }
        let dir = self.host_local_dir.join(Case::Macvlan.network());
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                let names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                let held = host_local_reservations(&names);
                if !held.is_empty() {
                    leaks.push(format!(
                        "host-local still reserves {} in {}",
                        held.join(", "),
                        dir.display()
                    ));
                }
            }
            Err(e) => leaks.push(format!(
                "cannot read host-local's directory {}: {e}",
                dir.display()
            )),
        }
        leaks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<Duration> = (1..=200).map(d).collect();
        assert_eq!(percentile(&s, 50), Some(d(100)));
        assert_eq!(percentile(&s, 90), Some(d(180)));
        assert_eq!(percentile(&s, 99), Some(d(198)));
        assert_eq!(percentile(&s, 100), Some(d(200)));
        assert_eq!(percentile(&s, 0), Some(d(1)));
        assert_eq!(percentile(&s, 250), Some(d(200)));
        // The textbook example: 15, 20, 35, 40, 50.
        let s = [d(15), d(20), d(35), d(40), d(50)];
        assert_eq!(percentile(&s, 5), Some(d(15)));
        assert_eq!(percentile(&s, 30), Some(d(20)));
        assert_eq!(percentile(&s, 40), Some(d(20)));
        assert_eq!(percentile(&s, 50), Some(d(35)));
        assert_eq!(percentile(&s, 100), Some(d(50)));
        assert_eq!(percentile(&[d(7)], 99), Some(d(7)));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn stats_sort_first() {
        let s = Stats::of(&[d(30), d(10), d(20), d(40)]).unwrap();
        assert_eq!(
            (s.n, s.p50, s.p90, s.p99, s.max),
            (4, d(20), d(40), d(40), d(40))
        );
        assert_eq!(Stats::of(&[]), None);
    }

    #[test]
    fn every_cycle_runs_every_case_with_a_rotating_first() {
        assert_eq!(order(0), [Case::Vlan, Case::Macvlan, Case::Ipam]);
        assert_eq!(order(1), [Case::Macvlan, Case::Ipam, Case::Vlan]);
        assert_eq!(order(2), [Case::Ipam, Case::Vlan, Case::Macvlan]);
        assert_eq!(order(3), order(0));
    }

    fn results(vlan: &[u64], macvlan: &[u64], ipam: &[u64]) -> BenchResults {
        let samples = |v: &[u64]| Samples {
            add: v.iter().copied().map(d).collect(),
            del: v.iter().map(|x| d(x * 2)).collect(),
        };
        BenchResults {
            cycles: vlan.len(),
            warmup: 0,
            cases: [
                (Case::Vlan, samples(vlan)),
                (Case::Macvlan, samples(macvlan)),
                (Case::Ipam, samples(ipam)),
            ]
            .into(),
            ..BenchResults::default()
        }
    }

    #[test]
    fn the_last_line_is_exact() {
        let r = results(&[5, 6, 40], &[10, 12, 20], &[9, 11, 30]);
        let s = Summary::of(&r).unwrap();
        assert_eq!(
            s.line(),
            "cni-bench vlan_add_p50_ratio=0.50 vlan_add_p99_ratio=2.00 ipam_add_p50_ratio=0.92 \
             vlan_add_p50_ms=6.00 macvlan_add_p50_ms=12.00"
        );
        let text = render(&r, &s);
        assert_eq!(text.lines().last(), Some(s.line().as_str()));
        assert!(
            text.contains("vlan_add_p99_ratio 2.00 > (MISSED) 1.00"),
            "{text}"
        );
        assert!(text.contains("vlan_add_p50_ratio 0.50 <= 0.70"), "{text}");
        // p50 of macvlan DEL: 24 ms.
        assert!(
            text.lines()
                .any(|l| l.starts_with("macvlan") && l.contains("DEL") && l.contains("24.00")),
            "{text}"
        );
        let targets = s.targets();
        assert_eq!(
            targets.iter().map(|t| t.3).collect::<Vec<_>>(),
            [true, false, true]
        );
    }

    #[test]
    fn targets_are_judged_as_printed() {
        let s = Summary {
            vlan_add_p50_ratio: 0.704,
            vlan_add_p99_ratio: 1.006,
            ipam_add_p50_ratio: 1.004,
            vlan_add_p50_ms: 1.0,
            macvlan_add_p50_ms: 1.0,
        };
        assert_eq!(
            s.targets().iter().map(|t| t.3).collect::<Vec<_>>(),
            [true, false, true]
        );
    }

    #[test]
    fn no_samples_no_ratio() {
        let mut r = results(&[5], &[10], &[9]);
        r.cases.remove(&Case::Macvlan);
        assert!(matches!(
            Summary::of(&r),
            Err(BenchError::NoSamples(Case::Macvlan))
        ));
    }

    #[test]
    fn configs_are_those_of_the_issue() {
        let v = case_config(Case::Vlan, Path::new("/x"));
        assert_eq!(
            v,
            json!({"cniVersion":"1.0.0","name":"bench-vlan","type":"spur","networkType":"vlan",
                   "vlan":100,"ipam":{"type":"spur","ippools":["bench-pool"]}})
        );
        let m = case_config(Case::Macvlan, Path::new("/lab/bench/host-local"));
        assert_eq!(m["type"], "macvlan");
        assert_eq!(m["master"], "eth2");
        assert_eq!(m["mode"], "bridge");
        assert_eq!(m["ipam"]["type"], "host-local");
        assert_eq!(m["ipam"]["dataDir"], "/lab/bench/host-local");
        let i = case_config(Case::Ipam, Path::new("/x"));
        assert_eq!(
            i["ipam"],
            json!({"type": "spur", "ippools": ["bench-pool-2"]})
        );
        assert_eq!(i["master"], "eth2");
    }

    #[test]
    fn built_in_testbed_and_manifests_load() {
        let spec = TestbedSpec::parse(Path::new("t"), TESTBED).unwrap();
        assert_eq!(spec.nodes[0].name, NODE);
        assert_eq!(spec.nodes[0].nics, [UPLINK, MACVLAN_MASTER]);
        let ms = parse_manifests(Path::new("m"), MANIFESTS).unwrap();
        let config = crate::run::agent_config_text(&ms, &[]);
        let config = spur_core::config::AgentConfig::from_yaml(&config).unwrap();
        let br = &config.secondary_network.ovs_bridges[0];
        assert_eq!(br.bridge_name, BRIDGE);
        assert_eq!(br.physical_interfaces, [UPLINK]);
        let pools: Vec<&str> = ms
            .iter()
            .filter(|m| m.is_ippool())
            .map(|m| m.name())
            .collect();
        assert_eq!(pools, [VLAN_POOL, IPAM_POOL]);
        let pods: Vec<&str> = ms
            .iter()
            .filter(|m| m.is_builtin("Pod"))
            .map(|m| m.name())
            .collect();
        assert_eq!(pods, [POD_NAME]);
    }

    #[test]
    fn agent_log_lines_are_read() {
        let line = "2025-06-01T10:00:00.123456Z  INFO spur_node::agent::cni: CNI request served \
                    command=ADD container=\"abc123\" pod=Some(\"default/bench-pod\") ms=3.25";
        let r = parse_agent_line(line).unwrap();
        assert_eq!(r.command, "ADD");
        assert_eq!(r.container, "abc123");
        assert_eq!(r.elapsed, Duration::from_micros(3250));
        assert_eq!(
            parse_agent_line("INFO CNI request failed command=ADD"),
            None
        );
        assert_eq!(
            parse_agent_line("CNI request served command=ADD ms=1"),
            None
        );
        let log = format!(
            "{line}\n{}\n{}\nnoise\n",
            line.replace("ADD", "DEL").replace("3.25", "7.5"),
            line.replace("abc123", "other")
        );
        let ids: BTreeMap<Case, BTreeSet<String>> =
            [(Case::Vlan, ["abc123".to_string()].into())].into();
        let s = agent_samples(&log, &ids);
        assert_eq!(s[&Case::Vlan].add, [Duration::from_micros(3250)]);
        assert_eq!(s[&Case::Vlan].del, [Duration::from_micros(7500)]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn host_local_reservations_are_the_address_files() {
        let names: Vec<String> = [
            "lock",
            "last_reserved_ip.0",
            "10.22.0.7",
            "fd00::5",
            "10.22.0.2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            host_local_reservations(&names),
            ["10.22.0.2", "10.22.0.7", "fd00::5"]
        );
    }
}
