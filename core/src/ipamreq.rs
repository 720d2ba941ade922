//! The rules of one IPAM request: for a network of a Pod, which pools to
//! allocate from, which addresses are asked for, which VLAN the network
//! carries, and the IPAM result that the allocated addresses and the NAD's
//! static settings make together.
//!
//! What lives here: the Pod/Namespace annotations `ipam.spur.dev/ippools`
//! and `ipam.spur.dev/pod-ips` ([`PodIpamAnnotations`], with their parsers
//! and renderers), [`choose_pools`], [`requested_ips`] and
//! [`check_pod_ips`], [`network_vlan`] and [`ipam_result`]. What does not:
//! the allocation itself (the planner over blocks is
//! [`crate::allocator`]), reading Pods, Namespaces, NADs or pools from the
//! API, and rendering a result for a CNI version ([`crate::cni`] and the
//! plugin do that).
//!
//! # Pool choice
//!
//! A network's pools are its NAD's `ipam.ippools`, tried in order. The
//! `ipam.spur.dev/ippools` annotation (a comma list of pool names) is read
//! from the Pod, or, when the Pod does not set it, from the Pod's
//! Namespace; the Pod's annotations include those of the template it was
//! made from (a Deployment's or StatefulSet's template annotations arrive
//! as the Pod's). The annotation **narrows** the network's list to the
//! pools it names, keeping the NAD's order, so one annotation can pick a
//! pool for each of several networks of the Pod:
//!
//! | NAD `ipam.ippools` | annotation | pools used |
//! |---|---|---|
//! | `[a4, a6, b4]` | absent | `[a4, a6, b4]` |
//! | `[a4, a6, b4]` | `b4,a4` | `[a4, b4]` (NAD order) |
//! | `[a4, a6]` | `x4` (names none of them) | `[a4, a6]`: the annotation is about another network of the Pod |
//! | `[]` | `x4,x6` | `[x4, x6]`: the annotation's pools, in its order |
//!
//! An empty annotation counts as absent (the Namespace's then applies).
//!
//! # Requested addresses
//!
//! The `ips` of the Pod's selection element win. Otherwise the addresses of
//! the Pod's `ipam.spur.dev/pod-ips` annotation (a comma list, at most one
//! address per IP family) that lie in a range of one of the network's
//! pools are asked for; an address inside no pool of any of the Pod's
//! networks is an error ([`check_pod_ips`]). `pod-ips` is read from the Pod
//! only: a Namespace's would hand one fixed address to every Pod of the
//! Namespace, so a Namespace's `pod-ips` is ignored.
//!
//! # VLAN
//!
//! A non-zero NAD `vlan` wins. Otherwise the pools that set a non-zero
//! `subnetInfo.vlan` must agree, and give the VLAN; no pool setting one
//! means untagged (0).
//!
//! # Result
//!
//! The pool addresses (in pool order) followed by the NAD's static
//! `addresses` (in config order), the NAD's `routes` and `dns`, as the CNI
//! `static` plugin reports them. A static address equal to an allocated
//! one is an error, never a silent duplicate.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{Invalid, Kind, Subject};
use crate::ippool::PoolLayout;
use crate::nad::{Dns, Route, SpurIpamConfig};
use crate::names::dns1123_subdomain_problem;
use crate::pool::{to_u128, Family, Span};
use crate::selection::RequestedIp;

/// Pod or Namespace annotation: the pools the Pod's networks allocate from
/// (a comma list of IPPool names; the Pod's beats the Namespace's).
pub const POD_IPPOOLS_ANNOTATION: &str = "ipam.spur.dev/ippools";
/// Pod annotation: fixed addresses of the Pod (a comma list, at most one
/// per IP family).
pub const POD_IPS_ANNOTATION: &str = "ipam.spur.dev/pod-ips";

/// Where a Spur network's `ipam.ippools` sits in its NAD, as error keys
/// name it.
const NAD_IPPOOLS_KEY: &str = "spec.config.ipam.ippools";
/// Where a Spur network's static addresses sit in its NAD.
const NAD_ADDRESSES_KEY: &str = "spec.config.ipam.addresses";

/// The key of an annotation as error messages name it.
pub fn annotation_key(annotation: &str) -> String {
    format!("metadata.annotations[{annotation:?}]")
}

fn item_key(annotation: &str, index: usize) -> String {
    format!("{}[{index}]", annotation_key(annotation))
}

// ---------------------------------------------------------------------------
// Annotations
// ---------------------------------------------------------------------------

/// Pools named by an `ipam.spur.dev/ippools` annotation, and the object
/// that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotatedPools {
    /// The pool names, in the annotation's order, each once.
    pub pools: Vec<String>,
    /// The Pod or the Namespace the annotation was read from.
    pub source: Subject,
}

/// The IPAM annotations that apply to one Pod, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIpamAnnotations {
    /// The Pod, as messages name it (`Pod namespace/name`).
    pub pod: Subject,
    /// `ipam.spur.dev/ippools` of the Pod, else of its Namespace; `None`
    /// when neither sets a non-empty one.
    pub ippools: Option<AnnotatedPools>,
    /// `ipam.spur.dev/pod-ips` of the Pod: at most one address per IP
    /// family, in the annotation's order.
    pub pod_ips: Vec<IpAddr>,
}

impl PodIpamAnnotations {
    /// Reads the annotations of Pod `pod_namespace/pod_name` (its own
    /// `pod` annotations, template annotations included) and of its
    /// Namespace (`namespace`, when known).
    ///
    /// Errors name the object carrying the bad annotation (the Pod or
    /// `Namespace <name>`), the annotation and the value.
    pub fn from_annotations(
        pod_namespace: &str,
        pod_name: &str,
        pod: &BTreeMap<String, String>,
        namespace: Option<&BTreeMap<String, String>>,
    ) -> Result<PodIpamAnnotations, Invalid> {
        let pod_subject = Subject::new("Pod", Some(pod_namespace), pod_name);
        let ns_subject = Subject::new("Namespace", None, pod_namespace);
        let mut ippools = None;
        let sources = [(Some(pod), &pod_subject), (namespace, &ns_subject)];
        for (annotations, subject) in sources {
            let Some(value) = annotations.and_then(|a| a.get(POD_IPPOOLS_ANNOTATION)) else {
                continue;
            };
            let pools = parse_ippools(subject, value)?;
            if !pools.is_empty() {
                ippools = Some(AnnotatedPools {
                    pools,
                    source: subject.clone(),
                });
                break;
            }
        }
        let pod_ips = match pod.get(POD_IPS_ANNOTATION) {
            Some(value) => parse_pod_ips(&pod_subject, value)?,
            None => Vec::new(),
        };
        Ok(PodIpamAnnotations {
            pod: pod_subject,
            ippools,
            pod_ips,
        })
    }

    /// The annotated pool names, when an annotation applies.
    pub fn pools(&self) -> Option<&[String]> {
        self.ippools.as_ref().map(|a| a.pools.as_slice())
    }
}

/// Parses an `ipam.spur.dev/ippools` value of `subject`: IPPool names
/// (DNS-1123 subdomains) separated by commas, white space around them
/// ignored, each at most once. Empty or white-space-only text names no
/// pool; an empty item (`a,,b`, a trailing comma) is an error.
pub fn parse_ippools(subject: &Subject, value: &str) -> Result<Vec<String>, Invalid> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = Vec::new();
    for (i, item) in value.split(',').enumerate() {
        let name = item.trim();
        let key = item_key(POD_IPPOOLS_ANNOTATION, i);
        if name.is_empty() {
            return Err(subject.error(
                Kind::Invalid,
                key,
                None,
                "empty item in the comma-separated list; write IPPool names separated by commas",
            ));
        }
        if let Some(why) = dns1123_subdomain_problem(name) {
            return Err(subject.invalid(key, shown(name), format!("is not an IPPool name: {why}")));
        }
        if let Some(j) = out.iter().position(|p| p == name) {
            return Err(subject.conflict(
                key,
                shown(name),
                format!("is listed twice (also item [{j}]); list each pool once"),
            ));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// Writes pool names as an `ipam.spur.dev/ippools` value
/// ([`parse_ippools`] reads it back).
pub fn render_ippools(pools: &[String]) -> String {
    pools.join(",")
}

/// Parses an `ipam.spur.dev/pod-ips` value of `subject`: IP addresses
/// (without prefix length) separated by commas, white space around them
/// ignored, at most one per IP family. Empty or white-space-only text asks
/// for no address.
pub fn parse_pod_ips(subject: &Subject, value: &str) -> Result<Vec<IpAddr>, Invalid> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for (i, item) in value.split(',').enumerate() {
        let text = item.trim();
        let key = item_key(POD_IPS_ANNOTATION, i);
        if text.is_empty() {
            return Err(subject.error(
                Kind::Invalid,
                key,
                None,
                "empty item in the comma-separated list; write at most one IPv4 and one IPv6 \
                 address, separated by a comma",
            ));
        }
        let ip: IpAddr = text.parse().map_err(|_| {
            let why = if text.contains('/') {
                "must be an IP address without prefix length (the pool's subnet gives it)"
            } else {
                "must be an IPv4 or IPv6 address"
            };
            subject.invalid(key.clone(), shown(text), why)
        })?;
        if let Some((j, other)) = out
            .iter()
            .enumerate()
            .find(|(_, o)| Family::of(**o) == Family::of(ip))
        {
            return Err(subject.conflict(
                key,
                shown(text),
                format!(
                    "a Pod gets at most one fixed address per IP family, and item [{j}] is \
                     already the {} address {other}",
                    Family::of(ip)
                ),
            ));
        }
        out.push(ip);
    }
    Ok(out)
}

/// Writes addresses as an `ipam.spur.dev/pod-ips` value ([`parse_pod_ips`]
/// reads it back).
pub fn render_pod_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------
// Pools and addresses of one network
// ---------------------------------------------------------------------------

/// The pools one network of a Pod allocates from, in the order they are
/// tried: `network_pools` (the NAD's `ipam.ippools`) narrowed by the
/// annotated pools (see the module documentation for the rule).
///
/// Only for networks whose config has a Spur `ipam` section: a network
/// without one gets no addresses, whatever the annotation says.
pub fn choose_pools(network_pools: &[String], annotated: Option<&[String]>) -> Vec<String> {
    let Some(annotated) = annotated.filter(|a| !a.is_empty()) else {
        return network_pools.to_vec();
    };
    if network_pools.is_empty() {
        return annotated.to_vec();
    }
    let narrowed: Vec<String> = network_pools
        .iter()
        .filter(|p| annotated.contains(p))
        .cloned()
        .collect();
    if narrowed.is_empty() {
        network_pools.to_vec()
    } else {
        narrowed
    }
}

/// True when `ip` lies in one of the ranges of `pool` (excluded addresses
/// and the gateway included: the pool is the one that would refuse them).
/// Ranges of different pools never overlap, so at most one pool holds an
/// address this way.
pub fn in_pool_ranges(pool: &PoolLayout, ip: IpAddr) -> bool {
    if Family::of(ip) != pool.family {
        return false;
    }
    let one = Span::new(to_u128(ip), to_u128(ip));
    pool.ranges.iter().any(|r| r.span().covers(&one))
}

/// The addresses one network asks for: the selection element's `ips` when
/// it has any, else the `pod-ips` addresses that lie in a range of one of
/// the network's `pools`.
pub fn requested_ips(
    element_ips: &[RequestedIp],
    pod_ips: &[IpAddr],
    pools: &[&PoolLayout],
) -> Vec<IpAddr> {
    if !element_ips.is_empty() {
        return element_ips.iter().map(|r| r.addr).collect();
    }
    pod_ips
        .iter()
        .copied()
        .filter(|ip| pools.iter().any(|p| in_pool_ranges(p, *ip)))
        .collect()
}

/// One network of a Pod, as [`check_pod_ips`] needs it.
#[derive(Debug, Clone)]
pub struct NetworkPools<'a> {
    /// The network, as messages name it (`namespace/nad`).
    pub network: String,
    /// The pools chosen for it ([`choose_pools`]), as far as they are known.
    pub pools: Vec<&'a PoolLayout>,
    /// True when the selection element carries `ips` (they win over
    /// `pod-ips` for this network).
    pub element_ips: bool,
}

/// Checks the `pod-ips` addresses against all networks of the Pod: each
/// must lie in a range of a pool of one of them (else [`Kind::Invalid`]
/// naming the annotation, the address and the pools), and no two networks
/// that take `pod-ips` may both claim it (a pool shared by two networks of
/// the Pod; [`Kind::Conflict`] naming both).
pub fn check_pod_ips(
    pod: &Subject,
    pod_ips: &[IpAddr],
    networks: &[NetworkPools<'_>],
) -> Result<(), Invalid> {
    for (i, &ip) in pod_ips.iter().enumerate() {
        let key = item_key(POD_IPS_ANNOTATION, i);
        let holders: Vec<&NetworkPools<'_>> = networks
            .iter()
            .filter(|n| n.pools.iter().any(|p| in_pool_ranges(p, ip)))
            .collect();
        if holders.is_empty() {
            let mut names: Vec<&str> = Vec::new();
            for n in networks {
                for p in &n.pools {
                    if !names.contains(&p.name.as_str()) {
                        names.push(&p.name);
                    }
                }
            }
            let reason = if names.is_empty() {
                "is inside none of the pools of the Pod's networks (they have no pools)".to_string()
            } else {
                format!(
                    "is inside none of the pools of the Pod's networks ({})",
                    names.join(", ")
                )
            };
            return Err(pod.invalid(key, shown(&ip.to_string()), reason));
        }
        let takers: Vec<&&NetworkPools<'_>> = holders.iter().filter(|n| !n.element_ips).collect();
        if let [first, second, ..] = takers.as_slice() {
            return Err(pod.conflict(
                key,
                shown(&ip.to_string()),
                format!(
                    "lies in pools of two networks of the Pod ({} and {}); a fixed address \
                     serves one interface: give the networks different pools or set ips in \
                     their selection elements",
                    first.network, second.network
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// VLAN
// ---------------------------------------------------------------------------

/// The VLAN of a network: `nad_vlan` when non-zero; else the non-zero
/// `subnetInfo.vlan` the `pools` agree on; else 0 (untagged). Two pools
/// with different non-zero VLANs are a [`Kind::Conflict`] of the NAD
/// naming both pools and both VLANs.
pub fn network_vlan(
    nad: &Subject,
    nad_vlan: Option<u16>,
    pools: &[&PoolLayout],
) -> Result<u16, Invalid> {
    if let Some(v) = nad_vlan.filter(|v| *v != 0) {
        return Ok(v);
    }
    let mut first: Option<&PoolLayout> = None;
    for p in pools.iter().filter(|p| p.vlan != 0) {
        match first {
            None => first = Some(p),
            Some(f) if f.vlan == p.vlan => {}
            Some(f) => {
                return Err(nad.conflict(
                    NAD_IPPOOLS_KEY,
                    format!("[{:?}, {:?}]", f.name, p.name),
                    format!(
                        "IPPool {} carries VLAN {} but IPPool {} carries VLAN {}; the pools of \
                         one network must carry the same VLAN, unless the network's config \
                         sets a non-zero vlan",
                        f.name, f.vlan, p.name, p.vlan
                    ),
                ));
            }
        }
    }
    Ok(first.map_or(0, |p| p.vlan))
}

// ---------------------------------------------------------------------------
// Result
// ---------------------------------------------------------------------------

/// One address of an interface, as a CNI result lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpConfig {
    /// The address with the subnet's prefix length (`10.10.1.5/24`).
    pub address: IpNet,
    /// The subnet's gateway, when known.
    pub gateway: Option<IpAddr>,
}

/// An address allocated from a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolAddress {
    /// The pool's name.
    pub pool: String,
    /// The address with the pool's prefix length and gateway.
    pub config: IpConfig,
}

impl PoolAddress {
    /// `ip` from `pool`: `ip/prefixLength` with the pool's gateway; `None`
    /// when `ip` is not of the pool's family.
    pub fn new(pool: &PoolLayout, ip: IpAddr) -> Option<PoolAddress> {
        if Family::of(ip) != pool.family {
            return None;
        }
        Some(PoolAddress {
            pool: pool.name.clone(),
            config: IpConfig {
                address: pool.interface_address(ip)?,
                gateway: Some(pool.gateway),
            },
        })
    }
}

/// What IPAM gives one interface, in the shape of a CNI result (whatever
/// CNI version renders it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpamResult {
    /// Addresses: those from pools first (in pool order), then the static
    /// ones (in config order).
    pub ips: Vec<IpConfig>,
    /// Routes, from the config's `routes`.
    pub routes: Vec<Route>,
    /// DNS settings, from the config's `dns`.
    pub dns: Dns,
}

/// The result of one network: the `allocated` pool addresses plus the
/// static `addresses`, `routes` and `dns` of `ipam` (as the CNI `static`
/// plugin reports them). A static address whose IP equals an allocated
/// one is a [`Kind::Conflict`] of `nad` naming the static address and the
/// pool.
pub fn ipam_result(
    nad: &Subject,
    allocated: &[PoolAddress],
    ipam: &SpurIpamConfig,
) -> Result<IpamResult, Invalid> {
    let mut ips: Vec<IpConfig> = allocated.iter().map(|a| a.config).collect();
    for (i, s) in ipam.addresses.iter().enumerate() {
        if let Some(a) = allocated
            .iter()
            .find(|a| a.config.address.addr() == s.address.addr())
        {
            return Err(nad.conflict(
                format!("{NAD_ADDRESSES_KEY}[{i}].address"),
                shown(&s.address.to_string()),
                format!(
                    "{} was also allocated from IPPool {}; a static address must not lie in \
                     a pool the network allocates from (exclude it from the pool)",
                    s.address.addr(),
                    a.pool
                ),
            ));
        }
        ips.push(IpConfig {
            address: s.address,
            gateway: s.gateway,
        });
    }
    Ok(IpamResult {
        ips,
        routes: ipam.routes.clone(),
        dns: ipam.dns.clone().unwrap_or_default(),
    })
}

/// A value as messages show it: quoted, as the user wrote it.
fn shown(s: &str) -> String {
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ippool::{IPPoolSpec, IpRange, SubnetInfo};
    use crate::nad::StaticAddress;
    use proptest::prelude::*;

    fn pool(name: &str, range: &str, gw: &str, prefix: u8, vlan: Option<u16>) -> PoolLayout {
        let exclude = if name == "a4" {
            vec!["10.10.1.7".into()]
        } else {
            vec![]
        };
        PoolLayout::from_spec(
            name,
            &IPPoolSpec {
                ip_ranges: vec![IpRange::cidr(range)],
                subnet_info: SubnetInfo {
                    gateway: gw.into(),
                    prefix_length: prefix,
                    vlan,
                },
                exclude,
            },
        )
        .unwrap()
    }

    fn a4() -> PoolLayout {
        pool("a4", "10.10.1.0/26", "10.10.1.1", 24, Some(100))
    }
    fn a6() -> PoolLayout {
        pool("a6", "fd00:10:1::/120", "fd00:10:1::1", 64, Some(100))
    }
    fn b4() -> PoolLayout {
        pool("b4", "10.20.1.0/26", "10.20.1.1", 24, Some(200))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod() -> Subject {
        Subject::new("Pod", Some("default"), "web-0")
    }

    fn nad() -> Subject {
        Subject::new("NetworkAttachmentDefinition", Some("default"), "vlan100")
    }

    // ----- pool choice ------------------------------------------------------

    #[test]
    fn annotation_narrows_the_network_pools_in_nad_order() {
        let nad = names(&["a4", "a6", "b4"]);
        assert_eq!(choose_pools(&nad, None), nad);
        assert_eq!(
            choose_pools(&nad, Some(&names(&["b4", "a4"]))),
            names(&["a4", "b4"])
        );
        assert_eq!(
            choose_pools(&nad, Some(&names(&["a6", "zz"]))),
            names(&["a6"])
        );
    }

    #[test]
    fn annotation_about_another_network_leaves_the_list() {
        let nad = names(&["a4", "a6"]);
        assert_eq!(choose_pools(&nad, Some(&names(&["x4"]))), nad);
        assert_eq!(choose_pools(&nad, Some(&[])), nad);
    }

    #[test]
    fn network_without_pools_takes_the_annotation() {
        assert_eq!(
            choose_pools(&[], Some(&names(&["x6", "x4"]))),
            names(&["x6", "x4"])
        );
        assert!(choose_pools(&[], None).is_empty());
    }

    #[test]
    fn pod_annotation_beats_namespace_annotation() {
        let ns = annotations(&[(POD_IPPOOLS_ANNOTATION, "b4")]);
        let p = annotations(&[(POD_IPPOOLS_ANNOTATION, "a4, a6")]);
        let got = PodIpamAnnotations::from_annotations("default", "web-0", &p, Some(&ns)).unwrap();
        assert_eq!(got.pools(), Some(names(&["a4", "a6"]).as_slice()));
        assert_eq!(got.ippools.unwrap().source, pod());

        let none = BTreeMap::new();
        let got =
            PodIpamAnnotations::from_annotations("default", "web-0", &none, Some(&ns)).unwrap();
        assert_eq!(got.pools(), Some(names(&["b4"]).as_slice()));
        assert_eq!(
            got.ippools.unwrap().source,
            Subject::new("Namespace", None, "default")
        );

        // An empty Pod annotation counts as absent.
        let empty = annotations(&[(POD_IPPOOLS_ANNOTATION, " ")]);
        let got =
            PodIpamAnnotations::from_annotations("default", "web-0", &empty, Some(&ns)).unwrap();
        assert_eq!(got.pools(), Some(names(&["b4"]).as_slice()));

        let got = PodIpamAnnotations::from_annotations("default", "web-0", &none, None).unwrap();
        assert_eq!(got.pools(), None);
        assert!(got.pod_ips.is_empty());
    }

    #[test]
    fn pod_ips_come_from_the_pod_only() {
        let ns = annotations(&[(POD_IPS_ANNOTATION, "10.10.1.5")]);
        let got =
            PodIpamAnnotations::from_annotations("default", "web-0", &BTreeMap::new(), Some(&ns))
                .unwrap();
        assert!(got.pod_ips.is_empty());
        let p = annotations(&[(POD_IPS_ANNOTATION, "10.10.1.5, fd00:10:1::5")]);
        let got = PodIpamAnnotations::from_annotations("default", "web-0", &p, Some(&ns)).unwrap();
        assert_eq!(got.pod_ips, [ip("10.10.1.5"), ip("fd00:10:1::5")]);
    }

    #[test]
    fn bad_namespace_annotation_names_the_namespace() {
        let ns = annotations(&[(POD_IPPOOLS_ANNOTATION, "Bad_Pool")]);
        let e = PodIpamAnnotations::from_annotations("lab", "web-0", &BTreeMap::new(), Some(&ns))
            .unwrap_err();
        assert_eq!(e.object, "Namespace lab");
        assert_eq!(e.key, "metadata.annotations[\"ipam.spur.dev/ippools\"][0]");
        // The Pod's own annotation wins, so the Namespace's is not read.
        let p = annotations(&[(POD_IPPOOLS_ANNOTATION, "a4")]);
        assert!(PodIpamAnnotations::from_annotations("lab", "web-0", &p, Some(&ns)).is_ok());
    }

    #[test]
    fn ippools_parser_rules() {
        let s = pod();
        assert_eq!(parse_ippools(&s, " a4 ,a6").unwrap(), names(&["a4", "a6"]));
        assert!(parse_ippools(&s, "").unwrap().is_empty());
        assert_eq!(parse_ippools(&s, "a4,,a6").unwrap_err().kind, Kind::Invalid);
        assert_eq!(parse_ippools(&s, "a4,").unwrap_err().kind, Kind::Invalid);
        assert_eq!(parse_ippools(&s, "a4,a4").unwrap_err().kind, Kind::Conflict);
        assert_eq!(parse_ippools(&s, "A4").unwrap_err().kind, Kind::Invalid);
    }

    #[test]
    fn pod_ips_parser_rules() {
        let s = pod();
        assert_eq!(
            parse_pod_ips(&s, "fd00::5 , 10.0.0.5").unwrap(),
            [ip("fd00::5"), ip("10.0.0.5")]
        );
        assert!(parse_pod_ips(&s, "  ").unwrap().is_empty());
        assert_eq!(
            parse_pod_ips(&s, "10.0.0.5,10.0.0.6").unwrap_err().kind,
            Kind::Conflict
        );
        assert_eq!(
            parse_pod_ips(&s, "10.0.0.5,10.0.0.5").unwrap_err().kind,
            Kind::Conflict
        );
        assert_eq!(
            parse_pod_ips(&s, "10.0.0.5/24").unwrap_err().kind,
            Kind::Invalid
        );
        assert_eq!(
            parse_pod_ips(&s, "10.0.0.5,").unwrap_err().kind,
            Kind::Invalid
        );
    }

    // ----- requested addresses -------------------------------------------

    #[test]
    fn element_ips_win_over_pod_ips() {
        let (a4, a6) = (a4(), a6());
        let el: Vec<RequestedIp> = vec!["10.10.1.9/24".parse().unwrap()];
        let pod_ips = [ip("10.10.1.5"), ip("fd00:10:1::5")];
        assert_eq!(requested_ips(&el, &pod_ips, &[&a4, &a6]), [ip("10.10.1.9")]);
    }

    #[test]
    fn pod_ips_go_to_the_network_whose_pools_hold_them() {
        let (a4, a6, b4) = (a4(), a6(), b4());
        let pod_ips = [ip("10.20.1.5"), ip("fd00:10:1::5")];
        assert_eq!(
            requested_ips(&[], &pod_ips, &[&a4, &a6]),
            [ip("fd00:10:1::5")]
        );
        assert_eq!(requested_ips(&[], &pod_ips, &[&b4]), [ip("10.20.1.5")]);
        // Excluded addresses and addresses outside the ranges: the range
        // decides, the allocator then refuses excluded ones.
        assert!(in_pool_ranges(&a4, ip("10.10.1.7")));
        assert!(!in_pool_ranges(&a4, ip("10.10.1.100")));
        // IPv4 numbers never match IPv6 pools.
        assert!(!in_pool_ranges(&a6, ip("0.0.0.5")));
    }

    #[test]
    fn pod_ips_outside_every_pool_are_an_error() {
        let (a4, a6, b4) = (a4(), a6(), b4());
        let nets = [
            NetworkPools {
                network: "default/vlan100".into(),
                pools: vec![&a4, &a6],
                element_ips: false,
            },
            NetworkPools {
                network: "default/vlan200".into(),
                pools: vec![&b4],
                element_ips: false,
            },
        ];
        assert!(check_pod_ips(&pod(), &[ip("10.20.1.5"), ip("fd00:10:1::5")], &nets).is_ok());
        let e = check_pod_ips(&pod(), &[ip("10.30.0.5")], &nets).unwrap_err();
        assert_eq!(e.kind, Kind::Invalid);
        assert_eq!(e.value.as_deref(), Some("\"10.30.0.5\""));
        assert!(e.reason.contains("a4, a6, b4"), "{e}");
    }

    #[test]
    fn pod_ips_in_a_pool_shared_by_two_networks_are_a_conflict() {
        let a4 = a4();
        let net = |name: &str, element_ips| NetworkPools {
            network: name.into(),
            pools: vec![&a4],
            element_ips,
        };
        let nets = [net("default/x", false), net("default/y", false)];
        let e = check_pod_ips(&pod(), &[ip("10.10.1.5")], &nets).unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        // One of them has its own ips: the other takes the fixed address.
        let nets = [net("default/x", true), net("default/y", false)];
        assert!(check_pod_ips(&pod(), &[ip("10.10.1.5")], &nets).is_ok());
    }

    // ----- VLAN --------------------------------------------------------------

    #[test]
    fn vlan_rules() {
        let (a4, a6, b4) = (a4(), a6(), b4());
        let untagged = pool("u4", "10.30.1.0/26", "10.30.1.1", 24, None);
        assert_eq!(network_vlan(&nad(), Some(300), &[&a4, &b4]), Ok(300));
        assert_eq!(network_vlan(&nad(), Some(0), &[&a4, &a6]), Ok(100));
        assert_eq!(network_vlan(&nad(), None, &[&untagged, &a4]), Ok(100));
        assert_eq!(network_vlan(&nad(), None, &[&untagged]), Ok(0));
        assert_eq!(network_vlan(&nad(), None, &[]), Ok(0));
        let e = network_vlan(&nad(), None, &[&a4, &untagged, &b4]).unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        assert!(e.reason.contains("a4") && e.reason.contains("b4"), "{e}");
    }

    // ----- result ------------------------------------------------------------

    fn ipam_config() -> SpurIpamConfig {
        SpurIpamConfig {
            ippools: names(&["a4", "a6"]),
            addresses: vec![StaticAddress {
                address: "10.10.0.1/24".parse().unwrap(),
                gateway: Some(ip("10.10.0.254")),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
            }],
            dns: Some(Dns {
                nameservers: vec![ip("10.10.0.53")],
                domain: Some("example.com".into()),
                search: vec![],
                options: vec![],
            }),
        }
    }

    #[test]
    fn result_lists_pool_then_static_addresses() {
        let (a4, a6) = (a4(), a6());
        let allocated = [
            PoolAddress::new(&a4, ip("10.10.1.2")).unwrap(),
            PoolAddress::new(&a6, ip("fd00:10:1::2")).unwrap(),
        ];
        let r = ipam_result(&nad(), &allocated, &ipam_config()).unwrap();
        let shown: Vec<String> = r
            .ips
            .iter()
            .map(|c| format!("{} via {:?}", c.address, c.gateway))
            .collect();
        assert_eq!(
            shown,
            [
                "10.10.1.2/24 via Some(10.10.1.1)",
                "fd00:10:1::2/64 via Some(fd00:10:1::1)",
                "10.10.0.1/24 via Some(10.10.0.254)"
            ]
        );
        assert_eq!(r.routes, ipam_config().routes);
        assert_eq!(r.dns.nameservers, [ip("10.10.0.53")]);
        assert!(PoolAddress::new(&a4, ip("fd00::1")).is_none());
        // Without dns in the config, the result's is empty.
        let mut plain = ipam_config();
        plain.dns = None;
        assert_eq!(
            ipam_result(&nad(), &[], &plain).unwrap().dns,
            Dns::default()
        );
    }

    #[test]
    fn static_address_equal_to_an_allocated_one_is_an_error() {
        let a4 = a4();
        let mut cfg = ipam_config();
        cfg.addresses[0].address = "10.10.1.2/26".parse().unwrap();
        let allocated = [PoolAddress::new(&a4, ip("10.10.1.2")).unwrap()];
        let e = ipam_result(&nad(), &allocated, &cfg).unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(e.key, "spec.config.ipam.addresses[0].address");
    }

    // ----- snapshots of the messages users read ----------------------------

    #[test]
    fn snapshot_messages() {
        let (a4, a6, b4) = (a4(), a6(), b4());
        let nets = [NetworkPools {
            network: "default/vlan100".into(),
            pools: vec![&a4, &a6],
            element_ips: false,
        }];
        let mut cfg = ipam_config();
        cfg.addresses[0].address = "10.10.1.2/24".parse().unwrap();
        let allocated = [PoolAddress::new(&a4, ip("10.10.1.2")).unwrap()];
        let ns = Subject::new("Namespace", None, "lab");
        let messages = [
            parse_ippools(&pod(), "a4,,a6").unwrap_err(),
            parse_ippools(&ns, "vlan100_ipv4").unwrap_err(),
            parse_ippools(&pod(), "a4, a6, a4").unwrap_err(),
            parse_pod_ips(&pod(), "10.10.1.5,10.10.1.6").unwrap_err(),
            parse_pod_ips(&pod(), "10.10.1.5/24").unwrap_err(),
            parse_pod_ips(&pod(), "ten.ten.one.five").unwrap_err(),
            check_pod_ips(&pod(), &[ip("10.10.1.5"), ip("10.99.0.5")], &nets).unwrap_err(),
            network_vlan(&nad(), None, &[&a4, &b4]).unwrap_err(),
            ipam_result(&nad(), &allocated, &cfg).unwrap_err(),
        ];
        let text: Vec<String> = messages.iter().map(Invalid::to_string).collect();
        insta::assert_snapshot!("ipamreq_messages", text.join("\n"));
    }

    // ----- properties of the annotation parsers ----------------------------

    fn pool_name() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,5}){0,2}"
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in "\\PC{0,60}") {
            let _ = parse_ippools(&pod(), &text);
            let _ = parse_pod_ips(&pod(), &text);
        }

        #[test]
        fn parsers_never_panic_on_near_valid_text(text in "[a-z0-9.:, /-]{0,40}") {
            let _ = parse_ippools(&pod(), &text);
            let _ = parse_pod_ips(&pod(), &text);
        }

        #[test]
        fn ippools_render_then_parse(pools in prop::collection::btree_set(pool_name(), 0..6)) {
            let pools: Vec<String> = pools.into_iter().collect();
            let text = render_ippools(&pools);
            prop_assert_eq!(parse_ippools(&pod(), &text).unwrap(), pools);
        }

        #[test]
        fn pod_ips_render_then_parse(
            v4 in proptest::option::of(any::<u32>()),
            v6 in proptest::option::of(any::<u128>()),
            v6_first in any::<bool>(),
        ) {
            let mut ips: Vec<IpAddr> = Vec::new();
            ips.extend(v4.map(|v| IpAddr::from(std::net::Ipv4Addr::from(v))));
            ips.extend(v6.map(|v| IpAddr::from(std::net::Ipv6Addr::from(v))));
            if v6_first {
                ips.reverse();
            }
            let text = render_pod_ips(&ips);
            prop_assert_eq!(parse_pod_ips(&pod(), &text).unwrap(), ips);
        }
    }
}
