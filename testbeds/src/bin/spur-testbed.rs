//! `spur-testbed`: checks testbed directories against the format and shows
//! what a runner would do with them, without running anything.
//!
//! ```text
//! spur-testbed check DIR [DIR...]
//! ```
//!
//! Exit status 0 when every directory is a valid testbed, 1 otherwise (each
//! problem is printed with its file and key).

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spur_core::ippool::PoolLayout;
use spur_testbed::Testbed;

#[derive(Parser, Debug)]
#[command(
    name = "spur-testbed",
    version,
    about = "Validate Spur testbed directories and show their plan"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load each testbed strictly and print what it contains.
    Check {
        /// Testbed directories.
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let Args {
        command: Command::Check { dirs },
    } = Args::parse();
    let mut ok = true;
    for dir in dirs {
        match Testbed::load(&dir) {
            Ok(t) => print!("{}", plan(&t)),
            Err(errors) => {
                ok = false;
                eprintln!("{}: not a valid testbed:\n{errors}", dir.display());
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A readable summary of a testbed.
fn plan(t: &Testbed) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "testbed {} ({}): valid", t.name, t.dir.display());
    let _ = writeln!(out, "  CNI mode: {:?}", t.spec.cni_mode);
    let _ = writeln!(out, "  nodes:");
    for n in &t.spec.nodes {
        let _ = writeln!(out, "    {:<12} NICs {}", n.name, n.nics.join(", "));
        for pf in &n.sriov {
            let _ = writeln!(
                out,
                "    {:<12} SR-IOV PF {} with {} VFs as {}{}",
                "",
                pf.pf,
                pf.vfs,
                pf.resource_name,
                if pf.vm { " (VM node)" } else { "" }
            );
        }
    }
    let _ = writeln!(out, "  fabric:");
    for s in &t.spec.fabric {
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.node, p.nic))
            .collect();
        let vlans = match &s.allowed_vlans {
            None => "all VLANs".to_string(),
            Some(r) => {
                let v: Vec<String> = r
                    .iter()
                    .map(|r| {
                        if r.start == r.end {
                            r.start.to_string()
                        } else {
                            format!("{}-{}", r.start, r.end)
                        }
                    })
                    .collect();
                format!("VLANs {}", v.join(","))
            }
        };
        let _ = writeln!(out, "    {:<12} {} ({vlans})", s.name, ports.join(", "));
    }
    if let Some(agent) = &t.config.agent {
        for b in &agent.secondary_network.ovs_bridges {
            let _ = writeln!(
                out,
                "  bridge {} uplinks [{}]{}",
                b.bridge_name,
                b.physical_interfaces.join(", "),
                if b.enable_multicast_snooping {
                    ", multicast snooping"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(out, "  pools:");
    let mut accepted: Vec<PoolLayout> = Vec::new();
    for m in t.manifests_of("IPPool") {
        let layout = serde_json::from_value(m.object.clone())
            .map_err(|e| e.to_string())
            .and_then(|p| PoolLayout::from_pool(&p).map_err(|e| e.to_string()))
            .and_then(|l| {
                l.check_no_overlap(&accepted)
                    .map(|()| l)
                    .map_err(|e| e.to_string())
            });
        let line = match layout {
            Ok(l) => {
                let line = format!("{} addresses in {}, VLAN {}", l.size(), l.subnet, l.vlan);
                accepted.push(l);
                line
            }
            Err(e) => format!("will be refused: {e}"),
        };
        let _ = writeln!(out, "    {:<20} {line}", m.name());
    }
    let _ = writeln!(out, "  networks:");
    for m in t.manifests_of("NetworkAttachmentDefinition") {
        let _ = writeln!(
            out,
            "    {}/{}",
            m.namespace().unwrap_or("default"),
            m.name()
        );
    }
    let _ = writeln!(out, "  pods:");
    for m in t.manifests_of("Pod") {
        let node = m.node_name().map(|(_, n)| n).unwrap_or("(unscheduled)");
        let nets = m
            .annotation(spur_core::selection::NETWORKS_ANNOTATION)
            .unwrap_or("");
        let _ = writeln!(
            out,
            "    {}/{} on {node}: {}",
            m.namespace().unwrap_or("default"),
            m.name(),
            if nets.is_empty() {
                "no secondary networks"
            } else {
                nets.trim()
            }
        );
    }
    let e = &t.expect;
    let groups = e.reachability.as_ref().map_or(0, |r| r.groups.len());
    let _ = writeln!(
        out,
        "  expectations: {} pods, {} reachability groups, {} multicast checks, {} pools, {} rejections",
        e.pods.len(),
        groups,
        e.multicast.len(),
        e.pools.len(),
        e.rejected.len()
    );
    out
}
