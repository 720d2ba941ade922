//! The harness's SR-IOV, as root: the emulated NICs wired as the agent
//! expects them (sysfs tree, embedded switch, VF veths, uplink into the
//! fabric) and gone after the lab; a small SR-IOV testbed written to a
//! temporary directory run through `spur-hil run` (VF VLANs, a refused
//! Pod, the JSON report); a `--sriov-pf` naming a host PF that does not
//! exist refused before anything of the host is touched.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::path::Path;
use std::process::Command;

use spur_hil::cleanup::Cleanup;
use spur_hil::cmd::Cmd;
use spur_hil::lab::{Lab, LabOptions};
use spur_hil::progress::Progress;
use spur_node::sriov::sysfs::Sysfs;
use spur_testbed::{Report, TestbedSpec};

const SPEC: &str = "
nodes:
  - name: metal
    sriov:
      - pf: ens1f0
        vfs: 2
        resourceName: example.com/vf
  - name: vm
    sriov:
      - pf: ens2f0
        vfs: 1
        resourceName: example.com/vmvf
        vm: true
fabric:
  - name: tor
    ports: [metal/ens1f0, vm/ens2f0]
";

fn state_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hil")
        .tempdir_in("/tmp")
        .unwrap()
}

#[test]
fn emulated_nics_are_wired_as_the_agent_expects_and_go_away() {
    if !common::root_or_skip("emulated_nics_are_wired_as_the_agent_expects_and_go_away") {
        return;
    }
    let _one = common::lab_lock();
    let root = state_root();
    let spec = TestbedSpec::parse(Path::new("testbed.yaml"), SPEC).unwrap();
    let opts = LabOptions {
        root: root.path().to_path_buf(),
        bin_dir: common::workspace_bins(),
        real_nics: Vec::new(),
        real_pfs: Vec::new(),
    };
    let lab = Lab::up(&spec, &opts, Cleanup::new(), &Progress::new(false)).unwrap();
    let id = lab.plan.id.to_string();
    let dir = lab.plan.dir.clone();
    let metal = lab.node("metal").unwrap();
    let vm = lab.node("vm").unwrap();

    // sysfs: the bare-metal node sees its PF and VFs, the VM its VF alone.
    let sysfs = Sysfs::new(&metal.sysfs_root);
    let pf = sysfs.pf("ens1f0").unwrap();
    assert_eq!(pf.pci.to_string(), "0000:3b:00.0");
    assert_eq!(pf.vfs.len(), 2);
    assert_eq!(pf.vfs[1].pci.to_string(), "0000:3b:01.1");
    assert_eq!(pf.vfs[1].netdev.as_deref(), Some("ens1f0v1"));
    let vf = Sysfs::new(&vm.sysfs_root).vf("0000:3b:01.0").unwrap();
    assert_eq!(vf.netdev.as_deref(), Some("ens2f0v0"));
    assert!(vf.pf.is_none(), "a VM node sees no PF");

    // The embedded switch: representors untagged access ports, a trunk
    // uplink, the PF netdev its local port; the VF netdev in the node with
    // TX checksum offload off.
    let vsctl = |args: &[&str]| metal.ovs.vsctl("test").args(args).run().unwrap();
    let ports = vsctl(&["list-ports", "ens1f0"]);
    assert_eq!(
        ports.split_whitespace().collect::<Vec<_>>(),
        ["ens1f0r0", "ens1f0r1", "ens1f0u"]
    );
    assert_eq!(
        vsctl(&["get", "port", "ens1f0r0", "vlan_mode"]).trim(),
        "access"
    );
    assert_eq!(vsctl(&["get", "port", "ens1f0r0", "tag"]).trim(), "[]");
    assert_eq!(vsctl(&["get", "port", "ens1f0u", "vlan_mode"]).trim(), "[]");
    let offload = Cmd::new("ethtool", "test")
        .args(["-k", "ens1f0v0"])
        .netns(&metal.netns)
        .run()
        .unwrap();
    assert!(offload.contains("tx-checksumming: off"), "{offload}");
    Cmd::new("ip", "test")
        .args(["-n", &metal.netns, "link", "show", "ens1f0", "up"])
        .run()
        .unwrap();
    // The uplinks are the PFs' ports of the fabric segment.
    let fab_ports = lab
        .plan
        .fabric
        .vsctl("test")
        .args(["list-ports", "fab0"])
        .run()
        .unwrap();
    assert_eq!(
        fab_ports.split_whitespace().collect::<Vec<_>>(),
        [
            metal.sriov[0].fabric_port.as_str(),
            vm.sriov[0].fabric_port.as_str()
        ]
    );
    // The node's SR-IOV as the kubelet and the report see it.
    let s = lab.node_sriov("metal");
    assert_eq!(s.vfs.len(), 2);
    assert_eq!(
        s.vfs.get("0000:3b:01.0"),
        Some(&(0, 0, "ens1f0v0".to_string()))
    );
    assert!(spur_hil::sriov::vf_leaks(metal, &s).is_empty());
    // A VF left tagged or away from home is a leak.
    vsctl(&["set", "port", "ens1f0r1", "tag=300"]);
    Cmd::new("ip", "test")
        .args([
            "-n",
            &metal.netns,
            "link",
            "set",
            "ens1f0v0",
            "name",
            "eth9",
        ])
        .run()
        .unwrap();
    let leaks = spur_hil::sriov::vf_leaks(metal, &s);
    assert_eq!(leaks.len(), 2, "{leaks:?}");
    assert!(leaks.iter().any(|l| l.contains("VLAN 300")), "{leaks:?}");
    assert!(leaks.iter().any(|l| l.contains("ens1f0v0")), "{leaks:?}");

    let problems = lab.teardown();
    assert!(problems.is_empty(), "{problems:?}");
    drop(lab);
    let left: Vec<String> = common::netns_with_prefix(&format!("{id}-"))
        .into_iter()
        .chain(common::links_with_prefix(&format!("{id}-")))
        .chain(common::processes_mentioning(&dir.display().to_string()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!dir.exists());
}

/// Writes a testbed directory: one bare-metal node with a 2-VF PF, two
/// Pods on VLAN 7 over its VFs, a third refused for want of a VF.
fn write_testbed(dir: &Path) {
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(
        dir.join("testbed.yaml"),
        "nodes:\n  - name: n\n    sriov:\n      - {pf: p0, vfs: 2, resourceName: example.com/vf}\n",
    )
    .unwrap();
    let mut m = String::from(
        "apiVersion: spur.dev/v1beta1
kind: IPPool
metadata: {name: pool}
spec:
  ipRanges: [{start: 10.77.0.10, end: 10.77.0.20}]
  subnetInfo: {gateway: 10.77.0.1, prefixLength: 24, vlan: 7}
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: vfnet
  namespace: default
  annotations: {k8s.v1.cni.cncf.io/resourceName: example.com/vf}
spec:
  config: '{\"cniVersion\": \"1.0.0\", \"type\": \"spur\", \"networkType\": \"sriov\", \"ipam\": {\"type\": \"spur\", \"ippools\": [\"pool\"]}}'
",
    );
    for p in ["a", "b", "c"] {
        m.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata:
  name: {p}
  namespace: default
  annotations: {{k8s.v1.cni.cncf.io/networks: vfnet}}
spec:
  nodeName: n
  containers:
  - name: c
    image: busybox
    resources: {{limits: {{example.com/vf: \"1\"}}}}
"
        ));
    }
    std::fs::write(dir.join("manifests/all.yaml"), m).unwrap();
    std::fs::write(
        dir.join("expect.yaml"),
        "pods:
  - pod: default/a
    ready: true
    interfaces: [{name: eth1, network: default/vfnet, vlan: 7, pools: [pool]}]
  - pod: default/b
    ready: true
    interfaces: [{name: eth1, network: default/vfnet, vlan: 7, pools: [pool]}]
  - pod: default/c
    ready: false
    reasonContains: \"devices unavailable for example.com/vf\"
reachability:
  groups:
    - [default/a@eth1, default/b@eth1]
pools:
  - {name: pool, used: 2}
",
    )
    .unwrap();
}

#[test]
fn a_small_sriov_testbed_runs_through_spur_hil() {
    if !common::root_or_skip("a_small_sriov_testbed_runs_through_spur_hil") {
        return;
    }
    let _one = common::lab_lock();
    let bins = common::workspace_bins();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sriov-small");
    write_testbed(&dir);
    let json = tmp.path().join("report.json");
    let out = Command::new(common::spur_hil())
        .arg("run")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .arg("--bin-dir")
        .arg(&bins)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.status.success(), "{text}");
    let report = Report::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report.passed(), "{:?}", report.failures);
    let a = report.pods.iter().find(|p| p.pod.name == "a").unwrap();
    let eth1 = a.interfaces.iter().find(|i| i.name == "eth1").unwrap();
    assert_eq!(eth1.vlan, 7, "the representor's tag");
    assert!(text.contains("nothing leaked"), "{text}");
}

#[test]
fn a_real_pf_that_is_not_there_is_refused_naming_it() {
    if !common::root_or_skip("a_real_pf_that_is_not_there_is_refused_naming_it") {
        return;
    }
    let _one = common::lab_lock();
    let bins = common::workspace_bins();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sriov-small");
    write_testbed(&dir);
    let out = Command::new(common::spur_hil())
        .arg("run")
        .arg(&dir)
        .arg("--bin-dir")
        .arg(&bins)
        .args(["--sriov-pf", "n/p0=spurnopf0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--sriov-pf n/p0=spurnopf0") && stderr.contains("spurnopf0"),
        "{stderr}"
    );
    // A mapping naming no PF of the testbed is refused too.
    let out = Command::new(common::spur_hil())
        .arg("run")
        .arg(&dir)
        .arg("--bin-dir")
        .arg(&bins)
        .args(["--sriov-pf", "n/p9=spurnopf0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no SR-IOV PF `p9`"), "{stderr}");
}
