//! A registry replica without a network, on the test's (paused) tokio clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use islb_core::{NodeKey, Registry, RegistryConfig, Session, Timestamp, Verdict};
use islb_gob::{GetResponse, Message as _, Node, Request, Response, Value};
use islb_server::clock::{Clock, TokioClock};
use islb_server::discovery::Discovery;
use islb_server::outbox::{MemoryOutbox, Published};
use islb_server::placement::PlacementConfig;
use islb_store::{Changes, Claim, Cursor, SessionClaim, Snapshot, Store, StoreError, StreamKey};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

/// Settings of a test replica.
pub(crate) struct Setup {
    pub(crate) expire: Duration,
    pub(crate) placed: &'static [&'static str],
    pub(crate) session_ttl: Duration,
    pub(crate) max_sessions: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            expire: Duration::from_secs(2),
            placed: &[],
            session_ttl: Duration::from_secs(3600),
            max_sessions: 1_000_000,
        }
    }
}

/// One replica with its loops running (expiry, batching, maintenance) until dropped.
pub(crate) struct Shell {
    pub(crate) d: Arc<Discovery>,
    pub(crate) out: UnboundedReceiver<Published>,
    pub(crate) clock: TokioClock,
    stop: CancellationToken,
}

impl Shell {
    pub(crate) fn start(store: Arc<dyn Store>, setup: Setup) -> Shell {
        let registry = Registry::new(RegistryConfig {
            expire_ms: setup.expire.as_millis() as u64,
            placed: setup.placed.iter().map(|s| (*s).to_owned()).collect(),
        });
        let placement = PlacementConfig {
            dc: "dc1".into(),
            default_capacity: 0,
            session_ttl: setup.session_ttl,
            max_sessions: setup.max_sessions,
            tokens: Arc::new(islb_server::tokens::Verifier::unverified()),
        };
        let (outbox, out) = MemoryOutbox::new();
        let clock = TokioClock::starting_at(Timestamp::from_ms(1_700_000_000_000));
        let d = Discovery::new(
            Arc::new(outbox),
            registry,
            store,
            1 << 20,
            Duration::from_secs(1),
            placement,
            Arc::new(clock),
        );
        let d = Arc::new(d);
        let stop = CancellationToken::new();
        tokio::spawn(d.clone().expiry_loop(stop.clone()));
        tokio::spawn(d.clone().flush_loop(stop.clone()));
        tokio::spawn(d.clone().maintain_loop(stop.clone()));
        Shell { d, out, clock, stop }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// save / update / delete through the request path: the reply.
    pub(crate) async fn send(&self, action: &str, node: &Node) -> Response {
        let req = Request { action: action.into(), node: node.clone(), ..Request::default() };
        Response::from_gob(&self.d.process(&req.to_gob()).await.1.expect("a reply")).expect("a Response")
    }

    /// get of `service` with `params`: the nodes answered.
    pub(crate) async fn get(&self, service: &str, params: &[(&str, &str)]) -> Vec<Node> {
        let reply = self.d.process(&get_request(service, params)).await.1.expect("a reply");
        GetResponse::from_gob(&reply).expect("a GetResponse").nodes
    }

    /// The next message published on a subject starting with `prefix`, with the time it
    /// came (others are skipped).
    pub(crate) async fn next(&mut self, prefix: &str) -> (Published, Timestamp) {
        loop {
            let p = self.out.recv().await.expect("the outbox is open");
            if p.subject.starts_with(prefix) {
                return (p, self.now());
            }
        }
    }

    /// Every message published so far on subjects starting with `prefix`.
    pub(crate) fn published(&mut self, prefix: &str) -> Vec<Published> {
        std::iter::from_fn(|| self.out.try_recv().ok()).filter(|p| p.subject.starts_with(prefix)).collect()
    }

    /// Keeps `nodes` alive (save, then update every second) until the returned token is
    /// cancelled.
    pub(crate) fn keep_alive(&self, nodes: Vec<Node>) -> CancellationToken {
        let stop = self.stop.child_token();
        let (d, token) = (self.d.clone(), stop.clone());
        tokio::spawn(async move {
            let mut action = "save";
            while !token.is_cancelled() {
                for node in &nodes {
                    let req = Request { action: action.into(), node: node.clone(), ..Request::default() };
                    d.process(&req.to_gob()).await;
                }
                action = "update";
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = token.cancelled() => {}
                }
            }
        });
        stop
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A `get` of `service` with string `params`, encoded.
pub(crate) fn get_request(service: &str, params: &[(&str, &str)]) -> Vec<u8> {
    let mut req = Request { action: "get".into(), service: service.into(), ..Request::default() };
    for (k, v) in params {
        req.params.insert((*k).into(), Value::String((*v).into()));
    }
    req.to_gob()
}

/// A node as ion registers one.
pub(crate) fn node(service: &str, nid: &str) -> Node {
    Node { dc: "dc1".into(), service: service.into(), nid: nid.into(), ..Node::default() }
}

/// The action and nid of a node event.
pub(crate) fn event(p: &Published) -> (String, String) {
    let req = Request::from_gob(&p.payload).expect("events are gob Requests");
    (req.action, req.node.nid)
}

/// A real store behind a wrapper that injects the faults a real server cannot be made
/// to produce on demand, and counts change-feed reads:
///
/// - switched off ([`Faulty::set_down`]): every call fails as an unreachable server's would;
/// - `lose_a_claim`: the first expiry claim that expires a node runs, but its answer is
///   lost (and reloads are slow afterwards, so lookups meanwhile read the feed first);
/// - `feed_delay`: each change-feed read takes this long (for lookups to pile up behind).
pub(crate) struct Faulty<S> {
    pub(crate) inner: S,
    down: AtomicBool,
    lose_a_claim: bool,
    pub(crate) lost: AtomicBool,
    feed_delay: Duration,
    pub(crate) feed_reads: AtomicUsize,
}

impl<S> Faulty<S> {
    /// `inner` with no fault.
    pub(crate) fn new(inner: S) -> Arc<Self> {
        Self::with(inner, false, Duration::ZERO)
    }

    /// `inner` with the faults named.
    pub(crate) fn with(inner: S, lose_a_claim: bool, feed_delay: Duration) -> Arc<Self> {
        Arc::new(Faulty {
            inner,
            down: AtomicBool::new(false),
            lose_a_claim,
            lost: AtomicBool::new(false),
            feed_delay,
            feed_reads: AtomicUsize::new(0),
        })
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn gate(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) { Err(StoreError::refused("switched off")) } else { Ok(()) }
    }
}

#[async_trait]
impl<S: Store> Store for Faulty<S> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    async fn reset(&self) -> Result<(), StoreError> {
        self.gate()?;
        self.inner.reset().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.gate()?;
        self.inner.ping().await
    }
    async fn put_node(&self, node: Arc<Node>, deadline: Timestamp) -> Result<Verdict, StoreError> {
        self.gate()?;
        self.inner.put_node(node, deadline).await
    }
    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError> {
        self.gate()?;
        self.inner.touch_nodes(touches).await
    }
    async fn delete_node(&self, key: &str) -> Result<Option<Arc<Node>>, StoreError> {
        self.gate()?;
        self.inner.delete_node(key).await
    }
    async fn claim_expired(&self, keys: &[NodeKey], now: Timestamp) -> Result<Vec<Claim>, StoreError> {
        self.gate()?;
        let claims = self.inner.claim_expired(keys, now).await?;
        let expired = claims.iter().any(|c| matches!(c, Claim::Expired(_)));
        if self.lose_a_claim && expired && !self.lost.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Timeout(Duration::from_secs(1)));
        }
        Ok(claims)
    }
    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.gate()?;
        if self.lost.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.inner.load().await
    }
    async fn changes(&self, cursor: &Cursor) -> Result<Changes, StoreError> {
        self.gate()?;
        self.feed_reads.fetch_add(1, Ordering::SeqCst);
        if !self.feed_delay.is_zero() {
            tokio::time::sleep(self.feed_delay).await;
        }
        self.inner.changes(cursor).await
    }
    async fn claim_session(&self, sid: &str, candidate: &NodeKey, now: Timestamp) -> Result<SessionClaim, StoreError> {
        self.gate()?;
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
        self.gate()?;
        self.inner.move_session(sid, version, to, idle_before, now).await
    }
    async fn touch_sessions(&self, touches: &[(Arc<str>, Timestamp)]) -> Result<(), StoreError> {
        self.gate()?;
        self.inner.touch_sessions(touches).await
    }
    async fn set_drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<(), StoreError> {
        self.gate()?;
        self.inner.set_drain(node, deadline).await
    }
    async fn clear_drain(&self, node: &NodeKey) -> Result<bool, StoreError> {
        self.gate()?;
        self.inner.clear_drain(node).await
    }
    async fn put_stream(&self, key: &StreamKey, json: &str, ttl: Duration) -> Result<(), StoreError> {
        self.gate()?;
        self.inner.put_stream(key, json, ttl).await
    }
    async fn delete_stream(&self, key: &StreamKey) -> Result<bool, StoreError> {
        self.gate()?;
        self.inner.delete_stream(key).await
    }
    async fn streams_of(&self, sid: &str) -> Result<Vec<(StreamKey, String)>, StoreError> {
        self.gate()?;
        self.inner.streams_of(sid).await
    }
}

/// A registry replica on `store` that talks on NATS through `client`, on the wall clock
/// (no background loops started).
pub(crate) fn nats_replica(client: &async_nats::Client, store: Arc<dyn Store>, expire_ms: u64) -> Arc<Discovery> {
    placing_replica(client, store, expire_ms, &[])
}

/// [`nats_replica`] placing sessions on the nodes of `placed`.
pub(crate) fn placing_replica(
    client: &async_nats::Client,
    store: Arc<dyn Store>,
    expire_ms: u64,
    placed: &[&str],
) -> Arc<Discovery> {
    let placed = placed.iter().map(|s| (*s).to_owned()).collect();
    let registry = Registry::new(RegistryConfig { expire_ms, placed });
    Arc::new(Discovery::new(
        Arc::new(client.clone()),
        registry,
        store,
        1 << 20,
        Duration::from_secs(1),
        placement_config(Duration::from_secs(3600)),
        Arc::new(islb_server::clock::WallClock),
    ))
}

fn placement_config(session_ttl: Duration) -> PlacementConfig {
    PlacementConfig {
        dc: "dc1".into(),
        default_capacity: 0,
        session_ttl,
        max_sessions: 1_000_000,
        tokens: Arc::new(islb_server::tokens::Verifier::unverified()),
    }
}
