//! `spur-hil`: runs Spur testbeds on this machine with real Open vSwitch,
//! real network namespaces and the real agent and plugin.
//!
//! ```text
//! spur-hil run DIR [--json FILE] [--keep] [--bin-dir DIR] [--real-nic NODE/NIC=HOSTIF]...
//!              [--sriov-pf NODE/PF=HOSTIF]... [-v]
//! spur-hil cleanup [--force]
//! spur-hil bench-cni [--cycles N] [--warmup N] [--spawn ip-netns-exec|setns] [--agent-log FILE] [--bin-dir DIR] [-v]
//! ```
//!
//! Exit status: 0 when every expectation holds, 1 when one does not (the
//! report says which), 2 when the run could not be carried out, 130 when
//! it was interrupted (SIGINT, SIGTERM, SIGHUP; the lab is torn down).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spur_hil::lab::{RealNicMap, DEFAULT_ROOT};
use spur_hil::progress::Progress;
use spur_hil::run::{default_bin_dir, run, write_json, RunOptions};
use spur_hil::sriov::RealPfMap;

#[derive(Parser, Debug)]
#[command(
    name = "spur-hil",
    version,
    about = "Spur's hardware harness: runs a testbed on real Open vSwitch and network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a testbed directory and prints its report; exits 0 exactly when
    /// every expectation holds.
    Run {
        /// The testbed directory (testbed.yaml, manifests/, expect.yaml).
        dir: PathBuf,
        /// Also write the report as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Leave the lab up after the report, print how to reach it, and
        /// tear it down on Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Where spur-agent and spur are (default: this executable's directory).
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Back a testbed NIC with a real host interface, moved into the
        /// node's namespace for the run and moved back afterwards
        /// (repeatable), e.g. node-a/eth1=enp3s0f0.
        #[arg(long, value_name = "NODE/NIC=HOSTIF")]
        real_nic: Vec<RealNicMap>,
        /// Back a testbed SR-IOV PF with a real host PF whose VFs exist
        /// (sriov_numvfs): the PF and its first VFs move into the node's
        /// namespace for the run and back afterwards; VF settings go
        /// through the PF with netlink (repeatable), e.g.
        /// node-a/ens1f0=enp59s0f0. See the README, "SR-IOV on a lab
        /// machine".
        #[arg(long, value_name = "NODE/PF=HOSTIF")]
        sriov_pf: Vec<RealPfMap>,
        /// Debug logs from the harness and the agents.
        #[arg(short, long)]
        verbose: bool,
        /// Where lab directories live.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT, hide = true)]
        state_dir: PathBuf,
    },
    /// Times CNI ADD and DEL of one VLAN interface through the real spur
    /// plugin and agent against Debian's macvlan + host-local, and spur as
    /// IPAM under macvlan, on a one-node lab; the last line sums it up.
    BenchCni {
        /// Counted cycles (each runs every case once).
        #[arg(long, default_value_t = spur_hil::bench::DEFAULT_CYCLES)]
        cycles: usize,
        /// Uncounted cycles first.
        #[arg(long, default_value_t = spur_hil::bench::DEFAULT_WARMUP)]
        warmup: usize,
        /// How plugins are started in the node's namespace: setns (from a
        /// thread in the namespace, as a runtime on a real node starts
        /// them, with no wrapper) or ip-netns-exec (as the harness does).
        #[arg(long, value_name = "HOW", default_value_t = spur_hil::bench::Spawn::Setns)]
        spawn: spur_hil::bench::Spawn,
        /// Keep a copy of the agent's log in FILE (with -v it logs at
        /// debug level).
        #[arg(long, value_name = "FILE")]
        agent_log: Option<PathBuf>,
        /// Where spur-agent and spur are (default: this executable's directory).
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Debug logs from the harness and the agent.
        #[arg(short, long)]
        verbose: bool,
        /// Where lab directories live.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT, hide = true)]
        state_dir: PathBuf,
    },
    /// Removes what crashed runs left behind (namespaces, links, daemons,
    /// directories, real NICs moved into a lab).
    Cleanup {
        /// Also remove labs whose harness is still running.
        #[arg(long)]
        force: bool,
        /// Where lab directories live.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT, hide = true)]
        state_dir: PathBuf,
    },
}

fn init_logs(verbose: bool) {
    let default = if verbose {
        "spur_hil=debug,info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            dir,
            json,
            keep,
            bin_dir,
            real_nic,
            sriov_pf,
            verbose,
            state_dir,
        } => {
            init_logs(verbose);
            let opts = RunOptions {
                dir,
                json: json.clone(),
                keep,
                bin_dir: bin_dir.unwrap_or_else(default_bin_dir),
                real_nics: real_nic,
                real_pfs: sriov_pf,
                root: state_dir,
                agent_log_filter: if verbose { "debug" } else { "info" }.to_string(),
            };
            let progress = Progress::new(false);
            let outcome = match run(&opts, &progress) {
                Ok(o) => o,
                Err(e @ spur_hil::run::RunError::Interrupted) => {
                    eprintln!("spur-hil: {e}");
                    return ExitCode::from(130);
                }
                Err(e) => {
                    eprintln!("spur-hil: {e}");
                    return ExitCode::from(2);
                }
            };
            let report = &outcome.report;
            match outcome.printed_failures {
                None => print!("{report}"),
                Some(n) if report.failures.len() > n => {
                    println!();
                    println!("After the teardown:");
                    for f in &report.failures[n..] {
                        println!("  - {f}");
                    }
                    println!(
                        "FAIL: {} expectation{} failed in all",
                        report.failures.len(),
                        if report.failures.len() == 1 { "" } else { "s" }
                    );
                }
                Some(_) => println!("Teardown: nothing leaked."),
            }
            if let Some(path) = &json {
                if let Err(e) = write_json(path, report) {
                    eprintln!("spur-hil: {e}");
                    return ExitCode::from(2);
                }
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::BenchCni {
            cycles,
            warmup,
            spawn,
            agent_log,
            bin_dir,
            verbose,
            state_dir,
        } => {
            init_logs(verbose);
            let opts = spur_hil::bench::BenchOptions {
                cycles,
                warmup,
                bin_dir: bin_dir.unwrap_or_else(default_bin_dir),
                root: state_dir,
                agent_log_filter: if verbose { "debug" } else { "info" }.to_string(),
                spawn,
                keep_agent_log: agent_log,
            };
            match spur_hil::bench::bench_cni(&opts, &Progress::new(false)) {
                Ok(outcome) => {
                    for p in &outcome.cleanup_problems {
                        eprintln!("spur-hil: cleanup: {p}");
                    }
                    print!(
                        "{}",
                        spur_hil::bench::render(&outcome.results, &outcome.summary)
                    );
                    ExitCode::SUCCESS
                }
                Err(e @ spur_hil::bench::BenchError::Interrupted) => {
                    eprintln!("spur-hil: {e}");
                    ExitCode::from(130)
                }
                Err(e) => {
                    eprintln!("spur-hil: bench-cni: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Cleanup { force, state_dir } => {
            init_logs(false);
            if !nix::unistd::geteuid().is_root() {
                eprintln!(
                    "spur-hil: cleanup must run as root: it deletes network namespaces, links and \
                     processes. Run `sudo spur-hil cleanup`"
                );
                return ExitCode::from(2);
            }
            match spur_hil::cleanup::remove_leftovers(&state_dir, force) {
                Ok((removed, problems)) => {
                    for r in &removed {
                        println!("removed {r}");
                    }
                    let live: Vec<_> = spur_hil::cleanup::find_leftovers(&state_dir)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|l| l.live_owner.is_some())
                        .collect();
                    for l in &live {
                        println!(
                            "left alone: {} (its harness, pid {}, still runs; --force removes it)",
                            l.describe(),
                            l.live_owner.unwrap_or_default()
                        );
                    }
                    if removed.is_empty() && problems.is_empty() && live.is_empty() {
                        println!("nothing to clean up");
                    }
                    for p in &problems {
                        eprintln!("spur-hil: cleanup: {p}");
                    }
                    if problems.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("spur-hil: cannot look for leftovers: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
