//! The emulated NIC's PF driver (`sriov::emulated::EmulatedPf`) against a
//! real ovsdb-server: a VF's settings kept on its representor port, read
//! back, restored, and reached through `RtNetlinkVfs::with_pf_driver`.
//! Skipped (saying so) without ovsdb-server, ovs-vsctl or the schema.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spur_core::names::Mac;
use spur_node::netdev::NetdevError;
use spur_node::ovsdb::{Client, ClientConfig};
use spur_node::sriov::emulated::{EmulatedPf, MAC_KEY, SPOOFCHK_KEY};
use spur_node::sriov::netlink::{PfDriver, RtNetlinkVfs};
use spur_node::sriov::vf::{PfVfSettings, VfLinks};

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// An ovsdb-server on a fresh database in a temp dir, killed on drop.
struct Server {
    dir: tempfile::TempDir,
    child: Child,
}

impl Server {
    fn start() -> Option<Server> {
        let (Some(bin), Some(tool), Some(_)) = (
            find_binary("ovsdb-server"),
            find_binary("ovsdb-tool"),
            find_binary("ovs-vsctl"),
        ) else {
            eprintln!("SKIPPED: ovsdb-server, ovsdb-tool or ovs-vsctl not installed");
            return None;
        };
        if !Path::new(SCHEMA).is_file() {
            eprintln!("SKIPPED: {SCHEMA} not found");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("spur-emu")
            .tempdir()
            .unwrap();
        let db = dir.path().join("conf.db");
        assert!(Command::new(tool)
            .arg("create")
            .arg(&db)
            .arg(SCHEMA)
            .status()
            .unwrap()
            .success());
        let child = Command::new(bin)
            .arg(format!(
                "--remote=punix:{}",
                dir.path().join("db.sock").display()
            ))
            .arg(format!("--unixctl={}", dir.path().join("ctl").display()))
            .arg(&db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server { dir, child };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::os::unix::net::UnixStream::connect(server.socket()).is_err() {
            assert!(Instant::now() < deadline, "ovsdb-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        server.vsctl(&["init"]);
        Some(server)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("db.sock")
    }

    fn vsctl(&self, args: &[&str]) -> String {
        let out = Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", self.socket().display()))
            .arg("--no-wait")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ovs-vsctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    async fn client(&self) -> Client {
        Client::connect(ClientConfig::new(self.socket()))
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bridge `ens1f0` with representors `ens1f0r0`, `ens1f0r1` as the harness
/// wires them (access ports, untagged).
fn wire(server: &Server) {
    server.vsctl(&["add-br", "ens1f0"]);
    for k in 0..2 {
        let port = format!("ens1f0r{k}");
        server.vsctl(&["add-port", "ens1f0", &port, "vlan_mode=access"]);
    }
}

#[tokio::test]
async fn settings_live_on_the_representor_and_are_restored() {
    let Some(server) = Server::start() else {
        return;
    };
    wire(&server);
    let pf = EmulatedPf::new(server.client().await);

    let fresh = pf.get("ens1f0", 1).await.unwrap();
    assert_eq!(
        fresh,
        PfVfSettings {
            mac: None,
            vlan: 0,
            qos: 0,
            spoofchk: Some(true),
            trust: Some(false)
        }
    );

    let mac = Mac([0x02, 0xaa, 0, 0, 0, 1]);
    let set = PfVfSettings {
        mac: Some(mac),
        vlan: 200,
        qos: 3,
        spoofchk: Some(false),
        trust: Some(true),
    };
    pf.set("ens1f0", 1, &set).await.unwrap();
    assert_eq!(server.vsctl(&["get", "port", "ens1f0r1", "tag"]), "200");
    assert_eq!(
        server.vsctl(&["get", "port", "ens1f0r1", "vlan_mode"]),
        "access"
    );
    assert_eq!(
        server.vsctl(&[
            "get",
            "port",
            "ens1f0r1",
            &format!("external_ids:\"{MAC_KEY}\"")
        ]),
        format!("\"{mac}\"")
    );
    assert_eq!(
        server.vsctl(&[
            "get",
            "port",
            "ens1f0r1",
            &format!("external_ids:\"{SPOOFCHK_KEY}\"")
        ]),
        "\"false\""
    );
    assert_eq!(pf.get("ens1f0", 1).await.unwrap(), set);
    // The other VF is untouched.
    assert_eq!(pf.get("ens1f0", 0).await.unwrap(), fresh);

    // Restoring what was read first: untagged again.
    pf.set("ens1f0", 1, &fresh).await.unwrap();
    assert_eq!(server.vsctl(&["get", "port", "ens1f0r1", "tag"]), "[]");
    let back = pf.get("ens1f0", 1).await.unwrap();
    assert_eq!(
        (back.vlan, back.spoofchk, back.trust),
        (0, Some(true), Some(false))
    );
}

#[tokio::test]
async fn missing_bridges_and_representors_are_named() {
    let Some(server) = Server::start() else {
        return;
    };
    wire(&server);
    // A port of that name on another bridge is not the representor.
    server.vsctl(&["add-br", "other"]);
    server.vsctl(&["add-port", "other", "ens1f1r0"]);
    let pf = EmulatedPf::new(server.client().await);

    let e = pf.get("ens1f1", 0).await.unwrap_err().to_string();
    assert!(e.contains("ens1f1") && e.contains("no OVS bridge"), "{e}");
    let e = pf.get("ens1f0", 7).await.unwrap_err().to_string();
    assert!(e.contains("VF 7") && e.contains("ens1f0r7"), "{e}");
    server.vsctl(&["add-br", "ens1f1"]);
    let e = pf
        .set("ens1f1", 0, &PfVfSettings::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ens1f1r0"), "{e}");
    let e = pf
        .set(
            "ens1f0",
            0,
            &PfVfSettings {
                vlan: 4095,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, NetdevError::InvalidSpec { .. }), "{e:?}");
}

#[tokio::test]
async fn rt_netlink_vfs_reaches_the_pf_through_the_emulated_driver() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: not root (rtnetlink)");
        return;
    }
    let Some(server) = Server::start() else {
        return;
    };
    wire(&server);
    let driver = Arc::new(EmulatedPf::new(server.client().await));
    let vfs = RtNetlinkVfs::new().await.unwrap().with_pf_driver(driver);
    let set = PfVfSettings {
        vlan: 100,
        ..Default::default()
    };
    vfs.set_pf_settings("ens1f0", 0, &set).await.unwrap();
    assert_eq!(server.vsctl(&["get", "port", "ens1f0r0", "tag"]), "100");
    assert_eq!(vfs.pf_settings("ens1f0", 0).await.unwrap().vlan, 100);
}
