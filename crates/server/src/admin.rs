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
//! | `GET /v1/openapi.json` | the OpenAPI 3.1 document of `/v1`, generated from the handlers ([`openapi`]) |
//! | `GET /v1/status` | nid, dc, version, uptime, nodes per service, store and NATS state, readiness |
//! | `GET /v1/nodes[?service=S][&dc=D][&limit=N][&after=ID]` | registered nodes in id order, a page at a time (`next`), with their sessions and drain state |
//! | `GET /v1/nodes/{id}` | one node and the sessions placed on it |
//! | `GET /v1/sessions[?node=NID][&sid=SID]` | session placements, and drain marks |
//! | `GET /v1/sessions/{sid}` | where a session is, and why |
//! | `GET /v1/sessions/{sid}/streams` | ion's stream records of the session |
//! | `GET /v1/drains` | drain marks and the sessions each drained node still has |
//! | `POST /v1/drain?node=NID[&deadline=30m]` | no new sessions on the node; its sessions move after the deadline |
//! | `POST /v1/undrain?node=NID` | lifts the drain |
//! | `POST /v1/release?sid=SID` | releases a session (its next lookup places it afresh) |
//! | `GET /v1/events` | Server-Sent Events: `node` (up, change, down), `session` (placed, moved, released), `drains` (progress, every 2 s) |
//!
//! Errors are RFC 9457 problem details (`application/problem+json`).
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
    /// ion's stream records of a session: (`<dc>/<nid>/<sid>/<uid>`, its JSON).
    async fn streams(&self, sid: &str) -> Result<Vec<(String, String)>, String>;
    /// The cluster's events as they happen, as (kind, JSON): `node` (a node event:
    /// action and node) and `session` (a session placed, moved or released).
    async fn event_feed(&self) -> Result<futures::stream::BoxStream<'static, (String, serde_json::Value)>, String>;
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

/// The `/v1` API's OpenAPI document (generated from the handlers below, never by hand).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "islb admin API",
        description = "The registry, placements, drains and stream records of an islb replica."
    ),
    components(schemas(Problem))
)]
struct ApiDoc;

/// The `/v1` routes and their OpenAPI document.
fn v1() -> (Router<Arc<dyn Control>>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::{router::OpenApiRouter, routes};
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(nodes))
        .routes(routes!(node))
        .routes(routes!(sessions))
        .routes(routes!(session))
        .routes(routes!(streams))
        .routes(routes!(drains))
        .routes(routes!(drain))
        .routes(routes!(undrain))
        .routes(routes!(release))
        .routes(routes!(events))
        .split_for_parts()
}

/// The `/v1` API's OpenAPI document, as `GET /v1/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    v1().1
}

/// The admin router over `control`, its `/v1` API behind `guard`.
pub fn router(control: Arc<dyn Control>, guard_by: Guard) -> Router {
    let (api, doc) = v1();
    let doc = Arc::new(doc.to_json().expect("the OpenAPI document serialises"));
    let v1 = api
        .route(
            "/v1/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], (*doc).clone()) }),
        )
        .route_layer(axum::middleware::from_fn_with_state(guard_by, guard));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::console::routes())
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

/// An error, as RFC 9457 problem details (`application/problem+json`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank`: the status says it).
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
}

/// A query string, read as `Query` reads it, whose errors are problem details.
struct Q<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Response> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(q)| Q(q)).map_err(|e| bad_request(e.body_text()))
    }
}

/// A problem-details response.
fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = Problem {
        kind: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("error").into(),
        status: status.as_u16(),
        detail: detail.into(),
    };
    let json = serde_json::to_vec(&body).expect("a problem serialises");
    (status, [(header::CONTENT_TYPE, "application/problem+json")], json).into_response()
}

fn bad_request(msg: impl Into<String>) -> Response {
    problem(StatusCode::BAD_REQUEST, msg)
}

/// This islb and the cluster as it sees it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct StatusBody {
    nid: String,
    dc: String,
    version: String,
    uptime_seconds: u64,
    /// Registered nodes, every service.
    nodes: usize,
    /// Registered nodes per service.
    services: BTreeMap<String, usize>,
    watched_nodes: usize,
    /// The store's kind (memory, file, redis, jetstream).
    store: String,
    store_healthy: bool,
    /// Writes held while the store is out of reach.
    held_writes: usize,
    nats: String,
    ready: bool,
    not_ready_because: Vec<String>,
}

/// This islb's state.
#[utoipa::path(get, path = "/v1/status", tag = "cluster", responses((status = 200, body = StatusBody)))]
async fn status(State(c): Ctl) -> Json<StatusBody> {
    let problems = c.problems().await;
    let s = c.status();
    Json(StatusBody {
        nid: s.nid,
        dc: s.dc,
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: s.uptime_seconds as u64,
        nodes: s.nodes_per_service.values().sum(),
        services: s.nodes_per_service,
        watched_nodes: s.watched_nodes,
        store: s.store.into(),
        store_healthy: s.store_healthy,
        held_writes: s.held_writes,
        nats: s.nats,
        ready: problems.is_empty(),
        not_ready_because: problems,
    })
}

/// A registered node.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct NodeItem {
    /// `DC.NID`.
    id: String,
    /// The node as it registered (ion's discovery Node: DC, Service, NID, RPC, ExtraInfo).
    #[schema(value_type = Object)]
    node: serde_json::Value,
    /// When it expires unless kept alive (RFC 3339).
    expires: String,
    /// Whether its service is placed per session.
    placed: bool,
    /// Sessions placed on it.
    sessions: usize,
    /// Whether it is draining.
    draining: bool,
}

/// A page of nodes.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct NodesPage {
    nodes: Vec<NodeItem>,
    /// The nodes that match, every page.
    total: usize,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Which nodes, and which page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct NodesQuery {
    /// Only this service.
    service: Option<String>,
    /// Only this data centre.
    dc: Option<String>,
    /// Nodes per page (default 1000, at most 10000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// Start after this node id (the `next` of the previous page).
    after: Option<String>,
}

fn node_item(n: &NodeView, sessions: &BTreeMap<String, usize>, drained: &[NodeKey]) -> NodeItem {
    NodeItem {
        id: n.id.to_string(),
        node: serde_json::to_value(&*n.node).unwrap_or_default(),
        expires: n.expires.to_string(),
        placed: n.placed,
        sessions: sessions.get(&*n.id).copied().unwrap_or(0),
        draining: drained.contains(&n.id),
    }
}

/// Sessions per node.
fn session_counts(c: &dyn Control) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in c.sessions(None) {
        *out.entry(s.node.to_string()).or_default() += 1;
    }
    out
}

/// Registered nodes, by id, a page at a time.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(NodesQuery),
    responses((status = 200, body = NodesPage), (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn nodes(State(c): Ctl, Q(q): Q<NodesQuery>) -> Response {
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > 10_000 {
        return bad_request("limit must be 1 to 10000");
    }
    let mut list = c.nodes(q.service.as_deref());
    list.retain(|n| q.dc.as_deref().is_none_or(|dc| n.node.dc == dc));
    list.sort_by(|a, b| a.id.cmp(&b.id));
    let total = list.len();
    let start = q.after.as_deref().map_or(0, |after| list.partition_point(|n| &*n.id <= after));
    let page = &list[start..(start + limit).min(list.len())];
    let next = (start + page.len() < list.len()).then(|| page.last().map(|n| n.id.to_string())).flatten();
    let (sessions, drained) = (session_counts(&*c), c.drains().into_iter().map(|(n, _)| n).collect::<Vec<_>>());
    let nodes = page.iter().map(|n| node_item(n, &sessions, &drained)).collect();
    Json(NodesPage { nodes, total, next }).into_response()
}

/// A node and the sessions placed on it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct NodeDetail {
    #[serde(flatten)]
    node: NodeItem,
    /// Its drain's deadline (RFC 3339), when it drains with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_deadline: Option<String>,
    placements: Vec<SessionItem>,
}

/// One node (`DC.NID`, or a NID one node has), with its sessions.
#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "DC.NID, or a NID")),
    responses((status = 200, body = NodeDetail), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn node(State(c): Ctl, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    let Ok(key) = c.resolve_node(&id) else { return problem(StatusCode::NOT_FOUND, format!("no node {id:?}")) };
    let Some(view) = c.nodes(None).into_iter().find(|n| n.id == key) else {
        return problem(StatusCode::NOT_FOUND, format!("no node {id:?}"));
    };
    let drains = c.drains();
    let drained: Vec<NodeKey> = drains.iter().map(|(n, _)| n.clone()).collect();
    let drain_deadline = drains.iter().find(|(n, _)| *n == key).and_then(|(_, d)| d.map(|d| d.to_string()));
    let placements: Vec<SessionItem> = c.sessions(Some(&key)).iter().map(SessionItem::from).collect();
    let mut counts = BTreeMap::new();
    counts.insert(key.to_string(), placements.len());
    Json(NodeDetail { node: node_item(&view, &counts, &drained), drain_deadline, placements }).into_response()
}

/// A session's placement.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct SessionItem {
    sid: String,
    /// `DC.NID` of its node.
    node: String,
    /// The placement's fencing version (one more at each move).
    version: u64,
    /// Its last lookup (RFC 3339).
    used: String,
}

impl From<&Session> for SessionItem {
    fn from(s: &Session) -> Self {
        SessionItem { sid: s.sid.to_string(), node: s.node.to_string(), version: s.version, used: s.used.to_string() }
    }
}

/// A drain mark and how far it has gone.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct DrainItem {
    /// `DC.NID`.
    node: String,
    /// When its sessions move (RFC 3339); none: they stay until they end.
    deadline: Option<String>,
    /// Sessions still on it.
    sessions: usize,
}

/// Sessions, and drain marks.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct SessionsBody {
    sessions: Vec<SessionItem>,
    drains: Vec<DrainItem>,
}

/// Which sessions.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SessionsQuery {
    /// Only the sessions on this node (`DC.NID` or NID).
    #[param(min_length = 1)]
    node: Option<String>,
    /// Only this session.
    sid: Option<String>,
}

fn drain_items(c: &dyn Control) -> Vec<DrainItem> {
    let counts = session_counts(c);
    c.drains()
        .into_iter()
        .map(|(n, d)| DrainItem {
            sessions: counts.get(&*n).copied().unwrap_or(0),
            node: n.to_string(),
            deadline: d.map(|d| d.to_string()),
        })
        .collect()
}

/// Session placements (of one node, or one sid), and the drain marks.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions", params(SessionsQuery),
    responses((status = 200, body = SessionsBody), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn sessions(State(c): Ctl, Q(q): Q<SessionsQuery>) -> Response {
    let node = match q.node.as_deref().map(|n| c.resolve_node(n)).transpose() {
        Ok(n) => n,
        Err(e) => return problem(StatusCode::NOT_FOUND, e),
    };
    let list = c
        .sessions(node.as_deref())
        .iter()
        .filter(|s| q.sid.as_deref().is_none_or(|sid| *s.sid == *sid))
        .map(SessionItem::from)
        .collect();
    Json(SessionsBody { sessions: list, drains: drain_items(&*c) }).into_response()
}

/// Where a session is, and why.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct SessionDetail {
    #[serde(flatten)]
    session: SessionItem,
    /// Its node, as registered (absent if it left and the session waits to move).
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_info: Option<serde_json::Value>,
    /// Why it is there: placed by a lookup, and kept while its node lives, is not drained
    /// past its deadline, and the session is looked up within `session-ttl`.
    why: String,
}

/// One session: its node and why.
#[utoipa::path(get, path = "/v1/sessions/{sid}", tag = "sessions", params(("sid" = String, Path, description = "The session id")),
    responses((status = 200, body = SessionDetail), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn session(State(c): Ctl, axum::extract::Path(sid): axum::extract::Path<String>) -> Response {
    let Some(s) = c.sessions(None).into_iter().find(|s| *s.sid == *sid) else {
        return problem(StatusCode::NOT_FOUND, format!("no session {sid:?}"));
    };
    let node = c.nodes(None).into_iter().find(|n| n.id == s.node);
    let drain = c.drains().into_iter().find(|(n, _)| *n == s.node);
    let why = match (&node, drain) {
        (None, _) => "its node left; the next lookup moves it".to_owned(),
        (Some(_), Some((_, Some(d)))) => {
            format!("placed by a lookup (version {}); its node drains, the session moves at {d}", s.version)
        }
        (Some(_), Some((_, None))) => {
            format!("placed by a lookup (version {}); its node drains, the session stays until it ends", s.version)
        }
        (Some(_), None) => format!("placed by a lookup (version {}), on a live node", s.version),
    };
    let node_info = node.map(|n| serde_json::to_value(&*n.node).unwrap_or_default());
    Json(SessionDetail { session: SessionItem::from(&s), node_info, why }).into_response()
}

/// A stream a peer publishes in a session (ion's stream registry).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct StreamItem {
    /// `<dc>/<nid>/<sid>/<uid>`.
    key: String,
    /// ion's record (the JSON list of the peer's streams).
    #[schema(value_type = Object)]
    streams: serde_json::Value,
}

/// The stream records of a session.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct StreamsBody {
    sid: String,
    streams: Vec<StreamItem>,
}

/// Where the streams of a session are published.
#[utoipa::path(get, path = "/v1/sessions/{sid}/streams", tag = "sessions", params(("sid" = String, Path, description = "The session id")),
    responses((status = 200, body = StreamsBody), (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn streams(State(c): Ctl, axum::extract::Path(sid): axum::extract::Path<String>) -> Response {
    match c.streams(&sid).await {
        Ok(records) => {
            let streams = records
                .into_iter()
                .map(|(key, json)| StreamItem {
                    key,
                    streams: serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json)),
                })
                .collect();
            Json(StreamsBody { sid, streams }).into_response()
        }
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Drain marks and how far each drain has gone.
#[utoipa::path(get, path = "/v1/drains", tag = "drains", responses((status = 200, body = Vec<DrainItem>)))]
async fn drains(State(c): Ctl) -> Json<Vec<DrainItem>> {
    Json(drain_items(&*c))
}

/// Which node, and when its sessions move.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct NodeQuery {
    /// The node (`DC.NID` or NID).
    #[param(required = true, min_length = 1)]
    node: Option<String>,
    /// Move its sessions after this long (a number and `ms`, `s`, `m`, `h` or `d`: `30m`);
    /// default: never.
    #[param(pattern = "^[1-9][0-9]{0,5}(ms|s|m|h|d)$")]
    deadline: Option<String>,
}

/// The node a change names: 400 without one, 404 for one islb does not know.
fn node_param(c: &dyn Control, name: Option<String>) -> Result<NodeKey, Box<Response>> {
    let Some(name) = name.filter(|n| !n.is_empty()) else { return Err(Box::new(bad_request("node= is required"))) };
    c.resolve_node(&name).map_err(|e| Box::new(problem(StatusCode::NOT_FOUND, e)))
}

/// What a drain did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct DrainResult {
    node: String,
    draining: bool,
    deadline: Option<String>,
    /// Sessions on the node now.
    sessions: usize,
}

/// Drains a node: no new sessions; its sessions move after the deadline.
#[utoipa::path(post, path = "/v1/drain", tag = "drains", params(NodeQuery),
    responses((status = 200, body = DrainResult), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn drain(State(c): Ctl, Q(q): Q<NodeQuery>) -> Response {
    let node = match node_param(&*c, q.node) {
        Ok(n) => n,
        Err(problem) => return *problem,
    };
    let deadline = match q.deadline.as_deref().map(crate::config::parse_duration).transpose() {
        Ok(d) => d.map(|d| c.now().plus(d)),
        Err(e) => return bad_request(e),
    };
    match c.drain(&node, deadline).await {
        Ok(sessions) => Json(DrainResult {
            node: node.to_string(),
            draining: true,
            deadline: deadline.map(|d| d.to_string()),
            sessions,
        })
        .into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// What an undrain did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct UndrainResult {
    node: String,
    draining: bool,
    was_draining: bool,
}

/// Lifts a drain.
#[utoipa::path(post, path = "/v1/undrain", tag = "drains", params(NodeQuery),
    responses((status = 200, body = UndrainResult), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn undrain(State(c): Ctl, Q(q): Q<NodeQuery>) -> Response {
    let node = match node_param(&*c, q.node) {
        Ok(n) => n,
        Err(problem) => return *problem,
    };
    match c.undrain(&node).await {
        Ok(was) => Json(UndrainResult { node: node.to_string(), draining: false, was_draining: was }).into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// How often `/v1/events` reports the drains' progress.
const DRAIN_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The cluster live, as Server-Sent Events: `node` (up, change, down: `{action, node}`),
/// `session` (placed, moved or released: `{sid, from, to, reason}`; `reason` is `placed`
/// for a placement), and every 2 s `drains` (each drained node and the sessions it still
/// holds).
#[utoipa::path(get, path = "/v1/events", tag = "cluster",
    responses((status = 200, description = "An event stream (text/event-stream) that does not end", content_type = "text/event-stream", body = serde_json::Value),
        (status = 503, body = Problem, content_type = "application/problem+json")))]
async fn events(State(c): Ctl) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;
    let feed = match c.event_feed().await {
        Ok(feed) => feed,
        Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let ticks = ticks(DRAIN_REPORT_EVERY);
    let drains = ticks.map(move |()| ("drains".to_owned(), serde_json::to_value(drain_items(&*c)).unwrap_or_default()));
    let stream = futures::stream::select(feed, drains)
        .map(|(kind, data)| Ok::<_, std::convert::Infallible>(Event::default().event(kind).data(data.to_string())));
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// A tick every `period`, the first at once.
fn ticks(period: std::time::Duration) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(tokio::time::interval(period), |mut tick| async move {
        tick.tick().await;
        Some(((), tick))
    })
}

/// Which session.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SidQuery {
    /// The session id.
    #[param(required = true, min_length = 1)]
    sid: Option<String>,
}

/// What a release did.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct ReleaseResult {
    released: SessionItem,
}

/// Releases a session: its next lookup places it afresh.
#[utoipa::path(post, path = "/v1/release", tag = "sessions", params(SidQuery),
    responses((status = 200, body = ReleaseResult), (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn release(State(c): Ctl, Q(q): Q<SidQuery>) -> Response {
    let Some(sid) = q.sid.filter(|s| !s.is_empty()) else { return bad_request("sid= is required") };
    match c.release(&sid).await {
        Some(released) => Json(ReleaseResult { released: SessionItem::from(&released) }).into_response(),
        None => problem(StatusCode::NOT_FOUND, format!("no session {sid:?}")),
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
