//! Storage: ion's islb.toml with Redis, a durable file store across restarts, replicas on
//! one Redis acting as one registry, and store outages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use islb_gob::{Message as _, Request};
use islb_testkit::{NatsServer, Proc, RedisServer, gopeer};

use crate::harness::{
    Islb, KeepAlive, Peer, Shared, conform, eventually, follow, ion_node, lookup, replicas, replicas_on, sfus,
};

/// Counts delete events per NID on `node.discovery.<service>.>`.
async fn count_deletes(
    nats: &NatsServer,
    service: &str,
) -> (Arc<std::sync::Mutex<HashMap<String, usize>>>, tokio::task::JoinHandle<()>) {
    let counts = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let c = counts.clone();
    let subject = format!("node.discovery.{service}.>");
    let task = follow(nats, &subject, &format!("node.discovery.{service}.islb-test-probe"), move |msg| {
        if let Ok(r) = Request::from_gob(&msg.payload)
            && r.action == "delete"
        {
            *c.lock().unwrap().entry(r.node.nid).or_insert(0) += 1;
        }
    })
    .await;
    (counts, task)
}

fn nids(nodes: &[islb_gob::Node]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.nid.clone()).collect()
}

#[test]
fn ions_own_islb_toml_starts_islb_on_redis() {
    let nats = NatsServer::start();
    // A password with URL characters, as ion accepts it (never logged, nor URL-encoded).
    islb_testkit::secret("p@ss:w/rd#1");
    islb_testkit::secret("p%40ss%3Aw%2Frd%231");
    let redis = RedisServer::start_with_password(Some("p@ss:w/rd#1"));
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    let toml = format!(
        "[global]\n# data center id\ndc = \"dc1\"\n\n[log]\nlevel = \"info\"\n\n[nats]\nurl = \"{}\"\n\n[redis]\naddrs = [\"{}\"]\npassword = \"p@ss:w/rd#1\"\ndb = 0\n",
        nats.url(),
        redis.addr()
    );
    std::fs::write(f.path(), toml).unwrap();
    let mut cmd = Command::new(crate::harness::ISLB);
    cmd.args(["-c", f.path().to_str().unwrap(), "--http-addr", "127.0.0.1:0", "--log-format", "json"]);
    let mut islb = Proc::spawn("islb", cmd);
    let line = islb.wait_for("\"store open\"", Duration::from_secs(20));
    assert!(line.contains("\"kind\":\"redis\""), "{line}");
    islb.wait_for("\"islb ready\"", Duration::from_secs(20));
    conform(&nats, None);
    assert_eq!(redis.command(&["EXISTS", "{islb}:nodes"]), "1", "nodes are in Redis");
    islb.signal(libc::SIGTERM);
    assert!(islb.wait_exit(Duration::from_secs(10)).success());
}

/// A restarted islb with a durable store still knows every node and every session; a
/// node that died while islb was down is expired once, one expiry period after the
/// restart at the latest, and the nodes that kept alive are not.
async fn restart_keeps_nodes_and_expires_the_dead(nats: &NatsServer, store: &[&str]) {
    const EXPIRE: Duration = Duration::from_secs(4);
    let mut args = vec!["--expire", "4s"];
    args.extend_from_slice(store);
    let mut islb = Islb::start(nats, &args);
    let peer = Peer::connect(nats).await;
    let _sfus = KeepAlive::start(nats, &sfus(3), Duration::from_secs(1)).await;
    let mut placed = BTreeMap::new();
    for i in 0..12 {
        let sid = format!("room-{i}");
        let node = lookup(&peer, &sid).await;
        assert_eq!(node.len(), 1, "{sid}: {node:?}");
        placed.insert(sid, format!("dc1.{}", node[0]));
    }
    // The living nodes keep alive all along (their keep-alives fail while islb is down).
    let alive: Vec<_> = (0..5).map(|i| ion_node("room", &format!("room-{i}"))).collect();
    let _alive = KeepAlive::start(nats, &alive, Duration::from_secs(1)).await;
    let dead = ion_node("room", "room-dead");
    let saved_at = Instant::now(); // islb saw it no earlier than this
    assert!(peer.send("save", &dead).await.success);
    assert!(islb.stop().success());
    let (deletes, _task) = count_deletes(nats, "room").await;
    let islb2 = Islb::start(nats, &args);
    let ready = Instant::now(); // islb was ready to speak no later than this
    // Every session is known at once, on the node it was placed on.
    let (_, body) = islb2.http_get("/v1/sessions");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let known: BTreeMap<String, String> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["sid"].as_str().unwrap().to_owned(), s["node"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(known, placed, "sessions across the restart");
    let listed = nids(&peer.get("room", &[]).await);
    for n in &alive {
        assert!(listed.contains(&n.nid), "{} forgotten across the restart: {listed:?}", n.nid);
    }
    for (sid, node) in &placed {
        assert_eq!(format!("dc1.{}", lookup(&peer, sid).await[0]), *node, "{sid} stays on its node");
    }
    let expired = || deletes.lock().unwrap().contains_key("room-dead");
    let why = || "the node that died while islb was down was never expired".to_owned();
    eventually(EXPIRE + Duration::from_secs(10), Duration::from_millis(20), expired, why).await;
    // Due at its deadline, or one expiry period after the restart, whichever is later.
    let (since_save, since_ready) = (saved_at.elapsed(), ready.elapsed());
    assert!(since_save >= EXPIRE, "expired {since_save:?} after its save (expire 4s)");
    assert!(since_ready < EXPIRE + Duration::from_secs(4), "expired {since_ready:?} after the restart (expire 4s)");
    assert!(!nids(&peer.get("room", &[]).await).contains("room-dead"));
    let deleted = deletes.lock().unwrap().clone();
    assert_eq!(deleted.len(), 1, "only the dead node: {deleted:?}");
    drop(islb2);
}

#[tokio::test]
async fn a_restarted_islb_with_a_file_store_keeps_nodes_and_expires_the_dead() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("islb.redb").display());
    restart_keeps_nodes_and_expires_the_dead(&nats, &["--store", &store]).await;
}

#[tokio::test]
async fn a_restarted_islb_with_jetstream_keeps_nodes_and_expires_the_dead() {
    let nats = NatsServer::start_jetstream();
    restart_keeps_nodes_and_expires_the_dead(&nats, &["--store", "jetstream", "--store-timeout", "5s"]).await;
}

#[tokio::test]
async fn a_restarted_islb_with_redis_keeps_nodes_and_expires_the_dead() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    restart_keeps_nodes_and_expires_the_dead(&nats, &["--store", &redis.url(), "--store-timeout", "5s"]).await;
}

/// Issue 12, the restart storm: after a downtime of twice `expire`, the nodes that kept
/// alive through it see no delete and no second save; the one that stayed silent gets
/// exactly one delete, after one expiry period.
async fn a_long_downtime_announces_only_the_silent_node(nats: &NatsServer, store: &[&str]) {
    const EXPIRE: Duration = Duration::from_secs(2);
    let mut args = vec!["--expire", "2s"];
    args.extend_from_slice(store);
    let mut islb = Islb::start(nats, &args);
    let alive: Vec<_> = (0..10).map(|i| ion_node("room", &format!("live-{i}"))).collect();
    let _keepalive = KeepAlive::start(nats, &alive, Duration::from_millis(500)).await;
    let peer = Peer::connect(nats).await;
    assert!(peer.send("save", &ion_node("room", "silent")).await.success);
    assert!(islb.stop().success());
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let _follow = follow(nats, "node.discovery.room.>", "node.discovery.room.islb-test-probe", move |msg| {
        if let Ok(r) = Request::from_gob(&msg.payload) {
            seen.lock().unwrap().push((r.action, r.node.nid));
        }
    })
    .await;
    tokio::time::sleep(EXPIRE * 2).await; // the downtime: every stored deadline passes
    let started = Instant::now();
    let _islb2 = Islb::start(nats, &args);
    let deleted = || events.lock().unwrap().iter().any(|(a, n)| a == "delete" && n == "silent");
    let why = || "the silent node was never announced gone".to_owned();
    eventually(EXPIRE + Duration::from_secs(10), Duration::from_millis(20), deleted, why).await;
    assert!(started.elapsed() >= EXPIRE, "the silent node had one expiry period after the restart");
    // Every live node keeps alive (every 500 ms) through a window longer than the grace.
    tokio::time::sleep(EXPIRE + Duration::from_secs(1)).await;
    let events = events.lock().unwrap().clone();
    assert_eq!(events, [("delete".to_owned(), "silent".to_owned())], "one delete, for the silent node only");
}

#[tokio::test]
async fn a_restart_after_a_long_downtime_with_a_file_store_announces_only_the_silent_node() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("islb.redb").display());
    a_long_downtime_announces_only_the_silent_node(&nats, &["--store", &store]).await;
}

#[tokio::test]
async fn a_restart_after_a_long_downtime_with_redis_announces_only_the_silent_node() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    a_long_downtime_announces_only_the_silent_node(&nats, &["--store", &redis.url(), "--store-timeout", "5s"]).await;
}

/// Issue 12: Redis unreachable at start. islb starts anyway, serves from memory, says it
/// is not ready (naming the store), and once Redis answers writes back what it accepted
/// and becomes ready; no node is announced gone meanwhile.
#[tokio::test]
async fn redis_down_at_start_is_served_through_and_gets_what_was_accepted() {
    let nats = NatsServer::start();
    let mut redis = RedisServer::start();
    redis.stop();
    let args = ["--store", &redis.url(), "--expire", "3s"];
    let islb = Islb::start(&nats, &args);
    let (code, body) = islb.http_get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store redis"), "readiness names the store: {body}");
    let (deletes, _task) = count_deletes(&nats, "room").await;
    let rooms: Vec<_> = (0..5).map(|i| ion_node("room", &format!("room-{i}"))).collect();
    let _keepalive = KeepAlive::start(&nats, &rooms, Duration::from_millis(500)).await;
    let peer = Peer::connect(&nats).await;
    assert_eq!(nids(&peer.get("room", &[]).await).len(), 5, "served from memory");
    tokio::time::sleep(Duration::from_secs(5)).await; // Redis stays down past the expiry
    redis.restart();
    islb.wait_ready(200, Duration::from_secs(15)).await;
    // What islb accepted reached Redis: a replica started now knows every room from it.
    let second = Islb::start(&nats, &args);
    let (_, body) = second.http_get("/v1/nodes?service=room");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["nodes"].as_array().map(Vec::len), Some(5), "{body}");
    assert!(islb.proc.output().contains("store out of reach at start"), "the log says what happened");
    let deleted = deletes.lock().unwrap().clone();
    assert!(deleted.is_empty(), "no room was announced gone: {deleted:?}");
}

fn conform_on_three_replicas(jetstream: bool) {
    let (nats, shared, _redis) = Shared::start(jetstream);
    // A short expiry keeps the conformance run short (the default is tested in registry.rs).
    let _cluster = replicas_on(&nats, &shared, 3, &["--expire", "3s"]);
    conform(&nats, Some("3s"));
}

#[test]
fn gopeer_conform_passes_against_three_replicas_on_one_redis() {
    conform_on_three_replicas(false);
}

#[test]
fn gopeer_conform_passes_against_three_replicas_on_jetstream() {
    conform_on_three_replicas(true);
}

#[tokio::test]
async fn three_replicas_answer_each_request_once_and_agree_on_every_node() {
    answer_once_and_agree(false).await;
}

#[tokio::test]
async fn three_replicas_on_jetstream_answer_each_request_once_and_agree_on_every_node() {
    answer_once_and_agree(true).await;
}

async fn answer_once_and_agree(jetstream: bool) {
    let (nats, shared, redis) = Shared::start(jetstream);
    let cluster = replicas_on(&nats, &shared, 3, &["--expire", "60s"]); // no keep-alives here
    // Every request answered exactly once: count replies to one request.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let req = Request { action: "get".into(), service: "*".into(), ..Request::default() };
    for _ in 0..20 {
        client.publish_with_reply("node.publish.*", inbox.clone(), req.to_gob().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let mut got = 0;
    while got < 20 {
        match tokio::time::timeout(Duration::from_secs(10), replies.next()).await {
            Ok(Some(_)) => got += 1,
            _ => panic!("only {got} of 20 requests answered"),
        }
    }
    // A second answer to any of them would come within this quiet window.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), replies.next()).await {
        got += 1;
    }
    assert_eq!(got, 20, "each request answered once");

    // Many clients save and delete their own nodes concurrently, through whichever replica.
    let clients: Vec<_> = futures::future::join_all((0..8).map(|_| Peer::connect(&nats))).await;
    let expected = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let ops = AtomicUsize::new(0);
    futures::future::join_all(clients.iter().enumerate().map(|(c, peer)| {
        let expected = expected.clone();
        let ops = &ops;
        async move {
            for round in 0..30 {
                let n = ion_node("signal", &format!("c{c}-n{}", round % 5));
                let action = if (round * 7 + c) % 3 == 0 { "delete" } else { "save" };
                assert!(peer.send(action, &n).await.success);
                ops.fetch_add(1, Ordering::Relaxed);
                let mut e = expected.lock().unwrap();
                if action == "save" {
                    e.insert(n.nid.clone());
                } else {
                    e.remove(&n.nid);
                }
            }
        }
    }))
    .await;
    assert_eq!(ops.load(Ordering::Relaxed), 240);
    let expected = expected.lock().unwrap().clone();
    // A get through any replica lists exactly the nodes that should be there, at once.
    for _ in 0..6 {
        let listed: BTreeSet<String> = nids(&clients[0].get("signal", &[]).await);
        assert_eq!(listed, expected);
    }
    // Every replica's own view agrees (after its next sync, once a second), and so does Redis.
    for islb in &cluster {
        let seen = || -> BTreeSet<String> {
            let v: serde_json::Value = serde_json::from_str(&islb.http_get("/v1/nodes?service=signal").1).unwrap();
            v["nodes"].as_array().unwrap().iter().map(|n| n["node"]["NID"].as_str().unwrap().to_owned()).collect()
        };
        let why = || format!("replica {}'s view: {:?}, want {expected:?}", islb.nid, seen());
        eventually(Duration::from_secs(10), Duration::from_millis(100), || seen() == expected, why).await;
    }
    let Some(redis) = redis else { return };
    let stored: BTreeSet<String> = redis
        .command(&["HKEYS", "{islb}:nodes"])
        .lines()
        .filter_map(|k| k.strip_prefix("dc1."))
        .filter(|k| k.starts_with('c'))
        .map(str::to_owned)
        .collect();
    assert_eq!(stored, expected, "Redis");
}

#[tokio::test]
async fn a_silent_node_is_deleted_once_cluster_wide() {
    silent_node_deleted_once(false).await;
}

#[tokio::test]
async fn a_silent_node_is_deleted_once_cluster_wide_on_jetstream() {
    silent_node_deleted_once(true).await;
}

async fn silent_node_deleted_once(jetstream: bool) {
    let (nats, shared, _redis) = Shared::start(jetstream);
    let _cluster = replicas_on(&nats, &shared, 3, &["--expire", "3s"]);
    let (deletes, _task) = count_deletes(&nats, "signal").await;
    let peer = Peer::connect(&nats).await;
    let nodes: Vec<_> = (0..40).map(|i| ion_node("signal", &format!("sig-{i}"))).collect();
    let round = |action: &'static str| {
        let peer = &peer;
        futures::future::join_all(nodes.iter().map(move |n| async move { peer.send(action, n).await.success }))
    };
    assert!(round("save").await.into_iter().all(|ok| ok));
    // Keep-alives through random replicas for a while, then silence.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(round("update").await.into_iter().all(|ok| ok));
    }
    let why = || format!("only {} of 40 expired", deletes.lock().unwrap().len());
    eventually(Duration::from_secs(15), Duration::from_millis(50), || deletes.lock().unwrap().len() >= 40, why).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await; // late duplicates would show now
    let counts = deletes.lock().unwrap().clone();
    assert!(counts.values().all(|c| *c == 1), "delete events per node: {counts:?}");
}

fn bench_update(nats: &NatsServer, secs: u32) -> Proc {
    let mut cmd = Command::new(gopeer());
    cmd.args(["bench-update", "-url", &nats.url(), "-n", "200", "-c", "4", "-d", &format!("{secs}s")]);
    Proc::spawn("gopeer-bench-update", cmd)
}

fn bench_errors(p: &Proc) -> (u64, u64) {
    let out = p.output();
    let line = out.lines().find(|l| l.starts_with("update:")).unwrap_or_else(|| panic!("no report: {out}"));
    let field = |k: &str| {
        line.split(&format!("{k}="))
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("requests"), field("errors"))
}

#[tokio::test]
async fn sigkill_of_a_replica_under_load_loses_no_node() {
    sigkill_under_load(false).await;
}

#[tokio::test]
async fn sigkill_of_a_replica_on_jetstream_under_load_loses_no_node() {
    sigkill_under_load(true).await;
}

async fn sigkill_under_load(jetstream: bool) {
    let (nats, shared, _redis) = Shared::start(jetstream);
    let mut cluster = replicas_on(&nats, &shared, 3, &[]);
    let mut load = bench_update(&nats, 8);
    let peer = Peer::connect(&nats).await;
    let end = Instant::now() + Duration::from_secs(10);
    while peer.get("rtc", &[("islb-all", islb_gob::Value::Bool(true))]).await.len() < 200 {
        assert!(Instant::now() < end, "the load's 200 SFUs never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // under load for a while before the kill
    // Sessions placed on the load's SFUs through all three replicas.
    let mut placed = BTreeMap::new();
    for i in 0..30 {
        let sid = format!("room-{i}");
        let node = lookup(&peer, &sid).await;
        assert_eq!(node.len(), 1, "{sid}: {node:?}");
        placed.insert(sid, node);
    }
    cluster[0].proc.kill();
    // The survivors answer every session where it was (requests routed to the dead
    // replica in the instant before NATS noticed are retried).
    for (sid, node) in &placed {
        let mut answer = None;
        for _ in 0..3 {
            if let Some(nodes) = peer.try_get("rtc", &[("sid", islb_gob::Value::String(sid.clone()))]).await {
                answer = Some(nodes.into_iter().map(|n| n.nid).collect::<Vec<_>>());
                break;
            }
        }
        assert_eq!(answer.as_ref(), Some(node), "{sid} after the kill");
    }
    let load_done = load.wait_exit(Duration::from_secs(30));
    assert!(load_done.success());
    let (requests, errors) = bench_errors(&load);
    // Requests in flight to the killed replica time out; everything else is answered.
    assert!(errors < requests / 50 + 20, "{errors} errors of {requests}");
    let listed = peer.get("rtc", &[]).await;
    assert_eq!(listed.len(), 200, "every node survives the kill");
    assert!(cluster[1].http_get("/readyz").0 == 200 && cluster[2].http_get("/readyz").0 == 200);
}

#[tokio::test]
async fn redis_down_for_ten_seconds_under_load_expires_nothing_and_recovers() {
    let nats = NatsServer::start();
    let mut redis = RedisServer::start();
    let cluster = replicas(&nats, &redis, 2, &["--store-timeout", "500ms"]);
    let (deletes, _task) = count_deletes(&nats, "rtc").await;
    let mut load = bench_update(&nats, 18);
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.stop(); // a restart without persistence: the data is gone when it comes back
    for islb in &cluster {
        islb.wait_ready(503, Duration::from_secs(5)).await;
    }
    // islb keeps answering from what it knows, and accepts new nodes (which keep alive as
    // ion's do, through whichever replica).
    let peer = Peer::connect(&nats).await;
    let newcomer = ion_node("room", "room-during-outage");
    let started = Instant::now();
    assert!(peer.send("save", &newcomer).await.success);
    // Bounded by the 500 ms store timeout, not by the outage (slack for a loaded machine).
    assert!(started.elapsed() < Duration::from_secs(3), "a save during the outage took {:?}", started.elapsed());
    let keepalive = KeepAlive::start(&nats, &[newcomer], Duration::from_secs(1)).await;
    assert_eq!(peer.get("rtc", &[]).await.len(), 200);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    redis.restart();
    for islb in &cluster {
        islb.wait_ready(200, Duration::from_secs(10)).await;
    }
    assert!(load.wait_exit(Duration::from_secs(30)).success());
    let (requests, errors) = bench_errors(&load);
    assert_eq!(errors, 0, "no request failed or hung ({requests} requests)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deleted = deletes.lock().unwrap().clone();
    assert!(deleted.is_empty(), "nodes expired because of the outage: {deleted:?}");
    // Everything is back in Redis, the newcomer included.
    let stored: usize = redis.command(&["HLEN", "{islb}:nodes"]).parse().unwrap();
    assert!(stored > 200, "only {stored} nodes written back");
    assert!(nids(&peer.get("room", &[]).await).contains("room-during-outage"));
    assert_eq!(redis.command(&["HEXISTS", "{islb}:nodes", "dc1.room-during-outage"]), "1");
    drop(keepalive);
}

#[tokio::test]
async fn a_hanging_redis_bounds_every_request_and_readiness_follows() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let cluster = replicas(&nats, &redis, 1, &["--store-timeout", "300ms"]);
    let peer = Peer::connect(&nats).await;
    assert!(peer.send("save", &ion_node("signal", "before")).await.success);
    redis.pause();
    let started = Instant::now();
    assert!(peer.send("save", &ion_node("signal", "during")).await.success);
    // The 300 ms store timeout bounds it (a hang would be the Peer's 10 s), with slack.
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(nids(&peer.get("signal", &[]).await).len(), 2);
    cluster[0].wait_ready(503, Duration::from_secs(5)).await;
    redis.resume();
    cluster[0].wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(redis.command(&["HEXISTS", "{islb}:nodes", "dc1.during"]), "1", "the held write reached Redis");
}

/// Each replica's own view of `service` (what its gets answer from), by nid.
fn view(islb: &Islb, service: &str) -> BTreeSet<String> {
    let (_, body) = islb.http_get(&format!("/v1/nodes?service={service}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    nodes.iter().filter_map(|n| n["node"]["NID"].as_str().map(str::to_owned)).collect()
}

/// The worst day: three replicas, Redis frozen (SIGSTOP) for 8 s while nodes join
/// and keep alive and rooms are joined concurrently from several signal nodes.
#[tokio::test]
async fn three_replicas_ride_out_a_frozen_redis_without_split_rooms_false_deletes_or_second_saves() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let cluster = replicas(&nats, &redis, 3, &["--store-timeout", "500ms", "--expire", "3s"]);
    // Every save and delete event, per nid.
    let events = Arc::new(std::sync::Mutex::new(HashMap::<(String, String), usize>::new()));
    let seen = events.clone();
    let _events = follow(&nats, "node.discovery.*.>", "node.discovery.probe.islb-test-probe", move |msg| {
        if let Ok(r) = Request::from_gob(&msg.payload) {
            *seen.lock().unwrap().entry((r.action, r.node.nid)).or_insert(0) += 1;
        }
    })
    .await;
    let signal = |prefix: &str, n: usize| -> Vec<islb_gob::Node> {
        (0..n).map(|i| ion_node("signal", &format!("{prefix}-{i}"))).collect()
    };
    let (old_sfus, old_signals) = (sfus(4), signal("sig", 3));
    let _ka_old =
        KeepAlive::start(&nats, &[old_sfus.clone(), old_signals.clone()].concat(), Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // every replica has caught up

    redis.pause();
    let frozen = Instant::now();
    // Four signal nodes join 20 new rooms over and over, through whichever replica, from
    // the moment Redis froze (before the replicas notice) until 2 s after it is back.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = Arc::new(std::sync::Mutex::new(BTreeMap::<String, BTreeSet<String>>::new()));
    let mut joiners = Vec::new();
    for s in 0..4 {
        let (peer, stop, answers) = (Peer::connect(&nats).await, stop.clone(), answers.clone());
        joiners.push(tokio::spawn(async move {
            let mut i = s;
            while !stop.load(Ordering::Relaxed) {
                let room = format!("room-{}", (i * 7) % 20);
                let got = lookup(&peer, &room).await;
                assert_eq!(got.len(), 1, "{room}: {got:?}");
                answers.lock().unwrap().entry(room).or_default().insert(got[0].clone());
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Nodes join during the outage and keep alive through every replica.
    let (new_sfus, new_signals) = (vec![ion_node("rtc", "sfu-late")], signal("late", 10));
    let _ka_new =
        KeepAlive::start(&nats, &[new_sfus.clone(), new_signals.clone()].concat(), Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(frozen.elapsed())).await;
    redis.resume();
    let resumed = Instant::now();

    // Every replica gives the same complete answer soon after.
    let want = |nodes: &[&[islb_gob::Node]]| -> BTreeSet<String> {
        nodes.iter().flat_map(|n| n.iter().map(|n| n.nid.clone())).collect()
    };
    let (want_rtc, want_signal) = (want(&[&old_sfus, &new_sfus]), want(&[&old_signals, &new_signals]));
    let agreed = || cluster.iter().all(|r| view(r, "rtc") == want_rtc && view(r, "signal") == want_signal);
    let why = || {
        let views: Vec<_> = cluster.iter().map(|r| (view(r, "rtc"), view(r, "signal"))).collect();
        format!("views {views:?}, want {want_rtc:?} and {want_signal:?}")
    };
    eventually(Duration::from_secs(10), Duration::from_millis(50), agreed, why).await;
    let converged = resumed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await; // rooms go on being joined after
    stop.store(true, Ordering::Relaxed);
    for j in joiners {
        j.await.unwrap();
    }

    let split: Vec<_> =
        answers.lock().unwrap().iter().filter(|(_, n)| n.len() > 1).map(|(r, n)| format!("{r}: {n:?}")).collect();
    assert!(split.is_empty(), "rooms split across SFUs: {split:?}");
    assert_eq!(answers.lock().unwrap().len(), 20);
    let events = events.lock().unwrap().clone();
    let deletes: Vec<_> = events.keys().filter(|(a, _)| a == "delete").collect();
    assert!(deletes.is_empty(), "false deletes: {deletes:?}");
    let repeated: Vec<_> = events.iter().filter(|((a, _), n)| a == "save" && **n > 1).collect();
    assert!(repeated.is_empty(), "second save announcements: {repeated:?}");
    for n in &new_signals {
        assert_eq!(events.get(&("save".into(), n.nid.clone())), Some(&1), "{} announced once", n.nid);
    }
    assert!(converged <= Duration::from_secs(2), "the replicas agreed {converged:?} after Redis came back");
}
