//! The server: the store behind a lock, faults, pause, and two transports:
//! an in-process `tower::Service` for `kube::Client::new`, and HTTP/1.1 on a
//! TCP or unix socket for kubectl. The server has no threads or timers of
//! its own: it runs on whatever runtime drives its futures, simulated time
//! included.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::watch;

use crate::faults::{Fault, Faults};
use crate::http::{handle, render_event, ApiRequest, Reply};
use crate::store::{Clock, Store};

/// The body of every answer.
pub type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// How the server waits for injected latency (tokio's sleep by default, so
/// simulated time applies under a paused or simulated clock).
pub type Sleeper = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Request accounting of one resource, for benchmarks and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceStats {
    /// GET requests (get, list, watch).
    pub reads: u64,
    /// Successful writes (create, update, patch, delete).
    pub writes: u64,
    /// Writes refused with 409 (stale resourceVersion or AlreadyExists).
    pub conflicts: u64,
    /// Other failed writes.
    pub failed_writes: u64,
    /// Bytes of the objects successful writes stored (their JSON).
    pub bytes_stored: u64,
    /// The largest object a write stored, in bytes of JSON.
    pub max_object_bytes: u64,
}

struct Inner {
    store: Mutex<Store>,
    stats: Mutex<std::collections::BTreeMap<String, ResourceStats>>,
    faults: Mutex<Faults>,
    paused: watch::Sender<bool>,
    sleeper: Sleeper,
    clock: Arc<dyn Clock>,
}

/// An embedded Kubernetes API server. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

impl ApiServer {
    /// A server over `store`, with faults drawn from `seed`; injected
    /// latency waits with tokio's sleep.
    pub fn new(store: Store, clock: Arc<dyn Clock>, seed: u64) -> ApiServer {
        ApiServer::with_sleeper(
            store,
            clock,
            seed,
            Arc::new(|d| Box::pin(tokio::time::sleep(d))),
        )
    }

    /// A server whose injected latency waits with `sleeper` (a simulator's
    /// own timer, for one).
    pub fn with_sleeper(
        store: Store,
        clock: Arc<dyn Clock>,
        seed: u64,
        sleeper: Sleeper,
    ) -> ApiServer {
        ApiServer {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                stats: Mutex::new(std::collections::BTreeMap::new()),
                faults: Mutex::new(Faults::new(seed ^ 0x5eed_fa17)),
                paused: watch::channel(false).0,
                sleeper,
                clock,
            }),
        }
    }

    /// A fresh cluster on the system clock (tests and labs).
    pub fn in_memory() -> ApiServer {
        let clock: Arc<dyn Clock> = Arc::new(crate::store::SystemClock);
        ApiServer::new(Store::new(clock.clone(), 0), clock, 0)
    }

    /// Locks the store (admission registration, inspection, watch faults).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the fault rules.
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.inner.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds every request until [`ApiServer::resume`].
    pub fn pause(&self) {
        self.inner.paused.send_replace(true);
    }

    /// Lets held requests through.
    pub fn resume(&self) {
        self.inner.paused.send_replace(false);
    }

    /// Ends every open watch (clients see the stream close).
    pub fn drop_watches(&self) {
        self.store().drop_watches();
    }

    /// Ends every open watch with 410 Gone and compacts the event log.
    pub fn expire_watches(&self) {
        self.store().expire_watches();
    }

    /// Sends BOOKMARK events to watches that asked for them.
    pub fn send_bookmarks(&self) {
        self.store().send_bookmarks();
    }

    /// Serves one request: waits while paused, applies faults, then the
    /// protocol.
    pub async fn handle(&self, req: ApiRequest) -> Reply {
        let reply = self.answer(&req).await;
        self.account(&req, &reply);
        reply
    }

    async fn answer(&self, req: &ApiRequest) -> Reply {
        let mut paused = self.inner.paused.subscribe();
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                break;
            }
        }
        let faults = self.faults().pick(&req.method, &req.path);
        for f in faults {
            match f {
                Fault::Latency(d) => (self.inner.sleeper)(d).await,
                Fault::Status(code) => {
                    return crate::error::ApiError::new(
                        code,
                        if code == 504 { "Timeout" } else { "InternalError" },
                        format!("injected fault: the server answered {code}"),
                    )
                    .into()
                }
                Fault::Conflict => {
                    return crate::error::ApiError::new(
                        409,
                        "Conflict",
                        "Operation cannot be fulfilled: injected conflict; please apply your changes to the latest version and try again".into(),
                    )
                    .into()
                }
            }
        }
        handle(&mut self.store(), req)
    }

    fn account(&self, req: &ApiRequest, reply: &Reply) {
        let Some(plural) = crate::http::resource_of_path(&req.path) else {
            return;
        };
        let mut stats = self.inner.stats.lock().unwrap_or_else(|p| p.into_inner());
        let s = stats.entry(plural).or_default();
        if req.method == "GET" {
            s.reads += 1;
            return;
        }
        match reply {
            Reply::Json(code, obj) if *code < 300 => {
                s.writes += 1;
                if req.method != "DELETE" {
                    let n = serde_json::to_vec(obj).map(|v| v.len() as u64).unwrap_or(0);
                    s.bytes_stored += n;
                    s.max_object_bytes = s.max_object_bytes.max(n);
                }
            }
            Reply::Json(409, _) => s.conflicts += 1,
            _ => s.failed_writes += 1,
        }
    }

    /// Request accounting per resource plural since the start (or the last
    /// [`ApiServer::reset_stats`]).
    pub fn stats(&self) -> std::collections::BTreeMap<String, ResourceStats> {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Clears the request accounting.
    pub fn reset_stats(&self) {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Serves an HTTP request with any body.
    pub async fn serve_http<B>(&self, req: http::Request<B>) -> http::Response<ApiBody>
    where
        B: http_body::Body + Send,
        B::Data: Send,
    {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(c) => c.to_bytes().to_vec(),
            Err(_) => {
                return respond(
                    crate::error::ApiError::bad_request(
                        "the request body could not be read".into(),
                    )
                    .into(),
                    self.inner.clock.clone(),
                )
            }
        };
        let header = |name: http::header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let mut api = ApiRequest::new(
            parts.method.as_str(),
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
            body,
        );
        api.accept = header(http::header::ACCEPT);
        api.content_type = header(http::header::CONTENT_TYPE);
        let reply = self.handle(api).await;
        respond(reply, self.inner.clock.clone())
    }

    /// The server as a `tower::Service`, for `kube::Client::new(server.service(), "default")`.
    pub fn service(&self) -> ApiService {
        ApiService(self.clone())
    }

    /// Serves HTTP/1.1 on a TCP listener until the future is dropped.
    pub async fn serve_tcp(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            self.spawn_connection(stream);
        }
    }

    /// Serves HTTP/1.1 on a unix socket until the future is dropped.
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            self.spawn_connection(stream);
        }
    }

    fn spawn_connection<S>(&self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let server = self.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.serve_http(req).await) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// Turns a reply into an HTTP response.
fn respond(reply: Reply, clock: Arc<dyn Clock>) -> http::Response<ApiBody> {
    let (code, ctype, body): (u16, &str, ApiBody) = match reply {
        Reply::Json(code, v) => (
            code,
            "application/json",
            Full::new(Bytes::from(serde_json::to_vec(&v).unwrap_or_default())).boxed_unsync(),
        ),
        Reply::Text(code, t) => (
            code,
            "text/plain; charset=utf-8",
            Full::new(Bytes::from(t)).boxed_unsync(),
        ),
        Reply::Watch { events, format, .. } => {
            let stream =
                tokio_stream::wrappers::UnboundedReceiverStream::new(events).map(move |ev| {
                    Ok::<_, Infallible>(Frame::data(Bytes::from(render_event(
                        &ev,
                        &format,
                        clock.now_unix(),
                    ))))
                });
            (
                200,
                "application/json",
                StreamBody::new(stream).boxed_unsync(),
            )
        }
    };
    let mut resp = http::Response::new(body);
    *resp.status_mut() =
        http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// [`ApiServer`] as a `tower::Service` over any request body.
#[derive(Clone)]
pub struct ApiService(ApiServer);

impl<B> tower::Service<http::Request<B>> for ApiService
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    type Response = http::Response<ApiBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { Ok(server.serve_http(req).await) })
    }
}
