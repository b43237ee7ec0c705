//! The discovery service on NATS: ion's registry protocol (`node.publish.>` requests,
//! `node.discovery.…` events), carried out with the pure [`Registry`] and the [`Store`].
//!
//! Paths of a request:
//! - **keep-alive (`update`) of a known, unchanged node** (almost all traffic): the view moves
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
//! one replica announces it.
//!
//! When the store cannot be reached (or hangs: every call is bounded by the store timeout)
//! the replica keeps answering from its view, decides writes itself and holds them,
//! expires nothing, and probes the store; when it is back, the held writes and keep-alives
//! are written, a store that lost its data gets every node back (without events), the
//! view is reloaded, and expiry resumes after one more expiry period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use islb_core::{
    Command, Event, EventKind, Lookup, NodeKey, Registry, Session, Sessions, Timestamp, Verdict, WriteAction, node_key,
};
use islb_gob::{GetResponse, Limits, Message as _, Node, Request, Response};
use islb_runtime::contained;
use islb_store::{Change, Changes, Claim, Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::{Clock, WallClock};
use crate::link::{Pending, StoreLink};
use crate::outbox::Outbox;
use crate::placement::{MoveReason, PlacementConfig, PlacementState};
use crate::throttle::Throttle;

/// The subject every registry request arrives on.
pub const REQUEST_SUBJECT: &str = "node.publish.>";
/// The queue group replicas share, so that each request is answered once.
pub const QUEUE_GROUP: &str = "islb";
/// How often batched keep-alive deadlines are written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How often an unreachable store is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Nodes claimed per expiry round trip.
const CLAIM_BATCH: usize = 1_000;
/// How many requests one replica handles at the same time.
const MAX_IN_FLIGHT: usize = 1024;
/// Cached `get` replies kept at most (parameter combinations).
const GET_CACHE_ENTRIES: usize = 256;

/// A test's fault injection, called with the service of each valid request.
type FaultHook = dyn Fn(&str) + Send + Sync;

/// Cache key of a `get` reply: service, nid filter, placed services included.
type CacheKey = (String, Option<String>, bool);

/// The registry service of one replica.
pub struct Discovery {
    outbox: Arc<dyn Outbox>,
    registry: Mutex<Registry>,
    store: Arc<dyn Store>,
    limits: Limits,
    touches: crate::TouchBatch,
    expiry_wake: Notify,
    get_cache: Mutex<HashMap<CacheKey, (u64, Bytes)>>,
    bad_input_log: Throttle,
    pub(crate) capacity_log: Throttle,
    sync_lock: tokio::sync::Mutex<()>,
    /// Syncs begun (each numbered by this count when it starts, under `sync_lock`).
    syncs_begun: AtomicU64,
    /// The number of the latest sync that succeeded.
    synced: AtomicU64,
    pub(crate) link: StoreLink,
    pub(crate) placement: PlacementState,
    clock: Arc<dyn Clock>,
    /// A test's fault injection: called with the service of every valid request.
    fault: OnceLock<Box<FaultHook>>,
}

pub(crate) use crate::lock;

/// `Response{Success: true}`, encoded once.
fn ok_reply() -> Bytes {
    static OK: OnceLock<Bytes> = OnceLock::new();
    OK.get_or_init(|| Response { success: true, reason: String::new() }.to_gob().into()).clone()
}

/// The gob `GetResponse` listing `nodes`.
pub(crate) fn nodes_reply(nodes: &[Arc<Node>]) -> Bytes {
    GetResponse { nodes: nodes.iter().map(|n| (**n).clone()).collect() }.to_gob().into()
}

fn rejected(reason: String) -> Bytes {
    Response { success: false, reason }.to_gob().into()
}

impl Discovery {
    /// A service over `registry` and `store`, publishing through `outbox`.
    pub fn new(
        outbox: Arc<dyn Outbox>,
        registry: Registry,
        store: Arc<dyn Store>,
        max_message_size: usize,
        store_timeout: Duration,
        placement: PlacementConfig,
    ) -> Self {
        let store_kind = store.kind();
        Discovery {
            outbox,
            registry: Mutex::new(registry),
            store,
            limits: Limits { max_size: max_message_size, ..Limits::default() },
            touches: crate::TouchBatch::default(),
            expiry_wake: Notify::new(),
            get_cache: Mutex::new(HashMap::new()),
            bad_input_log: Throttle::new(Duration::from_secs(1)),
            capacity_log: Throttle::new(Duration::from_secs(1)),
            sync_lock: tokio::sync::Mutex::new(()),
            syncs_begun: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            link: StoreLink::new(store_kind, store_timeout),
            placement: PlacementState::new(placement),
            clock: Arc::new(WallClock),
            fault: OnceLock::new(),
        }
    }

    /// The same service reading the time from `clock` (tests pass a paused one).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Test hook: `fault` runs with the service of every valid request before it is carried
    /// out (a test makes it panic to check that a panic costs one request only). Set once.
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.fault.set(Box::new(fault));
    }

    /// Runs one round of a timer task (expiry, batching, maintenance), contained: a panic
    /// costs the round, is counted and logged, and the loop goes on with the next one.
    async fn round(&self, task: &'static str, round: impl Future<Output = ()>) {
        if let Err(panic) = contained(round).await {
            metrics::counter!("islb_handler_panics_total", "handler" => task).increment(1);
            error!(task, %panic, "a timer round panicked; the next round runs as usual");
        }
    }

    /// The time, as this service's clock reads it.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Publishes one message (a reply, a node or session event); false when it failed
    /// (logged).
    pub(crate) async fn send(&self, subject: String, payload: Bytes) -> bool {
        match self.outbox.publish(subject, payload).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "could not publish");
                false
            }
        }
    }

    /// This islb's DC.
    pub(crate) fn dc(&self) -> &str {
        &self.placement.config.dc
    }

    /// Locks the registry view (never held across an `.await`).
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the store answers (false from a failed call until it is back and caught up).
    pub fn store_healthy(&self) -> bool {
        self.link.healthy()
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
        let (action, reply) = match contained(self.process(&msg.payload)).await {
            Ok(done) => done,
            // Contained: this request gets an error reply, the loop and every other request go on.
            Err(panic) => {
                metrics::counter!("islb_handler_panics_total", "handler" => "registry").increment(1);
                error!(subject = %msg.subject, %panic, "a registry request handler panicked; answered with an error");
                ("panic", Some(rejected("internal error: islb could not handle this request".into())))
            }
        };
        if let (Some(to), Some(reply)) = (msg.reply, reply) {
            self.send(to.to_string(), reply).await;
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
        let command = Command::parse(req);
        if let (Some(fault), Ok(c)) = (self.fault.get(), &command) {
            fault(match c {
                Command::Write { node, .. } | Command::Delete { node } => &node.service,
                Command::Get(lookup) => &lookup.service,
            });
        }
        match command {
            Err(rejection) => ("invalid", Some(self.bad_input(rejection.label(), rejection.to_string()))),
            Ok(Command::Write { action, node }) => (action.as_str(), Some(self.write(action, node).await)),
            Ok(Command::Delete { node }) => ("delete", Some(self.delete(node).await)),
            Ok(Command::Get(lookup)) => ("get", Some(self.get(&lookup).await)),
        }
    }

    fn bad_input(&self, label: &'static str, reason: String) -> Bytes {
        metrics::counter!("islb_bad_requests_total", "reason" => label).increment(1);
        if let Some(suppressed) = self.bad_input_log.allow() {
            warn!(reason = %reason, suppressed, "bad request refused");
        }
        rejected(reason)
    }

    /// Runs a store call with the timeout unless the store is known to be down; `None`
    /// (logged, counted, store marked down) when it fails.
    pub(crate) async fn store_call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        if !self.link.healthy() {
            return None;
        }
        self.link.call(op, call).await.ok()
    }

    async fn write(&self, action: WriteAction, node: Node) -> Bytes {
        let key = node_key(&node);
        let now = self.now();
        // The fast path: a keep-alive (`update`) of a node this view knows with the same
        // data. A `save` always asks the store, so that a node deleted and saved again
        // through other replicas is never taken for a keep-alive of a stale view.
        let (verdict_here, deadline, fast) = {
            let mut r = self.registry();
            let deadline = r.deadline(now);
            let v = r.classify_key(&key, &node);
            let fast = v == Verdict::Unchanged && action == WriteAction::Update;
            if fast {
                r.set_deadline(&key, deadline);
            }
            (v, deadline, fast)
        };
        if fast {
            self.touches.note(key, deadline);
            return ok_reply();
        }
        let node = Arc::new(node);
        let verdict = match self.store_call("put_node", self.store.put_node(node.clone(), deadline)).await {
            Some(v) => v,
            None => {
                // The store is out of reach: decide here, write it when the store is back.
                self.link.hold(key.clone(), Pending::Put(node.clone(), deadline));
                verdict_here
            }
        };
        let events = {
            let mut r = self.registry();
            // Written again: whatever a lost expiry claim did, the node is here now.
            self.link.clear_uncertain(&key);
            r.apply_write(node, deadline, verdict)
        };
        if verdict == Verdict::Created {
            self.expiry_wake.notify_one();
        }
        self.publish(&events).await;
        ok_reply()
    }

    async fn delete(&self, node: Node) -> Bytes {
        let key = node.id();
        self.touches.forget(&key);
        let (existed, found) = match self.store_call("delete_node", self.store.delete_node(&key)).await {
            // Not in the store because a lost expiry claim removed it: it existed for its
            // watchers, who have heard nothing yet.
            Some(None) if self.link.clear_uncertain(&key) => (self.registry().lookup(&key).is_some(), None),
            Some(found) => (found.is_some(), found),
            None => {
                let existed = self.registry().lookup(&key).is_some();
                self.link.hold(key.clone().into(), Pending::Delete);
                (existed, None)
            }
        };
        let events = self.registry().apply_departure(&key, existed, found.or_else(|| Some(Arc::new(node))));
        self.announce_departures(&events).await;
        ok_reply()
    }

    async fn get(&self, lookup: &Lookup) -> Bytes {
        if lookup.service != "*" && self.registry().is_placed(&lookup.service) {
            return self.lookup_placed(lookup).await;
        }
        self.catch_up().await;
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
        let reply = nodes_reply(&nodes);
        let mut cache = lock(&self.get_cache);
        if cache.len() >= GET_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, (generation, reply.clone()));
        reply
    }

    /// Publishes events as gob `Request`s with action save, update or delete.
    pub async fn publish(&self, events: &[Event]) {
        for event in events {
            let action = event.kind.action();
            let req = Request { action: action.into(), node: (*event.node).clone(), ..Request::default() };
            match event.kind {
                EventKind::Save => info!(node = %event.node.id(), service = %event.node.service, "node up"),
                EventKind::Update => debug!(node = %event.node.id(), "node data changed"),
                EventKind::Delete => info!(node = %event.node.id(), service = %event.node.service, "node down"),
            }
            if !self.send(event.subject(), req.to_gob().into()).await {
                continue;
            }
            metrics::counter!("islb_events_published_total", "action" => action).increment(1);
        }
    }

    /// Removes a node on its own behalf (islb deregistering itself at shutdown).
    pub async fn deregister(&self, node: Node) {
        self.delete(node).await;
    }

    /// Loads every node the store knows into the view (start-up, and after a gap in the
    /// change feed): nodes the store has are taken as they are, silently.
    pub async fn load_from_store(&self) -> Result<usize, StoreError> {
        let snapshot = self.link.call_long("load", self.store.load()).await?;
        let n = snapshot.nodes.len();
        let mut expired = Vec::new();
        {
            let mut r = self.registry();
            // Taken under the registry lock, as writes clear it: a node written since the
            // snapshot is not taken for one a lost claim removed.
            let uncertain = self.link.take_uncertain();
            // Nodes the store no longer has were deleted or expired through another replica,
            // which announced it; writes this replica still holds are kept. A node whose
            // expiry claim failed here may have been removed by that claim, with no one told:
            // it is announced (at least once, rather than never).
            let in_store: std::collections::HashSet<String> = snapshot.nodes.iter().map(|(n, _)| n.id()).collect();
            let held = self.link.pending_keys();
            let ghosts: Vec<NodeKey> =
                r.entries().map(|(k, _)| k.clone()).filter(|k| !in_store.contains(&**k) && !held.contains(k)).collect();
            for k in ghosts {
                if uncertain.contains(&k) {
                    expired.extend(r.apply_departure(&k, true, None));
                } else {
                    r.remove(&k);
                }
            }
            for (node, deadline) in snapshot.nodes {
                r.upsert(node, deadline);
            }
            // The store's placements replace this replica's (it is the authority), except
            // placements made here during an outage and not claimed yet.
            let held = lock(&self.placement.held);
            let mut sessions = lock(&self.placement.sessions);
            let mine: Vec<Session> = held.keys().filter_map(|sid| sessions.get(sid)).collect();
            *sessions = Sessions::new();
            for s in snapshot.sessions {
                sessions.set(s);
            }
            for s in mine {
                sessions.set(s);
            }
            for (node, deadline) in snapshot.drains {
                sessions.drain(node, deadline);
            }
        }
        self.link.set_cursor(snapshot.cursor);
        self.expiry_wake.notify_one();
        if !expired.is_empty() {
            info!(nodes = expired.len(), "announcing nodes whose expiry claim was lost in flight");
            self.announce_expired(expired).await;
        }
        Ok(n)
    }

    /// Publishes the delete events of expired nodes and moves their sessions.
    async fn announce_expired(&self, events: Vec<Event>) {
        self.announce_departures(&events).await;
        metrics::counter!("islb_nodes_expired_total").increment(events.len() as u64);
    }

    /// A node the store no longer has: when this replica's own expiry claim of it lost its
    /// answer (the store may have removed it then), its delete event is returned to be
    /// announced here, as no one else will; otherwise it is just forgotten.
    fn forget_gone(&self, r: &mut Registry, key: &str) -> Vec<Event> {
        if self.link.clear_uncertain(key) {
            r.apply_departure(key, true, None)
        } else {
            r.remove(key);
            Vec::new()
        }
    }

    /// Publishes the delete events of departed nodes and moves their sessions.
    async fn announce_departures(&self, events: &[Event]) {
        self.publish(events).await;
        for e in events {
            self.fail_over(&e.node, MoveReason::NodeDown).await;
        }
    }

    /// Reads what other replicas wrote before answering, so a node saved (or a session
    /// placed) through any replica is seen here at once (one round trip when nothing
    /// changed; nothing to do for a store of this replica's own).
    ///
    /// Concurrent requests share a sync: one that begins after a request arrived has seen
    /// every write finished before it, so when such a sync succeeds while the request waits
    /// for its turn, the request needs no round trip of its own.
    pub(crate) async fn catch_up(&self) {
        if !(self.store.shared() && self.link.healthy()) {
            return;
        }
        let wanted = self.syncs_begun.load(Ordering::Acquire) + 1;
        let _one_at_a_time = self.sync_lock.lock().await;
        if self.synced.load(Ordering::Acquire) >= wanted {
            return;
        }
        self.sync_held().await;
    }

    /// Applies what other replicas wrote since the last look (silently: they announced it).
    /// One sync at a time, so that batches apply in feed order.
    pub(crate) async fn sync(&self) {
        let _one_at_a_time = self.sync_lock.lock().await;
        self.sync_held().await;
    }

    /// [`Discovery::sync`] with `sync_lock` held.
    async fn sync_held(&self) {
        let number = self.syncs_begun.fetch_add(1, Ordering::AcqRel) + 1;
        let cursor = self.link.cursor();
        match self.store_call("changes", self.store.changes(&cursor)).await {
            Some(Changes::Since { changes, cursor }) => {
                let mut expired = Vec::new();
                if !changes.is_empty() {
                    let mut r = self.registry();
                    let mut sessions = lock(&self.placement.sessions);
                    for change in changes {
                        match change {
                            Change::Put(node, deadline) => r.upsert(node, deadline),
                            Change::Delete(key) => {
                                expired.extend(self.forget_gone(&mut r, &key));
                                sessions.forget_node(&key);
                            }
                            Change::Session(s) => sessions.set(s),
                            Change::SessionGone(sid) => {
                                sessions.remove(&sid);
                            }
                            Change::Drain(node, deadline) => sessions.drain(node, deadline),
                            Change::Undrain(node) => {
                                sessions.undrain(&node);
                            }
                        }
                    }
                }
                self.link.set_cursor(cursor);
                self.synced.store(number, Ordering::Release);
                if !expired.is_empty() {
                    info!(nodes = expired.len(), "announcing nodes whose expiry claim was lost in flight");
                    self.announce_expired(expired).await;
                }
            }
            Some(Changes::Gap) => {
                info!("change feed gap: reloading every node from the store");
                match self.load_from_store().await {
                    Ok(_) => self.synced.store(number, Ordering::Release),
                    Err(e) => warn!(error = %e, "reload after a change feed gap failed"),
                }
            }
            None => {}
        }
    }

    /// Keeps this replica and the store in step until `stop`: follows the change feed of a
    /// shared store every second; while the store is out of reach, probes it every
    /// [`PROBE_INTERVAL`] and, once it answers, writes back what was held and resumes.
    pub async fn maintain_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let wait = if self.link.healthy() { Duration::from_secs(1) } else { PROBE_INTERVAL };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            if self.link.healthy() {
                self.round("store maintenance", async {
                    self.catch_up().await;
                    self.placement_housekeeping().await;
                })
                .await;
            } else {
                self.round("store recovery", self.recover()).await;
            }
        }
    }

    /// The store answers again: re-initialise it if it lost its data, replay what was held,
    /// write back every node if needed, reload what the others wrote, and expire nothing
    /// for one more expiry period (nodes whose keep-alives other replicas held are being
    /// written back too).
    async fn recover(&self) {
        if self.link.call("ping", self.store.ping()).await.is_err() {
            return;
        }
        let wiped = self.link.take_reset();
        if self.write_back(wiped).await.is_err() {
            if wiped {
                self.link.mark_reset();
            }
            return;
        }
        // Grace first: no expiry until every replica had one expiry period to write back the
        // keep-alives it held.
        let grace = self.now().plus_ms(self.registry().config().expire_ms);
        self.link.set_grace(grace);
        self.link.set_healthy();
        // Writes decided while the write-back ran (the store still counted as down).
        if self.write_held().await.is_err() || !self.replay_held_sessions().await {
            return;
        }
        self.flush().await;
        if let Err(e) = self.load_from_store().await {
            warn!(error = %e, "reload after the store came back failed");
        }
        info!(store = self.store.kind(), grace_until = %grace, "store reachable again; state written back, expiry resumes after the grace period");
    }

    /// Re-initialises a wiped store and writes back everything this replica holds (and, for
    /// a wiped store, every node, session and drain mark it knows, without events).
    async fn write_back(&self, wiped: bool) -> Result<(), StoreError> {
        if wiped {
            warn!(store = self.store.kind(), "the store lost its data; writing back every node this replica knows");
            self.link.call("reset", self.store.reset()).await?;
        }
        self.write_held().await?;
        if wiped {
            let nodes: Vec<_> = self.registry().entries().map(|(_, e)| (e.node.clone(), e.deadline)).collect();
            for (node, deadline) in nodes {
                self.link.call("put_node", self.store.put_node(node, deadline)).await?;
            }
            let (sessions, drains) = {
                let s = lock(&self.placement.sessions);
                (s.all(), s.drains())
            };
            for s in sessions {
                lock(&self.placement.held).entry(s.sid.clone()).or_insert_with(|| s.node.clone());
            }
            for (node, deadline) in drains {
                self.link.call("set_drain", self.store.set_drain(&node, deadline)).await?;
            }
        }
        if self.replay_held_sessions().await {
            Ok(())
        } else {
            Err(StoreError::Unavailable("session write-back".into()))
        }
    }

    /// Writes the node writes held during an outage; on a failure, keeps what is left.
    async fn write_held(&self) -> Result<(), StoreError> {
        let mut held = self.link.take_pending().into_iter();
        while let Some((key, op)) = held.next() {
            let result = match &op {
                Pending::Put(node, deadline) => {
                    self.link.call("put_node", self.store.put_node(node.clone(), *deadline)).await.map(drop)
                }
                Pending::Delete => self.link.call("delete_node", self.store.delete_node(&key)).await.map(drop),
            };
            if let Err(e) = result {
                // Put back this one and the rest, unless a newer write of the key was held meanwhile.
                self.link.restore(std::iter::once((key, op)).chain(held));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Expires nodes at their deadlines until `stop`.
    pub async fn expiry_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let now = self.now();
            let wait = if !self.link.healthy() {
                PROBE_INTERVAL
            } else if let Some(until) = self.link.grace_until().filter(|g| *g > now) {
                now.until(until)
            } else {
                self.registry().next_deadline().map_or(Duration::from_secs(1), |d| now.until(d))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => self.round("expiry", self.expire_due()).await,
                _ = self.expiry_wake.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn expire_due(&self) {
        let now = self.now();
        // A replica that cannot see the shared state must not declare nodes dead; after an
        // outage, nodes get one expiry period to have their held keep-alives written back.
        if !self.link.healthy() || self.link.in_grace(now) {
            return;
        }
        if self.registry().next_deadline().is_none_or(|d| d > now) {
            return;
        }
        // Keep-alives that arrived just before the deadline are in the batch not yet written:
        // write it first, so the claim sees them and a living node is not declared dead.
        self.flush().await;
        let due: Vec<NodeKey> = self.registry().due(now).into_iter().take(CLAIM_BATCH).collect();
        if due.is_empty() {
            return;
        }
        let deadlines: Vec<Option<Timestamp>> = {
            let r = self.registry();
            due.iter().map(|k| r.lookup(k).map(|e| e.deadline)).collect()
        };
        let Some(claims) = self.store_call("claim_expired", self.store.claim_expired(&due, now)).await else {
            // The claim may have run with its answer lost: the next reload announces those
            // of these nodes the store no longer has.
            self.link.note_uncertain(due);
            return;
        };
        for ((key, claim), deadline) in due.iter().zip(claims).zip(deadlines) {
            match claim {
                Claim::Expired(node) => {
                    let events = self.registry().apply_departure(key, true, Some(node));
                    self.announce_expired(events).await;
                    if let Some(deadline) = deadline {
                        let late = deadline.until(self.now());
                        metrics::histogram!("islb_expiry_lateness_seconds").record(late.as_secs_f64());
                        debug!(node = %key, late_ms = late.as_millis() as u64, "node expired");
                    }
                }
                Claim::NotDue(deadline) => self.registry().set_deadline(key, deadline),
                Claim::Gone => {
                    let events = self.forget_gone(&mut self.registry(), key);
                    if !events.is_empty() {
                        self.announce_expired(events).await;
                    }
                }
            }
        }
    }

    /// Writes batched keep-alive deadlines to the store until `stop`, and once more then.
    pub async fn flush_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.round("keep-alive batching", self.flush()).await,
                _ = stop.cancelled() => {
                    self.flush().await;
                    return;
                }
            }
        }
    }

    async fn flush(&self) {
        if !self.link.healthy() {
            return; // kept until the store is back
        }
        self.flush_session_touches().await;
        let batch = self.touches.take();
        if batch.is_empty() {
            return;
        }
        let Some(unknown) = self.store_call("touch_nodes", self.store.touch_nodes(&batch)).await else {
            self.touches.put_back(batch);
            return;
        };
        // Nodes the store does not know (expired or deleted through another replica) but
        // that are alive here: write them in full; the store says whether to announce them.
        for key in unknown {
            let Some(entry) = self.registry().lookup(&key).cloned() else { continue };
            if let Some(verdict) =
                self.store_call("put_node", self.store.put_node(entry.node.clone(), entry.deadline)).await
            {
                let events = self.registry().apply_write(entry.node, entry.deadline, verdict);
                self.publish(&events).await;
            }
        }
    }
}
