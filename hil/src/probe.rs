//! What the harness measures on the real machine: the interfaces inside a
//! Pod's network namespace ([`inspect`]), the Spur access ports of a node's
//! OVS ([`access_ports`]), reachability between Pod interfaces
//! ([`reachability`], with `ping` from the source interface) and the
//! delivery of multicast traffic ([`multicast`], with real sockets opened
//! inside the Pods' namespaces).
//!
//! What does not live here: building the report or judging it (the run
//! does that with `spur-testbed`), creating namespaces, switches or Pods
//! (the lab and the kubelet stand-in), and deciding which pairs to probe.
//!
//! Sockets are opened on threads that entered the Pod's namespace with
//! `setns` (a socket stays in the namespace it was created in), so no
//! helper process is needed; `ping`, `ip`, `bridge`, `ovs-vsctl` and
//! `ovs-appctl` are run as commands.

mod mcast;
pub mod parse;
pub(crate) mod sys;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use spur_testbed::{InterfaceRef, MulticastReport, PodRef};

/// Why a probe could not measure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// A host tool failed or could not be started.
    #[error("{what}: `{command}` {outcome}{}", colon(.stderr))]
    Command {
        /// What the probe was doing.
        what: String,
        /// The command line.
        command: String,
        /// How it ended ("exited with status 1", "could not be started: ...").
        outcome: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A host tool printed something the probe cannot read.
    #[error("{what}: cannot read the output of `{command}`: {reason}")]
    Output {
        /// What the probe was doing.
        what: String,
        /// The command line.
        command: String,
        /// What is wrong with the output.
        reason: String,
    },
    /// A network namespace cannot be entered.
    #[error("network namespace {netns}: cannot {op}: {reason}")]
    Netns {
        /// The namespace's name.
        netns: String,
        /// What was tried.
        op: String,
        /// The system's answer.
        reason: String,
    },
    /// A socket operation on an interface failed.
    #[error("{endpoint}: {op}: {reason}")]
    Socket {
        /// The interface (`ns/pod@if`) or namespace/interface.
        endpoint: String,
        /// What was tried.
        op: String,
        /// The system's answer.
        reason: String,
    },
    /// An endpoint cannot take part in a probe as given.
    #[error("{endpoint}: {reason}")]
    Endpoint {
        /// The interface (`ns/pod@if`).
        endpoint: String,
        /// Why.
        reason: String,
    },
}

fn colon(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// An interface as it really is inside a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceFacts {
    /// Its name.
    pub name: String,
    /// Its MAC address, lower-case `aa:bb:...` (empty for devices without
    /// one).
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses of global scope, with prefix lengths (IPv6 link-local
    /// addresses are left out).
    pub ips: Vec<IpNet>,
}

/// Reads interface `ifname` inside network namespace `netns` (`ip -j addr
/// show`); `Ok(None)` when the namespace has no such interface.
pub fn inspect(netns: &str, ifname: &str) -> Result<Option<IfaceFacts>, ProbeError> {
    let what = format!("inspecting {ifname} in network namespace {netns}");
    let args = ["-n", netns, "-j", "addr", "show", "dev", ifname];
    let text = match sys::run("ip", &args, None, &what) {
        Ok(t) => t,
        Err(ProbeError::Command { stderr, .. }) if stderr.contains("does not exist") => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    parse::ip_addr(&text, ifname).map_err(|reason| ProbeError::Output {
        what,
        command: format!("ip {}", args.join(" ")),
        reason,
    })
}

/// An OVS port Spur's agent made for a Pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPort {
    /// The port's name.
    pub name: String,
    /// The access VLAN (`tag`; 0 when empty, i.e. untagged).
    pub tag: u16,
    /// Its `external_ids` (`spur.dev/role`, `spur.dev/pod-namespace`,
    /// `spur.dev/pod-name`, `spur.dev/container-id`, `spur.dev/interface`,
    /// `spur.dev/network`, `spur.dev/netns`).
    pub external_ids: BTreeMap<String, String>,
}

impl AccessPort {
    /// The Pod the port serves, from `spur.dev/pod-namespace` and
    /// `spur.dev/pod-name`.
    pub fn pod(&self) -> Option<PodRef> {
        Some(PodRef::new(
            self.external_ids.get("spur.dev/pod-namespace")?,
            self.external_ids.get("spur.dev/pod-name")?,
        ))
    }

    /// The interface inside the Pod (`spur.dev/interface`).
    pub fn interface(&self) -> Option<&str> {
        self.external_ids
            .get("spur.dev/interface")
            .map(String::as_str)
    }

    /// True when the port serves Pod interface `id`.
    pub fn serves(&self, id: &InterfaceRef) -> bool {
        self.pod().as_ref() == Some(&id.pod) && self.interface() == Some(id.interface.as_str())
    }
}

/// The Spur access ports (`external_ids:spur.dev/role=access`) in the
/// OVSDB of the node whose namespace is `node_netns`, read through its
/// ovsdb-server socket `ovsdb_socket` (a unix socket: reachable from any
/// namespace; `node_netns` names the node in errors).
pub fn access_ports(node_netns: &str, ovsdb_socket: &Path) -> Result<Vec<AccessPort>, ProbeError> {
    let db = format!("--db=unix:{}", ovsdb_socket.display());
    let args = [
        db.as_str(),
        "--format=json",
        "--columns=name,tag,external_ids",
        "list",
        "Port",
    ];
    let what = format!("listing the OVS ports of node namespace {node_netns}");
    let text = sys::run("ovs-vsctl", &args, None, &what)?;
    parse::ovs_access_ports(&text).map_err(|reason| ProbeError::Output {
        what,
        command: format!("ovs-vsctl {}", args.join(" ")),
        reason,
    })
}

/// Every OVS port's access VLAN (0: untagged) in the OVSDB of the node
/// whose namespace is `node_netns` (see [`access_ports`]).
pub fn port_tags(
    node_netns: &str,
    ovsdb_socket: &Path,
) -> Result<BTreeMap<String, u16>, ProbeError> {
    let db = format!("--db=unix:{}", ovsdb_socket.display());
    let args = [
        db.as_str(),
        "--format=json",
        "--columns=name,tag",
        "list",
        "Port",
    ];
    let what = format!("listing the OVS port tags of node namespace {node_netns}");
    let text = sys::run("ovs-vsctl", &args, None, &what)?;
    parse::ovs_port_tags(&text).map_err(|reason| ProbeError::Output {
        what,
        command: format!("ovs-vsctl {}", args.join(" ")),
        reason,
    })
}

/// A Pod interface taking part in a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Which interface it is (`ns/pod@if`).
    pub id: InterfaceRef,
    /// The Pod's network namespace (name under /var/run/netns).
    pub netns: String,
    /// The interface's name inside it.
    pub ifname: String,
    /// Its addresses.
    pub ips: Vec<IpNet>,
}

impl Endpoint {
    /// Its first address of the family of `like`.
    pub fn addr_like(&self, like: IpAddr) -> Option<IpAddr> {
        self.ips
            .iter()
            .map(IpNet::addr)
            .find(|a| a.is_ipv4() == like.is_ipv4())
    }

    fn first_of(&self, v4: bool) -> Option<IpAddr> {
        self.ips.iter().map(IpNet::addr).find(|a| a.is_ipv4() == v4)
    }
}

/// How [`reachability_with`] pings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingOptions {
    /// How long one family of one pair may take before it counts as
    /// unreachable (the bound on negatives).
    pub deadline: Duration,
    /// The interval between echo requests while waiting for the first
    /// answer (the first ones may be lost to ARP/ND).
    pub interval: Duration,
    /// How many pings run at the same time.
    pub parallel: usize,
}

impl Default for PingOptions {
    /// 3 s per pair and family, a request every 200 ms, 16 at a time.
    fn default() -> Self {
        PingOptions {
            deadline: Duration::from_secs(3),
            interval: Duration::from_millis(200),
            parallel: 16,
        }
    }
}

/// For each pair `(from, to)`: whether `from` reaches `to` with every IP
/// family both have (one ping per family, from the source interface
/// itself, to `to`'s first address of that family). A pair with no
/// family in common reaches nothing (false). Pairs run in parallel with
/// [`PingOptions::default`].
pub fn reachability(pairs: &[(Endpoint, Endpoint)]) -> Vec<bool> {
    reachability_with(pairs, &PingOptions::default())
}

/// [`reachability`] with explicit options.
pub fn reachability_with(pairs: &[(Endpoint, Endpoint)], opts: &PingOptions) -> Vec<bool> {
    // One job per pair and common family.
    let mut jobs: Vec<(usize, IpAddr)> = Vec::new();
    let mut has_job = vec![false; pairs.len()];
    for (i, (from, to)) in pairs.iter().enumerate() {
        for v4 in [true, false] {
            if let (Some(_), Some(dst)) = (from.first_of(v4), to.first_of(v4)) {
                jobs.push((i, dst));
                has_job[i] = true;
            }
        }
    }
    let reached: Mutex<Vec<bool>> = Mutex::new(has_job);
    let next = AtomicUsize::new(0);
    let workers = opts.parallel.clamp(1, jobs.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(i, dst)) = jobs.get(n) else {
                    break;
                };
                let (from, to) = &pairs[i];
                let ok = ping(from, dst, opts);
                tracing::debug!(from = %from.id, to = %to.id, %dst, ok, "ping");
                if !ok {
                    let mut r = reached.lock().unwrap_or_else(|p| p.into_inner());
                    r[i] = false;
                }
            });
        }
    });
    reached.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// One ping from `from` to `dst`, answered within the deadline. `ping`
/// keeps sending every interval until the first reply; when it cannot
/// even send (an IPv6 source address still tentative, say) it is retried
/// until the deadline.
fn ping(from: &Endpoint, dst: IpAddr, opts: &PingOptions) -> bool {
    let start = Instant::now();
    let interval = format!("{:.3}", opts.interval.as_secs_f64().max(0.002));
    loop {
        let left = opts.deadline.saturating_sub(start.elapsed());
        // ping's deadline is whole seconds.
        let secs = left.as_secs_f64().ceil().max(1.0);
        if left.is_zero() {
            return false;
        }
        let family = if dst.is_ipv4() { "-4" } else { "-6" };
        let status = Command::new("ip")
            .args(["netns", "exec", &from.netns, "ping", family, "-n", "-q"])
            .args(["-c", "1", "-i", &interval, "-w", &format!("{secs:.0}")])
            .args(["-I", &from.ifname, &dst.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => return true,
            // 1: sent, no answer within the deadline.
            Ok(s) if s.code() == Some(1) => return false,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(from = %from.id, %dst, error = %e, "cannot run ping");
                return false;
            }
        }
        // Could not send yet: poll again shortly, within the deadline.
        if start.elapsed() + opts.interval >= opts.deadline {
            return false;
        }
        std::thread::sleep(opts.interval);
    }
}

/// A switch between multicast senders and listeners whose snooping must
/// have learned the members before the sender sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnoopingSwitch {
    /// The network namespace the switch lives in (a node's or the
    /// fabric's).
    pub netns: String,
    /// The bridge.
    pub bridge: String,
    /// What kind of switch it is.
    pub kind: SwitchKind,
    /// Its ports towards other switches (OVS port names): when the sender
    /// is on this switch and a member is not, one of them must have
    /// learned the group. Empty: not checked.
    pub uplinks: Vec<String>,
}

/// The kind of a [`SnoopingSwitch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchKind {
    /// An OVS bridge: `ovs-appctl --target=VSWITCHD_CTL mdb/show BRIDGE`
    /// (run inside the namespace) says what it learned; the OVSDB maps
    /// ports to Pod interfaces (Spur's `external_ids`) and to OpenFlow
    /// port numbers.
    Ovs {
        /// ovs-vswitchd's control socket (`OVS_RUNDIR/ovs-vswitchd.PID.ctl`).
        vswitchd_ctl: PathBuf,
        /// ovsdb-server's socket (`db.sock`).
        ovsdb_socket: PathBuf,
    },
    /// A Linux bridge: `bridge mdb show`; a member's port is the bridge
    /// port that is its veth peer.
    Linux,
}

/// What [`multicast`] needs besides the endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastProbe {
    /// The switches whose snooping must have learned the members before
    /// sending (those with snooping off are skipped).
    pub switches: Vec<SnoopingSwitch>,
    /// How many datagrams the sender sends.
    pub count: u32,
    /// The UDP port.
    pub port: u16,
    /// How long to wait for the switches to learn the members.
    pub learn_deadline: Duration,
    /// How long members may take to receive every datagram after sending.
    pub member_deadline: Duration,
    /// How long non-members keep counting after the members finished.
    pub non_member_window: Duration,
}

impl Default for MulticastProbe {
    /// No switches to wait for, 10 datagrams to UDP port 19500, 10 s to
    /// learn, 3 s for members, 500 ms more for non-members.
    fn default() -> Self {
        MulticastProbe {
            switches: Vec::new(),
            count: 10,
            port: 19500,
            learn_deadline: Duration::from_secs(10),
            member_deadline: Duration::from_secs(3),
            non_member_window: Duration::from_millis(500),
        }
    }
}

/// Sends `probe.count` datagrams to `group` from `sender`'s interface and
/// counts what each listener got: `members` join the group on their
/// interface and count datagrams delivered to their socket; `non_members`
/// do not join and count frames to the group seen on their interface (an
/// AF_PACKET socket). Before sending, waits until the snooping switches
/// learned the members (see [`SnoopingSwitch`]). Every listener appears in
/// [`MulticastReport::received`].
pub fn multicast(
    group: IpAddr,
    sender: &Endpoint,
    members: &[Endpoint],
    non_members: &[Endpoint],
    probe: &MulticastProbe,
) -> Result<MulticastReport, ProbeError> {
    mcast::run(group, sender, members, non_members, probe)
}
