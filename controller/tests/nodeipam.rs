//! NodeIPAM against the embedded API server: Nodes get their Pod CIDRs per
//! family, keep them across controller restarts, free them on deletion,
//! and two controllers planning from the same state cannot both assign.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeSpec};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use spur_controller::nodeipam::{
    node_pod_cidrs, NodeIpamLoopConfig, NodeIpamReconciler, NodeIpamRunError, NodeProblem,
    LEDGER_NAME, LEDGER_NAMESPACE,
};
use spur_core::config::NodeIpamConfig;
use spur_kubeapi::ApiServer;

fn client() -> (ApiServer, Client) {
    let server = ApiServer::in_memory();
    let client = Client::new(server.service(), "default");
    (server, client)
}

fn config(cidrs: &[&str]) -> NodeIpamConfig {
    NodeIpamConfig {
        enable_node_ipam: true,
        cluster_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        ..NodeIpamConfig::default()
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

async fn add_node(nodes: &Api<Node>, name: &str, cidrs: &[&str]) {
    let mut n = Node::default();
    n.metadata.name = Some(name.into());
    if !cidrs.is_empty() {
        n.spec = Some(NodeSpec {
            pod_cidr: Some(cidrs[0].into()),
            pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
            ..NodeSpec::default()
        });
    }
    nodes.create(&PostParams::default(), &n).await.unwrap();
}

/// The Node's podCIDRs, checking that podCIDR is their first.
async fn cidrs_of(nodes: &Api<Node>, name: &str) -> Vec<String> {
    let n = nodes.get(name).await.unwrap();
    let list = node_pod_cidrs(&n);
    let first = n.spec.as_ref().and_then(|s| s.pod_cidr.clone());
    assert_eq!(
        first.as_ref(),
        list.first(),
        "Node {name}: podCIDR vs podCIDRs"
    );
    list
}

fn assigned(round: &spur_controller::nodeipam::NodeIpamRound) -> Vec<(String, Vec<IpNet>)> {
    round.assigned.clone()
}

#[tokio::test]
async fn ipv4_only() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    for n in ["n1", "n2", "n3"] {
        add_node(&nodes, n, &[]).await;
    }
    let r = NodeIpamReconciler::new(client, config(&["10.244.0.0/16"])).unwrap();
    let round = r.reconcile_once().await.unwrap();
    assert!(round.problems.is_empty() && round.failed.is_empty());
    assert_eq!(round.assigned.len(), 3);
    assert_eq!(cidrs_of(&nodes, "n1").await, ["10.244.0.0/24"]);
    assert_eq!(cidrs_of(&nodes, "n2").await, ["10.244.1.0/24"]);
    assert_eq!(cidrs_of(&nodes, "n3").await, ["10.244.2.0/24"]);
    // Level-driven: nothing left to do.
    let again = r.reconcile_once().await.unwrap();
    assert!(again.assigned.is_empty() && again.problems.is_empty());
}

#[tokio::test]
async fn ipv6_only() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    add_node(&nodes, "n1", &[]).await;
    add_node(&nodes, "n2", &[]).await;
    let r = NodeIpamReconciler::new(client, config(&["fd00:10:244::/56"])).unwrap();
    r.reconcile_once().await.unwrap();
    assert_eq!(cidrs_of(&nodes, "n1").await, ["fd00:10:244::/64"]);
    assert_eq!(cidrs_of(&nodes, "n2").await, ["fd00:10:244:1::/64"]);
}

#[tokio::test]
async fn dual_stack_ipv4_first() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    add_node(&nodes, "n1", &[]).await;
    add_node(&nodes, "n2", &[]).await;
    let r =
        NodeIpamReconciler::new(client, config(&["172.100.0.0/20", "fd00:172:100::/60"])).unwrap();
    r.reconcile_once().await.unwrap();
    assert_eq!(
        cidrs_of(&nodes, "n1").await,
        ["172.100.0.0/24", "fd00:172:100::/64"]
    );
    assert_eq!(
        cidrs_of(&nodes, "n2").await,
        ["172.100.1.0/24", "fd00:172:100:1::/64"]
    );
}

#[tokio::test]
async fn service_cidr_is_skipped() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    for n in ["n1", "n2", "n3"] {
        add_node(&nodes, n, &[]).await;
    }
    let mut c = config(&["10.0.0.0/16"]);
    c.service_cidr = Some("10.0.1.0/24".parse().unwrap());
    NodeIpamReconciler::new(client, c)
        .unwrap()
        .reconcile_once()
        .await
        .unwrap();
    assert_eq!(cidrs_of(&nodes, "n1").await, ["10.0.0.0/24"]);
    assert_eq!(cidrs_of(&nodes, "n2").await, ["10.0.2.0/24"]);
    assert_eq!(cidrs_of(&nodes, "n3").await, ["10.0.3.0/24"]);
}

#[tokio::test]
async fn restart_keeps_assignments_and_deleted_cidrs_are_reused() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    for n in ["n1", "n2", "n3"] {
        add_node(&nodes, n, &[]).await;
    }
    let c = config(&["10.0.0.0/16", "fd00::/48"]);
    NodeIpamReconciler::new(client.clone(), c.clone())
        .unwrap()
        .reconcile_once()
        .await
        .unwrap();
    let rv_before = nodes.get("n2").await.unwrap().metadata.resource_version;

    // A new instance (a restarted controller) with one more Node.
    add_node(&nodes, "n4", &[]).await;
    let restarted = NodeIpamReconciler::new(client.clone(), c.clone()).unwrap();
    let round = restarted.reconcile_once().await.unwrap();
    assert_eq!(
        assigned(&round),
        [(
            "n4".to_string(),
            vec![net("10.0.3.0/24"), net("fd00:0:0:3::/64")]
        )]
    );
    assert_eq!(
        nodes.get("n2").await.unwrap().metadata.resource_version,
        rv_before,
        "n2 was written again"
    );
    assert_eq!(
        cidrs_of(&nodes, "n2").await,
        ["10.0.1.0/24", "fd00:0:0:1::/64"]
    );

    // Deleting n2 frees its CIDRs: the next Node gets them.
    nodes.delete("n2", &DeleteParams::default()).await.unwrap();
    add_node(&nodes, "n5", &[]).await;
    let round = NodeIpamReconciler::new(client, c)
        .unwrap()
        .reconcile_once()
        .await
        .unwrap();
    assert_eq!(round.assigned.len(), 1);
    assert_eq!(
        cidrs_of(&nodes, "n5").await,
        ["10.0.1.0/24", "fd00:0:0:1::/64"]
    );
}

#[tokio::test]
async fn exhaustion_is_reported_naming_node_and_cluster_cidr() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    for n in ["n1", "n2", "n3"] {
        add_node(&nodes, n, &[]).await;
    }
    let round = NodeIpamReconciler::new(client, config(&["10.0.0.0/23"]))
        .unwrap()
        .reconcile_once()
        .await
        .unwrap();
    assert_eq!(round.assigned.len(), 2);
    assert_eq!(round.problems.len(), 1);
    assert_eq!(
        round.problems[0].to_string(),
        "Node n3: no Pod CIDRs assigned: cluster CIDR 10.0.0.0/23 has no free /24 node CIDR \
         left (all 2 that do not overlap the Service CIDR are in use)"
    );
    assert!(cidrs_of(&nodes, "n3").await.is_empty());
}

#[tokio::test]
async fn preset_pod_cidrs_are_respected_and_conflicts_reported() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    // Created first and named first: "a-preset" is the holder whether or
    // not the two creationTimestamps (whole seconds) differ.
    add_node(&nodes, "a-preset", &["10.0.0.0/24"]).await;
    add_node(&nodes, "b-clash", &["10.0.0.0/24"]).await;
    add_node(&nodes, "outside", &["192.168.7.0/24"]).await;
    add_node(&nodes, "fresh", &[]).await;
    let round = NodeIpamReconciler::new(client, config(&["10.0.0.0/16"]))
        .unwrap()
        .reconcile_once()
        .await
        .unwrap();
    assert_eq!(
        assigned(&round),
        [("fresh".to_string(), vec![net("10.0.1.0/24")])]
    );
    assert!(round.problems.contains(&NodeProblem::Conflict {
        node: "b-clash".into(),
        cidr: net("10.0.0.0/24"),
        holder: "a-preset".into(),
    }));
    assert!(
        round
            .problems
            .iter()
            .any(|p| matches!(p, NodeProblem::Outside { node, .. } if node == "outside")),
        "{:?}",
        round.problems
    );
    assert_eq!(cidrs_of(&nodes, "a-preset").await, ["10.0.0.0/24"]);
    assert_eq!(cidrs_of(&nodes, "b-clash").await, ["10.0.0.0/24"]);
    assert_eq!(cidrs_of(&nodes, "outside").await, ["192.168.7.0/24"]);
}

#[tokio::test]
async fn two_controllers_from_one_state_cannot_both_assign() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    add_node(&nodes, "n1", &[]).await;
    let c = config(&["10.0.0.0/16"]);
    let a = NodeIpamReconciler::new(client.clone(), c.clone()).unwrap();
    let b = NodeIpamReconciler::new(client.clone(), c).unwrap();
    let snap_a = a.snapshot().await.unwrap();
    let snap_b = b.snapshot().await.unwrap();
    // B's view is stale in a way a Node resourceVersion cannot catch: it
    // has n2 (created since) but not n1, so B plans n1's CIDR for n2.
    add_node(&nodes, "n2", &[]).await;
    let mut snap_b_view = snap_b.clone();
    snap_b_view.nodes = vec![nodes.get("n2").await.unwrap()];
    let plan_a = a.plan(&snap_a).unwrap();
    let plan_b = b.plan(&snap_b_view).unwrap();
    assert_eq!(plan_a.assignments[0].cidrs, plan_b.assignments[0].cidrs);

    a.apply(&snap_a, plan_a).await.unwrap();
    let err = b.apply(&snap_b_view, plan_b).await.unwrap_err();
    assert!(
        matches!(err, NodeIpamRunError::LedgerConflict { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "ConfigMap {LEDGER_NAMESPACE}/{LEDGER_NAME} (NodeIPAM ledger) changed since it was \
             read (another controller assigning?); round aborted, nothing assigned"
        )
    );
    assert_eq!(cidrs_of(&nodes, "n1").await, ["10.0.0.0/24"]);
    assert!(cidrs_of(&nodes, "n2").await.is_empty());

    // B retries from fresh state: n2 gets the next CIDR; the ledger ends
    // empty once every claim is on its Node.
    b.reconcile_once().await.unwrap();
    assert_eq!(cidrs_of(&nodes, "n2").await, ["10.0.1.0/24"]);
    b.reconcile_once().await.unwrap();
    let ledger: Api<ConfigMap> = Api::namespaced(client, LEDGER_NAMESPACE);
    let data = ledger
        .get(LEDGER_NAME)
        .await
        .unwrap()
        .data
        .unwrap_or_default();
    assert!(data.is_empty(), "{data:?}");
}

#[tokio::test]
async fn a_pending_claim_is_honoured_after_a_crash() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    add_node(&nodes, "n1", &[]).await;
    add_node(&nodes, "n2", &[]).await;
    // A controller that recorded its claim (n2 -> 10.0.5.0/24) and died
    // before writing the Node.
    let ledger: Api<ConfigMap> = Api::namespaced(client.clone(), LEDGER_NAMESPACE);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(LEDGER_NAME.into());
    cm.data = Some([("n2".to_string(), "10.0.5.0/24".to_string())].into());
    ledger.create(&PostParams::default(), &cm).await.unwrap();
    NodeIpamReconciler::new(client, config(&["10.0.0.0/16"]))
        .unwrap()
        .reconcile_once()
        .await
        .unwrap();
    assert_eq!(cidrs_of(&nodes, "n1").await, ["10.0.0.0/24"]);
    assert_eq!(cidrs_of(&nodes, "n2").await, ["10.0.5.0/24"]);
}

#[tokio::test]
async fn disabled_is_refused() {
    let (_server, client) = client();
    let mut c = config(&["10.0.0.0/16"]);
    c.enable_node_ipam = false;
    assert!(matches!(
        NodeIpamReconciler::new(client, c),
        Err(NodeIpamRunError::Disabled)
    ));
}

/// Waits until Node `name` has `want` as podCIDRs.
async fn eventually(nodes: &Api<Node>, name: &str, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = nodes
            .get_opt(name)
            .await
            .unwrap()
            .map(|n| node_pod_cidrs(&n))
            .unwrap_or_default();
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Node {name}: podCIDRs {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_loop_follows_node_changes() {
    let (_server, client) = client();
    let nodes: Api<Node> = Api::all(client.clone());
    add_node(&nodes, "n1", &[]).await;
    let r = NodeIpamReconciler::new(client, config(&["10.0.0.0/16", "fd00::/48"])).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = NodeIpamLoopConfig {
        debounce: Duration::from_millis(20),
        retry: Duration::from_millis(100),
        ..NodeIpamLoopConfig::default()
    };
    let task = tokio::spawn(r.run(settings, async {
        let _ = stopped.await;
    }));
    eventually(&nodes, "n1", &["10.0.0.0/24", "fd00::/64"]).await;
    add_node(&nodes, "n2", &[]).await;
    eventually(&nodes, "n2", &["10.0.1.0/24", "fd00:0:0:1::/64"]).await;
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    add_node(&nodes, "n3", &[]).await;
    eventually(&nodes, "n3", &["10.0.0.0/24", "fd00::/64"]).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
