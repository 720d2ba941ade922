//! The controller's Prometheus metrics and its health endpoints.
//!
//! What lives here: [`Metrics`], the counters and gauges every part of the
//! controller increments (leadership, pool usage, GC, admission decisions,
//! reconcile errors) in one `prometheus-client` registry; [`Health`], what
//! `/healthz` and `/readyz` answer; [`respond`], the pure routing of a
//! request path to a status and body; and [`serve`], the thin HTTP server
//! (hyper 1, plain HTTP) on the metrics port.
//!
//! What does not live here: the loops that produce the numbers (usage, GC,
//! NodeIPAM, the webhook), and the webhook's own HTTPS server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

type Labels = Vec<(String, String)>;

/// Every metric of the controller. Cheap to share (`Arc<Metrics>`); all
/// methods take `&self`.
pub struct Metrics {
    registry: Registry,
    is_leader: Gauge,
    pool_total: Family<Labels, Gauge>,
    pool_used: Family<Labels, Gauge>,
    gc_released: Family<Labels, Counter>,
    gc_rounds: Counter,
    gc_aborted: Counter,
    admission: Family<Labels, Counter>,
    reconcile_errors: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every metric registered, all at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let is_leader = Gauge::default();
        let pool_total = Family::<Labels, Gauge>::default();
        let pool_used = Family::<Labels, Gauge>::default();
        let gc_released = Family::<Labels, Counter>::default();
        let gc_rounds = Counter::default();
        let gc_aborted = Counter::default();
        let admission = Family::<Labels, Counter>::default();
        let reconcile_errors = Family::<Labels, Counter>::default();
        registry.register(
            "spur_controller_is_leader",
            "1 while this replica holds the leader Lease",
            is_leader.clone(),
        );
        registry.register(
            "spur_ippool_addresses_total",
            "Addresses an IPPool can hand out (status.usage.total)",
            pool_total.clone(),
        );
        registry.register(
            "spur_ippool_addresses_used",
            "Addresses of an IPPool allocated (status.usage.used)",
            pool_used.clone(),
        );
        // Counters get the `_total` suffix from prometheus-client.
        registry.register(
            "spur_gc_released",
            "Allocations released by the garbage collector, by reason",
            gc_released.clone(),
        );
        registry.register(
            "spur_gc_rounds",
            "Garbage collection rounds completed",
            gc_rounds.clone(),
        );
        registry.register(
            "spur_gc_aborted",
            "Garbage collection rounds aborted (a list failed; nothing released)",
            gc_aborted.clone(),
        );
        registry.register(
            "spur_admission_decisions",
            "Admission decisions, by resource and decision (allowed, denied)",
            admission.clone(),
        );
        registry.register(
            "spur_reconcile_errors",
            "Errors of the reconcile loops, by loop (usage, gc, nodeipam, leader)",
            reconcile_errors.clone(),
        );
        Metrics {
            registry,
            is_leader,
            pool_total,
            pool_used,
            gc_released,
            gc_rounds,
            gc_aborted,
            admission,
            reconcile_errors,
        }
    }

    /// Sets `spur_controller_is_leader`.
    pub fn set_leader(&self, leading: bool) {
        self.is_leader.set(i64::from(leading));
    }

    /// Sets the usage gauges of `pool`.
    pub fn set_pool_usage(&self, pool: &str, total: i64, used: i64) {
        let l = vec![("pool".to_string(), pool.to_string())];
        self.pool_total.get_or_create(&l).set(total);
        self.pool_used.get_or_create(&l).set(used);
    }

    /// Drops the usage gauges of a pool that no longer exists.
    pub fn forget_pool(&self, pool: &str) {
        let l = vec![("pool".to_string(), pool.to_string())];
        self.pool_total.remove(&l);
        self.pool_used.remove(&l);
    }

    /// Counts `n` GC releases for `reason`.
    pub fn gc_released(&self, reason: &str, n: u64) {
        self.gc_released
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc_by(n);
    }

    /// Counts a completed GC round.
    pub fn gc_round(&self) {
        self.gc_rounds.inc();
    }

    /// Counts an aborted GC round.
    pub fn gc_aborted(&self) {
        self.gc_aborted.inc();
    }

    /// Counts one admission decision on `resource` (e.g. `ippools`):
    /// `decision` is `allowed` or `denied`.
    pub fn admission_decision(&self, resource: &str, decision: &str) {
        self.admission
            .get_or_create(&vec![
                ("resource".to_string(), resource.to_string()),
                ("decision".to_string(), decision.to_string()),
            ])
            .inc();
    }

    /// Counts one error of the loop `name` (`usage`, `gc`, `nodeipam`,
    /// `leader`).
    pub fn reconcile_error(&self, name: &str) {
        self.reconcile_errors
            .get_or_create(&vec![("loop".to_string(), name.to_string())])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        if encode(&mut out, &self.registry).is_err() {
            tracing::error!("encoding metrics failed");
        }
        out
    }
}

/// The `reason` label of `spur_gc_released_total` for `reason` (a fixed
/// set: no UIDs or container IDs in labels).
pub fn gc_reason_label(reason: &crate::gc::Reason) -> &'static str {
    use crate::gc::Reason;
    match reason {
        Reason::PodGone => "pod-gone",
        Reason::PodReplaced { .. } => "pod-replaced",
        Reason::ContainerReplaced { .. } => "container-replaced",
        Reason::StatefulSetGone => "statefulset-gone",
        Reason::ScaledDown { .. } => "scaled-down",
    }
}

/// What the health endpoints answer.
///
/// `/healthz` is 200 while the process serves HTTP at all (the liveness
/// probe restarts a wedged process, not a disconnected one: a restart does
/// not fix an unreachable API). `/readyz` is 200 once the API has answered
/// at least once and, on the leader, once the leader-only loops have been
/// started; a follower is ready as soon as it is connected, because every
/// replica serves the admission webhook.
#[derive(Debug, Default)]
pub struct Health {
    connected: AtomicBool,
    leading: AtomicBool,
    loops_started: AtomicBool,
}

impl Health {
    /// Records that the API answered.
    pub fn set_connected(&self) {
        self.connected.store(true, Ordering::SeqCst);
    }

    /// Records leadership and whether the leader-only loops run.
    pub fn set_leading(&self, leading: bool, loops_started: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        self.loops_started.store(loops_started, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        ready(
            self.connected.load(Ordering::SeqCst),
            self.leading.load(Ordering::SeqCst),
            self.loops_started.load(Ordering::SeqCst),
        )
    }
}

/// Readiness: connected, and if leading, with the loops started.
pub fn ready(connected: bool, leading: bool, loops_started: bool) -> bool {
    connected && (!leading || loops_started)
}

/// The status, content type and body for `path`.
pub fn respond(
    path: &str,
    metrics: &Metrics,
    health: &Health,
) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if health.ready() => (StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into()),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the
/// process ends (each connection in its own task).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics server: accept failed");
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (status, ctype, body) = respond(req.uri().path(), &metrics, &health);
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(ctype),
                );
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "metrics connection ended");
            }
        });
    }
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::new();
        m.set_leader(true);
        m.set_pool_usage("blue", 254, 3);
        m.gc_released("pod-gone", 2);
        m.gc_round();
        m.gc_aborted();
        m.admission_decision("ippools", "denied");
        m.reconcile_error("usage");
        let text = m.encode();
        for line in [
            "spur_controller_is_leader 1",
            "spur_ippool_addresses_total{pool=\"blue\"} 254",
            "spur_ippool_addresses_used{pool=\"blue\"} 3",
            "spur_gc_released_total{reason=\"pod-gone\"} 2",
            "spur_gc_rounds_total 1",
            "spur_gc_aborted_total 1",
            "spur_admission_decisions_total{resource=\"ippools\",decision=\"denied\"} 1",
            "spur_reconcile_errors_total{loop=\"usage\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        m.forget_pool("blue");
        assert!(!m.encode().contains("pool=\"blue\""));
        m.set_leader(false);
        assert!(m.encode().contains("spur_controller_is_leader 0"));
    }

    #[test]
    fn gc_reasons_have_fixed_labels() {
        use crate::gc::Reason;
        let all = [
            (Reason::PodGone, "pod-gone"),
            (
                Reason::PodReplaced {
                    old_uid: "u1".into(),
                    new_uid: "u2".into(),
                },
                "pod-replaced",
            ),
            (
                Reason::ContainerReplaced { by: "c9".into() },
                "container-replaced",
            ),
            (Reason::StatefulSetGone, "statefulset-gone"),
            (
                Reason::ScaledDown {
                    start: 0,
                    replicas: 2,
                },
                "scaled-down",
            ),
        ];
        for (r, l) in all {
            assert_eq!(gc_reason_label(&r), l);
        }
    }

    #[test]
    fn readiness_rule() {
        assert!(!ready(false, false, false));
        assert!(!ready(false, true, true));
        assert!(ready(true, false, false));
        assert!(!ready(true, true, false));
        assert!(ready(true, true, true));
    }

    #[test]
    fn routes() {
        let m = Metrics::new();
        let h = Health::default();
        assert_eq!(respond("/healthz", &m, &h).0, StatusCode::OK);
        assert_eq!(
            respond("/readyz", &m, &h).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.set_connected();
        assert_eq!(respond("/readyz", &m, &h).0, StatusCode::OK);
        h.set_leading(true, false);
        assert_eq!(
            respond("/readyz", &m, &h).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.set_leading(true, true);
        assert_eq!(respond("/readyz", &m, &h).0, StatusCode::OK);
        let (s, _, body) = respond("/metrics", &m, &h);
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("spur_controller_is_leader"));
        assert_eq!(respond("/nope", &m, &h).0, StatusCode::NOT_FOUND);
    }
}
