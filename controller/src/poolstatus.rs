//! IPPool conditions and the Events that announce their transitions.
//!
//! Pure decisions only: which pools overlap another pool
//! ([`find_conflicts`]), the `Exhausted` and `Valid` conditions a pool
//! should carry ([`desired_conditions`]), how they merge with the stored
//! ones so that `lastTransitionTime` changes only when a status flips
//! ([`merge_conditions`]), which transitions deserve a Warning Event
//! ([`transitions`]), and the Event object announcing one
//! ([`warning_event`]). Writing the conditions (in the same `/status` patch
//! as the usage) and publishing the Events is done by
//! [`crate::usage::UsageReconciler`]; nothing here talks to the API server
//! or reads a clock (the times are passed in, from the injected
//! [`crate::clock::WallClock`]).

use std::collections::BTreeMap;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use spur_core::ippool::{IPPool, PoolLayout, PoolUsage};

/// Condition type: True when every allocatable address is allocated.
pub const EXHAUSTED: &str = "Exhausted";
/// Condition type: True when the spec is valid and no range overlaps a
/// range of another pool.
pub const VALID: &str = "Valid";
/// Reason of `Exhausted=True`.
pub const REASON_NO_FREE: &str = "NoFreeAddresses";
/// Reason of `Exhausted=False`.
pub const REASON_FREE: &str = "FreeAddresses";
/// Reason of `Valid=False` when a range overlaps another pool's.
pub const REASON_CONFLICT: &str = "Conflict";
/// Reason of `Valid=False` when the spec itself is invalid.
pub const REASON_INVALID: &str = "InvalidSpec";
/// Reason of `Valid=True`.
pub const REASON_VALID: &str = "Valid";
/// Event reason when a pool becomes exhausted.
pub const EVENT_EXHAUSTED: &str = "PoolExhausted";
/// Event reason when a pool starts overlapping another pool.
pub const EVENT_CONFLICT: &str = "PoolConflict";
/// `reportingController` of Spur's Events.
pub const REPORTING_CONTROLLER: &str = "spur.dev/spur-controller";
/// `action` of Spur's Events.
pub const EVENT_ACTION: &str = "Reconcile";
/// Namespace the Events regarding (cluster-scoped) IPPools are created in.
pub const EVENT_NAMESPACE: &str = "default";

/// Why a pool is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolProblem {
    /// The spec alone is invalid (the message says why).
    Invalid(String),
    /// A range overlaps a range of `other` (the message names both).
    Conflict {
        /// The other pool.
        other: String,
        /// What overlaps what.
        message: String,
    },
}

/// The problem of every pool that has one, by pool name. Overlaps are found
/// with spur-core's cross-pool check, so both pools of an overlapping pair
/// get a [`PoolProblem::Conflict`] naming the other.
pub fn find_conflicts<'a>(
    pools: impl IntoIterator<Item = &'a IPPool>,
) -> BTreeMap<String, PoolProblem> {
    let mut layouts = Vec::new();
    let mut problems = BTreeMap::new();
    for p in pools {
        match PoolLayout::from_pool(p) {
            Ok(l) => layouts.push(l),
            Err(e) => {
                problems.insert(p.name_any(), PoolProblem::Invalid(e.to_string()));
            }
        }
    }
    for mine in &layouts {
        for other in &layouts {
            if other.name == mine.name {
                continue;
            }
            if let Err(e) = mine.check_no_overlap([other]) {
                problems.insert(
                    mine.name.clone(),
                    PoolProblem::Conflict {
                        other: other.name.clone(),
                        message: e.to_string(),
                    },
                );
                break;
            }
        }
    }
    problems
}

fn condition(type_: &str, status: bool, reason: &str, message: String, now: &Time) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: now.clone(),
        observed_generation: None,
    }
}

/// The `Exhausted` and `Valid` conditions of a pool with `usage` and
/// `problem`, stamped `now` (see [`merge_conditions`] for when the stamp is
/// kept).
pub fn desired_conditions(
    usage: PoolUsage,
    problem: Option<&PoolProblem>,
    now: &Time,
) -> Vec<Condition> {
    let exhausted = if usage.used >= usage.total {
        condition(
            EXHAUSTED,
            true,
            REASON_NO_FREE,
            format!(
                "all {} allocatable addresses are allocated ({} used)",
                usage.total, usage.used
            ),
            now,
        )
    } else {
        condition(
            EXHAUSTED,
            false,
            REASON_FREE,
            format!("{} of {} addresses are allocated", usage.used, usage.total),
            now,
        )
    };
    let valid = match problem {
        None => condition(
            VALID,
            true,
            REASON_VALID,
            "the spec is valid and no range overlaps another pool".into(),
            now,
        ),
        Some(PoolProblem::Invalid(m)) => condition(VALID, false, REASON_INVALID, m.clone(), now),
        Some(PoolProblem::Conflict { message, .. }) => {
            condition(VALID, false, REASON_CONFLICT, message.clone(), now)
        }
    };
    vec![exhausted, valid]
}

/// `desired` merged over `stored`: a desired condition whose status equals
/// the stored one keeps the stored `lastTransitionTime`; conditions of other
/// types that are stored (written by someone else) are kept, after ours.
pub fn merge_conditions(stored: &[Condition], desired: Vec<Condition>) -> Vec<Condition> {
    let mut out: Vec<Condition> = desired
        .into_iter()
        .map(|mut c| {
            if let Some(old) = stored.iter().find(|o| o.type_ == c.type_) {
                if old.status == c.status {
                    c.last_transition_time = old.last_transition_time.clone();
                }
            }
            c
        })
        .collect();
    for old in stored {
        if !out.iter().any(|c| c.type_ == old.type_) {
            out.push(old.clone());
        }
    }
    out
}

/// A Warning Event to publish for a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Event reason ([`EVENT_EXHAUSTED`] or [`EVENT_CONFLICT`]).
    pub reason: &'static str,
    /// Event note.
    pub note: String,
}

fn status_of<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// The Warning Events due when a pool's conditions go from `before` to
/// `after`: [`EVENT_EXHAUSTED`] when `Exhausted` becomes True, and
/// [`EVENT_CONFLICT`] when `Valid` becomes False for a conflict (or its
/// conflict message changes, e.g. another pool now overlaps).
pub fn transitions(before: &[Condition], after: &[Condition]) -> Vec<Transition> {
    let mut out = Vec::new();
    if let Some(now) = status_of(after, EXHAUSTED) {
        let was = status_of(before, EXHAUSTED).is_some_and(|c| c.status == "True");
        if now.status == "True" && !was {
            out.push(Transition {
                reason: EVENT_EXHAUSTED,
                note: now.message.clone(),
            });
        }
    }
    if let Some(now) = status_of(after, VALID) {
        let was = status_of(before, VALID).is_some_and(|c| {
            c.status == "False" && c.reason == REASON_CONFLICT && c.message == now.message
        });
        if now.status == "False" && now.reason == REASON_CONFLICT && !was {
            out.push(Transition {
                reason: EVENT_CONFLICT,
                note: now.message.clone(),
            });
        }
    }
    out
}

/// The `events.k8s.io/v1` Warning Event announcing `t` for `pool` at
/// `now`, as kube-runtime's recorder builds it: named
/// `<pool>.<nanoseconds since the epoch, hex>` (`stamp` gives those
/// nanoseconds, so a caller can keep names unique when its clock stands
/// still), in [`EVENT_NAMESPACE`], reported by [`REPORTING_CONTROLLER`].
pub fn warning_event(pool: &IPPool, t: &Transition, now: Timestamp, stamp: i128) -> Event {
    Event {
        action: Some(EVENT_ACTION.into()),
        reason: Some(t.reason.into()),
        note: Some(t.note.clone()),
        event_time: Some(MicroTime(now)),
        regarding: Some(pool.object_ref(&())),
        metadata: ObjectMeta {
            namespace: Some(EVENT_NAMESPACE.into()),
            name: Some(format!("{}.{stamp:x}", pool.name_any())),
            ..ObjectMeta::default()
        },
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(REPORTING_CONTROLLER.into()),
        type_: Some("Warning".into()),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use spur_core::ippool::{IPPoolSpec, IpRange, SubnetInfo};

    fn pool(name: &str, cidr: &str, gw: &str) -> IPPool {
        IPPool::new(
            name,
            IPPoolSpec {
                ip_ranges: vec![IpRange::cidr(cidr)],
                subnet_info: SubnetInfo {
                    gateway: gw.into(),
                    prefix_length: 24,
                    vlan: None,
                },
                exclude: vec![],
            },
        )
    }

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn warning_events_carry_the_given_time() {
        let p = pool("a", "10.10.1.0/24", "10.10.1.1");
        let t = Transition {
            reason: EVENT_EXHAUSTED,
            note: "full".into(),
        };
        let at = Timestamp::from_second(1_767_225_600).unwrap();
        let ev = warning_event(&p, &t, at, at.as_nanosecond());
        assert_eq!(ev.event_time, Some(MicroTime(at)));
        assert_eq!(
            ev.metadata.name.as_deref(),
            Some(format!("a.{:x}", at.as_nanosecond()).as_str())
        );
        assert_eq!(ev.reason.as_deref(), Some(EVENT_EXHAUSTED));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.regarding.and_then(|r| r.name).as_deref(), Some("a"));
    }

    #[test]
    fn overlapping_pools_name_each_other() {
        let pools = [
            pool("a", "10.10.1.0/24", "10.10.1.1"),
            pool("b", "10.10.1.0/26", "10.10.1.1"),
            pool("c", "10.10.2.0/24", "10.10.2.1"),
            pool("bad", "10.10.3.0/24", "nope"),
        ];
        let p = find_conflicts(&pools);
        assert_eq!(p.len(), 3, "{p:?}");
        match &p["a"] {
            PoolProblem::Conflict { other, message } => {
                assert_eq!(other, "b");
                assert!(message.contains("IPPool b"), "{message}");
            }
            x => panic!("{x:?}"),
        }
        assert!(matches!(&p["b"], PoolProblem::Conflict { other, .. } if other == "a"));
        assert!(matches!(&p["bad"], PoolProblem::Invalid(m) if m.contains("nope")));
        assert!(!p.contains_key("c"));
    }

    #[test]
    fn exhausted_when_used_reaches_total() {
        let c = desired_conditions(PoolUsage { total: 5, used: 5 }, None, &t(1));
        assert_eq!(c[0].type_, EXHAUSTED);
        assert_eq!(c[0].status, "True");
        assert_eq!(c[0].reason, REASON_NO_FREE);
        assert_eq!(c[1].status, "True");
        let c = desired_conditions(PoolUsage { total: 5, used: 4 }, None, &t(1));
        assert_eq!(c[0].status, "False");
    }

    #[test]
    fn transition_time_changes_only_when_status_flips() {
        let full = PoolUsage { total: 2, used: 2 };
        let first = merge_conditions(&[], desired_conditions(full, None, &t(10)));
        let again = merge_conditions(&first, desired_conditions(full, None, &t(20)));
        assert_eq!(first, again, "nothing changed: same conditions, same times");
        let freed = merge_conditions(
            &again,
            desired_conditions(PoolUsage { total: 2, used: 1 }, None, &t(30)),
        );
        assert_eq!(freed[0].last_transition_time, t(30));
        assert_eq!(freed[1].last_transition_time, t(10), "Valid did not flip");
    }

    #[test]
    fn foreign_conditions_are_kept() {
        let mut other = desired_conditions(PoolUsage::default(), None, &t(1)).remove(0);
        other.type_ = "Custom".into();
        let out = merge_conditions(
            std::slice::from_ref(&other),
            desired_conditions(PoolUsage { total: 3, used: 0 }, None, &t(2)),
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], other);
    }

    #[test]
    fn events_fire_once_per_transition() {
        let full = merge_conditions(
            &[],
            desired_conditions(PoolUsage { total: 2, used: 2 }, None, &t(1)),
        );
        let ev = transitions(&[], &full);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].reason, EVENT_EXHAUSTED);
        assert!(transitions(&full, &full).is_empty());

        let conflict = PoolProblem::Conflict {
            other: "b".into(),
            message: "overlaps b".into(),
        };
        let c = desired_conditions(PoolUsage { total: 2, used: 0 }, Some(&conflict), &t(2));
        let ev = transitions(&full, &c);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].reason, EVENT_CONFLICT);
        assert_eq!(ev[0].note, "overlaps b");
        assert!(transitions(&c, &c).is_empty());
        let invalid = PoolProblem::Invalid("bad".into());
        let c2 = desired_conditions(PoolUsage { total: 2, used: 0 }, Some(&invalid), &t(3));
        assert!(
            transitions(&full, &c2).is_empty(),
            "an invalid spec is no conflict"
        );
    }
}
