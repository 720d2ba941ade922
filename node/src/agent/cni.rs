//! The CNI verbs as the agent serves them.
//!
//! The role comes from the network config the runtime passed:
//!
//! | config | role |
//! |---|---|
//! | `type: spur` without `networkType` | native: chained after the primary CNI; the Pod's selection annotation names the networks, all attached in this one ADD |
//! | `type: spur` with `networkType` | one network (Multus delegates one per call, `CNI_IFNAME` given) |
//! | another `type` with `ipam.type: spur` | IPAM only: addresses for the other plugin's interface |
//!
//! ADD is all or nothing: every step records how to undo it, and a
//! failure undoes them all, in reverse, before answering. DEL finds what
//! to remove from the switch's ports (their `external_ids` name the
//! container) and the IPAM owners of the container, so it needs no state
//! of its own and works after restarts, after a failed ADD and when the
//! netns is gone; it succeeds when there is nothing left.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;
use spur_core::attach::{
    host_port_name, interface_config, plan_ipam, plan_native, plan_single, AttachError, Datapath,
    Element, InterfaceConfig, NetworkPlan, PodView, VfSource,
};
use spur_core::cni::{CniVersion, ErrorCode};
use spur_core::cniproto::{
    AgentRequest, CniError, CniResult, Command, Interface, IpEntry, PodRef, RouteEntry,
};
use spur_core::ipamblock::{Owner, OwnerKey};
use spur_core::ipamreq::{ipam_result, IpConfig, PoolAddress};
use spur_core::nad::{classify, NetworkKind, SpurIpamConfig, SpurNetworkConfig};
use spur_core::names::Mac;
use spur_core::selection::RequestedIp;
use spur_core::sriov::{
    assign_devices, vf_fits, vf_plan, PciAddress, PfVfSettings, VfLocation, VfRecord, Wanted,
};
use spur_core::status::{self, NetworkStatus};
use spur_core::Subject;
use std::collections::BTreeMap;

use super::cluster::PodInfo;
use super::{port_external_ids, port_keys, Agent};
use crate::ipam::{AllocateRequest, Allocated, IpamError};
use crate::netdev::{RouteSpec, VethSpec};
use crate::ovsdb::SwitchError;

/// What the runtime's config makes of this call.
#[derive(Debug)]
enum Role {
    Native { conf_name: String },
    Single(Box<SpurNetworkConfig>, String),
    Ipam(Box<SpurIpamConfig>, String),
}

fn role(config: &Value) -> Result<Role, CniError> {
    let name = config
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ty = config.get("type").and_then(Value::as_str);
    if ty == Some("spur") && config.get("networkType").is_none() {
        return Ok(Role::Native { conf_name: name });
    }
    let subject = Subject::named(format!("network config {name:?}"));
    match classify(&config.to_string(), &subject).map_err(CniError::from)? {
        NetworkKind::Spur(c) => Ok(Role::Single(c, name)),
        NetworkKind::SpurIpam(i) => Ok(Role::Ipam(Box::new(i.ipam), name)),
        NetworkKind::Other => Err(CniError::invalid_config(format!(
            "network config {name:?}: neither type spur nor ipam.type spur; spur cannot serve it"
        ))),
    }
}

/// One step of an ADD, and how to undo it.
#[derive(Debug)]
enum Undo {
    /// An allocation: released, or, where it took over a dead sandbox's
    /// record, given back to it.
    Allocation(OwnerKey, Vec<Allocated>),
    Link(String),
    Port {
        bridge: String,
        port: String,
    },
    /// A VF moved into the Pod: moved back.
    Vf {
        netns: PathBuf,
        ifname: String,
    },
    /// A VF labelled with its record in the host: the label cleared
    /// (when the VF is still there with it).
    VfLabel {
        netdev: String,
    },
    /// What a PF set for a VF: set back.
    PfSettings {
        pf: String,
        index: u16,
        restore: PfVfSettings,
    },
}

/// One interface an ADD created (the device of an SR-IOV one).
type Devices = BTreeMap<String, PciAddress>;

/// One interface an ADD created.
#[derive(Debug)]
struct Attached {
    plan: NetworkPlan,
    config: InterfaceConfig,
    /// The VF of an SR-IOV interface.
    device: Option<PciAddress>,
}

struct Call {
    pod: PodRef,
    /// The Pod's UID as the Pod cache has it (the runtime's when the cache
    /// has none), recorded in the owners of an ADD so that a later sandbox
    /// of the same Pod takes their addresses over; empty until the ADD
    /// looked the Pod up.
    pod_uid: String,
    container_id: String,
    netns: String,
    ifname: String,
}

fn call(req: &AgentRequest) -> Result<Call, CniError> {
    let pod = req.pod().ok_or_else(|| {
        CniError::invalid_environment(
            "CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME: spur attaches networks to \
             Kubernetes Pods",
        )
    })?;
    Ok(Call {
        pod,
        pod_uid: String::new(),
        container_id: req.container_id.clone().unwrap_or_default(),
        netns: req.netns.clone().unwrap_or_default(),
        ifname: req.ifname.clone().unwrap_or_default(),
    })
}

fn attach_error(e: AttachError) -> CniError {
    let code = e.cause.kind.into();
    CniError::new(code, e.to_string())
}

/// A failure to make a Pod's link: a name already taken is the caller's
/// configuration (an ADD repeated without DEL), anything else I/O.
fn link_error(what: &str, e: &crate::netdev::NetdevError) -> CniError {
    let code = if e.is_exists() {
        ErrorCode::InvalidConfig
    } else {
        ErrorCode::Io
    };
    CniError::new(code, format!("{what}: {e}"))
}

fn ipam_error(network: &str, e: IpamError) -> CniError {
    CniError::new(e.code(), format!("network {network}: {e}"))
}

impl Agent {
    /// Serves one request. Never panics on bad input: every failure is a
    /// [`CniError`] with its code.
    pub async fn handle(&self, req: &AgentRequest) -> Result<Value, CniError> {
        let started = tokio::time::Instant::now();
        let res = match req.command {
            Command::Add => self.add(req).await,
            Command::Del => self.del(req).await.map(|()| Value::Null),
            Command::Check => self.check(req).await.map(|()| Value::Null),
            Command::Status => self.status().map(|()| Value::Null),
            Command::Gc => self.gc(req).await.map(|()| Value::Null),
            Command::Version => Err(CniError::invalid_environment(
                "VERSION is answered by the plugin itself",
            )),
        };
        let elapsed = started.elapsed();
        self.metrics
            .record_request(req.command, elapsed, res.as_ref().err().map(|e| e.code));
        let ms = elapsed.as_secs_f64() * 1e3;
        match &res {
            Ok(_) => tracing::info!(
                command = %req.command,
                container = req.container_id.as_deref().unwrap_or(""),
                pod = ?req.pod().map(|p| format!("{}/{}", p.namespace, p.name)),
                ms,
                "CNI request served"
            ),
            Err(e) => tracing::warn!(
                command = %req.command,
                container = req.container_id.as_deref().unwrap_or(""),
                pod = ?req.pod().map(|p| format!("{}/{}", p.namespace, p.name)),
                code = e.code,
                error = %e.msg,
                ms,
                "CNI request failed"
            ),
        }
        res
    }

    fn status(&self) -> Result<(), CniError> {
        match self.not_ready_reason() {
            None => Ok(()),
            Some(why) => Err(CniError::plugin_not_available(format!(
                "spur-agent on node {} cannot serve ADD yet: {why}",
                self.node()
            ))),
        }
    }

    /// The call's Pod as the API (through the cache) has it; a Pod that
    /// does not exist is an unknown container.
    async fn pod_of(&self, c: &Call) -> Result<PodInfo, CniError> {
        self.cluster
            .pod(&c.pod.namespace, &c.pod.name)
            .await
            .map_err(|e| CniError::try_again_later(e.to_string()))?
            .ok_or_else(|| {
                CniError::unknown_container(format!(
                    "Pod {}/{} does not exist",
                    c.pod.namespace, c.pod.name
                ))
            })
    }

    async fn add(&self, req: &AgentRequest) -> Result<Value, CniError> {
        if let Some(why) = self.not_ready_reason() {
            return Err(CniError::try_again_later(format!(
                "spur-agent on node {} is not ready: {why}",
                self.node()
            )));
        }
        let mut c = call(req)?;
        let role = role(&req.config)?;
        let info = self.pod_of(&c).await?;
        if let (Some(want), Some(have)) = (&c.pod.uid, &info.uid) {
            if want != have {
                return Err(CniError::unknown_container(format!(
                    "Pod {}/{} has UID {have}, not {want} (the runtime's Pod was replaced)",
                    c.pod.namespace, c.pod.name
                )));
            }
        }
        c.pod_uid = info
            .uid
            .clone()
            .or_else(|| c.pod.uid.clone())
            .unwrap_or_default();
        let ns_ann = self.cluster.namespace_annotations(&c.pod.namespace);
        let view = PodView {
            namespace: &c.pod.namespace,
            name: &c.pod.name,
            annotations: &info.annotations,
            namespace_annotations: ns_ann.as_ref(),
        };
        let pools = |name: &str| self.ipam.cache().layout(name);
        let bridges = self.bridge_names();
        match role {
            Role::Native { conf_name } => {
                let nads = |ns: &str, n: &str| self.cluster.nad(ns, n);
                let plans = plan_native(&view, &nads, &pools, &bridges).map_err(attach_error)?;
                let devices = self.sriov_devices(&c, &plans).await?;
                let (attached, undo) = self.attach_all(&c, plans, &devices).await?;
                let prev = prev_result(&req.config)?;
                let ours = result_of(req.cni_version, &c.netns, &attached);
                let result = match &prev {
                    Some(p) => spur_core::cniproto::extend(p.clone(), ours),
                    None => ours,
                };
                let status = network_status(&conf_name, prev.as_ref(), &attached);
                let subject = Subject::new("Pod", Some(&c.pod.namespace), &c.pod.name);
                match status::render(&status, &subject) {
                    Ok(text) => {
                        if let Err(e) = self
                            .cluster
                            .set_network_status(&c.pod.namespace, &c.pod.name, text)
                            .await
                        {
                            // Undo exactly what this ADD did: an address
                            // it took over from the Pod's previous sandbox
                            // goes back to that sandbox rather than to the
                            // pool, so the retry finds it again.
                            let err = CniError::try_again_later(e.to_string());
                            self.undo(undo).await;
                            return Err(err);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "network-status not rendered"),
                }
                Ok(result.render(req.cni_version))
            }
            Role::Single(cfg, name) => {
                let network = format!("{}/{}", c.pod.namespace, name);
                let element = element_from_runtime(&req.config, &c.ifname)?;
                let plan = plan_single(&view, &network, &cfg, &element, &pools, &bridges)
                    .map_err(attach_error)?;
                let mut devices = Devices::new();
                if let Datapath::Sriov {
                    device: VfSource::Device(pci),
                    ..
                } = &plan.datapath
                {
                    devices.insert(plan.ifname.clone(), *pci);
                }
                let (attached, _) = self.attach_all(&c, vec![plan], &devices).await?;
                Ok(result_of(req.cni_version, &c.netns, &attached).render(req.cni_version))
            }
            Role::Ipam(ipam, name) => {
                let network = format!("{}/{}", c.pod.namespace, name);
                let ips = runtime_ips(&req.config)?;
                let plan = plan_ipam(&view, &network, &ipam, &c.ifname, &ips, &pools)
                    .map_err(attach_error)?;
                let owner = Owner::pod(&c.pod.namespace, &c.pod.name, &c.container_id, &c.ifname)
                    .with_pod_uid(&c.pod_uid);
                let allocated = if plan.pools.is_empty() {
                    Vec::new()
                } else {
                    let mut r = AllocateRequest::new(self.node(), owner.clone(), &plan.pools);
                    r.addresses = plan.requested_ips.clone();
                    self.ipam
                        .allocate(&r)
                        .await
                        .map_err(|e| ipam_error(&network, e))?
                };
                let subject = Subject::named(format!("network {network}"));
                match ipam_result(&subject, &pool_addresses(&allocated), &plan.ipam) {
                    Ok(res) => {
                        let r = CniResult::from_ipam(req.cni_version, &res, None);
                        Ok(r.render(req.cni_version))
                    }
                    Err(e) => {
                        let _ = self.ipam.undo(&owner.key(), &allocated).await;
                        Err(CniError::from(e))
                    }
                }
            }
        }
    }

    /// Attaches every plan in order; on the first failure undoes everything
    /// done so far and returns the error, naming the network. On success
    /// also returns the steps that undo the attachments, for a caller whose
    /// own later step fails.
    async fn attach_all(
        &self,
        c: &Call,
        plans: Vec<NetworkPlan>,
        devices: &Devices,
    ) -> Result<(Vec<Attached>, Vec<Undo>), CniError> {
        let mut undo = Vec::new();
        let mut attached = Vec::with_capacity(plans.len());
        for plan in plans {
            let device = devices.get(&plan.ifname).copied();
            let done = match device {
                Some(pci) => self.attach_vf(c, &plan, pci, &mut undo).await,
                None => self.attach_one(c, &plan, &mut undo).await,
            };
            match done {
                Ok(config) => attached.push(Attached {
                    plan,
                    config,
                    device,
                }),
                Err(e) => {
                    self.undo(undo).await;
                    return Err(e);
                }
            }
        }
        Ok((attached, undo))
    }

    async fn attach_one(
        &self,
        c: &Call,
        plan: &NetworkPlan,
        undo: &mut Vec<Undo>,
    ) -> Result<InterfaceConfig, CniError> {
        let Some(bridge) = plan.bridge() else {
            // SR-IOV plans go to attach_vf with their device; one without
            // a device is a planning bug, refused rather than guessed.
            return Err(CniError::io(format!(
                "network {}: no VF was chosen for interface {}",
                plan.network, plan.ifname
            )));
        };
        // A repeated ADD of an attachment that exists must not touch it
        // (undoing would release the live interface's address): refuse it
        // before doing anything.
        let host = host_port_name(&c.container_id, &plan.ifname);
        match self.links.host_link(&host).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(CniError::invalid_config(format!(
                    "network {}: interface {} of container {} is already attached (host end \
                     {host} exists): ADD was repeated without DEL",
                    plan.network, plan.ifname, c.container_id
                )))
            }
            Err(e) => return Err(CniError::io(format!("network {}: {e}", plan.network))),
        }
        let config = self.addresses_for(c, plan, undo).await?;
        let spec = VethSpec {
            host_name: host.clone(),
            netns: PathBuf::from(&c.netns),
            ifname: plan.ifname.clone(),
            mtu: u32::from(plan.mtu),
            mac: config.mac.0,
            addresses: config.ips.iter().map(|i| i.address).collect(),
            routes: config
                .routes
                .iter()
                .map(|r| RouteSpec {
                    dst: r.dst,
                    gw: r.gw,
                })
                .collect(),
            tx_checksum_off: self.tx_checksum_off(),
            announce: true,
        };
        // The access port first: the switch attaches the host end the
        // moment it appears, so the Pod end's gratuitous ARP / unsolicited
        // NA (sent as it comes up) find the port in place.
        let ids = port_external_ids(
            &c.pod.namespace,
            &c.pod.name,
            &c.container_id,
            &plan.ifname,
            &plan.network,
            &c.netns,
        );
        // The port is recorded for undo before the call: OVSDB may commit
        // the transaction and its answer be lost, and a failed ADD must not
        // leave that port behind. Not when the name belongs to a port that
        // is not Spur's: removing it would remove someone else's port.
        let added = self
            .switch
            .add_access_port(bridge, &host, plan.vlan(), ids)
            .await;
        if !matches!(added, Err(SwitchError::PortConflict { .. })) {
            undo.push(Undo::Port {
                bridge: bridge.to_string(),
                port: host.clone(),
            });
        }
        added.map_err(|e| {
            CniError::io(format!(
                "network {}: adding port {host} to bridge {bridge}: {e}",
                plan.network,
            ))
        })?;
        self.links
            .create_veth(&spec)
            .await
            .map_err(|e| link_error(&format!("network {}", plan.network), &e))?;
        undo.push(Undo::Link(host.clone()));
        Ok(config)
    }

    /// The VF of each SR-IOV interface of a native ADD: the devices the
    /// kubelet assigned the Pod, paired with its interfaces (spur-core's
    /// `assign_devices`). Empty when the Pod has no SR-IOV network.
    async fn sriov_devices(&self, c: &Call, plans: &[NetworkPlan]) -> Result<Devices, CniError> {
        let mut wanted = Vec::new();
        let mut out = Devices::new();
        for p in plans {
            match &p.datapath {
                Datapath::Sriov {
                    device: VfSource::Resource(r),
                    ..
                } => wanted.push(Wanted {
                    ifname: p.ifname.clone(),
                    network: p.network.clone(),
                    resource: r.clone(),
                }),
                Datapath::Sriov {
                    device: VfSource::Device(pci),
                    ..
                } => {
                    out.insert(p.ifname.clone(), *pci);
                }
                Datapath::Vlan { .. } => {}
            }
        }
        if wanted.is_empty() {
            return Ok(out);
        }
        let backends = self.sriov_backends(&wanted[0].network)?;
        let devices = backends
            .pod_resources
            .devices(&c.pod.namespace, &c.pod.name)
            .await
            .map_err(|e| CniError::try_again_later(format!("SR-IOV devices: {e}")))?;
        let pod = format!("{}/{}", c.pod.namespace, c.pod.name);
        let assigned = assign_devices(&pod, &wanted, &devices)
            .map_err(|e| CniError::invalid_config(e.to_string()))?;
        out.extend(assigned);
        Ok(out)
    }

    fn sriov_backends(&self, network: &str) -> Result<&super::SriovBackends, CniError> {
        self.sriov.as_ref().ok_or_else(|| {
            CniError::invalid_config(format!(
                "network {network}: spur-agent on node {} is not set up for SR-IOV",
                self.node()
            ))
        })
    }

    /// Attaches the VF `pci` as the plan's interface: addresses from IPAM,
    /// the PF's settings (bare metal), the netdev moved into the Pod and
    /// configured; every step recorded in `undo`.
    async fn attach_vf(
        &self,
        c: &Call,
        plan: &NetworkPlan,
        pci: PciAddress,
        undo: &mut Vec<Undo>,
    ) -> Result<InterfaceConfig, CniError> {
        let b = self.sriov_backends(&plan.network)?;
        let Datapath::Sriov { vf, .. } = &plan.datapath else {
            return Err(CniError::invalid_config(format!(
                "network {}: not an SR-IOV network",
                plan.network
            )));
        };
        // Held until the VF is in the Pod (or this ADD gave up on it).
        let Some(_claim) = self.claim_vf(pci) else {
            return Err(CniError::try_again_later(format!(
                "network {}: VF {pci} on node {} is being set up or given back by another \
                 request",
                plan.network,
                self.node()
            )));
        };
        let dev = b
            .sysfs
            .vf(&pci.to_string())
            .map_err(|e| CniError::io(format!("network {}: {e}", plan.network)))?;
        let Some(mut netdev) = dev.netdev.clone() else {
            return Err(CniError::io(format!(
                "network {}: VF {pci} on node {} has no network interface in the host namespace \
                 (bound to a userspace driver, or still in another Pod's namespace)",
                plan.network,
                self.node()
            )));
        };
        // A label left by an ADD that could not undo its PF settings: give
        // the VF back first, so that what this ADD records as the VF's
        // original settings is the original, not a dead ADD's.
        let leftover = b
            .vfs
            .host_vfs()
            .await
            .map_err(|e| link_error(&format!("network {}: VF {pci}", plan.network), &e))?
            .into_iter()
            .find(|(name, _)| *name == netdev);
        if let Some((_, record)) = leftover {
            self.give_back_host_vf(b, &netdev, &record)
                .await
                .map_err(|e| CniError::try_again_later(format!("network {}: {e}", plan.network)))?;
            // Its name may have changed (a VF that came back from a dead
            // Pod had the Pod's): ask sysfs again.
            netdev = b
                .sysfs
                .netdev_of(&pci.to_string())
                .map_err(|e| CniError::io(format!("network {}: {e}", plan.network)))?
                .unwrap_or(record.name);
        }
        let parent = match &dev.pf {
            Some(p) => {
                let Some(pf) = p.netdev.clone() else {
                    return Err(CniError::io(format!(
                        "network {}: the PF {} of VF {pci} has no network interface on node {}",
                        plan.network,
                        p.pci,
                        self.node()
                    )));
                };
                let index = u16::try_from(p.index).map_err(|_| {
                    CniError::io(format!(
                        "network {}: VF index {} of {pf}",
                        plan.network, p.index
                    ))
                })?;
                Some((pf, index))
            }
            None => None,
        };
        let at = VfLocation {
            pci,
            pf: parent.clone(),
        };
        // Refused before any address is taken: a VF a VM node cannot set
        // up never holds one, even if the agent dies right here.
        vf_fits(&plan.network, self.node(), &at, plan.vlan(), vf)
            .map_err(|e| CniError::invalid_config(e.to_string()))?;
        let config = self.addresses_for(c, plan, undo).await?;
        let vp = vf_plan(
            &plan.network,
            self.node(),
            &at,
            plan.vlan(),
            vf,
            plan.mac,
            config.mac,
        )
        .map_err(|e| CniError::invalid_config(e.to_string()))?;
        let before = match &parent {
            Some((pf, index)) => b
                .vfs
                .pf_settings(pf, *index)
                .await
                .map_err(|e| CniError::io(format!("network {}: {e}", plan.network)))?,
            None => PfVfSettings::default(),
        };
        let record = VfRecord {
            name: netdev.clone(),
            pci,
            parent,
            pf: before,
        };
        if vp.through_pf.is_some() {
            let labelled = b.vfs.label_host_vf(&netdev, &record).await;
            undo.push(Undo::VfLabel {
                netdev: netdev.clone(),
            });
            labelled.map_err(|e| link_error(&format!("network {}: VF {pci}", plan.network), &e))?;
        }
        let pf_undo_at = undo.len();
        if let Some(set) = &vp.through_pf {
            let done = b.vfs.set_pf_settings(&set.pf, set.index, &set.set).await;
            // Recorded before the answer: the PF may have taken part of it.
            undo.push(Undo::PfSettings {
                pf: set.pf.clone(),
                index: set.index,
                restore: before.to_restore(),
            });
            done.map_err(|e| CniError::io(format!("network {}: {e}", plan.network)))?;
        }
        let spec = crate::sriov::vf::VfAttachSpec {
            netdev,
            record,
            netns: PathBuf::from(&c.netns),
            ifname: plan.ifname.clone(),
            mtu: u32::from(plan.mtu),
            mac: vp.netdev_mac,
            addresses: config.ips.iter().map(|i| i.address).collect(),
            routes: config
                .routes
                .iter()
                .map(|r| RouteSpec {
                    dst: r.dst,
                    gw: r.gw,
                })
                .collect(),
            announce: true,
        };
        b.vfs.attach_vf(&spec).await.map_err(|e| {
            // On a VM node the VF's own driver may refuse a MAC the
            // hypervisor does not allow: say where.
            link_error(
                &format!("network {}: node {}: VF {pci}", plan.network, self.node()),
                &e,
            )
        })?;
        // Undone in reverse: the PF's settings go back while the VF in the
        // Pod still carries its record, then the VF comes home.
        let pf_undo = (undo.len() > pf_undo_at).then(|| undo.remove(pf_undo_at));
        undo.push(Undo::Vf {
            netns: spec.netns.clone(),
            ifname: spec.ifname.clone(),
        });
        undo.extend(pf_undo);
        let mut config = config;
        if spec.mac.is_none() {
            // A VM node's VF keeps the MAC the hypervisor gave it: the
            // result and the network-status report that one.
            let vf = b
                .vfs
                .inspect_vf(&spec.netns, &spec.ifname)
                .await
                .map_err(|e| link_error(&format!("network {}: VF {pci}", plan.network), &e))?
                .ok_or_else(|| {
                    CniError::io(format!(
                        "network {}: VF {pci} is not in the Pod as {} right after its move",
                        plan.network, spec.ifname
                    ))
                })?;
            config.mac = vf.mac;
        }
        Ok(config)
    }

    /// Gives back the VFs of the Pod namespace `netns` (of `only`
    /// interface, or all): each moved home under its recorded name, its
    /// PF's settings restored from the record.
    async fn release_vfs(&self, netns: &std::path::Path, only: Option<&str>) -> Vec<String> {
        let Some(b) = &self.sriov else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        let names = match b.vfs.pod_vfs(netns).await {
            Ok(n) => n,
            Err(e) => return vec![format!("listing the VFs of {}: {e}", netns.display())],
        };
        for ifname in names
            .iter()
            .filter(|n| only.is_none_or(|o| o == n.as_str()))
        {
            // The PF first, while the record is still on the VF: a failure
            // leaves the record for the retry to restore from.
            let record = match b.vfs.inspect_vf(netns, ifname).await {
                Ok(Some(vf)) => vf.record,
                Ok(None) => continue,
                Err(e) => {
                    errors.push(format!("reading VF {ifname}: {e}"));
                    continue;
                }
            };
            if let Some((pf, index)) = record.as_ref().and_then(|r| r.parent.as_ref()) {
                let restore = record
                    .as_ref()
                    .map(|r| r.pf)
                    .unwrap_or_default()
                    .to_restore();
                if let Err(e) = b.vfs.set_pf_settings(pf, *index, &restore).await {
                    errors.push(format!("restoring VF {index} of {pf}: {e}"));
                    continue;
                }
            }
            if let Err(e) = b.vfs.detach_vf(netns, ifname).await {
                errors.push(format!("giving back VF {ifname}: {e}"));
            }
        }
        errors
    }

    /// The interface's addresses from IPAM (recorded in `undo`) and its
    /// config (addresses, routes, MAC), for a veth or a VF alike.
    async fn addresses_for(
        &self,
        c: &Call,
        plan: &NetworkPlan,
        undo: &mut Vec<Undo>,
    ) -> Result<InterfaceConfig, CniError> {
        let owner = Owner::pod(&c.pod.namespace, &c.pod.name, &c.container_id, &plan.ifname)
            .with_pod_uid(&c.pod_uid);
        let allocated = if plan.pools.is_empty() {
            Vec::new()
        } else {
            let mut r = AllocateRequest::new(self.node(), owner.clone(), &plan.pools);
            r.addresses = plan.requested_ips.clone();
            let a = self
                .ipam
                .allocate(&r)
                .await
                .map_err(|e| ipam_error(&plan.network, e))?;
            undo.push(Undo::Allocation(owner.key(), a.clone()));
            a
        };
        interface_config(plan, &pool_addresses(&allocated), &c.container_id).map_err(attach_error)
    }

    async fn undo(&self, steps: Vec<Undo>) {
        // A PF whose settings could not be put back leaves its VF where it
        // is, with its record: the DEL that follows a failed ADD, or the
        // recovery, restores the PF from it.
        let mut keep_vf_records = false;
        for step in steps.into_iter().rev() {
            if keep_vf_records && matches!(step, Undo::VfLabel { .. } | Undo::Vf { .. }) {
                tracing::warn!(step = ?step, "VF left with its record for the DEL or the recovery");
                continue;
            }
            let res = match &step {
                Undo::Port { bridge, port } => self
                    .switch
                    .remove_port(bridge, port)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Undo::Link(host) => self
                    .links
                    .delete_host_link(host)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Undo::Vf { netns, ifname } => match &self.sriov {
                    Some(b) => b
                        .vfs
                        .detach_vf(netns, ifname)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Ok(()),
                },
                Undo::VfLabel { netdev } => match &self.sriov {
                    Some(b) => b
                        .vfs
                        .restore_host_vf(netdev)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Ok(()),
                },
                Undo::PfSettings { pf, index, restore } => match &self.sriov {
                    Some(b) => b
                        .vfs
                        .set_pf_settings(pf, *index, restore)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Ok(()),
                },
                Undo::Allocation(key, allocated) => self
                    .ipam
                    .undo(key, allocated)
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = res {
                keep_vf_records |= matches!(step, Undo::PfSettings { .. });
                tracing::warn!(step = ?step, error = %e, "undoing a failed ADD step failed; the sweep retries");
            }
        }
    }

    async fn del(&self, req: &AgentRequest) -> Result<(), CniError> {
        let c = call(req)?;
        match role(&req.config) {
            Ok(Role::Native { .. }) => self.remove_container(&c, None).await,
            Ok(Role::Single(..)) => self.remove_container(&c, Some(&c.ifname)).await,
            Ok(Role::Ipam(..)) => self.release_owners(&c, Some(&c.ifname)).await,
            // A config Spur cannot read now was not served by it either:
            // still remove whatever carries the container's ID.
            Err(_) => self.remove_container(&c, None).await,
        }
    }

    /// Removes the container's ports and links (of `only` interface, or
    /// all) and releases its addresses.
    async fn remove_container(&self, c: &Call, only: Option<&str>) -> Result<(), CniError> {
        let mut ifnames: BTreeSet<String> = BTreeSet::new();
        let (ports, mut errors) = self.access_ports().await;
        for (bridge, p) in ports {
            let ids = &p.external_ids;
            if ids.get(port_keys::CONTAINER_ID) != Some(&c.container_id) {
                continue;
            }
            let ifname = ids.get(port_keys::INTERFACE).cloned().unwrap_or_default();
            if only.is_some_and(|o| o != ifname) {
                continue;
            }
            if let Err(e) = self.switch.remove_port(&bridge, &p.name).await {
                errors.push(format!("removing port {} of bridge {bridge}: {e}", p.name));
            }
            ifnames.insert(ifname);
        }
        errors.extend(self.release_vfs(std::path::Path::new(&c.netns), only).await);
        // A sandbox that died before its DEL returned its VFs to the host
        // under the Pod's names: give them their own back now rather than
        // at the next sweep.
        if let Err(e) = self.recover_vfs().await {
            errors.push(e);
        }
        let owners = self.container_owners(c, only);
        ifnames.extend(owners.iter().map(|k| owner_ifname(k).to_string()));
        if let Some(o) = only {
            ifnames.insert(o.to_string());
        }
        for ifname in &ifnames {
            let host = host_port_name(&c.container_id, ifname);
            if let Err(e) = self.links.delete_host_link(&host).await {
                errors.push(format!("deleting link {host}: {e}"));
            }
        }
        for key in owners {
            if let Err(e) = self.ipam.release(&key).await {
                errors.push(format!(
                    "releasing the addresses of {}: {e}",
                    owner_ifname(&key)
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::try_again_later(format!(
                "DEL of container {}: {}",
                c.container_id,
                errors.join("; ")
            )))
        }
    }

    async fn release_owners(&self, c: &Call, only: Option<&str>) -> Result<(), CniError> {
        for key in self.container_owners(c, only) {
            self.ipam
                .release(&key)
                .await
                .map_err(|e| CniError::new(e.code(), format!("DEL: {e}")))?;
        }
        Ok(())
    }

    fn container_owners(&self, c: &Call, only: Option<&str>) -> Vec<OwnerKey> {
        let mut keys: Vec<OwnerKey> = self
            .ipam
            .cache()
            .owners_where(|o| {
                o.container_id == c.container_id
                    && o.namespace == c.pod.namespace
                    && o.pod == c.pod.name
                    && matches!(o.kind, spur_core::ipamblock::OwnerKind::Pod)
                    && only.is_none_or(|i| i == o.interface)
            })
            .into_iter()
            .map(|(_, _, o)| o.key())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    async fn check(&self, req: &AgentRequest) -> Result<(), CniError> {
        let c = call(req)?;
        let prev = prev_result(&req.config)?;
        let role = role(&req.config)?;
        if matches!(role, Role::Ipam(..)) {
            return Ok(());
        }
        let info = self.pod_of(&c).await?;
        let ns_ann = self.cluster.namespace_annotations(&c.pod.namespace);
        let view = PodView {
            namespace: &c.pod.namespace,
            name: &c.pod.name,
            annotations: &info.annotations,
            namespace_annotations: ns_ann.as_ref(),
        };
        let pools = |name: &str| self.ipam.cache().layout(name);
        let bridges = self.bridge_names();
        let plans = match role {
            Role::Ipam(..) => return Ok(()),
            Role::Single(cfg, name) => {
                let network = format!("{}/{}", c.pod.namespace, name);
                let element = element_from_runtime(&req.config, &c.ifname)?;
                vec![
                    plan_single(&view, &network, &cfg, &element, &pools, &bridges)
                        .map_err(attach_error)?,
                ]
            }
            Role::Native { .. } => {
                let nads = |ns: &str, n: &str| self.cluster.nad(ns, n);
                plan_native(&view, &nads, &pools, &bridges).map_err(attach_error)?
            }
        };
        let (ports, errors) = self.access_ports().await;
        if !errors.is_empty() {
            return Err(CniError::io(errors.join("; ")));
        }
        for plan in &plans {
            if let Some(bridge) = plan.bridge() {
                check_port(&ports, &c, bridge, &plan.ifname, plan.vlan())?;
            }
        }
        let devices = self.sriov_devices(&c, &plans).await?;
        for plan in &plans {
            if let Some(pci) = devices.get(&plan.ifname) {
                self.check_vf(&c, plan, *pci).await?;
            }
        }
        let wanted: Vec<String> = plans.into_iter().map(|p| p.ifname).collect();
        for ifname in &wanted {
            let state = self
                .links
                .inspect_pod_link(std::path::Path::new(&c.netns), ifname)
                .await
                .map_err(|e| CniError::io(e.to_string()))?
                .ok_or_else(|| {
                    CniError::io(format!("interface {ifname} is missing from {}", c.netns))
                })?;
            if let Some(prev) = &prev {
                let Some(ix) = prev.interfaces.iter().position(|i| &i.name == ifname) else {
                    return Err(CniError::io(format!(
                        "interface {ifname} is not in prevResult"
                    )));
                };
                for ip in prev.ips.iter().filter(|i| i.interface == Some(ix)) {
                    if !state.addresses.contains(&ip.address) {
                        return Err(CniError::io(format!(
                            "interface {ifname} lacks address {}",
                            ip.address
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// CHECK of an SR-IOV interface: the Pod's `ifname` is the VF the
    /// kubelet assigned (its Spur record names that PCI address) and, on
    /// bare metal, its PF still sets the network's VLAN on it.
    async fn check_vf(
        &self,
        c: &Call,
        plan: &NetworkPlan,
        pci: PciAddress,
    ) -> Result<(), CniError> {
        let b = self.sriov_backends(&plan.network)?;
        let netns = std::path::Path::new(&c.netns);
        let ifname = &plan.ifname;
        let vf = b
            .vfs
            .inspect_vf(netns, ifname)
            .await
            .map_err(|e| link_error(&format!("network {}", plan.network), &e))?
            .ok_or_else(|| {
                CniError::io(format!(
                    "network {}: interface {ifname} is missing from {}",
                    plan.network, c.netns
                ))
            })?;
        let Some(record) = vf.record else {
            return Err(CniError::io(format!(
                "network {}: interface {ifname} is not a VF Spur attached (no Spur record in \
                 its alias)",
                plan.network
            )));
        };
        if record.pci != pci {
            return Err(CniError::io(format!(
                "network {}: interface {ifname} is VF {}, but the Pod's device is {pci}",
                plan.network, record.pci
            )));
        }
        if !vf.up {
            return Err(CniError::io(format!(
                "network {}: VF {pci} ({ifname}) is down",
                plan.network
            )));
        }
        if let Some((pf, index)) = &record.parent {
            let set = b
                .vfs
                .pf_settings(pf, *index)
                .await
                .map_err(|e| CniError::io(format!("network {}: {e}", plan.network)))?;
            if set.vlan != plan.vlan() {
                return Err(CniError::io(format!(
                    "network {}: VF {index} of {pf} ({ifname}) is on VLAN {}, not {}",
                    plan.network,
                    set.vlan,
                    plan.vlan()
                )));
            }
        }
        Ok(())
    }

    /// GC: removes Spur's ports (and their links and addresses) whose
    /// container is not among the valid attachments. Only ports are
    /// walked: they are this node's, whereas an IPAMBlock's allocations
    /// may belong to Pods of other nodes.
    async fn gc(&self, req: &AgentRequest) -> Result<(), CniError> {
        let valid: BTreeSet<String> = req
            .config
            .get(spur_core::cniproto::VALID_ATTACHMENTS_KEY)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.get("containerID").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let removed = self
            .sweep_ports(|ids| {
                ids.get(port_keys::CONTAINER_ID)
                    .is_some_and(|cid| !valid.contains(cid))
            })
            .await
            .map_err(CniError::try_again_later)?;
        tracing::info!(removed, "GC done");
        Ok(())
    }
}

/// Checks the access port of `ifname` among the switch's `ports`: there,
/// on `vlan`, attached by the switch daemon.
fn check_port(
    ports: &[(String, crate::ovsdb::PortInfo)],
    c: &Call,
    bridge: &str,
    ifname: &str,
    vlan: u16,
) -> Result<(), CniError> {
    let host = host_port_name(&c.container_id, ifname);
    let Some((_, p)) = ports.iter().find(|(b, p)| b == bridge && p.name == host) else {
        return Err(CniError::io(format!(
            "interface {ifname}: port {host} is missing from bridge {bridge}"
        )));
    };
    if p.tag != vlan {
        return Err(CniError::io(format!(
            "interface {ifname}: port {host} is on VLAN {} instead of {vlan}",
            p.tag
        )));
    }
    if p.ofport.is_none_or(|o| o <= 0) {
        return Err(CniError::io(format!(
            "interface {ifname}: port {host} is not attached by the switch (ofport {:?})",
            p.ofport
        )));
    }
    Ok(())
}

fn owner_ifname(key: &OwnerKey) -> &str {
    match key {
        OwnerKey::Pod(_, _, _, i) | OwnerKey::StatefulSet(_, _, _, i) => i,
    }
}

fn pool_addresses(allocated: &[Allocated]) -> Vec<PoolAddress> {
    allocated
        .iter()
        .map(|a| PoolAddress {
            pool: a.pool.clone(),
            config: IpConfig {
                address: a.address,
                gateway: Some(a.gateway),
            },
        })
        .collect()
}

fn prev_result(config: &Value) -> Result<Option<CniResult>, CniError> {
    match config.get("prevResult") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => CniResult::parse(v).map(Some),
    }
}

/// `runtimeConfig.mac` and `runtimeConfig.ips` (how Multus passes a
/// selection element's `mac` and `ips` to a delegate).
fn element_from_runtime(config: &Value, ifname: &str) -> Result<Element, CniError> {
    let rc = config.get("runtimeConfig");
    let mac = match rc.and_then(|r| r.get("mac")).and_then(Value::as_str) {
        Some(s) => Some(
            Mac::parse_unicast(s)
                .map_err(|e| CniError::invalid_config(format!("runtimeConfig.mac = {s:?}: {e}")))?,
        ),
        None => None,
    };
    Ok(Element {
        ifname: ifname.to_string(),
        mac,
        ips: runtime_ips(config)?,
        default_route: Vec::new(),
    })
}

fn runtime_ips(config: &Value) -> Result<Vec<RequestedIp>, CniError> {
    let Some(list) = config
        .get("runtimeConfig")
        .and_then(|r| r.get("ips"))
        .and_then(Value::as_array)
    else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let s = v.as_str().unwrap_or_default();
            s.parse::<RequestedIp>().map_err(|e| {
                CniError::invalid_config(format!("runtimeConfig.ips[{i}] = {s:?}: {e}"))
            })
        })
        .collect()
}

fn result_of(version: CniVersion, netns: &str, attached: &[Attached]) -> CniResult {
    let mut r = CniResult::new(version);
    for a in attached {
        let ix = r.push_interface(Interface {
            mac: Some(a.config.mac.to_string()),
            mtu: Some(u32::from(a.plan.mtu)),
            sandbox: Some(netns.to_string()),
            ..Interface::new(a.plan.ifname.clone())
        });
        for ip in &a.config.ips {
            r.push_ip(IpEntry {
                address: ip.address,
                gateway: ip.gateway,
                interface: Some(ix),
            });
        }
        for route in &a.config.routes {
            r.push_route(RouteEntry::new(route.dst, route.gw));
        }
    }
    r
}

fn network_status(
    conf_name: &str,
    prev: Option<&CniResult>,
    attached: &[Attached],
) -> Vec<NetworkStatus> {
    let mut out = Vec::new();
    if let Some(prev) = prev {
        let primary = prev
            .interfaces
            .iter()
            .position(|i| i.sandbox.as_deref().is_some_and(|s| !s.is_empty()));
        let mut entry = NetworkStatus::new(conf_name);
        entry.default = true;
        if let Some(ix) = primary {
            entry.interface = Some(prev.interfaces[ix].name.clone());
            entry.mac = prev.interfaces[ix].mac.clone();
        }
        entry.ips = prev
            .ips
            .iter()
            .filter(|ip| primary.is_none() || ip.interface == primary)
            .map(|ip| ip.address.addr())
            .collect();
        out.push(entry);
    }
    for a in attached {
        let mut entry = NetworkStatus::new(a.plan.network.clone());
        entry.interface = Some(a.plan.ifname.clone());
        entry.mac = Some(a.config.mac.to_string());
        entry.mtu = Some(u32::from(a.plan.mtu));
        entry.ips = a.config.ips.iter().map(|i| i.address.addr()).collect();
        entry.gateway = a
            .config
            .ips
            .iter()
            .filter_map(|i| i.gateway)
            .collect::<Vec<IpAddr>>();
        entry.dns = status_dns(&a.config.dns);
        entry.device_info = a
            .device
            .map(|pci| spur_core::status::DeviceInfo::pci(pci.to_string()));
        out.push(entry);
    }
    out
}

fn status_dns(d: &spur_core::nad::Dns) -> status::Dns {
    status::Dns {
        nameservers: d.nameservers.iter().map(ToString::to_string).collect(),
        domain: d.domain.clone(),
        search: d.search.clone(),
        options: d.options.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_from_config() {
        assert!(matches!(
            role(&json!({"type": "spur", "name": "k8s-pod-network"})).unwrap(),
            Role::Native { .. }
        ));
        assert!(matches!(
            role(&json!({"cniVersion": "1.0.0", "name": "v100", "type": "spur", "networkType": "vlan", "vlan": 100})).unwrap(),
            Role::Single(..)
        ));
        assert!(matches!(
            role(&json!({"cniVersion": "1.0.0", "name": "m", "type": "macvlan", "master": "eth1", "ipam": {"type": "spur", "ippools": ["a"]}})).unwrap(),
            Role::Ipam(..)
        ));
        let e = role(&json!({"cniVersion": "1.0.0", "name": "m", "type": "macvlan"})).unwrap_err();
        assert_eq!(e.code, 7);
        let e = role(&json!({"cniVersion": "1.0.0", "name": "v", "type": "spur", "networkType": "vlan", "vlan": 5000})).unwrap_err();
        assert!(e.msg.contains("vlan"), "{}", e.msg);
    }

    #[test]
    fn runtime_config_element() {
        let el = element_from_runtime(
            &json!({"runtimeConfig": {"mac": "02:00:00:00:00:01", "ips": ["10.0.0.5/24"]}}),
            "net1",
        )
        .unwrap();
        assert_eq!(el.ifname, "net1");
        assert_eq!(el.mac.unwrap().to_string(), "02:00:00:00:00:01");
        assert_eq!(el.ips.len(), 1);
        let e =
            element_from_runtime(&json!({"runtimeConfig": {"ips": ["x"]}}), "net1").unwrap_err();
        assert!(e.msg.contains("runtimeConfig.ips[0]"), "{}", e.msg);
    }
}
