//! Working inside a Pod's network namespace without ever moving one of the
//! agent's own threads: [`open`] checks and opens the namespace file, and
//! [`run_in`] / [`spawn_in`] start a dedicated short-lived thread that enters it with
//! `setns(CLONE_NEWNET)`, runs a closure (which opens its netlink sockets
//! there, so they stay bound to the Pod netns) and reports back through a
//! oneshot channel; the thread then ends. Also the per-interface sysctl
//! writes, which resolve `/proc/sys/net` against the writing thread's
//! netns and so must run on such a thread.
//!
//! What is not here: the netlink requests themselves ([`super::msg`],
//! [`super::sock`]).

use std::fs::File;
use std::future::Future;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};
use tokio::sync::oneshot;

use super::error::{io_errno, NetdevError, Netns};

/// Opens `path` and checks that it is a network namespace (nsfs); a
/// missing path is [`NetdevError::NetnsNotFound`], another file
/// [`NetdevError::NotANetns`].
pub(crate) fn open(path: &Path) -> Result<File, NetdevError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => NetdevError::NetnsNotFound {
            netns: path.to_owned(),
        },
        _ => NetdevError::Netns {
            op: "open",
            netns: path.to_owned(),
            errno: io_errno(&e),
        },
    })?;
    let st = fstatfs(&file).map_err(|errno| NetdevError::Netns {
        op: "open",
        netns: path.to_owned(),
        errno,
    })?;
    if st.filesystem_type() != NSFS_MAGIC {
        return Err(NetdevError::NotANetns {
            netns: path.to_owned(),
        });
    }
    Ok(file)
}

/// Runs `f` on a new thread that has entered the netns open as `ns`
/// (`path` is for errors) and returns its result. The thread ends
/// afterwards; if the caller stops waiting, it still finishes its work.
pub(crate) async fn run_in<T, F>(
    path: &Path,
    ns: File,
    op: &'static str,
    f: F,
) -> Result<T, NetdevError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetdevError> + Send + 'static,
{
    spawn_in(path, ns, op, f)?.await
}

/// Like [`run_in`], but the thread starts now, before the returned future
/// is awaited (so that it can prepare while the caller does something
/// else).
pub(crate) fn spawn_in<T, F>(
    path: &Path,
    ns: File,
    op: &'static str,
    f: F,
) -> Result<impl Future<Output = Result<T, NetdevError>>, NetdevError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetdevError> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let thread_path = path.to_owned();
    std::thread::Builder::new()
        .name("spur-netns".into())
        .spawn(move || {
            let result = match setns(&ns, CloneFlags::CLONE_NEWNET) {
                Ok(()) => {
                    drop(ns);
                    f()
                }
                Err(Errno::EINVAL) => Err(NetdevError::NotANetns { netns: thread_path }),
                Err(errno) => Err(NetdevError::Netns {
                    op: "enter",
                    netns: thread_path,
                    errno,
                }),
            };
            // The receiver may be gone (the caller was cancelled).
            let _ = tx.send(result);
        })
        .map_err(|e| NetdevError::Worker {
            op,
            netns: path.to_owned(),
            detail: format!("cannot spawn: {e}"),
        })?;
    let path = path.to_owned();
    Ok(async move {
        rx.await.map_err(|_| NetdevError::Worker {
            op,
            netns: path,
            detail: "the thread died before answering".into(),
        })?
    })
}

/// An interface sysctl: `/proc/sys/net/{ipv4|ipv6}/conf/IF/KEY`.
pub(crate) fn sysctl_path(family: &str, ifname: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/net/{family}/conf/{ifname}/{key}"))
}

/// Writes `value` to the sysctl file `path`, in the calling thread's
/// netns (`netns` is for errors).
pub(crate) fn write_sysctl(
    netns: &Path,
    path: PathBuf,
    value: &'static str,
) -> Result<(), NetdevError> {
    std::fs::write(&path, value).map_err(|e| NetdevError::Sysctl {
        netns: Netns::pod(netns),
        errno: io_errno(&e),
        path,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("ipv4", "eth1", "arp_notify"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth1/arp_notify")
        );
        assert_eq!(
            sysctl_path("ipv6", "net1.100", "ndisc_notify"),
            PathBuf::from("/proc/sys/net/ipv6/conf/net1.100/ndisc_notify")
        );
    }

    #[test]
    fn open_reports_missing_and_non_namespace_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        assert!(matches!(
            open(&missing),
            Err(NetdevError::NetnsNotFound { netns }) if netns == missing
        ));
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        assert!(matches!(
            open(&plain),
            Err(NetdevError::NotANetns { netns }) if netns == plain
        ));
        // The calling thread's own namespace is one (readable without root).
        assert!(open(Path::new("/proc/thread-self/ns/net")).is_ok());
    }
}
