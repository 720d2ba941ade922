//! What creating and deleting a Pod's veth costs with
//! `spur_node::netdev::RtNetlinkLinks`, on this machine (needs root and
//! `ip`).
//!
//! ```text
//! cargo run --release -p spur-node --example netdev-bench -- [--runs N]
//! ```
//!
//! A network namespace stands for the agent's (the rtnetlink connection is
//! opened from a thread inside it, so nothing lands in the machine's own
//! netns). Each run makes a fresh Pod netns with `ip netns add` (not
//! timed), then times `create_veth` (IPv4 + IPv6 address, a default route
//! per family, TX checksum off, announce on: what an ADD asks for) and the
//! delete. The first N runs delete with `delete_host_link`, the next N
//! with `delete_pod_link`. Every namespace is deleted at the end, also on
//! failure. `--bare` creates pairs with nothing configured on them (no
//! addresses, routes, offload change or announcements), the floor.
//!
//! Output: one line per measured operation with min / median / p90 / max
//! in milliseconds, the last one being
//! `netdev-bench create_median_ms=X delete_host_median_ms=Y delete_pod_median_ms=Z`.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sched::{setns, CloneFlags};
use spur_node::netdev::{PodLinks, RouteSpec, RtNetlinkLinks, VethSpec};

#[derive(Parser, Debug)]
#[command(
    name = "netdev-bench",
    about = "Cost of creating and deleting a Pod veth"
)]
struct Args {
    /// Runs per delete flavour (each run creates one veth).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Create bare pairs (no addresses, routes, offload change or
    /// announcements): the floor under what an ADD costs.
    #[arg(long)]
    bare: bool,
}

/// Namespaces made by `ip netns add`, deleted on drop.
#[derive(Default)]
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: String) -> Result<PathBuf, String> {
        ip(&["netns", "add", &name])?;
        self.0.push(name.clone());
        Ok(PathBuf::from(format!("/var/run/netns/{name}")))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn spec(i: u32, netns: PathBuf) -> Result<VethSpec, String> {
    let parse = |s: &str| s.parse().map_err(|e| format!("{s}: {e}"));
    Ok(VethSpec {
        host_name: format!("vb{i}"),
        netns,
        ifname: "eth1".into(),
        mtu: 1500,
        mac: [0x02, 0x42, 0, 0, (i >> 8) as u8, i as u8],
        addresses: vec![
            parse(&format!("10.88.{}.{}/16", i / 250, i % 250 + 1))?,
            parse(&format!("fd00:88::{:x}/64", i + 1))?,
        ],
        routes: vec![
            RouteSpec {
                dst: parse("0.0.0.0/0")?,
                gw: Some("10.88.255.254".parse().map_err(|e| format!("{e}"))?),
            },
            RouteSpec {
                dst: parse("::/0")?,
                gw: Some("fd00:88::fffe".parse().map_err(|e| format!("{e}"))?),
            },
        ],
        tx_checksum_off: true,
        announce: true,
    })
}

fn stats(name: &str, samples: &mut [Duration]) -> f64 {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = samples.len();
    let median = ms(samples[n / 2]);
    println!(
        "{name:<18} n={n:<4} min={:.3} median={median:.3} p90={:.3} max={:.3} (ms)",
        ms(samples[0]),
        ms(samples[(n * 9 / 10).min(n - 1)]),
        ms(samples[n - 1]),
    );
    median
}

async fn bench(args: Args) -> Result<(), String> {
    let mut namespaces = Namespaces::default();
    let tag = std::process::id();
    let agent_ns = namespaces.add(format!("nb-agent-{tag}"))?;
    let rt = tokio::runtime::Handle::current();
    let links = std::thread::spawn(move || -> Result<RtNetlinkLinks, String> {
        let _enter = rt.enter();
        let f = File::open(&agent_ns).map_err(|e| format!("{}: {e}", agent_ns.display()))?;
        setns(f, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        futures::executor::block_on(RtNetlinkLinks::new()).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the setup thread panicked".to_string())??;

    let (mut create, mut del_host, mut del_pod) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..2 * args.runs {
        let pod = namespaces.add(format!("nb-{tag}-{i}"))?;
        let mut s = spec(i, pod.clone())?;
        if args.bare {
            s.addresses.clear();
            s.routes.clear();
            s.tx_checksum_off = false;
            s.announce = false;
        }
        let t = Instant::now();
        links.create_veth(&s).await.map_err(|e| e.to_string())?;
        create.push(t.elapsed());
        let t = Instant::now();
        let deleted = if i < args.runs {
            let r = links.delete_host_link(&s.host_name).await;
            del_host.push(t.elapsed());
            r
        } else {
            let r = links.delete_pod_link(&pod, &s.ifname).await;
            del_pod.push(t.elapsed());
            r
        };
        if !deleted.map_err(|e| e.to_string())? {
            return Err(format!("run {i}: the veth was not there to delete"));
        }
    }
    let c = stats("create_veth", &mut create);
    let h = stats("delete_host_link", &mut del_host);
    let p = stats("delete_pod_link", &mut del_pod);
    println!(
        "netdev-bench create_median_ms={c:.3} delete_host_median_ms={h:.3} delete_pod_median_ms={p:.3}"
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Err(e) = bench(args).await {
        eprintln!("netdev-bench: {e}");
        std::process::exit(1);
    }
}
