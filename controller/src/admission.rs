//! Admission rules: which IPPools and NetworkAttachmentDefinitions the API
//! must refuse, as a cluster with Spur installed refuses them.
//!
//! What lives here:
//!
//! - the pure decisions, independent of any API server:
//!   [`validate_ippool`] (a pool alone, against the other pools, and the
//!   in-use rules of updates and deletes, with the addresses in use counted
//!   from the pool's IPAMBlocks) and [`validate_nad`] /
//!   [`validate_nad_update`] (a NAD's `spec.config`, and the
//!   `k8s.v1.cni.cncf.io/resourceName` annotation of `sriov` networks).
//!   Every refusal is a [`spur_core::error::Invalid`] naming the object,
//!   the key and the value; the rules themselves are spur-core's
//!   ([`PoolLayout`], [`validate_update`], [`validate_delete`],
//!   [`classify`], [`check_resource_name`]);
//! - [`hooks`]: the same rules as validating hooks over plain JSON objects
//!   ([`Hook`], [`Request`], [`ObjectLister`]), for whoever serves
//!   admission: the controller's webhook (later) or an embedded API server.
//!   An embedder adapts its own request type to [`Request`], its store to
//!   [`ObjectLister`] (any `Fn(&str, &str) -> Vec<Value>` is one), and a
//!   refusal to its own: a webhook answers it like one that sets no status
//!   code, HTTP 400 with the message [`Invalid`]'s `Display` gives. With
//!   `spur-kubeapi` that is:
//!
//! ```ignore
//! // `admission: &mut spur_kubeapi::Admission`, e.g. `server.store().admission_mut()`.
//! for hook in spur_controller::admission::hooks() {
//!     let check = hook.check;
//!     admission.add_validator(&hook.name, &hook.group, &hook.plural, Box::new(move |req, obj, store| {
//!         let request = Request {
//!             operation: match req.operation {
//!                 spur_kubeapi::Operation::Create => Operation::Create,
//!                 spur_kubeapi::Operation::Update => Operation::Update,
//!                 spur_kubeapi::Operation::Delete => Operation::Delete,
//!             },
//!             subresource: req.subresource,
//!             namespace: req.namespace,
//!             name: req.name,
//!             object: obj,
//!             old_object: req.old_object,
//!         };
//!         let list = |group: &str, plural: &str| -> Vec<serde_json::Value> {
//!             store.objects_of(group, plural).into_iter().cloned().collect()
//!         };
//!         check(&request, &list).map_err(|e| spur_kubeapi::Denial::new(e.to_string()))
//!     }));
//! }
//! ```
//!
//! What does not: serving HTTPS, AdmissionReview decoding and the
//! ValidatingWebhookConfiguration (the controller binary, later); whether
//! the IPPools a NAD names exist (pools may be created after the NAD; the
//! agent reports a missing pool at ADD); the CRDs' schema checks (the API
//! server does those).

use serde::de::DeserializeOwned;
use serde_json::Value;
use spur_core::error::{Invalid, Subject};
use spur_core::ipamblock::IPAMBlock;
use spur_core::ippool::{validate_delete, validate_update, IPPool, PoolLayout, GROUP};
use spur_core::nad::{check_resource_name, classify, NetworkKind, RESOURCE_NAME_ANNOTATION};

use crate::usage::compute_usage;

/// Name of the hook validating IPPools (the webhook's name in refusals:
/// `admission webhook "ippools.spur.dev" denied the request: ...`).
pub const IPPOOL_HOOK: &str = "ippools.spur.dev";
/// Name of the hook validating NetworkAttachmentDefinitions.
pub const NAD_HOOK: &str = "network-attachment-definitions.spur.dev";
/// Plural of IPPools (group [`GROUP`]).
pub const IPPOOL_PLURAL: &str = "ippools";
/// Plural of IPAMBlocks (group [`GROUP`]).
pub const IPAMBLOCK_PLURAL: &str = "ipamblocks";
/// API group of NetworkAttachmentDefinitions.
pub const NAD_GROUP: &str = "k8s.cni.cncf.io";
/// Plural of NetworkAttachmentDefinitions.
pub const NAD_PLURAL: &str = "network-attachment-definitions";
/// Kind of NetworkAttachmentDefinitions, as errors name them.
const NAD_KIND: &str = "NetworkAttachmentDefinition";

// ---------------------------------------------------------------------------
// IPPools
// ---------------------------------------------------------------------------

/// A change of an IPPool to validate.
#[derive(Debug, Clone, Copy)]
pub enum PoolChange<'a> {
    /// A new pool.
    Create(&'a IPPool),
    /// A change of the spec (or of anything but the status) of a pool.
    Update {
        /// The stored pool.
        old: &'a IPPool,
        /// The pool as it would be stored.
        new: &'a IPPool,
    },
    /// The deletion of a stored pool.
    Delete(&'a IPPool),
}

/// Validates a change of an IPPool.
///
/// - Create: the pool is valid alone and none of its ranges overlaps a
///   range of another pool in `others` (the message names the other pool
///   and both ranges). Pools of `others` that are invalid themselves, and
///   the pool's own name, are left out.
/// - Update: when the spec is unchanged, nothing is checked (a pool stored
///   before a rule existed can still get labels or lose finalizers).
///   Otherwise as Create, and while addresses are in use (counted from the
///   pool's IPAMBlocks in `blocks`) the gateway, the prefix length and the
///   existing ranges cannot change; ranges may be added.
/// - Delete: refused while addresses are in use.
pub fn validate_ippool(
    change: PoolChange<'_>,
    others: &[IPPool],
    blocks: &[IPAMBlock],
) -> Result<(), Invalid> {
    let layout = match change {
        PoolChange::Create(pool) => PoolLayout::from_pool(pool)?,
        PoolChange::Update { old, new } => {
            if old.spec == new.spec {
                return Ok(());
            }
            let in_use = addresses_in_use(old, blocks) > 0;
            validate_update(&pool_name(new), &old.spec, &new.spec, in_use)?
        }
        PoolChange::Delete(pool) => {
            return validate_delete(&pool_name(pool), addresses_in_use(pool, blocks));
        }
    };
    let other_layouts: Vec<PoolLayout> = others
        .iter()
        .filter(|o| pool_name(o) != layout.name)
        .filter_map(|o| PoolLayout::from_pool(o).ok())
        .collect();
    layout.check_no_overlap(&other_layouts)
}

/// How many addresses of `pool` the IPAMBlocks in `blocks` hold (the
/// `status.usage.used` the controller writes).
pub fn addresses_in_use(pool: &IPPool, blocks: &[IPAMBlock]) -> u128 {
    let name = pool_name(pool);
    let used = compute_usage([pool], blocks.iter().filter(|b| b.spec.pool == name))
        .get(&name)
        .map_or(0, |u| u.used);
    u128::try_from(used).unwrap_or(0)
}

fn pool_name(pool: &IPPool) -> String {
    pool.metadata.name.clone().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// NetworkAttachmentDefinitions
// ---------------------------------------------------------------------------

/// Validates a NetworkAttachmentDefinition (a JSON object as the API
/// stores it).
///
/// - `spec.config`, when present and not empty, must be a string holding a
///   JSON CNI config (a config of any plugin, or a conflist); absent or
///   empty, Multus reads the config from a file and nothing is checked.
/// - A Spur network (`type: spur`) must parse as one; another plugin whose
///   `ipam.type` is `spur` must have a Spur IPAM section that parses. The
///   IPPools they name need not exist yet.
/// - A Spur `sriov` network needs the annotation
///   `k8s.v1.cni.cncf.io/resourceName`.
/// - The config of other plugins is not looked into.
pub fn validate_nad(obj: &Value) -> Result<(), Invalid> {
    let subject = nad_subject(obj);
    let config = match obj.pointer("/spec/config") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(subject.invalid(
                "spec.config",
                other,
                "must be a string holding the CNI config as JSON",
            ))
        }
    };
    match classify(config, &subject)? {
        NetworkKind::Spur(network) => check_resource_name(&network, resource_name(obj), &subject),
        NetworkKind::SpurIpam(_) | NetworkKind::Other => Ok(()),
    }
}

/// Validates an update of a NetworkAttachmentDefinition: as
/// [`validate_nad`] on `new`, unless neither `spec` nor the
/// `k8s.v1.cni.cncf.io/resourceName` annotation changed (then a NAD stored
/// before a rule existed can still get labels or lose finalizers).
pub fn validate_nad_update(old: &Value, new: &Value) -> Result<(), Invalid> {
    if old.get("spec") == new.get("spec") && resource_name(old) == resource_name(new) {
        return Ok(());
    }
    validate_nad(new)
}

fn nad_subject(obj: &Value) -> Subject {
    let text = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or_default();
    Subject::new(
        NAD_KIND,
        Some(text("/metadata/namespace")),
        text("/metadata/name"),
    )
}

/// The `k8s.v1.cni.cncf.io/resourceName` annotation of a NAD.
fn resource_name(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations")?
        .get(RESOURCE_NAME_ANNOTATION)?
        .as_str()
}

// ---------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------

/// What an admission request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Create.
    Create,
    /// Update or patch.
    Update,
    /// Delete.
    Delete,
}

/// An admission request, as a webhook's AdmissionReview or an embedded
/// server describes it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The operation.
    pub operation: Operation,
    /// The subresource written (`status`), `None` for the object itself.
    pub subresource: Option<&'a str>,
    /// Namespace of the object ("" for cluster-scoped objects).
    pub namespace: &'a str,
    /// Name of the object.
    pub name: &'a str,
    /// The object as it would be stored (create, update).
    pub object: Option<&'a Value>,
    /// The stored object (update, delete).
    pub old_object: Option<&'a Value>,
}

/// Read access to the stored objects a hook checks against (other pools,
/// blocks). Any `Fn(&str, &str) -> Vec<Value>` is one.
pub trait ObjectLister {
    /// Every stored object of a resource (`group`, `plural`), any namespace.
    fn list(&self, group: &str, plural: &str) -> Vec<Value>;
}

impl<F> ObjectLister for F
where
    F: Fn(&str, &str) -> Vec<Value>,
{
    fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        self(group, plural)
    }
}

/// A validating function: `Err` refuses the request with the error's
/// message.
pub type CheckFn =
    Box<dyn Fn(&Request<'_>, &dyn ObjectLister) -> Result<(), Invalid> + Send + Sync>;

/// A validating hook for one resource.
pub struct Hook {
    /// The hook's name (a webhook's name: refusals quote it).
    pub name: String,
    /// API group of the resource.
    pub group: String,
    /// Plural of the resource.
    pub plural: String,
    /// The check.
    pub check: CheckFn,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("name", &self.name)
            .field("group", &self.group)
            .field("plural", &self.plural)
            .finish_non_exhaustive()
    }
}

/// Spur's validating hooks: [`IPPOOL_HOOK`] on `spur.dev` `ippools`
/// ([`check_ippool`]) and [`NAD_HOOK`] on `k8s.cni.cncf.io`
/// `network-attachment-definitions` ([`check_nad`]).
pub fn hooks() -> Vec<Hook> {
    vec![
        Hook {
            name: IPPOOL_HOOK.into(),
            group: GROUP.into(),
            plural: IPPOOL_PLURAL.into(),
            check: Box::new(check_ippool),
        },
        Hook {
            name: NAD_HOOK.into(),
            group: NAD_GROUP.into(),
            plural: NAD_PLURAL.into(),
            check: Box::new(check_nad),
        },
    ]
}

/// The IPPool hook: decodes the request's objects, lists the other pools
/// (create, update) or the blocks (update, delete) and calls
/// [`validate_ippool`]. Status updates are not checked. A stored object
/// that does not decode as an IPPool is treated as absent (nothing can
/// have been allocated from it).
pub fn check_ippool(req: &Request<'_>, lister: &dyn ObjectLister) -> Result<(), Invalid> {
    if req.subresource.is_some() {
        return Ok(());
    }
    let subject = Subject::new("IPPool", None, req.name);
    let old = req.old_object.and_then(|v| stored_pool(req.name, v));
    let new = match (req.operation, req.object) {
        (Operation::Delete, _) => None,
        (_, Some(v)) => Some(
            serde_json::from_value::<IPPool>(v.clone())
                .map_err(|e| subject.decode("", &plain(&e.to_string())))?,
        ),
        (_, None) => return Err(subject.missing("object")),
    };
    let change = match (req.operation, &new, &old) {
        (Operation::Delete, _, Some(old)) => PoolChange::Delete(old),
        (Operation::Delete, _, None) => return Ok(()),
        (Operation::Update, Some(new), Some(old)) => PoolChange::Update { old, new },
        (_, Some(new), _) => PoolChange::Create(new),
        (_, None, _) => return Err(subject.missing("object")),
    };
    let others = match change {
        PoolChange::Delete(_) => Vec::new(),
        _ => decode_all::<IPPool>(lister.list(GROUP, IPPOOL_PLURAL)),
    };
    let needs_blocks = match change {
        PoolChange::Delete(_) => true,
        PoolChange::Update { old, new } => old.spec != new.spec,
        PoolChange::Create(_) => false,
    };
    let blocks = if needs_blocks {
        decode_all::<IPAMBlock>(lister.list(GROUP, IPAMBLOCK_PLURAL))
    } else {
        Vec::new()
    };
    validate_ippool(change, &others, &blocks)
}

/// The NAD hook: [`validate_nad`] on create, [`validate_nad_update`] on
/// update; deletes are not checked.
pub fn check_nad(req: &Request<'_>, _lister: &dyn ObjectLister) -> Result<(), Invalid> {
    if req.subresource.is_some() {
        return Ok(());
    }
    let subject = || Subject::new(NAD_KIND, Some(req.namespace), req.name);
    match (req.operation, req.object, req.old_object) {
        (Operation::Delete, _, _) => Ok(()),
        (Operation::Update, Some(new), Some(old)) => validate_nad_update(old, new),
        (_, Some(new), _) => validate_nad(new),
        (_, None, _) => Err(subject().missing("object")),
    }
}

fn stored_pool(name: &str, v: &Value) -> Option<IPPool> {
    serde_json::from_value::<IPPool>(v.clone())
        .map_err(|e| tracing::warn!(pool = name, error = %e, "stored IPPool does not decode"))
        .ok()
}

/// Decodes every object of a list; those that do not decode are left out
/// (and logged): they cannot be pools or blocks anyone allocates from.
fn decode_all<T: DeserializeOwned>(objects: Vec<Value>) -> Vec<T> {
    objects
        .into_iter()
        .filter_map(|v| {
            let name = v
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            serde_json::from_value::<T>(v)
                .map_err(
                    |e| tracing::warn!(object = name, error = %e, "stored object does not decode"),
                )
                .ok()
        })
        .collect()
}

/// serde's message in the shapes users write.
fn plain(msg: &str) -> String {
    spur_core::error::plain_serde_message(msg)
}

/// Registers Spur's hooks in the admission chain of the embedded API server
/// (`spur-kubeapi`), so a lab or the simulator refuses what a cluster with
/// Spur's webhook refuses, through the same rules. Feature `embedded`.
#[cfg(feature = "embedded")]
pub fn install_embedded(admission: &mut spur_kubeapi::Admission) {
    for hook in hooks() {
        let check = hook.check;
        admission.add_validator(
            &hook.name,
            &hook.group,
            &hook.plural,
            Box::new(move |req, obj, store| {
                let request = Request {
                    operation: match req.operation {
                        spur_kubeapi::Operation::Create => Operation::Create,
                        spur_kubeapi::Operation::Update => Operation::Update,
                        spur_kubeapi::Operation::Delete => Operation::Delete,
                    },
                    subresource: req.subresource,
                    namespace: req.namespace,
                    name: req.name,
                    object: obj,
                    old_object: req.old_object,
                };
                let list = |group: &str, plural: &str| -> Vec<Value> {
                    store
                        .objects_of(group, plural)
                        .into_iter()
                        .cloned()
                        .collect()
                };
                check(&request, &list).map_err(|e| spur_kubeapi::Denial::new(e.to_string()))
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

    use super::*;
    use serde_json::json;
    use spur_core::error::Kind;
    use spur_core::ipamblock::{BlockAllocation, IPAMBlockSpec, Owner};
    use spur_core::ippool::{IPPoolSpec, IpRange, SubnetInfo};

    fn pool(name: &str, ranges: &[&str], gw: &str, prefix: u8) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                ip_ranges: ranges
                    .iter()
                    .map(|r| match r.split_once('-') {
                        Some((a, b)) => IpRange::start_end(a, b),
                        None => IpRange::cidr(*r),
                    })
                    .collect(),
                subnet_info: SubnetInfo {
                    gateway: gw.into(),
                    prefix_length: prefix,
                    vlan: Some(100),
                },
                exclude: vec![],
            },
        )
    }

    fn v100() -> IPPool {
        pool("vlan100-ipv4", &["10.10.1.0/26"], "10.10.1.1", 24)
    }

    fn block(pool: &str, cidr: &str, offsets: &[u8]) -> IPAMBlock {
        IPAMBlock::new(
            &format!("{pool}-{}", offsets.len()),
            IPAMBlockSpec {
                pool: pool.into(),
                cidr: cidr.into(),
                node: "node-a".into(),
                allocations: offsets
                    .iter()
                    .map(|&o| BlockAllocation {
                        offset: o,
                        owner: Owner::pod("default", &format!("web-{o}"), "c1", "eth1"),
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn create_refuses_an_overlap_naming_the_other_pool() {
        let bad = pool("overlapping-pool", &["10.10.1.32/27"], "10.10.1.1", 24);
        let e = validate_ippool(PoolChange::Create(&bad), &[v100()], &[]).unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        assert_eq!(
            e.to_string(),
            "IPPool overlapping-pool: spec.ipRanges[0].cidr = \"10.10.1.32/27\": overlaps \
             10.10.1.0/26 (spec.ipRanges[0].cidr) of IPPool vlan100-ipv4"
        );
        let next_door = pool("next-door", &["10.10.1.64/26"], "10.10.1.1", 24);
        assert_eq!(
            validate_ippool(PoolChange::Create(&next_door), &[v100()], &[]),
            Ok(())
        );
    }

    #[test]
    fn create_ignores_itself_other_families_and_invalid_pools() {
        let v6 = pool("v6", &["fd00::/120"], "fd00::1", 64);
        // Invalid alone (gateway outside), but its range overlaps: it is
        // left out, since it hands out nothing.
        let broken = pool("broken", &["10.10.1.0/24"], "10.99.0.1", 24);
        let same_name = pool("vlan100-ipv4", &["10.10.1.0/24"], "10.10.1.1", 24);
        assert_eq!(
            validate_ippool(PoolChange::Create(&v100()), &[v6, broken, same_name], &[]),
            Ok(())
        );
    }

    #[test]
    fn create_refuses_a_pool_invalid_alone() {
        let p = pool("p", &["10.10.2.0/26"], "10.10.1.1", 24);
        let e = validate_ippool(PoolChange::Create(&p), &[], &[]).unwrap_err();
        assert_eq!(e.kind, Kind::Invalid);
        assert!(
            e.to_string().starts_with("IPPool p: spec.ipRanges[0]"),
            "{e}"
        );
        let mut vlan = v100();
        vlan.spec.subnet_info.vlan = Some(5000);
        let e = validate_ippool(PoolChange::Create(&vlan), &[], &[]).unwrap_err();
        assert_eq!(e.key, "spec.subnetInfo.vlan");
    }

    #[test]
    fn update_keeps_ranges_in_use() {
        let old = v100();
        let mut shrunk = old.clone();
        shrunk.spec.ip_ranges[0] = IpRange::cidr("10.10.1.0/27");
        let mut grown = old.clone();
        grown
            .spec
            .ip_ranges
            .push(IpRange::start_end("10.10.1.100", "10.10.1.120"));
        let used = [block("vlan100-ipv4", "10.10.1.0/26", &[2, 3])];
        let empty = [block("vlan100-ipv4", "10.10.1.0/26", &[])];
        let others_use = [block("vlan200-ipv4", "10.10.1.0/26", &[2, 3])];
        let update = |new| PoolChange::Update { old: &old, new };

        let e = validate_ippool(update(&shrunk), &[], &used).unwrap_err();
        assert_eq!(e.kind, Kind::InUse);
        assert!(e.to_string().contains("10.10.1.0/26"), "{e}");
        assert_eq!(validate_ippool(update(&shrunk), &[], &empty), Ok(()));
        assert_eq!(validate_ippool(update(&shrunk), &[], &others_use), Ok(()));
        assert_eq!(validate_ippool(update(&grown), &[], &used), Ok(()));
        let mut gateway = old.clone();
        gateway.spec.subnet_info.gateway = "10.10.1.254".into();
        let e = validate_ippool(update(&gateway), &[], &used).unwrap_err();
        assert_eq!(e.key, "spec.subnetInfo.gateway");
    }

    #[test]
    fn update_checks_overlaps_of_the_new_spec() {
        let old = pool("b", &["10.10.2.0/26"], "10.10.2.1", 24);
        let mut new = old.clone();
        new.spec.ip_ranges = vec![IpRange::cidr("10.10.1.0/25")];
        new.spec.subnet_info.gateway = "10.10.1.1".into();
        let e = validate_ippool(
            PoolChange::Update {
                old: &old,
                new: &new,
            },
            &[v100(), old.clone()],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.kind, Kind::Conflict);
        assert!(e.reason.ends_with("of IPPool vlan100-ipv4"), "{e}");
    }

    #[test]
    fn update_without_spec_change_is_not_checked() {
        // A pool stored before the rules (overlapping, even invalid) can
        // still get a label or lose a finalizer.
        let old = pool("overlapping-pool", &["10.10.1.32/27"], "10.10.1.1", 24);
        let mut new = old.clone();
        new.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        assert_eq!(
            validate_ippool(
                PoolChange::Update {
                    old: &old,
                    new: &new
                },
                &[v100()],
                &[]
            ),
            Ok(())
        );
        let broken = pool("broken", &["10.10.2.0/26"], "10.10.1.1", 24);
        assert_eq!(
            validate_ippool(
                PoolChange::Update {
                    old: &broken,
                    new: &broken
                },
                &[],
                &[]
            ),
            Ok(())
        );
    }

    #[test]
    fn delete_is_refused_while_addresses_are_in_use() {
        let p = v100();
        let blocks = [
            block("vlan100-ipv4", "10.10.1.0/26", &[2, 3, 3]),
            block("vlan100-ipv4", "10.10.1.64/26", &[]),
            block("other", "10.10.9.0/26", &[5]),
        ];
        assert_eq!(addresses_in_use(&p, &blocks), 2, "offsets count once");
        let e = validate_ippool(PoolChange::Delete(&p), &[], &blocks).unwrap_err();
        assert_eq!(e.kind, Kind::InUse);
        assert_eq!(
            e.to_string(),
            "IPPool vlan100-ipv4: cannot be deleted while 2 address(es) are allocated from it"
        );
        assert_eq!(
            validate_ippool(PoolChange::Delete(&p), &[], &blocks[1..]),
            Ok(())
        );
    }

    fn nad(config: Value, annotations: Value) -> Value {
        json!({
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "net", "namespace": "default", "annotations": annotations},
            "spec": {"config": config.to_string()}
        })
    }

    fn spur(extra: Value) -> Value {
        let mut base = json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 100,
                              "ipam": {"type": "spur", "ippools": ["not-created-yet"]}});
        if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
            b.extend(e);
        }
        base
    }

    #[test]
    fn spur_networks_must_parse() {
        assert_eq!(validate_nad(&nad(spur(json!({})), json!({}))), Ok(()));
        for (extra, key) in [
            (json!({"vlan": 5000}), "spec.config.vlan"),
            (json!({"networkType": "vxlan"}), "spec.config.networkType"),
            (json!({"mtu": 20}), "spec.config.mtu"),
            (
                json!({"ipam": {"type": "spur", "ippools": ["Bad_Name"]}}),
                "spec.config.ipam.ippools[0]",
            ),
        ] {
            let e = validate_nad(&nad(spur(extra.clone()), json!({}))).unwrap_err();
            assert_eq!(
                e.object, "NetworkAttachmentDefinition default/net",
                "{extra}"
            );
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    #[test]
    fn config_must_be_json_text() {
        let mut obj = nad(json!({}), json!({}));
        obj["spec"]["config"] = json!("{\"type\": \"spur\",");
        let e = validate_nad(&obj).unwrap_err();
        assert_eq!((e.kind, e.key.as_str()), (Kind::Decode, "spec.config"));
        obj["spec"]["config"] = json!({"type": "spur"});
        let e = validate_nad(&obj).unwrap_err();
        assert_eq!((e.kind, e.key.as_str()), (Kind::Invalid, "spec.config"));
        // No inline config: Multus reads it from a file.
        for empty in [json!(""), Value::Null] {
            obj["spec"]["config"] = empty;
            assert_eq!(validate_nad(&obj), Ok(()));
        }
        obj.as_object_mut().unwrap().remove("spec");
        assert_eq!(validate_nad(&obj), Ok(()));
    }

    #[test]
    fn sriov_networks_need_a_resource_name() {
        let sriov = json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "sriov"});
        let e = validate_nad(&nad(sriov.clone(), json!({}))).unwrap_err();
        assert_eq!(e.kind, Kind::Missing);
        assert!(e.key.contains(RESOURCE_NAME_ANNOTATION), "{e}");
        let named = json!({RESOURCE_NAME_ANNOTATION: "intel.com/sriov_net_A"});
        assert_eq!(validate_nad(&nad(sriov, named.clone())), Ok(()));
        // A vlan network does not need it.
        assert_eq!(validate_nad(&nad(spur(json!({})), json!({}))), Ok(()));
    }

    #[test]
    fn spur_ipam_under_other_plugins_must_parse() {
        let macvlan = |ipam: Value| json!({"cniVersion": "0.3.1", "type": "macvlan", "master": "eth1", "mode": "bridge", "ipam": ipam});
        let ok = macvlan(json!({"type": "spur", "ippools": ["ipv4-pool-1"]}));
        assert_eq!(validate_nad(&nad(ok, json!({}))), Ok(()));
        let bad = macvlan(json!({"type": "spur", "addresses": [{"address": "10.0.0.300/24"}]}));
        let e = validate_nad(&nad(bad, json!({}))).unwrap_err();
        assert_eq!(e.key, "spec.config.ipam.addresses[0].address");
        // Other IPAM plugins and other plugins' keys are not Spur's business.
        let other = macvlan(json!({"type": "host-local", "subnet": "whatever", "bogus": 1}));
        assert_eq!(validate_nad(&nad(other, json!({}))), Ok(()));
        let bridge = json!({"type": "bridge", "anything": {"goes": true}});
        assert_eq!(validate_nad(&nad(bridge, json!({}))), Ok(()));
    }

    #[test]
    fn nad_updates_are_checked_when_spec_or_resource_name_change() {
        let stored = nad(spur(json!({"vlan": 5000})), json!({}));
        let mut labelled = stored.clone();
        labelled["metadata"]["labels"] = json!({"a": "b"});
        assert_eq!(validate_nad_update(&stored, &labelled), Ok(()));
        let good = nad(spur(json!({})), json!({}));
        assert_eq!(validate_nad_update(&stored, &good), Ok(()));
        assert!(validate_nad_update(&good, &stored).is_err());

        let sriov = json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "sriov"});
        let named = nad(
            sriov.clone(),
            json!({RESOURCE_NAME_ANNOTATION: "intel.com/a"}),
        );
        let unnamed = nad(sriov, json!({}));
        assert!(validate_nad_update(&named, &unnamed).is_err());
    }

    fn request<'a>(
        operation: Operation,
        object: Option<&'a Value>,
        old_object: Option<&'a Value>,
    ) -> Request<'a> {
        Request {
            operation,
            subresource: None,
            namespace: "",
            name: "p",
            object,
            old_object,
        }
    }

    #[test]
    fn ippool_hook_decodes_lists_and_skips_status() {
        let stored = vec![serde_json::to_value(v100()).unwrap()];
        let blocks =
            vec![serde_json::to_value(block("vlan100-ipv4", "10.10.1.0/26", &[2])).unwrap()];
        let lister = move |group: &str, plural: &str| -> Vec<Value> {
            assert_eq!(group, GROUP);
            match plural {
                IPPOOL_PLURAL => stored.clone(),
                IPAMBLOCK_PLURAL => blocks.clone(),
                other => panic!("unexpected list of {other}"),
            }
        };
        let overlapping =
            serde_json::to_value(pool("p", &["10.10.1.32/27"], "10.10.1.1", 24)).unwrap();
        let e = check_ippool(
            &request(Operation::Create, Some(&overlapping), None),
            &lister,
        )
        .unwrap_err();
        assert!(e.reason.contains("vlan100-ipv4"), "{e}");

        let mut status = request(Operation::Update, Some(&overlapping), Some(&overlapping));
        status.subresource = Some("status");
        assert_eq!(check_ippool(&status, &lister), Ok(()));

        let old = serde_json::to_value(v100()).unwrap();
        let mut del = request(Operation::Delete, None, Some(&old));
        del.name = "vlan100-ipv4";
        let e = check_ippool(&del, &lister).unwrap_err();
        assert_eq!(e.kind, Kind::InUse);
        // A stored object that is no IPPool held no addresses.
        let junk = json!({"metadata": {"name": "p"}, "spec": {"ipRanges": "x"}});
        assert_eq!(
            check_ippool(&request(Operation::Delete, None, Some(&junk)), &lister),
            Ok(())
        );
        let e = check_ippool(&request(Operation::Create, Some(&junk), None), &lister).unwrap_err();
        assert_eq!(e.kind, Kind::Decode);
        assert!(
            e.to_string().starts_with("IPPool p: cannot be decoded"),
            "{e}"
        );
    }

    #[test]
    fn hooks_cover_ippools_and_nads() {
        let hs = hooks();
        let names: Vec<(&str, &str, &str)> = hs
            .iter()
            .map(|h| (h.name.as_str(), h.group.as_str(), h.plural.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (IPPOOL_HOOK, "spur.dev", "ippools"),
                (
                    NAD_HOOK,
                    "k8s.cni.cncf.io",
                    "network-attachment-definitions"
                )
            ]
        );
        let nothing = |_: &str, _: &str| -> Vec<Value> { Vec::new() };
        let bad = nad(spur(json!({"vlan": 5000})), json!({}));
        let req = Request {
            operation: Operation::Create,
            subresource: None,
            namespace: "default",
            name: "net",
            object: Some(&bad),
            old_object: None,
        };
        assert!((hs[1].check)(&req, &nothing).is_err());
        let del = Request {
            operation: Operation::Delete,
            object: None,
            old_object: Some(&bad),
            ..req
        };
        assert_eq!((hs[1].check)(&del, &nothing), Ok(()));
    }
}
