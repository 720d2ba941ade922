//! Every bug the simulator found, pinned to the testbed and seed that found
//! it: each run must pass (every expectation and invariant, nothing leaked).
//! The seeds replay the exact interleaving on this commit; a later change
//! of the simulator that moves them elsewhere still leaves each a useful
//! faulted run of its testbed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::PathBuf;

use spur_sim::faults::Profile;
use spur_sim::world::{run, RunOptions};
use spur_testbed::Testbed;

fn testbed(name: &str) -> Testbed {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testbeds")
        .join(name);
    Testbed::load(&dir).unwrap()
}

fn passes(name: &str, seed: u64) {
    passes_with(name, seed, Profile::Default);
}

fn passes_with(name: &str, seed: u64, faults: Profile) {
    let out = run(
        &testbed(name),
        &RunOptions {
            seed,
            faults,
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(
        out.report.failures.is_empty(),
        "{name} seed {seed}: {:#?}\nlast events:\n{}",
        out.report.failures,
        out.trace_at_violation
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A node reboot gave a Pod a new sandbox, a controller failover started a
/// GC leader with no memory: the old sandbox's addresses were held forever
/// (fixed: the network-status annotation names the current sandbox).
#[test]
fn gc_after_failover_releases_the_replaced_sandbox() {
    passes("seed-example", 3);
}

/// An agent crash mid-ADD left a fixed address held by the Pod's dead
/// sandbox; every retry was refused (fixed: takeover by Pod UID).
#[test]
fn a_fixed_address_follows_the_pod_to_its_next_sandbox() {
    passes("seed-kube-ovn-multi-nic", 1);
    passes("seed-kube-ovn-multi-nic", 2);
}

/// A new sandbox took its Pod's addresses over and then failed; its undo
/// released them to a Pod waiting on an exhausted pool (fixed: the undo
/// gives taken-over records back).
#[test]
fn a_failed_takeover_gives_the_addresses_back() {
    passes("bad-inputs", 20);
}

/// A Pod whose last attempt failed while the back ends were failing was
/// judged with that transient error (fixed in the simulator: retried first).
#[test]
fn a_pod_failed_during_faults_is_retried_before_judging() {
    passes("bad-inputs", 14);
}

/// The world's undo of a churn fault was refused by a 5xx storm and the
/// churn Pods stayed (fixed in the simulator: undo until the API takes it).
#[test]
fn faults_are_undone_even_while_others_refuse_requests() {
    passes("mtu", 96);
}

/// After a node reboot a new sandbox took its Pod's address over, then
/// could not write the Pod's network-status in a 409 storm; the failed ADD
/// removed its container as a DEL would and released the address to a Pod
/// waiting on the exhausted pool (fixed: the ADD undoes exactly its own
/// steps, giving taken-over records back).
#[test]
fn a_failed_network_status_write_gives_the_taken_over_address_back() {
    passes("bad-inputs", 27);
    passes("bad-inputs", 170);
}

/// A VF's move into its Pod failed and so did putting its PF back; the
/// undo still cleared the VF's record, so the MAC the PF had set for the
/// Pod stayed on the VF with nobody to restore it (fixed: a PF that could
/// not be restored keeps its VF labelled for the recovery).
#[test]
fn a_vf_whose_pf_could_not_be_restored_keeps_its_record() {
    passes("sriov-fabric", 99);
}

/// The agent died after taking an address for an interface a VM node's VF
/// could never serve (a VLAN), before refusing it: the dead sandbox held
/// the address while the Pod kept failing (fixed: the VF's fit is checked
/// before any address is taken).
#[test]
fn a_vf_a_vm_node_cannot_set_up_never_holds_an_address() {
    passes_with("sriov-fabric", 2, Profile::Chaos);
}

/// A failed ADD left its VF labelled and tagged (its PF could not be put
/// back); the Pod's next ADD took the tagged settings for the VF's original
/// and its DEL "restored" them (fixed: an ADD gives a labelled VF back
/// before reading what the PF sets for it).
#[test]
fn an_add_gives_a_labelled_vf_back_before_recording_its_original() {
    passes_with("sriov-ovs-mixed", 30, Profile::Chaos);
}

/// The Pod's network-status write failed after its VFs were in the Pod,
/// and so did putting their PFs back; the undo had moved the VFs home
/// (clearing their records) first, so nobody could restore the PFs (fixed:
/// the PF is restored while the VF still carries its record, and a PF that
/// could not be restored leaves its VF to the DEL that follows).
#[test]
fn a_failed_add_restores_the_pf_before_bringing_the_vf_home() {
    passes_with("sriov-fabric", 154, Profile::Chaos);
}

/// Three DELs ran the VF recovery while an ADD was setting up the VF it
/// had labelled: the first recovery's refused claim released the ADD's
/// claim (the claim guard was built, and dropped, even when refused), and
/// the second recovery restored the VF's PF from the ADD's record while
/// the VF went into the Pod: the Pod's VF lost its VLAN (fixed: a refused
/// claim builds no guard; the recovery reads a VF's record again once it
/// holds its claim).
#[test]
fn a_refused_vf_claim_leaves_the_holders_claim_alone() {
    passes_with("sriov-ovs-mixed", 35, Profile::Chaos);
}

/// A node reboot left the kubelet's Pods "ready" without sandboxes; the
/// run was judged converged while a Pod's new sandbox was still being set
/// up, and the Pod was reported ready without its VF (a simulator bug,
/// fixed: after a reboot no Pod is ready until its new sandbox is).
#[test]
fn a_reboot_leaves_no_pod_ready_until_its_new_sandbox_is() {
    passes_with("sriov-exhaustion", 12, Profile::Chaos);
}
