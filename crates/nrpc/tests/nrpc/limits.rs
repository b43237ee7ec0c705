//! Fair limits: one caller holding half-open calls, flooding from many inboxes or sending
//! huge metadata never shuts out another caller.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use islb_nrpc::{Client, Code, Metadata, frame};
use islb_proto::nrpc::{self, response};
use islb_testkit::NatsServer;
use prost::Message;

use crate::live::serve;

const SAY: &str = "nrpc.srv-1.test.Echo.Say";
const T: Duration = Duration::from_secs(5);

/// Subscribes to the frames answering the inboxes `subject` matches (a wildcard).
async fn ends(conn: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let sub = conn.subscribe(subject.to_owned()).await.unwrap();
    conn.flush().await.unwrap();
    sub
}

/// The status codes of the ends that arrive within `d`, counted.
async fn codes(sub: &mut async_nats::Subscriber, d: Duration) -> HashMap<i32, usize> {
    let mut out = HashMap::new();
    let end = tokio::time::Instant::now() + d;
    while let Ok(Some(m)) = tokio::time::timeout_at(end, sub.next()).await {
        if let Some(response::Type::End(e)) = nrpc::Response::decode(m.payload).unwrap().r#type {
            *out.entry(e.status.map_or(0, |s| s.code)).or_default() += 1;
        }
    }
    out
}

/// Opens a call on `reply` and sends nothing after it.
async fn half_open(conn: &async_nats::Client, reply: String, md: &Metadata) {
    conn.publish_with_reply(SAY, reply, frame::call(SAY, md, "")).await.unwrap();
}

#[tokio::test]
async fn half_open_calls_from_one_caller_or_many_inboxes_never_shut_out_another() {
    let nats = NatsServer::start();
    let (srv, _echo, conn) = serve(&nats, "srv-1", |c| {
        c.max_calls = 50;
        c.max_calls_per_peer = 10;
    })
    .await;
    let attacker = async_nats::connect(nats.url()).await.unwrap();
    let none = Metadata::new();
    // One caller (one inbox prefix) opening 100 calls gets 10; the rest are refused.
    let mut one = ends(&attacker, "_INBOX.flood.*").await;
    for i in 0..100 {
        half_open(&attacker, format!("_INBOX.flood.{i}"), &none).await;
    }
    attacker.flush().await.unwrap();
    let got = codes(&mut one, Duration::from_millis(500)).await;
    assert_eq!(got, HashMap::from([(Code::ResourceExhausted as i32, 90)]), "refused past the per-caller bound");
    assert_eq!(srv.active_calls(), 10);
    // Many inboxes, each its own caller, fill the table (40 more calls): then each new
    // call ends the oldest half-open one instead of being refused, the first caller's
    // ten first.
    let mut many = ends(&attacker, "h.*.x").await;
    for i in 0..200 {
        half_open(&attacker, format!("h.{i}.x"), &none).await;
    }
    attacker.flush().await.unwrap();
    let exhausted = Code::ResourceExhausted as i32;
    assert_eq!(codes(&mut many, Duration::from_millis(500)).await, HashMap::from([(exhausted, 150)]));
    assert_eq!(codes(&mut one, Duration::from_millis(100)).await, HashMap::from([(exhausted, 10)]));
    assert_eq!(srv.active_calls(), 50);
    // Another caller is answered every time.
    let client = Client::new(conn, "srv-1", "signal-1");
    for i in 0..30 {
        let msg = format!("hello {i}");
        assert_eq!(client.unary("/test.Echo/Say", msg.clone().into(), &none, T).await.unwrap(), msg);
    }
}

#[tokio::test]
async fn a_call_whose_request_never_comes_is_ended_after_the_first_message_deadline() {
    let nats = NatsServer::start();
    let (srv, _echo, conn) = serve(&nats, "srv-1", |c| c.first_message_timeout = Duration::from_millis(300)).await;
    let mut sub = ends(&conn, "_INBOX.slow.*").await;
    half_open(&conn, "_INBOX.slow.1".into(), &Metadata::new()).await;
    // A half-close counts as the first message: a client-streaming call with none.
    let sum = "nrpc.srv-1.test.Echo.Sum";
    conn.publish_with_reply(sum, "_INBOX.slow.2", frame::call(sum, &Metadata::new(), "")).await.unwrap();
    conn.publish_with_reply(sum, "_INBOX.slow.2", frame::request_end(None)).await.unwrap();
    let got = codes(&mut sub, Duration::from_millis(1500)).await;
    assert_eq!(got, HashMap::from([(0, 1), (Code::DeadlineExceeded as i32, 1)]));
    assert_eq!(srv.active_calls(), 0);
}

#[tokio::test]
async fn metadata_past_the_bound_is_refused_and_within_it_served() {
    let nats = NatsServer::start();
    let (_srv, _echo, conn) = serve(&nats, "srv-1", |c| c.max_metadata_size = 1024).await;
    let client = Client::new(conn, "srv-1", "signal-1");
    let md = |n: usize| Metadata::from([("authorization".to_owned(), vec!["x".repeat(n)])]);
    let err = client.unary("/test.Echo/Say", "hi".into(), &md(10_000), T).await.unwrap_err();
    assert_eq!(err.code, Code::ResourceExhausted);
    assert!(err.message.contains("metadata"), "{err:?}");
    assert_eq!(client.unary("/test.Echo/Say", "hi".into(), &md(900), T).await.unwrap(), "hi");
}
