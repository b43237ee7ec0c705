//! The discovery service on NATS: ion's registry protocol (`node.publish.>` requests,
//! `node.discovery.…` events), carried out with the core's
//! [`Replica`] decisions and the store.
//!
//! Paths of a request:
//! - **keep-alive (`update`) of a known, unchanged node** (almost all traffic): the view moves
//!   the deadline, the reply goes out at once, and the deadline reaches the store in the
//!   next batch (every [`FLUSH_INTERVAL`]);
//! - **new node, changed node, delete**: one store call decides (atomically, for replicas)
//!   what happened, then the view is updated and events are published;
//! - **get**: answered from the view: a placed service by [`Placement`](crate::placement),
//!   another named service best first by load with ties at random (callers take the
//!   first node), listings (`*`, by nid) in key order, cached until the answer changes;
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

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::{Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use islb_core::{Command, Lookup, Registry, Replica, Session, Sessions, Timestamp, Verdict, WriteAction, WriteStep};
use islb_gob::{Limits, Message as _, Node, Request};
use islb_runtime::contained;
use islb_store::{Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::outbox::Outbox;
use crate::placement::{Placement, PlacementConfig};
use crate::reply;
use crate::state::{CacheKey, Shared};
use crate::sync::StoreSync;
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

/// A test's fault injection, called with the service of each valid request.
type FaultHook = dyn Fn(&str) + Send + Sync;

/// The registry service of one replica.
pub struct Discovery {
    shared: Arc<Shared>,
    sync: Arc<StoreSync>,
    placement: Placement,
    limits: Limits,
    expiry_wake: Notify,
    bad_input_log: Throttle,
    /// A test's fault injection: called with the service of every valid request.
    fault: OnceLock<Box<FaultHook>>,
}

impl Discovery {
    /// A service over `registry` and `store`, publishing through `outbox` and reading the
    /// time from `clock`.
    pub fn new(
        outbox: Arc<dyn Outbox>,
        registry: Registry,
        store: Arc<dyn Store>,
        max_message_size: usize,
        store_timeout: Duration,
        placement: PlacementConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let shared = Arc::new(Shared::new(Replica::new(registry), store, outbox, clock, store_timeout));
        let sync = Arc::new(StoreSync::new(shared.clone()));
        Discovery {
            placement: Placement::new(shared.clone(), sync.clone(), placement),
            shared,
            sync,
            limits: Limits { max_size: max_message_size, ..Limits::default() },
            expiry_wake: Notify::new(),
            bad_input_log: Throttle::new(Duration::from_secs(1)),
            fault: OnceLock::new(),
        }
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
        self.shared.now()
    }

    /// Session placement.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Reads the registry view and the session table together (a consistent snapshot; the
    /// closure runs under the state's lock, so it must be short).
    pub fn read<R>(&self, f: impl FnOnce(&Registry, &Sessions) -> R) -> R {
        self.shared.with(|s| f(&s.replica.registry, &s.replica.sessions))
    }

    /// Resolves an operator's node name: `DC.NID`, or a NID that one registered node has.
    pub fn resolve_node(&self, name: &str) -> Result<islb_core::NodeKey, String> {
        let matches = self.read(|r, _| {
            if r.lookup(name).is_some() {
                return vec![name.into()];
            }
            r.entries().filter(|(_, e)| e.node.nid == name).map(|(k, _)| k.clone()).collect::<Vec<_>>()
        });
        match matches.len() {
            1 => Ok(matches[0].clone()),
            0 if name.contains('.') => Ok(name.into()),
            0 => Err(format!("no registered node has NID {name:?} (give DC.NID to name one that is not registered)")),
            _ => Err(format!("NID {name:?} is registered in several DCs; give DC.NID")),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        self.shared.store()
    }

    /// Runs a call of the store's (stream records, for the RPC services) bounded by the
    /// store timeout; a failure marks the store down like any other.
    pub async fn store_call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.shared.call(op, call).await
    }

    /// Whether the store answers (false from a failed call until it is back and caught up).
    pub fn store_healthy(&self) -> bool {
        self.shared.store_healthy()
    }

    /// How many node writes are held until the store is back.
    pub fn held_writes(&self) -> usize {
        self.shared.with(|s| s.replica.held_writes())
    }

    /// The sessions placed (on `node` only, if given).
    pub fn sessions(&self, node: Option<&str>) -> Vec<Session> {
        self.read(|_, s| match node {
            Some(n) => s.of_node(n),
            None => s.all(),
        })
    }

    /// How many sessions are placed (on `node` only, if given).
    pub fn session_count(&self, node: Option<&str>) -> usize {
        self.read(|_, s| node.map_or_else(|| s.len(), |n| s.count(n) as usize))
    }

    /// Drain marks.
    pub fn drains(&self) -> Vec<(islb_core::NodeKey, Option<Timestamp>)> {
        self.read(|_, s| s.drains())
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
                ("panic", Some(reply::rejected("internal error: islb could not handle this request".into())))
            }
        };
        if let (Some(to), Some(reply)) = (msg.reply, reply) {
            self.shared.send(to, reply).await;
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
        reply::rejected(reason)
    }

    async fn write(&self, action: WriteAction, node: Node) -> Bytes {
        let now = self.shared.now();
        let WriteStep::Ask { node, deadline, here } = self.shared.with(|s| s.replica.begin_write(action, node, now))
        else {
            return reply::ok(); // a keep-alive: batched
        };
        // Boxed: keep-alives, almost all the traffic, never get here, and their futures
        // would otherwise carry (and copy) this state.
        Box::pin(self.write_through(node, deadline, here)).await
    }

    /// A write the store decides (a save, or new data).
    async fn write_through(&self, node: Arc<Node>, deadline: Timestamp, here: Verdict) -> Bytes {
        let answer = self.shared.store_call("put_node", self.shared.store().put_node(node.clone(), deadline)).await;
        let (events, verdict) = self.shared.with(|s| s.replica.finish_write(node, deadline, here, answer));
        if verdict == Verdict::Created {
            self.expiry_wake.notify_one();
        }
        self.shared.publish(&events).await;
        reply::ok()
    }

    async fn delete(&self, node: Node) -> Bytes {
        Box::pin(self.delete_through(node)).await
    }

    async fn delete_through(&self, node: Node) -> Bytes {
        let key = node.id();
        self.shared.with(|s| s.replica.begin_delete(&key));
        let answer = self.shared.store_call("delete_node", self.shared.store().delete_node(&key)).await;
        let events = self.shared.with(|s| s.replica.finish_delete(node, answer));
        self.placement.announce_departures(&events).await;
        reply::ok()
    }

    async fn get(&self, lookup: &Lookup) -> Bytes {
        if lookup.service != "*" && self.shared.with(|s| s.replica.registry.is_placed(&lookup.service)) {
            return self.placement.lookup(lookup).await;
        }
        self.placement.catch_up().await;
        // A caller after one node of a service (ion's signal takes the first): spread, so
        // not cached. Listings (`*`, a nid, an operator's) come in key order, cached.
        if lookup.service != "*" && lookup.nid.is_none() && !lookup.operator_listing() {
            return reply::nodes(&self.placement.spread_lookup(lookup));
        }
        let key: CacheKey = (lookup.service.clone(), lookup.nid.clone(), lookup.include_placed());
        let found = self.shared.with(|s| {
            let generation = s.replica.registry.generation(&lookup.service);
            s.cached(&key, generation).ok_or_else(|| (generation, s.replica.registry.get(lookup)))
        });
        let (generation, nodes) = match found {
            Ok(cached) => return cached,
            Err(miss) => miss,
        };
        let reply = reply::nodes(&nodes);
        self.shared.with(|s| s.cache(key, generation, reply.clone()));
        reply
    }

    /// Removes a node on its own behalf (islb deregistering itself at shutdown).
    pub async fn deregister(&self, node: Node) {
        self.delete(node).await;
    }

    /// Loads every node the store knows into the view (start-up): nodes the store has are
    /// taken as they are, silently.
    pub async fn load_from_store(&self) -> Result<usize, StoreError> {
        let (n, events) = self.sync.load().await?;
        self.expiry_wake.notify_one();
        self.placement.announce_expired(events).await;
        Ok(n)
    }

    /// The store could not be reached at start: count it as down from now on (writes are
    /// held, nothing expires) until the maintenance task finds it answering.
    pub fn store_out_of_reach(&self) {
        self.shared.with(|s| s.replica.store_failed(false));
    }

    /// islb is ready to speak: nodes loaded from the store whose deadlines passed (or are
    /// near) while it was down get one expiry period to keep alive, so that a restart
    /// announces no live node as gone and moves no session.
    pub fn grace_loaded(&self) {
        let now = self.shared.now();
        let (n, until) = self.shared.with(|s| (s.replica.grace_loaded(now), s.replica.registry.deadline(now)));
        if n > 0 {
            info!(nodes = n, until = %until, "nodes loaded from the store have until then to keep alive");
        }
        self.expiry_wake.notify_one();
    }

    /// A node event seen on NATS (`node.discovery.>`; this replica's own or another's).
    /// Replicas learn each other's new and departed nodes this way at once, and, while the
    /// store is out of reach, changed ones too: a node another replica announced is taken
    /// silently, so its next keep-alive here is not a second `save`
    /// ([`Replica::learn_announced`](islb_core::replica::Replica::learn_announced)).
    pub fn learn(&self, event: Request) {
        let now = self.shared.now();
        let key = event.node.id();
        let learned = self.shared.with(|s| match event.action.as_str() {
            "save" | "update" => s.replica.learn_announced(Arc::new(event.node), now),
            "delete" => s.replica.learn_departed(&key),
            _ => false,
        });
        debug!(action = %event.action, node = %key, learned, "node event");
        if learned {
            metrics::counter!("islb_nodes_learned_total").increment(1);
        }
    }

    /// The NATS connection is lost: keep-alives cannot arrive, so nothing expires until it
    /// is back (a delete published meanwhile would go out on reconnection, for nodes that
    /// only could not reach islb).
    pub fn link_lost(&self) {
        if self.shared.with(|s| s.replica.link_lost()) {
            warn!("NATS lost: no node expires until the connection is back and has lasted one expiry period");
        }
    }

    /// The NATS connection is back (resubscribed): every node gets one expiry period from
    /// now to get a keep-alive through before anything expires.
    pub fn link_back(&self) {
        let now = self.shared.now();
        if let Some(until) = self.shared.with(|s| s.replica.link_back(now)) {
            info!(until = %until, "NATS back: nodes have until then to keep alive before any expires");
            self.expiry_wake.notify_one();
        }
    }

    /// Follows the NATS connection's state until `stop` ([`link_lost`](Self::link_lost),
    /// [`link_back`](Self::link_back)).
    pub async fn follow_link(self: Arc<Self>, mut link: crate::nats::Link, stop: CancellationToken) {
        loop {
            tokio::select! {
                changed = link.changed() => {
                    if changed.is_err() {
                        // The client is gone (shutdown): nothing more to follow.
                        return stop.cancelled().await;
                    }
                    if *link.borrow_and_update() { self.link_back() } else { self.link_lost() }
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Keeps this replica and the store in step until `stop`: follows the change feed of a
    /// shared store every second, moves sessions whose drain deadline passed, releases idle
    /// ones; while the store is out of reach, probes it every [`PROBE_INTERVAL`] and, once
    /// it answers, writes back what was held and resumes.
    pub async fn maintain_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let healthy = self.shared.store_healthy();
            let wait = if healthy { Duration::from_secs(1) } else { PROBE_INTERVAL };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            if self.shared.store_healthy() {
                self.round("store maintenance", async {
                    self.placement.catch_up().await;
                    self.placement.housekeeping().await;
                })
                .await;
            } else {
                self.round("store recovery", async {
                    let events = self.sync.recover().await;
                    self.expiry_wake.notify_one();
                    self.placement.announce_expired(events).await;
                })
                .await;
            }
        }
    }

    /// Expires nodes at their deadlines until `stop`.
    pub async fn expiry_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let now = self.shared.now();
            let wait = match self.shared.with(|s| s.replica.next_expiry(now)) {
                None => PROBE_INTERVAL,
                Some(next) => next.map_or(Duration::from_secs(1), |t| now.until(t)),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => self.round("expiry", self.expire_due()).await,
                _ = self.expiry_wake.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn expire_due(&self) {
        let now = self.shared.now();
        if !self.shared.with(|s| s.replica.expiry_due(now)) {
            return;
        }
        // Keep-alives that arrived just before the deadline are in the batch not yet written:
        // write it first, so the claim sees them and a living node is not declared dead.
        self.sync.flush().await;
        let due = self.shared.with(|s| s.replica.due(now, CLAIM_BATCH));
        if due.is_empty() {
            return;
        }
        let keys: Vec<_> = due.iter().map(|(k, _)| k.clone()).collect();
        let Some(claims) = self.shared.store_call("claim_expired", self.shared.store().claim_expired(&keys, now)).await
        else {
            // The claim may have run with its answer lost: whoever finds these nodes gone
            // (the feed, a reload, a later claim) announces them.
            self.shared.with(|s| s.replica.claims_lost(&due));
            return;
        };
        let expired = self.shared.with(|s| s.replica.apply_claims(&due, claims));
        let at = self.shared.now();
        for deadline in &expired.deadlines {
            let late = deadline.until(at);
            metrics::histogram!("islb_expiry_lateness_seconds").record(late.as_secs_f64());
            debug!(late_ms = late.as_millis() as u64, "node expired");
        }
        self.placement.announce_expired(expired.events).await;
    }

    /// Writes batched keep-alive deadlines to the store until `stop`, and once more then.
    pub async fn flush_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.round("keep-alive batching", self.sync.flush()).await,
                _ = stop.cancelled() => {
                    self.sync.flush().await;
                    return;
                }
            }
        }
    }
}
