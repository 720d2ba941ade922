//! The resource registry: which kinds the server serves, under which group,
//! version and plural, with which scope, short names, subresources and
//! printer columns. Built-in kinds come from a table; custom resources come
//! from the CustomResourceDefinitions stored in the server, so a CRD is
//! served exactly as it declares itself.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A printer column of `kubectl get` (a CRD's `additionalPrinterColumns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// `integer`, `number`, `string`, `boolean` or `date`.
    pub type_: String,
    /// A simple JSONPath such as `.status.usage.total`.
    pub json_path: String,
    /// Priority: 0 is shown by default, higher only with `-o wide`.
    pub priority: i64,
    /// Column description.
    pub description: String,
}

/// One served resource (one group/version/plural).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Plural resource name used in paths, e.g. `pods`.
    pub plural: String,
    /// Singular name, e.g. `pod`.
    pub singular: String,
    /// True when objects live in namespaces.
    pub namespaced: bool,
    /// Short names for kubectl, e.g. `po`.
    pub short_names: Vec<String>,
    /// Categories such as `all`.
    pub categories: Vec<String>,
    /// True when the resource has a `/status` subresource (updates of the
    /// main resource then leave `.status` alone, and the reverse).
    pub status_subresource: bool,
    /// Printer columns (CRDs); built-ins use [`crate::table`]'s defaults.
    pub printer_columns: Vec<PrinterColumn>,
    /// The version objects are stored in (CRDs: the storage version).
    pub storage_version: String,
    /// True when this resource comes from a CRD.
    pub custom: bool,
}

impl Resource {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The key objects of this resource are stored under (all versions of
    /// a CRD share one store).
    pub fn store_key(&self) -> StoreKey {
        StoreKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    /// `plural.group` (the CRD name form), or `plural` for the core group.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The entry of this resource in an APIResourceList.
    pub fn discovery_entry(&self) -> Value {
        let mut v = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !self.short_names.is_empty() {
            v["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            v["categories"] = json!(self.categories);
        }
        v
    }

    /// The entry of the status subresource in an APIResourceList.
    pub fn status_discovery_entry(&self) -> Option<Value> {
        self.status_subresource.then(|| {
            json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            })
        })
    }
}

/// Where objects of a resource are kept: group and plural (versions share).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreKey {
    /// API group.
    pub group: String,
    /// Plural name.
    pub plural: String,
}

/// Built-in kinds: (group, version, kind, plural, namespaced, short names,
/// status subresource, categories).
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
    &'static [&'static str],
);

const BUILTINS: &[Builtin] = &[
    (
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        &["ns"],
        true,
        &[],
    ),
    ("", "v1", "Node", "nodes", false, &["no"], true, &[]),
    ("", "v1", "Pod", "pods", true, &["po"], true, &["all"]),
    (
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        &["cm"],
        false,
        &[],
    ),
    ("", "v1", "Secret", "secrets", true, &[], false, &[]),
    (
        "",
        "v1",
        "Service",
        "services",
        true,
        &["svc"],
        true,
        &["all"],
    ),
    (
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        false,
        &[],
    ),
    ("", "v1", "Event", "events", true, &["ev"], false, &[]),
    (
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        true,
        &["all"],
    ),
    (
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        &["rs"],
        true,
        &["all"],
    ),
    (
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        &["sts"],
        true,
        &["all"],
    ),
    (
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        true,
        &["ds"],
        true,
        &["all"],
    ),
    (
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        false,
        &[],
    ),
    (
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        &[],
        false,
        &[],
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
        &[],
        false,
        &[],
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
        &[],
        false,
        &[],
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        false,
        &[],
        true,
        &[],
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        false,
        &[],
        false,
        &[],
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        &[],
        false,
        &[],
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        &[],
        false,
        &[],
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        true,
        &[],
        false,
        &[],
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        &[],
        false,
        &[],
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        true,
        &[],
    ),
];

/// Every resource the server currently serves.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// (group, version, plural) -> resource.
    by_path: BTreeMap<(String, String, String), Resource>,
    /// CRD name -> the resources it declared.
    from_crd: BTreeMap<String, Vec<(String, String, String)>>,
}

impl Registry {
    /// The built-in resources.
    pub fn builtin() -> Registry {
        let mut r = Registry::default();
        for b in BUILTINS {
            let (group, version, kind, plural, namespaced, short, status, cats) = *b;
            r.insert(Resource {
                group: group.into(),
                version: version.into(),
                kind: kind.into(),
                plural: plural.into(),
                singular: kind.to_ascii_lowercase(),
                namespaced,
                short_names: short.iter().map(|s| s.to_string()).collect(),
                categories: cats.iter().map(|s| s.to_string()).collect(),
                status_subresource: status,
                printer_columns: Vec::new(),
                storage_version: version.into(),
                custom: false,
            });
        }
        r
    }

    fn insert(&mut self, res: Resource) {
        self.by_path.insert(
            (res.group.clone(), res.version.clone(), res.plural.clone()),
            res,
        );
    }

    /// The resource at `group/version/plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
    }

    /// The resource for an object's apiVersion and kind.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&Resource> {
        let (group, version) = split_api_version(api_version);
        self.by_path
            .values()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }

    /// Every served resource, sorted by group, version and plural.
    pub fn all(&self) -> impl Iterator<Item = &Resource> {
        self.by_path.values()
    }

    /// Groups and their versions, sorted; the core group is left out.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.by_path.values().filter(|r| !r.group.is_empty()) {
            let versions = out.entry(r.group.clone()).or_default();
            if !versions.contains(&r.version) {
                versions.push(r.version.clone());
            }
        }
        out
    }

    /// Serves the resources a CRD declares (replacing what an earlier
    /// version of the same CRD declared). Returns an error message when the
    /// CRD is malformed or collides with a built-in.
    pub fn apply_crd(&mut self, crd: &Value) -> Result<(), String> {
        let parsed = parse_crd(crd)?;
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for r in &parsed {
            if let Some(existing) = self.get(&r.group, &r.version, &r.plural) {
                if !existing.custom {
                    return Err(format!(
                        "{} collides with the built-in resource {}",
                        r.qualified(),
                        existing.qualified()
                    ));
                }
            }
        }
        self.remove_crd(&name);
        let mut paths = Vec::new();
        for r in parsed {
            paths.push((r.group.clone(), r.version.clone(), r.plural.clone()));
            self.insert(r);
        }
        self.from_crd.insert(name, paths);
        Ok(())
    }

    /// Stops serving what a CRD declared.
    pub fn remove_crd(&mut self, name: &str) -> Vec<Resource> {
        let mut removed = Vec::new();
        for p in self.from_crd.remove(name).unwrap_or_default() {
            if let Some(r) = self.by_path.remove(&p) {
                removed.push(r);
            }
        }
        removed
    }
}

/// Splits `group/version` (or `v1`) into group and version.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Validates a CRD and turns each served version into a [`Resource`].
pub fn parse_crd(crd: &Value) -> Result<Vec<Resource>, String> {
    let spec = crd.get("spec").ok_or("spec is required")?;
    let s = |p: &str| spec.pointer(p).and_then(Value::as_str).map(str::to_string);
    let group = s("/group").ok_or("spec.group is required")?;
    let plural = s("/names/plural").ok_or("spec.names.plural is required")?;
    let kind = s("/names/kind").ok_or("spec.names.kind is required")?;
    let singular = s("/names/singular").unwrap_or_else(|| kind.to_ascii_lowercase());
    let scope = s("/scope").ok_or("spec.scope is required")?;
    let namespaced = match scope.as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            return Err(format!(
                "spec.scope must be Namespaced or Cluster, not {other:?}"
            ))
        }
    };
    let expected_name = format!("{plural}.{group}");
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name != expected_name {
        return Err(format!(
            "metadata.name must be spec.names.plural+\".\"+spec.group ({expected_name:?}), not {name:?}"
        ));
    }
    let strings = |p: &str| -> Vec<String> {
        spec.pointer(p)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let short_names = strings("/names/shortNames");
    let categories = strings("/names/categories");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or("spec.versions must list at least one version")?;
    let storage: Vec<&str> = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    if storage.len() != 1 {
        return Err("exactly one of spec.versions must have storage: true".into());
    }
    let storage_version = storage[0].to_string();
    let mut out = Vec::new();
    for v in versions {
        let vname = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or("spec.versions[].name is required")?;
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let printer_columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .into(),
                        json_path: c
                            .get("jsonPath")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        description: c
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let status_subresource = v.pointer("/subresources/status").is_some()
            || spec.pointer("/subresources/status").is_some();
        out.push(Resource {
            group: group.clone(),
            version: vname.to_string(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status_subresource,
            printer_columns,
            storage_version: storage_version.clone(),
            custom: true,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_served() {
        let r = Registry::builtin();
        let pods = r.get("", "v1", "pods").unwrap();
        assert!(pods.namespaced && pods.status_subresource);
        assert_eq!(
            r.by_kind("apps/v1", "StatefulSet").unwrap().plural,
            "statefulsets"
        );
        assert!(r.groups().contains_key("apps"));
        assert!(!r.groups().contains_key(""));
    }

    #[test]
    fn a_crd_is_served_as_it_declares_itself() {
        let crd = serde_json::json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "ippools.spur.dev"},
            "spec": {"group": "spur.dev", "scope": "Cluster",
                "names": {"kind": "IPPool", "plural": "ippools", "singular": "ippool", "shortNames": ["ipp"]},
                "versions": [{"name": "v1beta1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [{"name": "Used", "type": "integer", "jsonPath": ".status.usage.used"}]}]}
        });
        let mut r = Registry::builtin();
        r.apply_crd(&crd).unwrap();
        let ipp = r.get("spur.dev", "v1beta1", "ippools").unwrap();
        assert!(!ipp.namespaced && ipp.status_subresource && ipp.custom);
        assert_eq!(ipp.short_names, ["ipp"]);
        assert_eq!(ipp.printer_columns[0].json_path, ".status.usage.used");
        assert_eq!(r.remove_crd("ippools.spur.dev").len(), 1);
        assert!(r.get("spur.dev", "v1beta1", "ippools").is_none());

        let mut bad = crd.clone();
        bad["metadata"]["name"] = "wrong".into();
        assert!(r.apply_crd(&bad).unwrap_err().contains("ippools.spur.dev"));
    }
}
