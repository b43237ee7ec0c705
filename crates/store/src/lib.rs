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

mod contract;
mod file;
mod memory;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use contract::{BoxError, Changes, Cursor, Snapshot, Store, StoreError, StreamKey};
pub use file::FileStore;
/// The answers and feed entries the core decides on, defined there.
pub use islb_core::{Change, Claim, SessionClaim};
pub use memory::MemoryStore;
