//! islb as an ion node: it registers itself (service `islb`, RPC `nats-grpc` at its NATS
//! URL) through the registry protocol, keeps alive every 2 s like ion's KeepAlive loop
//! (`save` once, then `update`), and watches the cluster as ion nodes do (`get *`, then
//! the `node.discovery.*.>` events).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use islb_gob::{GetResponse, Message as _, Node, Request, Response, Rpc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::throttle::Throttle;

/// How long one keep-alive request may take (ion: 15 s; islb answers in microseconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The node islb registers as.
pub fn self_node(dc: &str, nid: &str, nats_url: &str) -> Node {
    Node {
        dc: dc.into(),
        service: "islb".into(),
        nid: nid.into(),
        rpc: Rpc { protocol: "nats-grpc".into(), addr: nats_url.into(), ..Rpc::default() },
        ..Node::default()
    }
}

/// Sends `save`, then `update` every `interval`, until `stop`.
pub async fn keepalive_loop(client: Client, node: Node, interval: Duration, stop: CancellationToken) {
    let subject = format!("node.publish.{}.{}.{}", node.service, node.dc, node.nid);
    let log = Throttle::new(Duration::from_secs(30));
    let mut action = "save";
    loop {
        let req = Request { action: action.into(), node: node.clone(), ..Request::default() };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, client.request(subject.clone(), req.to_gob().into())).await;
        match result {
            Ok(Ok(msg)) => match Response::from_gob(&msg.payload) {
                Ok(r) if r.success => debug!(action, "self keep-alive accepted"),
                Ok(r) => warn!(action, reason = %r.reason, "self registration refused"),
                Err(e) => warn!(action, error = %e, "self keep-alive: unreadable reply"),
            },
            Ok(Err(e)) => {
                if let Some(suppressed) = log.allow() {
                    warn!(action, error = %e, suppressed, "self keep-alive failed");
                }
            }
            Err(_) => {
                if let Some(suppressed) = log.allow() {
                    warn!(action, suppressed, "self keep-alive timed out");
                }
            }
        }
        action = "update";
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The cluster as islb sees it through the registry's own events, keyed by NID (as ion's
/// neighbour maps are).
#[derive(Debug, Default, Clone)]
pub struct WatchedView {
    nodes: Arc<Mutex<BTreeMap<String, Node>>>,
}

impl WatchedView {
    /// How many nodes are watched.
    pub fn count(&self) -> usize {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn apply(&self, action: &str, node: Node) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        match action {
            "save" | "update" => {
                nodes.insert(node.nid.clone(), node);
            }
            "delete" => {
                nodes.remove(&node.nid);
            }
            _ => {}
        }
    }

    /// `get *` once, then follow events until `stop`. Unlike ion, a bad event is skipped,
    /// not the end of the watch.
    pub async fn run(self, client: Client, stop: CancellationToken) {
        let mut sub = match client.subscribe("node.discovery.*.>").await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot watch node events");
                return;
            }
        };
        // Events from here on reach the view before the snapshot below is taken.
        if let Err(e) = islb_nrpc::barrier(&client, REQUEST_TIMEOUT).await {
            debug!(error = %e, "the watch subscription is not confirmed yet");
        }
        let get = Request { action: "get".into(), service: "*".into(), ..Request::default() };
        match tokio::time::timeout(REQUEST_TIMEOUT, client.request("node.publish.*", get.to_gob().into())).await {
            Ok(Ok(msg)) => match GetResponse::from_gob(&msg.payload) {
                Ok(r) => {
                    info!(nodes = r.nodes.len(), "watching the cluster");
                    r.nodes.into_iter().for_each(|n| self.apply("save", n));
                }
                Err(e) => warn!(error = %e, "initial get *: unreadable reply"),
            },
            _ => debug!("initial get * unanswered; following events only"),
        }
        loop {
            tokio::select! {
                msg = sub.next() => match msg {
                    Some(msg) => match Request::from_gob(&msg.payload) {
                        Ok(req) => self.apply(&req.action, req.node),
                        Err(e) => debug!(error = %e, subject = %msg.subject, "unreadable node event skipped"),
                    },
                    None => return,
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}
