//! `spur-testbed check`, as `make demo` and testbed authors run it.

#![allow(clippy::expect_used)] // test code: a panic is a failure

use std::process::Command;

fn run(dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spur-testbed"))
        .arg("check")
        .arg(dir)
        .output()
        .expect("spur-testbed runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_seed_example_is_valid_and_its_plan_is_shown() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seed-example");
    let (ok, out, err) = run(&dir);
    assert!(ok, "{err}");
    assert!(out.contains("testbed seed-example"), "{out}");
    assert!(
        out.contains("vlan100-ipv4         62 addresses in 10.10.1.0/24, VLAN 100"),
        "{out}"
    );
    assert!(
        out.contains("overlapping-pool     will be refused"),
        "{out}"
    );
    assert!(
        out.contains("default/sample-pod-vlan200 on node-b: networks/vlan200@eth200"),
        "{out}"
    );
}

#[test]
fn a_broken_testbed_fails_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("manifests")).expect("mkdir");
    std::fs::write(
        dir.path().join("testbed.yaml"),
        "nodes:\n- name: node-a\n  nicz: [eth1]\n",
    )
    .expect("write");
    let (ok, _, err) = run(dir.path());
    assert!(!ok);
    assert!(
        err.contains("testbed.yaml") && err.contains("nicz"),
        "{err}"
    );
}
