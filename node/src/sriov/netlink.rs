//! [`RtNetlinkVfs`]: [`VfLinks`] over netlink, following the conventions
//! of the veth implementation ([`crate::netdev::RtNetlinkLinks`]): one
//! rtnetlink connection in the agent's netns for the host side (the PF and
//! the VF's netdev while it is home); everything inside a Pod netns runs
//! on a dedicated short-lived thread that enters it and opens its own
//! blocking sockets there (`crate::netdev::netns`), so none of the agent's
//! threads changes netns. The Pod-end configuration (sysctls, addresses,
//! up, routes, announcements) is the veth's own code.
//!
//! `attach_vf`, step by step, and why in this order:
//! 1. check the spec, open the Pod netns, find the netdev in the agent's
//!    netns (else an error naming it), check on a Pod-side thread that
//!    `ifname` is free there ([`NetdevError::PodLinkExists`]). Nothing has
//!    changed yet;
//! 2. in the agent's netns: the record as the alias and the link down
//!    (one `RTM_SETLINK`);
//! 3. one `RTM_SETLINK` carrying both `IFLA_NET_NS_FD` and `IFLA_IFNAME =
//!    ifname`: the kernel moves the netdev, then renames it inside the Pod
//!    netns, all under RTNL. `ifname` never exists in the agent's netns (so
//!    it cannot clash with a host interface, e.g. `eth1`), no temporary name
//!    is needed, and if the netdev's own name is taken in the Pod netns the
//!    kernel names it `ifname` directly. The one partial outcome (moved
//!    but not renamed: `ifname` appeared in the Pod since step 1) is
//!    detected (the netdev is no longer home) and undone like step 5;
//! 4. on a thread inside the Pod netns: MTU, MAC when given, then the
//!    veth's Pod-end code (sysctls, addresses, up, routes; the kernel
//!    announces once up);
//! 5. on any failure after the move, that same thread restores the MTU
//!    and MAC and moves the netdev back under its own name
//!    (`IFLA_NET_NS_FD` of the agent's netns + `IFLA_IFNAME`); the agent
//!    side clears the alias; the first error is returned.
//!
//! The whole attach runs as a task of its own, so that a caller that goes
//! away midway (a timeout on ADD) does not leave it half done; when the
//! caller is gone by the time the VF is attached, the task detaches it.
//!
//! `detach_vf`: on a Pod-side thread the interface is looked up, its alias
//! parsed (not a Spur record: an error, nothing touched), its addresses
//! flushed and the link set down; the agent side picks the home name (the
//! record's, or `spurvf<ifindex>` with a warning when that is taken); the
//! Pod-side thread moves it home under that name in one `RTM_SETLINK`
//! (the Pod name, e.g. `eth1`, would clash in the host); the agent side
//! clears the alias. The agent's netns is the file
//! `/proc/thread-self/ns/net` opened by [`RtNetlinkVfs::new`] on the thread
//! that opens the connection, i.e. the very netns of the connection.
//!
//! PF side: behind the [`PfDriver`] boundary. [`NetlinkPf`] (the default)
//! does `RTM_GETLINK` with `IFLA_EXT_MASK = RTEXT_FILTER_VF` read through
//! `IFLA_VFINFO_LIST`, and `RTM_SETLINK` with one `IFLA_VF_INFO` (VLAN,
//! MAC, spoof check, trust); the harness's emulated NICs have their own
//! driver (`super::emulated`).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use netlink_packet_core::NLM_F_ACK;
use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage, LinkVfInfo, VfInfo, VfInfoMac,
    VfInfoSpoofCheck, VfInfoTrust, VfInfoVlan,
};
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;
use spur_core::names::Mac;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::vf::{PfVfSettings, PodVf, VfAttachSpec, VfLinks, VfRecord};
use crate::netdev::error::io_errno;
use crate::netdev::msg::{self, link_facts};
use crate::netdev::rtnl::{
    agent_err, configure_pod_end, dump_addresses, get_link, pod_err, route_socket, PodSockets,
};
use crate::netdev::sock::{NlError, SyncSocket};
use crate::netdev::{check_ifname, netns, NetdevError, Netns, RtNetlinkLinks, VethSpec};

/// The agent's own netns, as the thread opening the connection sees it.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";
/// Operation names of the Pod-side threads.
const OP_CHECK: &str = "check the VF's name in the Pod";
const OP_CONFIGURE: &str = "configure the VF in the Pod";
const OP_DETACH: &str = "detach the VF from the Pod";
const OP_INSPECT: &str = "inspect the VF in the Pod";
const OP_LIST: &str = "list the VFs in the Pod";
/// A placeholder MAC for the [`VethSpec`] handed to the veth's Pod-end
/// code, which never reads it (the VF's MAC is set separately).
const UNUSED_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// The driver of a PF's per-VF settings (VLAN and priority, MAC, spoof
/// check, trust): what [`RtNetlinkVfs`] reads and writes through a PF.
/// [`NetlinkPf`] is the kernel's (`IFLA_VFINFO_LIST`, a real SR-IOV NIC);
/// [`super::emulated::EmulatedPf`] is the hardware harness's emulated NIC
/// (an OVS bridge per PF). Boxed futures keep it usable as `dyn PfDriver`.
pub trait PfDriver: Send + Sync + std::fmt::Debug {
    /// What `pf` has set for its VF `index`.
    fn get<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
    ) -> BoxFuture<'a, Result<PfVfSettings, NetdevError>>;

    /// Sets VF `index` of `pf`: VLAN and priority, MAC when given, spoof
    /// check and trust when given. Idempotent.
    fn set<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
        settings: &'a PfVfSettings,
    ) -> BoxFuture<'a, Result<(), NetdevError>>;
}

/// [`PfDriver`] over netlink: `RTM_GETLINK` of the PF with
/// `IFLA_EXT_MASK = RTEXT_FILTER_VF` read through `IFLA_VFINFO_LIST`, and
/// `RTM_SETLINK` with one `IFLA_VF_INFO`.
#[derive(Clone, Debug)]
pub struct NetlinkPf {
    links: RtNetlinkLinks,
}

impl NetlinkPf {
    /// The driver on the agent's rtnetlink connection `links`.
    pub fn new(links: RtNetlinkLinks) -> NetlinkPf {
        NetlinkPf { links }
    }

    async fn get_settings(&self, pf: &str, index: u16) -> Result<PfVfSettings, NetdevError> {
        check_ifname("pf", pf)?;
        let req = RouteNetlinkMessage::GetLink(get_link_with_vfs(pf));
        let link = match self.links.host_request(req, NLM_F_ACK).await {
            Ok(replies) => first_link(replies).ok_or_else(|| NetdevError::Protocol {
                op: format!("get link {pf}"),
                netns: Netns::Agent,
                detail: "no link in the answer".into(),
            })?,
            Err(e) if e.kernel_errno() == Some(Errno::ENODEV) => {
                return Err(NetdevError::Kernel {
                    op: format!("read VF {index} of the PF"),
                    netns: Netns::Agent,
                    ifname: pf.to_owned(),
                    errno: Errno::ENODEV,
                    message: None,
                })
            }
            Err(e) => return Err(agent_err("get link", pf, e)),
        };
        vf_settings_of(&link, index).ok_or_else(|| NetdevError::InvalidSpec {
            field: "index".into(),
            value: index.to_string(),
            reason: format!("PF {pf} reports no VF {index}"),
        })
    }

    async fn set_settings(
        &self,
        pf: &str,
        index: u16,
        settings: &PfVfSettings,
    ) -> Result<(), NetdevError> {
        check_ifname("pf", pf)?;
        let req = RouteNetlinkMessage::SetLink(set_vf(pf, index, settings));
        let op = format!("set VF {index} ({})", describe(settings));
        self.links
            .host_request(req, NLM_F_ACK)
            .await
            .map_err(|e| agent_err(&op, pf, e))?;
        debug!(pf, index, settings = %describe(settings), "set VF through its PF");
        Ok(())
    }
}

impl PfDriver for NetlinkPf {
    fn get<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
    ) -> BoxFuture<'a, Result<PfVfSettings, NetdevError>> {
        Box::pin(self.get_settings(pf, index))
    }

    fn set<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
        settings: &'a PfVfSettings,
    ) -> BoxFuture<'a, Result<(), NetdevError>> {
        Box::pin(self.set_settings(pf, index, settings))
    }
}

/// [`VfLinks`] over netlink (see the module doc), the PF's per-VF
/// settings through a [`PfDriver`] ([`NetlinkPf`] unless
/// [`RtNetlinkVfs::with_pf_driver`] says otherwise).
#[derive(Clone, Debug)]
pub struct RtNetlinkVfs {
    links: RtNetlinkLinks,
    /// The netns the connection lives in, for moving netdevs home.
    agent_ns: Arc<File>,
    /// Reads and writes the VFs' settings held by their PFs.
    pf: Arc<dyn PfDriver>,
}

impl RtNetlinkVfs {
    /// Opens the rtnetlink connection in the calling thread's netns (the
    /// agent's), and keeps that netns open to move VFs back into it. Fails
    /// outside a tokio runtime or when the socket or the netns file cannot
    /// be opened.
    pub async fn new() -> Result<RtNetlinkVfs, NetdevError> {
        // Both on this thread before any suspension point: the same netns.
        let agent_ns = File::open(THREAD_NETNS).map_err(|e| NetdevError::Netns {
            op: "open",
            netns: PathBuf::from(THREAD_NETNS),
            errno: io_errno(&e),
        })?;
        let links = RtNetlinkLinks::new().await?;
        Ok(RtNetlinkVfs {
            pf: Arc::new(NetlinkPf::new(links.clone())),
            links,
            agent_ns: Arc::new(agent_ns),
        })
    }

    /// The same with `driver` reading and writing the VFs' settings held
    /// by their PFs (e.g. the harness's emulated NICs).
    pub fn with_pf_driver(mut self, driver: Arc<dyn PfDriver>) -> RtNetlinkVfs {
        self.pf = driver;
        self
    }

    fn agent_ns_clone(&self, op: &'static str) -> Result<File, NetdevError> {
        self.agent_ns.try_clone().map_err(|e| NetdevError::Worker {
            op,
            netns: PathBuf::from(THREAD_NETNS),
            detail: format!("cannot duplicate the agent's netns fd: {e}"),
        })
    }

    /// One request on the agent's connection, errors naming `op` and
    /// `ifname`.
    async fn host(
        &self,
        op: &str,
        ifname: &str,
        req: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetdevError> {
        self.links
            .host_request(req, flags)
            .await
            .map_err(|e| agent_err(op, ifname, e))
    }

    /// Link `name` in the agent's netns (`None` when absent).
    async fn host_link(&self, name: &str) -> Result<Option<LinkMessage>, NetdevError> {
        self.host_link_msg(name, msg::link_by_name(name)).await
    }

    async fn host_link_msg(
        &self,
        name: &str,
        req: LinkMessage,
    ) -> Result<Option<LinkMessage>, NetdevError> {
        match self
            .links
            .host_request(RouteNetlinkMessage::GetLink(req), NLM_F_ACK)
            .await
        {
            Ok(replies) => first_link(replies)
                .map(Some)
                .ok_or_else(|| NetdevError::Protocol {
                    op: format!("get link {name}"),
                    netns: Netns::Agent,
                    detail: "no link in the answer".into(),
                }),
            Err(e) if e.kernel_errno() == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(agent_err("get link", name, e)),
        }
    }

    /// Clears the alias of `name` in the agent's netns; a failure is only
    /// logged (the netdev is home either way, and the next attach
    /// overwrites the alias).
    async fn clear_alias(&self, name: &str) {
        let r = async {
            let Some(link) = self.host_link(name).await? else {
                return Err(NetdevError::Kernel {
                    op: "find the netdev to clear its alias".into(),
                    netns: Netns::Agent,
                    ifname: name.to_owned(),
                    errno: Errno::ENODEV,
                    message: None,
                });
            };
            let req = RouteNetlinkMessage::SetLink(set_alias(link.header.index, ""));
            self.host("clear alias", name, req, NLM_F_ACK).await?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            warn!(netdev = %name, error = %e, "could not clear the VF's alias");
        }
    }

    async fn pf_get(&self, pf: &str, index: u16) -> Result<PfVfSettings, NetdevError> {
        self.pf.get(pf, index).await
    }

    async fn pf_set(
        &self,
        pf: &str,
        index: u16,
        settings: &PfVfSettings,
    ) -> Result<(), NetdevError> {
        self.pf.set(pf, index, settings).await
    }

    async fn attach(&self, spec: &VfAttachSpec) -> Result<(), NetdevError> {
        let vspec = pod_end_spec(spec);
        vspec.validate()?;
        if let Some(mac) = spec.mac {
            if mac.is_multicast() || mac.0 == [0; 6] {
                return Err(NetdevError::InvalidSpec {
                    field: "mac".into(),
                    value: mac.to_string(),
                    reason: "must be a unicast, non-zero MAC".into(),
                });
            }
        }
        let pod_ns = netns::open(&spec.netns)?;
        let Some(home) = self.host_link(&spec.netdev).await? else {
            return Err(NetdevError::InvalidSpec {
                field: "netdev".into(),
                value: spec.netdev.clone(),
                reason: "no such interface in the agent's netns".into(),
            });
        };
        let facts = link_facts(&home);
        let index = facts.index;

        // 1. The name must be free in the Pod.
        let check_ns = try_clone(&spec.netns, &pod_ns)?;
        let (path, name) = (spec.netns.clone(), spec.ifname.clone());
        let taken = netns::run_in(&spec.netns, check_ns, OP_CHECK, move || {
            let mut rt = route_socket(&path)?;
            Ok(get_link(&mut rt, &path, &name)?.is_some())
        })
        .await?;
        if taken {
            return Err(NetdevError::PodLinkExists {
                netns: spec.netns.clone(),
                ifname: spec.ifname.clone(),
            });
        }

        // 2. The record, and down.
        let alias = spec.record.render();
        let req = RouteNetlinkMessage::SetLink(set_alias_down(index, &alias));
        if let Err(e) = self
            .host("set the alias and down", &spec.netdev, req, NLM_F_ACK)
            .await
        {
            self.clear_alias(&spec.netdev).await;
            return Err(e);
        }

        // 3. Move and rename in one request.
        let req = RouteNetlinkMessage::SetLink(move_to(index, pod_ns.as_raw_fd(), &spec.ifname));
        let op = format!(
            "move into netns {} as {}",
            spec.netns.display(),
            spec.ifname
        );
        if let Err(e) = self.links.host_request(req, NLM_F_ACK).await {
            let err = if e.kernel_errno() == Some(Errno::EEXIST) {
                NetdevError::PodLinkExists {
                    netns: spec.netns.clone(),
                    ifname: spec.ifname.clone(),
                }
            } else {
                agent_err(&op, &spec.netdev, e)
            };
            let still_home = match self.host_link(&spec.netdev).await {
                Ok(found) => found.is_some(),
                Err(look) => {
                    warn!(netdev = %spec.netdev, error = %look,
                        "cannot tell whether the VF moved after a failed move: {err}");
                    true
                }
            };
            if !still_home {
                // Moved, not renamed: bring it back from the Pod.
                let back_ns = try_clone(&spec.netns, &pod_ns)?;
                let agent = self.agent_ns_clone(OP_CONFIGURE)?;
                let (path, netdev) = (spec.netns.clone(), spec.netdev.clone());
                let (mtu, mac) = (facts.mtu, facts.mac);
                let r = netns::run_in(&spec.netns, back_ns, OP_CONFIGURE, move || {
                    let mut rt = route_socket(&path)?;
                    return_home(&mut rt, &path, &netdev, &netdev, &agent, mtu, mac)
                })
                .await;
                if let Err(back) = r {
                    warn!(netdev = %spec.netdev, netns = %spec.netns.display(), error = %back,
                        "could not move the VF back after a failed attach: {err}");
                }
            }
            self.clear_alias(&spec.netdev).await;
            return Err(err);
        }
        drop(pod_ns);

        // 4. Configure inside the Pod; 5. on failure, back home.
        let work_ns = netns::open(&spec.netns)?;
        let agent = self.agent_ns_clone(OP_CONFIGURE)?;
        let (mtu, want_mac, netdev) = (spec.mtu, spec.mac, spec.netdev.clone());
        let (old_mtu, old_mac) = (facts.mtu, facts.mac);
        let r = netns::run_in(&spec.netns, work_ns, OP_CONFIGURE, move || {
            let netns = vspec.netns.as_path();
            let ifname = vspec.ifname.as_str();
            let result = configure_vf(&vspec, mtu, want_mac);
            if let Err(e) = &result {
                let back = route_socket(netns).and_then(|mut rt| {
                    return_home(&mut rt, netns, ifname, &netdev, &agent, old_mtu, old_mac)
                });
                if let Err(back) = back {
                    warn!(netdev = %netdev, netns = %netns.display(), error = %back,
                        "could not move the VF back after a failed attach: {e}");
                }
            }
            result
        })
        .await;
        match r {
            Ok(()) => {
                debug!(netdev = %spec.netdev, netns = %spec.netns.display(),
                    ifname = %spec.ifname, "attached VF");
                Ok(())
            }
            Err(e) => {
                self.clear_alias(&spec.netdev).await;
                Err(e)
            }
        }
    }

    async fn detach(
        &self,
        netns_path: &Path,
        ifname: &str,
    ) -> Result<Option<VfRecord>, NetdevError> {
        check_ifname("ifname", ifname)?;
        let ns = match netns::open(netns_path) {
            Ok(ns) => ns,
            Err(NetdevError::NetnsNotFound { .. } | NetdevError::NotANetns { .. }) => {
                debug!(netns = %netns_path.display(), ifname, "netns gone: no VF to detach");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let move_ns = try_clone(netns_path, &ns)?;

        // 1. In the Pod: find it, read its record, flush, down.
        let (path, name) = (netns_path.to_owned(), ifname.to_owned());
        let found = netns::run_in(netns_path, ns, OP_DETACH, move || {
            let mut rt = route_socket(&path)?;
            let Some(link) = get_link_msg(&mut rt, &path, &name)? else {
                return Ok(None);
            };
            let alias = alias_of(&link);
            let Some(record) = alias.and_then(VfRecord::parse) else {
                return Err(NetdevError::InvalidSpec {
                    field: "ifname".into(),
                    value: name.clone(),
                    reason: format!(
                        "in netns {}, its alias {:?} is not a Spur VF record; left where it is",
                        path.display(),
                        alias.unwrap_or("")
                    ),
                });
            };
            let index = link.header.index;
            flush_addresses(&mut rt, &path, &name, index)?;
            rt.request(RouteNetlinkMessage::SetLink(set_down(index)), NLM_F_ACK)
                .map_err(|e| pod_err("set link down", &path, &name, e))?;
            Ok(Some((index, record)))
        })
        .await;
        let (index, record) = match found {
            Ok(Some(found)) => found,
            Ok(None) | Err(NetdevError::NotANetns { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };

        // 2. The home name.
        let fallback = fallback_name(index);
        let target = if self.host_link(&record.name).await?.is_some() {
            warn!(netns = %netns_path.display(), ifname, name = %record.name, fallback = %fallback,
                "the VF's own name is taken in the agent's netns: it goes home under a fallback name");
            fallback.clone()
        } else {
            record.name.clone()
        };

        // 3. Home, renamed in the same request.
        let agent = self.agent_ns_clone(OP_DETACH)?;
        let (path, name, to) = (netns_path.to_owned(), ifname.to_owned(), target.clone());
        let renamed = netns::run_in(netns_path, move_ns, OP_DETACH, move || {
            let mut rt = route_socket(&path)?;
            let req = RouteNetlinkMessage::SetLink(move_to(index, agent.as_raw_fd(), &to));
            match rt.request(req, NLM_F_ACK) {
                Ok(_) => Ok(true),
                Err(e) => {
                    if get_link(&mut rt, &path, &name)?.is_some() {
                        Err(pod_err(
                            &format!("move to the agent's netns as {to}"),
                            &path,
                            &name,
                            e,
                        ))
                    } else {
                        // Moved under its Pod name; the rename failed.
                        warn!(netns = %path.display(), ifname = %name, error = ?e,
                            "the VF moved home but could not be renamed {to}");
                        Ok(false)
                    }
                }
            }
        })
        .await?;

        // 4. In the agent's netns: the name (when the move did not give it)
        //    and the alias cleared.
        let home = if renamed {
            target
        } else {
            let Some(link) = self.host_link(ifname).await? else {
                return Err(NetdevError::Protocol {
                    op: format!("find {ifname} after its move home"),
                    netns: Netns::Agent,
                    detail: "the VF left the Pod netns but is not in the agent's".into(),
                });
            };
            let req = RouteNetlinkMessage::SetLink(rename(link.header.index, &fallback));
            self.host(&format!("rename to {fallback}"), ifname, req, NLM_F_ACK)
                .await?;
            fallback
        };
        self.clear_alias(&home).await;
        debug!(netns = %netns_path.display(), ifname, home = %home, "detached VF");
        Ok(Some(record))
    }

    async fn inspect(&self, netns_path: &Path, ifname: &str) -> Result<Option<PodVf>, NetdevError> {
        check_ifname("ifname", ifname)?;
        let ns = netns::open(netns_path)?;
        let (path, name) = (netns_path.to_owned(), ifname.to_owned());
        netns::run_in(netns_path, ns, OP_INSPECT, move || {
            let mut rt = route_socket(&path)?;
            let Some(link) = get_link_msg(&mut rt, &path, &name)? else {
                return Ok(None);
            };
            let facts = link_facts(&link);
            let addrs = dump_addresses(&mut rt, &path, &name)?;
            Ok(Some(PodVf {
                record: alias_of(&link).and_then(VfRecord::parse),
                mtu: facts.mtu,
                mac: Mac(facts.mac.unwrap_or([0; 6])),
                addresses: msg::addresses_of(&addrs, facts.index),
                up: facts.up,
            }))
        })
        .await
    }
}

impl RtNetlinkVfs {
    async fn list(&self, netns_path: &Path) -> Result<Vec<String>, NetdevError> {
        let ns = match netns::open(netns_path) {
            Ok(ns) => ns,
            Err(NetdevError::NetnsNotFound { .. } | NetdevError::NotANetns { .. }) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let path = netns_path.to_owned();
        netns::run_in(netns_path, ns, OP_LIST, move || {
            let mut rt = route_socket(&path)?;
            let replies = rt
                .request(
                    RouteNetlinkMessage::GetLink(LinkMessage::default()),
                    NLM_F_DUMP,
                )
                .map_err(|e| pod_err("list links", &path, "", e))?;
            let mut out = Vec::new();
            for m in replies {
                let RouteNetlinkMessage::NewLink(link) = m else {
                    continue;
                };
                if alias_of(&link).and_then(VfRecord::parse).is_none() {
                    continue;
                }
                if let Some(name) = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }) {
                    out.push(name);
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}

/// Host-side recovery: VFs that came home from a dead Pod namespace.
impl RtNetlinkVfs {
    async fn host_list(&self) -> Result<Vec<(String, VfRecord)>, NetdevError> {
        let replies = self
            .host(
                "list links",
                "",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .await?;
        let mut out: Vec<(String, VfRecord)> = replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .filter_map(|l| {
                let record = alias_of(&l).and_then(VfRecord::parse)?;
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })?;
                Some((name, record))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn host_label(&self, netdev: &str, record: &VfRecord) -> Result<(), NetdevError> {
        check_ifname("netdev", netdev)?;
        let Some(link) = self.host_link(netdev).await? else {
            return Err(NetdevError::Kernel {
                op: "label the VF with its record".into(),
                netns: Netns::Agent,
                ifname: netdev.to_owned(),
                errno: Errno::ENODEV,
                message: None,
            });
        };
        let req = RouteNetlinkMessage::SetLink(set_alias(link.header.index, &record.render()));
        self.host("label the VF with its record", netdev, req, NLM_F_ACK)
            .await?;
        Ok(())
    }

    async fn host_restore(&self, netdev: &str) -> Result<Option<VfRecord>, NetdevError> {
        check_ifname("netdev", netdev)?;
        let Some(link) = self.host_link(netdev).await? else {
            return Ok(None);
        };
        let Some(record) = alias_of(&link).and_then(VfRecord::parse) else {
            return Ok(None);
        };
        let index = link.header.index;
        // Down first: a netdev is renamed only while down.
        self.host(
            "set link down",
            netdev,
            RouteNetlinkMessage::SetLink(set_down(index)),
            NLM_F_ACK,
        )
        .await?;
        let addrs: Vec<_> = self
            .host(
                "list addresses",
                netdev,
                RouteNetlinkMessage::GetAddress(msg::dump_addresses()),
                NLM_F_DUMP,
            )
            .await?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .collect();
        for a in msg::addresses_of(&addrs, index) {
            let req = RouteNetlinkMessage::DelAddress(msg::new_address(index, &a));
            match self.links.host_request(req, NLM_F_ACK).await {
                Ok(_)
                | Err(NlError::Kernel {
                    errno: Errno::EADDRNOTAVAIL,
                    ..
                }) => {}
                Err(e) => return Err(agent_err(&format!("delete address {a}"), netdev, e)),
            }
        }
        let home = if netdev == record.name {
            record.name.clone()
        } else {
            let target = if self.host_link(&record.name).await?.is_some() {
                let fallback = fallback_name(index);
                warn!(netdev, name = %record.name, fallback = %fallback,
                    "the VF's own name is taken in the agent's netns: it gets a fallback name");
                fallback
            } else {
                record.name.clone()
            };
            if target != netdev {
                let req = RouteNetlinkMessage::SetLink(rename(index, &target));
                self.host(&format!("rename to {target}"), netdev, req, NLM_F_ACK)
                    .await?;
            }
            target
        };
        let req = RouteNetlinkMessage::SetLink(set_alias(index, ""));
        self.host("clear alias", &home, req, NLM_F_ACK).await?;
        debug!(netdev, home = %home, pci = %record.pci, "restored a VF that came home from a Pod");
        Ok(Some(record))
    }
}

impl VfLinks for RtNetlinkVfs {
    fn pod_vfs<'a>(&'a self, netns: &'a Path) -> BoxFuture<'a, Result<Vec<String>, NetdevError>> {
        Box::pin(self.list(netns))
    }

    fn label_host_vf<'a>(
        &'a self,
        netdev: &'a str,
        record: &'a VfRecord,
    ) -> BoxFuture<'a, Result<(), NetdevError>> {
        Box::pin(self.host_label(netdev, record))
    }

    fn host_vfs<'a>(&'a self) -> BoxFuture<'a, Result<Vec<(String, VfRecord)>, NetdevError>> {
        Box::pin(self.host_list())
    }

    fn restore_host_vf<'a>(
        &'a self,
        netdev: &'a str,
    ) -> BoxFuture<'a, Result<Option<VfRecord>, NetdevError>> {
        Box::pin(self.host_restore(netdev))
    }

    fn pf_settings<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
    ) -> BoxFuture<'a, Result<PfVfSettings, NetdevError>> {
        Box::pin(self.pf_get(pf, index))
    }

    fn set_pf_settings<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
        settings: &'a PfVfSettings,
    ) -> BoxFuture<'a, Result<(), NetdevError>> {
        Box::pin(self.pf_set(pf, index, settings))
    }

    fn attach_vf<'a>(&'a self, spec: &'a VfAttachSpec) -> BoxFuture<'a, Result<(), NetdevError>> {
        Box::pin(async move {
            let rt = tokio::runtime::Handle::try_current()
                .map_err(|_| NetdevError::NoRuntime { op: "attach_vf" })?;
            let (tx, rx) = oneshot::channel();
            let vfs = self.clone();
            let task_spec = spec.clone();
            rt.spawn(async move {
                let result = vfs.attach(&task_spec).await;
                if let Err(Ok(())) = tx.send(result) {
                    // The caller went away: undo the attach it no longer
                    // waits for.
                    match vfs.detach(&task_spec.netns, &task_spec.ifname).await {
                        Ok(_) => debug!(netdev = %task_spec.netdev,
                            "detached the VF of an abandoned attach_vf"),
                        Err(e) => warn!(netdev = %task_spec.netdev, error = %e,
                            "could not detach the VF of an abandoned attach_vf"),
                    }
                }
            });
            rx.await.map_err(|_| NetdevError::ConnectionClosed {
                op: "attach_vf (its task ended without an answer: runtime shutting down?)".into(),
            })?
        })
    }

    fn detach_vf<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<VfRecord>, NetdevError>> {
        Box::pin(self.detach(netns, ifname))
    }

    fn inspect_vf<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodVf>, NetdevError>> {
        Box::pin(self.inspect(netns, ifname))
    }
}

// ---------------------------------------------------------------------------
// Inside the Pod netns (blocking, on the worker thread)

/// MTU, MAC, then the veth's Pod-end configuration.
fn configure_vf(vspec: &VethSpec, mtu: u32, mac: Option<Mac>) -> Result<(), NetdevError> {
    let netns = vspec.netns.as_path();
    let ifname = vspec.ifname.as_str();
    let mut rt = route_socket(netns)?;
    let index = get_link(&mut rt, netns, ifname)?
        .ok_or_else(|| NetdevError::Protocol {
            op: format!("get link {ifname}"),
            netns: Netns::pod(netns),
            detail: "the VF is not in the netns right after its move".into(),
        })?
        .index;
    rt.request(
        RouteNetlinkMessage::SetLink(set_mtu_mac(index, Some(mtu), None)),
        NLM_F_ACK,
    )
    .map_err(|e| pod_err(&format!("set MTU {mtu}"), netns, ifname, e))?;
    if let Some(mac) = mac {
        rt.request(
            RouteNetlinkMessage::SetLink(set_mtu_mac(index, None, Some(mac.0))),
            NLM_F_ACK,
        )
        .map_err(|e| pod_err(&format!("set MAC {mac}"), netns, ifname, e))?;
    }
    configure_pod_end(vspec, PodSockets::open(vspec)?)?;
    Ok(())
}

/// Moves `ifname` (in the Pod netns) back into the agent's netns as
/// `home`, with its MTU and MAC of before (best effort).
fn return_home(
    rt: &mut SyncSocket,
    netns: &Path,
    ifname: &str,
    home: &str,
    agent: &File,
    mtu: u32,
    mac: Option<[u8; 6]>,
) -> Result<(), NetdevError> {
    let Some(link) = get_link(rt, netns, ifname)? else {
        return Err(NetdevError::Protocol {
            op: format!("get link {ifname}"),
            netns: Netns::pod(netns),
            detail: "the VF is not in the netns any more".into(),
        });
    };
    let index = link.index;
    let restore = RouteNetlinkMessage::SetLink(set_mtu_mac(
        index,
        (mtu != 0).then_some(mtu),
        mac.filter(|m| Some(*m) != link.mac),
    ));
    if let Err(e) = rt.request(restore, NLM_F_ACK) {
        warn!(netns = %netns.display(), ifname, error = ?e,
            "could not restore the VF's MTU and MAC before moving it back");
    }
    let req = RouteNetlinkMessage::SetLink(move_to(index, agent.as_raw_fd(), home));
    rt.request(req, NLM_F_ACK).map_err(|e| {
        pod_err(
            &format!("move back to the agent's netns as {home}"),
            netns,
            ifname,
            e,
        )
    })?;
    Ok(())
}

/// The whole link message of `ifname` (`None` when absent).
fn get_link_msg(
    rt: &mut SyncSocket,
    netns: &Path,
    ifname: &str,
) -> Result<Option<LinkMessage>, NetdevError> {
    let req = RouteNetlinkMessage::GetLink(msg::link_by_name(ifname));
    match rt.request(req, NLM_F_ACK) {
        Ok(replies) => first_link(replies)
            .map(Some)
            .ok_or_else(|| NetdevError::Protocol {
                op: format!("get link {ifname}"),
                netns: Netns::pod(netns),
                detail: "no link in the answer".into(),
            }),
        Err(e) if e.kernel_errno() == Some(Errno::ENODEV) => Ok(None),
        Err(e) => Err(pod_err("get link", netns, ifname, e)),
    }
}

/// Deletes every address of link `index`.
fn flush_addresses(
    rt: &mut SyncSocket,
    netns: &Path,
    ifname: &str,
    index: u32,
) -> Result<(), NetdevError> {
    let addrs = rt
        .request(
            RouteNetlinkMessage::GetAddress(msg::dump_addresses()),
            NLM_F_DUMP,
        )
        .map_err(|e| pod_err("list addresses", netns, ifname, e))?;
    let addrs: Vec<_> = addrs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => Some(a),
            _ => None,
        })
        .collect();
    for a in msg::addresses_of(&addrs, index) {
        let req = RouteNetlinkMessage::DelAddress(msg::new_address(index, &a));
        match rt.request(req, NLM_F_ACK) {
            Ok(_) => {}
            // Gone already (e.g. with another one).
            Err(NlError::Kernel {
                errno: Errno::EADDRNOTAVAIL,
                ..
            }) => {}
            Err(e) => return Err(pod_err(&format!("delete address {a}"), netns, ifname, e)),
        }
    }
    Ok(())
}

fn try_clone(path: &Path, ns: &File) -> Result<File, NetdevError> {
    ns.try_clone().map_err(|e| NetdevError::Netns {
        op: "open",
        netns: path.to_owned(),
        errno: io_errno(&e),
    })
}

// ---------------------------------------------------------------------------
// Messages (pure)

/// The [`VethSpec`] the veth's Pod-end code takes: only `netns`, `ifname`,
/// `addresses`, `routes` and `announce` are read there (`host_name` is the
/// netdev, for validation; `mac` a placeholder; no TX checksum change).
fn pod_end_spec(spec: &VfAttachSpec) -> VethSpec {
    VethSpec {
        host_name: spec.netdev.clone(),
        netns: spec.netns.clone(),
        ifname: spec.ifname.clone(),
        mtu: spec.mtu,
        mac: UNUSED_MAC,
        addresses: spec.addresses.clone(),
        routes: spec.routes.clone(),
        tx_checksum_off: false,
        announce: spec.announce,
    }
}

fn first_link(replies: Vec<RouteNetlinkMessage>) -> Option<LinkMessage> {
    replies.into_iter().find_map(|r| match r {
        RouteNetlinkMessage::NewLink(l) => Some(l),
        _ => None,
    })
}

/// The alias of a link, when it has one.
fn alias_of(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(s) if !s.is_empty() => Some(s.as_str()),
        _ => None,
    })
}

/// The name a VF goes home under when its own is taken.
fn fallback_name(index: u32) -> String {
    let name = format!("spurvf{index}");
    if name.len() <= 15 {
        name
    } else {
        format!("svf{index}")
    }
}

/// `RTM_GETLINK` of `pf` with its VFs (`IFLA_EXT_MASK = RTEXT_FILTER_VF`).
fn get_link_with_vfs(pf: &str) -> LinkMessage {
    let mut m = msg::link_by_name(pf);
    m.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Vf]));
    m
}

/// What `IFLA_VFINFO_LIST` of `m` says of VF `index` (`None`: no such VF).
fn vf_settings_of(m: &LinkMessage, index: u16) -> Option<PfVfSettings> {
    let id = u32::from(index);
    let vfs = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::VfInfoList(l) => Some(l),
        _ => None,
    })?;
    let mut found = false;
    let mut s = PfVfSettings::default();
    for LinkVfInfo(infos) in vfs {
        // Every entry names its VF in each of its attributes.
        let mine = infos.iter().any(|i| match i {
            VfInfo::Mac(v) => v.vf_id == id,
            VfInfo::Vlan(v) => v.vf_id == id,
            _ => false,
        });
        if !mine {
            continue;
        }
        found = true;
        for i in infos {
            match i {
                VfInfo::Mac(v) => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&v.mac[..6]);
                    s.mac = (mac != [0; 6]).then_some(Mac(mac));
                }
                VfInfo::Vlan(v) => {
                    s.vlan = u16::try_from(v.vlan_id).unwrap_or(0);
                    s.qos = u8::try_from(v.qos).unwrap_or(0);
                }
                VfInfo::SpoofCheck(v) => s.spoofchk = Some(v.enabled),
                VfInfo::Trust(v) => s.trust = Some(v.enabled),
                _ => {}
            }
        }
        break;
    }
    found.then_some(s)
}

/// `RTM_SETLINK` of `pf` setting VF `index`: VLAN and priority always,
/// MAC, spoof check and trust when given.
fn set_vf(pf: &str, index: u16, s: &PfVfSettings) -> LinkMessage {
    let id = u32::from(index);
    let mut info = vec![VfInfo::Vlan(VfInfoVlan::new(
        id,
        u32::from(s.vlan),
        u32::from(s.qos),
    ))];
    if let Some(mac) = s.mac {
        info.push(VfInfo::Mac(VfInfoMac::new(id, &mac.0)));
    }
    if let Some(on) = s.spoofchk {
        info.push(VfInfo::SpoofCheck(VfInfoSpoofCheck::new(id, on)));
    }
    if let Some(on) = s.trust {
        info.push(VfInfo::Trust(VfInfoTrust::new(id, on)));
    }
    let mut m = msg::link_by_name(pf);
    m.attributes
        .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(info)]));
    m
}

fn describe(s: &PfVfSettings) -> String {
    let flag = |b: Option<bool>| b.map_or("kept", |b| if b { "on" } else { "off" });
    format!(
        "vlan {} qos {} mac {} spoofchk {} trust {}",
        s.vlan,
        s.qos,
        s.mac.map_or_else(|| "kept".to_string(), |m| m.to_string()),
        flag(s.spoofchk),
        flag(s.trust)
    )
}

/// Link `index` down, with `alias` (empty: cleared).
fn set_alias_down(index: u32, alias: &str) -> LinkMessage {
    let mut m = set_down(index);
    m.attributes.push(LinkAttribute::IfAlias(alias.to_owned()));
    m
}

/// Sets the alias of link `index` (empty: cleared).
fn set_alias(index: u32, alias: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::IfAlias(alias.to_owned()));
    m
}

fn set_down(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::empty();
    m.header.change_mask = LinkFlags::Up;
    m
}

/// Link `index` down, moved into the netns open as `netns_fd` and named
/// `name` there (the kernel moves, then renames, under one RTNL hold).
fn move_to(index: u32, netns_fd: RawFd, name: &str) -> LinkMessage {
    let mut m = set_down(index);
    m.attributes.push(LinkAttribute::NetNsFd(netns_fd));
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    m
}

fn rename(index: u32, name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    m
}

fn set_mtu_mac(index: u32, mtu: Option<u32>, mac: Option<[u8; 6]>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

    fn bytes(m: LinkMessage) -> Vec<u8> {
        let mut nl = NetlinkMessage::from(RouteNetlinkMessage::SetLink(m));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf
    }

    /// Serializes and parses back, as the kernel would see it.
    fn round_trip(m: LinkMessage) -> LinkMessage {
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes(m))
            .unwrap()
            .payload
        {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::SetLink(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    /// The attributes `(type, value)` of a netlink attribute stream.
    fn nlas(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
            let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
            out.push((kind, b[4..len].to_vec()));
            b = &b[((len + 3) & !3).min(b.len())..];
        }
        out
    }

    fn u32s(v: &[u8]) -> Vec<u32> {
        v.chunks(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    const IFLA_IFNAME: u16 = 3;
    const IFLA_VFINFO_LIST: u16 = 22;
    const IFLA_VF_INFO: u16 = 1;
    const IFLA_VF_MAC: u16 = 1;
    const IFLA_VF_VLAN: u16 = 2;
    const IFLA_VF_SPOOFCHK: u16 = 4;
    const IFLA_VF_TRUST: u16 = 9;

    #[test]
    fn set_vf_bytes_nest_one_vf_info() {
        let s = PfVfSettings {
            mac: Some(Mac([0x02, 1, 2, 3, 4, 5])),
            vlan: 100,
            qos: 5,
            spoofchk: Some(false),
            trust: Some(true),
        };
        let buf = bytes(set_vf("ens1f0", 7, &s));
        // After the 16-byte netlink header and the 16-byte ifinfomsg.
        let top = nlas(&buf[32..]);
        assert_eq!(top[0], (IFLA_IFNAME, b"ens1f0\0".to_vec()));
        let list = &top.iter().find(|(k, _)| *k == IFLA_VFINFO_LIST).unwrap().1;
        let infos = nlas(list);
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].0, IFLA_VF_INFO);
        let vf = nlas(&infos[0].1);
        let get = |k: u16| vf.iter().find(|(t, _)| *t == k).unwrap().1.clone();
        assert_eq!(u32s(&get(IFLA_VF_VLAN)), vec![7, 100, 5]);
        let mac = get(IFLA_VF_MAC);
        assert_eq!(mac.len(), 36, "struct ifla_vf_mac");
        assert_eq!(u32s(&mac[..4]), vec![7]);
        assert_eq!(&mac[4..10], &[0x02, 1, 2, 3, 4, 5]);
        assert!(mac[10..].iter().all(|&b| b == 0));
        assert_eq!(u32s(&get(IFLA_VF_SPOOFCHK)), vec![7, 0]);
        assert_eq!(u32s(&get(IFLA_VF_TRUST)), vec![7, 1]);
    }

    #[test]
    fn set_vf_leaves_out_what_is_kept() {
        let buf = bytes(set_vf("ens1f0", 0, &PfVfSettings::default()));
        let top = nlas(&buf[32..]);
        let list = &top.iter().find(|(k, _)| *k == IFLA_VFINFO_LIST).unwrap().1;
        let vf = nlas(&nlas(list)[0].1);
        assert_eq!(vf.len(), 1, "VLAN only: {vf:?}");
        assert_eq!(vf[0].0, IFLA_VF_VLAN);
        assert_eq!(u32s(&vf[0].1), vec![0, 0, 0]);
    }

    #[test]
    fn settings_read_back_from_the_vf_list() {
        let s = PfVfSettings {
            mac: Some(Mac([0x02, 1, 2, 3, 4, 5])),
            vlan: 4094,
            qos: 7,
            spoofchk: Some(true),
            trust: Some(false),
        };
        let mut m = round_trip(set_vf("ens1f0", 3, &s));
        // A dump lists every VF: add VF 0 with nothing set.
        let other = set_vf(
            "ens1f0",
            0,
            &PfVfSettings {
                mac: Some(Mac([0; 6])),
                spoofchk: Some(false),
                trust: Some(false),
                ..PfVfSettings::default()
            },
        );
        let LinkAttribute::VfInfoList(mut all) = round_trip(other)
            .attributes
            .into_iter()
            .find(|a| matches!(a, LinkAttribute::VfInfoList(_)))
            .unwrap()
        else {
            panic!()
        };
        for a in &mut m.attributes {
            if let LinkAttribute::VfInfoList(l) = a {
                all.append(l);
                *l = std::mem::take(&mut all);
            }
        }
        assert_eq!(vf_settings_of(&m, 3), Some(s));
        assert_eq!(
            vf_settings_of(&m, 0),
            Some(PfVfSettings {
                mac: None,
                spoofchk: Some(false),
                trust: Some(false),
                ..PfVfSettings::default()
            })
        );
        assert_eq!(vf_settings_of(&m, 1), None);
        assert_eq!(vf_settings_of(&msg::link_by_name("lo"), 0), None);
    }

    #[test]
    fn get_link_asks_for_the_vfs() {
        let m = get_link_with_vfs("ens1f0");
        assert!(m
            .attributes
            .contains(&LinkAttribute::ExtMask(vec![LinkExtentMask::Vf])));
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfName("ens1f0".into())));
    }

    #[test]
    fn move_renames_and_downs_in_one_request() {
        let m = round_trip(move_to(12, 9, "eth1"));
        assert_eq!(m.header.index, 12);
        assert!(!m.header.flags.contains(LinkFlags::Up));
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert!(m.attributes.contains(&LinkAttribute::NetNsFd(9)));
        assert!(m.attributes.contains(&LinkAttribute::IfName("eth1".into())));
        let m = round_trip(set_alias_down(12, "spur-vf name=x"));
        assert_eq!(alias_of(&m), Some("spur-vf name=x"));
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert_eq!(alias_of(&round_trip(set_alias(12, ""))), None);
    }

    #[test]
    fn fallback_names_fit() {
        assert_eq!(fallback_name(42), "spurvf42");
        assert_eq!(fallback_name(u32::MAX), "svf4294967295");
        assert!(check_ifname("x", &fallback_name(u32::MAX)).is_ok());
    }

    #[test]
    fn pod_end_spec_validates_the_vf_spec() {
        let spec = VfAttachSpec {
            netdev: "ens1f0v1".into(),
            record: VfRecord {
                name: "ens1f0v1".into(),
                pci: "0000:3b:02.1".parse().unwrap(),
                parent: Some(("ens1f0".into(), 1)),
                pf: PfVfSettings::default(),
            },
            netns: "/var/run/netns/p".into(),
            ifname: "net1".into(),
            mtu: 9000,
            mac: None,
            addresses: vec!["10.0.0.5/24".parse().unwrap()],
            routes: vec![],
            announce: true,
        };
        pod_end_spec(&spec).validate().unwrap();
        let mut bad = spec.clone();
        bad.ifname = "a-name-far-too-long".into();
        assert!(pod_end_spec(&bad).validate().is_err());
    }
}
