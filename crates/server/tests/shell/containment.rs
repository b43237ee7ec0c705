//! Contained failures: a panic while handling one request costs that request only (an
//! error reply, a count, one log line); a supervised task that dies shows in `/readyz`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use islb_gob::{GetResponse, Message as _, Request, Response};
use islb_runtime::{Health, Supervisor};
use islb_server::admin::router;
use islb_server::control::Live;
use islb_server::discovery::{Discovery, QUEUE_GROUP, REQUEST_SUBJECT};
use islb_server::selfreg::WatchedView;
use islb_server::telemetry::metrics_handle;
use islb_store::MemoryStore;
use islb_testkit::NatsServer;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::support::node;

fn replica(client: &async_nats::Client) -> Arc<Discovery> {
    crate::support::nats_replica(client, Arc::new(MemoryStore::new()), 60_000)
}

fn panics_counted(handler: &str) -> f64 {
    let text = metrics_handle().render();
    let prefix = format!("islb_handler_panics_total{{handler=\"{handler}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn an_injected_panic_costs_one_request_and_is_counted() {
    islb_runtime::contain::install_hook();
    let before = panics_counted("registry");
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let d = replica(&client);
    d.inject_fault(|service| {
        if service == "boom" {
            panic!("injected fault");
        }
    });
    let sub = client.queue_subscribe(REQUEST_SUBJECT, QUEUE_GROUP.to_owned()).await.unwrap();
    islb_nrpc::barrier(&client, Duration::from_secs(10)).await.unwrap();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(d.clone().serve(sub, stop.clone()));

    let peer = async_nats::connect(nats.url()).await.unwrap();
    let ask = |subject: String, req: Request| {
        let peer = peer.clone();
        async move { peer.request(subject, req.to_gob().into()).await.expect("an answer").payload }
    };
    for _ in 0..3 {
        let get = Request { action: "get".into(), service: "boom".into(), ..Request::default() };
        let reply = Response::from_gob(&ask("node.publish.boom".into(), get).await).expect("a Response");
        assert!(!reply.success && reply.reason.contains("internal error"), "{reply:?}");
    }
    // Every other request goes on being answered.
    let save = Request { action: "save".into(), node: node("signal", "sig-1"), ..Request::default() };
    assert!(Response::from_gob(&ask("node.publish.signal.dc1.sig-1".into(), save).await).unwrap().success);
    let get = Request { action: "get".into(), service: "signal".into(), ..Request::default() };
    let listed = GetResponse::from_gob(&ask("node.publish.signal".into(), get).await).unwrap().nodes;
    assert_eq!(listed.len(), 1);
    assert_eq!(panics_counted("registry") - before, 3.0, "each panic is counted");
    stop.cancel();
    serving.await.expect("the request loop stopped in order, not by a panic");
}

#[tokio::test]
async fn a_dead_supervised_task_makes_readyz_fail_with_its_name() {
    islb_runtime::contain::install_hook();
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let health = Health::default();
    let app = router(
        Arc::new(Live {
            discovery: replica(&client),
            client: client.clone(),
            shutting_down: Arc::new(AtomicBool::new(false)),
            health: health.clone(),
            metrics: metrics_handle(),
            watched: WatchedView::default(),
            nid: "islb-test".into(),
            dc: "dc1".into(),
            started: Instant::now(),
        }),
        islb_server::admin::Guard::default(),
    );
    let readyz = |app: axum::Router| async move {
        let res = app.oneshot(HttpRequest::get("/readyz").body(Body::empty()).unwrap()).await.unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(readyz(app.clone()).await.0, StatusCode::OK);

    let mut tasks = Supervisor::new(health.clone());
    tasks.spawn("expiry", async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        panic!("the expiry timer broke");
    });
    let failure = tasks.next_failure().await.expect("the task ended");
    assert_eq!(failure.task, "expiry");
    let (status, body) = readyz(app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("task expiry ended unexpectedly") && body.contains("the expiry timer broke"), "{body}");
}
