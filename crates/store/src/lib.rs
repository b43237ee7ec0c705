//! What islb must not lose, behind one trait, with the embedded backends and the contract
//! tests every backend runs.
//!
//! Each replica keeps its live view in memory ([`islb_core::Registry`]); the store is the
//! shared, authoritative record the replicas agree through. Every operation replicas may
//! race on is atomic in the store:
//!
//! - [`Store::put_node`] says whether the node was new, changed or the same, so that
//!   exactly one replica announces a new node;
//! - [`Store::delete_node`] and [`Store::claim_expired`] remove a node for exactly one
//!   caller, so that exactly one `delete` event goes out cluster-wide;
//! - [`Store::touch_nodes`] moves deadlines in batches (a keep-alive costs at most a share
//!   of one store round trip) and never moves one backwards;
//! - [`Store::changes`] tells a replica what the others wrote since its last look, so a
//!   node saved through one replica is listed by any other at once.
//!
//! Backends: [`MemoryStore`] (the default; one process), [`FileStore`] (memory written
//! through to a redb file, survives restarts), and Redis in `islb-store-redis` (shared by
//! replicas). With the `testsuite` feature, [`testsuite::run_all`] checks any backend
//! against the contract.

use std::sync::Arc;

use async_trait::async_trait;
use islb_core::{NodeKey, Timestamp, Verdict};
use islb_gob::Node;

mod file;
mod memory;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use file::FileStore;
pub use memory::MemoryStore;

/// A store operation failed; the caller keeps serving from its own view.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time.
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store could not be reached or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store lost its data (e.g. a Redis restart without persistence): the caller
    /// must call [`Store::reset`] and write back what it knows.
    #[error("store was reset and holds none of islb's data")]
    Reset,
    /// The store holds something this version cannot read.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
}

/// The result of an expiry claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The node's deadline had passed: it is removed and the caller announces it.
    Expired(Arc<Node>),
    /// The node is alive: its deadline (moved by a keep-alive through another replica).
    NotDue(Timestamp),
    /// The node is not there (deleted or expired by someone else, who announced it).
    Gone,
}

/// A position in the store's change feed (opaque to callers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub String);

/// Every node with its deadline, and the feed position they are current to.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The nodes.
    pub nodes: Vec<(Arc<Node>, Timestamp)>,
    /// Where [`Store::changes`] continues from.
    pub cursor: Cursor,
}

/// One change another writer made.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A node was created or its data changed.
    Put(Arc<Node>, Timestamp),
    /// A node was deleted or expired.
    Delete(NodeKey),
}

/// What [`Store::changes`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Changes {
    /// The changes since the cursor, in order, and the new cursor.
    Since {
        /// The changes.
        changes: Vec<Change>,
        /// The new position.
        cursor: Cursor,
    },
    /// The feed no longer reaches back to the cursor: load a [`Snapshot`] instead.
    Gap,
}

/// The storage contract. Implementations are shared by all tasks of a replica.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics (`memory`, `file`, `redis`).
    fn kind(&self) -> &'static str;

    /// Whether other processes write to this store (then replicas sync through
    /// [`Store::changes`]).
    fn shared(&self) -> bool {
        false
    }

    /// Fails when the store cannot be used right now (for readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Prepares a store that lost its data for use again (see [`StoreError::Reset`]).
    async fn reset(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Inserts or replaces `node` with `deadline` (never moving a later deadline back) and
    /// says what was there before.
    async fn put_node(&self, node: Arc<Node>, deadline: Timestamp) -> Result<Verdict, StoreError>;

    /// Moves the deadlines of known nodes forward; returns the keys it does not know (the
    /// caller writes those nodes in full).
    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError>;

    /// Removes a node; returns it if it was there. Of several racing callers, one gets it.
    async fn delete_node(&self, key: &str) -> Result<Option<Arc<Node>>, StoreError>;

    /// For each key, removes the node if its deadline is at or before `now`. Of several
    /// racing callers, one gets [`Claim::Expired`] for a node. Results are in key order.
    async fn claim_expired(&self, keys: &[NodeKey], now: Timestamp) -> Result<Vec<Claim>, StoreError>;

    /// Every node with its deadline.
    async fn load(&self) -> Result<Snapshot, StoreError>;

    /// What others wrote since `cursor` (a store that only this process writes has nothing
    /// to report).
    async fn changes(&self, cursor: &Cursor) -> Result<Changes, StoreError> {
        Ok(Changes::Since { changes: Vec::new(), cursor: cursor.clone() })
    }
}
