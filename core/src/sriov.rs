//! SR-IOV decisions, all pure: which virtual function each SR-IOV
//! interface of a Pod gets, and what is set on it.
//!
//! - [`PciAddress`]: a PCI address `DDDD:BB:DD.F` as device plugins, sysfs
//!   and the network-status `device-info` write it (the domain may have up
//!   to 8 digits, as on servers with VMD).
//! - [`assign_devices`]: the kubelet hands a Pod a set of device IDs per
//!   resource; a Pod may have several interfaces of one resource. Each
//!   interface gets one device, in a stable order: the interfaces of a
//!   resource in the order of the Pod's selection elements, the devices in
//!   PCI address order, the k-th interface the k-th device. The answer
//!   depends only on the sets, not on the order the kubelet lists them in,
//!   so a restarted agent and a retried ADD reach the same pairing.
//! - [`vf_plan`]: what the agent sets on the VF: through its PF on a
//!   bare-metal node (VLAN, 802.1p priority, MAC, spoof check, trust), or,
//!   on a VM node where the VF is visible without its PF, only what the VF
//!   itself can take (its MAC); anything else is refused naming the node
//!   and the VF rather than silently not applied.
//! - [`VfRecord`]: what a VF was before a Pod got it, written on the VF
//!   itself so that detaching restores it after any restart.
//!
//! What does not live here: reading sysfs, asking the kubelet's
//! PodResources API, netlink (the agent, `spur-node`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::nad::VfSettings;
use crate::names::Mac;

/// A PCI address, `domain:bus:device.function` in hex (`0000:3b:02.1`).
///
/// Parsing accepts upper- and lower-case hex digits and a domain of 4 to 8
/// digits; [`Display`](fmt::Display) writes the kernel's form (lower case,
/// a domain of at least 4 digits), which is how sysfs names devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    domain: u32,
    bus: u8,
    device: u8,
    function: u8,
}

/// Why a text is not a [`PciAddress`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad PCI address {value:?}: {problem} \
     (expected domain:bus:device.function in hex, e.g. 0000:3b:02.1)"
)]
pub struct PciAddressError {
    /// The text given.
    pub value: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl FromStr for PciAddress {
    type Err = PciAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem| PciAddressError {
            value: s.to_owned(),
            problem,
        };
        let (domain, rest) = s.split_once(':').ok_or_else(|| err("no ':'"))?;
        let (bus, rest) = rest
            .split_once(':')
            .ok_or_else(|| err("no second ':' (the domain is required)"))?;
        let (device, function) = rest
            .split_once('.')
            .ok_or_else(|| err("no '.' before the function"))?;
        let domain = hex(domain, 4, 8).ok_or_else(|| err("domain must be 4 to 8 hex digits"))?;
        let bus = hex(bus, 2, 2).ok_or_else(|| err("bus must be 2 hex digits"))?;
        let device = hex(device, 2, 2)
            .filter(|d| *d <= 0x1f)
            .ok_or_else(|| err("device must be 2 hex digits, 00 to 1f"))?;
        let function = hex(function, 1, 1)
            .filter(|f| *f <= 7)
            .ok_or_else(|| err("function must be one digit, 0 to 7"))?;
        Ok(PciAddress {
            domain,
            bus: u8::try_from(bus).map_err(|_| err("bus must be 2 hex digits"))?,
            device: u8::try_from(device).map_err(|_| err("device out of range"))?,
            function: u8::try_from(function).map_err(|_| err("function out of range"))?,
        })
    }
}

impl PciAddress {
    /// The address `domain:bus:device.function`; `None` when the device is
    /// above 0x1f or the function above 7.
    pub const fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<PciAddress> {
        if device > 0x1f || function > 7 {
            return None;
        }
        Some(PciAddress {
            domain,
            bus,
            device,
            function,
        })
    }
}

/// `s` as a hex number of `min..=max` digits (no sign, no prefix).
fn hex(s: &str, min: usize, max: usize) -> Option<u32> {
    if s.len() < min || s.len() > max || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// One SR-IOV interface a Pod asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The interface name in the Pod.
    pub ifname: String,
    /// The network, `namespace/name` (for messages).
    pub network: String,
    /// The device-plugin resource its VF comes from.
    pub resource: String,
}

/// Why the Pod's devices do not serve its SR-IOV interfaces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    /// Fewer devices of a resource than interfaces asking for it.
    #[error(
        "Pod {pod}: {wanted} interface(s) ({networks}) take VFs of resource {resource}, but the \
         kubelet assigned the Pod {got} device(s) of it{listed}: request {resource}: {wanted} \
         in the Pod's container resources"
    )]
    TooFew {
        /// `namespace/name`.
        pod: String,
        /// The resource.
        resource: String,
        /// How many interfaces ask for it.
        wanted: usize,
        /// How many devices the Pod has.
        got: usize,
        /// The networks asking, comma-separated.
        networks: String,
        /// ` (a, b)` or empty.
        listed: String,
    },
    /// A device ID of an SR-IOV resource that is not a PCI address.
    #[error("Pod {pod}: resource {resource}: device ID {id:?} is not a VF's PCI address: {why}")]
    NotPci {
        /// `namespace/name`.
        pod: String,
        /// The resource.
        resource: String,
        /// The device ID.
        id: String,
        /// Why.
        why: String,
    },
}

/// Pairs each wanted interface with a device of its resource (see the
/// module doc for the order). `devices` maps resource names to the device
/// IDs the kubelet assigned the Pod; resources nothing asks for are
/// ignored, as are surplus devices.
pub fn assign_devices(
    pod: &str,
    wanted: &[Wanted],
    devices: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, PciAddress>, AssignError> {
    let mut by_resource: BTreeMap<&str, Vec<&Wanted>> = BTreeMap::new();
    for w in wanted {
        by_resource.entry(&w.resource).or_default().push(w);
    }
    let mut out = BTreeMap::new();
    for (resource, ws) in by_resource {
        let ids = devices.get(resource).map(Vec::as_slice).unwrap_or_default();
        let mut pcis = BTreeSet::new();
        for id in ids {
            let pci = id.parse::<PciAddress>().map_err(|e| AssignError::NotPci {
                pod: pod.to_string(),
                resource: resource.to_string(),
                id: id.clone(),
                why: e.problem.to_string(),
            })?;
            pcis.insert(pci);
        }
        if pcis.len() < ws.len() {
            let shown: Vec<String> = pcis.iter().map(ToString::to_string).collect();
            return Err(AssignError::TooFew {
                pod: pod.to_string(),
                resource: resource.to_string(),
                wanted: ws.len(),
                got: pcis.len(),
                networks: ws
                    .iter()
                    .map(|w| format!("{} as {}", w.network, w.ifname))
                    .collect::<Vec<_>>()
                    .join(", "),
                listed: if shown.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", shown.join(", "))
                },
            });
        }
        for (w, pci) in ws.into_iter().zip(pcis) {
            out.insert(w.ifname.clone(), pci);
        }
    }
    Ok(out)
}

/// Where the VF sits, as the node's sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfLocation {
    /// The VF's PCI address.
    pub pci: PciAddress,
    /// Its PF's netdev and the VF's index on it; `None` on a VM node,
    /// which sees the VF without its PF.
    pub pf: Option<(String, u16)>,
}

/// What a PF sets for one of its VFs (the default: nothing, untagged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PfVfSettings {
    /// The VF's MAC as the PF sets it (None: all zeros, "not set"; when
    /// setting, left as it is).
    pub mac: Option<Mac>,
    /// VLAN (0: untagged).
    pub vlan: u16,
    /// 802.1p priority of the VLAN tag.
    pub qos: u8,
    /// Spoof check (None: not reported / left as it is).
    pub spoofchk: Option<bool>,
    /// Trust (None: not reported / left as it is).
    pub trust: Option<bool>,
}

impl PfVfSettings {
    /// The settings that put a VF back to `self` (what the PF reported
    /// before a Pod got the VF): an unset MAC is written as the all-zero
    /// MAC, which PF drivers take as "none" (when setting, `None` would
    /// leave the Pod's MAC on the VF).
    pub fn to_restore(&self) -> PfVfSettings {
        PfVfSettings {
            mac: Some(self.mac.unwrap_or(Mac([0; 6]))),
            ..*self
        }
    }
}

/// What is set on the VF through its PF (bare metal only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PfSettings {
    /// The PF's netdev.
    pub pf: String,
    /// The VF's index on the PF.
    pub index: u16,
    /// VLAN and priority, MAC (requested, or the stable MAC of the
    /// interface), spoof check and trust.
    pub set: PfVfSettings,
}

/// How the agent configures one VF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfPlan {
    /// The VF.
    pub pci: PciAddress,
    /// Through the PF (bare metal), or `None` on a VM node.
    pub through_pf: Option<PfSettings>,
    /// The MAC to set on the VF's netdev itself: on a VM node the
    /// requested one (it may be refused by the hypervisor; then the ADD
    /// fails naming the VF); on bare metal the same MAC as through the PF,
    /// so the netdev matches at once.
    pub netdev_mac: Option<Mac>,
}

/// What a VM node cannot do to a VF without its PF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "network {network}: node {node}: VF {pci} is seen without its PF (a VM node), so {what} \
     cannot be applied to it; use a network without it for VM nodes"
)]
pub struct VmRefusal {
    /// The network.
    pub network: String,
    /// The node.
    pub node: String,
    /// The VF.
    pub pci: PciAddress,
    /// What was asked, e.g. `VLAN 100`.
    pub what: String,
}

/// Whether the network's VF settings can be applied where the VF sits:
/// always through a PF; on a VM node (no PF) neither a VLAN, nor QoS,
/// spoof check or trust. Needs no address: the agent asks before it
/// allocates, so a refused VF never holds one.
pub fn vf_fits(
    network: &str,
    node: &str,
    at: &VfLocation,
    vlan: u16,
    vf: &VfSettings,
) -> Result<(), VmRefusal> {
    if at.pf.is_some() {
        return Ok(());
    }
    let refuse = |what: String| VmRefusal {
        network: network.to_string(),
        node: node.to_string(),
        pci: at.pci,
        what,
    };
    if vlan != 0 {
        return Err(refuse(format!("VLAN {vlan}")));
    }
    if let Some(q) = vf.qos.filter(|q| *q != 0) {
        return Err(refuse(format!("vlanQoS {q}")));
    }
    if let Some(b) = vf.spoofchk {
        return Err(refuse(format!("spoofchk {}", on_off(b))));
    }
    if let Some(b) = vf.trust {
        return Err(refuse(format!("trust {}", on_off(b))));
    }
    Ok(())
}

/// Plans the VF's settings. `requested_mac` is the selection element's
/// `mac`; `stable_mac` the MAC the interface gets otherwise.
pub fn vf_plan(
    network: &str,
    node: &str,
    at: &VfLocation,
    vlan: u16,
    vf: &VfSettings,
    requested_mac: Option<Mac>,
    stable_mac: Mac,
) -> Result<VfPlan, VmRefusal> {
    match &at.pf {
        Some((pf, index)) => {
            let mac = requested_mac.unwrap_or(stable_mac);
            Ok(VfPlan {
                pci: at.pci,
                through_pf: Some(PfSettings {
                    pf: pf.clone(),
                    index: *index,
                    set: PfVfSettings {
                        mac: Some(mac),
                        vlan,
                        qos: vf.qos.unwrap_or(0),
                        spoofchk: vf.spoofchk,
                        trust: vf.trust,
                    },
                }),
                netdev_mac: Some(mac),
            })
        }
        None => {
            vf_fits(network, node, at, vlan, vf)?;
            Ok(VfPlan {
                pci: at.pci,
                through_pf: None,
                netdev_mac: requested_mac,
            })
        }
    }
}

/// What a VF was before a Pod got it, kept on the VF itself (its netdev's
/// alias, `IFLA_IFALIAS`) so that detaching restores it even after the
/// agent restarted or its node rebooted without the Pod's DEL: the netdev
/// name, and what the PF had set (MAC, VLAN and priority, spoof check,
/// trust). Rendered as one line, `spur-vf name=ens1f0v1 mac=... vlan=0
/// qos=0 spoofchk=on trust=off` (`-` for what the PF did not report);
/// [`VfRecord::parse`] reads it back and ignores aliases that are not
/// Spur's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfRecord {
    /// The netdev's name in the host namespace.
    pub name: String,
    /// The VF's PCI address.
    pub pci: PciAddress,
    /// Its PF's netdev and the VF's index there (None on a VM node).
    pub parent: Option<(String, u16)>,
    /// What the PF had set for the VF (all defaults on a VM node).
    pub pf: PfVfSettings,
}

/// The first word of a [`VfRecord`] alias.
const RECORD_TAG: &str = "spur-vf";

impl VfRecord {
    /// The alias text.
    pub fn render(&self) -> String {
        let flag = |b: Option<bool>| b.map_or("-", on_off);
        format!(
            "{RECORD_TAG} name={} pci={} pf={} vf={} mac={} vlan={} qos={} spoofchk={} trust={}",
            self.name,
            self.pci,
            self.parent.as_ref().map_or("-", |(pf, _)| pf.as_str()),
            self.parent
                .as_ref()
                .map_or_else(|| "-".to_string(), |(_, i)| i.to_string()),
            self.pf
                .mac
                .map_or_else(|| "-".to_string(), |m| m.to_string()),
            self.pf.vlan,
            self.pf.qos,
            flag(self.pf.spoofchk),
            flag(self.pf.trust),
        )
    }

    /// Reads an alias written by [`VfRecord::render`]; `None` for any
    /// other text (an alias the VF had before, or one that was damaged),
    /// so that nothing is restored from a guess.
    pub fn parse(alias: &str) -> Option<VfRecord> {
        let mut words = alias.split(' ');
        if words.next()? != RECORD_TAG {
            return None;
        }
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for w in words {
            let (k, v) = w.split_once('=')?;
            if fields.insert(k, v).is_some() {
                return None;
            }
        }
        let flag = |v: &str| match v {
            "on" => Some(Some(true)),
            "off" => Some(Some(false)),
            "-" => Some(None),
            _ => None,
        };
        let name = *fields.get("name")?;
        if crate::names::ifname_problem(name).is_some() {
            return None;
        }
        let mac = match *fields.get("mac")? {
            "-" => None,
            m => Some(m.parse::<Mac>().ok()?),
        };
        let vlan: u16 = fields.get("vlan")?.parse().ok()?;
        let qos: u8 = fields.get("qos")?.parse().ok()?;
        if vlan > crate::nad::MAX_VLAN || qos > 7 || fields.len() != 9 {
            return None;
        }
        let pci: PciAddress = fields.get("pci")?.parse().ok()?;
        let parent = match (*fields.get("pf")?, *fields.get("vf")?) {
            ("-", "-") => None,
            (pf, vf) if crate::names::ifname_problem(pf).is_none() => {
                Some((pf.to_string(), vf.parse().ok()?))
            }
            _ => return None,
        };
        Some(VfRecord {
            name: name.to_string(),
            pci,
            parent,
            pf: PfVfSettings {
                mac,
                vlan,
                qos,
                spoofchk: flag(fields.get("spoofchk")?)?,
                trust: flag(fields.get("trust")?)?,
            },
        })
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pci(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn pci_address_parses_and_prints_the_kernel_form() {
        assert_eq!(pci("0000:3B:02.1").to_string(), "0000:3b:02.1");
        assert_eq!(pci("10000:e1:1f.7").to_string(), "10000:e1:1f.7");
        assert!(pci("0000:3b:02.1") < pci("0000:3b:02.2"));
        assert!(pci("0000:3b:1f.7") < pci("0000:af:00.0"));
        for bad in [
            "",
            "3b:02.1",
            "000:3b:02.1",
            "0000:3b:20.1",
            "0000:3b:02.8",
            "0000:3b:2.1",
            "0000:+b:02.1",
            "0000:3b:02.1 ",
            "0000:3b:02:1",
            "123456789:3b:02.1",
        ] {
            let e = bad.parse::<PciAddress>().unwrap_err();
            assert_eq!(e.value, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    proptest! {
        #[test]
        fn valid_pci_addresses_round_trip(
            domain in 0u32..=0xffff_ffff,
            bus in any::<u8>(),
            device in 0u8..=0x1f,
            function in 0u8..=7,
            upper in any::<bool>(),
        ) {
            let text = format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}");
            let input = if upper { text.to_uppercase() } else { text.clone() };
            let p: PciAddress = input.parse().unwrap();
            prop_assert_eq!(p.to_string(), text.clone());
            prop_assert_eq!(text.parse::<PciAddress>().unwrap(), p);
        }

        #[test]
        fn random_text_never_panics(s in "\\PC{0,20}") {
            if let Err(e) = s.parse::<PciAddress>() {
                prop_assert_eq!(&e.value, &s);
            }
        }

        #[test]
        fn near_misses_never_panic(s in "[0-9a-fA-F:.+ -]{0,16}") {
            match s.parse::<PciAddress>() {
                Ok(p) => prop_assert_eq!(p.to_string().parse::<PciAddress>().unwrap(), p),
                Err(e) => prop_assert_eq!(e.value, s),
            }
        }

        #[test]
        fn assignment_ignores_the_kubelets_order(
            ids in proptest::collection::btree_set((0u8..32, 0u8..8), 1..6),
            n in 1usize..6,
            seed in any::<u64>(),
        ) {
            let ids: Vec<String> = ids
                .into_iter()
                .map(|(d, f)| format!("0000:3b:{d:02x}.{f:x}"))
                .collect();
            let wanted: Vec<Wanted> = (1..=n)
                .map(|i| Wanted {
                    ifname: format!("net{i}"),
                    network: format!("default/n{i}"),
                    resource: "intel.com/a".into(),
                })
                .collect();
            let mut shuffled = ids.clone();
            // A deterministic shuffle from the seed.
            let len = shuffled.len();
            for i in 0..len {
                let j = (seed.rotate_left(i as u32) as usize) % len;
                shuffled.swap(i, j);
            }
            let a = assign_devices("default/p", &wanted, &BTreeMap::from([("intel.com/a".to_string(), ids.clone())]));
            let b = assign_devices("default/p", &wanted, &BTreeMap::from([("intel.com/a".to_string(), shuffled)]));
            prop_assert_eq!(&a, &b);
            match a {
                Ok(m) => {
                    prop_assert!(n <= ids.len());
                    let got: BTreeSet<PciAddress> = m.values().copied().collect();
                    prop_assert_eq!(got.len(), n, "no device twice");
                }
                Err(e) => {
                    prop_assert!(n > ids.len());
                    let is_too_few = matches!(e, AssignError::TooFew { .. });
                    prop_assert!(is_too_few);
                }
            }
        }
    }

    fn want(ifname: &str, resource: &str) -> Wanted {
        Wanted {
            ifname: ifname.into(),
            network: format!("default/{ifname}-net"),
            resource: resource.into(),
        }
    }

    #[test]
    fn interfaces_take_devices_in_pci_order_per_resource() {
        let devices = BTreeMap::from([
            (
                "intel.com/a".to_string(),
                vec![
                    "0000:3b:02.3".to_string(),
                    "0000:3b:02.1".to_string(),
                    "0000:3b:02.2".to_string(),
                ],
            ),
            ("intel.com/b".to_string(), vec!["0000:af:00.4".to_string()]),
            ("nvidia.com/gpu".to_string(), vec!["GPU-1".to_string()]),
        ]);
        let got = assign_devices(
            "default/p",
            &[
                want("net1", "intel.com/a"),
                want("net2", "intel.com/b"),
                want("net3", "intel.com/a"),
            ],
            &devices,
        )
        .unwrap();
        assert_eq!(
            got,
            BTreeMap::from([
                ("net1".to_string(), pci("0000:3b:02.1")),
                ("net2".to_string(), pci("0000:af:00.4")),
                ("net3".to_string(), pci("0000:3b:02.2")),
            ])
        );
    }

    #[test]
    fn missing_or_foreign_devices_are_named() {
        let e = assign_devices(
            "default/p",
            &[want("net1", "intel.com/a"), want("net2", "intel.com/a")],
            &BTreeMap::from([("intel.com/a".to_string(), vec!["0000:3b:02.1".to_string()])]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Pod default/p: 2 interface(s) (default/net1-net as net1, default/net2-net as net2) \
             take VFs of resource intel.com/a, but the kubelet assigned the Pod 1 device(s) of it \
             (0000:3b:02.1): request intel.com/a: 2 in the Pod's container resources"
        );
        let none = assign_devices(
            "default/p",
            &[want("net1", "intel.com/a")],
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(none
            .to_string()
            .contains("assigned the Pod 0 device(s) of it: request"));
        let e = assign_devices(
            "default/p",
            &[want("net1", "intel.com/a")],
            &BTreeMap::from([("intel.com/a".to_string(), vec!["vf-7".to_string()])]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Pod default/p: resource intel.com/a: device ID \"vf-7\" is not a VF's PCI address: \
             no ':'"
        );
    }

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn the_vf_record_reads_back_and_ignores_other_aliases() {
        let r = VfRecord {
            name: "ens1f0v1".into(),
            pci: pci("0000:3b:02.1"),
            parent: Some(("ens1f0".into(), 1)),
            pf: PfVfSettings {
                mac: Some(mac("3a:1f:00:aa:bb:01")),
                vlan: 0,
                qos: 0,
                spoofchk: Some(true),
                trust: None,
            },
        };
        let text = r.render();
        assert_eq!(
            text,
            "spur-vf name=ens1f0v1 pci=0000:3b:02.1 pf=ens1f0 vf=1 mac=3a:1f:00:aa:bb:01 vlan=0 \
             qos=0 spoofchk=on trust=-"
        );
        assert_eq!(VfRecord::parse(&text), Some(r));
        for other in [
            "",
            "uplink to rack 7",
            "spur-vf",
            "spur-vf name=a/b pci=0000:3b:02.1 pf=- vf=- mac=- vlan=0 qos=0 spoofchk=- trust=-",
            "spur-vf name=v1 pci=0000:3b:02.1 pf=- vf=- mac=- vlan=5000 qos=0 spoofchk=- trust=-",
            "spur-vf name=v1 pci=0000:3b:02.1 pf=- vf=- mac=- vlan=0 qos=0 spoofchk=maybe trust=-",
            "spur-vf name=v1 pci=x pf=- vf=- mac=- vlan=0 qos=0 spoofchk=- trust=-",
            "spur-vf name=v1 pci=0000:3b:02.1 pf=p0 vf=- mac=- vlan=0 qos=0 spoofchk=- trust=-",
            "spur-vf name=v1 pci=0000:3b:02.1 pf=- vf=- mac=- vlan=0 qos=0 spoofchk=- trust=- x=1",
            "spur-vf name=v1 name=v2 pci=0000:3b:02.1 pf=- vf=- mac=- vlan=0 qos=0 spoofchk=- trust=-",
            "spur-vf name=v1 pci=0000:3b:02.1 pf=- vf=- mac=- vlan=0 qos=0 spoofchk=-",
        ] {
            assert_eq!(VfRecord::parse(other), None, "{other:?}");
        }
    }

    proptest! {
        #[test]
        fn vf_records_round_trip(
            name in "[a-z][a-z0-9]{0,14}",
            m in proptest::option::of(any::<[u8; 6]>()),
            vlan in 0u16..=4094,
            qos in 0u8..=7,
            spoofchk in proptest::option::of(any::<bool>()),
            trust in proptest::option::of(any::<bool>()),
        ) {
            let r = VfRecord {
                name,
                pci: PciAddress::from_str(&format!("0000:3b:{:02x}.{}", vlan % 32, qos)).unwrap(),
                parent: (vlan % 2 == 0).then(|| ("ens1f0".to_string(), qos.into())),
                pf: PfVfSettings { mac: m.map(Mac), vlan, qos, spoofchk, trust },
            };
            prop_assert_eq!(VfRecord::parse(&r.render()), Some(r));
        }

        #[test]
        fn vf_record_parsing_never_panics(s in "\\PC{0,80}") {
            let _ = VfRecord::parse(&s);
        }
    }

    #[test]
    fn restoring_an_unset_mac_clears_it() {
        let before = PfVfSettings {
            vlan: 7,
            spoofchk: Some(true),
            ..PfVfSettings::default()
        };
        let r = before.to_restore();
        assert_eq!(r.mac, Some(Mac([0; 6])));
        assert_eq!((r.vlan, r.spoofchk), (7, Some(true)));
        let set = PfVfSettings {
            mac: Some(Mac([2, 0, 0, 0, 0, 1])),
            ..before
        };
        assert_eq!(set.to_restore(), set);
    }

    #[test]
    fn bare_metal_vfs_are_set_through_the_pf() {
        let at = VfLocation {
            pci: pci("0000:3b:02.1"),
            pf: Some(("ens1f0".into(), 1)),
        };
        let vf = VfSettings {
            qos: Some(3),
            spoofchk: Some(false),
            trust: None,
        };
        let stable = mac("0a:58:0a:0a:00:05");
        let p = vf_plan("default/a", "node-a", &at, 100, &vf, None, stable).unwrap();
        assert_eq!(
            p.through_pf,
            Some(PfSettings {
                pf: "ens1f0".into(),
                index: 1,
                set: PfVfSettings {
                    mac: Some(stable),
                    vlan: 100,
                    qos: 3,
                    spoofchk: Some(false),
                    trust: None,
                }
            })
        );
        assert_eq!(p.netdev_mac, Some(stable));
        let asked = mac("02:00:00:00:00:01");
        let p = vf_plan("default/a", "node-a", &at, 0, &vf, Some(asked), stable).unwrap();
        assert_eq!(p.through_pf.and_then(|s| s.set.mac), Some(asked));
    }

    #[test]
    fn vm_nodes_refuse_what_needs_the_pf() {
        let at = VfLocation {
            pci: pci("0000:00:05.0"),
            pf: None,
        };
        let none = VfSettings::default();
        let stable = mac("0a:58:0a:0a:00:05");
        let p = vf_plan("default/a", "vm-1", &at, 0, &none, None, stable).unwrap();
        assert_eq!(p.through_pf, None);
        assert_eq!(
            p.netdev_mac, None,
            "the VF keeps the MAC the hypervisor gave it"
        );
        let asked = mac("02:00:00:00:00:01");
        let p = vf_plan("default/a", "vm-1", &at, 0, &none, Some(asked), stable).unwrap();
        assert_eq!(p.netdev_mac, Some(asked), "tried on the netdev itself");
        let e = vf_plan("default/a", "vm-1", &at, 100, &none, None, stable).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network default/a: node vm-1: VF 0000:00:05.0 is seen without its PF (a VM node), \
             so VLAN 100 cannot be applied to it; use a network without it for VM nodes"
        );
        for (vf, what) in [
            (
                VfSettings {
                    qos: Some(2),
                    ..none
                },
                "vlanQoS 2",
            ),
            (
                VfSettings {
                    spoofchk: Some(true),
                    ..none
                },
                "spoofchk on",
            ),
            (
                VfSettings {
                    trust: Some(false),
                    ..none
                },
                "trust off",
            ),
        ] {
            let e = vf_plan("default/a", "vm-1", &at, 0, &vf, None, stable).unwrap_err();
            assert_eq!(e.what, what);
        }
    }
}
