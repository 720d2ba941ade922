//! Fault profiles: what goes wrong in a run, and when, drawn from the run's
//! seed before it starts (a pure plan; the world carries it out).
//!
//! Every fault of a testbed run is restorative: the testbed's objects end
//! as its manifests made them (scaled workloads scale back, churn Pods live
//! in a namespace of their own and go, edits are no-ops or are refused),
//! so `expect.yaml` holds at the end of every seed. Faults happen inside an
//! active window; after it the run converges and is judged.
//!
//! Profiles:
//! - `none`: nothing goes wrong (the world still has latency).
//! - `default`: what CI runs on every seed — API latency, a 409 storm, 5xx
//!   bursts, dropped and expired watches, an agent partitioned from the API,
//!   agent crashes (mid-ADD and mid-DEL: the back ends and the API take
//!   time, so a crash lands inside calls), a controller crash with failover,
//!   a node reboot losing OVSDB, churn Pods, workload scaling, NAD and
//!   IPPool edits.
//! - `chaos`: the same, several times as often and overlapping.
//!
//! What does not live here: carrying faults out ([`crate::world`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand_core::Rng;

use crate::rng::rng_for;

/// A named set of faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// No injected faults.
    None,
    /// What CI runs.
    Default,
    /// Several times the default, overlapping.
    Chaos,
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Profile, String> {
        match s {
            "none" => Ok(Profile::None),
            "default" => Ok(Profile::Default),
            "chaos" => Ok(Profile::Chaos),
            other => Err(format!(
                "--faults {other:?}: unknown profile; one of none, default, chaos"
            )),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::None => "none",
            Profile::Default => "default",
            Profile::Chaos => "chaos",
        })
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Every API request waits this long more, for a while.
    ApiLatency(Duration),
    /// Writes answer 409 with this chance (per mille), for a while.
    ConflictStorm(u32),
    /// Requests answer this 5xx code with this chance (per mille).
    ServerErrors(u16, u32),
    /// Every open watch ends.
    DropWatches,
    /// Every open watch ends with 410 Gone; the event log is compacted.
    ExpireWatches,
    /// The node's agent and kubelet cannot reach the API, for a while.
    Partition(usize),
    /// The node's agent crashes and restarts after a while.
    AgentCrash(usize),
    /// A controller replica crashes and restarts after a while.
    ControllerCrash(usize),
    /// The node reboots: agent gone, OVSDB and every Pod namespace lost;
    /// back after a while.
    NodeReboot(usize),
    /// Churn Pods (on the testbed's networks, in a namespace of their own)
    /// are created, and deleted after a while.
    ChurnPods(u32),
    /// The workload (index into the testbed's Deployments and StatefulSets)
    /// scales up by this much, and back after a while.
    Scale(usize, u32),
    /// A NetworkAttachmentDefinition (index) gets a label, removed later.
    EditNad(usize),
    /// An IPPool (index) gets a label; an edit moving its ranges is refused
    /// while it is in use.
    EditPool(usize),
    /// The back ends (OVSDB, netlink) fail this chance of calls (per mille),
    /// for a while.
    BackendErrors(u32),
}

/// A fault at its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// When it starts (simulated time since the run started).
    pub at: Duration,
    /// How long it lasts (or how long until the restart / undo).
    pub lasts: Duration,
    /// What.
    pub fault: Fault,
}

/// What a plan may touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// Nodes.
    pub nodes: usize,
    /// Controller replicas.
    pub replicas: usize,
    /// Deployments and StatefulSets of the testbed.
    pub workloads: usize,
    /// NADs of the testbed (Spur's or using Spur's IPAM).
    pub nads: usize,
    /// IPPools of the testbed.
    pub pools: usize,
}

/// When faults may start: after the testbed was applied, within this
/// window.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(120);

/// The plan of `profile` for the run seeded `seed`, sorted by time.
pub fn plan(profile: Profile, seed: u64, t: &Targets) -> Vec<Planned> {
    let rounds = match profile {
        Profile::None => return Vec::new(),
        Profile::Default => 1,
        Profile::Chaos => 4,
    };
    let mut rng = rng_for(seed, "faults");
    let mut out = Vec::new();
    let at = |rng: &mut rand_chacha::ChaCha8Rng| {
        Duration::from_millis(rng.next_u64() % ACTIVE_WINDOW.as_millis() as u64)
    };
    let ms = |rng: &mut rand_chacha::ChaCha8Rng, lo: u64, hi: u64| {
        Duration::from_millis(lo + rng.next_u64() % (hi - lo + 1))
    };
    let pick = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| (rng.next_u64() % n as u64) as usize;
    for _ in 0..rounds {
        let mut push =
            |at: Duration, lasts: Duration, fault: Fault| out.push(Planned { at, lasts, fault });
        let lat = ms(&mut rng, 5, 200);
        push(
            at(&mut rng),
            ms(&mut rng, 2_000, 20_000),
            Fault::ApiLatency(lat),
        );
        let p = 200 + (rng.next_u64() % 600) as u32;
        push(
            at(&mut rng),
            ms(&mut rng, 500, 5_000),
            Fault::ConflictStorm(p),
        );
        let code = [500, 503, 504][pick(&mut rng, 3)];
        let p = 100 + (rng.next_u64() % 400) as u32;
        push(
            at(&mut rng),
            ms(&mut rng, 500, 5_000),
            Fault::ServerErrors(code, p),
        );
        push(at(&mut rng), Duration::ZERO, Fault::DropWatches);
        push(at(&mut rng), Duration::ZERO, Fault::ExpireWatches);
        let p = 20 + (rng.next_u64() % 200) as u32;
        push(
            at(&mut rng),
            ms(&mut rng, 1_000, 10_000),
            Fault::BackendErrors(p),
        );
        if t.nodes > 0 {
            let n = pick(&mut rng, t.nodes);
            push(
                at(&mut rng),
                ms(&mut rng, 1_000, 40_000),
                Fault::Partition(n),
            );
            // Two crashes: one early (while Pods are being added, so it lands
            // mid-ADD), one anywhere (mid-DEL of churn Pods, restarts).
            let n = pick(&mut rng, t.nodes);
            let early = ms(&mut rng, 0, 3_000);
            push(early, ms(&mut rng, 100, 10_000), Fault::AgentCrash(n));
            let n = pick(&mut rng, t.nodes);
            push(
                at(&mut rng),
                ms(&mut rng, 100, 10_000),
                Fault::AgentCrash(n),
            );
            let n = pick(&mut rng, t.nodes);
            push(
                at(&mut rng),
                ms(&mut rng, 1_000, 20_000),
                Fault::NodeReboot(n),
            );
        }
        if t.replicas > 0 {
            let r = pick(&mut rng, t.replicas);
            push(
                at(&mut rng),
                ms(&mut rng, 500, 30_000),
                Fault::ControllerCrash(r),
            );
        }
        if t.nads > 0 {
            let churn = 1 + (rng.next_u64() % 6) as u32;
            push(
                at(&mut rng),
                ms(&mut rng, 1_000, 30_000),
                Fault::ChurnPods(churn),
            );
            let n = pick(&mut rng, t.nads);
            push(at(&mut rng), ms(&mut rng, 1_000, 30_000), Fault::EditNad(n));
        }
        if t.workloads > 0 {
            let w = pick(&mut rng, t.workloads);
            let by = 1 + (rng.next_u64() % 3) as u32;
            push(
                at(&mut rng),
                ms(&mut rng, 1_000, 30_000),
                Fault::Scale(w, by),
            );
        }
        if t.pools > 0 {
            let p = pick(&mut rng, t.pools);
            push(
                at(&mut rng),
                ms(&mut rng, 1_000, 30_000),
                Fault::EditPool(p),
            );
        }
    }
    out.sort_by(|a, b| {
        a.at.cmp(&b.at)
            .then_with(|| format!("{:?}", a.fault).cmp(&format!("{:?}", b.fault)))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Targets {
        Targets {
            nodes: 3,
            replicas: 2,
            workloads: 1,
            nads: 2,
            pools: 2,
        }
    }

    #[test]
    fn plans_are_reproducible_sorted_and_inside_the_window() {
        let a = plan(Profile::Default, 7, &targets());
        assert_eq!(a, plan(Profile::Default, 7, &targets()));
        assert_ne!(a, plan(Profile::Default, 8, &targets()));
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|p| p.at < ACTIVE_WINDOW));
        assert!(plan(Profile::None, 7, &targets()).is_empty());
        assert!(plan(Profile::Chaos, 7, &targets()).len() > a.len());
    }

    #[test]
    fn the_default_profile_covers_every_kind_of_fault() {
        let a = plan(Profile::Default, 1, &targets());
        let has = |f: &dyn Fn(&Fault) -> bool| a.iter().any(|p| f(&p.fault));
        assert!(has(&|f| matches!(f, Fault::ApiLatency(_))));
        assert!(has(&|f| matches!(f, Fault::ConflictStorm(_))));
        assert!(has(&|f| matches!(f, Fault::ServerErrors(..))));
        assert!(has(&|f| matches!(f, Fault::DropWatches)));
        assert!(has(&|f| matches!(f, Fault::ExpireWatches)));
        assert!(has(&|f| matches!(f, Fault::Partition(_))));
        assert!(has(&|f| matches!(f, Fault::AgentCrash(_))));
        assert!(has(&|f| matches!(f, Fault::ControllerCrash(_))));
        assert!(has(&|f| matches!(f, Fault::NodeReboot(_))));
        assert!(has(&|f| matches!(f, Fault::ChurnPods(_))));
        assert!(has(&|f| matches!(f, Fault::Scale(..))));
        assert!(has(&|f| matches!(f, Fault::EditNad(_))));
        assert!(has(&|f| matches!(f, Fault::EditPool(_))));
        assert!(has(&|f| matches!(f, Fault::BackendErrors(_))));
        // Nothing to touch, nothing planned for it.
        let none = plan(Profile::Default, 1, &Targets::default());
        assert!(none
            .iter()
            .all(|p| !matches!(p.fault, Fault::Partition(_) | Fault::Scale(..))));
    }

    #[test]
    fn profiles_parse_and_print() {
        for p in [Profile::None, Profile::Default, Profile::Chaos] {
            assert_eq!(p.to_string().parse::<Profile>(), Ok(p));
        }
        let e = "storm".parse::<Profile>().unwrap_err();
        assert!(e.contains("storm") && e.contains("default"), "{e}");
    }
}
