//! Our client against our server over a real nats-server: every call kind, metadata,
//! errors, deadlines and cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use islb_nrpc::{CallInfo, Client, Code, Incoming, Metadata, Outgoing, Running, Server, ServerConfig, Service, Status};
use islb_testkit::NatsServer;

/// A test service with one method per call kind.
#[derive(Default)]
pub(crate) struct Echo {
    pub(crate) cancelled: AtomicUsize,
    /// The callers the server is told are up.
    pub(crate) live: std::sync::Mutex<std::collections::HashSet<String>>,
}

struct CountOnDrop<'a>(&'a AtomicUsize, bool);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Service for Echo {
    fn name(&self) -> &'static str {
        "test.Echo"
    }
    fn has_method(&self, m: &str) -> bool {
        ["Say", "Fail", "Slow", "Count", "Sum", "Chat", "Empty", "Meta", "Boom"].contains(&m)
    }
    async fn call(&self, info: CallInfo, mut incoming: Incoming, out: Outgoing) -> Result<(), Status> {
        match info.method.as_str() {
            "Say" => {
                let msg = incoming.next().await.ok_or_else(|| Status::internal("missing request message"))?;
                out.send(msg).await
            }
            "Fail" => Err(Status::not_found("nope")),
            "Boom" => panic!("a handler bug"),
            "Slow" => {
                let mut guard = CountOnDrop(&self.cancelled, false);
                tokio::time::sleep(Duration::from_secs(30)).await;
                guard.1 = true;
                out.send(Bytes::from_static(b"late")).await
            }
            "Count" => {
                let n: usize = String::from_utf8_lossy(&incoming.next().await.unwrap()).parse().unwrap();
                for i in 0..n {
                    out.send(i.to_string().into()).await?;
                }
                Ok(())
            }
            "Sum" => {
                let mut sum = 0i64;
                let mut seen = Vec::new();
                while let Some(m) = incoming.next().await {
                    let v: i64 = String::from_utf8_lossy(&m).parse().unwrap();
                    seen.push(v);
                    sum += v;
                }
                out.send(format!("{sum} {seen:?}").into()).await
            }
            "Chat" => {
                while let Some(m) = incoming.next().await {
                    out.send([&b"echo:"[..], &m].concat().into()).await?;
                }
                Ok(())
            }
            "Empty" => out.send(Bytes::new()).await,
            "Meta" => {
                let text: Vec<String> = info.metadata.iter().map(|(k, v)| format!("{k}={}", v.join(","))).collect();
                out.send(format!("{} peer={}", text.join(";"), info.peer_nid).into()).await
            }
            _ => unreachable!(),
        }
    }
    fn idle_exempt(&self, m: &str) -> bool {
        m == "Slow"
    }
}

pub(crate) async fn serve(
    nats: &NatsServer,
    nid: &str,
    config: impl FnOnce(&mut ServerConfig),
) -> (Running, Arc<Echo>, async_nats::Client) {
    let conn = async_nats::connect(nats.url()).await.unwrap();
    let echo = Arc::new(Echo::default());
    let mut cfg = ServerConfig::new(nid);
    config(&mut cfg);
    let mut server = Server::new(conn.clone(), cfg);
    server.add(echo.clone());
    let peers = echo.clone();
    server.live_peers(move || peers.live.lock().unwrap().clone());
    (server.start().await.unwrap(), echo, conn)
}

const T: Duration = Duration::from_secs(5);

/// Waits up to 10 s for `cond` (it usually holds within milliseconds; the budget is for a
/// machine starved by other work).
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < end, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts the `end` frames callers publish on a subject (the server's queue subscription
/// does not hide them from a plain one).
struct EndCounter {
    subject: String,
    ends: Arc<AtomicUsize>,
    sentinels: Arc<AtomicUsize>,
}

/// A payload that is not an nrpc frame, published after the frames under test.
const SENTINEL: &[u8] = b"islb-test-sentinel";

impl EndCounter {
    async fn start(nats: &NatsServer, subject: &str) -> Self {
        use futures::StreamExt;
        let conn = async_nats::connect(nats.url()).await.unwrap();
        let mut sub = conn.subscribe(subject.to_owned()).await.unwrap();
        let sentinel_conn = conn.clone();
        let (ends, sentinels) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (e, st) = (ends.clone(), sentinels.clone());
        tokio::spawn(async move {
            let _conn = conn;
            while let Some(m) = sub.next().await {
                if m.payload.as_ref() == SENTINEL {
                    st.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let f = <islb_proto::nrpc::Request as prost::Message>::decode(m.payload).unwrap();
                if matches!(f.r#type, Some(islb_proto::nrpc::request::Type::End(_))) {
                    e.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let counter = EndCounter { subject: subject.to_owned(), ends, sentinels };
        // A flush does not wait for the server to have read the SUB; a sentinel sent on
        // the same connection after it coming back does prove the subscription is live.
        counter.sent_by(&sentinel_conn).await;
        counter
    }

    /// The ends published on `conn` so far: NATS keeps one connection's messages in
    /// order, so every end sent before a sentinel is counted once the sentinel arrives.
    async fn sent_by(&self, conn: &async_nats::Client) -> usize {
        let seen = self.sentinels.load(Ordering::SeqCst);
        conn.publish(self.subject.clone(), SENTINEL.into()).await.unwrap();
        conn.flush().await.unwrap();
        eventually("the sentinel arrives", || self.sentinels.load(Ordering::SeqCst) > seen).await;
        self.ends.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn all_four_call_kinds_work() {
    let nats = NatsServer::start();
    let (_srv, _echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let client = Client::new(conn, "srv-1", "tester");
    let none = Metadata::new();
    // unary
    assert_eq!(client.unary("/test.Echo/Say", "hello".into(), &none, T).await.unwrap(), "hello");
    // server streaming
    let mut s = client.open("/test.Echo/Count", &none).await.unwrap();
    s.send("4".into()).await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = s.recv(T).await.unwrap() {
        got.push(String::from_utf8_lossy(&m).into_owned());
    }
    assert_eq!(got, ["0", "1", "2", "3"]);
    // client streaming, in order
    let mut s = client.open("/test.Echo/Sum", &none).await.unwrap();
    for v in 1..=50 {
        s.send(v.to_string().into()).await.unwrap();
    }
    s.close_send().await.unwrap();
    let reply = String::from_utf8(s.recv(T).await.unwrap().unwrap().to_vec()).unwrap();
    let expected: Vec<i64> = (1..=50).collect();
    assert_eq!(reply, format!("1275 {expected:?}"), "every message, in order");
    assert_eq!(s.recv(T).await.unwrap(), None);
    // bidi
    let mut s = client.open("/test.Echo/Chat", &none).await.unwrap();
    for word in ["a", "b", "c"] {
        s.send(word.into()).await.unwrap();
        assert_eq!(s.recv(T).await.unwrap().unwrap(), format!("echo:{word}"));
    }
    s.close_send().await.unwrap();
    assert_eq!(s.recv(T).await.unwrap(), None, "the server ends after the half-close");
}

#[tokio::test]
async fn metadata_and_the_callers_nid_reach_the_handler() {
    let nats = NatsServer::start();
    let (_srv, _echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let client = Client::new(conn, "srv-1", "caller-9");
    let md: Metadata =
        [("sid".to_owned(), vec!["room-1".to_owned()]), ("x".to_owned(), vec!["ü".to_owned(), "2".to_owned()])].into();
    let reply = client.unary("/test.Echo/Meta", Bytes::new(), &md, T).await.unwrap();
    assert_eq!(reply, "sid=room-1;x=ü,2 peer=", "unary calls carry no caller nid, as Go's");
    let mut s = client.open("/test.Echo/Meta", &md).await.unwrap();
    s.send(Bytes::new()).await.unwrap();
    assert_eq!(s.recv(T).await.unwrap().unwrap(), "sid=room-1;x=ü,2 peer=caller-9");
}

#[tokio::test]
async fn errors_carry_their_code_and_message() {
    let nats = NatsServer::start();
    let (_srv, _echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let client = Client::new(conn, "srv-1", "");
    let err = client.unary("/test.Echo/Fail", "x".into(), &Metadata::new(), T).await.unwrap_err();
    assert_eq!(err, Status::not_found("nope"));
    let err = client.unary("/test.Echo/Nope", "x".into(), &Metadata::new(), T).await.unwrap_err();
    assert_eq!(err.code, Code::Unimplemented);
}

#[tokio::test]
async fn a_panicking_handler_is_an_internal_error_not_a_leak() {
    let nats = NatsServer::start();
    let (srv, _echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let client = Client::new(conn, "srv-1", "");
    let err = client.unary("/test.Echo/Boom", "x".into(), &Metadata::new(), T).await.unwrap_err();
    assert_eq!(err.code, Code::Internal, "{err}");
    eventually("the call is gone", || srv.active_calls() == 0).await;
    assert_eq!(client.unary("/test.Echo/Say", "ok".into(), &Metadata::new(), T).await.unwrap(), "ok");
}

#[tokio::test]
async fn a_client_deadline_cancels_the_call_at_the_server() {
    let nats = NatsServer::start();
    let (srv, echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let client = Client::new(conn, "srv-1", "");
    let started = std::time::Instant::now();
    let err =
        client.unary("/test.Echo/Slow", "x".into(), &Metadata::new(), Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(5), "the 300 ms deadline, not the 30 s handler");
    eventually("the handler is cancelled", || echo.cancelled.load(Ordering::SeqCst) == 1 && srv.active_calls() == 0)
        .await;
}

#[tokio::test]
async fn a_stream_cancelled_by_the_client_ends_at_the_server() {
    let nats = NatsServer::start();
    let (srv, echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let client = Client::new(conn, "srv-1", "");
    let s = client.open("/test.Echo/Slow", &Metadata::new()).await.unwrap();
    eventually("the call is open", || srv.active_calls() == 1).await;
    s.cancel().await;
    eventually("cancelled", || echo.cancelled.load(Ordering::SeqCst) == 1 && srv.active_calls() == 0).await;
}

#[tokio::test]
async fn a_stream_dropped_mid_call_is_cancelled_at_the_server() {
    let nats = NatsServer::start();
    let (srv, echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let ends = EndCounter::start(&nats, "nrpc.srv-1.test.Echo.Slow").await;
    let client = Client::new(conn.clone(), "srv-1", "");
    let s = client.open("/test.Echo/Slow", &Metadata::new()).await.unwrap();
    eventually("the call is open", || srv.active_calls() == 1).await;
    drop(s);
    eventually("cancelled", || echo.cancelled.load(Ordering::SeqCst) == 1 && srv.active_calls() == 0).await;
    assert_eq!(ends.sent_by(&conn).await, 1);
}

#[tokio::test]
async fn a_client_sends_at_most_one_end_per_call() {
    let nats = NatsServer::start();
    let (_srv, _echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let ends = EndCounter::start(&nats, "nrpc.srv-1.test.Echo.Chat").await;
    let client = Client::new(conn.clone(), "srv-1", "");
    // Half-closed, then cancelled and dropped: one end (two crash a Go v0.1.12 server).
    let mut s = client.open("/test.Echo/Chat", &Metadata::new()).await.unwrap();
    s.send("a".into()).await.unwrap();
    s.close_send().await.unwrap();
    s.close_send().await.unwrap();
    assert!(s.send("b".into()).await.is_err(), "nothing after the half-close");
    s.cancel().await;
    // Ended by the server, then dropped: no end from us beyond the half-close.
    let mut s = client.open("/test.Echo/Chat", &Metadata::new()).await.unwrap();
    s.send("c".into()).await.unwrap();
    s.close_send().await.unwrap();
    assert_eq!(s.recv(T).await.unwrap().unwrap(), "echo:c");
    assert_eq!(s.recv(T).await.unwrap(), None);
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await; // a wrong end from drop would be out by now
    assert_eq!(ends.sent_by(&conn).await, 2);
}

#[tokio::test]
async fn shutdown_ends_open_calls_with_unavailable() {
    let nats = NatsServer::start();
    let (srv, echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let client = Client::new(conn, "srv-1", "sfu-1");
    let mut s = client.open("/test.Echo/Slow", &Metadata::new()).await.unwrap();
    eventually("the call is open", || srv.active_calls() == 1).await;
    srv.shutdown().await;
    assert_eq!(s.recv(T).await.unwrap_err().code, Code::Unavailable);
    eventually("the handler is cancelled", || echo.cancelled.load(Ordering::SeqCst) == 1).await;
    assert_eq!(s.recv(T).await.unwrap(), None, "one end only");
}

#[tokio::test]
async fn a_node_going_down_closes_its_streams() {
    let nats = NatsServer::start();
    let (srv, echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let client = Client::new(conn, "srv-1", "sfu-7");
    let mut s = client.open("/test.Echo/Slow", &Metadata::new()).await.unwrap();
    eventually("the call is open", || srv.active_calls() == 1).await;
    assert_eq!(srv.close_peer("sfu-7"), 1);
    assert!(s.recv(Duration::from_millis(300)).await.is_err(), "nothing is sent for a cancelled call");
    eventually("the handler is cancelled", || echo.cancelled.load(Ordering::SeqCst) == 1).await;
}

/// A subscription is live once `barrier` returns: a message another connection publishes
/// right after is delivered. Without NATS the barrier fails within its timeout.
#[tokio::test]
async fn after_a_barrier_a_subscription_gets_what_others_publish() {
    use futures::StreamExt;
    let mut nats = NatsServer::start();
    let (a, b) = (async_nats::connect(nats.url()).await.unwrap(), async_nats::connect(nats.url()).await.unwrap());
    for i in 0..20 {
        let subject = format!("barrier.test.{i}");
        let mut sub = a.subscribe(subject.clone()).await.unwrap();
        islb_nrpc::barrier(&a, T).await.unwrap();
        b.publish(subject, "x".into()).await.unwrap();
        b.flush().await.unwrap();
        assert!(tokio::time::timeout(T, sub.next()).await.unwrap().is_some(), "round {i}");
    }
    nats.stop();
    let started = std::time::Instant::now();
    let err = islb_nrpc::barrier(&a, Duration::from_millis(500)).await.unwrap_err();
    assert!(started.elapsed() < T, "bounded: {err}");
}
