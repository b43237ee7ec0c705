//! The admin API's [`Control`] over the live service: the registry, placement, the store,
//! NATS, supervision and islb's watched view.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use islb_core::{NodeKey, Session, Timestamp};
use islb_runtime::{Chain, Health};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::admin::{Control, NodeView, StatusView};
use crate::discovery::Discovery;
use crate::selfreg::WatchedView;

/// A running islb, as the admin API sees it.
pub struct Live {
    /// The registry service.
    pub discovery: Arc<Discovery>,
    /// The NATS client (for its connection state).
    pub client: async_nats::Client,
    /// Set once shutdown begins.
    pub shutting_down: Arc<AtomicBool>,
    /// Failures of supervised tasks.
    pub health: Health,
    /// Metrics renderer.
    pub metrics: PrometheusHandle,
    /// islb's own view of the cluster.
    pub watched: WatchedView,
    /// This islb's NID.
    pub nid: String,
    /// This islb's DC.
    pub dc: String,
    /// When the process started.
    pub started: Instant,
}

#[async_trait]
impl Control for Live {
    async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.shutting_down.load(Ordering::Relaxed) {
            problems.push("shutting down".to_owned());
        }
        problems.extend(self.health.problems());
        if !crate::nats::connected(&self.client) {
            problems.push(format!("NATS {:?}", self.client.connection_state()).to_lowercase());
        }
        let store = self.discovery.store();
        if !self.discovery.store_healthy() {
            // Ready again only once what was held meanwhile is written back.
            problems.push(format!("store {}: out of reach; serving from memory and holding writes", store.kind()));
            return problems;
        }
        match tokio::time::timeout(Duration::from_secs(1), store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("store {}: {}", store.kind(), Chain(&e))),
            Err(_) => problems.push(format!("store {}: no answer within 1s", store.kind())),
        }
        problems
    }

    fn status(&self) -> StatusView {
        let mut nodes_per_service = BTreeMap::new();
        self.discovery.read(|r, _| {
            for (_, e) in r.entries() {
                *nodes_per_service.entry(e.node.service.clone()).or_default() += 1;
            }
        });
        StatusView {
            nid: self.nid.clone(),
            dc: self.dc.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            nodes_per_service,
            watched_nodes: self.watched.count(),
            store: self.discovery.store().kind(),
            store_healthy: self.discovery.store_healthy(),
            held_writes: self.discovery.held_writes(),
            nats: format!("{:?}", self.client.connection_state()).to_lowercase(),
            nats_connected: crate::nats::connected(&self.client),
        }
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    fn nodes(&self, service: Option<&str>) -> Vec<NodeView> {
        self.discovery.read(|r, _| {
            r.entries()
                .filter(|(_, e)| service.is_none_or(|s| s == e.node.service))
                .map(|(k, e)| NodeView {
                    id: k.clone(),
                    node: e.node.clone(),
                    expires: e.deadline,
                    placed: r.is_placed(&e.node.service),
                })
                .collect()
        })
    }

    fn sessions(&self, node: Option<&str>) -> Vec<Session> {
        self.discovery.sessions(node)
    }

    fn drains(&self) -> Vec<(NodeKey, Option<Timestamp>)> {
        self.discovery.drains()
    }

    fn resolve_node(&self, name: &str) -> Result<NodeKey, String> {
        self.discovery.resolve_node(name)
    }

    fn now(&self) -> Timestamp {
        self.discovery.now()
    }

    async fn drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<usize, String> {
        self.discovery.placement().drain(node, deadline).await?;
        Ok(self.discovery.session_count(Some(node)))
    }

    async fn undrain(&self, node: &NodeKey) -> Result<bool, String> {
        self.discovery.placement().undrain(node).await
    }

    async fn release(&self, sid: &str) -> Option<Session> {
        self.discovery.placement().release_session(sid).await
    }

    async fn event_feed(&self) -> Result<futures::stream::BoxStream<'static, (String, serde_json::Value)>, String> {
        use futures::StreamExt;
        use islb_gob::Message as _;
        let subscribe = |subject: &'static str| async move {
            self.client.subscribe(subject).await.map_err(|e| format!("subscribing to {subject}: {e}"))
        };
        let nodes = subscribe("node.discovery.*.>").await?.filter_map(|m| async move {
            let r = islb_gob::Request::from_gob(&m.payload).ok()?;
            let node = serde_json::to_value(&r.node).ok()?;
            Some(("node".to_owned(), serde_json::json!({ "action": r.action, "node": node })))
        });
        // Moves and releases, and placements: one kind of event, told apart by `reason`.
        let moves = subscribe("islb.session.>").await?;
        let placements = subscribe("islb.placed.>").await?;
        let sessions = futures::stream::select(moves, placements).filter_map(|m| async move {
            Some(("session".to_owned(), serde_json::from_slice::<serde_json::Value>(&m.payload).ok()?))
        });
        Ok(futures::stream::select(nodes, sessions).boxed())
    }

    async fn streams(&self, sid: &str) -> Result<Vec<(String, String)>, String> {
        let store = self.discovery.store();
        match tokio::time::timeout(Duration::from_secs(5), store.streams_of(sid)).await {
            Ok(Ok(records)) => Ok(records.into_iter().map(|(k, json)| (k.redis_key(), json)).collect()),
            Ok(Err(e)) => Err(format!("store {}: {}", store.kind(), Chain(&e))),
            Err(_) => Err(format!("store {}: no answer within 5s", store.kind())),
        }
    }
}
