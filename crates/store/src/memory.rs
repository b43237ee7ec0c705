//! The embedded store: a map in this process, behind a mutex held for microseconds and
//! never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use islb_core::{NodeKey, Timestamp, Verdict};
use islb_gob::Node;

use crate::{Claim, Store, StoreError};

/// Nodes and deadlines in memory: the default store of a single islb.
#[derive(Debug, Default)]
pub struct MemoryStore {
    nodes: Mutex<HashMap<NodeKey, (Arc<Node>, Timestamp)>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn nodes(&self) -> MutexGuard<'_, HashMap<NodeKey, (Arc<Node>, Timestamp)>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is
        // a single insert or remove), so a poisoned lock is still good to use.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
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
        let key: NodeKey = node.id().into();
        let mut nodes = self.nodes();
        Ok(match nodes.get_mut(&key) {
            None => {
                nodes.insert(key, (node, deadline));
                Verdict::Created
            }
            Some((old, d)) => {
                *d = (*d).max(deadline);
                if **old == *node {
                    Verdict::Unchanged
                } else {
                    *old = node;
                    Verdict::Changed
                }
            }
        })
    }

    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError> {
        let mut nodes = self.nodes();
        let mut unknown = Vec::new();
        for (key, deadline) in touches {
            match nodes.get_mut(key) {
                Some((_, d)) => *d = (*d).max(*deadline),
                None => unknown.push(key.clone()),
            }
        }
        Ok(unknown)
    }

    async fn delete_node(&self, key: &str) -> Result<Option<Arc<Node>>, StoreError> {
        Ok(self.nodes().remove(key).map(|(n, _)| n))
    }

    async fn claim_expired(&self, key: &str, now: Timestamp) -> Result<Claim, StoreError> {
        let mut nodes = self.nodes();
        Ok(match nodes.get(key) {
            None => Claim::Gone,
            Some((_, d)) if *d > now => Claim::NotDue(*d),
            Some(_) => Claim::Expired(nodes.remove(key).expect("present").0),
        })
    }

    async fn load_nodes(&self) -> Result<Vec<(Arc<Node>, Timestamp)>, StoreError> {
        Ok(self.nodes().values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_meets_the_contract() {
        crate::testsuite::run_all(|| async { super::MemoryStore::new() }).await;
    }
}
