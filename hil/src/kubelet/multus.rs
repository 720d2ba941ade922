//! The Multus-like runner's decisions, pure: the delegate each selection
//! element becomes (its interface, CNI config, `CNI_ARGS` and
//! `runtimeConfig`), Multus's `default-route` bookkeeping, and the
//! network-status entry of each attached network.
//!
//! What Multus does and this module copies (Multus 4.x, `pkg/types` and
//! `pkg/multus`):
//!
//! - the NetworkAttachmentDefinition's config, a plugin config or a
//!   conflist, named after the NAD when it has no `name`;
//! - `cni-args` injected into every plugin config as `"args": {"cni": {...}}`
//!   (merged into an existing `args.cni`);
//! - `mac`, `ips`, `portMappings`, `bandwidth` and `infiniband-guid` as
//!   capability arguments (`runtimeConfig`, for plugins that declare the
//!   capability), and `mac` / `ips` also as the deprecated `CNI_ARGS`
//!   `MAC=...` and `IP=a,b`;
//! - `default-route`: at most one gateway per family over all elements;
//!   every other attachment, the primary one included, loses its default
//!   route of that family, and the element's interface gets a default
//!   route through each gateway;
//! - the network-status entry from the delegate's result: the interface
//!   with a `sandbox`, every address of the result, the default routes'
//!   gateways, the DNS settings.
//!
//! - `deviceID`: for each element whose NetworkAttachmentDefinition names a
//!   device-plugin resource (annotation `k8s.v1.cni.cncf.io/resourceName`),
//!   one of the devices the kubelet assigned the Pod goes into the
//!   delegate's config ([`device_ids`], [`set_device_id`]). Unlike Multus,
//!   which takes them in the kubelet's order, the k-th element of a
//!   resource gets the k-th device in PCI address order, as Spur's agent
//!   pairs them in native mode, so both modes give a Pod the same VFs.
//!
//! What it does not: `CNIDeviceInfoFile`, per-namespace isolation rules
//! and `defaultNetworks` (the harness has one cluster network). Running plugins lives in the `cni` module, the API in the
//! kubelet.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};
use spur_core::cniproto::CniResult;
use spur_core::selection::SelectionElement;
use spur_core::sriov::PciAddress;
use spur_core::status::{Dns, NetworkStatus};

use super::cni::NetConfList;

/// The name of the cluster (primary) network: the conflist name of the
/// primary CNI and the name of its network-status entry.
pub const PRIMARY_NETWORK: &str = "k8s-pod-network";

/// One network to attach to a Pod and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegate {
    /// The network: NAD `namespace/name`, or [`PRIMARY_NETWORK`].
    pub network: String,
    /// The interface inside the Pod (`CNI_IFNAME`).
    pub ifname: String,
    /// The CNI config.
    pub list: NetConfList,
    /// `CNI_ARGS` pairs after the Kubernetes ones (`MAC`, `IP`).
    pub extra_args: Vec<(String, String)>,
    /// Capability arguments (`runtimeConfig`).
    pub capability_args: Map<String, Value>,
    /// Gateways of the Pod's default route through this network
    /// (`default-route`).
    pub gateways: Vec<IpAddr>,
    /// Its IPv4 default route is removed after ADD.
    pub filter_v4: bool,
    /// Its IPv6 default route is removed after ADD.
    pub filter_v6: bool,
    /// True for the Pod's primary network.
    pub primary: bool,
}

impl Delegate {
    /// The primary network's delegate: `list` on `eth0`.
    pub fn primary(list: NetConfList) -> Delegate {
        Delegate {
            network: PRIMARY_NETWORK.to_string(),
            ifname: spur_core::selection::PRIMARY_INTERFACE.to_string(),
            list,
            extra_args: Vec::new(),
            capability_args: Map::new(),
            gateways: Vec::new(),
            filter_v4: false,
            filter_v6: false,
            primary: true,
        }
    }

    /// The families whose default routes on this interface go after ADD
    /// (a gateway request replaces the interface's own defaults of both).
    pub fn default_routes_to_delete(&self) -> (bool, bool) {
        let asks = !self.gateways.is_empty();
        (self.filter_v4 || asks, self.filter_v6 || asks)
    }
}

/// The delegate of selection element `element`, whose
/// NetworkAttachmentDefinition holds `nad_config` (its `spec.config`).
pub fn delegate(element: &SelectionElement, nad_config: &str) -> Result<Delegate, String> {
    let mut config: Value =
        serde_json::from_str(nad_config).map_err(|e| format!("spec.config is not JSON: {e}"))?;
    if let Some(args) = &element.cni_args {
        let Value::Object(args) = args else {
            return Err(format!("cni-args = {args} is not a JSON object"));
        };
        inject_cni_args(&mut config, args)?;
    }
    let list = NetConfList::from_config(&config, &element.name)
        .map_err(|e| format!("spec.config: {e}"))?;
    let mut extra_args = Vec::new();
    let mut caps = Map::new();
    if let Some(mac) = element.mac {
        extra_args.push(("MAC".to_string(), mac.to_string()));
        caps.insert("mac".into(), Value::from(mac.to_string()));
    }
    if !element.ips.is_empty() {
        let ips: Vec<String> = element.ips.iter().map(ToString::to_string).collect();
        extra_args.push(("IP".to_string(), ips.join(",")));
        caps.insert("ips".into(), Value::from(ips));
    }
    if let Some(pm) = &element.port_mappings {
        caps.insert("portMappings".into(), pm.clone());
    }
    if let Some(bw) = &element.bandwidth {
        caps.insert("bandwidth".into(), bw.clone());
    }
    if let Some(guid) = &element.infiniband_guid {
        caps.insert("infinibandGUID".into(), Value::from(guid.as_str()));
    }
    Ok(Delegate {
        network: element.network(),
        ifname: element.interface.clone(),
        list,
        extra_args,
        capability_args: caps,
        gateways: element.default_route.clone(),
        filter_v4: false,
        filter_v6: false,
        primary: false,
    })
}

/// Merges `args` into `"args": {"cni": {...}}` of every plugin config of
/// `config` (a plugin config or a conflist).
fn inject_cni_args(config: &mut Value, args: &Map<String, Value>) -> Result<(), String> {
    fn one(plugin: &mut Value, args: &Map<String, Value>, key: &str) -> Result<(), String> {
        let Value::Object(p) = plugin else {
            return Err(format!("{key} is not a JSON object"));
        };
        let outer = p.entry("args").or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(outer) = outer else {
            return Err(format!("{key}.args is not a JSON object"));
        };
        let cni = outer
            .entry("cni")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(cni) = cni else {
            return Err(format!("{key}.args.cni is not a JSON object"));
        };
        for (k, v) in args {
            cni.insert(k.clone(), v.clone());
        }
        Ok(())
    }
    match config.get_mut("plugins") {
        Some(Value::Array(plugins)) => {
            for (i, p) in plugins.iter_mut().enumerate() {
                one(p, args, &format!("spec.config.plugins[{i}]"))?;
            }
            Ok(())
        }
        _ => one(config, args, "spec.config"),
    }
}

/// Multus's `CheckGatewayConfig`: when an element asks for the default
/// route, at most one gateway per family may be asked for, and every
/// delegate without a gateway of a family loses its default route of that
/// family. Nothing changes when no element asks.
pub fn check_gateways(delegates: &mut [Delegate]) -> Result<(), String> {
    if delegates.iter().all(|d| d.gateways.is_empty()) {
        return Ok(());
    }
    let all: Vec<&IpAddr> = delegates.iter().flat_map(|d| d.gateways.iter()).collect();
    let v4 = all.iter().filter(|g| g.is_ipv4()).count();
    let v6 = all.len() - v4;
    if v4 > 1 || v6 > 1 {
        return Err(format!(
            "default-route asks for {v4} IPv4 and {v6} IPv6 gateways; at most one of each \
             (Multus does not support ECMP for default-route)"
        ));
    }
    for d in delegates.iter_mut() {
        d.filter_v4 = !d.gateways.iter().any(IpAddr::is_ipv4);
        d.filter_v6 = !d.gateways.iter().any(IpAddr::is_ipv6);
    }
    Ok(())
}

/// The network-status entry of `delegate` from its ADD `result` (any CNI
/// version from 0.3.0): the result's interface inside the sandbox (its
/// name and MAC; the delegate's interface name when none has a sandbox),
/// every address, the gateways of its default routes and its DNS.
pub fn network_status(delegate: &Delegate, result: &Value) -> NetworkStatus {
    let mut status = NetworkStatus {
        default: delegate.primary,
        interface: Some(delegate.ifname.clone()),
        ..NetworkStatus::new(delegate.network.clone())
    };
    let Ok(r) = CniResult::parse(result) else {
        return status;
    };
    if let Some(i) = r
        .interfaces
        .iter()
        .rev()
        .find(|i| i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    {
        status.interface = Some(i.name.clone());
        status.mac = i.mac.clone();
        status.mtu = i.mtu;
    }
    status.ips = r.ips.iter().map(|ip| ip.address.addr()).collect();
    status.gateway = r
        .routes
        .iter()
        .filter(|route| route.dst.prefix_len() == 0)
        .filter_map(|route| {
            route.gw.or_else(|| {
                // A default route without gw uses the address's gateway.
                r.ips
                    .iter()
                    .find(|ip| ip.address.addr().is_ipv4() == route.dst.addr().is_ipv4())
                    .and_then(|ip| ip.gateway)
            })
        })
        .collect();
    status.dns = Dns {
        nameservers: r.dns.nameservers.iter().map(ToString::to_string).collect(),
        domain: r.dns.domain.clone(),
        search: r.dns.search.clone(),
        options: r.dns.options.clone(),
    };
    status
}

/// What Multus reads of a NetworkAttachmentDefinition `ns/name`: its
/// `spec.config` and its device-plugin resource (the
/// [`RESOURCE_NAME_ANNOTATION`], when set). A NAD without a config (Multus
/// can read one from files on the node) is an error naming it.
pub fn nad_parts(
    obj: &kube::api::DynamicObject,
    ns: &str,
    name: &str,
) -> Result<(String, Option<String>), String> {
    let resource = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESOURCE_NAME_ANNOTATION))
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    obj.data
        .get("spec")
        .and_then(|s| s.get("config"))
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .map(|c| (c.to_string(), resource))
        .ok_or_else(|| {
            format!(
                "NetworkAttachmentDefinition {ns}/{name} has no spec.config (configs from \
                 files on the node are not supported)"
            )
        })
}

/// The NetworkAttachmentDefinition annotation naming the device-plugin
/// resource its network's devices come from.
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";

/// The `deviceID` of each selection element, in the elements' order.
///
/// `elements` gives, per element, its network (`namespace/name`, for
/// messages) and the resource its NetworkAttachmentDefinition names (`None`:
/// no `resourceName`, no device). `allocation` holds the device IDs the
/// kubelet assigned the Pod, by resource, in any order. The k-th element of
/// a resource gets the k-th of its devices in PCI address order (device
/// IDs that are not PCI addresses after those, in text order), so the
/// answer does not depend on the order the kubelet lists them in.
///
/// Fails, naming the resource, the networks and how many to request,
/// when a resource has fewer devices than elements asking for it.
pub fn device_ids(
    elements: &[(&str, Option<&str>)],
    allocation: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<Option<String>>, String> {
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (network, resource) in elements {
        if let Some(r) = resource {
            wanted.entry(r).or_default().push(network);
        }
    }
    let mut sorted: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (resource, networks) in &wanted {
        let mut ids: Vec<&String> = allocation
            .get(*resource)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        ids.sort_by_key(|id| {
            let pci = id.parse::<PciAddress>().ok();
            (pci.is_none(), pci, (*id).clone())
        });
        ids.dedup();
        if ids.len() < networks.len() {
            return Err(format!(
                "{} network(s) ({}) take devices of resource {resource}, but the kubelet \
                 assigned the Pod {} device(s) of it: request {resource}: {} in the Pod's \
                 container resources",
                networks.len(),
                networks.join(", "),
                ids.len(),
                networks.len()
            ));
        }
        sorted.insert(resource, ids.into_iter().cloned().collect());
    }
    let mut next: BTreeMap<&str, usize> = BTreeMap::new();
    Ok(elements
        .iter()
        .map(|(_, resource)| {
            let r = (*resource)?;
            let k = next.entry(r).or_default();
            let id = sorted.get(r).and_then(|ids| ids.get(*k)).cloned();
            *k += 1;
            id
        })
        .collect())
}

/// Puts `"deviceID": id` into the delegate's config as Multus does: into
/// its first plugin config (the only one of a single plugin config).
pub fn set_device_id(delegate: &mut Delegate, id: &str) {
    if let Some(Value::Object(first)) = delegate.list.plugins.first_mut() {
        first.insert("deviceID".to_string(), Value::from(id));
    }
}

/// The addresses of an ADD result with their prefix lengths (empty when
/// it does not parse).
pub fn result_ips(result: &Value) -> Vec<IpNet> {
    CniResult::parse(result)
        .map(|r| r.ips.iter().map(|ip| ip.address).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use spur_core::selection::{parse, Naming};

    fn element(annotation: &str) -> SelectionElement {
        parse(annotation, "default", "web-0", Naming::Multus)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn delegates_carry_mac_ips_and_cni_args() {
        let e = element(
            r#"[{"name": "macvlan-a", "mac": "0a:58:00:00:00:05", "ips": ["10.20.0.9/24"],
                 "cni-args": {"foo": "bar"}, "bandwidth": {"ingressRate": 1000}}]"#,
        );
        let d = delegate(
            &e,
            r#"{"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1",
                "args": {"cni": {"keep": 1}}, "ipam": {"type": "host-local"}}"#,
        )
        .unwrap();
        assert_eq!(d.network, "default/macvlan-a");
        assert_eq!(d.ifname, "net1");
        assert_eq!(d.list.name, "macvlan-a");
        assert_eq!(
            d.list.plugins[0]["args"]["cni"],
            json!({"keep": 1, "foo": "bar"})
        );
        assert_eq!(
            d.extra_args,
            vec![
                ("MAC".to_string(), "0a:58:00:00:00:05".to_string()),
                ("IP".to_string(), "10.20.0.9/24".to_string())
            ]
        );
        assert_eq!(d.capability_args["mac"], "0a:58:00:00:00:05");
        assert_eq!(d.capability_args["ips"], json!(["10.20.0.9/24"]));
        assert_eq!(d.capability_args["bandwidth"], json!({"ingressRate": 1000}));
    }

    #[test]
    fn conflists_get_cni_args_in_every_plugin() {
        let e = element(r#"[{"name": "br", "interface": "sec0", "cni-args": {"a": 1}}]"#);
        let d = delegate(
            &e,
            r#"{"cniVersion": "0.4.0", "name": "mybr", "plugins": [{"type": "bridge"}, {"type": "tuning"}]}"#,
        )
        .unwrap();
        assert_eq!(d.ifname, "sec0");
        assert_eq!(d.list.name, "mybr");
        assert!(d.list.plugins.iter().all(|p| p["args"]["cni"]["a"] == 1));
        for (config, want) in [
            ("{", "not JSON"),
            (r#"{"name": "x"}"#, "neither"),
            (r#"{"type": "bridge", "args": 3}"#, "args is not"),
        ] {
            let e = delegate(&e, config).unwrap_err();
            assert!(e.contains(want), "{config}: {e}");
        }
    }

    #[test]
    fn default_route_bookkeeping() {
        let list = NetConfList {
            name: PRIMARY_NETWORK.into(),
            cni_version: "1.0.0".into(),
            plugins: vec![json!({"type": "ptp"})],
        };
        let mut ds = vec![Delegate::primary(list.clone())];
        let mut sec = Delegate::primary(list);
        sec.primary = false;
        sec.network = "default/a".into();
        sec.ifname = "net1".into();
        ds.push(sec);
        check_gateways(&mut ds).unwrap();
        assert!(ds.iter().all(|d| !d.filter_v4 && !d.filter_v6));
        assert_eq!(ds[0].default_routes_to_delete(), (false, false));
        ds[1].gateways = vec!["10.20.0.1".parse().unwrap()];
        check_gateways(&mut ds).unwrap();
        assert_eq!((ds[0].filter_v4, ds[0].filter_v6), (true, true));
        assert_eq!((ds[1].filter_v4, ds[1].filter_v6), (false, true));
        assert_eq!(ds[1].default_routes_to_delete(), (true, true));
        ds[0].gateways = vec!["10.244.0.1".parse().unwrap()];
        let e = check_gateways(&mut ds).unwrap_err();
        assert!(e.contains("2 IPv4"), "{e}");
    }

    #[test]
    fn devices_go_to_the_elements_of_their_resource_in_pci_order() {
        let allocation = BTreeMap::from([
            (
                "intel.com/a".to_string(),
                vec![
                    "0000:3b:02.1".to_string(),
                    "0000:3b:01.7".to_string(),
                    "0000:3b:02.0".to_string(),
                ],
            ),
            ("intel.com/b".to_string(), vec!["0000:3c:01.0".to_string()]),
        ]);
        let got = device_ids(
            &[
                ("default/a1", Some("intel.com/a")),
                ("default/plain", None),
                ("default/b", Some("intel.com/b")),
                ("default/a2", Some("intel.com/a")),
            ],
            &allocation,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Some("0000:3b:01.7".to_string()),
                None,
                Some("0000:3c:01.0".to_string()),
                Some("0000:3b:02.0".to_string()),
            ]
        );
        // The kubelet's order does not matter.
        let mut reversed = allocation.clone();
        for ids in reversed.values_mut() {
            ids.reverse();
        }
        let again = device_ids(
            &[
                ("default/a1", Some("intel.com/a")),
                ("default/plain", None),
                ("default/b", Some("intel.com/b")),
                ("default/a2", Some("intel.com/a")),
            ],
            &reversed,
        )
        .unwrap();
        assert_eq!(again, got);
        assert_eq!(
            device_ids(&[("default/plain", None)], &BTreeMap::new()).unwrap(),
            vec![None]
        );
    }

    #[test]
    fn too_few_devices_name_the_resource_and_what_to_request() {
        let allocation =
            BTreeMap::from([("intel.com/b".to_string(), vec!["0000:3c:01.0".to_string()])]);
        let e = device_ids(
            &[
                ("default/b1", Some("intel.com/b")),
                ("default/b2", Some("intel.com/b")),
            ],
            &allocation,
        )
        .unwrap_err();
        assert!(e.contains("default/b1, default/b2"), "{e}");
        assert!(e.contains("request intel.com/b: 2"), "{e}");
        let e = device_ids(&[("default/c", Some("intel.com/c"))], &allocation).unwrap_err();
        assert!(e.contains("assigned the Pod 0 device(s)"), "{e}");
    }

    #[test]
    fn the_device_id_goes_into_the_first_plugin() {
        let e = element("vf");
        let mut d = delegate(
            &e,
            r#"{"cniVersion": "1.0.0", "plugins": [{"type": "spur"}, {"type": "tuning"}]}"#,
        )
        .unwrap();
        set_device_id(&mut d, "0000:3b:01.0");
        assert_eq!(d.list.plugins[0]["deviceID"], "0000:3b:01.0");
        assert!(d.list.plugins[1].get("deviceID").is_none());
    }

    #[test]
    fn status_from_results() {
        let d = Delegate::primary(NetConfList {
            name: PRIMARY_NETWORK.into(),
            cni_version: "1.0.0".into(),
            plugins: vec![],
        });
        let r = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "veth1", "mac": "aa:aa:aa:aa:aa:aa"},
                           {"name": "eth0", "mac": "82:ef:ee:a2:23:08", "sandbox": "/var/run/netns/p"}],
            "ips": [{"interface": 1, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.96.0.10"]}});
        let s = network_status(&d, &r);
        assert!(s.default);
        assert_eq!(s.name, PRIMARY_NETWORK);
        assert_eq!(s.interface.as_deref(), Some("eth0"));
        assert_eq!(s.mac.as_deref(), Some("82:ef:ee:a2:23:08"));
        assert_eq!(s.ips, vec!["10.244.1.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.gateway, vec!["10.244.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.dns.nameservers, vec!["10.96.0.10".to_string()]);
        assert_eq!(
            result_ips(&r),
            vec!["10.244.1.2/24".parse::<IpNet>().unwrap()]
        );
        // An unreadable result still names the network and interface.
        let s = network_status(&d, &json!({"nonsense": true, "cniVersion": "9"}));
        assert_eq!(s.interface.as_deref(), Some("eth0"));
        assert!(s.ips.is_empty());
    }
}
