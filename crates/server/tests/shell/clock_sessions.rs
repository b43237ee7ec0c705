//! Session housekeeping on a paused clock: a drained node keeps its sessions until the
//! drain deadline and they move within one maintenance round after it; a session nobody
//! looks up for `session-ttl` is released.

use std::sync::Arc;
use std::time::Duration;

use islb_store::MemoryStore;

use crate::support::{Setup, Shell, get_request, node};

fn session_event(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).expect("session events are JSON")
}

#[tokio::test(start_paused = true)]
async fn a_drained_nodes_sessions_stay_until_the_deadline_then_move() {
    let mut shell = Shell::start(
        Arc::new(MemoryStore::new()),
        Setup { placed: &["rtc"], expire: Duration::from_secs(5), ..Setup::default() },
    );
    let _sfus = shell.keep_alive(vec![node("rtc", "sfu-a"), node("rtc", "sfu-b")]);
    tokio::task::yield_now().await;
    let first = shell.get("rtc", &[("sid", "room-1")]).await;
    assert_eq!(first.len(), 1);
    let (on, other) = if first[0].nid == "sfu-a" { ("sfu-a", "sfu-b") } else { ("sfu-b", "sfu-a") };

    let deadline = shell.now().plus(Duration::from_secs(30));
    shell.d.placement().drain(&format!("dc1.{on}").into(), Some(deadline)).await.expect("drained");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during: Vec<_> = shell.get("rtc", &[("sid", "room-1")]).await.into_iter().map(|n| n.nid).collect();
    assert_eq!(during, [on], "an existing session stays on its draining node until the deadline");
    let fresh: Vec<_> = shell.get("rtc", &[("sid", "room-2")]).await.into_iter().map(|n| n.nid).collect();
    assert_eq!(fresh, [other], "a new session avoids the draining node");

    let (moved, at) = shell.next("islb.session.room-1").await;
    let moved = session_event(&moved.payload);
    assert_eq!(moved["reason"], "drain");
    assert_eq!(moved["from"], on);
    assert_eq!(moved["to"], other);
    assert!(
        at >= deadline && at <= deadline.plus(Duration::from_millis(1_100)),
        "moved {} ms after the deadline",
        at.as_ms() as i64 - deadline.as_ms() as i64
    );
    let after: Vec<_> = shell.get("rtc", &[("sid", "room-1")]).await.into_iter().map(|n| n.nid).collect();
    assert_eq!(after, [other]);
}

#[tokio::test(start_paused = true)]
async fn a_session_not_looked_up_for_its_ttl_is_released_and_one_in_use_is_kept() {
    let ttl = Duration::from_secs(20);
    let mut shell = Shell::start(
        Arc::new(MemoryStore::new()),
        Setup { placed: &["rtc"], expire: Duration::from_secs(5), session_ttl: ttl, ..Setup::default() },
    );
    let _sfus = shell.keep_alive(vec![node("rtc", "sfu-a")]);
    tokio::task::yield_now().await;
    let placed_at = shell.now();
    assert_eq!(shell.get("rtc", &[("sid", "idle-room")]).await.len(), 1);
    assert_eq!(shell.get("rtc", &[("sid", "busy-room")]).await.len(), 1);
    let busy = {
        let (d, get) = (shell.d.clone(), get_request("rtc", &[("sid", "busy-room")]));
        tokio::spawn(async move {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                d.process(&get).await;
            }
        })
    };
    let (released, at) = shell.next("islb.session.").await;
    let released = session_event(&released.payload);
    assert_eq!((released["sid"].as_str(), released["reason"].as_str()), (Some("idle-room"), Some("idle")));
    assert!(released["to"].is_null());
    // Looked for every tenth of the TTL: released between the TTL and the TTL plus a sweep
    // interval plus a maintenance round.
    let after = placed_at.until(at);
    assert!(after >= ttl && after <= ttl + ttl / 10 + Duration::from_millis(1_100), "released after {after:?}");
    busy.await.unwrap();
    let more: Vec<_> = shell.published("islb.session.");
    assert!(more.is_empty(), "the session in use stays: {more:?}");
    assert_eq!(shell.d.sessions(None).iter().map(|s| s.sid.to_string()).collect::<Vec<_>>(), ["busy-room"]);
}

#[tokio::test(start_paused = true)]
async fn past_max_sessions_the_least_recently_used_are_released_and_counted() {
    let mut shell = Shell::start(
        Arc::new(MemoryStore::new()),
        Setup { placed: &["rtc"], expire: Duration::from_secs(5), max_sessions: 10, ..Setup::default() },
    );
    let _sfus = shell.keep_alive(vec![node("rtc", "sfu-a"), node("rtc", "sfu-b")]);
    tokio::task::yield_now().await;
    for i in 0..30 {
        assert_eq!(shell.get("rtc", &[("sid", &format!("room-{i}"))]).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first room is looked up again: it is in use.
    assert_eq!(shell.get("rtc", &[("sid", "room-0")]).await.len(), 1);
    let mut evicted = Vec::new();
    while evicted.len() < 20 {
        let (p, _) = shell.next("islb.session.").await;
        let e = session_event(&p.payload);
        assert_eq!(e["reason"], "evicted", "{e}");
        assert!(e["to"].is_null());
        evicted.push(e["sid"].as_str().unwrap().to_owned());
    }
    evicted.sort_by_key(|s| s[5..].parse::<u32>().unwrap());
    let oldest: Vec<String> = (1..=20).map(|i| format!("room-{i}")).collect();
    assert_eq!(evicted, oldest, "the least recently used go");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(shell.published("islb.session.").is_empty(), "within the bound: nothing more goes");
    let mut kept: Vec<String> = shell.d.sessions(None).iter().map(|s| s.sid.to_string()).collect();
    kept.sort_by_key(|s| s[5..].parse::<u32>().unwrap());
    let want: Vec<String> = std::iter::once(0).chain(21..30).map(|i| format!("room-{i}")).collect();
    assert_eq!(kept, want);
}
