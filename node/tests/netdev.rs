//! Tests of the agent's netlink layer (`spur_node::netdev`) against the
//! real kernel. They need root, `ip` (iproute2) and `ethtool`, and are
//! skipped with a message otherwise.
//!
//! Every test works in network namespaces of its own: one stands for the
//! agent's netns (the [`RtNetlinkLinks`] connection is opened from a thread
//! that entered it, so the host ends land there and not in the machine's
//! netns), others for Pods. Names are unique per process and test; the
//! namespaces are deleted by Drop guards, also when a test panics, which
//! takes every link in them along.
//!
//! What is checked: the Pod end's configuration as `ip -j` and
//! `ethtool -k` see it (addresses, MTU, MAC, routes, up, TX checksum off,
//! the announce sysctls), the gratuitous ARP and unsolicited NA captured on
//! the host side, ping over IPv4 and IPv6 between two Pods through a Linux
//! bridge, the distinct errors (interface exists, host name taken, netns
//! missing, not a netns) with nothing leaked, the rollback of a failure
//! midway, idempotent deletes (also after the netns is gone) and
//! `inspect_pod_link` / `host_link`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod kernel;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use kernel::{in_netns, run, unique, TestNs};
use nix::sys::socket::{
    recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;
use spur_node::netdev::{NetdevError, PodLinks, RouteSpec, RtNetlinkLinks, VethSpec};

// ---------------------------------------------------------------------------
// Environment

/// What these tests run besides netlink.
const TOOLS: &[(&str, &str)] = &[("ip", "-V"), ("ethtool", "--version"), ("ping", "-V")];

/// The agent side: a netns standing for the agent's own and a
/// connection opened inside it.
struct Agent {
    ns: TestNs,
    links: RtNetlinkLinks,
}

impl Agent {
    async fn new() -> Agent {
        let ns = TestNs::new("spt");
        let links = in_netns(&ns.path, || {
            futures::executor::block_on(RtNetlinkLinks::new()).unwrap()
        });
        Agent { ns, links }
    }
}

/// Polls `cond` until it holds or `timeout` passes.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn route(dst: &str, gw: Option<&str>) -> RouteSpec {
    RouteSpec {
        dst: net(dst),
        gw: gw.map(|g| g.parse().unwrap()),
    }
}

fn spec(host_name: &str, pod: &TestNs, n: u8) -> VethSpec {
    VethSpec {
        host_name: host_name.to_owned(),
        netns: pod.path.clone(),
        ifname: "eth1".into(),
        mtu: 1400,
        mac: [0x02, 0x5a, 0x00, 0x00, 0x00, n],
        addresses: vec![
            net(&format!("10.77.0.{n}/24")),
            net(&format!("fd00:77::{n}/64")),
        ],
        routes: vec![
            route("0.0.0.0/0", Some("10.77.0.254")),
            route("192.168.0.0/16", Some("10.77.0.1")),
            route("::/0", Some("fd00:77::fe")),
        ],
        tx_checksum_off: true,
        announce: true,
    }
}

fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------
// Capture of what a Pod announces, on the agent side

/// An AF_PACKET socket of every protocol on every interface of a netns.
struct Capture(OwnedFd);

impl Capture {
    fn open(ns: &TestNs) -> Capture {
        in_netns(&ns.path, || {
            let fd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
            .unwrap();
            setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000)).unwrap();
            Capture(fd)
        })
    }

    /// Waits up to `timeout` for a frame `pred` accepts.
    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&[u8]) -> bool) {
        let mut buf = vec![0u8; 2048];
        wait_for(what, timeout, || {
            match recv(self.0.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => pred(&buf[..n]),
                Err(_) => false, // timeout: poll again
            }
        });
    }
}

/// A gratuitous ARP from `mac` for `ip`: sender and target address both
/// `ip`.
fn is_garp(f: &[u8], mac: [u8; 6], ip: [u8; 4]) -> bool {
    f.len() >= 42
        && f[6..12] == mac
        && f[12..14] == [0x08, 0x06]
        && f[28..32] == ip
        && f[38..42] == ip
}

/// An unsolicited neighbour advertisement from `mac` for `ip`, to all
/// nodes.
fn is_unsolicited_na(f: &[u8], mac: [u8; 6], ip: [u8; 16]) -> bool {
    f.len() >= 78
        && f[6..12] == mac
        && f[12..14] == [0x86, 0xdd]
        && f[20] == 58 // ICMPv6
        && f[38..54] == "ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        && f[54] == 136 // neighbour advertisement
        && f[58] & 0x40 == 0 // not solicited
        && f[62..78] == ip
}

// ---------------------------------------------------------------------------
// The tests

#[tokio::test]
async fn create_configures_both_ends() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let pod = TestNs::new("spt");
    let host = unique("h");
    let s = spec(&host, &pod, 5);
    let capture = Capture::open(&agent.ns);

    let created = agent.links.create_veth(&s).await.unwrap();
    assert_eq!(created.mac, s.mac);

    // The host end: in the agent's netns, up, same MTU, the index returned.
    let h = agent.ns.ip_json(&["link", "show", "dev", &host]);
    let h = &h[0];
    assert_eq!(h["ifindex"].as_u64(), Some(u64::from(created.host_index)));
    assert_eq!(h["mtu"].as_u64(), Some(1400));
    assert!(h["flags"].as_array().unwrap().contains(&"UP".into()), "{h}");
    assert!(!pod.links().contains(&host));

    // The Pod end as `ip` sees it.
    let a = pod.ip_json(&["addr", "show", "dev", "eth1"]);
    let a = &a[0];
    assert_eq!(a["mtu"].as_u64(), Some(1400));
    assert_eq!(a["address"].as_str(), Some(mac_str(s.mac).as_str()));
    assert_eq!(a["link_type"].as_str(), Some("ether"));
    assert!(a["flags"].as_array().unwrap().contains(&"UP".into()), "{a}");
    assert_eq!(a["operstate"].as_str(), Some("UP"), "{a}");
    let addrs: Vec<(String, u64, bool)> = a["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["local"].as_str().unwrap().to_owned(),
                i["prefixlen"].as_u64().unwrap(),
                i.get("tentative").is_some(),
            )
        })
        .collect();
    assert!(
        addrs.contains(&("10.77.0.5".into(), 24, false)),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&("fd00:77::5".into(), 64, false)),
        "IPv6 address present and not tentative (NODAD): {addrs:?}"
    );
    let brd = a["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["local"] == "10.77.0.5")
        .unwrap()["broadcast"]
        .clone();
    assert_eq!(brd.as_str(), Some("10.77.0.255"));

    // Routes.
    let r4 = pod.ip_json(&["-4", "route", "show", "dev", "eth1"]);
    let r4: Vec<(String, Option<String>)> = r4
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().unwrap().to_owned(),
                r["gateway"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert!(
        r4.contains(&("default".into(), Some("10.77.0.254".into()))),
        "{r4:?}"
    );
    assert!(
        r4.contains(&("192.168.0.0/16".into(), Some("10.77.0.1".into()))),
        "{r4:?}"
    );
    let r6 = pod.ip_json(&["-6", "route", "show", "dev", "eth1"]);
    assert!(
        r6.as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "fd00:77::fe"),
        "{r6}"
    );

    // TX checksum offload off, as `ethtool -k` reports it.
    let out = pod.exec(&["ethtool", "-k", "eth1"]);
    assert!(out.status.success());
    let features = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        features.contains("tx-checksum-ip-generic: off"),
        "{features}"
    );
    assert!(features.contains("tx-checksumming: off"), "{features}");

    // The announce sysctls, read inside the Pod netns.
    for (path, want) in [
        ("/proc/sys/net/ipv4/conf/eth1/arp_notify", "1"),
        ("/proc/sys/net/ipv4/conf/eth1/arp_ignore", "1"),
        ("/proc/sys/net/ipv4/conf/eth1/arp_announce", "2"),
        ("/proc/sys/net/ipv6/conf/eth1/ndisc_notify", "1"),
        ("/proc/sys/net/ipv6/conf/eth1/disable_ipv6", "0"),
    ] {
        let out = pod.exec(&["cat", path]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{path}");
    }

    // What the kernel announced when the Pod end came up, seen on the agent
    // side of the pair.
    capture.wait(
        "gratuitous ARP for 10.77.0.5",
        Duration::from_secs(3),
        |f| is_garp(f, s.mac, [10, 77, 0, 5]),
    );
    let v6: std::net::Ipv6Addr = "fd00:77::5".parse().unwrap();
    capture.wait(
        "unsolicited NA for fd00:77::5",
        Duration::from_secs(3),
        |f| is_unsolicited_na(f, s.mac, v6.octets()),
    );

    // inspect_pod_link and host_link agree.
    let state = agent
        .links
        .inspect_pod_link(&pod.path, "eth1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.mac, Some(s.mac));
    assert_eq!(state.mtu, 1400);
    assert!(state.up);
    assert!(state.is_veth);
    assert_eq!(state.peer_index, Some(created.host_index));
    assert!(state.addresses.contains(&net("10.77.0.5/24")));
    assert!(state.addresses.contains(&net("fd00:77::5/64")));
    for r in &s.routes {
        assert!(state.routes.contains(r), "{r:?} not in {:?}", state.routes);
    }
    assert_eq!(state.routes.len(), s.routes.len(), "{:?}", state.routes);
    let hl = agent.links.host_link(&host).await.unwrap().unwrap();
    assert_eq!(hl.index, created.host_index);
    assert!(hl.up);
    assert_eq!(hl.mtu, 1400);
}

#[tokio::test]
async fn ping_between_two_pods_through_a_bridge() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let (p1, p2) = (TestNs::new("spt"), TestNs::new("spt"));
    let (h1, h2) = (unique("h"), unique("h"));
    agent.links.create_veth(&spec(&h1, &p1, 1)).await.unwrap();
    agent.links.create_veth(&spec(&h2, &p2, 2)).await.unwrap();
    let br = &agent.ns.name;
    run(&["ip", "-n", br, "link", "add", "br0", "type", "bridge"]);
    run(&["ip", "-n", br, "link", "set", "br0", "up"]);
    for h in [&h1, &h2] {
        run(&["ip", "-n", br, "link", "set", h, "master", "br0"]);
    }
    for target in ["10.77.0.2", "fd00:77::2"] {
        wait_for(
            &format!("ping {target} from pod 1"),
            Duration::from_secs(10),
            || p1.exec(&["ping", "-c1", "-W1", target]).status.success(),
        );
    }
    for target in ["10.77.0.1", "fd00:77::1"] {
        assert!(
            p2.exec(&["ping", "-c1", "-W1", target]).status.success(),
            "{target}"
        );
    }
}

#[tokio::test]
async fn existing_names_fail_distinctly_and_leak_nothing() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let pod = TestNs::new("spt");
    let h1 = unique("h");
    let created = agent.links.create_veth(&spec(&h1, &pod, 1)).await.unwrap();

    // Same ifname in the same netns, another host name.
    let h2 = unique("h");
    let e = agent
        .links
        .create_veth(&spec(&h2, &pod, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, NetdevError::PodLinkExists { netns, ifname } if *netns == pod.path && ifname == "eth1"),
        "{e}"
    );
    assert!(e.is_exists());
    assert!(agent.links.host_link(&h2).await.unwrap().is_none());
    assert!(!agent.ns.links().contains(&h2));

    // The host name taken, in another Pod netns.
    let other = TestNs::new("spt");
    let e = agent
        .links
        .create_veth(&spec(&h1, &other, 3))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, NetdevError::HostLinkExists { host_name } if *host_name == h1),
        "{e}"
    );
    assert_eq!(other.links(), vec!["lo".to_owned()]);

    // The first pair is untouched.
    assert_eq!(
        agent.links.host_link(&h1).await.unwrap().unwrap().index,
        created.host_index
    );
    let state = agent
        .links
        .inspect_pod_link(&pod.path, "eth1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.mac, Some(spec(&h1, &pod, 1).mac));
    assert!(state.addresses.contains(&net("10.77.0.1/24")));
}

#[tokio::test]
async fn missing_or_bogus_netns_fails_and_leaks_nothing() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let gone = TestNs::new("spt");
    gone.delete();
    let host = unique("h");
    let e = agent
        .links
        .create_veth(&spec(&host, &gone, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, NetdevError::NetnsNotFound { netns } if *netns == gone.path),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("not-a-netns");
    std::fs::write(&plain, b"").unwrap();
    let mut s = spec(&host, &gone, 1);
    s.netns = plain.clone();
    let e = agent.links.create_veth(&s).await.unwrap_err();
    assert!(
        matches!(&e, NetdevError::NotANetns { netns } if *netns == plain),
        "{e}"
    );
    assert_eq!(agent.ns.links(), vec!["lo".to_owned()]);
    assert!(agent.links.host_link(&host).await.unwrap().is_none());
}

#[tokio::test]
async fn failure_midway_deletes_the_pair() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let pod = TestNs::new("spt");
    let host = unique("h");
    let mut s = spec(&host, &pod, 1);
    // A gateway on no connected network: the kernel refuses the route,
    // after the pair exists and the addresses are on it.
    s.routes = vec![
        route("0.0.0.0/0", Some("10.77.0.254")),
        route("172.16.0.0/12", Some("198.51.100.1")),
    ];
    let e = agent.links.create_veth(&s).await.unwrap_err();
    match &e {
        NetdevError::Kernel {
            op, netns, ifname, ..
        } => {
            assert!(op.contains("172.16.0.0/12 via 198.51.100.1"), "{e}");
            assert_eq!(ifname, "eth1");
            assert!(netns.to_string().contains(&pod.name), "{e}");
        }
        other => panic!("not a kernel error: {other}"),
    }
    assert_eq!(agent.ns.links(), vec!["lo".to_owned()]);
    assert_eq!(pod.links(), vec!["lo".to_owned()]);

    // The names are free again: the same spec without the bad route works.
    s.routes.truncate(1);
    agent.links.create_veth(&s).await.unwrap();
}

#[tokio::test]
async fn delete_host_link_is_idempotent() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let pod = TestNs::new("spt");
    let host = unique("h");
    agent
        .links
        .create_veth(&spec(&host, &pod, 1))
        .await
        .unwrap();
    assert!(agent.links.delete_host_link(&host).await.unwrap());
    assert_eq!(
        pod.links(),
        vec!["lo".to_owned()],
        "the Pod end goes with it"
    );
    assert!(agent.links.host_link(&host).await.unwrap().is_none());
    assert!(!agent.links.delete_host_link(&host).await.unwrap());
    assert!(agent
        .links
        .inspect_pod_link(&pod.path, "eth1")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn delete_pod_link_is_idempotent_also_without_netns() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let pod = TestNs::new("spt");
    let host = unique("h");
    agent
        .links
        .create_veth(&spec(&host, &pod, 1))
        .await
        .unwrap();
    assert!(agent
        .links
        .delete_pod_link(&pod.path, "eth1")
        .await
        .unwrap());
    assert_eq!(
        agent.ns.links(),
        vec!["lo".to_owned()],
        "the host end goes with it"
    );
    assert!(!agent
        .links
        .delete_pod_link(&pod.path, "eth1")
        .await
        .unwrap());
    assert!(!agent.links.delete_host_link(&host).await.unwrap());

    // Once the netns itself is gone there is nothing to delete either.
    let host2 = unique("h");
    agent
        .links
        .create_veth(&spec(&host2, &pod, 2))
        .await
        .unwrap();
    pod.delete();
    assert!(!agent
        .links
        .delete_pod_link(&pod.path, "eth1")
        .await
        .unwrap());
    // ...and inspecting is an error naming the netns.
    let e = agent
        .links
        .inspect_pod_link(&pod.path, "eth1")
        .await
        .unwrap_err();
    assert!(matches!(e, NetdevError::NetnsNotFound { .. }), "{e}");
    // The kernel tears the dead netns down asynchronously; its veth (and so
    // the host end) goes with it.
    wait_for(
        "the host end to vanish with the netns",
        Duration::from_secs(10),
        || !agent.ns.links().contains(&host2),
    );
}

#[tokio::test]
async fn inspect_absent_link_and_invalid_names() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let pod = TestNs::new("spt");
    assert!(agent
        .links
        .inspect_pod_link(&pod.path, "eth1")
        .await
        .unwrap()
        .is_none());
    // lo exists and is no veth.
    let lo = agent
        .links
        .inspect_pod_link(&pod.path, "lo")
        .await
        .unwrap()
        .unwrap();
    assert!(!lo.is_veth);
    assert_eq!(lo.peer_index, None);
    assert!(agent
        .links
        .host_link("nosuchlink0")
        .await
        .unwrap()
        .is_none());
    let e = agent
        .links
        .host_link("name-far-too-long")
        .await
        .unwrap_err();
    assert!(matches!(e, NetdevError::InvalidSpec { .. }), "{e}");
    // An invalid spec is refused before anything is touched.
    let mut s = spec(&unique("h"), &pod, 1);
    s.routes[0].gw = Some(IpAddr::V6("fd00::1".parse().unwrap()));
    let e = agent.links.create_veth(&s).await.unwrap_err();
    assert!(matches!(e, NetdevError::InvalidSpec { .. }), "{e}");
    assert_eq!(agent.ns.links(), vec!["lo".to_owned()]);
}

#[tokio::test]
async fn abandoned_create_leaves_nothing_behind() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let pod = TestNs::new("spt");
    // Give up on create_veth after various delays: before it started, while
    // the pair is being made, while it is configured, or after it is done.
    let mut abandoned = 0;
    for delay_us in [0u64, 100, 300, 600, 1000, 2000, 5000, 50_000] {
        let host = unique("h");
        let s = spec(&host, &pod, 1);
        let r = tokio::time::timeout(Duration::from_micros(delay_us), agent.links.create_veth(&s))
            .await;
        match r {
            Ok(created) => {
                // Finished in time: a complete pair, deleted for the next round.
                created.unwrap();
                assert!(agent.links.delete_host_link(&host).await.unwrap());
            }
            Err(_) => {
                abandoned += 1;
                // The pair is deleted in the background once complete.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let host_left = agent.links.host_link(&host).await.unwrap().is_some();
                    let pod_left = pod.links() != vec!["lo".to_owned()];
                    if !host_left && !pod_left {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "after giving up at {delay_us} us: host end left {host_left}, Pod end left {pod_left}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    assert!(abandoned > 0, "no create_veth was abandoned");
}

#[tokio::test]
async fn host_addresses_of_a_nic_in_the_agents_netns() {
    require_env!(TOOLS);
    let agent = Agent::new().await;
    let nic = unique("n");
    let out = agent.ns.exec(&[
        "ip",
        "link",
        "add",
        &nic,
        "type",
        "veth",
        "peer",
        "name",
        &unique("p"),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        agent.links.host_addresses(&nic).await.unwrap(),
        Some(vec![])
    );
    let out = agent
        .ns
        .exec(&["ip", "addr", "add", "192.168.9.10/24", "dev", &nic]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        agent.links.host_addresses(&nic).await.unwrap(),
        Some(vec![net("192.168.9.10/24")])
    );
    assert_eq!(
        agent.links.host_addresses("nosuchnic0").await.unwrap(),
        None
    );
}
