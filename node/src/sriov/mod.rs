//! SR-IOV on the node: which physical functions (PFs) and virtual
//! functions (VFs) the node has, read from sysfs, and the VF operations
//! the agent performs, behind a trait.
//!
//! - [`sysfs::Sysfs`]: reads the kernel's sysfs layout under a root path
//!   (`/` in production, an emulated tree in tests): a PF's VFs in index
//!   order with their PCI addresses and netdevs ([`sysfs::Sysfs::pf`]), and
//!   a VF's netdev and, when the node can see it, its PF and index
//!   ([`sysfs::Sysfs::vf`]; on a VM node the VF has no visible PF).
//! - [`sysfs::SysfsTree`]: writes such a tree of directories, files and
//!   symlinks, for tests and for the hardware harness, which keeps it in
//!   step when a VF's netdev is renamed or moves into a Pod's namespace.
//! - PCI addresses are [`spur_core::sriov::PciAddress`] (re-exported in
//!   [`sysfs`]), the same type the SR-IOV decisions of `spur-core` use.
//! - [`vf::VfLinks`]: setting a VF up through its PF, moving its netdev
//!   into a Pod and back, with the VF's own restore record.
//! - [`netlink::RtNetlinkVfs`]: [`vf::VfLinks`] over netlink (the netdev
//!   moved and configured in the Pod netns), the VFs' settings held by
//!   their PFs behind [`netlink::PfDriver`]: [`netlink::NetlinkPf`] (the
//!   PF's `IFLA_VFINFO_LIST`, real NICs) or [`emulated::EmulatedPf`] (the
//!   hardware harness's emulated NICs: an OVS bridge per PF, a
//!   representor access port per VF).
//!
//! The in-memory stand-in of [`vf::VfLinks`] is `crate::fake::FakeLinks`;
//! the agent's SR-IOV attach and detach are in `crate::agent` (an agent
//! built without [`crate::agent::SriovBackends`] refuses SR-IOV networks,
//! naming the node).

pub mod emulated;
pub mod netlink;
pub mod sysfs;
pub mod vf;
