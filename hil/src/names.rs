//! Names the lab gives to what it creates, as pure functions: the lab id,
//! network namespaces, links, bridges, directories, and the addresses of
//! the management network and the nodes' Pod CIDRs.
//!
//! Every name a lab creates on the host starts with its lab id
//! (`sph` and five base-36 characters, e.g. `sph0k3x9`) followed by `-`, so
//! a crashed run's leftovers are recognisable ([`lab_of`]); every link name
//! fits the kernel's 15 characters ([`check_ifname`]).
//!
//! What does not live here: creating any of it ([`crate::lab`]).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

/// The prefix of every lab id.
pub const LAB_PREFIX: &str = "sph";
/// Characters of a lab id after the prefix.
const ID_CHARS: usize = 5;
/// The longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;
/// The longest path of a unix socket (sun_path less its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// The node-side name of the management link in every node namespace.
pub const MGMT_IFNAME: &str = "mgmt0";

const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A lab's id: `sph` and five characters of `[0-9a-z]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabId(String);

impl LabId {
    /// The id drawn from `seed` (e.g. the time and the process id).
    pub fn generate(seed: u64) -> LabId {
        let mut n = seed;
        let mut s = String::from(LAB_PREFIX);
        for _ in 0..ID_CHARS {
            s.push(char::from(BASE36[(n % 36) as usize]));
            n /= 36;
        }
        LabId(s)
    }

    /// `text` as a lab id, when it is one.
    pub fn parse(text: &str) -> Option<LabId> {
        let rest = text.strip_prefix(LAB_PREFIX)?;
        (rest.len() == ID_CHARS
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()))
        .then(|| LabId(text.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LabId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The lab a namespace or link name belongs to: names the lab makes are
/// `<lab id>-...`.
pub fn lab_of(name: &str) -> Option<LabId> {
    let (id, _) = name.split_once('-')?;
    LabId::parse(id)
}

/// The network namespace of testbed node `node`.
pub fn node_netns(lab: &LabId, node: &str) -> String {
    format!("{lab}-n-{node}")
}

/// The network namespace of the fabric (the switches).
pub fn fabric_netns(lab: &LabId) -> String {
    format!("{lab}-fab")
}

/// The host's Linux bridge of the management network.
pub fn mgmt_bridge(lab: &LabId) -> String {
    format!("{lab}-mg")
}

/// The host end of node number `index`'s management link.
pub fn mgmt_host_end(lab: &LabId, index: usize) -> String {
    format!("{lab}-m{index}")
}

/// The fabric end of NIC number `nic` of node number `node` (inside the
/// fabric namespace).
pub fn fabric_port(node: usize, nic: usize) -> String {
    format!("n{node}p{nic}")
}

/// The OVS bridge of fabric segment number `segment` (inside the fabric
/// namespace; the segment's name is kept in its external_ids).
pub fn fabric_bridge(segment: usize) -> String {
    format!("fab{segment}")
}

/// Why `name` cannot be a Linux interface name, if it cannot.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.len() > MAX_IFNAME {
        return Err(format!(
            "interface name `{name}` has {} characters; Linux allows {MAX_IFNAME}",
            name.len()
        ));
    }
    match spur_core::names::ifname_problem(name) {
        Some(p) => Err(format!("interface name `{name}`: {p}")),
        None => Ok(()),
    }
}

/// The longest file name the lab puts in a node's directory
/// (`<node dir>/ovs/ovsdb-server.ctl`).
const LONGEST_NODE_FILE: &str = "/ovs/ovsdb-server.ctl";

/// The directory name of node number `index` inside the lab directory
/// `lab_dir`: the node's name, or `node<index>` when the name would make
/// a unix socket path longer than the kernel allows.
pub fn node_dir_name(lab_dir: &Path, node: &str, index: usize) -> String {
    let len = lab_dir.as_os_str().len() + 1 + node.len() + LONGEST_NODE_FILE.len();
    if len <= MAX_SOCKET_PATH {
        node.to_string()
    } else {
        format!("node{index}")
    }
}

/// The first address of the management network handed to nodes:
/// node `i` gets `.(FIRST_NODE_HOST + i)`, the host `.1`.
const FIRST_NODE_HOST: usize = 10;

/// How many nodes one management network holds.
pub const MAX_NODES: usize = 254 - FIRST_NODE_HOST;

/// A management network: the host's address and the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MgmtNet {
    /// The /24 of the lab's management bridge.
    pub net: Ipv4Net,
}

impl MgmtNet {
    /// The host's address (where the API server listens).
    pub fn host(&self) -> Ipv4Addr {
        nth(self.net, 1)
    }

    /// The address of node number `index` (below [`MAX_NODES`]).
    pub fn node(&self, index: usize) -> Ipv4Addr {
        nth(
            self.net,
            (FIRST_NODE_HOST + index.min(MAX_NODES - 1)) as u32,
        )
    }

    /// `addr/24` for `ip addr add`.
    pub fn with_prefix(&self, addr: Ipv4Addr) -> String {
        format!("{addr}/{}", self.net.prefix_len())
    }
}

fn nth(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).wrapping_add(n))
}

/// The management network of a lab: a /24 of 100.64.0.0/10 (shared
/// address space, unused on most hosts), starting at the one `seed` picks
/// and skipping every /24 that overlaps a network in `taken` (the host's
/// addresses and routes). `None` when all are taken.
pub fn choose_mgmt_net(seed: u64, taken: &[IpNet]) -> Option<MgmtNet> {
    const BASE: u32 = 0x6440_0000; // 100.64.0.0
    const COUNT: u64 = 1 << 14; // /24s in a /10
    (0..COUNT)
        .map(|k| {
            let i = ((seed % COUNT + k) % COUNT) as u32;
            Ipv4Net::new(Ipv4Addr::from(BASE + (i << 8)), 24).unwrap_or_default()
        })
        .find(|net| {
            !taken.iter().any(|t| match t {
                IpNet::V4(t) => t.contains(&net.network()) || net.contains(&t.network()),
                IpNet::V6(_) => false,
            })
        })
        .map(|net| MgmtNet { net })
}

/// The Pod CIDR of node number `index`: `10.244.<index>.0/24`.
pub fn pod_cidr(index: usize) -> Option<IpNet> {
    let third = u8::try_from(index).ok()?;
    Some(IpNet::V4(
        Ipv4Net::new(Ipv4Addr::new(10, 244, third, 0), 24).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn lab_ids_round_trip_and_are_recognised() {
        for seed in [0, 1, 35, 36, u64::MAX, 0x1234_5678_9abc] {
            let id = LabId::generate(seed);
            assert_eq!(id.as_str().len(), 8, "{id}");
            assert_eq!(LabId::parse(id.as_str()), Some(id.clone()));
            assert_eq!(lab_of(&node_netns(&id, "node-a")), Some(id.clone()));
            assert_eq!(lab_of(&fabric_netns(&id)), Some(id.clone()));
            assert_eq!(lab_of(&mgmt_bridge(&id)), Some(id.clone()));
            assert_eq!(lab_of(&mgmt_host_end(&id, 3)), Some(id.clone()));
        }
        assert_ne!(LabId::generate(1), LabId::generate(2));
        for other in [
            "eth0",
            "sph",
            "sphinx-1",
            "sphABCDE-n-x",
            "sph12345",
            "xsph12345-n",
            "sph1234-n-a",
            "sph123456-n",
        ] {
            assert_eq!(lab_of(other), None, "{other}");
        }
    }

    #[test]
    fn every_link_name_fits_the_kernel_limit() {
        let id = LabId::generate(u64::MAX);
        let mut names = vec![mgmt_bridge(&id), MGMT_IFNAME.to_string()];
        for i in [0, 9, 99, MAX_NODES - 1] {
            names.push(mgmt_host_end(&id, i));
        }
        // Up to 250 nodes with 16 NICs each, 1000 segments.
        names.push(fabric_port(MAX_NODES - 1, 15));
        names.push(fabric_bridge(999));
        for n in &names {
            assert!(check_ifname(n).is_ok(), "{n}: {:?}", check_ifname(n));
        }
        assert!(check_ifname("a-very-long-name0").is_err());
        assert!(check_ifname("eth:1").is_err());
        assert!(check_ifname("").is_err());
    }

    #[test]
    fn node_dirs_keep_socket_paths_short() {
        let lab = PathBuf::from("/run/spur-hil/sph00000");
        assert_eq!(node_dir_name(&lab, "node-a", 0), "node-a");
        let long = "n".repeat(80);
        let name = node_dir_name(&lab, &long, 7);
        assert_eq!(name, "node7");
        let path = lab.join(&name).join("ovs/ovsdb-server.ctl");
        assert!(path.as_os_str().len() <= MAX_SOCKET_PATH);
        let fits = "n".repeat(MAX_SOCKET_PATH - lab.as_os_str().len() - 1 - 21);
        assert_eq!(node_dir_name(&lab, &fits, 1), fits);
        assert_eq!(
            lab.join(&fits)
                .join("ovs/ovsdb-server.ctl")
                .as_os_str()
                .len(),
            MAX_SOCKET_PATH
        );
    }

    #[test]
    fn management_networks_avoid_the_hosts_networks() {
        let first = choose_mgmt_net(0, &[]).unwrap();
        assert_eq!(first.net.to_string(), "100.64.0.0/24");
        assert_eq!(first.host().to_string(), "100.64.0.1");
        assert_eq!(first.node(0).to_string(), "100.64.0.10");
        assert_eq!(first.with_prefix(first.node(2)), "100.64.0.12/24");
        let taken: Vec<IpNet> = vec![
            "100.64.0.0/23".parse().unwrap(),
            "100.64.2.7/32".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ];
        assert_eq!(
            choose_mgmt_net(0, &taken).unwrap().net.to_string(),
            "100.64.3.0/24"
        );
        // The last /24 wraps around to the first.
        let last = choose_mgmt_net((1 << 14) - 1, &[]).unwrap();
        assert_eq!(last.net.to_string(), "100.127.255.0/24");
        let wrapped = choose_mgmt_net((1 << 14) - 1, &["100.127.0.0/16".parse().unwrap()]);
        assert_eq!(wrapped.unwrap().net.to_string(), "100.64.0.0/24");
        // A host route over the whole space leaves nothing.
        assert_eq!(choose_mgmt_net(5, &["100.0.0.0/8".parse().unwrap()]), None);
    }

    #[test]
    fn pod_cidrs_per_node() {
        assert_eq!(pod_cidr(0).unwrap().to_string(), "10.244.0.0/24");
        assert_eq!(pod_cidr(255).unwrap().to_string(), "10.244.255.0/24");
        assert_eq!(pod_cidr(256), None);
    }
}
