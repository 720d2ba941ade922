//! SR-IOV discovery through sysfs, under a root that is `/` only in
//! production.
//!
//! The layout read (paths below the root):
//!
//! - `/sys/class/net/<ifname>/device`: a symlink to the interface's PCI
//!   device directory (in reality a relative link such as
//!   `../../../devices/pci0000:00/0000:00:03.0`).
//! - `/sys/bus/pci/devices/<pci>`: the device directory of a PCI address
//!   (in reality again a symlink into `/sys/devices/...`).
//! - A PF's device directory holds `sriov_totalvfs`, `sriov_numvfs` and one
//!   `virtfn<N>` symlink per VF, to the VF's device directory.
//! - A VF's device directory holds `physfn`, a symlink to its PF's (absent
//!   on a VM node, which sees the VF without its PF), and `net/<netdev>/`
//!   (absent when the VF is bound to a userspace driver or its netdev is
//!   in another network namespace).
//!
//! Every symlink is resolved inside the root, component by component, as
//! the kernel would inside a chroot: relative targets against the link's
//! directory, absolute targets re-rooted under the root, and `..` never
//! climbs above it. Paths named in errors are the paths on the machine
//! (root included), i.e. what was actually looked at.
//!
//! [`SysfsTree`] writes such a tree (with the same links the kernel makes)
//! for tests and for the hardware harness.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use spur_core::names::ifname_problem;
pub use spur_core::sriov::{PciAddress, PciAddressError};

/// Symlinks followed while resolving one path before giving up (the
/// kernel's limit, `ELOOP`).
const MAX_LINKS: usize = 40;

/// Longest piece of a garbled file quoted in an error.
const MAX_QUOTED: usize = 64;

/// A failure to read SR-IOV devices from sysfs. Each names what it looked
/// for and the path it looked at.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// The interface name cannot be a Linux interface name.
    #[error("bad interface name {ifname:?}: {problem}")]
    BadIfname {
        /// The name given.
        ifname: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A text that should be a PCI address is not one.
    #[error(transparent)]
    BadPciAddress(#[from] PciAddressError),
    /// No network interface of that name (in the namespace whose sysfs
    /// this is).
    #[error("no network interface {ifname}: {path} does not exist")]
    NoSuchInterface {
        /// The interface asked for.
        ifname: String,
        /// Its directory under `/sys/class/net`.
        path: PathBuf,
    },
    /// The interface exists but is not an SR-IOV physical function: it has
    /// no PCI device, or its device has no SR-IOV capability.
    #[error("interface {ifname} is not an SR-IOV physical function: {missing} does not exist")]
    NotAPf {
        /// The interface asked for.
        ifname: String,
        /// The file or link that a PF has and this interface lacks.
        missing: PathBuf,
    },
    /// No PCI device at that address.
    #[error("no PCI device {pci}: {path} does not exist")]
    NoSuchDevice {
        /// The address asked for.
        pci: PciAddress,
        /// Where its device directory would be.
        path: PathBuf,
    },
    /// A file or symlink holds something it should not: a count that is not
    /// a number, a link that leads nowhere or to a directory not named by a
    /// PCI address.
    #[error("{path}: unexpected content {content:?}")]
    Garbled {
        /// The file or link.
        path: PathBuf,
        /// What it holds (a link: where it points), shortened when long.
        content: String,
    },
    /// A VF's `physfn` leads to a PF none of whose `virtfn<N>` links leads
    /// back to the VF, so the VF's index is unknown.
    #[error("VF {vf} is not among the virtfn links of its PF directory {pf_dir}")]
    VfNotListed {
        /// The VF.
        vf: PciAddress,
        /// The directory its `physfn` link leads to.
        pf_dir: PathBuf,
    },
    /// Reading sysfs failed for another reason (permissions, a loop of
    /// symlinks).
    #[error("{path}: {source}")]
    Io {
        /// The path being read.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
}

/// An SR-IOV physical function and its VFs, as sysfs shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhysicalFunction {
    /// The PF's interface name, as asked for.
    pub name: String,
    /// The PF's PCI address.
    pub pci: PciAddress,
    /// How many VFs the device supports (`sriov_totalvfs`).
    pub total_vfs: u32,
    /// How many VFs are configured (`sriov_numvfs`).
    pub num_vfs: u32,
    /// The VFs whose `virtfn<N>` links exist, by index (normally
    /// `0..num_vfs`).
    pub vfs: Vec<VirtualFunction>,
}

/// One VF of a [`PhysicalFunction`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualFunction {
    /// `N` of the PF's `virtfn<N>` link: the VF number netlink's
    /// `IFLA_VF_*` attributes on the PF use.
    pub index: u32,
    /// The VF's PCI address.
    pub pci: PciAddress,
    /// The VF's netdev in this namespace, if it has one here (see
    /// [`Sysfs::netdev_of`]).
    pub netdev: Option<String>,
}

/// A VF looked up by its PCI address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfDevice {
    /// The VF's PCI address.
    pub pci: PciAddress,
    /// The VF's netdev in this namespace, if it has one here (see
    /// [`Sysfs::netdev_of`]).
    pub netdev: Option<String>,
    /// Its PF, when the node can see it; `None` on a VM node (no `physfn`
    /// link), where the VF's VLAN and MAC cannot be set through a PF.
    pub pf: Option<VfParent>,
}

/// The PF of a [`VfDevice`] and the VF's place in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VfParent {
    /// The PF's netdev, `None` when it has none in this namespace.
    pub netdev: Option<String>,
    /// The PF's PCI address.
    pub pci: PciAddress,
    /// The VF's index on the PF (`N` of the PF's `virtfn<N>` link to it).
    pub index: u32,
}

/// Reads SR-IOV devices from the sysfs under a root directory.
///
/// Only reads; every call looks at sysfs afresh, so results reflect
/// renames and namespace moves that happened since the last one.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

/// One step of a path being resolved.
enum Part {
    /// `..`.
    Up,
    /// A name.
    Name(OsString),
}

impl Sysfs {
    /// Sysfs under `root`: `<root>/sys/...` stands for `/sys/...`.
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// The machine's own sysfs (root `/`).
    pub fn host() -> Sysfs {
        Sysfs::new("/")
    }

    /// The root given to [`Sysfs::new`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The physical function `ifname` with its VFs in index order.
    ///
    /// Errors: [`SysfsError::BadIfname`], [`SysfsError::NoSuchInterface`],
    /// [`SysfsError::NotAPf`] (no PCI device, or no `sriov_totalvfs` /
    /// `sriov_numvfs`), [`SysfsError::Garbled`] (a count that is not a
    /// number, a `virtfn` link that leads nowhere).
    pub fn pf(&self, ifname: &str) -> Result<PhysicalFunction, SysfsError> {
        if let Some(problem) = ifname_problem(ifname) {
            return Err(SysfsError::BadIfname {
                ifname: ifname.to_owned(),
                problem,
            });
        }
        let class = Path::new("/sys/class/net").join(ifname);
        if self.resolve(&class)?.is_none() {
            return Err(SysfsError::NoSuchInterface {
                ifname: ifname.to_owned(),
                path: self.on_host(&class),
            });
        }
        let not_a_pf = |missing: &Path| SysfsError::NotAPf {
            ifname: ifname.to_owned(),
            missing: self.on_host(missing),
        };
        let link = class.join("device");
        let dir = self.resolve(&link)?.ok_or_else(|| not_a_pf(&link))?;
        let total = dir.join("sriov_totalvfs");
        let total_vfs = self.read_count(&total)?.ok_or_else(|| not_a_pf(&total))?;
        let num = dir.join("sriov_numvfs");
        let num_vfs = self.read_count(&num)?.ok_or_else(|| not_a_pf(&num))?;
        let pci = self.pci_of(&dir, &link)?;
        let mut vfs = Vec::new();
        for (index, link) in self.virtfn_links(&dir)? {
            let vf_dir = self.follow(&link)?;
            vfs.push(VirtualFunction {
                index,
                pci: self.pci_of(&vf_dir, &link)?,
                netdev: self.netdev_in(&vf_dir)?,
            });
        }
        Ok(PhysicalFunction {
            name: ifname.to_owned(),
            pci,
            total_vfs,
            num_vfs,
            vfs,
        })
    }

    /// The VF at PCI address `pci` (any case; see [`PciAddress`]): its
    /// netdev and, when visible, its PF and index.
    ///
    /// Whether the device is a VF at all is not checked: on a VM node a VF
    /// looks like any PCI device. Errors: [`SysfsError::BadPciAddress`],
    /// [`SysfsError::NoSuchDevice`], [`SysfsError::VfNotListed`],
    /// [`SysfsError::Garbled`] (a `physfn` or `virtfn` link that leads
    /// nowhere).
    pub fn vf(&self, pci: &str) -> Result<VfDevice, SysfsError> {
        let (pci, dir) = self.device_dir(pci)?;
        let netdev = self.netdev_in(&dir)?;
        let physfn = dir.join("physfn");
        if !self.link_exists(&physfn)? {
            return Ok(VfDevice {
                pci,
                netdev,
                pf: None,
            });
        }
        let pf_dir = self.follow(&physfn)?;
        let mut index = None;
        for (n, link) in self.virtfn_links(&pf_dir)? {
            if self.resolve(&link)?.as_ref() == Some(&dir) {
                index = Some(n);
                break;
            }
        }
        let index = index.ok_or_else(|| SysfsError::VfNotListed {
            vf: pci,
            pf_dir: self.on_host(&pf_dir),
        })?;
        let pf = VfParent {
            netdev: self.netdev_in(&pf_dir)?,
            pci: self.pci_of(&pf_dir, &physfn)?,
            index,
        };
        Ok(VfDevice {
            pci,
            netdev,
            pf: Some(pf),
        })
    }

    /// The netdev of the PCI device at `pci` in this namespace: the entry
    /// of its `net/` directory (the first by name should there be several).
    /// `None` when it has none: bound to a userspace driver (vfio-pci), or
    /// its netdev is in another network namespace.
    ///
    /// Errors: [`SysfsError::BadPciAddress`], [`SysfsError::NoSuchDevice`].
    pub fn netdev_of(&self, pci: &str) -> Result<Option<String>, SysfsError> {
        let (_, dir) = self.device_dir(pci)?;
        self.netdev_in(&dir)
    }

    /// The parsed address and resolved device directory of `pci`.
    fn device_dir(&self, pci: &str) -> Result<(PciAddress, PathBuf), SysfsError> {
        let pci: PciAddress = pci.parse()?;
        let path = Path::new("/sys/bus/pci/devices").join(pci.to_string());
        match self.resolve(&path)? {
            Some(dir) => Ok((pci, dir)),
            None => Err(SysfsError::NoSuchDevice {
                pci,
                path: self.on_host(&path),
            }),
        }
    }

    /// `path` (absolute, as inside the root) on the machine.
    fn on_host(&self, path: &Path) -> PathBuf {
        let mut out = self.root.clone();
        for c in path.components() {
            if let Component::Normal(name) = c {
                out.push(name);
            }
        }
        out
    }

    /// `path` (as inside the root) with every symlink resolved inside the
    /// root; `None` when some component does not exist.
    ///
    /// The result is absolute and free of symlinks, `.` and `..`, so two
    /// results are the same directory exactly when they are equal.
    fn resolve(&self, path: &Path) -> Result<Option<PathBuf>, SysfsError> {
        let mut done: Vec<OsString> = Vec::new();
        let mut todo: VecDeque<Part> = VecDeque::new();
        push_parts(&mut todo, path, &mut done);
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            let name = match part {
                Part::Up => {
                    done.pop();
                    continue;
                }
                Part::Name(name) => name,
            };
            done.push(name);
            let logical: PathBuf = std::iter::once(OsString::from("/"))
                .chain(done.iter().cloned())
                .collect();
            let host = self.on_host(&logical);
            let meta = match fs::symlink_metadata(&host) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(SysfsError::Io {
                        path: host,
                        source: e,
                    })
                }
            };
            if meta.file_type().is_symlink() {
                links += 1;
                if links > MAX_LINKS {
                    return Err(SysfsError::Io {
                        path: self.on_host(path),
                        source: io::Error::other("too many levels of symbolic links"),
                    });
                }
                let target = fs::read_link(&host).map_err(|e| SysfsError::Io {
                    path: host.clone(),
                    source: e,
                })?;
                done.pop();
                let mut ahead = VecDeque::new();
                push_parts(&mut ahead, &target, &mut done);
                ahead.append(&mut todo);
                todo = ahead;
            } else if !meta.is_dir() && todo.iter().any(|p| matches!(p, Part::Name(_))) {
                // A file used as a directory (ENOTDIR): nothing there.
                return Ok(None);
            }
        }
        Ok(Some(
            std::iter::once(OsString::from("/")).chain(done).collect(),
        ))
    }

    /// Whether `path` (resolved, as inside the root) exists as a symlink or
    /// anything else, without following it.
    fn link_exists(&self, path: &Path) -> Result<bool, SysfsError> {
        let host = self.on_host(path);
        match fs::symlink_metadata(&host) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(SysfsError::Io {
                path: host,
                source: e,
            }),
        }
    }

    /// Where the symlink `link` leads; [`SysfsError::Garbled`] when nowhere.
    fn follow(&self, link: &Path) -> Result<PathBuf, SysfsError> {
        if let Some(dir) = self.resolve(link)? {
            return Ok(dir);
        }
        let host = self.on_host(link);
        let content = match fs::read_link(&host) {
            Ok(target) => format!("a link to {} that does not exist", target.display()),
            Err(_) => "nothing".to_owned(),
        };
        Err(SysfsError::Garbled {
            path: host,
            content,
        })
    }

    /// The PCI address naming the resolved device directory `dir`, reached
    /// through `via` (named in the error when it is not one).
    fn pci_of(&self, dir: &Path, via: &Path) -> Result<PciAddress, SysfsError> {
        dir.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| SysfsError::Garbled {
                path: self.on_host(via),
                content: format!("a link to {}, not a PCI device", dir.display()),
            })
    }

    /// A decimal count in the file `path` (as inside the root); `None` when
    /// there is no such file.
    fn read_count(&self, path: &Path) -> Result<Option<u32>, SysfsError> {
        let Some(file) = self.resolve(path)? else {
            return Ok(None);
        };
        let host = self.on_host(&file);
        let bytes = fs::read(&host).map_err(|e| SysfsError::Io {
            path: host.clone(),
            source: e,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        match text.trim().parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(SysfsError::Garbled {
                path: host,
                content: quote(&text),
            }),
        }
    }

    /// The `virtfn<N>` links in the resolved PF directory `dir`, by `N`.
    fn virtfn_links(&self, dir: &Path) -> Result<Vec<(u32, PathBuf)>, SysfsError> {
        let mut links: Vec<(u32, PathBuf)> = self
            .entries(dir)?
            .into_iter()
            .filter_map(|name| {
                let n = name.strip_prefix("virtfn")?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some((n.parse().ok()?, dir.join(&name)))
            })
            .collect();
        links.sort();
        Ok(links)
    }

    /// The netdev in the resolved device directory `dir`: the first entry
    /// of its `net/` by name, `None` when it has none.
    fn netdev_in(&self, dir: &Path) -> Result<Option<String>, SysfsError> {
        let Some(net) = self.resolve(&dir.join("net"))? else {
            return Ok(None);
        };
        let names = self.entries(&net)?;
        if names.len() > 1 {
            tracing::debug!(dir = %self.on_host(dir).display(), ?names, "device has several netdevs; taking the first");
        }
        Ok(names.into_iter().next())
    }

    /// The names in the resolved directory `dir`, sorted; names that are
    /// not UTF-8 are left out (no interface or sysfs attribute has one).
    fn entries(&self, dir: &Path) -> Result<Vec<String>, SysfsError> {
        let host = self.on_host(dir);
        let io_err = |e| SysfsError::Io {
            path: host.clone(),
            source: e,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&host).map_err(io_err)? {
            if let Ok(name) = entry.map_err(io_err)?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Appends the steps of `path` to `todo`; a leading `/` starts over at the
/// root (clears `done`).
fn push_parts(todo: &mut VecDeque<Part>, path: &Path, done: &mut Vec<OsString>) {
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                todo.clear();
                done.clear();
            }
            Component::CurDir => {}
            Component::ParentDir => todo.push_back(Part::Up),
            Component::Normal(name) => todo.push_back(Part::Name(name.to_owned())),
        }
    }
}

/// `text` for an error message, shortened when long.
fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// An emulated sysfs tree of SR-IOV devices, written with plain
/// directories, files and symlinks, for tests and the hardware harness.
///
/// It lays out what [`Sysfs`] reads, with relative links as the kernel
/// makes them, below `<root>/sys`: `bus/pci/devices/<pci>/` per device
/// (a directory here, not a link into `devices/`), `class/net/<ifname>/`
/// per netdev (a directory holding the `device` link). Addresses and names
/// are checked; adding a device or netdev that exists fails with
/// [`io::ErrorKind::AlreadyExists`].
#[derive(Clone, Debug)]
pub struct SysfsTree {
    root: PathBuf,
}

impl SysfsTree {
    /// An empty tree under `root` (created if missing): the directories
    /// `sys/bus/pci/devices` and `sys/class/net`.
    pub fn create(root: impl Into<PathBuf>) -> io::Result<SysfsTree> {
        let tree = SysfsTree { root: root.into() };
        fs::create_dir_all(tree.devices())?;
        fs::create_dir_all(tree.class_net())?;
        Ok(tree)
    }

    /// The root given to [`SysfsTree::create`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A reader of this tree.
    pub fn sysfs(&self) -> Sysfs {
        Sysfs::new(self.root.clone())
    }

    /// Adds a PF with netdev `ifname` at `pci` and its VFs, VF `N` being
    /// `vfs[N]`: its PCI address and its netdev, if it has one.
    ///
    /// Writes `<pf>/{sriov_totalvfs, sriov_numvfs}` (both `vfs.len()`),
    /// `<pf>/virtfn<N> -> ../<vf>`, `<pf>/net/<ifname>/`, each
    /// `<vf>/physfn -> ../<pf>` and `<vf>/net/<netdev>/`, and per netdev
    /// `class/net/<name>/device -> ../../../bus/pci/devices/<pci>`.
    pub fn add_pf(&self, ifname: &str, pci: &str, vfs: &[(&str, Option<&str>)]) -> io::Result<()> {
        let pf = canonical(pci)?;
        check_ifname(ifname)?;
        let mut vf_pcis = Vec::with_capacity(vfs.len());
        for (vf, netdev) in vfs {
            vf_pcis.push(canonical(vf)?);
            if let Some(name) = netdev {
                check_ifname(name)?;
            }
        }
        let pf_dir = self.devices().join(&pf);
        fs::create_dir(&pf_dir)?;
        let count = format!("{}\n", vfs.len());
        fs::write(pf_dir.join("sriov_totalvfs"), &count)?;
        fs::write(pf_dir.join("sriov_numvfs"), &count)?;
        self.link_netdev(&pf, ifname)?;
        for (index, (vf, (_, netdev))) in vf_pcis.iter().zip(vfs).enumerate() {
            let vf_dir = self.devices().join(vf);
            fs::create_dir(&vf_dir)?;
            symlink(format!("../{pf}"), vf_dir.join("physfn"))?;
            symlink(format!("../{vf}"), pf_dir.join(format!("virtfn{index}")))?;
            if let Some(name) = netdev {
                self.link_netdev(vf, name)?;
            }
        }
        Ok(())
    }

    /// Adds a VF as a VM node sees it: at `pci`, with `netdev` if given,
    /// and no PF (no `physfn` link).
    pub fn add_vm_vf(&self, pci: &str, netdev: Option<&str>) -> io::Result<()> {
        let vf = canonical(pci)?;
        if let Some(name) = netdev {
            check_ifname(name)?;
        }
        fs::create_dir(self.devices().join(&vf))?;
        match netdev {
            Some(name) => self.link_netdev(&vf, name),
            None => Ok(()),
        }
    }

    /// Gives the device at `pci` the netdev `netdev`, or none: removes its
    /// current `net/<name>/` entries and their `class/net/<name>` (when
    /// they belong to this device), then adds the new ones. Mirrors a
    /// rename, a move into a Pod's namespace (`None`) and the move back.
    pub fn set_netdev(&self, pci: &str, netdev: Option<&str>) -> io::Result<()> {
        let dev = canonical(pci)?;
        if let Some(name) = netdev {
            check_ifname(name)?;
        }
        let dir = self.devices().join(&dev);
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no device {dev} in the emulated sysfs: {}", dir.display()),
            ));
        }
        let net = dir.join("net");
        if net.is_dir() {
            let own = PathBuf::from(format!("../../../bus/pci/devices/{dev}"));
            for entry in fs::read_dir(&net)? {
                let entry = entry?;
                let class = self.class_net().join(entry.file_name());
                if fs::read_link(class.join("device")).ok().as_ref() == Some(&own) {
                    fs::remove_dir_all(&class)?;
                }
                fs::remove_dir_all(entry.path())?;
            }
        }
        match netdev {
            Some(name) => self.link_netdev(&dev, name),
            None => Ok(()),
        }
    }

    /// `sys/bus/pci/devices` on the machine.
    fn devices(&self) -> PathBuf {
        self.root.join("sys/bus/pci/devices")
    }

    /// `sys/class/net` on the machine.
    fn class_net(&self) -> PathBuf {
        self.root.join("sys/class/net")
    }

    /// Makes `name` the netdev of the existing device `pci` (canonical).
    fn link_netdev(&self, pci: &str, name: &str) -> io::Result<()> {
        let class = self.class_net().join(name);
        fs::create_dir(&class)?;
        symlink(
            format!("../../../bus/pci/devices/{pci}"),
            class.join("device"),
        )?;
        fs::create_dir_all(self.devices().join(pci).join("net").join(name))
    }
}

/// `pci` in the kernel's form, or [`io::ErrorKind::InvalidInput`].
fn canonical(pci: &str) -> io::Result<String> {
    pci.parse::<PciAddress>()
        .map(|p| p.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// [`io::ErrorKind::InvalidInput`] unless `name` can be an interface name.
fn check_ifname(name: &str) -> io::Result<()> {
    match ifname_problem(name) {
        None => Ok(()),
        Some(problem) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}: {problem}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, SysfsTree) {
        let dir = tempfile::tempdir().unwrap();
        let tree = SysfsTree::create(dir.path()).unwrap();
        (dir, tree)
    }

    #[test]
    fn resolve_never_leaves_the_root() {
        let (dir, tree) = tree();
        let sysfs = tree.sysfs();
        let class = dir.path().join("sys/class/net");
        fs::create_dir(class.join("up")).unwrap();
        // Ten levels up from inside the root is the root itself.
        symlink("../../../../../../../../../../sys", class.join("up/device")).unwrap();
        assert_eq!(
            sysfs
                .resolve(Path::new("/sys/class/net/up/device/class"))
                .unwrap(),
            Some(PathBuf::from("/sys/class"))
        );
        // An absolute target is taken inside the root.
        symlink("/sys/class", class.join("abs")).unwrap();
        assert_eq!(
            sysfs.resolve(Path::new("/sys/class/net/abs/net")).unwrap(),
            Some(PathBuf::from("/sys/class/net"))
        );
        // A missing component, and a file used as a directory.
        assert_eq!(sysfs.resolve(Path::new("/sys/nope/x")).unwrap(), None);
        fs::write(class.join("file"), "x").unwrap();
        assert_eq!(
            sysfs.resolve(Path::new("/sys/class/net/file/x")).unwrap(),
            None
        );
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let (dir, tree) = tree();
        let class = dir.path().join("sys/class/net");
        symlink("b", class.join("a")).unwrap();
        symlink("a", class.join("b")).unwrap();
        let e = tree
            .sysfs()
            .resolve(Path::new("/sys/class/net/a"))
            .unwrap_err();
        assert!(matches!(e, SysfsError::Io { .. }), "{e}");
        assert!(e.to_string().contains("symbolic links"), "{e}");
    }

    #[test]
    fn long_garbage_is_shortened() {
        let long = "x".repeat(500);
        let q = quote(&long);
        assert!(q.len() < 80 && q.ends_with("..."), "{q}");
        assert_eq!(quote("4\n"), "4\n");
    }

    #[test]
    fn the_tree_rejects_bad_input() {
        let (_dir, tree) = tree();
        let e = tree.add_vm_vf("0000:3b:02", None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = tree.add_pf("a/b", "0000:3b:00.0", &[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        tree.add_vm_vf("0000:3b:02.0", Some("ens2")).unwrap();
        let e = tree.add_vm_vf("0000:3b:02.0", None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let e = tree.set_netdev("0000:3b:02.1", None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
