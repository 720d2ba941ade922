//! Pure readers of what the host's tools print (`ip -j`, `bridge -j`,
//! `ovs-vsctl --format=json`, `ovs-appctl mdb/show`) and of captured
//! Ethernet frames.
//!
//! What does not live here: running the tools or opening sockets (the
//! parent module does that and hands these functions the text or bytes).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_json::Value;

use super::{AccessPort, IfaceFacts};

/// The `external_ids` key and value that mark a Spur access port.
pub const ROLE_KEY: &str = "spur.dev/role";
/// The role of an access port (`spur.dev/role=access`).
pub const ROLE_ACCESS: &str = "access";

/// The JSON of `ip -j addr show dev IFNAME` as [`IfaceFacts`]: `None` when
/// the list holds no interface named `ifname`. Addresses of link or host
/// scope (IPv6 `fe80::/10`, loopback) are left out: they are not the
/// Pod's addresses.
pub fn ip_addr(json: &str, ifname: &str) -> Result<Option<IfaceFacts>, String> {
    let links: Vec<Value> =
        serde_json::from_str(json).map_err(|e| format!("not a JSON list of interfaces: {e}"))?;
    let Some(link) = links
        .iter()
        .find(|l| l.get("ifname").and_then(Value::as_str) == Some(ifname))
    else {
        return Ok(None);
    };
    let mac = link
        .get("address")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mtu = link
        .get("mtu")
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| format!("interface {ifname} has no numeric \"mtu\""))?;
    let mut ips = Vec::new();
    for (i, a) in link
        .get("addr_info")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let scope = a.get("scope").and_then(Value::as_str).unwrap_or("global");
        if scope == "link" || scope == "host" {
            continue;
        }
        let local = a
            .get("local")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("addr_info[{i}] of {ifname} has no \"local\""))?;
        let addr: IpAddr = local
            .parse()
            .map_err(|_| format!("addr_info[{i}].local = {local:?} of {ifname} is not an IP"))?;
        let prefix = a
            .get("prefixlen")
            .and_then(Value::as_u64)
            .and_then(|p| u8::try_from(p).ok())
            .ok_or_else(|| format!("addr_info[{i}] of {ifname} has no numeric \"prefixlen\""))?;
        let net = IpNet::new(addr, prefix)
            .map_err(|_| format!("addr_info[{i}] of {ifname}: bad prefix {local}/{prefix}"))?;
        ips.push(net);
    }
    Ok(Some(IfaceFacts {
        name: ifname.to_string(),
        mac,
        mtu,
        ips,
    }))
}

/// One interface as `ip -j link show` prints it (the fields the probes
/// use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// `ifindex`.
    pub ifindex: u32,
    /// `ifname`.
    pub ifname: String,
    /// `link_index`: for a veth, the peer's ifindex (in the peer's
    /// namespace).
    pub link_index: Option<u32>,
    /// `link_netnsid`: the namespace of the peer (an id only meaningful
    /// inside this interface's namespace, see [`netns_ids`]).
    pub link_netnsid: Option<i64>,
    /// `master`: the bridge the interface is a port of.
    pub master: Option<String>,
}

/// The JSON of `ip -j link show ...` as [`Link`]s.
pub fn ip_links(json: &str) -> Result<Vec<Link>, String> {
    let links: Vec<Value> =
        serde_json::from_str(json).map_err(|e| format!("not a JSON list of interfaces: {e}"))?;
    links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let num = |k: &str| {
                l.get(k)
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
            };
            Ok(Link {
                ifindex: num("ifindex").ok_or_else(|| format!("[{i}] has no \"ifindex\""))?,
                ifname: l
                    .get("ifname")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("[{i}] has no \"ifname\""))?
                    .to_string(),
                link_index: num("link_index"),
                link_netnsid: l.get("link_netnsid").and_then(Value::as_i64),
                master: l.get("master").and_then(Value::as_str).map(str::to_string),
            })
        })
        .collect()
}

/// The JSON of `ip -n NS -j netns list-id`: the namespace ids NS uses
/// for other named namespaces, id -> name.
pub fn netns_ids(json: &str) -> Result<BTreeMap<i64, String>, String> {
    let text = json.trim();
    if text.is_empty() {
        return Ok(BTreeMap::new());
    }
    let ids: Vec<Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON list of ids: {e}"))?;
    Ok(ids
        .iter()
        .filter_map(|e| {
            Some((
                e.get("nsid")?.as_i64()?,
                e.get("name")?.as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Whether `ip -j -d link show dev BRIDGE` says IGMP/MLD snooping is on
/// (`linkinfo.info_data.mcast_snooping`); `None` when the interface is not
/// a Linux bridge.
pub fn linux_bridge_snooping(json: &str) -> Result<Option<bool>, String> {
    let links: Vec<Value> =
        serde_json::from_str(json).map_err(|e| format!("not a JSON list of interfaces: {e}"))?;
    let Some(link) = links.first() else {
        return Ok(None);
    };
    let info = link.get("linkinfo");
    if info
        .and_then(|i| i.get("info_kind"))
        .and_then(Value::as_str)
        != Some("bridge")
    {
        return Ok(None);
    }
    Ok(Some(
        info.and_then(|i| i.get("info_data"))
            .and_then(|d| d.get("mcast_snooping"))
            .and_then(Value::as_u64)
            .is_some_and(|v| v != 0),
    ))
}

/// A multicast group a switch learned on one of its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdbEntry {
    /// The port: a name (Linux bridge) or an OpenFlow port number (OVS).
    pub port: String,
    /// The VLAN (0 when untagged or unknown).
    pub vlan: u16,
    /// The group address.
    pub group: IpAddr,
}

/// The text of `ovs-appctl mdb/show BRIDGE`:
///
/// ```text
///  port  VLAN  GROUP                Age
///     1   100  239.1.1.1           1
///     2     0  querier             3
/// ```
///
/// Querier rows and the heading are skipped; rows that do not parse are
/// ignored (the table is informational, its layout may grow columns).
pub fn ovs_mdb(text: &str) -> Vec<MdbEntry> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let port = cols.next()?;
            let vlan: u16 = cols.next()?.parse().ok()?;
            let group: IpAddr = cols.next()?.parse().ok()?;
            Some(MdbEntry {
                port: port.to_string(),
                vlan,
                group,
            })
        })
        .collect()
}

/// The JSON of `bridge -j mdb show dev BRIDGE`:
/// `[{"mdb": [{"port": "vc", "grp": "239.1.1.1", "vid": 5, ...}], "router": {}}]`.
pub fn bridge_mdb(json: &str) -> Result<Vec<MdbEntry>, String> {
    let text = json.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let blocks: Vec<Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON list: {e}"))?;
    let mut out = Vec::new();
    for b in &blocks {
        for e in b
            .get("mdb")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let (Some(port), Some(grp)) = (
                e.get("port").and_then(Value::as_str),
                e.get("grp").and_then(Value::as_str),
            ) else {
                continue;
            };
            let Ok(group) = grp.parse::<IpAddr>() else {
                continue;
            };
            let vlan = e
                .get("vid")
                .and_then(Value::as_u64)
                .and_then(|v| u16::try_from(v).ok())
                .unwrap_or(0);
            out.push(MdbEntry {
                port: port.to_string(),
                vlan,
                group,
            });
        }
    }
    Ok(out)
}

/// The rows of `ovs-vsctl --format=json list TABLE`, each as column name
/// -> value.
fn ovs_rows(json: &str) -> Result<Vec<BTreeMap<String, Value>>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let headings: Vec<String> = v
        .get("headings")
        .and_then(Value::as_array)
        .ok_or("no \"headings\" list")?
        .iter()
        .map(|h| {
            h.as_str()
                .map(str::to_string)
                .ok_or("a heading is not a string")
        })
        .collect::<Result<_, _>>()?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or("no \"data\" list")?;
    data.iter()
        .map(|row| {
            let cells = row.as_array().ok_or("a row is not a list")?;
            Ok(headings
                .iter()
                .cloned()
                .zip(cells.iter().cloned())
                .collect())
        })
        .collect()
}

/// An OVSDB map (`["map", [[k, v], ...]]`) as strings.
fn ovs_map(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Array(a)) = v {
        if a.first().and_then(Value::as_str) == Some("map") {
            for pair in a
                .get(1)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let (Some(k), Some(v)) = (
                    pair.get(0).and_then(Value::as_str),
                    pair.get(1).and_then(Value::as_str),
                ) {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
    }
    out
}

/// An OVSDB optional integer (a number, or `["set", []]` when empty).
fn ovs_opt_int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::Array(a) if a.first().and_then(Value::as_str) == Some("set") => a
            .get(1)
            .and_then(Value::as_array)
            .and_then(|s| s.first())
            .and_then(Value::as_i64),
        _ => None,
    }
}

/// The Spur access ports (`external_ids:spur.dev/role=access`) among the
/// rows of `ovs-vsctl --format=json --columns=name,tag,external_ids list
/// Port`.
pub fn ovs_access_ports(json: &str) -> Result<Vec<AccessPort>, String> {
    let mut out = Vec::new();
    for (i, row) in ovs_rows(json)?.iter().enumerate() {
        let external_ids = ovs_map(row.get("external_ids"));
        if external_ids.get(ROLE_KEY).map(String::as_str) != Some(ROLE_ACCESS) {
            continue;
        }
        let name = row
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("row [{i}] has no \"name\""))?
            .to_string();
        let tag = match ovs_opt_int(row.get("tag")) {
            None => 0,
            Some(t) => u16::try_from(t).map_err(|_| format!("port {name}: tag {t} is no VLAN"))?,
        };
        out.push(AccessPort {
            name,
            tag,
            external_ids,
        });
    }
    Ok(out)
}

/// Port name -> access VLAN (0 when untagged), for every port among the
/// rows of `ovs-vsctl --format=json --columns=name,tag list Port` (the
/// emulated SR-IOV NICs' representors carry no Spur role).
pub fn ovs_port_tags(json: &str) -> Result<BTreeMap<String, u16>, String> {
    let mut out = BTreeMap::new();
    for (i, row) in ovs_rows(json)?.iter().enumerate() {
        let name = row
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("row [{i}] has no \"name\""))?;
        let tag = match ovs_opt_int(row.get("tag")) {
            None => 0,
            Some(t) => u16::try_from(t).map_err(|_| format!("port {name}: tag {t} is no VLAN"))?,
        };
        out.insert(name.to_string(), tag);
    }
    Ok(out)
}

/// Interface name -> OpenFlow port number, from `ovs-vsctl --format=json
/// --columns=name,ofport list Interface` (interfaces without a port
/// number are left out).
pub fn ovs_ofports(json: &str) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for row in ovs_rows(json)? {
        if let (Some(name), Some(ofport)) = (
            row.get("name").and_then(Value::as_str),
            ovs_opt_int(row.get("ofport")),
        ) {
            out.insert(name.to_string(), ofport);
        }
    }
    Ok(out)
}

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// True when `frame` (a whole Ethernet frame, 802.1Q tags allowed) carries
/// a UDP datagram to `group`:`port` whose payload starts with `token`.
pub fn frame_matches(frame: &[u8], group: IpAddr, port: u16, token: &[u8]) -> bool {
    let mut at = 12;
    let mut ethertype = match be16(frame, at) {
        Some(t) => t,
        None => return false,
    };
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        at += 4;
        ethertype = match be16(frame, at) {
            Some(t) => t,
            None => return false,
        };
    }
    let ip = &frame[(at + 2).min(frame.len())..];
    let udp = match (ethertype, group) {
        (ETH_P_IP, IpAddr::V4(g)) => {
            let Some(&vihl) = ip.first() else {
                return false;
            };
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                return false;
            }
            // A later fragment carries no UDP header.
            let frag_offset = be16(ip, 6).unwrap_or(0) & 0x1fff;
            if ip[9] != IPPROTO_UDP || frag_offset != 0 {
                return false;
            }
            if Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]) != g {
                return false;
            }
            &ip[ihl..]
        }
        (ETH_P_IPV6, IpAddr::V6(g)) => {
            if ip.len() < 40 || ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
                return false;
            }
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&ip[24..40]);
            if Ipv6Addr::from(dst) != g {
                return false;
            }
            &ip[40..]
        }
        _ => return false,
    };
    if be16(udp, 2) != Some(port) || udp.len() < 8 {
        return false;
    }
    udp[8..].starts_with(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const IP_ADDR: &str = r#"[{"ifindex":2,"link_index":2,"ifname":"eth0","mtu":1500,
        "address":"82:ef:ee:a2:23:08","addr_info":[
        {"family":"inet","local":"10.244.1.2","prefixlen":24,"scope":"global"},
        {"family":"inet6","local":"fd00::5","prefixlen":64,"scope":"global","tentative":true},
        {"family":"inet6","local":"fe80::80ef:eeff:fea2:2308","prefixlen":64,"scope":"link"}]}]"#;

    #[test]
    fn ip_addr_keeps_global_addresses() {
        let f = ip_addr(IP_ADDR, "eth0").unwrap().unwrap();
        assert_eq!(f.mac, "82:ef:ee:a2:23:08");
        assert_eq!(f.mtu, 1500);
        assert_eq!(
            f.ips,
            vec![
                "10.244.1.2/24".parse::<IpNet>().unwrap(),
                "fd00::5/64".parse().unwrap()
            ]
        );
        assert_eq!(ip_addr(IP_ADDR, "eth1").unwrap(), None);
        assert!(ip_addr("{", "eth0").unwrap_err().contains("JSON"));
        let bad = r#"[{"ifname":"eth0","mtu":1500,"addr_info":[{"local":"x","prefixlen":1}]}]"#;
        let e = ip_addr(bad, "eth0").unwrap_err();
        assert!(
            e.contains("addr_info[0].local") && e.contains("\"x\""),
            "{e}"
        );
    }

    #[test]
    fn links_and_bridges() {
        let j = r#"[{"ifindex":3,"link_index":2,"ifname":"va","master":"br0"},{"ifindex":1,"ifname":"lo"}]"#;
        let l = ip_links(j).unwrap();
        assert_eq!(l[0].link_index, Some(2));
        assert_eq!(l[0].master.as_deref(), Some("br0"));
        assert_eq!(l[1].link_index, None);
        assert_eq!(l[0].link_netnsid, None);
        let l =
            ip_links(r#"[{"ifindex":2,"link_index":4,"ifname":"eth1","link_netnsid":0}]"#).unwrap();
        assert_eq!(l[0].link_netnsid, Some(0));
        let ids = netns_ids(r#"[{"nsid":0,"name":"sw"},{"nsid":1}]"#).unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[&0], "sw");
        assert!(netns_ids("").unwrap().is_empty());
        let br = r#"[{"ifname":"br0","linkinfo":{"info_kind":"bridge","info_data":{"mcast_snooping":1}}}]"#;
        assert_eq!(linux_bridge_snooping(br).unwrap(), Some(true));
        let off = br.replace("\"mcast_snooping\":1", "\"mcast_snooping\":0");
        assert_eq!(linux_bridge_snooping(&off).unwrap(), Some(false));
        let veth = r#"[{"ifname":"v","linkinfo":{"info_kind":"veth"}}]"#;
        assert_eq!(linux_bridge_snooping(veth).unwrap(), None);
    }

    #[test]
    fn mdb_tables() {
        let ovs = " port  VLAN  GROUP                Age\n    1   100  ff02::1:ff64:b76           2\n    1   100  239.1.1.1           1\n    3     0  querier             4\n";
        let e = ovs_mdb(ovs);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].port, "1");
        assert_eq!(e[1].vlan, 100);
        assert_eq!(e[1].group, "239.1.1.1".parse::<IpAddr>().unwrap());
        let lb = r#"[{"mdb":[{"index":2,"dev":"br0","port":"vc","grp":"239.1.1.1","state":"temp"},
                     {"index":2,"dev":"br0","port":"vb","grp":"239.1.1.2","vid":7}],"router":{}}]"#;
        let e = bridge_mdb(lb).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].port.as_str(), e[0].vlan), ("vc", 0));
        assert_eq!(e[1].vlan, 7);
        assert!(bridge_mdb("").unwrap().is_empty());
    }

    #[test]
    fn ovs_tables() {
        let ports = r#"{"data":[["br0",["set",[]],["map",[]]],
            ["p1",100,["map",[["spur.dev/pod-name","x"],["spur.dev/role","access"]]]],
            ["p2",["set",[]],["map",[["spur.dev/role","access"]]]],
            ["up",["set",[]],["map",[["spur.dev/role","uplink"]]]]],
            "headings":["name","tag","external_ids"]}"#;
        let a = ovs_access_ports(ports).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].name.as_str(), a[0].tag), ("p1", 100));
        assert_eq!(a[0].external_ids["spur.dev/pod-name"], "x");
        assert_eq!((a[1].name.as_str(), a[1].tag), ("p2", 0));
        let ifs =
            r#"{"data":[["br0",65534],["p1",1],["new",["set",[]]]],"headings":["name","ofport"]}"#;
        let o = ovs_ofports(ifs).unwrap();
        assert_eq!(o.get("p1"), Some(&1));
        assert_eq!(o.get("new"), None);
        assert!(ovs_access_ports("{}").unwrap_err().contains("headings"));
    }

    fn udp4(group: [u8; 4], port: u16, payload: &[u8], tagged: bool) -> Vec<u8> {
        let mut f = vec![0x01, 0x00, 0x5e, 1, 1, 1, 2, 0, 0, 0, 0, 1];
        if tagged {
            f.extend([0x81, 0x00, 0x00, 100]);
        }
        f.extend([0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 1, 17, 0, 0, 10, 0, 0, 1];
        ip.extend(group);
        f.extend(ip);
        f.extend(5000u16.to_be_bytes());
        f.extend(port.to_be_bytes());
        f.extend([0, 0, 0, 0]);
        f.extend(payload);
        f
    }

    #[test]
    fn frames() {
        let g: IpAddr = "239.1.1.1".parse().unwrap();
        let f = udp4([239, 1, 1, 1], 4242, b"tok-1", false);
        assert!(frame_matches(&f, g, 4242, b"tok"));
        assert!(frame_matches(
            &udp4([239, 1, 1, 1], 4242, b"tok-1", true),
            g,
            4242,
            b"tok"
        ));
        assert!(!frame_matches(&f, g, 4243, b"tok"));
        assert!(!frame_matches(&f, g, 4242, b"other"));
        assert!(!frame_matches(
            &f,
            "239.1.1.2".parse().unwrap(),
            4242,
            b"tok"
        ));
        assert!(!frame_matches(&f, "ff0e::1".parse().unwrap(), 4242, b"tok"));
        assert!(!frame_matches(&f[..20], g, 4242, b"tok"));
        assert!(!frame_matches(&[], g, 4242, b""));
        // IPv6
        let g6: Ipv6Addr = "ff0e::1:2".parse().unwrap();
        let mut f6 = vec![0x33, 0x33, 0, 1, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 13, 17, 1];
        ip6.extend([0u8; 16]);
        ip6.extend(g6.octets());
        f6.extend(ip6);
        f6.extend(1u16.to_be_bytes());
        f6.extend(4242u16.to_be_bytes());
        f6.extend([0, 13, 0, 0]);
        f6.extend(b"tok-2");
        assert!(frame_matches(&f6, IpAddr::V6(g6), 4242, b"tok"));
        assert!(!frame_matches(&f6, g, 4242, b"tok"));
    }

    #[test]
    fn port_tags_of_every_port() {
        let json = r#"{"data":[["ens1f0r0",100],["ens1f0r1",["set",[]]],["ens1f0u",["set",[]]]],"headings":["name","tag"]}"#;
        let tags = ovs_port_tags(json).unwrap();
        assert_eq!(tags.get("ens1f0r0"), Some(&100));
        assert_eq!(tags.get("ens1f0r1"), Some(&0));
        assert_eq!(tags.len(), 3);
        assert!(
            ovs_port_tags(r#"{"data":[["p",70000]],"headings":["name","tag"]}"#)
                .unwrap_err()
                .contains("70000")
        );
    }
}
