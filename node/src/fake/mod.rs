//! In-memory stand-ins for the agent's system boundaries: a switch
//! ([`FakeSwitch`], for [`crate::ovsdb::Switch`]) and Pod links
//! ([`FakeLinks`], for [`crate::netdev::PodLinks`]). The agent's tests and
//! the simulator run the real agent logic over them; they keep what was
//! created so tests can assert on it, and can be told to fail.
//!
//! They model the rules the real implementations follow (a port name is
//! unique per switch, a link name per namespace, removing what is absent
//! is not an error), not their performance or packets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::future::BoxFuture;
use ipnet::IpNet;

use crate::netdev::{CreatedVeth, HostLinkState, NetdevError, PodLinkState, PodLinks, VethSpec};
use crate::ovsdb::switch::{ROLE_ACCESS, ROLE_KEY};
use crate::ovsdb::{BridgeSpec, PortInfo, Switch, SwitchError};

#[derive(Debug, Default)]
struct SwitchState {
    bridges: BTreeMap<String, BridgeSpec>,
    ports: BTreeMap<String, (String, PortInfo)>,
    next_ofport: i64,
    fail_add_port: BTreeSet<String>,
}

/// A switch in memory.
#[derive(Debug, Default)]
pub struct FakeSwitch {
    state: Mutex<SwitchState>,
}

impl FakeSwitch {
    /// An empty switch.
    pub fn new() -> FakeSwitch {
        FakeSwitch::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SwitchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bridges ensured so far.
    pub fn bridges(&self) -> BTreeMap<String, BridgeSpec> {
        self.lock().bridges.clone()
    }

    /// Every access port, as (bridge, port).
    pub fn access_ports(&self) -> Vec<(String, PortInfo)> {
        self.lock()
            .ports
            .values()
            .filter(|(_, p)| p.external_ids.get(ROLE_KEY).map(String::as_str) == Some(ROLE_ACCESS))
            .cloned()
            .collect()
    }

    /// Makes adding the port `name` fail (a switch that refuses it).
    pub fn fail_port(&self, name: &str) {
        self.lock().fail_add_port.insert(name.to_string());
    }
}

impl Switch for FakeSwitch {
    fn ensure_bridge<'a>(&'a self, spec: &'a BridgeSpec) -> BoxFuture<'a, Result<(), SwitchError>> {
        Box::pin(async move {
            self.lock().bridges.insert(spec.name.clone(), spec.clone());
            Ok(())
        })
    }

    fn add_access_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a str,
        vlan_tag: u16,
        mut external_ids: BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), SwitchError>> {
        Box::pin(async move {
            let mut s = self.lock();
            if !s.bridges.contains_key(bridge) {
                return Err(SwitchError::NoSuchBridge(bridge.to_string()));
            }
            if vlan_tag > 4094 {
                return Err(SwitchError::InvalidVlan(vlan_tag));
            }
            if s.fail_add_port.contains(port) {
                return Err(SwitchError::Backend(format!(
                    "injected failure adding {port}"
                )));
            }
            if let Some((b, _)) = s.ports.get(port) {
                if b != bridge {
                    return Err(SwitchError::PortConflict {
                        port: port.to_string(),
                        bridge: bridge.to_string(),
                    });
                }
            }
            s.next_ofport += 1;
            let ofport = s.next_ofport;
            external_ids.insert(ROLE_KEY.to_string(), ROLE_ACCESS.to_string());
            s.ports.insert(
                port.to_string(),
                (
                    bridge.to_string(),
                    PortInfo {
                        name: port.to_string(),
                        tag: vlan_tag,
                        external_ids,
                        ofport: Some(ofport),
                    },
                ),
            );
            Ok(())
        })
    }

    fn remove_port<'a>(
        &'a self,
        bridge: &'a str,
        port: &'a str,
    ) -> BoxFuture<'a, Result<bool, SwitchError>> {
        Box::pin(async move {
            let mut s = self.lock();
            match s.ports.get(port) {
                Some((b, _)) if b == bridge => Ok(s.ports.remove(port).is_some()),
                _ => Ok(false),
            }
        })
    }

    fn list_ports<'a>(
        &'a self,
        bridge: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PortInfo>, SwitchError>> {
        Box::pin(async move {
            let s = self.lock();
            if !s.bridges.contains_key(bridge) {
                return Err(SwitchError::NoSuchBridge(bridge.to_string()));
            }
            Ok(s.ports
                .values()
                .filter(|(b, _)| b == bridge)
                .map(|(_, p)| p.clone())
                .collect())
        })
    }

    fn list_bridges(&self) -> BoxFuture<'_, Result<Vec<String>, SwitchError>> {
        Box::pin(async move { Ok(self.lock().bridges.keys().cloned().collect()) })
    }
}

/// A Pod end as [`FakeLinks`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePodLink {
    /// The host end's name.
    pub host: String,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: [u8; 6],
    /// Addresses.
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Default)]
struct LinksState {
    /// Network namespaces that exist.
    netns: BTreeSet<PathBuf>,
    /// (netns, ifname) -> Pod end.
    pod: BTreeMap<(PathBuf, String), FakePodLink>,
    /// host name -> (netns, ifname).
    host: BTreeMap<String, (PathBuf, String)>,
    next_index: u32,
    fail_create: BTreeSet<String>,
    /// Interfaces of the agent's netns that are not Pods' (NICs), with
    /// their addresses.
    nics: BTreeMap<String, Vec<IpNet>>,
}

/// Pod links in memory; network namespaces exist once added with
/// [`FakeLinks::add_netns`].
#[derive(Debug, Default)]
pub struct FakeLinks {
    state: Mutex<LinksState>,
}

impl FakeLinks {
    /// No namespaces, no links.
    pub fn new() -> FakeLinks {
        FakeLinks::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinksState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A Pod network namespace appears (the runtime made a sandbox).
    pub fn add_netns(&self, path: &Path) {
        self.lock().netns.insert(path.to_path_buf());
    }

    /// A namespace disappears with every link in it (the sandbox died).
    pub fn remove_netns(&self, path: &Path) {
        let mut s = self.lock();
        s.netns.remove(path);
        let gone: Vec<(PathBuf, String)> =
            s.pod.keys().filter(|(n, _)| n == path).cloned().collect();
        for k in gone {
            if let Some(l) = s.pod.remove(&k) {
                s.host.remove(&l.host);
            }
        }
    }

    /// Makes creating a link whose Pod end is `ifname` fail.
    pub fn fail_create(&self, ifname: &str) {
        self.lock().fail_create.insert(ifname.to_string());
    }

    /// A NIC of the node (in the agent's netns) with `addresses`.
    pub fn add_nic(&self, name: &str, addresses: &[IpNet]) {
        self.lock()
            .nics
            .insert(name.to_string(), addresses.to_vec());
    }

    /// Every host end that exists.
    pub fn host_links(&self) -> Vec<String> {
        self.lock().host.keys().cloned().collect()
    }

    /// The Pod end `ifname` in `netns`.
    pub fn pod_link(&self, netns: &Path, ifname: &str) -> Option<FakePodLink> {
        self.lock()
            .pod
            .get(&(netns.to_path_buf(), ifname.to_string()))
            .cloned()
    }
}

impl PodLinks for FakeLinks {
    fn create_veth<'a>(
        &'a self,
        spec: &'a VethSpec,
    ) -> BoxFuture<'a, Result<CreatedVeth, NetdevError>> {
        Box::pin(async move {
            let mut s = self.lock();
            spec.validate()?;
            if s.fail_create.contains(&spec.ifname) {
                return Err(NetdevError::Backend(format!(
                    "injected failure creating {}",
                    spec.ifname
                )));
            }
            if !s.netns.contains(&spec.netns) {
                return Err(NetdevError::NetnsNotFound {
                    netns: spec.netns.clone(),
                });
            }
            let key = (spec.netns.clone(), spec.ifname.clone());
            if s.pod.contains_key(&key) {
                return Err(NetdevError::PodLinkExists {
                    netns: spec.netns.clone(),
                    ifname: spec.ifname.clone(),
                });
            }
            if s.host.contains_key(&spec.host_name) {
                return Err(NetdevError::HostLinkExists {
                    host_name: spec.host_name.clone(),
                });
            }
            s.next_index += 1;
            let index = s.next_index;
            s.host.insert(spec.host_name.clone(), key.clone());
            s.pod.insert(
                key,
                FakePodLink {
                    host: spec.host_name.clone(),
                    mtu: spec.mtu,
                    mac: spec.mac,
                    addresses: spec.addresses.clone(),
                },
            );
            Ok(CreatedVeth {
                host_index: index,
                mac: spec.mac,
            })
        })
    }

    fn delete_host_link<'a>(
        &'a self,
        host_name: &'a str,
    ) -> BoxFuture<'a, Result<bool, NetdevError>> {
        Box::pin(async move {
            let mut s = self.lock();
            match s.host.remove(host_name) {
                Some(key) => {
                    s.pod.remove(&key);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn delete_pod_link<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<bool, NetdevError>> {
        Box::pin(async move {
            let mut s = self.lock();
            match s.pod.remove(&(netns.to_path_buf(), ifname.to_string())) {
                Some(l) => {
                    s.host.remove(&l.host);
                    Ok(true)
                }
                None => Ok(false),
            }
        })
    }

    fn inspect_pod_link<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodLinkState>, NetdevError>> {
        Box::pin(async move {
            if !self.lock().netns.contains(netns) {
                return Err(NetdevError::NetnsNotFound {
                    netns: netns.to_path_buf(),
                });
            }
            Ok(self.pod_link(netns, ifname).map(|l| PodLinkState {
                index: 0,
                mac: Some(l.mac),
                mtu: l.mtu,
                up: true,
                addresses: l.addresses,
                is_veth: true,
                peer_index: None,
                routes: Vec::new(),
            }))
        })
    }

    fn host_addresses<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<IpNet>>, NetdevError>> {
        Box::pin(async move {
            let s = self.lock();
            if let Some(a) = s.nics.get(name) {
                return Ok(Some(a.clone()));
            }
            Ok(s.host.contains_key(name).then(Vec::new))
        })
    }

    fn host_link<'a>(
        &'a self,
        host_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<HostLinkState>, NetdevError>> {
        Box::pin(async move {
            let s = self.lock();
            Ok(s.host
                .get(host_name)
                .and_then(|k| s.pod.get(k))
                .map(|l| HostLinkState {
                    index: 0,
                    up: true,
                    mtu: l.mtu,
                }))
        })
    }
}
