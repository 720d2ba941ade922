//! PATCH support: the four patch content types the API server accepts and
//! their application to an object held as `serde_json::Value`.
//!
//! * JSON merge patch (RFC 7386), `application/merge-patch+json`;
//! * JSON patch (RFC 6902), `application/json-patch+json`;
//! * strategic merge patch, `application/strategic-merge-patch+json`:
//!   merge-patch semantics plus the directives kubectl emits (`$patch`,
//!   `$retainKeys`, `$setElementOrder/<field>`,
//!   `$deleteFromPrimitiveList/<field>`) and merging of the built-in lists
//!   that have a merge key (containers by name, ports by containerPort,
//!   conditions by type, ...); see [`list_strategy`];
//! * server-side apply, `application/apply-patch+yaml`, accepted as far as
//!   needed: the applied configuration is merged onto the live object.

use serde_json::{Map, Value};

/// The kind of a PATCH body, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchType {
    /// JSON merge patch (RFC 7386).
    Merge,
    /// JSON patch (RFC 6902).
    Json,
    /// Kubernetes strategic merge patch.
    Strategic,
    /// Server-side apply (the body is the applied configuration).
    Apply,
}

impl PatchType {
    /// Maps a `Content-Type` header (parameters such as `charset` are
    /// ignored) to a patch type. Server-side apply is accepted as
    /// `application/apply-patch+yaml` and `application/apply-patch+json`.
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }

    /// The canonical content type of this patch type.
    pub fn content_type(self) -> &'static str {
        match self {
            PatchType::Merge => "application/merge-patch+json",
            PatchType::Json => "application/json-patch+json",
            PatchType::Strategic => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }
}

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body could not be decoded as its content type says.
    #[error("the body is not a valid {content_type} document: {message}")]
    Decode {
        /// The content type the body was decoded as.
        content_type: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// A JSON patch operation is malformed or failed (e.g. a `test`).
    #[error("JSON patch operation {index} ({op}) failed: {message}")]
    JsonPatchOp {
        /// Index of the operation in the patch array.
        index: usize,
        /// The operation, summarised as `op path`.
        op: String,
        /// What went wrong.
        message: String,
    },
    /// The patch is well-formed JSON but not a valid patch (bad directive,
    /// wrong top-level type, ...).
    #[error("invalid patch: {0}")]
    Invalid(String),
}

/// How a list field is combined by strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListStrategy {
    /// The patch's list replaces the original (merge-patch semantics).
    Replace,
    /// Lists of objects are merged element by element, matching elements
    /// by the named key.
    MergeByKey(&'static str),
    /// Lists of scalars are merged as a set union (e.g. finalizers).
    MergeSet,
}

/// The merge key of a list field of a built-in kind (e.g.
/// `merge_key("Pod", "spec.containers") == Some("name")`); `None` when the
/// list is replaced or merged as a set.
pub fn merge_key(kind: &str, path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.split('.').collect();
    match list_strategy(kind, &segs) {
        ListStrategy::MergeByKey(k) => Some(k),
        _ => None,
    }
}

/// Where a PodSpec sits inside objects of `kind`.
fn pod_spec_prefix(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "PodTemplate" => &["template", "spec"],
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => &["spec", "template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => return None,
    })
}

/// Kinds whose `status.conditions` is merged by `type`.
const KINDS_WITH_CONDITIONS: &[&str] = &[
    "Pod",
    "Node",
    "Namespace",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "ReplicationController",
    "PersistentVolumeClaim",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
];

fn pod_spec_list(rest: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
    match rest {
        [c] if CONTAINER_LISTS.contains(c) => MergeByKey("name"),
        [c, sub] if CONTAINER_LISTS.contains(c) => match *sub {
            "env" => MergeByKey("name"),
            "ports" => MergeByKey("containerPort"),
            "volumeMounts" => MergeByKey("mountPath"),
            "volumeDevices" => MergeByKey("devicePath"),
            _ => Replace,
        },
        ["volumes"] | ["imagePullSecrets"] | ["resourceClaims"] | ["schedulingGates"] => {
            MergeByKey("name")
        }
        ["hostAliases"] => MergeByKey("ip"),
        _ => Replace,
    }
}

/// The strategic-merge strategy of the list at `path` (field names from
/// the object root; list elements add no segment) in an object of a
/// built-in `kind`. Lists not in the table are replaced.
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    // Object metadata, of the object itself and of pod templates.
    let meta_rest = match path {
        ["metadata", rest @ ..] => Some(rest),
        _ => None,
    };
    if let Some(rest) = meta_rest {
        return match rest {
            ["finalizers"] => MergeSet,
            ["ownerReferences"] => MergeByKey("uid"),
            _ => Replace,
        };
    }
    if let Some(prefix) = pod_spec_prefix(kind) {
        if path.len() > prefix.len() && path[..prefix.len()] == *prefix {
            return pod_spec_list(&path[prefix.len()..]);
        }
    }
    match (kind, path) {
        (k, ["status", "conditions"]) if KINDS_WITH_CONDITIONS.contains(&k) => MergeByKey("type"),
        ("Pod", ["status", "podIPs"]) | ("Pod", ["status", "hostIPs"]) => MergeByKey("ip"),
        ("Node", ["status", "addresses"]) => MergeByKey("type"),
        ("Node", ["spec", "podCIDRs"]) => MergeSet,
        ("Service", ["spec", "ports"]) => MergeByKey("port"),
        ("ServiceAccount", ["secrets"]) | ("ServiceAccount", ["imagePullSecrets"]) => {
            MergeByKey("name")
        }
        _ => Replace,
    }
}

/// Applies a PATCH body of `patch_type` to `target` and returns the
/// patched object. `kind` is the kind of a built-in object (strategic
/// merge patch uses it to find list merge keys); `None` for custom
/// resources, which get plain merge semantics for every list.
///
/// For [`PatchType::Apply`] the body (YAML or JSON) is the applied
/// configuration: it is merged onto `target` (null values in it are
/// ignored; `metadata.managedFields` in it is dropped) and the live
/// `metadata.resourceVersion`, `uid` and `creationTimestamp` are kept.
/// Creating an absent object is the caller's business (pass a skeleton
/// target). Fields dropped from a later applied configuration are not
/// removed (there is no field-ownership tracking).
pub fn apply_patch(
    kind: Option<&str>,
    target: &Value,
    patch_type: PatchType,
    body: &[u8],
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Merge => {
            let patch = decode_json(body, patch_type)?;
            if !patch.is_object() {
                return Err(PatchError::Invalid(
                    "a merge patch must be a JSON object".to_string(),
                ));
            }
            let mut doc = target.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Json => apply_json_patch(target, body),
        PatchType::Strategic => {
            let patch = decode_json(body, patch_type)?;
            strategic_merge(kind, target, &patch)
        }
        PatchType::Apply => {
            let applied: Value = serde_yaml::from_slice(body).map_err(|e| PatchError::Decode {
                content_type: patch_type.content_type(),
                message: e.to_string(),
            })?;
            server_side_apply(kind, target, applied)
        }
    }
}

fn decode_json(body: &[u8], patch_type: PatchType) -> Result<Value, PatchError> {
    serde_json::from_slice(body).map_err(|e| PatchError::Decode {
        content_type: patch_type.content_type(),
        message: e.to_string(),
    })
}

fn summarize_op(op: &Value) -> String {
    let name = op.get("op").and_then(Value::as_str).unwrap_or("?");
    let path = op.get("path").and_then(Value::as_str).unwrap_or("?");
    match op.get("from").and_then(Value::as_str) {
        Some(from) => format!("{name} {from} -> {path}"),
        None => format!("{name} {path}"),
    }
}

fn apply_json_patch(target: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let raw = decode_json(body, PatchType::Json)?;
    let Some(items) = raw.as_array() else {
        return Err(PatchError::Invalid(
            "a JSON patch must be a JSON array of operations".to_string(),
        ));
    };
    let mut ops = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let op: json_patch::PatchOperation =
            serde_json::from_value(item.clone()).map_err(|e| PatchError::JsonPatchOp {
                index,
                op: summarize_op(item),
                message: format!("malformed operation: {e}"),
            })?;
        ops.push(op);
    }
    let mut doc = target.clone();
    json_patch::patch(&mut doc, &ops).map_err(|e| {
        let index = e.operation;
        PatchError::JsonPatchOp {
            index,
            op: items.get(index).map(summarize_op).unwrap_or_default(),
            message: e.kind.to_string(),
        }
    })?;
    Ok(doc)
}

fn server_side_apply(
    kind: Option<&str>,
    target: &Value,
    mut applied: Value,
) -> Result<Value, PatchError> {
    if !applied.is_object() {
        return Err(PatchError::Invalid(
            "an applied configuration must be an object".to_string(),
        ));
    }
    strip_nulls(&mut applied);
    if let Some(meta) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    let mut out = strategic_merge(kind, target, &applied)?;
    for key in ["resourceVersion", "uid", "creationTimestamp"] {
        if let Some(live) = target.pointer(&format!("/metadata/{key}")) {
            if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert(key.to_string(), live.clone());
            }
        }
    }
    Ok(out)
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Applies a strategic merge patch (already decoded) to `target`.
/// `kind` selects the list merge keys ([`list_strategy`]); `None` merges
/// like a JSON merge patch (every list replaced) while still honouring
/// the `$patch`/`$retainKeys`/... directives.
pub fn strategic_merge(
    kind: Option<&str>,
    target: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let Some(patch) = patch.as_object() else {
        return Err(PatchError::Invalid(
            "a strategic merge patch must be a JSON object".to_string(),
        ));
    };
    let merger = Smp { kind };
    let mut path = Vec::new();
    match merger.object(target.as_object(), patch, &mut path)? {
        Some(m) => Ok(Value::Object(m)),
        None => Err(PatchError::Invalid(
            "$patch: delete of the whole object is not allowed".to_string(),
        )),
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE
        || k == RETAIN_KEYS
        || k.starts_with(SET_ELEMENT_ORDER)
        || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
}

fn dotted(path: &[String]) -> String {
    if path.is_empty() {
        "<root>".to_string()
    } else {
        path.join(".")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapDirective {
    Merge,
    Replace,
    Delete,
}

fn map_directive(patch: &Map<String, Value>, path: &[String]) -> Result<MapDirective, PatchError> {
    match patch.get(DIRECTIVE) {
        None => Ok(MapDirective::Merge),
        Some(Value::String(s)) => match s.as_str() {
            "merge" => Ok(MapDirective::Merge),
            "replace" => Ok(MapDirective::Replace),
            "delete" => Ok(MapDirective::Delete),
            other => Err(PatchError::Invalid(format!(
                "unknown $patch directive {other:?} at {}",
                dotted(path)
            ))),
        },
        Some(other) => Err(PatchError::Invalid(format!(
            "$patch at {} must be a string, found {other}",
            dotted(path)
        ))),
    }
}

struct Smp<'a> {
    kind: Option<&'a str>,
}

impl Smp<'_> {
    fn strategy(&self, path: &[String]) -> ListStrategy {
        match self.kind {
            Some(kind) => {
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                list_strategy(kind, &segs)
            }
            None => ListStrategy::Replace,
        }
    }

    /// Merges a map patch into `orig`; `None` means "delete this map".
    fn object(
        &self,
        orig: Option<&Map<String, Value>>,
        patch: &Map<String, Value>,
        path: &mut Vec<String>,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        let directive = map_directive(patch, path)?;
        if directive == MapDirective::Delete {
            return Ok(None);
        }
        let mut base = match (directive, orig) {
            (MapDirective::Merge, Some(o)) => o.clone(),
            _ => Map::new(),
        };
        if let Some(keys) = patch.get(RETAIN_KEYS) {
            let Some(keys) = keys.as_array() else {
                return Err(PatchError::Invalid(format!(
                    "$retainKeys at {} must be a list of field names",
                    dotted(path)
                )));
            };
            let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
            base.retain(|k, _| keep.contains(&k.as_str()));
        }
        for (k, v) in patch {
            let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else {
                continue;
            };
            let Some(remove) = v.as_array() else {
                return Err(PatchError::Invalid(format!(
                    "{k} at {} must be a list",
                    dotted(path)
                )));
            };
            if let Some(Value::Array(list)) = base.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
        }
        for (k, v) in patch {
            if is_directive_key(k) {
                continue;
            }
            path.push(k.clone());
            match v {
                Value::Null => {
                    base.remove(k);
                }
                Value::Object(pm) => {
                    let child = base.get(k).and_then(Value::as_object);
                    match self.object(child, pm, path)? {
                        Some(m) => {
                            base.insert(k.clone(), Value::Object(m));
                        }
                        None => {
                            base.remove(k);
                        }
                    }
                }
                Value::Array(items) => {
                    let orig_list = match base.get(k) {
                        Some(Value::Array(a)) => a.as_slice(),
                        _ => &[],
                    };
                    let merged = self.list(orig_list, items, path)?;
                    base.insert(k.clone(), Value::Array(merged));
                }
                scalar => {
                    base.insert(k.clone(), scalar.clone());
                }
            }
            path.pop();
        }
        Ok(Some(base))
    }

    fn list(
        &self,
        orig: &[Value],
        patch: &[Value],
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>, PatchError> {
        // A `{"$patch": "replace"}` element replaces the whole list.
        let is_replace_marker = |v: &Value| {
            v.as_object().is_some_and(|m| {
                m.len() == 1 && m.get(DIRECTIVE).and_then(Value::as_str) == Some("replace")
            })
        };
        if patch.iter().any(is_replace_marker) {
            return Ok(patch
                .iter()
                .filter(|v| !is_replace_marker(v))
                .cloned()
                .collect());
        }
        match self.strategy(path) {
            ListStrategy::MergeByKey(key) if patch.iter().all(Value::is_object) => {
                self.keyed_list(orig, patch, key, path)
            }
            ListStrategy::MergeSet => {
                let mut out = orig.to_vec();
                for item in patch {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Ok(out)
            }
            // Replaced lists are taken verbatim, as a merge patch does.
            _ => Ok(patch.to_vec()),
        }
    }

    fn keyed_list(
        &self,
        orig: &[Value],
        patch: &[Value],
        key: &str,
        path: &mut Vec<String>,
    ) -> Result<Vec<Value>, PatchError> {
        let mut out = orig.to_vec();
        for item in patch {
            let Some(pm) = item.as_object() else {
                continue;
            };
            let directive = map_directive(pm, path)?;
            let Some(kv) = pm.get(key) else {
                if directive == MapDirective::Delete {
                    return Err(PatchError::Invalid(format!(
                        "$patch: delete in list {} needs the merge key {key:?}",
                        dotted(path)
                    )));
                }
                // No merge key: keep the element as given.
                if let Some(m) = self.object(None, pm, path)? {
                    out.push(Value::Object(m));
                }
                continue;
            };
            let pos = out.iter().position(|o| o.get(key) == Some(kv));
            if directive == MapDirective::Delete {
                out.retain(|o| o.get(key) != Some(kv));
                continue;
            }
            match pos {
                Some(i) => match self.object(out[i].as_object(), pm, path)? {
                    Some(m) => out[i] = Value::Object(m),
                    None => {
                        out.remove(i);
                    }
                },
                None => {
                    if let Some(m) = self.object(None, pm, path)? {
                        out.push(Value::Object(m));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn patch(kind: Option<&str>, target: &Value, t: PatchType, body: Value) -> Value {
        apply_patch(kind, target, t, body.to_string().as_bytes()).unwrap()
    }

    fn pod() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "resourceVersion": "7",
                "uid": "u-1",
                "creationTimestamp": "2026-11-24T00:48:06Z",
                "labels": {"app": "web"},
                "annotations": {"x": "1", "y": "2"},
                "finalizers": ["a"]
            },
            "spec": {
                "containers": [
                    {"name": "main", "image": "nginx:1", "env": [{"name": "A", "value": "1"}],
                     "ports": [{"containerPort": 80}]},
                    {"name": "side", "image": "busybox"}
                ],
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            },
            "status": {"phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "PodScheduled", "status": "True"}]}
        })
    }

    #[test]
    fn content_types() {
        use PatchType::*;
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json"),
            Some(Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json; charset=utf-8"),
            Some(Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json"),
            Some(Strategic)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(Apply)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+json"),
            Some(Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+cbor"),
            None
        );
    }

    #[test]
    fn merge_patch_null_deletes() {
        let out = patch(
            None,
            &pod(),
            PatchType::Merge,
            json!({"metadata": {"annotations": {"x": null, "z": "3"}}, "spec": {"tolerations": null}}),
        );
        assert_eq!(out["metadata"]["annotations"], json!({"y": "2", "z": "3"}));
        assert!(out["spec"].get("tolerations").is_none());
        // lists are replaced by a merge patch
        let out = patch(
            None,
            &pod(),
            PatchType::Merge,
            json!({"spec": {"containers": [{"name": "x"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "x"}]));
        assert!(apply_patch(None, &pod(), PatchType::Merge, b"[1]").is_err());
        let e = apply_patch(None, &pod(), PatchType::Merge, b"{nope").unwrap_err();
        assert!(
            e.to_string().contains("application/merge-patch+json"),
            "{e}"
        );
    }

    #[test]
    fn json_patch_operations() {
        let out = patch(
            None,
            &pod(),
            PatchType::Json,
            json!([
                {"op": "add", "path": "/metadata/labels/tier", "value": "front"},
                {"op": "replace", "path": "/spec/containers/0/image", "value": "nginx:2"},
                {"op": "remove", "path": "/metadata/annotations/x"},
                {"op": "test", "path": "/metadata/name", "value": "web"}
            ]),
        );
        assert_eq!(out["metadata"]["labels"]["tier"], "front");
        assert_eq!(out["spec"]["containers"][0]["image"], "nginx:2");
        assert!(out["metadata"]["annotations"].get("x").is_none());

        let e = apply_patch(
            None,
            &pod(),
            PatchType::Json,
            json!([
                {"op": "add", "path": "/metadata/labels/tier", "value": "front"},
                {"op": "test", "path": "/metadata/name", "value": "other"}
            ])
            .to_string()
            .as_bytes(),
        )
        .unwrap_err();
        match &e {
            PatchError::JsonPatchOp { index, op, .. } => {
                assert_eq!(*index, 1);
                assert_eq!(op, "test /metadata/name");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("test /metadata/name"), "{e}");

        let e = apply_patch(
            None,
            &pod(),
            PatchType::Json,
            json!([{"op": "remove", "path": "/nope/x"}])
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(e, PatchError::JsonPatchOp { index: 0, .. }), "{e}");
        let e = apply_patch(
            None,
            &pod(),
            PatchType::Json,
            json!([{"op": "frobnicate", "path": "/x"}])
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
        assert!(apply_patch(None, &pod(), PatchType::Json, b"{}").is_err());
    }

    #[test]
    fn strategic_label_and_annotate() {
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({"metadata": {"labels": {"a": "b"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "a": "b"}));
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({"metadata": {"annotations": {"x": null}}}),
        );
        assert_eq!(out["metadata"]["annotations"], json!({"y": "2"}));
        let mut expected = pod();
        expected["metadata"]["annotations"] = json!({"y": "2"});
        assert_eq!(out, expected);
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({
                "$setElementOrder/containers": [{"name": "main"}, {"name": "side"}],
                "spec": {
                    "$setElementOrder/containers": [{"name": "main"}, {"name": "side"}, {"name": "new"}],
                    "containers": [
                        {"name": "main", "image": "nginx:2", "env": [{"name": "B", "value": "2"}],
                         "ports": [{"containerPort": 80, "name": "http"}]},
                        {"name": "new", "image": "redis"}
                    ],
                    "tolerations": [{"key": "other", "operator": "Exists"}]
                }
            }),
        );
        let cs = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(
            cs[0]["ports"],
            json!([{"containerPort": 80, "name": "http"}])
        );
        assert_eq!(cs[1], json!({"name": "side", "image": "busybox"}));
        assert_eq!(cs[2], json!({"name": "new", "image": "redis"}));
        // lists without a merge key are replaced
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "other", "operator": "Exists"}])
        );
        // directives never end up in the object
        assert!(!out.to_string().contains("$setElementOrder"));
    }

    #[test]
    fn strategic_delete_container() {
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({
                "spec": {"containers": [{"name": "side", "$patch": "delete"}]}
            }),
        );
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
        assert_eq!(out["spec"]["containers"][0]["name"], "main");
        // on a deployment's pod template too
        let deploy =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}});
        let out = patch(
            Some("Deployment"),
            &deploy,
            PatchType::Strategic,
            json!({
                "spec": {"template": {"spec": {"containers": [{"name": "a", "$patch": "delete"}, {"name": "b", "image": "i"}]}}}
            }),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b", "image": "i"}])
        );
    }

    #[test]
    fn strategic_map_directives() {
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({
                "metadata": {"annotations": {"$patch": "replace", "only": "this"}}
            }),
        );
        assert_eq!(out["metadata"]["annotations"], json!({"only": "this"}));
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({
                "metadata": {"annotations": {"$patch": "delete"}}
            }),
        );
        assert!(out["metadata"].get("annotations").is_none());
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({
                "spec": {"volumes": [{"name": "v", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/x"}}]}
            }),
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "v", "hostPath": {"path": "/x"}}])
        );
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({
                "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["b"]}
            }),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({
                "metadata": {"finalizers": ["b", "a"]}
            }),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({
                "spec": {"containers": [{"$patch": "replace"}, {"name": "only"}]}
            }),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "only"}]));
        let e = apply_patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({"metadata": {"$patch": "explode"}})
                .to_string()
                .as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("metadata"), "{e}");
    }

    #[test]
    fn strategic_status_conditions_by_type() {
        let out = patch(
            Some("Pod"),
            &pod(),
            PatchType::Strategic,
            json!({
                "status": {"conditions": [{"type": "Ready", "status": "False"}]}
            }),
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}
            ])
        );
    }

    #[test]
    fn strategic_on_custom_resources_is_plain_merge() {
        let cr = json!({"spec": {"items": [{"name": "a", "v": 1}], "keep": 1}});
        let out = patch(
            None,
            &cr,
            PatchType::Strategic,
            json!({"spec": {"items": [{"name": "b"}]}}),
        );
        assert_eq!(out, json!({"spec": {"items": [{"name": "b"}], "keep": 1}}));
        // `$ref` and friends are ordinary keys
        let out = patch(
            Some("CustomResourceDefinition"),
            &json!({}),
            PatchType::Strategic,
            json!({"schema": {"$ref": "#/x"}}),
        );
        assert_eq!(out, json!({"schema": {"$ref": "#/x"}}));
    }

    #[test]
    fn merge_key_table() {
        assert_eq!(merge_key("Pod", "spec.containers"), Some("name"));
        assert_eq!(
            merge_key("Pod", "spec.containers.ports"),
            Some("containerPort")
        );
        assert_eq!(
            merge_key("Pod", "spec.initContainers.volumeMounts"),
            Some("mountPath")
        );
        assert_eq!(
            merge_key("StatefulSet", "spec.template.spec.volumes"),
            Some("name")
        );
        assert_eq!(merge_key("Pod", "spec.tolerations"), None);
        assert_eq!(merge_key("Pod", "spec.imagePullSecrets"), Some("name"));
        assert_eq!(merge_key("Service", "spec.ports"), Some("port"));
        assert_eq!(merge_key("Node", "status.conditions"), Some("type"));
        assert_eq!(merge_key("IPPool", "spec.containers"), None);
    }

    #[test]
    fn apply_merges_and_keeps_identity() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  resourceVersion: \"1\"\n  \
                    creationTimestamp: null\n  labels:\n    extra: yes-please\nspec:\n  containers:\n  \
                    - name: main\n    image: nginx:3\n";
        let out = apply_patch(Some("Pod"), &pod(), PatchType::Apply, yaml.as_bytes()).unwrap();
        assert_eq!(out["metadata"]["resourceVersion"], "7");
        assert_eq!(out["metadata"]["uid"], "u-1");
        assert_eq!(out["metadata"]["creationTimestamp"], "2026-11-24T00:48:06Z");
        assert_eq!(
            out["metadata"]["labels"],
            json!({"app": "web", "extra": "yes-please"})
        );
        assert_eq!(out["spec"]["containers"][0]["image"], "nginx:3");
        assert_eq!(out["spec"]["containers"][1]["name"], "side");
        // JSON bodies work too, and a skeleton target becomes the object
        let skeleton =
            json!({"apiVersion": "example.com/v1", "kind": "IPPool", "metadata": {"name": "p"}});
        let out = apply_patch(None, &skeleton, PatchType::Apply,
            br#"{"apiVersion":"example.com/v1","kind":"IPPool","metadata":{"name":"p"},"spec":{"cidr":"10.0.0.0/24"}}"#).unwrap();
        assert_eq!(out["spec"]["cidr"], "10.0.0.0/24");
        assert!(out["metadata"].get("resourceVersion").is_none());
        let e = apply_patch(None, &skeleton, PatchType::Apply, b"a: [").unwrap_err();
        assert!(
            e.to_string().contains("application/apply-patch+yaml"),
            "{e}"
        );
    }

    /// The RFC 7386 patch that turns `a` into `b`.
    fn merge_diff(a: &Value, b: &Value) -> Value {
        match (a, b) {
            (Value::Object(am), Value::Object(bm)) => {
                let mut out = Map::new();
                for k in am.keys() {
                    if !bm.contains_key(k) {
                        out.insert(k.clone(), Value::Null);
                    }
                }
                for (k, bv) in bm {
                    match am.get(k) {
                        Some(av) if av == bv => {}
                        Some(av) => {
                            out.insert(k.clone(), merge_diff(av, bv));
                        }
                        None => {
                            out.insert(k.clone(), bv.clone());
                        }
                    }
                }
                Value::Object(out)
            }
            _ => b.clone(),
        }
    }

    fn arb_json(allow_null: bool) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z]{0,4}".prop_map(Value::String),
            Just(if allow_null { Value::Null } else { json!(0) }),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-d$]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_object(allow_null: bool) -> impl Strategy<Value = Value> {
        proptest::collection::btree_map("[a-d]{1,2}", arb_json(allow_null), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn merge_patch_never_panics(doc in arb_json(true), p in arb_json(true)) {
            let _ = apply_patch(None, &doc, PatchType::Merge, p.to_string().as_bytes());
            let _ = apply_patch(Some("Pod"), &doc, PatchType::Strategic, p.to_string().as_bytes());
            let _ = apply_patch(None, &doc, PatchType::Apply, p.to_string().as_bytes());
        }

        #[test]
        fn merge_diff_round_trips(a in arb_object(false), b in arb_object(false)) {
            let d = merge_diff(&a, &b);
            let out = apply_patch(None, &a, PatchType::Merge, d.to_string().as_bytes()).unwrap();
            prop_assert_eq!(out, b);
        }

        #[test]
        fn strategic_without_directives_on_unknown_kind_equals_merge(
            a in arb_object(false), p in arb_object(true)
        ) {
            // keys never start with `$` here, so no directives are involved
            let m = apply_patch(None, &a, PatchType::Merge, p.to_string().as_bytes()).unwrap();
            let s = apply_patch(None, &a, PatchType::Strategic, p.to_string().as_bytes()).unwrap();
            prop_assert_eq!(m, s);
        }
    }
}
