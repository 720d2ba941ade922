//! Running the host's tools (`ip`, `ovs-vsctl`, `ovsdb-tool`, `ethtool`):
//! one command at a time, optionally inside a network namespace, with a
//! failure that names the command line, its exit status, its stderr and
//! what the lab was doing.
//!
//! What does not live here: long-running processes (daemons and agents are
//! spawned by [`crate::lab`], which keeps their handles for cleanup) and
//! anything on a hot path (the kubelet stand-in and probes call plugins
//! their own way).

use std::ffi::OsString;
use std::process::{Command, Stdio};

/// A command that failed, or could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{doing}: `{command}` {outcome}{}", stderr_part(.stderr))]
pub struct CmdError {
    /// What the lab was doing, e.g. "creating the fabric bridge fab0 of segment tor-1".
    pub doing: String,
    /// The command line as run.
    pub command: String,
    /// How it ended: "exited with status 1", "could not be started: ...".
    pub outcome: String,
    /// Its standard error, trimmed (empty when it said nothing).
    pub stderr: String,
}

fn stderr_part(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Directories searched for tools besides `$PATH`: root's usual ones,
/// which a non-login shell's `$PATH` may lack (Open vSwitch's daemons live
/// in `/usr/sbin`).
const SYSTEM_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// `$PATH` with [`SYSTEM_DIRS`] appended where missing: the search path of
/// every command the lab runs.
pub fn search_path() -> String {
    let current = std::env::var("PATH").unwrap_or_default();
    let mut dirs: Vec<&str> = current.split(':').filter(|d| !d.is_empty()).collect();
    for d in SYSTEM_DIRS {
        if !dirs.contains(d) {
            dirs.push(d);
        }
    }
    dirs.join(":")
}

/// The full path of `tool` on [`search_path`], if it is there.
pub fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    if tool.contains('/') {
        let p = std::path::PathBuf::from(tool);
        return p.is_file().then_some(p);
    }
    search_path()
        .split(':')
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// A command line to run to completion.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: String,
    args: Vec<String>,
    netns: Option<String>,
    env: Vec<(String, String)>,
    doing: String,
}

impl Cmd {
    /// `program` with no arguments; `doing` says what the lab was doing
    /// (it starts every error message).
    pub fn new(program: &str, doing: impl Into<String>) -> Cmd {
        Cmd {
            program: program.to_string(),
            args: Vec::new(),
            netns: None,
            env: Vec::new(),
            doing: doing.into(),
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// Runs the command inside the network namespace `netns`
    /// (`ip netns exec NETNS ...`).
    pub fn netns(mut self, netns: &str) -> Cmd {
        self.netns = Some(netns.to_string());
        self
    }

    /// Sets an environment variable of the command.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Cmd {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// The full argument vector, `ip netns exec NETNS` included.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.args.len() + 5);
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns.as_str()].map(String::from));
        }
        argv.push(self.program.clone());
        argv.extend(self.args.iter().cloned());
        argv
    }

    /// The command line as shown in messages (arguments with spaces quoted).
    pub fn display(&self) -> String {
        let env = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>();
        let argv = self.argv();
        env.iter()
            .chain(argv.iter())
            .map(|a| {
                if a.is_empty() || a.contains(char::is_whitespace) {
                    format!("'{a}'")
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The process to spawn (stdin closed); used by [`Cmd::run`] and by
    /// callers that need a long-running child.
    pub fn command(&self) -> Command {
        let argv = self.argv();
        let mut c = Command::new(&argv[0]);
        c.args(argv[1..].iter().map(OsString::from));
        c.env("PATH", search_path());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs the command to completion and returns its standard output;
    /// a non-zero exit is an error carrying its stderr.
    pub fn run(&self) -> Result<String, CmdError> {
        tracing::debug!(command = %self.display(), "running");
        let out = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| self.error(format!("could not be started: {e}"), String::new()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let outcome = match out.status.code() {
                Some(code) => format!("exited with status {code}"),
                None => format!("was killed ({})", out.status),
            };
            Err(self.error(outcome, stderr))
        }
    }

    fn error(&self, outcome: String, stderr: String) -> CmdError {
        CmdError {
            doing: self.doing.clone(),
            command: self.display(),
            outcome,
            stderr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_wraps_netns_exec() {
        let c = Cmd::new("ovs-vsctl", "x").args(["show"]).netns("lab-n-a");
        assert_eq!(
            c.argv(),
            ["ip", "netns", "exec", "lab-n-a", "ovs-vsctl", "show"]
        );
        let c = Cmd::new("ip", "x").args(["link", "show"]).env("A", "b c");
        assert_eq!(c.display(), "'A=b c' ip link show");
    }

    #[test]
    fn failures_name_the_command_and_stderr() {
        let e = Cmd::new("sh", "testing failures")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err();
        assert_eq!(e.outcome, "exited with status 3");
        assert_eq!(e.stderr, "oops");
        let text = e.to_string();
        assert!(
            text.starts_with("testing failures: `sh -c 'echo oops >&2; exit 3'` exited"),
            "{text}"
        );
        assert!(text.ends_with(": oops"), "{text}");
        let e = Cmd::new("/nonexistent/tool", "starting nothing")
            .run()
            .unwrap_err();
        assert!(e.outcome.starts_with("could not be started"), "{e}");
        assert_eq!(
            Cmd::new("sh", "echo")
                .args(["-c", "echo hi"])
                .run()
                .unwrap(),
            "hi\n"
        );
        assert!(search_path().split(':').any(|d| d == "/usr/sbin"));
        assert!(find_tool("sh").is_some());
        assert!(find_tool("no-such-tool-anywhere").is_none());
    }
}
