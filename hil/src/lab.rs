//! The lab: a testbed's topology made real on this host.
//!
//! For a [`TestbedSpec`] the lab creates, under a fresh lab id
//! ([`crate::names`]):
//!
//! - a work directory `/run/spur-hil/<lab>/` (OVS databases, sockets and
//!   logs, agent configs and logs, the CNI bin dir, the kubeconfig);
//! - a host Linux bridge for the management network (a /24 of
//!   100.64.0.0/10 no host network overlaps), where the API server listens;
//! - per node, a network namespace with its own ovsdb-server and
//!   ovs-vswitchd, a management link `mgmt0` into the bridge (the agent
//!   reaches the API through it and must never touch it), and the node's
//!   NICs: veths whose other end is in the fabric namespace (TX checksum
//!   offload off on both ends), or real host interfaces moved in
//!   (`--real-nic`);
//! - per node with `sriov:`, its emulated SR-IOV NICs (a sysfs tree, an
//!   OVS bridge per PF as the embedded switch, a veth pair per VF, an
//!   uplink into the fabric) or real ones moved in (`--sriov-pf`): see
//!   [`crate::sriov`];
//! - a fabric namespace with its own OVS daemons and one OVS bridge per
//!   segment, each NIC's fabric end a port of its segment's bridge,
//!   trunking every VLAN or, with `allowedVLANs`, only those (and
//!   untagged frames);
//! - the CNI bin dir: Debian's reference plugins and `spur`.
//!
//! Everything is registered in the [`Cleanup`] registry the moment it
//! exists and is removed in reverse order when the lab is dropped (or on a
//! signal). The lab also starts each node's `spur-agent` and waits until
//! the `spur` plugin says it is ready.
//!
//! What does not live here: the API server, manifests, Pods and the report
//! ([`crate::run`]), CNI calls ([`crate::kubelet`]) and measurements
//! ([`crate::probe`]).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde_json::Value;
use spur_testbed::TestbedSpec;

use crate::cleanup::{self, Cleanup, MovedNic, Undo, OWNER_FILE, REAL_NICS_FILE};
use crate::cmd::{find_tool, Cmd, CmdError};
use crate::names::{self, LabId, MgmtNet, MGMT_IFNAME};
use crate::progress::{secs, Progress};
use crate::sriov::{self, NodeSriov, PfPlan, RealPfMap};

/// Where lab directories live.
pub const DEFAULT_ROOT: &str = "/run/spur-hil";
/// The agent's executable name.
pub const AGENT_BIN: &str = "spur-agent";
/// The CNI plugin's executable name.
pub const PLUGIN_BIN: &str = "spur";
/// The controller's executable name.
pub const CONTROLLER_BIN: &str = "spur-controller";
/// How the lab names its controller process (logs, errors, cleanup).
pub const CONTROLLER_WHAT: &str = "spur-controller";
/// How long the controller has to serve its admission webhook.
pub const CONTROLLER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Open vSwitch's database schema.
pub const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// Debian's CNI reference plugins.
pub const CNI_PLUGINS_DIR: &str = "/usr/lib/cni";
/// How long an agent has to become ready.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an OVS daemon has to come up.
const OVS_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The MTU of an emulated NIC's representors and uplink: jumbo frames
/// pass, as on a NIC whose PF allows them (a VF's own MTU is the agent's).
const EMULATED_NIC_MTU: &str = "9216";
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(20);

/// Why a lab cannot be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The harness does not run as root.
    #[error(
        "spur-hil must run as root: it creates network namespaces, veths, a host bridge and \
         Open vSwitch daemons. Run it as root, e.g. `sudo {command}`"
    )]
    NotRoot {
        /// The command line to repeat with sudo.
        command: String,
    },
    /// Tools or files the lab needs are missing.
    #[error("missing on this host: {}. `make demo` installs them", .0.join(", "))]
    Missing(Vec<String>),
    /// The lab's own binaries are missing.
    #[error(
        "{name} not found in {dir}: build the workspace's binaries (`cargo build --bins`) or \
         pass --bin-dir DIR"
    )]
    MissingBinary {
        /// The binary.
        name: String,
        /// Where it was looked for.
        dir: String,
    },
    /// The testbed asks for something this lab cannot build.
    #[error("{0}")]
    Unsupported(String),
    /// A `--real-nic` mapping cannot be used.
    #[error("--real-nic {spec}: {reason}")]
    RealNic {
        /// The mapping as given.
        spec: String,
        /// Why not.
        reason: String,
    },
    /// A `--sriov-pf` mapping cannot be used.
    #[error("--sriov-pf {spec}: {reason}")]
    RealPf {
        /// The mapping as given.
        spec: String,
        /// Why not.
        reason: String,
    },
    /// A command failed.
    #[error(transparent)]
    Command(#[from] CmdError),
    /// A file or directory cannot be used.
    #[error("{doing}: {}: {source}", .path.display())]
    Io {
        /// What the lab was doing.
        doing: String,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Something did not become ready in time.
    #[error("{what} is not ready after {}: {last}", secs(*.waited))]
    NotReady {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// The last answer seen.
        last: String,
    },
    /// A process the lab started exited.
    #[error("{what} exited ({status}); the end of its log {}:\n{tail}", .log.display())]
    Exited {
        /// The process.
        what: String,
        /// How it ended.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
}

fn io_err(doing: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    let doing = doing.into();
    let path = path.to_path_buf();
    move |source| LabError::Io {
        doing,
        path,
        source,
    }
}

/// `--real-nic NODE/NIC=HOSTIF`: a testbed NIC backed by a real host
/// interface, moved into the node's namespace under the testbed's name
/// and moved back, under its own name, on cleanup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealNicMap {
    /// The testbed node.
    pub node: String,
    /// The testbed NIC of that node.
    pub nic: String,
    /// The host interface.
    pub host: String,
}

impl FromStr for RealNicMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            |why: &str| format!("`{s}` is not NODE/NIC=HOSTIF (e.g. node-a/eth1=enp3s0f0): {why}");
        let (port, host) = s.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (node, nic) = port.split_once('/').ok_or_else(|| bad("no `/`"))?;
        if node.is_empty() || nic.is_empty() || host.is_empty() {
            return Err(bad("a part is empty"));
        }
        names::check_ifname(nic).map_err(|e| bad(&e))?;
        names::check_ifname(host).map_err(|e| bad(&e))?;
        Ok(RealNicMap {
            node: node.into(),
            nic: nic.into(),
            host: host.into(),
        })
    }
}

impl fmt::Display for RealNicMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}={}", self.node, self.nic, self.host)
    }
}

/// The OVS datapath the lab's switches use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// The kernel module (`openvswitch`).
    System,
    /// The userspace datapath.
    Netdev,
}

impl Datapath {
    /// The value of `datapath_type` and of the agent's `--datapath`.
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::System => "system",
            Datapath::Netdev => "netdev",
        }
    }

    /// The kernel datapath when the host has the openvswitch module
    /// (loaded, or loadable with modprobe), else the userspace one.
    pub fn detect() -> Datapath {
        let loaded = || Path::new("/sys/module/openvswitch").exists();
        if loaded() {
            return Datapath::System;
        }
        if find_tool("modprobe").is_some()
            && Cmd::new("modprobe", "loading the openvswitch kernel module")
                .args(["-q", "openvswitch"])
                .run()
                .is_ok()
            && loaded()
        {
            return Datapath::System;
        }
        Datapath::Netdev
    }
}

/// Options of a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Where lab directories live ([`DEFAULT_ROOT`]).
    pub root: PathBuf,
    /// Where `spur-agent` and `spur` are.
    pub bin_dir: PathBuf,
    /// Testbed NICs backed by real host interfaces.
    pub real_nics: Vec<RealNicMap>,
    /// Testbed SR-IOV PFs backed by real host PFs (`--sriov-pf`).
    pub real_pfs: Vec<RealPfMap>,
}

/// One Open vSwitch instance (ovsdb-server + ovs-vswitchd) of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsInstance {
    /// Whose it is: a node name, or `fabric`.
    pub owner: String,
    /// The namespace it runs in.
    pub netns: String,
    /// OVS_RUNDIR, OVS_LOGDIR and OVS_DBDIR.
    pub dir: PathBuf,
}

impl OvsInstance {
    /// The database's unix socket (`--ovsdb` of the agent).
    pub fn db_socket(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    /// ovs-vswitchd's control socket (`ovs-appctl --target`).
    pub fn vswitchd_ctl(&self) -> PathBuf {
        self.dir.join("ovs-vswitchd.ctl")
    }

    /// ovsdb-server's control socket.
    pub fn ovsdb_ctl(&self) -> PathBuf {
        self.dir.join("ovsdb-server.ctl")
    }

    /// `ovs-vsctl` against this instance's database.
    pub fn vsctl(&self, doing: impl Into<String>) -> Cmd {
        Cmd::new("ovs-vsctl", doing).args([
            format!("--db=unix:{}", self.db_socket().display()),
            "--timeout=10".to_string(),
        ])
    }

    fn env(&self, cmd: Cmd) -> Cmd {
        let d = self.dir.display().to_string();
        cmd.env("OVS_RUNDIR", d.clone())
            .env("OVS_LOGDIR", d.clone())
            .env("OVS_DBDIR", d)
    }
}

/// One NIC of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlan {
    /// Its name in the node (the testbed's).
    pub name: String,
    /// The fabric end's name (veth NICs).
    pub fabric_port: String,
    /// The host interface backing it (`--real-nic`), instead of a veth.
    pub real: Option<String>,
}

/// One node of the lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLab {
    /// The testbed node's name.
    pub name: String,
    /// Its position in `testbed.yaml`.
    pub index: usize,
    /// Its network namespace.
    pub netns: String,
    /// Its directory in the lab directory.
    pub dir: PathBuf,
    /// Its Open vSwitch.
    pub ovs: OvsInstance,
    /// Its management address.
    pub mgmt_ip: Ipv4Addr,
    /// The host end of its management link.
    pub mgmt_host_end: String,
    /// Its Pod CIDR (`spec.podCIDR` of its Node).
    pub pod_cidr: IpNet,
    /// The agent's CNI socket.
    pub cni_socket: PathBuf,
    /// The agent's config file.
    pub agent_conf: PathBuf,
    /// The agent's log file.
    pub agent_log: PathBuf,
    /// Its NICs.
    pub nics: Vec<NicPlan>,
    /// Its SR-IOV PFs.
    pub sriov: Vec<PfPlan>,
    /// The root of its emulated sysfs tree (the agent's `--sysfs-root`;
    /// `/` when its PFs are real).
    pub sysfs_root: PathBuf,
    /// The PodResources socket the kubelet stand-in serves for it (the
    /// agent's `--pod-resources-socket`).
    pub pod_resources_socket: PathBuf,
}

impl NodeLab {
    /// True when its PFs are emulated NICs (it has PFs, none real).
    pub fn emulated_sriov(&self) -> bool {
        !self.sriov.is_empty() && self.sriov.iter().all(|p| p.real.is_none())
    }
}

/// One fabric segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPlan {
    /// The testbed's name for it.
    pub name: String,
    /// Its OVS bridge in the fabric namespace.
    pub bridge: String,
    /// Its ports: (fabric port name, `NODE/NIC`).
    pub ports: Vec<(String, String)>,
    /// The VLANs its ports trunk (0: untagged); `None` for all.
    pub trunks: Option<Vec<u16>>,
}

/// What a lab consists of: every name, path and address, decided before
/// anything is created ([`plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPlan {
    /// The lab id.
    pub id: LabId,
    /// The lab directory.
    pub dir: PathBuf,
    /// The datapath of every switch.
    pub datapath: Datapath,
    /// The management network.
    pub mgmt: MgmtNet,
    /// The host bridge of the management network.
    pub mgmt_bridge: String,
    /// The nodes, in `testbed.yaml` order.
    pub nodes: Vec<NodeLab>,
    /// The fabric's Open vSwitch.
    pub fabric: OvsInstance,
    /// The fabric's segments.
    pub segments: Vec<SegmentPlan>,
    /// The CNI bin dir (`CNI_PATH`).
    pub cni_bin_dir: PathBuf,
    /// The kubeconfig for agents and people.
    pub kubeconfig: PathBuf,
}

/// Checks that the lab can build `spec` with `real_nics` and `real_pfs`:
/// NIC names that leave `mgmt0` to the lab, node and NIC counts the naming
/// scheme holds, SR-IOV layouts the emulation can build without name
/// clashes ([`sriov::check_node`]), and real-NIC and real-PF mappings
/// that name a node's NIC or PF once each and a host interface once.
pub fn check_spec(
    spec: &TestbedSpec,
    real_nics: &[RealNicMap],
    real_pfs: &[RealPfMap],
) -> Result<(), LabError> {
    if spec.nodes.len() > names::MAX_NODES {
        return Err(LabError::Unsupported(format!(
            "testbed.yaml: nodes: {} nodes; spur-hil runs at most {}",
            spec.nodes.len(),
            names::MAX_NODES
        )));
    }
    for (i, n) in spec.nodes.iter().enumerate() {
        sriov::check_node(i, n, real_pfs).map_err(LabError::Unsupported)?;
        if n.nics.len() > 100 {
            return Err(LabError::Unsupported(format!(
                "testbed.yaml: nodes[{i}] ({}): {} NICs; spur-hil builds at most 100 per node",
                n.name,
                n.nics.len()
            )));
        }
        for nic in &n.nics {
            if nic == MGMT_IFNAME {
                return Err(LabError::Unsupported(format!(
                    "testbed.yaml: nodes[{i}] ({}): NIC `{MGMT_IFNAME}`: the name is the \
                     harness's management link; rename the NIC",
                    n.name
                )));
            }
            names::check_ifname(nic).map_err(|e| {
                LabError::Unsupported(format!("testbed.yaml: nodes[{i}] ({}): {e}", n.name))
            })?;
        }
    }
    let mut seen = BTreeMap::new();
    for m in real_nics {
        let Some(node) = spec.nodes.iter().find(|n| n.name == m.node) else {
            return Err(LabError::RealNic {
                spec: m.to_string(),
                reason: format!("the testbed has no node `{}`", m.node),
            });
        };
        if !node.nics.contains(&m.nic) {
            return Err(LabError::RealNic {
                spec: m.to_string(),
                reason: format!(
                    "node {} has no NIC `{}` (its NICs: {})",
                    m.node,
                    m.nic,
                    node.nics.join(", ")
                ),
            });
        }
        if let Some(prev) = seen.insert((m.node.clone(), m.nic.clone()), m.to_string()) {
            return Err(LabError::RealNic {
                spec: m.to_string(),
                reason: format!("{}/{} is already mapped by {prev}", m.node, m.nic),
            });
        }
        if let Some(prev) = real_nics
            .iter()
            .find(|o| o.host == m.host && (o.node != m.node || o.nic != m.nic))
        {
            return Err(LabError::RealNic {
                spec: m.to_string(),
                reason: format!("host interface {} is also mapped by {prev}", m.host),
            });
        }
    }
    check_real_pfs(spec, real_nics, real_pfs)
}

/// The `--sriov-pf` half of [`check_spec`].
fn check_real_pfs(
    spec: &TestbedSpec,
    real_nics: &[RealNicMap],
    real_pfs: &[RealPfMap],
) -> Result<(), LabError> {
    let bad = |m: &RealPfMap, reason: String| LabError::RealPf {
        spec: m.to_string(),
        reason,
    };
    for (k, m) in real_pfs.iter().enumerate() {
        let Some(node) = spec.nodes.iter().find(|n| n.name == m.node) else {
            return Err(bad(m, format!("the testbed has no node `{}`", m.node)));
        };
        if !node.sriov.iter().any(|p| p.pf == m.pf) {
            let pfs: Vec<&str> = node.sriov.iter().map(|p| p.pf.as_str()).collect();
            return Err(bad(
                m,
                format!(
                    "node {} has no SR-IOV PF `{}` (its PFs: {})",
                    m.node,
                    m.pf,
                    if pfs.is_empty() {
                        "none".to_string()
                    } else {
                        pfs.join(", ")
                    }
                ),
            ));
        }
        if let Some(prev) = real_pfs[..k]
            .iter()
            .find(|o| (o.node == m.node && o.pf == m.pf) || o.host == m.host)
        {
            return Err(bad(m, format!("it clashes with --sriov-pf {prev}")));
        }
        if let Some(nic) = real_nics.iter().find(|o| o.host == m.host) {
            return Err(bad(
                m,
                format!("host interface {} is also --real-nic {nic}", m.host),
            ));
        }
    }
    Ok(())
}

/// The VLAN IDs a port of a segment with these `allowedVLANs` trunks:
/// untagged (0) and every listed ID, sorted and without repeats.
pub fn trunks(allowed: &[spur_testbed::VlanRange]) -> Vec<u16> {
    let mut v: Vec<u16> = std::iter::once(0)
        .chain(allowed.iter().flat_map(|r| r.start..=r.end))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Decides every name, path and address of a lab for `spec` (pure).
pub fn plan(
    id: LabId,
    root: &Path,
    spec: &TestbedSpec,
    datapath: Datapath,
    mgmt: MgmtNet,
    real_nics: &[RealNicMap],
    real_pfs: &[RealPfMap],
) -> Result<LabPlan, LabError> {
    let dir = root.join(id.as_str());
    let mut nodes = Vec::with_capacity(spec.nodes.len());
    for (i, n) in spec.nodes.iter().enumerate() {
        let ndir = dir.join(names::node_dir_name(&dir, &n.name, i));
        let netns = names::node_netns(&id, &n.name);
        let pod_cidr = names::pod_cidr(i).ok_or_else(|| {
            LabError::Unsupported(format!("node {}: no Pod CIDR left for node #{i}", n.name))
        })?;
        let nics = n
            .nics
            .iter()
            .enumerate()
            .map(|(j, nic)| NicPlan {
                name: nic.clone(),
                fabric_port: names::fabric_port(i, j),
                real: real_nics
                    .iter()
                    .find(|m| m.node == n.name && &m.nic == nic)
                    .map(|m| m.host.clone()),
            })
            .collect();
        let pfs = sriov::node_pfs(i, n, real_pfs).map_err(LabError::Unsupported)?;
        let real_sriov = pfs.iter().any(|p| p.real.is_some());
        nodes.push(NodeLab {
            sriov: pfs,
            sysfs_root: if real_sriov {
                PathBuf::from("/")
            } else {
                ndir.join("sysfs")
            },
            pod_resources_socket: ndir.join("pod-resources.sock"),
            name: n.name.clone(),
            index: i,
            ovs: OvsInstance {
                owner: n.name.clone(),
                netns: netns.clone(),
                dir: ndir.join("ovs"),
            },
            netns,
            mgmt_ip: mgmt.node(i),
            mgmt_host_end: names::mgmt_host_end(&id, i),
            pod_cidr,
            cni_socket: ndir.join("cni.sock"),
            agent_conf: ndir.join("spur-agent.conf"),
            agent_log: ndir.join("spur-agent.log"),
            nics,
            dir: ndir,
        });
    }
    let mut segments = Vec::with_capacity(spec.fabric.len());
    for (k, seg) in spec.fabric.iter().enumerate() {
        let mut ports = Vec::with_capacity(seg.ports.len());
        for p in &seg.ports {
            let node = nodes.iter().find(|n| n.name == p.node);
            if let Some(pf) = node.and_then(|n| n.sriov.iter().find(|f| f.nic.pf == p.nic)) {
                // A real PF's wire is the lab's own cabling.
                if pf.real.is_none() {
                    ports.push((pf.fabric_port.clone(), format!("{}/{}", p.node, p.nic)));
                }
                continue;
            }
            let port = node
                .and_then(|n| n.nics.iter().find(|c| c.name == p.nic))
                .ok_or_else(|| {
                    LabError::Unsupported(format!(
                        "testbed.yaml: fabric[{k}] ({}): port {}/{} is not a NIC or SR-IOV PF \
                         of a node",
                        seg.name, p.node, p.nic
                    ))
                })?;
            if let Some(host) = &port.real {
                return Err(LabError::RealNic {
                    spec: format!("{}/{}={host}", p.node, p.nic),
                    reason: format!(
                        "the NIC is a port of fabric segment {}: a real NIC's wire is its own \
                         switch, so leave it out of the testbed's fabric",
                        seg.name
                    ),
                });
            }
            ports.push((port.fabric_port.clone(), format!("{}/{}", p.node, p.nic)));
        }
        segments.push(SegmentPlan {
            name: seg.name.clone(),
            bridge: names::fabric_bridge(k),
            ports,
            trunks: seg.allowed_vlans.as_deref().map(trunks),
        });
    }
    let fabric_netns = names::fabric_netns(&id);
    Ok(LabPlan {
        mgmt_bridge: names::mgmt_bridge(&id),
        fabric: OvsInstance {
            owner: "fabric".into(),
            netns: fabric_netns,
            dir: dir.join("fabric").join("ovs"),
        },
        cni_bin_dir: dir.join("cni-bin"),
        kubeconfig: dir.join("kubeconfig"),
        id,
        dir,
        datapath,
        mgmt,
        nodes,
        segments,
    })
}

/// What the lab needs on the host: (tool or file, Debian package).
pub fn requirements() -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = vec![
        ("ip".into(), "iproute2"),
        ("ovsdb-tool".into(), "openvswitch-common"),
        ("ovs-vsctl".into(), "openvswitch-common"),
        ("ovs-appctl".into(), "openvswitch-common"),
        ("ovsdb-server".into(), "openvswitch-switch"),
        ("ovs-vswitchd".into(), "openvswitch-switch"),
        (OVS_SCHEMA.into(), "openvswitch-common"),
        ("ethtool".into(), "ethtool"),
        ("ping".into(), "iputils-ping"),
        ("sysctl".into(), "procps"),
    ];
    for plugin in ["ptp", "host-local", "macvlan", "bridge", "static"] {
        v.push((
            format!("{CNI_PLUGINS_DIR}/{plugin}"),
            "containernetworking-plugins",
        ));
    }
    v
}

/// The requirements `have` says are missing, as `WHAT (Debian package PKG)`.
pub fn missing(reqs: &[(String, &'static str)], have: impl Fn(&str) -> bool) -> Vec<String> {
    reqs.iter()
        .filter(|(what, _)| !have(what))
        .map(|(what, pkg)| format!("{what} (Debian package {pkg})"))
        .collect()
}

/// Checks what the lab needs before creating anything: root, the host's
/// tools, and `spur-agent` and `spur` in `bin_dir`.
pub fn preflight(bin_dir: &Path) -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        return Err(LabError::NotRoot { command });
    }
    let gaps = missing(&requirements(), |what| {
        if what.starts_with('/') {
            Path::new(what).exists()
        } else {
            find_tool(what).is_some()
        }
    });
    if !gaps.is_empty() {
        return Err(LabError::Missing(gaps));
    }
    for bin in [AGENT_BIN, PLUGIN_BIN, CONTROLLER_BIN] {
        if !bin_dir.join(bin).is_file() {
            return Err(LabError::MissingBinary {
                name: bin.into(),
                dir: bin_dir.display().to_string(),
            });
        }
    }
    Ok(())
}

/// The networks of the host (addresses and routes other than the default
/// route), which the management network must not overlap.
fn host_networks() -> Result<Vec<IpNet>, LabError> {
    let mut nets = Vec::new();
    let addrs = Cmd::new("ip", "listing the host's addresses")
        .args(["-j", "-4", "addr", "show"])
        .run()?;
    let addrs: Value = serde_json::from_str(&addrs).unwrap_or(Value::Null);
    for link in addrs.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(ip), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                if let Ok(net) = format!("{ip}/{len}").parse::<IpNet>() {
                    nets.push(net.trunc());
                }
            }
        }
    }
    let routes = Cmd::new("ip", "listing the host's routes")
        .args(["-j", "-4", "route", "show", "table", "all"])
        .run()?;
    let routes: Value = serde_json::from_str(&routes).unwrap_or(Value::Null);
    for r in routes.as_array().into_iter().flatten() {
        let Some(dst) = r["dst"].as_str() else {
            continue;
        };
        if dst == "default" {
            continue;
        }
        let dst = if dst.contains('/') {
            dst.to_string()
        } else {
            format!("{dst}/32")
        };
        if let Ok(net) = dst.parse::<IpNet>() {
            nets.push(net);
        }
    }
    Ok(nets)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let tail = lines[start..].join("\n");
    if tail.is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}

/// A process the lab started, with its log.
#[derive(Debug, Clone)]
struct Tracked {
    child: Arc<Mutex<Child>>,
    log: PathBuf,
}

/// A running lab (see the module documentation). Dropping it tears it
/// down.
pub struct Lab {
    /// Names, paths and addresses.
    pub plan: LabPlan,
    /// Where `spur-agent` and `spur` are.
    pub bin_dir: PathBuf,
    cleanup: Arc<Cleanup>,
    /// Processes by what they are, to notice one that exits.
    processes: Mutex<BTreeMap<String, Tracked>>,
    /// What was built of each node's SR-IOV PFs, by node.
    sriov: Mutex<BTreeMap<String, NodeSriov>>,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab").field("plan", &self.plan).finish()
    }
}

impl Lab {
    /// Builds the lab for `spec`: checks, removes leftovers of crashed
    /// runs, then creates everything, registering each piece in `cleanup`.
    /// On error, what was created is removed before returning.
    pub fn up(
        spec: &TestbedSpec,
        opts: &LabOptions,
        cleanup: Arc<Cleanup>,
        progress: &Progress,
    ) -> Result<Lab, LabError> {
        check_spec(spec, &opts.real_nics, &opts.real_pfs)?;
        preflight(&opts.bin_dir)?;
        match cleanup::remove_leftovers(&opts.root, false) {
            Ok((removed, problems)) => {
                for r in removed {
                    progress.say(format!("removed the leftovers of a crashed run: {r}"));
                }
                for p in problems {
                    progress.say(format!("warning: leftovers of a crashed run: {p}"));
                }
            }
            Err(e) => progress.say(format!("warning: cannot look for leftovers: {e}")),
        }
        let datapath = Datapath::detect();
        let seed = seed();
        let mgmt = names::choose_mgmt_net(seed, &host_networks()?).ok_or_else(|| {
            LabError::Unsupported(
                "every /24 of 100.64.0.0/10 overlaps a network of this host: no room for the \
                 lab's management network"
                    .into(),
            )
        })?;
        fs::create_dir_all(&opts.root)
            .map_err(io_err("creating the labs' directory", &opts.root))?;
        // A fresh id: the first whose directory can be created.
        let mut id = LabId::generate(seed);
        for k in 1..=100u64 {
            match fs::create_dir(opts.root.join(id.as_str())) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && k < 100 => {
                    id = LabId::generate(seed.wrapping_add(k.wrapping_mul(0x9e37_79b9)));
                }
                Err(e) => {
                    return Err(io_err(
                        "creating the lab directory",
                        &opts.root.join(id.as_str()),
                    )(e))
                }
            }
        }
        cleanup.push(Undo::Dir(opts.root.join(id.as_str())));
        let owner = cleanup::register_owner(&id).map_err(io_err(
            "registering the lab's owner",
            &Path::new(cleanup::OWNERS_DIR).join(id.as_str()),
        ))?;
        cleanup.push(Undo::Dir(owner));
        cleanup.push(Undo::Sweep {
            lab: id.clone(),
            root: opts.root.clone(),
        });
        let plan = match plan(
            id,
            &opts.root,
            spec,
            datapath,
            mgmt,
            &opts.real_nics,
            &opts.real_pfs,
        ) {
            Ok(p) => p,
            Err(e) => {
                for p in cleanup.run() {
                    eprintln!("spur-hil: cleanup: {p}");
                }
                return Err(e);
            }
        };
        let lab = Lab {
            plan,
            bin_dir: opts.bin_dir.clone(),
            cleanup,
            processes: Mutex::new(BTreeMap::new()),
            sriov: Mutex::new(BTreeMap::new()),
        };
        lab.build(progress)?;
        Ok(lab)
    }

    /// The cleanup registry.
    pub fn cleanup(&self) -> Arc<Cleanup> {
        self.cleanup.clone()
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeLab> {
        self.plan.nodes.iter().find(|n| n.name == name)
    }

    /// What was built of node `name`'s SR-IOV PFs (empty without PFs).
    pub fn node_sriov(&self, name: &str) -> NodeSriov {
        lock(&self.sriov).get(name).cloned().unwrap_or_default()
    }

    fn build(&self, progress: &Progress) -> Result<(), LabError> {
        let start = Instant::now();
        let p = &self.plan;
        let owner = p.dir.join(OWNER_FILE);
        fs::write(&owner, cleanup::owner_line())
            .map_err(io_err("writing the lab's owner file", &owner))?;
        progress.say(format!(
            "lab {}: {}, datapath {}, management network {} (API at {})",
            p.id,
            p.dir.display(),
            p.datapath.as_str(),
            p.mgmt.net,
            p.mgmt.host()
        ));
        self.build_mgmt_and_namespaces()?;
        self.start_all_ovs(progress)?;
        self.build_nics(progress)?;
        self.build_sriov(progress)?;
        self.build_fabric(progress)?;
        self.build_cni_bin_dir()?;
        progress.say(format!(
            "lab {} up in {} ({} nodes, {} segments)",
            p.id,
            secs(start.elapsed()),
            p.nodes.len(),
            p.segments.len()
        ));
        Ok(())
    }

    fn ip(&self, doing: impl Into<String>, args: &[&str]) -> Result<(), LabError> {
        Cmd::new("ip", doing).args(args).run()?;
        Ok(())
    }

    fn build_mgmt_and_namespaces(&self) -> Result<(), LabError> {
        let p = &self.plan;
        let br = p.mgmt_bridge.as_str();
        let doing = format!("creating the management bridge {br}");
        self.ip(&doing, &["link", "add", br, "type", "bridge"])?;
        self.cleanup.push(Undo::HostLink(br.to_string()));
        let host = p.mgmt.with_prefix(p.mgmt.host());
        self.ip(&doing, &["addr", "add", &host, "dev", br])?;
        self.ip(&doing, &["link", "set", br, "up"])?;

        let mut namespaces = vec![("fabric".to_string(), p.fabric.netns.clone())];
        namespaces.extend(p.nodes.iter().map(|n| (n.name.clone(), n.netns.clone())));
        for (who, ns) in &namespaces {
            let doing = format!("creating the network namespace {ns} of {who}");
            self.ip(&doing, &["netns", "add", ns])?;
            self.cleanup.push(Undo::Netns(ns.clone()));
            self.ip(&doing, &["-n", ns, "link", "set", "lo", "up"])?;
        }
        for n in &p.nodes {
            let end = n.mgmt_host_end.as_str();
            let doing = format!("creating the management link of node {}", n.name);
            self.ip(
                &doing,
                &[
                    "link",
                    "add",
                    end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    MGMT_IFNAME,
                    "netns",
                    &n.netns,
                ],
            )?;
            self.cleanup.push(Undo::HostLink(end.to_string()));
            self.ip(&doing, &["link", "set", end, "master", br, "up"])?;
            let addr = p.mgmt.with_prefix(n.mgmt_ip);
            self.ip(
                &doing,
                &["-n", &n.netns, "addr", "add", &addr, "dev", MGMT_IFNAME],
            )?;
            self.ip(&doing, &["-n", &n.netns, "link", "set", MGMT_IFNAME, "up"])?;
        }
        Ok(())
    }

    fn start_all_ovs(&self, progress: &Progress) -> Result<(), LabError> {
        let p = &self.plan;
        let instances: Vec<&OvsInstance> = std::iter::once(&p.fabric)
            .chain(p.nodes.iter().map(|n| &n.ovs))
            .collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = instances
                .iter()
                .map(|ovs| s.spawn(move || self.start_ovs(ovs, progress)))
                .collect();
            let mut first_error = None;
            for h in handles {
                let r = h.join().unwrap_or_else(|_| {
                    Err(LabError::Unsupported(
                        "a thread starting Open vSwitch panicked".into(),
                    ))
                });
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// Spawns `cmd` as a long-running process in its own process group
    /// (so Ctrl-C reaches only the harness, which tears down in order),
    /// its output going to `log`, and registers it for cleanup.
    fn spawn(&self, what: &str, cmd: Cmd, log: &Path) -> Result<Arc<Mutex<Child>>, LabError> {
        let out = File::create(log).map_err(io_err(format!("creating the log of {what}"), log))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("creating the log of {what}"), log))?;
        tracing::debug!(command = %cmd.display(), "starting {what}");
        let child = cmd
            .command()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| CmdError {
                doing: format!("starting {what}"),
                command: cmd.display(),
                outcome: format!("could not be started: {e}"),
                stderr: String::new(),
            })?;
        let child = Arc::new(Mutex::new(child));
        self.cleanup.push(Undo::Process {
            what: what.to_string(),
            child: child.clone(),
        });
        lock(&self.processes).insert(
            what.to_string(),
            Tracked {
                child: child.clone(),
                log: log.to_path_buf(),
            },
        );
        Ok(child)
    }

    /// Fails when the process registered as `what` has exited.
    pub fn check_alive(&self, what: &str) -> Result<(), LabError> {
        let procs = lock(&self.processes);
        let Some(Tracked { child, log }) = procs.get(what) else {
            return Ok(());
        };
        let status = lock(child).try_wait();
        match status {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(LabError::Exited {
                what: what.to_string(),
                status: status.to_string(),
                log: log.clone(),
                tail: log_tail(log, 20),
            }),
            Err(e) => Err(LabError::Exited {
                what: what.to_string(),
                status: format!("cannot be waited for: {e}"),
                log: log.clone(),
                tail: log_tail(log, 20),
            }),
        }
    }

    /// Polls `ready` until it answers `Ok(true)`, failing when `what`
    /// (a registered process, if any) exits or `timeout` passes.
    fn wait_for(
        &self,
        what: &str,
        process: Option<&str>,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<bool, String>,
    ) -> Result<Duration, LabError> {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        loop {
            match ready() {
                Ok(true) => return Ok(start.elapsed()),
                Ok(false) => {}
                Err(e) => last = e,
            }
            if let Some(p) = process {
                self.check_alive(p)?;
            }
            if start.elapsed() >= timeout {
                return Err(LabError::NotReady {
                    what: what.to_string(),
                    waited: timeout,
                    last,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn start_ovs(&self, ovs: &OvsInstance, progress: &Progress) -> Result<(), LabError> {
        let start = Instant::now();
        let who = &ovs.owner;
        fs::create_dir_all(&ovs.dir).map_err(io_err(
            format!("creating the OVS directory of {who}"),
            &ovs.dir,
        ))?;
        let db = ovs.dir.join("conf.db");
        let dir = |f: &str| ovs.dir.join(f).display().to_string();
        Cmd::new("ovsdb-tool", format!("creating the OVS database of {who}"))
            .args([
                "create".to_string(),
                db.display().to_string(),
                OVS_SCHEMA.to_string(),
            ])
            .run()?;
        let server_what = format!("{who}'s ovsdb-server");
        let server = ovs.env(
            Cmd::new("ovsdb-server", "")
                .args([
                    db.display().to_string(),
                    format!("--remote=punix:{}", ovs.db_socket().display()),
                    format!("--unixctl={}", ovs.ovsdb_ctl().display()),
                    format!("--pidfile={}", dir("ovsdb-server.pid")),
                    format!("--log-file={}", dir("ovsdb-server.log")),
                    "-vconsole:off".to_string(),
                ])
                .netns(&ovs.netns),
        );
        self.spawn(&server_what, server, &ovs.dir.join("ovsdb-server.out"))?;
        let init = ovs
            .vsctl(format!("initialising the OVS database of {who}"))
            .args(["--no-wait", "init"]);
        let sock = ovs.db_socket();
        self.wait_for(&server_what, Some(&server_what), OVS_READY_TIMEOUT, || {
            if !sock.exists() {
                return Ok(false);
            }
            init.run().map(|_| true).map_err(|e| e.to_string())
        })?;

        let switch_what = format!("{who}'s ovs-vswitchd");
        let switch = ovs.env(
            Cmd::new("ovs-vswitchd", "")
                .args([
                    format!("unix:{}", ovs.db_socket().display()),
                    format!("--unixctl={}", ovs.vswitchd_ctl().display()),
                    format!("--pidfile={}", dir("ovs-vswitchd.pid")),
                    format!("--log-file={}", dir("ovs-vswitchd.log")),
                    "-vconsole:off".to_string(),
                ])
                .netns(&ovs.netns),
        );
        self.spawn(&switch_what, switch, &ovs.dir.join("ovs-vswitchd.out"))?;
        // ovs-vsctl without --no-wait returns once ovs-vswitchd applied the
        // change: the switch is serving.
        let mark = ovs.vsctl(format!("waiting for {switch_what}")).args([
            "--timeout=2".to_string(),
            "set".into(),
            "Open_vSwitch".into(),
            ".".into(),
            format!("external_ids:spur-hil-lab={}", self.plan.id),
        ]);
        self.wait_for(&switch_what, Some(&switch_what), OVS_READY_TIMEOUT, || {
            mark.run().map(|_| true).map_err(|e| e.to_string())
        })?;
        progress.say(format!(
            "{who}: ovsdb-server and ovs-vswitchd up ({})",
            secs(start.elapsed())
        ));
        Ok(())
    }

    fn build_nics(&self, progress: &Progress) -> Result<(), LabError> {
        let p = &self.plan;
        let fab = p.fabric.netns.as_str();
        for n in &p.nodes {
            for nic in &n.nics {
                match &nic.real {
                    Some(host) => {
                        self.move_real_nic(n, nic, host)?;
                        progress.say(format!(
                            "{}: NIC {} is host interface {host} (moved back after the run)",
                            n.name, nic.name
                        ));
                    }
                    None => {
                        let doing = format!(
                            "creating NIC {} of node {} (a veth to {} in the fabric)",
                            nic.name, n.name, nic.fabric_port
                        );
                        self.ip(
                            &doing,
                            &[
                                "-n",
                                &n.netns,
                                "link",
                                "add",
                                &nic.name,
                                "type",
                                "veth",
                                "peer",
                                "name",
                                &nic.fabric_port,
                                "netns",
                                fab,
                            ],
                        )?;
                        for (ns, link) in [(n.netns.as_str(), &nic.name), (fab, &nic.fabric_port)] {
                            Cmd::new("ethtool", format!("{doing}: TX checksum offload off"))
                                .args(["-K", link, "tx", "off"])
                                .netns(ns)
                                .run()?;
                            self.ip(&doing, &["-n", ns, "link", "set", link, "up"])?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every node's SR-IOV PFs: emulated NICs, or real PFs moved in (see
    /// [`crate::sriov`]).
    fn build_sriov(&self, progress: &Progress) -> Result<(), LabError> {
        for n in &self.plan.nodes {
            if n.sriov.is_empty() {
                continue;
            }
            let built = if n.emulated_sriov() {
                self.build_emulated_nics(n)?;
                NodeSriov::emulated(n.sriov.clone())
            } else {
                self.move_real_pfs(n)?
            };
            for p in &n.sriov {
                let what = match (&p.real, p.nic.vm) {
                    (Some(host), _) => format!(
                        "host PF {host} with its first {} VFs (its wire is the lab's own \
                         cabling, not the testbed's fabric)",
                        p.nic.vfs.len()
                    ),
                    (None, false) => format!("an emulated NIC with {} VFs", p.nic.vfs.len()),
                    (None, true) => format!(
                        "an emulated NIC with {} VFs, seen as a VM sees them (no PF)",
                        p.nic.vfs.len()
                    ),
                };
                progress.say(format!(
                    "{}: SR-IOV PF {} ({}) is {what}",
                    n.name, p.nic.pf, p.nic.resource_name
                ));
            }
            lock(&self.sriov).insert(n.name.clone(), built);
        }
        Ok(())
    }

    /// The emulated NICs of node `n`: the sysfs tree, per PF an OVS bridge
    /// (the embedded switch) with an uplink veth into the fabric, per VF a
    /// veth pair whose representor is an untagged access port.
    fn build_emulated_nics(&self, n: &NodeLab) -> Result<(), LabError> {
        let tree = spur_node::sriov::sysfs::SysfsTree::create(&n.sysfs_root)
            .map_err(io_err("creating the emulated sysfs tree", &n.sysfs_root))?;
        let fab = self.plan.fabric.netns.as_str();
        for p in &n.sriov {
            let pf = p.nic.pf.as_str();
            let pci: Vec<(String, String)> = p
                .nic
                .vfs
                .iter()
                .map(|vf| (vf.pci.to_string(), vf.netdev.clone()))
                .collect();
            let sysfs_err = |e| {
                io_err(
                    format!("writing PF {pf} of node {} into the emulated sysfs", n.name),
                    &n.sysfs_root,
                )(e)
            };
            if p.nic.vm {
                for (vf, netdev) in &pci {
                    tree.add_vm_vf(vf, Some(netdev)).map_err(sysfs_err)?;
                }
            } else {
                let vfs: Vec<(&str, Option<&str>)> = pci
                    .iter()
                    .map(|(a, b)| (a.as_str(), Some(b.as_str())))
                    .collect();
                tree.add_pf(pf, &p.nic.pci.to_string(), &vfs)
                    .map_err(sysfs_err)?;
            }

            // The embedded switch, its trunk uplink and the VF representors.
            let doing = format!("creating the emulated NIC {pf} of node {}", n.name);
            self.ip(
                &doing,
                &[
                    "-n",
                    &n.netns,
                    "link",
                    "add",
                    &p.uplink,
                    "mtu",
                    EMULATED_NIC_MTU,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &p.fabric_port,
                    "mtu",
                    EMULATED_NIC_MTU,
                    "netns",
                    fab,
                ],
            )?;
            for (ns, link) in [(n.netns.as_str(), &p.uplink), (fab, &p.fabric_port)] {
                self.offload_off_up(&doing, ns, link)?;
            }
            let mut args: Vec<String> = vec![
                "add-br".into(),
                pf.into(),
                "--".into(),
                "set".into(),
                "bridge".into(),
                pf.into(),
                format!("datapath_type={}", self.plan.datapath.as_str()),
                format!("external_ids:spur-hil-emulated-pf=\"{pf}\""),
                "--".into(),
                "add-port".into(),
                pf.into(),
                p.uplink.clone(),
            ];
            for vf in &p.nic.vfs {
                let rep = p.representor(vf.index);
                let vdoing = format!("{doing}: VF {} ({} and {rep})", vf.index, vf.netdev);
                self.ip(
                    &vdoing,
                    &[
                        "-n",
                        &n.netns,
                        "link",
                        "add",
                        &vf.netdev,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &rep,
                        "mtu",
                        EMULATED_NIC_MTU,
                    ],
                )?;
                // The VF ends in a Pod: checksums must be complete there.
                for link in [&vf.netdev, &rep] {
                    Cmd::new("ethtool", format!("{vdoing}: TX checksum offload off"))
                        .args(["-K", link, "tx", "off"])
                        .netns(&n.netns)
                        .run()?;
                }
                self.ip(&vdoing, &["-n", &n.netns, "link", "set", &rep, "up"])?;
                args.extend([
                    "--".into(),
                    "add-port".into(),
                    pf.into(),
                    rep.clone(),
                    "vlan_mode=access".into(),
                    format!("external_ids:spur-hil-vf={}", vf.index),
                ]);
            }
            n.ovs.vsctl(doing.clone()).args(args).run()?;
            self.ip(&doing, &["-n", &n.netns, "link", "set", pf, "up"])?;
        }
        Ok(())
    }

    /// TX checksum offload off and up, for a veth end in `ns`.
    fn offload_off_up(&self, doing: &str, ns: &str, link: &str) -> Result<(), LabError> {
        Cmd::new("ethtool", format!("{doing}: TX checksum offload off"))
            .args(["-K", link, "tx", "off"])
            .netns(ns)
            .run()?;
        self.ip(doing, &["-n", ns, "link", "set", link, "up"])
    }

    /// The real PFs of node `n` (`--sriov-pf`): each host PF moves into the
    /// node's namespace under the testbed's PF name, with the netdevs of
    /// its first VFs under their own names; each is recorded to be moved
    /// back.
    fn move_real_pfs(&self, n: &NodeLab) -> Result<NodeSriov, LabError> {
        let host_sysfs = spur_node::sriov::sysfs::Sysfs::host();
        let mut built = NodeSriov {
            pfs: n.sriov.clone(),
            ..NodeSriov::default()
        };
        for (j, p) in n.sriov.iter().enumerate() {
            let Some(host) = &p.real else { continue };
            let spec = format!("{}/{}={host}", n.name, p.nic.pf);
            let bad = |reason: String| LabError::RealPf {
                spec: spec.clone(),
                reason,
            };
            let vfs = sriov::real_vfs(&host_sysfs, host, p.nic.vfs.len()).map_err(&bad)?;
            for (vf, real) in p.nic.vfs.iter().zip(&vfs) {
                let Some(netdev) = real.netdev.clone() else {
                    return Err(bad(format!("VF {} has no network interface", vf.index)));
                };
                let id = real.pci.to_string();
                built.device_ids.insert(vf.pci, id.clone());
                built.vfs.insert(id, (j, vf.index, netdev.clone()));
                self.move_real_link(n, &netdev, &netdev, &bad)?;
            }
            self.move_real_link(n, host, &p.nic.pf, &bad)?;
        }
        Ok(built)
    }

    /// Moves the host link `host` into node `n` as `name` (recorded first,
    /// so a crash in between still finds it); refuses links with
    /// addresses.
    fn move_real_link(
        &self,
        n: &NodeLab,
        host: &str,
        name: &str,
        bad: &dyn Fn(String) -> LabError,
    ) -> Result<(), LabError> {
        let shown = Cmd::new("ip", format!("looking at host interface {host}"))
            .args(["-j", "addr", "show", "dev", host])
            .run()
            .map_err(|e| bad(format!("the host has no interface {host} ({e})")))?;
        let info: Value = serde_json::from_str(&shown).unwrap_or(Value::Null);
        let link = &info[0];
        let addrs: Vec<String> = link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["scope"].as_str() != Some("link"))
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect();
        if !addrs.is_empty() {
            return Err(bad(format!(
                "{host} has addresses ({}): only a dedicated lab NIC and its VFs may be moved \
                 into a lab",
                addrs.join(", ")
            )));
        }
        let was_up = link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP"));
        let moved = MovedNic {
            netns: n.netns.clone(),
            name: name.to_string(),
            original: host.to_string(),
            was_up,
        };
        // On disk first, so a crash in between still finds it.
        let file = self.plan.dir.join(REAL_NICS_FILE);
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(moved.to_line().as_bytes()))
            .map_err(io_err("recording a moved real interface", &file))?;
        let doing = format!(
            "moving host interface {host} into node {} as {name}",
            n.name
        );
        self.ip(&doing, &["link", "set", host, "down"])?;
        // One request moves and renames, so a host interface named like
        // the testbed's is no obstacle.
        self.ip(
            &doing,
            &["link", "set", host, "netns", &n.netns, "name", name],
        )?;
        self.cleanup.push(Undo::RealNic(moved));
        self.ip(&doing, &["-n", &n.netns, "link", "set", name, "up"])?;
        Ok(())
    }

    fn move_real_nic(&self, n: &NodeLab, nic: &NicPlan, host: &str) -> Result<(), LabError> {
        let spec = format!("{}/{}={host}", n.name, nic.name);
        let bad = |reason: String| LabError::RealNic {
            spec: spec.clone(),
            reason,
        };
        self.move_real_link(n, host, &nic.name, &bad)
    }

    fn build_fabric(&self, progress: &Progress) -> Result<(), LabError> {
        let p = &self.plan;
        for seg in &p.segments {
            let doing = format!(
                "creating the fabric bridge {} of segment {}",
                seg.bridge, seg.name
            );
            let mut args: Vec<String> = vec![
                "add-br".into(),
                seg.bridge.clone(),
                "--".into(),
                "set".into(),
                "bridge".into(),
                seg.bridge.clone(),
                format!("datapath_type={}", p.datapath.as_str()),
                format!("external_ids:spur-hil-segment=\"{}\"", seg.name),
            ];
            for (port, _) in &seg.ports {
                args.extend([
                    "--".into(),
                    "add-port".into(),
                    seg.bridge.clone(),
                    port.clone(),
                ]);
                if let Some(t) = &seg.trunks {
                    let list: Vec<String> = t.iter().map(u16::to_string).collect();
                    args.extend([
                        "--".into(),
                        "set".into(),
                        "port".into(),
                        port.clone(),
                        format!("trunks={}", list.join(",")),
                    ]);
                }
            }
            p.fabric.vsctl(doing).args(args).run()?;
            let ports: Vec<&str> = seg.ports.iter().map(|(_, name)| name.as_str()).collect();
            let vlans = match &seg.trunks {
                None => "all VLANs".to_string(),
                Some(_) => format!(
                    "untagged and VLANs {}",
                    allowed_text(&p.segments, &seg.name)
                ),
            };
            progress.say(format!(
                "fabric: segment {} joins {} ({vlans})",
                seg.name,
                if ports.is_empty() {
                    "no ports".to_string()
                } else {
                    ports.join(", ")
                }
            ));
        }
        Ok(())
    }

    fn build_cni_bin_dir(&self) -> Result<(), LabError> {
        let dir = &self.plan.cni_bin_dir;
        fs::create_dir_all(dir).map_err(io_err("creating the CNI bin dir", dir))?;
        let entries = fs::read_dir(CNI_PLUGINS_DIR).map_err(io_err(
            "listing the CNI plugins",
            Path::new(CNI_PLUGINS_DIR),
        ))?;
        let mut links: Vec<(PathBuf, PathBuf)> = entries
            .filter_map(Result::ok)
            .map(|e| (e.path(), dir.join(e.file_name())))
            .collect();
        let plugin = self.bin_dir.join(PLUGIN_BIN);
        let plugin = plugin.canonicalize().unwrap_or(plugin);
        links.push((plugin, dir.join(PLUGIN_BIN)));
        for (target, link) in links {
            std::os::unix::fs::symlink(&target, &link)
                .map_err(io_err("filling the CNI bin dir", &link))?;
        }
        Ok(())
    }

    /// Writes `node`'s agent config and starts its `spur-agent` in its
    /// namespace, logging to [`NodeLab::agent_log`] (`log_filter` is its
    /// `RUST_LOG`).
    pub fn start_agent(
        &self,
        node: &NodeLab,
        config: &str,
        kubeconfig: &Path,
        log_filter: &str,
    ) -> Result<(), LabError> {
        fs::write(&node.agent_conf, config)
            .map_err(io_err("writing the agent config", &node.agent_conf))?;
        let agent = self.bin_dir.join(AGENT_BIN);
        let agent = agent.canonicalize().unwrap_or(agent);
        let cmd = Cmd::new(&agent.display().to_string(), "")
            .args([
                "run".to_string(),
                "--node-name".into(),
                node.name.clone(),
                "--config".into(),
                node.agent_conf.display().to_string(),
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--cni-socket".into(),
                node.cni_socket.display().to_string(),
                "--ovsdb".into(),
                node.ovs.db_socket().display().to_string(),
                "--datapath".into(),
                self.plan.datapath.as_str().into(),
                "--sysfs-root".into(),
                node.sysfs_root.display().to_string(),
                "--pod-resources-socket".into(),
                node.pod_resources_socket.display().to_string(),
            ])
            .args(
                node.emulated_sriov()
                    .then(|| "--sriov-emulated-nics".to_string()),
            )
            .env("RUST_LOG", log_filter)
            .netns(&node.netns);
        self.spawn(&agent_what(&node.name), cmd, &node.agent_log)?;
        Ok(())
    }

    /// Starts the real `spur-controller` in the host's network namespace,
    /// next to the API server: its webhook and metrics bind free ports of
    /// the management address, its Lease lives in kube-system, and it
    /// tries for leadership every 200 ms so a lab's only replica leads at
    /// once. `config` is its `spur-controller.conf`.
    pub fn start_controller(
        &self,
        config: &str,
        kubeconfig: &Path,
        log_filter: &str,
    ) -> Result<ControllerPorts, LabError> {
        let conf = self.plan.dir.join("spur-controller.conf");
        fs::write(&conf, config).map_err(io_err("writing the controller config", &conf))?;
        let host = std::net::IpAddr::V4(self.plan.mgmt.host());
        let webhook = free_port(host)?;
        let metrics = free_port(host)?;
        let bin = self.bin_dir.join(CONTROLLER_BIN);
        let bin = bin.canonicalize().unwrap_or(bin);
        let cmd = Cmd::new(&bin.display().to_string(), "")
            .args([
                "--config".to_string(),
                conf.display().to_string(),
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--leader-election-namespace".into(),
                "kube-system".into(),
                "--leader-election-identity".into(),
                format!("spur-hil-{}", self.plan.id),
                "--leader-election-retry-period-ms".into(),
                "200".into(),
                "--webhook-address".into(),
                host.to_string(),
                "--webhook-port".into(),
                webhook.port().to_string(),
                "--metrics-address".into(),
                host.to_string(),
                "--metrics-port".into(),
                metrics.port().to_string(),
            ])
            .env("RUST_LOG", log_filter);
        self.spawn(CONTROLLER_WHAT, cmd, &self.controller_log())?;
        Ok(ControllerPorts { webhook, metrics })
    }

    /// The controller's log file.
    pub fn controller_log(&self) -> PathBuf {
        self.plan.dir.join("spur-controller.log")
    }

    /// Waits until `ready` says the controller serves (the caller asks the
    /// API, which calls the webhook); fails when the controller exits or
    /// [`CONTROLLER_READY_TIMEOUT`] passes, with the end of its log.
    pub fn wait_controller_ready(
        &self,
        ready: impl FnMut() -> Result<bool, String>,
    ) -> Result<Duration, LabError> {
        self.wait_for(
            CONTROLLER_WHAT,
            Some(CONTROLLER_WHAT),
            CONTROLLER_READY_TIMEOUT,
            ready,
        )
        .map_err(|e| match e {
            LabError::NotReady { what, waited, last } => LabError::NotReady {
                what,
                waited,
                last: format!(
                    "{last}; the end of its log {}:\n{}",
                    self.controller_log().display(),
                    log_tail(&self.controller_log(), 20)
                ),
            },
            other => other,
        })
    }

    /// Waits until `node`'s agent answers the `spur` plugin's STATUS with
    /// success; fails when the agent exits or [`AGENT_READY_TIMEOUT`]
    /// passes. Returns how long it took.
    pub fn wait_agent_ready(&self, node: &NodeLab) -> Result<Duration, LabError> {
        let plugin = self.plan.cni_bin_dir.join(PLUGIN_BIN);
        let what = agent_what(&node.name);
        self.wait_for(&what, Some(&what), AGENT_READY_TIMEOUT, || {
            plugin_status(&plugin, &node.cni_socket, &self.plan.cni_bin_dir)
        })
        .map_err(|e| match e {
            LabError::NotReady { what, waited, last } => LabError::NotReady {
                what,
                waited,
                last: format!(
                    "{last}; the end of its log {}:\n{}",
                    node.agent_log.display(),
                    log_tail(&node.agent_log, 20)
                ),
            },
            other => other,
        })
    }

    /// Stops `node`'s agent now (it is also stopped by the cleanup).
    pub fn stop_agent(&self, node: &NodeLab) -> Result<(), LabError> {
        let what = agent_what(&node.name);
        let child = lock(&self.processes).get(&what).map(|t| t.child.clone());
        if let Some(child) = child {
            cleanup::stop_child(&mut lock(&child), &what, cleanup::STOP_GRACE)
                .map_err(|e| LabError::Unsupported(format!("stopping {what}: {e}")))?;
        }
        Ok(())
    }

    /// Tears the lab down now; returns the problems (also done on drop).
    pub fn teardown(&self) -> Vec<String> {
        self.cleanup.run()
    }
}

/// Where the lab's `spur-controller` listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControllerPorts {
    /// Its HTTPS admission webhook.
    pub webhook: std::net::SocketAddr,
    /// Its /metrics, /healthz and /readyz.
    pub metrics: std::net::SocketAddr,
}

/// A port of `host` no one listens on now (the OS's choice).
fn free_port(host: std::net::IpAddr) -> Result<std::net::SocketAddr, LabError> {
    std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| LabError::Unsupported(format!("no free port on {host}: {e}")))
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in self.cleanup.run() {
            eprintln!("spur-hil: cleanup: {p}");
        }
    }
}

/// The name of a node's agent process in messages.
pub fn agent_what(node: &str) -> String {
    format!("{node}'s spur-agent")
}

/// The `allowedVLANs` of segment `name` as the testbed wrote them.
fn allowed_text(segments: &[SegmentPlan], name: &str) -> String {
    segments
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.trunks.as_ref())
        .map(|t| compress(t.iter().copied().filter(|v| *v != 0)))
        .unwrap_or_default()
}

/// `100,200-300` from a sorted list of IDs.
fn compress(ids: impl Iterator<Item = u16>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u16, u16)> = None;
    for v in ids {
        run = match run {
            Some((a, b)) if v == b + 1 => Some((a, v)),
            Some((a, b)) => {
                out.push(range_text(a, b));
                Some((v, v))
            }
            None => Some((v, v)),
        };
    }
    if let Some((a, b)) = run {
        out.push(range_text(a, b));
    }
    out.join(",")
}

fn range_text(a: u16, b: u16) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// Runs the `spur` plugin's STATUS against `socket`: `Ok(true)` when it
/// exits 0, `Err` with its answer otherwise.
pub fn plugin_status(plugin: &Path, socket: &Path, cni_path: &Path) -> Result<bool, String> {
    if !socket.exists() {
        return Err(format!("{} does not exist yet", socket.display()));
    }
    let mut child = std::process::Command::new(plugin)
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", cni_path)
        .env("SPUR_CNI_SOCKET", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", plugin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(br#"{"cniVersion":"1.1.0","name":"spur","type":"spur"}"#);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("cannot run {}: {e}", plugin.display()))?;
    if out.status.success() {
        Ok(true)
    } else {
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(format!(
            "STATUS answered {}: {stdout}{}",
            out.status,
            if stderr.is_empty() {
                String::new()
            } else {
                format!(" (stderr: {stderr})")
            }
        ))
    }
}

/// A seed for lab ids and the management network: the time and this
/// process's id.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32) ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(text: &str) -> TestbedSpec {
        TestbedSpec::parse(Path::new("testbed.yaml"), text).unwrap()
    }

    const TWO_NODES: &str = "
nodes:
  - name: node-a
    nics: [eth1, eth2]
  - name: node-b
    nics: [eth1]
fabric:
  - name: tor-1
    ports: [node-a/eth1, node-b/eth1]
  - name: tor-2
    ports: [node-a/eth2]
    allowedVLANs: [\"100\", \"200-203\"]
";

    fn mgmt() -> MgmtNet {
        names::choose_mgmt_net(3, &[]).unwrap()
    }

    #[test]
    fn plans_name_everything_within_the_limits() {
        let id = LabId::generate(42);
        let p = plan(
            id.clone(),
            Path::new("/run/spur-hil"),
            &spec(TWO_NODES),
            Datapath::Netdev,
            mgmt(),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(p.dir, Path::new("/run/spur-hil").join(id.as_str()));
        let a = &p.nodes[0];
        assert_eq!(a.netns, format!("{id}-n-node-a"));
        assert_eq!(a.ovs.db_socket(), p.dir.join("node-a/ovs/db.sock"));
        assert_eq!(a.cni_socket, p.dir.join("node-a/cni.sock"));
        assert_eq!(a.pod_cidr.to_string(), "10.244.0.0/24");
        assert_eq!(p.nodes[1].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(a.mgmt_ip, mgmt().node(0));
        assert_ne!(a.mgmt_ip, p.nodes[1].mgmt_ip);
        assert_eq!(
            a.nics
                .iter()
                .map(|n| n.fabric_port.as_str())
                .collect::<Vec<_>>(),
            ["n0p0", "n0p1"]
        );
        assert_eq!(p.segments[0].bridge, "fab0");
        assert_eq!(
            p.segments[0].ports,
            [
                ("n0p0".to_string(), "node-a/eth1".to_string()),
                ("n1p0".to_string(), "node-b/eth1".to_string())
            ]
        );
        assert_eq!(p.segments[0].trunks, None);
        assert_eq!(p.segments[1].trunks, Some(vec![0, 100, 200, 201, 202, 203]));
        // Every link the lab names fits the kernel's limit.
        let mut links = vec![p.mgmt_bridge.clone(), MGMT_IFNAME.to_string()];
        for n in &p.nodes {
            links.push(n.mgmt_host_end.clone());
            for nic in &n.nics {
                links.push(nic.name.clone());
                links.push(nic.fabric_port.clone());
            }
        }
        links.extend(p.segments.iter().map(|s| s.bridge.clone()));
        for l in links {
            assert!(names::check_ifname(&l).is_ok(), "{l}");
        }
        // Every socket path fits too.
        for n in &p.nodes {
            for s in [
                n.ovs.db_socket(),
                n.ovs.vswitchd_ctl(),
                n.ovs.ovsdb_ctl(),
                n.cni_socket.clone(),
            ] {
                assert!(
                    s.as_os_str().len() <= names::MAX_SOCKET_PATH,
                    "{}",
                    s.display()
                );
            }
        }
    }

    #[test]
    fn real_nics_replace_veths_and_stay_off_the_fabric() {
        let map: RealNicMap = "node-a/eth2=enp3s0f0".parse().unwrap();
        let testbed = spec(
            "nodes:\n  - name: node-a\n    nics: [eth1, eth2]\nfabric:\n  - name: t\n    ports: [node-a/eth1]\n",
        );
        check_spec(&testbed, std::slice::from_ref(&map), &[]).unwrap();
        let p = plan(
            LabId::generate(1),
            Path::new("/run/spur-hil"),
            &testbed,
            Datapath::Netdev,
            mgmt(),
            std::slice::from_ref(&map),
            &[],
        )
        .unwrap();
        assert_eq!(p.nodes[0].nics[1].real.as_deref(), Some("enp3s0f0"));
        assert_eq!(p.nodes[0].nics[0].real, None);
        // On the fabric: refused.
        let on_fabric: RealNicMap = "node-a/eth1=enp3s0f0".parse().unwrap();
        let e = plan(
            LabId::generate(1),
            Path::new("/run/spur-hil"),
            &testbed,
            Datapath::Netdev,
            mgmt(),
            &[on_fabric],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("segment t"), "{e}");
    }

    #[test]
    fn real_nic_mappings_are_checked() {
        let testbed = spec(TWO_NODES);
        let m = |s: &str| s.parse::<RealNicMap>().unwrap();
        for (maps, needle) in [
            (vec![m("node-c/eth1=x")], "no node `node-c`"),
            (vec![m("node-a/eth9=x")], "no NIC `eth9`"),
            (
                vec![m("node-a/eth1=x"), m("node-a/eth1=y")],
                "already mapped",
            ),
            (vec![m("node-a/eth1=x"), m("node-b/eth1=x")], "also mapped"),
        ] {
            let e = check_spec(&testbed, &maps, &[]).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        for bad in [
            "node-a/eth1",
            "node-a=x",
            "/eth1=x",
            "node-a/eth1=",
            "a/b=waytoolonginterface",
        ] {
            assert!(bad.parse::<RealNicMap>().is_err(), "{bad}");
        }
        assert_eq!(m("node-a/eth1=enp3s0").to_string(), "node-a/eth1=enp3s0");
    }

    #[test]
    fn specs_the_lab_cannot_build_are_refused() {
        let clash = spec(
            "nodes:\n  - name: a\n    nics: [ens1f0u]\n    sriov:\n      - pf: ens1f0\n        vfs: 2\n        resourceName: intel.com/x\n",
        );
        let e = check_spec(&clash, &[], &[]).unwrap_err().to_string();
        assert!(
            e.contains("uplink of PF ens1f0") && e.contains("NIC ens1f0u"),
            "{e}"
        );
        let mgmt_nic = spec("nodes:\n  - name: a\n    nics: [mgmt0]\n");
        let e = check_spec(&mgmt_nic, &[], &[]).unwrap_err().to_string();
        assert!(e.contains("mgmt0"), "{e}");
    }

    const SRIOV: &str = "
nodes:
  - name: metal-a
    nics: [eth1]
    sriov:
      - pf: ens1f0
        vfs: 3
        resourceName: intel.com/a
  - name: vm-b
    sriov:
      - pf: ens1f0
        vfs: 2
        resourceName: intel.com/b
        vm: true
fabric:
  - name: tor
    ports: [metal-a/eth1, metal-a/ens1f0, vm-b/ens1f0]
";

    #[test]
    fn sriov_pfs_are_fabric_ports_and_real_ones_stay_off_it() {
        let testbed = spec(SRIOV);
        check_spec(&testbed, &[], &[]).unwrap();
        let p = plan(
            LabId::generate(5),
            Path::new("/run/spur-hil"),
            &testbed,
            Datapath::Netdev,
            mgmt(),
            &[],
            &[],
        )
        .unwrap();
        let a = &p.nodes[0];
        assert!(a.emulated_sriov());
        assert_eq!(a.sysfs_root, a.dir.join("sysfs"));
        assert_eq!(a.pod_resources_socket, a.dir.join("pod-resources.sock"));
        assert!(a.pod_resources_socket.as_os_str().len() <= names::MAX_SOCKET_PATH);
        assert_eq!(a.sriov[0].fabric_port, "n0p1");
        assert_eq!(a.sriov[0].nic.vfs[2].netdev, "ens1f0v2");
        assert_eq!(
            p.segments[0].ports,
            [
                ("n0p0".to_string(), "metal-a/eth1".to_string()),
                ("n0p1".to_string(), "metal-a/ens1f0".to_string()),
                ("n1p0".to_string(), "vm-b/ens1f0".to_string()),
            ]
        );
        // A real PF: the host's sysfs, off the fabric.
        let real: RealPfMap = "metal-a/ens1f0=enp59s0f0".parse().unwrap();
        check_spec(&testbed, &[], std::slice::from_ref(&real)).unwrap();
        let p = plan(
            LabId::generate(5),
            Path::new("/run/spur-hil"),
            &testbed,
            Datapath::Netdev,
            mgmt(),
            &[],
            std::slice::from_ref(&real),
        )
        .unwrap();
        assert!(!p.nodes[0].emulated_sriov());
        assert_eq!(p.nodes[0].sysfs_root, Path::new("/"));
        assert_eq!(p.nodes[0].sriov[0].real.as_deref(), Some("enp59s0f0"));
        assert_eq!(p.segments[0].ports.len(), 2, "{:?}", p.segments[0].ports);
    }

    #[test]
    fn real_pf_mappings_are_checked() {
        let testbed = spec(SRIOV);
        let m = |s: &str| s.parse::<RealPfMap>().unwrap();
        for (maps, nics, needle) in [
            (vec![m("node-c/ens1f0=x")], vec![], "no node `node-c`"),
            (vec![m("metal-a/ens1f1=x")], vec![], "no SR-IOV PF `ens1f1`"),
            (vec![m("vm-b/ens1f0=x")], vec![], "vm: true"),
            (
                vec![m("metal-a/ens1f0=x"), m("metal-a/ens1f0=y")],
                vec![],
                "clashes",
            ),
            (
                vec![m("metal-a/ens1f0=x")],
                vec!["metal-a/eth1=x".parse::<RealNicMap>().unwrap()],
                "also --real-nic",
            ),
        ] {
            let e = check_spec(&testbed, &nics, &maps).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn trunks_include_untagged() {
        let r = |s: &str| s.parse::<spur_testbed::VlanRange>().unwrap();
        assert_eq!(trunks(&[r("5"), r("3-4"), r("4")]), [0, 3, 4, 5]);
        assert_eq!(trunks(&[]), [0]);
        assert_eq!(compress([3, 4, 5, 9, 11, 12].into_iter()), "3-5,9,11-12");
    }

    #[test]
    fn missing_requirements_name_their_package() {
        let reqs = requirements();
        let gaps = missing(&reqs, |w| w != "ping" && !w.ends_with("/ptp"));
        assert_eq!(
            gaps,
            [
                "ping (Debian package iputils-ping)",
                "/usr/lib/cni/ptp (Debian package containernetworking-plugins)"
            ]
        );
        let e = LabError::Missing(gaps).to_string();
        assert!(e.ends_with("`make demo` installs them"), "{e}");
    }
}
