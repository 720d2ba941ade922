//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! What lives here: the pure decision ([`decide`]: given the Lease as read,
//! the time and who I am, what to do), the step-down rule
//! ([`must_step_down`]), and the thin loop ([`Elector`]) that reads the
//! Lease, writes it with optimistic concurrency (a PUT carrying the
//! `resourceVersion` it read; a 409 means another replica wrote first and
//! this one is not the leader), and publishes leadership on a
//! `tokio::sync::watch<bool>` ([`LeaderState`]).
//!
//! Safety argument: a leader steps down when it has not renewed for
//! [`ElectionConfig::renew_deadline`], which is shorter than the Lease
//! duration; another replica takes over only when `renewTime +
//! leaseDurationSeconds` is past. So (clock skew aside, which the gap
//! between the two absorbs) two replicas never both believe they lead.
//!
//! Time: the Lease's timestamps come from [`ElectionConfig::clock`] (the
//! system clock in production, simulated time in the simulator); renew
//! deadlines are measured on `tokio::time::Instant`.
//!
//! What does not live here: which loops run while leading
//! ([`crate::replica`] decides), metrics (see [`crate::metrics`]).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::{system_clock, SharedClock};

/// Who leads, as the rest of the process sees it: `true` while this replica
/// holds the Lease.
pub type LeaderState = watch::Receiver<bool>;

/// What to do with the Lease, as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it with me as holder.
    Create,
    /// The Lease is free (no holder) or expired: take it over, with
    /// `leaseTransitions` set to `transitions`.
    Acquire {
        /// The new `leaseTransitions`.
        transitions: i32,
    },
    /// I hold the Lease: renew it.
    Renew,
    /// Someone else holds a valid Lease until `expires`.
    Wait {
        /// The current holder.
        holder: String,
        /// When the holder's Lease runs out unless renewed.
        expires: Timestamp,
    },
}

/// What to do with `lease` (None: absent) at `now`, as `me`.
///
/// A Lease without a holder (or an empty one) is free. A Lease held by
/// someone else is expired when `renewTime + leaseDurationSeconds < now`;
/// missing `renewTime` or `leaseDurationSeconds` count as expired (nothing
/// proves the holder alive). Taking over from a different holder (or from
/// nobody) increments `leaseTransitions`, as client-go does.
pub fn decide(lease: Option<&Lease>, now: Timestamp, me: &str) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    let takeover = Decision::Acquire {
        transitions: transitions.saturating_add(1),
    };
    if holder.is_empty() {
        return takeover;
    }
    let (Some(renew), Some(secs)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds) else {
        return takeover;
    };
    let expires = renew
        .0
        .checked_add(SignedDuration::from_secs(i64::from(secs.max(0))))
        .unwrap_or(Timestamp::MAX);
    if expires < now {
        takeover
    } else {
        Decision::Wait { holder, expires }
    }
}

/// Whether a leader whose last successful renewal started at
/// `last_renewed` must step down at `now`: when `renew_deadline` has
/// passed without a renewal.
pub fn must_step_down(last_renewed: Instant, now: Instant, renew_deadline: Duration) -> bool {
    now.saturating_duration_since(last_renewed) >= renew_deadline
}

/// The Lease's spec when `me` takes it (or renews it) at `now`.
pub fn held_spec(
    previous: Option<&LeaseSpec>,
    decision: &Decision,
    now: Timestamp,
    me: &str,
    duration: Duration,
) -> LeaseSpec {
    let secs = i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let mut spec = previous.cloned().unwrap_or_default();
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(secs);
    spec.renew_time = Some(MicroTime(now));
    match decision {
        Decision::Create => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(0);
        }
        Decision::Acquire { transitions } => {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(*transitions);
        }
        Decision::Renew | Decision::Wait { .. } => {}
    }
    spec
}

/// The Lease's spec when its holder releases it at `now`: no holder, a
/// one-second duration, so any other replica takes it at its next try.
pub fn released_spec(previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let mut spec = previous.cloned().unwrap_or_default();
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// Settings of an election.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// `holderIdentity` of this replica (`POD_NAME`, or hostname and pid).
    pub identity: String,
    /// `leaseDurationSeconds` written (whole seconds, at least 1).
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down; must be
    /// shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// Time between two tries (renewals while leading, acquisitions
    /// otherwise).
    pub retry_period: Duration,
    /// Where `renewTime`, `acquireTime` and the Lease's expiry are read
    /// from.
    pub clock: SharedClock,
}

impl ElectionConfig {
    /// The usual timings (client-go's defaults): a 15 s Lease, step down
    /// after 10 s without renewal, a try every 2 s; the system clock.
    pub fn new(namespace: &str, name: &str, identity: &str) -> ElectionConfig {
        ElectionConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            clock: system_clock(),
        }
    }
}

/// Why one try failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Reading or writing the Lease failed (other than a 409).
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A leader's renewal did not complete before its renew deadline.
    #[error(
        "lease {namespace}/{name}: renewal still unanswered after {after:?}, at the renew deadline"
    )]
    Timeout {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// How long the renewal was given.
        after: Duration,
    },
}

/// What one try ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This replica holds the Lease (created, acquired or renewed).
    Leading,
    /// Someone else holds it, or won the write (409).
    Following {
        /// The holder, when known.
        holder: Option<String>,
    },
}

/// Runs the election for one replica.
pub struct Elector {
    api: Api<Lease>,
    config: ElectionConfig,
    tx: watch::Sender<bool>,
    last_renewed: Option<Instant>,
    contacted: bool,
}

impl Elector {
    /// An elector writing through `client`, and the [`LeaderState`] it
    /// publishes (initially `false`).
    pub fn new(client: Client, config: ElectionConfig) -> (Elector, LeaderState) {
        let (tx, rx) = watch::channel(false);
        let api = Api::namespaced(client, &config.namespace);
        (
            Elector {
                api,
                config,
                tx,
                last_renewed: None,
                contacted: false,
            },
            rx,
        )
    }

    /// The settings.
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// Another receiver of the leadership state.
    pub fn subscribe(&self) -> LeaderState {
        self.tx.subscribe()
    }

    /// Whether the API has answered at least once (any answer).
    pub fn contacted(&self) -> bool {
        self.contacted
    }

    fn api_error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    /// One try: read the Lease, decide, write. Does not touch the published
    /// state (see [`run`](Self::run)).
    pub async fn try_once(&mut self) -> Result<Outcome, LeaderError> {
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.api_error(e))?;
        self.contacted = true;
        let now = self.config.clock.now();
        let decision = decide(current.as_ref(), now, &self.config.identity);
        let spec = match &decision {
            Decision::Wait { holder, .. } => {
                return Ok(Outcome::Following {
                    holder: Some(holder.clone()),
                })
            }
            d => held_spec(
                current.as_ref().and_then(|l| l.spec.as_ref()),
                d,
                now,
                &self.config.identity,
                self.config.lease_duration,
            ),
        };
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Carries the resourceVersion read: a concurrent writer
                // makes this a 409.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                if decision != Decision::Renew {
                    tracing::info!(
                        lease = %format!("{}/{}", self.config.namespace, self.config.name),
                        identity = %self.config.identity,
                        "acquired the lease"
                    );
                }
                Ok(Outcome::Leading)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Following { holder: None }),
            Err(e) => Err(self.api_error(e)),
        }
    }

    fn publish(&self, leading: bool) {
        self.tx.send_if_modified(|v| {
            let changed = *v != leading;
            *v = leading;
            changed
        });
    }

    /// One step of the loop: a try, then what the replica believes.
    /// A leader keeps leading through failed renewals (errors and 409s)
    /// until [`ElectionConfig::renew_deadline`] has passed since its last
    /// successful renewal; the next read then shows who holds the Lease.
    pub async fn step(&mut self) -> bool {
        let started = Instant::now();
        let leading = *self.tx.borrow();
        // A leader's try may not outlast its renew deadline: it must step
        // down in time even when the API hangs.
        let budget = match (leading, self.last_renewed) {
            (true, Some(t)) => Some(
                self.config
                    .renew_deadline
                    .saturating_sub(started.saturating_duration_since(t)),
            ),
            _ => None,
        };
        let outcome = match budget {
            None => self.try_once().await,
            Some(b) => match tokio::time::timeout(b, self.try_once()).await {
                Ok(o) => o,
                Err(_) => Err(LeaderError::Timeout {
                    namespace: self.config.namespace.clone(),
                    name: self.config.name.clone(),
                    after: b,
                }),
            },
        };
        let now_leading = match outcome {
            Ok(Outcome::Leading) => {
                self.last_renewed = Some(started);
                true
            }
            Ok(Outcome::Following { holder }) => {
                if leading {
                    match &holder {
                        // Someone else holds it: we lost it.
                        Some(h) => {
                            tracing::warn!(holder = %h, "lease held by another replica");
                            false
                        }
                        // A 409 on renewal: retry until the deadline.
                        None => self.still_within_deadline(),
                    }
                } else {
                    false
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election try failed");
                leading && self.still_within_deadline()
            }
        };
        if leading && !now_leading {
            tracing::warn!(identity = %self.config.identity, "stepping down");
            self.last_renewed = None;
        }
        self.publish(now_leading);
        now_leading
    }

    fn still_within_deadline(&self) -> bool {
        self.last_renewed
            .is_some_and(|t| !must_step_down(t, Instant::now(), self.config.renew_deadline))
    }

    /// Tries every [`ElectionConfig::retry_period`] until `shutdown`
    /// completes, publishing leadership; on shutdown publishes `false` and
    /// returns (the Lease is not released: see [`release`](Self::release),
    /// to be called once the leader-only loops have stopped).
    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // Shutdown may cut a step short (an unreachable API must not
            // delay it): a write cut short may still land, which is why
            // release() reads the Lease afresh. Leaders renew and followers
            // try at the same period.
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = self.step() => {}
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        self.publish(false);
    }

    /// Gives the Lease up if this replica holds it (no holder, renewed now,
    /// one-second duration), so another replica takes over at its next
    /// try. Publishes `false` first. Returns whether a release was written.
    pub async fn release(&mut self) -> Result<bool, LeaderError> {
        self.publish(false);
        self.last_renewed = None;
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(false);
        };
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .unwrap_or_default();
        if holder != self.config.identity {
            return Ok(false);
        }
        lease.spec = Some(released_spec(lease.spec.as_ref(), self.config.clock.now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(identity = %self.config.identity, "released the lease");
                Ok(true)
            }
            // Someone wrote it since: it is no longer ours to release.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.api_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn lease(holder: Option<&str>, renew: Option<i64>, dur: Option<i32>, trans: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: renew.map(|s| MicroTime(ts(s))),
                lease_duration_seconds: dur,
                lease_transitions: Some(trans),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn absent_lease_is_created() {
        assert_eq!(decide(None, ts(0), "a"), Decision::Create);
    }

    #[test]
    fn my_lease_is_renewed_even_when_expired() {
        let l = lease(Some("a"), Some(0), Some(15), 3);
        assert_eq!(decide(Some(&l), ts(5), "a"), Decision::Renew);
        assert_eq!(decide(Some(&l), ts(100), "a"), Decision::Renew);
    }

    #[test]
    fn valid_lease_of_another_is_waited_for() {
        let l = lease(Some("b"), Some(0), Some(15), 3);
        for now in [0, 1, 14, 15] {
            assert_eq!(
                decide(Some(&l), ts(now), "a"),
                Decision::Wait {
                    holder: "b".into(),
                    expires: ts(15)
                },
                "now {now}"
            );
        }
    }

    #[test]
    fn expired_lease_is_taken_over_with_a_transition() {
        let l = lease(Some("b"), Some(0), Some(15), 3);
        assert_eq!(
            decide(Some(&l), ts(16), "a"),
            Decision::Acquire { transitions: 4 }
        );
    }

    #[test]
    fn free_lease_is_taken_at_once() {
        for holder in [None, Some("")] {
            let l = lease(holder, Some(0), Some(15), 7);
            assert_eq!(
                decide(Some(&l), ts(1), "a"),
                Decision::Acquire { transitions: 8 }
            );
        }
    }

    #[test]
    fn lease_without_renew_time_or_duration_counts_as_expired() {
        let l = lease(Some("b"), None, Some(15), 0);
        assert_eq!(
            decide(Some(&l), ts(0), "a"),
            Decision::Acquire { transitions: 1 }
        );
        let l = lease(Some("b"), Some(0), None, 0);
        assert_eq!(
            decide(Some(&l), ts(0), "a"),
            Decision::Acquire { transitions: 1 }
        );
    }

    #[test]
    fn lease_without_spec_is_free() {
        let l = Lease::default();
        assert_eq!(
            decide(Some(&l), ts(0), "a"),
            Decision::Acquire { transitions: 1 }
        );
    }

    #[test]
    fn transitions_saturate() {
        let l = lease(None, None, None, i32::MAX);
        assert_eq!(
            decide(Some(&l), ts(0), "a"),
            Decision::Acquire {
                transitions: i32::MAX
            }
        );
    }

    #[test]
    fn negative_duration_counts_as_zero() {
        let l = lease(Some("b"), Some(0), Some(-5), 0);
        assert!(matches!(
            decide(Some(&l), ts(0), "a"),
            Decision::Wait { .. }
        ));
        assert_eq!(
            decide(Some(&l), ts(1), "a"),
            Decision::Acquire { transitions: 1 }
        );
    }

    #[test]
    fn held_spec_sets_holder_times_and_transitions() {
        let prev = lease(Some("b"), Some(0), Some(15), 3).spec.unwrap();
        let s = held_spec(
            Some(&prev),
            &Decision::Acquire { transitions: 4 },
            ts(20),
            "a",
            Duration::from_secs(10),
        );
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        assert_eq!(s.lease_duration_seconds, Some(10));
        assert_eq!(s.renew_time, Some(MicroTime(ts(20))));
        assert_eq!(s.acquire_time, Some(MicroTime(ts(20))));
        assert_eq!(s.lease_transitions, Some(4));

        let mine = held_spec(
            Some(&s),
            &Decision::Renew,
            ts(25),
            "a",
            Duration::from_secs(10),
        );
        assert_eq!(mine.acquire_time, Some(MicroTime(ts(20))));
        assert_eq!(mine.renew_time, Some(MicroTime(ts(25))));
        assert_eq!(mine.lease_transitions, Some(4));

        let new = held_spec(None, &Decision::Create, ts(1), "a", Duration::ZERO);
        assert_eq!(new.lease_transitions, Some(0));
        assert_eq!(new.lease_duration_seconds, Some(1));
    }

    #[test]
    fn released_spec_frees_the_lease() {
        let prev = lease(Some("a"), Some(0), Some(15), 3).spec.unwrap();
        let s = released_spec(Some(&prev), ts(5));
        assert_eq!(s.holder_identity, None);
        assert_eq!(s.lease_transitions, Some(3));
        let l = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(s),
        };
        assert_eq!(
            decide(Some(&l), ts(5), "b"),
            Decision::Acquire { transitions: 4 }
        );
    }

    #[test]
    fn step_down_after_the_deadline() {
        let t = Instant::now();
        let d = Duration::from_secs(10);
        assert!(!must_step_down(t, t, d));
        assert!(!must_step_down(t, t + Duration::from_secs(9), d));
        assert!(must_step_down(t, t + d, d));
        assert!(must_step_down(t, t + Duration::from_secs(11), d));
        // A clock that went backwards does not trigger a step-down.
        assert!(!must_step_down(t + d, t, d));
    }
}
