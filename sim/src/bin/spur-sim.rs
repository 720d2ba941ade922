//! `spur-sim`: runs Spur testbeds in the deterministic cluster simulator.
//!
//! ```text
//! spur-sim run DIR [--seed N | --seeds A..B] [--faults none|default|chaos] [--json FILE] [--check-determinism] [-v]
//! spur-sim bench [--nodes N] [--pods-per-node P] [--seed N]
//! ```
//!
//! Each seed is one run: the same seed and commit reproduce it bit for bit.
//! For one seed the report is printed; for a range, one line per seed and
//! every failing seed's report. A broken invariant prints the seed, the
//! invariant and the trace that led to it.
//!
//! Exit status: 0 when every expectation and invariant held for every seed,
//! 1 when one did not, 2 when the run could not be carried out.

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: a run allocates and frees many small
/// JSON values and maps (every API request and watch event), where glibc's
/// allocator spent about a third of the cluster mode's time. The choice of
/// allocator does not change a run: it reproduces bit for bit either way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use spur_sim::faults::Profile;
use spur_sim::trace::first_difference;
use spur_sim::world::{run, RunOptions, RunOutcome};
use spur_testbed::Testbed;

#[derive(Parser, Debug)]
#[command(
    name = "spur-sim",
    version,
    about = "Spur's deterministic cluster simulator: the real control plane under simulated time, with injected faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a testbed directory for one seed or a range of seeds.
    Run {
        /// The testbed directory (testbed.yaml, manifests/, expect.yaml).
        dir: PathBuf,
        /// The seed.
        #[arg(long, default_value_t = 1, conflicts_with = "seeds")]
        seed: u64,
        /// A range of seeds, `A..B` (B excluded).
        #[arg(long, value_parser = parse_range)]
        seeds: Option<Range<u64>>,
        /// The fault profile.
        #[arg(long, default_value = "default")]
        faults: Profile,
        /// Also write the report (of the single seed, or of the first
        /// failing seed of a range) as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Runs each seed twice and compares the traces.
        #[arg(long)]
        check_determinism: bool,
        /// Writes the whole trace of the (single) seed to FILE.
        #[arg(long, value_name = "FILE")]
        trace: Option<PathBuf>,
        /// Logs of the control plane on stderr.
        #[arg(short, long)]
        verbose: bool,
    },
    /// The cluster mode: a synthetic cluster of many nodes and Pods, no
    /// faults; prints how long attaching every Pod took and what it cost.
    Bench {
        /// Nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 30)]
        pods_per_node: usize,
        /// The seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// `spur-sim bench`: ends with exactly one line
/// `sim-bench nodes=N pods=P wall_s=W allocs_per_s=A api_requests_per_alloc=Q`.
fn bench(nodes: usize, pods_per_node: usize, seed: u64) -> ExitCode {
    let testbed = spur_sim::scale::testbed(nodes, pods_per_node);
    let opts = RunOptions {
        seed,
        faults: Profile::None,
        check_every: std::time::Duration::from_secs(5),
        teardown: false,
        ..RunOptions::default()
    };
    let started = std::time::Instant::now();
    let out = match run(&testbed, &opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("spur-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let pods = nodes * pods_per_node;
    let ready = out.report.pods.iter().filter(|p| p.ready).count();
    let requests: u64 = out
        .api
        .values()
        .map(|s| s.reads + s.writes + s.conflicts + s.failed_writes)
        .sum();
    let allocs = out.allocations.max(1);
    println!(
        "{} of {pods} Pods ready; {} addresses held; {:.1} s simulated; {} API requests \
         ({} writes, {} conflicts)",
        ready,
        out.allocations,
        out.converged_after.as_secs_f64(),
        requests,
        out.api.values().map(|s| s.writes).sum::<u64>(),
        out.api.values().map(|s| s.conflicts).sum::<u64>(),
    );
    for f in out.report.failures.iter().take(10) {
        println!("  failure: {f}");
    }
    println!(
        "sim-bench nodes={nodes} pods={pods} wall_s={wall:.2} allocs_per_s={:.0} api_requests_per_alloc={:.2}",
        out.allocations as f64 / wall,
        requests as f64 / allocs as f64
    );
    if ready == pods && out.report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("--seeds {s:?}: expected A..B"))?;
    let a: u64 = a
        .parse()
        .map_err(|e| format!("--seeds {s:?}: {a:?}: {e}"))?;
    let b: u64 = b
        .parse()
        .map_err(|e| format!("--seeds {s:?}: {b:?}: {e}"))?;
    if a >= b {
        return Err(format!("--seeds {s:?}: the range is empty"));
    }
    Ok(a..b)
}

/// The events of `events` that concern the objects a violation names (its
/// Pods, addresses, containers, blocks, pools), with every fault, crash and
/// restart: the minimal story of how it came to be.
fn relevant<'a>(
    detail: &str,
    events: &'a [spur_sim::trace::Event],
) -> Vec<&'a spur_sim::trace::Event> {
    let tokens: Vec<String> = detail
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ',' | ';' | ':' | '"'))
        .map(|t| t.trim_end_matches('.'))
        .filter(|t| {
            t.len() >= 4
                && (t.contains('/')
                    || t.contains('.')
                    || t.contains('-')
                    || t.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .map(|t| t.rsplit('/').next().unwrap_or(t).to_string())
        .filter(|t| t.len() >= 4)
        .collect();
    events
        .iter()
        .filter(|e| {
            e.actor == "faults"
                || e.what.contains("crashed")
                || e.what.contains("started")
                || e.what.contains("rebooted")
                || tokens.iter().any(|t| e.what.contains(t.as_str()))
        })
        .collect()
}

fn print_violation(seed: u64, out: &RunOutcome) {
    if let Some((at, v)) = out.violations.first() {
        println!(
            "seed {seed}: {v} (at {:.3} s of simulated time)",
            at.as_secs_f64()
        );
        println!("  reproduce: spur-sim run DIR --seed {seed} --trace FILE");
        let story = relevant(&v.detail, &out.trace_at_violation);
        println!(
            "  the events that led to it ({} of the last {}):",
            story.len(),
            out.trace_at_violation.len()
        );
        for e in story {
            println!("    {e}");
        }
    }
}

fn main() -> ExitCode {
    let (dir, seed, seeds, faults, json, check_determinism, trace, verbose) =
        match Cli::parse().command {
            Command::Bench {
                nodes,
                pods_per_node,
                seed,
            } => return bench(nodes, pods_per_node, seed),
            Command::Run {
                dir,
                seed,
                seeds,
                faults,
                json,
                check_determinism,
                trace,
                verbose,
            } => (
                dir,
                seed,
                seeds,
                faults,
                json,
                check_determinism,
                trace,
                verbose,
            ),
        };
    if verbose {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let testbed = match Testbed::load(&dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("spur-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let range = seeds.clone().unwrap_or(seed..seed + 1);
    let single = range.end - range.start == 1;
    let mut failed = 0u64;
    let mut json_written = false;
    for s in range.clone() {
        let opts = RunOptions {
            seed: s,
            faults,
            keep_trace: check_determinism || trace.is_some(),
            ..RunOptions::default()
        };
        let started = std::time::Instant::now();
        let out = match run(&testbed, &opts) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("spur-sim: seed {s}: {e}");
                return ExitCode::from(2);
            }
        };
        let mut ok = out.report.failures.is_empty();
        if check_determinism {
            match run(&testbed, &opts) {
                Ok(again) if again.fingerprint == out.fingerprint => {}
                Ok(again) => {
                    ok = false;
                    println!("seed {s}: NOT DETERMINISTIC: two runs of the seed differ");
                    if let (Some(a), Some(b)) = (&out.trace, &again.trace) {
                        if let Some((i, x, y)) = first_difference(a, b) {
                            println!("  first difference at event {i}:");
                            println!(
                                "    run 1: {}",
                                x.map(|e| e.to_string()).unwrap_or("(end)".into())
                            );
                            println!(
                                "    run 2: {}",
                                y.map(|e| e.to_string()).unwrap_or("(end)".into())
                            );
                        }
                    }
                }
                Err(e) => {
                    eprintln!("spur-sim: seed {s}: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        if let (Some(path), Some(events)) = (&trace, &out.trace) {
            let text: String = events.iter().map(|e| format!("{e}\n")).collect();
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("spur-sim: writing {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
        if single {
            print!("{}", out.report);
            print_violation(s, &out);
        } else {
            println!(
                "seed {s}: {} ({} faults, {:.0} s simulated in {:.2} s, trace {:016x})",
                if ok { "PASS" } else { "FAIL" },
                out.plan.len(),
                out.sim_time.as_secs_f64(),
                started.elapsed().as_secs_f64(),
                out.fingerprint
            );
            if !ok {
                print!("{}", out.report);
                print_violation(s, &out);
            }
        }
        if let Some(path) = &json {
            if !json_written && (single || !ok) {
                if let Err(e) = spur_hil::run::write_json(path, &out.report) {
                    eprintln!("spur-sim: {e}");
                    return ExitCode::from(2);
                }
                json_written = true;
            }
        }
        if !ok {
            failed += 1;
        }
    }
    if !single {
        println!(
            "{}: {} of {} seeds passed ({} faults)",
            testbed.name,
            (range.end - range.start) - failed,
            range.end - range.start,
            faults
        );
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
