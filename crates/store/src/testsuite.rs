//! The contract every [`Store`] backend must meet. A backend's tests call [`run_all`] with
//! a factory that gives a fresh, empty store each time; shared backends (several islb
//! processes on one store) also call [`run_shared`] with a factory of two handles on one
//! fresh store.

use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use islb_core::{NodeKey, Session, Timestamp, Verdict};
use islb_gob::{Node, Value};

use crate::{Change, Changes, Claim, SessionClaim, Store, StreamKey};

const T0: Timestamp = Timestamp::from_ms(1_700_000_000_000);

fn node(nid: &str) -> Arc<Node> {
    Arc::new(Node { dc: "dc1".into(), service: "rtc".into(), nid: nid.into(), ..Node::default() })
}

fn key(nid: &str) -> NodeKey {
    format!("dc1.{nid}").into()
}

async fn deadline_of(s: &impl Store, nid: &str) -> Option<Timestamp> {
    s.load().await.unwrap().nodes.iter().find(|(n, _)| n.nid == nid).map(|(_, d)| *d)
}

/// Runs every contract test, each on a fresh store from `make`.
pub async fn run_all<S, F, Fut>(make: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    put_reports_created_changed_unchanged(make().await).await;
    deadlines_never_move_back(make().await).await;
    touch_reports_unknown_nodes(make().await).await;
    delete_returns_the_node_once(make().await).await;
    expiry_claims_respect_deadlines(make().await).await;
    node_data_round_trips_with_go_types(make().await).await;
    many_nodes_round_trip(make().await).await;
    concurrent_claims_have_one_winner(Arc::new(make().await)).await;
    concurrent_puts_have_one_creator(Arc::new(make().await)).await;
    sessions_stick_to_live_nodes(make().await).await;
    sessions_move_when_their_node_is_gone_or_drained_past_its_deadline(make().await).await;
    session_moves_are_fenced_by_version_and_idle_time(make().await).await;
    concurrent_session_claims_agree(Arc::new(make().await)).await;
    stream_records_use_ions_key_shape(make().await).await;
}

fn session(sid: &str, nid: &str, version: u64, used: Timestamp) -> Session {
    Session { sid: sid.into(), node: key(nid), version, used }
}

async fn sessions_stick_to_live_nodes(s: impl Store) {
    s.put_node(node("a"), T0.plus_ms(60_000)).await.unwrap();
    s.put_node(node("b"), T0.plus_ms(60_000)).await.unwrap();
    assert_eq!(
        s.claim_session("room", &key("a"), T0).await.unwrap(),
        SessionClaim::Placed(session("room", "a", 1, T0))
    );
    let again = s.claim_session("room", &key("b"), T0.plus_ms(5)).await.unwrap();
    assert_eq!(
        again,
        SessionClaim::Existing(session("room", "a", 1, T0.plus_ms(5))),
        "affinity: the candidate is ignored"
    );
    assert_eq!(s.claim_session("x", &key("gone"), T0).await.unwrap(), SessionClaim::CandidateGone);
    let snap = s.load().await.unwrap();
    assert_eq!(snap.sessions, vec![session("room", "a", 1, T0.plus_ms(5))]);
}

async fn sessions_move_when_their_node_is_gone_or_drained_past_its_deadline(s: impl Store) {
    for nid in ["a", "b", "c"] {
        s.put_node(node(nid), T0.plus_ms(60_000)).await.unwrap();
    }
    s.claim_session("room", &key("a"), T0).await.unwrap();
    s.delete_node("dc1.a").await.unwrap();
    assert_eq!(
        s.claim_session("room", &key("b"), T0).await.unwrap(),
        SessionClaim::Moved { session: session("room", "b", 2, T0), from: key("a") }
    );
    s.set_drain(&key("b"), Some(T0.plus_ms(100))).await.unwrap();
    assert!(matches!(s.claim_session("room", &key("c"), T0.plus_ms(99)).await.unwrap(), SessionClaim::Existing(_)));
    assert_eq!(
        s.claim_session("room", &key("c"), T0.plus_ms(100)).await.unwrap(),
        SessionClaim::Moved { session: session("room", "c", 3, T0.plus_ms(100)), from: key("b") }
    );
    let snap = s.load().await.unwrap();
    assert_eq!(snap.drains, vec![(key("b"), Some(T0.plus_ms(100)))]);
    assert!(s.clear_drain(&key("b")).await.unwrap());
    assert!(!s.clear_drain(&key("b")).await.unwrap());
    s.set_drain(&key("c"), None).await.unwrap();
    assert_eq!(s.load().await.unwrap().drains, vec![(key("c"), None)]);
}

async fn session_moves_are_fenced_by_version_and_idle_time(s: impl Store) {
    s.put_node(node("a"), T0.plus_ms(60_000)).await.unwrap();
    s.put_node(node("b"), T0.plus_ms(60_000)).await.unwrap();
    s.claim_session("room", &key("a"), T0).await.unwrap();
    assert_eq!(s.move_session("room", 7, Some(&key("b")), None, T0).await.unwrap(), None, "stale version");
    assert_eq!(s.move_session("room", 1, Some(&key("b")), None, T0).await.unwrap(), Some(session("room", "b", 2, T0)));
    assert_eq!(s.move_session("room", 1, Some(&key("a")), None, T0).await.unwrap(), None, "the version moved on");
    s.touch_sessions(&[("room".into(), T0.plus_ms(50)), ("nobody".into(), T0)]).await.unwrap();
    assert_eq!(s.move_session("room", 2, None, Some(T0.plus_ms(50)), T0).await.unwrap(), None, "used since: not idle");
    assert_eq!(
        s.move_session("room", 2, None, Some(T0.plus_ms(51)), T0).await.unwrap(),
        Some(session("room", "b", 2, T0.plus_ms(50))),
        "idle: released"
    );
    assert!(s.load().await.unwrap().sessions.is_empty());
    assert_eq!(s.move_session("nobody", 1, None, None, T0).await.unwrap(), None);
}

async fn concurrent_session_claims_agree(s: Arc<impl Store>) {
    for nid in ["a", "b", "c", "d"] {
        s.put_node(node(nid), T0.plus_ms(60_000)).await.unwrap();
    }
    for round in 0..20 {
        let sid = format!("room-{round}");
        let claims = ["a", "b", "c", "d"].map(|nid| {
            let s = s.clone();
            let sid = sid.clone();
            async move { s.claim_session(&sid, &key(nid), T0).await.unwrap() }
        });
        let results = futures::future::join_all(claims).await;
        let nodes: std::collections::BTreeSet<_> = results
            .iter()
            .map(|c| match c {
                SessionClaim::Placed(s) | SessionClaim::Existing(s) | SessionClaim::Moved { session: s, .. } => {
                    s.node.clone()
                }
                SessionClaim::CandidateGone => panic!("all candidates live"),
            })
            .collect();
        assert_eq!(nodes.len(), 1, "round {round}: {results:?}");
        assert_eq!(results.iter().filter(|c| matches!(c, SessionClaim::Placed(_))).count(), 1);
    }
}

async fn stream_records_use_ions_key_shape(s: impl Store) {
    let k1 = StreamKey { dc: "dc1".into(), nid: "sfu-1".into(), sid: "room1".into(), uid: "peer1".into() };
    let k2 = StreamKey { uid: "peer2".into(), ..k1.clone() };
    let other = StreamKey { sid: "room2".into(), ..k1.clone() };
    assert_eq!(k1.redis_key(), "dc1/sfu-1/room1/peer1");
    assert_eq!(StreamKey::parse("dc1/sfu-1/room1/peer1"), Some(k1.clone()));
    let ttl = Duration::from_secs(60);
    s.put_stream(&k1, r#"[{"id":"s1"}]"#, ttl).await.unwrap();
    s.put_stream(&k2, r#"[{"id":"s2"}]"#, ttl).await.unwrap();
    s.put_stream(&other, "[]", ttl).await.unwrap();
    s.put_stream(&k1, r#"[{"id":"s1b"}]"#, ttl).await.unwrap();
    let mut got = s.streams_of("room1").await.unwrap();
    got.sort();
    assert_eq!(got, vec![(k1.clone(), r#"[{"id":"s1b"}]"#.to_owned()), (k2.clone(), r#"[{"id":"s2"}]"#.to_owned())]);
    assert!(s.delete_stream(&k1).await.unwrap());
    assert!(!s.delete_stream(&k1).await.unwrap());
    assert_eq!(s.streams_of("room1").await.unwrap().len(), 1);
    s.put_stream(&k1, "[]", Duration::from_millis(1)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while s.streams_of("room1").await.unwrap().iter().any(|(k, _)| *k == k1) {
        assert!(std::time::Instant::now() < deadline, "expired records are gone");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn put_reports_created_changed_unchanged(s: impl Store) {
    s.ping().await.expect("ping");
    assert_eq!(s.put_node(node("a"), T0).await.unwrap(), Verdict::Created);
    assert_eq!(s.put_node(node("a"), T0.plus_ms(1)).await.unwrap(), Verdict::Unchanged);
    let mut changed = (*node("a")).clone();
    changed.rpc.addr = "nats://10.0.0.1:4222".into();
    assert_eq!(s.put_node(Arc::new(changed.clone()), T0).await.unwrap(), Verdict::Changed);
    let all = s.load().await.unwrap().nodes;
    assert_eq!(all.len(), 1);
    assert_eq!(*all[0].0, changed);
    assert_eq!(all[0].1, T0.plus_ms(1));
}

async fn deadlines_never_move_back(s: impl Store) {
    s.put_node(node("a"), T0.plus_ms(5_000)).await.unwrap();
    s.put_node(node("a"), T0).await.unwrap();
    assert_eq!(deadline_of(&s, "a").await, Some(T0.plus_ms(5_000)), "put moved a deadline back");
    s.touch_nodes(&[(key("a"), T0.plus_ms(1_000))]).await.unwrap();
    assert_eq!(deadline_of(&s, "a").await, Some(T0.plus_ms(5_000)), "touch moved a deadline back");
    s.touch_nodes(&[(key("a"), T0.plus_ms(9_000))]).await.unwrap();
    assert_eq!(deadline_of(&s, "a").await, Some(T0.plus_ms(9_000)));
}

async fn touch_reports_unknown_nodes(s: impl Store) {
    s.put_node(node("a"), T0).await.unwrap();
    let unknown = s.touch_nodes(&[(key("a"), T0), (key("b"), T0), (key("c"), T0)]).await.unwrap();
    assert_eq!(unknown, vec![key("b"), key("c")]);
    assert!(s.touch_nodes(&[]).await.unwrap().is_empty());
    assert_eq!(s.load().await.unwrap().nodes.len(), 1, "touch creates nothing");
}

async fn delete_returns_the_node_once(s: impl Store) {
    s.put_node(node("a"), T0).await.unwrap();
    assert_eq!(s.delete_node("dc1.a").await.unwrap(), Some(node("a")));
    assert_eq!(s.delete_node("dc1.a").await.unwrap(), None);
    assert!(s.load().await.unwrap().nodes.is_empty());
    assert_eq!(s.put_node(node("a"), T0).await.unwrap(), Verdict::Created, "a deleted node comes back new");
}

async fn expiry_claims_respect_deadlines(s: impl Store) {
    s.put_node(node("a"), T0).await.unwrap();
    s.put_node(node("b"), T0.plus_ms(500)).await.unwrap();
    let claims = s.claim_expired(&[key("a"), key("b"), key("zz")], T0).await.unwrap();
    assert_eq!(claims, vec![Claim::Expired(node("a")), Claim::NotDue(T0.plus_ms(500)), Claim::Gone]);
    assert_eq!(s.claim_expired(&[key("a")], T0).await.unwrap(), vec![Claim::Gone]);
    assert_eq!(s.claim_expired(&[key("b")], T0.plus_ms(500)).await.unwrap(), vec![Claim::Expired(node("b"))]);
    assert!(s.load().await.unwrap().nodes.is_empty());
    assert!(s.claim_expired(&[], T0).await.unwrap().is_empty());
}

async fn node_data_round_trips_with_go_types(s: impl Store) {
    let mut n = (*node("typed")).clone();
    n.rpc.params.insert("k".into(), "v".into());
    n.extra_info.insert("i8".into(), Value::Int8(-5));
    n.extra_info.insert("u64".into(), Value::Uint64(u64::MAX));
    n.extra_info.insert("list".into(), Value::List(vec![Value::String("x".into()), Value::Float32(1.5)]));
    n.nid = "sfu-é中".into();
    s.put_node(Arc::new(n.clone()), T0).await.unwrap();
    assert_eq!(*s.load().await.unwrap().nodes[0].0, n);
}

async fn many_nodes_round_trip(s: impl Store) {
    for i in 0..500 {
        s.put_node(node(&format!("n{i}")), T0.plus_ms(i)).await.unwrap();
    }
    let touches: Vec<_> = (0..500).map(|i| (key(&format!("n{i}")), T0.plus_ms(10_000 + i))).collect();
    assert!(s.touch_nodes(&touches).await.unwrap().is_empty());
    let snap = s.load().await.unwrap();
    assert_eq!(snap.nodes.len(), 500);
    assert!(snap.nodes.iter().all(|(n, d)| *d == T0.plus_ms(10_000 + n.nid[1..].parse::<u64>().unwrap())));
    let keys: Vec<_> = (0..500).map(|i| key(&format!("n{i}"))).collect();
    let claims = s.claim_expired(&keys, T0.plus_ms(10_249)).await.unwrap();
    assert_eq!(claims.iter().filter(|c| matches!(c, Claim::Expired(_))).count(), 250);
}

async fn concurrent_claims_have_one_winner(s: Arc<impl Store>) {
    for round in 0..20 {
        let nid = format!("race-{round}");
        s.put_node(node(&nid), T0).await.unwrap();
        let claims = (0..8).map(|_| {
            let s = s.clone();
            let k = key(&nid);
            async move { s.claim_expired(&[k], T0.plus_ms(1)).await.unwrap().remove(0) }
        });
        let results = futures::future::join_all(claims).await;
        let winners = results.iter().filter(|c| matches!(c, Claim::Expired(_))).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
    }
}

async fn concurrent_puts_have_one_creator(s: Arc<impl Store>) {
    for round in 0..20 {
        let nid = format!("new-{round}");
        let puts = (0..8).map(|_| {
            let s = s.clone();
            let n = node(&nid);
            async move { s.put_node(n, T0).await.unwrap() }
        });
        let verdicts = futures::future::join_all(puts).await;
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Created).count(), 1, "round {round}: {verdicts:?}");
    }
}

/// Contract tests for stores several processes share: what one handle writes, the other
/// sees in its change feed; races between handles have one winner.
pub async fn run_shared<S, F, Fut>(make_pair: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = (S, S)>,
{
    changes_reach_the_other_handle(make_pair().await).await;
    races_between_handles_have_one_winner(make_pair().await).await;
}

async fn changes_reach_the_other_handle((a, b): (impl Store, impl Store)) {
    assert!(a.shared() && b.shared());
    let snap = b.load().await.unwrap();
    assert!(snap.nodes.is_empty());
    a.put_node(node("x"), T0).await.unwrap();
    a.put_node(node("x"), T0.plus_ms(5)).await.unwrap(); // unchanged: no change entry
    a.put_node(node("y"), T0).await.unwrap();
    a.delete_node("dc1.x").await.unwrap();
    let Changes::Since { changes, cursor } = b.changes(&snap.cursor).await.unwrap() else { panic!("gap") };
    assert_eq!(
        changes,
        vec![Change::Put(node("x"), T0), Change::Put(node("y"), T0), Change::Delete(key("x"))],
        "b sees a's writes in order"
    );
    let Changes::Since { changes, cursor: again } = b.changes(&cursor).await.unwrap() else { panic!("gap") };
    assert!(changes.is_empty());
    assert_eq!(again, cursor);
    a.claim_expired(&[key("y")], T0).await.unwrap();
    let Changes::Since { changes, cursor } = b.changes(&cursor).await.unwrap() else { panic!("gap") };
    assert_eq!(changes, vec![Change::Delete(key("y"))], "expiries are changes too");
    a.put_node(node("z"), T0.plus_ms(60_000)).await.unwrap();
    a.claim_session("room", &key("z"), T0).await.unwrap();
    a.set_drain(&key("z"), Some(T0.plus_ms(9))).await.unwrap();
    a.move_session("room", 1, None, None, T0).await.unwrap();
    a.clear_drain(&key("z")).await.unwrap();
    let Changes::Since { changes, .. } = b.changes(&cursor).await.unwrap() else { panic!("gap") };
    assert_eq!(
        changes,
        vec![
            Change::Put(node("z"), T0.plus_ms(60_000)),
            Change::Session(session("room", "z", 1, T0)),
            Change::Drain(key("z"), Some(T0.plus_ms(9))),
            Change::SessionGone("room".into()),
            Change::Undrain(key("z")),
        ],
        "sessions and drains are in the feed"
    );
    // A snapshot's cursor is current: nothing before it comes back.
    let snap = b.load().await.unwrap();
    let Changes::Since { changes, .. } = b.changes(&snap.cursor).await.unwrap() else { panic!("gap") };
    assert!(changes.is_empty());
}

async fn races_between_handles_have_one_winner((a, b): (impl Store, impl Store)) {
    assert_eq!(a.put_node(node("n"), T0).await.unwrap(), Verdict::Created);
    assert_eq!(b.put_node(node("n"), T0).await.unwrap(), Verdict::Unchanged, "b sees a's node");
    assert!(b.touch_nodes(&[(key("n"), T0.plus_ms(100))]).await.unwrap().is_empty());
    assert_eq!(a.claim_expired(&[key("n")], T0.plus_ms(50)).await.unwrap(), vec![Claim::NotDue(T0.plus_ms(100))]);
    let keys = [key("n")];
    let (ca, cb) = tokio::join!(a.claim_expired(&keys, T0.plus_ms(100)), b.claim_expired(&keys, T0.plus_ms(100)));
    let all = [ca.unwrap().remove(0), cb.unwrap().remove(0)];
    assert_eq!(all.iter().filter(|c| matches!(c, Claim::Expired(_))).count(), 1, "{all:?}");
}
