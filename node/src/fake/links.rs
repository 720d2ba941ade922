//! [`FakeLinks`]: the kernel's network namespaces and links, in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use ipnet::IpNet;
use nix::errno::Errno;

use super::{FaultHook, FaultPoint, HookSlot, Op, Step, Subject};
use crate::netdev::{
    check_ifname, CreatedVeth, HostLinkState, NetdevError, Netns, PodLinkState, PodLinks,
    RouteSpec, VethSpec,
};
use crate::sriov::vf::{PfVfSettings, PodVf, VfAttachSpec, VfLinks, VfRecord};

/// What made a link of a Pod netns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkKind {
    /// Spur's veth Pod end; `host` is its peer in the agent's netns.
    Veth {
        /// The host end's name.
        host: String,
    },
    /// The primary CNI's interface (a veth whose peer Spur does not
    /// know), e.g. `eth0`.
    Primary,
    /// A macvlan interface on the node's NIC `parent`.
    Macvlan {
        /// The NIC it sits on.
        parent: String,
    },
    /// An SR-IOV VF's netdev moved into the Pod, with the alias it
    /// carries (Spur writes its restore record there).
    Vf {
        /// The VF's PCI address.
        pci: String,
        /// Its alias.
        alias: String,
    },
    /// Any other interface another plugin made, by its kind (`ipvlan`,
    /// ...).
    Other(String),
}

/// A link inside a Pod netns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    /// Its ifindex (unique across the fake).
    pub index: u32,
    /// What made it.
    pub kind: LinkKind,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: [u8; 6],
    /// Addresses, in the order they were added (the kernel's IPv6
    /// link-local address is not modelled).
    pub addresses: Vec<IpNet>,
    /// Routes through it that someone added.
    pub routes: Vec<RouteSpec>,
    /// Administratively up.
    pub up: bool,
}

/// A veth's host end, in the agent's netns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEnd {
    /// The Pod netns of its peer.
    pub netns: PathBuf,
    /// Its peer's name there.
    pub ifname: String,
    /// Its ifindex.
    pub index: u32,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
}

/// A NIC of the node (in the agent's netns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicState {
    /// Its ifindex.
    pub index: u32,
    /// MTU (1500).
    pub mtu: u32,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
}

/// A link another plugin makes in a Pod netns
/// ([`FakeLinks::add_foreign_link`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignLink {
    /// What it is (not [`LinkKind::Veth`], which is Spur's).
    pub kind: LinkKind,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: [u8; 6],
    /// Addresses.
    pub addresses: Vec<IpNet>,
}

/// An SR-IOV VF's netdev in the agent's netns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostVf {
    /// The VF's PCI address.
    pub pci: String,
    /// Its ifindex.
    pub index: u32,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: [u8; 6],
    /// Its alias (empty: none).
    pub alias: String,
    /// Addresses.
    pub addresses: Vec<IpNet>,
    /// Administratively up.
    pub up: bool,
}

/// Everything [`FakeLinks`] holds, read back ([`FakeLinks::snapshot`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinksSnapshot {
    /// Every Pod netns with its links by name.
    pub netns: BTreeMap<PathBuf, BTreeMap<String, PodLink>>,
    /// Every veth host end by name.
    pub hosts: BTreeMap<String, HostEnd>,
    /// Every NIC by name.
    pub nics: BTreeMap<String, NicState>,
    /// SR-IOV VF netdevs in the agent's netns, by name.
    pub vfs: BTreeMap<String, HostVf>,
    /// What each PF sets for each of its VFs, by (PF, VF index).
    pub pf_vfs: BTreeMap<(String, u16), PfVfSettings>,
}

#[derive(Debug, Default)]
struct LinksState {
    /// Pod netns -> its links by name.
    netns: BTreeMap<PathBuf, BTreeMap<String, PodLink>>,
    /// Host end name -> host end.
    hosts: BTreeMap<String, HostEnd>,
    /// NICs of the agent's netns.
    nics: BTreeMap<String, NicState>,
    /// VF netdevs of the agent's netns.
    vfs: BTreeMap<String, HostVf>,
    /// (PF, VF index) -> what the PF sets.
    pf_vfs: BTreeMap<(String, u16), PfVfSettings>,
    /// VF PCI address -> the name its driver gives it (after a reboot).
    vf_driver_names: BTreeMap<String, String>,
    next_index: u32,
    fail_create: BTreeSet<String>,
}

impl LinksState {
    fn index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }

    /// Deletes the pair of host end `host`.
    fn delete_pair(&mut self, host: &str) -> bool {
        let Some(h) = self.hosts.remove(host) else {
            return false;
        };
        if let Some(links) = self.netns.get_mut(&h.netns) {
            links.remove(&h.ifname);
        }
        true
    }

    /// Deletes the pair whose host end is `host` with ifindex `index`, if
    /// that one is still there.
    fn delete_pair_if(&mut self, host: &str, index: u32) {
        if self.hosts.get(host).is_some_and(|h| h.index == index) {
            self.delete_pair(host);
        }
    }

    fn taken_in_agent_ns(&self, name: &str) -> bool {
        self.hosts.contains_key(name) || self.nics.contains_key(name) || self.vfs.contains_key(name)
    }

    /// A VF's netdev comes (back) to the agent's netns as `name`, or as
    /// `dev<ifindex>` when that name is taken (what the kernel does when a
    /// namespace with a physical device goes away).
    fn vf_home(&mut self, name: &str, vf: HostVf) -> String {
        let name = if self.taken_in_agent_ns(name) {
            format!("dev{}", vf.index)
        } else {
            name.to_string()
        };
        self.vfs.insert(name.clone(), vf);
        name
    }
}

/// The kernel's side of Pod networking in memory: Pod network namespaces
/// (they exist once added with [`FakeLinks::add_netns`]) with their links
/// (Spur's veth Pod ends, other plugins' interfaces), the veths' host ends
/// and the node's NICs. Survives an agent crash (it models the kernel);
/// [`FakeLinks::reboot`] models a node reboot.
#[derive(Debug, Default)]
pub struct FakeLinks {
    state: Mutex<LinksState>,
    hook: HookSlot,
}

/// What a PF's driver sets for a fresh VF: no MAC, untagged, spoof check
/// on, not trusted (as Linux drivers report them).
fn driver_defaults() -> PfVfSettings {
    PfVfSettings {
        mac: None,
        vlan: 0,
        qos: 0,
        spoofchk: Some(true),
        trust: Some(false),
    }
}

fn kernel(op: &str, netns: Netns, ifname: &str, errno: Errno) -> NetdevError {
    NetdevError::Kernel {
        op: op.to_string(),
        netns,
        ifname: ifname.to_string(),
        errno,
        message: None,
    }
}

impl FakeLinks {
    /// No namespaces, no links.
    pub fn new() -> FakeLinks {
        FakeLinks::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinksState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs (or, with `None`, removes) the hook consulted at every
    /// fault point.
    pub fn set_fault_hook(&self, hook: Option<Arc<dyn FaultHook>>) {
        self.hook.set(hook);
    }

    async fn point(&self, point: &FaultPoint) -> Result<(), NetdevError> {
        self.hook.check(point).await.map_err(NetdevError::Backend)
    }

    /// A Pod network namespace appears (the runtime made a sandbox). One
    /// that exists keeps its links.
    pub fn add_netns(&self, path: &Path) {
        self.lock().netns.entry(path.to_path_buf()).or_default();
    }

    /// A namespace disappears with every link in it (the sandbox died);
    /// the host ends of its veths go with their peers.
    pub fn remove_netns(&self, path: &Path) {
        let mut s = self.lock();
        let Some(links) = s.netns.remove(path) else {
            return;
        };
        for (name, l) in links {
            match l.kind {
                LinkKind::Veth { host } => {
                    s.hosts.remove(&host);
                }
                // A physical device is not deleted with the namespace: it
                // returns to the agent's, under the name it had.
                LinkKind::Vf { pci, alias } => {
                    let vf = HostVf {
                        pci,
                        index: l.index,
                        mtu: l.mtu,
                        mac: l.mac,
                        alias,
                        addresses: Vec::new(),
                        up: false,
                    };
                    s.vf_home(&name, vf);
                }
                _ => {}
            }
        }
    }

    /// Whether the Pod netns `path` exists.
    pub fn netns_exists(&self, path: &Path) -> bool {
        self.lock().netns.contains_key(path)
    }

    /// The node rebooted: every Pod netns, every link in them and every
    /// host end is gone; NICs stay, with their addresses. (Injected
    /// failures and the hook stay.)
    pub fn reboot(&self) {
        let mut s = self.lock();
        // Every VF, in a Pod or not, comes back in the agent's netns under
        // its driver's name, without alias or addresses, and the PFs
        // forget what was set for them.
        let mut vfs: Vec<HostVf> = std::mem::take(&mut s.vfs).into_values().collect();
        for links in std::mem::take(&mut s.netns).into_values() {
            for l in links.into_values() {
                if let LinkKind::Vf { pci, .. } = l.kind {
                    vfs.push(HostVf {
                        pci,
                        index: l.index,
                        mtu: l.mtu,
                        mac: l.mac,
                        alias: String::new(),
                        addresses: Vec::new(),
                        up: false,
                    });
                }
            }
        }
        s.hosts.clear();
        for mut vf in vfs {
            vf.alias.clear();
            vf.addresses.clear();
            vf.up = false;
            let name = s
                .vf_driver_names
                .get(&vf.pci)
                .cloned()
                .unwrap_or_else(|| format!("vf{}", vf.pci.replace([':', '.'], "")));
            s.vf_home(&name, vf);
        }
        for set in s.pf_vfs.values_mut() {
            *set = driver_defaults();
        }
    }

    /// An SR-IOV VF's netdev `name` (PCI address `pci`, MAC `mac`) in the
    /// agent's netns, and, on a bare-metal node, its PF's record of it
    /// (`pf`: the PF and the VF's index).
    pub fn add_vf(&self, name: &str, pci: &str, mac: [u8; 6], pf: Option<(&str, u16)>) {
        let mut s = self.lock();
        let index = s.index();
        s.vf_driver_names.insert(pci.to_string(), name.to_string());
        s.vfs.insert(
            name.to_string(),
            HostVf {
                pci: pci.to_string(),
                index,
                mtu: 1500,
                mac,
                alias: String::new(),
                addresses: Vec::new(),
                up: false,
            },
        );
        if let Some((pf, i)) = pf {
            s.pf_vfs.insert((pf.to_string(), i), driver_defaults());
        }
    }

    /// Makes creating a link whose Pod end is `ifname` fail at
    /// [`Step::Start`]: nothing is created.
    pub fn fail_create(&self, ifname: &str) {
        self.lock().fail_create.insert(ifname.to_string());
    }

    /// Undoes [`FakeLinks::fail_create`].
    pub fn unfail_create(&self, ifname: &str) {
        self.lock().fail_create.remove(ifname);
    }

    /// A NIC of the node (in the agent's netns) with `addresses`; an
    /// existing one gets these addresses instead of its own.
    pub fn add_nic(&self, name: &str, addresses: &[IpNet]) {
        let mut s = self.lock();
        if let Some(n) = s.nics.get_mut(name) {
            n.addresses = addresses.to_vec();
            return;
        }
        let index = s.index();
        s.nics.insert(
            name.to_string(),
            NicState {
                index,
                mtu: 1500,
                addresses: addresses.to_vec(),
            },
        );
    }

    /// Another plugin made `ifname` in Pod netns `netns` (the primary
    /// CNI's `eth0`, a macvlan on a NIC, ...). Fails as the kernel would:
    /// the netns missing, the name taken there, a macvlan whose parent is
    /// not an interface of the agent's netns; and for a
    /// [`LinkKind::Veth`] (Spur's own, made by `create_veth` only).
    pub fn add_foreign_link(
        &self,
        netns: &Path,
        ifname: &str,
        link: ForeignLink,
    ) -> Result<(), NetdevError> {
        check_ifname("ifname", ifname)?;
        if let LinkKind::Veth { .. } = link.kind {
            return Err(NetdevError::InvalidSpec {
                field: "kind".into(),
                value: format!("{:?}", link.kind),
                reason: "Spur's veths are made by create_veth".into(),
            });
        }
        let mut s = self.lock();
        if let LinkKind::Macvlan { parent } = &link.kind {
            if !s.taken_in_agent_ns(parent) {
                return Err(kernel(
                    &format!("create macvlan on {parent}"),
                    Netns::pod(netns),
                    ifname,
                    Errno::ENODEV,
                ));
            }
        }
        let index = s.index();
        let Some(links) = s.netns.get_mut(netns) else {
            return Err(NetdevError::NetnsNotFound {
                netns: netns.to_path_buf(),
            });
        };
        if links.contains_key(ifname) {
            return Err(NetdevError::PodLinkExists {
                netns: netns.to_path_buf(),
                ifname: ifname.to_string(),
            });
        }
        links.insert(
            ifname.to_string(),
            PodLink {
                index,
                kind: link.kind,
                mtu: link.mtu,
                mac: link.mac,
                addresses: link.addresses,
                routes: Vec::new(),
                up: true,
            },
        );
        Ok(())
    }

    /// Another plugin removed its link `ifname` from `netns`: `true` if it
    /// was there. Spur's veths are left alone (`false`).
    pub fn remove_foreign_link(&self, netns: &Path, ifname: &str) -> bool {
        let mut s = self.lock();
        let Some(links) = s.netns.get_mut(netns) else {
            return false;
        };
        match links.get(ifname) {
            Some(l) if !matches!(l.kind, LinkKind::Veth { .. }) => {
                links.remove(ifname);
                true
            }
            _ => false,
        }
    }

    /// Every host end that exists, by name.
    pub fn host_links(&self) -> Vec<String> {
        self.lock().hosts.keys().cloned().collect()
    }

    /// The link `ifname` in Pod netns `netns`.
    pub fn pod_link(&self, netns: &Path, ifname: &str) -> Option<PodLink> {
        self.lock().netns.get(netns)?.get(ifname).cloned()
    }

    /// The host end `name`.
    pub fn host_end(&self, name: &str) -> Option<HostEnd> {
        self.lock().hosts.get(name).cloned()
    }

    /// Everything the fake holds.
    pub fn snapshot(&self) -> LinksSnapshot {
        let s = self.lock();
        LinksSnapshot {
            netns: s.netns.clone(),
            hosts: s.hosts.clone(),
            nics: s.nics.clone(),
            vfs: s.vfs.clone(),
            pf_vfs: s.pf_vfs.clone(),
        }
    }

    /// Step 1 of `create_veth`: the pair, host end up with the MTU, Pod end
    /// down with name, MTU and MAC. Returns (host index, Pod index).
    fn create_pair(&self, spec: &VethSpec) -> Result<(u32, u32), NetdevError> {
        let mut s = self.lock();
        if s.fail_create.contains(&spec.ifname) {
            return Err(NetdevError::Backend(format!(
                "injected failure creating {}",
                spec.ifname
            )));
        }
        let Some(links) = s.netns.get(&spec.netns) else {
            return Err(NetdevError::NetnsNotFound {
                netns: spec.netns.clone(),
            });
        };
        if links.contains_key(&spec.ifname) {
            return Err(NetdevError::PodLinkExists {
                netns: spec.netns.clone(),
                ifname: spec.ifname.clone(),
            });
        }
        if s.taken_in_agent_ns(&spec.host_name) {
            return Err(NetdevError::HostLinkExists {
                host_name: spec.host_name.clone(),
            });
        }
        let host_index = s.index();
        let pod_index = s.index();
        s.hosts.insert(
            spec.host_name.clone(),
            HostEnd {
                netns: spec.netns.clone(),
                ifname: spec.ifname.clone(),
                index: host_index,
                mtu: spec.mtu,
                up: true,
            },
        );
        if let Some(links) = s.netns.get_mut(&spec.netns) {
            links.insert(
                spec.ifname.clone(),
                PodLink {
                    index: pod_index,
                    kind: LinkKind::Veth {
                        host: spec.host_name.clone(),
                    },
                    mtu: spec.mtu,
                    mac: spec.mac,
                    addresses: Vec::new(),
                    routes: Vec::new(),
                    up: false,
                },
            );
        }
        Ok((host_index, pod_index))
    }

    /// One later step of `create_veth`: the hook at `point`, then `apply`
    /// to the Pod end made by this call (an error if it has vanished
    /// meanwhile, e.g. with its netns).
    async fn pod_step(
        &self,
        point: &FaultPoint,
        spec: &VethSpec,
        pod_index: u32,
        apply: impl FnOnce(&mut PodLink),
    ) -> Result<(), NetdevError> {
        self.point(point).await?;
        let mut s = self.lock();
        match s
            .netns
            .get_mut(&spec.netns)
            .and_then(|links| links.get_mut(&spec.ifname))
            .filter(|l| l.index == pod_index)
        {
            Some(l) => {
                apply(l);
                Ok(())
            }
            None => Err(kernel(
                &format!("{} the Pod end", point.step.name()),
                Netns::pod(&spec.netns),
                &spec.ifname,
                Errno::ENODEV,
            )),
        }
    }

    /// What `create_veth` does after a failed step: the hook at
    /// [`Step::Rollback`], then the pair deleted. Returns the step's error.
    async fn roll_back(
        &self,
        point: &FaultPoint,
        spec: &VethSpec,
        host_index: u32,
        error: NetdevError,
    ) -> NetdevError {
        if self.point(&point.at(Step::Rollback)).await.is_ok() {
            self.lock().delete_pair_if(&spec.host_name, host_index);
        }
        error
    }
}

impl PodLinks for FakeLinks {
    fn netns_exists<'a>(&'a self, netns: &'a Path) -> BoxFuture<'a, bool> {
        Box::pin(async move { FakeLinks::netns_exists(self, netns) })
    }

    fn create_veth<'a>(
        &'a self,
        spec: &'a VethSpec,
    ) -> BoxFuture<'a, Result<CreatedVeth, NetdevError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::CreateVeth,
                Step::Start,
                Subject {
                    netns: Some(spec.netns.clone()),
                    ifname: Some(spec.ifname.clone()),
                    host: Some(spec.host_name.clone()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
            spec.validate()?;
            let (host_index, pod_index) = self.create_pair(spec)?;
            let at_configure = point.at(Step::Configure);
            let configure = self.pod_step(&at_configure, spec, pod_index, |l| {
                l.addresses = spec.addresses.clone();
            });
            if let Err(e) = configure.await {
                return Err(self.roll_back(&point, spec, host_index, e).await);
            }
            let at_up = point.at(Step::BringUp);
            let up = self.pod_step(&at_up, spec, pod_index, |l| {
                l.up = true;
                l.routes = spec.routes.clone();
            });
            if let Err(e) = up.await {
                return Err(self.roll_back(&point, spec, host_index, e).await);
            }
            Ok(CreatedVeth {
                host_index,
                mac: spec.mac,
            })
        })
    }

    fn delete_host_link<'a>(
        &'a self,
        host_name: &'a str,
    ) -> BoxFuture<'a, Result<bool, NetdevError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::DeleteHostLink,
                Step::Start,
                Subject {
                    ifname: Some(host_name.to_string()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
            check_ifname("host_name", host_name)?;
            let mut s = self.lock();
            if s.nics.contains_key(host_name) {
                return Err(kernel(
                    "delete link",
                    Netns::Agent,
                    host_name,
                    Errno::EOPNOTSUPP,
                ));
            }
            Ok(s.delete_pair(host_name))
        })
    }

    fn delete_pod_link<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<bool, NetdevError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::DeletePodLink,
                Step::Start,
                Subject {
                    netns: Some(netns.to_path_buf()),
                    ifname: Some(ifname.to_string()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
            check_ifname("ifname", ifname)?;
            let mut s = self.lock();
            let Some(l) = s
                .netns
                .get_mut(netns)
                .and_then(|links| links.remove(ifname))
            else {
                return Ok(false);
            };
            if let LinkKind::Veth { host } = l.kind {
                s.hosts.remove(&host);
            }
            Ok(true)
        })
    }

    fn inspect_pod_link<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodLinkState>, NetdevError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::InspectPodLink,
                Step::Start,
                Subject {
                    netns: Some(netns.to_path_buf()),
                    ifname: Some(ifname.to_string()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
            check_ifname("ifname", ifname)?;
            let s = self.lock();
            let Some(links) = s.netns.get(netns) else {
                return Err(NetdevError::NetnsNotFound {
                    netns: netns.to_path_buf(),
                });
            };
            Ok(links.get(ifname).map(|l| PodLinkState {
                index: l.index,
                mac: Some(l.mac),
                mtu: l.mtu,
                up: l.up,
                addresses: l.addresses.clone(),
                is_veth: matches!(l.kind, LinkKind::Veth { .. } | LinkKind::Primary),
                peer_index: match &l.kind {
                    LinkKind::Veth { host } => s.hosts.get(host).map(|h| h.index),
                    _ => None,
                },
                routes: l.routes.clone(),
            }))
        })
    }

    fn host_addresses<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<IpNet>>, NetdevError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::HostAddresses,
                Step::Start,
                Subject {
                    ifname: Some(name.to_string()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
            let s = self.lock();
            if let Some(n) = s.nics.get(name) {
                return Ok(Some(n.addresses.clone()));
            }
            Ok(s.hosts.contains_key(name).then(Vec::new))
        })
    }

    fn host_link<'a>(
        &'a self,
        host_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<HostLinkState>, NetdevError>> {
        Box::pin(async move {
            let point = FaultPoint::new(
                Op::HostLink,
                Step::Start,
                Subject {
                    ifname: Some(host_name.to_string()),
                    ..Subject::default()
                },
            );
            self.point(&point).await?;
            check_ifname("host_name", host_name)?;
            let s = self.lock();
            if let Some(h) = s.hosts.get(host_name) {
                return Ok(Some(HostLinkState {
                    index: h.index,
                    up: h.up,
                    mtu: h.mtu,
                }));
            }
            Ok(s.nics.get(host_name).map(|n| HostLinkState {
                index: n.index,
                up: true,
                mtu: n.mtu,
            }))
        })
    }
}

impl FakeLinks {
    fn vf_point(&self, op: Op, netns: Option<&Path>, ifname: &str) -> FaultPoint {
        FaultPoint::new(
            op,
            Step::Start,
            Subject {
                netns: netns.map(Path::to_path_buf),
                ifname: Some(ifname.to_string()),
                ..Subject::default()
            },
        )
    }
}

/// The PF's records of its VFs and the VFs' netdevs, as the kernel keeps
/// them: a VF moves whole between namespaces (it cannot be created in a
/// Pod's), keeps its ifindex, and returns to the agent's namespace when a
/// Pod's goes away ([`FakeLinks::remove_netns`]).
impl VfLinks for FakeLinks {
    fn pf_settings<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
    ) -> BoxFuture<'a, Result<PfVfSettings, NetdevError>> {
        Box::pin(async move {
            self.point(&self.vf_point(Op::PfSettings, None, pf)).await?;
            self.lock()
                .pf_vfs
                .get(&(pf.to_string(), index))
                .copied()
                .ok_or_else(|| kernel(&format!("read VF {index}"), Netns::Agent, pf, Errno::ENODEV))
        })
    }

    fn set_pf_settings<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
        settings: &'a PfVfSettings,
    ) -> BoxFuture<'a, Result<(), NetdevError>> {
        Box::pin(async move {
            self.point(&self.vf_point(Op::SetPfSettings, None, pf))
                .await?;
            let mut s = self.lock();
            let Some(cur) = s.pf_vfs.get_mut(&(pf.to_string(), index)) else {
                return Err(kernel(
                    &format!("set VF {index}"),
                    Netns::Agent,
                    pf,
                    Errno::ENODEV,
                ));
            };
            cur.vlan = settings.vlan;
            cur.qos = settings.qos;
            // The all-zero MAC is "none", as drivers take it.
            if let Some(m) = settings.mac {
                cur.mac = (m.0 != [0; 6]).then_some(m);
            }
            if settings.spoofchk.is_some() {
                cur.spoofchk = settings.spoofchk;
            }
            if settings.trust.is_some() {
                cur.trust = settings.trust;
            }
            Ok(())
        })
    }

    fn attach_vf<'a>(&'a self, spec: &'a VfAttachSpec) -> BoxFuture<'a, Result<(), NetdevError>> {
        Box::pin(async move {
            let point = self.vf_point(Op::AttachVf, Some(&spec.netns), &spec.ifname);
            self.point(&point).await?;
            check_ifname("ifname", &spec.ifname)?;
            let mut s = self.lock();
            if !s.vfs.contains_key(&spec.netdev) {
                return Err(kernel("move VF", Netns::Agent, &spec.netdev, Errno::ENODEV));
            }
            let Some(links) = s.netns.get(&spec.netns) else {
                return Err(NetdevError::NetnsNotFound {
                    netns: spec.netns.clone(),
                });
            };
            if links.contains_key(&spec.ifname) {
                return Err(NetdevError::PodLinkExists {
                    netns: spec.netns.clone(),
                    ifname: spec.ifname.clone(),
                });
            }
            let Some(vf) = s.vfs.remove(&spec.netdev) else {
                return Err(kernel("move VF", Netns::Agent, &spec.netdev, Errno::ENODEV));
            };
            let link = PodLink {
                index: vf.index,
                kind: LinkKind::Vf {
                    pci: vf.pci,
                    alias: spec.record.render(),
                },
                mtu: spec.mtu,
                mac: spec.mac.map_or(vf.mac, |m| m.0),
                addresses: spec.addresses.clone(),
                routes: spec.routes.clone(),
                up: true,
            };
            s.netns
                .entry(spec.netns.clone())
                .or_default()
                .insert(spec.ifname.clone(), link);
            Ok(())
        })
    }

    fn detach_vf<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<VfRecord>, NetdevError>> {
        Box::pin(async move {
            self.point(&self.vf_point(Op::DetachVf, Some(netns), ifname))
                .await?;
            let mut s = self.lock();
            let Some(link) = s.netns.get(netns).and_then(|l| l.get(ifname)).cloned() else {
                return Ok(None);
            };
            let LinkKind::Vf { pci, alias } = link.kind else {
                return Err(kernel(
                    "detach VF (not a VF)",
                    Netns::Pod(netns.to_path_buf()),
                    ifname,
                    Errno::EINVAL,
                ));
            };
            let Some(record) = VfRecord::parse(&alias) else {
                return Err(kernel(
                    "detach VF (no Spur record in its alias)",
                    Netns::Pod(netns.to_path_buf()),
                    ifname,
                    Errno::EINVAL,
                ));
            };
            if let Some(l) = s.netns.get_mut(netns) {
                l.remove(ifname);
            }
            let vf = HostVf {
                pci,
                index: link.index,
                mtu: link.mtu,
                mac: link.mac,
                alias: String::new(),
                addresses: Vec::new(),
                up: false,
            };
            s.vf_home(&record.name, vf);
            Ok(Some(record))
        })
    }

    fn label_host_vf<'a>(
        &'a self,
        netdev: &'a str,
        record: &'a VfRecord,
    ) -> BoxFuture<'a, Result<(), NetdevError>> {
        Box::pin(async move {
            self.point(&self.vf_point(Op::SetPfSettings, None, netdev))
                .await?;
            let mut s = self.lock();
            let Some(vf) = s.vfs.get_mut(netdev) else {
                return Err(kernel("label VF", Netns::Agent, netdev, Errno::ENODEV));
            };
            vf.alias = record.render();
            Ok(())
        })
    }

    fn host_vfs<'a>(&'a self) -> BoxFuture<'a, Result<Vec<(String, VfRecord)>, NetdevError>> {
        Box::pin(async move {
            self.point(&self.vf_point(Op::InspectVf, None, "")).await?;
            let s = self.lock();
            Ok(s.vfs
                .iter()
                .filter_map(|(name, vf)| Some((name.clone(), VfRecord::parse(&vf.alias)?)))
                .collect())
        })
    }

    fn restore_host_vf<'a>(
        &'a self,
        netdev: &'a str,
    ) -> BoxFuture<'a, Result<Option<VfRecord>, NetdevError>> {
        Box::pin(async move {
            self.point(&self.vf_point(Op::DetachVf, None, netdev))
                .await?;
            let mut s = self.lock();
            let Some(record) = s.vfs.get(netdev).and_then(|vf| VfRecord::parse(&vf.alias)) else {
                return Ok(None);
            };
            let Some(mut vf) = s.vfs.remove(netdev) else {
                return Ok(None);
            };
            vf.alias.clear();
            vf.addresses.clear();
            vf.up = false;
            s.vf_home(&record.name, vf);
            Ok(Some(record))
        })
    }

    fn pod_vfs<'a>(&'a self, netns: &'a Path) -> BoxFuture<'a, Result<Vec<String>, NetdevError>> {
        Box::pin(async move {
            self.point(&self.vf_point(Op::InspectVf, Some(netns), ""))
                .await?;
            let s = self.lock();
            Ok(s.netns
                .get(netns)
                .map(|links| {
                    links
                        .iter()
                        .filter(|(_, l)| {
                            matches!(&l.kind, LinkKind::Vf { alias, .. } if VfRecord::parse(alias).is_some())
                        })
                        .map(|(n, _)| n.clone())
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    fn inspect_vf<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodVf>, NetdevError>> {
        Box::pin(async move {
            self.point(&self.vf_point(Op::InspectVf, Some(netns), ifname))
                .await?;
            let s = self.lock();
            let Some(links) = s.netns.get(netns) else {
                return Err(NetdevError::NetnsNotFound {
                    netns: netns.to_path_buf(),
                });
            };
            Ok(links.get(ifname).and_then(|l| match &l.kind {
                LinkKind::Vf { alias, .. } => Some(PodVf {
                    record: VfRecord::parse(alias),
                    mtu: l.mtu,
                    mac: spur_core::names::Mac(l.mac),
                    addresses: l.addresses.clone(),
                    up: l.up,
                }),
                _ => None,
            }))
        })
    }
}
