//! Keeping one replica and the store in step: reading what other replicas wrote (the
//! change feed, or the whole store), writing the keep-alive batches, and recovering after
//! an outage. What each answer means is the core's decision ([`islb_core::Replica`]);
//! this module makes the calls.
//!
//! Delete events these calls find (a node of this replica's lost expiry claim that turns
//! out gone) are returned, not published: announcing a departure also moves its sessions,
//! which is the placement layer's work, one layer up.

use std::sync::Arc;

use islb_core::{Event, Pending};
use islb_runtime::Chain;
use islb_store::{Changes, SessionClaim};
use tracing::{info, warn};

use crate::state::Shared;

/// Follows the store for one replica.
pub struct StoreSync {
    shared: Arc<Shared>,
    /// One sync at a time, so that batches apply in feed order (a queue, not a lock over
    /// state: the state is only ever taken inside, through `Shared::with`).
    gate: tokio::sync::Mutex<()>,
}

impl StoreSync {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        StoreSync { shared, gate: tokio::sync::Mutex::new(()) }
    }

    /// Reads what other replicas wrote before answering, so a node saved (or a session
    /// placed) through any replica is seen here at once (one round trip when nothing
    /// changed; nothing to do for a store of this replica's own).
    ///
    /// Concurrent requests share a sync: one that begins after a request arrived has seen
    /// every write finished before it, so when such a sync succeeds while the request
    /// waits for its turn, the request needs no round trip of its own.
    pub(crate) async fn catch_up(&self) -> Vec<Event> {
        if !(self.shared.store().shared() && self.shared.store_healthy()) {
            return Vec::new();
        }
        // Boxed: a store of this replica's own never gets here, and every request's future
        // would otherwise carry (and copy) this one's state.
        Box::pin(self.catch_up_shared()).await
    }

    async fn catch_up_shared(&self) -> Vec<Event> {
        let wanted = self.shared.with(|s| s.syncs_begun) + 1;
        let _one_at_a_time = self.gate.lock().await;
        if self.shared.with(|s| s.synced) >= wanted {
            return Vec::new();
        }
        self.sync_in_turn().await
    }

    /// Applies what other replicas wrote since the last look (silently: they announced it).
    pub(crate) async fn sync(&self) -> Vec<Event> {
        let _one_at_a_time = self.gate.lock().await;
        self.sync_in_turn().await
    }

    /// [`StoreSync::sync`] with the gate held.
    async fn sync_in_turn(&self) -> Vec<Event> {
        let (number, cursor) = self.shared.with(|s| {
            s.syncs_begun += 1;
            (s.syncs_begun, s.cursor.clone())
        });
        match self.shared.store_call("changes", self.shared.store().changes(&cursor)).await {
            Some(Changes::Since { changes, cursor }) => self.shared.with(|s| {
                let events = s.replica.apply_changes(changes);
                s.cursor = cursor;
                s.synced = number;
                events
            }),
            Some(Changes::Gap) => {
                info!("change feed gap: reloading every node from the store");
                match self.load().await {
                    Ok((_, events)) => {
                        self.shared.with(|s| s.synced = number);
                        events
                    }
                    Err(e) => {
                        warn!(error = %Chain(&e), "reload after a change feed gap failed");
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        }
    }

    /// Takes in everything the store holds (start-up, a gap in the change feed, after an
    /// outage); returns how many nodes it has, and delete events to announce.
    pub(crate) async fn load(&self) -> Result<(usize, Vec<Event>), islb_store::StoreError> {
        let snapshot = self.shared.call_long("load", self.shared.store().load()).await?;
        let n = snapshot.nodes.len();
        let events = self.shared.with(|s| {
            s.cursor = snapshot.cursor;
            s.replica.reconcile(snapshot.nodes, snapshot.sessions, snapshot.drains)
        });
        if !events.is_empty() {
            info!(nodes = events.len(), "announcing nodes whose expiry claim was lost in flight");
        }
        Ok((n, events))
    }

    /// Writes the batched keep-alive deadlines and session uses. Nodes the store no longer
    /// knows (expired or deleted through another replica) but that are alive here are
    /// written in full, and announced if the store says they are new and no `save` of them
    /// went out yet (see `Replica::written_in_full`).
    pub(crate) async fn flush(&self) {
        if !self.shared.store_healthy() {
            return; // kept until the store is back
        }
        self.flush_session_uses().await;
        let batch = self.shared.with(|s| s.replica.take_node_touches());
        if batch.is_empty() {
            return;
        }
        let Some(unknown) = self.shared.store_call("touch_nodes", self.shared.store().touch_nodes(&batch)).await else {
            self.shared.with(|s| s.replica.put_back_node_touches(batch));
            return;
        };
        for (node, deadline) in self.shared.with(|s| s.replica.to_write_in_full(&unknown)) {
            let put = self.shared.store().put_node(node.clone(), deadline);
            if let Some(verdict) = self.shared.store_call("put_node", put).await {
                let events = self.shared.with(|s| s.replica.written_in_full(node, deadline, verdict));
                self.shared.publish(&events).await;
            }
        }
    }

    async fn flush_session_uses(&self) {
        let batch = self.shared.with(|s| s.replica.take_session_touches());
        if batch.is_empty() {
            return;
        }
        if self.shared.store_call("touch_sessions", self.shared.store().touch_sessions(&batch)).await.is_none() {
            self.shared.with(|s| s.replica.put_back_session_touches(batch));
        }
    }

    /// The store answers again: re-initialise it if it lost its data, replay what was
    /// held, write back every node if needed, reload what the others wrote, and expire
    /// nothing for one more expiry period (nodes whose keep-alives other replicas held are
    /// being written back too). Returns delete events to announce.
    pub(crate) async fn recover(&self) -> Vec<Event> {
        if self.shared.call("ping", self.shared.store().ping()).await.is_err() {
            return Vec::new();
        }
        let wiped = self.shared.with(|s| s.replica.take_reset());
        if self.write_back(wiped).await.is_err() {
            if wiped {
                self.shared.with(|s| s.replica.store_failed(true));
            }
            return Vec::new();
        }
        let now = self.shared.now();
        let grace = self.shared.with(|s| s.replica.store_back(now));
        // Writes decided while the write-back ran (the store still counted as down).
        if self.write_held().await.is_err() || !self.claim_held_sessions().await {
            return Vec::new();
        }
        self.flush().await;
        let events = match self.load().await {
            Ok((_, events)) => events,
            Err(e) => {
                warn!(error = %Chain(&e), "reload after the store came back failed");
                Vec::new()
            }
        };
        info!(store = self.shared.store().kind(), grace_until = %grace, "store reachable again; state written back, expiry resumes after the grace period");
        events
    }

    /// Re-initialises a wiped store and writes back everything this replica holds (and,
    /// for a wiped store, every node, session and drain mark it knows, without events).
    async fn write_back(&self, wiped: bool) -> Result<(), islb_store::StoreError> {
        let store = self.shared.store();
        if wiped {
            warn!(store = store.kind(), "the store lost its data; writing back every node this replica knows");
            self.shared.call("reset", store.reset()).await?;
        }
        self.write_held().await?;
        if wiped {
            let (nodes, drains) = self.shared.with(|s| {
                s.replica.hold_all_sessions();
                let nodes: Vec<_> = s.replica.registry.entries().map(|(_, e)| (e.node.clone(), e.deadline)).collect();
                (nodes, s.replica.sessions.drains())
            });
            for (node, deadline) in nodes {
                self.shared.call("put_node", store.put_node(node, deadline)).await?;
            }
            for (node, deadline) in drains {
                self.shared.call("set_drain", store.set_drain(&node, deadline)).await?;
            }
        }
        if self.claim_held_sessions().await {
            Ok(())
        } else {
            Err(islb_store::StoreError::refused("session write-back"))
        }
    }

    /// Makes the node writes held during an outage; on a failure, keeps what is left.
    async fn write_held(&self) -> Result<(), islb_store::StoreError> {
        let taken = self.shared.with(|s| s.replica.take_held_writes());
        if !taken.is_empty() {
            info!(writes = taken.len(), "writing back what was held during the store outage");
        }
        let mut held = taken.into_iter();
        let store = self.shared.store();
        while let Some((key, op)) = held.next() {
            let result = match &op {
                Pending::Put(node, deadline) => {
                    self.shared.call("put_node", store.put_node(node.clone(), *deadline)).await.map(drop)
                }
                Pending::Delete => self.shared.call("delete_node", store.delete_node(&key)).await.map(drop),
            };
            if let Err(e) = result {
                // Put back this one and the rest, unless a newer write of the key was held meanwhile.
                self.shared.with(|s| s.replica.restore_held_writes(std::iter::once((key, op)).chain(held)));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Claims the placements made while the store was out of reach (the store's answer
    /// wins where another replica placed the same session meanwhile).
    async fn claim_held_sessions(&self) -> bool {
        let mut held = self.shared.with(|s| s.replica.take_held_sessions()).into_iter();
        while let Some((sid, node)) = held.next() {
            let now = self.shared.now();
            match self.shared.call("claim_session", self.shared.store().claim_session(&sid, &node, now)).await {
                Ok(SessionClaim::Existing(s) | SessionClaim::Placed(s) | SessionClaim::Moved { session: s, .. }) => {
                    self.shared.with(|st| st.replica.sessions.set(s));
                }
                Ok(SessionClaim::CandidateGone) => {}
                Err(_) => {
                    // Keep this one and the rest (a newer placement held meanwhile wins).
                    self.shared.with(|s| s.replica.restore_held_sessions(std::iter::once((sid, node)).chain(held)));
                    return false;
                }
            }
        }
        true
    }
}
