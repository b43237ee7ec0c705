//! Expiry on a paused clock: a silent node's `delete` goes out exactly `expire` after its
//! last keep-alive; a node that keeps alive is never expired.

use std::time::Duration;

use islb_store::MemoryStore;

use crate::support::{Setup, Shell, event, node};

#[tokio::test(start_paused = true)]
async fn a_silent_node_is_deleted_at_its_deadline_and_a_live_one_never() {
    let mut shell = Shell::start(std::sync::Arc::new(MemoryStore::new()), Setup::default());
    let _alive = shell.keep_alive(vec![node("signal", "live")]);
    let silent = node("signal", "silent");
    assert!(shell.send("save", &silent).await.success);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(shell.send("update", &silent).await.success);
    }
    let last = shell.now();
    let (saved, _) = shell.next("node.discovery.signal.dc1.silent").await;
    assert_eq!(event(&saved).0, "save", "a keep-alive alone publishes nothing");
    let (deleted, at) = shell.next("node.discovery.signal.dc1.silent").await;
    assert_eq!(event(&deleted).0, "delete");
    let late = at.as_ms() as i64 - last.plus(Duration::from_secs(2)).as_ms() as i64;
    assert!((0..=2).contains(&late), "the delete came {late} ms after the deadline");

    // A minute later, the node that kept alive is still listed and was never deleted.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let events: Vec<_> = shell.published("node.discovery.").iter().map(event).collect();
    assert!(events.iter().all(|(a, _)| a != "delete"), "{events:?}");
    let listed: Vec<_> = shell.get("signal", &[]).await.into_iter().map(|n| n.nid).collect();
    assert_eq!(listed, ["live"]);
}

#[tokio::test(start_paused = true)]
async fn a_node_saved_again_after_its_delete_is_announced_again() {
    let mut shell = Shell::start(std::sync::Arc::new(MemoryStore::new()), Setup::default());
    let n = node("signal", "comeback");
    shell.send("save", &n).await;
    let (first, _) = shell.next("node.discovery.").await;
    assert_eq!(event(&first).0, "save");
    let (gone, _) = shell.next("node.discovery.").await;
    assert_eq!(event(&gone).0, "delete");
    shell.send("update", &n).await;
    let (back, _) = shell.next("node.discovery.").await;
    assert_eq!(event(&back).0, "save", "a keep-alive of an expired node brings it back with a save");
}

/// A NATS outage longer than `expire`: nothing expires while the link is lost, and after it
/// is back every node has one full period to get a keep-alive through. The node that does
/// sees no delete; the one that stays silent gets exactly one, one period after the return.
#[tokio::test(start_paused = true)]
async fn after_a_nats_outage_nodes_get_one_period_and_only_the_silent_are_deleted() {
    let mut shell = Shell::start(std::sync::Arc::new(MemoryStore::new()), Setup::default());
    let (live, silent) = (node("signal", "live"), node("signal", "silent"));
    for n in [&live, &silent] {
        assert!(shell.send("save", n).await.success);
        let (saved, _) = shell.next("node.discovery.").await;
        assert_eq!(event(&saved), ("save".into(), n.nid.clone()));
    }
    shell.d.link_lost();
    // Three expiry periods without a keep-alive getting through.
    tokio::time::sleep(Duration::from_secs(6)).await;
    shell.d.link_back();
    let back = shell.now();
    // The live node's keep-alives resume 1.5 s after the return (a Go client's reconnect).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let alive = shell.keep_alive(vec![live.clone()]);
    let (deleted, at) = shell.next("node.discovery.signal.dc1.").await;
    assert_eq!(event(&deleted), ("delete".into(), "silent".into()));
    let late = at.as_ms() as i64 - back.plus(Duration::from_secs(2)).as_ms() as i64;
    assert!((0..=2).contains(&late), "the silent node's delete came {late} ms after the grace");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let deletes: Vec<_> = shell.published("node.discovery.").iter().map(event).filter(|(a, _)| a == "delete").collect();
    assert!(deletes.is_empty(), "no delete for the node that kept alive, no second one: {deletes:?}");
    alive.cancel();
}
