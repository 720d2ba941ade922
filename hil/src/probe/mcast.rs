//! The multicast probe: listener threads inside the Pods' namespaces
//! (members join the group, non-members capture frames at L2), the wait
//! until snooping switches learned the members, and the sender.
//!
//! What does not live here: choosing groups, senders and listeners (the
//! run reads them from `expect.yaml`) and judging the counts.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::net::if_::if_nametoindex;
use nix::sys::socket::{
    bind, recvfrom, setsockopt, socket, sockopt, AddressFamily, LinkAddr, SockFlag, SockProtocol,
    SockType, SockaddrStorage,
};
use nix::sys::time::{TimeVal, TimeValLike};
use spur_testbed::{InterfaceRef, MulticastReport};

use super::parse::{self, MdbEntry};
use super::sys::{self, enter_netns};
use super::{Endpoint, MulticastProbe, ProbeError, SnoopingSwitch, SwitchKind};

/// How often listeners look at the stop time while no packet arrives.
const RECV_TICK: Duration = Duration::from_millis(50);
/// How long listeners may take to open their sockets.
const SETUP_DEADLINE: Duration = Duration::from_secs(10);
/// How often the switches' learned groups are read while waiting.
const LEARN_POLL: Duration = Duration::from_millis(100);
/// `PACKET_OUTGOING`: a frame this host sent (not received).
const PACKET_OUTGOING: u8 = 4;

/// When listeners stop counting (unset: not yet known).
#[derive(Default)]
struct StopAt(Mutex<Option<Instant>>);

impl StopAt {
    fn set(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    fn passed(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| Instant::now() >= at)
    }
}

/// A message from a listener thread.
enum Event {
    /// Its socket is open (and, for members, joined).
    Ready,
    /// A member received every datagram.
    Complete,
    /// The listener failed (its thread returns the error).
    Failed,
}

struct Listener {
    id: InterfaceRef,
    handle: JoinHandle<Result<u64, ProbeError>>,
}

fn sock_err(ep: &Endpoint, op: &str, e: impl std::fmt::Display) -> ProbeError {
    ProbeError::Socket {
        endpoint: format!("{} ({} in netns {})", ep.id, ep.ifname, ep.netns),
        op: op.to_string(),
        reason: e.to_string(),
    }
}

fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("spur-hil-mcast-{:016x}", h.finish())
}

/// Stops and joins the listeners started so far, and returns `error`.
fn abandon(stop: &StopAt, listeners: Vec<Listener>, error: ProbeError) -> ProbeError {
    stop.set(Instant::now());
    for l in listeners {
        let _ = l.handle.join();
    }
    error
}

/// See [`super::multicast`].
pub fn run(
    group: IpAddr,
    sender: &Endpoint,
    members: &[Endpoint],
    non_members: &[Endpoint],
    probe: &MulticastProbe,
) -> Result<MulticastReport, ProbeError> {
    if !group.is_multicast() {
        return Err(ProbeError::Endpoint {
            endpoint: sender.id.to_string(),
            reason: format!("{group} is not a multicast group address"),
        });
    }
    let token = Arc::new(random_token());
    let stop = Arc::new(StopAt::default());
    let (tx, rx) = mpsc::channel::<(usize, Event)>();
    let mut listeners = Vec::new();
    for (i, ep) in members.iter().enumerate() {
        let (ep2, token, stop2, tx) = (ep.clone(), token.clone(), stop.clone(), tx.clone());
        let count = probe.count;
        let port = probe.port;
        let handle = std::thread::Builder::new()
            .name(format!("mcast-member-{i}"))
            .spawn(move || {
                let r = member(&ep2, group, port, &token, count, &stop2, i, &tx);
                if r.is_err() {
                    let _ = tx.send((i, Event::Failed));
                }
                r
            })
            .map_err(|e| sock_err(ep, "start a listener thread", e));
        let handle = match handle {
            Ok(h) => h,
            Err(e) => return Err(abandon(&stop, listeners, e)),
        };
        listeners.push(Listener {
            id: ep.id.clone(),
            handle,
        });
    }
    for (j, ep) in non_members.iter().enumerate() {
        let i = members.len() + j;
        let (ep2, token, stop2, tx) = (ep.clone(), token.clone(), stop.clone(), tx.clone());
        let port = probe.port;
        let handle = std::thread::Builder::new()
            .name(format!("mcast-capture-{j}"))
            .spawn(move || {
                let r = non_member(&ep2, group, port, &token, &stop2, i, &tx);
                if r.is_err() {
                    let _ = tx.send((i, Event::Failed));
                }
                r
            })
            .map_err(|e| sock_err(ep, "start a capture thread", e));
        let handle = match handle {
            Ok(h) => h,
            Err(e) => return Err(abandon(&stop, listeners, e)),
        };
        listeners.push(Listener {
            id: ep.id.clone(),
            handle,
        });
    }
    drop(tx);

    // Every listener must be listening before anything is sent; a
    // listener that failed ends its thread (and is reported below).
    let result = wait_ready_then_send(
        group,
        sender,
        members,
        probe,
        &token,
        &rx,
        listeners.len(),
        &stop,
    );
    if result.is_err() {
        stop.set(Instant::now());
    }
    let mut received = BTreeMap::new();
    // A listener's own error says more than "a listener failed".
    let mut first_error = None;
    for l in listeners {
        match l.handle.join() {
            Ok(Ok(n)) => {
                received.insert(l.id, n);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    if let Some(e) = first_error.or(result.err()) {
        return Err(e);
    }
    Ok(MulticastReport {
        group,
        sender: sender.id.clone(),
        received,
    })
}

#[allow(clippy::too_many_arguments)]
fn wait_ready_then_send(
    group: IpAddr,
    sender: &Endpoint,
    members: &[Endpoint],
    probe: &MulticastProbe,
    token: &str,
    rx: &mpsc::Receiver<(usize, Event)>,
    listeners: usize,
    stop: &StopAt,
) -> Result<(), ProbeError> {
    let setup_end = Instant::now() + SETUP_DEADLINE;
    let mut ready = 0;
    while ready < listeners {
        let left = setup_end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, Event::Ready)) => ready += 1,
            Ok((_, Event::Complete)) => {}
            // Its error is collected when the thread is joined.
            Ok((_, Event::Failed)) | Err(RecvTimeoutError::Disconnected) => {
                return Err(ProbeError::Endpoint {
                    endpoint: sender.id.to_string(),
                    reason: "a multicast listener failed before it was ready".to_string(),
                })
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(ProbeError::Endpoint {
                    endpoint: sender.id.to_string(),
                    reason: format!(
                        "only {ready} of {listeners} multicast listeners were ready within {SETUP_DEADLINE:?}"
                    ),
                })
            }
        }
    }
    wait_learned(
        group,
        sender,
        members,
        &probe.switches,
        probe.learn_deadline,
    )?;
    send(group, sender, probe.port, token, probe.count)?;
    // Members stop when they have everything or at the deadline.
    let member_end = Instant::now() + probe.member_deadline;
    let mut complete = 0;
    while complete < members.len() {
        let left = member_end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, Event::Complete)) => complete += 1,
            Ok((_, Event::Ready | Event::Failed)) => {}
            Err(_) => break,
        }
    }
    // Non-members (and members, for duplicates) count a little longer.
    stop.set(Instant::now() + probe.non_member_window);
    Ok(())
}

fn udp_socket(
    ep: &Endpoint,
    family: AddressFamily,
    bind_to: SocketAddr,
) -> Result<UdpSocket, ProbeError> {
    let fd: OwnedFd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| sock_err(ep, "open a UDP socket", e))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| sock_err(ep, "set SO_REUSEADDR", e))?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(&ep.ifname))
        .map_err(|e| sock_err(ep, "bind the socket to its interface (SO_BINDTODEVICE)", e))?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(bind_to))
        .map_err(|e| sock_err(ep, &format!("bind to {bind_to}"), e))?;
    Ok(UdpSocket::from(fd))
}

fn family_of(group: IpAddr) -> AddressFamily {
    if group.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

#[allow(clippy::too_many_arguments)]
fn member(
    ep: &Endpoint,
    group: IpAddr,
    port: u16,
    token: &str,
    count: u32,
    stop: &StopAt,
    index: usize,
    tx: &mpsc::Sender<(usize, Event)>,
) -> Result<u64, ProbeError> {
    enter_netns(&ep.netns)?;
    let any: IpAddr = match group {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = udp_socket(ep, family_of(group), SocketAddr::new(any, port))?;
    match group {
        IpAddr::V4(g) => {
            let Some(IpAddr::V4(local)) = ep.addr_like(group) else {
                return Err(ProbeError::Endpoint {
                    endpoint: ep.id.to_string(),
                    reason: format!("has no IPv4 address to join {group} with"),
                });
            };
            sock.join_multicast_v4(&g, &local)
                .map_err(|e| sock_err(ep, &format!("join {group}"), e))?;
        }
        IpAddr::V6(g) => {
            let ifindex = if_nametoindex(ep.ifname.as_str())
                .map_err(|e| sock_err(ep, "find the interface index", e))?;
            sock.join_multicast_v6(&g, ifindex)
                .map_err(|e| sock_err(ep, &format!("join {group}"), e))?;
        }
    }
    sock.set_read_timeout(Some(RECV_TICK))
        .map_err(|e| sock_err(ep, "set a receive timeout", e))?;
    let _ = tx.send((index, Event::Ready));
    let mut got = 0u64;
    let mut buf = [0u8; 2048];
    let mut announced = false;
    while !stop.passed() {
        match sock.recv(&mut buf) {
            Ok(n) => {
                if buf[..n].starts_with(token.as_bytes()) {
                    got += 1;
                    if got >= u64::from(count) && !announced {
                        announced = true;
                        let _ = tx.send((index, Event::Complete));
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(sock_err(ep, "receive", e)),
        }
    }
    Ok(got)
}

fn non_member(
    ep: &Endpoint,
    group: IpAddr,
    port: u16,
    token: &str,
    stop: &StopAt,
    index: usize,
    tx: &mpsc::Sender<(usize, Event)>,
) -> Result<u64, ProbeError> {
    enter_netns(&ep.netns)?;
    let ifindex = if_nametoindex(ep.ifname.as_str())
        .map_err(|e| sock_err(ep, "find the interface index", e))?;
    let fd: OwnedFd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )
    .map_err(|e| sock_err(ep, "open an AF_PACKET socket", e))?;
    let tick = TimeVal::milliseconds(i64::try_from(RECV_TICK.as_millis()).unwrap_or(50));
    setsockopt(&fd, sockopt::ReceiveTimeout, &tick)
        .map_err(|e| sock_err(ep, "set a receive timeout", e))?;
    let _ = tx.send((index, Event::Ready));
    let mut got = 0u64;
    let mut buf = vec![0u8; 65536];
    while !stop.passed() {
        match recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
            Ok((n, Some(addr))) => {
                let ours = usize::try_from(ifindex).is_ok_and(|i| addr.ifindex() == i);
                if ours
                    && addr.pkttype() != PACKET_OUTGOING
                    && parse::frame_matches(&buf[..n], group, port, token.as_bytes())
                {
                    got += 1;
                }
            }
            Ok((_, None)) => {}
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(sock_err(ep, "capture", e)),
        }
    }
    Ok(got)
}

fn send(
    group: IpAddr,
    sender: &Endpoint,
    port: u16,
    token: &str,
    count: u32,
) -> Result<(), ProbeError> {
    let ep = sender.clone();
    let token = token.to_string();
    sys::in_netns(&sender.netns, move || {
        let src: IpAddr = match (group, ep.addr_like(group)) {
            (_, Some(a)) => a,
            (IpAddr::V6(_), None) => Ipv6Addr::UNSPECIFIED.into(),
            (IpAddr::V4(_), None) => {
                return Err(ProbeError::Endpoint {
                    endpoint: ep.id.to_string(),
                    reason: format!("has no IPv4 address to send to {group} from"),
                })
            }
        };
        let sock = udp_socket(&ep, family_of(group), SocketAddr::new(src, 0))?;
        let dest = match group {
            IpAddr::V4(g) => {
                sock.set_multicast_ttl_v4(1)
                    .map_err(|e| sock_err(&ep, "set the multicast TTL", e))?;
                sock.set_multicast_loop_v4(false)
                    .map_err(|e| sock_err(&ep, "turn multicast loop off", e))?;
                SocketAddr::new(g.into(), port)
            }
            IpAddr::V6(g) => {
                setsockopt(&sock, sockopt::Ipv6MulticastHops, &1)
                    .map_err(|e| sock_err(&ep, "set the multicast hop limit", e))?;
                sock.set_multicast_loop_v6(false)
                    .map_err(|e| sock_err(&ep, "turn multicast loop off", e))?;
                let ifindex = if_nametoindex(ep.ifname.as_str())
                    .map_err(|e| sock_err(&ep, "find the interface index", e))?;
                SocketAddr::V6(SocketAddrV6::new(g, port, 0, ifindex))
            }
        };
        for seq in 0..count {
            let payload = format!("{token} {seq}");
            sock.send_to(payload.as_bytes(), dest)
                .map_err(|e| sock_err(&ep, &format!("send to {dest}"), e))?;
        }
        tracing::debug!(sender = %ep.id, %group, count, "multicast sent");
        Ok(())
    })
}

/// One switch as the learn-wait sees it.
struct SwitchView<'a> {
    sw: &'a SnoopingSwitch,
    /// OVS: port name -> OpenFlow port number (what mdb/show prints).
    ofports: BTreeMap<String, i64>,
    /// OVS: the Spur access ports on this bridge.
    access: Vec<super::AccessPort>,
    /// Linux bridge: its ports.
    links: Vec<parse::Link>,
}

/// What must be learned before sending: one of `ports` (as the switch's
/// mdb names them) shows the group.
struct Check {
    switch: usize,
    what: String,
    ports: Vec<String>,
}

impl<'a> SwitchView<'a> {
    /// The view of `sw`, or `None` when its snooping is off.
    fn open(sw: &'a SnoopingSwitch) -> Result<Option<SwitchView<'a>>, ProbeError> {
        let mut view = SwitchView {
            sw,
            ofports: BTreeMap::new(),
            access: Vec::new(),
            links: Vec::new(),
        };
        match &sw.kind {
            SwitchKind::Ovs { ovsdb_socket, .. } => {
                match view.mdb() {
                    Ok(_) => {}
                    Err(ProbeError::Command { stderr, .. }) if stderr.contains("disabled") => {
                        return Ok(None)
                    }
                    Err(e) => return Err(e),
                }
                let db = format!("--db=unix:{}", ovsdb_socket.display());
                let what = format!(
                    "reading the ports of OVS bridge {} (netns {})",
                    sw.bridge, sw.netns
                );
                let args = [
                    db.as_str(),
                    "--format=json",
                    "--columns=name,ofport",
                    "list",
                    "Interface",
                ];
                let text = sys::run("ovs-vsctl", &args, None, &what)?;
                view.ofports = parse::ovs_ofports(&text).map_err(|reason| ProbeError::Output {
                    what: what.clone(),
                    command: format!("ovs-vsctl {}", args.join(" ")),
                    reason,
                })?;
                let on_bridge: Vec<String> = sys::run(
                    "ovs-vsctl",
                    &[db.as_str(), "list-ports", &sw.bridge],
                    None,
                    &what,
                )?
                .lines()
                .map(str::to_string)
                .collect();
                view.access = super::access_ports(&sw.netns, ovsdb_socket)?
                    .into_iter()
                    .filter(|p| on_bridge.contains(&p.name))
                    .collect();
            }
            SwitchKind::Linux => {
                let what = format!("reading Linux bridge {} (netns {})", sw.bridge, sw.netns);
                let args = [
                    "-n",
                    sw.netns.as_str(),
                    "-j",
                    "-d",
                    "link",
                    "show",
                    "dev",
                    &sw.bridge,
                ];
                let text = sys::run("ip", &args, None, &what)?;
                let snooping =
                    parse::linux_bridge_snooping(&text).map_err(|reason| ProbeError::Output {
                        what: what.clone(),
                        command: format!("ip {}", args.join(" ")),
                        reason,
                    })?;
                if snooping != Some(true) {
                    return Ok(None);
                }
                let args = [
                    "-n",
                    sw.netns.as_str(),
                    "-j",
                    "link",
                    "show",
                    "master",
                    &sw.bridge,
                ];
                let text = sys::run("ip", &args, None, &what)?;
                view.links = parse::ip_links(&text).map_err(|reason| ProbeError::Output {
                    what,
                    command: format!("ip {}", args.join(" ")),
                    reason,
                })?;
            }
        }
        Ok(Some(view))
    }

    /// The groups the switch has learned, per port.
    fn mdb(&self) -> Result<Vec<MdbEntry>, ProbeError> {
        let sw = self.sw;
        let what = format!(
            "reading what bridge {} (netns {}) learned",
            sw.bridge, sw.netns
        );
        match &sw.kind {
            SwitchKind::Ovs { vswitchd_ctl, .. } => {
                let target = format!("--target={}", vswitchd_ctl.display());
                let text = sys::run(
                    "ovs-appctl",
                    &[target.as_str(), "mdb/show", &sw.bridge],
                    Some(&sw.netns),
                    &what,
                )?;
                Ok(parse::ovs_mdb(&text))
            }
            SwitchKind::Linux => {
                let args = [
                    "-n",
                    sw.netns.as_str(),
                    "-j",
                    "mdb",
                    "show",
                    "dev",
                    &sw.bridge,
                ];
                let text = sys::run("bridge", &args, None, &what)?;
                parse::bridge_mdb(&text).map_err(|reason| ProbeError::Output {
                    what,
                    command: format!("bridge {}", args.join(" ")),
                    reason,
                })
            }
        }
    }

    /// The name the switch's mdb gives the port of `ep`, when `ep` is
    /// attached to this switch.
    fn port_of(&self, ep: &Endpoint) -> Result<Option<String>, ProbeError> {
        match &self.sw.kind {
            SwitchKind::Ovs { .. } => Ok(self
                .access
                .iter()
                .find(|p| p.serves(&ep.id))
                .and_then(|p| self.ofports.get(&p.name))
                .map(i64::to_string)),
            SwitchKind::Linux => {
                // The bridge port that is the veth peer of the Pod's
                // interface: each one's link_index is the other's ifindex.
                let what = format!("reading {} in netns {}", ep.ifname, ep.netns);
                let args = [
                    "-n",
                    ep.netns.as_str(),
                    "-j",
                    "link",
                    "show",
                    "dev",
                    &ep.ifname,
                ];
                let text = sys::run("ip", &args, None, &what)?;
                let links = parse::ip_links(&text).map_err(|reason| ProbeError::Output {
                    what,
                    command: format!("ip {}", args.join(" ")),
                    reason,
                })?;
                let Some(own) = links.first() else {
                    return Ok(None);
                };
                // Interface indexes repeat across namespaces: the peer
                // must also live in the switch's namespace.
                let Some(nsid) = own.link_netnsid else {
                    return Ok(None);
                };
                let args = ["-n", ep.netns.as_str(), "-j", "netns", "list-id"];
                let what = format!("reading the namespace ids of netns {}", ep.netns);
                let text = sys::run("ip", &args, None, &what)?;
                let ids = parse::netns_ids(&text).map_err(|reason| ProbeError::Output {
                    what,
                    command: format!("ip {}", args.join(" ")),
                    reason,
                })?;
                if ids.get(&nsid) != Some(&self.sw.netns) {
                    return Ok(None);
                }
                Ok(self
                    .links
                    .iter()
                    .find(|l| {
                        Some(l.ifindex) == own.link_index && l.link_index == Some(own.ifindex)
                    })
                    .map(|l| l.ifname.clone()))
            }
        }
    }

    /// The mdb name of an uplink port.
    fn uplink_key(&self, name: &str) -> Option<String> {
        match &self.sw.kind {
            SwitchKind::Ovs { .. } => self.ofports.get(name).map(i64::to_string),
            SwitchKind::Linux => Some(name.to_string()),
        }
    }
}

/// Waits until every snooping switch learned `group` where the members
/// need it: on each member's own port, and, on the sender's switch, on one
/// uplink when a member is elsewhere. Switches with snooping off are
/// skipped. When the deadline passes the probe goes on (the counts then
/// show what the switches did) and a warning names what was not learned.
fn wait_learned(
    group: IpAddr,
    sender: &Endpoint,
    members: &[Endpoint],
    switches: &[SnoopingSwitch],
    deadline: Duration,
) -> Result<(), ProbeError> {
    let mut views = Vec::new();
    let mut checks = Vec::new();
    for sw in switches {
        let Some(view) = SwitchView::open(sw)? else {
            tracing::debug!(bridge = %sw.bridge, netns = %sw.netns, "snooping off: not waiting");
            continue;
        };
        let si = views.len();
        let mut elsewhere = false;
        for m in members {
            match view.port_of(m)? {
                Some(port) => checks.push(Check {
                    switch: si,
                    what: format!("{} on port {port} of {}", m.id, sw.bridge),
                    ports: vec![port],
                }),
                None => elsewhere = true,
            }
        }
        if elsewhere && !sw.uplinks.is_empty() && view.port_of(sender)?.is_some() {
            checks.push(Check {
                switch: si,
                what: format!("an uplink of {} ({})", sw.bridge, sw.uplinks.join(", ")),
                ports: sw
                    .uplinks
                    .iter()
                    .filter_map(|u| view.uplink_key(u))
                    .collect(),
            });
        }
        views.push(view);
    }
    if checks.is_empty() {
        return Ok(());
    }
    let end = Instant::now() + deadline;
    loop {
        let mut learned: Vec<Vec<String>> = Vec::with_capacity(views.len());
        for v in &views {
            learned.push(
                v.mdb()?
                    .into_iter()
                    .filter(|e| e.group == group)
                    .map(|e| e.port)
                    .collect(),
            );
        }
        let missing: Vec<&Check> = checks
            .iter()
            .filter(|c| !c.ports.iter().any(|p| learned[c.switch].contains(p)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= end {
            let what: Vec<&str> = missing.iter().map(|c| c.what.as_str()).collect();
            tracing::warn!(
                %group,
                not_learned = %what.join("; "),
                "snooping switches did not learn every member within {deadline:?}; sending anyway"
            );
            return Ok(());
        }
        std::thread::sleep(LEARN_POLL);
    }
}
