//! SR-IOV on the node. For now only discovery: which physical functions
//! (PFs) and virtual functions (VFs) the node has, read from sysfs.
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
//!
//! What is not here yet: attaching a VF to a Pod and giving it back
//! (moving its netdev between namespaces, setting VLAN, MAC, spoof check
//! and trust on the PF through netlink).

pub mod sysfs;
