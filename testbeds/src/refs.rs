//! The references users write in `expect.yaml` and runners write in
//! reports: Pods (`NAMESPACE/POD`), Pod interfaces (`NAMESPACE/POD@IFNAME`)
//! and API objects (`KIND/NAME` or `KIND/NAMESPACE/NAME`).
//!
//! Each parses from and renders to exactly the text form, and serializes as
//! that string, so the same types serve `expect.yaml` and the JSON report.

use std::fmt;
use std::str::FromStr;

use spur_core::names::{dns1123_label_problem, dns1123_subdomain_problem, ifname_problem};

/// Why a reference text is refused (the message is a full sentence fragment
/// such as "`a@b` is not NAMESPACE/POD@IFNAME: ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RefError(pub String);

/// A Pod: `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name.
    pub name: String,
}

impl PodRef {
    /// A Pod reference from its parts (not validated).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The interface `ifname` of this Pod.
    pub fn interface(&self, ifname: impl Into<String>) -> InterfaceRef {
        InterfaceRef {
            pod: self.clone(),
            interface: ifname.into(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Parses the `NAMESPACE/POD` text `s`; errors quote `shown` (the whole
/// reference) and say it is not `form`.
fn parse_pod(s: &str, shown: &str, form: &str) -> Result<PodRef, RefError> {
    let bad = |why: &str| RefError(format!("`{shown}` is not {form}: {why}"));
    let Some((ns, name)) = s.split_once('/') else {
        return Err(bad(
            "the namespace is missing (write it even for `default`)",
        ));
    };
    if let Some(p) = dns1123_label_problem(ns) {
        return Err(bad(&format!("the namespace {p}")));
    }
    if name.contains('/') {
        return Err(bad("it has more than one '/'"));
    }
    if let Some(p) = dns1123_subdomain_problem(name) {
        return Err(bad(&format!("the Pod name {p}")));
    }
    Ok(PodRef::new(ns, name))
}

impl FromStr for PodRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_pod(s, s, "NAMESPACE/POD")
    }
}

/// An interface of a Pod: `NAMESPACE/POD@IFNAME`, e.g. `default/sample@eth200`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceRef {
    /// The Pod.
    pub pod: PodRef,
    /// The interface name inside the Pod.
    pub interface: String,
}

impl fmt::Display for InterfaceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.pod, self.interface)
    }
}

impl FromStr for InterfaceRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "NAMESPACE/POD@IFNAME";
        let Some((pod, ifname)) = s.split_once('@') else {
            return Err(RefError(format!(
                "`{s}` is not {FORM}: the interface name is missing (`@IFNAME`)"
            )));
        };
        let pod = parse_pod(pod, s, FORM)?;
        if let Some(p) = ifname_problem(ifname) {
            return Err(RefError(format!("`{s}` is not {FORM}: the {p}")));
        }
        Ok(pod.interface(ifname))
    }
}

/// Kinds that are not namespaced: a reference to one never carries a
/// namespace. Every other kind is namespaced, with `default` as the
/// namespace when none is written (as `kubectl` does).
pub const CLUSTER_SCOPED_KINDS: &[&str] = &[
    "APIService",
    "CSIDriver",
    "CSINode",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "IPPool",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "RuntimeClass",
    "StorageClass",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

/// True when objects of `kind` have no namespace (compared ignoring case).
pub fn is_cluster_scoped(kind: &str) -> bool {
    CLUSTER_SCOPED_KINDS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(kind))
}

/// An API object: `KIND/NAME` or `KIND/NAMESPACE/NAME`.
///
/// The text keeps what was written; [`ObjectRef::same_object`] compares
/// kinds ignoring case and treats a missing namespace of a namespaced kind
/// as `default`, so `Pod/x` and `pod/default/x` name the same object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The object's kind, e.g. `IPPool`.
    pub kind: String,
    /// The namespace, when written.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
}

impl ObjectRef {
    /// A reference from its parts (not validated).
    pub fn new(kind: impl Into<String>, namespace: Option<&str>, name: impl Into<String>) -> Self {
        ObjectRef {
            kind: kind.into(),
            namespace: namespace.map(str::to_string),
            name: name.into(),
        }
    }

    /// The namespace the object lives in: the written one, `default` for a
    /// namespaced kind written without one, none for cluster-scoped kinds.
    pub fn effective_namespace(&self) -> Option<&str> {
        if is_cluster_scoped(&self.kind) {
            None
        } else {
            Some(self.namespace.as_deref().unwrap_or("default"))
        }
    }

    /// True when both references name the same object.
    pub fn same_object(&self, other: &ObjectRef) -> bool {
        self.kind.eq_ignore_ascii_case(&other.kind)
            && self.name == other.name
            && self.effective_namespace() == other.effective_namespace()
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

impl FromStr for ObjectRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            RefError(format!(
                "`{s}` is not KIND/NAME or KIND/NAMESPACE/NAME: {why}"
            ))
        };
        let parts: Vec<&str> = s.split('/').collect();
        let (kind, ns, name) = match parts.as_slice() {
            [kind, name] => (*kind, None, *name),
            [kind, ns, name] => (*kind, Some(*ns), *name),
            _ => return Err(bad("it must have one or two '/'")),
        };
        if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("the kind must be letters and digits, like IPPool"));
        }
        if let Some(ns) = ns {
            if let Some(p) = dns1123_label_problem(ns) {
                return Err(bad(&format!("the namespace {p}")));
            }
        }
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        Ok(ObjectRef::new(kind, ns, name))
    }
}

macro_rules! string_serde {
    ($t:ty, $what:literal) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

string_serde!(PodRef, "a Pod as NAMESPACE/POD");
string_serde!(InterfaceRef, "an interface as NAMESPACE/POD@IFNAME");
string_serde!(ObjectRef, "an object as KIND/NAME or KIND/NAMESPACE/NAME");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_refs() {
        let i: InterfaceRef = "default/sample@eth200".parse().unwrap();
        assert_eq!(i.pod, PodRef::new("default", "sample"));
        assert_eq!(i.interface, "eth200");
        assert_eq!(i.to_string(), "default/sample@eth200");
        for bad in [
            "sample@eth1",
            "default/sample",
            "default/sample@",
            "Default/sample@eth1",
            "default/a/b@eth1",
            "default/sample@eth:1",
            "/sample@eth1",
        ] {
            let e = bad.parse::<InterfaceRef>().unwrap_err();
            assert!(e.0.contains(bad), "{e}");
        }
    }

    #[test]
    fn object_refs() {
        let a: ObjectRef = "IPPool/overlapping-pool".parse().unwrap();
        assert_eq!(a.effective_namespace(), None);
        let p: ObjectRef = "Pod/x".parse().unwrap();
        let q: ObjectRef = "pod/default/x".parse().unwrap();
        assert!(p.same_object(&q));
        assert!(!p.same_object(&"Pod/other/x".parse().unwrap()));
        assert_eq!(q.to_string(), "pod/default/x");
        for bad in ["IPPool", "a/b/c/d", "/x", "I P/x", "Pod/NS/x", "Pod/"] {
            assert!(bad.parse::<ObjectRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_as_strings() {
        let i: InterfaceRef = serde_json::from_str("\"ns/p@eth1\"").unwrap();
        assert_eq!(serde_json::to_string(&i).unwrap(), "\"ns/p@eth1\"");
        let e = serde_json::from_str::<InterfaceRef>("\"p@eth1\"").unwrap_err();
        assert!(e.to_string().contains("namespace is missing"), "{e}");
    }
}
