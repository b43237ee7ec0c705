//! The registry as unchanged Go nodes use it: gopeer's conformance checks, what a Go
//! watcher sees, hostile input, restarts, placed services and the operator CLI.

use std::process::Command;
use std::time::{Duration, Instant};

use islb_gob::{Message as _, Request, Value};
use islb_testkit::{NatsServer, Proc, go_watcher, workspace_root};

use crate::harness::{ISLB, Islb, KeepAlive, Peer, conform, eventually, ion_node, islb_cli, watched_events};

#[test]
fn gopeer_conform_passes_at_the_default_expiry() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &[]);
    let text = conform(&nats, Some("5s"));
    assert!(text.contains("PASS registry still answers after malformed messages"), "{text}");
}

#[test]
fn gopeer_conform_passes_at_a_short_expiry() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &["--expire", "2s"]);
    conform(&nats, Some("2s"));
}

#[tokio::test]
async fn a_go_watcher_sees_exactly_what_the_contract_says() {
    let nats = NatsServer::start();
    const EXPIRE: Duration = Duration::from_secs(3);
    let islb = Islb::start(&nats, &["--expire", "3s"]);
    let mut watcher = go_watcher(&nats, "signal");
    let peer = Peer::connect(&nats).await;

    let mut a = ion_node("signal", "sig-a");
    assert!(peer.send("save", &a).await.success); // up: save event
    assert!(peer.send("update", &a).await.success); // keep-alive: silent
    assert!(peer.send("save", &a).await.success); // save of a known node: silent
    a.extra_info.insert("load".into(), Value::Float64(0.5));
    assert!(peer.send("update", &a).await.success); // new data: update event
    assert!(peer.send("delete", &a).await.success); // down: delete event
    assert!(peer.send("delete", &a).await.success); // delete of an unknown node: silent
    let b = ion_node("signal", "sig-b");
    assert!(peer.send("update", &b).await.success); // update of unknown: a save event
    let expired_at = Instant::now() + EXPIRE;
    watcher.wait_for("\"NID\":\"sig-b\"", Duration::from_secs(10));
    let why = || format!("events so far: {:?}", watched_events(&watcher));
    let within = expired_at.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
    eventually(within, Duration::from_millis(20), || watched_events(&watcher).len() >= 5, why).await;
    let took = Instant::now().saturating_duration_since(expired_at);
    let want: Vec<(String, String)> =
        [("save", "sig-a"), ("update", "sig-a"), ("delete", "sig-a"), ("save", "sig-b"), ("delete", "sig-b")]
            .iter()
            .map(|(a, n)| (a.to_string(), n.to_string()))
            .collect();
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more may arrive
    assert_eq!(watched_events(&watcher), want);
    assert!(took < Duration::from_secs(3), "expiry delete came {took:?} after the deadline");
    // By islb's own clock (the Go watcher's delay does not count), the delete went out
    // within 100 ms of the deadline.
    let expired = islb.metric("islb_expiry_lateness_seconds_count").expect("the expiry histogram");
    let on_time = islb.metric("islb_expiry_lateness_seconds_bucket{le=\"0.1\"}").expect("its 100 ms bucket");
    assert!(expired == 1.0 && on_time == expired, "{expired} expiries, {on_time} within 100 ms");
    // The update event carries the new data, as Go decodes it.
    let out = watcher.output();
    let update = out.lines().find(|l| l.contains("\"Action\":\"update\"")).unwrap();
    assert!(update.contains("\"load\":0.5"), "{update}");
}

/// Hostile messages, built from Go's own bytes and by hand.
fn hostile_battery() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let dir = workspace_root().join("interop/vectors/gob");
    let mut vectors: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gob"))
        .collect();
    vectors.sort();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for path in &vectors {
        let bytes = std::fs::read(path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        for cut in (0..bytes.len()).step_by(7) {
            out.push((format!("{name} cut at {cut}"), bytes[..cut].to_vec()));
        }
        for i in 0..20 {
            let mut b = bytes.clone();
            let bit = (next() % (b.len() as u64 * 8)) as usize;
            b[bit / 8] ^= 1 << (bit % 8);
            out.push((format!("{name} flip {i}"), b));
        }
    }
    for len in [1usize, 2, 10, 100, 1000, 60_000] {
        out.push((format!("{len} random bytes"), (0..len).map(|_| next() as u8).collect()));
    }
    // A count claiming 2^40 elements.
    out.push(("huge length".into(), vec![0x0b, 0xff, 0x82, 0x01, 0xfb, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]));
    out.push(("huge message length".into(), vec![0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]));
    for action in ["explode", "SAVE", "", "get\0"] {
        let r = Request { action: action.into(), node: ion_node("signal", "x"), ..Request::default() };
        out.push((format!("action {action:?}"), r.to_gob()));
    }
    for (name, v) in [
        ("int", Value::Int(7)),
        ("list", Value::List(vec![Value::Bool(true)])),
        ("map", Value::Map(Default::default())),
    ] {
        let mut r = Request { action: "get".into(), service: "rtc".into(), ..Request::default() };
        r.params.insert("sid".into(), v.clone());
        r.params.insert("nid".into(), v);
        out.push((format!("non-string sid/nid ({name})"), r.to_gob()));
    }
    for (field, node) in
        [("NID", ion_node("signal", "")), ("DC", islb_gob::Node { dc: String::new(), ..ion_node("signal", "n") })]
    {
        out.push((format!("empty {field}"), Request { action: "save".into(), node, ..Request::default() }.to_gob()));
    }
    out.push(("oversized".into(), vec![0u8; 900_000]));
    out
}

#[tokio::test]
async fn hostile_input_never_loses_a_node_and_never_stops_the_registry() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--max-message-size", "65536"]);
    let peer = Peer::connect(&nats).await;
    let nodes: Vec<_> = (0..20).map(|i| ion_node("signal", &format!("sig-{i}"))).collect();
    // Keep-alives go on meanwhile, as in a real cluster.
    let _alive = KeepAlive::start(&nats, &nodes, Duration::from_secs(1)).await;
    let battery = hostile_battery();
    assert!(battery.len() > 400, "{}", battery.len());
    let mut refused = 0;
    for (i, (name, payload)) in battery.iter().enumerate() {
        let subject = format!("node.publish.signal.dc1.hostile{i}");
        if i % 3 == 0 {
            // Without a reply subject: nothing to answer, still nothing may break.
            peer.client.publish(subject, payload.clone().into()).await.unwrap();
            continue;
        }
        let reply = peer.raw(&subject, payload.clone()).await.unwrap_or_else(|| panic!("no reply to {name}"));
        if let Ok(r) = islb_gob::Response::from_gob(&reply)
            && !r.success
        {
            assert!(!r.reason.is_empty(), "{name}: a refusal says why");
            refused += 1;
        }
    }
    assert!(refused > 100, "only {refused} refusals");
    let listed = peer.get("signal", &[]).await;
    for n in &nodes {
        assert!(listed.iter().any(|l| l.nid == n.nid), "{} lost after hostile input", n.nid);
    }
    assert!(peer.send("save", &ion_node("signal", "after-the-storm")).await.success);
    assert!(peer.get("signal", &[]).await.iter().any(|n| n.nid == "after-the-storm"));
    let (_, metrics) = islb.http_get("/metrics");
    assert!(metrics.contains("islb_bad_requests_total{reason=\"malformed\"}"), "bad input is counted");
    assert!(metrics.contains("islb_bad_requests_total{reason=\"unknown_action\"}"));
    assert!(metrics.contains("islb_bad_requests_total{reason=\"empty_field\"}"));
}

#[tokio::test]
async fn a_refusal_tells_the_requester_what_was_wrong() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &[]);
    let peer = Peer::connect(&nats).await;
    let r = Request { action: "explode".into(), node: ion_node("signal", "x"), ..Request::default() };
    let reply =
        islb_gob::Response::from_gob(&peer.raw("node.publish.signal.dc1.x", r.to_gob()).await.unwrap()).unwrap();
    assert!(!reply.success);
    assert_eq!(reply.reason, "unknown action \"explode\" (expected save, update, delete or get)");
    let reply =
        islb_gob::Response::from_gob(&peer.raw("node.publish.x", b"not gob at all".to_vec()).await.unwrap()).unwrap();
    assert!(reply.reason.starts_with("malformed request: gob: "), "{}", reply.reason);
    assert!(reply.reason.contains("at byte"), "{}", reply.reason);
}

#[tokio::test]
async fn nodes_that_keep_sending_updates_are_back_within_one_keepalive_after_a_restart() {
    let nats = NatsServer::start();
    let mut islb = Islb::start(&nats, &[]);
    let peer = Peer::connect(&nats).await;
    let nodes: Vec<_> = (0..10).map(|i| ion_node("room", &format!("room-{i}"))).collect();
    // ion's KeepAlive: save once, then update every 2 s, whatever the replies.
    let keepalive = KeepAlive::start(&nats, &nodes, Duration::from_secs(2)).await;
    assert_eq!(peer.get("room", &[]).await.len(), 10);
    assert!(islb.stop().success());
    let islb2 = Islb::start(&nats, &[]);
    let restarted = Instant::now();
    // One keep-alive period, plus slack for a loaded machine: without the update-as-save
    // rule they would never come back (ion's nodes send no second save).
    let deadline = restarted + Duration::from_secs(2 + 3);
    loop {
        let n = peer.get("room", &[]).await.len();
        if n == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} of 10 nodes back {:?} after the restart", restarted.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(keepalive);
    drop(islb2);
}

#[tokio::test]
async fn placed_services_are_hidden_from_get_star_and_from_up_events_but_not_from_down_events() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &[]);
    let mut watcher = go_watcher(&nats, "*");
    let peer = Peer::connect(&nats).await;
    let sfu = ion_node("rtc", "sfu-1");
    let sig = ion_node("signal", "sig-1");
    assert!(peer.send("save", &sfu).await.success);
    assert!(peer.send("save", &sig).await.success);
    let all = peer.get("*", &[]).await;
    assert!(all.iter().any(|n| n.nid == "sig-1") && !all.iter().any(|n| n.nid == "sfu-1"), "{all:?}");
    assert_eq!(peer.get("rtc", &[]).await.len(), 1, "get rtc still lists them");
    let everything = peer.get("*", &[("islb-all", Value::Bool(true))]).await;
    assert!(everything.iter().any(|n| n.nid == "sfu-1"));
    assert!(peer.send("delete", &sfu).await.success);
    watcher.wait_for("\"NID\":\"sfu-1\"", Duration::from_secs(5));
    let events = watched_events(&watcher);
    assert!(events.contains(&("save".into(), "sig-1".into())));
    assert!(!events.contains(&("save".into(), "sfu-1".into())), "{events:?}");
    assert!(events.contains(&("delete".into(), "sfu-1".into())), "{events:?}");
}

#[tokio::test]
async fn with_placement_off_rtc_nodes_are_announced_as_in_go() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &["--placement-services", ""]);
    let peer = Peer::connect(&nats).await;
    assert!(peer.send("save", &ion_node("rtc", "sfu-1")).await.success);
    assert!(peer.get("*", &[]).await.iter().any(|n| n.nid == "sfu-1"));
}

#[tokio::test]
async fn operators_list_and_watch_nodes_with_the_cli() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--expire", "30s"]); // nodes saved once stay listed
    let mut cmd = Command::new(ISLB);
    cmd.args(["watch", "--nats-url", &nats.url()]);
    let mut watch = Proc::spawn("islb-watch", cmd);
    watch.wait_for("watching node.discovery.*.>", Duration::from_secs(10));
    let peer = Peer::connect(&nats).await;
    let mut sfu = ion_node("rtc", "sfu-cli");
    sfu.extra_info.insert("load".into(), Value::Float64(0.25));
    assert!(peer.send("save", &sfu).await.success);
    assert!(peer.send("save", &ion_node("signal", "sig-cli")).await.success);
    assert!(peer.send("delete", &ion_node("signal", "sig-cli")).await.success);
    let line = watch.wait_for("delete signal", Duration::from_secs(5));
    assert!(line.contains("dc1.sig-cli"), "{line}");

    let (ok, table, err) = islb_cli(&nats, &["nodes"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SERVICE  DC   NID"), "{table}");
    assert!(table.contains("load=0.25") && table.contains("sfu-cli"), "placed services are listed: {table}");
    assert!(table.contains(&islb.nid), "{table}");
    assert!(table.ends_with("2 node(s)\n"), "{table}");

    let (_, out, _) = islb_cli(&nats, &["nodes", "--service", "rtc", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["NID"], "sfu-cli");
    assert_eq!(json[0]["ExtraInfo"]["load"], 0.25);
}

#[test]
fn the_cli_says_clearly_when_no_registry_answers() {
    let nats = NatsServer::start();
    let (ok, _, err) = islb_cli(&nats, &["nodes", "--timeout", "5s"]);
    assert!(!ok);
    assert!(err.contains("no registry answered"), "{err}");
}

/// islb keeps a watched view of the cluster as ion's nodes do (`get *`, then events): it
/// sees itself and the nodes that come and go, and not the placed services, which are
/// never announced.
#[tokio::test]
async fn islb_watches_the_cluster_as_an_ion_node_does() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--expire", "30s"]);
    let peer = Peer::connect(&nats).await;
    let count = || {
        let v: serde_json::Value = serde_json::from_str(&islb.http_get("/v1/status").1).unwrap();
        v["watched_nodes"].as_u64()
    };
    let watched = |want: u64| {
        let why = move || format!("watched {:?} nodes, want {want}", count());
        eventually(Duration::from_secs(10), Duration::from_millis(50), move || count() == Some(want), why)
    };
    watched(1).await; // itself
    for nid in ["sig-1", "sig-2", "sig-3"] {
        assert!(peer.send("save", &ion_node("signal", nid)).await.success);
    }
    assert!(peer.send("save", &ion_node("rtc", "sfu-1")).await.success);
    watched(4).await;
    assert!(peer.send("delete", &ion_node("signal", "sig-2")).await.success);
    watched(3).await;
    let (_, metrics) = islb.http_get("/metrics");
    assert!(metrics.contains("islb_watched_nodes 3"), "{metrics}");
}

/// Go mode: ion's signal takes the first node of an unnamed `get rtc`, so the answer must
/// not always start with the same node (key order did; Go's is random).
#[tokio::test]
async fn in_go_mode_an_unnamed_get_is_best_first_by_load_with_ties_spread() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &["--placement-services", "", "--expire", "30s"]);
    let peer = Peer::connect(&nats).await;
    let mut nodes = crate::harness::sfus(4);
    nodes[3].extra_info.insert("load".into(), Value::Float64(0.9));
    for n in &nodes {
        assert!(peer.send("save", n).await.success);
    }
    let mut firsts = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..300 {
        let got = peer.get("rtc", &[]).await;
        assert_eq!(got.len(), 4, "every node is answered");
        assert_eq!(got[3].nid, "sfu-3", "the loaded node comes last");
        *firsts.entry(got[0].nid.clone()).or_default() += 1;
    }
    // Three equally loaded nodes: each is first about 100 times.
    assert_eq!(firsts.keys().collect::<Vec<_>>(), ["sfu-0", "sfu-1", "sfu-2"], "{firsts:?}");
    assert!(firsts.values().all(|&n| n >= 60), "spread: {firsts:?}");
    // Listings stay in key order.
    let all: Vec<String> = peer.get("*", &[]).await.into_iter().map(|n| n.nid).collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all.iter().filter(|n| n.starts_with("sfu-")).count(), 4);
    assert_eq!(all, sorted, "{all:?}");
}
