//! The store contract: the [`Store`] trait every backend implements, and the values it
//! takes and returns.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use islb_core::{Change, Claim, NodeKey, Session, SessionClaim, Timestamp, Verdict};
use islb_gob::Node;

/// A lower error kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A store operation failed; the caller keeps serving from its own view.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time.
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store could not be reached or refused the operation.
    #[error("store unavailable: {what}")]
    Unavailable {
        /// What failed.
        what: String,
        /// Why, when a lower error says so.
        #[source]
        source: Option<BoxError>,
    },
    /// The store lost its data (e.g. a Redis restart without persistence): the caller
    /// must call [`Store::reset`] and write back what it knows.
    #[error("store was reset and holds none of islb's data")]
    Reset,
    /// The store holds something this version cannot read.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// [`StoreError::Unavailable`]: `what` failed because of `source`.
    pub fn unavailable(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Unavailable { what: what.into(), source: Some(source.into()) }
    }

    /// [`StoreError::Unavailable`] with no lower error (the store answered something else).
    pub fn refused(what: impl Into<String>) -> Self {
        StoreError::Unavailable { what: what.into(), source: None }
    }

    /// [`StoreError::Corrupt`] saying what could not be read.
    pub fn corrupt(what: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(what.to_string())
    }
}

/// A position in the store's change feed (opaque to callers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub String);

/// Everything the store holds, and the feed position it is current to.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The nodes with their deadlines.
    pub nodes: Vec<(Arc<Node>, Timestamp)>,
    /// The session placements.
    pub sessions: Vec<Session>,
    /// The drain marks (node, deadline after which its sessions move).
    pub drains: Vec<(NodeKey, Option<Timestamp>)>,
    /// Where [`Store::changes`] continues from.
    pub cursor: Cursor,
}

/// Where a stream is published, in ion's Redis key shape `<dc>/<nid>/<sid>/<uid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// DC of the islb that recorded it.
    pub dc: String,
    /// The node (SFU) publishing.
    pub nid: String,
    /// The session.
    pub sid: String,
    /// The publishing peer.
    pub uid: String,
}

impl StreamKey {
    /// `<dc>/<nid>/<sid>/<uid>`.
    pub fn redis_key(&self) -> String {
        format!("{}/{}/{}/{}", self.dc, self.nid, self.sid, self.uid)
    }

    /// Parses `<dc>/<nid>/<sid>/<uid>`.
    pub fn parse(key: &str) -> Option<StreamKey> {
        let mut it = key.splitn(4, '/');
        let (dc, nid, sid, uid) = (it.next()?, it.next()?, it.next()?, it.next()?);
        Some(StreamKey { dc: dc.into(), nid: nid.into(), sid: sid.into(), uid: uid.into() })
    }
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

    /// Fails when the store cannot be used right now (for readiness). An embedded store
    /// always can.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

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

    /// Places session `sid` on `candidate` unless it is placed on a live node that is not
    /// drained past its deadline (atomic: of racing claims of one sid, all agree on one
    /// node). Marks the session used at `now`.
    async fn claim_session(&self, sid: &str, candidate: &NodeKey, now: Timestamp) -> Result<SessionClaim, StoreError>;

    /// Moves session `sid` to `to` (or releases it when `to` is `None`) if its version is
    /// still `version` and, with `idle_before`, it was not used since then. Returns the new
    /// placement (or the released one) when it happened.
    async fn move_session(
        &self,
        sid: &str,
        version: u64,
        to: Option<&NodeKey>,
        idle_before: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError>;

    /// Marks sessions used (batched lookups of placed sessions).
    async fn touch_sessions(&self, touches: &[(Arc<str>, Timestamp)]) -> Result<(), StoreError>;

    /// Marks `node` draining, optionally until `deadline`.
    async fn set_drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<(), StoreError>;

    /// Lifts a drain mark; returns whether there was one.
    async fn clear_drain(&self, node: &NodeKey) -> Result<bool, StoreError>;

    /// Records (or replaces) the streams `uid` publishes in `sid` on `nid`: ion's key shape
    /// and JSON value, forgotten after `ttl`.
    async fn put_stream(&self, key: &StreamKey, json: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Forgets a stream record; returns whether there was one.
    async fn delete_stream(&self, key: &StreamKey) -> Result<bool, StoreError>;

    /// The stream records of session `sid`.
    async fn streams_of(&self, sid: &str) -> Result<Vec<(StreamKey, String)>, StoreError>;
}
