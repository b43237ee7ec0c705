//! Session placement, the shell around [`islb_core::sessions`]: lookups of placed services
//! (`get rtc` with the client call's metadata), claims in the store, fail-over when a node
//! leaves, drains, idle release, and the `islb.session.<sid>` move events.
//!
//! A lookup with a session key answers exactly one node: the session's node while it
//! lives, else the best candidate, claimed atomically in the store so that concurrent
//! joins on any replica agree. Without a session key it answers every live node of the
//! service, best first, and counts the first as an unnamed placement; when no node has
//! room it answers none (ion's signal proxies to the first node it gets). An operator's
//! listing (`islb-all` as a Go bool, which client metadata forwarded by signal cannot be)
//! answers every node and places nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use islb_core::placement::Candidate;
use islb_core::session_key::{JwtKey, KeyError, session_key};
use islb_core::sessions::{Ask, Decision, decide, drain_passed};
use islb_core::{Lookup, NodeKey, Session, Sessions, Timestamp, placement};
use islb_gob::Node;
use islb_store::SessionClaim;
use serde::Serialize;
use tracing::{info, warn};

use crate::discovery::{Discovery, lock, nodes_reply};

/// Placement settings.
#[derive(Debug, Clone)]
pub struct PlacementConfig {
    /// islb's DC: preferred when a lookup names none (param `dc`).
    pub dc: String,
    /// Capacity of nodes that state none (0: unlimited).
    pub default_capacity: u64,
    /// Sessions not looked up for this long are released.
    pub session_ttl: Duration,
    /// Verifies JWT signatures when set.
    pub jwt_key: Option<JwtKey>,
}

/// The placement state of one replica.
pub(crate) struct PlacementState {
    pub(crate) config: PlacementConfig,
    pub(crate) sessions: Mutex<Sessions>,
    /// Session use times not yet written to the store.
    pub(crate) touches: crate::TouchBatch,
    /// Placements made while the store was out of reach, to claim when it is back.
    pub(crate) held: Mutex<HashMap<Arc<str>, NodeKey>>,
    /// When idle sessions were last looked for (ms).
    last_idle_sweep: std::sync::atomic::AtomicU64,
}

impl PlacementState {
    pub(crate) fn new(config: PlacementConfig) -> Self {
        PlacementState {
            config,
            sessions: Mutex::new(Sessions::new()),
            touches: crate::TouchBatch::default(),
            held: Mutex::new(HashMap::new()),
            last_idle_sweep: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// Why a session moved (the `reason` of an `islb.session.<sid>` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveReason {
    /// Its node was deleted or expired.
    NodeDown,
    /// Its node was drained and the drain deadline passed.
    Drain,
    /// Released by an operator.
    Released,
    /// Not looked up for `session-ttl`.
    Idle,
    /// Its node left and no other node had room.
    NoCapacity,
}

/// The JSON published on `islb.session.<sid>` when a session moves or is released.
#[derive(Debug, Clone, Serialize)]
pub struct SessionEvent {
    /// The session.
    pub sid: String,
    /// NID of the node it was on (`null` if none).
    pub from: Option<String>,
    /// NID of the node it is on now (`null` when released).
    pub to: Option<String>,
    /// `DC.NID` keys of the same nodes.
    pub from_key: Option<String>,
    /// `DC.NID` of the new node.
    pub to_key: Option<String>,
    /// Why.
    pub reason: MoveReason,
    /// The placement's fencing version after the move.
    pub version: u64,
    /// When (RFC 3339).
    pub time: String,
}

fn nid_of(key: &str) -> String {
    key.split_once('.').map_or(key, |(_, nid)| nid).to_owned()
}

/// The subject of a session's events: `islb.session.<sid>` (characters that cannot be in
/// a subject token become `_`).
pub fn session_subject(sid: &str) -> String {
    let clean: String = sid.chars().map(|c| if c.is_whitespace() || c == '*' || c == '>' { '_' } else { c }).collect();
    format!("islb.session.{clean}")
}

fn random() -> u64 {
    rand::random()
}

/// A placement in flight on a node: counts as load until dropped (also when the future
/// doing the placement is dropped, e.g. a cancelled call).
struct InFlight<'a> {
    state: &'a PlacementState,
    node: NodeKey,
}

impl<'a> InFlight<'a> {
    /// Must be called with the sessions lock not held (it takes it).
    fn new(state: &'a PlacementState, node: NodeKey) -> Self {
        lock(&state.sessions).begin_placement(&node);
        InFlight { state, node }
    }

    /// Takes over a placement begun with `sessions` locked (where the node was chosen).
    fn begun(state: &'a PlacementState, sessions: &mut Sessions, node: NodeKey) -> Self {
        sessions.begin_placement(&node);
        InFlight { state, node }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.state.sessions).end_placement(&self.node);
    }
}

impl Discovery {
    /// A `get` of a placed service.
    pub(crate) async fn lookup_placed(&self, lookup: &Lookup) -> Bytes {
        let prefer_dc = islb_core::command::param_string(&lookup.params, "dc")
            .ok()
            .flatten()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| self.placement.config.dc.clone());
        let sid = match session_key(&lookup.params, self.placement.config.jwt_key.as_ref(), self.now()) {
            Ok(k) => k,
            Err(e) => {
                metrics::counter!("islb_placements_total", "outcome" => "refused").increment(1);
                let label = match e {
                    KeyError::Param(_) => "bad_param",
                    KeyError::Malformed(_) => "bad_jwt",
                    KeyError::Refused(_) => "jwt_refused",
                };
                metrics::counter!("islb_bad_requests_total", "reason" => label).increment(1);
                warn!(service = %lookup.service, error = %e, "lookup refused: no node answered");
                return nodes_reply(&[]);
            }
        };
        self.catch_up().await;
        match sid {
            Some(sid) => nodes_reply(self.place(&lookup.service, &sid, &prefer_dc).await.as_slice()),
            // An operator's listing: every node, nothing placed or counted.
            None if lookup.operator_listing() => nodes_reply(&self.ranked(&lookup.service, &prefer_dc)),
            None => nodes_reply(&self.place_unnamed(&lookup.service, &prefer_dc)),
        }
    }

    /// What `islb.ISLB/FindNode` answers: with a sid, the session's node (placed if needed,
    /// for placed services); with a nid, that node; otherwise every live node of the service,
    /// best first (nothing is placed).
    pub async fn find_nodes(&self, service: &str, sid: &str, nid: &str) -> Vec<Arc<Node>> {
        if !sid.is_empty() && self.registry().is_placed(service) {
            self.catch_up().await;
            let dc = self.placement.config.dc.clone();
            return self.place(service, sid, &dc).await.into_iter().collect();
        }
        let r = self.registry();
        if !nid.is_empty() && nid != "*" {
            return r.entries().filter(|(_, e)| e.node.nid == nid).map(|(_, e)| e.node.clone()).collect();
        }
        if !r.is_placed(service) {
            let lookup = Lookup { service: service.into(), nid: None, params: Default::default() };
            return r.get(&lookup);
        }
        drop(r);
        self.ranked(service, &self.placement.config.dc)
    }

    /// Every live node of placed `service`, best first for a new session (full and
    /// draining ones last); nothing is placed.
    fn ranked(&self, service: &str, prefer_dc: &str) -> Vec<Arc<Node>> {
        self.rank_candidates(service, prefer_dc, "", |_, _| ())
    }

    /// Every live node of `service`, best first, and the first takes an unnamed placement;
    /// when no node has room, no node at all (ion's signal takes the first node it is
    /// given, so a full one must not be offered).
    fn place_unnamed(&self, service: &str, prefer_dc: &str) -> Vec<Arc<Node>> {
        let session = format!("unnamed-{}", random());
        let mut placed = false;
        let mut any = false;
        let order = self.rank_candidates(service, prefer_dc, &session, |sessions, first| {
            any = first.is_some();
            if let Some(first) = first.filter(|c| c.eligible()) {
                sessions.note_unnamed(&first.key.as_str().into(), self.now());
                placed = true;
            }
        });
        if placed {
            metrics::counter!("islb_placements_total", "outcome" => "unnamed").increment(1);
            return order;
        }
        metrics::counter!("islb_placements_total", "outcome" => "no_capacity").increment(1);
        if let Some(suppressed) = self.capacity_log.allow() {
            if any {
                warn!(service, suppressed, "no node of the service has room: unnamed lookup answered with no node");
            } else {
                warn!(service, suppressed, "no node of the service is registered: lookup answered with no node");
            }
        }
        Vec::new()
    }

    /// The live nodes of `service` ranked for `session`; `first` sees the best candidate
    /// with the sessions still locked (so a placement is noted before anyone else ranks).
    fn rank_candidates(
        &self,
        service: &str,
        prefer_dc: &str,
        session: &str,
        first: impl FnOnce(&mut Sessions, Option<&Candidate>),
    ) -> Vec<Arc<Node>> {
        let now = self.now();
        let r = self.registry();
        let mut sessions = lock(&self.placement.sessions);
        let (plain, nodes): (Vec<_>, Vec<_>) =
            sessions.candidates(&r, service, self.placement.config.default_capacity, now).into_iter().unzip();
        let order = placement::rank(&plain, prefer_dc, session);
        first(&mut sessions, order.first().map(|&i| &plain[i]));
        order.into_iter().map(|i| nodes[i].clone()).collect()
    }

    /// The node for session `sid` of `service`, placing it if needed; `None` when no node
    /// has room.
    pub(crate) async fn place(&self, service: &str, sid: &str, prefer_dc: &str) -> Option<Arc<Node>> {
        for _attempt in 0..3 {
            let now = self.now();
            let decision = {
                let r = self.registry();
                let mut sessions = lock(&self.placement.sessions);
                let ask = Ask {
                    service,
                    sid,
                    prefer_dc,
                    default_capacity: self.placement.config.default_capacity,
                    now,
                    random: random(),
                };
                let decision = decide(&r, &mut sessions, &ask);
                if let Decision::Existing(..) = decision {
                    sessions.touch(sid, now);
                }
                decision
            };
            match decision {
                Decision::Existing(session, node) => {
                    self.placement.touches.note(session.sid, now);
                    metrics::counter!("islb_placements_total", "outcome" => "existing").increment(1);
                    return Some(node);
                }
                Decision::NoCapacity => {
                    metrics::counter!("islb_placements_total", "outcome" => "no_capacity").increment(1);
                    if let Some(suppressed) = self.capacity_log.allow() {
                        warn!(
                            service,
                            sid, suppressed, "no node of the service has room: lookup answered with no node"
                        );
                    }
                    return None;
                }
                Decision::Place { node, from } => {
                    let key: NodeKey = node.id().into();
                    let in_flight = InFlight::new(&self.placement, key.clone());
                    let claim = self.store_call("claim_session", self.store().claim_session(sid, &key, now)).await;
                    let claim = claim.unwrap_or_else(|| {
                        // The store is out of reach: place here and claim when it is back.
                        lock(&self.placement.held).insert(sid.into(), key.clone());
                        let version = lock(&self.placement.sessions).get(sid).map_or(0, |s| s.version) + 1;
                        let session = Session { sid: sid.into(), node: key.clone(), version, used: now };
                        match from.clone() {
                            Some(from) => SessionClaim::Moved { session, from },
                            None => SessionClaim::Placed(session),
                        }
                    });
                    drop(in_flight);
                    match claim {
                        SessionClaim::CandidateGone => {
                            // This view still lists a node the store has lost: catch up and choose again.
                            self.sync().await;
                            continue;
                        }
                        SessionClaim::Existing(s) => {
                            let node = self.registry().lookup(&s.node).map(|e| e.node.clone());
                            lock(&self.placement.sessions).set(s);
                            metrics::counter!("islb_placements_total", "outcome" => "existing").increment(1);
                            match node {
                                Some(n) => return Some(n),
                                None => {
                                    self.sync().await;
                                    continue;
                                }
                            }
                        }
                        SessionClaim::Placed(s) => {
                            lock(&self.placement.sessions).set(s);
                            metrics::counter!("islb_placements_total", "outcome" => "placed").increment(1);
                            return Some(node);
                        }
                        SessionClaim::Moved { session, from } => {
                            let event = SessionEvent {
                                sid: sid.to_owned(),
                                from: Some(nid_of(&from)),
                                to: Some(node.nid.clone()),
                                from_key: Some(from.to_string()),
                                to_key: Some(key.to_string()),
                                reason: self.why_moved(&from, now),
                                version: session.version,
                                time: now.to_string(),
                            };
                            lock(&self.placement.sessions).set(session);
                            metrics::counter!("islb_placements_total", "outcome" => "moved").increment(1);
                            self.publish_session_event(event).await;
                            return Some(node);
                        }
                    }
                }
            }
        }
        warn!(service, sid, "placement did not settle after 3 attempts");
        None
    }

    fn why_moved(&self, from: &str, now: Timestamp) -> MoveReason {
        // Lock order: registry before sessions, everywhere; here one at a time.
        let overdue = lock(&self.placement.sessions).draining(from).is_some_and(|d| drain_passed(d, now));
        if overdue && self.registry().lookup(from).is_some() { MoveReason::Drain } else { MoveReason::NodeDown }
    }

    pub(crate) async fn publish_session_event(&self, event: SessionEvent) {
        info!(sid = %event.sid, from = ?event.from, to = ?event.to, reason = ?event.reason, "session moved");
        let payload = serde_json::to_vec(&event).expect("serialisable");
        self.send(session_subject(&event.sid), payload.into()).await;
        metrics::counter!("islb_session_moves_total", "reason" => format!("{:?}", event.reason)).increment(1);
    }

    /// Moves the sessions of `node` elsewhere (it left, and this replica announced it).
    pub(crate) async fn fail_over(&self, node: &Node, reason: MoveReason) {
        let key = node.id();
        let sessions = {
            let mut table = lock(&self.placement.sessions);
            table.forget_node(&key);
            table.of_node(&key)
        };
        if sessions.is_empty() {
            return;
        }
        info!(node = %key, sessions = sessions.len(), ?reason, "moving the sessions of a departed node");
        let services = [node.service.clone()];
        for s in sessions {
            self.move_one(&s, &services, reason).await;
        }
    }

    /// Moves one session to the best other node (or releases it when none has room).
    async fn move_one(&self, s: &Session, services: &[String], reason: MoveReason) {
        let now = self.now();
        let (target, in_flight) = {
            let r = self.registry();
            let mut sessions = lock(&self.placement.sessions);
            let mut best = None;
            for service in services {
                let (plain, nodes): (Vec<_>, Vec<_>) = sessions
                    .candidates(&r, service, self.placement.config.default_capacity, now)
                    .into_iter()
                    .filter(|(c, _)| c.key.as_str() != &*s.node)
                    .unzip();
                if let Some(i) = placement::choose(&plain, &self.placement.config.dc, &s.sid, random()) {
                    best = Some(nodes[i].clone());
                    break;
                }
            }
            let in_flight = best.as_ref().map(|n| InFlight::begun(&self.placement, &mut sessions, n.id().into()));
            (best, in_flight)
        };
        let to_key: Option<NodeKey> = target.as_ref().map(|n| n.id().into());
        let moved = self
            .store_call("move_session", self.store().move_session(&s.sid, s.version, to_key.as_ref(), None, now))
            .await;
        drop(in_flight);
        let Some(Some(new)) = moved else { return }; // someone else moved it, or the store is out of reach
        {
            let mut sessions = lock(&self.placement.sessions);
            match &to_key {
                Some(_) => sessions.set(new.clone()),
                None => {
                    sessions.remove(&s.sid);
                }
            }
        }
        let event = SessionEvent {
            sid: s.sid.to_string(),
            from: Some(nid_of(&s.node)),
            to: target.as_ref().map(|n| n.nid.clone()),
            from_key: Some(s.node.to_string()),
            to_key: to_key.map(|k| k.to_string()),
            reason: if target.is_some() { reason } else { MoveReason::NoCapacity },
            version: if target.is_some() { new.version } else { s.version },
            time: now.to_string(),
        };
        self.publish_session_event(event).await;
    }

    /// Releases session `sid` (operator request); returns it if it was placed.
    pub async fn release_session(&self, sid: &str) -> Option<Session> {
        let current = lock(&self.placement.sessions).get(sid)?;
        self.release(&current, None, MoveReason::Released, self.now()).await
    }

    /// Releases session `s` if it is still at its version (and, with `idle_before`, not
    /// used since), and says so with a session event.
    async fn release(
        &self,
        s: &Session,
        idle_before: Option<Timestamp>,
        reason: MoveReason,
        now: Timestamp,
    ) -> Option<Session> {
        let released = self
            .store_call("move_session", self.store().move_session(&s.sid, s.version, None, idle_before, now))
            .await??;
        lock(&self.placement.sessions).remove(&s.sid);
        self.publish_session_event(SessionEvent {
            sid: s.sid.to_string(),
            from: Some(nid_of(&released.node)),
            to: None,
            from_key: Some(released.node.to_string()),
            to_key: None,
            reason,
            version: released.version,
            time: now.to_string(),
        })
        .await;
        Some(released)
    }

    /// Drains node `node` (`DC.NID`): no new sessions; existing ones move after `deadline`.
    pub async fn drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<(), String> {
        self.store_call("set_drain", self.store().set_drain(node, deadline))
            .await
            .ok_or_else(|| "the store is out of reach; try again".to_owned())?;
        lock(&self.placement.sessions).drain(node.clone(), deadline);
        info!(node = %node, deadline = ?deadline.map(|d| d.to_string()), "node drained");
        Ok(())
    }

    /// Lifts a drain; returns whether the node was draining.
    pub async fn undrain(&self, node: &NodeKey) -> Result<bool, String> {
        let had = self
            .store_call("clear_drain", self.store().clear_drain(node))
            .await
            .ok_or_else(|| "the store is out of reach; try again".to_owned())?;
        lock(&self.placement.sessions).undrain(node);
        info!(node = %node, "node undrained");
        Ok(had)
    }

    /// The sessions placed (on `node` only, if given).
    pub fn sessions(&self, node: Option<&str>) -> Vec<Session> {
        let s = lock(&self.placement.sessions);
        match node {
            Some(n) => s.of_node(n),
            None => s.all(),
        }
    }

    /// How many sessions are placed (on `node` only, if given).
    pub fn session_count(&self, node: Option<&str>) -> usize {
        let s = lock(&self.placement.sessions);
        node.map_or_else(|| s.len(), |n| s.count(n) as usize)
    }

    /// Drain marks.
    pub fn drains(&self) -> Vec<(NodeKey, Option<Timestamp>)> {
        lock(&self.placement.sessions).drains()
    }

    /// Moves sessions off nodes drained past their deadline, and releases idle sessions.
    pub(crate) async fn placement_housekeeping(&self) {
        let now = self.now();
        let overdue = lock(&self.placement.sessions).drain_overdue(now);
        let placed: Vec<String> = self.registry().config().placed.iter().cloned().collect();
        for s in overdue {
            let services = match self.registry().lookup(&s.node) {
                Some(e) => vec![e.node.service.clone()],
                None => placed.clone(),
            };
            self.move_one(&s, &services, MoveReason::Drain).await;
        }
        // Idle sessions: looked for once a minute (or a tenth of the TTL, if shorter).
        let ttl = self.placement.config.session_ttl;
        let every = (ttl / 10).min(Duration::from_secs(60)).as_millis() as u64;
        let last = self.placement.last_idle_sweep.load(std::sync::atomic::Ordering::Relaxed);
        if now.as_ms() < last + every {
            return;
        }
        self.placement.last_idle_sweep.store(now.as_ms(), std::sync::atomic::Ordering::Relaxed);
        let before = Timestamp::from_ms(now.as_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)));
        let idle = lock(&self.placement.sessions).idle(before);
        for s in idle {
            self.release(&s, Some(before), MoveReason::Idle, now).await;
        }
    }

    /// Writes batched session use times.
    pub(crate) async fn flush_session_touches(&self) {
        let batch = self.placement.touches.take();
        if batch.is_empty() {
            return;
        }
        if self.store_call("touch_sessions", self.store().touch_sessions(&batch)).await.is_none() {
            self.placement.touches.put_back(batch);
        }
    }

    /// Claims the placements made while the store was out of reach (the store's answer
    /// wins where another replica placed the same session meanwhile).
    pub(crate) async fn replay_held_sessions(&self) -> bool {
        let held: Vec<(Arc<str>, NodeKey)> = lock(&self.placement.held).drain().collect();
        let mut held = held.into_iter();
        while let Some((sid, node)) = held.next() {
            match self.link.call("claim_session", self.store().claim_session(&sid, &node, self.now())).await {
                Ok(SessionClaim::Existing(s) | SessionClaim::Placed(s) | SessionClaim::Moved { session: s, .. }) => {
                    lock(&self.placement.sessions).set(s);
                }
                Ok(SessionClaim::CandidateGone) => {}
                Err(_) => {
                    // Keep this one and the rest (a newer placement held meanwhile wins).
                    let mut h = lock(&self.placement.held);
                    for (sid, node) in std::iter::once((sid, node)).chain(held) {
                        h.entry(sid).or_insert(node);
                    }
                    return false;
                }
            }
        }
        true
    }
}
