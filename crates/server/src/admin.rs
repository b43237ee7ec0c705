//! The admin HTTP server: health, readiness, Prometheus metrics, and a JSON view of the
//! registry for operators.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when NATS is connected, the store answers and islb is not shutting down; 503 with the reasons otherwise |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/status` | JSON: nid, dc, version, uptime, node count, store and NATS state |
//! | `GET /v1/nodes[?service=S]` | JSON: every registered node (placed services included) with its deadline |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::discovery::Discovery;
use crate::selfreg::WatchedView;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The registry service.
    pub discovery: Arc<Discovery>,
    /// The NATS client (for its connection state).
    pub client: async_nats::Client,
    /// Set once shutdown begins.
    pub shutting_down: Arc<AtomicBool>,
    /// Metrics renderer.
    pub metrics: PrometheusHandle,
    /// islb's own view of the cluster.
    pub watched: WatchedView,
    /// This islb's NID.
    pub nid: String,
    /// This islb's DC.
    pub dc: String,
    /// When the process started.
    pub started: Instant,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/nodes", get(nodes))
        .with_state(state)
}

async fn readiness(s: &AdminState) -> Vec<String> {
    let mut problems = Vec::new();
    if s.shutting_down.load(Ordering::Relaxed) {
        problems.push("shutting down".to_owned());
    }
    if s.client.connection_state() != async_nats::connection::State::Connected {
        problems.push(format!("NATS {:?}", s.client.connection_state()).to_lowercase());
    }
    let store = s.discovery.store();
    match tokio::time::timeout(std::time::Duration::from_secs(1), store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("store {}: {e}", store.kind())),
        Err(_) => problems.push(format!("store {}: no answer within 1s", store.kind())),
    }
    problems
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let problems = readiness(&s).await;
    metrics::gauge!("islb_ready").set(if problems.is_empty() { 1.0 } else { 0.0 });
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", problems.join("; "))).into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut per_service: BTreeMap<String, usize> = BTreeMap::new();
    let total = {
        let r = s.discovery.registry();
        for (_, e) in r.entries() {
            *per_service.entry(e.node.service.clone()).or_default() += 1;
        }
        r.len()
    };
    metrics::gauge!("islb_nodes").set(total as f64);
    for (service, n) in per_service {
        metrics::gauge!("islb_service_nodes", "service" => service).set(n as f64);
    }
    metrics::gauge!("islb_watched_nodes").set(s.watched.snapshot().len() as f64);
    metrics::gauge!("islb_store_healthy").set(if s.discovery.store_healthy() { 1.0 } else { 0.0 });
    metrics::gauge!("islb_nats_connected")
        .set(if s.client.connection_state() == async_nats::connection::State::Connected { 1.0 } else { 0.0 });
    metrics::gauge!("islb_uptime_seconds").set(s.started.elapsed().as_secs_f64());
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn status(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let problems = readiness(&s).await;
    let nodes = s.discovery.registry().len();
    Json(json!({
        "nid": s.nid,
        "dc": s.dc,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "nodes": nodes,
        "watched_nodes": s.watched.snapshot().len(),
        "store": s.discovery.store().kind(),
        "store_healthy": s.discovery.store_healthy(),
        "nats": format!("{:?}", s.client.connection_state()).to_lowercase(),
        "ready": problems.is_empty(),
        "not_ready_because": problems,
    }))
}

#[derive(Deserialize)]
struct NodesQuery {
    service: Option<String>,
}

async fn nodes(State(s): State<AdminState>, Query(q): Query<NodesQuery>) -> Json<serde_json::Value> {
    let r = s.discovery.registry();
    let mut out: Vec<_> = r
        .entries()
        .filter(|(_, e)| q.service.as_ref().is_none_or(|svc| *svc == e.node.service))
        .map(|(k, e)| {
            json!({
                "id": &**k,
                "node": &*e.node,
                "expires": e.deadline.to_string(),
                "placed": r.is_placed(&e.node.service),
            })
        })
        .collect();
    out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "nodes": out }))
}
