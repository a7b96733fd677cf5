//! HTTP: `/metrics`, `/healthz`, `/readyz`, `/bindings`.
//!
//! - `/metrics`: the Prometheus text exposition (`text/plain; version=0.0.4`), or OpenMetrics
//!   1.0 with the latency histograms' exemplars when the `Accept` header prefers it
//!   (`application/openmetrics-text`, as Prometheus sends).
//! - `/healthz`: 200 while the process serves.
//! - `/readyz` (docs/metrics.md, "Readiness"): `503 not ready: <why>` until the event loop
//!   runs (and while shutting down); then `200 ready` when, of every path this kernel
//!   carries (bind, unbind, connect, VM lifetime: `doctor::coverage`), a probe is attached,
//!   or `200 degraded: <what is missing>` when not. Degraded is 200 because the daemon serves
//!   correct metrics for what it sees, and a 503 would hold a DaemonSet rollout, and drop
//!   the target from endpoint discovery, on every host whose kernel lacks a path, for good;
//!   the TsmProbesNotAttached alert is what pages on blindness.
//! - `/bindings`: JSON, the binding table and current leaks ([`BindingsView`]).
//!
//! The server itself ([`server`]) bounds connections, time and sizes, and shuts down within a
//! grace period; [`web_config`] adds TLS and basic auth from an exporter-toolkit web config.

pub mod auth;
pub mod server;
pub mod web_config;

pub use server::Limits;
pub use web_config::{WebConfig, WebConfigError};

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::exporters::json::BindingsView;
use crate::exporters::metrics::{Metrics, openmetrics};
use crate::pipeline::Pipeline;

/// What `/readyz` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ready {
    /// 503 `not ready: <why>`.
    NotReady(String),
    /// 200 `ready`.
    Ready,
    /// 200 `degraded: <what is missing>`.
    Degraded(String),
}

/// Readiness, set by the daemon.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<RwLock<Ready>>);

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(RwLock::new(Ready::NotReady(
            "probes not attached yet".into(),
        ))))
    }
}

impl Readiness {
    fn set(&self, r: Ready) {
        if let Ok(mut g) = self.0.write() {
            *g = r;
        }
    }

    pub fn set_ready(&self) {
        self.set(Ready::Ready);
    }

    /// Running, but something this kernel carries is not seen: `what` names it.
    pub fn set_degraded(&self, what: impl Into<String>) {
        self.set(Ready::Degraded(what.into()));
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(Ready::NotReady(reason.into()));
    }

    pub fn get(&self) -> Ready {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(_) => Ready::NotReady("readiness state poisoned".into()),
        }
    }
}

/// What the handlers read. Cheap to clone.
#[derive(Clone, Debug)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub pipeline: Arc<Mutex<Pipeline>>,
    pub readiness: Readiness,
}

impl HttpState {
    /// Metrics are taken from the pipeline.
    pub fn new(pipeline: Arc<Mutex<Pipeline>>, readiness: Readiness) -> Self {
        let metrics = match pipeline.lock() {
            Ok(p) => p.metrics().clone(),
            Err(poisoned) => poisoned.into_inner().metrics().clone(),
        };
        HttpState {
            metrics,
            pipeline,
            readiness,
        }
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/bindings", get(bindings))
        .route("/", get(index))
        .with_state(state)
}

/// Serves until `shutdown` completes, plain HTTP with the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        state,
        WebConfig::default(),
        Limits::default(),
        shutdown,
    )
    .await
}

/// Serves until `shutdown` completes, then returns within `limits.shutdown_grace`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: HttpState,
    web: WebConfig,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve_with(listener, router(state), web, limits, shutdown).await
}

async fn index() -> &'static str {
    "tsm-trace: /metrics /healthz /readyz /bindings\n"
}

async fn metrics(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let format =
        openmetrics::negotiate(headers.get_all(header::ACCEPT).iter().map(|v| v.as_bytes()));
    let (content_type, body) = s.metrics.render_as(format);
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "Accept"),
        ],
        body,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<HttpState>) -> Response {
    match s.readiness.get() {
        Ready::Ready => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Ready::Degraded(what) => (StatusCode::OK, format!("degraded: {what}\n")).into_response(),
        Ready::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn bindings(State(s): State<HttpState>) -> Response {
    let view = match s.pipeline.lock() {
        Ok(p) => BindingsView::of(p.correlator()),
        Err(poisoned) => BindingsView::of(poisoned.into_inner().correlator()),
    }
    .with_in_flight(&s.metrics.in_flight());
    ([(header::CONTENT_TYPE, "application/json")], view.to_json()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
        get_with(addr, path, "").await
    }

    async fn get_with(
        addr: std::net::SocketAddr,
        path: &str,
        headers: &str,
    ) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    #[tokio::test]
    async fn endpoints() {
        let metrics = Arc::new(Metrics::new());
        let p = Pipeline::new(crate::correlate::Config::default(), metrics, None);
        let pipeline = Arc::new(Mutex::new(p));
        let ready = Readiness::default();
        let state = HttpState::new(pipeline.clone(), ready.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state, async {
            let _ = rx.await;
        }));

        let (st, head, body) = get(addr, "/metrics").await;
        assert_eq!(st, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(body.contains("tsm_trace_build_info{version="), "{body}");
        assert!(!body.contains("# EOF"), "{body}");

        // What Prometheus asks for: OpenMetrics.
        let (st, head, body) = get_with(
            addr,
            "/metrics",
            "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n",
        )
        .await;
        assert_eq!(st, 200);
        assert!(
            head.to_ascii_lowercase().contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{head}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(body.contains("# TYPE tsm_trace_build info\n"), "{body}");
        // A malformed header: the classic text, no error.
        for bad in [
            "Accept: ;;q=x,,\r\n",
            "Accept: application/openmetrics-text;q=2\r\n",
        ] {
            let (st, head, body) = get_with(addr, "/metrics", bad).await;
            assert_eq!(st, 200, "{bad}");
            assert!(
                head.to_ascii_lowercase().contains("version=0.0.4"),
                "{head}"
            );
            assert!(!body.contains("# EOF"));
        }

        assert_eq!(get(addr, "/healthz").await.0, 200);

        let (st, _, body) = get(addr, "/readyz").await;
        assert_eq!(st, 503);
        assert!(body.contains("probes not attached yet"), "{body}");
        ready.set_ready();
        let (st, _, body) = get(addr, "/readyz").await;
        assert_eq!((st, body.as_str()), (200, "ready\n"));
        // Running but blind on a path the kernel has: 200, and the body says what is missing.
        ready.set_degraded("bind path not seen: pci_tsm_bind in this kernel but not attached");
        let (st, _, body) = get(addr, "/readyz").await;
        assert_eq!(st, 200);
        assert_eq!(
            body,
            "degraded: bind path not seen: pci_tsm_bind in this kernel but not attached\n"
        );
        ready.set_not_ready("tsm_bind: symbol not found");
        let (st, _, body) = get(addr, "/readyz").await;
        assert_eq!(st, 503);
        assert!(body.contains("tsm_bind: symbol not found"));

        // A binding made through the pipeline shows up in /bindings.
        {
            let mut p = pipeline.lock().unwrap();
            for ev in crate::correlate::tests::bind_via_ioctl(7, 100, "0000:01:00.0", 0) {
                let now = ev.end_ns;
                p.handle(ev, now);
            }
        }
        let (st, head, body) = get(addr, "/bindings").await;
        assert_eq!(st, 200);
        assert!(head.to_ascii_lowercase().contains("application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["bindings"][0]["device"], "0000:01:00.0");
        assert_eq!(v["bindings"][0]["vm"]["stats_id"], "kvm-4242");
        assert_eq!(v["leaks"].as_array().unwrap().len(), 0);

        assert_eq!(get(addr, "/nope").await.0, 404);
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
