//! The real `kubectl` against the `spur-kubeapi` binary.
//!
//! Each test starts its own server on a loopback port with a kubeconfig in
//! a temporary directory, runs kubectl commands against it and checks what
//! a person at the terminal would see. When kubectl is not installed the
//! tests say so and pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// kubectl's default `--validate=strict` needs OpenAPI documents that the
/// server does not serve (see `default_validation_works`), so the tests
/// that are about something else turn validation off.
const NO_VALIDATE: &str = "--validate=false";
/// How long one kubectl command may take before the test gives up on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a watch may take to show an expected line.
const WATCH_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Finding kubectl.

/// True when `kubectl` is on PATH; otherwise prints why `test` is skipped.
fn have_kubectl(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| dir.join("kubectl").is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("kubectl not found: skipping {test}; install it with apt-get install kubectl");
    }
    found
}

macro_rules! require_kubectl {
    ($name:literal) => {
        if !have_kubectl($name) {
            return;
        }
    };
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// The IPPool CRD alone.
fn ippool_crd() -> String {
    format!("{}/spur.dev_ippools.yaml", crds_dir())
}

fn crds_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/crds")
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------
// Running processes with a deadline.

/// What a finished command printed.
struct Output {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn describe(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }

    /// The stdout of a command that must have succeeded.
    fn ok(&self) -> &str {
        assert!(self.status.success(), "kubectl failed: {}", self.describe());
        &self.stdout
    }

    /// The stderr of a command that must have failed.
    fn failed(&self) -> &str {
        assert!(
            !self.status.success(),
            "kubectl should have failed: {}",
            self.describe()
        );
        &self.stderr
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` to completion (killing it after [`COMMAND_TIMEOUT`]).
fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    let command = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_string();
        thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command} did not finish within {COMMAND_TIMEOUT:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        command,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A line reader over a child's stdout that can wait with a deadline.
fn line_channel<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

// ---------------------------------------------------------------------------
// The server under test.

/// A running `spur-kubeapi`, killed when dropped.
struct Server {
    child: Child,
    /// Keeps the kubeconfig, cache and log alive while the server runs.
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    url: String,
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_spur-kubeapi"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spur-kubeapi starts");
        let lines = line_channel(child.stdout.take().unwrap());
        let first = match lines.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "spur-kubeapi printed no first line ({e:?}); its stderr:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        let url = first
            .strip_prefix("spur-kubeapi: serving on ")
            .unwrap_or_else(|| panic!("unexpected first line from spur-kubeapi: {first:?}"))
            .trim()
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "url {url}");
        // Keep draining stdout so the server never blocks on a full pipe.
        thread::spawn(move || for _ in lines {});
        let kc = std::fs::read_to_string(&kubeconfig).expect("the server wrote a kubeconfig");
        assert!(kc.contains(&url), "the kubeconfig points at {url}:\n{kc}");
        Server {
            child,
            dir,
            kubeconfig,
            url,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A kubectl command against this server, with its own discovery cache.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .arg("--request-timeout=10s")
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path());
        cmd
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        run(self.command(args), None)
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        run(self.command(args), Some(input))
    }

    /// A kubectl command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl failed: {}\n--- server log ---\n{}",
            out.describe(),
            self.log()
        );
        out.stdout
    }

    /// Starts a long-running kubectl (a watch).
    fn spawn(&self, args: &[&str]) -> Watch {
        let stderr_path = self.dir.path().join(format!("watch-{}.err", next_id()));
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("kubectl starts");
        let lines = line_channel(child.stdout.take().unwrap());
        Watch {
            child,
            lines,
            seen: Vec::new(),
            stderr_path,
            command: args.join(" "),
        }
    }

    /// CRDs, the lab namespace, two pools, a NAD and two Pods.
    fn lab(&self) {
        self.ok(&["apply", NO_VALIDATE, "-f", &ippool_crd()]);
        self.ok(&[
            "apply",
            NO_VALIDATE,
            "-f",
            &fixture("lab.yaml"),
            "-f",
            &fixture("ippools.yaml"),
            "-f",
            &fixture("nad.yaml"),
            "-f",
            &fixture("pods.yaml"),
        ]);
    }

    fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let mut all = args.to_vec();
        let o = format!("jsonpath={path}");
        all.extend(["-o", &o]);
        self.ok(&all)
    }

    fn get_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process-wide counter for unique file names.
fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A running `kubectl get -w`, killed when dropped.
struct Watch {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr_path: PathBuf,
    command: String,
}

impl Watch {
    /// Waits for the next line containing `needle`; returns it.
    fn expect_line(&mut self, needle: &str) -> String {
        self.expect_line_where(needle, |l| l.contains(needle))
    }

    /// Waits for the next line for which `pred` holds (`what` describes it).
    fn expect_line_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let needle = what;
        let deadline = Instant::now() + WATCH_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => format!("nothing within {WATCH_TIMEOUT:?}"),
                        RecvTimeoutError::Disconnected => "kubectl ended".to_string(),
                    };
                    panic!(
                        "`kubectl {}` showed no line matching {needle:?} ({why}); lines so far:\n{}\n--- stderr ---\n{}",
                        self.command,
                        self.seen.join("\n"),
                        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                    );
                }
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Output helpers.

/// The blocks of a `kubectl get` of several resource types.
fn sections(out: &str) -> Vec<Vec<&str>> {
    out.split("\n\n")
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn header_fields(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn names(out: &str) -> Vec<&str> {
    let mut v: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort_unstable();
    v
}

fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn apply_the_crd_directory() {
    require_kubectl!("apply_the_crd_directory");
    let s = Server::start();
    let out = s.ok(&["apply", NO_VALIDATE, "-f", &crds_dir()]);
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/ippools.spur.dev created"),
        "apply names the IPPool CRD:\n{out}"
    );
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/network-attachment-definitions.k8s.cni.cncf.io "),
        "apply names the NAD CRD:\n{out}"
    );
    // Every manifest of the directory became a served CRD, and nothing else.
    let mut want: Vec<String> = std::fs::read_dir(crds_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            format!("customresourcedefinition.apiextensions.k8s.io/{name}")
        })
        .collect();
    want.sort();
    let crds = s.ok(&["get", "crds", "-o", "name"]);
    assert_eq!(names(&crds), want, "{crds}");
    // Both kinds are served and usable afterwards.
    s.ok(&[
        "apply",
        NO_VALIDATE,
        "-f",
        &fixture("lab.yaml"),
        "-f",
        &fixture("ippools.yaml"),
        "-f",
        &fixture("nad.yaml"),
    ]);
    assert_eq!(names(&s.ok(&["get", "ipp", "-o", "name"])).len(), 2);
    assert_eq!(
        names(&s.ok(&["get", "net-attach-def", "-n", "lab", "-o", "name"])).len(),
        1
    );
    // Applying the directory again changes nothing.
    let out = s.ok(&["apply", NO_VALIDATE, "-f", &crds_dir()]);
    assert_eq!(out.matches(" unchanged").count(), want.len(), "{out}");
    assert_eq!(
        names(&s.ok(&["get", "ipp", "-o", "name"])).len(),
        2,
        "pools survive a CRD re-apply"
    );
}

#[test]
fn apply_crds_and_lab_objects_then_get_them() {
    require_kubectl!("apply_crds_and_lab_objects_then_get_them");
    let s = Server::start();
    let out = s.ok(&["apply", NO_VALIDATE, "-f", &ippool_crd()]);
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/ippools.spur.dev created"),
        "apply names the IPPool CRD:\n{out}"
    );
    let out = s.ok(&[
        "apply",
        NO_VALIDATE,
        "-f",
        &fixture("lab.yaml"),
        "-f",
        &fixture("ippools.yaml"),
        "-f",
        &fixture("nad.yaml"),
        "-f",
        &fixture("pods.yaml"),
    ]);
    for expected in [
        "namespace/lab created",
        "ippool.spur.dev/vlan100-ipv4 created",
        "ippool.spur.dev/vlan100-ipv6 created",
        "networkattachmentdefinition.k8s.cni.cncf.io/vlan100 created",
        "pod/web-0 created",
        "pod/web-1 created",
    ] {
        assert!(out.contains(expected), "apply prints {expected:?}:\n{out}");
    }

    // Both kinds in one listing across namespaces.
    let out = s.ok(&["get", "ipp,pods", "-A"]);
    let secs = sections(&out);
    assert_eq!(secs.len(), 2, "two tables (pools, pods):\n{out}");
    let pools = secs
        .iter()
        .find(|s| s[0].contains("TOTAL"))
        .unwrap_or_else(|| panic!("a table with the pool printer columns:\n{out}"));
    let h = header_fields(pools[0]);
    for col in ["NAME", "TOTAL", "USED", "AGE"] {
        assert!(
            h.contains(&col),
            "pool header has {col}: {:?}\n{out}",
            pools[0]
        );
    }
    assert_eq!(pools.len(), 3, "header and two pools:\n{out}");
    assert!(
        pools[1..].iter().any(|l| l.contains("vlan100-ipv4")),
        "{out}"
    );
    assert!(
        pools[1..].iter().any(|l| l.contains("vlan100-ipv6")),
        "{out}"
    );
    let pods = secs
        .iter()
        .find(|s| s[0].contains("STATUS"))
        .unwrap_or_else(|| panic!("a table of pods:\n{out}"));
    let h = header_fields(pods[0]);
    assert_eq!(
        h.first(),
        Some(&"NAMESPACE"),
        "pods table starts with NAMESPACE:\n{out}"
    );
    assert!(h.contains(&"NAME"), "{out}");
    assert_eq!(pods.len(), 3, "header and two pods:\n{out}");
    for name in ["web-0", "web-1"] {
        let row = pods[1..]
            .iter()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("a row for {name}:\n{out}"));
        assert_eq!(
            row.split_whitespace().next(),
            Some("lab"),
            "{name} in lab:\n{out}"
        );
    }

    // Short name alone.
    let out = s.ok(&["get", "ipp"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        header_fields(lines[0]),
        ["NAME", "TOTAL", "USED", "AGE"],
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].starts_with("vlan100-ipv4 ") && lines[2].starts_with("vlan100-ipv6 "),
        "{out}"
    );

    // The printer columns show the status once the controller's part is played.
    let out = s.ok(&[
        "patch",
        "ipp",
        "vlan100-ipv4",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"usage":{"total":82,"used":3}}}"#,
    ]);
    assert!(
        out.contains("ippool.spur.dev/vlan100-ipv4 patched"),
        "{out}"
    );
    let out = s.ok(&["get", "ipp", "vlan100-ipv4"]);
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(..3),
        Some(&["vlan100-ipv4", "82", "3"][..]),
        "{out}"
    );
    let age = row.get(3).copied().unwrap_or_default();
    assert!(
        age.ends_with('s') || age.ends_with('m'),
        "AGE is a duration: {out}"
    );
    let out = s.ok(&["describe", "ipp", "vlan100-ipv4"]);
    for expected in ["Kind:         IPPool", "Prefix Length:  24", "Total:  82"] {
        assert!(
            out.contains(expected),
            "describe shows {expected:?}:\n{out}"
        );
    }

    // The NAD by plural and by short name.
    for what in ["network-attachment-definitions", "net-attach-def"] {
        let out = s.ok(&["get", what, "-n", "lab"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.first().and_then(|l| l.split_whitespace().next()),
            Some("NAME"),
            "{what}:\n{out}"
        );
        assert_eq!(lines.len(), 2, "{what}: header and one NAD:\n{out}");
        assert!(lines[1].starts_with("vlan100 "), "{what}:\n{out}");
    }
    let config = s.jsonpath(
        &["get", "net-attach-def", "vlan100", "-n", "lab"],
        "{.spec.config}",
    );
    let config: Value =
        serde_json::from_str(&config).unwrap_or_else(|e| panic!("config is JSON ({e}): {config}"));
    assert_eq!(config["type"], "spur");
    assert_eq!(config["ipam"]["ippools"][1], "vlan100-ipv6");
}

#[test]
fn reapply_is_idempotent_and_a_changed_pool_is_configured() {
    require_kubectl!("reapply_is_idempotent_and_a_changed_pool_is_configured");
    let s = Server::start();
    s.lab();
    let rv_before = s.jsonpath(
        &["get", "ipp", "vlan100-ipv4"],
        "{.metadata.resourceVersion}",
    );
    let files = ["lab.yaml", "ippools.yaml", "nad.yaml", "pods.yaml"].map(fixture);
    let mut args = vec!["apply", NO_VALIDATE];
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    let out = s.kubectl(&args);
    let stdout = out.ok();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "one line per object:\n{}", out.describe());
    for l in &lines {
        assert!(
            l.ends_with(" unchanged") || l.ends_with(" configured"),
            "re-apply changes nothing: {l:?}\n{}",
            out.describe()
        );
    }
    assert!(
        !out.stderr.contains("rror"),
        "no error on re-apply:\n{}",
        out.describe()
    );
    let crds = s.ok(&["apply", NO_VALIDATE, "-f", &ippool_crd()]);
    assert!(
        !crds.contains("created"),
        "CRDs are not created twice:\n{crds}"
    );

    // An unchanged pool keeps its resourceVersion.
    let rv_after = s.jsonpath(
        &["get", "ipp", "vlan100-ipv4"],
        "{.metadata.resourceVersion}",
    );
    assert!(
        stdout.contains("ippool.spur.dev/vlan100-ipv4 configured") || rv_before == rv_after,
        "an unchanged pool is not rewritten ({rv_before} -> {rv_after}):\n{stdout}"
    );

    // A third range.
    let changed = std::fs::read_to_string(fixture("ippools.yaml"))
        .unwrap()
        .replace(
            "    end: 10.10.1.120\n",
            "    end: 10.10.1.120\n  - start: 10.10.1.200\n    end: 10.10.1.210\n",
        );
    assert!(changed.contains("10.10.1.210"));
    let tmp = tempfile::tempdir().unwrap();
    let path = write_file(tmp.path(), "ippools.yaml", &changed);
    let out = s.ok(&["apply", NO_VALIDATE, "-f", &path]);
    assert!(
        out.contains("ippool.spur.dev/vlan100-ipv4 configured"),
        "{out}"
    );
    assert!(
        out.contains("ippool.spur.dev/vlan100-ipv6 unchanged"),
        "{out}"
    );
    let starts = s.jsonpath(&["get", "ipp", "vlan100-ipv4"], "{.spec.ipRanges[*].start}");
    assert_eq!(
        starts.split_whitespace().collect::<Vec<_>>(),
        ["10.10.1.100", "10.10.1.200"]
    );
    let end = s.jsonpath(&["get", "ipp", "vlan100-ipv4"], "{.spec.ipRanges[2].end}");
    assert_eq!(end, "10.10.1.210");
    let cidr = s.jsonpath(&["get", "ipp", "vlan100-ipv4"], "{.spec.ipRanges[0].cidr}");
    assert_eq!(cidr, "10.10.1.0/26", "the other ranges stay");
    let generation = s.jsonpath(&["get", "ipp", "vlan100-ipv4"], "{.metadata.generation}");
    assert_eq!(generation, "2", "a spec change bumps the generation");

    // Applying the original again takes the range away.
    let out = s.ok(&["apply", NO_VALIDATE, "-f", &fixture("ippools.yaml")]);
    assert!(
        out.contains("ippool.spur.dev/vlan100-ipv4 configured"),
        "{out}"
    );
    let starts = s.jsonpath(&["get", "ipp", "vlan100-ipv4"], "{.spec.ipRanges[*].start}");
    assert_eq!(starts, "10.10.1.100");
}

#[test]
fn get_pod_as_yaml_has_server_fields() {
    require_kubectl!("get_pod_as_yaml_has_server_fields");
    let s = Server::start();
    s.lab();
    let out = s.ok(&["get", "pod", "web-0", "-n", "lab", "-o", "yaml"]);
    let pod: Value =
        serde_yaml::from_str(&out).unwrap_or_else(|e| panic!("not YAML ({e}):\n{out}"));
    assert_eq!(pod["apiVersion"], "v1", "{out}");
    assert_eq!(pod["kind"], "Pod", "{out}");
    let meta = &pod["metadata"];
    assert_eq!(meta["name"], "web-0", "{out}");
    assert_eq!(meta["namespace"], "lab", "{out}");
    assert_eq!(
        meta["annotations"]["k8s.v1.cni.cncf.io/networks"], "vlan100",
        "{out}"
    );
    assert_eq!(meta["labels"]["app"], "web", "{out}");
    let uid = meta["uid"]
        .as_str()
        .unwrap_or_else(|| panic!("metadata.uid:\n{out}"));
    assert_eq!(uid.len(), 36, "a UUID: {uid}");
    assert_eq!(uid.matches('-').count(), 4, "a UUID: {uid}");
    let rv = meta["resourceVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("metadata.resourceVersion is a string:\n{out}"));
    assert!(
        rv.parse::<u64>().is_ok_and(|v| v > 0),
        "resourceVersion {rv}"
    );
    let ts = meta["creationTimestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("metadata.creationTimestamp:\n{out}"));
    assert!(
        ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "RFC 3339 timestamp: {ts}"
    );
    assert_eq!(pod["spec"]["nodeName"], "node-1", "{out}");
    assert_eq!(pod["spec"]["containers"][0]["name"], "app", "{out}");

    // The other Pod has a different identity.
    let other = s.get_json(&["get", "pod", "web-1", "-n", "lab"]);
    assert_ne!(other["metadata"]["uid"], meta["uid"]);
    assert_eq!(
        other["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"],
        r#"[{"name": "vlan100", "interface": "eth1"}]"#
    );

    // A missing Pod is NotFound, the way kubectl prints it.
    let err = s.kubectl(&["get", "pod", "nope", "-n", "lab"]);
    assert!(
        err.failed().contains(r#"pods "nope" not found"#),
        "{}",
        err.describe()
    );
}

#[test]
fn label_and_annotate_then_select() {
    require_kubectl!("label_and_annotate_then_select");
    let s = Server::start();
    s.lab();
    let out = s.ok(&["label", "pod", "web-0", "-n", "lab", "tier=db"]);
    assert!(out.contains("pod/web-0 labeled"), "{out}");
    let out = s.ok(&[
        "annotate",
        "pod",
        "web-0",
        "-n",
        "lab",
        "spur.dev/note=primary",
    ]);
    assert!(out.contains("pod/web-0 annotated"), "{out}");

    let selected = s.ok(&["get", "pods", "-n", "lab", "-l", "tier=db", "-o", "name"]);
    assert_eq!(names(&selected), ["pod/web-0"], "{selected}");
    let all = s.ok(&["get", "pods", "-n", "lab", "-l", "app=web", "-o", "name"]);
    assert_eq!(names(&all), ["pod/web-0", "pod/web-1"], "{all}");
    let not_db = s.ok(&[
        "get",
        "pods",
        "-n",
        "lab",
        "-l",
        "app=web,tier!=db",
        "-o",
        "name",
    ]);
    assert_eq!(names(&not_db), ["pod/web-1"], "{not_db}");
    let note = s.jsonpath(
        &["get", "pod", "web-0", "-n", "lab"],
        r#"{.metadata.annotations.spur\.dev/note}"#,
    );
    assert_eq!(note, "primary");
    let networks = s.jsonpath(
        &["get", "pod", "web-0", "-n", "lab"],
        r#"{.metadata.annotations.k8s\.v1\.cni\.cncf\.io/networks}"#,
    );
    assert_eq!(networks, "vlan100", "annotate keeps the other annotations");
    let app = s.jsonpath(
        &["get", "pod", "web-0", "-n", "lab"],
        "{.metadata.labels.app}",
    );
    assert_eq!(app, "web", "label keeps the other labels");

    // Relabelling without --overwrite is refused; with it, it works.
    let refused = s.kubectl(&["label", "pod", "web-0", "-n", "lab", "tier=cache"]);
    assert!(
        refused.failed().contains("already has a value"),
        "{}",
        refused.describe()
    );
    s.ok(&[
        "label",
        "pod",
        "web-0",
        "-n",
        "lab",
        "tier=cache",
        "--overwrite",
    ]);
    let selected = s.kubectl(&["get", "pods", "-n", "lab", "-l", "tier=db", "-o", "name"]);
    assert_eq!(selected.ok().trim(), "", "{}", selected.describe());

    // Removing the label and the annotation.
    let out = s.ok(&["label", "pod", "web-0", "-n", "lab", "tier-"]);
    assert!(
        out.contains("pod/web-0 unlabeled") || out.contains("pod/web-0 labeled"),
        "{out}"
    );
    let out = s.ok(&["annotate", "pod", "web-0", "-n", "lab", "spur.dev/note-"]);
    assert!(out.contains("pod/web-0 annotated"), "{out}");
    let pod = s.get_json(&["get", "pod", "web-0", "-n", "lab"]);
    assert!(
        pod["metadata"]["labels"].get("tier").is_none(),
        "tier removed: {pod}"
    );
    assert_eq!(pod["metadata"]["labels"]["app"], "web");
    assert!(
        pod["metadata"]["annotations"]
            .get("spur.dev/note")
            .is_none(),
        "annotation removed: {pod}"
    );
    let any_tier = s.kubectl(&["get", "pods", "-n", "lab", "-l", "tier"]);
    assert_eq!(any_tier.ok().trim(), "", "{}", any_tier.describe());
    assert!(
        any_tier
            .stderr
            .contains("No resources found in lab namespace."),
        "{}",
        any_tier.describe()
    );

    // Labels on a cluster-scoped custom resource too.
    s.ok(&["label", "ipp", "vlan100-ipv6", "family=v6"]);
    let v6 = s.ok(&["get", "ipp", "-l", "family=v6", "-o", "name"]);
    assert_eq!(names(&v6), ["ippool.spur.dev/vlan100-ipv6"], "{v6}");
}

#[test]
fn patch_merge_json_and_strategic() {
    require_kubectl!("patch_merge_json_and_strategic");
    let s = Server::start();
    s.lab();

    // Merge patch replaces the list.
    let out = s.ok(&[
        "patch",
        "ipp",
        "vlan100-ipv4",
        "--type=merge",
        "-p",
        r#"{"spec":{"exclude":["10.10.1.8","10.10.1.10..10.10.1.20"]}}"#,
    ]);
    assert!(
        out.contains("ippool.spur.dev/vlan100-ipv4 patched"),
        "{out}"
    );
    let exclude = s.jsonpath(&["get", "ipp", "vlan100-ipv4"], "{.spec.exclude[*]}");
    assert_eq!(exclude, "10.10.1.8 10.10.1.10..10.10.1.20");
    let gw = s.jsonpath(
        &["get", "ipp", "vlan100-ipv4"],
        "{.spec.subnetInfo.gateway}",
    );
    assert_eq!(gw, "10.10.1.1", "a merge patch leaves the rest alone");

    // JSON patch appends and replaces.
    let out = s.ok(&[
        "patch",
        "ipp",
        "vlan100-ipv4",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/exclude/-","value":"10.10.1.32/30"},{"op":"replace","path":"/spec/subnetInfo/vlan","value":200}]"#,
    ]);
    assert!(
        out.contains("ippool.spur.dev/vlan100-ipv4 patched"),
        "{out}"
    );
    let pool = s.get_json(&["get", "ipp", "vlan100-ipv4"]);
    assert_eq!(
        pool["spec"]["exclude"],
        serde_json::json!(["10.10.1.8", "10.10.1.10..10.10.1.20", "10.10.1.32/30"])
    );
    assert_eq!(pool["spec"]["subnetInfo"]["vlan"], 200);

    // A JSON patch whose test fails changes nothing and says so.
    let failed = s.kubectl(&[
        "patch",
        "ipp",
        "vlan100-ipv4",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/subnetInfo/vlan","value":100},{"op":"replace","path":"/spec/subnetInfo/vlan","value":300}]"#,
    ]);
    failed.failed();
    let vlan = s.jsonpath(&["get", "ipp", "vlan100-ipv4"], "{.spec.subnetInfo.vlan}");
    assert_eq!(vlan, "200", "a failed JSON patch changes nothing");

    // Strategic merge patch (kubectl's default for built-in kinds).
    let out = s.ok(&[
        "patch",
        "pod",
        "web-1",
        "-n",
        "lab",
        "-p",
        r#"{"metadata":{"labels":{"a":"b"}}}"#,
    ]);
    assert!(out.contains("pod/web-1 patched"), "{out}");
    let labels = s.get_json(&["get", "pod", "web-1", "-n", "lab"])["metadata"]["labels"].clone();
    assert_eq!(labels, serde_json::json!({"app": "web", "a": "b"}));

    // Strategic merge of a list keyed by name: a container is merged, not replaced.
    s.ok(&[
        "patch",
        "pod",
        "web-1",
        "-n",
        "lab",
        "-p",
        r#"{"spec":{"containers":[{"name":"app","env":[{"name":"MODE","value":"lab"}]}]}}"#,
    ]);
    let pod = s.get_json(&["get", "pod", "web-1", "-n", "lab"]);
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{pod}");
    assert_eq!(
        containers[0]["image"], "registry.k8s.io/pause:3.10",
        "{pod}"
    );
    assert_eq!(containers[0]["env"][0]["value"], "lab", "{pod}");

    // A patch that does nothing is reported as such.
    let out = s.ok(&[
        "patch",
        "pod",
        "web-1",
        "-n",
        "lab",
        "-p",
        r#"{"metadata":{"labels":{"a":"b"}}}"#,
    ]);
    assert!(out.contains("pod/web-1 patched (no change)"), "{out}");
}

#[test]
fn watch_shows_created_and_deleted_pods() {
    require_kubectl!("watch_shows_created_and_deleted_pods");
    let s = Server::start();
    s.lab();
    let mut plain = s.spawn(&["get", "pods", "-n", "lab", "-w"]);
    let header = plain.expect_line("NAME");
    assert!(header.contains("STATUS"), "{header}");
    plain.expect_line("web-0");
    plain.expect_line("web-1");
    let mut events = s.spawn(&["get", "pods", "-n", "lab", "-w", "--output-watch-events"]);
    events.expect_line("web-1");

    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-2","namespace":"lab","labels":{"app":"web"}},"spec":{"nodeName":"node-1","containers":[{"name":"app","image":"registry.k8s.io/pause:3.10"}]}}"#;
    let out = s.kubectl_stdin(&["create", NO_VALIDATE, "-f", "-"], pod);
    assert!(out.ok().contains("pod/web-2 created"), "{}", out.describe());
    let line = plain.expect_line("web-2");
    assert!(line.starts_with("web-2 "), "{line}");
    let line = events.expect_line("web-2");
    assert!(line.starts_with("ADDED "), "{line}");

    let out = s.ok(&[
        "delete",
        "pod",
        "web-1",
        "-n",
        "lab",
        "--grace-period=0",
        "--force",
    ]);
    assert!(out.contains(r#"pod "web-1" force deleted"#), "{out}");
    let line = plain.expect_line("web-1");
    assert!(line.starts_with("web-1 "), "{line}");
    // (A graceful deletion may show a MODIFIED line first; DELETED must follow.)
    events.expect_line_where("DELETED web-1", |l| {
        l.starts_with("DELETED ") && l.split_whitespace().nth(1) == Some("web-1")
    });

    // A label change is a MODIFIED event.
    s.ok(&["label", "pod", "web-0", "-n", "lab", "seen=yes"]);
    events.expect_line_where("MODIFIED web-0", |l| {
        l.starts_with("MODIFIED ") && l.split_whitespace().nth(1) == Some("web-0")
    });

    // Both watches were still running: nothing ended them early.
    for w in [&mut plain, &mut events] {
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "`kubectl {}` ended early: {}",
            w.command,
            std::fs::read_to_string(&w.stderr_path).unwrap_or_default()
        );
    }
}

#[test]
fn delete_pod_pool_and_namespace() {
    require_kubectl!("delete_pod_pool_and_namespace");
    let s = Server::start();
    s.lab();
    // A Pod bound to a node terminates gracefully: it stays, marked, until
    // its kubelet (or a forced delete) removes it, as with a real server.
    let out = s.ok(&["delete", "pod", "web-0", "-n", "lab", "--wait=false"]);
    assert!(out.contains(r#"pod "web-0" deleted"#), "{out}");
    let marked = s.ok(&["get", "pod", "web-0", "-n", "lab", "-o", "json"]);
    assert!(marked.contains("deletionTimestamp"), "{marked}");
    assert!(
        marked.contains(r#""deletionGracePeriodSeconds": 30"#),
        "{marked}"
    );
    let out = s.ok(&[
        "delete",
        "pod",
        "web-0",
        "-n",
        "lab",
        "--grace-period=0",
        "--force",
    ]);
    assert!(out.contains(r#"pod "web-0" force deleted"#), "{out}");
    let pods = s.ok(&["get", "pods", "-n", "lab", "-o", "name"]);
    assert_eq!(names(&pods), ["pod/web-1"], "{pods}");
    let gone = s.kubectl(&["get", "pod", "web-0", "-n", "lab"]);
    assert!(
        gone.failed().contains(r#"pods "web-0" not found"#),
        "{}",
        gone.describe()
    );

    let out = s.ok(&["delete", "ipp", "vlan100-ipv6"]);
    assert!(
        out.contains(r#"ippool.spur.dev "vlan100-ipv6" deleted"#),
        "{out}"
    );
    let pools = s.ok(&["get", "ipp", "-o", "name"]);
    assert_eq!(names(&pools), ["ippool.spur.dev/vlan100-ipv4"], "{pools}");
    let again = s.kubectl(&["delete", "ipp", "vlan100-ipv6"]);
    assert!(again.failed().contains("not found"), "{}", again.describe());
    s.ok(&["delete", "ipp", "vlan100-ipv6", "--ignore-not-found"]);

    // The namespace waits for its bound Pod's graceful termination.
    let out = s.ok(&["delete", "ns", "lab", "--wait=false"]);
    assert!(out.contains(r#"namespace "lab" deleted"#), "{out}");
    let ns = s.ok(&["get", "ns", "lab", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(ns.trim(), "Terminating");
    let out = s.ok(&[
        "delete",
        "pod",
        "web-1",
        "-n",
        "lab",
        "--grace-period=0",
        "--force",
    ]);
    assert!(out.contains(r#"pod "web-1" force deleted"#), "{out}");
    let ns = s.kubectl(&["get", "ns", "lab"]);
    assert!(
        ns.failed().contains(r#"namespaces "lab" not found"#),
        "{}",
        ns.describe()
    );
    let pods = s.kubectl(&["get", "pods", "-n", "lab"]);
    assert_eq!(pods.ok().trim(), "", "{}", pods.describe());
    assert!(
        pods.stderr.contains("No resources found in lab namespace"),
        "{}",
        pods.describe()
    );
    let nads = s.kubectl(&["get", "net-attach-def", "-A", "-o", "name"]);
    assert_eq!(
        nads.ok().trim(),
        "",
        "the NAD went with the namespace: {}",
        nads.describe()
    );
    let all_pods = s.kubectl(&["get", "pods", "-A", "-o", "name"]);
    assert_eq!(all_pods.ok().trim(), "", "{}", all_pods.describe());
    // Cluster-scoped objects stay.
    let pools = s.ok(&["get", "ipp", "-o", "name"]);
    assert_eq!(names(&pools), ["ippool.spur.dev/vlan100-ipv4"], "{pools}");
    let namespaces = s.ok(&["get", "ns", "-o", "name"]);
    assert!(
        namespaces.contains("namespace/default") && !namespaces.contains("namespace/lab"),
        "{namespaces}"
    );

    // The name can be used again.
    s.ok(&["apply", NO_VALIDATE, "-f", &fixture("lab.yaml")]);
    let pods = s.kubectl(&["get", "pods", "-n", "lab", "-o", "name"]);
    assert_eq!(
        pods.ok().trim(),
        "",
        "a new namespace starts empty: {}",
        pods.describe()
    );
}

#[test]
fn state_file_survives_sigkill() {
    require_kubectl!("state_file_survives_sigkill");
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().join("state.json");
    let state_arg = state.display().to_string();
    let uid;
    {
        let s = Server::start_with(&["--state", &state_arg]);
        s.ok(&["apply", NO_VALIDATE, "-f", &ippool_crd()]);
        s.ok(&["apply", NO_VALIDATE, "-f", &fixture("ippools.yaml")]);
        s.ok(&["label", "ipp", "vlan100-ipv4", "kept=yes"]);
        uid = s.jsonpath(&["get", "ipp", "vlan100-ipv4"], "{.metadata.uid}");
        s.ok(&["delete", "ipp", "vlan100-ipv6"]);
        // Drop kills with SIGKILL: no chance to flush anything.
    }
    let s = Server::start_with(&["--state", &state_arg]);
    let out = s.ok(&["get", "ipp", "vlan100-ipv4"]);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("vlan100-ipv4 ")),
        "{out}"
    );
    let pool = s.get_json(&["get", "ipp", "vlan100-ipv4"]);
    assert_eq!(pool["metadata"]["uid"], uid.as_str(), "same object: {pool}");
    assert_eq!(
        pool["metadata"]["labels"]["kept"], "yes",
        "the label survived: {pool}"
    );
    assert_eq!(pool["spec"]["ipRanges"][1]["end"], "10.10.1.120", "{pool}");
    let pools = s.ok(&["get", "ipp", "-o", "name"]);
    assert_eq!(
        names(&pools),
        ["ippool.spur.dev/vlan100-ipv4"],
        "the deletion survived: {pools}"
    );
    // The restarted server keeps taking writes.
    s.ok(&["apply", NO_VALIDATE, "-f", &fixture("ippools.yaml")]);
    let pools = s.ok(&["get", "ipp", "-o", "name"]);
    assert_eq!(names(&pools).len(), 2, "{pools}");
}

#[test]
fn api_resources_and_version() {
    require_kubectl!("api_resources_and_version");
    let s = Server::start();
    s.ok(&["apply", NO_VALIDATE, "-f", &ippool_crd()]);
    let out = s.ok(&["api-resources"]);
    let header = out.lines().next().unwrap_or_default();
    assert_eq!(
        header_fields(header),
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"],
        "{out}"
    );
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("api-resources lists {name}:\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        row("ippools"),
        ["ippools", "ipp", "spur.dev/v1beta1", "false", "IPPool"]
    );
    assert_eq!(
        row("network-attachment-definitions"),
        [
            "network-attachment-definitions",
            "net-attach-def",
            "k8s.cni.cncf.io/v1",
            "true",
            "NetworkAttachmentDefinition"
        ]
    );
    assert_eq!(row("pods"), ["pods", "po", "v1", "true", "Pod"]);
    let spur = s.ok(&["api-resources", "--api-group=spur.dev", "-o", "name"]);
    assert_eq!(names(&spur), ["ippools.spur.dev"], "{spur}");
    let versions = s.ok(&["api-versions"]);
    assert!(
        versions.lines().any(|l| l == "spur.dev/v1beta1"),
        "{versions}"
    );

    let out = s.ok(&["version"]);
    let server_line = out
        .lines()
        .find(|l| l.starts_with("Server Version:"))
        .unwrap_or_else(|| panic!("kubectl version shows the server:\n{out}"));
    assert!(
        server_line.starts_with("Server Version: v1.32"),
        "{server_line}"
    );
    let v = s.get_json(&["version"]);
    assert_eq!(v["serverVersion"]["major"], "1", "{v}");
    assert_eq!(v["serverVersion"]["minor"], "32", "{v}");
    assert!(s.url.starts_with("http://127.0.0.1:"));
}

/// A refused object tells the user why: the Status of a 422 carries the
/// kind and `details.causes`, which kubectl prints as `* field: message`.
#[test]
fn invalid_objects_are_explained() {
    require_kubectl!("invalid_objects_are_explained");
    let s = Server::start();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n";
    let out = s.kubectl_stdin(&["create", NO_VALIDATE, "-f", "-"], cm);
    let err = out.failed();
    assert!(
        err.contains(r#"The ConfigMap "Bad_Name" is invalid"#),
        "{}",
        out.describe()
    );
    assert!(
        err.contains("metadata.name"),
        "the field is named: {}",
        out.describe()
    );
}
