//! The report both runners print: the facts of one run, as JSON (with
//! `--json FILE`) and as a human-readable summary ([`Report`]'s `Display`).
//!
//! Reading is lenient about keys it does not know (a newer runner may add
//! some); writing produces exactly the shape of the format.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::refs::{InterfaceRef, ObjectRef, PodRef};

/// Which runner produced a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runner {
    /// The deterministic simulator (`spur-sim`).
    Sim,
    /// The hardware harness (`spur-hil`).
    Hil,
}

impl fmt::Display for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runner::Sim => "sim",
            Runner::Hil => "hil",
        })
    }
}

/// The facts of one run of a testbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The testbed's name.
    pub testbed: String,
    /// Which runner ran it.
    pub runner: Runner,
    /// The simulator's seed (absent on the harness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Every Pod the run handled.
    #[serde(default)]
    pub pods: Vec<PodReport>,
    /// `source -> destination -> reached`, for every pair measured.
    #[serde(default)]
    pub reachability: BTreeMap<InterfaceRef, BTreeMap<InterfaceRef, bool>>,
    /// Multicast measurements.
    #[serde(default)]
    pub multicast: Vec<MulticastReport>,
    /// IPPool usage after the run.
    #[serde(default)]
    pub pools: Vec<PoolReport>,
    /// Objects the API refused.
    #[serde(default)]
    pub rejected: Vec<Rejection>,
    /// Failed expectations, one sentence each (empty: the run passed).
    #[serde(default)]
    pub failures: Vec<String>,
}

/// The outcome of one Pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReport {
    /// The Pod.
    pub pod: PodRef,
    /// The node it ran on (`null` when it was never placed).
    #[serde(default)]
    pub node: Option<String>,
    /// True when every requested network was attached.
    pub ready: bool,
    /// Why it is not ready (`null` when it is).
    #[serde(default)]
    pub reason: Option<String>,
    /// Its interfaces, the primary `eth0` included.
    #[serde(default)]
    pub interfaces: Vec<InterfaceReport>,
}

impl PodReport {
    /// The interface named `name`.
    pub fn interface(&self, name: &str) -> Option<&InterfaceReport> {
        self.interfaces.iter().find(|i| i.name == name)
    }
}

/// One interface of a Pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceReport {
    /// The name inside the Pod.
    pub name: String,
    /// The NetworkAttachmentDefinition, `NAMESPACE/NAME`.
    pub network: String,
    /// The VLAN ID (0: untagged).
    #[serde(default)]
    pub vlan: u16,
    /// The MTU.
    pub mtu: u32,
    /// The MAC address (`null` when unknown).
    #[serde(default)]
    pub mac: Option<String>,
    /// The addresses with their prefix lengths.
    #[serde(default)]
    pub ips: Vec<IpNet>,
    /// For each address that came from an IPPool, that pool (so a pool
    /// appears once per address it supplied; the order carries no
    /// meaning). Static addresses have no entry.
    #[serde(default)]
    pub pools: Vec<String>,
}

/// The packets one sender's group traffic delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MulticastReport {
    /// The group address.
    pub group: IpAddr,
    /// The sending interface.
    pub sender: InterfaceRef,
    /// Packets received, per interface listened on.
    #[serde(default)]
    pub received: BTreeMap<InterfaceRef, u64>,
}

/// The usage of one IPPool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    /// The IPPool's name.
    pub name: String,
    /// Addresses it can hand out.
    pub total: u64,
    /// Addresses in use.
    pub used: u64,
}

/// An object the API refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The object.
    pub object: ObjectRef,
    /// The API's message.
    pub reason: String,
}

impl Report {
    /// An empty report of `testbed` by `runner`.
    pub fn new(testbed: impl Into<String>, runner: Runner) -> Self {
        Report {
            testbed: testbed.into(),
            runner,
            seed: None,
            pods: Vec::new(),
            reachability: BTreeMap::new(),
            multicast: Vec::new(),
            pools: Vec::new(),
            rejected: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// The report of `pod`.
    pub fn pod(&self, pod: &PodRef) -> Option<&PodReport> {
        self.pods.iter().find(|p| &p.pod == pod)
    }

    /// Whether `from` reached `to`, when measured.
    pub fn reached(&self, from: &InterfaceRef, to: &InterfaceRef) -> Option<bool> {
        self.reachability.get(from)?.get(to).copied()
    }

    /// True when no expectation failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The JSON form, pretty-printed.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses the JSON form.
    pub fn from_json(text: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// The human-readable summary: Pods with their interfaces and addresses, a
/// reachability matrix, multicast results, pools, rejected objects and the
/// verdict with every failed expectation.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Testbed {} (runner {}", self.testbed, self.runner)?;
        if let Some(seed) = self.seed {
            write!(f, ", seed {seed}")?;
        }
        writeln!(f, ")")?;
        self.fmt_pods(f)?;
        self.fmt_reachability(f)?;
        self.fmt_multicast(f)?;
        self.fmt_pools(f)?;
        self.fmt_rejected(f)?;
        writeln!(f)?;
        if self.failures.is_empty() {
            writeln!(f, "PASS: every expectation holds")
        } else {
            let n = self.failures.len();
            writeln!(
                f,
                "FAIL: {n} expectation{} failed",
                if n == 1 { "" } else { "s" }
            )?;
            for failure in &self.failures {
                writeln!(f, "  - {failure}")?;
            }
            Ok(())
        }
    }
}

/// The width of each column of `rows`, in characters.
fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// Writes one row with columns left-aligned to `widths`, separated by two
/// spaces and indented by `indent`, without trailing spaces.
fn row(
    f: &mut fmt::Formatter<'_>,
    indent: &str,
    widths: &[usize],
    cells: &[String],
) -> fmt::Result {
    let mut line = indent.to_string();
    for (c, cell) in cells.iter().enumerate() {
        if c > 0 {
            line.push_str("  ");
        }
        line.push_str(cell);
        let pad = widths
            .get(c)
            .copied()
            .unwrap_or(0)
            .saturating_sub(cell.chars().count());
        line.push_str(&" ".repeat(pad));
    }
    writeln!(f, "{}", line.trim_end())
}

/// Writes `rows` as a table (see [`row`]).
fn table(f: &mut fmt::Formatter<'_>, indent: &str, rows: &[Vec<String>]) -> fmt::Result {
    let w = widths(rows);
    for r in rows {
        row(f, indent, &w, r)?;
    }
    Ok(())
}

fn interface_row(i: &InterfaceReport) -> Vec<String> {
    let ips = if i.ips.is_empty() {
        "no addresses".to_string()
    } else {
        i.ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pools = if i.pools.is_empty() {
        String::new()
    } else {
        format!("from {}", i.pools.join(", "))
    };
    let vlan = if i.vlan == 0 {
        "untagged".to_string()
    } else {
        format!("vlan {}", i.vlan)
    };
    vec![
        i.name.clone(),
        i.network.clone(),
        vlan,
        format!("mtu {}", i.mtu),
        i.mac.clone().unwrap_or_else(|| "-".to_string()),
        ips,
        pools,
    ]
}

impl Report {
    fn fmt_pods(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        let ready = self.pods.iter().filter(|p| p.ready).count();
        writeln!(f, "Pods ({ready} of {} ready)", self.pods.len())?;
        if self.pods.is_empty() {
            return writeln!(f, "  (none)");
        }
        // One alignment for the interfaces of every Pod.
        let all: Vec<Vec<String>> = self
            .pods
            .iter()
            .flat_map(|p| p.interfaces.iter().map(interface_row))
            .collect();
        let w = widths(&all);
        for p in &self.pods {
            let node = p.node.as_deref().unwrap_or("no node");
            if p.ready {
                writeln!(f, "  {} on {node}: ready", p.pod)?;
            } else {
                let reason = p.reason.as_deref().unwrap_or("no reason given");
                writeln!(f, "  {} on {node}: NOT READY: {reason}", p.pod)?;
            }
            for i in &p.interfaces {
                row(f, "    ", &w, &interface_row(i))?;
            }
        }
        Ok(())
    }

    fn fmt_reachability(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        let ifaces: BTreeSet<&InterfaceRef> = self
            .reachability
            .iter()
            .flat_map(|(from, tos)| std::iter::once(from).chain(tos.keys()))
            .collect();
        if ifaces.is_empty() {
            writeln!(f, "Reachability: nothing measured")?;
            return Ok(());
        }
        writeln!(f, "Reachability (row pings column)")?;
        let ifaces: Vec<&InterfaceRef> = ifaces.into_iter().collect();
        let mut header = vec![String::new(), String::new()];
        header.extend((1..=ifaces.len()).map(|n| n.to_string()));
        let mut rows = vec![header];
        for (r, from) in ifaces.iter().enumerate() {
            let mut row = vec![(r + 1).to_string(), from.to_string()];
            for to in &ifaces {
                let cell = if from.pod == to.pod {
                    "."
                } else {
                    match self.reached(from, to) {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "?",
                    }
                };
                row.push(cell.to_string());
            }
            rows.push(row);
        }
        table(f, "  ", &rows)?;
        writeln!(
            f,
            "  yes: reached, no: not reached, ?: not measured, .: same Pod"
        )
    }

    fn fmt_multicast(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.multicast.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "Multicast")?;
        for m in &self.multicast {
            writeln!(f, "  {} sent by {}", m.group, m.sender)?;
            if m.received.is_empty() {
                writeln!(f, "    no receivers listened")?;
            }
            let rows: Vec<Vec<String>> = m
                .received
                .iter()
                .map(|(itf, n)| {
                    let packets = if *n == 1 { "packet" } else { "packets" };
                    vec![itf.to_string(), format!("received {n} {packets}")]
                })
                .collect();
            table(f, "    ", &rows)?;
        }
        Ok(())
    }

    fn fmt_pools(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pools.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "IPPools")?;
        let rows: Vec<Vec<String>> = self
            .pools
            .iter()
            .map(|p| vec![p.name.clone(), format!("{} of {} used", p.used, p.total)])
            .collect();
        table(f, "  ", &rows)
    }

    fn fmt_rejected(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rejected.is_empty() {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "Rejected objects")?;
        for r in &self.rejected {
            writeln!(f, "  {}: {}", r.object, r.reason)?;
        }
        Ok(())
    }
}
