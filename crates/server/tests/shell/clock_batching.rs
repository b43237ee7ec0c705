//! Keep-alive batching on a paused clock: a keep-alive is answered at once and its
//! deadline reaches the store with the next batch (every 200 ms), not before.

use std::sync::Arc;
use std::time::Duration;

use islb_core::Timestamp;
use islb_server::discovery::FLUSH_INTERVAL;
use islb_store::{MemoryStore, Store};

use crate::support::{Setup, Shell, node};

async fn stored_deadline(store: &MemoryStore, nid: &str) -> Option<Timestamp> {
    store.load().await.unwrap().nodes.into_iter().find(|(n, _)| n.nid == nid).map(|(_, d)| d)
}

#[tokio::test(start_paused = true)]
async fn keep_alive_deadlines_reach_the_store_in_the_next_batch() {
    let store = Arc::new(MemoryStore::new());
    let shell = Shell::start(store.clone(), Setup::default());
    let nodes: Vec<_> = (0..50).map(|i| node("signal", &format!("sig-{i}"))).collect();
    for n in &nodes {
        shell.send("save", n).await;
    }
    let saved = stored_deadline(&store, "sig-7").await.expect("a save is written at once");
    assert_eq!(saved, shell.now().plus(Duration::from_secs(2)));

    tokio::time::sleep(Duration::from_millis(750)).await;
    for n in &nodes {
        assert!(shell.send("update", n).await.success);
    }
    let want = shell.now().plus(Duration::from_secs(2));
    assert_eq!(stored_deadline(&store, "sig-7").await, Some(saved), "not written before the batch");
    tokio::time::sleep(FLUSH_INTERVAL + Duration::from_millis(1)).await;
    for n in &nodes {
        assert_eq!(stored_deadline(&store, &n.nid).await, Some(want), "{} written with the batch", n.nid);
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_deleted_before_its_batch_is_not_written_back() {
    let store = Arc::new(MemoryStore::new());
    let shell = Shell::start(store.clone(), Setup::default());
    let n = node("signal", "brief");
    shell.send("save", &n).await;
    shell.send("update", &n).await;
    shell.send("delete", &n).await;
    tokio::time::sleep(FLUSH_INTERVAL * 3).await;
    assert_eq!(stored_deadline(&store, "brief").await, None);
    assert!(shell.get("signal", &[]).await.is_empty());
}
