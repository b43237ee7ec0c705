//! The interop rules of docs/RPC.md section 7, each checked by sending raw
//! frames as Go's client sends them (or as a misbehaving peer would) to our server.

use std::time::Duration;

use async_nats::Subscriber;
use bytes::Bytes;
use futures::StreamExt;
use islb_nrpc::{Client, Code, Metadata, frame};
use islb_proto::nrpc::{self, response};
use islb_testkit::NatsServer;
use prost::Message;

use crate::live::serve;

/// Bytes written as hex (as the golden vectors are).
pub(crate) fn unhex(s: &str) -> Bytes {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<_>>().into()
}

/// A call driven frame by frame on its own inbox.
struct Raw {
    conn: async_nats::Client,
    subject: String,
    inbox: String,
    sub: Subscriber,
}

impl Raw {
    async fn new(conn: &async_nats::Client, subject: &str) -> Raw {
        let inbox = conn.new_inbox();
        let sub = conn.subscribe(inbox.clone()).await.unwrap();
        Raw { conn: conn.clone(), subject: subject.into(), inbox, sub }
    }

    async fn send(&self, frame: Bytes) {
        self.conn.publish_with_reply(self.subject.clone(), self.inbox.clone(), frame).await.unwrap();
        self.conn.flush().await.unwrap();
    }

    /// Every frame that arrives within `d` (asserting none is a `begin`).
    async fn frames(&mut self, d: Duration) -> Vec<nrpc::Response> {
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some(m)) = tokio::time::timeout_at(end, self.sub.next()).await {
            let r = nrpc::Response::decode(m.payload).unwrap();
            assert!(
                !matches!(r.r#type, Some(response::Type::Begin(_))),
                "no begin frames (header metadata can crash Go clients)"
            );
            out.push(r);
        }
        out
    }

    async fn next(&mut self) -> nrpc::Response {
        let m = tokio::time::timeout(Duration::from_secs(5), self.sub.next()).await.expect("a frame").unwrap();
        nrpc::Response::decode(m.payload).unwrap()
    }
}

fn data(r: &nrpc::Response) -> Option<&[u8]> {
    match &r.r#type {
        Some(response::Type::Data(d)) => Some(&d.data),
        _ => None,
    }
}

fn end_status(r: &nrpc::Response) -> Option<Option<(i32, String)>> {
    match &r.r#type {
        Some(response::Type::End(e)) => Some(e.status.as_ref().map(|s| (s.code, s.message.clone()))),
        _ => None,
    }
}

/// The status code of an `end` with a status.
fn end_code(r: &nrpc::Response) -> Option<i32> {
    end_status(r).flatten().map(|(c, _)| c)
}

const SAY: &str = "nrpc.srv-1.test.Echo.Say";

#[tokio::test]
async fn routing_is_by_subject_not_call_method_and_unary_starts_on_the_first_data() {
    let nats = NatsServer::start();
    let (_srv, _e, conn) = serve(&nats, "srv-1", |_| {}).await;
    let mut raw = Raw::new(&conn, SAY).await;
    raw.send(frame::call("/something.Else/Entirely", &Metadata::new(), "")).await;
    raw.send(frame::request_data("hi".into())).await;
    // No end{} is sent, as Go's unary client sends none before it has the answer.
    assert_eq!(data(&raw.next().await), Some(&b"hi"[..]));
    assert_eq!(end_status(&raw.next().await), Some(None), "success is an end without status");
    // Go's late half-close for a finished call is ignored (no answer, no state).
    raw.send(unhex("2200")).await;
    assert!(raw.frames(Duration::from_millis(200)).await.is_empty());
}

#[tokio::test]
async fn end_without_status_half_closes_and_end_with_any_status_cancels_silently() {
    let nats = NatsServer::start();
    let (srv, _e, conn) = serve(&nats, "srv-1", |_| {}).await;
    let mut raw = Raw::new(&conn, "nrpc.srv-1.test.Echo.Chat").await;
    // A Go stream's call: the subject as method, the caller's nid (as request_call_stream_go).
    raw.send(frame::call("nrpc.srv-1.test.Echo.Chat", &Metadata::new(), "signal-1")).await;
    raw.send(frame::request_data("a".into())).await;
    assert_eq!(data(&raw.next().await), Some(&b"echo:a"[..]));
    raw.send(unhex("2200")).await; // request_end_halfclose
    assert_eq!(end_status(&raw.next().await), Some(None));

    let mut raw = Raw::new(&conn, "nrpc.srv-1.test.Echo.Chat").await;
    raw.send(frame::call("nrpc.srv-1.test.Echo.Chat", &Metadata::new(), "signal-1")).await;
    raw.send(frame::request_data("b".into())).await;
    assert_eq!(data(&raw.next().await), Some(&b"echo:b"[..]));
    raw.send(unhex("22020a00")).await; // request_end_status0: a cancel, even with code 0
    crate::live::eventually("the call is cancelled", || srv.active_calls() == 0).await;
    assert!(raw.frames(Duration::from_millis(300)).await.is_empty(), "a cancelled call gets nothing");
}

#[tokio::test]
async fn empty_messages_are_delivered_and_answers_are_never_empty_data_frames() {
    let nats = NatsServer::start();
    let (_srv, _e, conn) = serve(&nats, "srv-1", |_| {}).await;
    let mut raw = Raw::new(&conn, SAY).await;
    raw.send(frame::call("/test.Echo/Say", &Metadata::new(), "")).await;
    raw.send(unhex("1a00")).await; // response_data_empty's shape: a zero-length message
    let reply = raw.next().await;
    let payload = data(&reply).expect("a data frame");
    assert!(!payload.is_empty(), "an empty answer is padded so Go v1.0.0 does not read EOF");
    assert_eq!(islb_proto::ion::Empty::decode(payload).unwrap(), islb_proto::ion::Empty {});
    let client = Client::new(conn, "srv-1", "");
    let got = client.unary("/test.Echo/Empty", Bytes::new(), &Metadata::new(), Duration::from_secs(5)).await.unwrap();
    assert_eq!(&got[..], &frame::EMPTY_PADDING);
}

#[tokio::test]
async fn a_burst_of_frames_is_handled_in_arrival_order() {
    let nats = NatsServer::start();
    let (_srv, _e, conn) = serve(&nats, "srv-1", |_| {}).await;
    let mut raw = Raw::new(&conn, "nrpc.srv-1.test.Echo.Sum").await;
    raw.send(frame::call("/test.Echo/Sum", &Metadata::new(), "")).await;
    for v in 1..=100 {
        raw.conn
            .publish_with_reply(raw.subject.clone(), raw.inbox.clone(), frame::request_data(v.to_string().into()))
            .await
            .unwrap();
    }
    raw.send(frame::request_end(None)).await; // right behind the data: a Go server could reorder this
    let reply = raw.next().await;
    let expected: Vec<i64> = (1..=100).collect();
    assert_eq!(String::from_utf8_lossy(data(&reply).unwrap()), format!("5050 {expected:?}"));
}

#[tokio::test]
async fn abandoned_streams_are_ended_after_the_idle_timeout() {
    let nats = NatsServer::start();
    let (srv, _e, conn) = serve(&nats, "srv-1", |c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut raw = Raw::new(&conn, "nrpc.srv-1.test.Echo.Chat").await;
    raw.send(frame::call("nrpc.srv-1.test.Echo.Chat", &Metadata::new(), "signal-1")).await;
    raw.send(frame::request_data("x".into())).await;
    assert_eq!(data(&raw.next().await), Some(&b"echo:x"[..]));
    // Then nothing, as ion does with reflection streams.
    let end = raw.next().await;
    assert_eq!(end_code(&end), Some(Code::DeadlineExceeded as i32));
    assert_eq!(srv.active_calls(), 0);
}

#[tokio::test]
async fn push_streams_of_a_caller_that_is_up_are_exempt_from_the_idle_timeout() {
    let nats = NatsServer::start();
    let (srv, echo, conn) = serve(&nats, "srv-1", |c| c.idle_timeout = Duration::from_millis(200)).await;
    echo.live.lock().unwrap().insert("sfu-1".into());
    let slow = "nrpc.srv-1.test.Echo.Slow";
    let mut up = Raw::new(&conn, slow).await;
    up.send(frame::call(slow, &Metadata::new(), "sfu-1")).await;
    let mut unknown = Raw::new(&conn, slow).await;
    unknown.send(frame::call(slow, &Metadata::new(), "cli-1")).await;
    let mut anonymous = Raw::new(&conn, slow).await;
    anonymous.send(frame::call(slow, &Metadata::new(), "")).await;
    // Callers not known to be up are reaped like any other call; the one that is up stays.
    for raw in [&mut unknown, &mut anonymous] {
        let end = raw.next().await;
        assert_eq!(end_code(&end), Some(Code::DeadlineExceeded as i32));
    }
    assert!(up.frames(Duration::from_millis(600)).await.is_empty());
    assert_eq!(srv.active_calls(), 1);
    // Once its caller is no longer up, the next idle check ends it too.
    echo.live.lock().unwrap().clear();
    let end = up.next().await;
    assert_eq!(end_code(&end), Some(Code::DeadlineExceeded as i32));
    crate::live::eventually("every handler cancelled", || {
        echo.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 3 && srv.active_calls() == 0
    })
    .await;
    assert!(up.frames(Duration::from_millis(300)).await.is_empty(), "one end only");
}

#[tokio::test]
async fn a_call_that_does_not_read_its_input_is_ended_once_not_buffered_forever() {
    let nats = NatsServer::start();
    let (srv, echo, conn) = serve(&nats, "srv-1", |_| {}).await;
    let slow = "nrpc.srv-1.test.Echo.Slow";
    let mut raw = Raw::new(&conn, slow).await;
    raw.send(frame::call(slow, &Metadata::new(), "sfu-1")).await;
    for i in 0..islb_nrpc::server::CALL_QUEUE + 50 {
        raw.conn
            .publish_with_reply(raw.subject.clone(), raw.inbox.clone(), frame::request_data(i.to_string().into()))
            .await
            .unwrap();
    }
    raw.conn.flush().await.unwrap();
    let end = raw.next().await;
    assert_eq!(end_code(&end), Some(Code::ResourceExhausted as i32), "{end:?}");
    let more = raw.frames(Duration::from_millis(300)).await;
    assert!(more.is_empty(), "exactly one end: {more:?}");
    crate::live::eventually("the handler is cancelled", || {
        echo.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1 && srv.active_calls() == 0
    })
    .await;
}

#[tokio::test]
async fn bad_frames_are_answered_and_never_break_the_server() {
    let nats = NatsServer::start();
    let (_srv, _e, conn) = serve(&nats, "srv-1", |c| c.max_message_size = 1024).await;
    // Garbage.
    let mut raw = Raw::new(&conn, SAY).await;
    raw.send(Bytes::from_static(b"\xff\xff\xff not protobuf")).await;
    assert_eq!(end_code(&raw.next().await), Some(Code::InvalidArgument as i32));
    // Data and end for an inbox without a call (before the call, or late frames of a
    // finished one) are dropped: answering could give a client a second end.
    let mut raw = Raw::new(&conn, SAY).await;
    raw.send(frame::request_data("early".into())).await;
    raw.send(unhex("2200")).await;
    assert!(raw.frames(Duration::from_millis(300)).await.is_empty());
    // Unknown method: exactly Go's bytes.
    let mut raw = Raw::new(&conn, "nrpc.srv-1.test.Echo.Nope").await;
    raw.send(frame::call("/test.Echo/Nope", &Metadata::new(), "")).await;
    let m = tokio::time::timeout(Duration::from_secs(5), raw.sub.next()).await.unwrap().unwrap();
    assert_eq!(&m.payload[..], &unhex("22130a11080c120d556e696d706c656d656e746564")[..]);
    // Oversized message.
    let mut raw = Raw::new(&conn, SAY).await;
    raw.send(frame::call("/test.Echo/Say", &Metadata::new(), "")).await;
    raw.send(frame::request_data(vec![7u8; 4096].into())).await;
    assert_eq!(end_code(&raw.next().await), Some(Code::ResourceExhausted as i32));
    // More of them: the call already had its one end.
    raw.send(frame::request_data(vec![7u8; 4096].into())).await;
    assert!(raw.frames(Duration::from_millis(300)).await.is_empty(), "no second end");
    // An oversized call is answered.
    let mut raw = Raw::new(&conn, SAY).await;
    let mut md = Metadata::new();
    md.insert("big".into(), vec!["x".repeat(4096)]);
    raw.send(frame::call("/test.Echo/Say", &md, "")).await;
    assert_eq!(end_code(&raw.next().await), Some(Code::ResourceExhausted as i32));
    // A frame without a reply subject.
    conn.publish(SAY, frame::call("/test.Echo/Say", &Metadata::new(), "")).await.unwrap();
    // Still serving.
    let client = Client::new(conn, "srv-1", "");
    assert_eq!(
        client.unary("/test.Echo/Say", "ok".into(), &Metadata::new(), Duration::from_secs(5)).await.unwrap(),
        "ok"
    );
}

#[tokio::test]
async fn each_server_answers_on_its_own_nid_and_nobody_listening_is_unavailable_at_once() {
    let nats = NatsServer::start();
    let (_a, _, conn) = serve(&nats, "srv-a", |_| {}).await;
    let (_b, _, _) = serve(&nats, "srv-b", |_| {}).await;
    for nid in ["srv-a", "srv-b"] {
        let client = Client::new(conn.clone(), nid, "");
        assert_eq!(
            client.unary("/test.Echo/Say", nid.into(), &Metadata::new(), Duration::from_secs(5)).await.unwrap(),
            nid
        );
    }
    let started = std::time::Instant::now();
    let client = Client::new(conn, "nobody", "");
    let err = client.unary("/test.Echo/Say", "x".into(), &Metadata::new(), Duration::from_secs(30)).await.unwrap_err();
    // UNAVAILABLE (not DEADLINE_EXCEEDED) long before the deadline: NATS said no responders.
    assert_eq!(err.code, Code::Unavailable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "no-responders is immediate");
}

/// Rule 12: metadata values are proto3 strings. A `call` whose metadata holds bytes that
/// are not UTF-8 (what Go drops silently, leaving its caller to hang) is refused with
/// INVALID_ARGUMENT, counted, and the server goes on serving.
#[tokio::test]
async fn a_call_with_non_utf8_metadata_is_refused_not_dropped() {
    let nats = NatsServer::start();
    let (_srv, _e, conn) = serve(&nats, "srv-1", |_| {}).await;
    let mut md = Metadata::new();
    md.insert("trace-bin".into(), vec!["XXXX".into()]);
    let mut call = frame::call("/test.Echo/Say", &md, "").to_vec();
    let at = call.windows(4).position(|w| w == b"XXXX").expect("the placeholder value");
    call[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0x00, 0x80]);
    let mut raw = Raw::new(&conn, SAY).await;
    raw.send(call.into()).await;
    let end = raw.next().await;
    assert_eq!(end_code(&end), Some(Code::InvalidArgument as i32), "{end:?}");
    assert!(raw.frames(Duration::from_millis(300)).await.is_empty(), "one end only");
    // Binary metadata sent as gRPC does it (base64 text under a -bin key) goes through.
    let mut md = Metadata::new();
    md.insert("trace-bin".into(), vec!["//4AgA==".into()]);
    let client = Client::new(conn, "srv-1", "");
    assert_eq!(client.unary("/test.Echo/Say", "ok".into(), &md, Duration::from_secs(5)).await.unwrap(), "ok");
}
