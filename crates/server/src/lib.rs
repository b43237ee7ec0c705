//! islb's imperative shell: everything that touches the outside world.
//!
//! [`start`] takes a validated [`Config`], binds the admin HTTP listener, connects to
//! NATS (retrying), opens the store, loads what it remembers, subscribes to the registry
//! subjects and spawns the tasks below; it returns a [`Running`] handle that reports the
//! bound addresses and shuts everything down in order.
//!
//! | task | module |
//! |---|---|
//! | registry requests on `node.publish.>` (queue group `islb`) | [`discovery`] |
//! | expiry timer, batched keep-alive writes | [`discovery`] |
//! | islb's own registration and its watched view of the cluster | [`selfreg`] |
//! | admin HTTP (`/healthz`, `/readyz`, `/metrics`, `/v1/...`) | [`admin`] |
//!
//! Shutdown order ([`Running::shutdown`]): readiness turns false; the request subscription
//! is drained (no new requests; those received are answered); islb deregisters itself
//! (its `delete` event goes out); timers stop after a last flush of keep-alive deadlines
//! to the store; NATS is flushed; the HTTP server stops. The whole sequence is bounded by
//! `shutdown-grace`.

pub mod admin;
pub mod config;
pub mod discovery;
mod link;
pub mod nats;
pub mod placement;
pub mod rpc;
pub mod selfreg;
pub mod telemetry;
mod throttle;

/// Locks a std mutex. Every critical section in this crate is a few map operations that
/// cannot be left half done by a panic, so a poisoned lock is still consistent.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Times to write to the store in the next batch (node deadlines, session uses), by key.
#[derive(Debug, Default)]
pub(crate) struct TouchBatch(std::sync::Mutex<std::collections::HashMap<Arc<str>, islb_core::Timestamp>>);

impl TouchBatch {
    /// Notes the latest time of `key`.
    pub(crate) fn note(&self, key: Arc<str>, t: islb_core::Timestamp) {
        lock(&self.0).insert(key, t);
    }

    /// Drops `key` from the batch.
    pub(crate) fn forget(&self, key: &str) {
        lock(&self.0).remove(key);
    }

    /// Takes the batch to write.
    pub(crate) fn take(&self) -> Vec<(Arc<str>, islb_core::Timestamp)> {
        std::mem::take(&mut *lock(&self.0)).into_iter().collect()
    }

    /// Puts back a batch that could not be written, for the next attempt; where the key
    /// was noted again meanwhile, the later time wins.
    pub(crate) fn put_back(&self, batch: Vec<(Arc<str>, islb_core::Timestamp)>) {
        let mut p = lock(&self.0);
        for (k, t) in batch {
            let e = p.entry(k).or_insert(t);
            *e = (*e).max(t);
        }
    }
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use islb_core::{Registry, RegistryConfig};
use islb_store::{FileStore, MemoryStore, Store};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{Config, ConfigError, LogFormat, Overrides, StoreSpec};
use discovery::{Discovery, QUEUE_GROUP, REQUEST_SUBJECT};

/// A running islb.
pub struct Running {
    http_addr: SocketAddr,
    nid: String,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// The admin HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// This islb's NID.
    pub fn nid(&self) -> &str {
        &self.nid
    }

    /// Starts the orderly shutdown (returns at once; see [`Running::wait`]).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// A token that starts the shutdown when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until islb has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("the supervisor task failed")?
    }
}

/// The store could not be opened at start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open store {spec}: {source}")]
pub struct StoreOpenError {
    spec: String,
    source: islb_store::StoreError,
}

/// Opens the configured store.
async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, StoreOpenError> {
    let fail = |source| StoreOpenError { spec: cfg.store.to_string(), source };
    Ok(match &cfg.store {
        StoreSpec::Memory => Arc::new(MemoryStore::new()),
        StoreSpec::File(path) => Arc::new(FileStore::open(path).map_err(fail)?),
        StoreSpec::Redis(url) => {
            let redis = islb_store_redis::RedisConfig {
                url: url.clone(),
                prefix: cfg.store_prefix.clone(),
                timeout: cfg.store_timeout,
                ca_file: cfg.store_ca_file.clone(),
            };
            Arc::new(islb_store_redis::RedisStore::connect(&redis).await.map_err(fail)?)
        }
    })
}

/// Ends the nrpc streams opened by nodes that went down (ion's nodes never cancel their
/// streams; a `delete` event is the only sign), as ion's `Server.CloseStream(nid)` does.
async fn close_streams_of_departed_nodes(
    client: async_nats::Client,
    rpc: Arc<tokio::sync::Mutex<Option<islb_nrpc::Running>>>,
    stop: CancellationToken,
) {
    use futures::StreamExt;
    use islb_gob::Message as _;
    let Ok(mut sub) = client.subscribe("node.discovery.*.>").await else { return };
    if let Err(e) = islb_nrpc::barrier(&client, Duration::from_secs(10)).await {
        tracing::debug!(error = %e, "the node-down subscription is not confirmed yet");
    }
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { return };
                if let Ok(req) = islb_gob::Request::from_gob(&msg.payload)
                    && req.action == "delete"
                    && let Some(rpc) = rpc.lock().await.as_ref()
                {
                    let n = rpc.close_peer(&req.node.nid);
                    if n > 0 {
                        info!(nid = %req.node.nid, streams = n, "closed the nrpc streams of a departed node");
                    }
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Starts islb with `cfg`.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let started = Instant::now();
    info!(version = env!("CARGO_PKG_VERSION"), nid = %cfg.nid, dc = %cfg.dc, "islb starting");
    for (key, value) in cfg.describe() {
        info!("config {key} = {value}");
    }
    // Only when the store is the one taken from ion's [redis] (a flag, env or `store` key wins).
    if let Some(ion) = cfg
        .ion_redis
        .as_ref()
        .filter(|r| !r.unused_addrs().is_empty() && r.url().map(StoreSpec::Redis).as_ref() == Some(&cfg.store))
    {
        warn!(
            unused = ?ion.unused_addrs(),
            "[redis] addrs lists several addresses (ion's cluster mode, not supported): islb uses only the first"
        );
    }
    let metrics = telemetry::metrics_handle();
    metrics::gauge!("islb_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);

    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (http-addr)", cfg.http_addr))?;
    let http_addr = listener.local_addr()?;

    let client = nats::connect(&cfg, &format!("islb {}", cfg.nid)).await?;
    let store = open_store(&cfg).await?;
    info!(store = %cfg.store, kind = store.kind(), "store open");
    let registry = Registry::new(RegistryConfig {
        expire_ms: u64::try_from(cfg.expire.as_millis()).unwrap_or(u64::MAX),
        placed: cfg.placement_services.clone(),
    });
    let placement = placement::PlacementConfig {
        dc: cfg.dc.clone(),
        default_capacity: cfg.default_capacity,
        session_ttl: cfg.session_ttl,
        jwt_key: cfg.jwt_key.as_ref().map(|k| islb_core::session_key::JwtKey::hmac(k.as_bytes())),
    };
    let discovery = Arc::new(Discovery::new(
        client.clone(),
        registry,
        store.clone(),
        cfg.max_message_size,
        cfg.store_timeout,
        placement,
    ));
    match discovery.load_from_store().await {
        Ok(0) => {}
        Ok(n) => info!(nodes = n, store = store.kind(), "nodes restored from the store"),
        Err(e) => warn!(error = %e, "could not load nodes from the store; starting empty"),
    }
    let sub = client
        .queue_subscribe(REQUEST_SUBJECT, QUEUE_GROUP.to_owned())
        .await
        .context("cannot subscribe to node.publish.>")?;
    islb_nrpc::barrier(&client, Duration::from_secs(10)).await.context("NATS did not confirm the subscription")?;
    info!(subject = REQUEST_SUBJECT, queue = QUEUE_GROUP, "registry listening");

    let stop = CancellationToken::new();
    let requests_stop = CancellationToken::new();
    let tasks_stop = CancellationToken::new();
    let shutting_down = Arc::new(AtomicBool::new(false));
    let watched = selfreg::WatchedView::default();
    let me = selfreg::self_node(&cfg.dc, &cfg.nid, &cfg.nats_url);

    let mut tasks = JoinSet::new();
    let requests = tokio::spawn(discovery.clone().serve(sub, requests_stop.clone()));
    tasks.spawn(discovery.clone().expiry_loop(tasks_stop.clone()));
    tasks.spawn(discovery.clone().flush_loop(tasks_stop.clone()));
    tasks.spawn(discovery.clone().maintain_loop(tasks_stop.clone()));
    tasks.spawn(selfreg::keepalive_loop(client.clone(), me.clone(), cfg.keepalive_interval, tasks_stop.clone()));
    tasks.spawn(watched.clone().run(client.clone(), tasks_stop.clone()));

    // gRPC over NATS: islb.ISLB, islb.Admin and reflection on nrpc.<nid>.…
    let mut rpc_server = islb_nrpc::Server::new(
        client.clone(),
        islb_nrpc::ServerConfig {
            max_message_size: cfg.max_message_size,
            ..islb_nrpc::ServerConfig::new(cfg.nid.clone())
        },
    );
    rpc_server.add(Arc::new(rpc::IslbService { discovery: discovery.clone() }));
    rpc_server.add(Arc::new(rpc::AdminService { discovery: discovery.clone(), nid: cfg.nid.clone(), started }));
    // Watch streams of a registered node outlive the idle timeout while it is registered.
    let live = discovery.clone();
    rpc_server.live_peers(move || live.registry().entries().map(|(_, e)| e.node.nid.clone()).collect());
    let pool = prost_reflect::DescriptorPool::decode(islb_proto::FILE_DESCRIPTOR_SET).context("descriptor set")?;
    let names = rpc_server.service_names();
    for version in [islb_nrpc::reflection::V1ALPHA, islb_nrpc::reflection::V1] {
        rpc_server.add(Arc::new(islb_nrpc::reflection::Reflection::new(version, pool.clone(), &names)));
    }
    let rpc_running = Arc::new(tokio::sync::Mutex::new(Some(
        rpc_server.start().await.context("cannot subscribe the nrpc services")?,
    )));
    info!(nid = %cfg.nid, services = ?names, "nrpc services listening on nrpc.{}.<service>.<method>", cfg.nid);
    tasks.spawn(close_streams_of_departed_nodes(client.clone(), rpc_running.clone(), tasks_stop.clone()));

    let http_stop = CancellationToken::new();
    let app = admin::router(admin::AdminState {
        discovery: discovery.clone(),
        client: client.clone(),
        shutting_down: shutting_down.clone(),
        metrics,
        watched,
        nid: cfg.nid.clone(),
        dc: cfg.dc.clone(),
        started,
    });
    let http = {
        let http_stop = http_stop.clone();
        tokio::spawn(
            async move { axum::serve(listener, app).with_graceful_shutdown(http_stop.cancelled_owned()).await },
        )
    };
    info!(addr = %http_addr, "admin HTTP listening");
    info!(nid = %cfg.nid, elapsed_ms = started.elapsed().as_millis() as u64, "islb ready");

    let supervisor = {
        let stop = stop.clone();
        let grace = cfg.shutdown_grace;
        async move {
            stop.cancelled().await;
            info!("shutting down");
            shutting_down.store(true, Ordering::Relaxed);
            let sequence = async {
                requests_stop.cancel();
                let _ = requests.await;
                if let Some(rpc) = rpc_running.lock().await.take() {
                    rpc.shutdown().await;
                }
                discovery.deregister(me).await;
                info!("deregistered");
                tasks_stop.cancel();
                while tasks.join_next().await.is_some() {}
                if let Err(e) = client.flush().await {
                    warn!(error = %e, "NATS flush at shutdown failed");
                }
            };
            if tokio::time::timeout(grace, sequence).await.is_err() {
                warn!(grace = ?grace, "shutdown grace period ran out; stopping anyway");
            }
            http_stop.cancel();
            match tokio::time::timeout(std::time::Duration::from_secs(2), http).await {
                Ok(Ok(Err(e))) => warn!(error = %e, "admin HTTP server error"),
                Err(_) => warn!("admin HTTP server did not stop in time"),
                _ => {}
            }
            info!("islb stopped");
            Ok(())
        }
    };
    Ok(Running { http_addr, nid: cfg.nid.clone(), stop, done: tokio::spawn(supervisor) })
}
