//! Loading a testbed directory: the three parts, then every reference
//! between them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use spur_core::config::{
    AgentConfig, ControllerConfig, AGENT_CONF_KEY, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE,
    CONTROLLER_CONF_KEY,
};
use spur_core::{Kind, Subject};

use crate::error::{Document, LoadError, LoadErrors};
use crate::expect::Expect;
use crate::manifest::{parse_manifests_partial, Manifest};
use crate::refs::PodRef;
use crate::spec::{list_or_none, TestbedSpec};

/// The file of the nodes and fabric.
pub const TESTBED_FILE: &str = "testbed.yaml";
/// The directory of the manifests.
pub const MANIFESTS_DIR: &str = "manifests";
/// The (optional) file of the expectations.
pub const EXPECT_FILE: &str = "expect.yaml";

/// A loaded and checked testbed directory.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// The directory, as given.
    pub dir: PathBuf,
    /// The testbed's name: the directory's last component.
    pub name: String,
    /// `testbed.yaml`.
    pub spec: TestbedSpec,
    /// The objects of `manifests/*.yaml`, in apply order (file name, then
    /// document).
    pub manifests: Vec<Manifest>,
    /// `expect.yaml` (empty when the file does not exist).
    pub expect: Expect,
    /// Spur's configuration from the ConfigMap `kube-system/spur-config`.
    pub config: SpurConfig,
}

/// The parsed keys of the ConfigMap `kube-system/spur-config`. When the
/// manifests apply it several times the last one counts, as it would in
/// a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpurConfig {
    /// `spur-agent.conf`, when the ConfigMap has it.
    pub agent: Option<AgentConfig>,
    /// `spur-controller.conf`, when the ConfigMap has it.
    pub controller: Option<ControllerConfig>,
}

impl Testbed {
    /// Loads `dir` and checks it: `testbed.yaml` (required),
    /// `manifests/*.yaml` (the directory is required; every other entry in
    /// it except hidden files is refused rather than silently skipped),
    /// `expect.yaml` (optional). Every problem found is returned, each
    /// naming its file and key.
    ///
    /// Besides what [`TestbedSpec::parse`], [`crate::parse_manifests`] and
    /// [`Expect::parse`] check alone, this checks across files:
    ///
    /// - a Pod's (or Pod template's) `spec.nodeName` and a `Node`
    ///   manifest name nodes of `testbed.yaml`; a Pod without `nodeName`
    ///   is left for the runner to place;
    /// - the ConfigMap `kube-system/spur-config` has only the keys
    ///   `spur-agent.conf` and `spur-controller.conf` under `data`, both
    ///   valid, and every uplink (`physicalInterfaces`) of the agent
    ///   configuration is a NIC (or SR-IOV PF) of at least one node. A
    ///   node lacking an uplink that another node has is allowed: the
    ///   agent there runs the bridge without it, as on a real cluster
    ///   whose nodes differ;
    /// - `expect.yaml` names only Pods a Pod manifest or a StatefulSet
    ///   replica defines, only pools an `IPPool` manifest defines, and
    ///   only rejected objects the manifests hold (checked only when every
    ///   manifest could be read, so that a broken manifest does not also
    ///   show up as missing Pods).
    pub fn load(dir: impl AsRef<Path>) -> Result<Testbed, LoadErrors> {
        let dir = dir.as_ref();
        let mut errors = Vec::new();

        let spec_file = dir.join(TESTBED_FILE);
        let spec = match fs::read_to_string(&spec_file) {
            Ok(text) => TestbedSpec::parse(&spec_file, &text)
                .map_err(|e| errors.extend(e))
                .ok(),
            Err(e) => {
                errors.push(LoadError::io(&spec_file, e));
                None
            }
        };

        let before = errors.len();
        let manifests = match manifest_files(&dir.join(MANIFESTS_DIR)) {
            Ok(files) => {
                let mut all = Vec::new();
                for file in files {
                    match fs::read_to_string(&file) {
                        Ok(text) => {
                            let (ms, e) = parse_manifests_partial(&file, &text);
                            all.extend(ms);
                            errors.extend(e);
                        }
                        Err(e) => errors.push(LoadError::io(&file, e)),
                    }
                }
                all
            }
            Err(e) => {
                errors.extend(e);
                Vec::new()
            }
        };
        // When some documents could not be read, what expect.yaml names may
        // be among them: its references are checked once the manifests are
        // fixed, rather than reported as missing now.
        let manifests_complete = errors.len() == before;

        let expect_file = dir.join(EXPECT_FILE);
        let expect = match fs::read_to_string(&expect_file) {
            Ok(text) => match Expect::parse(&expect_file, &text) {
                Ok(e) => e,
                Err(e) => {
                    errors.extend(e);
                    Expect::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Expect::default(),
            Err(e) => {
                errors.push(LoadError::io(&expect_file, e));
                Expect::default()
            }
        };

        let Some(spec) = spec else {
            return Err(LoadErrors(errors));
        };
        let config = check_manifests(&spec, &manifests, &mut errors);
        if manifests_complete {
            check_expect(&expect_file, &expect, &manifests, &mut errors);
        }
        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }
        Ok(Testbed {
            dir: dir.to_path_buf(),
            name: testbed_name(dir),
            spec,
            manifests,
            expect,
            config,
        })
    }

    /// Every Pod the manifests define by name (Pods and StatefulSet
    /// replicas).
    pub fn pods(&self) -> BTreeSet<PodRef> {
        self.manifests
            .iter()
            .flat_map(Manifest::defined_pods)
            .collect()
    }

    /// The manifests of one kind, in apply order.
    pub fn manifests_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Manifest> + 'a {
        self.manifests.iter().filter(move |m| m.kind() == kind)
    }
}

fn testbed_name(dir: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(dir)
        .or_else(|| dir.canonicalize().ok().as_deref().and_then(named))
        .unwrap_or_else(|| dir.display().to_string())
}

/// The `*.yaml` files of `dir`, sorted by file name.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, Vec<LoadError>> {
    let entries = fs::read_dir(dir).map_err(|e| vec![LoadError::io(dir, e)])?;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                errors.push(LoadError::io(dir, e));
                continue;
            }
        };
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            errors.push(not_read(&path, "its name is not UTF-8"));
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            errors.push(not_read(
                &path,
                "it is a directory, and only manifests/*.yaml files are read",
            ));
        } else if !name.ends_with(".yaml") {
            errors.push(not_read(
                &path,
                "only manifests/*.yaml files are read; rename it to .yaml or move it out",
            ));
        } else {
            files.push((name, path));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

fn not_read(path: &Path, why: &str) -> LoadError {
    LoadError::wrap(
        path,
        None,
        Subject::named("").error(Kind::Unsupported, "", None, format!("is not read: {why}")),
    )
}

/// Checks the manifests against `testbed.yaml` and parses Spur's
/// configuration.
fn check_manifests(
    spec: &TestbedSpec,
    manifests: &[Manifest],
    errors: &mut Vec<LoadError>,
) -> SpurConfig {
    let node_names: Vec<String> = spec.nodes.iter().map(|n| n.name.clone()).collect();
    let mut config = SpurConfig::default();
    let mut config_doc: Option<&Manifest> = None;
    for m in manifests {
        if let Some((key, node)) = m.node_name() {
            if spec.node(node).is_none() {
                errors.push(LoadError::invalid(
                    &m.file,
                    Some(&m.doc()),
                    key,
                    &node,
                    format!(
                        "is not a node of testbed.yaml (nodes: {})",
                        list_or_none(&node_names)
                    ),
                ));
            }
        }
        if m.is_builtin("Node") && spec.node(m.name()).is_none() {
            errors.push(LoadError::invalid(
                &m.file,
                Some(&m.doc()),
                "metadata.name",
                &m.name(),
                format!(
                    "Node objects are implied by testbed.yaml, and it has no such node (nodes: {})",
                    list_or_none(&node_names)
                ),
            ));
        }
        if m.is_builtin("ConfigMap")
            && m.namespace() == Some(CONFIGMAP_NAMESPACE)
            && m.name() == CONFIGMAP_NAME
        {
            if let Some(c) = parse_config(m, errors) {
                config = c;
                config_doc = Some(m);
            }
        }
    }
    if let (Some(agent), Some(m)) = (&config.agent, config_doc) {
        for (i, bridge) in agent.secondary_network.ovs_bridges.iter().enumerate() {
            for (j, uplink) in bridge.physical_interfaces.iter().enumerate() {
                if !spec.nodes.iter().any(|n| n.has_port(uplink)) {
                    errors.push(LoadError::invalid(
                        &m.file,
                        Some(&config_section(m, AGENT_CONF_KEY)),
                        format!("secondaryNetwork.ovsBridges[{i}].physicalInterfaces[{j}]"),
                        uplink,
                        format!(
                            "no node of testbed.yaml has a NIC named `{uplink}` \
                             (each uplink must exist on at least one node)"
                        ),
                    ));
                }
            }
        }
    }
    config
}

fn config_section(m: &Manifest, key: &str) -> Document {
    Document {
        index: m.document,
        object: Some(format!("{}, data.{key}", m.describe())),
    }
}

/// Parses the keys of the ConfigMap `kube-system/spur-config`; `None`
/// (with errors pushed) when something is refused.
fn parse_config(m: &Manifest, errors: &mut Vec<LoadError>) -> Option<SpurConfig> {
    let before = errors.len();
    let doc = m.doc();
    if let Some(bin) = m.object.get("binaryData").and_then(Value::as_object) {
        for key in bin.keys() {
            errors.push(LoadError::wrap(
                &m.file,
                Some(&doc),
                Subject::named("").error(
                    Kind::Unsupported,
                    format!("binaryData.{key}"),
                    None,
                    "spur-config holds text only: put spur-agent.conf and spur-controller.conf under data",
                ),
            ));
        }
    }
    let data = match m.object.get("data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(d)) => Some(d),
        Some(_) => {
            errors.push(LoadError::in_document(
                &m.file,
                &doc,
                Kind::Decode,
                "data",
                "must be a mapping of key to text",
            ));
            None
        }
    };
    let mut config = SpurConfig::default();
    for (key, value) in data.into_iter().flatten() {
        let Some(text) = value.as_str() else {
            errors.push(LoadError::in_document(
                &m.file,
                &doc,
                Kind::Decode,
                format!("data.{key}"),
                "must be text (a YAML string, e.g. a `|` block)",
            ));
            continue;
        };
        let section = config_section(m, key);
        match key.as_str() {
            AGENT_CONF_KEY => match AgentConfig::from_yaml(text) {
                Ok(c) => config.agent = Some(c),
                Err(e) => errors.push(LoadError::wrap(&m.file, Some(&section), in_conf(e, key))),
            },
            CONTROLLER_CONF_KEY => match ControllerConfig::from_yaml(text) {
                Ok(c) => config.controller = Some(c),
                Err(e) => errors.push(LoadError::wrap(&m.file, Some(&section), in_conf(e, key))),
            },
            _ => errors.push(LoadError::wrap(
                &m.file,
                Some(&doc),
                Subject::named("").error(
                    Kind::Unsupported,
                    format!("data.{key}"),
                    None,
                    format!(
                        "is not a known key; spur-config holds only `{AGENT_CONF_KEY}` and \
                         `{CONTROLLER_CONF_KEY}`"
                    ),
                ),
            )),
        }
    }
    (errors.len() == before).then_some(config)
}

/// Makes the line numbers of a configuration file's error say they count
/// within the text of the ConfigMap key, not within the manifest file.
fn in_conf(mut e: spur_core::Invalid, conf: &str) -> spur_core::Invalid {
    if let Some(i) = e.reason.rfind("(at line ") {
        if let Some(end) = e.reason[i..].find(')') {
            e.reason.insert_str(i + end, &format!(" of {conf}"));
        }
    }
    e
}

/// Checks that `expect.yaml` names only what the manifests define.
fn check_expect(file: &Path, expect: &Expect, manifests: &[Manifest], errors: &mut Vec<LoadError>) {
    let pods: BTreeSet<PodRef> = manifests.iter().flat_map(Manifest::defined_pods).collect();
    let pools: BTreeSet<&str> = manifests
        .iter()
        .filter(|m| m.is_ippool())
        .map(Manifest::name)
        .collect();
    let unknown_pod = |pod: &PodRef| {
        let same_name: Vec<String> = pods
            .iter()
            .filter(|p| p.name == pod.name)
            .map(ToString::to_string)
            .collect();
        let hint = if same_name.is_empty() {
            String::new()
        } else {
            format!(" (did you mean {}?)", same_name.join(" or "))
        };
        format!("no Pod manifest or StatefulSet replica defines the Pod {pod}{hint}")
    };
    let unknown_pool = |name: &str| {
        let known: Vec<String> = pools.iter().map(|s| s.to_string()).collect();
        format!(
            "no IPPool manifest defines the pool `{name}` (IPPools: {})",
            list_or_none(&known)
        )
    };
    for (i, p) in expect.pods.iter().enumerate() {
        if !pods.contains(&p.pod) {
            errors.push(LoadError::invalid(
                file,
                None,
                format!("pods[{i}].pod"),
                &p.pod,
                unknown_pod(&p.pod),
            ));
        }
        for (j, itf) in p.interfaces.iter().enumerate() {
            for (k, pool) in itf.pools.iter().flatten().enumerate() {
                if !pools.contains(pool.as_str()) {
                    errors.push(LoadError::invalid(
                        file,
                        None,
                        format!("pods[{i}].interfaces[{j}].pools[{k}]"),
                        pool,
                        unknown_pool(pool),
                    ));
                }
            }
        }
    }
    for (key, itf) in expect.interface_refs() {
        if !pods.contains(&itf.pod) {
            errors.push(LoadError::invalid(
                file,
                None,
                key,
                itf,
                unknown_pod(&itf.pod),
            ));
        }
    }
    for (i, p) in expect.pools.iter().enumerate() {
        if !pools.contains(p.name.as_str()) {
            errors.push(LoadError::invalid(
                file,
                None,
                format!("pools[{i}].name"),
                &p.name,
                unknown_pool(&p.name),
            ));
        }
    }
    let objects: BTreeMap<String, _> = manifests
        .iter()
        .map(|m| (m.object_ref().to_string(), m.object_ref()))
        .collect();
    for (i, r) in expect.rejected.iter().enumerate() {
        if !objects.values().any(|o| o.same_object(&r.object)) {
            errors.push(LoadError::invalid(
                file,
                None,
                format!("rejected[{i}].object"),
                &r.object,
                "no manifest holds this object",
            ));
        }
    }
}
