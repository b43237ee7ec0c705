//! The replica's link to its store: health, writes held while the store is out of reach,
//! the change-feed cursor, and the grace period after an outage.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use islb_core::{NodeKey, Timestamp};
use islb_gob::Node;
use islb_store::{Cursor, StoreError};
use tracing::{info, warn};

use crate::throttle::Throttle;

/// A write decided while the store was out of reach.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    /// Write this node with this deadline.
    Put(Arc<Node>, Timestamp),
    /// Remove the node.
    Delete,
}

pub(crate) struct StoreLink {
    kind: &'static str,
    timeout: Duration,
    healthy: AtomicBool,
    reset: AtomicBool,
    grace_until: AtomicU64,
    pending: Mutex<HashMap<NodeKey, Pending>>,
    /// Nodes whose expiry claim failed in flight: the store may have removed them with no
    /// one told (the reply was lost), so whoever finds them gone announces the departure.
    uncertain: Mutex<HashSet<NodeKey>>,
    cursor: Mutex<Cursor>,
    log: Throttle,
}

use crate::lock;

impl StoreLink {
    pub(crate) fn new(kind: &'static str, timeout: Duration) -> Self {
        StoreLink {
            kind,
            timeout,
            healthy: AtomicBool::new(true),
            reset: AtomicBool::new(false),
            grace_until: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            uncertain: Mutex::new(HashSet::new()),
            cursor: Mutex::new(Cursor::default()),
            log: Throttle::new(Duration::from_secs(1)),
        }
    }

    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self) {
        self.healthy.store(true, Ordering::Relaxed);
    }

    fn mark_down(&self, op: &'static str, e: &StoreError) {
        if matches!(e, StoreError::Reset) {
            self.mark_reset();
        }
        metrics::counter!("islb_store_errors_total", "op" => op).increment(1);
        let was_healthy = self.healthy.swap(false, Ordering::Relaxed);
        if was_healthy {
            warn!(store = self.kind, op, error = %e, "store out of reach; serving from this replica's view, holding writes, expiring nothing");
        } else if let Some(suppressed) = self.log.allow() {
            warn!(store = self.kind, op, error = %e, suppressed, "store still out of reach");
        }
    }

    /// Runs a store call bounded by the store timeout; a failure marks the store down.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.call_within(op, self.timeout, call).await
    }

    /// [`StoreLink::call`] for loading everything: ten times the store timeout.
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
            self.mark_down(op, e);
        }
        result
    }

    /// Expiry claims of `keys` failed: the store may or may not have removed them.
    pub(crate) fn note_uncertain(&self, keys: impl IntoIterator<Item = NodeKey>) {
        lock(&self.uncertain).extend(keys);
    }

    /// The nodes of failed expiry claims, forgotten here.
    pub(crate) fn take_uncertain(&self) -> HashSet<NodeKey> {
        std::mem::take(&mut *lock(&self.uncertain))
    }

    /// Forgets one node of a failed expiry claim (it was found gone, or written again);
    /// true if it was one.
    pub(crate) fn clear_uncertain(&self, key: &str) -> bool {
        let mut u = lock(&self.uncertain);
        !u.is_empty() && u.remove(key)
    }

    pub(crate) fn mark_reset(&self) {
        self.reset.store(true, Ordering::Relaxed);
    }

    pub(crate) fn take_reset(&self) -> bool {
        self.reset.swap(false, Ordering::Relaxed)
    }

    /// Holds a write until the store is back (the latest write of a node wins).
    pub(crate) fn hold(&self, key: NodeKey, op: Pending) {
        let mut p = lock(&self.pending);
        p.insert(key, op);
        metrics::gauge!("islb_store_pending_writes").set(p.len() as f64);
    }

    pub(crate) fn take_pending(&self) -> Vec<(NodeKey, Pending)> {
        let taken: Vec<_> = lock(&self.pending).drain().collect();
        if !taken.is_empty() {
            info!(writes = taken.len(), "writing back what was held during the store outage");
        }
        metrics::gauge!("islb_store_pending_writes").set(0.0);
        taken
    }

    /// Puts back writes that could not be made, unless a newer write of the same node was
    /// held meanwhile.
    pub(crate) fn restore(&self, items: impl IntoIterator<Item = (NodeKey, Pending)>) {
        let mut p = lock(&self.pending);
        for (k, op) in items {
            p.entry(k).or_insert(op);
        }
        metrics::gauge!("islb_store_pending_writes").set(p.len() as f64);
    }

    /// The nodes with a write held.
    pub(crate) fn pending_keys(&self) -> std::collections::HashSet<NodeKey> {
        lock(&self.pending).keys().cloned().collect()
    }

    pub(crate) fn cursor(&self) -> Cursor {
        lock(&self.cursor).clone()
    }

    pub(crate) fn set_cursor(&self, c: Cursor) {
        *lock(&self.cursor) = c;
    }

    pub(crate) fn set_grace(&self, until: Timestamp) {
        self.grace_until.store(until.as_ms(), Ordering::Relaxed);
    }

    pub(crate) fn in_grace(&self, now: Timestamp) -> bool {
        now.as_ms() < self.grace_until.load(Ordering::Relaxed)
    }

    pub(crate) fn grace_until(&self) -> Option<Timestamp> {
        Some(self.grace_until.load(Ordering::Relaxed)).filter(|g| *g > 0).map(Timestamp::from_ms)
    }
}
