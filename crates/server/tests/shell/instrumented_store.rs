//! The registry shell against a real store (memory, or Redis with its change feed) behind
//! a wrapper that counts calls and injects the one fault a real server cannot be made to
//! produce on demand: an expiry claim that ran but whose answer was lost.
//!
//! - Such a claim must still end in one `delete` event: no other replica announces it, and
//!   the node's watchers would otherwise keep a dead node.
//! - Concurrent lookups share one read of the change feed instead of queueing one each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use islb_core::{NodeKey, Registry, RegistryConfig, Session, Timestamp, Verdict};
use islb_gob::{Message as _, Node, Request};
use islb_server::discovery::Discovery;
use islb_server::placement::PlacementConfig;
use islb_store::{Changes, Claim, Cursor, MemoryStore, SessionClaim, Snapshot, Store, StoreError, StreamKey};
use islb_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// A store that counts change-feed reads and, if asked, loses the first expiry claim's
/// answer (and then reloads slowly).
struct Instrumented<S> {
    inner: S,
    lose_a_claim: bool,
    lost: AtomicBool,
    feed_reads: AtomicUsize,
}

impl<S> Instrumented<S> {
    fn new(inner: S, lose_a_claim: bool) -> Arc<Self> {
        Arc::new(Instrumented { inner, lose_a_claim, lost: AtomicBool::new(false), feed_reads: AtomicUsize::new(0) })
    }
}

#[async_trait]
impl<S: Store> Store for Instrumented<S> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    async fn reset(&self) -> Result<(), StoreError> {
        self.inner.reset().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn put_node(&self, node: Arc<Node>, deadline: Timestamp) -> Result<Verdict, StoreError> {
        self.inner.put_node(node, deadline).await
    }
    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError> {
        self.inner.touch_nodes(touches).await
    }
    async fn delete_node(&self, key: &str) -> Result<Option<Arc<Node>>, StoreError> {
        self.inner.delete_node(key).await
    }
    async fn claim_expired(&self, keys: &[NodeKey], now: Timestamp) -> Result<Vec<Claim>, StoreError> {
        let claims = self.inner.claim_expired(keys, now).await?;
        let expired = claims.iter().any(|c| matches!(c, Claim::Expired(_)));
        if self.lose_a_claim && expired && !self.lost.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Timeout(Duration::from_secs(1)));
        }
        Ok(claims)
    }
    async fn load(&self) -> Result<Snapshot, StoreError> {
        // A slow reload after the loss: lookups meanwhile read the change feed first.
        if self.lost.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.inner.load().await
    }
    async fn changes(&self, cursor: &Cursor) -> Result<Changes, StoreError> {
        self.feed_reads.fetch_add(1, Ordering::SeqCst);
        // A round trip long enough for lookups to pile up behind it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.changes(cursor).await
    }
    async fn claim_session(&self, sid: &str, candidate: &NodeKey, now: Timestamp) -> Result<SessionClaim, StoreError> {
        self.inner.claim_session(sid, candidate, now).await
    }
    async fn move_session(
        &self,
        sid: &str,
        version: u64,
        to: Option<&NodeKey>,
        idle_before: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        self.inner.move_session(sid, version, to, idle_before, now).await
    }
    async fn touch_sessions(&self, touches: &[(Arc<str>, Timestamp)]) -> Result<(), StoreError> {
        self.inner.touch_sessions(touches).await
    }
    async fn set_drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<(), StoreError> {
        self.inner.set_drain(node, deadline).await
    }
    async fn clear_drain(&self, node: &NodeKey) -> Result<bool, StoreError> {
        self.inner.clear_drain(node).await
    }
    async fn put_stream(&self, key: &StreamKey, json: &str, ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_stream(key, json, ttl).await
    }
    async fn delete_stream(&self, key: &StreamKey) -> Result<bool, StoreError> {
        self.inner.delete_stream(key).await
    }
    async fn streams_of(&self, sid: &str) -> Result<Vec<(StreamKey, String)>, StoreError> {
        self.inner.streams_of(sid).await
    }
}

/// A registry replica on `store` (no background loops started).
fn replica(client: &async_nats::Client, store: Arc<dyn Store>, expire_ms: u64) -> Arc<Discovery> {
    let registry = Registry::new(RegistryConfig { expire_ms, placed: Default::default() });
    let placement = PlacementConfig {
        dc: "dc1".into(),
        default_capacity: 0,
        session_ttl: Duration::from_secs(3600),
        jwt_key: None,
    };
    Arc::new(Discovery::new(
        Arc::new(client.clone()),
        registry,
        store,
        1 << 20,
        Duration::from_secs(1),
        placement,
        Arc::new(islb_server::clock::WallClock),
    ))
}

fn redis_store(redis: &islb_testkit::RedisServer) -> islb_store_redis::RedisConfig {
    islb_store_redis::RedisConfig {
        url: redis.url(),
        prefix: "islb".into(),
        timeout: Duration::from_secs(5),
        ca_file: None,
    }
}

/// Registers a node that then falls silent, with lookups running all along (a lookup of a
/// shared store reads its change feed, which is one of the two ways the lost claim's
/// removal comes back); counts its delete events.
async fn lose_a_claim<S: Store>(inner: S) {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let store = Instrumented::new(inner, true);
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
    let a = replica(&client, Instrumented::new(connect().await, false), 60_000);
    let b_store = Instrumented::new(connect().await, false);
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
