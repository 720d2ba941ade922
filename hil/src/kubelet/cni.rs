//! Calling CNI plugins the way a container runtime does (libcni's
//! semantics): one timed invocation ([`invoke`]), the per-plugin config of
//! a network list ([`plugin_config`]: `name` and `cniVersion` of the list,
//! `prevResult`, `runtimeConfig` for declared capabilities), and ADD / DEL
//! of a whole list ([`add_list`], [`del_list`]).
//!
//! What does not live here: which networks a Pod gets (the kubelet and
//! `multus` modules decide), namespaces, the API. [`invoke`] is reusable
//! on its own (`make bench-cni` times plugins with it).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{Map, Value};

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CniCommand {
    /// `ADD`.
    Add,
    /// `DEL`.
    Del,
    /// `CHECK`.
    Check,
    /// `STATUS`.
    Status,
    /// `GC`.
    Gc,
    /// `VERSION`.
    Version,
}

impl CniCommand {
    /// The value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
            CniCommand::Version => "VERSION",
        }
    }
}

impl std::fmt::Display for CniCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The environment of one plugin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: CniCommand,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the container's namespace.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` (`K=V;K=V`).
    pub args: String,
    /// `CNI_PATH`: where plugins (and IPAM plugins) are found.
    pub path: PathBuf,
    /// More environment variables (e.g. `SPUR_CNI_SOCKET`).
    pub extra: Vec<(String, String)>,
    /// The network namespace the plugin process runs in (`ip netns exec
    /// NAME`); `None`: the caller's.
    pub run_in: Option<String>,
    /// How long the call may take before it is killed.
    pub timeout: Duration,
}

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniCallError {
    /// No executable for the plugin type in the CNI bin dir.
    #[error("CNI plugin type {plugin_type:?}: no executable {}", .path.display())]
    NotFound {
        /// The `type` of the config.
        plugin_type: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A plugin config cannot be used (no `type`, not an object, ...).
    #[error("network {network}: {reason}")]
    Config {
        /// The network (list name or NAD).
        network: String,
        /// What is wrong.
        reason: String,
    },
    /// The process could not be started.
    #[error("CNI plugin {plugin} {command}: cannot be started: {reason}")]
    Spawn {
        /// The plugin's path.
        plugin: String,
        /// The verb.
        command: CniCommand,
        /// The system's answer.
        reason: String,
    },
    /// The plugin answered with an error (or exited non-zero).
    #[error("{0}")]
    Failed(Box<PluginFailure>),
    /// The plugin did not finish in time and was killed.
    #[error("CNI plugin {plugin} {command} did not finish within {after:?} and was killed")]
    Timeout {
        /// The plugin's path.
        plugin: String,
        /// The verb.
        command: CniCommand,
        /// The time limit.
        after: Duration,
    },
    /// The plugin succeeded but printed something that is not JSON.
    #[error(
        "CNI plugin {plugin} {command} succeeded but its output is not JSON ({reason}): {output}"
    )]
    Output {
        /// The plugin's path.
        plugin: String,
        /// The verb.
        command: CniCommand,
        /// The decoder's complaint.
        reason: String,
        /// What it printed (at most 500 characters).
        output: String,
    },
}

/// What a plugin that failed said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI plugin {plugin} {command} failed ({status}{}): {msg}", code_part(.code))]
pub struct PluginFailure {
    /// The plugin's path.
    pub plugin: String,
    /// The verb.
    pub command: CniCommand,
    /// How it exited.
    pub status: String,
    /// The CNI error code, when it printed an error object.
    pub code: Option<i64>,
    /// The error object's `msg` (else its stderr or stdout).
    pub msg: String,
    /// The error object's `details`.
    pub details: String,
    /// Its standard error, trimmed.
    pub stderr: String,
}

fn code_part(code: &Option<i64>) -> String {
    code.map(|c| format!(", code {c}")).unwrap_or_default()
}

impl CniCallError {
    /// The message a runtime reports for this failure: the CNI error's
    /// `msg` when the plugin printed one, else the whole error.
    pub fn msg(&self) -> String {
        match self {
            CniCallError::Failed(f) if !f.msg.is_empty() => f.msg.clone(),
            other => other.to_string(),
        }
    }
}

/// One plugin call as it happened (the harness prints these timings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The verb.
    pub command: CniCommand,
    /// The plugin's `type`.
    pub plugin: String,
    /// The network the call was for (list name, or NAD `ns/name`).
    pub network: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// How long the call took (process start to exit).
    pub elapsed: Duration,
    /// Why it failed (`None`: it succeeded).
    pub error: Option<String>,
}

/// Runs `plugin` with `env` and `config` on stdin, and returns what it
/// printed (`Value::Null` when it printed nothing, as DEL does) and how
/// long it took. A non-zero exit is [`CniCallError::Failed`] with the CNI
/// error object's `code`, `msg` and `details`. The plugin and every process
/// it starts are killed when `env.timeout` passes.
pub fn invoke(
    plugin: &Path,
    env: &CniEnv,
    config: &Value,
) -> Result<(Value, Duration), CniCallError> {
    use std::os::unix::process::CommandExt;
    let shown = plugin.display().to_string();
    let mut cmd = match &env.run_in {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.as_str()]).arg(plugin);
            c
        }
        None => Command::new(plugin),
    };
    cmd.env("CNI_COMMAND", env.command.as_str())
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.args)
        .env("CNI_PATH", &env.path)
        .envs(env.extra.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills its children too.
        .process_group(0);
    let input = config.to_string().into_bytes();
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| CniCallError::Spawn {
        plugin: shown.clone(),
        command: env.command,
        reason: e.to_string(),
    })?;
    let pgid = i32::try_from(child.id()).ok().map(Pid::from_raw);
    // Plugins may exit before reading stdin: a failed write is theirs to
    // report.
    let stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&input);
        }
    });
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let err_reader = std::thread::spawn(move || {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err);
            }
            err
        });
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut out);
        }
        let err = err_reader.join().unwrap_or_default();
        let status = child.wait();
        let _ = tx.send((status, out, err));
    });
    let (status, out, err) = match rx.recv_timeout(env.timeout) {
        Ok(r) => r,
        Err(_) => {
            if let Some(pg) = pgid {
                let _ = killpg(pg, Signal::SIGKILL);
            }
            let _ = rx.recv();
            let _ = writer.join();
            return Err(CniCallError::Timeout {
                plugin: shown,
                command: env.command,
                after: env.timeout,
            });
        }
    };
    let elapsed = start.elapsed();
    let _ = writer.join();
    let status = status.map_err(|e| CniCallError::Spawn {
        plugin: shown.clone(),
        command: env.command,
        reason: format!("waiting for it failed: {e}"),
    })?;
    let stdout = String::from_utf8_lossy(&out);
    let stderr = String::from_utf8_lossy(&err).trim().to_string();
    if !status.success() {
        let parsed: Option<Value> = serde_json::from_str(stdout.trim()).ok();
        let field = |k: &str| {
            parsed
                .as_ref()
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let mut msg = field("msg");
        if msg.is_empty() {
            msg = if !stderr.is_empty() {
                stderr.clone()
            } else {
                stdout.trim().to_string()
            };
        }
        return Err(CniCallError::Failed(Box::new(PluginFailure {
            plugin: shown,
            command: env.command,
            status: match status.code() {
                Some(c) => format!("exit status {c}"),
                None => status.to_string(),
            },
            code: parsed
                .as_ref()
                .and_then(|v| v.get("code"))
                .and_then(Value::as_i64),
            msg,
            details: field("details"),
            stderr,
        })));
    }
    let text = stdout.trim();
    if text.is_empty() {
        return Ok((Value::Null, elapsed));
    }
    let value = serde_json::from_str(text).map_err(|e| CniCallError::Output {
        plugin: shown,
        command: env.command,
        reason: e.to_string(),
        output: text.chars().take(500).collect(),
    })?;
    Ok((value, elapsed))
}

/// A network configuration list (one plugin config is a list of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfList {
    /// `name`.
    pub name: String,
    /// `cniVersion` (empty when the config has none).
    pub cni_version: String,
    /// The plugin configs, in ADD order.
    pub plugins: Vec<Value>,
}

impl NetConfList {
    /// A list from a config as a NetworkAttachmentDefinition holds it: a
    /// list (`plugins`) or a single plugin config (`type`). A missing or
    /// empty `name` becomes `default_name` (as Multus names them after the
    /// NetworkAttachmentDefinition).
    pub fn from_config(config: &Value, default_name: &str) -> Result<NetConfList, String> {
        let Value::Object(obj) = config else {
            return Err("the CNI config is not a JSON object".to_string());
        };
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or(default_name)
            .to_string();
        let cni_version = match obj.get("cniVersion") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("cniVersion = {other} is not a string")),
        };
        let plugins = match (obj.get("plugins"), obj.get("type")) {
            (Some(Value::Array(p)), _) => {
                if p.is_empty() {
                    return Err("\"plugins\" is empty".to_string());
                }
                p.clone()
            }
            (Some(other), _) => return Err(format!("\"plugins\" = {other} is not a list")),
            (None, Some(_)) => vec![config.clone()],
            (None, None) => {
                return Err("the CNI config has neither \"type\" nor \"plugins\"".to_string())
            }
        };
        for (i, p) in plugins.iter().enumerate() {
            plugin_type(p).map_err(|e| format!("plugins[{i}]: {e}"))?;
        }
        Ok(NetConfList {
            name,
            cni_version,
            plugins,
        })
    }

    /// The list as a conflist JSON object.
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": self.plugins,
        })
    }

    /// True when DEL gets the cached result as `prevResult` (CNI 0.4.0
    /// and later, as libcni does).
    pub fn del_gets_prev_result(&self) -> bool {
        version_at_least(&self.cni_version, [0, 4, 0])
    }
}

/// The `type` of a plugin config: a plain file name.
pub fn plugin_type(plugin: &Value) -> Result<&str, String> {
    let t = plugin
        .get("type")
        .and_then(Value::as_str)
        .ok_or("the plugin config has no \"type\" string")?;
    if t.is_empty() || t.contains('/') || t == "." || t == ".." {
        return Err(format!("type = {t:?} is not a plugin file name"));
    }
    Ok(t)
}

/// True when version `v` (`a.b.c`) is at least `min`; unparsable or empty
/// versions are older than everything.
pub fn version_at_least(v: &str, min: [u64; 3]) -> bool {
    let parts: Vec<Option<u64>> = v.split('.').map(|p| p.parse().ok()).collect();
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(Option::is_none) {
        return false;
    }
    let mut n = [0u64; 3];
    for (i, p) in parts.into_iter().enumerate() {
        n[i] = p.unwrap_or(0);
    }
    n >= min
}

/// The config plugin `plugin` of `list` receives on stdin (libcni's
/// buildOneConfig): the list's `name` and `cniVersion`, `prevResult` when
/// given, and `runtimeConfig` with each capability the plugin declares
/// (`"capabilities": {"mac": true}`) and `capability_args` has.
pub fn plugin_config(
    list: &NetConfList,
    plugin: &Value,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Value {
    let mut conf = match plugin {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    conf.insert("name".into(), Value::from(list.name.as_str()));
    if !list.cni_version.is_empty() {
        conf.insert("cniVersion".into(), Value::from(list.cni_version.as_str()));
    }
    if let Some(prev) = prev_result {
        conf.insert("prevResult".into(), prev.clone());
    }
    let mut rc = Map::new();
    if let Some(Value::Object(caps)) = plugin.get("capabilities") {
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(v) = capability_args.get(cap) {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(conf)
}

/// How a list is called for one container interface.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConf {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns_path: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` pairs, in order.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`runtimeConfig` for plugins declaring them).
    pub capability_args: Map<String, Value>,
    /// The CNI bin dir (`CNI_PATH`, and where plugins are found).
    pub bin_dir: PathBuf,
    /// More environment variables.
    pub extra_env: Vec<(String, String)>,
    /// The namespace plugins run in.
    pub run_in: Option<String>,
    /// The time limit of each call.
    pub timeout: Duration,
}

impl RuntimeConf {
    /// `CNI_ARGS` as `K=V;K=V`.
    pub fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    fn env(&self, command: CniCommand) -> CniEnv {
        CniEnv {
            command,
            container_id: self.container_id.clone(),
            netns: self.netns_path.clone(),
            ifname: self.ifname.clone(),
            args: self.cni_args(),
            path: self.bin_dir.clone(),
            extra: self.extra_env.clone(),
            run_in: self.run_in.clone(),
            timeout: self.timeout,
        }
    }
}

fn call(
    list: &NetConfList,
    plugin: &Value,
    rt: &RuntimeConf,
    command: CniCommand,
    prev: Option<&Value>,
    network: &str,
    calls: &mut Vec<CallRecord>,
) -> Result<Value, CniCallError> {
    let kind = plugin_type(plugin).map_err(|reason| CniCallError::Config {
        network: network.to_string(),
        reason,
    })?;
    let path = rt.bin_dir.join(kind);
    let record = |elapsed: Duration, error: Option<String>| CallRecord {
        command,
        plugin: kind.to_string(),
        network: network.to_string(),
        ifname: rt.ifname.clone(),
        elapsed,
        error,
    };
    if !path.is_file() {
        let e = CniCallError::NotFound {
            plugin_type: kind.to_string(),
            path,
        };
        calls.push(record(Duration::ZERO, Some(e.to_string())));
        return Err(e);
    }
    let config = plugin_config(list, plugin, prev, &rt.capability_args);
    let started = Instant::now();
    match invoke(&path, &rt.env(command), &config) {
        Ok((value, elapsed)) => {
            calls.push(record(elapsed, None));
            Ok(value)
        }
        Err(e) => {
            calls.push(record(started.elapsed(), Some(e.to_string())));
            Err(e)
        }
    }
}

/// ADD of every plugin of `list` in order, each getting the previous
/// one's result as `prevResult`; the last result is the list's. Stops at
/// the first failure (libcni's AddNetworkList). Every call is recorded in
/// `calls`.
pub fn add_list(
    list: &NetConfList,
    rt: &RuntimeConf,
    network: &str,
    calls: &mut Vec<CallRecord>,
) -> Result<Value, CniCallError> {
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let result = call(
            list,
            plugin,
            rt,
            CniCommand::Add,
            prev.as_ref(),
            network,
            calls,
        )?;
        prev = Some(result);
    }
    Ok(prev.unwrap_or(Value::Null))
}

/// DEL of every plugin of `list` in reverse order, each getting `cached`
/// (the list's ADD result) as `prevResult` when the list's version has it
/// (libcni's DelNetworkList). Stops at the first failure.
pub fn del_list(
    list: &NetConfList,
    rt: &RuntimeConf,
    cached: Option<&Value>,
    network: &str,
    calls: &mut Vec<CallRecord>,
) -> Result<(), CniCallError> {
    let prev = cached.filter(|_| list.del_gets_prev_result());
    for plugin in list.plugins.iter().rev() {
        call(list, plugin, rt, CniCommand::Del, prev, network, calls)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_from_configs() {
        let single = json!({"cniVersion": "1.0.0", "type": "macvlan", "master": "eth1"});
        let l = NetConfList::from_config(&single, "macvlan-a").unwrap();
        assert_eq!(l.name, "macvlan-a");
        assert_eq!(l.plugins, vec![single]);
        let list = json!({"cniVersion": "0.3.1", "name": "chain", "plugins": [{"type": "bridge"}, {"type": "tuning"}]});
        let l = NetConfList::from_config(&list, "x").unwrap();
        assert_eq!((l.name.as_str(), l.plugins.len()), ("chain", 2));
        assert!(!l.del_gets_prev_result());
        for (bad, want) in [
            (json!([]), "not a JSON object"),
            (json!({"name": "x"}), "neither"),
            (json!({"plugins": []}), "empty"),
            (json!({"plugins": [{"type": "../x"}]}), "plugins[0]"),
            (json!({"type": "x", "cniVersion": 1}), "cniVersion"),
        ] {
            let e = NetConfList::from_config(&bad, "n").unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn versions() {
        assert!(version_at_least("0.4.0", [0, 4, 0]));
        assert!(version_at_least("1.0.0", [0, 4, 0]));
        assert!(version_at_least("1.1", [0, 4, 0]));
        assert!(!version_at_least("0.3.1", [0, 4, 0]));
        assert!(!version_at_least("", [0, 4, 0]));
        assert!(!version_at_least("x.y", [0, 0, 0]));
    }

    #[test]
    fn plugin_configs_follow_libcni() {
        let list = NetConfList {
            name: "k8s-pod-network".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![
                json!({"type": "ptp", "name": "ignored"}),
                json!({"type": "macvlan", "capabilities": {"mac": true, "ips": false}}),
            ],
        };
        let mut caps = Map::new();
        caps.insert("mac".into(), json!("0a:58:00:00:00:01"));
        caps.insert("ips".into(), json!(["10.0.0.5/24"]));
        let first = plugin_config(&list, &list.plugins[0], None, &caps);
        assert_eq!(
            first,
            json!({"type": "ptp", "name": "k8s-pod-network", "cniVersion": "1.0.0"})
        );
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let second = plugin_config(&list, &list.plugins[1], Some(&prev), &caps);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"], json!({"mac": "0a:58:00:00:00:01"}));
        assert_eq!(second["capabilities"], json!({"mac": true, "ips": false}));
    }

    #[test]
    fn invoke_reports_cni_errors_and_results() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake");
        std::fs::write(
            &script,
            "#!/bin/sh\ncat > \"$0.in\"\nif [ \"$CNI_COMMAND\" = ADD ]; then echo '{\"cniVersion\":\"1.0.0\",\"ips\":[]}'; exit 0; fi\n\
             if [ \"$CNI_COMMAND\" = DEL ]; then exit 0; fi\n\
             echo '{\"code\":7,\"msg\":\"bad master eth9\",\"details\":\"more\"}'; echo oops >&2; exit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut env = CniEnv {
            command: CniCommand::Add,
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "net1".into(),
            args: "IgnoreUnknown=1".into(),
            path: dir.path().into(),
            extra: vec![],
            run_in: None,
            timeout: Duration::from_secs(10),
        };
        let (v, _) = invoke(&script, &env, &json!({"type": "fake"})).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        let stdin = std::fs::read_to_string(dir.path().join("fake.in")).unwrap();
        assert_eq!(stdin, r#"{"type":"fake"}"#);
        env.command = CniCommand::Del;
        assert_eq!(invoke(&script, &env, &json!({})).unwrap().0, Value::Null);
        env.command = CniCommand::Check;
        let e = invoke(&script, &env, &json!({})).unwrap_err();
        assert_eq!(e.msg(), "bad master eth9");
        match &e {
            CniCallError::Failed(f) => {
                assert_eq!(f.code, Some(7));
                assert_eq!(f.details, "more");
                assert_eq!(f.stderr, "oops");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("code 7"), "{e}");
    }

    #[test]
    fn invoke_kills_plugins_that_hang() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hang");
        // The child keeps stdout open: the whole group must be killed.
        std::fs::write(&script, "#!/bin/sh\nsleep 30 &\nsleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = CniEnv {
            command: CniCommand::Add,
            container_id: "c".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: String::new(),
            path: dir.path().into(),
            extra: vec![],
            run_in: None,
            timeout: Duration::from_millis(300),
        };
        let start = Instant::now();
        let e = invoke(&script, &env, &json!({})).unwrap_err();
        assert!(matches!(e, CniCallError::Timeout { .. }), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}
