//! The CNI plugins the simulated kubelet runs, with the real plugins'
//! observable behaviour:
//!
//! - `spur`: the real plugin's request (built by
//!   [`spur_core::cniproto::Invocation`] from the same environment and
//!   stdin, so it refuses what the plugin refuses) handed to the node's
//!   agent through [`CniTarget`]; an agent that is down answers what the
//!   plugin prints when its socket is unreachable ([`agent_unreachable`]);
//! - the primary CNI ([`PrimaryCni`]: `ptp` + `host-local`): `eth0` with the
//!   lowest free address of the node's pod CIDR (its first address is the
//!   gateway), a default route, a CNI 1.0.0 result; DEL releases;
//! - `macvlan` (bridge mode) on a node NIC, its IPAM delegated: `ipam.type:
//!   spur` is an [`AgentRequest`] to the agent in the IPAM role, as Debian's
//!   macvlan execs the `spur` IPAM plugin; the link gets the IPAM result's
//!   addresses; DEL releases (IPAM first, then the link, as macvlan does);
//! - any other type (bridge, ipvlan, host-device, sriov, ...): a CNI error
//!   naming the network and the type ("not simulated").
//!
//! The boundaries are two small traits the world implements: [`CniTarget`]
//! (the node's agent process) and [`SandboxHost`] (network namespaces and
//! the links non-Spur plugins make, backed by spur-node's fake links).
//!
//! What does not live here: which plugins a Pod gets and in which order
//! (the kubelet), Spur's own logic (the agent).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use futures::future::BoxFuture;
use ipnet::IpNet;
use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use serde_json::{json, Value};
use spur_core::cni::CniVersion;
use spur_core::cniproto::{AgentRequest, CniError, CniResult, Command, Invocation};

/// The node's spur agent, as the `spur` plugin reaches it. The world routes
/// a request into the agent process (as a task of it, so a crash
/// interrupts it); when the agent is down, or crashes meanwhile, the answer
/// is [`agent_unreachable`].
pub trait CniTarget: Send + Sync {
    /// One request, answered with the agent's result or error.
    fn call(&self, req: AgentRequest) -> BoxFuture<'_, Result<Value, CniError>>;

    /// Completes once the node's network is ready for new sandboxes (the
    /// plugin's STATUS succeeds), as kubelet waits for the runtime's
    /// NetworkReady condition before creating Pod sandboxes. Default: at
    /// once.
    fn wait_ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The error the `spur` plugin prints for `command` when the agent's socket
/// `socket` cannot be connected to (the agent is not running): code 11
/// (50 for STATUS), exactly as `spur_cni::transport_failure` maps a refused
/// connection.
pub fn agent_unreachable(command: Command, socket: &Path) -> CniError {
    let e = spur_cni::TransportError::Connect {
        path: socket.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    };
    spur_cni::transport_failure(command, &e)
}

/// What a non-Spur plugin puts into a Pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignLink {
    /// The interface name inside the Pod.
    pub ifname: String,
    /// What it is.
    pub kind: ForeignKind,
    /// Its MAC address.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses, with prefix lengths.
    pub addresses: Vec<IpNet>,
}

/// The kind of a [`ForeignLink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForeignKind {
    /// The primary CNI's veth (`ptp`): the peer is the node's `host_ifname`.
    Veth {
        /// The host side's name.
        host_ifname: String,
    },
    /// A macvlan on node NIC `master`, in `mode` (`bridge`).
    Macvlan {
        /// The node NIC.
        master: String,
        /// The macvlan mode.
        mode: String,
    },
}

/// The node's network namespaces and the links non-Spur plugins make.
/// Synchronous: the world backs it with in-memory state.
pub trait SandboxHost: Send + Sync {
    /// Creates the Pod namespace `name` (loopback up); returns its path
    /// (`CNI_NETNS`).
    fn create_netns(&self, name: &str) -> Result<String, String>;
    /// Removes the namespace at `path` and everything in it; a namespace
    /// that is already gone is fine.
    fn remove_netns(&self, path: &str) -> Result<(), String>;
    /// True when the namespace at `path` exists.
    fn netns_exists(&self, path: &str) -> bool;
    /// True when the node has NIC `name` (a macvlan master).
    fn has_nic(&self, name: &str) -> bool;
    /// Adds `link` to the namespace at `netns`; an interface of that name
    /// already there is an error.
    fn add_link(&self, netns: &str, link: ForeignLink) -> Result<(), String>;
    /// Removes interface `ifname` from the namespace at `netns`; one that
    /// is not there (or a namespace that is gone) is fine.
    fn remove_link(&self, netns: &str, ifname: &str) -> Result<(), String>;
    /// The interface names in the namespace at `netns` (for checks).
    fn links(&self, _netns: &str) -> Vec<String> {
        Vec::new()
    }
}

/// One plugin invocation, as the runtime passes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginCall {
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (the namespace's path).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` pairs, in order.
    pub args: Vec<(String, String)>,
    /// The plugin's config on stdin (libcni's: `name`, `cniVersion`,
    /// `prevResult`, `runtimeConfig` included).
    pub config: Value,
}

impl PluginCall {
    /// `CNI_ARGS` as `K=V;K=V`.
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The plugin's `type`.
    pub fn plugin_type(&self) -> &str {
        self.config
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    fn version(&self) -> CniVersion {
        self.config
            .get("cniVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
            .unwrap_or(CniVersion::LATEST)
    }
}

/// The primary CNI's address bookkeeping on one node (`host-local` on
/// the pod CIDR): lowest free address first, the first address is the
/// gateway, the last of an IPv4 subnet its broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryIpam {
    cidr: IpNet,
    /// Address -> (container ID, interface).
    used: BTreeMap<IpAddr, (String, String)>,
}

impl PrimaryIpam {
    /// The bookkeeping of `cidr` (its network is used).
    pub fn new(cidr: IpNet) -> PrimaryIpam {
        PrimaryIpam {
            cidr: cidr.trunc(),
            used: BTreeMap::new(),
        }
    }

    /// The pod CIDR.
    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// The gateway (the CIDR's first address).
    pub fn gateway(&self) -> Option<IpAddr> {
        self.cidr.hosts().next()
    }

    /// Addresses held, with their owners.
    pub fn used(&self) -> &BTreeMap<IpAddr, (String, String)> {
        &self.used
    }

    /// The address of `(container_id, ifname)`: the one it holds (ADD is
    /// idempotent per container, as host-local's), else the lowest free.
    pub fn allocate(&mut self, container_id: &str, ifname: &str) -> Result<IpAddr, String> {
        if let Some((ip, _)) = self
            .used
            .iter()
            .find(|(_, (c, i))| c == container_id && i == ifname)
        {
            return Ok(*ip);
        }
        let gw = self.gateway();
        let free = self
            .cidr
            .hosts()
            .filter(|ip| Some(*ip) != gw)
            .find(|ip| !self.used.contains_key(ip))
            .ok_or_else(|| {
                format!(
                    "failed to allocate for range 0: no IP addresses available in range set: {}",
                    self.cidr
                )
            })?;
        self.used
            .insert(free, (container_id.to_string(), ifname.to_string()));
        Ok(free)
    }

    /// Releases what `(container_id, ifname)` holds (nothing is fine).
    pub fn release(&mut self, container_id: &str, ifname: &str) {
        self.used
            .retain(|_, (c, i)| !(c == container_id && i == ifname));
    }

    /// Forgets everything (a node reboot with the data dir on tmpfs).
    pub fn clear(&mut self) {
        self.used.clear();
    }
}

/// A locally administered unicast MAC from `rng`.
pub fn random_mac(rng: &mut ChaCha8Rng) -> String {
    let mut b = [0u8; 6];
    for x in b.iter_mut() {
        *x = (rng.next_u32() & 0xff) as u8;
    }
    b[0] = (b[0] & 0xfc) | 0x02;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A CNI error of a plugin type the simulator does not run.
pub fn not_simulated(network: &str, plugin_type: &str) -> CniError {
    CniError::invalid_config(format!(
        "CNI plugin type {plugin_type:?} (network {network}) is not simulated: spur-sim runs \
         spur, macvlan and the primary ptp/host-local"
    ))
}

/// The plugins of one node, as the sim runs them.
pub struct Plugins<'a> {
    /// The node's agent.
    pub agent: &'a dyn CniTarget,
    /// The node's namespaces and links.
    pub host: &'a dyn SandboxHost,
    /// The primary CNI's addresses.
    pub primary: &'a std::sync::Mutex<PrimaryIpam>,
    /// MACs of links the plugins make.
    pub rng: &'a std::sync::Mutex<ChaCha8Rng>,
}

impl Plugins<'_> {
    /// Runs the plugin `call.config.type` names. `network` names the
    /// network for errors (NAD `ns/name` or the primary list's name).
    pub async fn invoke(&self, call: &PluginCall, network: &str) -> Result<Value, CniError> {
        match call.plugin_type() {
            "spur" => self.spur(call).await,
            "ptp" => self.ptp(call),
            "macvlan" => self.macvlan(call, network).await,
            other => Err(not_simulated(network, other)),
        }
    }

    /// The `spur` plugin: the request it would send, to the agent.
    async fn spur(&self, call: &PluginCall) -> Result<Value, CniError> {
        let req = agent_request(call)?;
        let command = req.command;
        match self.agent.call(req).await {
            Ok(Value::Null) if command == Command::Add => Err(CniError::decode(
                "spur-agent answered ADD with no result (null); ADD must return one",
            )),
            other => other,
        }
    }

    /// `ptp` with `host-local` for the primary interface.
    fn ptp(&self, call: &PluginCall) -> Result<Value, CniError> {
        let host_ifname = format!(
            "veth{}",
            call.container_id.chars().take(8).collect::<String>()
        );
        match call.command {
            Command::Add => {
                let (ip, cidr, gw) = {
                    let mut p = lock(self.primary);
                    let ip = p
                        .allocate(&call.container_id, &call.ifname)
                        .map_err(CniError::exhausted)?;
                    (ip, p.cidr(), p.gateway())
                };
                let address = IpNet::new(ip, cidr.prefix_len())
                    .map_err(|e| CniError::invalid_config(format!("host-local: {cidr}: {e}")))?;
                let mac = mac_of_ip(ip);
                let host_mac = random_mac(&mut lock(self.rng));
                let link = ForeignLink {
                    ifname: call.ifname.clone(),
                    kind: ForeignKind::Veth {
                        host_ifname: host_ifname.clone(),
                    },
                    mac: mac.clone(),
                    mtu: 1500,
                    addresses: vec![address],
                };
                if let Err(e) = self.host.add_link(&call.netns, link) {
                    lock(self.primary).release(&call.container_id, &call.ifname);
                    return Err(CniError::io(format!(
                        "failed to create veth {}: {e}",
                        call.ifname
                    )));
                }
                let default_dst = if ip.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
                let mut ip_entry = json!({"interface": 1, "address": address.to_string()});
                if let Some(gw) = gw {
                    ip_entry["gateway"] = json!(gw.to_string());
                }
                Ok(json!({
                    "cniVersion": call.version().as_str(),
                    "interfaces": [
                        {"name": host_ifname, "mac": host_mac},
                        {"name": call.ifname, "mac": mac, "sandbox": call.netns},
                    ],
                    "ips": [ip_entry],
                    "routes": [{"dst": default_dst}],
                    "dns": {},
                }))
            }
            Command::Del => {
                lock(self.primary).release(&call.container_id, &call.ifname);
                if !call.netns.is_empty() {
                    self.host
                        .remove_link(&call.netns, &call.ifname)
                        .map_err(CniError::io)?;
                }
                Ok(Value::Null)
            }
            _ => Ok(Value::Null),
        }
    }

    /// `macvlan` with its IPAM delegated.
    async fn macvlan(&self, call: &PluginCall, network: &str) -> Result<Value, CniError> {
        let cfg = &call.config;
        let ipam_type = cfg
            .get("ipam")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str);
        match ipam_type {
            None | Some("spur") => {}
            Some(other) => {
                return Err(CniError::invalid_config(format!(
                    "network {network}: IPAM type {other:?} of macvlan is not simulated (spur-sim \
                     runs ipam.type spur)"
                )))
            }
        }
        let ipam_call = |command: Command| PluginCall {
            command,
            ..call.clone()
        };
        match call.command {
            Command::Add => {
                let master = cfg
                    .get("master")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if master.is_empty() {
                    return Err(CniError::invalid_config(format!(
                        "network {network}: macvlan without \"master\" is not simulated (the \
                         real plugin takes the default route's interface)"
                    )));
                }
                if !self.host.has_nic(master) {
                    return Err(CniError::raw(
                        0,
                        format!("failed to lookup master {master:?}: Link not found"),
                    ));
                }
                let mode = cfg
                    .get("mode")
                    .and_then(Value::as_str)
                    .unwrap_or("bridge")
                    .to_string();
                if mode != "bridge" {
                    return Err(not_simulated(network, &format!("macvlan mode {mode}")));
                }
                let mtu = cfg
                    .get("mtu")
                    .and_then(Value::as_u64)
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|m| *m > 0)
                    .unwrap_or(1500);
                let ipam = match ipam_type {
                    Some(_) => {
                        let v = self.spur(&ipam_call(Command::Add)).await?;
                        Some(CniResult::parse(&v)?)
                    }
                    None => None,
                };
                let mac = cfg
                    .pointer("/runtimeConfig/mac")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| random_mac(&mut lock(self.rng)));
                let addresses: Vec<IpNet> = ipam
                    .as_ref()
                    .map(|r| r.ips.iter().map(|i| i.address).collect())
                    .unwrap_or_default();
                let link = ForeignLink {
                    ifname: call.ifname.clone(),
                    kind: ForeignKind::Macvlan {
                        master: master.to_string(),
                        mode,
                    },
                    mac: mac.clone(),
                    mtu,
                    addresses,
                };
                if let Err(e) = self.host.add_link(&call.netns, link) {
                    if ipam.is_some() {
                        let _ = self.spur(&ipam_call(Command::Del)).await;
                    }
                    return Err(CniError::raw(0, format!("failed to create macvlan: {e}")));
                }
                let mut result = json!({
                    "cniVersion": call.version().as_str(),
                    "interfaces": [{"name": call.ifname, "mac": mac, "sandbox": call.netns}],
                    "ips": [],
                    "routes": [],
                    "dns": {},
                });
                if let Some(r) = ipam {
                    let rendered = r.render(call.version());
                    let mut ips = rendered.get("ips").cloned().unwrap_or(json!([]));
                    if let Some(list) = ips.as_array_mut() {
                        for ip in list {
                            ip["interface"] = json!(0);
                        }
                    }
                    result["ips"] = ips;
                    result["routes"] = rendered.get("routes").cloned().unwrap_or(json!([]));
                    result["dns"] = rendered.get("dns").cloned().unwrap_or(json!({}));
                }
                Ok(result)
            }
            Command::Del => {
                if ipam_type.is_some() {
                    self.spur(&ipam_call(Command::Del)).await?;
                }
                if !call.netns.is_empty() {
                    self.host
                        .remove_link(&call.netns, &call.ifname)
                        .map_err(CniError::io)?;
                }
                Ok(Value::Null)
            }
            _ => Ok(Value::Null),
        }
    }
}

/// The request the `spur` plugin sends for `call`: the invocation read
/// from the same environment and stdin as the real plugin reads, so an
/// invocation it refuses is refused here with the same error.
pub fn agent_request(call: &PluginCall) -> Result<AgentRequest, CniError> {
    let args = call.cni_args();
    let env = |k: &str| -> Option<String> {
        match k {
            "CNI_COMMAND" => Some(call.command.as_str().to_string()),
            "CNI_CONTAINERID" => Some(call.container_id.clone()),
            "CNI_NETNS" => Some(call.netns.clone()),
            "CNI_IFNAME" => Some(call.ifname.clone()),
            "CNI_ARGS" => Some(args.clone()),
            "CNI_PATH" => Some("/opt/cni/bin".to_string()),
            _ => None,
        }
    };
    let stdin = call.config.to_string();
    let inv = Invocation::from_env(env, stdin.as_bytes())?;
    Ok(inv.to_request())
}

/// The MAC ptp gives `eth0` in the sim: `0a:58` and the address's last
/// four bytes (Kubernetes' convention for IP-derived MACs).
pub fn mac_of_ip(ip: IpAddr) -> String {
    let b: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets()[12..].to_vec(),
    };
    format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

/// The interface names inside the sandbox that a CNI result names.
pub fn sandbox_interfaces(result: &Value) -> BTreeSet<String> {
    CniResult::parse(result)
        .map(|r| {
            r.interfaces
                .iter()
                .filter(|i| i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
                .map(|i| i.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn host_local_takes_the_lowest_free_address() {
        let mut p = PrimaryIpam::new("10.244.1.7/24".parse().unwrap());
        assert_eq!(p.gateway(), Some("10.244.1.1".parse().unwrap()));
        let a = p.allocate("c1", "eth0").unwrap();
        let b = p.allocate("c2", "eth0").unwrap();
        assert_eq!(a.to_string(), "10.244.1.2");
        assert_eq!(b.to_string(), "10.244.1.3");
        assert_eq!(p.allocate("c1", "eth0").unwrap(), a, "idempotent");
        p.release("c1", "eth0");
        assert_eq!(p.allocate("c3", "eth0").unwrap(), a, "lowest free again");
        let mut tiny = PrimaryIpam::new("10.0.0.0/30".parse().unwrap());
        tiny.allocate("x", "eth0").unwrap();
        assert!(tiny.allocate("y", "eth0").unwrap_err().contains("no IP"));
    }

    #[test]
    fn agent_down_is_try_again_later() {
        let e = agent_unreachable(Command::Add, Path::new("/var/run/spur/cni.sock"));
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("not running"), "{e}");
        assert_eq!(agent_unreachable(Command::Status, Path::new("/x")).code, 50);
    }

    #[test]
    fn requests_are_the_plugins() {
        let call = PluginCall {
            command: Command::Add,
            container_id: "abc".into(),
            netns: "/var/run/netns/p".into(),
            ifname: "eth0".into(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), "a".into()),
            ],
            config: json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "spur"}),
        };
        let req = agent_request(&call).unwrap();
        assert_eq!(req.command, Command::Add);
        assert_eq!(req.args["K8S_POD_NAME"], "a");
        let mut bad = call.clone();
        bad.config = json!({"name": "x", "type": "spur"});
        assert_eq!(agent_request(&bad).unwrap_err().code, 1);
        assert_eq!(
            mac_of_ip("10.244.0.5".parse().unwrap()),
            "0a:58:0a:f4:00:05"
        );
    }
}
