//! Tests of [`RtNetlinkVfs`] (spur-node's netlink `VfLinks`) against the
//! real kernel, without SR-IOV hardware: a stand-in interface plays
//! the VF's netdev (one end of a veth pair where the kernel has no
//! `dummy` driver). They need root and `ip` (iproute2), and are skipped
//! with a message otherwise.
//!
//! Every test works in network namespaces of its own: one stands for the
//! agent's netns (the [`RtNetlinkVfs`] is made on a thread that entered
//! it, so its connection and its "home" netns are that one, never the
//! machine's), others for Pods. Names are unique per process and test;
//! the namespaces are deleted by Drop guards, also when a test panics.
//!
//! What is checked: attach (name, MTU, MAC, addresses, routes, up, alias =
//! record) and detach (home under its own name, alias cleared, addresses
//! gone, down), the name taken in the Pod (nothing touched), a failure
//! after the move rolled back, a name taken at home on detach (fallback
//! name), idempotent detach, a foreign alias (error, nothing moved),
//! `inspect_vf`, and the host side of recovery (a VF home under a Pod's
//! name with its record: found by `host_vfs`, given its own name back by
//! `restore_host_vf`). The PF side needs a PF: its messages are unit-tested in
//! the module.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod kernel;

use std::path::Path;
use std::process::Command;

use ipnet::IpNet;
use kernel::{in_netns, unique, TestNs};
use serde_json::Value;
use spur_core::names::Mac;
use spur_node::netdev::{NetdevError, RouteSpec};
use spur_node::sriov::netlink::RtNetlinkVfs;
use spur_node::sriov::vf::{PfVfSettings, VfAttachSpec, VfLinks, VfRecord};

/// The kernel's interfaces beside what `TestNs` offers.
trait NsExt {
    /// `ip -j addr show dev NAME`, the one entry.
    fn link(&self, name: &str) -> Value;
    /// The alias of `name` (`ip addr` does not show it, `ip link` does).
    fn alias(&self, name: &str) -> Option<String>;
    /// A stand-in netdev `name`: one end of a veth pair (this kernel may
    /// have no `dummy` driver), its peer under a unique name beside it.
    fn stand_in(&self, name: &str);
}

impl NsExt for TestNs {
    fn link(&self, name: &str) -> Value {
        self.ip_json(&["addr", "show", "dev", name])[0].clone()
    }

    fn alias(&self, name: &str) -> Option<String> {
        self.ip_json(&["link", "show", "dev", name])[0]
            .get("ifalias")
            .map(|a| a.as_str().unwrap().to_owned())
    }

    fn stand_in(&self, name: &str) {
        let peer = unique("p");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    }
}

/// The agent side: a netns standing for the agent's and the VF links made
/// inside it.
struct Agent {
    ns: TestNs,
    vfs: RtNetlinkVfs,
}

impl Agent {
    async fn new() -> Agent {
        let ns = TestNs::new("svt");
        let vfs = in_netns(&ns.path, || {
            futures::executor::block_on(RtNetlinkVfs::new()).unwrap()
        });
        Agent { ns, vfs }
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

const MAC: [u8; 6] = [0x02, 0x5a, 0x01, 0x02, 0x03, 0x04];

fn record(name: &str) -> VfRecord {
    VfRecord {
        name: name.to_owned(),
        pci: "0000:3b:02.1".parse().unwrap(),
        parent: Some(("ens1f0".into(), 1)),
        pf: PfVfSettings {
            mac: Some(Mac([0x02, 0, 0, 0, 0, 9])),
            vlan: 100,
            qos: 3,
            spoofchk: Some(true),
            trust: None,
        },
    }
}

fn spec(netdev: &str, pod: &TestNs) -> VfAttachSpec {
    VfAttachSpec {
        netdev: netdev.to_owned(),
        record: record(netdev),
        netns: pod.path.clone(),
        ifname: "eth1".into(),
        mtu: 1400,
        mac: Some(Mac(MAC)),
        addresses: vec![net("10.78.0.5/24"), net("fd00:78::5/64")],
        routes: vec![
            RouteSpec {
                dst: net("0.0.0.0/0"),
                gw: Some("10.78.0.1".parse().unwrap()),
            },
            RouteSpec {
                dst: net("::/0"),
                gw: Some("fd00:78::1".parse().unwrap()),
            },
        ],
        announce: true,
    }
}

fn flags(link: &Value) -> Vec<String> {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

fn global_addrs(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] == "global")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// The netdev is home, untouched: its name, no alias, down, its MTU.
fn assert_home(agent: &Agent, name: &str, mtu: u64) {
    assert!(
        agent.ns.links().contains(&name.to_owned()),
        "{name} not home"
    );
    let l = agent.ns.link(name);
    assert_eq!(agent.ns.alias(name), None);
    assert!(!flags(&l).contains(&"UP".into()), "{l}");
    assert_eq!(l["mtu"].as_u64(), Some(mtu), "{l}");
    assert!(global_addrs(&l).is_empty(), "{l}");
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn attach_configures_and_detach_brings_it_home() {
    require_env!(&[("ip", "-V")]);
    let agent = Agent::new().await;
    let pod = TestNs::new("svt");
    let vf = unique("vf");
    agent.ns.stand_in(&vf);
    // The Pod's name exists in the agent's netns: it must not matter.
    agent.ns.stand_in("eth1");
    let s = spec(&vf, &pod);

    agent.vfs.attach_vf(&s).await.unwrap();

    assert!(!agent.ns.links().contains(&vf));
    let l = pod.link("eth1");
    assert_eq!(l["mtu"].as_u64(), Some(1400), "{l}");
    assert_eq!(l["address"].as_str(), Some("02:5a:01:02:03:04"), "{l}");
    assert!(flags(&l).contains(&"UP".into()), "{l}");
    assert_eq!(pod.alias("eth1"), Some(s.record.render()));
    assert_eq!(
        global_addrs(&l),
        vec!["10.78.0.5/24".to_string(), "fd00:78::5/64".to_string()]
    );
    let routes = pod.ip_json(&["-4", "route", "show", "default"]);
    assert_eq!(routes[0]["gateway"].as_str(), Some("10.78.0.1"), "{routes}");
    let routes = pod.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(
        routes[0]["gateway"].as_str(),
        Some("fd00:78::1"),
        "{routes}"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &pod.name, "cat"])
        .arg("/proc/sys/net/ipv4/conf/eth1/arp_notify")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // inspect_vf sees the same.
    let got = agent
        .vfs
        .inspect_vf(&pod.path, "eth1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.record, Some(s.record.clone()));
    assert_eq!(got.mtu, 1400);
    assert_eq!(got.mac, Mac(MAC));
    assert!(got.up);
    assert!(got.addresses.contains(&net("10.78.0.5/24")));
    assert!(got.addresses.contains(&net("fd00:78::5/64")));
    assert_eq!(agent.vfs.inspect_vf(&pod.path, "eth9").await.unwrap(), None);
    // The Pod's VFs (what a DEL gives back): only Spur's.
    assert_eq!(agent.vfs.pod_vfs(&pod.path).await.unwrap(), ["eth1"]);

    // Detach: home under its own name, alias cleared, addresses gone.
    let back = agent.vfs.detach_vf(&pod.path, "eth1").await.unwrap();
    assert_eq!(back, Some(s.record.clone()));
    assert!(!pod.links().contains(&"eth1".to_owned()));
    assert_home(&agent, &vf, 1400);
    assert!(agent.ns.links().contains(&"eth1".to_owned()));

    // Again: nothing there any more.
    assert_eq!(agent.vfs.detach_vf(&pod.path, "eth1").await.unwrap(), None);
    assert!(agent.vfs.pod_vfs(&pod.path).await.unwrap().is_empty());
    let gone = std::path::Path::new("/var/run/netns/spur-test-no-such-netns");
    assert!(agent.vfs.pod_vfs(gone).await.unwrap().is_empty());
}

#[tokio::test]
async fn attach_into_a_taken_name_touches_nothing() {
    require_env!(&[("ip", "-V")]);
    let agent = Agent::new().await;
    let pod = TestNs::new("svt");
    let vf = unique("vf");
    agent.ns.stand_in(&vf);
    pod.stand_in("eth1");

    let e = agent.vfs.attach_vf(&spec(&vf, &pod)).await.unwrap_err();
    assert!(
        matches!(&e, NetdevError::PodLinkExists { ifname, .. } if ifname == "eth1"),
        "{e}"
    );
    assert_home(&agent, &vf, 1500);
}

#[tokio::test]
async fn attach_of_a_missing_netdev_or_into_a_missing_netns_fails() {
    require_env!(&[("ip", "-V")]);
    let agent = Agent::new().await;
    let pod = TestNs::new("svt");
    let e = agent
        .vfs
        .attach_vf(&spec("nosuchvf0", &pod))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nosuchvf0"), "{e}");
    assert!(e.to_string().contains("agent's netns"), "{e}");

    let vf = unique("vf");
    agent.ns.stand_in(&vf);
    let mut s = spec(&vf, &pod);
    s.netns = "/var/run/netns/spur-no-such-ns".into();
    let e = agent.vfs.attach_vf(&s).await.unwrap_err();
    assert!(matches!(e, NetdevError::NetnsNotFound { .. }), "{e}");
    assert_home(&agent, &vf, 1500);
}

#[tokio::test]
async fn a_failure_after_the_move_rolls_back() {
    require_env!(&[("ip", "-V")]);
    let agent = Agent::new().await;
    let pod = TestNs::new("svt");
    let vf = unique("vf");
    agent.ns.stand_in(&vf);
    let mut s = spec(&vf, &pod);
    // Its gateway is on no subnet of the interface: ENETUNREACH.
    s.routes.push(RouteSpec {
        dst: net("192.168.0.0/16"),
        gw: Some("10.99.0.1".parse().unwrap()),
    });

    let e = agent.vfs.attach_vf(&s).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("add route 192.168.0.0/16 via 10.99.0.1"),
        "{text}"
    );
    assert!(text.contains("eth1"), "{text}");
    assert!(text.contains(&pod.path.display().to_string()), "{text}");
    assert!(!pod.links().contains(&"eth1".to_owned()));
    assert_home(&agent, &vf, 1500);

    // A multicast MAC is refused before anything moves.
    let mut s = spec(&vf, &pod);
    s.mac = Some(Mac([0x01, 0, 0x5e, 0, 0, 1]));
    let e = agent.vfs.attach_vf(&s).await.unwrap_err();
    assert!(matches!(e, NetdevError::InvalidSpec { .. }), "{e}");
    assert_home(&agent, &vf, 1500);
}

#[tokio::test]
async fn detach_of_what_is_not_there_is_none() {
    require_env!(&[("ip", "-V")]);
    let agent = Agent::new().await;
    let pod = TestNs::new("svt");
    assert_eq!(agent.vfs.detach_vf(&pod.path, "eth1").await.unwrap(), None);
    let gone = Path::new("/var/run/netns/spur-no-such-ns");
    assert_eq!(agent.vfs.detach_vf(gone, "eth1").await.unwrap(), None);
}

#[tokio::test]
async fn detach_of_a_foreign_interface_is_an_error_and_moves_nothing() {
    require_env!(&[("ip", "-V")]);
    let agent = Agent::new().await;
    let pod = TestNs::new("svt");
    pod.stand_in("net1");
    pod.ip(&["link", "set", "net1", "alias", "not a spur record"]);
    pod.ip(&["addr", "add", "10.5.0.1/24", "dev", "net1"]);

    let e = agent.vfs.detach_vf(&pod.path, "net1").await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("net1"), "{text}");
    assert!(text.contains(&pod.path.display().to_string()), "{text}");
    let l = pod.link("net1");
    assert_eq!(global_addrs(&l), vec!["10.5.0.1/24".to_string()]);
    let got = agent
        .vfs
        .inspect_vf(&pod.path, "net1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.record, None);

    // Without any alias: the same.
    pod.stand_in("net2");
    assert!(agent.vfs.detach_vf(&pod.path, "net2").await.is_err());
    assert!(pod.links().contains(&"net2".to_owned()));
}

#[tokio::test]
async fn detach_when_the_home_name_is_taken_uses_a_fallback() {
    require_env!(&[("ip", "-V")]);
    let agent = Agent::new().await;
    let pod = TestNs::new("svt");
    let vf = unique("vf");
    agent.ns.stand_in(&vf);
    agent.vfs.attach_vf(&spec(&vf, &pod)).await.unwrap();
    let index = pod.link("eth1")["ifindex"].as_u64().unwrap();
    // Someone took the name meanwhile.
    agent.ns.stand_in(&vf);

    let back = agent.vfs.detach_vf(&pod.path, "eth1").await.unwrap();
    assert_eq!(back.map(|r| r.name), Some(vf.clone()));
    assert!(!pod.links().contains(&"eth1".to_owned()));
    let links = agent.ns.links();
    let fallback = links
        .iter()
        .find(|l| l.starts_with("spurvf"))
        .unwrap_or_else(|| panic!("no fallback name in {links:?}"));
    assert!(
        fallback.ends_with(&index.to_string()),
        "{fallback} vs {index}"
    );
    assert_eq!(agent.ns.alias(fallback), None);
}

#[tokio::test]
async fn a_vf_that_came_home_under_a_pod_name_is_found_and_restored() {
    require_env!(&[("ip", "-V")]);
    let agent = Agent::new().await;
    // What the kernel leaves when a Pod's netns dies: the VF home under
    // the Pod's interface name, still carrying the record, with an address
    // (one the recovery must not leave behind), up.
    let vf = unique("vf");
    let returned = unique("eth");
    agent.ns.stand_in(&returned);
    let rec = record(&vf);
    agent
        .ns
        .ip(&["link", "set", &returned, "alias", &rec.render()]);
    agent
        .ns
        .ip(&["addr", "add", "10.79.0.5/24", "dev", &returned]);
    agent.ns.ip(&["link", "set", &returned, "up"]);
    // A netdev with a foreign alias is not Spur's.
    let other = unique("o");
    agent.ns.stand_in(&other);
    agent
        .ns
        .ip(&["link", "set", &other, "alias", "uplink to rack 7"]);

    let found = agent.vfs.host_vfs().await.unwrap();
    assert_eq!(found, vec![(returned.clone(), rec.clone())]);
    let back = agent.vfs.restore_host_vf(&returned).await.unwrap();
    assert_eq!(back, Some(rec));
    assert!(!agent.ns.links().contains(&returned));
    assert_home(&agent, &vf, 1500);
    assert!(agent.vfs.host_vfs().await.unwrap().is_empty());
    // Idempotent, and a netdev without a record is left alone.
    assert_eq!(agent.vfs.restore_host_vf(&returned).await.unwrap(), None);
    assert_eq!(agent.vfs.restore_host_vf(&other).await.unwrap(), None);
    assert_eq!(agent.ns.alias(&other).as_deref(), Some("uplink to rack 7"));
    // An ADD labels the VF before setting its PF: the label is what the
    // recovery finds.
    let rec = record(&vf);
    agent.vfs.label_host_vf(&vf, &rec).await.unwrap();
    assert_eq!(agent.ns.alias(&vf), Some(rec.render()));
    assert_eq!(agent.vfs.host_vfs().await.unwrap(), vec![(vf.clone(), rec)]);
    agent.vfs.restore_host_vf(&vf).await.unwrap();
    assert_home(&agent, &vf, 1500);
}
