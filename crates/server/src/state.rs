//! The one owner of a replica's state, and the I/O every layer above shares.
//!
//! [`Shared`] holds the [`Replica`] (registry, sessions, keep-alive batch, store view),
//! the change-feed cursor and the cache of encoded `get` replies in **one** [`State`]
//! behind **one** lock. A caller takes it with [`Shared::with`] for a few map operations,
//! never across an `.await`: the lock is the only one over state, so no lock order exists
//! to keep. The decisions themselves are the core's ([`Replica`]'s methods); this module
//! only runs them and carries out their effects:
//!
//! - store calls, each bounded by the store timeout; a failure marks the store down (the
//!   core's [`Replica::store_failed`]) and is logged once per outage, then throttled;
//! - publishing through the [`Outbox`] (replies, node events, session events);
//! - the time, from the [`Clock`].
//!
//! Why a lock and not an actor task: the keep-alive fast path, almost all of the traffic,
//! is one short critical section; a channel round trip to a task would cost more than
//! the work. What an actor gives (one owner, no lock order, no state shared by handlers)
//! the single lock gives as well.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use islb_core::{Event, EventKind, Replica, Timestamp};
use islb_gob::{Message as _, Request};
use islb_store::{Cursor, Store, StoreError};
use tracing::{debug, info, warn};

use islb_runtime::Chain;

use crate::clock::Clock;
use crate::outbox::Outbox;
use crate::throttle::Throttle;

/// Cache key of a `get` reply: service, nid filter, placed services included.
pub(crate) type CacheKey = (String, Option<String>, bool);

/// Cached `get` replies kept at most (parameter combinations).
const GET_CACHE_ENTRIES: usize = 256;

/// Everything mutable of a replica.
pub(crate) struct State {
    /// The core's state.
    pub(crate) replica: Replica,
    /// Where the store's change feed continues from.
    pub(crate) cursor: Cursor,
    /// Syncs with the store begun, and the number of the latest that succeeded.
    pub(crate) syncs_begun: u64,
    pub(crate) synced: u64,
    /// Encoded `get` replies, with the registry generation they were made at.
    get_cache: HashMap<CacheKey, (u64, Bytes)>,
}

impl State {
    /// A cached `get` reply, if the answer has not changed since.
    pub(crate) fn cached(&self, key: &CacheKey, generation: u64) -> Option<Bytes> {
        self.get_cache.get(key).filter(|(g, _)| *g == generation).map(|(_, b)| b.clone())
    }

    /// Caches a `get` reply made at `generation`.
    pub(crate) fn cache(&mut self, key: CacheKey, generation: u64, reply: Bytes) {
        if self.get_cache.len() >= GET_CACHE_ENTRIES {
            self.get_cache.clear();
        }
        self.get_cache.insert(key, (generation, reply));
    }
}

/// The owner of the state, with the store, the outbox and the clock.
pub struct Shared {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    outbox: Arc<dyn Outbox>,
    clock: Arc<dyn Clock>,
    timeout: Duration,
    store_log: Throttle,
}

impl Shared {
    /// The owner of `replica`'s state over `store`.
    pub(crate) fn new(
        replica: Replica,
        store: Arc<dyn Store>,
        outbox: Arc<dyn Outbox>,
        clock: Arc<dyn Clock>,
        timeout: Duration,
    ) -> Self {
        Shared {
            state: Mutex::new(State {
                replica,
                cursor: Cursor::default(),
                syncs_begun: 0,
                synced: 0,
                get_cache: HashMap::new(),
            }),
            store,
            outbox,
            clock,
            timeout,
            store_log: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// Runs `f` on the state (a few map operations; never across an `.await`).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // The core's methods change the state in steps a panic cannot split into an
        // inconsistent state, so a poisoned lock is still sound.
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The time.
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Whether the store answers.
    pub(crate) fn store_healthy(&self) -> bool {
        self.with(|s| s.replica.store_healthy())
    }

    /// Runs a store call unless the store is known to be down; `None` (logged, counted,
    /// store marked down) when it fails.
    pub(crate) async fn store_call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        if !self.store_healthy() {
            return None;
        }
        self.call(op, call).await.ok()
    }

    /// Runs a store call bounded by the store timeout; a failure marks the store down.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.call_within(op, self.timeout, call).await
    }

    /// [`Shared::call`] for loading everything: ten times the store timeout.
    pub(crate) async fn call_long<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.call_within(op, self.timeout * 10, call).await
    }

    async fn call_within<T>(
        &self,
        op: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(limit)),
        };
        if let Err(e) = &result {
            let was_healthy = self.with(|s| s.replica.store_failed(matches!(e, StoreError::Reset)));
            metrics::counter!("islb_store_errors_total", "op" => op).increment(1);
            let kind = self.store.kind();
            let e = Chain(e);
            if was_healthy {
                warn!(store = kind, op, error = %e, "store out of reach; serving from this replica's view, holding writes, expiring nothing");
            } else if let Some(suppressed) = self.store_log.allow() {
                warn!(store = kind, op, error = %e, suppressed, "store still out of reach");
            }
        }
        result
    }

    /// Publishes one message (a reply, a node or session event); false when it failed
    /// (logged).
    pub(crate) async fn send(&self, subject: async_nats::Subject, payload: Bytes) -> bool {
        match self.outbox.publish(subject, payload).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "could not publish");
                false
            }
        }
    }

    /// Publishes node events as gob `Request`s with action save, update or delete.
    pub(crate) async fn publish(&self, events: &[Event]) {
        for event in events {
            let action = event.kind.action();
            let req = Request { action: action.into(), node: (*event.node).clone(), ..Request::default() };
            match event.kind {
                EventKind::Save => info!(node = %event.node.id(), service = %event.node.service, "node up"),
                EventKind::Update => debug!(node = %event.node.id(), "node data changed"),
                EventKind::Delete => info!(node = %event.node.id(), service = %event.node.service, "node down"),
            }
            if self.send(event.subject().into(), req.to_gob().into()).await {
                metrics::counter!("islb_events_published_total", "action" => action).increment(1);
            }
        }
    }
}
