//! `spur-hil run` (the real binary) on every testbed directory of the
//! repository, one after another: each must exit 0 (every expectation
//! holds, nothing leaked), and the seed example's JSON report must parse
//! with every Pod ready. Each testbed also runs in the simulator
//! (`spur-sim run DIR --faults none`), and the two reports must agree on
//! every field the testbed format says they agree on
//! (`spur_testbed::compare_reports`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use spur_testbed::{compare_reports, Report, Testbed};

/// Every directory under `testbeds/` holding a `testbed.yaml` (the
/// crates' own directories have none), sorted.
fn testbeds() -> Vec<PathBuf> {
    let root = common::workspace().join("testbeds");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !matches!(name, "kubeapi" | "src" | "tests") && p.join("testbed.yaml").is_file()
        })
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_testbed_passes_on_this_machine() {
    if !common::root_or_skip("every_testbed_passes_on_this_machine") {
        return;
    }
    let _one = common::lab_lock();
    let bins = common::workspace_bins();
    let dirs = testbeds();
    assert!(dirs.iter().any(|d| d.ends_with("seed-example")), "{dirs:?}");
    let out_dir = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let json = out_dir.path().join(format!("{name}.json"));
        let start = Instant::now();
        let out = Command::new(common::spur_hil())
            .arg("run")
            .arg(dir)
            .arg("--json")
            .arg(&json)
            .arg("--bin-dir")
            .arg(&bins)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "=== {name}: {} in {:?}\n{stderr}{stdout}",
            out.status,
            start.elapsed()
        );
        if !out.status.success() {
            failed.push(format!("{name}: {}", out.status));
            continue;
        }
        let report = Report::from_json(&std::fs::read_to_string(&json).unwrap())
            .unwrap_or_else(|e| panic!("{name}: the JSON report does not parse: {e}"));
        assert!(
            report.passed(),
            "{name}: exit 0 with failures {:?}",
            report.failures
        );
        // The simulator's answers for the same testbed.
        let sim_json = out_dir.path().join(format!("{name}.sim.json"));
        let sim = Command::new(bins.join("spur-sim"))
            .args(["run"])
            .arg(dir)
            .args(["--faults", "none", "--seed", "1", "--json"])
            .arg(&sim_json)
            .output()
            .unwrap();
        if !sim.status.success() {
            failed.push(format!(
                "{name}: spur-sim: {}\n{}",
                sim.status,
                String::from_utf8_lossy(&sim.stdout)
            ));
            continue;
        }
        let sim_report = Report::from_json(&std::fs::read_to_string(&sim_json).unwrap()).unwrap();
        let testbed = Testbed::load(dir).unwrap();
        let differ = compare_reports(&report, &sim_report, &testbed.expect);
        if !differ.is_empty() {
            failed.push(format!(
                "{name}: the harness and the simulator disagree: {differ:#?}"
            ));
        }
        if name == "seed-example" {
            assert!(!report.pods.is_empty());
            for p in &report.pods {
                assert!(p.ready, "{name}: {} is not ready: {:?}", p.pod, p.reason);
            }
        }
    }
    assert!(failed.is_empty(), "testbeds that failed: {failed:?}");
}
