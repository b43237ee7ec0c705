//! Session placement with unchanged Go clients: ion's signal node asks `get rtc` with the
//! call's metadata and uses the first node; islb makes that answer one node per session.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use islb_gob::Value;
use islb_testkit::{NatsServer, gopeer_run};

use crate::harness::{Islb, KeepAlive, Peer, eventually, follow, ion_node, islb_cli, lookup, run_islb, sfus};

/// Session events (`islb.session.>`), as JSON.
async fn session_events(nats: &NatsServer) -> (Arc<Mutex<Vec<serde_json::Value>>>, tokio::task::JoinHandle<()>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let task = follow(nats, "islb.session.>", "islb.session.islb-test-probe", move |msg| {
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).expect("session events are JSON");
        assert_eq!(msg.subject.as_str(), islb_core::subject::session_subject(v["sid"].as_str().unwrap()));
        e.lock().unwrap().push(v);
    })
    .await;
    (events, task)
}

#[tokio::test]
async fn ions_signal_logic_keeps_every_room_on_one_sfu_with_sid_headers_and_jwts() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &[]);
    let _sfus = KeepAlive::start(&nats, &sfus(4), Duration::from_secs(1)).await;
    for jwt in [false, true] {
        let url = nats.url();
        let mut args = vec!["signal-sim", "-url", url.as_str(), "-signals", "4", "-rooms", "20", "-calls", "400"];
        if jwt {
            args.push("-jwt");
        }
        let out = gopeer_run(&args, b"");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "signal-sim (jwt: {jwt}):\n{text}");
        assert!(text.contains("400 answered by the registry") && text.contains("0 of 20 rooms split"), "{text}");
    }
}

#[tokio::test]
async fn concurrent_lookups_on_three_replicas_agree_on_one_node_per_session_and_spread_evenly() {
    concurrent_lookups_agree(false).await;
}

#[tokio::test]
async fn concurrent_lookups_on_three_replicas_on_jetstream_agree_on_one_node_per_session() {
    concurrent_lookups_agree(true).await;
}

async fn concurrent_lookups_agree(jetstream: bool) {
    let (nats, shared, _redis) = crate::harness::Shared::start(jetstream);
    let _cluster = crate::harness::replicas_on(&nats, &shared, 3, &[]);
    let _sfus = KeepAlive::start(&nats, &sfus(8), Duration::from_secs(1)).await;
    let peers: Vec<Peer> = futures::future::join_all((0..16).map(|_| Peer::connect(&nats))).await;
    let answers: Vec<(String, Vec<String>)> = futures::stream::iter((0..1000).map(|i| {
        let peer = &peers[i % peers.len()];
        let sid = format!("room-{}", (i * 37) % 100);
        async move { (sid.clone(), lookup(peer, &sid).await) }
    }))
    .buffer_unordered(64)
    .collect()
    .await;
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    for (sid, nodes) in &answers {
        assert_eq!(nodes.len(), 1, "a lookup with a session key answers exactly one node: {nodes:?}");
        let first = placed.entry(sid.clone()).or_insert_with(|| nodes[0].clone());
        assert_eq!(first, &nodes[0], "{sid} answered on two SFUs");
    }
    assert_eq!(placed.len(), 100);
    let mut per_node: HashMap<&String, usize> = HashMap::new();
    for n in placed.values() {
        *per_node.entry(n).or_default() += 1;
    }
    let max = *per_node.values().max().unwrap() as f64;
    let mean = 100.0 / 8.0;
    assert_eq!(per_node.len(), 8, "every SFU gets sessions: {per_node:?}");
    assert!(max / mean < 1.3, "max/mean {:.2}: {per_node:?}", max / mean);
}

#[tokio::test]
async fn when_an_sfu_dies_its_sessions_move_at_once_with_one_event_each() {
    let nats = NatsServer::start();
    const EXPIRE: Duration = Duration::from_secs(3);
    let _islb = Islb::start(&nats, &["--expire", "3s"]);
    let mut sfus_alive = KeepAlive::start(&nats, &sfus(3), Duration::from_millis(300)).await;
    let (events, _task) = session_events(&nats).await;
    let peer = Peer::connect(&nats).await;
    let mut before = BTreeMap::new();
    for i in 0..30 {
        let sid = format!("room-{i}");
        before.insert(sid.clone(), lookup(&peer, &sid).await[0].clone());
    }
    let victims: Vec<String> = before.iter().filter(|(_, n)| *n == "sfu-0").map(|(s, _)| s.clone()).collect();
    assert!(!victims.is_empty());
    sfus_alive.silence("sfu-0");
    let died = Instant::now();
    let died_wall = std::time::SystemTime::now(); // its deadline is at most this + expire
    let deadline = died + EXPIRE + Duration::from_secs(5);
    loop {
        if events.lock().unwrap().len() >= victims.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} moves announced",
            events.lock().unwrap().len(),
            victims.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), victims.len(), "one event per moved session: {events:?}");
    for e in &events {
        assert_eq!(e["from"], "sfu-0");
        assert_eq!(e["reason"], "node-down");
        assert!(victims.contains(&e["sid"].as_str().unwrap().to_owned()));
        assert_ne!(e["to"], "sfu-0");
        // Moved when sfu-0 expired, by islb's own clock (how late the event reached this
        // test does not count): within expire + 1 s of its last keep-alive.
        let at = humantime::parse_rfc3339(e["time"].as_str().unwrap()).unwrap();
        let moved_within = at.duration_since(died_wall).unwrap_or_default();
        assert!(moved_within < EXPIRE + Duration::from_secs(1), "{moved_within:?}: {e}");
        // ...and not before it fell silent.
        assert!(at >= died_wall, "moved before sfu-0 fell silent: {e}");
    }
    for (sid, node) in &before {
        let now = lookup(&peer, sid).await;
        if victims.contains(sid) {
            let moved_to = events.iter().find(|e| e["sid"] == sid.as_str()).unwrap()["to"].as_str().unwrap().to_owned();
            assert_eq!(now, vec![moved_to], "{sid} answered where the event said");
        } else {
            assert_eq!(&now, &vec![node.clone()], "{sid} did not move");
        }
    }
}

#[tokio::test]
async fn a_drained_node_takes_no_new_session_keeps_its_own_and_comes_back_when_undrained() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &[]);
    let _sfus = KeepAlive::start(&nats, &sfus(2), Duration::from_secs(1)).await;
    let peer = Peer::connect(&nats).await;
    let mut on_1 = Vec::new();
    for i in 0..10 {
        let sid = format!("old-{i}");
        if lookup(&peer, &sid).await[0] == "sfu-1" {
            on_1.push(sid);
        }
    }
    assert!(!on_1.is_empty());
    let (status, body) = islb.http_post("/v1/drain?node=sfu-1");
    assert_eq!(status, 200, "{body}");
    for i in 0..20 {
        assert_eq!(lookup(&peer, &format!("new-{i}")).await, vec!["sfu-0"], "no new session on a drained node");
    }
    for sid in &on_1 {
        assert_eq!(lookup(&peer, sid).await, vec!["sfu-1"], "existing sessions stay");
    }
    let (_, body) = islb.http_get("/v1/sessions?node=sfu-1");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), on_1.len(), "{body}");
    assert_eq!(v["drains"][0]["node"], "dc1.sfu-1");
    assert_eq!(islb.http_post("/v1/undrain?node=sfu-1").0, 200);
    let mut spread = Vec::new();
    for i in 0..20 {
        spread.extend(lookup(&peer, &format!("after-{i}")).await);
    }
    assert!(spread.contains(&"sfu-1".to_owned()), "undrained: it takes sessions again: {spread:?}");
}

#[tokio::test]
async fn a_drain_deadline_moves_the_sessions_with_events() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &[]);
    let _sfus = KeepAlive::start(&nats, &sfus(2), Duration::from_secs(1)).await;
    let (events, _task) = session_events(&nats).await;
    let peer = Peer::connect(&nats).await;
    let mut on_0 = Vec::new();
    for i in 0..10 {
        let sid = format!("room-{i}");
        if lookup(&peer, &sid).await[0] == "sfu-0" {
            on_0.push(sid);
        }
    }
    // Through the operator's CLI (nrpc to islb.Admin); the HTTP form is tested beside it.
    let (ok, _, err) = islb_cli(&nats, &["drain", "sfu-0", "--deadline", "1s"]);
    assert!(ok, "{err}");
    let moved = || events.lock().unwrap().len() >= on_0.len();
    let why = || "sessions did not move after the drain deadline".to_owned();
    eventually(Duration::from_secs(10), Duration::from_millis(50), moved, why).await;
    assert!(events.lock().unwrap().iter().all(|e| e["reason"] == "drain" && e["to"] == "sfu-1"));
    for sid in &on_0 {
        assert_eq!(lookup(&peer, sid).await, vec!["sfu-1"]);
    }
}

#[tokio::test]
async fn with_every_node_full_lookups_answer_no_node_and_islb_keeps_serving() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--default-capacity", "2"]);
    let mut nodes = sfus(2);
    nodes[1].extra_info.insert("capacity".into(), Value::Int(3));
    let _sfus = KeepAlive::start(&nats, &nodes, Duration::from_secs(1)).await;
    let peer = Peer::connect(&nats).await;
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(lookup(&peer, &format!("room-{i}")).await);
    }
    assert!(got.iter().all(|g| g.len() == 1), "2 + 3 sessions fit: {got:?}");
    assert_eq!(got.iter().filter(|g| g[0] == "sfu-1").count(), 3, "a reported capacity beats the default");
    assert!(lookup(&peer, "room-5").await.is_empty(), "full: no node (signal answers Unavailable)");
    assert!(peer.get("rtc", &[]).await.is_empty(), "nor for a call without a session key");
    let listed = peer.get("rtc", &[("islb-all", Value::Bool(true))]).await;
    assert_eq!(listed.len(), 2, "operators still see every node: {listed:?}");
    // Client metadata reaches islb as strings: a client cannot ask its way onto a full node.
    assert!(peer.get("rtc", &[("islb-all", "true".into())]).await.is_empty());
    assert_eq!(lookup(&peer, "room-0").await.len(), 1, "existing sessions still answer");
    assert!(peer.send("save", &ion_node("signal", "still-here")).await.success);
    let (_, metrics) = islb.http_get("/metrics");
    assert!(metrics.contains("islb_placements_total{outcome=\"no_capacity\"}"), "counted");
}

#[tokio::test]
async fn without_a_session_key_every_node_is_listed_best_first_and_unnamed_calls_spread() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &[]);
    let _sfus = KeepAlive::start(&nats, &sfus(3), Duration::from_secs(1)).await;
    let peer = Peer::connect(&nats).await;
    let mut firsts = Vec::new();
    for _ in 0..9 {
        let nodes: Vec<String> = peer.get("rtc", &[]).await.into_iter().map(|n| n.nid).collect();
        assert_eq!(nodes.len(), 3, "every live node is listed for tools");
        firsts.push(nodes[0].clone());
    }
    firsts.sort();
    firsts.dedup();
    assert_eq!(firsts.len(), 3, "unnamed placements count, so calls spread: {firsts:?}");
}

#[tokio::test]
async fn with_a_jwt_key_a_forged_token_gets_no_node() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &["--jwt-key", &islb_testkit::secret("s3cret")]);
    let _sfus = KeepAlive::start(&nats, &sfus(1), Duration::from_secs(1)).await;
    let peer = Peer::connect(&nats).await;
    // alg none: no signature to verify, refused when a key is configured.
    let forged = "eyJhbGciOiJub25lIn0.eyJzaWQiOiJyb29tIn0.";
    assert!(peer.get("rtc", &[("authorization", Value::String(forged.into()))]).await.is_empty());
    assert_eq!(lookup(&peer, "room").await.len(), 1, "the sid header still works");
}

#[test]
fn the_placement_options_are_in_the_effective_config() {
    let out = run_islb(
        &[
            "config",
            "check",
            "--session-ttl",
            "1h",
            "--default-capacity",
            "50",
            "--jwt-key",
            &islb_testkit::secret("topsecret"),
        ],
        &[],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("session-ttl = 1h\n") && text.contains("default-capacity = 50\n"), "{text}");
    assert!(text.contains("jwt-key = ***\n") && !text.contains("topsecret"), "{text}");
}

#[tokio::test]
async fn idle_sessions_are_released_after_the_session_ttl_with_an_event() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &["--session-ttl", "3s"]);
    let _sfus = KeepAlive::start(&nats, &sfus(2), Duration::from_secs(1)).await;
    let (events, _task) = session_events(&nats).await;
    let peer = Peer::connect(&nats).await;
    lookup(&peer, "idle-room").await;
    let busy = lookup(&peer, "busy-room").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !events.lock().unwrap().iter().any(|e| e["sid"] == "idle-room") {
        assert!(Instant::now() < deadline, "the idle session was never released");
        assert_eq!(lookup(&peer, "busy-room").await, busy, "a session in use stays put");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let events = events.lock().unwrap().clone();
    let e = events.iter().find(|e| e["sid"] == "idle-room").unwrap();
    assert_eq!(e["reason"], "idle");
    assert!(e["to"].is_null());
    assert!(!events.iter().any(|e| e["sid"] == "busy-room"), "{events:?}");
}

/// Issue 11: a few hundred SFUs whose reported loads differ by less than 1e-12 made an
/// unnamed `get rtc` panic inside the ranking sort, and from then on islb answered nothing.
/// A flood of such gets is answered, and the registry goes on answering.
#[tokio::test]
async fn a_flood_of_gets_over_nearly_equal_loads_never_stops_the_registry() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--expire", "60s"]);
    let peer = Peer::connect(&nats).await;
    for i in 0..400 {
        let mut node = ion_node("rtc", &format!("sfu-{i}"));
        node.extra_info.insert("load".into(), Value::Float64(0.5 + f64::from(i % 7) * 3e-13));
        assert!(peer.send("save", &node).await.success);
    }
    let answered: Vec<usize> = futures::stream::iter(0..300)
        .map(|_| async { peer.try_get("rtc", &[]).await.map_or(0, |nodes| nodes.len()) })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(answered.iter().all(|&n| n == 400), "every get lists every SFU: {:?}", &answered[..10]);
    assert!(peer.send("save", &ion_node("signal", "sig-1")).await.success, "the registry still answers");
    assert_eq!(peer.get("signal", &[]).await.len(), 1);
    assert_eq!(islb.metric("islb_handler_panics_total"), None, "nothing panicked");
}
