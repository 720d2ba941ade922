//! Helpers of the harness's integration tests: root detection, the
//! workspace's binaries, and a lock so labs never run concurrently.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// True when the tests run as root; otherwise prints why `test` is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: spur-hil needs root (network namespaces, veths, Open vSwitch); \
         run the tests as root"
    );
    false
}

static LAB: Mutex<()> = Mutex::new(());

/// One lab at a time in this test binary (cargo runs test binaries one
/// after another).
pub fn lab_lock() -> MutexGuard<'static, ()> {
    LAB.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `spur-hil` binary under test.
pub fn spur_hil() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spur-hil"))
}

/// The directory of the workspace's binaries, after building `spur-agent`,
/// `spur` and `spur-controller` there (cargo test builds only this crate's binary).
pub fn workspace_bins() -> PathBuf {
    let dir = spur_hil().parent().unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--bins",
        "-p",
        "spur-node",
        "-p",
        "spur-cni",
        "-p",
        "spur-controller",
        "-p",
        "spur-sim",
    ]);
    // The test binary lives in <target>/<profile>/deps; build the same profile.
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building spur-agent, spur and spur-controller failed: {status}"
    );
    for bin in ["spur-agent", "spur", "spur-controller"] {
        assert!(dir.join(bin).is_file(), "{bin} was not built");
    }
    dir
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Network namespaces whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Host links whose name starts with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Live (non-zombie) processes whose command line mentions `text`.
pub fn processes_mentioning(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_none_or(|s| s == "Z" || s == "X")
        {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(text) {
            out.push(format!("{pid}: {cmdline}"));
        }
    }
    out
}
