//! Objects of one kind keyed by name, merged by resourceVersion from three
//! sources that race each other: the watch (lagging), the answers to the
//! agent's own writes (write-through) and single-object GETs after a
//! conflict. Whatever arrives, the newest version wins, so a lagging watch
//! event never replaces the object a write just returned (which would make
//! the agent's next write conflict with itself).
//!
//! Re-lists (the watcher's `Init` .. `InitDone`) are buffered and merged the
//! same way; an object the re-list did not return is dropped only when the
//! cache learned of it before the re-list started (a write-through that
//! lands while the list is in flight is kept: the list may predate it).

use std::collections::BTreeMap;

use kube::Resource;

/// True when `incoming` is newer than `held`: both resourceVersions are
/// compared as integers when both parse (they do on etcd-backed servers and
/// on `spur-kubeapi`); otherwise the incoming object is taken, as the API
/// conventions treat resourceVersions as opaque.
pub fn rv_newer(incoming: Option<&str>, held: Option<&str>) -> bool {
    rv_cmp(incoming, held).is_none_or(|o| o == std::cmp::Ordering::Greater)
}

/// How two resourceVersions compare, when both parse as integers.
fn rv_cmp(a: Option<&str>, b: Option<&str>) -> Option<std::cmp::Ordering> {
    let parse = |v: Option<&str>| v.and_then(|s| s.parse::<u64>().ok());
    Some(parse(a)?.cmp(&parse(b)?))
}

/// True when both resourceVersions parse and `a` is the newer one.
fn rv_strictly_newer(a: Option<&str>, b: Option<&str>) -> bool {
    rv_cmp(a, b) == Some(std::cmp::Ordering::Greater)
}

/// What a merge changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change<K> {
    /// `new` replaced `old` (or appeared).
    Upsert {
        /// The version replaced, if any.
        old: Option<K>,
        /// The version now held.
        new: K,
    },
    /// The object is gone; the last version held.
    Removed(K),
}

#[derive(Debug, Clone)]
struct Entry<K> {
    obj: K,
    /// Local sequence number of the merge that stored this version.
    stamp: u64,
}

#[derive(Debug, Clone)]
struct Relist<K> {
    started: u64,
    seen: Vec<K>,
}

/// Objects by name, newest version wins.
#[derive(Debug, Clone)]
pub(crate) struct VersionedMap<K> {
    entries: BTreeMap<String, Entry<K>>,
    clock: u64,
    relist: Option<Relist<K>>,
}

impl<K> Default for VersionedMap<K> {
    fn default() -> Self {
        VersionedMap {
            entries: BTreeMap::new(),
            clock: 0,
            relist: None,
        }
    }
}

fn name_of<K: Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

fn rv_of<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta().resource_version.as_deref()
}

impl<K: Resource + Clone> VersionedMap<K> {
    /// The version held of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&K> {
        self.entries.get(name).map(|e| &e.obj)
    }

    /// Every object held, by name.
    pub(crate) fn values(&self) -> impl Iterator<Item = &K> + '_ {
        self.entries.values().map(|e| &e.obj)
    }

    /// Takes `obj` unless the version held is at least as new.
    pub(crate) fn apply(&mut self, obj: K) -> Option<Change<K>> {
        let name = name_of(&obj);
        if let Some(held) = self.entries.get(&name) {
            if !rv_newer(rv_of(&obj), rv_of(&held.obj)) {
                return None;
            }
        }
        self.clock += 1;
        let old = self
            .entries
            .insert(
                name,
                Entry {
                    obj: obj.clone(),
                    stamp: self.clock,
                },
            )
            .map(|e| e.obj);
        Some(Change::Upsert { old, new: obj })
    }

    /// A deletion seen by the watch: applied unless the version held is
    /// newer than the deleted one (the object was re-created since).
    pub(crate) fn delete(&mut self, obj: &K) -> Option<Change<K>> {
        let name = name_of(obj);
        let held = self.entries.get(&name)?;
        if rv_strictly_newer(rv_of(&held.obj), rv_of(obj)) {
            return None;
        }
        self.clock += 1;
        self.entries.remove(&name).map(|e| Change::Removed(e.obj))
    }

    /// The API answered 404 for `name`: forgets it unless the version held
    /// is newer than `based_on` (the version the request was built from;
    /// `None`: whatever is held).
    pub(crate) fn forget(&mut self, name: &str, based_on: Option<&str>) -> Option<Change<K>> {
        let held = self.entries.get(name)?;
        if rv_strictly_newer(rv_of(&held.obj), based_on) {
            return None;
        }
        self.clock += 1;
        self.entries.remove(name).map(|e| Change::Removed(e.obj))
    }

    /// The watcher starts a (re-)list.
    pub(crate) fn begin_relist(&mut self) {
        self.relist = Some(Relist {
            started: self.clock,
            seen: Vec::new(),
        });
    }

    /// One object of the (re-)list.
    pub(crate) fn relist_item(&mut self, obj: K) {
        match self.relist.as_mut() {
            Some(r) => r.seen.push(obj),
            // An InitApply without Init: treat it as a plain event.
            None => {
                self.apply(obj);
            }
        }
    }

    /// The (re-)list is complete: merges it and drops what it no longer
    /// holds (unless learned of after the list started).
    pub(crate) fn end_relist(&mut self) -> Vec<Change<K>> {
        self.end_relist_where(|_| true)
    }

    /// [`VersionedMap::end_relist`] for a list that returns only some of
    /// the objects held (a label-selected watch): only those `in_scope`
    /// says the list covers may be dropped.
    pub(crate) fn end_relist_where(&mut self, in_scope: impl Fn(&K) -> bool) -> Vec<Change<K>> {
        let Some(relist) = self.relist.take() else {
            return Vec::new();
        };
        self.merge_list(relist.started, relist.seen, in_scope)
    }

    /// The local clock: pass it to [`VersionedMap::merge_list`] as the
    /// moment a one-off LIST started.
    pub(crate) fn clock(&self) -> u64 {
        self.clock
    }

    /// Merges the objects of a LIST that started at `started` (see
    /// [`VersionedMap::clock`]): takes the newer versions and drops the
    /// objects `in_scope` says the list covers that it did not return,
    /// unless learned of after it started.
    pub(crate) fn merge_list(
        &mut self,
        started: u64,
        seen: Vec<K>,
        in_scope: impl Fn(&K) -> bool,
    ) -> Vec<Change<K>> {
        let listed: std::collections::BTreeSet<String> = seen.iter().map(name_of).collect();
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(name, e)| e.stamp <= started && !listed.contains(*name) && in_scope(&e.obj))
            .map(|(name, _)| name.clone())
            .collect();
        let mut changes = Vec::new();
        for name in gone {
            if let Some(e) = self.entries.remove(&name) {
                changes.push(Change::Removed(e.obj));
            }
        }
        for obj in seen {
            changes.extend(self.apply(obj));
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(name: &str, rv: &str, data: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: (!rv.is_empty()).then(|| rv.to_string()),
                ..Default::default()
            },
            data: Some([("v".to_string(), data.to_string())].into()),
            ..Default::default()
        }
    }

    fn data(m: &VersionedMap<ConfigMap>, name: &str) -> Option<String> {
        m.get(name)
            .and_then(|c| c.data.as_ref())
            .map(|d| d["v"].clone())
    }

    #[test]
    fn rv_comparison() {
        assert!(rv_newer(Some("10"), Some("9")), "numerically, not as text");
        assert!(!rv_newer(Some("9"), Some("10")));
        assert!(!rv_newer(Some("7"), Some("7")), "equal is not newer");
        assert!(rv_newer(Some("abc"), Some("7")), "opaque: take the event");
        assert!(rv_newer(Some("7"), Some("abc")));
        assert!(rv_newer(Some("7"), None));
        assert!(rv_newer(None, Some("7")));
    }

    #[test]
    fn a_lagging_watch_never_replaces_a_write_through() {
        let mut m = VersionedMap::default();
        // The watch delivers v5, the agent writes and gets v7 back, then
        // the watch catches up with v6 (someone else's write before ours)
        // and v7 (our own).
        assert!(m.apply(cm("b", "5", "watch")).is_some());
        assert!(m.apply(cm("b", "7", "mine")).is_some());
        assert_eq!(m.apply(cm("b", "6", "stale")), None);
        assert_eq!(m.apply(cm("b", "7", "mine-again")), None);
        assert_eq!(data(&m, "b").as_deref(), Some("mine"));
        // A newer event is taken.
        match m.apply(cm("b", "8", "theirs")) {
            Some(Change::Upsert {
                old: Some(old),
                new,
            }) => {
                assert_eq!(old.metadata.resource_version.as_deref(), Some("7"));
                assert_eq!(new.metadata.resource_version.as_deref(), Some("8"));
            }
            other => panic!("{other:?}"),
        }
        // Opaque versions: the event is taken.
        assert!(m.apply(cm("b", "x1", "opaque")).is_some());
        assert_eq!(data(&m, "b").as_deref(), Some("opaque"));
    }

    #[test]
    fn deletes_and_404s_respect_newer_versions() {
        let mut m = VersionedMap::default();
        m.apply(cm("b", "9", "recreated"));
        // A lagging delete of the previous incarnation (rv 8) is ignored.
        assert_eq!(m.delete(&cm("b", "8", "")), None);
        assert!(m.get("b").is_some());
        // The delete of this incarnation (same or newer rv) applies.
        assert!(matches!(
            m.delete(&cm("b", "9", "")),
            Some(Change::Removed(_))
        ));
        assert!(m.get("b").is_none());
        assert_eq!(m.delete(&cm("b", "9", "")), None, "nothing held");
        // 404 for a write built on rv 9 while rv 10 is held: keep rv 10.
        m.apply(cm("c", "10", ""));
        assert_eq!(m.forget("c", Some("9")), None);
        assert!(m.forget("c", Some("10")).is_some());
        m.apply(cm("d", "3", ""));
        assert!(m.forget("d", None).is_some());
    }

    #[test]
    fn relists_merge_by_version_and_keep_writes_made_during_the_list() {
        let mut m = VersionedMap::default();
        m.apply(cm("kept", "5", "old"));
        m.apply(cm("deleted-while-away", "3", ""));
        m.apply(cm("newer-than-list", "20", "mine"));
        m.begin_relist();
        // A write-through lands while the list is in flight.
        m.apply(cm("written-during-list", "30", "mine"));
        m.relist_item(cm("kept", "6", "new"));
        m.relist_item(cm("newer-than-list", "19", "list"));
        m.relist_item(cm("appeared", "7", ""));
        let changes = m.end_relist();
        assert!(changes.iter().any(
            |c| matches!(c, Change::Removed(o) if o.metadata.name.as_deref() == Some("deleted-while-away"))
        ));
        assert_eq!(data(&m, "kept").as_deref(), Some("new"));
        assert_eq!(data(&m, "newer-than-list").as_deref(), Some("mine"));
        assert!(m.get("written-during-list").is_some());
        assert!(m.get("appeared").is_some());
        assert!(m.get("deleted-while-away").is_none());
        assert_eq!(m.end_relist(), vec![], "InitDone without Init is a no-op");
    }
}
