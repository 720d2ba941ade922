//! The simulated network between a component and the API server: each
//! component (an agent, a controller replica, a kubelet) gets its own
//! `kube::Client` over the in-process server, through its own [`Link`].
//!
//! A link can be cut (a partition: new requests fail at once as a refused
//! connection does, and every response in flight — watches included — ends
//! with an error, as a broken TCP connection ends them), healed, or slowed
//! (latency added to each request). Every request and its answer are
//! recorded in the run's trace under the component's name.
//!
//! What does not live here: when links are cut (the fault injector), and
//! the API server's own faults (latency, 409 storms, 5xx, dropped watches:
//! `spur_kubeapi::faults`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame};
use spur_kubeapi::server::ApiBody;
use spur_kubeapi::ApiServer;
use tokio::sync::watch;

use crate::clock::SimClock;
use crate::trace::Trace;

/// Why a request or a response failed on a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The link is cut: the request never reached the server.
    #[error("connection refused: {0} cannot reach the API server (partitioned)")]
    Partitioned(String),
    /// The link was cut while the response was streaming.
    #[error("connection reset: the link of {0} to the API server was cut")]
    Reset(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkState {
    up: bool,
    /// Bumped at every cut, so responses started before it end.
    epoch: u64,
    delay: Duration,
}

/// The network of one component to the API server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Link {
    state: Arc<watch::Sender<LinkState>>,
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

impl Link {
    /// An intact link without added latency.
    pub fn new() -> Link {
        Link {
            state: Arc::new(watch::Sender::new(LinkState {
                up: true,
                epoch: 0,
                delay: Duration::ZERO,
            })),
        }
    }

    /// Cuts the link: requests fail, responses in flight end with an error.
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.up = false;
            s.epoch += 1;
        });
    }

    /// Restores the link.
    pub fn heal(&self) {
        self.state.send_modify(|s| s.up = true);
    }

    /// True while the link carries requests.
    pub fn is_up(&self) -> bool {
        self.state.borrow().up
    }

    /// Adds `delay` before every request (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.state.send_modify(|s| s.delay = delay);
    }
}

/// A client of `server` for the component `actor`, over `link`, recording
/// its requests in `trace`.
pub fn client(
    server: &ApiServer,
    actor: &str,
    link: Link,
    trace: Trace,
    clock: SimClock,
) -> kube::Client {
    let svc = LinkService {
        server: server.clone(),
        actor: Arc::from(actor),
        link,
        trace,
        clock,
    };
    kube::Client::new(svc, "default")
}

#[derive(Clone)]
struct LinkService {
    server: ApiServer,
    actor: Arc<str>,
    link: Link,
    trace: Trace,
    clock: SimClock,
}

impl<B> tower::Service<http::Request<B>> for LinkService
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    type Response = http::Response<CutBody>;
    type Error = LinkError;
    type Future = BoxFuture<'static, Result<Self::Response, LinkError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let what = format!(
                "{} {}",
                req.method(),
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            let delay = this.link.state.borrow().delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let state = *this.link.state.borrow();
            if !state.up {
                this.trace.record(
                    this.clock.elapsed(),
                    &*this.actor,
                    format!("{what} -> refused (partitioned)"),
                );
                return Err(LinkError::Partitioned(this.actor.to_string()));
            }
            let resp = this.server.serve_http(req).await;
            this.trace.record(
                this.clock.elapsed(),
                &*this.actor,
                format!("{what} -> {}", resp.status().as_u16()),
            );
            let mut rx = this.link.state.subscribe();
            let epoch = state.epoch;
            let cut: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                let _ = rx.wait_for(|s| s.epoch != epoch).await;
            });
            let actor = this.actor.clone();
            Ok(resp.map(|body| CutBody {
                inner: body,
                cut,
                actor,
                done: false,
            }))
        })
    }
}

/// A response body that ends with [`LinkError::Reset`] when its link is
/// cut.
pub struct CutBody {
    inner: ApiBody,
    cut: Pin<Box<dyn Future<Output = ()> + Send>>,
    actor: Arc<str>,
    done: bool,
}

impl Body for CutBody {
    type Data = Bytes;
    type Error = LinkError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, LinkError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.cut.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(LinkError::Reset(self.actor.to_string()))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};

    fn cm(name: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}
        }))
        .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_link_refuses_requests_until_healed_and_is_traced() {
        let server = ApiServer::in_memory();
        let trace = Trace::new(16, true);
        let link = Link::new();
        let c = client(
            &server,
            "agent/a",
            link.clone(),
            trace.clone(),
            SimClock::start(),
        );
        let api: Api<ConfigMap> = Api::namespaced(c, "default");
        assert!(api.create(&PostParams::default(), &cm("one")).await.is_ok());
        link.cut();
        assert!(!link.is_up());
        let err = api.create(&PostParams::default(), &cm("two")).await;
        assert!(err.is_err(), "{err:?}");
        link.heal();
        assert!(api
            .create(&PostParams::default(), &cm("three"))
            .await
            .is_ok());
        let lines: Vec<String> = trace
            .all()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{} {}", e.actor, e.what))
            .collect();
        assert!(lines.iter().any(|l| l.contains("-> 201")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("refused")), "{lines:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_simulated_time() {
        let server = ApiServer::in_memory();
        let link = Link::new();
        link.set_delay(Duration::from_millis(250));
        let clock = SimClock::start();
        let c = client(&server, "x", link, Trace::new(0, false), clock);
        let api: Api<ConfigMap> = Api::namespaced(c, "default");
        api.create(&PostParams::default(), &cm("one")).await.ok();
        assert!(clock.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_ends_a_watch_in_flight() {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let server = ApiServer::in_memory();
        let link = Link::new();
        let c = client(
            &server,
            "w",
            link.clone(),
            Trace::new(0, false),
            SimClock::start(),
        );
        let api: Api<ConfigMap> = Api::namespaced(c, "default");
        let mut w = Box::pin(watcher(api, watcher::Config::default()));
        // Init, InitDone.
        let mut errors = 0;
        for _ in 0..2 {
            assert!(matches!(w.next().await, Some(Ok(_))));
        }
        link.cut();
        if let Some(Err(_)) = w.next().await {
            errors += 1;
        }
        assert_eq!(errors, 1);
    }
}
