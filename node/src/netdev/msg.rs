//! The rtnetlink messages Spur sends, built from a [`VethSpec`] and the
//! like, and the facts it reads back out of the kernel's answers. Pure: no
//! sockets here, so every message is unit-tested byte for byte through a
//! serialize/parse round trip.
//!
//! What each request does:
//! - [`new_veth`]: one `RTM_NEWLINK` creating the pair, the host end named,
//!   sized and up in the agent's netns, the peer created directly in the
//!   Pod netns (`IFLA_NET_NS_FD` inside `VETH_INFO_PEER`) with its name,
//!   MTU and MAC, still down.
//! - [`new_address`]: `RTM_NEWADDR`; IPv4 gets its broadcast address
//!   (below /31), IPv6 is `IFA_F_NODAD` so it is usable at once.
//! - [`new_route`]: `RTM_NEWROUTE` in the main table via the interface
//!   (`proto boot`, as `ip route add` does; link scope for an IPv4 route
//!   without gateway).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use ipnet::IpNet;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;

use super::{RouteSpec, VethSpec};

/// Main routing table.
const RT_TABLE_MAIN: u8 = RouteHeader::RT_TABLE_MAIN;

/// The veth pair of `spec`: host end up in the requesting socket's netns,
/// Pod end (down) created inside the netns open as `netns_fd`.
pub(crate) fn new_veth(spec: &VethSpec, netns_fd: RawFd) -> LinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(spec.ifname.clone()),
        LinkAttribute::Mtu(spec.mtu),
        LinkAttribute::Address(spec.mac.to_vec()),
        LinkAttribute::NetNsFd(netns_fd),
    ];
    let mut host = LinkMessage::default();
    host.header.flags = LinkFlags::Up;
    host.header.change_mask = LinkFlags::Up;
    host.attributes = vec![
        LinkAttribute::IfName(spec.host_name.clone()),
        LinkAttribute::Mtu(spec.mtu),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    host
}

/// A link named `name` (for `RTM_GETLINK` and `RTM_DELLINK` by name).
pub(crate) fn link_by_name(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes = vec![LinkAttribute::IfName(name.to_owned())];
    m
}

/// Brings link `index` up (`RTM_SETLINK`).
pub(crate) fn set_up(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Adds `net` (address and prefix length) to link `index`.
pub(crate) fn new_address(index: u32, net: &IpNet) -> AddressMessage {
    let ip = net.addr();
    let mut m = AddressMessage::default();
    m.header.family = family_of(&ip);
    m.header.prefix_len = net.prefix_len();
    m.header.scope = AddressScope::Universe;
    m.header.index = index;
    m.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
    match net {
        IpNet::V4(n) => {
            if n.prefix_len() < 31 {
                m.attributes
                    .push(AddressAttribute::Broadcast(n.broadcast()));
            }
        }
        IpNet::V6(_) => {
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    m
}

/// Adds route `r` via link `index` to the main table.
pub(crate) fn new_route(index: u32, r: &RouteSpec) -> RouteMessage {
    let dst = r.dst.trunc();
    let mut m = RouteMessage::default();
    m.header.address_family = family_of(&dst.addr());
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = match (dst, r.gw) {
        (IpNet::V4(_), None) => RouteScope::Link,
        _ => RouteScope::Universe,
    };
    if dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
    }
    if let Some(gw) = r.gw {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    m
}

/// A dump request of every address (both families).
pub(crate) fn dump_addresses() -> AddressMessage {
    AddressMessage::default()
}

/// A dump request of every route (both families, all tables).
pub(crate) fn dump_routes() -> RouteMessage {
    RouteMessage::default()
}

/// What Spur reads from a link message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LinkFacts {
    /// Interface index.
    pub index: u32,
    /// Its MAC, when it has a 6-byte hardware address.
    pub mac: Option<[u8; 6]>,
    /// MTU (0 if the kernel did not say).
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// `IFLA_INFO_KIND` is `veth`.
    pub is_veth: bool,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's netns).
    pub link: Option<u32>,
}

/// Reads the facts out of a link message.
pub(crate) fn link_facts(m: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts {
        index: m.header.index,
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        is_veth: false,
        link: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Address(b) => {
                f.mac = <[u8; 6]>::try_from(b.as_slice()).ok();
            }
            LinkAttribute::Mtu(mtu) => f.mtu = *mtu,
            LinkAttribute::Link(l) if *l != 0 => f.link = Some(*l),
            LinkAttribute::LinkInfo(infos) => {
                f.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    f
}

/// The addresses (with prefix length) that the dump `msgs` shows on link
/// `index`, in the kernel's order.
pub(crate) fn addresses_of(msgs: &[AddressMessage], index: u32) -> Vec<IpNet> {
    let mut out = Vec::new();
    for m in msgs.iter().filter(|m| m.header.index == index) {
        let mut local = None;
        let mut address = None;
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            if let Ok(net) = IpNet::new(ip, m.header.prefix_len) {
                out.push(net);
            }
        }
    }
    out
}

/// The routes of the main table that leave through link `index` and that
/// someone configured (the kernel's own prefix and link-local routes,
/// `proto kernel`, are left out), in the kernel's order.
pub(crate) fn routes_of(msgs: &[RouteMessage], index: u32) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    for m in msgs {
        let h = &m.header;
        if h.table != RT_TABLE_MAIN
            || h.protocol == RouteProtocol::Kernel
            || h.kind != RouteType::Unicast
        {
            continue;
        }
        let mut dst = None;
        let mut gw = None;
        let mut oif = None;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = route_ip(d),
                RouteAttribute::Gateway(g) => gw = route_ip(g),
                RouteAttribute::Oif(o) => oif = Some(*o),
                _ => {}
            }
        }
        if oif != Some(index) {
            continue;
        }
        let base = match (dst, h.address_family) {
            (Some(ip), _) => ip,
            (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            (None, _) => continue,
        };
        if let Ok(dst) = IpNet::new(base, h.destination_prefix_length) {
            out.push(RouteSpec { dst, gw });
        }
    }
    out
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::RouteNetlinkMessage;

    fn spec() -> VethSpec {
        VethSpec {
            host_name: "veth1234".into(),
            netns: "/var/run/netns/p".into(),
            ifname: "eth1".into(),
            mtu: 1400,
            mac: [0x02, 0, 0, 0, 0, 0x05],
            addresses: vec!["10.1.0.5/24".parse().unwrap()],
            routes: vec![],
            tx_checksum_off: true,
            announce: true,
        }
    }

    /// Serializes and parses back, as the kernel would see it.
    fn round_trip(m: RouteNetlinkMessage) -> RouteNetlinkMessage {
        let mut nl = NetlinkMessage::from(m);
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf)
            .unwrap()
            .payload
        {
            NetlinkPayload::InnerMessage(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn veth_peer_is_created_in_the_pod_netns() {
        let m = new_veth(&spec(), 42);
        let RouteNetlinkMessage::NewLink(m) = round_trip(RouteNetlinkMessage::NewLink(m)) else {
            panic!()
        };
        assert!(m.header.flags.contains(LinkFlags::Up));
        assert!(m.header.change_mask.contains(LinkFlags::Up));
        assert!(m
            .attributes
            .contains(&LinkAttribute::IfName("veth1234".into())));
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1400)));
        let infos = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(i) => Some(i.clone()),
                _ => None,
            })
            .unwrap();
        assert!(infos.contains(&LinkInfo::Kind(InfoKind::Veth)));
        let peer = infos
            .iter()
            .find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            !peer.header.flags.contains(LinkFlags::Up),
            "Pod end stays down"
        );
        assert!(peer
            .attributes
            .contains(&LinkAttribute::IfName("eth1".into())));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1400)));
        assert!(peer
            .attributes
            .contains(&LinkAttribute::Address(vec![2, 0, 0, 0, 0, 5])));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(42)));
    }

    #[test]
    fn ipv4_address_gets_broadcast_below_31() {
        let m = new_address(7, &"10.1.0.5/24".parse().unwrap());
        assert_eq!(m.header.family, AddressFamily::Inet);
        assert_eq!(m.header.prefix_len, 24);
        assert_eq!(m.header.index, 7);
        assert!(m
            .attributes
            .contains(&AddressAttribute::Broadcast("10.1.0.255".parse().unwrap())));
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Flags(_))));
        let m = new_address(7, &"10.1.0.5/31".parse().unwrap());
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
        let m = new_address(7, &"10.1.0.5/32".parse().unwrap());
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
    }

    #[test]
    fn ipv6_address_is_nodad() {
        let m = new_address(9, &"fd00:10::5/64".parse().unwrap());
        let RouteNetlinkMessage::NewAddress(m) = round_trip(RouteNetlinkMessage::NewAddress(m))
        else {
            panic!()
        };
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert_eq!(m.header.prefix_len, 64);
        assert!(m.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(m
            .attributes
            .contains(&AddressAttribute::Flags(AddressFlags::Nodad)));
        assert!(m
            .attributes
            .contains(&AddressAttribute::Address("fd00:10::5".parse().unwrap())));
        // Reading it back gives the same address and prefix.
        assert_eq!(
            addresses_of(&[m], 9),
            vec!["fd00:10::5/64".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn default_route_has_no_destination() {
        let r = RouteSpec {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: Some("10.1.0.254".parse().unwrap()),
        };
        let m = new_route(3, &r);
        assert_eq!(m.header.destination_prefix_length, 0);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(m.header.table, RT_TABLE_MAIN);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert!(m.attributes.contains(&RouteAttribute::Oif(3)));
        let RouteNetlinkMessage::NewRoute(back) = round_trip(RouteNetlinkMessage::NewRoute(m))
        else {
            panic!()
        };
        assert_eq!(routes_of(&[back], 3), vec![r]);
    }

    #[test]
    fn routes_are_truncated_and_scoped() {
        // A destination with host bits is taken as its network (as CNI does).
        let r = RouteSpec {
            dst: "192.168.7.9/16".parse().unwrap(),
            gw: None,
        };
        let m = new_route(3, &r);
        assert_eq!(m.header.scope, RouteScope::Link);
        assert!(m
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                "192.168.0.0".parse().unwrap()
            ))));
        let v6 = RouteSpec {
            dst: "::/0".parse().unwrap(),
            gw: Some("fd00::1".parse().unwrap()),
        };
        let m = new_route(3, &v6);
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        let RouteNetlinkMessage::NewRoute(back) = round_trip(RouteNetlinkMessage::NewRoute(m))
        else {
            panic!()
        };
        assert_eq!(routes_of(&[back], 3), vec![v6]);
    }

    #[test]
    fn routes_of_skips_kernel_other_tables_and_other_links() {
        let r = RouteSpec {
            dst: "192.168.0.0/16".parse().unwrap(),
            gw: Some("10.1.0.1".parse().unwrap()),
        };
        let mine = new_route(3, &r);
        let other_link = new_route(4, &r);
        let mut kernel = new_route(3, &r);
        kernel.header.protocol = RouteProtocol::Kernel;
        let mut local = new_route(3, &r);
        local.header.table = 255;
        assert_eq!(routes_of(&[kernel, local, other_link, mine], 3), vec![r]);
    }

    #[test]
    fn link_facts_reads_veth_and_peer() {
        let mut m = LinkMessage::default();
        m.header.index = 12;
        m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        m.attributes = vec![
            LinkAttribute::Address(vec![2, 1, 2, 3, 4, 5]),
            LinkAttribute::Mtu(9000),
            LinkAttribute::Link(40),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let RouteNetlinkMessage::NewLink(m) = round_trip(RouteNetlinkMessage::NewLink(m)) else {
            panic!()
        };
        assert_eq!(
            link_facts(&m),
            LinkFacts {
                index: 12,
                mac: Some([2, 1, 2, 3, 4, 5]),
                mtu: 9000,
                up: true,
                is_veth: true,
                link: Some(40),
            }
        );
        let plain = link_by_name("lo");
        let f = link_facts(&plain);
        assert!(!f.up && !f.is_veth && f.mac.is_none() && f.link.is_none());
    }

    #[test]
    fn addresses_of_prefers_local_and_filters_index() {
        let a = new_address(5, &"10.0.0.1/24".parse().unwrap());
        let b = new_address(6, &"10.0.1.1/24".parse().unwrap());
        let mut c = new_address(5, &"10.0.2.1/32".parse().unwrap());
        // A point-to-point address: IFA_ADDRESS is the peer.
        c.attributes = vec![
            AddressAttribute::Local("10.0.2.1".parse().unwrap()),
            AddressAttribute::Address("10.0.2.2".parse().unwrap()),
        ];
        assert_eq!(
            addresses_of(&[a, b, c], 5),
            vec![
                "10.0.0.1/24".parse::<IpNet>().unwrap(),
                "10.0.2.1/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn set_up_targets_index() {
        let m = set_up(77);
        assert_eq!(m.header.index, 77);
        assert_eq!(m.header.flags, LinkFlags::Up);
        assert_eq!(m.header.change_mask, LinkFlags::Up);
        assert!(m.attributes.is_empty());
    }
}
