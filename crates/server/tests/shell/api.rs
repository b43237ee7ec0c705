//! The `/v1` JSON API over a live replica: every documented route is served, every route
//! served is documented (the document is generated from the same registrations), errors
//! are problem details, and the node list pages.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use islb_gob::{Message as _, Request};
use islb_runtime::Health;
use islb_server::admin::{Guard, router};
use islb_server::control::Live;
use islb_server::selfreg::WatchedView;
use islb_server::telemetry::metrics_handle;
use islb_store::MemoryStore;
use islb_testkit::NatsServer;
use tower::ServiceExt;

use crate::support::{node, placing_replica};

/// `method path` on `app`: (status, content type, body).
async fn call(app: &axum::Router, method: &str, path: &str) -> (StatusCode, String, String) {
    let req = HttpRequest::builder()
        .method(method)
        .uri(path)
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 40000))))
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let ctype = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = axum::body::to_bytes(res.into_body(), 1 << 24).await.unwrap();
    (status, ctype, String::from_utf8_lossy(&body).into_owned())
}

/// A replica with `n` SFUs registered and a session placed, and its admin router.
async fn api_with(n: usize) -> (NatsServer, axum::Router) {
    let (nats, app, _) = api_and_replica(n).await;
    (nats, app)
}

async fn api_and_replica(n: usize) -> (NatsServer, axum::Router, Arc<islb_server::discovery::Discovery>) {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let discovery = placing_replica(&client, Arc::new(MemoryStore::new()), 60_000, &["rtc"]);
    for i in 0..n {
        let save = Request { action: "save".into(), node: node("rtc", &format!("sfu-{i:05}")), ..Request::default() };
        discovery.process(&save.to_gob()).await;
    }
    let mut get = Request { action: "get".into(), service: "rtc".into(), ..Request::default() };
    get.params.insert("sid".into(), islb_gob::Value::String("room-1".into()));
    discovery.process(&get.to_gob()).await;
    let app = router(
        Arc::new(Live {
            discovery: discovery.clone(),
            client,
            shutting_down: Arc::new(AtomicBool::new(false)),
            health: Health::default(),
            metrics: metrics_handle(),
            watched: WatchedView::default(),
            nid: "islb-test".into(),
            dc: "dc1".into(),
            started: Instant::now(),
        }),
        Guard::default(),
    );
    (nats, app, discovery)
}

#[tokio::test]
async fn every_documented_route_is_served_and_every_route_is_documented() {
    let (_nats, app) = api_with(3).await;
    let (status, ctype, body) = call(&app, "GET", "/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("application/json"));
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc, serde_json::to_value(islb_server::admin::openapi()).unwrap(), "served as generated");
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    // Everything the CLI can do, and the document itself.
    let expected: BTreeSet<String> = [
        "GET /v1/status",
        "GET /v1/nodes",
        "GET /v1/nodes/{id}",
        "GET /v1/sessions",
        "GET /v1/sessions/{sid}",
        "GET /v1/sessions/{sid}/streams",
        "GET /v1/drains",
        "POST /v1/drain",
        "POST /v1/undrain",
        "POST /v1/release",
        "GET /v1/events",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(documented, expected);
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{id}", "dc1.sfu-00001").replace("{sid}", "room-1");
        let path = match method {
            "POST" if path.ends_with("release") => format!("{path}?sid=room-1"),
            "POST" => format!("{path}?node=sfu-00002"),
            _ => path,
        };
        if path == "/v1/events" {
            // A stream that does not end: its head only.
            let res = app.clone().oneshot(HttpRequest::get(&path).body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["content-type"], "text/event-stream");
            continue;
        }
        let (status, ctype, body) = call(&app, method, &path).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {body}");
        assert!(ctype.starts_with("application/json"), "{method} {path}: {ctype}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"));
    }
    // What is not documented is not served.
    assert_eq!(call(&app, "GET", "/v1/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, "DELETE", "/v1/nodes").await.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn errors_are_problem_details() {
    let (_nats, app) = api_with(1).await;
    for (method, path, want) in [
        ("GET", "/v1/nodes/dc1.nobody", StatusCode::NOT_FOUND),
        ("GET", "/v1/sessions/no-such-room", StatusCode::NOT_FOUND),
        ("POST", "/v1/drain", StatusCode::BAD_REQUEST),
        ("POST", "/v1/drain?node=sfu-00000&deadline=soon", StatusCode::BAD_REQUEST),
        ("POST", "/v1/release?sid=no-such-room", StatusCode::NOT_FOUND),
        ("GET", "/v1/nodes?limit=0", StatusCode::BAD_REQUEST),
    ] {
        let (status, ctype, body) = call(&app, method, path).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        assert_eq!(ctype, "application/problem+json", "{method} {path}");
        let p: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(p["status"], want.as_u16());
        assert_eq!(p["title"], want.canonical_reason().unwrap());
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    }
}

#[tokio::test]
async fn nodes_page_by_id_and_filter_by_service_and_dc() {
    let (_nats, app) = api_with(25).await;
    let page = |q: &str| {
        let app = app.clone();
        let q = q.to_owned();
        async move {
            let (status, _, body) = call(&app, "GET", &format!("/v1/nodes?{q}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "service=rtc&limit=10".to_owned()
        } else {
            format!("service=rtc&limit=10&after={after}")
        };
        let p = page(&q).await;
        assert_eq!(p["total"], 25);
        for n in p["nodes"].as_array().unwrap() {
            seen.push(n["id"].as_str().unwrap().to_owned());
        }
        match p["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("dc1.sfu-{i:05}")).collect();
    assert_eq!(seen, want, "every node once, in id order, over three pages");
    assert_eq!(page("dc=dc2").await["total"], 0);
    assert_eq!(page("service=signal").await["total"], 0);
    let one = page("service=rtc&limit=1").await;
    let placed_here = page("limit=10000").await["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["sessions"].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(placed_here, 1, "room-1's node counts it");
    assert!(one["next"].is_string());
}

/// `/v1/events` carries node events as they happen (from NATS: every replica's), session
/// placements, moves and releases, and the drains' progress.
#[tokio::test]
async fn the_event_stream_carries_node_events_session_moves_and_drains() {
    use futures::StreamExt;
    let (_nats, app, discovery) = api_and_replica(2).await;
    let res = app.clone().oneshot(HttpRequest::get("/v1/events").body(Body::empty()).unwrap()).await.unwrap();
    let mut body = res.into_body().into_data_stream();
    let mut text = String::new();
    let mut read_until = async |needle: &str, text: &mut String| {
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !text.contains(needle) {
            let chunk =
                tokio::time::timeout_at(end, body.next()).await.unwrap_or_else(|_| panic!("no {needle:?} in:\n{text}"));
            text.push_str(&String::from_utf8_lossy(&chunk.expect("the stream goes on").unwrap()));
        }
    };
    // The drains' progress comes at once.
    read_until("event: drains", &mut text).await;
    // A node comes up; then room-1 is released through the API, as an operator would.
    let save = Request { action: "save".into(), node: node("signal", "sig-9"), ..Request::default() };
    discovery.process(&save.to_gob()).await;
    read_until("\"NID\":\"sig-9\"", &mut text).await;
    assert!(text.contains("event: node") && text.contains("\"action\":\"save\""), "{text}");
    // A room is placed by a lookup.
    let mut get = Request { action: "get".into(), service: "rtc".into(), ..Request::default() };
    get.params.insert("sid".into(), islb_gob::Value::String("room-2".into()));
    discovery.process(&get.to_gob()).await;
    read_until("\"sid\":\"room-2\"", &mut text).await;
    let placed = text.lines().rev().find(|l| l.contains("\"sid\":\"room-2\"")).unwrap();
    let placed: serde_json::Value = serde_json::from_str(placed.trim_start_matches("data:").trim()).unwrap();
    assert_eq!(placed["reason"], "placed", "{placed}");
    assert_eq!(placed["from"], serde_json::Value::Null);
    assert!(placed["to"].as_str().is_some_and(|n| n.starts_with("sfu-")), "{placed}");
    assert_eq!(placed["version"], 1);
    // Looked up again: placed already, no second event.
    discovery.process(&get.to_gob()).await;
    let (status, _, _) = call(&app, "POST", "/v1/release?sid=room-1").await;
    assert_eq!(status, StatusCode::OK);
    read_until("event: session", &mut text).await;
    read_until("\"reason\":\"released\"", &mut text).await;
    assert_eq!(text.matches("\"sid\":\"room-2\"").count(), 1, "one placement, one event:\n{text}");
}
