//! islb's gRPC services over nats-grpc: reflection, FindNode, the stream registry, the
//! Admin service and the `islb rpc` / operator commands built on them.

use std::process::Command;
use std::time::{Duration, Instant};

use islb_nrpc::{Client, Metadata};
use islb_proto::grpc::reflection::{v1, v1alpha};
use islb_proto::{ion, islb as pb};
use islb_testkit::{NatsServer, RedisServer};
use prost::Message;

use crate::harness::{ISLB, Islb, KeepAlive, Peer, eventually, ion_node, islb_cli, sfus};

const T: Duration = Duration::from_secs(5);

/// Posts a stream event through `poster` (islb.ISLB/PostISLBEvent).
async fn post(poster: &Client, event: &pb::IslbEvent) {
    let _: ion::Empty = poster.call("/islb.ISLB/PostISLBEvent", event, &Metadata::new(), T).await.unwrap();
}

#[tokio::test]
async fn reflection_v1alpha_and_v1_list_every_service_with_loadable_descriptors() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &[]);
    let client = Client::new(async_nats::connect(nats.url()).await.unwrap(), islb.nid.clone(), "tester");
    // v1alpha, as ion's tools ask.
    let mut s =
        client.open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &Metadata::new()).await.unwrap();
    let ask = |q| v1alpha::ServerReflectionRequest { host: String::new(), message_request: Some(q) };
    use v1alpha::server_reflection_request::MessageRequest as Q;
    use v1alpha::server_reflection_response::MessageResponse as A;
    s.send_message(&ask(Q::ListServices("*".into()))).await.unwrap();
    let r: v1alpha::ServerReflectionResponse = s.recv_message(T).await.unwrap().unwrap();
    let Some(A::ListServicesResponse(l)) = r.message_response else { panic!("{r:?}") };
    let names: Vec<_> = l.service.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        names,
        ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", "islb.Admin", "islb.ISLB"]
    );
    // The descriptors of islb.ISLB, on the same stream, load into prost-reflect.
    let mut files = Vec::new();
    for symbol in ["islb.ISLB", "islb.Admin"] {
        s.send_message(&ask(Q::FileContainingSymbol(symbol.into()))).await.unwrap();
        let r: v1alpha::ServerReflectionResponse = s.recv_message(T).await.unwrap().unwrap();
        let Some(A::FileDescriptorResponse(f)) = r.message_response else { panic!("{r:?}") };
        files.extend(f.file_descriptor_proto.iter().map(|b| prost_types::FileDescriptorProto::decode(&b[..]).unwrap()));
    }
    let names: Vec<&str> = files.iter().map(|f| f.name()).collect();
    assert_eq!(
        names,
        ["proto/islb/islb.proto", "proto/ion/ion.proto", "proto/islb/admin.proto"],
        "ion's file names, imports once"
    );
    let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet { file: files })
        .unwrap();
    let find = pool.get_service_by_name("islb.ISLB").unwrap();
    assert_eq!(
        find.methods().map(|m| m.name().to_owned()).collect::<Vec<_>>(),
        ["FindNode", "PostISLBEvent", "WatchISLBEvent"]
    );
    assert!(pool.get_service_by_name("islb.Admin").is_some());
    s.close_send().await.unwrap();
    assert_eq!(s.recv(T).await.unwrap(), None, "a half-close ends the reflection stream");
    // v1 answers the same.
    let mut s =
        client.open("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", &Metadata::new()).await.unwrap();
    let q = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices("*".into())),
    };
    s.send_message(&q).await.unwrap();
    let r: v1::ServerReflectionResponse = s.recv_message(T).await.unwrap().unwrap();
    assert!(
        matches!(r.message_response, Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) if l.service.len() == 4)
    );
}

#[tokio::test]
async fn islb_rpc_lists_describes_and_calls_and_find_node_agrees_with_get_rtc() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &[]);
    let _ka = KeepAlive::start(&nats, &sfus(3), Duration::from_secs(1)).await;
    let (ok, out, err) = islb_cli(&nats, &["rpc", "list"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection", "islb.Admin", "islb.ISLB"]
    );
    let (ok, out, err) = islb_cli(&nats, &["rpc", "describe", "islb.ISLB"]);
    assert!(ok, "{err}");
    assert!(out.contains("rpc FindNode(islb.FindNodeRequest) returns (islb.FindNodeReply);"), "{out}");
    assert!(out.contains("rpc WatchISLBEvent(stream islb.WatchRequest) returns (stream islb.ISLBEvent);"), "{out}");
    let peer = Peer::connect(&nats).await;
    for sid in ["room-a", "room-b", "room-c"] {
        let via_get = peer.get("rtc", &[("sid", islb_gob::Value::String(sid.into()))]).await;
        let (ok, out, err) = islb_cli(
            &nats,
            &["rpc", "call", &islb.nid, "/islb.ISLB/FindNode", &format!(r#"{{"sid":"{sid}","service":"rtc"}}"#)],
        );
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["nodes"].as_array().unwrap().len(), 1, "{out}");
        assert_eq!(v["nodes"][0]["nid"], via_get[0].nid.as_str(), "FindNode and get rtc agree for {sid}");
    }
    let (ok, out, _) = islb_cli(&nats, &["rpc", "call", &islb.nid, "/islb.ISLB/FindNode", r#"{"nid":"sfu-2"}"#]);
    assert!(ok);
    assert!(out.contains("\"sfu-2\"") && !out.contains("sfu-1"), "{out}");
    // Neither sid nor nid: every live node of the service (rtc by default), nothing placed.
    let (ok, out, err) = islb_cli(&nats, &["rpc", "call", &islb.nid, "/islb.ISLB/FindNode", "{}"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut listed: Vec<&str> = v["nodes"].as_array().unwrap().iter().map(|n| n["nid"].as_str().unwrap()).collect();
    listed.sort();
    assert_eq!(listed, ["sfu-0", "sfu-1", "sfu-2"], "{out}");
    let (ok, _, err) = islb_cli(&nats, &["rpc", "call", &islb.nid, "/islb.ISLB/Nope", "{}"]);
    assert!(!ok && err.contains("has no method"), "{err}");
    let (ok, _, err) = islb_cli(&nats, &["rpc", "call", "nobody", "/islb.ISLB/FindNode", "{}", "--timeout", "5s"]);
    assert!(!ok && err.contains("UNAVAILABLE"), "{err}");
}

fn stream_event(state: ion::stream_event::State, sid: &str, uid: &str) -> pb::IslbEvent {
    pb::IslbEvent {
        payload: Some(pb::islb_event::Payload::Stream(ion::StreamEvent {
            state: state as i32,
            nid: "sfu-1".into(),
            sid: sid.into(),
            uid: uid.into(),
            streams: vec![ion::Stream {
                id: "stream-1".into(),
                tracks: vec![ion::Track { id: "t1".into(), kind: "audio".into(), ..Default::default() }],
            }],
        })),
    }
}

async fn stream_registry_round_trip(nats: &NatsServer, store: &[&str], redis: Option<&RedisServer>) {
    let a = Islb::start(nats, store);
    let b = Islb::start(nats, store); // a second replica: watchers and posters meet through NATS
    let conn = async_nats::connect(nats.url()).await.unwrap();
    let watcher = Client::new(conn.clone(), b.nid.clone(), "biz-1");
    let mut w = watcher.open("/islb.ISLB/WatchISLBEvent", &Metadata::new()).await.unwrap();
    w.send_message(&pb::WatchRequest { nid: "biz-1".into(), sid: "room-1".into() }).await.unwrap();
    let poster = Client::new(conn, a.nid.clone(), "");
    // Replica b subscribes to room-1's events once the watch request reaches it: probe
    // until the watcher sees one, then retract the probe and skip what is still queued.
    let probe = stream_event(ion::stream_event::State::Add, "room-1", "probe");
    let started = Instant::now();
    loop {
        post(&poster, &probe).await;
        if w.recv_message::<pb::IslbEvent>(Duration::from_millis(200)).await.is_ok_and(|e| e == Some(probe.clone())) {
            break;
        }
        assert!(started.elapsed() < T, "the watcher never saw a probe");
    }
    let unprobe = stream_event(ion::stream_event::State::Remove, "room-1", "probe");
    post(&poster, &unprobe).await;
    while w.recv_message::<pb::IslbEvent>(T).await.unwrap().unwrap() != unprobe {}
    let add = stream_event(ion::stream_event::State::Add, "room-1", "peer-1");
    post(&poster, &add).await;
    let other = stream_event(ion::stream_event::State::Add, "room-2", "peer-9");
    post(&poster, &other).await;
    let got: pb::IslbEvent = w.recv_message(T).await.unwrap().unwrap();
    assert_eq!(got, add, "the watcher of room-1 sees the ADD");
    if let Some(redis) = redis {
        assert_eq!(
            redis.command(&["GET", "dc1/sfu-1/room-1/peer-1"]),
            r#"[{"id":"stream-1","tracks":[{"id":"t1","kind":"audio"}]}]"#,
            "ion's key shape and JSON value"
        );
        let ttl: i64 = redis.command(&["TTL", "dc1/sfu-1/room-1/peer-1"]).parse().unwrap();
        assert!(ttl > 86_000, "24 h TTL: {ttl}");
    }
    let (ok, out, err) = islb_cli(nats, &["streams", "room-1"]);
    assert!(ok, "{err}");
    assert!(out.contains("dc1/sfu-1/room-1/peer-1") && out.contains("stream-1"), "{out}");
    let remove = stream_event(ion::stream_event::State::Remove, "room-1", "peer-1");
    post(&poster, &remove).await;
    let got: pb::IslbEvent = w.recv_message(T).await.unwrap().unwrap();
    assert_eq!(got, remove, "then the REMOVE (and never room-2's events)");
    if let Some(redis) = redis {
        assert_eq!(redis.command(&["EXISTS", "dc1/sfu-1/room-1/peer-1"]), "0");
    }
    let (_, out, _) = islb_cli(nats, &["streams", "room-1"]);
    assert!(!out.contains("peer-1"), "{out}");
    w.close_send().await.unwrap();
    assert_eq!(w.recv(T).await.unwrap(), None);
}

#[tokio::test]
async fn the_stream_registry_records_and_forwards_events_across_replicas_with_redis() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let url = redis.url();
    stream_registry_round_trip(&nats, &["--store", &url, "--store-timeout", "5s"], Some(&redis)).await;
}

#[tokio::test]
async fn operators_drain_undrain_list_and_release_sessions_with_the_cli() {
    let nats = NatsServer::start();
    let _islb = Islb::start(&nats, &[]);
    let _ka = KeepAlive::start(&nats, &sfus(2), Duration::from_secs(1)).await;
    let peer = Peer::connect(&nats).await;
    let lookup = |sid: &'static str| {
        let peer = &peer;
        async move { peer.get("rtc", &[("sid", islb_gob::Value::String(sid.into()))]).await[0].nid.clone() }
    };
    let first = lookup("room-1").await;
    let (ok, out, err) = islb_cli(&nats, &["drain", &first]);
    assert!(ok, "{err}");
    assert!(out.contains("is draining") && out.contains("1 session(s)"), "{out}");
    let other = if first == "sfu-0" { "sfu-1" } else { "sfu-0" };
    for sid in ["room-2", "room-3", "room-4"] {
        assert_eq!(lookup(sid).await, other, "no new session on the drained node");
    }
    assert_eq!(lookup("room-1").await, first, "its own session stays");
    let (ok, out, _) = islb_cli(&nats, &["sessions", "--node", &first]);
    assert!(ok);
    assert!(out.contains("room-1") && out.contains("1 session(s)") && out.contains("draining: dc1."), "{out}");
    let (ok, out, _) = islb_cli(&nats, &["sessions", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), 4);
    let (ok, _, err) = islb_cli(&nats, &["undrain", &first]);
    assert!(ok, "{err}");
    let (ok, out, err) = islb_cli(&nats, &["release", "room-1"]);
    assert!(ok, "{err}");
    assert!(out.contains("released room-1"), "{out}");
    let (ok, _, err) = islb_cli(&nats, &["release", "room-1"]);
    assert!(!ok && err.contains("no session"), "{err}");
    let (ok, out, _) = islb_cli(&nats, &["status"]);
    assert!(ok && out.contains("sessions: 3") && out.contains("placed services: rtc"), "{out}");
    let (ok, _, err) = islb_cli(&nats, &["drain", "no-such-node"]);
    assert!(!ok && err.contains("no registered node"), "{err}");
}

#[tokio::test]
async fn streams_of_a_node_that_goes_down_are_closed() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &[]);
    let ka = KeepAlive::start(&nats, &[ion_node("room", "biz-7")], Duration::from_secs(1)).await;
    let conn = async_nats::connect(nats.url()).await.unwrap();
    let client = Client::new(conn, islb.nid.clone(), "biz-7");
    let w = client.open("/islb.ISLB/WatchISLBEvent", &Metadata::new()).await.unwrap();
    w.send_message(&pb::WatchRequest { nid: "biz-7".into(), sid: "room-1".into() }).await.unwrap();
    let active = || islb.metric("islb_nrpc_active_calls").unwrap_or(0.0);
    let why = || "the watch never opened".to_owned();
    eventually(T, Duration::from_millis(50), || active() >= 1.0, why).await;
    drop(ka);
    let peer = Peer::connect(&nats).await;
    assert!(peer.send("delete", &ion_node("room", "biz-7")).await.success);
    let why = || "the departed node's stream stayed open".to_owned();
    eventually(T, Duration::from_millis(50), || active() <= 0.0, why).await;
    drop(w);
}

/// The embedded durable store keeps stream records across a restart, as Redis does.
#[tokio::test]
async fn stream_records_survive_a_restart_with_a_file_store() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file:{}", dir.path().join("islb.redb").display());
    let mut islb = Islb::start(&nats, &["--store", &store]);
    let conn = async_nats::connect(nats.url()).await.unwrap();
    let poster = Client::new(conn, islb.nid.clone(), "");
    for uid in ["peer-1", "peer-2"] {
        let add = stream_event(ion::stream_event::State::Add, "room-1", uid);
        post(&poster, &add).await;
    }
    let remove = stream_event(ion::stream_event::State::Remove, "room-1", "peer-2");
    post(&poster, &remove).await;
    assert!(islb.stop().success());
    let _islb = Islb::start(&nats, &["--store", &store]);
    let (ok, out, err) = islb_cli(&nats, &["streams", "room-1"]);
    assert!(ok, "{err}");
    assert!(out.contains("dc1/sfu-1/room-1/peer-1") && out.contains("stream-1"), "{out}");
    assert!(!out.contains("peer-2"), "the removed record stays removed: {out}");
}

/// `islb rpc call` sends every JSON message it is given to a bidi method, and refuses
/// several for a unary one.
#[tokio::test]
async fn islb_rpc_call_sends_several_messages_to_a_stream_and_one_to_a_unary_method() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &[]);
    let (ok, _, err) =
        islb_cli(&nats, &["rpc", "call", &islb.nid, "/islb.ISLB/FindNode", r#"{"sid":"a"} {"sid":"b"}"#]);
    assert!(!ok && err.contains("takes one request message, not 2"), "{err}");
    let two = r#"{"nid":"cli","sid":"room-a"} {"nid":"cli","sid":"room-b"}"#;
    let mut cmd = Command::new(ISLB);
    cmd.args(["rpc", "call", &islb.nid, "/islb.ISLB/WatchISLBEvent", two, "--nats-url", &nats.url()]);
    let watch = islb_testkit::Proc::spawn("islb-rpc-watch", cmd);
    let conn = async_nats::connect(nats.url()).await.unwrap();
    let poster = Client::new(conn, islb.nid.clone(), "");
    // The watch subscribes when each message arrives: post until both rooms are seen.
    let end = Instant::now() + Duration::from_secs(15);
    while !(watch.output().contains("room-a") && watch.output().contains("room-b")) {
        assert!(Instant::now() < end, "the watch saw: {}", watch.output());
        for sid in ["room-a", "room-b"] {
            let add = stream_event(ion::stream_event::State::Add, sid, "peer-1");
            post(&poster, &add).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `n` `call` frames for FindNode and nothing after, each on the reply inbox
/// `inbox(i)`, with `md` as metadata.
async fn half_open_calls(
    conn: &async_nats::Client,
    nid: &str,
    n: usize,
    md: &Metadata,
    inbox: impl Fn(usize) -> String,
) {
    let subject = format!("nrpc.{nid}.islb.ISLB.FindNode");
    for i in 0..n {
        let frame = islb_nrpc::frame::call(&subject, md, "");
        conn.publish_with_reply(subject.clone(), inbox(i), frame).await.unwrap();
    }
    conn.flush().await.unwrap();
}

#[tokio::test]
async fn a_client_holding_half_open_calls_never_shuts_out_find_node() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--nrpc-max-calls", "1000", "--nrpc-first-message-timeout", "3s"]);
    let ka = KeepAlive::start(&nats, &sfus(2), Duration::from_secs(1)).await;
    let attacker = async_nats::connect(nats.url()).await.unwrap();
    // What locked every caller out before: thousands of calls with 10 KB of metadata each,
    // then from one inbox prefix, then each from an inbox of its own.
    let heavy = Metadata::from([("x-pad".to_owned(), vec!["p".repeat(10_000)])]);
    half_open_calls(&attacker, &islb.nid, 2_000, &heavy, |i| format!("_INBOX.heavy.{i}")).await;
    half_open_calls(&attacker, &islb.nid, 2_000, &Metadata::new(), |i| format!("_INBOX.one.{i}")).await;
    half_open_calls(&attacker, &islb.nid, 3_000, &Metadata::new(), |i| format!("_INBOX.m{i}.x")).await;
    // A signal node's FindNode calls, meanwhile, are all answered.
    let client = Client::new(async_nats::connect(nats.url()).await.unwrap(), islb.nid.clone(), "signal-1");
    for i in 0..20 {
        let req = pb::FindNodeRequest { sid: format!("room-{i}"), service: "rtc".into(), nid: String::new() };
        let reply: pb::FindNodeReply = client.call("/islb.ISLB/FindNode", &req, &Metadata::new(), T).await.unwrap();
        assert_eq!(reply.nodes.len(), 1, "{reply:?}");
    }
    let refused = |reason: &str| islb.metric(&format!("islb_nrpc_refused_calls_total{{reason=\"{reason}\"}}"));
    assert_eq!(refused("metadata_too_large"), Some(2_000.0));
    assert_eq!(refused("peer_limit"), Some(1_500.0), "500 per caller by default");
    let evicted = refused("evicted_half_open").unwrap_or(0.0);
    assert!(evicted >= 2_500.0, "{evicted} evicted: 3,500 half-open calls let in, at most 1,000 open");
    // The half-open calls left are ended by the first-message deadline: each of the 3,500
    // let in ends one way or the other.
    let active = || islb.metric("islb_nrpc_active_calls").unwrap_or(-1.0);
    let why = || format!("{} calls still open", active());
    eventually(Duration::from_secs(10), Duration::from_millis(100), || active() == 0.0, why).await;
    assert_eq!(refused("first_message_timeout").unwrap_or(0.0) + evicted, 3_500.0);
    drop(ka);
}

/// Rooms whose sids differ only in `.`, `_`, a space or `*` shared one subject before:
/// each watcher must see only its own room's stream events and session notices.
#[tokio::test]
async fn rooms_differing_only_in_dots_underscores_spaces_or_stars_never_share_events() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--expire", "1s"]);
    let rooms = ["a.b", "a_b", "a b", "a*b"];
    let conn = async_nats::connect(nats.url()).await.unwrap();
    // Stream events through WatchISLBEvent, one watcher per room.
    let client = Client::new(conn.clone(), islb.nid.clone(), "watcher");
    let mut watchers = Vec::new();
    for room in rooms {
        let w = client.open("/islb.ISLB/WatchISLBEvent", &Metadata::new()).await.unwrap();
        w.send_message(&pb::WatchRequest { nid: "watcher".into(), sid: room.into() }).await.unwrap();
        watchers.push(w);
    }
    // Session notices, subscribed as an outside subscriber would (one subject per room).
    let mut notices = Vec::new();
    for room in rooms {
        notices.push(conn.subscribe(islb_core::subject::session_subject(room)).await.unwrap());
    }
    islb_nrpc::barrier(&conn, T).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // every watch subscribed
    let poster = Client::new(conn.clone(), islb.nid.clone(), "sfu-1");
    for room in rooms {
        post(&poster, &stream_event(ion::stream_event::State::Add, room, &format!("user-in-{room}"))).await;
    }
    for (room, w) in rooms.iter().zip(&mut watchers) {
        let m: pb::IslbEvent = w.recv_message(T).await.unwrap().unwrap();
        let Some(pb::islb_event::Payload::Stream(s)) = m.payload else { panic!("{m:?}") };
        assert_eq!((s.sid.as_str(), s.uid.as_str()), (*room, format!("user-in-{room}").as_str()));
        let more = tokio::time::timeout(Duration::from_millis(300), w.recv_message::<pb::IslbEvent>(T)).await;
        assert!(more.is_err(), "{room}'s watcher got another room's event: {more:?}");
    }
    // Place the rooms on one SFU, then let it die: each room's move notice on its subject.
    let peer = Peer::connect(&nats).await;
    let ka = KeepAlive::start(&nats, &sfus(1), Duration::from_millis(300)).await;
    for room in rooms {
        assert_eq!(crate::harness::lookup(&peer, room).await, ["sfu-0"]);
    }
    drop(ka);
    for (room, sub) in rooms.iter().zip(&mut notices) {
        use futures::StreamExt;
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("a notice").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["sid"], *room);
        let more = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
        assert!(more.is_err(), "{room}'s subject carried another notice");
    }
}
