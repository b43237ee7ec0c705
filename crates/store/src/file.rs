//! The durable embedded store: [`MemoryStore`] written through to a redb file, so that a
//! restarted islb still knows every node and expires the ones that died meanwhile.
//!
//! Every change is committed before the call returns (redb with immediate durability, on
//! a blocking thread); writes are serialised so the file always holds the state the last
//! completed call left. Table `nodes`: key `DC.NID`, value = deadline (8 bytes, big
//! endian, milliseconds since the epoch) followed by the node in gob, as Go encodes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use islb_core::{NodeKey, Timestamp, Verdict};
use islb_gob::{Message as _, Node};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::memory::MemoryStore;
use crate::{Claim, Snapshot, Store, StoreError};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");

/// Nodes in memory, durable in a file.
pub struct FileStore {
    mem: MemoryStore,
    db: Arc<Database>,
    path: PathBuf,
    write: tokio::sync::Mutex<()>,
}

enum Op {
    Put(String, Vec<u8>),
    Remove(String),
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
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
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let db = Database::create(&path).map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let mem = MemoryStore::new();
        {
            let txn = db.begin_write().map_err(corrupt)?;
            txn.open_table(NODES).map_err(corrupt)?;
            txn.commit().map_err(corrupt)?;
            let txn = db.begin_read().map_err(corrupt)?;
            let table = txn.open_table(NODES).map_err(corrupt)?;
            for row in table.iter().map_err(corrupt)? {
                let (key, value) = row.map_err(corrupt)?;
                let value = value.value();
                if value.len() < 8 {
                    return Err(corrupt(format!("node {}: value too short", key.value())));
                }
                let deadline = Timestamp::from_ms(u64::from_be_bytes(value[..8].try_into().expect("8 bytes")));
                let node = Node::from_gob(&value[8..]).map_err(|e| corrupt(format!("node {}: {e}", key.value())))?;
                mem.insert_loaded(Arc::new(node), deadline);
            }
        }
        Ok(FileStore { mem, db: Arc::new(db), path, write: tokio::sync::Mutex::new(()) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(corrupt)?;
            {
                let mut table = txn.open_table(NODES).map_err(corrupt)?;
                for op in &ops {
                    match op {
                        Op::Put(k, v) => {
                            table.insert(k.as_str(), v.as_slice()).map_err(corrupt)?;
                        }
                        Op::Remove(k) => {
                            table.remove(k.as_str()).map_err(corrupt)?;
                        }
                    }
                }
            }
            txn.commit().map_err(corrupt)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("file store writer: {e}")))?
    }
}

#[async_trait]
impl Store for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
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
        let found = self.mem.delete(key);
        if found.is_some() {
            self.commit(vec![Op::Remove(key.to_owned())]).await?;
        }
        Ok(found)
    }

    async fn claim_expired(&self, keys: &[NodeKey], now: Timestamp) -> Result<Vec<Claim>, StoreError> {
        let _w = self.write.lock().await;
        let claims = self.mem.claim(keys, now);
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
        Ok(self.mem.snapshot())
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

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        std::fs::write(&path, b"this is not a redb file at all").unwrap();
        let err = FileStore::open(&path).err().expect("an error");
        assert!(err.to_string().contains("state.redb"), "{err}");
    }
}
