//! The agent's Prometheus metrics and its HTTP endpoints.
//!
//! What lives here: [`AgentMetrics`] (the registry and the recording
//! calls the CNI handler and the sweep make), the pure routing of the
//! endpoints ([`route`]) and the thin hyper server over a TCP listener
//! ([`bind`], [`serve`]):
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | the OpenMetrics text exposition |
//! | `/healthz` | 200 while the process serves HTTP |
//! | `/readyz` | 200 when the agent can serve ADD, else 503 with the reason |
//!
//! Metrics: `spur_agent_cni_request_duration_seconds{command}` (histogram,
//! 1 ms .. 10 s), `spur_agent_cni_errors_total{command,code}`,
//! `spur_agent_ovsdb_reconnects_total` (read from the OVSDB client at
//! scrape time), `spur_agent_ready`,
//! `spur_agent_stale_ports_removed_total` and
//! `spur_agent_vfs_recovered_total`.
//!
//! What does not live here: the CNI verbs (`cni`), the sweep (`sweep`) and
//! the readiness decision itself ([`Agent::not_ready_reason`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use spur_core::cniproto::Command;
use tokio::net::TcpListener;

use super::Agent;

/// The default address of the endpoints (`--metrics-addr`).
pub const DEFAULT_ADDR: &str = "0.0.0.0:9190";

/// The content type of the `/metrics` answer.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The longest a client may take to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The latency buckets of CNI requests, in seconds: 1 ms to 10 s.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why the endpoints cannot be served or the metrics not rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Binding the listening address failed.
    #[error("metrics address {addr}: binding: {source}")]
    Bind {
        /// The address (`--metrics-addr`).
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The address is not `host:port`.
    #[error("metrics address {addr:?}: not an IP address and port: {reason}")]
    Address {
        /// The address as given.
        addr: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The text exposition could not be written.
    #[error("encoding the metrics registry: {0}")]
    Encode(#[from] std::fmt::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    command: String,
    code: String,
}

type DurationFamily = Family<CommandLabels, Histogram, fn() -> Histogram>;

type ReconnectSource = Arc<RwLock<Option<Box<dyn Fn() -> u64 + Send + Sync>>>>;

/// Reports the OVSDB client's reconnect count at scrape time (nothing
/// while no source is set: an agent over a fake switch has no OVSDB).
struct ReconnectCollector {
    source: ReconnectSource,
}

impl std::fmt::Debug for ReconnectCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectCollector").finish_non_exhaustive()
    }
}

impl Collector for ReconnectCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let value = match &*self.source.read().unwrap_or_else(|p| p.into_inner()) {
            Some(read) => read(),
            None => return Ok(()),
        };
        let counter = ConstCounter::new(value);
        let metric = encoder.encode_descriptor(
            "spur_agent_ovsdb_reconnects",
            "How many times the agent's OVSDB connection was lost and re-established.",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// The agent's metrics: one registry per agent (so tests' agents do not
/// share counts).
pub struct AgentMetrics {
    registry: Registry,
    durations: DurationFamily,
    errors: Family<ErrorLabels, Counter>,
    ready: Gauge,
    stale_removed: Counter,
    vfs_recovered: Counter,
    reconnects: ReconnectSource,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    /// A fresh registry with every metric of the agent registered.
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::default();
        let durations: DurationFamily =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let errors = Family::<ErrorLabels, Counter>::default();
        let ready = Gauge::default();
        let stale_removed = Counter::default();
        let vfs_recovered = Counter::default();
        registry.register(
            "spur_agent_cni_request_duration_seconds",
            "Time the agent took to serve a CNI request, by verb (failed requests included).",
            durations.clone(),
        );
        registry.register(
            "spur_agent_cni_errors",
            "CNI requests that failed, by verb and CNI error code.",
            errors.clone(),
        );
        registry.register(
            "spur_agent_ready",
            "1 when the agent can serve ADD (caches listed, bridges in spec), else 0.",
            ready.clone(),
        );
        registry.register(
            "spur_agent_stale_ports_removed",
            "Pod ports removed because their sandbox or Pod was gone.",
            stale_removed.clone(),
        );
        registry.register(
            "spur_agent_vfs_recovered",
            "SR-IOV VFs given back (PF settings and name restored) after their Pod's namespace \
             went away without a DEL or an ADD was cut short.",
            vfs_recovered.clone(),
        );
        let reconnects: ReconnectSource = Arc::new(RwLock::new(None));
        registry.register_collector(Box::new(ReconnectCollector {
            source: reconnects.clone(),
        }));
        AgentMetrics {
            registry,
            durations,
            errors,
            ready,
            stale_removed,
            vfs_recovered,
            reconnects,
        }
    }

    /// Records one served CNI request: its latency and, when it failed,
    /// its CNI error code.
    pub fn record_request(&self, command: Command, elapsed: Duration, error_code: Option<u32>) {
        let command = command.as_str().to_string();
        self.durations
            .get_or_create(&CommandLabels {
                command: command.clone(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(code) = error_code {
            self.errors
                .get_or_create(&ErrorLabels {
                    command,
                    code: code.to_string(),
                })
                .inc();
        }
    }

    /// Adds `n` to the stale ports removed.
    pub fn add_stale_ports_removed(&self, n: u64) {
        self.stale_removed.inc_by(n);
    }

    /// Adds `n` to the VFs given back by the recovery.
    pub fn add_vfs_recovered(&self, n: u64) {
        self.vfs_recovered.inc_by(n);
    }

    /// How many VFs the recovery gave back so far.
    pub fn vfs_recovered(&self) -> u64 {
        self.vfs_recovered.get()
    }

    /// Sets the readiness gauge.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Makes `/metrics` report `read()` as the OVSDB reconnect count (e.g.
    /// `move || client.reconnects()` of a [`crate::ovsdb::Client`]).
    pub fn set_ovsdb_reconnects(&self, read: impl Fn() -> u64 + Send + Sync + 'static) {
        *self.reconnects.write().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(read));
    }

    /// How many `command` requests failed with `code` so far.
    pub fn errors(&self, command: Command, code: u32) -> u64 {
        self.errors
            .get(&ErrorLabels {
                command: command.as_str().to_string(),
                code: code.to_string(),
            })
            .map_or(0, |c| c.get())
    }

    /// How many stale ports were removed so far.
    pub fn stale_ports_removed(&self) -> u64 {
        self.stale_removed.get()
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// A histogram with [`DURATION_BUCKETS`].
fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// One answer of the endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    fn text(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// The answer to `method path`, given why the agent is not ready (None
/// when it is) and how to render the metrics (called only for
/// `/metrics`).
pub fn route(
    method: &Method,
    path: &str,
    not_ready: Option<&str>,
    metrics: impl FnOnce() -> Result<String, MetricsError>,
) -> Reply {
    if method != Method::GET && method != Method::HEAD {
        return Reply::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed on {path}: only GET and HEAD\n"),
        );
    }
    match path {
        "/metrics" => match metrics() {
            Ok(body) => Reply {
                status: StatusCode::OK,
                content_type: OPENMETRICS_CONTENT_TYPE,
                body,
            },
            Err(e) => Reply::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        "/healthz" => Reply::text(StatusCode::OK, "ok\n"),
        "/readyz" => match not_ready {
            None => Reply::text(StatusCode::OK, "ready\n"),
            Some(why) => Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        other => Reply::text(
            StatusCode::NOT_FOUND,
            format!("no such path {other:?}: try /metrics, /healthz or /readyz\n"),
        ),
    }
}

/// Parses `--metrics-addr`: None when empty (endpoints disabled).
pub fn parse_addr(addr: &str) -> Result<Option<SocketAddr>, MetricsError> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Ok(None);
    }
    addr.parse::<SocketAddr>()
        .map(Some)
        .map_err(|e| MetricsError::Address {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

/// Binds the endpoints' listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: addr.to_string(),
            source,
        })
}

fn answer(agent: &Agent, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let not_ready = agent.not_ready_reason();
    let reply = route(method, path, not_ready.as_deref(), || {
        agent.metrics().set_ready(not_ready.is_none());
        agent.metrics().encode()
    });
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(reply.body)
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(reply.content_type),
    );
    resp
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the
/// task is dropped (one task per connection, HTTP/1.1).
pub async fn serve(listener: TcpListener, agent: Arc<Agent>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accepting a connection");
                // Out of descriptors and the like: give the system a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let resp = answer(&agent, req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_latency_and_errors_by_command_and_code() {
        let m = AgentMetrics::new();
        m.record_request(Command::Add, Duration::from_millis(3), None);
        m.record_request(Command::Add, Duration::from_millis(40), Some(100));
        m.record_request(Command::Add, Duration::from_millis(40), Some(100));
        m.record_request(Command::Del, Duration::from_millis(2), Some(11));
        assert_eq!(m.errors(Command::Add, 100), 2);
        assert_eq!(m.errors(Command::Del, 11), 1);
        assert_eq!(m.errors(Command::Del, 100), 0);
        let text = m.encode().unwrap();
        assert!(
            text.contains("spur_agent_cni_request_duration_seconds_count{command=\"ADD\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("spur_agent_cni_request_duration_seconds_count{command=\"DEL\"} 1"),
            "{text}"
        );
        // 3 ms falls in the 5 ms bucket, not the 2.5 ms one.
        assert!(
            text.contains(
                "spur_agent_cni_request_duration_seconds_bucket{le=\"0.0025\",command=\"ADD\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "spur_agent_cni_request_duration_seconds_bucket{le=\"0.005\",command=\"ADD\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("spur_agent_cni_errors_total{command=\"ADD\",code=\"100\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("spur_agent_cni_errors_total{command=\"DEL\",code=\"11\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn ready_stale_and_reconnects() {
        let m = AgentMetrics::new();
        let text = m.encode().unwrap();
        assert!(text.contains("spur_agent_ready 0"), "{text}");
        assert!(!text.contains("spur_agent_ovsdb_reconnects"), "{text}");
        m.set_ready(true);
        m.add_stale_ports_removed(2);
        m.add_stale_ports_removed(1);
        m.add_vfs_recovered(2);
        let count = Arc::new(std::sync::atomic::AtomicU64::new(4));
        let c = count.clone();
        m.set_ovsdb_reconnects(move || c.load(std::sync::atomic::Ordering::SeqCst));
        let text = m.encode().unwrap();
        assert!(text.contains("spur_agent_ready 1"), "{text}");
        assert!(
            text.contains("spur_agent_stale_ports_removed_total 3"),
            "{text}"
        );
        assert!(text.contains("spur_agent_vfs_recovered_total 2"), "{text}");
        assert!(
            text.contains("spur_agent_ovsdb_reconnects_total 4"),
            "{text}"
        );
        count.store(5, std::sync::atomic::Ordering::SeqCst);
        let text = m.encode().unwrap();
        assert!(
            text.contains("spur_agent_ovsdb_reconnects_total 5"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn routes() {
        let never = || -> Result<String, MetricsError> { panic!("metrics rendered") };
        let r = route(&Method::GET, "/healthz", Some("x"), never);
        assert_eq!(r.status, StatusCode::OK);
        let r = route(&Method::GET, "/readyz", None, never);
        assert_eq!(r.status, StatusCode::OK);
        let r = route(&Method::GET, "/readyz", Some("bridges: down"), never);
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.body, "bridges: down\n");
        let r = route(&Method::GET, "/metrics", None, || Ok("m 1\n".into()));
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "m 1\n"));
        assert_eq!(r.content_type, OPENMETRICS_CONTENT_TYPE);
        let r = route(&Method::GET, "/metrics", None, || {
            Err(MetricsError::Encode(std::fmt::Error))
        });
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        let r = route(&Method::GET, "/nope", None, never);
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.body.contains("\"/nope\""), "{}", r.body);
        let r = route(&Method::POST, "/metrics", None, never);
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("").unwrap(), None);
        assert_eq!(parse_addr("  ").unwrap(), None);
        assert_eq!(
            parse_addr(DEFAULT_ADDR).unwrap(),
            Some("0.0.0.0:9190".parse().unwrap())
        );
        assert_eq!(
            parse_addr("[::1]:9190").unwrap(),
            Some("[::1]:9190".parse().unwrap())
        );
        let e = parse_addr("localhost").unwrap_err().to_string();
        assert!(e.contains("\"localhost\""), "{e}");
    }
}
