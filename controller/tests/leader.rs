//! Leader election against the embedded API server: one of two electors
//! leads; a leader that stops renewing is replaced after the Lease
//! expires; a released Lease is taken at once; a 409 storm on Lease writes
//! never makes two leaders.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use spur_controller::leader::{ElectionConfig, Elector, LeaderState};
use spur_kubeapi::faults::{Fault, Matcher, Rule};
use spur_kubeapi::ApiServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const NS: &str = "kube-system";
const LEASE: &str = "spur-controller";

fn config(id: &str, lease_secs: u64) -> ElectionConfig {
    let mut c = ElectionConfig::new(NS, LEASE, id);
    c.lease_duration = Duration::from_secs(lease_secs);
    c.renew_deadline = Duration::from_millis(lease_secs * 1000 * 6 / 10);
    c.retry_period = Duration::from_millis(100);
    c
}

struct Running {
    state: LeaderState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Elector>,
}

impl Running {
    fn start(client: &Client, cfg: ElectionConfig) -> Running {
        let (mut elector, state) = Elector::new(client.clone(), cfg);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            elector
                .run(async move {
                    let _ = rx.await;
                })
                .await;
            elector
        });
        Running {
            state,
            stop: Some(tx),
            task,
        }
    }

    fn leading(&self) -> bool {
        *self.state.borrow()
    }

    /// Stops the loop and returns the elector (the Lease is not released).
    async fn stop(mut self) -> Elector {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap()
    }
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn lease(client: &Client) -> Lease {
    Api::<Lease>::namespaced(client.clone(), NS)
        .get(LEASE)
        .await
        .unwrap()
}

fn holder(l: &Lease) -> Option<String> {
    l.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

fn transitions(l: &Lease) -> i32 {
    l.spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

#[tokio::test]
async fn one_of_two_leads_and_the_other_takes_over_after_expiry() {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    let a = Running::start(&client, config("a", 2));
    let b = Running::start(&client, config("b", 2));
    wait_for("a leader", Duration::from_secs(5), || {
        a.leading() || b.leading()
    })
    .await;
    // It stays exactly one for a while (several renewals).
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert!(a.leading() != b.leading(), "exactly one leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (leader, follower) = if a.leading() { (a, b) } else { (b, a) };
    let first = lease(&client).await;
    let leader_id = holder(&first).unwrap();
    assert_eq!(transitions(&first), 0);

    // The leader stops renewing (crash: no release).
    leader.task.abort();
    let stopped = Instant::now();
    wait_for("the follower to take over", Duration::from_secs(6), || {
        follower.leading()
    })
    .await;
    let took = stopped.elapsed();
    // Not before the Lease (2 s) could have expired, counted from the last
    // renewal (at most one retry period before the abort).
    assert!(
        took >= Duration::from_millis(1800),
        "took over after only {took:?}"
    );
    let now = lease(&client).await;
    assert_ne!(holder(&now).unwrap(), leader_id);
    assert_eq!(transitions(&now), 1);
    follower.stop().await;
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    let a = Running::start(&client, config("a", 30));
    wait_for("a to lead", Duration::from_secs(5), || a.leading()).await;
    let b = Running::start(&client, config("b", 30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.leading(), "b must not lead while a holds a 30 s lease");
    let mut a_state = a.state.clone();
    let mut elector = a.stop().await;
    assert!(!*a_state.borrow_and_update(), "a no longer leads");
    assert!(elector.release().await.unwrap(), "a released the lease");
    assert_eq!(holder(&lease(&client).await), None);
    // Far sooner than the 30 s lease.
    wait_for("b to lead", Duration::from_secs(2), || b.leading()).await;
    let l = lease(&client).await;
    assert_eq!(holder(&l).as_deref(), Some("b"));
    assert_eq!(transitions(&l), 1);
    // Releasing again is a no-op: a no longer holds it.
    assert!(!elector.release().await.unwrap());
    b.stop().await;
}

#[tokio::test]
async fn a_conflict_storm_never_makes_two_leaders() {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    // Half the Lease writes answer 409 without being served.
    server.faults().add(Rule {
        matcher: Matcher::writes_to("leases"),
        fault: Fault::Conflict,
        probability: 0.5,
        remaining: None,
    });
    let electors: Vec<Running> = ["a", "b", "c"]
        .iter()
        .map(|id| Running::start(&client, config(id, 1)))
        .collect();
    let mut max_leaders = 0;
    let mut ever_led = 0;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let n = electors.iter().filter(|e| e.leading()).count();
        assert!(n <= 1, "{n} leaders at once");
        max_leaders = max_leaders.max(n);
        if n == 1 {
            ever_led += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(max_leaders, 1, "someone led despite the storm");
    assert!(ever_led > 0);
    // The storm ends: exactly one leader, the holder of the Lease.
    server.faults().clear();
    wait_for("one leader", Duration::from_secs(5), || {
        electors.iter().filter(|e| e.leading()).count() == 1
    })
    .await;
    let l = lease(&client).await;
    let leader = electors.iter().position(|e| e.leading()).unwrap();
    assert_eq!(holder(&l).unwrap(), ["a", "b", "c"][leader]);
    for e in electors {
        e.stop().await;
    }
}

#[tokio::test]
async fn a_leader_whose_api_hangs_steps_down_by_its_deadline() {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    let a = Running::start(&client, config("a", 2));
    wait_for("a to lead", Duration::from_secs(5), || a.leading()).await;
    // Every Lease request now takes a minute.
    server.faults().add(Rule {
        matcher: Matcher {
            resource: Some("leases".into()),
            ..Matcher::default()
        },
        fault: Fault::Latency(Duration::from_secs(60)),
        probability: 1.0,
        remaining: None,
    });
    let hung = Instant::now();
    wait_for("a to step down", Duration::from_secs(3), || !a.leading()).await;
    // The renew deadline is 1.2 s after the start of the last successful
    // renewal, which was before the hang; 150 ms of slack for timers and
    // this poll. (Without the deadline the step would hang for a minute.)
    assert!(
        hung.elapsed() <= Duration::from_millis(1350),
        "stepped down after {:?}, past the renew deadline",
        hung.elapsed()
    );
    a.task.abort();
}
