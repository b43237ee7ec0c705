//! The contract every [`Store`] backend must meet. A backend's tests call
//! [`run_all`] with a factory that gives a fresh, empty store each time.

use std::future::Future;
use std::sync::Arc;

use islb_core::{NodeKey, Timestamp, Verdict};
use islb_gob::{Node, Value};

use crate::{Claim, Store};

const T0: Timestamp = Timestamp::from_ms(1_700_000_000_000);

fn node(nid: &str) -> Arc<Node> {
    Arc::new(Node { dc: "dc1".into(), service: "rtc".into(), nid: nid.into(), ..Node::default() })
}

fn key(nid: &str) -> NodeKey {
    format!("dc1.{nid}").into()
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
    expiry_claims_are_exclusive_and_respect_deadlines(make().await).await;
    node_data_round_trips_with_go_types(make().await).await;
    concurrent_claims_have_one_winner(Arc::new(make().await)).await;
}

async fn put_reports_created_changed_unchanged(s: impl Store) {
    s.ping().await.expect("ping");
    assert_eq!(s.put_node(node("a"), T0).await.unwrap(), Verdict::Created);
    assert_eq!(s.put_node(node("a"), T0.plus_ms(1)).await.unwrap(), Verdict::Unchanged);
    let mut changed = (*node("a")).clone();
    changed.rpc.addr = "nats://10.0.0.1:4222".into();
    assert_eq!(s.put_node(Arc::new(changed.clone()), T0).await.unwrap(), Verdict::Changed);
    let all = s.load_nodes().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(*all[0].0, changed);
}

async fn deadlines_never_move_back(s: impl Store) {
    s.put_node(node("a"), T0.plus_ms(5_000)).await.unwrap();
    s.put_node(node("a"), T0).await.unwrap();
    assert_eq!(s.load_nodes().await.unwrap()[0].1, T0.plus_ms(5_000), "put moved a deadline back");
    s.touch_nodes(&[(key("a"), T0.plus_ms(1_000))]).await.unwrap();
    assert_eq!(s.load_nodes().await.unwrap()[0].1, T0.plus_ms(5_000), "touch moved a deadline back");
    s.touch_nodes(&[(key("a"), T0.plus_ms(9_000))]).await.unwrap();
    assert_eq!(s.load_nodes().await.unwrap()[0].1, T0.plus_ms(9_000));
}

async fn touch_reports_unknown_nodes(s: impl Store) {
    s.put_node(node("a"), T0).await.unwrap();
    let unknown = s.touch_nodes(&[(key("a"), T0), (key("b"), T0), (key("c"), T0)]).await.unwrap();
    assert_eq!(unknown, vec![key("b"), key("c")]);
    assert!(s.touch_nodes(&[]).await.unwrap().is_empty());
}

async fn delete_returns_the_node_once(s: impl Store) {
    s.put_node(node("a"), T0).await.unwrap();
    assert_eq!(s.delete_node("dc1.a").await.unwrap(), Some(node("a")));
    assert_eq!(s.delete_node("dc1.a").await.unwrap(), None);
    assert!(s.load_nodes().await.unwrap().is_empty());
}

async fn expiry_claims_are_exclusive_and_respect_deadlines(s: impl Store) {
    s.put_node(node("a"), T0).await.unwrap();
    assert_eq!(s.claim_expired("dc1.a", T0).await.unwrap(), Claim::Expired(node("a")));
    assert_eq!(s.claim_expired("dc1.a", T0).await.unwrap(), Claim::Gone);
    s.put_node(node("b"), T0.plus_ms(500)).await.unwrap();
    assert_eq!(s.claim_expired("dc1.b", T0).await.unwrap(), Claim::NotDue(T0.plus_ms(500)));
    assert_eq!(s.claim_expired("dc1.b", T0.plus_ms(500)).await.unwrap(), Claim::Expired(node("b")));
}

async fn node_data_round_trips_with_go_types(s: impl Store) {
    let mut n = (*node("typed")).clone();
    n.rpc.params.insert("k".into(), "v".into());
    n.extra_info.insert("i8".into(), Value::Int8(-5));
    n.extra_info.insert("u64".into(), Value::Uint64(u64::MAX));
    n.extra_info.insert("list".into(), Value::List(vec![Value::String("x".into()), Value::Float32(1.5)]));
    s.put_node(Arc::new(n.clone()), T0).await.unwrap();
    assert_eq!(*s.load_nodes().await.unwrap()[0].0, n);
}

async fn concurrent_claims_have_one_winner(s: Arc<impl Store>) {
    for round in 0..20 {
        let nid = format!("race-{round}");
        s.put_node(node(&nid), T0).await.unwrap();
        let claims = (0..8).map(|_| {
            let s = s.clone();
            let k = format!("dc1.{nid}");
            async move { s.claim_expired(&k, T0.plus_ms(1)).await.unwrap() }
        });
        let results = futures::future::join_all(claims).await;
        let winners = results.iter().filter(|c| matches!(c, Claim::Expired(_))).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
    }
}
