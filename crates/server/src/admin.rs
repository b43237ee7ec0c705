//! The admin HTTP server: health, readiness, Prometheus metrics, and a JSON view of the
//! registry for operators.
//!
//! [`router`] serves over any [`Control`]: what the API needs from a running islb, as a
//! trait, so this module knows nothing of the registry's insides (`control.rs` implements
//! it over the live service; tests drive the router with tower's `oneshot`).
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
//!
//! Access ([`Guard`]): `/healthz`, `/readyz` and `/metrics` are open. With an admin token,
//! every `/v1` request must carry `Authorization: Bearer <token>` (compared in constant
//! time; 401 otherwise). Without one, the `/v1` changes (`POST`) answer loopback peers
//! only (403 otherwise), so a page in a browser elsewhere cannot drain a node. Every
//! change is logged with the peer that asked.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use islb_core::{NodeKey, Session, Timestamp};
use islb_gob::Node;
use serde::Deserialize;
use serde_json::json;

/// A registered node as the admin API lists it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// `DC.NID`.
    pub id: NodeKey,
    /// The node as registered.
    pub node: Arc<Node>,
    /// When it expires unless kept alive.
    pub expires: Timestamp,
    /// Whether its service is placed per session.
    pub placed: bool,
}

/// What `/v1/status` and `/metrics` report.
#[derive(Debug, Clone, Default)]
pub struct StatusView {
    /// This islb's NID.
    pub nid: String,
    /// This islb's DC.
    pub dc: String,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Registered nodes, by service.
    pub nodes_per_service: BTreeMap<String, usize>,
    /// Nodes in islb's own watched view of the cluster.
    pub watched_nodes: usize,
    /// The store's kind.
    pub store: &'static str,
    /// Whether the store answers.
    pub store_healthy: bool,
    /// Node writes held until the store is back.
    pub held_writes: usize,
    /// NATS's connection state, in words.
    pub nats: String,
    /// Whether NATS is connected.
    pub nats_connected: bool,
}

/// What the admin API needs from a running islb.
#[async_trait]
pub trait Control: Send + Sync + 'static {
    /// Why islb is not ready (empty: ready).
    async fn problems(&self) -> Vec<String>;
    /// The facts `/v1/status` and `/metrics` report.
    fn status(&self) -> StatusView;
    /// The Prometheus text of every metric.
    fn render_metrics(&self) -> String;
    /// The registered nodes (of one service, if given).
    fn nodes(&self, service: Option<&str>) -> Vec<NodeView>;
    /// The sessions placed (on one node, if given).
    fn sessions(&self, node: Option<&str>) -> Vec<Session>;
    /// The drain marks.
    fn drains(&self) -> Vec<(NodeKey, Option<Timestamp>)>;
    /// Resolves an operator's node name: `DC.NID`, or a NID that one registered node has.
    fn resolve_node(&self, name: &str) -> Result<NodeKey, String>;
    /// The time.
    fn now(&self) -> Timestamp;
    /// Drains a node (its sessions move after `deadline`); the sessions it has.
    async fn drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<usize, String>;
    /// Lifts a drain; whether the node was draining.
    async fn undrain(&self, node: &NodeKey) -> Result<bool, String>;
    /// Releases a session; it, if it was placed.
    async fn release(&self, sid: &str) -> Option<Session>;
}

/// Who may use the `/v1` API.
#[derive(Clone, Default)]
pub struct Guard {
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("token", &self.token.as_ref().map(|_| "***")).finish()
    }
}

/// What the guard says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Serve it.
    Allow,
    /// 401: the token is missing or wrong.
    Unauthorized,
    /// 403: a change from a peer that is not on this machine, with no token configured.
    Forbidden,
}

/// Whether `presented` is `expected`, in time that does not depend on where they differ.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Guard {
    /// A guard requiring `token` on `/v1` (none: changes from loopback peers only).
    pub fn new(token: Option<String>) -> Self {
        Guard { token: token.map(Into::into) }
    }

    /// The decision for a `/v1` request: `changes` (a `POST`), the `Authorization` header,
    /// and the peer's address (`None`: unknown, taken as not local).
    pub fn decide(&self, changes: bool, authorization: Option<&str>, peer: Option<IpAddr>) -> Access {
        match &self.token {
            Some(token) => match authorization.and_then(bearer) {
                Some(presented) if token_matches(presented, token) => Access::Allow,
                _ => Access::Unauthorized,
            },
            None if changes && !peer.is_some_and(|p| p.is_loopback()) => Access::Forbidden,
            None => Access::Allow,
        }
    }
}

async fn guard(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let changes = req.method() == Method::POST;
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let what = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let peer_text = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    match guard.decide(changes, authorization, peer.map(|p| p.ip())) {
        Access::Allow => {
            if changes {
                tracing::info!(peer = %peer_text, request = %what, "admin change");
            }
            next.run(req).await
        }
        Access::Unauthorized => {
            metrics::counter!("islb_admin_refused_total", "reason" => "token").increment(1);
            tracing::warn!(peer = %peer_text, request = %what, "admin request without the right token refused");
            let body = Json(json!({ "error": "an admin token is required: Authorization: Bearer <token>" }));
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        }
        Access::Forbidden => {
            metrics::counter!("islb_admin_refused_total", "reason" => "not_local").increment(1);
            tracing::warn!(peer = %peer_text, request = %what, "admin change from a non-loopback peer refused (no admin token configured)");
            let body = Json(json!({ "error": "without an admin token, changes are accepted from this machine only" }));
            (StatusCode::FORBIDDEN, body).into_response()
        }
    }
}

/// The admin router over `control`, its `/v1` API behind `guard`.
pub fn router(control: Arc<dyn Control>, guard_by: Guard) -> Router {
    let v1 = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/nodes", get(nodes))
        .route("/v1/sessions", get(sessions))
        .route("/v1/drain", axum::routing::post(drain))
        .route("/v1/undrain", axum::routing::post(undrain))
        .route("/v1/release", axum::routing::post(release))
        .route_layer(axum::middleware::from_fn_with_state(guard_by, guard));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .with_state(control)
}

type Ctl = State<Arc<dyn Control>>;

async fn readyz(State(c): Ctl) -> Response {
    let problems = c.problems().await;
    metrics::gauge!("islb_ready").set(if problems.is_empty() { 1.0 } else { 0.0 });
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", problems.join("; "))).into_response()
    }
}

async fn metrics(State(c): Ctl) -> Response {
    // Readiness at each scrape, so islb_ready is current without anyone probing /readyz.
    let ready = c.problems().await.is_empty();
    metrics::gauge!("islb_ready").set(if ready { 1.0 } else { 0.0 });
    let s = c.status();
    metrics::gauge!("islb_nodes").set(s.nodes_per_service.values().sum::<usize>() as f64);
    for (service, n) in s.nodes_per_service {
        metrics::gauge!("islb_service_nodes", "service" => service).set(n as f64);
    }
    metrics::gauge!("islb_watched_nodes").set(s.watched_nodes as f64);
    metrics::gauge!("islb_store_healthy").set(if s.store_healthy { 1.0 } else { 0.0 });
    metrics::gauge!("islb_store_pending_writes").set(s.held_writes as f64);
    metrics::gauge!("islb_nats_connected").set(if s.nats_connected { 1.0 } else { 0.0 });
    metrics::gauge!("islb_uptime_seconds").set(s.uptime_seconds);
    ([("content-type", "text/plain; version=0.0.4")], c.render_metrics()).into_response()
}

async fn status(State(c): Ctl) -> Json<serde_json::Value> {
    let problems = c.problems().await;
    let s = c.status();
    Json(json!({
        "nid": s.nid,
        "dc": s.dc,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.uptime_seconds as u64,
        "nodes": s.nodes_per_service.values().sum::<usize>(),
        "watched_nodes": s.watched_nodes,
        "store": s.store,
        "store_healthy": s.store_healthy,
        "nats": s.nats,
        "ready": problems.is_empty(),
        "not_ready_because": problems,
    }))
}

#[derive(Deserialize)]
struct NodesQuery {
    service: Option<String>,
}

async fn nodes(State(c): Ctl, Query(q): Query<NodesQuery>) -> Json<serde_json::Value> {
    let mut list = c.nodes(q.service.as_deref());
    list.sort_by(|a, b| a.id.cmp(&b.id));
    let out: Vec<_> = list
        .iter()
        .map(|n| json!({ "id": &*n.id, "node": &*n.node, "expires": n.expires.to_string(), "placed": n.placed }))
        .collect();
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

fn session_json(s: &Session) -> serde_json::Value {
    json!({ "sid": &*s.sid, "node": &*s.node, "version": s.version, "used": s.used.to_string() })
}

async fn sessions(State(c): Ctl, Query(q): Query<NodeQuery>) -> Response {
    let node = match q.node.as_deref().map(|n| c.resolve_node(n)).transpose() {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    let list: Vec<_> = c.sessions(node.as_deref()).iter().map(session_json).collect();
    let drains: Vec<_> =
        c.drains().into_iter().map(|(n, d)| json!({ "node": &*n, "deadline": d.map(|d| d.to_string()) })).collect();
    Json(json!({ "sessions": list, "drains": drains })).into_response()
}

async fn drain(State(c): Ctl, Query(q): Query<NodeQuery>) -> Response {
    let Some(name) = q.node else { return bad_request("node= is required") };
    let node = match c.resolve_node(&name) {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    let deadline = match q.deadline.as_deref().map(crate::config::parse_duration).transpose() {
        Ok(d) => d.map(|d| c.now().plus(d)),
        Err(e) => return bad_request(e),
    };
    match c.drain(&node, deadline).await {
        Ok(sessions) => Json(json!({ "node": &*node, "draining": true, "deadline": deadline.map(|d| d.to_string()),
            "sessions": sessions }))
        .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e }))).into_response(),
    }
}

async fn undrain(State(c): Ctl, Query(q): Query<NodeQuery>) -> Response {
    let Some(name) = q.node else { return bad_request("node= is required") };
    let node = match c.resolve_node(&name) {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    match c.undrain(&node).await {
        Ok(was) => Json(json!({ "node": &*node, "draining": false, "was_draining": was })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e }))).into_response(),
    }
}

#[derive(Deserialize)]
struct SidQuery {
    sid: String,
}

async fn release(State(c): Ctl, Query(q): Query<SidQuery>) -> Response {
    match c.release(&q.sid).await {
        Some(released) => Json(json!({ "released": session_json(&released) })).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({ "error": format!("no session {:?}", q.sid) }))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    const ELSEWHERE: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7)));

    #[test]
    fn with_a_token_every_v1_request_needs_it() {
        let g = Guard::new(Some("t0k".into()));
        for changes in [false, true] {
            for peer in [HERE, ELSEWHERE, None] {
                assert_eq!(g.decide(changes, Some("Bearer t0k"), peer), Access::Allow);
                assert_eq!(g.decide(changes, Some("bearer  t0k "), peer), Access::Allow);
                assert_eq!(g.decide(changes, None, peer), Access::Unauthorized);
                assert_eq!(g.decide(changes, Some("Bearer t0"), peer), Access::Unauthorized);
                assert_eq!(g.decide(changes, Some("Bearer t0kk"), peer), Access::Unauthorized);
                assert_eq!(g.decide(changes, Some("Basic t0k"), peer), Access::Unauthorized);
                assert_eq!(g.decide(changes, Some("t0k"), peer), Access::Unauthorized);
            }
        }
        assert!(!format!("{g:?}").contains("t0k"));
    }

    #[test]
    fn without_a_token_changes_answer_loopback_peers_only() {
        let g = Guard::default();
        assert_eq!(g.decide(false, None, ELSEWHERE), Access::Allow, "reading is open");
        assert_eq!(g.decide(true, None, HERE), Access::Allow);
        assert_eq!(g.decide(true, None, Some("::1".parse().unwrap())), Access::Allow);
        assert_eq!(g.decide(true, None, ELSEWHERE), Access::Forbidden);
        assert_eq!(g.decide(true, None, None), Access::Forbidden, "an unknown peer is not local");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd") && !token_matches("ab", "abc") && !token_matches("", "abc"));
        assert_eq!(bearer("Bearer x y"), Some("x y"));
        assert_eq!(bearer("Bearer"), None);
    }
}
