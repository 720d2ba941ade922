//! The Pod's secondary interface: a veth pair whose Pod end is created
//! directly inside the Pod's network namespace and configured there (MTU,
//! MAC, addresses, routes, TX checksum offload, announcements), behind a
//! small trait, [`PodLinks`], that the simulator and unit tests can
//! replace.
//!
//! - [`PodLinks`]: the operations the agent needs (create, delete either
//!   end, inspect both ends for CNI CHECK). Boxed futures keep it usable
//!   as `dyn PodLinks`.
//! - [`RtNetlinkLinks`]: the real implementation over netlink, no `ip`
//!   subprocesses. One rtnetlink connection in the agent's netns, opened
//!   once and reused, serves the host ends; everything inside a Pod netns
//!   runs on a dedicated short-lived thread that enters the netns
//!   (`setns`) and opens its own blocking netlink sockets there, so none
//!   of the agent's threads ever changes netns.
//! - [`VethSpec`] and [`VethSpec::validate`]: what to create, checked
//!   before anything is touched.
//! - [`NetdevError`]: every failure names the netns, the interface, the
//!   step and the errno; an interface that already exists and a netns
//!   that does not are distinct errors.
//!
//! What is not here: OVS ports (`crate::ovsdb`), IP address management
//! (`crate::ipam`), SR-IOV VFs, and a fake implementation (the
//! simulator's).

pub mod error;
pub mod ethtool;
pub(crate) mod msg;
pub(crate) mod netns;
pub(crate) mod rtnl;
pub(crate) mod sock;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use ipnet::IpNet;
use spur_core::names::{ifname_problem, Mac};

pub use error::{NetdevError, Netns};
pub use rtnl::RtNetlinkLinks;

/// Smallest MTU of an IPv4 interface.
pub const MIN_MTU: u32 = 68;
/// Smallest MTU of an interface carrying IPv6.
pub const MIN_MTU_IPV6: u32 = 1280;
/// Largest MTU of a veth.
pub const MAX_MTU: u32 = 65535;

/// A route added in the Pod netns through the Pod end.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteSpec {
    /// Destination; `0.0.0.0/0` or `::/0` is a default route. Host bits
    /// are ignored (`192.168.7.9/16` is `192.168.0.0/16`), as in CNI.
    pub dst: IpNet,
    /// Next hop, of the same family as `dst`; `None` for a route straight
    /// out of the interface.
    pub gw: Option<IpAddr>,
}

/// What [`PodLinks::create_veth`] creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VethSpec {
    /// Name of the host end, in the agent's netns (1-15 characters).
    pub host_name: String,
    /// The Pod's netns, e.g. `/var/run/netns/x` or `/proc/PID/ns/net`.
    pub netns: PathBuf,
    /// Name of the Pod end inside the Pod netns, e.g. `eth1`.
    pub ifname: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// MAC of the Pod end (unicast, not zero).
    pub mac: [u8; 6],
    /// Addresses of the Pod end (IPv6 ones are added without duplicate
    /// address detection, so they are usable at once).
    pub addresses: Vec<IpNet>,
    /// Routes added in the Pod netns via the Pod end, in order.
    pub routes: Vec<RouteSpec>,
    /// Turn TX checksum offload off on the Pod end (the OVS userspace
    /// datapath does not complete partial checksums).
    pub tx_checksum_off: bool,
    /// Have the kernel send a gratuitous ARP (IPv4) and an unsolicited
    /// neighbour advertisement (IPv6) when the Pod end comes up
    /// (`arp_notify` and `ndisc_notify` of the Pod end).
    pub announce: bool,
}

impl VethSpec {
    /// Checks everything that can be checked without the kernel: names,
    /// MTU (at least 1280 with an IPv6 address), MAC, distinct addresses,
    /// gateways of the route's family.
    pub fn validate(&self) -> Result<(), NetdevError> {
        check_ifname("host_name", &self.host_name)?;
        check_ifname("ifname", &self.ifname)?;
        let has_v6 = self.addresses.iter().any(|a| matches!(a, IpNet::V6(_)));
        let min = if has_v6 { MIN_MTU_IPV6 } else { MIN_MTU };
        if !(min..=MAX_MTU).contains(&self.mtu) {
            return Err(invalid(
                "mtu",
                self.mtu,
                format!(
                    "must be {min}..={MAX_MTU}{}",
                    if has_v6 { " with an IPv6 address" } else { "" }
                ),
            ));
        }
        let mac = Mac(self.mac);
        if mac.is_multicast() || self.mac == [0; 6] {
            return Err(invalid("mac", mac, "must be a unicast, non-zero MAC"));
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if self.addresses[..i].iter().any(|b| b.addr() == a.addr()) {
                return Err(invalid(
                    &format!("addresses[{i}]"),
                    a,
                    "the address is listed twice",
                ));
            }
            if a.addr().is_unspecified() || a.addr().is_multicast() {
                return Err(invalid(
                    &format!("addresses[{i}]"),
                    a,
                    "must be a unicast address",
                ));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(gw) = r.gw {
                if gw.is_ipv4() != r.dst.addr().is_ipv4() {
                    return Err(invalid(
                        &format!("routes[{i}].gw"),
                        gw,
                        format!("is not of the family of the destination {}", r.dst),
                    ));
                }
                if gw.is_unspecified() || gw.is_multicast() {
                    return Err(invalid(
                        &format!("routes[{i}].gw"),
                        gw,
                        "must be a unicast address",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn invalid(field: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> NetdevError {
    NetdevError::InvalidSpec {
        field: field.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Checks an interface name (the rules of `spur_core::names`).
pub fn check_ifname(field: &str, name: &str) -> Result<(), NetdevError> {
    match ifname_problem(name) {
        Some(reason) => Err(invalid(field, name, reason)),
        None => Ok(()),
    }
}

/// What [`PodLinks::create_veth`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedVeth {
    /// ifindex of the host end, in the agent's netns.
    pub host_index: u32,
    /// MAC of the Pod end.
    pub mac: [u8; 6],
}

/// The Pod end as it is now (for CNI CHECK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLinkState {
    /// ifindex in the Pod netns.
    pub index: u32,
    /// Its MAC (`None` for a link without a 6-byte hardware address).
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Every address on it with its prefix length, in the kernel's order,
    /// including the IPv6 link-local one the kernel adds.
    pub addresses: Vec<IpNet>,
    /// Whether it is a veth.
    pub is_veth: bool,
    /// For a veth, the peer's ifindex in the peer's netns (the host end's,
    /// when the peer is in the agent's netns), if the kernel reports it.
    pub peer_index: Option<u32>,
    /// Routes of the main table through it that someone added (the
    /// kernel's own prefix and link-local routes are left out).
    pub routes: Vec<RouteSpec>,
}

/// The host end as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLinkState {
    /// ifindex in the agent's netns.
    pub index: u32,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
}

/// The Pod-interface operations of the node agent.
pub trait PodLinks: Send + Sync {
    /// Creates the veth pair with its Pod end created directly inside the
    /// Pod netns (one `RTM_NEWLINK` carrying the peer's netns; never
    /// create-then-move), configures the Pod end (MTU, MAC, addresses,
    /// announcements, TX checksum, up, routes) and brings the host end up
    /// with the same MTU.
    ///
    /// All or nothing: on any failure what was created is deleted before
    /// the error is returned; if the future is dropped midway, the pair is
    /// not left behind either (`RtNetlinkLinks` finishes the work on a task
    /// of its own and then deletes what it made). Fails with
    /// [`NetdevError::PodLinkExists`] if `ifname` exists in the netns,
    /// [`NetdevError::HostLinkExists`] if `host_name` does in the agent's,
    /// [`NetdevError::NetnsNotFound`] / [`NetdevError::NotANetns`] for a
    /// bad netns; none of them creates or deletes anything.
    fn create_veth<'a>(
        &'a self,
        spec: &'a VethSpec,
    ) -> BoxFuture<'a, Result<CreatedVeth, NetdevError>>;

    /// Deletes the host end (and with it the pair): `Ok(true)` if it was
    /// there, `Ok(false)` if not. Idempotent.
    fn delete_host_link<'a>(
        &'a self,
        host_name: &'a str,
    ) -> BoxFuture<'a, Result<bool, NetdevError>>;

    /// Deletes `ifname` inside the netns (and with it its peer):
    /// `Ok(false)` when the netns or the link is already gone (including a
    /// netns path that is no longer a namespace). Idempotent.
    fn delete_pod_link<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<bool, NetdevError>>;

    /// The Pod end as it is: `None` when the netns has no such link; a
    /// missing netns is an error.
    fn inspect_pod_link<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodLinkState>, NetdevError>>;

    /// The host end: `None` when absent.
    fn host_link<'a>(
        &'a self,
        host_name: &'a str,
    ) -> BoxFuture<'a, Result<Option<HostLinkState>, NetdevError>>;

    /// The addresses of interface `name` in the agent's netns (link-local
    /// IPv6 ones included); `None` when there is no such interface. The
    /// agent asks it of uplinks: an interface with the node's addresses is
    /// the node's own, and Spur never moves it into a bridge.
    fn host_addresses<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<IpNet>>, NetdevError>>;

    /// True while the sandbox's network namespace `netns` (the path the
    /// runtime gave in the CNI call) is still there; the stale-port sweep
    /// asks it of every Pod port. The default looks at the file system
    /// (the runtime's bind mount of the namespace), which is what the real
    /// links do; an in-memory implementation (the simulator's) answers
    /// from its own state instead.
    fn netns_exists<'a>(&'a self, netns: &'a Path) -> BoxFuture<'a, bool> {
        Box::pin(async move { netns.exists() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VethSpec {
        VethSpec {
            host_name: "vethab12cd34".into(),
            netns: "/var/run/netns/p".into(),
            ifname: "eth1".into(),
            mtu: 1500,
            mac: [0x0a, 0x58, 0x0a, 0x0a, 0x01, 0x05],
            addresses: vec![
                "10.10.1.5/24".parse().unwrap(),
                "fd00:10::5/64".parse().unwrap(),
            ],
            routes: vec![
                RouteSpec {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: Some("10.10.1.1".parse().unwrap()),
                },
                RouteSpec {
                    dst: "::/0".parse().unwrap(),
                    gw: Some("fd00:10::1".parse().unwrap()),
                },
            ],
            tx_checksum_off: true,
            announce: true,
        }
    }

    fn field_of(e: NetdevError) -> (String, String) {
        match e {
            NetdevError::InvalidSpec { field, value, .. } => (field, value),
            other => panic!("not InvalidSpec: {other}"),
        }
    }

    #[test]
    fn valid_spec_passes() {
        spec().validate().unwrap();
    }

    #[test]
    fn names_are_checked() {
        let mut s = spec();
        s.host_name = "a-very-long-name-16".into();
        assert_eq!(
            field_of(s.validate().unwrap_err()),
            ("host_name".into(), "a-very-long-name-16".into())
        );
        let mut s = spec();
        s.ifname = "eth/1".into();
        assert_eq!(field_of(s.validate().unwrap_err()).0, "ifname");
        let mut s = spec();
        s.ifname = String::new();
        assert_eq!(field_of(s.validate().unwrap_err()).0, "ifname");
    }

    #[test]
    fn mtu_bounds_depend_on_ipv6() {
        let mut s = spec();
        s.mtu = 1000;
        let e = s.validate().unwrap_err();
        assert!(e.to_string().contains("with an IPv6 address"), "{e}");
        s.addresses.truncate(1);
        s.routes.truncate(1);
        s.validate().unwrap();
        s.mtu = 67;
        assert_eq!(
            field_of(s.validate().unwrap_err()),
            ("mtu".into(), "67".into())
        );
        s.mtu = 65536;
        assert_eq!(field_of(s.validate().unwrap_err()).0, "mtu");
    }

    #[test]
    fn mac_must_be_unicast() {
        let mut s = spec();
        s.mac = [0x01, 0, 0x5e, 0, 0, 1];
        assert_eq!(
            field_of(s.validate().unwrap_err()),
            ("mac".into(), "01:00:5e:00:00:01".into())
        );
        s.mac = [0; 6];
        assert_eq!(field_of(s.validate().unwrap_err()).0, "mac");
    }

    #[test]
    fn addresses_must_be_distinct_unicast() {
        let mut s = spec();
        s.addresses.push("10.10.1.5/16".parse().unwrap());
        assert_eq!(
            field_of(s.validate().unwrap_err()),
            ("addresses[2]".into(), "10.10.1.5/16".into())
        );
        let mut s = spec();
        s.addresses = vec!["224.0.0.1/24".parse().unwrap()];
        assert_eq!(field_of(s.validate().unwrap_err()).0, "addresses[0]");
    }

    #[test]
    fn gateway_family_must_match() {
        let mut s = spec();
        s.routes[1].gw = Some("10.10.1.1".parse().unwrap());
        let (field, value) = field_of(s.validate().unwrap_err());
        assert_eq!(
            (field.as_str(), value.as_str()),
            ("routes[1].gw", "10.10.1.1")
        );
        let mut s = spec();
        s.routes[0].gw = Some("0.0.0.0".parse().unwrap());
        assert_eq!(field_of(s.validate().unwrap_err()).0, "routes[0].gw");
    }
}
