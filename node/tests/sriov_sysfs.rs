//! Tests of SR-IOV discovery (`spur_node::sriov::sysfs`) against emulated
//! sysfs trees in temporary directories: a PF's VFs in index order, a VF's
//! PF and index, a VM node's VF without PF, netdevs renamed and moved away,
//! the errors and what they name, symlinks laid out as the kernel does
//! (relative into `/sys/devices`, and absolute, re-rooted). The PCI
//! address parser's property tests are spur-core's (`sriov`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use spur_node::sriov::sysfs::{PciAddress, Sysfs, SysfsError, SysfsTree, VfParent};

const PF: &str = "0000:3b:00.0";
const VFS: [&str; 4] = [
    "0000:3b:02.0",
    "0000:3b:02.1",
    "0000:3b:02.2",
    "0000:3b:02.3",
];

fn pci(s: &str) -> PciAddress {
    s.parse().unwrap()
}

/// A tree with PF `ens1f0` and four VFs, VF 2 without netdev.
fn four_vfs() -> (tempfile::TempDir, SysfsTree) {
    let dir = tempfile::tempdir().unwrap();
    let tree = SysfsTree::create(dir.path()).unwrap();
    tree.add_pf(
        "ens1f0",
        PF,
        &[
            (VFS[0], Some("ens1f0v0")),
            (VFS[1], Some("ens1f0v1")),
            (VFS[2], None),
            (VFS[3], Some("ens1f0v3")),
        ],
    )
    .unwrap();
    (dir, tree)
}

#[test]
fn a_pf_lists_its_vfs_in_index_order() {
    let (_dir, tree) = four_vfs();
    let pf = tree.sysfs().pf("ens1f0").unwrap();
    assert_eq!(pf.name, "ens1f0");
    assert_eq!(pf.pci, pci(PF));
    assert_eq!((pf.total_vfs, pf.num_vfs), (4, 4));
    let got: Vec<_> = pf
        .vfs
        .iter()
        .map(|v| (v.index, v.pci.to_string(), v.netdev.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, VFS[0].to_owned(), Some("ens1f0v0".to_owned())),
            (1, VFS[1].to_owned(), Some("ens1f0v1".to_owned())),
            (2, VFS[2].to_owned(), None),
            (3, VFS[3].to_owned(), Some("ens1f0v3".to_owned())),
        ]
    );
}

#[test]
fn index_order_is_numeric_not_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SysfsTree::create(dir.path()).unwrap();
    let vfs: Vec<String> = (0..12)
        .map(|i| format!("0000:3b:{:02x}.0", i + 1))
        .collect();
    let spec: Vec<(&str, Option<&str>)> = vfs.iter().map(|v| (v.as_str(), None)).collect();
    tree.add_pf("ens1f0", PF, &spec).unwrap();
    let pf = tree.sysfs().pf("ens1f0").unwrap();
    let idx: Vec<u32> = pf.vfs.iter().map(|v| v.index).collect();
    assert_eq!(idx, (0..12).collect::<Vec<_>>());
    assert_eq!(pf.vfs[10].pci.to_string(), vfs[10]);
}

#[test]
fn a_vf_knows_its_pf_and_index() {
    let (_dir, tree) = four_vfs();
    let sysfs = tree.sysfs();
    let vf = sysfs.vf(VFS[3]).unwrap();
    assert_eq!(vf.pci, pci(VFS[3]));
    assert_eq!(vf.netdev.as_deref(), Some("ens1f0v3"));
    assert_eq!(
        vf.pf,
        Some(VfParent {
            netdev: Some("ens1f0".to_owned()),
            pci: pci(PF),
            index: 3,
        })
    );
    // Upper-case input is the same device.
    let vf2 = sysfs.vf("0000:3B:02.2").unwrap();
    assert_eq!(vf2.netdev, None);
    assert_eq!(vf2.pf.map(|p| p.index), Some(2));
    assert_eq!(
        sysfs.netdev_of(VFS[0]).unwrap().as_deref(),
        Some("ens1f0v0")
    );
}

#[test]
fn a_vm_vf_has_no_pf() {
    let dir = tempfile::tempdir().unwrap();
    let tree = SysfsTree::create(dir.path()).unwrap();
    tree.add_vm_vf("0000:00:05.0", Some("ens5")).unwrap();
    tree.add_vm_vf("0000:00:06.0", None).unwrap();
    let sysfs = tree.sysfs();
    let vf = sysfs.vf("0000:00:05.0").unwrap();
    assert_eq!(vf.netdev.as_deref(), Some("ens5"));
    assert_eq!(vf.pf, None);
    let bare = sysfs.vf("0000:00:06.0").unwrap();
    assert_eq!((bare.netdev, bare.pf), (None, None));
    // Its netdev is no PF.
    let e = sysfs.pf("ens5").unwrap_err();
    assert!(matches!(e, SysfsError::NotAPf { .. }), "{e}");
}

#[test]
fn renamed_and_removed_netdevs_are_seen() {
    let (dir, tree) = four_vfs();
    let sysfs = tree.sysfs();
    let class = dir.path().join("sys/class/net");

    tree.set_netdev(VFS[1], Some("net1")).unwrap();
    assert_eq!(sysfs.netdev_of(VFS[1]).unwrap().as_deref(), Some("net1"));
    assert!(!class.join("ens1f0v1").exists());
    assert!(class.join("net1/device").exists());
    assert_eq!(
        sysfs.pf("ens1f0").unwrap().vfs[1].netdev.as_deref(),
        Some("net1")
    );

    // Moved into a Pod's namespace: no netdev here.
    tree.set_netdev(VFS[1], None).unwrap();
    assert_eq!(sysfs.netdev_of(VFS[1]).unwrap(), None);
    assert!(!class.join("net1").exists());
    assert_eq!(sysfs.vf(VFS[1]).unwrap().pf.map(|p| p.index), Some(1));

    // Back, under its original name.
    tree.set_netdev(VFS[1], Some("ens1f0v1")).unwrap();
    assert_eq!(
        sysfs.vf(VFS[1]).unwrap().netdev.as_deref(),
        Some("ens1f0v1")
    );

    // A VF without netdev gets one.
    tree.set_netdev(VFS[2], Some("ens1f0v2")).unwrap();
    assert_eq!(
        sysfs.netdev_of(VFS[2]).unwrap().as_deref(),
        Some("ens1f0v2")
    );
}

#[test]
fn not_a_pf_names_the_interface_and_the_missing_file() {
    let (dir, tree) = four_vfs();
    let sysfs = tree.sysfs();
    let e = sysfs.pf("ens1f0v0").unwrap_err();
    let total = dir
        .path()
        .join("sys/bus/pci/devices")
        .join(VFS[0])
        .join("sriov_totalvfs");
    match &e {
        SysfsError::NotAPf { ifname, missing } => {
            assert_eq!(ifname, "ens1f0v0");
            assert_eq!(missing, &total);
        }
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("ens1f0v0") && msg.contains(&total.display().to_string()),
        "{msg}"
    );

    // A virtual interface: no PCI device at all.
    fs::create_dir(dir.path().join("sys/class/net/br0")).unwrap();
    let e = sysfs.pf("br0").unwrap_err();
    assert!(
        matches!(&e, SysfsError::NotAPf { missing, .. } if missing.ends_with("br0/device")),
        "{e}"
    );

    // No such interface, and a name that cannot be one.
    let e = sysfs.pf("eth9").unwrap_err();
    assert!(matches!(e, SysfsError::NoSuchInterface { .. }), "{e}");
    assert!(e.to_string().contains("eth9"), "{e}");
    let e = sysfs.pf("../../bus").unwrap_err();
    assert!(matches!(e, SysfsError::BadIfname { .. }), "{e}");
}

#[test]
fn unknown_and_bad_pci_addresses_are_named() {
    let (dir, tree) = four_vfs();
    let sysfs = tree.sysfs();
    let e = sysfs.vf("0000:3b:07.0").unwrap_err();
    match &e {
        SysfsError::NoSuchDevice { pci: p, path } => {
            assert_eq!(*p, pci("0000:3b:07.0"));
            assert_eq!(path, &dir.path().join("sys/bus/pci/devices/0000:3b:07.0"));
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("0000:3b:07.0"), "{e}");
    let e = sysfs.netdev_of("0000:3b:07.0").unwrap_err();
    assert!(matches!(e, SysfsError::NoSuchDevice { .. }), "{e}");

    for bad in ["3b:02.0", "0000:3b:02.9", "ens1f0", "0000:3b:02.0/../x"] {
        let e = sysfs.vf(bad).unwrap_err();
        assert!(matches!(e, SysfsError::BadPciAddress(_)), "{e}");
        assert!(e.to_string().contains(bad), "{e}");
    }
}

#[test]
fn a_garbled_count_names_the_file_and_its_content() {
    let (dir, tree) = four_vfs();
    let numvfs = dir
        .path()
        .join("sys/bus/pci/devices")
        .join(PF)
        .join("sriov_numvfs");
    fs::write(&numvfs, "four\n").unwrap();
    let e = tree.sysfs().pf("ens1f0").unwrap_err();
    match &e {
        SysfsError::Garbled { path, content } => {
            assert_eq!(path, &numvfs);
            assert_eq!(content, "four\n");
        }
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("sriov_numvfs") && msg.contains("four"),
        "{msg}"
    );
}

#[test]
fn a_dangling_virtfn_link_is_garbled() {
    let (dir, tree) = four_vfs();
    let pf_dir = dir.path().join("sys/bus/pci/devices").join(PF);
    symlink("../0000:3b:09.0", pf_dir.join("virtfn4")).unwrap();
    let e = tree.sysfs().pf("ens1f0").unwrap_err();
    assert!(
        matches!(&e, SysfsError::Garbled { path, .. } if path.ends_with("virtfn4")),
        "{e}"
    );
}

#[test]
fn a_vf_missing_from_its_pf_is_an_error() {
    let (dir, tree) = four_vfs();
    let pf_dir = dir.path().join("sys/bus/pci/devices").join(PF);
    fs::remove_file(pf_dir.join("virtfn2")).unwrap();
    let e = tree.sysfs().vf(VFS[2]).unwrap_err();
    assert!(matches!(e, SysfsError::VfNotListed { .. }), "{e}");
    assert!(e.to_string().contains(VFS[2]), "{e}");
}

/// Lays out devices as the kernel does: the real directories under
/// `/sys/devices/pci0000:3a/0000:3a:00.0/`, `/sys/bus/pci/devices/<pci>`
/// relative links to them, `virtfn` and `physfn` relative links between
/// siblings there; and `class/net/<if>/device` links that are absolute.
#[test]
fn kernel_style_links_and_absolute_targets_resolve_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bridge = root.join("sys/devices/pci0000:3a/0000:3a:00.0");
    let bus = root.join("sys/bus/pci/devices");
    let class = root.join("sys/class/net");
    fs::create_dir_all(&bus).unwrap();
    fs::create_dir_all(&class).unwrap();
    let pf = bridge.join(PF);
    fs::create_dir_all(pf.join("net/ens1f0")).unwrap();
    fs::write(pf.join("sriov_totalvfs"), "8\n").unwrap();
    fs::write(pf.join("sriov_numvfs"), "2\n").unwrap();
    for (i, vf) in VFS[..2].iter().enumerate() {
        fs::create_dir_all(bridge.join(vf).join("net").join(format!("ens1f0v{i}"))).unwrap();
        symlink(format!("../{PF}"), bridge.join(vf).join("physfn")).unwrap();
        symlink(format!("../{vf}"), pf.join(format!("virtfn{i}"))).unwrap();
    }
    for d in std::iter::once(PF).chain(VFS[..2].iter().copied()) {
        symlink(
            format!("../../../devices/pci0000:3a/0000:3a:00.0/{d}"),
            bus.join(d),
        )
        .unwrap();
    }
    // Absolute: must be taken as <root>/sys/..., not the machine's /sys.
    fs::create_dir(class.join("ens1f0")).unwrap();
    symlink(
        Path::new("/sys/bus/pci/devices").join(PF),
        class.join("ens1f0/device"),
    )
    .unwrap();

    let sysfs = Sysfs::new(root);
    let got = sysfs.pf("ens1f0").unwrap();
    assert_eq!(got.pci, pci(PF));
    assert_eq!((got.total_vfs, got.num_vfs), (8, 2));
    assert_eq!(got.vfs.len(), 2);
    assert_eq!(got.vfs[1].pci, pci(VFS[1]));
    assert_eq!(got.vfs[1].netdev.as_deref(), Some("ens1f0v1"));

    let vf = sysfs.vf(VFS[1]).unwrap();
    assert_eq!(
        vf.pf,
        Some(VfParent {
            netdev: Some("ens1f0".to_owned()),
            pci: pci(PF),
            index: 1,
        })
    );

    // An absolute link that points at nothing inside the root is a missing
    // device there, even when the machine has such a path.
    fs::create_dir(class.join("eth7")).unwrap();
    symlink("/proc/self", class.join("eth7/device")).unwrap();
    let e = sysfs.pf("eth7").unwrap_err();
    assert!(matches!(e, SysfsError::NotAPf { .. }), "{e}");
}

#[test]
fn host_is_rooted_at_slash() {
    assert_eq!(Sysfs::host().root(), Path::new("/"));
}
