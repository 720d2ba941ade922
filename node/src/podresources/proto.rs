//! The kubelet's PodResources v1 messages (`package v1`, service
//! `PodResourcesLister`), declared by hand.
//!
//! Every struct mirrors one message of `k8s.io/kubelet/pkg/apis/podresources/v1/api.proto`
//! field for field: the tags and wire types below are the proto's field
//! numbers and types, so these structs encode and decode the kubelet's bytes
//! without `prost-build` (and without `protoc`). Rust names follow prost's
//! conventions (`NUMANode` is [`NumaNode`], `CDIDevice` is [`CdiDevice`]).
//! Field 1 of `DynamicResource` is reserved upstream and left out here.

/// The gRPC service name (`<package>.<service>`).
pub const SERVICE: &str = "v1.PodResourcesLister";
/// Path of the `List` method.
pub const LIST_PATH: &str = "/v1.PodResourcesLister/List";
/// Path of the `Get` method.
pub const GET_PATH: &str = "/v1.PodResourcesLister/Get";
/// Path of the `GetAllocatableResources` method.
pub const GET_ALLOCATABLE_PATH: &str = "/v1.PodResourcesLister/GetAllocatableResources";

/// Request of `List`: no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesRequest {}

/// Answer of `List`: every active Pod of the node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodResourcesResponse {
    /// One entry per Pod.
    #[prost(message, repeated, tag = "1")]
    pub pod_resources: Vec<PodResources>,
}

/// Request of `GetAllocatableResources`: no fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AllocatableResourcesRequest {}

/// Answer of `GetAllocatableResources`: what the node can hand out.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AllocatableResourcesResponse {
    /// Devices by resource name.
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<ContainerDevices>,
    /// Allocatable CPU IDs.
    #[prost(int64, repeated, tag = "2")]
    pub cpu_ids: Vec<i64>,
    /// Allocatable memory and hugepages.
    #[prost(message, repeated, tag = "3")]
    pub memory: Vec<ContainerMemory>,
}

/// Request of `Get`: one Pod by namespace and name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetPodResourcesRequest {
    /// `metadata.name` of the Pod.
    #[prost(string, tag = "1")]
    pub pod_name: String,
    /// `metadata.namespace` of the Pod.
    #[prost(string, tag = "2")]
    pub pod_namespace: String,
}

/// Answer of `Get`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetPodResourcesResponse {
    /// The Pod's resources (absent only from a misbehaving server).
    #[prost(message, optional, tag = "1")]
    pub pod_resources: Option<PodResources>,
}

/// What the kubelet assigned to one Pod.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodResources {
    /// Pod name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Pod namespace.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Its containers (including restartable init containers).
    #[prost(message, repeated, tag = "3")]
    pub containers: Vec<ContainerResources>,
}

/// What the kubelet assigned to one container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerResources {
    /// Container name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Device-plugin devices, by resource name.
    #[prost(message, repeated, tag = "2")]
    pub devices: Vec<ContainerDevices>,
    /// Exclusive CPU IDs.
    #[prost(int64, repeated, tag = "3")]
    pub cpu_ids: Vec<i64>,
    /// Memory and hugepages pinned to NUMA nodes.
    #[prost(message, repeated, tag = "4")]
    pub memory: Vec<ContainerMemory>,
    /// Devices from dynamic resource allocation (DRA) claims.
    #[prost(message, repeated, tag = "5")]
    pub dynamic_resources: Vec<DynamicResource>,
}

/// Memory of one type assigned to a container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMemory {
    /// `memory` or a hugepages size such as `hugepages-1Gi`.
    #[prost(string, tag = "1")]
    pub memory_type: String,
    /// Bytes.
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// The NUMA nodes it comes from.
    #[prost(message, optional, tag = "3")]
    pub topology: Option<TopologyInfo>,
}

/// Device IDs of one resource assigned to a container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerDevices {
    /// Extended resource name, e.g. `intel.com/sriov_netdevice`.
    #[prost(string, tag = "1")]
    pub resource_name: String,
    /// Device IDs as the device plugin reported them (PCI addresses for
    /// SR-IOV VFs).
    #[prost(string, repeated, tag = "2")]
    pub device_ids: Vec<String>,
    /// The NUMA nodes the devices sit on.
    #[prost(message, optional, tag = "3")]
    pub topology: Option<TopologyInfo>,
}

/// Hardware placement of a resource.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TopologyInfo {
    /// NUMA nodes.
    #[prost(message, repeated, tag = "1")]
    pub nodes: Vec<NumaNode>,
}

/// One NUMA node (`NUMANode` in the proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NumaNode {
    /// NUMA node ID (the proto's field `ID`).
    #[prost(int64, tag = "1")]
    pub id: i64,
}

/// Devices a container got from one DRA claim.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DynamicResource {
    /// Claim name.
    #[prost(string, tag = "2")]
    pub claim_name: String,
    /// Claim namespace.
    #[prost(string, tag = "3")]
    pub claim_namespace: String,
    /// The devices allocated for the claim.
    #[prost(message, repeated, tag = "4")]
    pub claim_resources: Vec<ClaimResource>,
}

/// One device allocated for a DRA claim.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClaimResource {
    /// CDI devices the device maps to.
    #[prost(message, repeated, tag = "1")]
    pub cdi_devices: Vec<CdiDevice>,
    /// DRA driver name.
    #[prost(string, tag = "2")]
    pub driver_name: String,
    /// Resource pool name.
    #[prost(string, tag = "3")]
    pub pool_name: String,
    /// Device name within the pool.
    #[prost(string, tag = "4")]
    pub device_name: String,
}

/// A CDI device (`CDIDevice` in the proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CdiDevice {
    /// Fully qualified CDI name, `vendor.com/class=device`.
    #[prost(string, tag = "1")]
    pub name: String,
}
