//! The operations on virtual functions the agent needs, behind a small
//! trait ([`VfLinks`]) that the simulator and tests replace.
//!
//! A VF is handed to a Pod in two parts, both undone on detach:
//!
//! - through its PF, on a bare-metal node: VLAN and priority, MAC, spoof
//!   check and trust ([`VfLinks::pf_settings`] reads them first, so that
//!   the [`VfRecord`] written on the VF can restore them);
//! - its netdev: renamed to the name the Pod asked for, with the
//!   [`VfRecord`] as its alias, moved into the Pod's network namespace
//!   (one move: a VF cannot be created there) and configured there (MTU,
//!   MAC, addresses, routes, up, gratuitous ARP / unsolicited NA).
//!
//! Detaching moves the netdev back under the name its record gives, and
//! the caller restores the PF's settings from the same record.
//!
//! What is not here: which VF (spur-core's `sriov::assign_devices`),
//! what to set on it (`sriov::vf_plan`), finding it in sysfs
//! ([`super::sysfs`]).

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use ipnet::IpNet;
use spur_core::names::Mac;
pub use spur_core::sriov::{PfVfSettings, VfRecord};

use crate::netdev::{NetdevError, RouteSpec};

/// Moving a VF's netdev into a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfAttachSpec {
    /// The VF's netdev in the agent's namespace.
    pub netdev: String,
    /// Written as the netdev's alias before it moves.
    pub record: VfRecord,
    /// The Pod's network namespace (the path the runtime gave).
    pub netns: PathBuf,
    /// The name in the Pod.
    pub ifname: String,
    /// MTU.
    pub mtu: u32,
    /// MAC set on the netdev (None: kept).
    pub mac: Option<Mac>,
    /// Addresses with their prefix lengths.
    pub addresses: Vec<IpNet>,
    /// Routes through the interface.
    pub routes: Vec<RouteSpec>,
    /// Send gratuitous ARP / unsolicited NA once up.
    pub announce: bool,
}

/// A VF found in a Pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVf {
    /// Its record (None: the alias is not a Spur record).
    pub record: Option<VfRecord>,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: Mac,
    /// Addresses.
    pub addresses: Vec<IpNet>,
    /// Up.
    pub up: bool,
}

/// The VF operations of the node agent. Boxed futures keep it usable as
/// `dyn VfLinks`.
pub trait VfLinks: Send + Sync {
    /// What `pf` has set for its VF `index`.
    fn pf_settings<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
    ) -> BoxFuture<'a, Result<PfVfSettings, NetdevError>>;

    /// Sets VF `index` of `pf`: VLAN and priority, MAC when given, spoof
    /// check and trust when given. Idempotent.
    fn set_pf_settings<'a>(
        &'a self,
        pf: &'a str,
        index: u16,
        settings: &'a PfVfSettings,
    ) -> BoxFuture<'a, Result<(), NetdevError>>;

    /// Writes the record as the netdev's alias, renames it, moves it into
    /// the Pod's namespace and configures it there. All or nothing: on
    /// failure the netdev is back in the agent's namespace under its own
    /// name. Fails with [`NetdevError::PodLinkExists`] when the name is
    /// taken in the Pod, [`NetdevError::NetnsNotFound`] for a missing
    /// namespace, and when the netdev is not in the agent's namespace.
    fn attach_vf<'a>(&'a self, spec: &'a VfAttachSpec) -> BoxFuture<'a, Result<(), NetdevError>>;

    /// Moves `ifname` out of the Pod's namespace back into the agent's,
    /// renamed as its record says, addresses flushed and down; returns the
    /// record. `Ok(None)` when the namespace or the interface is gone
    /// (idempotent); an interface without a Spur record is left where it
    /// is and is an error.
    fn detach_vf<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<VfRecord>, NetdevError>>;

    /// The interfaces of the Pod's namespace that are VFs carrying a Spur
    /// record (what a DEL gives back). Empty when the namespace is gone.
    fn pod_vfs<'a>(&'a self, netns: &'a Path) -> BoxFuture<'a, Result<Vec<String>, NetdevError>>;

    /// Writes `record` as the alias of the VF `netdev` in the agent's
    /// namespace, before anything is set on the VF through its PF: an
    /// agent that dies before the VF is in the Pod leaves a labelled VF,
    /// which the recovery restores ([`VfLinks::restore_host_vf`]), never
    /// a VF whose PF settings nobody knows how to undo.
    fn label_host_vf<'a>(
        &'a self,
        netdev: &'a str,
        record: &'a VfRecord,
    ) -> BoxFuture<'a, Result<(), NetdevError>>;

    /// The VFs in the agent's namespace whose alias is a Spur record, with
    /// their records: VFs whose Pod namespace went away (the kernel moves
    /// a physical device home, under the name it had in the Pod, down and
    /// without addresses) and VFs an interrupted attach left behind.
    fn host_vfs<'a>(&'a self) -> BoxFuture<'a, Result<Vec<(String, VfRecord)>, NetdevError>>;

    /// Gives the VF `netdev` of the agent's namespace its own name back
    /// (the record's; a fallback name when that one is taken), down,
    /// without addresses or alias, and returns its record; the caller
    /// restores the PF's settings from it. `Ok(None)` when the netdev is
    /// gone or carries no Spur record (idempotent).
    fn restore_host_vf<'a>(
        &'a self,
        netdev: &'a str,
    ) -> BoxFuture<'a, Result<Option<VfRecord>, NetdevError>>;

    /// The VF `ifname` in the Pod's namespace, for CNI CHECK and restart
    /// recovery (`None` when absent).
    fn inspect_vf<'a>(
        &'a self,
        netns: &'a Path,
        ifname: &'a str,
    ) -> BoxFuture<'a, Result<Option<PodVf>, NetdevError>>;
}
