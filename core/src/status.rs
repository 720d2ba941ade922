//! The network-status annotation `k8s.v1.cni.cncf.io/network-status`
//! (Kubernetes Network Plumbing WG multi-net spec v1.3, in Multus's
//! format).
//!
//! A JSON list with one entry per network attached to the Pod, the primary
//! one first by convention and marked `"default": true`:
//!
//! ```text
//! [{"name": "kindnet", "interface": "eth0", "ips": ["10.244.1.5"], "mac": "0a:58:0a:f4:01:05", "default": true},
//!  {"name": "default/sriov-a", "interface": "eth1", "ips": ["10.10.0.5"], "mac": "ca:fe:00:00:00:01",
//!   "device-info": {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.1"}}}]
//! ```
//!
//! [`render`] writes it (refusing anything but exactly one default entry);
//! [`parse`] reads what Multus, Spur or another tool wrote: it ignores keys
//! it does not know but refuses values of the wrong type.
//!
//! ```
//! use spur_core::status::{parse, render, DeviceInfo, NetworkStatus};
//! use spur_core::Subject;
//! let pod = Subject::new("Pod", Some("default"), "web-0");
//! let entries = vec![
//!     NetworkStatus { default: true, interface: Some("eth0".into()), ..NetworkStatus::new("kindnet") },
//!     NetworkStatus {
//!         interface: Some("eth1".into()),
//!         device_info: Some(DeviceInfo::pci("0000:3b:02.1")),
//!         ..NetworkStatus::new("default/sriov-a")
//!     },
//! ];
//! let text = render(&entries, &pod).unwrap();
//! assert_eq!(parse(&text, &pod).unwrap(), entries);
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Invalid, Kind, Subject};
use crate::names::ifname_problem;
use crate::selection::json_type;

/// The Pod annotation that reports the attached networks.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";

/// `device-info.type` of a PCI device (an SR-IOV VF).
pub const DEVICE_TYPE_PCI: &str = "pci";

/// The device-info specification version Spur writes.
pub const DEVICE_INFO_VERSION: &str = "1.1.0";

/// The key of the annotation as it appears in error messages.
const KEY: &str = "metadata.annotations[\"k8s.v1.cni.cncf.io/network-status\"]";

/// One attached network of a Pod.
///
/// Optional strings are `None` when absent; empty strings read as absent,
/// and absent or empty values are left out when rendering (as Multus does).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct NetworkStatus {
    /// The network: `namespace/name` of the NetworkAttachmentDefinition, or
    /// the name of the cluster network for the primary entry.
    pub name: String,
    /// The interface inside the Pod.
    #[serde(skip_serializing_if = "none_or_empty")]
    pub interface: Option<String>,
    /// The addresses of the interface (without prefix length, as Multus
    /// writes them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// The hardware address of the interface, as written (InfiniBand
    /// addresses are 20 octets, so this is not a [`crate::names::Mac`]).
    #[serde(skip_serializing_if = "none_or_empty")]
    pub mac: Option<String>,
    /// The MTU of the interface, when reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// True for the Pod's primary network (omitted when false).
    #[serde(skip_serializing_if = "is_false")]
    pub default: bool,
    /// DNS settings of the network (omitted when empty).
    #[serde(skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    /// What device backs the interface (SR-IOV VFs carry their PCI address).
    #[serde(rename = "device-info", skip_serializing_if = "Option::is_none")]
    pub device_info: Option<DeviceInfo>,
    /// Gateways of the network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateway: Vec<IpAddr>,
}

/// DNS settings of a network, as in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Dns {
    /// Name servers, in priority order (passed through as written).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(skip_serializing_if = "none_or_empty")]
    pub domain: Option<String>,
    /// Search domains, in priority order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set (the entry then carries no `dns`).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && none_or_empty(&self.domain)
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The device behind an interface (device-info specification).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// The device type: `pci` for SR-IOV VFs (others, such as `vdpa`, are
    /// read but only `pci` details are kept).
    #[serde(rename = "type")]
    pub kind: String,
    /// The device-info specification version.
    pub version: String,
    /// PCI details of a `pci` device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci: Option<PciDevice>,
}

/// PCI details of a device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PciDevice {
    /// The device's PCI address, e.g. `0000:3b:02.1`.
    #[serde(rename = "pci-address", skip_serializing_if = "none_or_empty")]
    pub pci_address: Option<String>,
    /// The vhost-net device, when there is one.
    #[serde(rename = "vhost-net", skip_serializing_if = "none_or_empty")]
    pub vhost_net: Option<String>,
    /// The RDMA device, when there is one.
    #[serde(rename = "rdma-device", skip_serializing_if = "none_or_empty")]
    pub rdma_device: Option<String>,
    /// The PCI address of the VF's physical function.
    #[serde(rename = "pf-pci-address", skip_serializing_if = "none_or_empty")]
    pub pf_pci_address: Option<String>,
    /// The VF representor's netdev on the host (switchdev mode).
    #[serde(rename = "representor-device", skip_serializing_if = "none_or_empty")]
    pub representor_device: Option<String>,
}

impl NetworkStatus {
    /// An entry for network `name` with nothing else set.
    pub fn new(name: impl Into<String>) -> Self {
        NetworkStatus {
            name: name.into(),
            ..NetworkStatus::default()
        }
    }
}

impl DeviceInfo {
    /// Device info of an SR-IOV VF (or any PCI device) at `pci_address`
    /// (`0000:3b:02.1`): type `pci`, version 1.1.0.
    pub fn pci(pci_address: impl Into<String>) -> Self {
        DeviceInfo {
            kind: DEVICE_TYPE_PCI.to_string(),
            version: DEVICE_INFO_VERSION.to_string(),
            pci: Some(PciDevice {
                pci_address: Some(pci_address.into()),
                ..PciDevice::default()
            }),
        }
    }
}

fn none_or_empty(s: &Option<String>) -> bool {
    s.as_deref().is_none_or(str::is_empty)
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why `s` is not a PCI address in the `DDDD:BB:DD.F` form sysfs uses
/// (hex domain, bus, device 00-1f and function 0-7), or `None` when it is
/// one.
pub fn pci_address_problem(s: &str) -> Option<&'static str> {
    const PROBLEM: &str =
        "must be a PCI address like 0000:3b:02.1 (domain:bus:device.function, in hex)";
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let Some((rest, function)) = s.rsplit_once('.') else {
        return Some(PROBLEM);
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [domain, bus, device] = parts.as_slice() else {
        return Some(PROBLEM);
    };
    if !(hex(domain, 4) && hex(bus, 2) && hex(device, 2) && hex(function, 1)) {
        return Some(PROBLEM);
    }
    match (
        u8::from_str_radix(device, 16),
        u8::from_str_radix(function, 16),
    ) {
        (Ok(d), Ok(f)) if d <= 0x1f && f <= 7 => None,
        _ => Some(PROBLEM),
    }
}

/// Validates and renders the annotation value for Pod `pod`.
///
/// Exactly one entry must have `default: true` (the Pod's primary
/// network); every entry needs a name; interface names must be valid and
/// distinct; PCI addresses in `device-info` must look like `0000:3b:02.1`.
pub fn render(entries: &[NetworkStatus], pod: &Subject) -> Result<String, Invalid> {
    let mut default: Option<usize> = None;
    let mut interfaces: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let key = format!("{KEY}[{i}]");
        if e.name.is_empty() {
            return Err(pod.missing(format!("{key}.name")));
        }
        if let Some(ifname) = e.interface.as_deref().filter(|s| !s.is_empty()) {
            if let Some(problem) = ifname_problem(ifname) {
                return Err(pod.invalid(format!("{key}.interface"), ifname, problem));
            }
            if let Some(&other) = interfaces.get(ifname) {
                return Err(pod.conflict(
                    format!("{key}.interface"),
                    ifname,
                    format!(
                        "entry [{other}] ({}) already reports this interface; each interface of a \
                         Pod appears in one entry only",
                        entries[other].name
                    ),
                ));
            }
            interfaces.insert(ifname, i);
        }
        if let Some(pci) = e.device_info.as_ref().and_then(|d| d.pci.as_ref()) {
            for (field, value) in [
                ("pci-address", &pci.pci_address),
                ("pf-pci-address", &pci.pf_pci_address),
            ] {
                if let Some(v) = value.as_deref().filter(|s| !s.is_empty()) {
                    if let Some(problem) = pci_address_problem(v) {
                        return Err(pod.invalid(
                            format!("{key}.device-info.pci.{field}"),
                            v,
                            problem,
                        ));
                    }
                }
            }
        }
        if e.default {
            if let Some(first) = default {
                return Err(pod.conflict(
                    format!("{key}.default"),
                    true,
                    format!(
                        "entry [{first}] ({}) is already the default network; exactly one \
                         entry (the Pod's primary network) may have \"default\": true",
                        entries[first].name
                    ),
                ));
            }
            default = Some(i);
        }
    }
    if default.is_none() {
        return Err(pod.error(
            Kind::Invalid,
            KEY,
            None,
            "no entry has \"default\": true; exactly one entry (the Pod's primary network) \
             must have it",
        ));
    }
    serde_json::to_string(entries)
        .map_err(|e| pod.error(Kind::Invalid, KEY, None, format!("cannot be encoded: {e}")))
}

/// Parses the annotation value of Pod `pod`.
///
/// Lenient on content (unknown keys are ignored, `null` and empty strings
/// read as absent, any number of default entries) but strict on types: a
/// value of the wrong JSON type or an unparsable IP address is an error
/// naming its key. Empty or white-space-only text is an empty list.
pub fn parse(text: &str, pod: &Subject) -> Result<Vec<NetworkStatus>, Invalid> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(text).map_err(|e| pod.decode(KEY, &e))?;
    let Value::Array(items) = value else {
        return Err(wrong_type(pod, KEY.to_string(), &value, "a JSON list"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let entry = Obj::new(pod, format!("{KEY}[{i}]"), v)?;
            parse_entry(&entry)
        })
        .collect()
}

fn parse_entry(o: &Obj<'_>) -> Result<NetworkStatus, Invalid> {
    let name = o
        .string("name")?
        .ok_or_else(|| o.subject.missing(o.key("name")))?;
    Ok(NetworkStatus {
        name,
        interface: o.string("interface")?,
        ips: o.ips("ips")?,
        mac: o.string("mac")?,
        mtu: o.u32("mtu")?,
        default: o.bool("default")?,
        dns: match o.object("dns")? {
            None => Dns::default(),
            Some(d) => Dns {
                nameservers: d.strings("nameservers")?,
                domain: d.string("domain")?,
                search: d.strings("search")?,
                options: d.strings("options")?,
            },
        },
        device_info: match o.object("device-info")? {
            None => None,
            Some(d) => Some(DeviceInfo {
                kind: d
                    .string("type")?
                    .ok_or_else(|| o.subject.missing(d.key("type")))?,
                version: d
                    .string("version")?
                    .ok_or_else(|| o.subject.missing(d.key("version")))?,
                pci: match d.object("pci")? {
                    None => None,
                    Some(p) => Some(PciDevice {
                        pci_address: p.string("pci-address")?,
                        vhost_net: p.string("vhost-net")?,
                        rdma_device: p.string("rdma-device")?,
                        pf_pci_address: p.string("pf-pci-address")?,
                        representor_device: p.string("representor-device")?,
                    }),
                },
            }),
        },
        gateway: o.ips("gateway")?,
    })
}

fn wrong_type(pod: &Subject, key: String, v: &Value, expected: &str) -> Invalid {
    pod.error(
        Kind::Decode,
        key,
        Some(v.to_string()),
        format!("must be {expected}, not {}", json_type(v)),
    )
}

/// Typed access to the keys of one JSON object, with errors naming them.
struct Obj<'a> {
    subject: &'a Subject,
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(subject: &'a Subject, path: String, v: &'a Value) -> Result<Self, Invalid> {
        match v {
            Value::Object(map) => Ok(Obj { subject, path, map }),
            other => Err(wrong_type(subject, path, other, "a JSON object")),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.path)
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<String>, Invalid> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(wrong_type(self.subject, self.key(name), v, "a string")),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, Invalid> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(wrong_type(self.subject, self.key(name), v, "true or false")),
        }
    }

    fn u32(&self, name: &str) -> Result<Option<u32>, Invalid> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(wrong_type(
                    self.subject,
                    self.key(name),
                    v,
                    "a whole number from 0 to 4294967295",
                )),
            },
        }
    }

    fn object(&self, name: &str) -> Result<Option<Obj<'a>>, Invalid> {
        self.get(name)
            .map(|v| Obj::new(self.subject, self.key(name), v))
            .transpose()
    }

    /// A list of strings, each with its key for messages.
    fn string_items(&self, name: &str) -> Result<Vec<(String, &'a str)>, Invalid> {
        let list = match self.get(name) {
            None => return Ok(Vec::new()),
            Some(Value::Array(l)) => l,
            Some(v) => return Err(wrong_type(self.subject, self.key(name), v, "a list")),
        };
        list.iter()
            .enumerate()
            .map(|(k, v)| {
                let key = format!("{}[{k}]", self.key(name));
                match v {
                    Value::String(s) => Ok((key, s.as_str())),
                    other => Err(wrong_type(self.subject, key, other, "a string")),
                }
            })
            .collect()
    }

    fn strings(&self, name: &str) -> Result<Vec<String>, Invalid> {
        Ok(self
            .string_items(name)?
            .into_iter()
            .map(|(_, s)| s.to_string())
            .collect())
    }

    fn ips(&self, name: &str) -> Result<Vec<IpAddr>, Invalid> {
        self.string_items(name)?
            .into_iter()
            .map(|(key, s)| {
                s.parse().map_err(|_| {
                    self.subject.invalid(
                        key,
                        s,
                        "must be an IP address without prefix length (like 10.10.0.5 or fd00::5)",
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod() -> Subject {
        Subject::new("Pod", Some("default"), "web-0")
    }

    fn primary() -> NetworkStatus {
        NetworkStatus {
            interface: Some("eth0".into()),
            ips: vec!["10.244.1.5".parse().unwrap()],
            mac: Some("0a:58:0a:f4:01:05".into()),
            default: true,
            ..NetworkStatus::new("kindnet")
        }
    }

    fn sriov() -> NetworkStatus {
        NetworkStatus {
            interface: Some("eth1".into()),
            ips: vec!["10.10.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            mac: Some("ca:fe:00:00:00:01".into()),
            device_info: Some(DeviceInfo::pci("0000:3b:02.1")),
            ..NetworkStatus::new("default/sriov-a")
        }
    }

    #[test]
    fn renders_multus_format() {
        let text = render(&[primary(), sriov()], &pod()).unwrap();
        assert_eq!(
            text,
            r#"[{"name":"kindnet","interface":"eth0","ips":["10.244.1.5"],"mac":"0a:58:0a:f4:01:05","default":true},{"name":"default/sriov-a","interface":"eth1","ips":["10.10.0.5","fd00::5"],"mac":"ca:fe:00:00:00:01","device-info":{"type":"pci","version":"1.1.0","pci":{"pci-address":"0000:3b:02.1"}}}]"#
        );
        assert_eq!(parse(&text, &pod()).unwrap(), [primary(), sriov()]);
    }

    #[test]
    fn renders_every_field() {
        let mut e = sriov();
        e.mtu = Some(9000);
        e.gateway = vec!["10.10.0.1".parse().unwrap()];
        e.dns = Dns {
            nameservers: vec!["10.10.0.53".into()],
            domain: Some("example.com".into()),
            search: vec!["example.com".into()],
            options: vec!["ndots:2".into()],
        };
        if let Some(pci) = e.device_info.as_mut().and_then(|d| d.pci.as_mut()) {
            pci.pf_pci_address = Some("0000:3b:00.0".into());
            pci.representor_device = Some("eth5".into());
            pci.rdma_device = Some("mlx5_3".into());
            pci.vhost_net = Some("/dev/vhost-net".into());
        }
        let text = render(&[primary(), e.clone()], &pod()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v[1],
            serde_json::json!({
                "name": "default/sriov-a", "interface": "eth1", "ips": ["10.10.0.5", "fd00::5"],
                "mac": "ca:fe:00:00:00:01", "mtu": 9000,
                "dns": {"nameservers": ["10.10.0.53"], "domain": "example.com",
                        "search": ["example.com"], "options": ["ndots:2"]},
                "device-info": {"type": "pci", "version": "1.1.0",
                    "pci": {"pci-address": "0000:3b:02.1", "vhost-net": "/dev/vhost-net",
                            "rdma-device": "mlx5_3", "pf-pci-address": "0000:3b:00.0",
                            "representor-device": "eth5"}},
                "gateway": ["10.10.0.1"]
            })
        );
        assert_eq!(parse(&text, &pod()).unwrap(), [primary(), e]);
    }

    #[test]
    fn reads_what_multus_writes() {
        // Multus writes "dns": {} on every entry and omits default when false.
        let text = r#"[{
            "name": "kindnet", "interface": "eth0", "ips": ["10.244.1.5"],
            "mac": "0a:58:0a:f4:01:05", "default": true, "dns": {}
        },{
            "name": "default/macvlan", "interface": "net1", "ips": ["192.168.1.205"],
            "mac": "86:1d:96:ff:55:0d", "dns": {}, "gateway": ["192.168.1.1"],
            "some-other-tool": {"x": 1}
        }]"#;
        let v = parse(text, &pod()).unwrap();
        assert_eq!(v.len(), 2);
        assert!(v[0].default && !v[1].default);
        assert!(v[0].dns.is_empty());
        assert_eq!(v[1].interface.as_deref(), Some("net1"));
        assert_eq!(v[1].gateway, ["192.168.1.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn parse_is_lenient_on_content() {
        assert_eq!(parse("", &pod()).unwrap(), []);
        assert_eq!(parse(" \n", &pod()).unwrap(), []);
        // No default, two defaults, nulls, empty strings, unknown device types.
        let v = parse(
            r#"[{"name": "a", "interface": "", "mac": null, "default": true},
                {"name": "b", "default": true, "device-info": {"type": "vdpa", "version": "1.1.0", "vdpa": {"parent-device": "x"}}}]"#,
            &pod(),
        )
        .unwrap();
        assert_eq!(v[0].interface, None);
        assert_eq!(v[0].mac, None);
        assert_eq!(v[1].device_info.as_ref().unwrap().kind, "vdpa");
        assert_eq!(v[1].device_info.as_ref().unwrap().pci, None);
    }

    #[test]
    fn parse_is_strict_on_types() {
        let cases: &[(&str, Kind, &str)] = &[
            (r#"{"name": "a"}"#, Kind::Decode, ""),
            (r#"[5]"#, Kind::Decode, "[0]"),
            (r#"[{"interface": "eth0"}]"#, Kind::Missing, "[0].name"),
            (r#"[{"name": 5}]"#, Kind::Decode, "[0].name"),
            (
                r#"[{"name": "a", "default": "true"}]"#,
                Kind::Decode,
                "[0].default",
            ),
            (
                r#"[{"name": "a", "ips": "10.0.0.1"}]"#,
                Kind::Decode,
                "[0].ips",
            ),
            (r#"[{"name": "a", "ips": [1]}]"#, Kind::Decode, "[0].ips[0]"),
            (
                r#"[{"name": "a", "ips": ["10.0.0.1/24"]}]"#,
                Kind::Invalid,
                "[0].ips[0]",
            ),
            (
                r#"[{"name": "a", "gateway": ["x"]}]"#,
                Kind::Invalid,
                "[0].gateway[0]",
            ),
            (r#"[{"name": "a", "mtu": -1}]"#, Kind::Decode, "[0].mtu"),
            (r#"[{"name": "a", "mtu": 1.5}]"#, Kind::Decode, "[0].mtu"),
            (r#"[{"name": "a", "dns": []}]"#, Kind::Decode, "[0].dns"),
            (
                r#"[{"name": "a", "dns": {"search": [1]}}]"#,
                Kind::Decode,
                "[0].dns.search[0]",
            ),
            (
                r#"[{"name": "a", "device-info": {"version": "1.1.0"}}]"#,
                Kind::Missing,
                "[0].device-info.type",
            ),
            (
                r#"[{"name": "a", "device-info": {"type": "pci", "version": "1.1.0", "pci": {"pci-address": 3}}}]"#,
                Kind::Decode,
                "[0].device-info.pci.pci-address",
            ),
            ("[", Kind::Decode, ""),
        ];
        for (input, kind, suffix) in cases {
            let e = parse(input, &pod()).expect_err(input);
            assert_eq!(e.kind, *kind, "{input}: {e}");
            assert_eq!(e.key, format!("{KEY}{suffix}"), "{input}: {e}");
            assert_eq!(e.object, "Pod default/web-0");
        }
        assert!(KEY.contains(NETWORK_STATUS_ANNOTATION));
    }

    #[test]
    fn render_needs_exactly_one_default() {
        let e = render(&[sriov()], &pod()).unwrap_err();
        assert_eq!(e.kind, Kind::Invalid);
        assert_eq!(e.key, KEY);
        let e = render(&[], &pod()).unwrap_err();
        assert_eq!(e.kind, Kind::Invalid);
        let mut other = sriov();
        other.default = true;
        let e = render(&[primary(), other], &pod()).unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(e.key, format!("{KEY}[1].default"));
        assert!(e.reason.contains("entry [0] (kindnet)"));
    }

    #[test]
    fn render_checks_entries() {
        let mut dup = sriov();
        dup.interface = Some("eth0".into());
        let e = render(&[primary(), dup], &pod()).unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(e.key, format!("{KEY}[1].interface"));

        let mut bad = sriov();
        bad.interface = Some("a/b".into());
        assert_eq!(
            render(&[primary(), bad], &pod()).unwrap_err().kind,
            Kind::Invalid
        );

        let e = render(&[primary(), NetworkStatus::new("")], &pod()).unwrap_err();
        assert_eq!(e.kind, Kind::Missing);

        let mut bad = sriov();
        bad.device_info = Some(DeviceInfo::pci("3b:02.1"));
        let e = render(&[primary(), bad], &pod()).unwrap_err();
        assert_eq!(e.key, format!("{KEY}[1].device-info.pci.pci-address"));
    }

    #[test]
    fn pci_addresses() {
        for ok in ["0000:3b:02.1", "0000:00:1f.7", "ABCD:ff:00.0"] {
            assert_eq!(pci_address_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "3b:02.1",
            "0000:3b:02",
            "0000:3b:20.0",
            "0000:3b:02.8",
            "0000:3b:02.1.1",
            "000:3b:02.1",
            "0000:3b:0g.1",
        ] {
            assert!(pci_address_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn error_messages() {
        let mut two = sriov();
        two.default = true;
        let mut dup = sriov();
        dup.interface = Some("eth0".into());
        let mut bad_pci = sriov();
        bad_pci.device_info = Some(DeviceInfo::pci("3b:02.1"));
        let cases = [
            ("render_no_default", render(&[sriov()], &pod())),
            ("render_two_defaults", render(&[primary(), two], &pod())),
            (
                "render_duplicate_interface",
                render(&[primary(), dup], &pod()),
            ),
            (
                "render_bad_pci_address",
                render(&[primary(), bad_pci], &pod()),
            ),
        ];
        for (name, r) in cases {
            insta::assert_snapshot!(name, r.unwrap_err().to_string());
        }
        for (name, input) in [
            ("parse_malformed_json", r#"[{"name": "a"]"#),
            ("parse_wrong_type", r#"[{"name": "a", "default": "yes"}]"#),
            ("parse_bad_ip", r#"[{"name": "a", "ips": ["10.0.0.1/24"]}]"#),
        ] {
            let e = parse(input, &pod()).unwrap_err();
            insta::assert_snapshot!(name, format!("{input}\n=> {e}"));
        }
    }

    // ---- properties ------------------------------------------------------------

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn word() -> impl Strategy<Value = String> {
        "[a-z0-9.:/-]{1,12}"
    }

    fn pci_address() -> impl Strategy<Value = String> {
        (any::<u16>(), any::<u8>(), 0u8..32, 0u8..8)
            .prop_map(|(d, b, dev, f)| format!("{d:04x}:{b:02x}:{dev:02x}.{f}"))
    }

    fn device_info() -> impl Strategy<Value = DeviceInfo> {
        (
            prop::option::of(pci_address()),
            prop::option::of(word()),
            prop::option::of(word()),
            prop::option::of(pci_address()),
            prop::option::of(word()),
            any::<bool>(),
        )
            .prop_map(|(a, v, r, pf, rep, with_pci)| DeviceInfo {
                kind: "pci".into(),
                version: DEVICE_INFO_VERSION.into(),
                pci: with_pci.then_some(PciDevice {
                    pci_address: a,
                    vhost_net: v,
                    rdma_device: r,
                    pf_pci_address: pf,
                    representor_device: rep,
                }),
            })
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop::sample::select(vec!["", "eth0", "10.0.0.1", "pci", "1.1.0", "0000:3b:02.1"])
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "type",
                        "version",
                        "pci",
                        "pci-address",
                        "nameservers",
                        "domain",
                        "search",
                        "options",
                        "x",
                    ]),
                    inner,
                    0..4,
                )
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    fn entry() -> impl Strategy<Value = NetworkStatus> {
        (
            "[a-z0-9-]{1,8}(/[a-z0-9-]{1,8})?",
            prop::option::of(word()),
            prop::collection::vec(ip(), 0..3),
            prop::option::of(0u32..70000),
            (
                prop::collection::vec(word(), 0..2),
                prop::option::of(word()),
                prop::collection::vec(word(), 0..2),
                prop::collection::vec(word(), 0..2),
            ),
            prop::option::of(device_info()),
            prop::collection::vec(ip(), 0..2),
        )
            .prop_map(
                |(name, mac, ips, mtu, dns, device_info, gateway)| NetworkStatus {
                    name,
                    interface: None,
                    ips,
                    mac,
                    mtu,
                    default: false,
                    dns: Dns {
                        nameservers: dns.0,
                        domain: dns.1,
                        search: dns.2,
                        options: dns.3,
                    },
                    device_info,
                    gateway,
                },
            )
    }

    fn entries() -> impl Strategy<Value = Vec<NetworkStatus>> {
        (
            prop::collection::vec((entry(), any::<bool>()), 1..5),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(list, which)| {
                let d = which.index(list.len());
                list.into_iter()
                    .enumerate()
                    .map(|(i, (mut e, named))| {
                        e.default = i == d;
                        if named {
                            e.interface = Some(format!("eth{i}"));
                        }
                        e
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn render_then_parse_is_identity(v in entries()) {
            let text = render(&v, &pod()).unwrap();
            prop_assert_eq!(parse(&text, &pod()).unwrap(), v);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = parse(&s, &pod());
        }

        #[test]
        fn parse_never_panics_on_arbitrary_json(entries in prop::collection::vec(
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "name", "interface", "ips", "mac", "mtu", "default", "dns",
                    "device-info", "gateway", "other",
                ]),
                json(),
                0..6,
            ),
            0..4,
        )) {
            let v: Vec<Value> = entries
                .into_iter()
                .map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
                .collect();
            let _ = parse(&Value::from(v).to_string(), &pod());
        }

        #[test]
        fn parse_never_panics_on_json_like_input(s in "\\[ ?\\{[\\[\\]{}\":,a-z0-9./ \\-]{0,60}") {
            let _ = parse(&s, &pod());
        }
    }
}
