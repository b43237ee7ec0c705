//! NATS failures: a single server restarting, and a server of a three-server cluster
//! killed and restarted under replicas connected to different servers.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use islb_gob::{Message as _, Request};
use islb_nrpc::{Client, Metadata};
use islb_proto::islb as pb;
use islb_testkit::{NatsServer, RedisServer};

use crate::harness::{Islb, KeepAlive, Peer, connect, eventually, ion_node};

/// The `delete` events for nodes of `service` seen on `nats` (a subscriber that
/// reconnects), by nid.
fn deletes_seen(url: String, service: &str) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (out, subject) = (seen.clone(), format!("node.discovery.{service}.>"));
    tokio::spawn(async move {
        let client = connect(&url).await;
        let mut sub = client.subscribe(subject).await.unwrap();
        while let Some(m) = sub.next().await {
            if let Ok(r) = Request::from_gob(&m.payload)
                && r.action == "delete"
            {
                out.lock().unwrap().push(r.node.nid);
            }
        }
    });
    seen
}

fn signals(n: usize) -> Vec<islb_gob::Node> {
    (0..n).map(|i| ion_node("signal", &format!("sig-{i}"))).collect()
}

async fn listed(peer: &Peer, service: &str) -> BTreeSet<String> {
    peer.get(service, &[]).await.into_iter().map(|n| n.nid).collect()
}

#[tokio::test]
async fn a_nats_server_restart_loses_no_node_and_deletes_only_the_silent_one() {
    let mut nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--expire", "2s", "--keepalive-interval", "500ms"]);
    let nodes = signals(5);
    let _ka = KeepAlive::start(&nats, &nodes, Duration::from_millis(500)).await;
    let peer = Peer::connect(&nats).await;
    let deletes = deletes_seen(nats.url(), "signal");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Saved just before the outage and silent after it.
    assert!(peer.send("save", &ion_node("signal", "silent")).await.success);
    let expired = || islb.metric("islb_nodes_expired_total").unwrap_or(0.0);

    nats.stop();
    tokio::time::sleep(Duration::from_secs(4)).await; // twice `expire`
    assert_eq!(expired(), 0.0, "nothing expires while no keep-alive can arrive");
    nats.restart();

    // After the return, the silent node is deleted once its grace has run out.
    let why = || format!("the silent node was not expired: {:?}", deletes.lock().unwrap());
    eventually(Duration::from_secs(10), Duration::from_millis(100), || expired() >= 1.0, why).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(expired(), 1.0);
    assert_eq!(*deletes.lock().unwrap(), ["silent"], "no false delete");
    let want: BTreeSet<String> = nodes.iter().map(|n| n.nid.clone()).collect();
    assert_eq!(listed(&peer, "signal").await, want, "every node that kept alive is listed");
    // islb re-registered itself and answers gRPC on its resubscribed subjects.
    assert!(listed(&peer, "islb").await.contains(&islb.nid));
    let client = Client::new(connect(&nats.url()).await, islb.nid.clone(), "tester");
    let req = pb::FindNodeRequest { sid: String::new(), nid: String::new(), service: "signal".into() };
    let reply: pb::FindNodeReply =
        client.call("/islb.ISLB/FindNode", &req, &Metadata::new(), Duration::from_secs(5)).await.unwrap();
    assert_eq!(reply.nodes.len(), 5);
}

#[tokio::test]
async fn a_cluster_server_killed_and_restarted_under_replicas_loses_nothing() {
    let mut cluster = NatsServer::cluster(3);
    let redis = RedisServer::start();
    let args = ["--store", &redis.url(), "--expire", "3s", "--keepalive-interval", "500ms"];
    // Replicas on different servers; the nodes and the asking peer on the third.
    let a = Islb::start(&cluster[0], &args);
    let b = Islb::start(&cluster[1], &args);
    let nodes = signals(10);
    let _ka = KeepAlive::start(&cluster[2], &nodes, Duration::from_millis(500)).await;
    let deletes = deletes_seen(cluster[2].url(), "signal");
    let want: BTreeSet<String> = nodes.iter().map(|n| n.nid.clone()).collect();

    // A signal node's gets throughout, each given ion's 15 s.
    let asking = tokio::spawn({
        let url = cluster[2].url();
        async move {
            let client = connect(&url).await;
            let req = Request { action: "get".into(), service: "signal".into(), ..Request::default() }.to_gob();
            let (mut answered, mut slowest) = (0, Duration::ZERO);
            let end = Instant::now() + Duration::from_secs(9);
            while Instant::now() < end {
                let t = Instant::now();
                let reply = tokio::time::timeout(
                    Duration::from_secs(15),
                    client.request("node.publish.signal", req.clone().into()),
                )
                .await;
                assert!(matches!(reply, Ok(Ok(_))), "a get unanswered: {reply:?}");
                answered += 1;
                slowest = slowest.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (answered, slowest)
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster[0].stop(); // SIGKILL
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster[0].restart();
    let (answered, slowest) = asking.await.unwrap();
    assert!(answered > 20 && slowest < Duration::from_secs(15), "{answered} gets, slowest {slowest:?}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(deletes.lock().unwrap().is_empty(), "false deletes: {:?}", deletes.lock().unwrap());
    let peer = Peer::connect(&cluster[2]).await;
    for _ in 0..4 {
        assert_eq!(listed(&peer, "signal").await, want, "no node lost, on either replica");
    }
    for r in [&a, &b] {
        assert_eq!(r.metric("islb_nodes_expired_total").unwrap_or(0.0), 0.0);
    }
}
