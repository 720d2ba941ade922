//! Spur's admission hooks in the embedded API server, through HTTP: kube
//! clients (and kubectl, when installed) see the refusals a cluster with
//! Spur installed gives.
//!
//! The hooks are registered with `spur_controller::admission::install_embedded`
//! (feature `embedded`), as the simulator registers them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Client, CustomResourceExt};
use serde_json::{json, Value};
use spur_controller::admission::{install_embedded, IPPOOL_HOOK, NAD_HOOK};
use spur_core::ipamblock::{BlockAllocation, IPAMBlock, IPAMBlockSpec, Owner};
use spur_core::ippool::{IPPool, IPPoolSpec, IpRange, SubnetInfo};
use spur_kubeapi::ApiServer;

/// A server with Spur's CRDs and hooks, and a client of it.
async fn cluster() -> (ApiServer, Client) {
    let server = ApiServer::in_memory();
    install_embedded(server.store().admission_mut());
    let client = Client::new(server.service(), "default");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [IPPool::crd(), IPAMBlock::crd()] {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    (server, client)
}

fn pool(name: &str, cidr: &str, gw: &str) -> IPPool {
    IPPool::new(
        name,
        IPPoolSpec {
            ip_ranges: vec![IpRange::cidr(cidr)],
            subnet_info: SubnetInfo {
                gateway: gw.into(),
                prefix_length: 24,
                vlan: Some(100),
            },
            exclude: vec![],
        },
    )
}

fn block(name: &str, pool: &str, cidr: &str, offsets: &[u8]) -> IPAMBlock {
    IPAMBlock::new(
        name,
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

fn nads(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions");
    Api::namespaced_with(client.clone(), "default", &ar)
}

fn nad(name: &str, config: Value, annotations: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"config": config.to_string()}
    }))
    .unwrap()
}

/// The refusal of a request: code, reason and message of the Status.
fn refusal<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason, s.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A refusal by `hook`: HTTP 400 BadRequest, worded as a webhook's.
fn denied_by<T: std::fmt::Debug>(hook: &str, r: Result<T, kube::Error>) -> String {
    let (code, reason, message) = refusal(r);
    assert_eq!((code, reason.as_str()), (400, "BadRequest"), "{message}");
    let prefix = format!("admission webhook \"{hook}\" denied the request: ");
    assert!(message.starts_with(&prefix), "{message}");
    message
}

#[tokio::test]
async fn overlapping_pool_is_refused_naming_both_pools() {
    let (_server, client) = cluster().await;
    let pools: Api<IPPool> = Api::all(client);
    let pp = PostParams::default();
    pools
        .create(&pp, &pool("vlan100-ipv4", "10.10.1.0/26", "10.10.1.1"))
        .await
        .unwrap();
    let msg = denied_by(
        IPPOOL_HOOK,
        pools
            .create(&pp, &pool("overlapping-pool", "10.10.1.32/27", "10.10.1.1"))
            .await,
    );
    insta::assert_snapshot!(msg, @r#"admission webhook "ippools.spur.dev" denied the request: IPPool overlapping-pool: spec.ipRanges[0].cidr = "10.10.1.32/27": overlaps 10.10.1.0/26 (spec.ipRanges[0].cidr) of IPPool vlan100-ipv4"#);
    assert!(pools.get_opt("overlapping-pool").await.unwrap().is_none());

    // A dry run is refused the same way; a pool next door is accepted.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    denied_by(
        IPPOOL_HOOK,
        pools
            .create(
                &dry,
                &pool("overlapping-pool", "10.10.1.32/27", "10.10.1.1"),
            )
            .await,
    );
    pools
        .create(&pp, &pool("vlan100-more", "10.10.1.64/26", "10.10.1.1"))
        .await
        .unwrap();
    // A pool invalid alone is refused with spur-core's message.
    let msg = denied_by(
        IPPOOL_HOOK,
        pools
            .create(&pp, &pool("outside", "10.10.2.0/26", "10.10.1.1"))
            .await,
    );
    assert!(msg.contains("IPPool outside: spec.ipRanges[0]"), "{msg}");
}

#[tokio::test]
async fn pool_in_use_keeps_its_ranges_and_cannot_be_deleted() {
    let (_server, client) = cluster().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let blocks: Api<IPAMBlock> = Api::all(client);
    let pp = PostParams::default();
    pools
        .create(&pp, &pool("vlan100-ipv4", "10.10.1.0/26", "10.10.1.1"))
        .await
        .unwrap();
    blocks
        .create(
            &pp,
            &block("vlan100-ipv4-0", "vlan100-ipv4", "10.10.1.0/26", &[2, 3]),
        )
        .await
        .unwrap();

    let delete = denied_by(
        IPPOOL_HOOK,
        pools.delete("vlan100-ipv4", &DeleteParams::default()).await,
    );
    let mut shrunk = pools.get("vlan100-ipv4").await.unwrap();
    shrunk.spec.ip_ranges[0] = IpRange::cidr("10.10.1.0/27");
    let change = denied_by(
        IPPOOL_HOOK,
        pools.replace("vlan100-ipv4", &pp, &shrunk).await,
    );
    // A merge patch goes through the same check.
    let patch = json!({"spec": {"subnetInfo": {"gateway": "10.10.1.254"}}});
    let gateway = denied_by(
        IPPOOL_HOOK,
        pools
            .patch(
                "vlan100-ipv4",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await,
    );
    insta::assert_snapshot!(format!("{delete}\n{change}\n{gateway}"), @r#"
    admission webhook "ippools.spur.dev" denied the request: IPPool vlan100-ipv4: cannot be deleted while 2 address(es) are allocated from it
    admission webhook "ippools.spur.dev" denied the request: IPPool vlan100-ipv4: spec.ipRanges = "10.10.1.0/26": range 10.10.1.0/26 (was spec.ipRanges[0]) cannot be removed or changed while addresses are allocated from the pool; ranges may only be added
    admission webhook "ippools.spur.dev" denied the request: IPPool vlan100-ipv4: spec.subnetInfo.gateway = "10.10.1.254": cannot change from 10.10.1.1 while addresses are allocated from the pool
    "#);

    // Adding a range, labels and status writes are fine while in use.
    let mut grown = pools.get("vlan100-ipv4").await.unwrap();
    grown
        .spec
        .ip_ranges
        .push(IpRange::start_end("10.10.1.100", "10.10.1.120"));
    pools.replace("vlan100-ipv4", &pp, &grown).await.unwrap();
    let label = json!({"metadata": {"labels": {"team": "net"}}});
    pools
        .patch(
            "vlan100-ipv4",
            &PatchParams::default(),
            &Patch::Merge(&label),
        )
        .await
        .unwrap();
    let status = json!({"status": {"usage": {"total": 83, "used": 2}}});
    pools
        .patch_status(
            "vlan100-ipv4",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();

    // Once the block holds nothing, the ranges may change and the pool go.
    let mut b = blocks.get("vlan100-ipv4-0").await.unwrap();
    b.spec.allocations.clear();
    blocks.replace("vlan100-ipv4-0", &pp, &b).await.unwrap();
    let mut shrunk = pools.get("vlan100-ipv4").await.unwrap();
    shrunk.spec.ip_ranges = vec![IpRange::cidr("10.10.1.0/27")];
    pools.replace("vlan100-ipv4", &pp, &shrunk).await.unwrap();
    pools
        .delete("vlan100-ipv4", &DeleteParams::default())
        .await
        .unwrap();
    assert!(pools.get_opt("vlan100-ipv4").await.unwrap().is_none());
}

#[tokio::test]
async fn bad_network_attachment_definitions_are_refused() {
    let (_server, client) = cluster().await;
    let api = nads(&client);
    let pp = PostParams::default();
    let none = json!({});

    let vlan5000 =
        json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 5000});
    let vlan = denied_by(
        NAD_HOOK,
        api.create(&pp, &nad("vlan5000", vlan5000, none.clone()))
            .await,
    );
    assert!(vlan.contains("spec.config.vlan = 5000"), "{vlan}");

    let sriov = json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "sriov",
                       "ipam": {"type": "spur", "ippools": ["sriov-ipv4"]}});
    let resource = denied_by(
        NAD_HOOK,
        api.create(&pp, &nad("sriov", sriov.clone(), none.clone()))
            .await,
    );
    assert!(
        resource.contains("k8s.v1.cni.cncf.io/resourceName"),
        "{resource}"
    );

    let macvlan = |ipam: Value| {
        json!({"cniVersion": "0.3.1", "type": "macvlan", "master": "eth1", "mode": "bridge",
               "ipam": ipam})
    };
    let bad_ipam =
        macvlan(json!({"type": "spur", "ippools": ["ok"], "addresses": [{"address": "10.0.0.1"}]}));
    let ipam = denied_by(
        NAD_HOOK,
        api.create(&pp, &nad("macvlan-bad", bad_ipam, none.clone()))
            .await,
    );
    let not_json = denied_by(
        NAD_HOOK,
        api.create(
            &pp,
            &serde_json::from_value(json!({
                "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": "broken"},
                "spec": {"config": "{\"type\": \"spur\", \"networkType\": \"vlan\""}
            }))
            .unwrap(),
        )
        .await,
    );
    insta::assert_snapshot!(format!("{vlan}\n{resource}\n{ipam}\n{not_json}"), @r#"
    admission webhook "network-attachment-definitions.spur.dev" denied the request: NetworkAttachmentDefinition default/vlan5000: spec.config.vlan = 5000: VLAN ID must be 0 (untagged) or 1-4094
    admission webhook "network-attachment-definitions.spur.dev" denied the request: NetworkAttachmentDefinition default/sriov: metadata.annotations[k8s.v1.cni.cncf.io/resourceName]: is required for networkType "sriov": it names the device-plugin resource the VFs come from (like intel.com/sriov_net_A)
    admission webhook "network-attachment-definitions.spur.dev" denied the request: NetworkAttachmentDefinition default/macvlan-bad: spec.config.ipam.addresses[0].address = "10.0.0.1": lacks a prefix length: an address is written like 10.10.0.1/24 or fd00::1/64
    admission webhook "network-attachment-definitions.spur.dev" denied the request: NetworkAttachmentDefinition default/broken: spec.config: cannot be decoded: EOF while parsing an object at line 1 column 38, near '"networkType": "vlan"'
    "#);
    for name in ["vlan5000", "sriov", "macvlan-bad", "broken"] {
        assert!(api.get_opt(name).await.unwrap().is_none(), "{name} stored");
    }

    // Accepted: the same sriov network with its resource, macvlan with
    // another IPAM, and a Spur network naming pools that do not exist yet.
    let named = json!({"k8s.v1.cni.cncf.io/resourceName": "intel.com/sriov_net_A"});
    api.create(&pp, &nad("sriov", sriov, named)).await.unwrap();
    let host_local = macvlan(json!({"type": "host-local", "subnet": "10.1.0.0/24"}));
    api.create(&pp, &nad("macvlan", host_local, none.clone()))
        .await
        .unwrap();
    let later = json!({"cniVersion": "1.0.0", "type": "spur", "networkType": "vlan", "vlan": 300,
                       "ipam": {"type": "spur", "ippools": ["created-later"]}});
    api.create(&pp, &nad("vlan300", later, none.clone()))
        .await
        .unwrap();

    // Removing the resource name of the stored sriov network is refused;
    // deleting it is not.
    let drop_resource =
        json!({"metadata": {"annotations": {"k8s.v1.cni.cncf.io/resourceName": null}}});
    denied_by(
        NAD_HOOK,
        api.patch(
            "sriov",
            &PatchParams::default(),
            &Patch::Merge(&drop_resource),
        )
        .await,
    );
    api.delete("sriov", &DeleteParams::default()).await.unwrap();
}

// ---------------------------------------------------------------------------
// kubectl over TCP

/// The seed-example testbed's manifests.
fn seed_manifest(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbeds/seed-example/manifests")
        .join(name)
        .display()
        .to_string()
}

/// Runs kubectl against `kubeconfig`; (success, stdout, stderr).
async fn kubectl(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .arg("--cache-dir")
        .arg(dir.join("kube-cache"))
        .arg("--request-timeout=10s")
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", dir);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_prints_the_refusal() {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("kubectl").is_file()))
        .unwrap_or(false);
    if !on_path {
        eprintln!("kubectl not found: skipping kubectl_apply_prints_the_refusal");
        return;
    }
    let (server, _client) = cluster().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve_tcp(listener).await });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kubeconfig"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\n\
             current-context: lab\nusers:\n- name: lab\n  user: {{}}\n"
        ),
    )
    .unwrap();

    let pools = seed_manifest("10-ippools.yaml");
    let (ok, out, err) = kubectl(dir.path(), &["apply", "--validate=false", "-f", &pools]).await;
    assert!(ok, "{out}\n{err}");
    let overlapping = seed_manifest("40-overlapping-pool.yaml");
    let (ok, out, err) = kubectl(
        dir.path(),
        &["apply", "--validate=false", "-f", &overlapping],
    )
    .await;
    assert!(!ok, "the overlapping pool was accepted: {out}");
    let expected = format!(
        "Error from server (BadRequest): error when creating \"{overlapping}\": admission \
         webhook \"ippools.spur.dev\" denied the request: IPPool overlapping-pool: \
         spec.ipRanges[0].cidr = \"10.10.1.32/27\": overlaps 10.10.1.0/26 \
         (spec.ipRanges[0].cidr) of IPPool vlan100-ipv4"
    );
    assert_eq!(err.trim(), expected);
    task.abort();
}
