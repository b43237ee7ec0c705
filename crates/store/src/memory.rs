//! The embedded store: a map in this process, behind a mutex held for microseconds and
//! never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use islb_core::{NodeKey, Timestamp, Verdict};
use islb_gob::Node;

use crate::{Claim, Cursor, Snapshot, Store, StoreError};

type Nodes = HashMap<NodeKey, (Arc<Node>, Timestamp)>;

/// A node whose deadline a touch moved, with its new deadline.
pub(crate) type Moved = (NodeKey, Arc<Node>, Timestamp);

/// Nodes and deadlines in memory: the default store of a single islb.
#[derive(Debug, Default)]
pub struct MemoryStore {
    nodes: Mutex<Nodes>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn nodes(&self) -> MutexGuard<'_, Nodes> {
        // Every update is a single insert, remove or field write, so a panic while holding
        // the lock cannot leave the map half-updated: a poisoned lock is still good to use.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn put(&self, node: Arc<Node>, deadline: Timestamp) -> (Verdict, Timestamp) {
        let key: NodeKey = node.id().into();
        let mut nodes = self.nodes();
        match nodes.get_mut(&key) {
            None => {
                nodes.insert(key, (node, deadline));
                (Verdict::Created, deadline)
            }
            Some((old, d)) => {
                *d = (*d).max(deadline);
                if **old == *node {
                    (Verdict::Unchanged, *d)
                } else {
                    *old = node;
                    (Verdict::Changed, *d)
                }
            }
        }
    }

    /// Returns the unknown keys, and the nodes whose deadline moved with their new deadline.
    pub(crate) fn touch(&self, touches: &[(NodeKey, Timestamp)]) -> (Vec<NodeKey>, Vec<Moved>) {
        let mut nodes = self.nodes();
        let mut unknown = Vec::new();
        let mut moved = Vec::new();
        for (key, deadline) in touches {
            match nodes.get_mut(key) {
                Some((node, d)) => {
                    if *deadline > *d {
                        *d = *deadline;
                        moved.push((key.clone(), node.clone(), *d));
                    }
                }
                None => unknown.push(key.clone()),
            }
        }
        (unknown, moved)
    }

    pub(crate) fn delete(&self, key: &str) -> Option<Arc<Node>> {
        self.nodes().remove(key).map(|(n, _)| n)
    }

    pub(crate) fn claim(&self, keys: &[NodeKey], now: Timestamp) -> Vec<Claim> {
        let mut nodes = self.nodes();
        keys.iter()
            .map(|key| match nodes.get(key) {
                None => Claim::Gone,
                Some((_, d)) if *d > now => Claim::NotDue(*d),
                Some(_) => Claim::Expired(nodes.remove(key).expect("present").0),
            })
            .collect()
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot { nodes: self.nodes().values().cloned().collect(), cursor: Cursor::default() }
    }

    pub(crate) fn insert_loaded(&self, node: Arc<Node>, deadline: Timestamp) {
        self.nodes().insert(node.id().into(), (node, deadline));
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn put_node(&self, node: Arc<Node>, deadline: Timestamp) -> Result<Verdict, StoreError> {
        Ok(self.put(node, deadline).0)
    }

    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError> {
        Ok(self.touch(touches).0)
    }

    async fn delete_node(&self, key: &str) -> Result<Option<Arc<Node>>, StoreError> {
        Ok(self.delete(key))
    }

    async fn claim_expired(&self, keys: &[NodeKey], now: Timestamp) -> Result<Vec<Claim>, StoreError> {
        Ok(self.claim(keys, now))
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_meets_the_contract() {
        crate::testsuite::run_all(|| async { super::MemoryStore::new() }).await;
    }
}
