//! Fault injection for the simulator and tests: latency, 409 storms, 5xx
//! answers, and a paused server, scripted per request and drawn from a
//! seeded RNG so a run can be replayed. Watch faults (dropped and expired
//! watches) act on the store directly: see [`crate::ApiServer::drop_watches`]
//! and [`crate::ApiServer::expire_watches`].

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// What happens to a request a rule hits.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer only after this long (the request is then served).
    Latency(Duration),
    /// Answer with this status code (500, 503, 504, ...) without serving.
    Status(u16),
    /// Answer 409 Conflict without serving (a conflict storm on writes).
    Conflict,
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matcher {
    /// HTTP methods (empty: any).
    pub methods: Vec<String>,
    /// Resource plural, e.g. `ipamblocks` (None: any).
    pub resource: Option<String>,
    /// Substring of the path (None: any).
    pub path_contains: Option<String>,
}

impl Matcher {
    /// Every request.
    pub fn any() -> Matcher {
        Matcher::default()
    }

    /// Writes (POST, PUT, PATCH, DELETE) to one resource.
    pub fn writes_to(plural: &str) -> Matcher {
        Matcher {
            methods: ["POST", "PUT", "PATCH", "DELETE"]
                .map(String::from)
                .to_vec(),
            resource: Some(plural.into()),
            path_contains: None,
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self
                .resource
                .as_ref()
                .is_none_or(|r| path.split('/').any(|seg| seg == r))
            && self
                .path_contains
                .as_ref()
                .is_none_or(|s| path.contains(s.as_str()))
    }
}

/// A scripted fault: which requests, what, how likely, how many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Which requests.
    pub matcher: Matcher,
    /// What happens.
    pub fault: Fault,
    /// Chance per matching request (1.0: always).
    pub probability: f64,
    /// How many more times the rule may fire (None: unlimited).
    pub remaining: Option<u64>,
}

/// The active rules and the RNG they draw from.
#[derive(Debug, Clone)]
pub struct Faults {
    rules: Vec<Rule>,
    rng: ChaCha8Rng,
}

impl Faults {
    /// No faults; later rules draw from an RNG seeded with `seed`.
    pub fn new(seed: u64) -> Faults {
        Faults {
            rules: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Adds a rule.
    pub fn add(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    /// The next `n` matching requests get `fault`.
    pub fn next(&mut self, matcher: Matcher, fault: Fault, n: u64) {
        self.add(Rule {
            matcher,
            fault,
            probability: 1.0,
            remaining: Some(n),
        });
    }

    /// Removes every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The faults for one request, in rule order; spent rules are dropped.
    pub fn pick(&mut self, method: &str, path: &str) -> Vec<Fault> {
        let mut out = Vec::new();
        for rule in &mut self.rules {
            if rule.remaining == Some(0) || !rule.matcher.matches(method, path) {
                continue;
            }
            let hit = rule.probability >= 1.0
                || (rule.probability > 0.0
                    && (self.rng.next_u64() as f64 / u64::MAX as f64) < rule.probability);
            if hit {
                if let Some(r) = rule.remaining.as_mut() {
                    *r -= 1;
                }
                out.push(rule.fault.clone());
            }
        }
        self.rules.retain(|r| r.remaining != Some(0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_rules_fire_the_given_number_of_times() {
        let mut f = Faults::new(7);
        f.next(Matcher::writes_to("ippools"), Fault::Conflict, 2);
        let put = "/apis/spur.dev/v1beta1/ippools/a";
        assert_eq!(f.pick("GET", put), vec![]);
        assert_eq!(f.pick("PUT", put), vec![Fault::Conflict]);
        assert_eq!(f.pick("PUT", "/api/v1/namespaces/default/pods/x"), vec![]);
        assert_eq!(f.pick("PATCH", put), vec![Fault::Conflict]);
        assert_eq!(f.pick("PUT", put), vec![]);
    }

    #[test]
    fn random_rules_are_reproducible() {
        let draw = |seed| {
            let mut f = Faults::new(seed);
            f.add(Rule {
                matcher: Matcher::any(),
                fault: Fault::Status(503),
                probability: 0.3,
                remaining: None,
            });
            (0..200)
                .map(|_| f.pick("GET", "/api/v1/pods").len())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        let hits: usize = draw(1).iter().sum();
        assert!((30..90).contains(&hits), "{hits}");
    }
}
