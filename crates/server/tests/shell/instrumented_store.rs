//! The registry shell against a real store (memory, or Redis with its change feed) behind
//! `support::Faulty`, which counts change-feed reads and injects the one fault a real
//! server cannot be made to produce on demand: an expiry claim that ran but whose answer
//! was lost.
//!
//! - Such a claim must still end in one `delete` event: no other replica announces it, and
//!   the node's watchers would otherwise keep a dead node.
//! - Concurrent lookups share one read of the change feed instead of queueing one each.
//! - A lookup of a session the replica's view has placed costs no store call at all.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use islb_gob::{Message as _, Node, Request};
use islb_store::{MemoryStore, Store};
use islb_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

use crate::support::{Faulty, nats_replica as replica, placing_replica};

fn redis_store(redis: &islb_testkit::RedisServer) -> islb_store_redis::RedisConfig {
    islb_store_redis::RedisConfig {
        url: redis.url(),
        prefix: "islb".into(),
        timeout: Duration::from_secs(5),
        ca_file: None,
        client_cert: None,
    }
}

/// Registers a node that then falls silent, with lookups running all along (a lookup of a
/// shared store reads its change feed, which is one of the two ways the lost claim's
/// removal comes back); counts its delete events.
async fn lose_a_claim<S: Store>(inner: S) {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let store = Faulty::with(inner, true, Duration::from_millis(50));
    let discovery = replica(&client, store.clone(), 300);
    let mut events = client.subscribe("node.discovery.>").await.unwrap();
    client.flush().await.unwrap();

    let stop = CancellationToken::new();
    tokio::spawn(discovery.clone().expiry_loop(stop.clone()));
    tokio::spawn(discovery.clone().maintain_loop(stop.clone()));
    let node = Node { dc: "dc1".into(), service: "signal".into(), nid: "sig-1".into(), ..Node::default() };
    let save = Request { action: "save".into(), node: node.clone(), ..Request::default() };
    discovery.process(&save.to_gob()).await;
    let lookups = {
        let (discovery, stop) = (discovery.clone(), stop.clone());
        let get = Request { action: "get".into(), service: "signal".into(), ..Request::default() }.to_gob();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                discovery.process(&get).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // The first delete comes within a few maintenance rounds; a duplicate would come within
    // the quiet window after it (longer than a round and a reload).
    let mut deletes = 0;
    let mut until = tokio::time::Instant::now() + Duration::from_secs(15);
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, events.next()).await {
        let event = Request::from_gob(&msg.payload).unwrap();
        assert_eq!(event.node.nid, "sig-1");
        if event.action == "delete" {
            deletes += 1;
            if deletes == 1 {
                until = tokio::time::Instant::now() + Duration::from_millis(2_500);
            }
        }
    }
    stop.cancel();
    lookups.await.unwrap();
    assert!(store.lost.load(Ordering::SeqCst), "the fault was injected");
    assert_eq!(deletes, 1, "one delete event, though the claim's answer was lost");
    assert!(discovery.read(|r, _| r.lookup("dc1.sig-1").is_none()));
}

#[tokio::test]
async fn a_node_whose_expiry_claim_answer_was_lost_is_still_announced_once() {
    lose_a_claim(MemoryStore::new()).await;
}

#[tokio::test]
async fn a_lost_claim_on_redis_is_announced_once_whichever_way_it_comes_back() {
    let redis = islb_testkit::RedisServer::start();
    lose_a_claim(islb_store_redis::RedisStore::connect(&redis_store(&redis)).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_share_a_read_of_the_change_feed_and_all_see_the_latest_write() {
    let nats = NatsServer::start();
    let redis = islb_testkit::RedisServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let connect = || async { islb_store_redis::RedisStore::connect(&redis_store(&redis)).await.unwrap() };
    let a = replica(&client, Faulty::new(connect().await), 60_000);
    let b_store = Faulty::with(connect().await, false, Duration::from_millis(50));
    let b = replica(&client, b_store.clone(), 60_000);
    b.load_from_store().await.unwrap();
    // Saved through replica A; B has not heard of it.
    let node = Node { dc: "dc1".into(), service: "signal".into(), nid: "sig-1".into(), ..Node::default() };
    a.process(&Request { action: "save".into(), node, ..Request::default() }.to_gob()).await;

    let get = Request { action: "get".into(), service: "signal".into(), ..Request::default() }.to_gob();
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let (b, get) = (b.clone(), get.clone());
            tokio::spawn(async move { b.process(&get).await.1.expect("a reply") })
        })
        .collect();
    for reply in futures::future::join_all(lookups).await {
        let listed = islb_gob::GetResponse::from_gob(&reply.unwrap()).unwrap().nodes;
        assert_eq!(listed.iter().map(|n| n.nid.as_str()).collect::<Vec<_>>(), ["sig-1"], "each sees A's save");
    }
    let reads = b_store.feed_reads.load(Ordering::SeqCst);
    assert!(reads < 10, "20 concurrent lookups read the feed {reads} times");
}

/// Once replica B's view has a session placed (B placed it, or learnt it from the feed),
/// B answers its lookups from the view: no change-feed read, no claim. A session B does
/// not know still reads the feed (and claims), so it lands where A put it.
#[tokio::test]
async fn a_placed_session_is_answered_from_the_view_without_a_store_round_trip() {
    let nats = NatsServer::start();
    let redis = islb_testkit::RedisServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let connect = || async { islb_store_redis::RedisStore::connect(&redis_store(&redis)).await.unwrap() };
    let a = placing_replica(&client, Faulty::new(connect().await), 60_000, &["rtc"]);
    let b_store = Faulty::new(connect().await);
    let b = placing_replica(&client, b_store.clone(), 60_000, &["rtc"]);
    for i in 0..3 {
        let node = Node { dc: "dc1".into(), service: "rtc".into(), nid: format!("sfu-{i}"), ..Node::default() };
        a.process(&Request { action: "save".into(), node, ..Request::default() }.to_gob()).await;
    }
    let lookup = |sid: &str| {
        let mut get = Request { action: "get".into(), service: "rtc".into(), ..Request::default() };
        get.params.insert("sid".into(), islb_gob::Value::String(sid.into()));
        get.to_gob()
    };
    let answer = |reply: Option<bytes::Bytes>| -> Vec<String> {
        islb_gob::GetResponse::from_gob(&reply.expect("a reply")).unwrap().nodes.into_iter().map(|n| n.nid).collect()
    };
    // Placed through A; B learns it from the feed on its first lookup.
    let placed = answer(a.process(&lookup("room-1")).await.1);
    assert_eq!(placed.len(), 1);
    assert_eq!(answer(b.process(&lookup("room-1")).await.1), placed);
    let reads = b_store.feed_reads.load(Ordering::SeqCst);
    assert!(reads >= 1, "an unknown session reads the feed");
    for _ in 0..20 {
        assert_eq!(answer(b.process(&lookup("room-1")).await.1), placed);
    }
    assert_eq!(b_store.feed_reads.load(Ordering::SeqCst), reads, "placed lookups read nothing from the store");
    // A session B has never seen: the feed again.
    assert_eq!(answer(b.process(&lookup("room-2")).await.1).len(), 1);
    assert!(b_store.feed_reads.load(Ordering::SeqCst) > reads);
}
