//! What islb must not lose, behind one trait, with an embedded backend and the contract
//! tests every backend runs.
//!
//! The registry's live view is in each replica's memory ([`islb_core::Registry`]); the
//! store is the shared, authoritative record that several replicas agree through. Every
//! operation that replicas may race on is atomic in the store:
//!
//! - [`Store::put_node`] says whether the node was new, changed or the same, so that
//!   exactly one replica announces a new node;
//! - [`Store::delete_node`] and [`Store::claim_expired`] remove a node for exactly one
//!   caller, so that exactly one `delete` event goes out cluster-wide;
//! - [`Store::touch_nodes`] moves deadlines in batches (a keep-alive costs at most one
//!   store round trip, shared with others) and never moves one backwards.
//!
//! Backends: [`MemoryStore`] (the default, no server needed) here, Redis in
//! `islb-store-redis`. With the `testsuite` feature, [`testsuite::run_all`] checks any
//! backend against the contract.

use std::sync::Arc;

use async_trait::async_trait;
use islb_core::{NodeKey, Timestamp, Verdict};
use islb_gob::Node;

mod memory;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

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
    /// The store answered with something this version cannot read.
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

/// The storage contract. Implementations are shared by all tasks of a replica.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics (`memory`, `file`, `redis`).
    fn kind(&self) -> &'static str;

    /// Fails when the store cannot be used right now (for readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts or replaces `node` with `deadline` (never moving a later deadline back) and
    /// says what was there before.
    async fn put_node(&self, node: Arc<Node>, deadline: Timestamp) -> Result<Verdict, StoreError>;

    /// Moves the deadlines of known nodes forward; returns the keys it does not know (the
    /// caller writes those nodes in full).
    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError>;

    /// Removes a node; returns it if it was there. Of several racing callers, one gets it.
    async fn delete_node(&self, key: &str) -> Result<Option<Arc<Node>>, StoreError>;

    /// Removes a node if its deadline is at or before `now`. Of several racing callers,
    /// one gets [`Claim::Expired`].
    async fn claim_expired(&self, key: &str, now: Timestamp) -> Result<Claim, StoreError>;

    /// Every node with its deadline.
    async fn load_nodes(&self) -> Result<Vec<(Arc<Node>, Timestamp)>, StoreError>;
}
