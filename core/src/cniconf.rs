//! Chaining `spur` into the primary CNI network configuration of a node.
//!
//! What lives here: the pure decisions of `spur-agent install-cni` (the
//! DaemonSet's init container) in native mode — which file of the CNI
//! config directory the container runtime uses (the lexicographically first
//! `*.conf`, `*.conflist` or `*.json`, as libcni, containerd and CRI-O pick
//! it), and the new content of that file with `{"type": "spur"}` appended to
//! its `plugins` ([`chain`]), or removed again ([`unchain`]) on uninstall.
//! Both are idempotent; every other key and plugin is kept, in its order.
//! A single-plugin `.conf`/`.json` is turned into a `.conflist` (libcni reads
//! `plugins` only from a `.conflist`), which replaces the original file.
//!
//! What does not: reading or writing files, waiting for the primary CNI to
//! write its config, or installing the plugin binary (`spur-agent`
//! `install-cni` does that I/O).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The `type` of the plugin entry this module chains in.
pub const PLUGIN_TYPE: &str = "spur";

/// Plugin types that mark a Multus conflist (thin and thick plugin).
pub const MULTUS_TYPES: [&str; 2] = ["multus", "multus-shim"];

/// File name extensions the runtimes read network configs from.
pub const CONFIG_EXTENSIONS: [&str; 3] = [".conf", ".conflist", ".json"];

/// Why a network config cannot be chained or unchained.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CniConfError {
    /// The file is not valid JSON (or has a key twice).
    #[error("CNI network config {file}: malformed JSON: {reason}")]
    Malformed {
        /// The file name.
        file: String,
        /// The parser's message.
        reason: String,
    },
    /// A key every config of this kind must have is missing.
    #[error("CNI network config {file}: key `{key}` is missing")]
    Missing {
        /// The file name.
        file: String,
        /// The missing key's path.
        key: String,
    },
    /// A key has a value of the wrong JSON type.
    #[error("CNI network config {file}: key `{key}` = {value}: expected {expected}")]
    WrongType {
        /// The file name.
        file: String,
        /// The key's path.
        key: String,
        /// The value found (JSON, possibly shortened).
        value: String,
        /// What the key must hold.
        expected: &'static str,
    },
    /// The primary network is Multus: Spur must be a Multus delegate.
    #[error(
        "CNI network config {file}: key `{key}` = {value:?}: the primary CNI is Multus; \
         spur is not chained into a Multus conflist, install with --mode multus and attach \
         spur networks as Multus delegates (NetworkAttachmentDefinitions of type spur)"
    )]
    Multus {
        /// The file name.
        file: String,
        /// The key's path (`plugins[N].type` or `type`).
        key: String,
        /// The Multus plugin type found.
        value: String,
    },
    /// Converting a `.conf` into a `.conflist` would not leave it first.
    #[error(
        "CNI network config {file}: chaining needs it as {target}, but {other} would then \
         be the primary network config"
    )]
    Shadowed {
        /// The file name.
        file: String,
        /// The `.conflist` name it would be written as.
        target: String,
        /// The file that would sort before (or is) the target.
        other: String,
    },
    /// Removing spur would leave a conflist without plugins.
    #[error("CNI network config {file}: key `plugins` holds only spur; removing it would leave no plugin")]
    OnlySpur {
        /// The file name.
        file: String,
    },
}

/// What to do with the primary network config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The file already is as wanted (chained, or not chained on uninstall).
    Unchanged {
        /// The primary config's file name.
        file: String,
    },
    /// Write `content` to `file`; then remove `replaces` when it is set (a
    /// `.conf` converted into `file`, a `.conflist`).
    Write {
        /// The file name to write (in the config directory).
        file: String,
        /// The new content (pretty JSON, ending in a newline).
        content: String,
        /// The original file, which `file` replaces.
        replaces: Option<String>,
    },
}

/// Whether the runtimes read `name` as a network config file.
pub fn is_config_name(name: &str) -> bool {
    CONFIG_EXTENSIONS.iter().any(|ext| name.ends_with(ext))
}

/// The network config file the runtime uses: the lexicographically first
/// name with a config extension.
pub fn primary_name<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names.into_iter().filter(|n| is_config_name(n)).min()
}

/// Chains spur into the primary config of a config directory (`files`:
/// file name -> content; files without a config extension are ignored).
/// `Ok(None)` when the directory holds no network config yet.
pub fn chain(files: &BTreeMap<String, String>) -> Result<Option<Change>, CniConfError> {
    let Some(name) = primary_name(files.keys().map(String::as_str)) else {
        return Ok(None);
    };
    let content = &files[name];
    let change = chain_file(name, content)?;
    if let Change::Write {
        file,
        replaces: Some(_),
        ..
    } = &change
    {
        // The converted file must stay the runtime's first choice.
        let other = files
            .keys()
            .filter(|n| n.as_str() != name && is_config_name(n))
            .find(|n| n.as_str() <= file.as_str());
        if let Some(other) = other {
            return Err(CniConfError::Shadowed {
                file: name.to_string(),
                target: file.clone(),
                other: other.clone(),
            });
        }
    }
    Ok(Some(change))
}

/// Removes spur from the primary config of a config directory; `Ok(None)`
/// when the directory holds no network config.
pub fn unchain(files: &BTreeMap<String, String>) -> Result<Option<Change>, CniConfError> {
    let Some(name) = primary_name(files.keys().map(String::as_str)) else {
        return Ok(None);
    };
    unchain_file(name, &files[name]).map(Some)
}

/// Chains spur into one network config file `name` holding `content`.
pub fn chain_file(name: &str, content: &str) -> Result<Change, CniConfError> {
    let root = parse(name, content)?;
    if name.ends_with(".conflist") {
        let plugins = plugins(name, &root)?;
        if plugins.iter().any(|p| is_type(p, PLUGIN_TYPE)) {
            return Ok(Change::Unchanged { file: name.into() });
        }
        let mut root = root;
        if let Some(Json::Array(list)) = root.get_mut("plugins") {
            list.push(spur_entry());
        }
        return Ok(Change::Write {
            file: name.into(),
            content: render(&root),
            replaces: None,
        });
    }
    // A single plugin config: check it as libcni would, then wrap it.
    let Json::Object(_) = &root else {
        return Err(wrong_type(name, "", &root, "an object"));
    };
    if plugin_type(name, "type", &root)? == PLUGIN_TYPE {
        return Ok(Change::Unchanged { file: name.into() });
    }
    let mut list = Vec::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = root.get(key) {
            list.push((key.to_string(), v.clone()));
        }
    }
    list.push((
        "plugins".to_string(),
        Json::Array(vec![root.clone(), spur_entry()]),
    ));
    let stem = name
        .rsplit_once('.')
        .map_or(name, |(stem, _)| stem)
        .to_string();
    Ok(Change::Write {
        file: format!("{stem}.conflist"),
        content: render(&Json::Object(list)),
        replaces: Some(name.into()),
    })
}

/// Removes every `spur` plugin from one network config file.
pub fn unchain_file(name: &str, content: &str) -> Result<Change, CniConfError> {
    let root = parse(name, content)?;
    if !name.ends_with(".conflist") {
        // A single plugin config has no chain to be part of.
        return Ok(Change::Unchanged { file: name.into() });
    }
    let plugins = match plugins(name, &root) {
        Ok(plugins) => plugins,
        // Spur is never chained into Multus: nothing to remove there.
        Err(CniConfError::Multus { .. }) => return Ok(Change::Unchanged { file: name.into() }),
        Err(e) => return Err(e),
    };
    if !plugins.iter().any(|p| is_type(p, PLUGIN_TYPE)) {
        return Ok(Change::Unchanged { file: name.into() });
    }
    let mut root = root;
    if let Some(Json::Array(list)) = root.get_mut("plugins") {
        list.retain(|p| !is_type(p, PLUGIN_TYPE));
        if list.is_empty() {
            return Err(CniConfError::OnlySpur { file: name.into() });
        }
    }
    Ok(Change::Write {
        file: name.into(),
        content: render(&root),
        replaces: None,
    })
}

/// The checked `plugins` of a conflist: an array of objects with a string
/// `type`, none of them Multus.
fn plugins<'a>(file: &str, root: &'a Json) -> Result<&'a [Json], CniConfError> {
    let Json::Object(_) = root else {
        return Err(wrong_type(file, "", root, "an object"));
    };
    let Some(value) = root.get("plugins") else {
        return Err(CniConfError::Missing {
            file: file.into(),
            key: "plugins".into(),
        });
    };
    let Json::Array(list) = value else {
        return Err(wrong_type(
            file,
            "plugins",
            value,
            "an array of plugin configs",
        ));
    };
    if list.is_empty() {
        return Err(wrong_type(
            file,
            "plugins",
            value,
            "at least one plugin config",
        ));
    }
    for (i, plugin) in list.iter().enumerate() {
        let key = format!("plugins[{i}]");
        let Json::Object(_) = plugin else {
            return Err(wrong_type(file, &key, plugin, "an object"));
        };
        plugin_type(file, &format!("{key}.type"), plugin)?;
    }
    Ok(list)
}

/// The `type` of a plugin config, refusing Multus.
fn plugin_type<'a>(file: &str, key: &str, plugin: &'a Json) -> Result<&'a str, CniConfError> {
    match plugin.get("type") {
        None => Err(CniConfError::Missing {
            file: file.into(),
            key: key.into(),
        }),
        Some(Json::String(t)) if MULTUS_TYPES.contains(&t.as_str()) => Err(CniConfError::Multus {
            file: file.into(),
            key: key.into(),
            value: t.clone(),
        }),
        Some(Json::String(t)) => Ok(t),
        Some(other) => Err(wrong_type(file, key, other, "a string")),
    }
}

fn is_type(plugin: &Json, wanted: &str) -> bool {
    matches!(plugin.get("type"), Some(Json::String(t)) if t == wanted)
}

fn spur_entry() -> Json {
    Json::Object(vec![("type".into(), Json::String(PLUGIN_TYPE.into()))])
}

fn wrong_type(file: &str, key: &str, value: &Json, expected: &'static str) -> CniConfError {
    let mut value = serde_json::to_string(value).unwrap_or_default();
    if value.len() > 80 {
        let mut cut = 77;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
        value.push_str("...");
    }
    CniConfError::WrongType {
        file: file.into(),
        key: if key.is_empty() {
            "(top level)".into()
        } else {
            key.into()
        },
        value,
        expected,
    }
}

fn parse(file: &str, content: &str) -> Result<Json, CniConfError> {
    serde_json::from_str(content).map_err(|e| CniConfError::Malformed {
        file: file.into(),
        reason: e.to_string(),
    })
}

fn render(value: &Json) -> String {
    // Serializing this tree of strings, numbers and containers cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// A JSON value that keeps the order of object keys (serde_json's `Value`
/// sorts them unless its `preserve_order` feature is on workspace-wide).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Object(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom(format!("number {v} is not finite")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries: Vec<(String, Json)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => serializer.serialize_unit(),
            Json::Bool(b) => serializer.serialize_bool(*b),
            Json::Number(n) => n.serialize(serializer),
            Json::String(s) => serializer.serialize_str(s),
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CALICO: &str = r#"{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "ipam": {"type": "calico-ipam"}, "mtu": 1440},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}},
    {"type": "bandwidth", "capabilities": {"bandwidth": true}}
  ],
  "disableCheck": false
}"#;

    fn files(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn written(change: Change) -> (String, String, Option<String>) {
        match change {
            Change::Write {
                file,
                content,
                replaces,
            } => (file, content, replaces),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn tree(text: &str) -> Json {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn primary_is_first_config_name() {
        let names = [
            "99-z.conflist",
            "README",
            "10-a.json",
            "05-b.conf",
            "00-x.conf.bak",
        ];
        assert_eq!(primary_name(names), Some("05-b.conf"));
        assert_eq!(primary_name(["README", "x.yaml"]), None);
        assert_eq!(primary_name([]), None);
        assert!(is_config_name("a.conflist") && is_config_name("a.json"));
        assert!(!is_config_name(".spur-install.tmp"));
    }

    #[test]
    fn chains_conflist_appending_and_keeping_order() {
        let (file, content, replaces) = written(chain_file("10-calico.conflist", CALICO).unwrap());
        assert_eq!(file, "10-calico.conflist");
        assert_eq!(replaces, None);
        insta::assert_snapshot!("chained_calico", content);
        let Json::Object(top) = tree(&content) else {
            panic!()
        };
        let keys: Vec<&str> = top.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["name", "cniVersion", "plugins", "disableCheck"]);
        let t = tree(&content);
        let Some(Json::Array(plugins)) = t.get("plugins") else {
            panic!()
        };
        let types: Vec<_> = plugins.iter().map(|p| p.get("type").cloned()).collect();
        assert_eq!(
            types,
            ["calico", "portmap", "bandwidth", "spur"]
                .map(|s| Some(Json::String(s.into())))
                .to_vec()
        );
        // The original plugins are untouched, key order included.
        let Some(Json::Array(before)) = tree(CALICO).get("plugins").cloned() else {
            panic!()
        };
        assert_eq!(plugins[..3], before[..]);
    }

    #[test]
    fn chaining_is_idempotent() {
        let (_, content, _) = written(chain_file("10-calico.conflist", CALICO).unwrap());
        assert_eq!(
            chain_file("10-calico.conflist", &content).unwrap(),
            Change::Unchanged {
                file: "10-calico.conflist".into()
            }
        );
        // spur anywhere in the chain counts as chained.
        let first =
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"spur"},{"type":"ptp"}]}"#;
        assert_eq!(
            chain_file("a.conflist", first).unwrap(),
            Change::Unchanged {
                file: "a.conflist".into()
            }
        );
    }

    #[test]
    fn unchain_restores_the_original() {
        let (_, chained, _) = written(chain_file("10-calico.conflist", CALICO).unwrap());
        let (file, restored, _) = written(unchain_file("10-calico.conflist", &chained).unwrap());
        assert_eq!(file, "10-calico.conflist");
        assert_eq!(tree(&restored), tree(CALICO));
        assert_eq!(
            unchain_file("10-calico.conflist", CALICO).unwrap(),
            Change::Unchanged {
                file: "10-calico.conflist".into()
            }
        );
        // Not a conflist: nothing chained.
        let conf = r#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#;
        assert_eq!(
            unchain_file("10-b.conf", conf).unwrap(),
            Change::Unchanged {
                file: "10-b.conf".into()
            }
        );
    }

    #[test]
    fn conf_becomes_conflist() {
        let conf = r#"{"cniVersion": "0.4.0", "name": "mynet", "type": "bridge", "bridge": "cni0",
                       "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}"#;
        let dir = files(&[("10-mynet.conf", conf), ("99-loopback.conf", "{}")]);
        let (file, content, replaces) = written(chain(&dir).unwrap().unwrap());
        assert_eq!(file, "10-mynet.conflist");
        assert_eq!(replaces.as_deref(), Some("10-mynet.conf"));
        insta::assert_snapshot!("converted_conf", content);
        let t = tree(&content);
        assert_eq!(t.get("cniVersion"), Some(&Json::String("0.4.0".into())));
        let Some(Json::Array(plugins)) = t.get("plugins") else {
            panic!()
        };
        assert_eq!(plugins[0], tree(conf));
        // The converted file is chained: a second pass changes nothing.
        let again = files(&[("10-mynet.conflist", &content), ("99-loopback.conf", "{}")]);
        assert_eq!(
            chain(&again).unwrap(),
            Some(Change::Unchanged {
                file: "10-mynet.conflist".into()
            })
        );
        // A single config of spur itself needs no chaining.
        let own = r#"{"cniVersion":"1.0.0","name":"s","type":"spur"}"#;
        assert_eq!(
            chain_file("10-s.conf", own).unwrap(),
            Change::Unchanged {
                file: "10-s.conf".into()
            }
        );
        // A .json single config too.
        let (file, _, replaces) = written(chain_file("20-x.json", conf).unwrap());
        assert_eq!(
            (file.as_str(), replaces.as_deref()),
            ("20-x.conflist", Some("20-x.json"))
        );
    }

    #[test]
    fn conversion_refused_when_shadowed() {
        let conf = r#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#;
        let dir = files(&[("10-b.conf", conf), ("10-b.conflist", CALICO)]);
        insta::assert_snapshot!(chain(&dir).unwrap_err().to_string(), @"CNI network config 10-b.conf: chaining needs it as 10-b.conflist, but 10-b.conflist would then be the primary network config");
        let dir = files(&[("10-b.conf", conf), ("10-b.conf.conf", conf)]);
        assert!(
            matches!(chain(&dir), Err(CniConfError::Shadowed { other, .. }) if other == "10-b.conf.conf")
        );
    }

    #[test]
    fn empty_directory_has_nothing_to_do() {
        let dir = files(&[("README", "x"), (".spur-install-1.tmp", "{")]);
        assert_eq!(chain(&dir).unwrap(), None);
        assert_eq!(unchain(&dir).unwrap(), None);
    }

    #[test]
    fn only_the_primary_is_read() {
        // A broken file after the primary does not matter (the runtime does
        // not read it either).
        let dir = files(&[("10-calico.conflist", CALICO), ("20-broken.conf", "{")]);
        let (file, _, _) = written(chain(&dir).unwrap().unwrap());
        assert_eq!(file, "10-calico.conflist");
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            ("a.conflist", "{\"plugins\": [", "truncated"),
            (
                "a.conflist",
                r#"{"name":"n","name":"m","plugins":[]}"#,
                "duplicate",
            ),
            (
                "a.conflist",
                r#"{"cniVersion":"1.0.0","name":"n"}"#,
                "no_plugins",
            ),
            (
                "a.conflist",
                r#"{"plugins":{"type":"ptp"}}"#,
                "plugins_object",
            ),
            ("a.conflist", r#"{"plugins":[]}"#, "plugins_empty"),
            (
                "a.conflist",
                r#"{"plugins":[{"type":"ptp"},"x"]}"#,
                "plugin_string",
            ),
            (
                "a.conflist",
                r#"{"plugins":[{"type":"ptp"},{"mtu":1}]}"#,
                "plugin_no_type",
            ),
            (
                "a.conflist",
                r#"{"plugins":[{"type":7}]}"#,
                "plugin_type_number",
            ),
            ("a.conflist", "[1,2]", "top_array"),
            ("a.conf", r#"{"name":"n"}"#, "conf_no_type"),
            (
                "00-multus.conf",
                r#"{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus","delegates":[]}"#,
                "multus_conf",
            ),
            (
                "00-multus.conflist",
                r#"{"cniVersion":"0.3.1","name":"multus-cni-network","plugins":[{"type":"multus-shim"}]}"#,
                "multus_conflist",
            ),
        ];
        let mut out = Vec::new();
        for (name, content, label) in cases {
            let e = chain_file(name, content).unwrap_err();
            assert!(e.to_string().contains(name), "{label}: {e}");
            out.push(format!("{label}: {e}"));
        }
        let long = format!(r#"{{"plugins":"{}"}}"#, "é".repeat(60));
        out.push(format!(
            "long_value: {}",
            chain_file("a.conflist", &long).unwrap_err()
        ));
        let only = r#"{"plugins":[{"type":"spur"}]}"#;
        out.push(format!(
            "only_spur: {}",
            unchain_file("a.conflist", only).unwrap_err()
        ));
        insta::assert_snapshot!("errors", out.join("\n"));
    }

    #[test]
    fn multus_refused_in_directory() {
        let multus = r#"{"cniVersion":"0.3.1","name":"multus-cni-network","plugins":[{"type":"multus","kubeconfig":"/etc/cni/net.d/multus.d/multus.kubeconfig","delegates":[]}]}"#;
        let dir = files(&[
            ("00-multus.conflist", multus),
            ("10-calico.conflist", CALICO),
        ]);
        let e = chain(&dir).unwrap_err();
        assert!(matches!(&e, CniConfError::Multus { file, key, .. }
            if file == "00-multus.conflist" && key == "plugins[0].type"));
        assert!(e.to_string().contains("--mode multus"), "{e}");
        // Uninstalling finds nothing to remove from a Multus conflist.
        assert_eq!(
            unchain(&dir).unwrap(),
            Some(Change::Unchanged {
                file: "00-multus.conflist".into()
            })
        );
    }

    #[test]
    fn numbers_and_unicode_survive() {
        let text = r#"{"cniVersion":"1.1.0","name":"ü","x":1.5,"y":-3,"z":18446744073709551615,"plugins":[{"type":"ptp","n":null,"b":[true,false]}]}"#;
        let (_, content, _) = written(chain_file("a.conflist", text).unwrap());
        let (_, back, _) = written(unchain_file("a.conflist", &content).unwrap());
        assert_eq!(tree(&back), tree(text));
        assert!(content.contains("18446744073709551615") && content.contains("1.5"));
    }

    fn arb_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(|n| Json::Number(n.into())),
            "[a-z0-9 ]{0,6}".prop_map(Json::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                prop::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_plugin() -> impl Strategy<Value = Json> {
        (
            prop::sample::select(vec![
                "calico",
                "flannel",
                "portmap",
                "bandwidth",
                "tuning",
                "spur",
            ]),
            prop::collection::btree_map("[a-z]{1,5}", arb_json(), 0..3),
            any::<bool>(),
        )
            .prop_map(|(t, rest, type_last)| {
                let mut entries: Vec<(String, Json)> =
                    rest.into_iter().filter(|(k, _)| k != "type").collect();
                let ty = ("type".to_string(), Json::String(t.into()));
                if type_last {
                    entries.push(ty);
                } else {
                    entries.insert(0, ty);
                }
                Json::Object(entries)
            })
    }

    fn arb_conflist() -> impl Strategy<Value = Json> {
        (
            prop::collection::vec(arb_plugin(), 1..5),
            prop::collection::btree_map("[a-z]{1,5}", arb_json(), 0..3),
        )
            .prop_map(|(plugins, extra)| {
                let mut entries = vec![
                    ("cniVersion".to_string(), Json::String("1.0.0".into())),
                    ("name".to_string(), Json::String("net".into())),
                    ("plugins".to_string(), Json::Array(plugins)),
                ];
                entries.extend(
                    extra
                        .into_iter()
                        .filter(|(k, _)| !["cniVersion", "name", "plugins"].contains(&k.as_str())),
                );
                Json::Object(entries)
            })
    }

    fn after(name: &str, text: &str, change: Change) -> String {
        match change {
            Change::Unchanged { file } => {
                assert_eq!(file, name);
                text.to_string()
            }
            Change::Write { content, .. } => content,
        }
    }

    fn plugin_list(j: &Json) -> Vec<Json> {
        match j.get("plugins") {
            Some(Json::Array(l)) => l.clone(),
            _ => panic!("no plugins"),
        }
    }

    proptest! {
        #[test]
        fn chain_twice_is_chain_once(conflist in arb_conflist(), compact in any::<bool>()) {
            let text = if compact { serde_json::to_string(&conflist).unwrap() } else { render(&conflist) };
            let once = after("c.conflist", &text, chain_file("c.conflist", &text).unwrap());
            let twice = chain_file("c.conflist", &once).unwrap();
            prop_assert_eq!(twice, Change::Unchanged { file: "c.conflist".into() });
        }

        #[test]
        fn chain_never_drops_plugins(conflist in arb_conflist()) {
            let text = render(&conflist);
            let chained = tree(&after("c.conflist", &text, chain_file("c.conflist", &text).unwrap()));
            let before = plugin_list(&conflist);
            let now = plugin_list(&chained);
            prop_assert_eq!(&now[..before.len()], &before[..]);
            prop_assert!(now.iter().filter(|p| is_type(p, PLUGIN_TYPE)).count() >= 1);
            prop_assert!(now.len() <= before.len() + 1);
            // Every other top-level key is kept, in order.
            let (Json::Object(a), Json::Object(b)) = (&conflist, &chained) else { panic!() };
            let ka: Vec<_> = a.iter().map(|(k, _)| k).collect();
            let kb: Vec<_> = b.iter().map(|(k, _)| k).collect();
            prop_assert_eq!(ka, kb);
            for ((ka, va), (_, vb)) in a.iter().zip(b) {
                if ka != "plugins" { prop_assert_eq!(va, vb); }
            }
        }

        #[test]
        fn unchain_undoes_chain(conflist in arb_conflist()) {
            let has_spur = plugin_list(&conflist).iter().any(|p| is_type(p, PLUGIN_TYPE));
            prop_assume!(!has_spur);
            let text = render(&conflist);
            let chained = after("c.conflist", &text, chain_file("c.conflist", &text).unwrap());
            let back = after("c.conflist", &chained, unchain_file("c.conflist", &chained).unwrap());
            prop_assert_eq!(tree(&back), conflist);
        }
    }
}
