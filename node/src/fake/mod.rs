//! In-memory stand-ins for the agent's system boundaries: a switch
//! ([`FakeSwitch`], for [`crate::ovsdb::Switch`], modelling ovsdb-server)
//! and Pod links ([`FakeLinks`], for [`crate::netdev::PodLinks`] and
//! [`crate::sriov::vf::VfLinks`], modelling the kernel's network
//! namespaces and links, SR-IOV VFs and their PFs' records of them). The
//! agent's tests and the simulator run the real agent logic over them;
//! they keep what was
//! created so tests and the simulator can read it back
//! ([`FakeSwitch::snapshot`], [`FakeLinks::snapshot`]), and can be told to
//! fail, stall or crash at named points ([`FaultHook`], [`FaultPoint`]).
//!
//! They model the rules the real implementations follow (a port name is
//! unique per switch, a link name per namespace, removing what is absent
//! is not an error, an OVSDB transaction is all or nothing, a veth is
//! created, configured and brought up in steps and rolled back on
//! failure), not their performance or packets. Every operation is
//! O(log n) in the number of ports / links (listing a bridge's ports is
//! O(ports of that bridge)); the state lock is never held across an
//! await.
//!
//! # Fault points
//!
//! With a hook installed ([`FakeSwitch::set_fault_hook`],
//! [`FakeLinks::set_fault_hook`]) every trait method consults it at
//! [`Step::Start`], before it looks at or changes anything, and the
//! multi-step operations consult it again between their steps:
//!
//! | back end | operation | steps, in order |
//! | --- | --- | --- |
//! | switch | `ensure_bridge`, `add_access_port`, `remove_port` | `Start`, (the transaction commits), `Reply` |
//! | switch | `list_ports`, `list_bridges` | `Start` |
//! | links | `create_veth` | `Start`, (pair created), `Configure`, (Pod end configured), `BringUp`, (up, routes added); on a failure after the pair exists: `Rollback`, (pair deleted) |
//! | links | `delete_host_link`, `delete_pod_link`, `inspect_pod_link`, `host_link`, `host_addresses` | `Start` |
//! | links (VFs) | `pf_settings`, `set_pf_settings`, `attach_vf`, `detach_vf`, `inspect_vf` | `Start` (each is one step) |
//!
//! A hook answering `Err` at a point makes the operation fail there with
//! an error naming the injected fault ([`SwitchError::Backend`],
//! [`NetdevError::Backend`]), leaving the state the real back end leaves:
//! - switch, `Start`: nothing changed; `Reply`: the transaction committed
//!   but its answer was lost (the connection dropped), so the change is in
//!   and the caller sees an error;
//! - `create_veth`, `Start`: nothing created; `Configure` / `BringUp`:
//!   the pair is deleted (the real implementation's rollback, itself
//!   preceded by the `Rollback` point) and the error returned; `Rollback`:
//!   the rollback fails too, so the pair stays, half made (Pod end down,
//!   without addresses after a `Configure` failure; configured but down
//!   after a `BringUp` one), for the agent's sweep to remove.
//!
//! A hook that never returns models a crash of the agent at that point:
//! the simulator drops the future, and the state stays exactly as it was
//! when the hook was called (e.g. after `Configure` was reached, a pair
//! whose Pod end is down and has no address). The real `create_veth`
//! cleans up after a caller that goes away while the agent lives on (a
//! timeout); that case is not modelled: a dropped future is a crash.
//!
//! A hook that sleeps delays the operation by that (simulated) time.

mod links;
mod switch;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;

pub use links::{
    FakeLinks, ForeignLink, HostEnd, HostVf, LinkKind, LinksSnapshot, NicState, PodLink,
};
pub use switch::{BridgeSnapshot, FakeSwitch, SwitchSnapshot};

#[cfg(doc)]
use crate::netdev::NetdevError;
#[cfg(doc)]
use crate::ovsdb::SwitchError;

/// Which back end a [`FaultPoint`] belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// [`FakeSwitch`] (ovsdb-server).
    Switch,
    /// [`FakeLinks`] (the kernel).
    Links,
}

/// The trait method a [`FaultPoint`] is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `Switch::ensure_bridge`.
    EnsureBridge,
    /// `Switch::add_access_port`.
    AddAccessPort,
    /// `Switch::remove_port`.
    RemovePort,
    /// `Switch::list_ports`.
    ListPorts,
    /// `Switch::list_bridges`.
    ListBridges,
    /// `PodLinks::create_veth`.
    CreateVeth,
    /// `PodLinks::delete_host_link`.
    DeleteHostLink,
    /// `PodLinks::delete_pod_link`.
    DeletePodLink,
    /// `PodLinks::inspect_pod_link`.
    InspectPodLink,
    /// `PodLinks::host_link`.
    HostLink,
    /// `PodLinks::host_addresses`.
    HostAddresses,
    /// `VfLinks::pf_settings`.
    PfSettings,
    /// `VfLinks::set_pf_settings`.
    SetPfSettings,
    /// `VfLinks::attach_vf`.
    AttachVf,
    /// `VfLinks::detach_vf`.
    DetachVf,
    /// `VfLinks::inspect_vf`.
    InspectVf,
}

impl Op {
    /// The method's name, e.g. `create_veth`.
    pub fn name(self) -> &'static str {
        match self {
            Op::EnsureBridge => "ensure_bridge",
            Op::AddAccessPort => "add_access_port",
            Op::RemovePort => "remove_port",
            Op::ListPorts => "list_ports",
            Op::ListBridges => "list_bridges",
            Op::CreateVeth => "create_veth",
            Op::DeleteHostLink => "delete_host_link",
            Op::DeletePodLink => "delete_pod_link",
            Op::InspectPodLink => "inspect_pod_link",
            Op::HostLink => "host_link",
            Op::HostAddresses => "host_addresses",
            Op::PfSettings => "pf_settings",
            Op::SetPfSettings => "set_pf_settings",
            Op::AttachVf => "attach_vf",
            Op::DetachVf => "detach_vf",
            Op::InspectVf => "inspect_vf",
        }
    }

    /// The back end the method belongs to.
    pub fn backend(self) -> Backend {
        match self {
            Op::EnsureBridge
            | Op::AddAccessPort
            | Op::RemovePort
            | Op::ListPorts
            | Op::ListBridges => Backend::Switch,
            _ => Backend::Links,
        }
    }
}

/// Where in an operation a [`FaultPoint`] is (see the module doc for
/// which operation has which steps and what a failure at each leaves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Before the operation looks at or changes anything.
    Start,
    /// Switch writes: the transaction has committed, its answer is on its
    /// way back.
    Reply,
    /// `create_veth`: the pair exists (host end up, Pod end down without
    /// addresses); the Pod end is about to be configured.
    Configure,
    /// `create_veth`: the Pod end has its addresses; it is about to come
    /// up and get its routes.
    BringUp,
    /// `create_veth`: a step failed; the pair is about to be deleted.
    Rollback,
}

impl Step {
    /// The step's name, e.g. `configure`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Start => "start",
            Step::Reply => "reply",
            Step::Configure => "configure",
            Step::BringUp => "bring-up",
            Step::Rollback => "rollback",
        }
    }
}

/// What an operation concerns (the fields that apply are set).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subject {
    /// The bridge (switch operations on a bridge).
    pub bridge: Option<String>,
    /// The port (`add_access_port`, `remove_port`).
    pub port: Option<String>,
    /// The Pod netns (`create_veth`, `delete_pod_link`,
    /// `inspect_pod_link`).
    pub netns: Option<PathBuf>,
    /// The interface: the Pod end's name (`create_veth`,
    /// `delete_pod_link`, `inspect_pod_link`) or the name in the agent's
    /// netns (`delete_host_link`, `host_link`, `host_addresses`).
    pub ifname: Option<String>,
    /// `create_veth`: the host end's name.
    pub host: Option<String>,
}

/// A point where a [`FaultHook`] is consulted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultPoint {
    /// The back end.
    pub backend: Backend,
    /// The operation.
    pub op: Op,
    /// The step within it.
    pub step: Step,
    /// What it concerns.
    pub subject: Subject,
}

impl FaultPoint {
    pub(crate) fn new(op: Op, step: Step, subject: Subject) -> FaultPoint {
        FaultPoint {
            backend: op.backend(),
            op,
            step,
            subject,
        }
    }

    pub(crate) fn at(&self, step: Step) -> FaultPoint {
        FaultPoint {
            step,
            ..self.clone()
        }
    }
}

impl fmt::Display for FaultPoint {
    /// E.g. `links/create_veth/configure netns=/run/netns/p ifname=eth1
    /// host=veth1234`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.backend {
            Backend::Switch => "switch",
            Backend::Links => "links",
        };
        write!(f, "{backend}/{}/{}", self.op.name(), self.step.name())?;
        let s = &self.subject;
        if let Some(b) = &s.bridge {
            write!(f, " bridge={b}")?;
        }
        if let Some(p) = &s.port {
            write!(f, " port={p}")?;
        }
        if let Some(n) = &s.netns {
            write!(f, " netns={}", n.display())?;
        }
        if let Some(i) = &s.ifname {
            write!(f, " ifname={i}")?;
        }
        if let Some(h) = &s.host {
            write!(f, " host={h}")?;
        }
        Ok(())
    }
}

/// What the owner of a fake installs to inject latency, failures and
/// crashes: consulted at every [`FaultPoint`]. `Ok` lets the operation go
/// on, `Err(why)` fails it there (the error names the point and `why`);
/// the future may sleep first (latency) or never complete (a crash: the
/// caller's future is dropped while it waits).
pub trait FaultHook: Send + Sync {
    /// Decides what happens at `point`.
    fn at<'a>(&'a self, point: &'a FaultPoint) -> BoxFuture<'a, Result<(), String>>;
}

/// A [`FaultHook`] from a function that answers at once.
pub struct FnHook<F>(pub F);

impl<F> FaultHook for FnHook<F>
where
    F: Fn(&FaultPoint) -> Result<(), String> + Send + Sync,
{
    fn at<'a>(&'a self, point: &'a FaultPoint) -> BoxFuture<'a, Result<(), String>> {
        let r = (self.0)(point);
        Box::pin(async move { r })
    }
}

/// `Arc`'d [`FnHook`] of `f`, ready for `set_fault_hook`.
pub fn hook_fn(
    f: impl Fn(&FaultPoint) -> Result<(), String> + Send + Sync + 'static,
) -> Arc<dyn FaultHook> {
    Arc::new(FnHook(f))
}

/// The hook slot both fakes hold.
#[derive(Default)]
pub(crate) struct HookSlot(std::sync::Mutex<Option<Arc<dyn FaultHook>>>);

impl fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.get().is_some() {
            "HookSlot(installed)"
        } else {
            "HookSlot(none)"
        })
    }
}

impl HookSlot {
    pub(crate) fn set(&self, hook: Option<Arc<dyn FaultHook>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    fn get(&self) -> Option<Arc<dyn FaultHook>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Consults the hook at `point`: `Err(text)` naming the point when it
    /// injects a failure. Without a hook, succeeds without yielding.
    pub(crate) async fn check(&self, point: &FaultPoint) -> Result<(), String> {
        let Some(hook) = self.get() else {
            return Ok(());
        };
        hook.at(point)
            .await
            .map_err(|why| format!("injected fault at {point}: {why}"))
    }
}
