//! Helpers shared by the tests that run against the real kernel
//! (`netdev.rs`, `sriov_netlink.rs`): whether they can run here, unique
//! names, `ip` invocations, throwaway network namespaces deleted on drop,
//! and running code on a thread inside a namespace.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{setns, CloneFlags};
use serde_json::Value;

/// Why these tests cannot run here, if they cannot: not root, or one of
/// `tools` (each with the argument that prints its version) missing.
pub fn unavailable(tools: &[(&str, &str)]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for (tool, version) in tools {
        let found = Command::new(tool)
            .arg(version)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Returns from the test with a message when `kernel::unavailable(tools)`
/// says it cannot run here.
#[macro_export]
macro_rules! require_env {
    ($tools:expr) => {
        if let Some(why) = kernel::unavailable($tools) {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique in this process run (`prefix` + pid + counter),
/// within the 15 characters of an interface name.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "{name}");
    name
}

/// Runs a command, which must succeed; its standard output.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A network namespace made with `ip netns add` (name `prefix` + unique
/// suffix), deleted on drop.
pub struct TestNs {
    /// Its name under /var/run/netns.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
}

impl TestNs {
    /// A fresh namespace.
    pub fn new(prefix: &str) -> TestNs {
        let name = unique(prefix);
        run(&["ip", "netns", "add", &name]);
        let path = PathBuf::from(format!("/var/run/netns/{name}"));
        assert!(
            path.exists(),
            "{} missing after ip netns add",
            path.display()
        );
        TestNs { name, path }
    }

    /// `ip -n NS ARGS...`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// `ip -n NS -j ARGS...` as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["ip", "-n", &self.name, "-j"];
        all.extend_from_slice(args);
        let out = run(&all);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap()
    }

    /// Names of the links in the netns.
    pub fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `ip netns exec NS ARGS...`.
    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    /// Deletes it now (also done on drop).
    pub fn delete(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Runs `f` on a thread that entered the netns at `path` (with the
/// calling runtime's context, so sockets register with it).
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let rt = tokio::runtime::Handle::current();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _enter = rt.enter();
        setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}
