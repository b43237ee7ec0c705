//! Replicas on JetStream KV (`--store jetstream`) across a three-server JetStream cluster:
//! one server killed mid-run and restarted while nodes keep alive and rooms are joined.
//! (The single-server replica tests run on both shared stores in storage.rs and
//! placement.rs.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use islb_gob::{GetResponse, Message as _, Request, Value};
use islb_testkit::NatsServer;

use crate::harness::{Islb, KeepAlive, Peer, connect, eventually, follow, ion_node, sfus};

/// Save and delete events per NID of `service`, as any node sees them.
type Events = Arc<Mutex<HashMap<(String, String), usize>>>;

async fn count_events(nats: &NatsServer, service: &str) -> (Events, tokio::task::JoinHandle<()>) {
    let counts: Events = Arc::default();
    let c = counts.clone();
    let subject = format!("node.discovery.{service}.>");
    let task = follow(nats, &subject, &format!("node.discovery.{service}.islb-test-probe"), move |msg| {
        if let Ok(r) = Request::from_gob(&msg.payload) {
            *c.lock().unwrap().entry((r.action, r.node.nid)).or_insert(0) += 1;
        }
    })
    .await;
    (counts, task)
}

/// A client as ion's signal has one: it waits 15 s for an answer.
async fn ion_client(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .request_timeout(Some(Duration::from_secs(15)))
        .connect(url)
        .await
        .expect("NATS connection")
}

/// A lookup as ion's signal makes it, with ion's 15 s client timeout: the nodes, or why not.
async fn lookup_within_15s(client: &async_nats::Client, sid: &str) -> Result<Vec<String>, String> {
    let mut req = Request { action: "get".into(), service: "rtc".into(), ..Request::default() };
    req.params.insert("sid".into(), Value::String(sid.into()));
    let fut = client.request("node.publish.rtc", req.to_gob().into());
    match tokio::time::timeout(Duration::from_secs(15), fut).await {
        Ok(Ok(msg)) => Ok(GetResponse::from_gob(&msg.payload)
            .map_err(|e| e.to_string())?
            .nodes
            .into_iter()
            .map(|n| n.nid)
            .collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 15 s".into()),
    }
}

#[tokio::test]
async fn a_jetstream_cluster_loses_a_server_mid_run_and_nothing_is_lost() {
    let mut cluster = NatsServer::jetstream_cluster(3);
    // Each replica first connected to a different server; the buckets on all three.
    // The default store timeout is 1 s; 2 s leaves room for a loaded machine while an
    // election is under way, and keeps every lookup well within ion's 15 s.
    let args = ["--store", "jetstream", "--store-replicas", "3", "--store-timeout", "2s", "--expire", "5s"];
    let replicas: Vec<Islb> = cluster.iter().map(|s| Islb::start(s, &args)).collect();
    // Debian's nats-server lets racing compare-and-sets through on R3 buckets: islb says so.
    let server = async_nats::connect(cluster[0].url()).await.unwrap().server_info().version;
    if islb_store_jetstream::cas_may_race(&server) {
        assert!(replicas[0].proc.output().contains("nats-io/nats-server#4320"), "no warning for {server}");
    }
    let (events, _task) = count_events(&cluster[0], "signal").await;
    let signals: Vec<_> = (0..6).map(|i| ion_node("signal", &format!("sig-{i}"))).collect();
    let _nodes = KeepAlive::start(&cluster[0], &[sfus(4), signals].concat(), Duration::from_secs(1)).await;
    let joiners = [ion_client(&cluster[0].url()).await, ion_client(&cluster[1].url()).await];
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Rooms joined all along, through two servers; server 3 is killed at 3 s and comes
    // back at 8 s.
    let mut placed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut failures = Vec::new();
    let start = Instant::now();
    // The fault on a clock of its own, whatever the lookups meanwhile wait for.
    let mut third = cluster.pop().expect("three servers");
    let fault = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(3));
        third.stop(); // SIGKILL
        std::thread::sleep(Duration::from_secs(5));
        third.restart();
        third
    });
    let mut round = 0usize;
    while start.elapsed() < Duration::from_secs(14) || !fault.is_finished() {
        let lookups = (0..8).map(|i| {
            let sid = format!("room-{}", (round * 8 + i) % 40);
            let client = &joiners[i % 2];
            async move { (sid.clone(), lookup_within_15s(client, &sid).await) }
        });
        for (sid, answer) in futures::future::join_all(lookups).await {
            match answer {
                Ok(nodes) if nodes.len() == 1 => {
                    placed.entry(sid).or_default().insert(nodes[0].clone());
                }
                other => failures.push(format!("{sid}: {other:?}")),
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let third = fault.await.expect("the server was killed and restarted");
    assert!(failures.is_empty(), "every lookup answered with one node within 15 s: {failures:?}");
    let split: Vec<_> = placed.iter().filter(|(_, nodes)| nodes.len() > 1).collect();
    assert!(split.is_empty(), "rooms on several SFUs: {split:?}");
    assert_eq!(placed.len(), 40);

    // No node lost, no false delete, no second save; every replica lists every node.
    let events = events.lock().unwrap().clone();
    let deletes: Vec<_> = events.keys().filter(|(a, _)| a == "delete").collect();
    assert!(deletes.is_empty(), "false deletes: {deletes:?}");
    let saves: Vec<_> = events.iter().filter(|((a, _), n)| a == "save" && **n > 1).collect();
    assert!(saves.is_empty(), "duplicate saves: {saves:?}");
    let want: BTreeSet<String> = (0..6).map(|i| format!("sig-{i}")).collect();
    for islb in &replicas {
        let seen = || -> BTreeSet<String> {
            let v: serde_json::Value = serde_json::from_str(&islb.http_get("/v1/nodes?service=signal").1).unwrap();
            v["nodes"].as_array().unwrap().iter().map(|n| n["node"]["NID"].as_str().unwrap().to_owned()).collect()
        };
        let why = || format!("replica {}'s view: {:?}", islb.nid, seen());
        eventually(Duration::from_secs(10), Duration::from_millis(100), || seen() == want, why).await;
        islb.wait_ready(200, Duration::from_secs(15)).await;
    }
    let peer = Peer { client: connect(&third.url()).await };
    let listed: BTreeSet<String> = peer.get("signal", &[]).await.into_iter().map(|n| n.nid).collect();
    assert_eq!(listed, want, "a get through the restarted server");
}
