//! The discovery service on NATS: ion's registry protocol (`node.publish.>` requests,
//! `node.discovery.…` events), carried out with the pure [`Registry`] and the [`Store`].
//!
//! Paths of a request:
//! - **keep-alive of a known, unchanged node** (almost all traffic): the local view moves
//!   the deadline, the reply goes out at once, and the deadline reaches the store in the
//!   next batch (every [`FLUSH_INTERVAL`]);
//! - **new node, changed node, delete**: one store call decides (atomically, for replicas)
//!   what happened, then the view is updated and events are published;
//! - **get**: answered from the view, with encoded replies cached until the answer changes;
//! - **bad input**: a `Response{Success: false, Reason}` when there is a reply subject, a
//!   counter, a rate-limited warning; nothing else changes.
//!
//! Expiry runs on a timer set to the earliest deadline, so a silent node's `delete` goes
//! out within milliseconds of `last keep-alive + expire`; the store's claim makes sure
//! one replica announces it. When the store cannot be reached, nothing is expired.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use async_nats::{Client, Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use islb_core::{Command, Event, EventKind, Lookup, NodeKey, Registry, Timestamp, Verdict, node_key};
use islb_gob::{GetResponse, Limits, Message as _, Node, Request, Response};
use islb_store::{Claim, Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::throttle::Throttle;

/// The subject every registry request arrives on.
pub const REQUEST_SUBJECT: &str = "node.publish.>";
/// The queue group replicas share, so that each request is answered once.
pub const QUEUE_GROUP: &str = "islb";
/// How often batched keep-alive deadlines are written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How many requests one replica handles at the same time.
const MAX_IN_FLIGHT: usize = 1024;
/// Cached `get` replies kept at most (parameter combinations).
const GET_CACHE_ENTRIES: usize = 256;

/// Cache key of a `get` reply: service, nid filter, placed services included.
type CacheKey = (String, Option<String>, bool);

/// The registry service of one replica.
pub struct Discovery {
    client: Client,
    registry: Mutex<Registry>,
    store: Arc<dyn Store>,
    limits: Limits,
    store_timeout: Duration,
    touches: Mutex<HashMap<NodeKey, Timestamp>>,
    expiry_wake: Notify,
    get_cache: Mutex<HashMap<CacheKey, (u64, Bytes)>>,
    bad_input_log: Throttle,
    store_log: Throttle,
    store_healthy: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few map operations that cannot be left half done by a
    // panic, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Response{Success: true}`, encoded once.
fn ok_reply() -> Bytes {
    static OK: OnceLock<Bytes> = OnceLock::new();
    OK.get_or_init(|| Response { success: true, reason: String::new() }.to_gob().into()).clone()
}

fn rejected(reason: String) -> Bytes {
    Response { success: false, reason }.to_gob().into()
}

impl Discovery {
    /// A service over `registry` and `store`, talking on `client`.
    pub fn new(
        client: Client,
        registry: Registry,
        store: Arc<dyn Store>,
        max_message_size: usize,
        store_timeout: Duration,
    ) -> Self {
        Discovery {
            client,
            registry: Mutex::new(registry),
            store,
            limits: Limits { max_size: max_message_size, ..Limits::default() },
            store_timeout,
            touches: Mutex::new(HashMap::new()),
            expiry_wake: Notify::new(),
            get_cache: Mutex::new(HashMap::new()),
            bad_input_log: Throttle::new(Duration::from_secs(1)),
            store_log: Throttle::new(Duration::from_secs(1)),
            store_healthy: AtomicBool::new(true),
        }
    }

    /// Locks the registry view (never held across an `.await`).
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the last store call succeeded.
    pub fn store_healthy(&self) -> bool {
        self.store_healthy.load(Ordering::Relaxed)
    }

    /// Loads every node the store knows into the view (start-up of a durable store).
    pub async fn load_from_store(&self) -> Result<usize, StoreError> {
        let nodes = tokio::time::timeout(self.store_timeout * 10, self.store.load_nodes())
            .await
            .map_err(|_| StoreError::Timeout(self.store_timeout * 10))??;
        let n = nodes.len();
        let mut r = self.registry();
        for (node, deadline) in nodes {
            r.upsert(node, deadline);
        }
        Ok(n)
    }

    /// Serves requests from `sub` until `stop`, then drains: no new requests are taken,
    /// those already received are answered.
    pub async fn serve(self: Arc<Self>, mut sub: Subscriber, stop: CancellationToken) {
        let mut in_flight = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                msg = sub.next(), if in_flight.len() < MAX_IN_FLIGHT => match msg {
                    Some(msg) => in_flight.push(self.clone().handle(msg)),
                    None => break,
                },
            }
        }
        if let Err(e) = sub.drain().await {
            warn!(error = %e, "could not drain the request subscription");
        }
        let mut drained = 0usize;
        loop {
            tokio::select! {
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                msg = sub.next() => match msg {
                    Some(msg) => { drained += 1; in_flight.push(self.clone().handle(msg)) }
                    None => break,
                },
            }
        }
        while in_flight.next().await.is_some() {}
        info!(drained, "request loop stopped; in-flight requests answered");
    }

    async fn handle(self: Arc<Self>, msg: Message) {
        let started = Instant::now();
        let (action, reply) = self.process(&msg.payload).await;
        if let (Some(to), Some(reply)) = (msg.reply, reply)
            && let Err(e) = self.client.publish(to, reply).await
        {
            warn!(error = %e, "could not send a reply");
        }
        metrics::counter!("islb_requests_total", "action" => action).increment(1);
        metrics::histogram!("islb_request_duration_seconds", "action" => action)
            .record(started.elapsed().as_secs_f64());
    }

    /// Decodes, validates and carries out one request; returns the action label and the
    /// reply payload.
    pub async fn process(&self, payload: &[u8]) -> (&'static str, Option<Bytes>) {
        let req = match Request::from_gob_with(payload, &self.limits) {
            Ok(req) => req,
            Err(e) => {
                let label =
                    if matches!(e.kind, islb_gob::ErrorKind::TooLarge { .. }) { "oversized" } else { "malformed" };
                return ("invalid", Some(self.bad_input(label, format!("malformed request: {e}"))));
            }
        };
        match Command::parse(req) {
            Err(rejection) => ("invalid", Some(self.bad_input(rejection.label(), rejection.to_string()))),
            Ok(Command::Write { action, node }) => (action.as_str(), Some(self.write(node).await)),
            Ok(Command::Delete { node }) => ("delete", Some(self.delete(node).await)),
            Ok(Command::Get(lookup)) => ("get", Some(self.get(&lookup))),
        }
    }

    fn bad_input(&self, label: &'static str, reason: String) -> Bytes {
        metrics::counter!("islb_bad_requests_total", "reason" => label).increment(1);
        if let Some(suppressed) = self.bad_input_log.allow() {
            warn!(reason = %reason, suppressed, "bad request refused");
        }
        rejected(reason)
    }

    /// Runs a store call with the timeout; `None` (logged, counted) when it fails.
    async fn store_call<T>(&self, op: &'static str, call: impl Future<Output = Result<T, StoreError>>) -> Option<T> {
        let result = match tokio::time::timeout(self.store_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.store_timeout)),
        };
        match result {
            Ok(v) => {
                if !self.store_healthy.swap(true, Ordering::Relaxed) {
                    info!(store = self.store.kind(), "store reachable again");
                }
                Some(v)
            }
            Err(e) => {
                self.store_healthy.store(false, Ordering::Relaxed);
                metrics::counter!("islb_store_errors_total", "op" => op).increment(1);
                if let Some(suppressed) = self.store_log.allow() {
                    warn!(store = self.store.kind(), op, error = %e, suppressed, "store call failed; serving from this replica's view");
                }
                None
            }
        }
    }

    async fn write(&self, node: Node) -> Bytes {
        let node = Arc::new(node);
        let key = node_key(&node);
        let now = Timestamp::now();
        let (verdict_here, deadline) = {
            let mut r = self.registry();
            let deadline = r.deadline(now);
            let v = r.classify(&node);
            if v == Verdict::Unchanged {
                r.set_deadline(&key, deadline);
            }
            (v, deadline)
        };
        if verdict_here == Verdict::Unchanged {
            lock(&self.touches).insert(key, deadline);
            return ok_reply();
        }
        let verdict =
            self.store_call("put_node", self.store.put_node(node.clone(), deadline)).await.unwrap_or(verdict_here);
        let events = self.registry().apply_write(node, deadline, verdict);
        if verdict == Verdict::Created {
            self.expiry_wake.notify_one();
        }
        self.publish(events).await;
        ok_reply()
    }

    async fn delete(&self, node: Node) -> Bytes {
        let key = node.id();
        lock(&self.touches).remove(key.as_str());
        let (existed, found) = match self.store_call("delete_node", self.store.delete_node(&key)).await {
            Some(found) => (found.is_some(), found),
            None => (self.registry().lookup(&key).is_some(), None),
        };
        let events = self.registry().apply_departure(&key, existed, found.or_else(|| Some(Arc::new(node))));
        self.publish(events).await;
        ok_reply()
    }

    fn get(&self, lookup: &Lookup) -> Bytes {
        let key: CacheKey = (lookup.service.clone(), lookup.nid.clone(), lookup.include_placed());
        let (generation, nodes) = {
            let r = self.registry();
            let generation = r.generation(&lookup.service);
            if let Some((g, bytes)) = lock(&self.get_cache).get(&key)
                && *g == generation
            {
                return bytes.clone();
            }
            (generation, r.get(lookup))
        };
        let reply: Bytes = GetResponse { nodes: nodes.iter().map(|n| (**n).clone()).collect() }.to_gob().into();
        let mut cache = lock(&self.get_cache);
        if cache.len() >= GET_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (generation, reply.clone()));
        reply
    }

    /// Publishes events as gob `Request`s with action save, update or delete.
    pub async fn publish(&self, events: Vec<Event>) {
        for event in events {
            let action = event.kind.action();
            let req = Request { action: action.into(), node: (*event.node).clone(), ..Request::default() };
            match event.kind {
                EventKind::Save => {
                    info!(node = %event.node.id(), service = %event.node.service, "node up")
                }
                EventKind::Update => debug!(node = %event.node.id(), "node data changed"),
                EventKind::Delete => {
                    info!(node = %event.node.id(), service = %event.node.service, "node down")
                }
            }
            if let Err(e) = self.client.publish(event.subject(), req.to_gob().into()).await {
                warn!(error = %e, subject = %event.subject(), "could not publish an event");
                continue;
            }
            metrics::counter!("islb_events_published_total", "action" => action).increment(1);
        }
    }

    /// Removes a node on its own behalf (islb deregistering itself at shutdown).
    pub async fn deregister(&self, node: Node) {
        self.delete(node).await;
    }

    /// Expires nodes at their deadlines until `stop`.
    pub async fn expiry_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let wait = self.registry().next_deadline().map_or(Duration::from_secs(1), |d| Timestamp::now().until(d));
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => self.expire_due().await,
                _ = self.expiry_wake.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn expire_due(&self) {
        let now = Timestamp::now();
        let due = self.registry().due(now);
        for key in due {
            let deadline = self.registry().lookup(&key).map(|e| e.deadline);
            match self.store_call("claim_expired", self.store.claim_expired(&key, now)).await {
                Some(Claim::Expired(node)) => {
                    let events = self.registry().apply_departure(&key, true, Some(node));
                    self.publish(events).await;
                    metrics::counter!("islb_nodes_expired_total").increment(1);
                    if let Some(deadline) = deadline {
                        let late = deadline.until(Timestamp::now());
                        metrics::histogram!("islb_expiry_lateness_seconds").record(late.as_secs_f64());
                        debug!(node = %key, late_ms = late.as_millis() as u64, "node expired");
                    }
                }
                Some(Claim::NotDue(deadline)) => self.registry().set_deadline(&key, deadline),
                Some(Claim::Gone) => {
                    self.registry().remove(&key);
                }
                // The store is unreachable: expire nothing (a replica that cannot see the
                // shared state must not declare nodes dead); try again at the next tick.
                None => return,
            }
        }
    }

    /// Writes batched keep-alive deadlines to the store until `stop`, and once more then.
    pub async fn flush_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush().await,
                _ = stop.cancelled() => {
                    self.flush().await;
                    return;
                }
            }
        }
    }

    async fn flush(&self) {
        let batch: Vec<(NodeKey, Timestamp)> = std::mem::take(&mut *lock(&self.touches)).into_iter().collect();
        if batch.is_empty() {
            return;
        }
        let Some(unknown) = self.store_call("touch_nodes", self.store.touch_nodes(&batch)).await else {
            // Keep them for the next attempt (newer deadlines win).
            let mut t = lock(&self.touches);
            for (k, d) in batch {
                let e = t.entry(k).or_insert(d);
                *e = (*e).max(d);
            }
            return;
        };
        // Nodes the store lost (expired through another replica, or a store restart) but
        // that are alive here: write them in full; the store says whether to announce them.
        for key in unknown {
            let Some(entry) = self.registry().lookup(&key).cloned() else {
                continue;
            };
            if let Some(verdict) =
                self.store_call("put_node", self.store.put_node(entry.node.clone(), entry.deadline)).await
            {
                let events = self.registry().apply_write(entry.node, entry.deadline, verdict);
                self.publish(events).await;
            }
        }
    }
}
