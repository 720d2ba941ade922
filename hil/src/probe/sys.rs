//! The thin I/O under the probes and the kubelet stand-in: running a
//! host tool (optionally inside a network namespace) and running Rust code
//! on a thread that entered a network namespace.
//!
//! What does not live here: deciding anything from what the tools print
//! (see `parse`), and the CNI plugin invocation (the kubelet's `cni`
//! module, which needs stdin, timeouts and timings).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sched::{setns, CloneFlags};

use super::ProbeError;

/// Where `ip netns add NAME` puts the namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Runs `program args...` (inside `netns` with `ip netns exec` when
/// given) and returns its standard output; a non-zero exit is
/// [`ProbeError::Command`] carrying `what` (what the probe was doing) and
/// the trimmed stderr.
pub fn run(
    program: &str,
    args: &[&str],
    netns: Option<&str>,
    what: &str,
) -> Result<String, ProbeError> {
    let mut argv: Vec<&str> = Vec::with_capacity(args.len() + 5);
    if let Some(ns) = netns {
        argv.extend(["ip", "netns", "exec", ns]);
    }
    argv.push(program);
    argv.extend_from_slice(args);
    let command = argv.join(" ");
    tracing::trace!(%command, "running");
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ProbeError::Command {
            what: what.to_string(),
            command: command.clone(),
            outcome: format!("could not be started: {e}"),
            stderr: String::new(),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(ProbeError::Command {
        what: what.to_string(),
        command,
        outcome: match out.status.code() {
            Some(c) => format!("exited with status {c}"),
            None => format!("was killed ({})", out.status),
        },
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Moves the calling thread into network namespace `netns` (by name).
/// Only this thread moves; sockets it opens afterwards belong to that
/// namespace for their whole life, whichever thread uses them.
pub fn enter_netns(netns: &str) -> Result<(), ProbeError> {
    let path = netns_path(netns);
    let file = File::open(&path).map_err(|e| ProbeError::Netns {
        netns: netns.to_string(),
        op: format!("open {}", path.display()),
        reason: e.to_string(),
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| ProbeError::Netns {
        netns: netns.to_string(),
        op: "enter it (setns)".to_string(),
        reason: e.to_string(),
    })
}

/// Runs `f` on a fresh thread inside network namespace `netns` and
/// returns its value (sockets it returns stay in that namespace).
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T, ProbeError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ProbeError> + Send + 'static,
{
    let ns = netns.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            enter_netns(&ns)?;
            f()
        })
        .map_err(|e| ProbeError::Netns {
            netns: netns.to_string(),
            op: "start a thread for it".to_string(),
            reason: e.to_string(),
        })?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
