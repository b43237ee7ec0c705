//! The nrpc server: gRPC services over NATS, as nats-grpc's Go clients expect them.
//!
//! Per service one queue subscription `nrpc.<nid>.<Service>.>` (queue group = the service
//! name). Frames of one call share the request's reply inbox, which keys the call; they are
//! handled strictly in arrival order (one loop per service hands each call's messages to
//! its handler through a channel). The rules (docs/RPC.md sections 4 and 8):
//!
//! - route by subject, never by `Call.method`;
//! - `call` opens the call (unknown method: `end{Unimplemented}`); the handler reads the
//!   first `data` itself, so a unary call starts on it without waiting for a half-close;
//! - `end` without status is a half-close; `end` with any status (even 0) cancels the call
//!   and nothing is sent back;
//! - the answer is `data` frames and exactly one `end`, without status on success; no
//!   `begin` (header metadata can crash Go clients); empty messages are padded;
//! - every call gets at most one `end`, whoever ends it (the handler, an idle timeout, a
//!   bad frame, a full input queue, shutdown); a cancelled call (client `end{status}`,
//!   its peer node gone) gets none;
//! - garbage and oversized frames are answered (`end{status}`) when there is a reply
//!   subject; frames without one, and `data`/`end` for inboxes without a call (late
//!   frames of a finished call) are dropped; all are counted;
//! - a call whose handler does not keep up with its input (more than [`CALL_QUEUE`]
//!   messages waiting) is ended with `RESOURCE_EXHAUSTED`, so memory stays bounded;
//! - calls that receive nothing for `idle_timeout` are ended (`DEADLINE_EXCEEDED`): Go
//!   clients never say when they abandon a stream. Calls of methods a [`Service`] marks
//!   [`idle_exempt`](Service::idle_exempt) (server-push streams such as
//!   `WatchISLBEvent`) are not while their caller (`Call.nid`) is up, when the server is
//!   told who is ([`Server::live_peers`]); they end when it leaves
//!   ([`Running::close_peer`]) or is no longer up at an idle check;
//! - fair limits: a call whose first request message (or half-close) has not come within
//!   `first_message_timeout` is ended (`DEADLINE_EXCEEDED`); a `call` with more metadata
//!   than `max_metadata_size`, or from a caller (its nid, else its inbox's prefix) with
//!   `max_calls_per_peer` calls open, is refused (`RESOURCE_EXHAUSTED`); when `max_calls`
//!   are open the oldest half-open call is ended to make room, and only a table full of
//!   calls that did send their request refuses a new one. Refusals are counted by reason
//!   (`islb_nrpc_refused_calls_total`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::{Client, Message, Subject};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use islb_proto::nrpc;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::frame::{self, Inbound, Metadata};
use crate::status::Status;
use crate::subject;
use crate::table::{Admission, CallCtl, CallState, Limits, Overdue, Table, peer_key};

/// What a handler knows about its call.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// The full service name (`islb.ISLB`).
    pub service: String,
    /// The method name (`FindNode`).
    pub method: String,
    /// The request metadata.
    pub metadata: Metadata,
    /// The caller's node id (`Call.nid`; Go sets it on streams only).
    pub peer_nid: String,
    /// Who the call counts against: its nid, else its reply inbox's prefix (for logs).
    pub caller: String,
}

/// The request messages of a call, in arrival order; `None` after the client half-closed.
pub struct Incoming {
    rx: mpsc::Receiver<Bytes>,
}

impl Incoming {
    /// The next request message, or `None` at half-close.
    pub async fn next(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// The next request message decoded as `M`.
    pub async fn message<M: prost::Message + Default>(&mut self) -> Result<Option<M>, Status> {
        match self.next().await {
            None => Ok(None),
            Some(b) => {
                M::decode(b).map(Some).map_err(|e| Status::invalid_argument(format!("bad request message: {e}")))
            }
        }
    }

    /// The one request message of a unary or server-streaming call.
    pub async fn single<M: prost::Message + Default>(&mut self) -> Result<M, Status> {
        self.message().await?.ok_or_else(|| Status::internal("missing request message"))
    }
}

/// Sends the response messages of a call.
#[derive(Clone)]
pub struct Outgoing {
    client: Client,
    reply: Subject,
    max: usize,
}

impl Outgoing {
    /// Sends one response message (`data` frame).
    pub async fn send(&self, msg: Bytes) -> Result<(), Status> {
        if msg.len() > self.max {
            return Err(Status::resource_exhausted(format!(
                "response message of {} bytes exceeds the limit of {} bytes",
                msg.len(),
                self.max
            )));
        }
        self.client
            .publish(self.reply.clone(), frame::response_data(msg))
            .await
            .map_err(|e| Status::unavailable(format!("cannot send: {e}")))
    }

    /// Sends one response message.
    pub async fn send_message(&self, m: &impl prost::Message) -> Result<(), Status> {
        self.send(m.encode_to_vec().into()).await
    }
}

/// A gRPC service served over nrpc.
#[async_trait]
pub trait Service: Send + Sync + 'static {
    /// The full service name, e.g. `islb.ISLB`.
    fn name(&self) -> &'static str;
    /// Whether the service has this method (others get `UNIMPLEMENTED`).
    fn has_method(&self, method: &str) -> bool;
    /// Serves one call; returning ends it (`Ok`: success, `Err`: that status).
    async fn call(&self, info: CallInfo, incoming: Incoming, outgoing: Outgoing) -> Result<(), Status>;
    /// Whether calls of `method` may stay quiet for longer than the idle timeout while their
    /// caller is up (streams that only push); see [`Server::live_peers`].
    fn idle_exempt(&self, _method: &str) -> bool {
        false
    }
}

/// Request messages a call may have waiting for its handler.
pub const CALL_QUEUE: usize = 256;

/// How long `start` waits for the NATS server to confirm the subscriptions.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This node's id (a subject token; unique per process).
    pub nid: String,
    /// A call that receives nothing for this long is ended.
    pub idle_timeout: Duration,
    /// Largest request or response message.
    pub max_message_size: usize,
    /// Most calls open at once.
    pub max_calls: usize,
    /// Most calls open at once from one caller (its nid, else its inbox's prefix).
    pub max_calls_per_peer: usize,
    /// A call whose first request message (or half-close) has not come by then is ended.
    pub first_message_timeout: Duration,
    /// Largest call metadata (encoded), in bytes.
    pub max_metadata_size: usize,
}

impl ServerConfig {
    /// Defaults for `nid`: 10 minutes idle, 1 MiB messages, 10,000 calls and 500 per
    /// caller, 10 s for the first request message, 8 KiB of metadata (gRPC's usual
    /// header limit).
    pub fn new(nid: impl Into<String>) -> Self {
        ServerConfig {
            nid: nid.into(),
            idle_timeout: Duration::from_secs(600),
            max_message_size: 1 << 20,
            max_calls: 10_000,
            max_calls_per_peer: 500,
            first_message_timeout: Duration::from_secs(10),
            max_metadata_size: 8 << 10,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_calls: self.max_calls,
            max_calls_per_peer: self.max_calls_per_peer,
            max_metadata_size: self.max_metadata_size,
        }
    }
}

type Calls = Arc<Mutex<Table>>;

fn lock(calls: &Calls) -> MutexGuard<'_, Table> {
    calls.lock().unwrap_or_else(|p| p.into_inner())
}

/// The node ids that are up now (for idle-exempt calls).
pub type LivePeers = Arc<dyn Fn() -> HashSet<String> + Send + Sync>;

/// An nrpc server being assembled.
pub struct Server {
    client: Client,
    config: ServerConfig,
    services: Vec<Arc<dyn Service>>,
    live_peers: Option<LivePeers>,
}

/// A running server.
pub struct Running {
    client: Client,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    calls: Calls,
    active: Arc<AtomicU64>,
}

impl Server {
    /// A server for node `config.nid` on `client`.
    pub fn new(client: Client, config: ServerConfig) -> Self {
        Server { client, config, services: Vec::new(), live_peers: None }
    }

    /// Tells the server which nodes are up: calls of [`Service::idle_exempt`] methods then
    /// outlive the idle timeout while their caller is up (without it they do not).
    pub fn live_peers(&mut self, peers: impl Fn() -> HashSet<String> + Send + Sync + 'static) -> &mut Self {
        self.live_peers = Some(Arc::new(peers));
        self
    }

    /// Adds a service.
    pub fn add(&mut self, service: Arc<dyn Service>) -> &mut Self {
        self.services.push(service);
        self
    }

    /// The names of the services added, sorted.
    pub fn service_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.services.iter().map(|s| s.name().to_owned()).collect();
        v.sort();
        v
    }

    /// Subscribes every service and starts serving.
    pub async fn start(self) -> Result<Running, async_nats::SubscribeError> {
        let stop = CancellationToken::new();
        let calls: Calls = Arc::new(Mutex::new(Table::default()));
        let active = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for service in self.services {
            let name = service.name();
            let sub = self
                .client
                .queue_subscribe(subject::service_wildcard(&self.config.nid, name), subject::queue_group(name))
                .await?;
            let lp = Loop {
                client: self.client.clone(),
                prefix: subject::prefix(&self.config.nid, name),
                service,
                config: self.config.clone(),
                calls: calls.clone(),
                active: active.clone(),
            };
            tasks.spawn(lp.run(sub, stop.clone()));
        }
        let reaper = Reaper {
            client: self.client.clone(),
            calls: calls.clone(),
            idle: self.config.idle_timeout,
            first: self.config.first_message_timeout,
            live_peers: self.live_peers.clone(),
        };
        tasks.spawn(reaper.run(stop.clone()));
        // Listening once the server has read the subscriptions (a flush does not say so);
        // with NATS gone this times out and the subscriptions go live on reconnection.
        if let Err(e) = crate::barrier(&self.client, BARRIER_TIMEOUT).await {
            tracing::warn!(error = %e, "nrpc subscriptions not confirmed by the NATS server");
        }
        Ok(Running { client: self.client, stop, tasks, calls, active })
    }
}

impl Running {
    /// Calls open now.
    pub fn active_calls(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Cancels the calls whose caller is node `nid` (it went down); they get no `end`.
    pub fn close_peer(&self, nid: &str) -> usize {
        if nid.is_empty() {
            return 0;
        }
        let mut calls = lock(&self.calls);
        let mut n = 0;
        calls.retain(|_, c| {
            if c.peer_nid != nid {
                return true;
            }
            c.ctl.stop();
            n += 1;
            false
        });
        n
    }

    /// Stops taking calls, ends open ones with `UNAVAILABLE` (so callers retry elsewhere
    /// at once instead of waiting for their deadline), and waits for the loops to end.
    pub async fn shutdown(mut self) {
        // The loops first: no call starts after the drain below.
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        let open: Vec<String> =
            lock(&self.calls).drain().into_iter().filter(|(_, c)| c.ctl.stop()).map(|(k, _)| k).collect();
        for reply in open {
            let _ = send_end(&self.client, reply, &Err(Status::unavailable("the server is shutting down"))).await;
        }
        let _ = self.client.flush().await;
    }
}

/// Publishes the `end` frame of a call (success, or the error status) on its reply inbox.
async fn send_end(
    client: &Client,
    reply: impl async_nats::subject::ToSubject,
    result: &Result<(), Status>,
) -> Result<(), async_nats::PublishError> {
    client.publish(reply, frame::response_end(result)).await
}

struct Loop {
    client: Client,
    prefix: String,
    service: Arc<dyn Service>,
    config: ServerConfig,
    calls: Calls,
    active: Arc<AtomicU64>,
}

fn bad(reason: &'static str) {
    metrics::counter!("islb_nrpc_bad_frames_total", "reason" => reason).increment(1);
}

/// Counts a call refused or ended by a limit.
fn refused(reason: &'static str) {
    metrics::counter!("islb_nrpc_refused_calls_total", "reason" => reason).increment(1);
}

impl Loop {
    async fn run(self, mut sub: async_nats::Subscriber, stop: CancellationToken) {
        loop {
            let msg = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => return },
                _ = stop.cancelled() => {
                    let _ = sub.unsubscribe().await;
                    return;
                }
            };
            self.on_message(msg).await;
        }
    }

    async fn end(&self, reply: &Subject, result: Result<(), Status>) {
        let _ = send_end(&self.client, reply.clone(), &result).await;
    }

    async fn on_message(&self, msg: Message) {
        let Some(reply) = msg.reply.clone() else {
            bad("no_reply");
            return;
        };
        match frame::read_request(msg.payload.clone(), self.config.max_message_size) {
            Inbound::Oversized { status, call } => {
                bad("oversized");
                // Without a call on the inbox, only a `call` frame is answered: anything
                // else may follow a call that already got its end.
                self.fail_call(&reply, status, call).await;
            }
            Inbound::Malformed(status) => {
                bad("malformed");
                self.fail_call(&reply, status, true).await;
            }
            Inbound::Call(call) => self.on_call(&msg.subject, reply, call).await,
            Inbound::Data(data) => {
                let overflow = {
                    let mut calls = lock(&self.calls);
                    match calls.get_mut(reply.as_str()) {
                        Some(state) => {
                            state.last = Instant::now();
                            state.awaiting_first = false;
                            match &state.tx {
                                Some(tx) => match tx.try_send(data) {
                                    Ok(()) => false,
                                    Err(mpsc::error::TrySendError::Full(_)) => true,
                                    // The handler is done reading; its end is on the way.
                                    Err(mpsc::error::TrySendError::Closed(_)) => {
                                        bad("data_after_input_done");
                                        false
                                    }
                                },
                                None => {
                                    bad("data_after_half_close");
                                    false
                                }
                            }
                        }
                        // Not answered: the inbox may belong to a call that just ended, and
                        // a second `end` is what Go clients must never get.
                        None => {
                            bad("data_without_call");
                            false
                        }
                    }
                };
                if overflow {
                    bad("input_overflow");
                    let status = Status::resource_exhausted(format!(
                        "more than {CALL_QUEUE} request messages waiting: the call is not keeping up"
                    ));
                    self.fail_call(&reply, status, false).await;
                }
            }
            Inbound::End { cancel } => {
                let mut calls = lock(&self.calls);
                match calls.get_mut(reply.as_str()) {
                    // A status, whatever its code, cancels: nothing is sent back.
                    Some(state) if cancel => {
                        state.ctl.stop();
                        calls.remove(reply.as_str());
                    }
                    Some(state) => {
                        state.last = Instant::now();
                        state.awaiting_first = false;
                        state.tx = None; // half-close
                    }
                    // A late half-close of a finished call (Go unary clients send one).
                    None => {}
                }
            }
            Inbound::Empty => bad("empty_frame"),
        }
    }

    /// Ends the call on `reply` (if any, and not already ending) with `status`; when there is
    /// no call, answers the frame if `answer_unknown`.
    async fn fail_call(&self, reply: &Subject, status: Status, answer_unknown: bool) {
        let answer = match lock(&self.calls).remove(reply.as_str()) {
            Some(state) => state.ctl.stop(),
            None => answer_unknown,
        };
        if answer {
            self.end(reply, Err(status)).await;
        }
    }

    async fn on_call(&self, subject: &str, reply: Subject, call: nrpc::Call) {
        let Some(method) = subject::method_of(&self.prefix, subject).filter(|m| self.service.has_method(m)) else {
            bad("unimplemented");
            self.end(&reply, Err(Status::unimplemented("Unimplemented"))).await;
            return;
        };
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        let ctl = CallCtl::new();
        // Exempt calls are still ended when the server knows no live peers (no `live_peers`).
        let idle_exempt = !call.nid.is_empty() && self.service.idle_exempt(method);
        let peer = peer_key(&call.nid, reply.as_str());
        let caller = peer.clone();
        let metadata = call.metadata.as_ref().map_or(0, |m| m.encoded_len());
        let limits = self.config.limits();
        let (admission, evicted) = {
            let mut calls = lock(&self.calls);
            if calls.contains(reply.as_str()) {
                bad("duplicate_call");
                return;
            }
            let admission = calls.admit(&peer, metadata, &limits);
            // The evicted call is claimed here, so nothing else sends it an end.
            let evicted = match &admission {
                Admission::Evict(old) => calls.remove(old).filter(|c| c.ctl.stop()).map(|_| old.clone()),
                _ => None,
            };
            if !matches!(admission, Admission::Refuse(_)) {
                let now = Instant::now();
                calls.insert(
                    reply.to_string(),
                    CallState {
                        tx: Some(tx),
                        ctl: ctl.clone(),
                        last: now,
                        opened: now,
                        peer_nid: call.nid.clone(),
                        peer,
                        idle_exempt,
                        awaiting_first: true,
                    },
                );
            }
            (admission, evicted)
        };
        if let Some(old) = evicted {
            refused("evicted_half_open");
            let status = Status::resource_exhausted(
                "ended to make room: the server is full and this call never sent its request",
            );
            let _ = send_end(&self.client, old, &Err(status)).await;
        }
        if let Admission::Refuse(why) = admission {
            refused(why.reason());
            debug!(reason = why.reason(), inbox = %reply, peer = %call.nid, "nrpc call refused");
            self.end(&reply, Err(why.status(&limits, metadata))).await;
            return;
        }
        let info = CallInfo {
            service: self.service.name().to_owned(),
            method: method.to_owned(),
            metadata: frame::from_proto(call.metadata.as_ref()),
            peer_nid: call.nid,
            caller,
        };
        debug!(service = %info.service, method = %info.method, peer = %info.peer_nid, "nrpc call");
        let service = self.service.clone();
        let outgoing =
            Outgoing { client: self.client.clone(), reply: reply.clone(), max: self.config.max_message_size };
        let client = self.client.clone();
        let calls = self.calls.clone();
        let active = self.active.clone();
        active.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("islb_nrpc_active_calls").increment(1.0);
        tokio::spawn(async move {
            let (svc, m, peer) = (service.name(), info.method.clone(), info.peer_nid.clone());
            let result = tokio::select! {
                biased;
                _ = ctl.cancel.cancelled() => None,
                r = islb_runtime::contained(service.call(info, Incoming { rx }, outgoing)) => {
                    Some(r.unwrap_or_else(|panic| {
                        // Contained: this call ends with INTERNAL, every other goes on.
                        metrics::counter!("islb_handler_panics_total", "handler" => svc).increment(1);
                        tracing::error!(service = svc, method = %m, peer = %peer, %panic, "an nrpc handler panicked; the call ends with INTERNAL");
                        Err(Status::internal("the handler failed"))
                    }))
                }
            };
            // Whoever ended the call first (this task, or a cancel, timeout, bad frame or
            // shutdown) sent its one `end`, or, for a cancel, none.
            let result = result.filter(|_| ctl.finish());
            let code = match &result {
                Some(Ok(())) => "OK",
                Some(Err(s)) => s.code.name(),
                None => "CANCELLED",
            };
            if let Some(r) = result
                && let Err(e) = send_end(&client, reply.clone(), &r).await
            {
                warn!(error = %e, "cannot end an nrpc call");
            }
            // Only now is the inbox free: frames that arrive meanwhile find the call and
            // are dropped with it, rather than being taken for a new one.
            {
                let mut calls = lock(&calls);
                if calls.get(reply.as_str()).is_some_and(|c| Arc::ptr_eq(&c.ctl, &ctl)) {
                    calls.remove(reply.as_str());
                }
            }
            metrics::counter!("islb_nrpc_calls_total", "service" => svc, "method" => m, "code" => code).increment(1);
            active.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("islb_nrpc_active_calls").decrement(1.0);
        });
    }
}

/// Ends calls whose request never came within `first`, and calls that received nothing for
/// `idle` (exempt ones: once their caller is down).
struct Reaper {
    client: Client,
    calls: Calls,
    idle: Duration,
    first: Duration,
    live_peers: Option<LivePeers>,
}

impl Reaper {
    async fn run(self, stop: CancellationToken) {
        let tick = (self.idle.min(self.first) / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.cancelled() => return,
            }
            for (reply, why) in self.stale() {
                let status = match why {
                    Overdue::NoRequest => {
                        Status::deadline_exceeded(format!("no request message within {:?}: ended", self.first))
                    }
                    Overdue::Idle => Status::deadline_exceeded(format!("call idle for {:?}: ended", self.idle)),
                };
                let _ = send_end(&self.client, reply, &Err(status)).await;
            }
        }
    }

    /// Takes the calls to end (each claimed, so nothing else ends them too) and counts
    /// them (before their handlers see the cancel).
    fn stale(&self) -> Vec<(String, Overdue)> {
        let now = Instant::now();
        let exempt_idle = lock(&self.calls).values().any(|c| c.idle_exempt && now.duration_since(c.last) >= self.idle);
        // Asked outside the calls lock, and only when needed.
        let live = match &self.live_peers {
            Some(peers) if exempt_idle => peers(),
            _ => HashSet::new(),
        };
        let mut calls = lock(&self.calls);
        let due = calls.overdue(now, self.first, self.idle, |c| c.idle_exempt && live.contains(&c.peer_nid));
        let stale: Vec<_> =
            due.into_iter().filter(|(reply, _)| calls.remove(reply).is_some_and(|c| c.ctl.stop())).collect();
        for (_, why) in &stale {
            match why {
                Overdue::NoRequest => refused("first_message_timeout"),
                Overdue::Idle => metrics::counter!("islb_nrpc_idle_calls_ended_total").increment(1),
            }
        }
        stale
    }
}
