//! The manifests under `deploy/`: the hand-written CRD in `deploy/crds/` is
//! a well-formed CustomResourceDefinition; the base's ConfigMap and every
//! object of `deploy/examples/` pass Spur's own validation (config files,
//! pools, NAD configs, Pod network selections); the examples mirror the seed
//! testbeds' manifests. Schema validation against Kubernetes (strict, per
//! version) is `scripts/validate-deploy.py`'s, not this file's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use spur_core::config::{AgentConfig, ControllerConfig};
use spur_core::ippool::{IPPool, PoolLayout};
use spur_core::nad::{classify, NetworkKind};
use spur_core::selection::{self, Naming};
use spur_core::Subject;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every YAML document of a file, as JSON values.
fn docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The YAML files of a directory, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The example directories under `deploy/examples/`.
fn example_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn check_config_map(cm: &ConfigMap, what: &str) {
    let data = cm.data.as_ref().unwrap();
    for key in data.keys() {
        assert!(
            key == "spur-agent.conf" || key == "spur-controller.conf",
            "{what}: unknown key {key}"
        );
    }
    let agent = data.get("spur-agent.conf").map(String::as_str);
    AgentConfig::from_yaml(agent.unwrap_or_default())
        .unwrap_or_else(|e| panic!("{what}: spur-agent.conf: {e}"));
    let controller = data.get("spur-controller.conf").map(String::as_str);
    ControllerConfig::from_yaml(controller.unwrap_or_default())
        .unwrap_or_else(|e| panic!("{what}: spur-controller.conf: {e}"));
}

#[test]
fn base_config_map_is_valid_spur_config() {
    let path = repo().join("deploy/spur-config.yaml");
    let all = docs(&path);
    assert_eq!(all.len(), 1);
    let cm: ConfigMap = serde_json::from_value(all[0].clone()).unwrap();
    assert_eq!(cm.metadata.name.as_deref(), Some("spur-config"));
    assert_eq!(cm.metadata.namespace.as_deref(), Some("kube-system"));
    let data = cm.data.as_ref().unwrap();
    assert!(data.contains_key("spur-agent.conf") && data.contains_key("spur-controller.conf"));
    check_config_map(&cm, "deploy/spur-config.yaml");
    let agent = AgentConfig::from_yaml(&data["spur-agent.conf"]).unwrap();
    // The DaemonSet mounts these host paths: the config must agree.
    assert_eq!(agent.cni_socket, "/var/run/spur/cni.sock");
    assert_eq!(agent.ovs_run_dir, "/var/run/openvswitch");
}

/// Every example passes Spur's own validation: its ConfigMap's files, its
/// pools (each valid, no two overlapping), its NADs' configs (each Spur's,
/// as a network or as IPAM), and its Pods' network selections, which name
/// only NADs of the example.
#[test]
fn examples_pass_spur_validation() {
    let dirs = example_dirs();
    assert!(dirs.len() >= 4, "examples: {dirs:?}");
    for dir in dirs {
        let mut layouts = Vec::new();
        let mut nads = BTreeSet::new();
        let mut pods = Vec::new();
        for file in yaml_files(&dir) {
            let what = file.strip_prefix(repo()).unwrap().display().to_string();
            let objs = docs(&file);
            assert!(!objs.is_empty(), "{what}: no object");
            for obj in objs {
                let kind = obj["kind"].as_str().unwrap().to_string();
                match kind.as_str() {
                    "ConfigMap" => {
                        let cm: ConfigMap = serde_json::from_value(obj).unwrap();
                        assert_eq!(cm.metadata.name.as_deref(), Some("spur-config"), "{what}");
                        check_config_map(&cm, &what);
                    }
                    "IPPool" => {
                        let pool: IPPool = serde_json::from_value(obj).unwrap();
                        let layout =
                            PoolLayout::from_pool(&pool).unwrap_or_else(|e| panic!("{what}: {e}"));
                        layouts.push(layout);
                    }
                    "NetworkAttachmentDefinition" => {
                        let ns = obj["metadata"]["namespace"].as_str().unwrap().to_string();
                        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
                        let config = obj["spec"]["config"].as_str().unwrap();
                        let subject = Subject::new(&kind, Some(&ns), &name);
                        match classify(config, &subject) {
                            Ok(NetworkKind::Spur(_) | NetworkKind::SpurIpam(_)) => {}
                            Ok(NetworkKind::Other) => panic!("{what}: {subject}: not Spur's"),
                            Err(e) => panic!("{what}: {e}"),
                        }
                        nads.insert((ns, name));
                    }
                    "Pod" => pods.push((what.clone(), serde_json::from_value::<Pod>(obj).unwrap())),
                    "Namespace" => {
                        serde_json::from_value::<Namespace>(obj).unwrap();
                    }
                    other => panic!("{what}: unexpected kind {other}"),
                }
            }
        }
        for layout in &layouts {
            layout
                .check_no_overlap(&layouts)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        for (what, pod) in pods {
            let ns = pod.metadata.namespace.as_deref().unwrap();
            let name = pod.metadata.name.as_deref().unwrap();
            assert!(
                pod.spec.as_ref().unwrap().node_name.is_none(),
                "{what}: {name}: nodeName"
            );
            let annotations = pod.metadata.annotations.unwrap_or_default();
            let networks = &annotations["k8s.v1.cni.cncf.io/networks"];
            let elements = selection::parse(networks, ns, name, Naming::Native)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            for el in elements {
                assert!(
                    nads.contains(&(el.namespace.clone(), el.name.clone())),
                    "{what}: Pod {ns}/{name} selects {}/{}, which the example does not define",
                    el.namespace,
                    el.name
                );
            }
        }
    }
}

/// Each example is its seed testbed's manifests as a user applies them: the
/// same files, without the harness's `nodeName` pins and without the
/// objects the API must refuse.
#[test]
fn examples_mirror_seed_testbeds() {
    let refused: BTreeMap<&str, &str> = [("seed-example", "40-overlapping-pool.yaml")].into();
    for dir in example_dirs() {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let testbed = repo().join("testbeds").join(name).join("manifests");
        assert!(testbed.is_dir(), "{}: no testbed {name}", dir.display());
        let mut want = Vec::new();
        for file in yaml_files(&testbed) {
            let base = file.file_name().unwrap().to_str().unwrap().to_string();
            if refused.get(name) == Some(&base.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let unpinned: String = text
                .lines()
                .filter(|l| !l.starts_with("  nodeName: node-"))
                .map(|l| format!("{l}\n"))
                .collect();
            want.push((base, unpinned));
        }
        let got: Vec<(String, String)> = yaml_files(&dir)
            .into_iter()
            .map(|f| {
                let base = f.file_name().unwrap().to_str().unwrap().to_string();
                (base, std::fs::read_to_string(&f).unwrap())
            })
            .collect();
        let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&got),
            names(&want),
            "deploy/examples/{name}: files differ from testbeds/{name}/manifests"
        );
        for ((file, got), (_, want)) in got.iter().zip(&want) {
            assert!(
                got == want,
                "deploy/examples/{name}/{file} differs from testbeds/{name}/manifests/{file} \
                 (less nodeName lines): copy it again"
            );
        }
    }
}

#[test]
fn network_attachment_definition_crd_is_well_formed() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/crds/k8s.cni.cncf.io_network-attachment-definitions.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("network-attachment-definitions.k8s.cni.cncf.io")
    );
    assert_eq!(crd.spec.group, "k8s.cni.cncf.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "NetworkAttachmentDefinition");
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["net-attach-def".into()])
    );
    let v1 = &crd.spec.versions[0];
    assert!(v1.served && v1.storage);
    let schema = v1
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    let config = &schema.properties.as_ref().unwrap()["spec"]
        .properties
        .as_ref()
        .unwrap()["config"];
    assert_eq!(config.type_.as_deref(), Some("string"));
}

/// The DaemonSet runs the agent with the base's config file and mounts the
/// host directories that config and the agent's interfaces name (at the
/// same paths as on the host), and its init container runs `install-cni`.
#[test]
fn agent_daemonset_mounts_what_the_agent_uses() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    let all = docs(&repo().join("deploy/agent-daemonset.yaml"));
    let ds: DaemonSet = serde_json::from_value(all[0].clone()).unwrap();
    assert_eq!(ds.metadata.name.as_deref(), Some("spur-agent"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("spur-agent"));
    let volumes = pod.volumes.unwrap();
    let host_paths: BTreeMap<String, String> = volumes
        .iter()
        .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
        .collect();
    let agent = &pod.containers[0];
    let mounts: BTreeMap<String, String> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), m.name.clone()))
        .collect();
    let cm_text = docs(&repo().join("deploy/spur-config.yaml"));
    let cm: ConfigMap = serde_json::from_value(cm_text[0].clone()).unwrap();
    let config = AgentConfig::from_yaml(&cm.data.unwrap()["spur-agent.conf"]).unwrap();
    let socket_dir = Path::new(&config.cni_socket).parent().unwrap();
    for dir in [
        config.ovs_run_dir.as_str(),
        socket_dir.to_str().unwrap(),
        "/var/run/netns",
        "/var/lib/kubelet/pod-resources",
        "/opt/cni/bin",
        "/etc/cni/net.d",
    ] {
        let volume = mounts
            .get(dir)
            .unwrap_or_else(|| panic!("the agent does not mount {dir}"));
        assert_eq!(
            host_paths.get(volume).map(String::as_str),
            Some(dir),
            "volume {volume}"
        );
    }
    let config_volume = volumes
        .iter()
        .find(|v| v.name == mounts["/etc/spur"])
        .unwrap();
    assert_eq!(
        config_volume.config_map.as_ref().unwrap().name,
        "spur-config"
    );
    let args = agent.args.clone().unwrap();
    assert_eq!(args[0], "run");
    let at = args.iter().position(|a| a == "--config").unwrap();
    assert_eq!(args[at + 1], "/etc/spur/spur-agent.conf");
    let env = agent.env.as_ref().unwrap();
    let node_name = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node_name
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    let init = &pod.init_containers.unwrap()[0];
    assert_eq!(init.command.as_ref().unwrap()[1], "install-cni");
}
