//! The run's trace: every notable event (an API request and its answer, a
//! CNI call and its result, an injected fault, a crash, a restart) with its
//! simulated time and the actor it concerns.
//!
//! A run keeps a fingerprint of the whole trace (a hash over every event,
//! in order), the last events (for the minimal trace printed with a
//! violation), and, when asked (`--check-determinism`), every event, so two
//! runs of one seed can be compared and their first difference shown.
//!
//! What does not live here: deciding what is notable (the world and its
//! components record), and time (events carry the simulated time the caller
//! read).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Simulated time since the run started.
    pub at: Duration,
    /// Who: `api`, `agent/node-a`, `kubelet/node-b`, `controller/1`,
    /// `faults`, `world`.
    pub actor: String,
    /// What happened.
    pub what: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>10.3}s  {:<18} {}",
            self.at.as_secs_f64(),
            self.actor,
            self.what
        )
    }
}

#[derive(Debug)]
struct Inner {
    hash: u64,
    count: u64,
    recent: VecDeque<Event>,
    recent_cap: usize,
    all: Option<Vec<Event>>,
}

/// The trace of one run. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub struct Trace {
    inner: Arc<Mutex<Inner>>,
}

/// FNV-1a, 64 bits, continued from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Trace {
    /// A trace keeping the last `recent` events, and every event when
    /// `keep_all`.
    pub fn new(recent: usize, keep_all: bool) -> Trace {
        Trace {
            inner: Arc::new(Mutex::new(Inner {
                hash: 0xcbf2_9ce4_8422_2325,
                count: 0,
                recent: VecDeque::with_capacity(recent.min(4096)),
                recent_cap: recent,
                all: keep_all.then(Vec::new),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event.
    pub fn record(&self, at: Duration, actor: impl Into<String>, what: impl Into<String>) {
        let event = Event {
            at,
            actor: actor.into(),
            what: what.into(),
        };
        let mut t = self.lock();
        let mut h = fnv(t.hash, &event.at.as_nanos().to_le_bytes());
        h = fnv(h, event.actor.as_bytes());
        h = fnv(h, &[0]);
        h = fnv(h, event.what.as_bytes());
        t.hash = fnv(h, &[0xff]);
        t.count += 1;
        if t.recent_cap > 0 {
            if t.recent.len() == t.recent_cap {
                t.recent.pop_front();
            }
            t.recent.push_back(event.clone());
        }
        if let Some(all) = t.all.as_mut() {
            all.push(event);
        }
    }

    /// The fingerprint of everything recorded so far: equal for two runs
    /// exactly when (with overwhelming probability) their traces are.
    pub fn fingerprint(&self) -> u64 {
        self.lock().hash
    }

    /// How many events were recorded.
    pub fn len(&self) -> u64 {
        self.lock().count
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last events kept.
    pub fn recent(&self) -> Vec<Event> {
        self.lock().recent.iter().cloned().collect()
    }

    /// Every event, when the trace keeps them all.
    pub fn all(&self) -> Option<Vec<Event>> {
        self.lock().all.clone()
    }
}

/// Where two traces first differ: the index, and each trace's event there
/// (`None` past its end). `None` when they are equal.
pub fn first_difference(a: &[Event], b: &[Event]) -> Option<(usize, Option<Event>, Option<Event>)> {
    let n = a.len().max(b.len());
    (0..n).find_map(|i| {
        let (x, y) = (a.get(i), b.get(i));
        (x != y).then(|| (i, x.cloned(), y.cloned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fingerprints_follow_content_and_order() {
        let a = Trace::new(2, true);
        let b = Trace::new(0, false);
        for t in [&a, &b] {
            t.record(ms(1), "api", "POST pods");
            t.record(ms(2), "agent/node-a", "ADD ok");
        }
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = Trace::new(0, false);
        c.record(ms(2), "agent/node-a", "ADD ok");
        c.record(ms(1), "api", "POST pods");
        assert_ne!(a.fingerprint(), c.fingerprint());
        // The boundary between actor and text counts.
        let d = Trace::new(0, false);
        d.record(ms(1), "ap", "iPOST pods");
        d.record(ms(2), "agent/node-a", "ADD ok");
        assert_ne!(a.fingerprint(), d.fingerprint());
        // Time counts.
        let e = Trace::new(0, false);
        e.record(ms(1), "api", "POST pods");
        e.record(ms(3), "agent/node-a", "ADD ok");
        assert_ne!(a.fingerprint(), e.fingerprint());
    }

    #[test]
    fn recent_keeps_the_last_events_and_all_keeps_everything() {
        let t = Trace::new(2, true);
        for i in 0..5 {
            t.record(ms(i), "w", format!("e{i}"));
        }
        let recent: Vec<String> = t.recent().into_iter().map(|e| e.what).collect();
        assert_eq!(recent, ["e3", "e4"]);
        assert_eq!(t.all().unwrap().len(), 5);
        assert_eq!(t.len(), 5);
        assert!(Trace::new(1, false).all().is_none());
    }

    #[test]
    fn the_first_difference_is_found() {
        let ev = |i: u64, w: &str| Event {
            at: ms(i),
            actor: "a".into(),
            what: w.into(),
        };
        let a = vec![ev(1, "x"), ev(2, "y")];
        assert_eq!(first_difference(&a, &a), None);
        let b = vec![ev(1, "x"), ev(2, "z")];
        assert_eq!(
            first_difference(&a, &b),
            Some((1, Some(ev(2, "y")), Some(ev(2, "z"))))
        );
        assert_eq!(
            first_difference(&a, &a[..1]),
            Some((1, Some(ev(2, "y")), None))
        );
    }
}
