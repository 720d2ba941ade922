//! A kubelet PodResources v1 gRPC server on a unix socket: what the
//! hardware harness's kubelet stand-in serves to each node's agent, and
//! what the client's tests talk to.
//!
//! [`PodResourcesServer`] answers `List` and `Get` from a
//! [`PodResourcesSource`]: [`StaticPodResources`] (each Pod's devices
//! under one container, [`STATIC_CONTAINER`], resources in name order) or a
//! fixed list of [`proto::PodResources`] messages. Like a kubelet, `Get`
//! can be answered as by a kubelet from before the method existed
//! (`Unimplemented`) or with the `KubeletPodResourcesGet` feature gate off
//! ([`GetMethod`]); an unknown Pod is the kubelet's `Unknown` "pod ... not
//! found". `GetAllocatableResources` and other methods answer
//! `Unimplemented`. The service is routed by hand, as generated code would
//! (`tonic::server::Grpc` with prost's codec), so no `protoc` is needed.
//!
//! What is not here: the client ([`super::KubeletPodResources`]), which
//! devices a Pod gets (the kubelet's device manager, e.g.
//! `spur_testbed::sriov::DeviceManager` in the harness).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::body::Body;
use tonic::{Request, Response, Status};

use super::proto::{
    ContainerDevices, ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse,
    ListPodResourcesRequest, ListPodResourcesResponse, PodResources as PodMsg, GET_PATH, LIST_PATH,
};
use super::StaticPodResources;

/// The container under which [`StaticPodResources`] lists a Pod's devices.
pub const STATIC_CONTAINER: &str = "devices";

/// What a [`PodResourcesServer`] serves: the node's Pods with their
/// devices, as the kubelet's messages.
pub trait PodResourcesSource: Send + Sync {
    /// Every Pod the kubelet knows of.
    fn list(&self) -> Vec<PodMsg>;

    /// Pod `namespace/name`, if known.
    fn get(&self, namespace: &str, name: &str) -> Option<PodMsg> {
        self.list()
            .into_iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }
}

impl PodResourcesSource for Vec<PodMsg> {
    fn list(&self) -> Vec<PodMsg> {
        self.clone()
    }
}

impl PodResourcesSource for StaticPodResources {
    fn list(&self) -> Vec<PodMsg> {
        self.snapshot()
            .into_iter()
            .map(|((namespace, name), devices)| PodMsg {
                name,
                namespace,
                containers: vec![ContainerResources {
                    name: STATIC_CONTAINER.to_string(),
                    devices: devices
                        .into_iter()
                        .map(|(resource_name, device_ids)| ContainerDevices {
                            resource_name,
                            device_ids,
                            topology: None,
                        })
                        .collect(),
                    ..Default::default()
                }],
            })
            .collect()
    }
}

/// How the server answers `Get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GetMethod {
    /// Like a kubelet with `KubeletPodResourcesGet` on.
    #[default]
    Serve,
    /// Like a kubelet from before the method existed (`Unimplemented`).
    Unimplemented,
    /// Like a kubelet with the feature gate off (`Unknown`, "PodResources
    /// API Get method disabled").
    Disabled,
}

/// Why the server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be bound.
    #[error("PodResources server: cannot bind unix socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("PodResources server on {}: {source}", path.display())]
    Serve {
        /// The socket path.
        path: PathBuf,
        /// The failure.
        source: tonic::transport::Error,
    },
}

struct State {
    source: Arc<dyn PodResourcesSource>,
    get: GetMethod,
    get_calls: AtomicUsize,
    list_calls: AtomicUsize,
}

/// The kubelet's PodResources service over a [`PodResourcesSource`] (see
/// the module doc). Cloning shares the source and the call counters.
#[derive(Clone)]
pub struct PodResourcesServer(Arc<State>);

impl std::fmt::Debug for PodResourcesServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodResourcesServer")
            .field("get", &self.0.get)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl PodResourcesServer {
    /// A server of `source` that serves `Get`.
    pub fn new(source: Arc<dyn PodResourcesSource>) -> PodResourcesServer {
        PodResourcesServer(Arc::new(State {
            source,
            get: GetMethod::Serve,
            get_calls: AtomicUsize::new(0),
            list_calls: AtomicUsize::new(0),
        }))
    }

    /// The same server answering `Get` as `get` says (fresh counters).
    pub fn with_get(self, get: GetMethod) -> PodResourcesServer {
        PodResourcesServer(Arc::new(State {
            source: self.0.source.clone(),
            get,
            get_calls: AtomicUsize::new(0),
            list_calls: AtomicUsize::new(0),
        }))
    }

    /// How many `Get` and `List` calls it received.
    pub fn calls(&self) -> (usize, usize) {
        (
            self.0.get_calls.load(Ordering::SeqCst),
            self.0.list_calls.load(Ordering::SeqCst),
        )
    }

    /// Binds `path` (creating its directory, replacing a stale socket
    /// file). Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
        let bind_err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        UnixListener::bind(path).map_err(bind_err)
    }

    /// Serves on `listener` (bound at `path`, for errors) until the task
    /// is dropped or aborted.
    pub async fn serve(self, listener: UnixListener, path: &Path) -> Result<(), ServerError> {
        tonic::transport::Server::builder()
            .serve_with_incoming(self, UnixListenerStream::new(listener))
            .await
            .map_err(|source| ServerError::Serve {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Binds `path` and serves on a task of the current runtime; returns
    /// the task (abort it to stop). Must be called inside a tokio runtime.
    pub fn spawn(
        self,
        path: &Path,
    ) -> Result<tokio::task::JoinHandle<Result<(), ServerError>>, ServerError> {
        let listener = PodResourcesServer::bind(path)?;
        let path = path.to_path_buf();
        Ok(tokio::spawn(
            async move { self.serve(listener, &path).await },
        ))
    }
}

fn status_only(status: Status) -> BoxFuture<'static, Result<http::Response<Body>, Infallible>> {
    Box::pin(async move { Ok(status.into_http()) })
}

impl tower::Service<http::Request<Body>> for PodResourcesServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let state = self.0.clone();
        match req.uri().path() {
            GET_PATH => {
                state.get_calls.fetch_add(1, Ordering::SeqCst);
                match state.get {
                    GetMethod::Unimplemented => status_only(Status::unimplemented(
                        "unknown method Get for service v1.PodResourcesLister",
                    )),
                    GetMethod::Disabled => {
                        status_only(Status::unknown("PodResources API Get method disabled"))
                    }
                    GetMethod::Serve => {
                        let get = tower::service_fn(move |r: Request<GetPodResourcesRequest>| {
                            let state = state.clone();
                            async move {
                                let r = r.into_inner();
                                let pod = state
                                    .source
                                    .get(&r.pod_namespace, &r.pod_name)
                                    .ok_or_else(|| {
                                        Status::unknown(format!(
                                            "pod {} in namespace {} not found",
                                            r.pod_name, r.pod_namespace
                                        ))
                                    })?;
                                Ok::<_, Status>(Response::new(GetPodResourcesResponse {
                                    pod_resources: Some(pod),
                                }))
                            }
                        });
                        Box::pin(async move {
                            let mut grpc =
                                tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                            Ok(grpc.unary(get, req).await)
                        })
                    }
                }
            }
            LIST_PATH => {
                state.list_calls.fetch_add(1, Ordering::SeqCst);
                let list = tower::service_fn(move |_: Request<ListPodResourcesRequest>| {
                    let pods = state.source.list();
                    async move {
                        Ok::<_, Status>(Response::new(ListPodResourcesResponse {
                            pod_resources: pods,
                        }))
                    }
                });
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.unary(list, req).await)
                })
            }
            other => status_only(Status::unimplemented(format!("unknown method {other}"))),
        }
    }
}

impl tonic::server::NamedService for PodResourcesServer {
    const NAME: &'static str = super::proto::SERVICE;
}
