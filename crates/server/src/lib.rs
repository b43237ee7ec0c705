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
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod discovery;
pub mod nats;
pub mod outbox;
pub mod placement;
mod reply;
pub mod rpc;
pub mod selfreg;
pub mod state;
pub mod sync;
pub mod telemetry;
mod throttle;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use islb_core::{Registry, RegistryConfig};
use islb_runtime::{Health, Supervisor, TaskFailure};
use islb_store::{FileStore, MemoryStore, Store};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::{Config, ConfigError, LogFormat, Settings, StoreSpec};
use discovery::{Discovery, QUEUE_GROUP, REQUEST_SUBJECT};

/// A running islb.
pub struct Running {
    http_addr: SocketAddr,
    nid: String,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<Result<(), RunError>>,
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

    /// Waits until islb has stopped: `Ok` after an orderly shutdown that was asked for,
    /// an error when a supervised task failed and islb shut down because of it.
    pub async fn wait(self) -> Result<(), RunError> {
        self.done.await.map_err(|e| RunError::Supervisor(e.to_string()))?
    }
}

/// Why islb could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin HTTP address cannot be bound.
    #[error("cannot listen on {addr} (http-addr)")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// NATS cannot be reached (or its URL is wrong).
    #[error(transparent)]
    Nats(#[from] nats::NatsError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreOpenError),
    /// A subscription was refused or not confirmed by the NATS server.
    #[error("cannot subscribe to {subject}")]
    Subscribe {
        /// What was being subscribed.
        subject: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file the configuration names cannot be used (the admin token file).
    #[error(transparent)]
    Config(config::ConfigError),
    /// The built-in protobuf descriptor set does not decode (a build defect).
    #[error("the built-in descriptor set does not decode")]
    Descriptors(#[source] prost_reflect::DescriptorError),
}

impl StartError {
    /// The process exit code for this error: 69 (`EX_UNAVAILABLE`) when a service islb
    /// depends on cannot be reached, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Nats(_) | StartError::Store(_) => 69,
            _ => 1,
        }
    }
}

/// Why a running islb stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A supervised task ended unexpectedly; islb shut down in order because of it.
    #[error(transparent)]
    TaskFailed(#[from] TaskFailure),
    /// The shutdown sequence itself failed.
    #[error("the shutdown sequence failed: {0}")]
    Supervisor(String),
}

impl RunError {
    /// The process exit code: 70 (`EX_SOFTWARE`), an internal failure.
    pub fn exit_code(&self) -> u8 {
        70
    }
}

fn subscribe_error<E: std::error::Error + Send + Sync + 'static>(
    subject: &'static str,
) -> impl FnOnce(E) -> StartError {
    move |e| StartError::Subscribe { subject, source: Box::new(e) }
}

/// The store could not be opened at start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open store {spec}")]
pub struct StoreOpenError {
    spec: String,
    source: islb_store::StoreError,
}

/// Opens the configured store; a Redis server that cannot be reached yet is not an error:
/// the store comes with that error, and islb starts without it (see `start`).
async fn open_store(
    cfg: &Config,
    client: &async_nats::Client,
) -> Result<(Arc<dyn Store>, Option<islb_store::StoreError>), StoreOpenError> {
    let fail = |source| StoreOpenError { spec: cfg.store.to_string(), source };
    Ok(match &cfg.store {
        StoreSpec::Memory => (Arc::new(MemoryStore::new()), None),
        StoreSpec::File(path) => (Arc::new(FileStore::open(path).map_err(fail)?), None),
        StoreSpec::Redis(url) => {
            let redis = islb_store_redis::RedisConfig {
                url: url.clone(),
                prefix: cfg.store_prefix.clone(),
                timeout: cfg.store_timeout,
                ca_file: cfg.store_ca_file.clone(),
                client_cert: cfg.store_tls_cert.clone().zip(cfg.store_tls_key.clone()),
            };
            let (store, unreachable) = islb_store_redis::RedisStore::connect_or_later(&redis).await.map_err(fail)?;
            (Arc::new(store), unreachable)
        }
        StoreSpec::JetStream => {
            let js = islb_store_jetstream::JetStreamConfig {
                prefix: cfg.store_prefix.clone(),
                replicas: cfg.store_replicas,
                timeout: cfg.store_timeout.max(Duration::from_secs(1)),
            };
            let store =
                islb_store_jetstream::JetStreamStore::open(client.clone(), js).await.map_err(|e| fail(e.into()))?;
            (Arc::new(store), None)
        }
    })
}

/// Follows the node events on NATS (this replica's and the others'): during a store outage
/// they are how replicas learn each other's writes ([`Discovery::learn`]); and a `delete`
/// ends the nrpc streams its node opened (ion's nodes never cancel their streams; the
/// event is the only sign), as ion's `Server.CloseStream(nid)` does.
async fn follow_node_events(
    client: async_nats::Client,
    discovery: Arc<Discovery>,
    rpc: Arc<tokio::sync::Mutex<Option<islb_nrpc::Running>>>,
    stop: CancellationToken,
) {
    use futures::StreamExt;
    use islb_gob::Message as _;
    let Ok(mut sub) = client.subscribe("node.discovery.*.>").await else { return };
    if let Err(e) = islb_nrpc::barrier(&client, Duration::from_secs(10)).await {
        tracing::debug!(error = %e, "the node-event subscription is not confirmed yet");
    }
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { return };
                let Ok(req) = islb_gob::Request::from_gob(&msg.payload) else { continue };
                let departed = req.action == "delete";
                let nid = req.node.nid.clone();
                discovery.learn(req);
                if departed && let Some(rpc) = rpc.lock().await.as_ref() {
                    let n = rpc.close_peer(&nid);
                    if n > 0 {
                        info!(nid = %nid, streams = n, "closed the nrpc streams of a departed node");
                    }
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Starts islb with `cfg`.
///
/// Every long-running task is supervised: a task that ends unexpectedly (it returned or
/// panicked) makes `/readyz` answer 503 naming it, and islb then shuts down in order and
/// [`Running::wait`] returns [`RunError::TaskFailed`] (exit code 70), so the service manager
/// restarts a clean process rather than one that quietly stopped doing part of its job.
/// A panic while handling one request or one timer round is contained instead: it costs
/// that request or round only (see `discovery`).
pub async fn start(cfg: Config) -> Result<Running, StartError> {
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

    islb_runtime::contain::install_hook();
    let listen_error = |source| StartError::Listen { addr: cfg.http_addr, source };
    let listener = tokio::net::TcpListener::bind(cfg.http_addr).await.map_err(listen_error)?;
    let http_addr = listener.local_addr().map_err(listen_error)?;

    let admin_token = cfg.admin_token().map_err(StartError::Config)?;
    let tokens = cfg.token_verifier().map_err(StartError::Config)?;
    if tokens.verifies() {
        info!(audience = ?cfg.jwt_audience, issuer = ?cfg.jwt_issuer, "session JWTs are verified");
    }
    let (client, link) = nats::connect(&cfg, &format!("islb {}", cfg.nid)).await?;
    let (store, unreachable) = open_store(&cfg, &client).await?;
    info!(store = %cfg.store, kind = store.kind(), "store open");
    let registry = Registry::new(RegistryConfig {
        expire_ms: u64::try_from(cfg.expire.as_millis()).unwrap_or(u64::MAX),
        placed: cfg.placement_services.clone(),
    });
    let placement = placement::PlacementConfig {
        dc: cfg.dc.clone(),
        default_capacity: cfg.default_capacity,
        session_ttl: cfg.session_ttl,
        max_sessions: cfg.max_sessions,
        tokens: Arc::new(tokens),
    };
    let discovery = Arc::new(Discovery::new(
        Arc::new(client.clone()),
        registry,
        store.clone(),
        cfg.max_message_size,
        cfg.store_timeout,
        placement,
        Arc::new(clock::WallClock),
    ));
    match unreachable {
        // Serve from memory, not ready, holding writes; the maintenance task connects in
        // the background and, once the store answers, writes back what was held.
        Some(e) => {
            warn!(store = %cfg.store, error = %islb_runtime::Chain(&e), "store out of reach at start: serving from memory and holding writes until it answers (not ready meanwhile)");
            discovery.store_out_of_reach();
        }
        None => match discovery.load_from_store().await {
            Ok(0) => {}
            Ok(n) => info!(nodes = n, store = store.kind(), "nodes restored from the store"),
            Err(e) => warn!(error = %islb_runtime::Chain(&e), "could not load nodes from the store; starting empty"),
        },
    }
    let sub = client
        .queue_subscribe(REQUEST_SUBJECT, QUEUE_GROUP.to_owned())
        .await
        .map_err(subscribe_error(REQUEST_SUBJECT))?;
    islb_nrpc::barrier(&client, Duration::from_secs(10)).await.map_err(subscribe_error(REQUEST_SUBJECT))?;
    info!(subject = REQUEST_SUBJECT, queue = QUEUE_GROUP, "registry listening");
    // Ready to speak: what the store remembered gets one expiry period to keep alive.
    discovery.grace_loaded();

    let stop = CancellationToken::new();
    let requests_stop = CancellationToken::new();
    let tasks_stop = CancellationToken::new();
    let shutting_down = Arc::new(AtomicBool::new(false));
    let watched = selfreg::WatchedView::default();
    // Published to every node: the URLs without credentials.
    let me = selfreg::self_node(&cfg.dc, &cfg.nid, &cfg.nats_access().public_url());

    let health = Health::default();
    // Two groups, stopped in turn at shutdown: the request loop first, the timers after
    // islb has deregistered.
    let mut front = Supervisor::new(health.clone());
    let mut tasks = Supervisor::new(health.clone());
    front.spawn("registry requests", discovery.clone().serve(sub, requests_stop.clone()));
    tasks.spawn("expiry", discovery.clone().expiry_loop(tasks_stop.clone()));
    tasks.spawn("keep-alive batching", discovery.clone().flush_loop(tasks_stop.clone()));
    tasks.spawn("store maintenance", discovery.clone().maintain_loop(tasks_stop.clone()));
    tasks.spawn(
        "self-registration",
        selfreg::keepalive_loop(client.clone(), me.clone(), cfg.keepalive_interval, tasks_stop.clone()),
    );
    tasks.spawn("watched view", watched.clone().run(client.clone(), tasks_stop.clone()));
    tasks.spawn("NATS link", discovery.clone().follow_link(link, tasks_stop.clone()));
    tasks.spawn("metrics upkeep", telemetry::upkeep_loop(metrics.clone(), tasks_stop.clone()));

    // gRPC over NATS: islb.ISLB, islb.Admin and reflection on nrpc.<nid>.…
    let mut rpc_server = islb_nrpc::Server::new(
        client.clone(),
        islb_nrpc::ServerConfig {
            max_message_size: cfg.max_message_size,
            max_calls: cfg.nrpc_max_calls,
            max_calls_per_peer: cfg.nrpc_max_calls_per_peer,
            first_message_timeout: cfg.nrpc_first_message_timeout,
            max_metadata_size: cfg.nrpc_max_metadata_size,
            ..islb_nrpc::ServerConfig::new(cfg.nid.clone())
        },
    );
    rpc_server.add(Arc::new(rpc::IslbService { discovery: discovery.clone(), client: client.clone() }));
    rpc_server.add(Arc::new(rpc::AdminService {
        token: admin_token.clone(),
        discovery: discovery.clone(),
        client: client.clone(),
        nid: cfg.nid.clone(),
        started,
    }));
    // Watch streams of a registered node outlive the idle timeout while it is registered.
    let live = discovery.clone();
    rpc_server.live_peers(move || live.read(|r, _| r.entries().map(|(_, e)| e.node.nid.clone()).collect()));
    let pool =
        prost_reflect::DescriptorPool::decode(islb_proto::FILE_DESCRIPTOR_SET).map_err(StartError::Descriptors)?;
    let names = rpc_server.service_names();
    for version in [islb_nrpc::reflection::V1ALPHA, islb_nrpc::reflection::V1] {
        rpc_server.add(Arc::new(islb_nrpc::reflection::Reflection::new(version, pool.clone(), &names)));
    }
    let rpc_running = Arc::new(tokio::sync::Mutex::new(Some(
        rpc_server.start().await.map_err(subscribe_error("nrpc.<nid>.<service>.>"))?,
    )));
    info!(nid = %cfg.nid, services = ?names, "nrpc services listening on nrpc.{}.<service>.<method>", cfg.nid);
    tasks.spawn(
        "node events",
        follow_node_events(client.clone(), discovery.clone(), rpc_running.clone(), tasks_stop.clone()),
    );

    let http_stop = CancellationToken::new();
    let app = admin::router(
        Arc::new(control::Live {
            discovery: discovery.clone(),
            client: client.clone(),
            shutting_down: shutting_down.clone(),
            health: health.clone(),
            metrics,
            watched,
            nid: cfg.nid.clone(),
            dc: cfg.dc.clone(),
            started,
        }),
        admin::Guard::new(admin_token.clone()),
    );
    if admin_token.is_none() && !http_addr.ip().is_loopback() {
        warn!(addr = %http_addr, "the admin HTTP API listens beyond this machine without an admin token: anyone who reaches it can read the registry (changes are refused to them); set admin-token-file");
    }
    let http = {
        let http_stop = http_stop.clone();
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
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
            let failure = tokio::select! {
                _ = stop.cancelled() => None,
                Some(f) = front.next_failure() => Some(f),
                Some(f) = tasks.next_failure() => Some(f),
            };
            match &failure {
                None => info!("shutting down"),
                Some(f) => {
                    error!(task = f.task, reason = %f.reason, "shutting down: a supervised task failed (exit code 70)")
                }
            }
            shutting_down.store(true, Ordering::Relaxed);
            let sequence = async {
                requests_stop.cancel();
                front.join_all().await;
                if let Some(rpc) = rpc_running.lock().await.take() {
                    rpc.shutdown().await;
                }
                discovery.deregister(me).await;
                info!("deregistered");
                tasks_stop.cancel();
                tasks.join_all().await;
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
            failure.map_or(Ok(()), |f| Err(RunError::TaskFailed(f)))
        }
    };
    Ok(Running { http_addr, nid: cfg.nid.clone(), stop, done: tokio::spawn(supervisor) })
}
