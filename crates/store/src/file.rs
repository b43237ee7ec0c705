//! The durable embedded store: [`MemoryStore`] written through to a redb file, so that a
//! restarted islb still knows every node and expires the ones that died meanwhile.
//!
//! Every change is committed before the call returns (redb with immediate durability, on
//! a blocking thread); writes are serialised so the file always holds the state the last
//! completed call left. Tables: `nodes` (key `DC.NID`, value = deadline as 8 bytes big
//! endian, milliseconds since the epoch, then the node in gob as Go encodes it),
//! `sessions` (key sid, value = version and last use as 8 bytes each, then the node key),
//! `drains` (key `DC.NID`, value = deadline, 0 for none), `streams` (key = the JSON array
//! `[dc, nid, sid, uid]`, unambiguous whatever the ids hold; value = wall-clock expiry as
//! 8 bytes, then the JSON record). Expired stream records are dropped from the file when
//! it is opened and whenever a lookup finds them. Stream records are committed without
//! an fsync of their own: the next node write (keep-alives make one every 200 ms while any
//! node lives) makes them durable, so a burst of stream events never queues node writes
//! behind disk flushes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use islb_core::{NodeKey, Session, Timestamp, Verdict};
use islb_gob::{Message as _, Node};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::memory::{MemoryStore, State};
use crate::{Claim, SessionClaim, Snapshot, Store, StoreError, StreamKey};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const DRAINS: TableDefinition<&str, u64> = TableDefinition::new("drains");
const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");

/// Nodes in memory, durable in a file.
pub struct FileStore {
    mem: MemoryStore,
    db: Arc<Database>,
    write: tokio::sync::Mutex<()>,
}

enum Op {
    Put(String, Vec<u8>),
    Remove(String),
    PutSession(String, Vec<u8>),
    RemoveSession(String),
    PutDrain(String, u64),
    RemoveDrain(String),
    PutStream(String, Vec<u8>),
    RemoveStream(String),
}

fn encode_session(s: &Session) -> Vec<u8> {
    let mut v = s.version.to_be_bytes().to_vec();
    v.extend_from_slice(&s.used.as_ms().to_be_bytes());
    v.extend_from_slice(s.node.as_bytes());
    v
}

/// A value's leading 8-byte big-endian integer and the rest.
fn split_u64(v: &[u8]) -> Option<(u64, &[u8])> {
    v.split_first_chunk::<8>().map(|(head, rest)| (u64::from_be_bytes(*head), rest))
}

fn decode_session(sid: &str, v: &[u8]) -> Result<Session, StoreError> {
    let short = || StoreError::corrupt(format!("session {sid}: value too short"));
    let (version, rest) = split_u64(v).ok_or_else(short)?;
    let (used, node) = split_u64(rest).ok_or_else(short)?;
    let node = std::str::from_utf8(node).map_err(|e| StoreError::corrupt(format!("session {sid}: {e}")))?;
    Ok(Session { sid: sid.into(), node: node.into(), version, used: Timestamp::from_ms(used) })
}

/// The row key of a stream record: `[dc, nid, sid, uid]` as JSON.
fn stream_row(k: &StreamKey) -> String {
    serde_json::to_string(&[&k.dc, &k.nid, &k.sid, &k.uid]).expect("strings serialise")
}

fn stream_key_from_row(row: &str) -> Option<StreamKey> {
    let [dc, nid, sid, uid]: [String; 4] = serde_json::from_str(row).ok()?;
    Some(StreamKey { dc, nid, sid, uid })
}

fn encode(node: &Node, deadline: Timestamp) -> Vec<u8> {
    let mut v = deadline.as_ms().to_be_bytes().to_vec();
    node.write_gob(&mut v);
    v
}

impl FileStore {
    /// Opens (or creates) the file and loads every node in it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::unavailable(dir.display().to_string(), e))?;
        }
        let db = Database::create(&path).map_err(|e| StoreError::unavailable(path.display().to_string(), e))?;
        let mut st = State::default();
        {
            let txn = db.begin_write().map_err(StoreError::corrupt)?;
            txn.open_table(NODES).map_err(StoreError::corrupt)?;
            txn.open_table(SESSIONS).map_err(StoreError::corrupt)?;
            txn.open_table(DRAINS).map_err(StoreError::corrupt)?;
            txn.open_table(STREAMS).map_err(StoreError::corrupt)?;
            txn.commit().map_err(StoreError::corrupt)?;
            let txn = db.begin_read().map_err(StoreError::corrupt)?;
            let table = txn.open_table(NODES).map_err(StoreError::corrupt)?;
            for row in table.iter().map_err(StoreError::corrupt)? {
                let (key, value) = row.map_err(StoreError::corrupt)?;
                let (deadline, gob) = split_u64(value.value())
                    .ok_or_else(|| StoreError::corrupt(format!("node {}: value too short", key.value())))?;
                let deadline = Timestamp::from_ms(deadline);
                let node =
                    Node::from_gob(gob).map_err(|e| StoreError::corrupt(format!("node {}: {e}", key.value())))?;
                st.nodes.insert(node.id().into(), (Arc::new(node), deadline));
            }
            let table = txn.open_table(SESSIONS).map_err(StoreError::corrupt)?;
            for row in table.iter().map_err(StoreError::corrupt)? {
                let (sid, value) = row.map_err(StoreError::corrupt)?;
                let s = decode_session(sid.value(), value.value())?;
                st.sessions.insert(s.sid.clone(), s);
            }
            let table = txn.open_table(DRAINS).map_err(StoreError::corrupt)?;
            for row in table.iter().map_err(StoreError::corrupt)? {
                let (node, deadline) = row.map_err(StoreError::corrupt)?;
                let d = deadline.value();
                st.drains.insert(node.value().into(), (d > 0).then_some(Timestamp::from_ms(d)));
            }
            let now = Timestamp::from(std::time::SystemTime::now());
            let mut expired = Vec::new();
            let table = txn.open_table(STREAMS).map_err(StoreError::corrupt)?;
            for row in table.iter().map_err(StoreError::corrupt)? {
                let (key, value) = row.map_err(StoreError::corrupt)?;
                let (key, value) = (key.value(), value.value());
                let bad = |what: &str| StoreError::corrupt(format!("stream {key}: {what}"));
                let stream = stream_key_from_row(key).ok_or_else(|| bad("not [dc, nid, sid, uid]"))?;
                let (until, json) = split_u64(value).ok_or_else(|| bad("value too short"))?;
                let json = std::str::from_utf8(json).map_err(|e| bad(&e.to_string()))?;
                match now.until(Timestamp::from_ms(until)) {
                    Duration::ZERO => expired.push(key.to_owned()),
                    left => drop(st.streams.insert(stream, (json.to_owned(), std::time::Instant::now() + left))),
                }
            }
            drop(table);
            drop(txn);
            if !expired.is_empty() {
                let txn = db.begin_write().map_err(StoreError::corrupt)?;
                {
                    let mut table = txn.open_table(STREAMS).map_err(StoreError::corrupt)?;
                    for key in &expired {
                        table.remove(key.as_str()).map_err(StoreError::corrupt)?;
                    }
                }
                txn.commit().map_err(StoreError::corrupt)?;
            }
        }
        Ok(FileStore { mem: MemoryStore::with_state(st), db: Arc::new(db), write: tokio::sync::Mutex::new(()) })
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.commit_with(ops, Durability::Immediate).await
    }

    async fn commit_with(&self, ops: Vec<Op>, durability: Durability) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write().map_err(StoreError::corrupt)?;
            txn.set_durability(durability).map_err(StoreError::corrupt)?;
            {
                let mut nodes = txn.open_table(NODES).map_err(StoreError::corrupt)?;
                let mut sessions = txn.open_table(SESSIONS).map_err(StoreError::corrupt)?;
                let mut drains = txn.open_table(DRAINS).map_err(StoreError::corrupt)?;
                let mut streams = txn.open_table(STREAMS).map_err(StoreError::corrupt)?;
                for op in &ops {
                    match op {
                        Op::Put(k, v) => drop(nodes.insert(k.as_str(), v.as_slice()).map_err(StoreError::corrupt)?),
                        Op::Remove(k) => drop(nodes.remove(k.as_str()).map_err(StoreError::corrupt)?),
                        Op::PutSession(k, v) => {
                            drop(sessions.insert(k.as_str(), v.as_slice()).map_err(StoreError::corrupt)?)
                        }
                        Op::RemoveSession(k) => drop(sessions.remove(k.as_str()).map_err(StoreError::corrupt)?),
                        Op::PutDrain(k, d) => drop(drains.insert(k.as_str(), *d).map_err(StoreError::corrupt)?),
                        Op::RemoveDrain(k) => drop(drains.remove(k.as_str()).map_err(StoreError::corrupt)?),
                        Op::PutStream(k, v) => {
                            drop(streams.insert(k.as_str(), v.as_slice()).map_err(StoreError::corrupt)?)
                        }
                        Op::RemoveStream(k) => drop(streams.remove(k.as_str()).map_err(StoreError::corrupt)?),
                    }
                }
            }
            txn.commit().map_err(StoreError::corrupt)
        })
        .await
        .map_err(|e| StoreError::unavailable("file store writer", e))?
    }
}

#[async_trait]
impl Store for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn put_node(&self, node: Arc<Node>, deadline: Timestamp) -> Result<Verdict, StoreError> {
        let _w = self.write.lock().await;
        let (verdict, deadline) = self.mem.put(node.clone(), deadline);
        self.commit(vec![Op::Put(node.id(), encode(&node, deadline))]).await?;
        Ok(verdict)
    }

    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError> {
        let _w = self.write.lock().await;
        let (unknown, moved) = self.mem.touch(touches);
        let ops = moved.iter().map(|(k, n, d)| Op::Put(k.to_string(), encode(n, *d))).collect();
        self.commit(ops).await?;
        Ok(unknown)
    }

    async fn delete_node(&self, key: &str) -> Result<Option<Arc<Node>>, StoreError> {
        let _w = self.write.lock().await;
        let found = self.mem.delete_node(key).await?;
        if found.is_some() {
            self.commit(vec![Op::Remove(key.to_owned())]).await?;
        }
        Ok(found)
    }

    async fn claim_expired(&self, keys: &[NodeKey], now: Timestamp) -> Result<Vec<Claim>, StoreError> {
        let _w = self.write.lock().await;
        let claims = self.mem.claim_expired(keys, now).await?;
        let ops = keys
            .iter()
            .zip(&claims)
            .filter(|(_, c)| matches!(c, Claim::Expired(_)))
            .map(|(k, _)| Op::Remove(k.to_string()))
            .collect();
        self.commit(ops).await?;
        Ok(claims)
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.mem.load().await
    }

    async fn claim_session(&self, sid: &str, candidate: &NodeKey, now: Timestamp) -> Result<SessionClaim, StoreError> {
        let _w = self.write.lock().await;
        let claim = self.mem.claim_session(sid, candidate, now).await?;
        let changed = match &claim {
            SessionClaim::Placed(s) | SessionClaim::Moved { session: s, .. } => Some(s),
            // The last-use time of an existing session is written in batches (touch_sessions).
            SessionClaim::Existing(_) | SessionClaim::CandidateGone => None,
        };
        if let Some(s) = changed {
            self.commit(vec![Op::PutSession(sid.to_owned(), encode_session(s))]).await?;
        }
        Ok(claim)
    }

    async fn move_session(
        &self,
        sid: &str,
        version: u64,
        to: Option<&NodeKey>,
        idle_before: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        let _w = self.write.lock().await;
        let moved = self.mem.move_session(sid, version, to, idle_before, now).await?;
        match (&moved, to) {
            (Some(s), Some(_)) => self.commit(vec![Op::PutSession(sid.to_owned(), encode_session(s))]).await?,
            (Some(_), None) => self.commit(vec![Op::RemoveSession(sid.to_owned())]).await?,
            (None, _) => {}
        }
        Ok(moved)
    }

    async fn touch_sessions(&self, touches: &[(Arc<str>, Timestamp)]) -> Result<(), StoreError> {
        let _w = self.write.lock().await;
        let moved = self.mem.touch_sessions_now(touches);
        self.commit(moved.iter().map(|s| Op::PutSession(s.sid.to_string(), encode_session(s))).collect()).await
    }

    async fn set_drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<(), StoreError> {
        let _w = self.write.lock().await;
        self.mem.set_drain(node, deadline).await?;
        self.commit(vec![Op::PutDrain(node.to_string(), deadline.map_or(0, |d| d.as_ms()))]).await
    }

    async fn clear_drain(&self, node: &NodeKey) -> Result<bool, StoreError> {
        let _w = self.write.lock().await;
        let had = self.mem.clear_drain(node).await?;
        if had {
            self.commit(vec![Op::RemoveDrain(node.to_string())]).await?;
        }
        Ok(had)
    }

    async fn put_stream(&self, key: &StreamKey, json: &str, ttl: Duration) -> Result<(), StoreError> {
        let _w = self.write.lock().await;
        self.mem.put_stream(key, json, ttl).await?;
        let mut value = Timestamp::from(std::time::SystemTime::now()).plus(ttl).as_ms().to_be_bytes().to_vec();
        value.extend_from_slice(json.as_bytes());
        self.commit_with(vec![Op::PutStream(stream_row(key), value)], Durability::None).await
    }

    async fn delete_stream(&self, key: &StreamKey) -> Result<bool, StoreError> {
        let _w = self.write.lock().await;
        let had = self.mem.delete_stream(key).await?;
        if had {
            self.commit_with(vec![Op::RemoveStream(stream_row(key))], Durability::None).await?;
        }
        Ok(had)
    }

    async fn streams_of(&self, sid: &str) -> Result<Vec<(StreamKey, String)>, StoreError> {
        let _w = self.write.lock().await;
        let expired = self.mem.drop_expired_streams();
        let ops = expired.iter().map(|k| Op::RemoveStream(stream_row(k))).collect();
        self.commit_with(ops, Durability::None).await?;
        Ok(self.mem.streams_for(sid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_meets_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let n = std::sync::atomic::AtomicUsize::new(0);
        crate::testsuite::run_all(|| {
            let path = dir.path().join(format!("s{}.redb", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
            async move { FileStore::open(path).unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn a_reopened_file_store_knows_every_node_and_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let t = Timestamp::from_ms(1_700_000_000_000);
        let mut n = Node { dc: "dc1".into(), service: "rtc".into(), nid: "a".into(), ..Node::default() };
        n.extra_info.insert("i8".into(), islb_gob::Value::Int8(-3));
        {
            let s = FileStore::open(&path).unwrap();
            s.put_node(Arc::new(n.clone()), t).await.unwrap();
            let b = Node { nid: "b".into(), ..n.clone() };
            s.put_node(Arc::new(b), t).await.unwrap();
            s.touch_nodes(&[("dc1.a".into(), t.plus_ms(9))]).await.unwrap();
            s.delete_node("dc1.b").await.unwrap();
        }
        let s = FileStore::open(&path).unwrap();
        let snap = s.load().await.unwrap();
        assert_eq!(snap.nodes.len(), 1);
        assert_eq!(*snap.nodes[0].0, n);
        assert_eq!(snap.nodes[0].1, t.plus_ms(9));
    }

    #[tokio::test]
    async fn a_reopened_file_store_knows_every_session_and_drain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let t = Timestamp::from_ms(1_700_000_000_000);
        let a: NodeKey = "dc1.a".into();
        {
            let s = FileStore::open(&path).unwrap();
            let n = Node { dc: "dc1".into(), service: "rtc".into(), nid: "a".into(), ..Node::default() };
            s.put_node(Arc::new(n), t).await.unwrap();
            s.claim_session("room-1", &a, t).await.unwrap();
            s.claim_session("room-2", &a, t).await.unwrap();
            s.move_session("room-2", 1, None, None, t).await.unwrap();
            s.touch_sessions(&[("room-1".into(), t.plus_ms(5))]).await.unwrap();
            s.set_drain(&a, Some(t.plus_ms(60_000))).await.unwrap();
        }
        let s = FileStore::open(&path).unwrap();
        let snap = s.load().await.unwrap();
        assert_eq!(
            snap.sessions,
            vec![Session { sid: "room-1".into(), node: a.clone(), version: 1, used: t.plus_ms(5) }]
        );
        assert_eq!(snap.drains, vec![(a, Some(t.plus_ms(60_000)))]);
    }

    #[tokio::test]
    async fn a_reopened_file_store_knows_every_live_stream_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        // A sid with a slash must not be read back as another sid.
        let key =
            |uid: &str| StreamKey { dc: "dc1".into(), nid: "sfu-1".into(), sid: "room/a".into(), uid: uid.into() };
        {
            let s = FileStore::open(&path).unwrap();
            s.put_stream(&key("kept"), r#"[{"id":"a"}]"#, Duration::from_secs(3600)).await.unwrap();
            s.put_stream(&key("removed"), "[]", Duration::from_secs(3600)).await.unwrap();
            s.put_stream(&key("expired"), "[]", Duration::from_millis(1)).await.unwrap();
            assert!(s.delete_stream(&key("removed")).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = FileStore::open(&path).unwrap();
        assert_eq!(s.streams_of("room/a").await.unwrap(), vec![(key("kept"), r#"[{"id":"a"}]"#.to_owned())]);
        assert!(s.delete_stream(&key("kept")).await.unwrap());
        drop(s);
        // The expired record was dropped from the file, not only hidden, and the deleted
        // one is gone too.
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&txn.open_table(STREAMS).unwrap()).unwrap(), 0);
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        std::fs::write(&path, b"this is not a redb file at all").unwrap();
        let err = FileStore::open(&path).err().expect("an error");
        assert!(err.to_string().contains("state.redb"), "{err}");
    }
}
