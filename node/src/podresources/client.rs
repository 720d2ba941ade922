//! [`KubeletPodResources`]: the gRPC client of the kubelet's socket.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::proto::{
    GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, GET_PATH, LIST_PATH, SERVICE,
};
use super::{pod_devices, PodDevices, PodResources, PodResourcesError, DEFAULT_TIMEOUT};

/// Largest answer accepted: a `List` of a busy node outgrows tonic's 4 MiB
/// default; the kubelet's own client allows 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;

/// The kubelet's PodResources API over its unix socket.
///
/// Constructing it does no I/O: the connection is made by the first call
/// and kept (tonic's channel redials by itself when the kubelet restarts;
/// after a call fails as unreachable the next call dials afresh, so a
/// missing socket is reported as such). Share one instance: it remembers
/// whether the kubelet serves `Get`.
#[derive(Debug)]
pub struct KubeletPodResources {
    socket: PathBuf,
    timeout: Duration,
    /// Set once the kubelet answered that it does not serve `Get`.
    list_only: AtomicBool,
    channel: Mutex<Option<Channel>>,
}

impl KubeletPodResources {
    /// A client of the socket at `socket` (usually [`super::DEFAULT_SOCKET`]),
    /// with the [`DEFAULT_TIMEOUT`] per call. Connects lazily.
    pub fn connect(socket: impl Into<PathBuf>) -> KubeletPodResources {
        KubeletPodResources {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
            list_only: AtomicBool::new(false),
            channel: Mutex::new(None),
        }
    }

    /// The same client with another limit per gRPC call (dialing included).
    pub fn with_timeout(mut self, timeout: Duration) -> KubeletPodResources {
        self.timeout = timeout;
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<Channel>> {
        // The guarded value is a cheap handle replaced whole: a poisoned
        // lock holds nothing half-written.
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn channel(&self) -> Result<Channel, PodResourcesError> {
        if let Some(channel) = self.cached().clone() {
            return Ok(channel);
        }
        let path = self.socket.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        });
        // The authority is not used to route anything on a unix socket.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(connector)
            .await
            .map_err(|e| self.connect_error(&e))?;
        *self.cached() = Some(channel.clone());
        Ok(channel)
    }

    fn connect_error(&self, error: &tonic::transport::Error) -> PodResourcesError {
        let mut reason = error.to_string();
        let mut cause = error.source();
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::NotFound {
                    return PodResourcesError::SocketMissing {
                        path: self.socket.clone(),
                    };
                }
            }
            reason.push_str(": ");
            reason.push_str(&e.to_string());
            cause = e.source();
        }
        PodResourcesError::Connect {
            path: self.socket.clone(),
            reason,
        }
    }

    fn rpc_error(&self, method: &'static str, status: &Status) -> PodResourcesError {
        PodResourcesError::Rpc {
            method,
            path: self.socket.clone(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// One unary call within the timeout. The outer error is about reaching
    /// the kubelet; the inner one is the status it answered with.
    async fn call<Req, Resp>(
        &self,
        method: &'static str,
        path: &'static str,
        message: Req,
    ) -> Result<Result<Resp, Status>, PodResourcesError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let exchange = async {
            let mut grpc = tonic::client::Grpc::new(self.channel().await?)
                .max_decoding_message_size(MAX_MESSAGE);
            if let Err(e) = grpc.ready().await {
                *self.cached() = None;
                return Err(self.connect_error(&e));
            }
            let mut request = tonic::Request::new(message);
            request
                .extensions_mut()
                .insert(tonic::GrpcMethod::new(SERVICE, method));
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            let answer = grpc
                .unary(request, PathAndQuery::from_static(path), codec)
                .await;
            Ok(answer.map(tonic::Response::into_inner))
        };
        let answer = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer?,
            Err(_) => {
                *self.cached() = None;
                return Err(PodResourcesError::Timeout {
                    method,
                    path: self.socket.clone(),
                    after: self.timeout,
                });
            }
        };
        if let Err(status) = &answer {
            if status.code() == Code::Unavailable {
                // Dial afresh next time, so that a vanished socket is
                // reported as missing rather than as a failed call.
                *self.cached() = None;
            }
        }
        Ok(answer)
    }

    async fn pod_devices(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<PodDevices, PodResourcesError> {
        let not_found = || PodResourcesError::PodNotFound {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
        };
        if !self.list_only.load(Ordering::Relaxed) {
            let request = GetPodResourcesRequest {
                pod_name: pod.to_string(),
                pod_namespace: namespace.to_string(),
            };
            let answer: Result<GetPodResourcesResponse, Status> =
                self.call("Get", GET_PATH, request).await?;
            match answer {
                Ok(response) => {
                    return response
                        .pod_resources
                        .as_ref()
                        .map(pod_devices)
                        .ok_or_else(not_found);
                }
                Err(status) if get_not_served(&status) => {
                    self.list_only.store(true, Ordering::Relaxed);
                    tracing::info!(
                        socket = %self.socket.display(),
                        code = ?status.code(),
                        message = status.message(),
                        "kubelet does not serve PodResources Get; using List from now on"
                    );
                }
                // The kubelet answers a Pod it does not know with a plain
                // error (code Unknown): ask List, which tells "not found"
                // apart from a failure without reading the message.
                Err(status) if status.code() == Code::Unknown => {
                    tracing::debug!(
                        pod = %format_args!("{namespace}/{pod}"),
                        message = status.message(),
                        "PodResources Get failed; asking List"
                    );
                }
                Err(status) => return Err(self.rpc_error("Get", &status)),
            }
        }
        let answer: Result<ListPodResourcesResponse, Status> = self
            .call("List", LIST_PATH, ListPodResourcesRequest {})
            .await?;
        let list = answer.map_err(|status| self.rpc_error("List", &status))?;
        list.pod_resources
            .iter()
            .find(|p| p.namespace == namespace && p.name == pod)
            .map(pod_devices)
            .ok_or_else(not_found)
    }
}

/// Whether `status` says the kubelet has no `Get` to offer: kubelets before
/// 1.27 do not know the method; later ones with the `KubeletPodResourcesGet`
/// feature gate off answer with a plain error saying it is disabled.
fn get_not_served(status: &Status) -> bool {
    match status.code() {
        Code::Unimplemented => true,
        Code::Unknown => status.message().contains("disabled"),
        _ => false,
    }
}

impl PodResources for KubeletPodResources {
    fn devices<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
    ) -> BoxFuture<'a, Result<PodDevices, PodResourcesError>> {
        Box::pin(self.pod_devices(namespace, pod))
    }
}
