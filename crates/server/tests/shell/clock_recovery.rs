//! A store outage on a paused clock: while the store is out of reach the replica answers
//! from its view, holds writes and expires nothing; once the store answers again, what was
//! held is written back and expiry resumes after one more expiry period.

use std::time::Duration;

use islb_store::{MemoryStore, Store};

use crate::support::{Faulty, Setup, Shell, event, node};

#[tokio::test(start_paused = true)]
async fn an_outage_holds_writes_expires_nothing_and_recovery_gives_one_expiry_period() {
    let store = Faulty::new(MemoryStore::new());
    let mut shell = Shell::start(store.clone(), Setup::default());
    let _alive = shell.keep_alive(vec![node("signal", "alive")]);
    let silent = node("signal", "silent");
    shell.send("save", &silent).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    store.set_down(true);
    // A write during the outage is answered from the view and held.
    assert!(shell.send("save", &node("signal", "joined")).await.success);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during: Vec<_> = shell.published("node.discovery.").iter().map(event).collect();
    assert!(during.iter().all(|(a, _)| a != "delete"), "nothing expires while the store is down: {during:?}");
    assert!(!shell.d.store_healthy());
    let listed: Vec<_> = shell.get("signal", &[]).await.into_iter().map(|n| n.nid).collect();
    assert!(listed.contains(&"joined".to_owned()) && listed.contains(&"silent".to_owned()), "{listed:?}");

    let back = shell.now();
    store.set_down(false);
    // The probe runs every 500 ms: within a second the held save is written back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(shell.d.store_healthy());
    let stored: Vec<_> = store.inner.load().await.unwrap().nodes.into_iter().map(|(n, _)| n.nid.clone()).collect();
    assert!(stored.contains(&"joined".to_owned()), "the held save was written back: {stored:?}");

    // Then one expiry period (2 s) of grace: the silent nodes expire once, after it.
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let (p, at) = shell.next("node.discovery.").await;
        let (action, nid) = event(&p);
        assert_ne!(nid, "alive", "the node that kept alive is never deleted");
        if action == "delete" {
            let after = back.until(at);
            assert!(
                after >= Duration::from_secs(2) && after <= Duration::from_millis(2_600),
                "{nid} deleted {after:?} after the store came back"
            );
            deleted.push(nid);
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["joined", "silent"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later: Vec<_> = shell.published("node.discovery.").iter().map(event).collect();
    assert!(later.iter().all(|(a, _)| a != "delete"), "one delete each: {later:?}");
    let stored: Vec<_> = store.inner.load().await.unwrap().nodes.into_iter().map(|(n, _)| n.nid.clone()).collect();
    assert_eq!(stored, ["alive"]);
}
