//! The SR-IOV NIC model end to end: a small testbed of two bare-metal
//! nodes and a VM node whose PFs share a top-of-rack switch, run in the
//! simulator with seeds and the fault profiles (agent crashes, node
//! reboots, back-end failures, churn Pods that ask for VFs). Every
//! expectation holds (VF VLANs keep two networks of one subnet apart, the
//! VM's untagged VF, a Pod the kubelet cannot serve), every invariant
//! holds (no VF lost, doubled, or in a Pod it was not given to; every VF
//! back as it was once the Pods are gone), in native and Multus mode, and
//! a seed reproduces its run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::path::Path;

use spur_sim::faults::Profile;
use spur_sim::world::{run, RunOptions, RunOutcome};
use spur_testbed::Testbed;

/// The testbed in `dir`: `mode` is `native` or `multus`; `ifname` the
/// name the first secondary interface gets in that mode.
fn write_testbed(dir: &Path, mode: &str, ifname: &str) -> Testbed {
    fs::create_dir_all(dir.join("manifests")).unwrap();
    fs::write(
        dir.join("testbed.yaml"),
        format!(
            "cniMode: {mode}
nodes:
  - name: metal-a
    sriov:
      - {{pf: ens1f0, vfs: 3, resourceName: intel.com/sriov_tor}}
  - name: metal-b
    sriov:
      - {{pf: ens1f0, vfs: 3, resourceName: intel.com/sriov_tor}}
  - name: vm-c
    sriov:
      - {{pf: ens2f0, vfs: 2, resourceName: intel.com/sriov_vm, vm: true}}
fabric:
  - name: tor-1
    ports: [metal-a/ens1f0, metal-b/ens1f0, vm-c/ens2f0]
"
        ),
    )
    .unwrap();
    let nad = |name: &str, resource: &str, extra: &str, pool: &str| {
        format!(
            r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: {name}
  namespace: default
  annotations:
    k8s.v1.cni.cncf.io/resourceName: {resource}
spec:
  config: '{{"cniVersion": "1.0.0", "type": "spur", "networkType": "sriov", {extra}
            "ipam": {{"type": "spur", "ippools": ["{pool}"]}}}}'
---
"#
        )
    };
    let mut networks = String::from(
        "apiVersion: spur.dev/v1beta1
kind: IPPool
metadata: {name: shared}
spec:
  ipRanges: [{start: 10.40.0.10, end: 10.40.0.29}]
  subnetInfo: {gateway: 10.40.0.1, prefixLength: 24}
---
apiVersion: spur.dev/v1beta1
kind: IPPool
metadata: {name: flat}
spec:
  ipRanges: [{start: 10.41.0.10, end: 10.41.0.19}]
  subnetInfo: {gateway: 10.41.0.1, prefixLength: 24}
---
",
    );
    networks += &nad("red", "intel.com/sriov_tor", r#""vlan": 100,"#, "shared");
    networks += &nad(
        "blue",
        "intel.com/sriov_tor",
        r#""vlan": 200, "vlanQoS": 2, "trust": "on","#,
        "shared",
    );
    // Under Multus a requested MAC reaches a plugin that declares the
    // capability.
    networks += &nad(
        "vm",
        "intel.com/sriov_vm",
        r#""mtu": 9000, "capabilities": {"mac": true},"#,
        "flat",
    );
    fs::write(dir.join("manifests/10-networks.yaml"), networks).unwrap();
    let pod = |name: &str, node: &str, network: &str, limit: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  annotations:
    k8s.v1.cni.cncf.io/networks: '{network}'
spec:
  nodeName: {node}
  containers:
  - name: c
    image: busybox
    resources:
      limits: {{{limit}}}
---
"#
        )
    };
    let one_tor = "intel.com/sriov_tor: \"1\"";
    let mut pods = String::new();
    pods += &pod("red-a", "metal-a", "red", one_tor);
    pods += &pod("red-b", "metal-b", "red", one_tor);
    pods += &pod("blue-a", "metal-a", "blue", one_tor);
    pods += &pod("blue-b", "metal-b", "blue", one_tor);
    // The VM's VF keeps the hypervisor's MAC unless one is asked for.
    pods += &pod(
        "vm-1",
        "vm-c",
        r#"[{"name": "vm", "mac": "02:00:00:00:0c:01"}]"#,
        "intel.com/sriov_vm: \"1\"",
    );
    // metal-a has 3 VFs: red-a and blue-a hold two of them.
    pods += &pod("greedy", "metal-a", "red", "intel.com/sriov_tor: \"2\"");
    fs::write(dir.join("manifests/20-pods.yaml"), pods).unwrap();
    let i = |pod: &str| format!("default/{pod}@{ifname}");
    fs::write(
        dir.join("expect.yaml"),
        format!(
            "pods:
  - pod: default/red-a
    ready: true
    interfaces: [{{name: {ifname}, network: default/red, vlan: 100, mtu: 1500, pools: [shared]}}]
  - pod: default/red-b
    ready: true
    interfaces: [{{name: {ifname}, network: default/red, vlan: 100, pools: [shared]}}]
  - pod: default/blue-a
    ready: true
    interfaces: [{{name: {ifname}, network: default/blue, vlan: 200, pools: [shared]}}]
  - pod: default/blue-b
    ready: true
    interfaces: [{{name: {ifname}, network: default/blue, vlan: 200, pools: [shared]}}]
  - pod: default/vm-1
    ready: true
    interfaces: [{{name: {ifname}, network: default/vm, vlan: 0, mtu: 9000, pools: [flat], mac: \"02:00:00:00:0c:01\"}}]
  - pod: default/greedy
    ready: false
    reasonContains: devices unavailable for intel.com/sriov_tor
reachability:
  groups:
    - [{ra}, {rb}]
    - [{ba}, {bb}]
    - [{vm}]
multicast:
  - group: 239.1.1.1
    sender: {ra}
    members: [{rb}]
    nonMembers: [{ba}, {bb}, {vm}]
pools:
  - {{name: shared, used: 4}}
  - {{name: flat, used: 1}}
",
            ra = i("red-a"),
            rb = i("red-b"),
            ba = i("blue-a"),
            bb = i("blue-b"),
            vm = i("vm-1"),
        ),
    )
    .unwrap();
    Testbed::load(dir).unwrap()
}

fn run_ok(t: &Testbed, seed: u64, faults: Profile) -> RunOutcome {
    let out = run(
        t,
        &RunOptions {
            seed,
            faults,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(
        out.report.failures.is_empty() && out.violations.is_empty(),
        "{} seed {seed} {faults:?}: {:#?}\nlast events:\n{}",
        t.name,
        out.report.failures,
        out.trace_at_violation
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    out
}

#[test]
fn vfs_in_native_mode_survive_faults_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let t = write_testbed(dir.path(), "native", "eth1");
    let quiet = run_ok(&t, 1, Profile::None);
    let red_a = quiet
        .report
        .pods
        .iter()
        .find(|p| p.pod.name == "red-a")
        .unwrap();
    let eth1 = red_a.interfaces.iter().find(|i| i.name == "eth1").unwrap();
    assert_eq!(eth1.vlan, 100, "the VF's VLAN is reported");
    for seed in 1..=3 {
        run_ok(&t, seed, Profile::Default);
    }
    run_ok(&t, 1, Profile::Chaos);
}

#[test]
fn vfs_in_multus_mode_get_their_device_ids() {
    let dir = tempfile::tempdir().unwrap();
    let t = write_testbed(dir.path(), "multus", "net1");
    run_ok(&t, 1, Profile::None);
    for seed in 1..=2 {
        run_ok(&t, seed, Profile::Default);
    }
}

#[test]
fn an_sriov_run_is_reproduced_by_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let t = write_testbed(dir.path(), "native", "eth1");
    let opts = RunOptions {
        seed: 4,
        faults: Profile::Default,
        keep_trace: true,
        ..RunOptions::default()
    };
    let a = run(&t, &opts).unwrap();
    let b = run(&t, &opts).unwrap();
    assert_eq!(
        spur_sim::trace::first_difference(
            a.trace.as_deref().unwrap_or_default(),
            b.trace.as_deref().unwrap_or_default()
        ),
        None
    );
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(a.report, b.report);
}
