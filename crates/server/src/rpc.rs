//! islb's gRPC services over nats-grpc (on subjects `nrpc.<islb nid>.<service>.<method>`):
//!
//! - `islb.ISLB`: `FindNode` (ion's early-2021 method, answered by the placement core),
//!   `PostISLBEvent` and `WatchISLBEvent` (ion v1.9's stream registry: ion's Redis key shape
//!   `<dc>/<nid>/<sid>/<uid>` with its JSON value and 24 h TTL, events forwarded to the
//!   watchers of the session on every replica through `islb.stream-event.<sid>`);
//! - `islb.Admin`: the operator API the `islb` command line uses (docs/RPC.md, section 11);
//! - server reflection, v1alpha (ion's) and v1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use islb_nrpc::{CallInfo, Incoming, Outgoing, Service, Status};

use crate::admin::{bearer, token_matches};
use islb_proto::{ion, islb as pb};
use islb_store::StreamKey;
use prost::Message;
use tracing::{debug, info, warn};

use crate::discovery::Discovery;

/// How long ion's stream records live (ion's `redisLongKeyTTL`).
pub const STREAM_TTL: Duration = Duration::from_secs(24 * 3600);

/// A gob node as ion's protobuf `ion.Node` (ExtraInfo has no counterpart).
pub fn ion_node(n: &islb_gob::Node) -> ion::Node {
    ion::Node {
        dc: n.dc.clone(),
        nid: n.nid.clone(),
        service: n.service.clone(),
        rpc: Some(ion::Rpc {
            protocol: n.rpc.protocol.clone(),
            addr: n.rpc.addr.clone(),
            params: n.rpc.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }),
    }
}

pub use islb_core::subject::stream_event_subject;

/// The sid of a stream event as posted (`ISLBEvent{stream}`).
fn event_sid(payload: &[u8]) -> Option<String> {
    match pb::IslbEvent::decode(payload).ok()?.payload? {
        pb::islb_event::Payload::Stream(s) => Some(s.sid),
        pb::islb_event::Payload::Session(s) => Some(s.sid),
    }
}

/// A JSON string as Go's `encoding/json` writes it (HTML characters escaped).
fn go_json_string(s: &str) -> String {
    serde_json::to_string(s)
        .expect("strings serialise")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// ion's record of a peer's streams: Go's JSON of `[]*ion.Stream` (fields in declaration
/// order, empty ones left out, as the protobuf struct tags' `omitempty` says).
pub fn streams_json(streams: &[ion::Stream]) -> String {
    let track = |t: &ion::Track| {
        let mut parts = Vec::new();
        for (k, v) in [("id", &t.id), ("label", &t.label), ("kind", &t.kind)] {
            if !v.is_empty() {
                parts.push(format!("\"{k}\":{}", go_json_string(v)));
            }
        }
        if !t.simulcast.is_empty() {
            let mut keys: Vec<_> = t.simulcast.iter().collect();
            keys.sort();
            let m: Vec<String> =
                keys.iter().map(|(k, v)| format!("{}:{}", go_json_string(k), go_json_string(v))).collect();
            parts.push(format!("\"simulcast\":{{{}}}", m.join(",")));
        }
        format!("{{{}}}", parts.join(","))
    };
    let stream = |s: &ion::Stream| {
        let mut parts = Vec::new();
        if !s.id.is_empty() {
            parts.push(format!("\"id\":{}", go_json_string(&s.id)));
        }
        if !s.tracks.is_empty() {
            parts.push(format!("\"tracks\":[{}]", s.tracks.iter().map(track).collect::<Vec<_>>().join(",")));
        }
        format!("{{{}}}", parts.join(","))
    };
    if streams.is_empty() {
        return "null".into();
    }
    format!("[{}]", streams.iter().map(stream).collect::<Vec<_>>().join(","))
}

/// `islb.ISLB`.
pub struct IslbService {
    /// The registry (its DC is the first part of ion's stream keys).
    pub discovery: Arc<Discovery>,
    /// NATS, which carries the stream-event fan-out between replicas.
    pub client: async_nats::Client,
}

impl IslbService {
    async fn find_node(&self, req: pb::FindNodeRequest) -> Result<pb::FindNodeReply, Status> {
        let service = if req.service.is_empty() { "rtc".to_owned() } else { req.service.clone() };
        let nodes = self.discovery.placement().find_nodes(&service, &req.sid, &req.nid).await;
        Ok(pb::FindNodeReply { nodes: nodes.iter().map(|n| ion_node(n)).collect() })
    }

    async fn post(&self, event: pb::IslbEvent) -> Result<ion::Empty, Status> {
        match &event.payload {
            Some(pb::islb_event::Payload::Stream(s)) => {
                if s.sid.is_empty() || s.nid.is_empty() {
                    return Err(Status::invalid_argument("a stream event needs nid and sid"));
                }
                let key = StreamKey {
                    dc: self.discovery.placement().dc().to_owned(),
                    nid: s.nid.clone(),
                    sid: s.sid.clone(),
                    uid: s.uid.clone(),
                };
                let (d, store) = (&self.discovery, self.discovery.store());
                // Bounded by the store timeout, and counted as any store failure.
                let result = match ion::stream_event::State::try_from(s.state) {
                    Ok(ion::stream_event::State::Add) => {
                        d.store_call("put_stream", store.put_stream(&key, &streams_json(&s.streams), STREAM_TTL)).await
                    }
                    Ok(ion::stream_event::State::Remove) => {
                        d.store_call("delete_stream", store.delete_stream(&key)).await.map(drop)
                    }
                    Err(_) => return Err(Status::invalid_argument(format!("unknown stream state {}", s.state))),
                };
                result.map_err(|e| Status::unavailable(format!("stream registry: {e}")))?;
                info!(key = %key.redis_key(), state = s.state, "stream event");
                let _ = self.client.publish(stream_event_subject(&s.sid), event.encode_to_vec().into()).await;
            }
            Some(pb::islb_event::Payload::Session(s)) => {
                debug!(sid = %s.sid, nid = %s.nid, "session event (ignored, as ion's islb did)")
            }
            None => return Err(Status::invalid_argument("empty ISLBEvent")),
        }
        Ok(ion::Empty {})
    }

    /// Each `WatchRequest` adds a session; every stream event of those sessions goes out.
    async fn watch(&self, mut incoming: Incoming, out: Outgoing) -> Result<(), Status> {
        let mut subs = futures::stream::SelectAll::new();
        let mut watching = std::collections::HashSet::new();
        loop {
            tokio::select! {
                req = incoming.message::<pb::WatchRequest>() => match req? {
                    Some(w) => {
                        if watching.insert(w.sid.clone()) {
                            let sub = self.client.subscribe(stream_event_subject(&w.sid)).await
                                .map_err(|e| Status::unavailable(format!("NATS: {e}")))?;
                            // Events posted from now on reach this watcher.
                            islb_nrpc::barrier(&self.client, Duration::from_secs(5)).await
                                .map_err(|e| Status::unavailable(e.to_string()))?;
                            subs.push(sub);
                            debug!(sid = %w.sid, nid = %w.nid, "watching stream events");
                        }
                    }
                    None => return Ok(()),
                },
                // Only events of a session asked for (each subject is one session's;
                // this holds even if a publisher got the subject wrong).
                Some(msg) = subs.next(), if !subs.is_empty() => {
                    if event_sid(&msg.payload).is_some_and(|sid| watching.contains(&sid)) {
                        out.send(msg.payload).await?;
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Service for IslbService {
    fn name(&self) -> &'static str {
        "islb.ISLB"
    }

    fn has_method(&self, m: &str) -> bool {
        matches!(m, "FindNode" | "PostISLBEvent" | "WatchISLBEvent")
    }

    async fn call(&self, info: CallInfo, mut incoming: Incoming, out: Outgoing) -> Result<(), Status> {
        match info.method.as_str() {
            "FindNode" => out.send_message(&self.find_node(incoming.single().await?).await?).await,
            "PostISLBEvent" => out.send_message(&self.post(incoming.single().await?).await?).await,
            "WatchISLBEvent" => self.watch(incoming, out).await,
            _ => Err(Status::unimplemented("Unimplemented")),
        }
    }

    fn idle_exempt(&self, method: &str) -> bool {
        // A watcher subscribes once and then only listens.
        method == "WatchISLBEvent"
    }
}

/// `islb.Admin`.
pub struct AdminService {
    /// The admin token every call must carry (`authorization: Bearer <token>` metadata).
    pub token: Option<String>,
    /// The registry.
    pub discovery: Arc<Discovery>,
    /// NATS (for its connection state).
    pub client: async_nats::Client,
    /// This islb's NID.
    pub nid: String,
    /// When it started.
    pub started: Instant,
}

fn session_info(s: &islb_core::Session) -> pb::SessionInfo {
    pb::SessionInfo {
        sid: s.sid.to_string(),
        node: s.node.to_string(),
        version: s.version,
        used_ms: s.used.as_ms() as i64,
    }
}

impl AdminService {
    fn list_nodes(&self, req: pb::ListNodesRequest) -> pb::NodeList {
        let all = req.service.is_empty() || req.service == "*";
        let mut nodes: Vec<pb::NodeInfo> = self.discovery.read(|r, sessions| {
            r.entries()
                .filter(|(_, e)| all || e.node.service == req.service)
                .map(|(k, e)| pb::NodeInfo {
                    node: Some(ion_node(&e.node)),
                    extra_info_json: serde_json::to_string(&e.node.extra_info).unwrap_or_default(),
                    expires_ms: e.deadline.as_ms() as i64,
                    placed: r.is_placed(&e.node.service),
                    draining: sessions.draining(k).is_some(),
                    sessions: sessions.count(k),
                })
                .collect()
        });
        nodes.sort_by(|a, b| {
            let key = |n: &pb::NodeInfo| n.node.as_ref().map(|n| (n.service.clone(), n.dc.clone(), n.nid.clone()));
            key(a).cmp(&key(b))
        });
        pb::NodeList { nodes }
    }

    fn list_sessions(&self, req: pb::ListSessionsRequest) -> Result<pb::SessionList, Status> {
        let node = if req.node.is_empty() {
            None
        } else {
            Some(self.discovery.resolve_node(&req.node).map_err(Status::not_found)?)
        };
        Ok(pb::SessionList {
            sessions: self.discovery.sessions(node.as_deref()).iter().map(session_info).collect(),
            drains: self
                .discovery
                .drains()
                .into_iter()
                .map(|(n, d)| pb::DrainInfo { node: n.to_string(), deadline_ms: d.map_or(0, |d| d.as_ms() as i64) })
                .collect(),
        })
    }

    async fn drain(&self, node: &str, deadline_seconds: Option<i64>) -> Result<pb::DrainReply, Status> {
        let key = self.discovery.resolve_node(node).map_err(Status::not_found)?;
        let deadline = match deadline_seconds {
            None => {
                self.discovery.placement().undrain(&key).await.map_err(Status::unavailable)?;
                None
            }
            Some(secs) => {
                let d = (secs > 0).then(|| self.discovery.now().plus_ms(secs as u64 * 1000));
                self.discovery.placement().drain(&key, d).await.map_err(Status::unavailable)?;
                d
            }
        };
        Ok(pb::DrainReply {
            node: key.to_string(),
            draining: deadline_seconds.is_some(),
            deadline_ms: deadline.map_or(0, |d| d.as_ms() as i64),
            sessions: self.discovery.session_count(Some(&key)) as u64,
        })
    }

    async fn streams(&self, sid: &str) -> Result<pb::StreamList, Status> {
        let records = self
            .discovery
            .store_call("streams_of", self.discovery.store().streams_of(sid))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(pb::StreamList {
            streams: records
                .into_iter()
                .map(|(k, v)| pb::StreamRecord {
                    key: k.redis_key(),
                    dc: k.dc,
                    nid: k.nid,
                    sid: k.sid,
                    uid: k.uid,
                    streams_json: v,
                })
                .collect(),
        })
    }

    fn status(&self) -> pb::ClusterStatus {
        let (nodes, placed_services) =
            self.discovery.read(|r, _| (r.len() as u64, r.config().placed.iter().cloned().collect()));
        pb::ClusterStatus {
            nid: self.nid.clone(),
            dc: self.discovery.placement().dc().to_owned(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            nodes,
            sessions: self.discovery.session_count(None) as u64,
            store: self.discovery.store().kind().into(),
            store_healthy: self.discovery.store_healthy(),
            ready: self.discovery.store_healthy() && crate::nats::connected(&self.client),
            placed_services,
        }
    }
}

#[async_trait]
impl Service for AdminService {
    fn name(&self) -> &'static str {
        "islb.Admin"
    }

    fn has_method(&self, m: &str) -> bool {
        matches!(m, "ListNodes" | "ListSessions" | "ReleaseSession" | "Drain" | "Undrain" | "FindStreams" | "Status")
    }

    async fn call(&self, info: CallInfo, mut incoming: Incoming, out: Outgoing) -> Result<(), Status> {
        if let Some(token) = &self.token {
            let presented = info.metadata.get("authorization").and_then(|v| v.first()).and_then(|v| bearer(v));
            if !presented.is_some_and(|p| token_matches(p, token)) {
                metrics::counter!("islb_admin_refused_total", "reason" => "token").increment(1);
                warn!(method = %info.method, caller = %info.caller, "islb.Admin call without the right token refused");
                return Err(Status::unauthenticated("an admin token is required: authorization: Bearer <token>"));
            }
        }
        if matches!(info.method.as_str(), "ReleaseSession" | "Drain" | "Undrain") {
            info!(method = %info.method, caller = %info.caller, peer = %info.peer_nid, "admin change over nrpc");
        }
        match info.method.as_str() {
            "ListNodes" => out.send_message(&self.list_nodes(incoming.single().await?)).await,
            "ListSessions" => out.send_message(&self.list_sessions(incoming.single().await?)?).await,
            "ReleaseSession" => {
                let req: pb::ReleaseSessionRequest = incoming.single().await?;
                let released = self.discovery.placement().release_session(&req.sid).await;
                let reply = pb::ReleaseSessionReply {
                    released: released.is_some(),
                    session: released.as_ref().map(session_info),
                };
                out.send_message(&reply).await
            }
            "Drain" => {
                let req: pb::DrainRequest = incoming.single().await?;
                out.send_message(&self.drain(&req.node, Some(req.deadline_seconds)).await?).await
            }
            "Undrain" => {
                let req: pb::UndrainRequest = incoming.single().await?;
                out.send_message(&self.drain(&req.node, None).await?).await
            }
            "FindStreams" => {
                let req: pb::FindStreamsRequest = incoming.single().await?;
                out.send_message(&self.streams(&req.sid).await?).await
            }
            "Status" => {
                let _: pb::StatusRequest = incoming.single().await?;
                out.send_message(&self.status()).await
            }
            _ => Err(Status::unimplemented("Unimplemented")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_records_are_gos_json_of_ions_streams() {
        let streams = vec![ion::Stream {
            id: "stream-1".into(),
            tracks: vec![
                ion::Track { id: "t1".into(), label: "".into(), kind: "audio".into(), simulcast: Default::default() },
                ion::Track {
                    id: "t2".into(),
                    label: "cam <1>".into(),
                    kind: "video".into(),
                    simulcast: [("h".to_owned(), "1".to_owned()), ("f".to_owned(), "0".to_owned())].into(),
                },
            ],
        }];
        assert_eq!(
            streams_json(&streams),
            r#"[{"id":"stream-1","tracks":[{"id":"t1","kind":"audio"},{"id":"t2","label":"cam \u003c1\u003e","kind":"video","simulcast":{"f":"0","h":"1"}}]}]"#
        );
        assert_eq!(streams_json(&[]), "null");
        assert_eq!(streams_json(&[ion::Stream::default()]), "[{}]");
    }

    #[test]
    fn stream_event_subjects_are_one_token_per_session() {
        assert_eq!(stream_event_subject("room-1"), "islb.stream-event.room-1");
        assert_eq!(stream_event_subject("a.b c*"), "islb.stream-event._YS5iIGMq");
    }
}
