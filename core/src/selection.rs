//! The Pod network selection annotation `k8s.v1.cni.cncf.io/networks`
//! (Kubernetes Network Plumbing WG multi-net spec v1.3).
//!
//! A Pod asks for secondary networks with either a JSON list of selection
//! elements
//!
//! ```text
//! [{"name": "vlan100"}, {"name": "vlan200", "namespace": "networks", "interface": "eth200"}]
//! ```
//!
//! or a comma-separated text list of `[namespace/]name[@interface]` items
//! (`vlan100, networks/vlan200@eth200`). [`parse`] validates either form and
//! resolves every element to a [`SelectionElement`] with its namespace and
//! interface name filled in; [`render`] writes elements back in the JSON
//! form.
//!
//! Interface names of elements that do not ask for one follow [`Naming`]:
//! Spur's own rule (the lowest free `ethN`, N >= 1) or Multus's (`net<position>`).
//!
//! ```
//! use spur_core::selection::{parse, Naming};
//! let nets = parse(
//!     r#"[{"name": "vlan100"}, {"name": "vlan200", "namespace": "networks", "interface": "eth200"}]"#,
//!     "default",
//!     "web-0",
//!     Naming::Native,
//! )
//! .unwrap();
//! assert_eq!(nets[0].network(), "default/vlan100");
//! assert_eq!(nets[0].interface, "eth1");
//! assert_eq!(nets[1].network(), "networks/vlan200");
//! assert_eq!(nets[1].interface, "eth200");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::error::{edit_distance, Invalid, Kind, Subject};
use crate::names::{dns1123_label_problem, ifname_problem, Mac};

/// The Pod annotation that selects secondary networks.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// The Pod's primary interface, which a secondary network cannot take in
/// [`Naming::Native`] mode.
pub const PRIMARY_INTERFACE: &str = "eth0";

/// The keys a JSON selection element may carry, in the order messages list
/// them.
pub const ELEMENT_KEYS: [&str; 10] = [
    "name",
    "namespace",
    "interface",
    "mac",
    "ips",
    "default-route",
    "cni-args",
    "portMappings",
    "bandwidth",
    "infiniband-guid",
];

/// The key of the annotation as it appears in error messages.
const KEY: &str = "metadata.annotations[\"k8s.v1.cni.cncf.io/networks\"]";

/// How elements without an explicit `interface` are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Naming {
    /// Spur attaches the networks itself: an element without `interface`
    /// gets the lowest `ethN` (N >= 1) that no element of the Pod asks for
    /// explicitly and no earlier unnamed element got. `eth0` (the primary
    /// interface) cannot be asked for.
    Native,
    /// Multus attaches the networks: the element at position `i` (0-based)
    /// without `interface` gets `net{i+1}`; an explicit name equal to one of
    /// those is a conflict.
    Multus,
}

/// An address a selection element asks for: an IP, optionally with a
/// prefix length (`10.10.0.5` or `10.10.0.5/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestedIp {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length, when one was written.
    pub prefix: Option<u8>,
}

/// Why a text is not a [`RequestedIp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestedIpError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error(
        "must be an IP address, optionally with a prefix length (like 10.10.0.5 or 10.10.0.5/24)"
    )]
    Syntax,
    /// The prefix length is not a number within the family's width.
    #[error("the prefix length must be 0-32 for an IPv4 address and 0-128 for an IPv6 address")]
    Prefix,
}

impl RequestedIp {
    /// The address as a network (`addr/prefix`), when a prefix was written.
    pub fn net(&self) -> Option<IpNet> {
        self.prefix.and_then(|p| IpNet::new(self.addr, p).ok())
    }
}

impl FromStr for RequestedIp {
    type Err = RequestedIpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| RequestedIpError::Syntax)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(RequestedIpError::Prefix);
                }
                let n: u8 = p.parse().map_err(|_| RequestedIpError::Prefix)?;
                if n > max {
                    return Err(RequestedIpError::Prefix);
                }
                Some(n)
            }
        };
        Ok(RequestedIp { addr, prefix })
    }
}

impl fmt::Display for RequestedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl serde::Serialize for RequestedIp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RequestedIp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One network a Pod asks for, validated and resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionElement {
    /// Position of the element in the annotation (0-based).
    pub index: usize,
    /// Name of the NetworkAttachmentDefinition.
    pub name: String,
    /// Namespace of the NetworkAttachmentDefinition (the Pod's when the
    /// element does not say).
    pub namespace: String,
    /// Name of the interface inside the Pod, as asked for or as assigned by
    /// the [`Naming`] rule.
    pub interface: String,
    /// True when the element asked for `interface` explicitly; false when
    /// the name was assigned.
    pub interface_requested: bool,
    /// The MAC address asked for (`mac`).
    pub mac: Option<Mac>,
    /// The addresses asked for (`ips`).
    pub ips: Vec<RequestedIp>,
    /// Gateways of the default route through this network (`default-route`);
    /// empty when the default route stays on the primary network.
    pub default_route: Vec<IpAddr>,
    /// Extra CNI arguments (`cni-args`), a JSON object.
    pub cni_args: Option<Value>,
    /// Port mappings (`portMappings`), a JSON list.
    pub port_mappings: Option<Value>,
    /// Bandwidth limits (`bandwidth`), a JSON object.
    pub bandwidth: Option<Value>,
    /// The InfiniBand GUID asked for (`infiniband-guid`), passed on as
    /// written.
    pub infiniband_guid: Option<String>,
}

impl SelectionElement {
    /// The selected NetworkAttachmentDefinition as `namespace/name`.
    pub fn network(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// True when this element carries the Pod's default route.
    pub fn has_default_route(&self) -> bool {
        !self.default_route.is_empty()
    }

    /// An element of `namespace/name` with nothing else asked for, before
    /// interface naming.
    fn bare(index: usize, namespace: String, name: String) -> Self {
        SelectionElement {
            index,
            name,
            namespace,
            interface: String::new(),
            interface_requested: false,
            mac: None,
            ips: Vec::new(),
            default_route: Vec::new(),
            cni_args: None,
            port_mappings: None,
            bandwidth: None,
            infiniband_guid: None,
        }
    }

    /// How messages name this element: `element [1] (networks/vlan200)`.
    fn describe(&self) -> String {
        format!("element [{}] ({})", self.index, self.network())
    }
}

/// Parses and validates the value of the `k8s.v1.cni.cncf.io/networks`
/// annotation of Pod `pod_namespace/pod_name`.
///
/// Text starting with `[` (after trimming) is a JSON list of selection
/// elements, text starting with `{` a single JSON element; anything else is
/// the comma-separated `[namespace/]name[@interface]` form. Empty or
/// white-space-only text selects no networks. JSON `null` values count as
/// absent keys.
///
/// Errors name the Pod, the key (such as
/// `metadata.annotations["k8s.v1.cni.cncf.io/networks"][1].interface`) and
/// the value: [`Kind::Decode`] for malformed JSON or values of the wrong
/// JSON type, [`Kind::Unsupported`] for unknown keys, [`Kind::Missing`] for
/// an element without `name`, [`Kind::Conflict`] for two elements with the
/// same interface or two elements with `default-route`, and
/// [`Kind::Invalid`] for everything else.
pub fn parse(
    annotation: &str,
    pod_namespace: &str,
    pod_name: &str,
    naming: Naming,
) -> Result<Vec<SelectionElement>, Invalid> {
    let subject = Subject::new("Pod", Some(pod_namespace), pod_name);
    let text = annotation.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let mut elements = if text.starts_with('[') || text.starts_with('{') {
        parse_json(&subject, pod_namespace, text)?
    } else {
        parse_text(&subject, pod_namespace, text)?
    };
    check_default_routes(&subject, &elements)?;
    resolve_interfaces(&subject, &mut elements, naming)?;
    Ok(elements)
}

/// Renders elements in the JSON-list form of the annotation.
///
/// The namespace is always written; `interface` only when the element asked
/// for it ([`SelectionElement::interface_requested`]), so that parsing the
/// result with the same Pod namespace and [`Naming`] gives the same
/// elements back.
pub fn render(elements: &[SelectionElement]) -> String {
    Value::Array(elements.iter().map(element_json).collect()).to_string()
}

fn element_json(e: &SelectionElement) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::from(e.name.as_str()));
    m.insert("namespace".into(), Value::from(e.namespace.as_str()));
    if e.interface_requested {
        m.insert("interface".into(), Value::from(e.interface.as_str()));
    }
    if let Some(mac) = e.mac {
        m.insert("mac".into(), Value::from(mac.to_string()));
    }
    if !e.ips.is_empty() {
        m.insert("ips".into(), strings(&e.ips));
    }
    if !e.default_route.is_empty() {
        m.insert("default-route".into(), strings(&e.default_route));
    }
    for (key, v) in [
        ("cni-args", &e.cni_args),
        ("portMappings", &e.port_mappings),
        ("bandwidth", &e.bandwidth),
    ] {
        if let Some(v) = v {
            m.insert(key.into(), v.clone());
        }
    }
    if let Some(guid) = &e.infiniband_guid {
        m.insert("infiniband-guid".into(), Value::from(guid.as_str()));
    }
    Value::Object(m)
}

fn strings<T: fmt::Display>(items: &[T]) -> Value {
    Value::Array(items.iter().map(|i| Value::from(i.to_string())).collect())
}

fn element_key(index: usize) -> String {
    format!("{KEY}[{index}]")
}

// ---------------------------------------------------------------------------
// Text form

fn parse_text(
    subject: &Subject,
    pod_namespace: &str,
    text: &str,
) -> Result<Vec<SelectionElement>, Invalid> {
    text.split(',')
        .enumerate()
        .map(|(i, item)| parse_text_item(subject, pod_namespace, i, item.trim()))
        .collect()
}

fn parse_text_item(
    subject: &Subject,
    pod_namespace: &str,
    index: usize,
    item: &str,
) -> Result<SelectionElement, Invalid> {
    let key = element_key(index);
    const FORM: &str = "write items as [namespace/]name[@interface], separated by commas";
    if item.is_empty() {
        return Err(subject.error(
            Kind::Invalid,
            key,
            None,
            format!("empty item in the comma-separated list; {FORM}"),
        ));
    }
    let (network, interface) = match item.split_once('@') {
        Some((n, i)) => (n, Some(i)),
        None => (item, None),
    };
    if interface.is_some_and(|i| i.contains('@')) {
        return Err(subject.invalid(key, item, format!("has more than one '@'; {FORM}")));
    }
    let (namespace, name) = match network.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, network),
    };
    if name.contains('/') {
        return Err(subject.invalid(key, item, format!("has more than one '/'; {FORM}")));
    }
    check_label(subject, &key, "name", name)?;
    let namespace = match namespace {
        Some(ns) => {
            check_label(subject, &key, "namespace", ns)?;
            ns
        }
        None => pod_namespace,
    };
    let mut e = SelectionElement::bare(index, namespace.to_string(), name.to_string());
    if let Some(i) = interface {
        check_interface(subject, &key, i)?;
        e.interface = i.to_string();
        e.interface_requested = true;
    }
    Ok(e)
}

// ---------------------------------------------------------------------------
// JSON form

fn parse_json(
    subject: &Subject,
    pod_namespace: &str,
    text: &str,
) -> Result<Vec<SelectionElement>, Invalid> {
    let value: Value = serde_json::from_str(text).map_err(|e| subject.decode(KEY, &e))?;
    match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| parse_json_element(subject, pod_namespace, i, v))
            .collect(),
        other => Ok(vec![parse_json_element(subject, pod_namespace, 0, &other)?]),
    }
}

fn parse_json_element(
    subject: &Subject,
    pod_namespace: &str,
    index: usize,
    value: &Value,
) -> Result<SelectionElement, Invalid> {
    let key = element_key(index);
    let Value::Object(obj) = value else {
        return Err(subject.error(
            Kind::Decode,
            key,
            Some(value.to_string()),
            format!(
                "must be a JSON object like {{\"name\": \"vlan100\"}}, not {}",
                json_type(value)
            ),
        ));
    };
    if let Some(unknown) = obj.keys().find(|k| !ELEMENT_KEYS.contains(&k.as_str())) {
        return Err(unknown_key(subject, &key, unknown));
    }
    let f = Fields {
        subject,
        key: &key,
        obj,
    };

    let name = f
        .string("name")?
        .ok_or_else(|| subject.missing(format!("{key}.name")))?;
    check_label(subject, &key, "name", name)?;
    let namespace = match f.string("namespace")? {
        Some(ns) => {
            check_label(subject, &key, "namespace", ns)?;
            ns
        }
        None => pod_namespace,
    };
    let mut e = SelectionElement::bare(index, namespace.to_string(), name.to_string());

    if let Some(i) = f.string("interface")? {
        check_interface(subject, &key, i)?;
        e.interface = i.to_string();
        e.interface_requested = true;
    }
    if let Some(m) = f.string("mac")? {
        e.mac = Some(
            Mac::parse_unicast(m)
                .map_err(|err| subject.invalid(format!("{key}.mac"), m, err.to_string()))?,
        );
    }
    if let Some(ips) = f.list("ips")? {
        for (k, v) in ips.iter().enumerate() {
            let item_key = format!("{key}.ips[{k}]");
            let s = f.item_string(&item_key, v)?;
            let ip: RequestedIp = s
                .parse()
                .map_err(|err: RequestedIpError| subject.invalid(&item_key, s, err.to_string()))?;
            e.ips.push(ip);
        }
    }
    if let Some(gws) = f.list("default-route")? {
        for (k, v) in gws.iter().enumerate() {
            let item_key = format!("{key}.default-route[{k}]");
            let s = f.item_string(&item_key, v)?;
            let gw: IpAddr = s.parse().map_err(|_| {
                subject.invalid(
                    &item_key,
                    s,
                    "must be the IP address of a gateway (like 10.10.0.1 or fd00::1)",
                )
            })?;
            e.default_route.push(gw);
        }
    }
    e.cni_args = f.object("cni-args")?.cloned();
    e.port_mappings = f.list("portMappings")?.map(|l| Value::Array(l.clone()));
    e.bandwidth = f.object("bandwidth")?.cloned();
    e.infiniband_guid = f.string("infiniband-guid")?.map(str::to_string);
    Ok(e)
}

/// Typed access to the keys of one JSON object, with errors naming them.
struct Fields<'a> {
    subject: &'a Subject,
    key: &'a str,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn wrong_type(&self, key: &str, v: &Value, expected: &str) -> Invalid {
        self.subject.error(
            Kind::Decode,
            key,
            Some(v.to_string()),
            format!("must be {expected}, not {}", json_type(v)),
        )
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, Invalid> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(&format!("{}.{name}", self.key), v, "a string")),
        }
    }

    fn list(&self, name: &str) -> Result<Option<&'a Vec<Value>>, Invalid> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(l)) => Ok(Some(l)),
            Some(v) => Err(self.wrong_type(&format!("{}.{name}", self.key), v, "a list")),
        }
    }

    fn object(&self, name: &str) -> Result<Option<&'a Value>, Invalid> {
        match self.get(name) {
            None => Ok(None),
            Some(v @ Value::Object(_)) => Ok(Some(v)),
            Some(v) => Err(self.wrong_type(&format!("{}.{name}", self.key), v, "a JSON object")),
        }
    }

    fn item_string<'v>(&self, key: &str, v: &'v Value) -> Result<&'v str, Invalid> {
        match v {
            Value::String(s) => Ok(s),
            v => Err(self.wrong_type(key, v, "a string")),
        }
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn unknown_key(subject: &Subject, element_key: &str, unknown: &str) -> Invalid {
    let hint = ELEMENT_KEYS
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default();
    subject.error(
        Kind::Unsupported,
        format!("{element_key}.{unknown}"),
        None,
        format!(
            "unknown key{hint}; a selection element may carry only {}",
            ELEMENT_KEYS.join(", ")
        ),
    )
}

// ---------------------------------------------------------------------------
// Checks shared by both forms, and resolution

fn check_label(subject: &Subject, element_key: &str, field: &str, s: &str) -> Result<(), Invalid> {
    match dns1123_label_problem(s) {
        None => Ok(()),
        Some(problem) => {
            Err(subject.invalid(format!("{element_key}.{field}"), quote_if_empty(s), problem))
        }
    }
}

fn check_interface(subject: &Subject, element_key: &str, s: &str) -> Result<(), Invalid> {
    match ifname_problem(s) {
        None => Ok(()),
        Some(problem) => Err(subject.invalid(
            format!("{element_key}.interface"),
            quote_if_empty(s),
            problem,
        )),
    }
}

/// Empty values read as `""` in messages rather than vanishing.
fn quote_if_empty(s: &str) -> &str {
    if s.is_empty() {
        "\"\""
    } else {
        s
    }
}

fn check_default_routes(subject: &Subject, elements: &[SelectionElement]) -> Result<(), Invalid> {
    let mut carrier: Option<&SelectionElement> = None;
    for e in elements.iter().filter(|e| e.has_default_route()) {
        if let Some(first) = carrier {
            return Err(subject.conflict(
                format!("{}.default-route", element_key(e.index)),
                strings(&e.default_route),
                format!(
                    "only one network of a Pod may carry default-route, and {} already does",
                    first.describe()
                ),
            ));
        }
        carrier = Some(e);
    }
    Ok(())
}

fn resolve_interfaces(
    subject: &Subject,
    elements: &mut [SelectionElement],
    naming: Naming,
) -> Result<(), Invalid> {
    // Explicit names first: every element sees all of them, wherever they are.
    let mut explicit: BTreeMap<String, usize> = BTreeMap::new();
    for (pos, e) in elements.iter().enumerate() {
        if !e.interface_requested {
            continue;
        }
        let key = format!("{}.interface", element_key(e.index));
        if naming == Naming::Native && e.interface == PRIMARY_INTERFACE {
            return Err(subject.invalid(
                key,
                &e.interface,
                "is the Pod's primary interface; a secondary network needs another name \
                 (leave interface out to get the lowest free ethN)",
            ));
        }
        if let Some(&other) = explicit.get(&e.interface) {
            return Err(subject.conflict(
                key,
                &e.interface,
                format!(
                    "{} already asks for this interface name; each network of a Pod needs its own \
                     interface",
                    elements[other].describe()
                ),
            ));
        }
        explicit.insert(e.interface.clone(), pos);
    }

    match naming {
        Naming::Native => {
            let mut n: usize = 1;
            for e in elements.iter_mut().filter(|e| !e.interface_requested) {
                while explicit.contains_key(&format!("eth{n}")) {
                    n += 1;
                }
                e.interface = format!("eth{n}");
                n += 1;
            }
        }
        Naming::Multus => {
            for pos in 0..elements.len() {
                if elements[pos].interface_requested {
                    continue;
                }
                let name = format!("net{}", elements[pos].index + 1);
                if let Some(&other) = explicit.get(&name) {
                    let o = &elements[other];
                    return Err(subject.conflict(
                        format!("{}.interface", element_key(o.index)),
                        &name,
                        format!(
                            "is also the name Multus gives {}, which has no interface of its \
                             own (Multus names such elements net<position>); choose another name",
                            elements[pos].describe()
                        ),
                    ));
                }
                elements[pos].interface = name;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn native(s: &str) -> Result<Vec<SelectionElement>, Invalid> {
        parse(s, "default", "web-0", Naming::Native)
    }

    fn multus(s: &str) -> Result<Vec<SelectionElement>, Invalid> {
        parse(s, "default", "web-0", Naming::Multus)
    }

    fn ifaces(v: &[SelectionElement]) -> Vec<&str> {
        v.iter().map(|e| e.interface.as_str()).collect()
    }

    fn networks(v: &[SelectionElement]) -> Vec<String> {
        v.iter().map(SelectionElement::network).collect()
    }

    fn err(s: &str) -> Invalid {
        native(s).expect_err(s)
    }

    // ---- reference examples ----------------------------------------------

    #[test]
    fn reference_json_example() {
        let v = native(
            r#"[{"name": "vlan100"}, {"name": "vlan200", "namespace": "networks", "interface": "eth200"}]"#,
        )
        .unwrap();
        assert_eq!(networks(&v), ["default/vlan100", "networks/vlan200"]);
        assert_eq!(ifaces(&v), ["eth1", "eth200"]);
        assert!(!v[0].interface_requested);
        assert!(v[1].interface_requested);
        assert_eq!(v[0].index, 0);
        assert_eq!(v[1].index, 1);
    }

    #[test]
    fn reference_text_examples() {
        let v = native("networks/vlan200@eth200").unwrap();
        assert_eq!(networks(&v), ["networks/vlan200"]);
        assert_eq!(ifaces(&v), ["eth200"]);

        let v = native("vlan100").unwrap();
        assert_eq!(networks(&v), ["default/vlan100"]);
        assert_eq!(ifaces(&v), ["eth1"]);
    }

    #[test]
    fn text_list_trims_items() {
        let v = native("  vlan100 , networks/vlan200@eth200,other/x  ").unwrap();
        assert_eq!(
            networks(&v),
            ["default/vlan100", "networks/vlan200", "other/x"]
        );
        assert_eq!(ifaces(&v), ["eth1", "eth200", "eth2"]);
        assert_eq!(v[2].index, 2);
    }

    #[test]
    fn multus_naming() {
        let v = multus(r#"[{"name": "vlan100"}, {"name": "vlan200"}]"#).unwrap();
        assert_eq!(ifaces(&v), ["net1", "net2"]);
        let v = multus("vlan100, vlan200").unwrap();
        assert_eq!(ifaces(&v), ["net1", "net2"]);
        // Positions count explicit elements too.
        let v = multus("a@eth5, b, c").unwrap();
        assert_eq!(ifaces(&v), ["eth5", "net2", "net3"]);
        // eth0 is Multus's business in Multus mode.
        assert_eq!(ifaces(&multus("a@eth0").unwrap()), ["eth0"]);
    }

    #[test]
    fn multus_conflict_with_explicit_name() {
        let e = multus("a, b@net1").unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        assert!(e.key.ends_with("[1].interface"), "{e}");
        assert!(e.reason.contains("element [0] (default/a)"), "{e}");
    }

    // ---- naming --------------------------------------------------------------

    #[test]
    fn native_naming_skips_explicit_names_anywhere() {
        // eth1 is asked for by a later element: the unnamed first one gets eth2.
        let v = native("a, b@eth1, c, d@eth3, e").unwrap();
        assert_eq!(ifaces(&v), ["eth2", "eth1", "eth4", "eth3", "eth5"]);
    }

    #[test]
    fn eth0_refused_in_native_mode() {
        let e = err("a@eth0");
        assert_eq!(e.kind, Kind::Invalid);
        assert!(e.key.ends_with("[0].interface"));
        assert_eq!(e.value.as_deref(), Some("eth0"));
        let e = err(r#"[{"name": "a", "interface": "eth0"}]"#);
        assert_eq!(e.kind, Kind::Invalid);
    }

    #[test]
    fn duplicate_interface_is_conflict_naming_both() {
        let e = err(r#"[{"name": "a", "interface": "eth7"}, {"name": "b", "interface": "eth7"}]"#);
        assert_eq!(e.kind, Kind::Conflict);
        assert!(e.key.ends_with("[1].interface"));
        assert!(e.reason.contains("element [0] (default/a)"));
        assert_eq!(e.object, "Pod default/web-0");
    }

    #[test]
    fn same_network_twice_is_fine() {
        let v = native("a, a").unwrap();
        assert_eq!(ifaces(&v), ["eth1", "eth2"]);
    }

    // ---- forms and keys ------------------------------------------------------

    #[test]
    fn empty_annotation_is_no_networks() {
        assert_eq!(native("").unwrap(), []);
        assert_eq!(native("  \n\t").unwrap(), []);
        assert_eq!(native("[]").unwrap(), []);
    }

    #[test]
    fn single_object_is_one_element_list() {
        let v = native(r#" {"name": "vlan100", "interface": "data0"} "#).unwrap();
        assert_eq!(networks(&v), ["default/vlan100"]);
        assert_eq!(ifaces(&v), ["data0"]);
    }

    #[test]
    fn every_key_is_read() {
        let v = native(
            r#"[{"name": "sriov-a", "namespace": "nets", "interface": "data0",
                 "mac": "0A:58:0a:0a:01:05", "ips": ["10.10.0.5/24", "fd00::5"],
                 "default-route": ["10.10.0.1"], "cni-args": {"foo": 1},
                 "portMappings": [{"hostPort": 8080, "containerPort": 80}],
                 "bandwidth": {"ingressRate": 1000}, "infiniband-guid": "c2:11:22:33:44:55:66:77"}]"#,
        )
        .unwrap();
        let e = &v[0];
        assert_eq!(e.network(), "nets/sriov-a");
        assert_eq!(e.mac.unwrap().to_string(), "0a:58:0a:0a:01:05");
        assert_eq!(
            e.ips,
            [
                RequestedIp {
                    addr: "10.10.0.5".parse().unwrap(),
                    prefix: Some(24)
                },
                RequestedIp {
                    addr: "fd00::5".parse().unwrap(),
                    prefix: None
                }
            ]
        );
        assert_eq!(e.ips[0].net(), Some("10.10.0.5/24".parse().unwrap()));
        assert_eq!(e.default_route, ["10.10.0.1".parse::<IpAddr>().unwrap()]);
        assert!(e.has_default_route());
        assert_eq!(e.cni_args, Some(serde_json::json!({"foo": 1})));
        assert_eq!(
            e.port_mappings,
            Some(serde_json::json!([{"hostPort": 8080, "containerPort": 80}]))
        );
        assert_eq!(e.bandwidth, Some(serde_json::json!({"ingressRate": 1000})));
        assert_eq!(
            e.infiniband_guid.as_deref(),
            Some("c2:11:22:33:44:55:66:77")
        );
    }

    #[test]
    fn null_values_are_absent() {
        let v = native(r#"[{"name": "a", "namespace": null, "interface": null, "ips": null}]"#)
            .unwrap();
        assert_eq!(networks(&v), ["default/a"]);
        assert_eq!(ifaces(&v), ["eth1"]);
    }

    #[test]
    fn one_default_route_is_fine() {
        let v =
            native(r#"[{"name": "a", "default-route": ["10.0.0.1", "fd00::1"]}, {"name": "b"}]"#)
                .unwrap();
        assert_eq!(v[0].default_route.len(), 2);
        // An empty list carries no default route.
        native(
            r#"[{"name": "a", "default-route": ["10.0.0.1"]}, {"name": "b", "default-route": []}]"#,
        )
        .unwrap();
    }

    #[test]
    fn requested_ip_forms() {
        for ok in ["10.0.0.1", "10.0.0.1/0", "10.0.0.1/32", "fd00::1/128", "::"] {
            let ip: RequestedIp = ok.parse().unwrap();
            assert_eq!(ip.to_string(), ok);
        }
        for bad in [
            "",
            "10.0.0",
            "10.0.0.1/33",
            "fd00::1/129",
            "10.0.0.1/",
            "10.0.0.1/+1",
            "x/8",
        ] {
            assert!(bad.parse::<RequestedIp>().is_err(), "{bad}");
        }
    }

    // ---- errors: kinds and keys ----------------------------------------------

    #[test]
    fn error_kinds_and_keys() {
        let cases: &[(&str, Kind, &str)] = &[
            ("Vlan100", Kind::Invalid, "[0].name"),
            ("a, Bad/x", Kind::Invalid, "[1].namespace"),
            ("a,,b", Kind::Invalid, "[1]"),
            ("a,", Kind::Invalid, "[1]"),
            ("a@b@c", Kind::Invalid, "[0]"),
            ("a/b/c", Kind::Invalid, "[0]"),
            ("a@", Kind::Invalid, "[0].interface"),
            ("/a", Kind::Invalid, "[0].namespace"),
            ("a@this-is-too-long0", Kind::Invalid, "[0].interface"),
            (r#"[{"namespace": "x"}]"#, Kind::Missing, "[0].name"),
            (r#"[{"name": 5}]"#, Kind::Decode, "[0].name"),
            (r#"["a"]"#, Kind::Decode, "[0]"),
            (
                r#"[{"name": "a", "ips": "10.0.0.1"}]"#,
                Kind::Decode,
                "[0].ips",
            ),
            (r#"[{"name": "a", "ips": [5]}]"#, Kind::Decode, "[0].ips[0]"),
            (
                r#"[{"name": "a", "ips": ["10.0.0.1", "nope"]}]"#,
                Kind::Invalid,
                "[0].ips[1]",
            ),
            (
                r#"[{"name": "a", "default-route": ["nope"]}]"#,
                Kind::Invalid,
                "[0].default-route[0]",
            ),
            (
                r#"[{"name": "a", "cni-args": []}]"#,
                Kind::Decode,
                "[0].cni-args",
            ),
            (
                r#"[{"name": "a", "bandwidth": 5}]"#,
                Kind::Decode,
                "[0].bandwidth",
            ),
            (
                r#"[{"name": "a", "portMappings": {}}]"#,
                Kind::Decode,
                "[0].portMappings",
            ),
            (
                r#"[{"name": "a", "infiniband-guid": 5}]"#,
                Kind::Decode,
                "[0].infiniband-guid",
            ),
            (
                r#"[{"name": "a", "mac": "01:00:5e:00:00:01"}]"#,
                Kind::Invalid,
                "[0].mac",
            ),
            (
                r#"[{"name": "a", "mac": "00:00:00:00:00:00"}]"#,
                Kind::Invalid,
                "[0].mac",
            ),
            (
                r#"[{"name": "a"}, {"name": "b", "interfce": "x"}]"#,
                Kind::Unsupported,
                "[1].interfce",
            ),
            (r#"[{"name": "a"}"#, Kind::Decode, ""),
            ("{", Kind::Decode, ""),
        ];
        for (input, kind, suffix) in cases {
            let e = err(input);
            assert_eq!(e.kind, *kind, "{input}: {e}");
            assert_eq!(e.key, format!("{KEY}{suffix}"), "{input}: {e}");
            assert_eq!(e.object, "Pod default/web-0");
        }
        assert!(KEY.contains(NETWORKS_ANNOTATION));
    }

    #[test]
    fn unknown_key_hint() {
        let e = err(r#"[{"name": "a", "interfce": "x"}]"#);
        assert!(e.reason.contains("did you mean \"interface\"?"), "{e}");
        let e = err(r#"[{"name": "a", "zzzzzzzzzz": "x"}]"#);
        assert!(!e.reason.contains("did you mean"), "{e}");
    }

    #[test]
    fn two_default_routes_name_both() {
        let e = err(
            r#"[{"name": "a", "default-route": ["10.0.0.1"]}, {"name": "b"}, {"name": "c", "default-route": ["10.1.0.1"]}]"#,
        );
        assert_eq!(e.kind, Kind::Conflict);
        assert!(e.key.ends_with("[2].default-route"));
        assert!(e.reason.contains("element [0] (default/a)"));
    }

    // ---- snapshots of the messages -------------------------------------------

    #[test]
    fn error_messages() {
        let cases = [
            ("bad_name", r#"[{"name": "VLAN_100"}]"#),
            ("bad_name_text", "vlan100, networks/Vlan200@eth2"),
            (
                "bad_interface",
                r#"[{"name": "vlan100", "interface": "eth:1"}]"#,
            ),
            ("long_interface", "vlan100@secondary-interface0"),
            (
                "bad_mac",
                r#"[{"name": "vlan100", "mac": "0a:58:0a:0a:01"}]"#,
            ),
            (
                "multicast_mac",
                r#"[{"name": "vlan100", "mac": "01:00:5e:00:00:01"}]"#,
            ),
            (
                "bad_ip",
                r#"[{"name": "vlan100", "ips": ["10.10.0.5/24", "10.10.0.300"]}]"#,
            ),
            (
                "bad_prefix",
                r#"[{"name": "vlan100", "ips": ["10.10.0.5/33"]}]"#,
            ),
            (
                "bad_gateway",
                r#"[{"name": "vlan100", "default-route": ["gw"]}]"#,
            ),
            (
                "two_default_routes",
                r#"[{"name": "vlan100", "default-route": ["10.10.0.1"]}, {"name": "vlan200", "default-route": ["10.20.0.1"]}]"#,
            ),
            (
                "duplicate_interface",
                r#"[{"name": "vlan100", "interface": "data0"}, {"name": "vlan200", "namespace": "networks", "interface": "data0"}]"#,
            ),
            (
                "unknown_key",
                r#"[{"name": "vlan100", "interfce": "eth5"}]"#,
            ),
            ("malformed_json", r#"[{"name": "vlan100",}]"#),
            ("wrong_type", r#"[{"name": "vlan100", "ips": "10.10.0.5"}]"#),
            ("missing_name", r#"[{"interface": "eth5"}]"#),
            ("empty_item", "vlan100,,vlan200"),
            ("eth0_native", "vlan100@eth0"),
        ];
        for (name, input) in cases {
            let e = err(input);
            insta::assert_snapshot!(name, format!("{input}\n=> {e}"));
        }
        let e = multus("vlan100, vlan200@net1").unwrap_err();
        insta::assert_snapshot!("multus_conflict", e.to_string());
    }

    // ---- properties ------------------------------------------------------------

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn requested_ip() -> impl Strategy<Value = RequestedIp> {
        (ip(), any::<Option<u8>>()).prop_map(|(addr, p)| RequestedIp {
            addr,
            prefix: p.map(|p| p % if addr.is_ipv4() { 33 } else { 129 }),
        })
    }

    fn small_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object_of(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-zA-Z]{1,6}", v, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// A valid JSON selection element (interface decided by the caller).
    fn raw_element() -> impl Strategy<Value = Map<String, Value>> {
        (
            label(),
            prop::option::of(label()),
            prop::option::of(any::<[u8; 6]>()),
            prop::collection::vec(requested_ip(), 0..3),
            prop::option::of(object_of(small_json())),
            prop::option::of(prop::collection::vec(object_of(small_json()), 0..2)),
            prop::option::of(object_of(any::<u32>().prop_map(Value::from))),
            prop::option::of("[0-9a-f:]{1,23}"),
        )
            .prop_map(|(name, ns, mac, ips, cni, ports, bw, guid)| {
                let mut m = Map::new();
                m.insert("name".into(), name.into());
                if let Some(ns) = ns {
                    m.insert("namespace".into(), ns.into());
                }
                if let Some(mut b) = mac {
                    b[0] = (b[0] & 0xfe) | 0x02; // unicast, never all-zero
                    m.insert("mac".into(), Mac(b).to_string().into());
                }
                if !ips.is_empty() {
                    m.insert("ips".into(), strings(&ips));
                }
                if let Some(c) = cni {
                    m.insert("cni-args".into(), c);
                }
                if let Some(p) = ports {
                    m.insert("portMappings".into(), Value::from(p));
                }
                if let Some(b) = bw {
                    m.insert("bandwidth".into(), b);
                }
                if let Some(g) = guid {
                    m.insert("infiniband-guid".into(), g.into());
                }
                m
            })
    }

    /// A valid annotation: elements with distinct explicit interfaces (or
    /// none), at most one default-route.
    fn annotation() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(
                (raw_element(), prop::option::of(0u8..20), any::<bool>()),
                0..6,
            ),
            prop::collection::vec(ip(), 1..3),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(elems, gws, which)| {
                let mut used = std::collections::BTreeSet::new();
                let n = elems.len();
                let list: Vec<Value> = elems
                    .into_iter()
                    .enumerate()
                    .map(|(i, (mut m, iface, custom))| {
                        if let Some(k) = iface {
                            // Explicit names that collide neither with each
                            // other nor with Multus's net<position>.
                            let name = if custom {
                                format!("data{k}")
                            } else {
                                format!("eth{}", k + 1)
                            };
                            if used.insert(name.clone()) {
                                m.insert("interface".into(), name.into());
                            }
                        }
                        if n > 0 && which.index(n) == i {
                            m.insert("default-route".into(), strings(&gws));
                        }
                        Value::Object(m)
                    })
                    .collect();
                Value::Array(list).to_string()
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_text(s in "\\PC{0,80}") {
            let _ = native(&s);
            let _ = multus(&s);
        }

        #[test]
        fn never_panics_on_text_like_input(s in "[a-z0-9/@, \\-]{0,40}") {
            if let Ok(v) = native(&s) {
                let again = native(&render(&v)).unwrap();
                prop_assert_eq!(again, v);
            }
        }

        #[test]
        fn never_panics_on_json_like_input(s in "[\\[{] ?[\\[\\]{}\":,a-z0-9./@ \\-]{0,60}") {
            let _ = native(&s);
            let _ = multus(&s);
        }

        #[test]
        fn never_panics_on_arbitrary_json(elems in prop::collection::vec(
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "name", "namespace", "interface", "mac", "ips", "default-route",
                    "cni-args", "portMappings", "bandwidth", "infiniband-guid", "other",
                ]),
                small_json(),
                0..5,
            ),
            0..4,
        )) {
            let v: Vec<Value> = elems
                .into_iter()
                .map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
                .collect();
            let _ = native(&Value::from(v).to_string());
        }

        #[test]
        fn render_then_parse_is_identity(text in annotation()) {
            for naming in [Naming::Native, Naming::Multus] {
                let v = parse(&text, "default", "web-0", naming).unwrap();
                let again = parse(&render(&v), "default", "web-0", naming).unwrap();
                prop_assert_eq!(&again, &v);
                // Resolved interfaces are distinct.
                let names: std::collections::BTreeSet<_> = v.iter().map(|e| &e.interface).collect();
                prop_assert_eq!(names.len(), v.len());
            }
        }

        #[test]
        fn text_form_agrees_with_json_form(items in prop::collection::vec(
            (prop::option::of(label()), label(), prop::option::of("data[0-9]{1,3}")),
            1..5,
        )) {
            let text = items
                .iter()
                .map(|(ns, name, i)| {
                    let mut s = ns.as_ref().map(|ns| format!("{ns}/")).unwrap_or_default();
                    s.push_str(name);
                    if let Some(i) = i {
                        s.push('@');
                        s.push_str(i);
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(" , ");
            let json: Vec<Value> = items
                .iter()
                .map(|(ns, name, i)| {
                    let mut m = Map::new();
                    m.insert("name".into(), name.clone().into());
                    if let Some(ns) = ns {
                        m.insert("namespace".into(), ns.clone().into());
                    }
                    if let Some(i) = i {
                        m.insert("interface".into(), i.clone().into());
                    }
                    Value::Object(m)
                })
                .collect();
            let a = native(&text);
            let b = native(&Value::from(json).to_string());
            prop_assert_eq!(a, b);
        }
    }
}
