//! The admin HTTP server: health, readiness, Prometheus metrics, and a JSON view of the
//! registry for operators.
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when NATS is connected, the store answers, every supervised task runs and islb is not shutting down; 503 with the reasons otherwise |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/status` | JSON: nid, dc, version, uptime, node count, store and NATS state |
//! | `GET /v1/nodes[?service=S]` | JSON: every registered node (placed services included) with its deadline |
//! | `GET /v1/sessions[?node=NID]` | JSON: session placements (of one node), and drain marks |
//! | `POST /v1/drain?node=NID[&deadline=30m]` | no new sessions on the node; its sessions move after the deadline |
//! | `POST /v1/undrain?node=NID` | lifts the drain |
//! | `POST /v1/release?sid=SID` | releases a session (its next lookup places it afresh) |
//!
//! `NID` may be a bare NID (when one node has it) or `DC.NID`.

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
    /// Failures of supervised tasks.
    pub health: islb_runtime::Health,
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
        .route("/v1/sessions", get(sessions))
        .route("/v1/drain", axum::routing::post(drain))
        .route("/v1/undrain", axum::routing::post(undrain))
        .route("/v1/release", axum::routing::post(release))
        .with_state(state)
}

async fn readiness(s: &AdminState) -> Vec<String> {
    let mut problems = Vec::new();
    if s.shutting_down.load(Ordering::Relaxed) {
        problems.push("shutting down".to_owned());
    }
    problems.extend(s.health.problems());
    if !crate::nats::connected(&s.client) {
        problems.push(format!("NATS {:?}", s.client.connection_state()).to_lowercase());
    }
    let store = s.discovery.store();
    match tokio::time::timeout(std::time::Duration::from_secs(1), store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("store {}: {}", store.kind(), islb_runtime::Chain(&e))),
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
    let total = s.discovery.read(|r, _| {
        for (_, e) in r.entries() {
            *per_service.entry(e.node.service.clone()).or_default() += 1;
        }
        r.len()
    });
    metrics::gauge!("islb_nodes").set(total as f64);
    for (service, n) in per_service {
        metrics::gauge!("islb_service_nodes", "service" => service).set(n as f64);
    }
    metrics::gauge!("islb_watched_nodes").set(s.watched.count() as f64);
    metrics::gauge!("islb_store_healthy").set(if s.discovery.store_healthy() { 1.0 } else { 0.0 });
    metrics::gauge!("islb_nats_connected").set(if crate::nats::connected(&s.client) { 1.0 } else { 0.0 });
    metrics::gauge!("islb_uptime_seconds").set(s.started.elapsed().as_secs_f64());
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn status(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let problems = readiness(&s).await;
    let nodes = s.discovery.read(|r, _| r.len());
    Json(json!({
        "nid": s.nid,
        "dc": s.dc,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "nodes": nodes,
        "watched_nodes": s.watched.count(),
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
    let mut out: Vec<_> = s.discovery.read(|r, _| {
        r.entries()
            .filter(|(_, e)| q.service.as_ref().is_none_or(|svc| *svc == e.node.service))
            .map(|(k, e)| {
                json!({
                    "id": &**k,
                    "node": &*e.node,
                    "expires": e.deadline.to_string(),
                    "placed": r.is_placed(&e.node.service),
                })
            })
            .collect()
    });
    out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "nodes": out }))
}

#[derive(Deserialize)]
struct NodeQuery {
    node: Option<String>,
    deadline: Option<String>,
}

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg.into() }))).into_response()
}

fn session_json(s: &islb_core::Session) -> serde_json::Value {
    json!({ "sid": &*s.sid, "node": &*s.node, "version": s.version, "used": s.used.to_string() })
}

async fn sessions(State(s): State<AdminState>, Query(q): Query<NodeQuery>) -> Response {
    let node = match q.node.as_deref().map(|n| s.discovery.resolve_node(n)).transpose() {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    let list: Vec<_> = s.discovery.sessions(node.as_deref()).iter().map(session_json).collect();
    let drains: Vec<_> = s
        .discovery
        .drains()
        .into_iter()
        .map(|(n, d)| json!({ "node": &*n, "deadline": d.map(|d| d.to_string()) }))
        .collect();
    Json(json!({ "sessions": list, "drains": drains })).into_response()
}

async fn drain(State(s): State<AdminState>, Query(q): Query<NodeQuery>) -> Response {
    let Some(name) = q.node else { return bad_request("node= is required") };
    let node = match s.discovery.resolve_node(&name) {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    let deadline = match q.deadline.as_deref().map(crate::config::parse_duration).transpose() {
        Ok(d) => d.map(|d| s.discovery.now().plus(d)),
        Err(e) => return bad_request(e),
    };
    match s.discovery.placement().drain(&node, deadline).await {
        Ok(()) => Json(json!({ "node": &*node, "draining": true, "deadline": deadline.map(|d| d.to_string()),
            "sessions": s.discovery.session_count(Some(&node)) }))
        .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e }))).into_response(),
    }
}

async fn undrain(State(s): State<AdminState>, Query(q): Query<NodeQuery>) -> Response {
    let Some(name) = q.node else { return bad_request("node= is required") };
    let node = match s.discovery.resolve_node(&name) {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    match s.discovery.placement().undrain(&node).await {
        Ok(was) => Json(json!({ "node": &*node, "draining": false, "was_draining": was })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e }))).into_response(),
    }
}

#[derive(Deserialize)]
struct SidQuery {
    sid: String,
}

async fn release(State(s): State<AdminState>, Query(q): Query<SidQuery>) -> Response {
    match s.discovery.placement().release_session(&q.sid).await {
        Some(released) => Json(json!({ "released": session_json(&released) })).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": format!("no session {:?}", q.sid) }))).into_response(),
    }
}
