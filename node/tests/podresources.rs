//! The kubelet PodResources client against the library's gRPC server on a
//! unix socket (`podresources::server`, the kubelet stand-in), and the
//! hand-written messages against hand-computed protobuf bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use spur_node::podresources::proto::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, CdiDevice, ClaimResource,
    ContainerDevices, ContainerMemory, ContainerResources, DynamicResource, GetPodResourcesRequest,
    GetPodResourcesResponse, ListPodResourcesRequest, ListPodResourcesResponse, NumaNode,
    PodResources as PodMsg, TopologyInfo,
};
use spur_node::podresources::server::{GetMethod, PodResourcesServer, STATIC_CONTAINER};
use spur_node::podresources::{
    KubeletPodResources, PodDevices, PodResources, PodResourcesError, StaticPodResources,
    DEFAULT_SOCKET,
};
use tokio::net::UnixListener;

/// A kubelet stand-in serving `pods`, answering `Get` as `get` says.
fn kubelet(pods: Vec<PodMsg>, get: GetMethod) -> PodResourcesServer {
    PodResourcesServer::new(Arc::new(pods)).with_get(get)
}

/// Serves `kubelet` on `dir/kubelet.sock` until the test's runtime ends.
fn serve(dir: &Path, kubelet: PodResourcesServer) -> PathBuf {
    let path = dir.join("kubelet.sock");
    kubelet.spawn(&path).unwrap();
    path
}

fn devices(resource: &str, ids: &[&str]) -> ContainerDevices {
    ContainerDevices {
        resource_name: resource.to_string(),
        device_ids: ids.iter().map(|s| s.to_string()).collect(),
        topology: Some(TopologyInfo {
            nodes: vec![NumaNode { id: 0 }],
        }),
    }
}

fn container(name: &str, devices: Vec<ContainerDevices>) -> ContainerResources {
    ContainerResources {
        name: name.to_string(),
        devices,
        cpu_ids: vec![2, 3],
        ..Default::default()
    }
}

fn pod(namespace: &str, name: &str, containers: Vec<ContainerResources>) -> PodMsg {
    PodMsg {
        name: name.to_string(),
        namespace: namespace.to_string(),
        containers,
    }
}

const VF: &str = "intel.com/sriov_netdevice";
const GPU: &str = "nvidia.com/gpu";

/// Two Pods; `tenant-a/cnf` has two containers with VFs and a GPU.
fn pods() -> Vec<PodMsg> {
    vec![
        pod(
            "tenant-b",
            "cnf",
            vec![container("app", vec![devices(VF, &["0000:3b:02.7"])])],
        ),
        pod(
            "tenant-a",
            "cnf",
            vec![
                container(
                    "dataplane",
                    vec![
                        devices(VF, &["0000:3b:02.3", "0000:3b:02.1"]),
                        devices(GPU, &["GPU-1"]),
                    ],
                ),
                container("sidecar", vec![]),
                container(
                    "control",
                    vec![
                        devices(VF, &["0000:3b:02.2", "0000:3b:02.1"]),
                        devices(GPU, &[]),
                    ],
                ),
            ],
        ),
    ]
}

fn expected() -> PodDevices {
    PodDevices::from([
        (
            VF.to_string(),
            vec![
                "0000:3b:02.3".to_string(),
                "0000:3b:02.1".to_string(),
                "0000:3b:02.2".to_string(),
            ],
        ),
        (GPU.to_string(), vec!["GPU-1".to_string()]),
    ])
}

#[tokio::test]
async fn get_returns_the_pods_devices_across_containers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = kubelet(pods(), GetMethod::Serve);
    let client = KubeletPodResources::connect(serve(dir.path(), kubelet.clone()));

    assert_eq!(client.devices("tenant-a", "cnf").await.unwrap(), expected());
    assert_eq!(
        client.devices("tenant-b", "cnf").await.unwrap(),
        PodDevices::from([(VF.to_string(), vec!["0000:3b:02.7".to_string()])])
    );
    assert_eq!(kubelet.calls(), (2, 0));
}

#[tokio::test]
async fn unimplemented_get_falls_back_to_list_once_and_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = kubelet(pods(), GetMethod::Unimplemented);
    let client = KubeletPodResources::connect(serve(dir.path(), kubelet.clone()));

    assert_eq!(client.devices("tenant-a", "cnf").await.unwrap(), expected());
    assert_eq!(kubelet.calls(), (1, 1));
    // Get is not tried again.
    assert_eq!(client.devices("tenant-a", "cnf").await.unwrap(), expected());
    assert_eq!(kubelet.calls(), (1, 2));
}

#[tokio::test]
async fn feature_gated_get_falls_back_to_list_once_and_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = kubelet(pods(), GetMethod::Disabled);
    let client = KubeletPodResources::connect(serve(dir.path(), kubelet.clone()));

    assert_eq!(client.devices("tenant-a", "cnf").await.unwrap(), expected());
    assert_eq!(client.devices("tenant-a", "cnf").await.unwrap(), expected());
    assert_eq!(kubelet.calls(), (1, 2));
}

#[tokio::test]
async fn pod_missing_from_list_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = kubelet(pods(), GetMethod::Unimplemented);
    let client = KubeletPodResources::connect(serve(dir.path(), kubelet.clone()));

    let err = client.devices("tenant-a", "ghost").await.unwrap_err();
    assert!(
        matches!(&err, PodResourcesError::PodNotFound { namespace, pod }
            if namespace == "tenant-a" && pod == "ghost"),
        "{err:?}"
    );
    assert!(err.to_string().contains("tenant-a/ghost"), "{err}");
}

#[tokio::test]
async fn pod_unknown_to_get_is_confirmed_by_list_without_giving_up_get() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = kubelet(pods(), GetMethod::Serve);
    let client = KubeletPodResources::connect(serve(dir.path(), kubelet.clone()));

    let err = client.devices("tenant-a", "ghost").await.unwrap_err();
    assert!(err.to_string().contains("tenant-a/ghost"), "{err}");
    assert_eq!(kubelet.calls(), (1, 1));
    // Get still serves the next Pod.
    assert_eq!(client.devices("tenant-a", "cnf").await.unwrap(), expected());
    assert_eq!(kubelet.calls(), (2, 1));
}

#[tokio::test]
async fn missing_socket_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pod-resources").join("kubelet.sock");
    let client = KubeletPodResources::connect(&path).with_timeout(Duration::from_secs(2));

    let err = client.devices("tenant-a", "cnf").await.unwrap_err();
    assert!(
        matches!(err, PodResourcesError::SocketMissing { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_vanished_kubelet_is_reported_and_a_returning_one_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubelet.sock");
    // A socket nobody accepts on: connecting is refused.
    drop(UnixListener::bind(&path).unwrap());
    let client = KubeletPodResources::connect(&path);
    let err = client.devices("tenant-a", "cnf").await.unwrap_err();
    assert!(matches!(err, PodResourcesError::Connect { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    std::fs::remove_file(&path).unwrap();
    let kubelet = kubelet(pods(), GetMethod::Serve);
    serve(dir.path(), kubelet);
    assert_eq!(client.devices("tenant-a", "cnf").await.unwrap(), expected());
}

#[tokio::test]
async fn static_pod_resources_answers_what_was_set() {
    let pods = StaticPodResources::new();
    pods.set("tenant-a", "cnf", expected());
    assert_eq!(pods.devices("tenant-a", "cnf").await.unwrap(), expected());
    assert_eq!(pods.remove("tenant-a", "cnf"), Some(expected()));
    let err = pods.devices("tenant-a", "cnf").await.unwrap_err();
    assert!(err.to_string().contains("tenant-a/cnf"), "{err}");
    assert_eq!(
        DEFAULT_SOCKET,
        "/var/lib/kubelet/pod-resources/kubelet.sock"
    );
}

/// `message` encodes to exactly `bytes` and decodes back from them.
fn wire<M: Message + Default + PartialEq + Debug>(message: M, bytes: &[u8]) {
    assert_eq!(message.encode_to_vec(), bytes, "{message:?}");
    assert_eq!(M::decode(bytes).unwrap(), message);
}

/// `message` survives an encode/decode round trip.
fn round_trip<M: Message + Default + PartialEq + Debug>(message: M) {
    assert_eq!(
        M::decode(message.encode_to_vec().as_slice()).unwrap(),
        message
    );
}

#[test]
fn field_numbers_match_the_proto() {
    // Key byte: field number << 3 | wire type (0 varint, 2 length-delimited).
    wire(
        ContainerDevices {
            resource_name: "a".into(),
            device_ids: vec!["x".into()],
            topology: None,
        },
        &[0x0a, 0x01, b'a', 0x12, 0x01, b'x'],
    );
    wire(
        ContainerDevices {
            topology: Some(TopologyInfo {
                nodes: vec![NumaNode { id: 1 }],
            }),
            ..Default::default()
        },
        &[0x1a, 0x04, 0x0a, 0x02, 0x08, 0x01],
    );
    wire(
        GetPodResourcesRequest {
            pod_name: "p".into(),
            pod_namespace: "n".into(),
        },
        &[0x0a, 0x01, b'p', 0x12, 0x01, b'n'],
    );
    wire(
        GetPodResourcesResponse {
            pod_resources: Some(PodMsg {
                name: "p".into(),
                ..Default::default()
            }),
        },
        &[0x0a, 0x03, 0x0a, 0x01, b'p'],
    );
    wire(
        ListPodResourcesResponse {
            pod_resources: vec![PodMsg {
                namespace: "n".into(),
                containers: vec![ContainerResources {
                    name: "c".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        },
        &[0x0a, 0x08, 0x12, 0x01, b'n', 0x1a, 0x03, 0x0a, 0x01, b'c'],
    );
    // cpu_ids is packed (proto3 repeated scalars).
    wire(
        ContainerResources {
            name: "c".into(),
            devices: vec![ContainerDevices::default()],
            cpu_ids: vec![1, 2],
            memory: vec![ContainerMemory {
                memory_type: "m".into(),
                size: 5,
                topology: None,
            }],
            dynamic_resources: vec![DynamicResource {
                claim_name: "k".into(),
                ..Default::default()
            }],
        },
        &[
            0x0a, 0x01, b'c', 0x12, 0x00, 0x1a, 0x02, 0x01, 0x02, 0x22, 0x05, 0x0a, 0x01, b'm',
            0x10, 0x05, 0x2a, 0x03, 0x12, 0x01, b'k',
        ],
    );
    wire(
        DynamicResource {
            claim_name: "c".into(),
            claim_namespace: "n".into(),
            claim_resources: vec![ClaimResource {
                cdi_devices: vec![CdiDevice { name: "x".into() }],
                driver_name: "d".into(),
                pool_name: "p".into(),
                device_name: "v".into(),
            }],
        },
        &[
            0x12, 0x01, b'c', 0x1a, 0x01, b'n', 0x22, 0x0e, 0x0a, 0x03, 0x0a, 0x01, b'x', 0x12,
            0x01, b'd', 0x1a, 0x01, b'p', 0x22, 0x01, b'v',
        ],
    );
    wire(
        AllocatableResourcesResponse {
            devices: vec![ContainerDevices::default()],
            cpu_ids: vec![7],
            memory: vec![ContainerMemory::default()],
        },
        &[0x0a, 0x00, 0x12, 0x01, 0x07, 0x1a, 0x00],
    );
    wire(ListPodResourcesRequest {}, &[]);
    wire(AllocatableResourcesRequest {}, &[]);
}

#[test]
fn every_message_round_trips() {
    let topology = Some(TopologyInfo {
        nodes: vec![NumaNode { id: 0 }, NumaNode { id: 1 }],
    });
    let memory = ContainerMemory {
        memory_type: "hugepages-1Gi".into(),
        size: 1 << 30,
        topology: topology.clone(),
    };
    let dynamic = DynamicResource {
        claim_name: "vf".into(),
        claim_namespace: "tenant-a".into(),
        claim_resources: vec![ClaimResource {
            cdi_devices: vec![CdiDevice {
                name: "vendor.com/nic=vf3".into(),
            }],
            driver_name: "nic.vendor.com".into(),
            pool_name: "node-1".into(),
            device_name: "vf3".into(),
        }],
    };
    let mut full = pods().remove(1);
    full.containers[0].memory = vec![memory.clone()];
    full.containers[0].dynamic_resources = vec![dynamic.clone()];

    round_trip(ListPodResourcesRequest {});
    round_trip(ListPodResourcesResponse {
        pod_resources: pods(),
    });
    round_trip(AllocatableResourcesRequest {});
    round_trip(AllocatableResourcesResponse {
        devices: vec![devices(VF, &["0000:3b:02.1", "0000:3b:02.2"])],
        cpu_ids: vec![0, 1, 2, 3],
        memory: vec![memory.clone()],
    });
    round_trip(GetPodResourcesRequest {
        pod_name: "cnf".into(),
        pod_namespace: "tenant-a".into(),
    });
    round_trip(GetPodResourcesResponse {
        pod_resources: Some(full.clone()),
    });
    round_trip(full.clone());
    round_trip(full.containers[0].clone());
    round_trip(memory);
    round_trip(devices(VF, &["0000:3b:02.1"]));
    round_trip(TopologyInfo {
        nodes: vec![NumaNode { id: 7 }],
    });
    round_trip(NumaNode { id: -1 });
    round_trip(dynamic.clone());
    round_trip(dynamic.claim_resources[0].clone());
    round_trip(CdiDevice { name: "x".into() });
}

#[tokio::test]
async fn a_silent_kubelet_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubelet.sock");
    // Bound but never accepted: connecting succeeds, nothing answers.
    let _listener = UnixListener::bind(&path).unwrap();
    let client = KubeletPodResources::connect(&path).with_timeout(Duration::from_millis(200));
    let err = client.devices("tenant-a", "cnf").await.unwrap_err();
    assert!(
        matches!(err, PodResourcesError::Timeout { method: "Get", .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn the_server_lists_static_pod_resources_under_one_container() {
    let dir = tempfile::tempdir().unwrap();
    let pods = Arc::new(StaticPodResources::new());
    pods.set("tenant-a", "cnf", expected());
    let server = PodResourcesServer::new(pods.clone());
    let path = serve(&dir.path().join("pod-resources"), server.clone());
    let client = KubeletPodResources::connect(&path);
    assert_eq!(client.devices("tenant-a", "cnf").await.unwrap(), expected());
    let listed = spur_node::podresources::server::PodResourcesSource::list(pods.as_ref());
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].containers[0].name, STATIC_CONTAINER);
    // Changes are served at once; a removed Pod is unknown.
    pods.remove("tenant-a", "cnf");
    let err = client.devices("tenant-a", "cnf").await.unwrap_err();
    assert!(
        matches!(err, PodResourcesError::PodNotFound { .. }),
        "{err:?}"
    );
    assert_eq!(server.calls(), (2, 1), "Get twice, List once to confirm");
}
