//! [`RtNetlinkLinks`]: [`PodLinks`] over netlink.
//!
//! Host-end requests go over one rtnetlink connection opened in the
//! agent's netns when the value is made, its task spawned on the tokio
//! runtime and reused by every call. Pod-end work runs on a dedicated
//! thread per call that enters the Pod netns (see [`super::netns`]) and
//! talks to the kernel over blocking sockets opened there.
//!
//! `create_veth`, step by step:
//! 1. validate the spec; open the netns file (missing or not a netns:
//!    fail, nothing created);
//! 2. start the Pod-side thread: it enters the netns, opens its rtnetlink
//!    socket (and a generic netlink one, with the ethtool family resolved,
//!    if TX checksum offload is to go off) and waits for the go, so that
//!    its start-up overlaps step 3;
//! 3. one `RTM_NEWLINK` (create, exclusive) makes the pair: the host end
//!    up with the MTU, the Pod end down inside the Pod netns with its name,
//!    MTU and MAC. `EEXIST` is told apart by looking the host name up. On
//!    failure the thread is released and ends without touching anything;
//! 4. concurrently: the host end's ifindex is read, and the thread looks
//!    the Pod end up, writes `arp_notify`/`ndisc_notify` (if announcing)
//!    and `disable_ipv6=0` (if it gets IPv6), adds the addresses, turns TX
//!    checksum offload off (ethtool netlink), brings it up (the kernel then
//!    announces its addresses: the host end is already up, so the frames
//!    leave) and adds the routes;
//! 5. on any failure after 3 the host end is deleted, which deletes the
//!    pair, and the first error is returned.
//!
//! All of it runs as a task of its own, so that dropping the caller's
//! future (a timeout on ADD) does not stop it halfway: when the caller is
//! gone by the time the pair is complete, the pair is deleted.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::constants::{NETLINK_GENERIC, NETLINK_ROUTE};
use netlink_sys::AsyncSocket;
use nix::errno::Errno;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::error::{NetdevError, Netns};
use super::msg::{self, link_facts};
use super::sock::{classify, NlError, Step, SyncSocket};
use super::{
    check_ifname, ethtool, netns, CreatedVeth, HostLinkState, PodLinkState, PodLinks, VethSpec,
};

/// The create-time operation on the Pod-side thread.
const OP_CONFIGURE: &str = "configure the Pod end";

/// [`PodLinks`] over netlink (see the module doc).
#[derive(Clone, Debug)]
pub struct RtNetlinkLinks {
    handle: rtnetlink::Handle,
}

impl RtNetlinkLinks {
    /// Opens the rtnetlink connection in the calling thread's netns (the
    /// agent's) and spawns its task on the current tokio runtime. Fails
    /// when the socket cannot be opened. (Async only to be sure of running
    /// inside a runtime; it does not wait on anything.)
    pub async fn new() -> Result<RtNetlinkLinks, NetdevError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| NetdevError::NoRuntime {
            op: "RtNetlinkLinks::new",
        })?;
        let _enter = rt.enter();
        let (mut conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetdevError::Socket {
                op: "rtnetlink connection".into(),
                netns: Netns::Agent,
                errno: super::error::io_errno(&e),
            })?;
        // Best effort: only the error texts depend on them.
        let _ = conn.socket_mut().socket_mut().set_ext_ack(true);
        let _ = conn.socket_mut().socket_mut().set_cap_ack(true);
        rt.spawn(conn);
        Ok(RtNetlinkLinks { handle })
    }

    /// One request on the agent's connection: the data replies, or the
    /// kernel's error.
    pub(crate) async fn host_request(
        &self,
        payload: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let mut req = NetlinkMessage::from(payload);
        req.header.flags = flags | netlink_packet_core::NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut answers = handle.request(req).map_err(|_| NlError::Closed)?;
        let mut replies = Vec::new();
        while let Some(m) = answers.next().await {
            match classify(m)? {
                Step::Inner(r) => replies.push(r),
                Step::Ack | Step::Done => break,
                Step::Skip => {}
            }
        }
        Ok(replies)
    }

    async fn get_host(&self, host_name: &str) -> Result<Option<HostLinkState>, NetdevError> {
        check_ifname("host_name", host_name)?;
        let req = RouteNetlinkMessage::GetLink(msg::link_by_name(host_name));
        match self.host_request(req, NLM_F_ACK).await {
            Ok(replies) => {
                let link = replies.iter().find_map(|r| match r {
                    RouteNetlinkMessage::NewLink(l) => Some(link_facts(l)),
                    _ => None,
                });
                match link {
                    Some(f) => Ok(Some(HostLinkState {
                        index: f.index,
                        up: f.up,
                        mtu: f.mtu,
                    })),
                    None => Err(NetdevError::Protocol {
                        op: format!("get link {host_name}"),
                        netns: Netns::Agent,
                        detail: "no link in the answer".into(),
                    }),
                }
            }
            Err(e) if e.kernel_errno() == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(agent_err("get link", host_name, e)),
        }
    }

    async fn delete_host(&self, host_name: &str) -> Result<bool, NetdevError> {
        check_ifname("host_name", host_name)?;
        let req = RouteNetlinkMessage::DelLink(msg::link_by_name(host_name));
        match self.host_request(req, NLM_F_ACK).await {
            Ok(_) => Ok(true),
            Err(e) if e.kernel_errno() == Some(Errno::ENODEV) => Ok(false),
            Err(e) => Err(agent_err("delete link", host_name, e)),
        }
    }

    async fn create(&self, spec: &VethSpec) -> Result<CreatedVeth, NetdevError> {
        let started = Instant::now();
        spec.validate()?;
        let ns = netns::open(&spec.netns)?;
        let thread_ns = ns.try_clone().map_err(|e| NetdevError::Netns {
            op: "open",
            netns: spec.netns.clone(),
            errno: super::error::io_errno(&e),
        })?;
        // The Pod-side thread starts now: it enters the netns and opens its
        // sockets while the pair is being created, then waits for the go
        // (a dropped sender, when creating fails, ends it).
        let (go, gate) = tokio::sync::oneshot::channel::<()>();
        let pod_spec = spec.clone();
        let pod_work = netns::spawn_in(&spec.netns, thread_ns, OP_CONFIGURE, move || {
            let socks = PodSockets::open(&pod_spec)?;
            gate.blocking_recv().map_err(|_| NetdevError::Worker {
                op: OP_CONFIGURE,
                netns: pod_spec.netns.clone(),
                detail: "abandoned: the pair was not created".into(),
            })?;
            configure_pod_end(&pod_spec, socks)
        })?;
        let req = RouteNetlinkMessage::NewLink(msg::new_veth(spec, ns.as_raw_fd()));
        match self
            .host_request(req, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .await
        {
            Ok(_) => {}
            Err(e) if e.kernel_errno() == Some(Errno::EEXIST) => {
                return Err(if self.get_host(&spec.host_name).await?.is_some() {
                    NetdevError::HostLinkExists {
                        host_name: spec.host_name.clone(),
                    }
                } else {
                    NetdevError::PodLinkExists {
                        netns: spec.netns.clone(),
                        ifname: spec.ifname.clone(),
                    }
                });
            }
            Err(e) => {
                return Err(agent_err(
                    &format!(
                        "create veth pair (peer {} in netns {})",
                        spec.ifname,
                        spec.netns.display()
                    ),
                    &spec.host_name,
                    e,
                ))
            }
        }
        drop(ns);
        // The thread may be gone already (it failed to prepare): its
        // error comes out of `pod_work`.
        let _ = go.send(());
        let (host, pod) = tokio::join!(self.get_host(&spec.host_name), pod_work);
        let result = match (host, pod) {
            (Ok(Some(host)), Ok(pod_index)) => {
                debug!(
                    host = %spec.host_name,
                    netns = %spec.netns.display(),
                    ifname = %spec.ifname,
                    host_index = host.index,
                    pod_index,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "created Pod veth"
                );
                Ok(CreatedVeth {
                    host_index: host.index,
                    mac: spec.mac,
                })
            }
            (Ok(None), Ok(_)) => Err(NetdevError::Protocol {
                op: format!("get link {}", spec.host_name),
                netns: Netns::Agent,
                detail: "the host end vanished right after it was created".into(),
            }),
            (_, Err(e)) | (Err(e), _) => Err(e),
        };
        match result {
            Ok(created) => Ok(created),
            Err(e) => {
                if let Err(del) = self.delete_host(&spec.host_name).await {
                    warn!(host = %spec.host_name, error = %del,
                        "could not delete the half-configured veth pair after: {e}");
                }
                Err(e)
            }
        }
    }

    /// Deletes the pair of a `create_veth` whose caller went away.
    async fn roll_back_abandoned(&self, host_name: &str) {
        match self.delete_host(host_name).await {
            Ok(_) => debug!(host = %host_name, "deleted the veth pair of an abandoned create_veth"),
            Err(e) => warn!(host = %host_name, error = %e,
                "could not delete the veth pair of an abandoned create_veth"),
        }
    }

    async fn delete_pod(&self, netns_path: &Path, ifname: &str) -> Result<bool, NetdevError> {
        check_ifname("ifname", ifname)?;
        let ns = match netns::open(netns_path) {
            Ok(ns) => ns,
            Err(NetdevError::NetnsNotFound { .. } | NetdevError::NotANetns { .. }) => {
                debug!(netns = %netns_path.display(), ifname, "netns gone: nothing to delete");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let path = netns_path.to_owned();
        let name = ifname.to_owned();
        let r = netns::run_in(netns_path, ns, "delete the Pod end", move || {
            let mut rt = route_socket(&path)?;
            let req = RouteNetlinkMessage::DelLink(msg::link_by_name(&name));
            match rt.request(req, NLM_F_ACK) {
                Ok(_) => Ok(true),
                Err(e) if e.kernel_errno() == Some(Errno::ENODEV) => Ok(false),
                Err(e) => Err(pod_err("delete link", &path, &name, e)),
            }
        })
        .await;
        match r {
            Err(NetdevError::NotANetns { .. }) => Ok(false),
            other => other,
        }
    }

    async fn inspect_pod(
        &self,
        netns_path: &Path,
        ifname: &str,
    ) -> Result<Option<PodLinkState>, NetdevError> {
        check_ifname("ifname", ifname)?;
        let ns = netns::open(netns_path)?;
        let path = netns_path.to_owned();
        let name = ifname.to_owned();
        netns::run_in(netns_path, ns, "inspect the Pod end", move || {
            let mut rt = route_socket(&path)?;
            let Some(facts) = get_link(&mut rt, &path, &name)? else {
                return Ok(None);
            };
            let addrs = dump_addresses(&mut rt, &path, &name)?;
            let routes = rt
                .request(
                    RouteNetlinkMessage::GetRoute(msg::dump_routes()),
                    NLM_F_DUMP,
                )
                .map_err(|e| pod_err("list routes", &path, &name, e))?;
            let routes: Vec<_> = routes
                .into_iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewRoute(r) => Some(r),
                    _ => None,
                })
                .collect();
            Ok(Some(PodLinkState {
                index: facts.index,
                mac: facts.mac,
                mtu: facts.mtu,
                up: facts.up,
                addresses: msg::addresses_of(&addrs, facts.index),
                is_veth: facts.is_veth,
                peer_index: facts.link.filter(|_| facts.is_veth),
                routes: msg::routes_of(&routes, facts.index),
            }))
        })
        .await
    }
}

impl PodLinks for RtNetlinkLinks {
    fn create_veth<'a>(
        &'a self,
        spec: &'a VethSpec,
    ) -> BoxFuture<'a, Result<CreatedVeth, NetdevError>> {
        Box::pin(async move {
            let rt = tokio::runtime::Handle::try_current()
                .map_err(|_| NetdevError::NoRuntime { op: "create_veth" })?;
            let (tx, rx) = oneshot::channel();
            let links = self.clone();
            let task_spec = spec.clone();
            rt.spawn(async move {
                let result = links.create(&task_spec).await;
                if let Err(Ok(_)) = tx.send(result) {
                    links.roll_back_abandoned(&task_spec.host_name).await;
                }
            });
            Pending {
                rx: Some(rx),
                links: self.clone(),
                host_name: spec.host_name.clone(),
            }
            .wait()
            .await
        })
    }

    fn delete_host_link<'a>(
        &'a self,
        host_name: &'a str,
    ) -> BoxFuture<'a, Result<bool, NetdevError>> {
        Box::pin(self.delete_host(host_name))
    }

    fn delete_pod_link<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<bool, NetdevError>> {
        Box::pin(self.delete_pod(netns, ifname))
    }

    fn inspect_pod_link<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodLinkState>, NetdevError>> {
        Box::pin(self.inspect_pod(netns, ifname))
    }

    fn host_link<'a>(
        &'a self,
        host_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<HostLinkState>, NetdevError>> {
        Box::pin(self.get_host(host_name))
    }

    fn host_addresses<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<IpNet>>, NetdevError>> {
        Box::pin(async move {
            let Some(link) = self.get_host(name).await? else {
                return Ok(None);
            };
            let replies = self
                .host_request(
                    RouteNetlinkMessage::GetAddress(msg::dump_addresses()),
                    NLM_F_DUMP,
                )
                .await
                .map_err(|e| agent_err("list addresses", name, e))?;
            let addrs: Vec<_> = replies
                .into_iter()
                .filter_map(|m| match m {
                    RouteNetlinkMessage::NewAddress(a) => Some(a),
                    _ => None,
                })
                .collect();
            Ok(Some(msg::addresses_of(&addrs, link.index)))
        })
    }
}

/// The caller's side of a `create_veth` running as its own task. The task
/// is never cancelled with the caller: if the caller goes away, whichever
/// side sees that last deletes a pair that was made (the task when its
/// answer cannot be delivered, this guard when the answer arrived but was
/// not taken).
struct Pending {
    rx: Option<oneshot::Receiver<Result<CreatedVeth, NetdevError>>>,
    links: RtNetlinkLinks,
    host_name: String,
}

impl Pending {
    async fn wait(mut self) -> Result<CreatedVeth, NetdevError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(closed_task());
        };
        let r = rx.await.map_err(|_| closed_task());
        self.rx = None;
        r?
    }
}

fn closed_task() -> NetdevError {
    NetdevError::ConnectionClosed {
        op: "create_veth (its task ended without an answer: runtime shutting down?)".into(),
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        if let Ok(Ok(_)) = rx.try_recv() {
            let links = self.links.clone();
            let host_name = std::mem::take(&mut self.host_name);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { links.roll_back_abandoned(&host_name).await });
            } else {
                warn!(host = %host_name, "create_veth abandoned outside a runtime: the veth pair is left behind");
            }
        }
    }
}

pub(crate) fn agent_err(op: &str, ifname: &str, e: NlError) -> NetdevError {
    nl_err(op, Netns::Agent, ifname, e)
}

/// Every address of the netns at `path` (a dump on `rt`); `name` only
/// names the interface asked about in an error.
pub(crate) fn dump_addresses(
    rt: &mut SyncSocket,
    path: &Path,
    name: &str,
) -> Result<Vec<AddressMessage>, NetdevError> {
    let replies = rt
        .request(
            RouteNetlinkMessage::GetAddress(msg::dump_addresses()),
            NLM_F_DUMP,
        )
        .map_err(|e| pod_err("list addresses", path, name, e))?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => Some(a),
            _ => None,
        })
        .collect())
}

pub(crate) fn pod_err(op: &str, netns: &Path, ifname: &str, e: NlError) -> NetdevError {
    nl_err(op, Netns::pod(netns), ifname, e)
}

fn nl_err(op: &str, netns: Netns, ifname: &str, e: NlError) -> NetdevError {
    match e {
        NlError::Kernel { errno, message } => NetdevError::Kernel {
            op: op.to_owned(),
            netns,
            ifname: ifname.to_owned(),
            errno,
            message,
        },
        NlError::Io(errno) => NetdevError::Socket {
            op: op.to_owned(),
            netns,
            errno,
        },
        NlError::Decode(detail) => NetdevError::Protocol {
            op: op.to_owned(),
            netns,
            detail,
        },
        NlError::Closed => NetdevError::ConnectionClosed { op: op.to_owned() },
    }
}

pub(crate) fn route_socket(netns: &Path) -> Result<SyncSocket, NetdevError> {
    SyncSocket::open(NETLINK_ROUTE).map_err(|errno| NetdevError::Socket {
        op: "open rtnetlink socket".into(),
        netns: Netns::pod(netns),
        errno,
    })
}

/// Looks a link up by name in the socket's netns: `None` when absent.
pub(crate) fn get_link(
    rt: &mut SyncSocket,
    netns: &Path,
    ifname: &str,
) -> Result<Option<msg::LinkFacts>, NetdevError> {
    let req = RouteNetlinkMessage::GetLink(msg::link_by_name(ifname));
    match rt.request(req, NLM_F_ACK) {
        Ok(replies) => replies
            .iter()
            .find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_facts(l)),
                _ => None,
            })
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

/// What the create-time thread needs open inside the Pod netns before
/// the pair exists.
pub(crate) struct PodSockets {
    route: SyncSocket,
    /// Generic netlink, with the ethtool family resolved: only when TX
    /// checksum offload is to be turned off.
    genl: Option<SyncSocket>,
}

impl PodSockets {
    pub(crate) fn open(spec: &VethSpec) -> Result<PodSockets, NetdevError> {
        let netns = spec.netns.as_path();
        let route = route_socket(netns)?;
        let genl = if spec.tx_checksum_off {
            let mut genl =
                SyncSocket::open(NETLINK_GENERIC).map_err(|errno| NetdevError::Socket {
                    op: "open generic netlink socket".into(),
                    netns: Netns::pod(netns),
                    errno,
                })?;
            ethtool::family_id(&mut genl).map_err(|e| {
                pod_err(
                    "resolve the ethtool generic netlink family",
                    netns,
                    &spec.ifname,
                    e,
                )
            })?;
            Some(genl)
        } else {
            None
        };
        Ok(PodSockets { route, genl })
    }
}

/// Step 3 of `create_veth`, on the thread inside the Pod netns: returns
/// the Pod end's ifindex.
pub(crate) fn configure_pod_end(spec: &VethSpec, socks: PodSockets) -> Result<u32, NetdevError> {
    let netns = spec.netns.as_path();
    let ifname = spec.ifname.as_str();
    let PodSockets {
        route: mut rt,
        genl,
    } = socks;
    let index = get_link(&mut rt, netns, ifname)?
        .ok_or_else(|| NetdevError::Protocol {
            op: format!("get link {ifname}"),
            netns: Netns::pod(netns),
            detail: "the Pod end is not in the netns right after its creation".into(),
        })?
        .index;

    let has_v6 = spec.addresses.iter().any(|a| matches!(a, IpNet::V6(_)));
    // A Pod on several VLANs must not answer ARP on one VLAN for its
    // address on another (Linux's default answers for any local address on
    // any interface): the interface answers only for its own addresses and
    // asks with a source address of its own subnet.
    netns::write_sysctl(netns, netns::sysctl_path("ipv4", ifname, "arp_ignore"), "1")?;
    netns::write_sysctl(
        netns,
        netns::sysctl_path("ipv4", ifname, "arp_announce"),
        "2",
    )?;
    if spec.announce {
        netns::write_sysctl(netns, netns::sysctl_path("ipv4", ifname, "arp_notify"), "1")?;
    }
    if has_v6 {
        netns::write_sysctl(
            netns,
            netns::sysctl_path("ipv6", ifname, "disable_ipv6"),
            "0",
        )?;
        if spec.announce {
            netns::write_sysctl(
                netns,
                netns::sysctl_path("ipv6", ifname, "ndisc_notify"),
                "1",
            )?;
        }
    }
    for a in &spec.addresses {
        let req = RouteNetlinkMessage::NewAddress(msg::new_address(index, a));
        rt.request(req, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| pod_err(&format!("add address {a}"), netns, ifname, e))?;
    }
    if let Some(mut genl) = genl {
        ethtool::set_tx_checksum_off(&mut genl, ifname).map_err(|e| {
            pod_err(
                "turn TX checksum offload off (ethtool FEATURES_SET)",
                netns,
                ifname,
                e,
            )
        })?;
    }
    rt.request(RouteNetlinkMessage::SetLink(msg::set_up(index)), NLM_F_ACK)
        .map_err(|e| pod_err("set link up", netns, ifname, e))?;
    for r in &spec.routes {
        let req = RouteNetlinkMessage::NewRoute(msg::new_route(index, r));
        rt.request(req, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| {
                let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                pod_err(&format!("add route {}{via}", r.dst), netns, ifname, e)
            })?;
    }
    Ok(index)
}
