//! `manifests/*.yaml`: Kubernetes objects as a user would `kubectl apply`
//! them, kept as JSON values with typed accessors for the fields every
//! runner needs.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use spur_core::Kind;

use crate::error::{Document, LoadError};
use crate::refs::{is_cluster_scoped, ObjectRef, PodRef};

/// The API group of the project's custom resources.
pub const SPUR_API_GROUP: &str = "spur.dev";

/// One Kubernetes object of a manifest file.
///
/// Loading guarantees `apiVersion`, `kind` and `metadata.name` are
/// non-empty strings and `metadata.namespace`, when present, is a string;
/// everything else is kept as written for the API (simulated or real) to
/// accept or refuse.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file it comes from.
    pub file: PathBuf,
    /// Its document in that file, counted from 1 (empty documents count).
    pub document: usize,
    /// The object.
    pub object: Value,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

impl Manifest {
    /// `apiVersion`, e.g. `v1` or `spur.dev/v1beta1`.
    pub fn api_version(&self) -> &str {
        str_at(&self.object, &["apiVersion"]).unwrap_or_default()
    }

    /// The API group: the part of `apiVersion` before `/` (empty for the
    /// core group).
    pub fn api_group(&self) -> &str {
        self.api_version()
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    /// `kind`, e.g. `Pod`.
    pub fn kind(&self) -> &str {
        str_at(&self.object, &["kind"]).unwrap_or_default()
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        str_at(&self.object, &["metadata", "name"]).unwrap_or_default()
    }

    /// The namespace the object lives in: `metadata.namespace`, `default`
    /// when a namespaced object has none, and `None` for cluster-scoped
    /// kinds (see [`crate::refs::CLUSTER_SCOPED_KINDS`]).
    pub fn namespace(&self) -> Option<&str> {
        if is_cluster_scoped(self.kind()) {
            None
        } else {
            Some(str_at(&self.object, &["metadata", "namespace"]).unwrap_or("default"))
        }
    }

    /// `metadata.annotations[key]`, when it is a string.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.object
            .get("metadata")?
            .get("annotations")?
            .get(key)?
            .as_str()
    }

    /// `metadata.labels` (empty when there are none).
    pub fn labels(&self) -> Map<String, Value> {
        self.object
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// The object as `KIND/NAME` or `KIND/NAMESPACE/NAME`.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(self.kind(), self.namespace(), self.name())
    }

    /// `KIND [NAMESPACE/]NAME`, as in messages.
    pub fn describe(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {}/{}", self.kind(), ns, self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }

    /// True for `kind: IPPool` of the `spur.dev` API group.
    pub fn is_ippool(&self) -> bool {
        self.kind() == "IPPool" && self.api_group() == SPUR_API_GROUP
    }

    /// True for `kind` in the core (`v1`) or `apps` group as Kubernetes
    /// defines it (`Pod`, `Node`, `ConfigMap`, `StatefulSet`, ...).
    pub fn is_builtin(&self, kind: &str) -> bool {
        self.kind() == kind && matches!(self.api_group(), "" | "apps")
    }

    /// The Pods this object defines by name: a Pod itself, or the replicas
    /// `<name>-<ordinal>` of a StatefulSet (ordinals from `spec.ordinals.start`,
    /// default 0, for `spec.replicas`, default 1). Deployments' Pods have
    /// generated names and are not listed.
    pub fn defined_pods(&self) -> Vec<PodRef> {
        let ns = self.namespace().unwrap_or("default");
        if self.is_builtin("Pod") {
            return vec![PodRef::new(ns, self.name())];
        }
        if self.is_builtin("StatefulSet") {
            let spec = self.object.get("spec");
            let replicas = spec
                .and_then(|s| s.get("replicas"))
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let start = spec
                .and_then(|s| s.get("ordinals"))
                .and_then(|o| o.get("start"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            return (start..start.saturating_add(replicas))
                .map(|i| PodRef::new(ns, format!("{}-{i}", self.name())))
                .collect();
        }
        Vec::new()
    }

    /// The `spec.nodeName` a Pod, or the Pod template of a workload,
    /// asks for, with its key path.
    pub fn node_name(&self) -> Option<(&'static str, &str)> {
        if self.is_builtin("Pod") {
            str_at(&self.object, &["spec", "nodeName"]).map(|n| ("spec.nodeName", n))
        } else if self.is_builtin("StatefulSet")
            || self.is_builtin("Deployment")
            || self.is_builtin("ReplicaSet")
            || self.is_builtin("DaemonSet")
        {
            str_at(&self.object, &["spec", "template", "spec", "nodeName"])
                .map(|n| ("spec.template.spec.nodeName", n))
        } else {
            None
        }
    }

    pub(crate) fn doc(&self) -> Document {
        Document {
            index: self.document,
            object: Some(self.describe()),
        }
    }
}

/// Parses one manifest file: every non-empty `---` document must be a
/// Kubernetes object with `apiVersion`, `kind` and `metadata.name`.
/// Documents that are empty or hold only comments are skipped.
pub fn parse_manifests(file: &Path, text: &str) -> Result<Vec<Manifest>, Vec<LoadError>> {
    let (manifests, errors) = parse_manifests_partial(file, text);
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// The documents that are fine, and the problems of the others (after a
/// YAML syntax error nothing further is read).
pub(crate) fn parse_manifests_partial(file: &Path, text: &str) -> (Vec<Manifest>, Vec<LoadError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = Document {
            index: i + 1,
            object: None,
        };
        let value = match Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                // serde_yaml keeps returning the same error after a syntax
                // error, so stop at the first one.
                errors.push(crate::error::yaml_error(file, Some(&doc), &e));
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        match check_object(&value) {
            Ok(()) => out.push(Manifest {
                file: file.to_path_buf(),
                document: i + 1,
                object: value,
            }),
            Err((kind, key, reason)) => {
                errors.push(LoadError::in_document(file, &doc, kind, key, reason))
            }
        }
    }
    (out, errors)
}

type Problem = (Kind, &'static str, &'static str);

fn check_object(v: &Value) -> Result<(), Problem> {
    let Some(obj) = v.as_object() else {
        return Err((
            Kind::Decode,
            "",
            "is not a Kubernetes object (a mapping with apiVersion, kind and metadata)",
        ));
    };
    let required = |key: &'static str, value: Option<&Value>| match value {
        None | Some(Value::Null) => Err((Kind::Missing, key, "is required")),
        Some(Value::String(s)) if s.is_empty() => Err((Kind::Invalid, key, "must not be empty")),
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err((Kind::Decode, key, "must be a string")),
    };
    required("apiVersion", obj.get("apiVersion"))?;
    required("kind", obj.get("kind"))?;
    let meta = match obj.get("metadata") {
        None | Some(Value::Null) => return Err((Kind::Missing, "metadata.name", "is required")),
        Some(Value::Object(m)) => m,
        Some(_) => return Err((Kind::Decode, "metadata", "must be a mapping")),
    };
    required("metadata.name", meta.get("name"))?;
    match meta.get("namespace") {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(_) => Err((Kind::Decode, "metadata.namespace", "must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Manifest>, Vec<String>> {
        parse_manifests(Path::new("m.yaml"), text)
            .map_err(|es| es.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn documents_and_accessors() {
        let ms = parse(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n# only a comment\n---\n\
             apiVersion: spur.dev/v1beta1\nkind: IPPool\nmetadata: {name: p, namespace: x}\n---\n\
             apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: web, namespace: n}\n\
             spec: {replicas: 2, ordinals: {start: 3}}\n",
        )
        .unwrap();
        assert_eq!(ms.len(), 3);
        assert_eq!(ms[0].namespace(), Some("default"));
        assert_eq!(ms[0].api_group(), "");
        assert_eq!(ms[1].document, 3);
        assert!(ms[1].is_ippool());
        assert_eq!(ms[1].namespace(), None);
        assert_eq!(ms[1].object_ref().to_string(), "IPPool/p");
        let pods: Vec<String> = ms[2].defined_pods().iter().map(|p| p.to_string()).collect();
        assert_eq!(pods, ["n/web-3", "n/web-4"]);
    }

    #[test]
    fn malformed_documents_are_named() {
        let e = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\n",
        )
        .unwrap_err();
        assert_eq!(e, ["m.yaml, document 2: metadata.name: is required"]);
        let e = parse("- a\n").unwrap_err();
        assert!(e[0].contains("document 1"), "{e:?}");
        let e = parse("kind: [\n").unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
    }
}
