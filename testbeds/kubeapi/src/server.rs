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

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::admission::Operation;
use crate::faults::{Fault, Faults};
use crate::http::{handle, render_event, write_target, ApiRequest, Reply};
use crate::store::{Clock, Store};
use crate::webhook::{
    self, Attributes, FailurePolicy, ServiceRef, ServiceResolver, Verdict, Webhook,
};

/// How many times a request whose objects changed while its webhooks were
/// called is tried before it fails with 409 Conflict.
pub const MAX_ADMISSION_TRIES: usize = 5;

/// The group and plural of ValidatingWebhookConfigurations.
const VWC: (&str, &str) = (
    "admissionregistration.k8s.io",
    "validatingwebhookconfigurations",
);

/// The parsed webhooks, and the (name, resourceVersion) of the
/// configurations they were parsed from.
type WebhookCache = Option<(Vec<(String, u64)>, Arc<Vec<Webhook>>)>;

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
    resolver: Mutex<Option<ServiceResolver>>,
    webhooks: Mutex<WebhookCache>,
    review_uids: Mutex<ChaCha8Rng>,
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
                resolver: Mutex::new(None),
                webhooks: Mutex::new(None),
                review_uids: Mutex::new(ChaCha8Rng::seed_from_u64(seed ^ 0xad3e_55ed)),
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

    /// Says where the webhooks of ValidatingWebhookConfigurations that
    /// name a `service` listen (the embedder's stand-in for Services and
    /// their endpoints). Without a resolver, or when it answers None, such
    /// a call fails ("service NS/NAME:PORT has no endpoint") and the
    /// webhook's failurePolicy decides. `url` webhooks are dialed directly.
    pub fn set_service_resolver(
        &self,
        f: impl Fn(&ServiceRef) -> Option<std::net::SocketAddr> + Send + Sync + 'static,
    ) {
        *self
            .inner
            .resolver
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(f));
    }

    fn resolver(&self) -> Option<ServiceResolver> {
        self.inner
            .resolver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A review UID, drawn from the server's seeded RNG.
    fn review_uid(&self) -> String {
        let mut b = [0u8; 16];
        self.inner
            .review_uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fill_bytes(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// The stored webhooks, parsed again only when a configuration changed.
    fn parsed_webhooks(&self, configs: &[&serde_json::Value]) -> Arc<Vec<Webhook>> {
        let fingerprint: Vec<(String, u64)> = configs
            .iter()
            .map(|c| (crate::store::name_of(c), crate::store::object_rv(c)))
            .collect();
        let mut cache = self
            .inner
            .webhooks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((f, hooks)) = cache.as_ref() {
            if *f == fingerprint {
                return hooks.clone();
            }
        }
        let hooks = Arc::new(webhook::parse_configurations(configs.iter().copied()));
        *cache = Some((fingerprint, hooks.clone()));
        hooks
    }

    /// The cheap check: the stored webhooks when the request is a write
    /// that at least one of them may have to see (its resource matches a
    /// rule, or it is a DELETE that may cascade while some webhook sees
    /// DELETEs). None otherwise, and always when no configuration exists.
    fn webhooks_for(&self, req: &ApiRequest) -> Option<Arc<Vec<Webhook>>> {
        if !matches!(req.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
            return None;
        }
        let store = self.store();
        let configs = store.objects_of(VWC.0, VWC.1);
        if configs.is_empty() {
            return None;
        }
        let t = write_target(&store, req)?;
        let r = &t.resource;
        if webhook::exempt(&r.group, &r.plural) {
            return None;
        }
        let hooks = self.parsed_webhooks(&configs);
        let ops: &[Operation] = match req.method.as_str() {
            "POST" => &[Operation::Create],
            "DELETE" => &[Operation::Delete],
            _ if req.is_apply() => &[Operation::Update, Operation::Create],
            _ => &[Operation::Update],
        };
        let direct = ops.iter().any(|&operation| {
            let a = Attributes {
                operation,
                group: &r.group,
                version: &r.version,
                resource: &r.plural,
                subresource: t.subresource.as_deref().unwrap_or_default(),
                namespaced: r.namespaced,
            };
            hooks.iter().any(|h| h.matches_rules(&a))
        });
        let cascade = req.method == "DELETE"
            && hooks.iter().any(|h| {
                h.rules
                    .iter()
                    .any(|rule| rule.operations.iter().any(|o| o == "*" || o == "DELETE"))
            })
            && t.name
                .as_deref()
                .is_none_or(|n| store.has_dependents(r, t.namespace.as_deref(), n));
        (direct || cascade).then_some(hooks)
    }

    /// Serves a write that webhooks may have to see: a dry run records the
    /// admission requests it would make, the matching webhooks are called
    /// (without the store lock), then the request runs for real, checked
    /// to make the same admission requests against the same stored objects
    /// (else it starts again, [`MAX_ADMISSION_TRIES`] times at most).
    ///
    /// A `generateName` create: the dry run's draw of the name (and UID) is
    /// undone, so the real create draws the same name that the webhook was
    /// shown, unless another request drew from the store's RNG in between;
    /// the check then sees a name the webhooks were not shown and the
    /// request starts again. The creationTimestamp a webhook sees may be
    /// earlier than the stored one by the time the webhooks took.
    async fn answer_with_webhooks(&self, req: &ApiRequest, hooks: Arc<Vec<Webhook>>) -> Reply {
        let dry_run = req.is_dry_run();
        let trial = req.as_dry_run();
        for _ in 0..MAX_ADMISSION_TRIES {
            let (captured, calls) = {
                let mut store = self.store();
                let rng = store.rng_state();
                store.admission_mut().start_capture();
                let reply = handle(&mut store, &trial);
                let captured = store.admission_mut().finish_capture();
                store.set_rng_state(rng);
                if !matches!(reply, Reply::Json(code, _) if code < 300) {
                    return reply;
                }
                let calls: Vec<(usize, usize)> = {
                    let ns_res = store.registry().get("", "v1", "namespaces").cloned();
                    let ns_labels = |ns: &str| {
                        ns_res
                            .as_ref()
                            .and_then(|r| store.get(r, None, ns).ok())
                            .and_then(|o| o.pointer("/metadata/labels").cloned())
                    };
                    captured
                        .iter()
                        .enumerate()
                        .flat_map(|(ci, c)| {
                            hooks
                                .iter()
                                .enumerate()
                                .filter(|(_, h)| h.matches(c, &ns_labels))
                                .map(move |(hi, _)| (hi, ci))
                                .collect::<Vec<_>>()
                        })
                        .collect()
                };
                if calls.is_empty() {
                    return if dry_run {
                        reply
                    } else {
                        handle(&mut store, req)
                    };
                }
                (captured, calls)
            };
            let resolver = self.resolver();
            for (hi, ci) in calls {
                let Some((hook, request)) = hooks.get(hi).zip(captured.get(ci)) else {
                    continue;
                };
                if dry_run && !webhook::supports_dry_run(hook) {
                    return webhook::dry_run_unsupported(&hook.name).into();
                }
                let uid = self.review_uid();
                let body = webhook::review(&uid, request, dry_run);
                match webhook::call(hook, resolver.as_ref(), &uid, &body).await {
                    Ok(Verdict::Allowed) => {}
                    Ok(Verdict::Denied(e)) => return e.into(),
                    Err(e) => match hook.failure_policy {
                        FailurePolicy::Fail => return webhook::call_failed(&hook.name, &e).into(),
                        FailurePolicy::Ignore => tracing::warn!(
                            webhook = %hook.name,
                            error = %e,
                            "failed calling webhook, failing open (failurePolicy Ignore)"
                        ),
                    },
                }
            }
            let mut store = self.store();
            store.admission_mut().expect(captured);
            let reply = handle(&mut store, req);
            if !store.admission_mut().finish_expect() {
                return reply;
            }
            tracing::debug!(path = %req.path, "objects changed while webhooks were called; trying again");
        }
        crate::error::ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled: the objects changed while admission webhooks were called, {MAX_ADMISSION_TRIES} times; please try again"
            ),
        )
        .into()
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
        if let Some(hooks) = self.webhooks_for(req) {
            return self.answer_with_webhooks(req, hooks).await;
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
