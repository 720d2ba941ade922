//! The `spec.config` of NetworkAttachmentDefinitions that involve Spur.
//!
//! A NAD involves Spur in one of two ways:
//!
//! - it *is* a Spur network: the plugin `type` is `spur` and the config is a
//!   [`SpurNetworkConfig`] (`networkType` `vlan` or `sriov`, MTU, VLAN, OVS
//!   bridge, optional Spur IPAM);
//! - another plugin (macvlan, ipvlan, bridge, host-device, ...) uses Spur as
//!   its IPAM: its `ipam` section has `"type": "spur"` and is a
//!   [`SpurIpamConfig`].
//!
//! [`classify`] tells the two apart (and from NADs that have nothing to do
//! with Spur), [`parse_spur_network`] and [`find_spur_ipam`] extract the one
//! the caller expects. All three accept a single plugin config and a conflist
//! (`{"cniVersion", "name", "plugins": [...]}`).
//!
//! Every error is an [`Invalid`] of the NAD whose key is a path inside the
//! config, prefixed with `spec.config` (for example
//! `spec.config.ipam.addresses[0].gateway` or
//! `spec.config.plugins[1].vlan`), and whose value is the offending JSON
//! value as written (strings keep their quotes).
//!
//! Rules for `null`: an optional key whose value is `null` counts as absent
//! (as Go's `encoding/json` treats it); a required key whose value is `null`
//! is missing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::cni::CniVersion;
use crate::error::{edit_distance, Invalid, Kind, Subject};
use crate::names::{dns1123_subdomain_problem, ifname_problem};

/// The plugin `type` (and `ipam.type`) that names Spur.
pub const SPUR_TYPE: &str = "spur";
/// The MTU of a Spur network that does not set `mtu`.
pub const DEFAULT_MTU: u16 = 1500;
/// The smallest MTU Spur accepts (the IPv4 minimum).
pub const MIN_MTU: u16 = 68;
/// The largest VLAN ID (0 means untagged).
pub const MAX_VLAN: u16 = 4094;

/// Where the config lives inside the NAD; every error key starts with it.
const ROOT: &str = "spec.config";

/// Keys a user writes in a Spur network config.
const NETWORK_KEYS: [&str; 11] = [
    "cniVersion",
    "name",
    "type",
    "networkType",
    "mtu",
    "vlan",
    "bridge",
    "ipam",
    "vlanQoS",
    "spoofchk",
    "trust",
];
/// Keys CNI runtimes and Multus inject into a plugin's config.
const RUNTIME_KEYS: [&str; 8] = [
    "capabilities",
    "runtimeConfig",
    "args",
    "prevResult",
    "deviceID",
    "pciBusID",
    "dns",
    "logLevel",
];
const IPAM_KEYS: [&str; 5] = ["type", "ippools", "addresses", "routes", "dns"];
const ADDRESS_KEYS: [&str; 2] = ["address", "gateway"];
const ROUTE_KEYS: [&str; 2] = ["dst", "gw"];
const DNS_KEYS: [&str; 4] = ["nameservers", "domain", "search", "options"];

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// How a Spur network attaches Pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetworkType {
    /// A port on a secondary OVS bridge, optionally tagged with a VLAN.
    Vlan,
    /// An SR-IOV virtual function moved into the Pod.
    Sriov,
}

impl NetworkType {
    /// Every network type.
    pub const ALL: [NetworkType; 2] = [NetworkType::Vlan, NetworkType::Sriov];

    /// The name as written in `networkType`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkType::Vlan => "vlan",
            NetworkType::Sriov => "sriov",
        }
    }
}

impl fmt::Display for NetworkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `networkType` Spur does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network type {0:?} (Spur networks are \"vlan\" or \"sriov\")")]
pub struct UnknownNetworkType(pub String);

impl FromStr for NetworkType {
    type Err = UnknownNetworkType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NetworkType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownNetworkType(s.to_string()))
    }
}

/// The validated config of a NAD whose plugin `type` is `spur`.
///
/// Built by [`parse_spur_network`]; [`SpurNetworkConfig::to_json`] (and the
/// `Serialize` impl) render it back with the same key names, so
/// render-then-parse gives the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpurNetworkConfig {
    /// `cniVersion` (of the conflist, when the NAD holds one).
    pub cni_version: CniVersion,
    /// `name`: optional in a NAD (Multus fills in the NAD's name). When
    /// present it follows the CNI rule: a letter or digit, then letters,
    /// digits, `_`, `.` and `-`.
    pub name: Option<String>,
    /// `networkType` (required).
    pub network_type: NetworkType,
    /// `mtu`: 68-65535, [`DEFAULT_MTU`] when not set.
    pub mtu: u16,
    /// `vlan` as written: `None` when the key is absent, `Some(0)` for an
    /// explicit "untagged". See [`SpurNetworkConfig::vlan_override`].
    pub vlan: Option<u16>,
    /// `bridge`: the secondary OVS bridge serving a `vlan` network (an
    /// interface name). May be left out when the node has exactly one
    /// bridge; never set on `sriov` networks.
    pub bridge: Option<String>,
    /// `ipam`: optional; without it the interface gets no addresses.
    pub ipam: Option<SpurIpamConfig>,
    /// `vlanQoS`, `spoofchk`, `trust`: what an `sriov` network sets on its
    /// VF through the PF (never set on `vlan` networks).
    pub vf: VfSettings,
    /// The keys runtimes and Multus inject (`capabilities`, `runtimeConfig`,
    /// `args`, `prevResult`, `deviceID`, `pciBusID`, `dns`, `logLevel`).
    pub runtime: RuntimeKeys,
}

/// What an `sriov` network sets on each VF through its PF, beside the VLAN
/// and the MAC. The key names and their `"on"`/`"off"` values are those of
/// the SR-IOV CNI plugin, which users of SR-IOV networks know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VfSettings {
    /// `vlanQoS`: the 802.1p priority (0-7) of the VF's VLAN tag; needs a
    /// non-zero `vlan`. `None`: not written (0).
    pub qos: Option<u8>,
    /// `spoofchk`: source MAC anti-spoofing on the VF (`None`: left as
    /// the PF's driver has it).
    pub spoofchk: Option<bool>,
    /// `trust`: the VF may change its MAC and enter promiscuous or
    /// all-multicast mode (`None`: left as the driver has it).
    pub trust: Option<bool>,
}

impl VfSettings {
    /// True when nothing is asked for.
    pub fn is_empty(&self) -> bool {
        *self == VfSettings::default()
    }
}

impl SpurNetworkConfig {
    /// The VLAN ID the NAD asks for: 0 (untagged) when `vlan` is absent.
    pub fn vlan_id(&self) -> u16 {
        self.vlan.unwrap_or(0)
    }

    /// The VLAN that overrides the `subnetInfo.vlan` of the network's pools:
    /// the NAD's `vlan` when it is non-zero, `None` otherwise (then the
    /// pools' VLAN applies).
    pub fn vlan_override(&self) -> Option<u16> {
        self.vlan.filter(|v| *v != 0)
    }

    /// The config as a JSON object with the NAD's key names.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), self.cni_version.as_str().into());
        if let Some(name) = &self.name {
            m.insert("name".into(), name.as_str().into());
        }
        m.insert("type".into(), SPUR_TYPE.into());
        m.insert("networkType".into(), self.network_type.as_str().into());
        m.insert("mtu".into(), self.mtu.into());
        if let Some(vlan) = self.vlan {
            m.insert("vlan".into(), vlan.into());
        }
        if let Some(bridge) = &self.bridge {
            m.insert("bridge".into(), bridge.as_str().into());
        }
        if let Some(ipam) = &self.ipam {
            m.insert("ipam".into(), ipam.to_value());
        }
        if let Some(qos) = self.vf.qos {
            m.insert("vlanQoS".into(), qos.into());
        }
        let on_off = |b: bool| if b { "on" } else { "off" };
        if let Some(b) = self.vf.spoofchk {
            m.insert("spoofchk".into(), on_off(b).into());
        }
        if let Some(b) = self.vf.trust {
            m.insert("trust".into(), on_off(b).into());
        }
        self.runtime.render_into(&mut m);
        Value::Object(m)
    }

    /// The config as compact JSON text, ready for a NAD's `spec.config`.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

impl serde::Serialize for SpurNetworkConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

/// Keys a CNI runtime or Multus adds to a plugin's config. They are not
/// written by users, but Spur must accept them when it receives its config
/// through the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeKeys {
    /// `capabilities`: capability name to whether the plugin supports it.
    pub capabilities: Option<BTreeMap<String, bool>>,
    /// `runtimeConfig`: the capability arguments the runtime passes
    /// (`ips`, `mac`, `portMappings`, ...), uninterpreted here.
    pub runtime_config: Option<Map<String, Value>>,
    /// `args`: plugin arguments (for example `cni` from the network
    /// selection's `cni-args`), uninterpreted here.
    pub args: Option<Map<String, Value>>,
    /// `prevResult`: the result of the previous plugin (CHECK, DEL, chains).
    pub prev_result: Option<Map<String, Value>>,
    /// `deviceID`: the device Multus got from the device plugin (for SR-IOV
    /// the VF's PCI address).
    pub device_id: Option<String>,
    /// `pciBusID`: the PCI address some device plugins pass instead.
    pub pci_bus_id: Option<String>,
    /// `dns`: the CNI network-level DNS settings.
    pub dns: Option<Dns>,
    /// `logLevel`: the log level asked for by the runtime or the user.
    pub log_level: Option<String>,
}

impl RuntimeKeys {
    fn render_into(&self, m: &mut Map<String, Value>) {
        if let Some(c) = &self.capabilities {
            let obj = c.iter().map(|(k, v)| (k.clone(), Value::Bool(*v)));
            m.insert("capabilities".into(), Value::Object(obj.collect()));
        }
        let objects = [
            ("runtimeConfig", &self.runtime_config),
            ("args", &self.args),
            ("prevResult", &self.prev_result),
        ];
        for (key, value) in objects {
            if let Some(v) = value {
                m.insert(key.into(), Value::Object(v.clone()));
            }
        }
        let strings = [
            ("deviceID", &self.device_id),
            ("pciBusID", &self.pci_bus_id),
            ("logLevel", &self.log_level),
        ];
        for (key, value) in strings {
            if let Some(v) = value {
                m.insert(key.into(), v.as_str().into());
            }
        }
        if let Some(dns) = &self.dns {
            m.insert("dns".into(), dns.to_value());
        }
    }
}

/// The validated `ipam` section whose `type` is `spur`, under a Spur network
/// or under another plugin.
///
/// Pools in `ippools` are tried in order (an exhausted pool is skipped; one
/// address per IP family); `addresses`, `routes` and `dns` behave as in the
/// CNI `static` IPAM plugin. Static `addresses` without pools are valid. An
/// `ipam` with neither pools nor addresses is valid too but gives the
/// interface **no addresses** (only its `routes` and `dns`, if any); see
/// [`SpurIpamConfig::gives_addresses`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpurIpamConfig {
    /// `ippools`: IPPool names (DNS-1123 subdomains), each at most once.
    pub ippools: Vec<String>,
    /// `addresses`: static addresses, as in the CNI `static` plugin.
    pub addresses: Vec<StaticAddress>,
    /// `routes`: routes added to the interface.
    pub routes: Vec<Route>,
    /// `dns`: DNS settings reported in the result.
    pub dns: Option<Dns>,
}

impl SpurIpamConfig {
    /// True when the config yields at least one address (a pool or a static
    /// address); an `ipam` without either is valid but addresses nothing.
    pub fn gives_addresses(&self) -> bool {
        !self.ippools.is_empty() || !self.addresses.is_empty()
    }

    /// The section as a JSON object with the CNI key names.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), SPUR_TYPE.into());
        if !self.ippools.is_empty() {
            m.insert("ippools".into(), self.ippools.clone().into());
        }
        if !self.addresses.is_empty() {
            let list = self.addresses.iter().map(|a| a.to_value());
            m.insert("addresses".into(), Value::Array(list.collect()));
        }
        if !self.routes.is_empty() {
            let list = self.routes.iter().map(|r| r.to_value());
            m.insert("routes".into(), Value::Array(list.collect()));
        }
        if let Some(dns) = &self.dns {
            m.insert("dns".into(), dns.to_value());
        }
        Value::Object(m)
    }
}

impl serde::Serialize for SpurIpamConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

/// A static address: the interface's own IP with the subnet's prefix length
/// (`10.10.0.1/24`), and optionally the gateway of that subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticAddress {
    /// `address`, host bits kept (`10.10.0.1/24`).
    pub address: IpNet,
    /// `gateway`: same IP family as `address`.
    pub gateway: Option<IpAddr>,
}

impl StaticAddress {
    fn to_value(self) -> Value {
        let mut m = Map::new();
        m.insert("address".into(), self.address.to_string().into());
        if let Some(gw) = self.gateway {
            m.insert("gateway".into(), gw.to_string().into());
        }
        Value::Object(m)
    }
}

/// A route: destination and optional next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `dst` as written (host bits are kept, as the CNI `static` plugin
    /// does; use [`IpNet::trunc`] for the network).
    pub dst: IpNet,
    /// `gw`: same IP family as `dst`; absent means the default gateway of
    /// the interface's address in that family.
    pub gw: Option<IpAddr>,
}

impl Route {
    fn to_value(self) -> Value {
        let mut m = Map::new();
        m.insert("dst".into(), self.dst.to_string().into());
        if let Some(gw) = self.gw {
            m.insert("gw".into(), gw.to_string().into());
        }
        Value::Object(m)
    }
}

/// CNI DNS settings (`ipam.dns`, and the network-level `dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// `nameservers`: IP addresses.
    pub nameservers: Vec<IpAddr>,
    /// `domain`: the local domain.
    pub domain: Option<String>,
    /// `search`: search domains, in order.
    pub search: Vec<String>,
    /// `options`: resolver options (`ndots:2`, `rotate`, ...).
    pub options: Vec<String>,
}

impl Dns {
    /// The settings as a JSON object with the CNI key names (empty lists
    /// left out).
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        if !self.nameservers.is_empty() {
            let list = self.nameservers.iter().map(|ip| ip.to_string().into());
            m.insert("nameservers".into(), Value::Array(list.collect()));
        }
        if let Some(domain) = &self.domain {
            m.insert("domain".into(), domain.as_str().into());
        }
        if !self.search.is_empty() {
            m.insert("search".into(), self.search.clone().into());
        }
        if !self.options.is_empty() {
            m.insert("options".into(), self.options.clone().into());
        }
        Value::Object(m)
    }
}

impl serde::Serialize for Dns {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

/// A Spur IPAM section found in another plugin's config, with what the
/// Spur IPAM plugin needs to know about that plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpurIpamWithPlugin {
    /// The `type` of the plugin whose `ipam` this is (`macvlan`, ...; `spur`
    /// when it is a Spur network's own IPAM).
    pub plugin_type: String,
    /// The `cniVersion` the plugin (or its conflist) speaks; Spur answers in
    /// it, so it must be one Spur speaks.
    pub cni_version: CniVersion,
    /// The network `name`, when the config carries a string one (not
    /// validated: the name belongs to the other plugin's config).
    pub name: Option<String>,
    /// The validated `ipam` section.
    pub ipam: SpurIpamConfig,
}

/// How a NAD relates to Spur.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkKind {
    /// A Spur network (plugin `type` `spur`).
    Spur(Box<SpurNetworkConfig>),
    /// Another plugin that uses Spur for IPAM (`ipam.type` `spur`).
    SpurIpam(Box<SpurIpamWithPlugin>),
    /// Nothing to do with Spur (including a NAD without inline
    /// `spec.config`, whose config Multus reads from its own directory).
    Other,
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Parses and validates the `spec.config` of a Spur network: a single
/// plugin config whose `type` is `spur`, or a conflist whose first plugin
/// is (`cniVersion` and `name` then come from the list).
///
/// Errors name `subject` and a key under `spec.config`; a config of
/// another plugin is [`Kind::Invalid`] at its `type`.
pub fn parse_spur_network(config: &str, subject: &Subject) -> Result<SpurNetworkConfig, Invalid> {
    let root = parse_text(config, subject)?;
    let view = view(&root, subject)?;
    match inspect(&view, subject)? {
        NetworkKind::Spur(c) => Ok(*c),
        NetworkKind::SpurIpam(_) | NetworkKind::Other => Err(not_a_spur_network(&view, subject)),
    }
}

/// Finds and validates the Spur IPAM section of a NAD's `spec.config`: the
/// `ipam` of the plugin (single config or conflist) whose `ipam.type` is
/// `spur`. `Ok(None)` when no plugin uses Spur IPAM.
///
/// The other plugin's own keys are not validated (they are not Spur's)
/// beyond its `type` being a string and its `cniVersion` being one Spur
/// speaks. A Spur network is validated whole and its own `ipam` returned
/// (with `plugin_type` `spur`).
pub fn find_spur_ipam(
    config: &str,
    subject: &Subject,
) -> Result<Option<SpurIpamWithPlugin>, Invalid> {
    match classify(config, subject)? {
        NetworkKind::Spur(c) => {
            let c = *c;
            Ok(c.ipam.map(|ipam| SpurIpamWithPlugin {
                plugin_type: SPUR_TYPE.to_string(),
                cni_version: c.cni_version,
                name: c.name,
                ipam,
            }))
        }
        NetworkKind::SpurIpam(i) => Ok(Some(*i)),
        NetworkKind::Other => Ok(None),
    }
}

/// Tells how a NAD's `spec.config` relates to Spur, validating whatever part
/// of it is Spur's.
///
/// - [`NetworkKind::Spur`]: a plugin has `type` `spur` (in a conflist it
///   must be the first plugin, since it creates the interface, and the only
///   Spur one);
/// - [`NetworkKind::SpurIpam`]: exactly one plugin has `ipam.type` `spur`;
/// - [`NetworkKind::Other`]: neither, or an empty `config` (Multus then
///   reads the config from its own directory).
///
/// Malformed JSON, a config that is not an object, a `plugins` that is not a
/// list of objects and a plugin `type` that is missing or not a string are
/// errors even for NADs that are not Spur's: Spur cannot tell what they are.
pub fn classify(config: &str, subject: &Subject) -> Result<NetworkKind, Invalid> {
    if config.trim().is_empty() {
        return Ok(NetworkKind::Other);
    }
    let root = parse_text(config, subject)?;
    let view = view(&root, subject)?;
    inspect(&view, subject)
}

/// The NAD annotation naming the device-plugin resource the VFs of an
/// `sriov` network come from (Multus reads it to fill in `deviceID`).
pub const RESOURCE_NAME_ANNOTATION: &str = "k8s.v1.cni.cncf.io/resourceName";

/// Checks what a Spur network needs from its NAD beside `spec.config`: an
/// `sriov` network needs [`RESOURCE_NAME_ANNOTATION`], whose value
/// (`resource_name`, `None` when the annotation is absent) is an extended
/// resource name `DOMAIN/NAME` such as `intel.com/sriov_net_A`; a `vlan`
/// network needs nothing.
pub fn check_resource_name(
    config: &SpurNetworkConfig,
    resource_name: Option<&str>,
    subject: &Subject,
) -> Result<(), Invalid> {
    if config.network_type != NetworkType::Sriov {
        return Ok(());
    }
    let key = format!("metadata.annotations[{RESOURCE_NAME_ANNOTATION}]");
    let Some(value) = resource_name else {
        return Err(subject.error(
            Kind::Missing,
            key,
            None,
            "is required for networkType \"sriov\": it names the device-plugin resource \
             the VFs come from (like intel.com/sriov_net_A)",
        ));
    };
    match resource_name_problem(value) {
        None => Ok(()),
        Some(why) => Err(subject.invalid(key, quoted(value), why)),
    }
}

/// Why `s` is not an extended resource name `DOMAIN/NAME`, or `None`.
fn resource_name_problem(s: &str) -> Option<&'static str> {
    let Some((domain, name)) = s.split_once('/') else {
        return Some("must be DOMAIN/NAME (like intel.com/sriov_net_A)");
    };
    if dns1123_subdomain_problem(domain).is_some() {
        return Some("the part before '/' must be a DNS-1123 subdomain (like intel.com)");
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || c == '-' || c == '_' || c == '.');
    if !ok {
        return Some(
            "the part after '/' must be 1-63 letters, digits, '-', '_' and '.', starting \
             and ending with a letter or digit",
        );
    }
    None
}

// ---------------------------------------------------------------------------
// Finding the plugins
// ---------------------------------------------------------------------------

/// One plugin config inside `spec.config`.
struct Plugin<'a> {
    obj: &'a Map<String, Value>,
    /// `spec.config` or `spec.config.plugins[i]`.
    path: String,
    /// The plugin's `type`.
    ty: &'a str,
}

/// The shape of `spec.config`: one plugin, or a list of them.
struct View<'a> {
    /// The conflist object, when the config is one.
    list: Option<&'a Map<String, Value>>,
    plugins: Vec<Plugin<'a>>,
}

fn parse_text(config: &str, s: &Subject) -> Result<Value, Invalid> {
    if config.trim().is_empty() {
        return Err(s.error(
            Kind::Decode,
            ROOT,
            None,
            "is empty; it must be a JSON object holding the CNI config",
        ));
    }
    serde_json::from_str(config).map_err(|e| {
        let mut invalid = s.decode(ROOT, &e);
        if let Some(near) = excerpt(config, e.line(), e.column()) {
            invalid.reason.push_str(&format!(", near '{near}'"));
        }
        invalid
    })
}

/// About 40 characters of `text` around 1-based `line` and `column` (where
/// serde_json reports a syntax error), white space squeezed.
fn excerpt(text: &str, line: usize, column: usize) -> Option<String> {
    let chars: Vec<char> = text.lines().nth(line.checked_sub(1)?)?.chars().collect();
    let end = column.min(chars.len());
    let start = end.saturating_sub(25);
    let stop = (end + 15).min(chars.len());
    let mut words: Vec<String> = chars
        .get(start..stop)?
        .iter()
        .collect::<String>()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // Drop the words the window cuts in half.
    if start > 0 && words.len() > 2 {
        words.remove(0);
    }
    if stop < chars.len() && words.len() > 2 {
        words.pop();
    }
    let squeezed = words.join(" ");
    (!squeezed.is_empty()).then_some(squeezed)
}

fn view<'a>(root: &'a Value, s: &Subject) -> Result<View<'a>, Invalid> {
    let obj = object(s, ROOT, root)?;
    let Some(plugins) = present(obj, "plugins") else {
        let ty = plugin_type(s, ROOT, obj)?;
        return Ok(View {
            list: None,
            plugins: vec![Plugin {
                obj,
                path: ROOT.to_string(),
                ty,
            }],
        });
    };
    let key = format!("{ROOT}.plugins");
    let items = array(s, &key, plugins)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{key}[{i}]");
        let obj = object(s, &path, item)?;
        let ty = plugin_type(s, &path, obj)?;
        out.push(Plugin { obj, path, ty });
    }
    Ok(View {
        list: Some(obj),
        plugins: out,
    })
}

fn plugin_type<'a>(
    s: &Subject,
    path: &str,
    obj: &'a Map<String, Value>,
) -> Result<&'a str, Invalid> {
    let key = format!("{path}.type");
    match present(obj, "type") {
        None => Err(s.error(
            Kind::Missing,
            key,
            None,
            "is required (every CNI plugin config names its plugin)",
        )),
        Some(v) => string(s, &key, v),
    }
}

/// The `ipam` of a non-Spur plugin when its `type` is `spur`.
fn spur_ipam_of<'a>(p: &Plugin<'a>) -> Option<&'a Map<String, Value>> {
    let ipam = present(p.obj, "ipam")?.as_object()?;
    (ipam.get("type")?.as_str()? == SPUR_TYPE).then_some(ipam)
}

fn inspect(view: &View<'_>, s: &Subject) -> Result<NetworkKind, Invalid> {
    let mains: Vec<&Plugin<'_>> = view.plugins.iter().filter(|p| p.ty == SPUR_TYPE).collect();
    let ipams: Vec<(&Plugin<'_>, &Map<String, Value>)> = view
        .plugins
        .iter()
        .filter(|p| p.ty != SPUR_TYPE)
        .filter_map(|p| spur_ipam_of(p).map(|i| (p, i)))
        .collect();

    if let Some(main) = mains.first() {
        if let Some(second) = mains.get(1) {
            return Err(s.conflict(
                format!("{}.type", second.path),
                quoted(SPUR_TYPE),
                format!(
                    "a conflist may hold only one Spur plugin, and {} is one already",
                    main.path
                ),
            ));
        }
        if let Some(first) = view.plugins.first().filter(|f| f.path != main.path) {
            return Err(s.invalid(
                format!("{}.type", main.path),
                quoted(SPUR_TYPE),
                format!(
                    "Spur creates the interface, so it must be the first plugin of the list \
                     ({}.type is {})",
                    first.path,
                    quoted(first.ty)
                ),
            ));
        }
        if let Some((other, _)) = ipams.first() {
            return Err(s.conflict(
                format!("{}.ipam.type", other.path),
                quoted(SPUR_TYPE),
                format!(
                    "the list already holds the Spur network {}, whose own ipam allocates \
                     its addresses",
                    main.path
                ),
            ));
        }
        let config = parse_network(view, main, s)?;
        return Ok(NetworkKind::Spur(Box::new(config)));
    }

    if let Some((plugin, ipam)) = ipams.first() {
        if let Some((second, _)) = ipams.get(1) {
            return Err(s.conflict(
                format!("{}.ipam.type", second.path),
                quoted(SPUR_TYPE),
                format!(
                    "only one plugin of a conflist may use Spur IPAM, and {} does already",
                    plugin.path
                ),
            ));
        }
        let cni_version = cni_version(view, plugin, s)?;
        let name = inherited(view, plugin, "name")
            .0
            .and_then(Value::as_str)
            .map(str::to_string);
        let ipam = parse_ipam(s, &format!("{}.ipam", plugin.path), ipam)?;
        return Ok(NetworkKind::SpurIpam(Box::new(SpurIpamWithPlugin {
            plugin_type: plugin.ty.to_string(),
            cni_version,
            name,
            ipam,
        })));
    }

    Ok(NetworkKind::Other)
}

fn not_a_spur_network(view: &View<'_>, s: &Subject) -> Invalid {
    match (view.list, view.plugins.first()) {
        (None, Some(p)) => {
            let also = if spur_ipam_of(p).is_some() {
                "; this config only uses Spur for IPAM"
            } else {
                ""
            };
            s.invalid(
                format!("{}.type", p.path),
                quoted(p.ty),
                format!("names another plugin, so this is not a Spur network (whose type is \"spur\"){also}"),
            )
        }
        _ => {
            let types: Vec<Value> = view.plugins.iter().map(|p| p.ty.into()).collect();
            s.invalid(
                format!("{ROOT}.plugins"),
                show(&Value::Array(types)),
                "holds no plugin of type \"spur\", so this is not a Spur network",
            )
        }
    }
}

/// A key the runtime takes from the conflist when the config is one, and
/// from the plugin otherwise; with its key path.
fn inherited<'a>(view: &View<'a>, p: &Plugin<'a>, key: &str) -> (Option<&'a Value>, String) {
    match view.list {
        Some(list) => (present(list, key), format!("{ROOT}.{key}")),
        None => (present(p.obj, key), format!("{}.{key}", p.path)),
    }
}

/// A conflist plugin may repeat the list's `cniVersion`/`name`, but the
/// runtime overwrites them with the list's: a different value is a mistake.
fn check_repeated(view: &View<'_>, p: &Plugin<'_>, key: &str, s: &Subject) -> Result<(), Invalid> {
    let Some(list) = view.list else {
        return Ok(());
    };
    let Some(own) = present(p.obj, key) else {
        return Ok(());
    };
    match present(list, key) {
        Some(l) if l == own => Ok(()),
        Some(l) => Err(s.conflict(
            format!("{}.{key}", p.path),
            show(own),
            format!(
                "differs from the list's {ROOT}.{key} = {}, which the runtime uses instead",
                show(l)
            ),
        )),
        None => Err(s.invalid(
            format!("{}.{key}", p.path),
            show(own),
            format!("belongs at the list level ({ROOT}.{key}); the runtime ignores it here"),
        )),
    }
}

fn cni_version(view: &View<'_>, p: &Plugin<'_>, s: &Subject) -> Result<CniVersion, Invalid> {
    check_repeated(view, p, "cniVersion", s)?;
    let (value, key) = inherited(view, p, "cniVersion");
    let Some(value) = value else {
        return Err(s.error(
            Kind::Missing,
            key,
            None,
            format!("is required (Spur speaks {})", spoken_versions()),
        ));
    };
    let text = string(s, &key, value)?;
    text.parse().map_err(|_| {
        s.error(
            Kind::IncompatibleVersion,
            key,
            Some(show(value)),
            format!("is not a CNI version Spur speaks ({})", spoken_versions()),
        )
    })
}

fn spoken_versions() -> String {
    let all: Vec<&str> = CniVersion::ALL.iter().map(|v| v.as_str()).collect();
    match all.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => all.join(""),
    }
}

// ---------------------------------------------------------------------------
// The Spur network
// ---------------------------------------------------------------------------

fn parse_network(
    view: &View<'_>,
    p: &Plugin<'_>,
    s: &Subject,
) -> Result<SpurNetworkConfig, Invalid> {
    let obj = p.obj;
    let path = p.path.as_str();
    let known: Vec<&str> = NETWORK_KEYS
        .iter()
        .chain(RUNTIME_KEYS.iter())
        .copied()
        .collect();
    reject_unknown(
        s,
        path,
        obj,
        &known,
        "is not a key of Spur network configs (they take cniVersion, name, type, networkType, \
         mtu, vlan, bridge, ipam, and for sriov networks vlanQoS, spoofchk and trust, plus the \
         keys CNI runtimes add)",
    )?;

    let cni_version = cni_version(view, p, s)?;

    check_repeated(view, p, "name", s)?;
    let name = match inherited(view, p, "name") {
        (Some(v), key) => {
            let text = string(s, &key, v)?;
            if let Some(why) = cni_name_problem(text) {
                return Err(s.invalid(key, show(v), why));
            }
            Some(text.to_string())
        }
        (None, _) => None,
    };

    let key = format!("{path}.networkType");
    let network_type = match present(obj, "networkType") {
        None => {
            return Err(s.error(
                Kind::Missing,
                key,
                None,
                "is required (\"vlan\" or \"sriov\")",
            ))
        }
        Some(v) => string(s, &key, v)?
            .parse::<NetworkType>()
            .map_err(|_| s.invalid(&key, show(v), "must be \"vlan\" or \"sriov\""))?,
    };

    let key = format!("{path}.mtu");
    let mtu = match present(obj, "mtu") {
        None => DEFAULT_MTU,
        Some(v) => u16::try_from(integer(s, &key, v)?)
            .ok()
            .filter(|m| *m >= MIN_MTU)
            .ok_or_else(|| s.invalid(&key, show(v), "MTU must be 68-65535"))?,
    };

    let key = format!("{path}.vlan");
    let vlan = match present(obj, "vlan") {
        None => None,
        Some(v) => Some(
            u16::try_from(integer(s, &key, v)?)
                .ok()
                .filter(|id| *id <= MAX_VLAN)
                .ok_or_else(|| {
                    s.invalid(&key, show(v), "VLAN ID must be 0 (untagged) or 1-4094")
                })?,
        ),
    };

    let key = format!("{path}.bridge");
    let bridge = match present(obj, "bridge") {
        None => None,
        Some(v) => {
            let text = string(s, &key, v)?;
            if let Some(why) = ifname_problem(text) {
                return Err(s.invalid(key, show(v), format!("is not a bridge name: {why}")));
            }
            if network_type != NetworkType::Vlan {
                return Err(s.invalid(
                    key,
                    show(v),
                    format!(
                        "only vlan networks attach to an OVS bridge, and {path}.networkType is \
                         \"{network_type}\"; remove bridge"
                    ),
                ));
            }
            Some(text.to_string())
        }
    };

    let key = format!("{path}.ipam");
    let ipam = match present(obj, "ipam") {
        None => None,
        Some(v) => {
            let ipam = object(s, &key, v)?;
            let type_key = format!("{key}.type");
            match present(ipam, "type") {
                None => {
                    return Err(s.error(
                        Kind::Missing,
                        type_key,
                        None,
                        "is required (Spur networks use Spur IPAM: \"type\": \"spur\")",
                    ))
                }
                Some(t) if string(s, &type_key, t)? != SPUR_TYPE => {
                    return Err(s.invalid(
                        type_key,
                        show(t),
                        "Spur networks take only Spur IPAM, so the type must be \"spur\"",
                    ))
                }
                Some(_) => {}
            }
            Some(parse_ipam(s, &key, ipam)?)
        }
    };

    let vf = parse_vf_settings(s, path, obj, network_type)?;
    let runtime = parse_runtime(s, path, obj)?;

    Ok(SpurNetworkConfig {
        cni_version,
        name,
        network_type,
        mtu,
        vlan,
        bridge,
        ipam,
        vf,
        runtime,
    })
}

/// `vlanQoS`, `spoofchk` and `trust`: only on `sriov` networks; `vlanQoS`
/// 0-7 (whether a VLAN carries it is known once the pools' VLAN is: see
/// `spur_core::attach`), the others `"on"` or `"off"`.
fn parse_vf_settings(
    s: &Subject,
    path: &str,
    obj: &Map<String, Value>,
    network_type: NetworkType,
) -> Result<VfSettings, Invalid> {
    let mut out = VfSettings::default();
    for k in ["vlanQoS", "spoofchk", "trust"] {
        if let (Some(v), NetworkType::Vlan) = (present(obj, k), network_type) {
            return Err(s.invalid(
                format!("{path}.{k}"),
                show(v),
                format!(
                    "is set on a VF, and only sriov networks have VFs ({path}.networkType is \
                     \"vlan\"); remove {k}"
                ),
            ));
        }
    }
    if let Some(v) = present(obj, "vlanQoS") {
        let key = format!("{path}.vlanQoS");
        let qos = u8::try_from(integer(s, &key, v)?)
            .ok()
            .filter(|q| *q <= 7)
            .ok_or_else(|| s.invalid(&key, show(v), "the 802.1p priority must be 0-7"))?;
        out.qos = Some(qos);
    }
    let on_off = |k: &str| -> Result<Option<bool>, Invalid> {
        let Some(v) = present(obj, k) else {
            return Ok(None);
        };
        let key = format!("{path}.{k}");
        match string(s, &key, v)? {
            "on" => Ok(Some(true)),
            "off" => Ok(Some(false)),
            _ => Err(s.invalid(key, show(v), "must be \"on\" or \"off\"")),
        }
    };
    out.spoofchk = on_off("spoofchk")?;
    out.trust = on_off("trust")?;
    Ok(out)
}

fn parse_runtime(
    s: &Subject,
    path: &str,
    obj: &Map<String, Value>,
) -> Result<RuntimeKeys, Invalid> {
    let mut out = RuntimeKeys::default();
    if let Some(v) = present(obj, "capabilities") {
        let key = format!("{path}.capabilities");
        let mut caps = BTreeMap::new();
        for (name, flag) in object(s, &key, v)? {
            let flag_key = format!("{key}.{name}");
            let on = flag
                .as_bool()
                .ok_or_else(|| wrong_type(s, &flag_key, flag, "true or false"))?;
            caps.insert(name.clone(), on);
        }
        out.capabilities = Some(caps);
    }
    let take_object = |k: &str| -> Result<Option<Map<String, Value>>, Invalid> {
        present(obj, k)
            .map(|v| object(s, &format!("{path}.{k}"), v).cloned())
            .transpose()
    };
    out.runtime_config = take_object("runtimeConfig")?;
    out.args = take_object("args")?;
    out.prev_result = take_object("prevResult")?;
    let take_string = |k: &str| -> Result<Option<String>, Invalid> {
        present(obj, k)
            .map(|v| {
                let key = format!("{path}.{k}");
                let text = string(s, &key, v)?;
                if text.is_empty() {
                    return Err(s.invalid(key, show(v), "must not be empty"));
                }
                Ok(text.to_string())
            })
            .transpose()
    };
    out.device_id = take_string("deviceID")?;
    out.pci_bus_id = take_string("pciBusID")?;
    out.log_level = take_string("logLevel")?;
    if let Some(v) = present(obj, "dns") {
        let key = format!("{path}.dns");
        out.dns = Some(parse_dns(s, &key, object(s, &key, v)?)?);
    }
    Ok(out)
}

/// The CNI rule for network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn cni_name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => Some("must not be empty"),
        Some(c) if !c.is_ascii_alphanumeric() => {
            Some("must start with a letter or digit (CNI network name)")
        }
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) => {
            Some("must hold only letters, digits, '_', '.' and '-' (CNI network name)")
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Spur IPAM
// ---------------------------------------------------------------------------

fn parse_ipam(
    s: &Subject,
    path: &str,
    obj: &Map<String, Value>,
) -> Result<SpurIpamConfig, Invalid> {
    reject_unknown(
        s,
        path,
        obj,
        &IPAM_KEYS,
        "is not a key of Spur IPAM configs (they take type, ippools, addresses, routes and dns)",
    )?;
    let mut out = SpurIpamConfig::default();

    if let Some(v) = present(obj, "ippools") {
        let key = format!("{path}.ippools");
        for (i, item) in array(s, &key, v)?.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let name = string(s, &item_key, item)?;
            if let Some(why) = dns1123_subdomain_problem(name) {
                return Err(s.invalid(
                    item_key,
                    show(item),
                    format!("is not an IPPool name: {why}"),
                ));
            }
            if let Some(j) = out.ippools.iter().position(|p| p == name) {
                return Err(s.conflict(
                    item_key,
                    show(item),
                    format!("is listed twice (also at {key}[{j}]); list each pool once"),
                ));
            }
            out.ippools.push(name.to_string());
        }
    }

    if let Some(v) = present(obj, "addresses") {
        let key = format!("{path}.addresses");
        for (i, item) in array(s, &key, v)?.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let a = parse_address(s, &item_key, object(s, &item_key, item)?)?;
            if let Some(j) = out
                .addresses
                .iter()
                .position(|b| b.address.addr() == a.address.addr())
            {
                return Err(s.conflict(
                    format!("{item_key}.address"),
                    quoted(&a.address.to_string()),
                    format!(
                        "assigns {} again (also at {key}[{j}].address)",
                        a.address.addr()
                    ),
                ));
            }
            out.addresses.push(a);
        }
    }

    if let Some(v) = present(obj, "routes") {
        let key = format!("{path}.routes");
        for (i, item) in array(s, &key, v)?.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            out.routes
                .push(parse_route(s, &item_key, object(s, &item_key, item)?)?);
        }
    }

    if let Some(v) = present(obj, "dns") {
        let key = format!("{path}.dns");
        out.dns = Some(parse_dns(s, &key, object(s, &key, v)?)?);
    }
    Ok(out)
}

fn parse_address(
    s: &Subject,
    path: &str,
    obj: &Map<String, Value>,
) -> Result<StaticAddress, Invalid> {
    reject_unknown(
        s,
        path,
        obj,
        &ADDRESS_KEYS,
        "is not a key of static addresses (they take address and gateway)",
    )?;
    let key = format!("{path}.address");
    let Some(v) = present(obj, "address") else {
        return Err(s.error(
            Kind::Missing,
            key,
            None,
            "is required (the interface's address with its prefix length, like 10.10.0.1/24)",
        ));
    };
    let address = cidr(s, &key, v, "an address")?;
    if let Some(why) = host_bits_problem(&address) {
        return Err(s.invalid(key, show(v), why));
    }
    let gateway = match present(obj, "gateway") {
        None => None,
        Some(g) => {
            let gw_key = format!("{path}.gateway");
            let gw = ip(s, &gw_key, g)?;
            if family(&gw) != family(&address.addr()) {
                return Err(s.invalid(
                    gw_key,
                    show(g),
                    format!(
                        "the gateway is {} but {key} = \"{address}\" is {}; \
                         they must be of the same IP family",
                        family(&gw),
                        family(&address.addr())
                    ),
                ));
            }
            Some(gw)
        }
    };
    Ok(StaticAddress { address, gateway })
}

fn parse_route(s: &Subject, path: &str, obj: &Map<String, Value>) -> Result<Route, Invalid> {
    reject_unknown(
        s,
        path,
        obj,
        &ROUTE_KEYS,
        "is not a key of routes (they take dst and gw)",
    )?;
    let key = format!("{path}.dst");
    let Some(v) = present(obj, "dst") else {
        return Err(s.error(
            Kind::Missing,
            key,
            None,
            "is required (the destination of the route, like 0.0.0.0/0 or 192.168.0.0/16)",
        ));
    };
    let dst = cidr(s, &key, v, "a destination")?;
    let gw = match present(obj, "gw") {
        None => None,
        Some(g) => {
            let gw_key = format!("{path}.gw");
            let gw = ip(s, &gw_key, g)?;
            if family(&gw) != family(&dst.addr()) {
                return Err(s.invalid(
                    gw_key,
                    show(g),
                    format!(
                        "the next hop is {} but {key} = \"{dst}\" is {}; \
                         they must be of the same IP family",
                        family(&gw),
                        family(&dst.addr())
                    ),
                ));
            }
            Some(gw)
        }
    };
    Ok(Route { dst, gw })
}

fn parse_dns(s: &Subject, path: &str, obj: &Map<String, Value>) -> Result<Dns, Invalid> {
    reject_unknown(
        s,
        path,
        obj,
        &DNS_KEYS,
        "is not a key of DNS settings (they take nameservers, domain, search and options)",
    )?;
    let mut out = Dns::default();
    if let Some(v) = present(obj, "nameservers") {
        let key = format!("{path}.nameservers");
        for (i, item) in array(s, &key, v)?.iter().enumerate() {
            out.nameservers.push(ip(s, &format!("{key}[{i}]"), item)?);
        }
    }
    if let Some(v) = present(obj, "domain") {
        out.domain = Some(dns_word(s, &format!("{path}.domain"), v)?);
    }
    for (field, list) in [("search", &mut out.search), ("options", &mut out.options)] {
        if let Some(v) = present(obj, field) {
            let key = format!("{path}.{field}");
            for (i, item) in array(s, &key, v)?.iter().enumerate() {
                list.push(dns_word(s, &format!("{key}[{i}]"), item)?);
            }
        }
    }
    Ok(out)
}

/// A domain, search domain or resolver option: one non-empty word (it ends
/// up in resolv.conf, where white space separates entries).
fn dns_word(s: &Subject, key: &str, v: &Value) -> Result<String, Invalid> {
    let text = string(s, key, v)?;
    if text.is_empty() {
        return Err(s.invalid(key, show(v), "must not be empty"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(s.invalid(key, show(v), "must not contain white space"));
    }
    Ok(text.to_string())
}

fn family(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// Why a static address cannot be an interface's own: it is the subnet
/// itself (no host bits) or, for IPv4, its broadcast address. /31, /32,
/// /127 and /128 have no such addresses.
fn host_bits_problem(net: &IpNet) -> Option<String> {
    if net.max_prefix_len() - net.prefix_len() < 2 {
        return None;
    }
    let subnet = net.trunc();
    if net.addr() == net.network() {
        let example = match net.network() {
            IpAddr::V4(a) => IpAddr::from(u32::from(a).wrapping_add(1).to_be_bytes()),
            IpAddr::V6(a) => IpAddr::from(u128::from(a).wrapping_add(1).to_be_bytes()),
        };
        return Some(format!(
            "has no host bits: it names the subnet {subnet}, not an address in it; \
             give the interface's own address with the prefix length, like {example}/{}",
            net.prefix_len()
        ));
    }
    if matches!(net, IpNet::V4(_)) && net.addr() == net.broadcast() {
        return Some(format!(
            "is the broadcast address of {subnet} and cannot be an interface's address"
        ));
    }
    None
}

// ---------------------------------------------------------------------------
// JSON helpers: each names the key and value it refuses
// ---------------------------------------------------------------------------

/// The value of `key`, treating `null` as absent.
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// A JSON value as it appears in messages: compact, at most 80 characters.
fn show(v: &Value) -> String {
    const MAX: usize = 80;
    let text = v.to_string();
    if text.chars().count() <= MAX {
        return text;
    }
    let mut cut: String = text.chars().take(MAX - 3).collect();
    cut.push_str("...");
    cut
}

fn quoted(s: &str) -> String {
    Value::from(s).to_string()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A JSON type mismatch: a decode problem, but with key and value named.
fn wrong_type(s: &Subject, key: &str, v: &Value, want: &str) -> Invalid {
    s.error(
        Kind::Decode,
        key,
        Some(show(v)),
        format!("must be {want}, not {}", type_name(v)),
    )
}

fn object<'a>(s: &Subject, key: &str, v: &'a Value) -> Result<&'a Map<String, Value>, Invalid> {
    v.as_object()
        .ok_or_else(|| wrong_type(s, key, v, "a JSON object"))
}

fn array<'a>(s: &Subject, key: &str, v: &'a Value) -> Result<&'a Vec<Value>, Invalid> {
    v.as_array().ok_or_else(|| wrong_type(s, key, v, "a list"))
}

fn string<'a>(s: &Subject, key: &str, v: &'a Value) -> Result<&'a str, Invalid> {
    v.as_str().ok_or_else(|| wrong_type(s, key, v, "a string"))
}

/// A whole number; numbers beyond `i64` saturate (every caller's range
/// check then refuses them, naming the value as written).
fn integer(s: &Subject, key: &str, v: &Value) -> Result<i64, Invalid> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    if v.as_u64().is_some() {
        return Ok(i64::MAX);
    }
    Err(wrong_type(s, key, v, "a whole number"))
}

fn ip(s: &Subject, key: &str, v: &Value) -> Result<IpAddr, Invalid> {
    let text = string(s, key, v)?;
    text.parse().map_err(|_| {
        let why = if text.contains('/') {
            "must be a plain IP address, without a prefix length"
        } else {
            "is not an IP address"
        };
        s.invalid(key, show(v), why)
    })
}

fn cidr(s: &Subject, key: &str, v: &Value, what: &str) -> Result<IpNet, Invalid> {
    let text = string(s, key, v)?;
    text.parse().map_err(|_| {
        let why = if text.parse::<IpAddr>().is_ok() {
            format!("lacks a prefix length: {what} is written like 10.10.0.1/24 or fd00::1/64")
        } else {
            format!("is not {what} with a prefix length (like 10.10.0.1/24 or fd00::1/64)")
        };
        s.invalid(key, show(v), why)
    })
}

/// Refuses the first key of `obj` not in `known` as [`Kind::Unsupported`],
/// suggesting a known key that looks alike.
fn reject_unknown(
    s: &Subject,
    path: &str,
    obj: &Map<String, Value>,
    known: &[&str],
    why: &str,
) -> Result<(), Invalid> {
    let Some((key, value)) = obj.iter().find(|(k, _)| !known.contains(&k.as_str())) else {
        return Ok(());
    };
    let hint = known
        .iter()
        .find(|k| {
            let near = match k.len() {
                0..=2 => 0,
                3..=5 => 1,
                _ => 2,
            };
            k.eq_ignore_ascii_case(key) || edit_distance(k, key) <= near
        })
        .map(|k| format!("; did you mean {k}?"))
        .unwrap_or_default();
    Err(s.error(
        Kind::Unsupported,
        format!("{path}.{key}"),
        Some(show(value)),
        format!("{why}{hint}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn subject() -> Subject {
        Subject::new("NetworkAttachmentDefinition", Some("default"), "vlan100")
    }

    fn parse(config: &str) -> Result<SpurNetworkConfig, Invalid> {
        parse_spur_network(config, &subject())
    }

    fn parse_v(v: Value) -> Result<SpurNetworkConfig, Invalid> {
        parse(&v.to_string())
    }

    fn err(v: Value) -> Invalid {
        parse_v(v).unwrap_err()
    }

    fn ipam_of(v: Value) -> Result<Option<SpurIpamWithPlugin>, Invalid> {
        find_spur_ipam(&v.to_string(), &subject())
    }

    /// A minimal valid Spur network with `extra` merged in (null removes).
    fn net(extra: Value) -> Value {
        let mut base = json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan"});
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    b.insert(k, v);
                }
            }
        }
        base
    }

    fn with_ipam(ipam: Value) -> Value {
        net(json!({ "ipam": ipam }))
    }

    #[test]
    fn vf_settings_belong_to_sriov_networks() {
        let sriov = |extra: Value| {
            let mut v = net(extra);
            v["networkType"] = json!("sriov");
            v
        };
        let c = parse_v(sriov(
            json!({"vlan": 100, "vlanQoS": 5, "spoofchk": "off", "trust": "on"}),
        ))
        .unwrap();
        assert_eq!(
            c.vf,
            VfSettings {
                qos: Some(5),
                spoofchk: Some(false),
                trust: Some(true)
            }
        );
        round_trips(&c);
        assert!(parse_v(sriov(json!({}))).unwrap().vf.is_empty());
        assert_eq!(
            parse_v(sriov(json!({"vlanQoS": 0}))).unwrap().vf.qos,
            Some(0)
        );
        let cases = [
            (
                net(json!({"spoofchk": "on"})),
                "spec.config.spoofchk = \"on\": is set on a VF, and only sriov networks have VFs \
                 (spec.config.networkType is \"vlan\"); remove spoofchk",
            ),
            (
                sriov(json!({"vlan": 7, "vlanQoS": 8})),
                "spec.config.vlanQoS = 8: the 802.1p priority must be 0-7",
            ),
            (
                sriov(json!({"trust": "yes"})),
                "spec.config.trust = \"yes\": must be \"on\" or \"off\"",
            ),
        ];
        for (v, want) in cases {
            let e = err(v).to_string();
            assert!(e.ends_with(want), "{e}\nwanted: {want}");
        }
    }

    fn round_trips(c: &SpurNetworkConfig) {
        assert_eq!(parse(&c.to_json()).as_ref(), Ok(c), "{}", c.to_json());
        assert_eq!(serde_json::to_value(c).unwrap(), c.to_value());
    }

    const REFERENCE: &str = r#"{"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "mtu": 1500, "vlan": 100,
 "bridge": "br-secondary",
 "ipam": {"type": "spur", "ippools": ["vlan100-ipv4", "vlan100-ipv6"],
          "addresses": [{"address": "10.10.0.1/24", "gateway": "10.10.0.254"}],
          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"}],
          "dns": {"nameservers": ["10.10.0.53"], "domain": "example.com", "search": ["example.com"]}}}"#;

    #[test]
    fn reference_example() {
        let c = parse(REFERENCE).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.name, None);
        assert_eq!(c.network_type, NetworkType::Vlan);
        assert_eq!(
            (c.mtu, c.vlan, c.vlan_override()),
            (1500, Some(100), Some(100))
        );
        assert_eq!(c.bridge.as_deref(), Some("br-secondary"));
        let ipam = c.ipam.clone().unwrap();
        assert_eq!(ipam.ippools, ["vlan100-ipv4", "vlan100-ipv6"]);
        assert_eq!(
            ipam.addresses,
            [StaticAddress {
                address: "10.10.0.1/24".parse().unwrap(),
                gateway: Some("10.10.0.254".parse().unwrap()),
            }]
        );
        assert_eq!(ipam.routes.len(), 2);
        assert_eq!(ipam.routes[0].gw, None);
        assert_eq!(ipam.routes[1].gw, Some("10.10.5.1".parse().unwrap()));
        let dns = ipam.dns.clone().unwrap();
        assert_eq!(dns.nameservers, ["10.10.0.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(dns.domain.as_deref(), Some("example.com"));
        assert_eq!(dns.search, ["example.com"]);
        assert!(ipam.gives_addresses());
        assert_eq!(c.runtime, RuntimeKeys::default());
        round_trips(&c);
        assert_eq!(
            classify(REFERENCE, &subject()).unwrap(),
            NetworkKind::Spur(Box::new(c))
        );
    }

    #[test]
    fn antrea_vlan100_example() {
        let c = parse(
            r#"{
              "cniVersion": "0.3.0",
              "type": "spur",
              "networkType": "vlan",
              "mtu": 1500,
              "vlan": 100,
              "ipam": {
                "type": "spur",
                "ippools": ["vlan100-ipv4", "vlan100-ipv6"]
              }
            }"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, CniVersion::V0_3_0);
        assert_eq!(c.vlan_id(), 100);
        assert_eq!(c.bridge, None);
        assert_eq!(c.ipam.as_ref().unwrap().ippools.len(), 2);
        round_trips(&c);
    }

    #[test]
    fn antrea_sriov_example() {
        let c = parse(
            r#"{
              "cniVersion": "0.3.0",
              "type": "spur",
              "networkType": "sriov",
              "ipam": {
                "type": "spur",
                "ippools": ["sriov-ipv4"]
              }
            }"#,
        )
        .unwrap();
        assert_eq!(c.network_type, NetworkType::Sriov);
        assert_eq!(c.mtu, DEFAULT_MTU);
        assert_eq!((c.vlan, c.vlan_id(), c.vlan_override()), (None, 0, None));
        assert_eq!(c.ipam.as_ref().unwrap().ippools, ["sriov-ipv4"]);
        round_trips(&c);
    }

    const MACVLAN_V4: &str = r#"{
        "cniVersion": "0.3.0",
        "name": "ipv4-net-1",
        "type": "macvlan",
        "master": "eth0",
        "mode": "bridge",
        "ipam": {
            "type": "spur",
            "ippools": [ "ipv4-pool-1" ]
        }
    }"#;

    const DUAL_STACK: &str = r#"{
        "cniVersion": "0.3.0",
        "name": "dual-stack-net-1",
        "type": "macvlan",
        "master": "eth0",
        "mode": "bridge",
        "ipam": {
            "type": "spur",
            "ippools": [ "ipv4-pool-1", "ipv6-pool-1" ]
        }
    }"#;

    // Antrea's document lacks the comma after "br0"; fixed here.
    const POOL_AND_STATIC: &str = r#"{
        "cniVersion": "0.3.0",
        "name": "pool-and-static-net-1",
        "type": "bridge",
        "bridge": "br0",
        "ipam": {
            "type": "spur",
            "ippools": [ "ipv4-pool-1" ],
            "addresses": [
                {
                    "address": "10.10.0.1/24",
                    "gateway": "10.10.0.254"
                },
                {
                    "address": "3ffe:ffff:0:01ff::1/64",
                    "gateway": "3ffe:ffff:0::1"
                }
            ],
            "routes": [
                { "dst": "0.0.0.0/0" },
                { "dst": "192.168.0.0/16", "gw": "10.10.5.1" },
                { "dst": "3ffe:ffff:0:01ff::1/64" }
            ],
            "dns": {
                "nameservers" : ["8.8.8.8"],
                "domain": "example.com",
                "search": [ "example.com" ]
            }
        }
    }"#;

    #[test]
    fn antrea_macvlan_examples() {
        let s = subject();
        let v4 = find_spur_ipam(MACVLAN_V4, &s).unwrap().unwrap();
        assert_eq!(v4.plugin_type, "macvlan");
        assert_eq!(v4.cni_version, CniVersion::V0_3_0);
        assert_eq!(v4.name.as_deref(), Some("ipv4-net-1"));
        assert_eq!(v4.ipam.ippools, ["ipv4-pool-1"]);

        let dual = find_spur_ipam(DUAL_STACK, &s).unwrap().unwrap();
        assert_eq!(dual.ipam.ippools, ["ipv4-pool-1", "ipv6-pool-1"]);
        assert_eq!(
            classify(DUAL_STACK, &s).unwrap(),
            NetworkKind::SpurIpam(Box::new(dual))
        );

        let both = find_spur_ipam(POOL_AND_STATIC, &s).unwrap().unwrap();
        assert_eq!(both.plugin_type, "bridge");
        assert_eq!(both.ipam.ippools, ["ipv4-pool-1"]);
        assert_eq!(both.ipam.addresses.len(), 2);
        assert_eq!(
            both.ipam.addresses[1].gateway,
            Some("3ffe:ffff::1".parse().unwrap())
        );
        // Route destinations keep their host bits, as in the static plugin.
        assert_eq!(both.ipam.routes[2].dst.to_string(), "3ffe:ffff:0:1ff::1/64");
        assert_eq!(both.ipam.dns.unwrap().nameservers.len(), 1);

        // The NAD form of the same document (macvlan without a name).
        let nad = r#"{"cniVersion": "0.3.0", "type": "macvlan", "master": "eth0", "mode": "bridge",
                      "ipam": {"type": "spur", "ippools": [ "ipv4-pool-1" ]}}"#;
        let found = find_spur_ipam(nad, &s).unwrap().unwrap();
        assert_eq!((found.name, found.ipam.ippools.len()), (None, 1));
    }

    #[test]
    fn ipam_under_other_plugins_round_trips() {
        for text in [MACVLAN_V4, DUAL_STACK, POOL_AND_STATIC] {
            let found = find_spur_ipam(text, &subject()).unwrap().unwrap();
            let again = find_spur_ipam(
                &json!({"cniVersion": "0.3.0", "type": "ipvlan", "ipam": found.ipam.to_value()})
                    .to_string(),
                &subject(),
            )
            .unwrap()
            .unwrap();
            assert_eq!(again.ipam, found.ipam);
        }
    }

    #[test]
    fn every_spoken_cni_version_is_accepted() {
        for v in CniVersion::ALL {
            let c = parse_v(net(json!({"cniVersion": v.as_str()}))).unwrap();
            assert_eq!(c.cni_version, v);
            let found = ipam_of(json!({"cniVersion": v.as_str(), "type": "macvlan",
                                       "ipam": {"type": "spur"}}))
            .unwrap()
            .unwrap();
            assert_eq!(found.cni_version, v);
        }
        for bad in ["0.2.0", "0.1.0", "1.2.0", "", "1.0", "v1.0.0"] {
            let e = err(net(json!({ "cniVersion": bad })));
            assert_eq!(e.kind, Kind::IncompatibleVersion, "{bad}");
            assert_eq!(e.key, "spec.config.cniVersion");
            assert_eq!(e.value, Some(format!("{bad:?}")));
            let e =
                ipam_of(json!({"cniVersion": bad, "type": "macvlan", "ipam": {"type": "spur"}}))
                    .unwrap_err();
            assert_eq!(e.kind, Kind::IncompatibleVersion, "{bad}");
        }
        let e = err(net(json!({ "cniVersion": null })));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Missing, "spec.config.cniVersion")
        );
        let e = err(net(json!({ "cniVersion": 1.0 })));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Decode, "spec.config.cniVersion")
        );
    }

    #[test]
    fn defaults_and_vlan_override() {
        let c = parse_v(net(json!({}))).unwrap();
        assert_eq!(
            (c.mtu, c.vlan, c.bridge.clone(), c.ipam.clone()),
            (1500, None, None, None)
        );
        round_trips(&c);
        let c = parse_v(net(json!({"vlan": 0}))).unwrap();
        assert_eq!((c.vlan, c.vlan_id(), c.vlan_override()), (Some(0), 0, None));
        round_trips(&c);
        let c = parse_v(net(json!({"vlan": 4094, "mtu": 9000}))).unwrap();
        assert_eq!((c.vlan_override(), c.mtu), (Some(4094), 9000));
        // Explicit nulls count as absent.
        let c = parse_v(net(json!({"vlan": Value::Null}))).unwrap();
        assert_eq!(c.vlan, None);
        let c = parse(
            r#"{"cniVersion":"1.0.0","type":"spur","networkType":"vlan","mtu":null,"ipam":null}"#,
        )
        .unwrap();
        assert_eq!((c.mtu, c.ipam), (1500, None));
    }

    #[test]
    fn vlan_range() {
        for ok in [0, 1, 100, 4094] {
            assert_eq!(parse_v(net(json!({ "vlan": ok }))).unwrap().vlan, Some(ok));
        }
        for bad in [
            json!(4095),
            json!(5000),
            json!(-1),
            json!(65536),
            json!(u64::MAX),
        ] {
            let e = err(net(json!({ "vlan": bad })));
            assert_eq!(e.kind, Kind::Invalid, "{bad}");
            assert_eq!(e.key, "spec.config.vlan");
            assert_eq!(e.value, Some(bad.to_string()));
        }
        for bad in [json!("100"), json!(100.5), json!(true), json!([100])] {
            let e = err(net(json!({ "vlan": bad })));
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Decode, "spec.config.vlan"),
                "{bad}"
            );
        }
        let e = err(net(json!({"vlan": 5000})));
        assert_eq!(
            e.to_string(),
            "NetworkAttachmentDefinition default/vlan100: spec.config.vlan = 5000: \
             VLAN ID must be 0 (untagged) or 1-4094"
        );
    }

    #[test]
    fn mtu_range() {
        for ok in [68, 1280, 1500, 9000, 65535] {
            assert_eq!(parse_v(net(json!({ "mtu": ok }))).unwrap().mtu, ok);
        }
        for bad in [
            json!(0),
            json!(67),
            json!(65536),
            json!(70000),
            json!(-1500),
        ] {
            let e = err(net(json!({ "mtu": bad })));
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Invalid, "spec.config.mtu"),
                "{bad}"
            );
            assert_eq!(e.reason, "MTU must be 68-65535");
        }
        let e = err(net(json!({"mtu": "1500"})));
        assert_eq!(
            (e.kind, e.value.as_deref()),
            (Kind::Decode, Some("\"1500\""))
        );
        let e = err(net(json!({"mtu": 1500.0})));
        assert_eq!(e.kind, Kind::Decode);
    }

    #[test]
    fn network_type() {
        let c = parse_v(net(json!({"networkType": "sriov"}))).unwrap();
        assert_eq!(c.network_type, NetworkType::Sriov);
        let e = err(net(json!({"networkType": null})));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Missing, "spec.config.networkType")
        );
        for bad in ["vxlan", "VLAN", ""] {
            let e = err(net(json!({ "networkType": bad })));
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Invalid, "spec.config.networkType")
            );
        }
        let e = err(net(json!({"networkType": 1})));
        assert_eq!(e.kind, Kind::Decode);
        assert_eq!("sriov".parse::<NetworkType>(), Ok(NetworkType::Sriov));
        assert!("x".parse::<NetworkType>().is_err());
        assert_eq!(NetworkType::Vlan.to_string(), "vlan");
    }

    #[test]
    fn bridge_rules() {
        let c = parse_v(net(json!({"bridge": "br-secondary"}))).unwrap();
        assert_eq!(c.bridge.as_deref(), Some("br-secondary"));
        for bad in ["", "a/b", "br secondary", "bridge-name-too-long"] {
            let e = err(net(json!({ "bridge": bad })));
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Invalid, "spec.config.bridge"),
                "{bad}"
            );
        }
        let e = err(net(
            json!({"networkType": "sriov", "bridge": "br-secondary"}),
        ));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.bridge")
        );
        assert!(e.reason.contains("sriov"), "{e}");
        let e = err(net(json!({"bridge": 7})));
        assert_eq!(e.kind, Kind::Decode);
    }

    #[test]
    fn network_name() {
        let c = parse_v(net(json!({"name": "vlan100"}))).unwrap();
        assert_eq!(c.name.as_deref(), Some("vlan100"));
        assert!(parse_v(net(json!({"name": "Net_1.a-b"}))).is_ok());
        for bad in ["", "-a", "a b", "a/b"] {
            let e = err(net(json!({ "name": bad })));
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Invalid, "spec.config.name"),
                "{bad}"
            );
        }
    }

    #[test]
    fn runtime_keys_are_accepted() {
        let v = net(json!({
            "name": "sriov-net-a",
            "networkType": "sriov",
            "deviceID": "0000:03:02.0",
            "pciBusID": "0000:03:02.0",
            "capabilities": {"ips": true, "mac": false},
            "runtimeConfig": {"ips": ["10.0.0.5/24"], "mac": "0a:58:0a:0a:01:05"},
            "args": {"cni": {"foo": "bar"}},
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [], "ips": []},
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"],
                    "options": ["ndots:5"]},
            "logLevel": "debug"
        }));
        let c = parse_v(v).unwrap();
        let r = &c.runtime;
        assert_eq!(r.device_id.as_deref(), Some("0000:03:02.0"));
        assert_eq!(r.pci_bus_id.as_deref(), Some("0000:03:02.0"));
        assert_eq!(r.capabilities.as_ref().unwrap().get("ips"), Some(&true));
        assert_eq!(
            r.runtime_config.as_ref().unwrap()["mac"],
            json!("0a:58:0a:0a:01:05")
        );
        assert_eq!(r.args.as_ref().unwrap()["cni"]["foo"], json!("bar"));
        assert!(r.prev_result.is_some());
        assert_eq!(r.dns.as_ref().unwrap().options, ["ndots:5"]);
        assert_eq!(r.log_level.as_deref(), Some("debug"));
        round_trips(&c);

        let e = err(net(json!({"capabilities": {"ips": "yes"}})));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Decode, "spec.config.capabilities.ips")
        );
        let e = err(net(json!({"runtimeConfig": []})));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Decode, "spec.config.runtimeConfig")
        );
        let e = err(net(json!({"deviceID": ""})));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.deviceID")
        );
        let e = err(net(json!({"dns": {"nameservers": ["x"]}})));
        assert_eq!(e.key, "spec.config.dns.nameservers[0]");
    }

    #[test]
    fn unknown_keys_are_unsupported() {
        let cases = [
            (net(json!({"master": "eth0"})), "spec.config.master"),
            (
                net(json!({"networktype": "vlan"})),
                "spec.config.networktype",
            ),
            (
                with_ipam(json!({"type": "spur", "pools": ["a"]})),
                "spec.config.ipam.pools",
            ),
            (
                with_ipam(
                    json!({"type": "spur", "addresses": [{"address": "10.0.0.1/24", "gw": "10.0.0.254"}]}),
                ),
                "spec.config.ipam.addresses[0].gw",
            ),
            (
                with_ipam(
                    json!({"type": "spur", "routes": [{"dst": "0.0.0.0/0", "via": "10.0.0.1"}]}),
                ),
                "spec.config.ipam.routes[0].via",
            ),
            (
                with_ipam(json!({"type": "spur", "dns": {"servers": []}})),
                "spec.config.ipam.dns.servers",
            ),
        ];
        for (v, key) in cases {
            let e = err(v);
            assert_eq!((e.kind, e.key.as_str()), (Kind::Unsupported, key));
            assert!(e.value.is_some());
        }
        // Look-alike keys get a hint.
        let e = err(net(json!({"networktype": "vlan"})));
        assert!(e.reason.ends_with("did you mean networkType?"), "{e}");
        let e = err(net(json!({"deviceId": "0000:03:02.0"})));
        assert!(e.reason.ends_with("did you mean deviceID?"), "{e}");
        // Keys that are merely short are not "look-alikes".
        let e = err(with_ipam(
            json!({"type": "spur", "routes": [{"dst": "::/0", "ip": "fd00::1"}]}),
        ));
        assert!(!e.reason.contains("did you"), "{e}");
        let e = err(with_ipam(json!({"type": "spur", "ipPools": ["a"]})));
        assert!(e.reason.ends_with("did you mean ippools?"), "{e}");
    }

    #[test]
    fn ipam_type_under_spur_networks() {
        let e = err(with_ipam(json!({"ippools": ["a"]})));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Missing, "spec.config.ipam.type")
        );
        let e = err(with_ipam(
            json!({"type": "host-local", "subnet": "10.0.0.0/24"}),
        ));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.ipam.type")
        );
        let e = err(with_ipam(json!("spur")));
        assert_eq!((e.kind, e.key.as_str()), (Kind::Decode, "spec.config.ipam"));
    }

    #[test]
    fn ipam_pools() {
        let c = parse_v(with_ipam(
            json!({"type": "spur", "ippools": ["a.b-c", "d"]}),
        ))
        .unwrap();
        assert_eq!(c.ipam.unwrap().ippools, ["a.b-c", "d"]);
        let e = err(with_ipam(
            json!({"type": "spur", "ippools": ["a", "b", "a"]}),
        ));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Conflict, "spec.config.ipam.ippools[2]")
        );
        assert!(e.reason.contains("ippools[0]"));
        for bad in ["", "Pool", "a_b", "-a"] {
            let e = err(with_ipam(json!({"type": "spur", "ippools": [bad]})));
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Invalid, "spec.config.ipam.ippools[0]")
            );
        }
        let e = err(with_ipam(json!({"type": "spur", "ippools": "a"})));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Decode, "spec.config.ipam.ippools")
        );
    }

    #[test]
    fn ipam_without_pools_or_addresses() {
        let c = parse_v(with_ipam(json!({"type": "spur"}))).unwrap();
        let ipam = c.ipam.clone().unwrap();
        assert!(!ipam.gives_addresses());
        assert_eq!(ipam, SpurIpamConfig::default());
        round_trips(&c);
        // Static addresses only.
        let c = parse_v(with_ipam(json!({"type": "spur",
            "addresses": [{"address": "10.10.0.1/24"}, {"address": "fd00::1/64", "gateway": "fd00::fe"}]})))
        .unwrap();
        let ipam = c.ipam.clone().unwrap();
        assert!(ipam.gives_addresses() && ipam.ippools.is_empty());
        round_trips(&c);
        // Empty lists are the same as absent ones.
        let c = parse_v(with_ipam(
            json!({"type": "spur", "ippools": [], "addresses": [], "routes": []}),
        ))
        .unwrap();
        assert_eq!(c.ipam, Some(SpurIpamConfig::default()));
    }

    #[test]
    fn static_addresses() {
        let ok = [
            "10.10.0.1/24",
            "10.10.0.0/31",
            "10.10.0.0/32",
            "10.10.0.255/23",
            "fd00::1/64",
            "fd00::/127",
            "fd00::ffff:ffff:ffff:ffff/64",
        ];
        for a in ok {
            let c = parse_v(with_ipam(
                json!({"type": "spur", "addresses": [{"address": a}]}),
            ));
            assert!(c.is_ok(), "{a}: {c:?}");
        }
        let bad = [
            "10.10.0.1",
            "10.10.0.0/24",
            "10.10.0.255/24",
            "fd00::/64",
            "10.10.0.1/33",
            "x/24",
            "10.10.0.300/24",
        ];
        for a in bad {
            let e = err(with_ipam(
                json!({"type": "spur", "addresses": [{"address": a}]}),
            ));
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Invalid, "spec.config.ipam.addresses[0].address"),
                "{a}"
            );
        }
        let e = err(with_ipam(
            json!({"type": "spur", "addresses": [{"gateway": "10.0.0.1"}]}),
        ));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Missing, "spec.config.ipam.addresses[0].address")
        );
        let e = err(with_ipam(json!({"type": "spur",
            "addresses": [{"address": "10.0.0.1/24"}, {"address": "10.0.0.1/16"}]})));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Conflict, "spec.config.ipam.addresses[1].address")
        );
        let e = err(with_ipam(json!({"type": "spur",
            "addresses": [{"address": "10.0.0.1/24", "gateway": "fd00::1"}]})));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.ipam.addresses[0].gateway")
        );
        assert!(
            e.reason.contains("IPv6")
                && e.reason.contains("IPv4")
                && e.reason.contains("10.0.0.1/24")
        );
        let e = err(with_ipam(json!({"type": "spur",
            "addresses": [{"address": "10.0.0.1/24", "gateway": "10.0.0.254/24"}]})));
        assert!(e.reason.contains("without a prefix length"), "{e}");
    }

    #[test]
    fn routes() {
        let c = parse_v(with_ipam(json!({"type": "spur", "routes": [
            {"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}, {"dst": "10.1.2.3/16"}]})))
        .unwrap();
        let routes = c.ipam.clone().unwrap().routes;
        assert_eq!(routes[1].gw, Some("fd00::1".parse().unwrap()));
        assert_eq!(routes[2].dst.trunc().to_string(), "10.1.0.0/16");
        round_trips(&c);
        let e = err(with_ipam(
            json!({"type": "spur", "routes": [{"gw": "10.0.0.1"}]}),
        ));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Missing, "spec.config.ipam.routes[0].dst")
        );
        let e = err(with_ipam(
            json!({"type": "spur", "routes": [{"dst": "::/0", "gw": "10.0.0.1"}]}),
        ));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.ipam.routes[0].gw")
        );
        let e = err(with_ipam(
            json!({"type": "spur", "routes": [{"dst": "default"}]}),
        ));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.ipam.routes[0].dst")
        );
        let e = err(with_ipam(
            json!({"type": "spur", "routes": [{"dst": "10.0.0.0"}]}),
        ));
        assert!(e.reason.contains("lacks a prefix length"), "{e}");
    }

    #[test]
    fn dns_settings() {
        let e = err(with_ipam(
            json!({"type": "spur", "dns": {"nameservers": ["8.8.8.8", "dns.google"]}}),
        ));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.ipam.dns.nameservers[1]")
        );
        let e = err(with_ipam(
            json!({"type": "spur", "dns": {"search": ["a b"]}}),
        ));
        assert_eq!(e.key, "spec.config.ipam.dns.search[0]");
        let e = err(with_ipam(json!({"type": "spur", "dns": {"domain": ""}})));
        assert_eq!(e.key, "spec.config.ipam.dns.domain");
        let e = err(with_ipam(
            json!({"type": "spur", "dns": {"options": "rotate"}}),
        ));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Decode, "spec.config.ipam.dns.options")
        );
        let c = parse_v(with_ipam(json!({"type": "spur", "dns": {}}))).unwrap();
        assert_eq!(c.ipam.as_ref().unwrap().dns, Some(Dns::default()));
        round_trips(&c);
    }

    #[test]
    fn conflists() {
        let list = json!({"cniVersion": "1.1.0", "name": "vlan100", "plugins": [
            {"type": "spur", "networkType": "vlan", "vlan": 100, "ipam": {"type": "spur", "ippools": ["p"]}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1"}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]});
        let c = parse_v(list.clone()).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_1_0);
        assert_eq!(c.name.as_deref(), Some("vlan100"));
        assert_eq!(c.vlan, Some(100));
        round_trips(&c);
        let found = ipam_of(list).unwrap().unwrap();
        assert_eq!(
            (found.plugin_type.as_str(), found.ipam.ippools.len()),
            ("spur", 1)
        );

        // Errors inside a plugin name the plugin's index.
        let e = err(
            json!({"cniVersion": "1.0.0", "plugins": [{"type": "spur", "networkType": "vlan", "vlan": 5000}]}),
        );
        assert_eq!(e.key, "spec.config.plugins[0].vlan");
        // The list's cniVersion applies.
        let e = err(
            json!({"cniVersion": "0.2.0", "plugins": [{"type": "spur", "networkType": "vlan"}]}),
        );
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::IncompatibleVersion, "spec.config.cniVersion")
        );
        let e = err(json!({"plugins": [{"type": "spur", "networkType": "vlan"}]}));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Missing, "spec.config.cniVersion")
        );
        // A plugin may repeat the list's cniVersion, but not contradict it.
        assert!(parse_v(json!({"cniVersion": "1.0.0", "plugins": [
            {"type": "spur", "cniVersion": "1.0.0", "networkType": "vlan"}]}))
        .is_ok());
        let e = err(json!({"cniVersion": "1.0.0", "plugins": [
            {"type": "spur", "cniVersion": "0.4.0", "networkType": "vlan"}]}));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Conflict, "spec.config.plugins[0].cniVersion")
        );
        // Spur must come first, and only once.
        let e = err(json!({"cniVersion": "1.0.0", "plugins": [
            {"type": "tuning"}, {"type": "spur", "networkType": "vlan"}]}));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.plugins[1].type")
        );
        let e = err(json!({"cniVersion": "1.0.0", "plugins": [
            {"type": "spur", "networkType": "vlan"}, {"type": "spur", "networkType": "vlan"}]}));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Conflict, "spec.config.plugins[1].type")
        );
        // No Spur plugin at all.
        let e = err(json!({"cniVersion": "1.0.0", "plugins": [{"type": "macvlan"}]}));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.plugins")
        );
        // Malformed lists.
        let e = err(json!({"cniVersion": "1.0.0", "plugins": {"type": "spur"}}));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Decode, "spec.config.plugins")
        );
        let e = err(json!({"cniVersion": "1.0.0", "plugins": ["spur"]}));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Decode, "spec.config.plugins[0]")
        );
        let e = err(json!({"cniVersion": "1.0.0", "plugins": [{"networkType": "vlan"}]}));
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Missing, "spec.config.plugins[0].type")
        );
    }

    #[test]
    fn spur_ipam_in_conflists() {
        let list = json!({"cniVersion": "0.4.0", "name": "mv", "plugins": [
            {"type": "macvlan", "master": "eth0", "ipam": {"type": "spur", "ippools": ["p"]}},
            {"type": "tuning"}]});
        let found = ipam_of(list).unwrap().unwrap();
        assert_eq!(found.plugin_type, "macvlan");
        assert_eq!(found.cni_version, CniVersion::V0_4_0);
        assert_eq!(found.name.as_deref(), Some("mv"));
        let e = ipam_of(json!({"cniVersion": "1.0.0", "plugins": [
            {"type": "macvlan", "ipam": {"type": "spur", "ippools": ["Bad"]}}]}))
        .unwrap_err();
        assert_eq!(e.key, "spec.config.plugins[0].ipam.ippools[0]");
        let e = ipam_of(json!({"cniVersion": "1.0.0", "plugins": [
            {"type": "macvlan", "ipam": {"type": "spur"}}, {"type": "ipvlan", "ipam": {"type": "spur"}}]}))
        .unwrap_err();
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Conflict, "spec.config.plugins[1].ipam.type")
        );
        let e = ipam_of(json!({"cniVersion": "1.0.0", "plugins": [
            {"type": "spur", "networkType": "vlan"}, {"type": "ipvlan", "ipam": {"type": "spur"}}]}))
        .unwrap_err();
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Conflict, "spec.config.plugins[1].ipam.type")
        );
    }

    #[test]
    fn other_plugins() {
        let s = subject();
        // Not Spur's: no IPAM found, other keys not looked at.
        for v in [
            json!({"cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", "whatever": [1]}),
            json!({"cniVersion": "9.9.9", "type": "macvlan",
                   "ipam": {"type": "host-local", "subnet": "10.0.0.0/24"}}),
            json!({"type": "bridge", "ipam": "spur"}),
            json!({"type": "bridge", "ipam": {"type": 3}}),
            json!({"cniVersion": "1.0.0", "plugins": []}),
        ] {
            assert_eq!(ipam_of(v.clone()).unwrap(), None, "{v}");
            assert_eq!(
                classify(&v.to_string(), &s).unwrap(),
                NetworkKind::Other,
                "{v}"
            );
        }
        assert_eq!(classify("", &s).unwrap(), NetworkKind::Other);
        assert_eq!(classify("  \n", &s).unwrap(), NetworkKind::Other);
        // The other plugin's type must still be a string.
        let e = ipam_of(json!({"type": 1})).unwrap_err();
        assert_eq!((e.kind, e.key.as_str()), (Kind::Decode, "spec.config.type"));
        let e = ipam_of(json!({"master": "eth0"})).unwrap_err();
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Missing, "spec.config.type")
        );
        // Asking for a Spur network gets a clear refusal.
        let e = parse(MACVLAN_V4).unwrap_err();
        assert_eq!(
            (e.kind, e.key.as_str()),
            (Kind::Invalid, "spec.config.type")
        );
        assert!(e.reason.contains("only uses Spur for IPAM"), "{e}");
        let e = parse(r#"{"type": "bridge"}"#).unwrap_err();
        assert!(!e.reason.contains("IPAM"), "{e}");
        // Spur networks without ipam give no IPAM section.
        assert_eq!(ipam_of(net(json!({}))).unwrap(), None);
    }

    #[test]
    fn malformed_text() {
        let s = subject();
        for text in ["{", "{\"type\": \"spur\",}", "nope", "[1", "\"spur"] {
            let e = parse(text).unwrap_err();
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Decode, "spec.config"),
                "{text}"
            );
            assert_eq!(classify(text, &s).unwrap_err().kind, Kind::Decode);
            assert_eq!(find_spur_ipam(text, &s).unwrap_err().kind, Kind::Decode);
        }
        for text in ["[]", "1", "null", "\"spur\""] {
            let e = parse(text).unwrap_err();
            assert_eq!(
                (e.kind, e.key.as_str()),
                (Kind::Decode, "spec.config"),
                "{text}"
            );
        }
        assert_eq!(parse("").unwrap_err().kind, Kind::Decode);
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let e = err(net(json!({ "master": "x".repeat(500) })));
        let value = e.value.unwrap();
        assert!(value.len() <= 80 && value.ends_with("..."), "{value}");
    }

    // ----- snapshots of the messages users read --------------------------

    fn message(v: Value) -> String {
        err(v).to_string()
    }

    #[test]
    fn snapshot_bad_vlan() {
        insta::assert_snapshot!("bad_vlan", message(net(json!({"vlan": 5000}))));
    }

    #[test]
    fn snapshot_vlan_wrong_json_type() {
        insta::assert_snapshot!("vlan_wrong_json_type", message(net(json!({"vlan": "100"}))));
    }

    #[test]
    fn snapshot_bad_mtu() {
        insta::assert_snapshot!("bad_mtu", message(net(json!({"mtu": 70000}))));
    }

    #[test]
    fn snapshot_missing_network_type() {
        insta::assert_snapshot!(
            "missing_network_type",
            message(net(json!({"networkType": null})))
        );
    }

    #[test]
    fn snapshot_unknown_network_type() {
        insta::assert_snapshot!(
            "unknown_network_type",
            message(net(json!({"networkType": "vxlan"})))
        );
    }

    #[test]
    fn sriov_networks_need_a_resource_name() {
        let s = subject();
        let sriov = parse_v(net(json!({"networkType": "sriov"}))).unwrap();
        let vlan = parse_v(net(json!({}))).unwrap();
        assert_eq!(check_resource_name(&vlan, None, &s), Ok(()));
        for good in [
            "intel.com/sriov_net_A",
            "mellanox.com/cx5",
            "a/b",
            "x.y/a-b.c_9",
        ] {
            assert_eq!(
                check_resource_name(&sriov, Some(good), &s),
                Ok(()),
                "{good}"
            );
        }
        let missing = check_resource_name(&sriov, None, &s).unwrap_err();
        assert_eq!(missing.kind, Kind::Missing);
        assert_eq!(
            missing.key,
            "metadata.annotations[k8s.v1.cni.cncf.io/resourceName]"
        );
        for bad in [
            "",
            "sriov_net_A",
            "/sriov",
            "Intel.com/sriov",
            "intel.com/",
            "intel.com/-a",
            "intel.com/a b",
            "intel.com/a/b",
        ] {
            let e = check_resource_name(&sriov, Some(bad), &s).unwrap_err();
            assert_eq!(e.kind, Kind::Invalid, "{bad}");
            assert_eq!(e.value.as_deref(), Some(quoted(bad).as_str()));
        }
        let long = format!("intel.com/{}", "a".repeat(64));
        assert!(check_resource_name(&sriov, Some(&long), &s).is_err());
        insta::assert_snapshot!(
            "sriov_without_resource_name",
            format!(
                "{missing}\n{}",
                check_resource_name(&sriov, Some("sriov_net_A"), &s).unwrap_err()
            )
        );
    }

    #[test]
    fn snapshot_wrong_type() {
        insta::assert_snapshot!("wrong_type", parse(MACVLAN_V4).unwrap_err().to_string());
    }

    #[test]
    fn snapshot_wrong_ipam_type() {
        insta::assert_snapshot!(
            "wrong_ipam_type",
            message(with_ipam(
                json!({"type": "host-local", "subnet": "10.0.0.0/24"})
            ))
        );
    }

    #[test]
    fn snapshot_unknown_key() {
        insta::assert_snapshot!("unknown_key", message(net(json!({"master": "eth0"}))));
    }

    #[test]
    fn snapshot_unknown_key_with_hint() {
        insta::assert_snapshot!(
            "unknown_key_with_hint",
            message(net(json!({"networktype": "vlan"})))
        );
    }

    #[test]
    fn snapshot_unknown_ipam_key() {
        insta::assert_snapshot!(
            "unknown_ipam_key",
            message(with_ipam(json!({"type": "spur", "subnet": "10.0.0.0/24"})))
        );
    }

    #[test]
    fn snapshot_bad_cni_version() {
        insta::assert_snapshot!(
            "bad_cni_version",
            message(net(json!({"cniVersion": "0.2.0"})))
        );
    }

    #[test]
    fn snapshot_bad_address() {
        insta::assert_snapshot!(
            "bad_address",
            message(with_ipam(
                json!({"type": "spur", "addresses": [{"address": "10.10.0.300/24"}]})
            ))
        );
    }

    #[test]
    fn snapshot_address_without_prefix() {
        insta::assert_snapshot!(
            "address_without_prefix",
            message(with_ipam(
                json!({"type": "spur", "addresses": [{"address": "10.10.0.1"}]})
            ))
        );
    }

    #[test]
    fn snapshot_address_without_host_bits() {
        insta::assert_snapshot!(
            "address_without_host_bits",
            message(with_ipam(
                json!({"type": "spur", "addresses": [{"address": "10.10.0.0/24"}]})
            ))
        );
    }

    #[test]
    fn snapshot_gateway_family_mismatch() {
        insta::assert_snapshot!(
            "gateway_family_mismatch",
            message(with_ipam(json!({"type": "spur",
                "addresses": [{"address": "10.10.0.1/24", "gateway": "fd00::1"}]})))
        );
    }

    #[test]
    fn snapshot_route_gateway_family_mismatch() {
        insta::assert_snapshot!(
            "route_gateway_family_mismatch",
            message(with_ipam(
                json!({"type": "spur", "routes": [{"dst": "::/0", "gw": "10.10.0.254"}]})
            ))
        );
    }

    #[test]
    fn snapshot_route_without_dst() {
        insta::assert_snapshot!(
            "route_without_dst",
            message(with_ipam(
                json!({"type": "spur", "routes": [{"gw": "10.10.5.1"}]})
            ))
        );
    }

    #[test]
    fn snapshot_duplicate_pool() {
        insta::assert_snapshot!(
            "duplicate_pool",
            message(with_ipam(json!({"type": "spur",
                "ippools": ["vlan100-ipv4", "vlan100-ipv6", "vlan100-ipv4"]})))
        );
    }

    #[test]
    fn snapshot_bad_pool_name() {
        insta::assert_snapshot!(
            "bad_pool_name",
            message(with_ipam(
                json!({"type": "spur", "ippools": ["VLAN100_v4"]})
            ))
        );
    }

    #[test]
    fn snapshot_bridge_on_sriov() {
        insta::assert_snapshot!(
            "bridge_on_sriov",
            message(net(
                json!({"networkType": "sriov", "bridge": "br-secondary"})
            ))
        );
    }

    #[test]
    fn snapshot_malformed_json() {
        insta::assert_snapshot!(
            "malformed_json",
            parse(r#"{"cniVersion": "1.0.0", "type": "spur" "networkType": "vlan"}"#)
                .unwrap_err()
                .to_string()
        );
    }

    #[test]
    fn snapshot_spur_not_first() {
        insta::assert_snapshot!(
            "spur_not_first",
            message(json!({"cniVersion": "1.0.0", "plugins": [
                {"type": "tuning"}, {"type": "spur", "networkType": "vlan"}]}))
        );
    }

    #[test]
    fn snapshot_conflist_without_spur() {
        insta::assert_snapshot!(
            "conflist_without_spur",
            message(
                json!({"cniVersion": "1.0.0", "plugins": [{"type": "macvlan"}, {"type": "tuning"}]})
            )
        );
    }

    // ----- properties ------------------------------------------------------

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn arb_ip_of(v6: bool) -> BoxedStrategy<IpAddr> {
        if v6 {
            any::<[u8; 16]>().prop_map(IpAddr::from).boxed()
        } else {
            any::<[u8; 4]>().prop_map(IpAddr::from).boxed()
        }
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        arb_ip().prop_flat_map(|ip| {
            let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
            (Just(ip), 0..=max).prop_map(|(ip, len)| IpNet::new(ip, len).unwrap())
        })
    }

    fn arb_address() -> impl Strategy<Value = StaticAddress> {
        arb_net()
            .prop_filter("an interface address", |n| host_bits_problem(n).is_none())
            .prop_flat_map(|address| {
                let gw = proptest::option::of(arb_ip_of(address.addr().is_ipv6()));
                (Just(address), gw)
                    .prop_map(|(address, gateway)| StaticAddress { address, gateway })
            })
    }

    fn arb_route() -> impl Strategy<Value = Route> {
        arb_net().prop_flat_map(|dst| {
            let gw = proptest::option::of(arb_ip_of(dst.addr().is_ipv6()));
            (Just(dst), gw).prop_map(|(dst, gw)| Route { dst, gw })
        })
    }

    fn arb_word() -> impl Strategy<Value = String> {
        "[a-z0-9.:_-]{1,20}"
    }

    fn arb_dns() -> impl Strategy<Value = Dns> {
        (
            prop::collection::vec(arb_ip(), 0..3),
            proptest::option::of(arb_word()),
            prop::collection::vec(arb_word(), 0..3),
            prop::collection::vec(arb_word(), 0..3),
        )
            .prop_map(|(nameservers, domain, search, options)| Dns {
                nameservers,
                domain,
                search,
                options,
            })
    }

    fn arb_ipam() -> impl Strategy<Value = SpurIpamConfig> {
        (
            prop::collection::btree_set("[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", 0..4),
            prop::collection::vec(arb_address(), 0..4),
            prop::collection::vec(arb_route(), 0..4),
            proptest::option::of(arb_dns()),
        )
            .prop_filter_map(
                "pool names and unique addresses",
                |(pools, addresses, routes, dns)| {
                    let pools: Vec<String> = pools
                        .into_iter()
                        .filter(|p| dns1123_subdomain_problem(p).is_none())
                        .collect();
                    let mut seen = std::collections::HashSet::new();
                    if !addresses.iter().all(|a| seen.insert(a.address.addr())) {
                        return None;
                    }
                    Some(SpurIpamConfig {
                        ippools: pools,
                        addresses,
                        routes,
                        dns,
                    })
                },
            )
    }

    fn arb_small_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,10}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-zA-Z]{1,8}", arb_small_json(), 0..3)
            .prop_map(|m| m.into_iter().collect())
    }

    fn arb_runtime() -> impl Strategy<Value = RuntimeKeys> {
        (
            proptest::option::of(prop::collection::btree_map(
                "[a-zA-Z]{1,8}",
                any::<bool>(),
                0..3,
            )),
            proptest::option::of(arb_object()),
            proptest::option::of(arb_object()),
            proptest::option::of(arb_object()),
            proptest::option::of("\\PC{1,20}"),
            proptest::option::of("[0-9a-f:.]{1,12}"),
            proptest::option::of(arb_dns()),
            proptest::option::of("[a-z]{1,8}"),
        )
            .prop_map(
                |(
                    capabilities,
                    runtime_config,
                    args,
                    prev_result,
                    device_id,
                    pci_bus_id,
                    dns,
                    log_level,
                )| {
                    RuntimeKeys {
                        capabilities,
                        runtime_config,
                        args,
                        prev_result,
                        device_id,
                        pci_bus_id,
                        dns,
                        log_level,
                    }
                },
            )
    }

    fn arb_config() -> impl Strategy<Value = SpurNetworkConfig> {
        (
            prop::sample::select(CniVersion::ALL.to_vec()),
            proptest::option::of("[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}"),
            prop::sample::select(NetworkType::ALL.to_vec()),
            MIN_MTU..=u16::MAX,
            proptest::option::of(0..=MAX_VLAN),
            proptest::option::of("[a-z][a-z0-9-]{0,14}"),
            proptest::option::of(arb_ipam()),
            (
                proptest::option::of(0u8..=7),
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>()),
            ),
            arb_runtime(),
        )
            .prop_map(
                |(cni_version, name, network_type, mtu, vlan, bridge, ipam, vf, runtime)| {
                    let sriov = network_type == NetworkType::Sriov;
                    SpurNetworkConfig {
                        cni_version,
                        name,
                        network_type,
                        mtu,
                        vlan,
                        bridge: bridge.filter(|_| network_type == NetworkType::Vlan),
                        ipam,
                        vf: VfSettings {
                            qos: vf.0.filter(|_| sriov),
                            spoofchk: vf.1.filter(|_| sriov),
                            trust: vf.2.filter(|_| sriov),
                        },
                        runtime,
                    }
                },
            )
    }

    /// JSON trees built from the config's own vocabulary, so that parsing
    /// goes deep instead of stopping at the first key.
    fn arb_config_like() -> impl Strategy<Value = Value> {
        let words = prop::sample::select(vec![
            "spur",
            "vlan",
            "sriov",
            "1.0.0",
            "0.3.0",
            "10.10.0.1/24",
            "10.10.0.0/24",
            "fd00::1",
            "fd00::/64",
            "0.0.0.0/0",
            "10.0.0.1",
            "br-secondary",
            "macvlan",
            "",
            "a b",
            "p-1",
        ]);
        let keys = prop::sample::select(vec![
            "cniVersion",
            "name",
            "type",
            "networkType",
            "mtu",
            "vlan",
            "bridge",
            "ipam",
            "ippools",
            "addresses",
            "address",
            "gateway",
            "routes",
            "dst",
            "gw",
            "dns",
            "nameservers",
            "domain",
            "search",
            "options",
            "plugins",
            "capabilities",
            "runtimeConfig",
            "args",
            "prevResult",
            "deviceID",
            "logLevel",
            "other",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            prop_oneof![any::<i64>(), -2i64..5000, Just(1500)].prop_map(Value::from),
            (-1.0e6f64..1.0e6).prop_map(Value::from),
            words.prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 96, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone(), inner, 0..8).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    /// A valid config with one key (at the top or in `ipam`) set to a
    /// value drawn from the config's vocabulary: parsing must not panic, and
    /// whatever it accepts must round trip.
    fn arb_mutated() -> impl Strategy<Value = Value> {
        let keys = prop::sample::select(vec![
            "cniVersion",
            "name",
            "type",
            "networkType",
            "mtu",
            "vlan",
            "bridge",
            "ipam",
            "ippools",
            "addresses",
            "routes",
            "dns",
            "capabilities",
            "runtimeConfig",
            "args",
            "prevResult",
            "deviceID",
            "pciBusID",
            "logLevel",
            "plugins",
            "other",
        ]);
        (arb_config(), keys, any::<bool>(), arb_config_like()).prop_map(
            |(c, key, in_ipam, value)| {
                let mut v = c.to_value();
                let has_ipam = v.get("ipam").is_some_and(Value::is_object);
                let target = if in_ipam && has_ipam {
                    v.get_mut("ipam")
                } else {
                    Some(&mut v)
                };
                if let Some(Value::Object(m)) = target {
                    m.insert(key.to_string(), value);
                }
                v
            },
        )
    }

    proptest! {
        #[test]
        fn mutated_configs_never_panic_and_accepted_ones_round_trip(v in arb_mutated()) {
            let s = subject();
            let text = v.to_string();
            if let Ok(c) = parse_spur_network(&text, &s) {
                prop_assert_eq!(parse_spur_network(&c.to_json(), &s), Ok(c));
            }
            let _ = find_spur_ipam(&text, &s);
            let _ = classify(&text, &s);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let s = subject();
            let _ = parse_spur_network(&text, &s);
            let _ = find_spur_ipam(&text, &s);
            let _ = classify(&text, &s);
        }

        #[test]
        fn config_like_json_never_panics_and_accepted_ones_round_trip(v in arb_config_like()) {
            let s = subject();
            let text = v.to_string();
            if let Ok(c) = parse_spur_network(&text, &s) {
                prop_assert_eq!(parse_spur_network(&c.to_json(), &s), Ok(c));
            }
            if let Ok(Some(found)) = find_spur_ipam(&text, &s) {
                let again = json!({"cniVersion": found.cni_version.as_str(), "type": "x",
                                   "ipam": found.ipam.to_value()});
                let back = find_spur_ipam(&again.to_string(), &s);
                prop_assert_eq!(back.map(|f| f.map(|f| f.ipam)), Ok(Some(found.ipam)));
            }
            let _ = classify(&text, &s);
        }

        #[test]
        fn valid_configs_render_then_parse(c in arb_config()) {
            let text = c.to_json();
            prop_assert_eq!(parse_spur_network(&text, &subject()), Ok(c.clone()), "{}", text);
            let pretty = serde_json::to_string_pretty(&c).unwrap();
            prop_assert_eq!(parse_spur_network(&pretty, &subject()), Ok(c));
        }
    }
}
