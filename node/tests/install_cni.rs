//! `spur-agent install-cni` run as a real process against temporary CNI
//! binary and config directories: fresh install, idempotent rerun, `.conf`
//! conversion, Multus refusal, uninstall, waiting for a late primary CNI and
//! the timeout when none comes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "ipam": {"type": "calico-ipam"}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
"#;

const PLUGIN: &[u8] = b"#!/bin/sh\necho fake spur plugin\n";

struct Node {
    _root: tempfile::TempDir,
    src: PathBuf,
    bin: PathBuf,
    conf: PathBuf,
}

impl Node {
    fn new() -> Node {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("spur-src");
        fs::write(&src, PLUGIN).unwrap();
        let bin = root.path().join("opt/cni/bin");
        let conf = root.path().join("etc/cni/net.d");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        Node {
            _root: root,
            src,
            bin,
            conf,
        }
    }

    fn run(&self, extra: &[&str]) -> (bool, String, String) {
        let out: Output = Command::new(env!("CARGO_BIN_EXE_spur-agent"))
            .arg("install-cni")
            .arg("--plugin-src")
            .arg(&self.src)
            .arg("--cni-bin-dir")
            .arg(&self.bin)
            .arg("--cni-conf-dir")
            .arg(&self.conf)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn conf_file(&self, name: &str) -> PathBuf {
        self.conf.join(name)
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn plugin_types(path: &Path) -> Vec<String> {
    json(path)["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

/// The names in `dir`, sorted (to see that no temporary file is left).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn fresh_install_chains_and_rerun_changes_nothing() {
    let node = Node::new();
    let conflist = node.conf_file("10-calico.conflist");
    fs::write(&conflist, CALICO).unwrap();
    fs::set_permissions(&conflist, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(node.conf_file("99-loopback.conf"), "{}").unwrap();

    let (ok, stdout, stderr) = node.run(&[]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    let plugin = node.bin.join("spur");
    assert!(
        stdout.contains(&format!("installed {}", plugin.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("chained spur into {}", conflist.display())),
        "{stdout}"
    );
    assert_eq!(fs::read(&plugin).unwrap(), PLUGIN);
    assert_eq!(
        fs::metadata(&plugin).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(plugin_types(&conflist), ["calico", "portmap", "spur"]);
    // The rest of the config is kept, and so are its permissions.
    let mut expected: serde_json::Value = serde_json::from_str(CALICO).unwrap();
    expected["plugins"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "spur"}));
    assert_eq!(json(&conflist), expected);
    assert_eq!(
        fs::metadata(&conflist).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(names(&node.bin), ["spur"]);
    assert_eq!(
        names(&node.conf),
        ["10-calico.conflist", "99-loopback.conf"]
    );

    // A rerun (the init container restarts) leaves the conflist alone.
    let before = fs::read(&conflist).unwrap();
    let meta = fs::metadata(&conflist).unwrap();
    let (ok, stdout, stderr) = node.run(&[]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains(&format!("already chained: {}", conflist.display())),
        "{stdout}"
    );
    assert_eq!(fs::read(&conflist).unwrap(), before);
    let again = fs::metadata(&conflist).unwrap();
    assert_eq!(again.ino(), meta.ino(), "the conflist was rewritten");
    assert_eq!(again.modified().unwrap(), meta.modified().unwrap());
    assert_eq!(plugin_types(&conflist), ["calico", "portmap", "spur"]);
}

#[test]
fn single_conf_is_converted_to_conflist() {
    let node = Node::new();
    let conf = r#"{"cniVersion": "0.4.0", "name": "mynet", "type": "bridge", "bridge": "cni0",
                   "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}"#;
    fs::write(node.conf_file("10-mynet.conf"), conf).unwrap();

    let (ok, stdout, stderr) = node.run(&[]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    let conflist = node.conf_file("10-mynet.conflist");
    assert!(stdout.contains("converted from"), "{stdout}");
    assert_eq!(names(&node.conf), ["10-mynet.conflist"]);
    let value = json(&conflist);
    assert_eq!(value["cniVersion"], "0.4.0");
    assert_eq!(value["name"], "mynet");
    let original: serde_json::Value = serde_json::from_str(conf).unwrap();
    assert_eq!(value["plugins"][0], original);
    assert_eq!(plugin_types(&conflist), ["bridge", "spur"]);

    let (ok, stdout, _) = node.run(&[]);
    assert!(ok && stdout.contains("already chained"), "{stdout}");
}

#[test]
fn multus_conflist_is_refused_in_native_mode() {
    let node = Node::new();
    let multus = r#"{"cniVersion":"0.3.1","name":"multus-cni-network","plugins":[{"type":"multus","delegates":[]}]}"#;
    let path = node.conf_file("00-multus.conflist");
    fs::write(&path, multus).unwrap();
    fs::write(node.conf_file("10-calico.conflist"), CALICO).unwrap();

    let (ok, stdout, stderr) = node.run(&["--wait-seconds", "1"]);
    assert!(!ok, "stdout: {stdout}");
    assert!(stderr.contains("00-multus.conflist"), "{stderr}");
    assert!(stderr.contains("plugins[0].type"), "{stderr}");
    assert!(stderr.contains("--mode multus"), "{stderr}");
    assert_eq!(fs::read_to_string(&path).unwrap(), multus);
    assert_eq!(
        fs::read_to_string(node.conf_file("10-calico.conflist")).unwrap(),
        CALICO
    );

    // In multus mode only the binary is installed.
    let (ok, stdout, stderr) = node.run(&["--mode", "multus"]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("installed"), "{stdout}");
    assert!(!stdout.contains("chained"), "{stdout}");
    assert_eq!(fs::read(node.bin.join("spur")).unwrap(), PLUGIN);
    assert_eq!(fs::read_to_string(&path).unwrap(), multus);
}

#[test]
fn malformed_primary_is_refused() {
    let node = Node::new();
    fs::write(node.conf_file("10-broken.conflist"), "{\"plugins\": [").unwrap();
    let (ok, stdout, stderr) = node.run(&["--wait-seconds", "1"]);
    assert!(!ok, "stdout: {stdout}");
    assert!(
        stderr.contains("10-broken.conflist: malformed JSON"),
        "{stderr}"
    );
}

#[test]
fn uninstall_restores_the_conflist_and_removes_the_plugin() {
    let node = Node::new();
    let conflist = node.conf_file("10-calico.conflist");
    fs::write(&conflist, CALICO).unwrap();
    let (ok, _, stderr) = node.run(&[]);
    assert!(ok, "{stderr}");
    assert_eq!(plugin_types(&conflist), ["calico", "portmap", "spur"]);

    let (ok, stdout, stderr) = node.run(&["--uninstall"]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains(&format!("unchained spur from {}", conflist.display())),
        "{stdout}"
    );
    assert!(stdout.contains("removed"), "{stdout}");
    let original: serde_json::Value = serde_json::from_str(CALICO).unwrap();
    assert_eq!(json(&conflist), original);
    assert!(!node.bin.join("spur").exists());
    assert_eq!(names(&node.conf), ["10-calico.conflist"]);

    // Uninstalling again finds nothing to do.
    let (ok, stdout, stderr) = node.run(&["--uninstall"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("spur not chained into"), "{stdout}");
    assert!(stdout.contains("was not installed"), "{stdout}");
}

#[test]
fn waits_for_a_config_written_later() {
    let node = Node::new();
    let conflist = node.conf_file("10-calico.conflist");
    let writer = {
        let conflist = conflist.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            fs::write(&conflist, CALICO).unwrap();
        })
    };
    let (ok, stdout, stderr) = node.run(&["--wait-seconds", "60"]);
    writer.join().unwrap();
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("waiting up to 60s"), "{stdout}");
    assert!(
        stdout.contains(&format!("chained spur into {}", conflist.display())),
        "{stdout}"
    );
    assert_eq!(plugin_types(&conflist), ["calico", "portmap", "spur"]);
}

#[test]
fn times_out_when_no_config_appears() {
    let node = Node::new();
    fs::write(node.conf_file("README"), "not a config").unwrap();
    let started = std::time::Instant::now();
    let (ok, stdout, stderr) = node.run(&["--wait-seconds", "1"]);
    assert!(!ok, "stdout: {stdout}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        stderr.contains(&format!(
            "no CNI network config (*.conf, *.conflist, *.json) appeared in {} within 1s",
            node.conf.display()
        )),
        "{stderr}"
    );
    // The binary was installed before waiting.
    assert_eq!(fs::read(node.bin.join("spur")).unwrap(), PLUGIN);
    assert_eq!(names(&node.conf), ["README"]);
}

#[test]
fn missing_plugin_source_is_an_error() {
    let node = Node::new();
    fs::remove_file(&node.src).unwrap();
    let (ok, _, stderr) = node.run(&[]);
    assert!(!ok);
    assert!(stderr.contains("reading the plugin"), "{stderr}");
    assert!(names(&node.bin).is_empty());
}
