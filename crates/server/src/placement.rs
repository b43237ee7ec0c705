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

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use islb_core::placement::Candidate;
use islb_core::session_key::{SessionKey, session_key};
use islb_core::sessions::{Ask, Decision};
use islb_core::{Event, Lookup, NodeKey, Session, SessionClaim, Sessions, Settled, Timestamp, placement};
use islb_gob::Node;
use serde::Serialize;
use tracing::{info, warn};

use crate::reply;
use crate::state::Shared;
use crate::sync::StoreSync;
use crate::throttle::Throttle;
use crate::tokens::{TokenError, Verifier};

/// Placement settings.
#[derive(Debug, Clone)]
pub struct PlacementConfig {
    /// islb's DC: preferred when a lookup names none (param `dc`).
    pub dc: String,
    /// Capacity of nodes that state none (0: unlimited).
    pub default_capacity: u64,
    /// Sessions not looked up for this long are released.
    pub session_ttl: Duration,
    /// Most sessions held; past it the least recently used are released.
    pub max_sessions: usize,
    /// Reads (and, with keys, verifies) the session token of a lookup.
    pub tokens: Arc<Verifier>,
}

/// Why a session moved (the `reason` of an `islb.session.<sid>` event), or `placed` (only
/// on `islb.placed.<sid>`).
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
    /// Released to keep the table within `max-sessions` (the least recently used go).
    Evicted,
    /// Its node left and no other node had room.
    NoCapacity,
    /// Placed for the first time (`from` is `null`); never on `islb.session.<sid>`.
    Placed,
}

/// The JSON published on `islb.session.<sid>` when a session moves or is released, and on
/// `islb.placed.<sid>` when it is placed.
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

pub use islb_core::subject::{placed_subject, session_subject};

fn random() -> u64 {
    rand::random()
}

/// A placement in flight on a node: counts as load until dropped (also when the future
/// doing the placement is dropped, e.g. a cancelled call).
struct InFlight<'a> {
    shared: &'a Shared,
    node: NodeKey,
}

impl<'a> InFlight<'a> {
    /// Begins a placement on `node`.
    fn new(shared: &'a Shared, node: NodeKey) -> Self {
        shared.with(|s| s.replica.sessions.begin_placement(&node));
        InFlight { shared, node }
    }

    /// Takes over a placement begun inside [`Shared::with`] (where the node was chosen).
    fn begun(shared: &'a Shared, sessions: &mut Sessions, node: NodeKey) -> Self {
        sessions.begin_placement(&node);
        InFlight { shared, node }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.with(|s| s.replica.sessions.end_placement(&self.node));
    }
}

/// Session placement for one replica.
pub struct Placement {
    shared: Arc<Shared>,
    sync: Arc<StoreSync>,
    config: PlacementConfig,
    capacity_log: Throttle,
    evict_log: Throttle,
}

impl Placement {
    pub(crate) fn new(shared: Arc<Shared>, sync: Arc<StoreSync>, config: PlacementConfig) -> Self {
        Placement {
            shared,
            sync,
            config,
            capacity_log: Throttle::new(Duration::from_secs(1)),
            evict_log: Throttle::new(Duration::from_secs(10)),
        }
    }

    /// This islb's DC.
    pub fn dc(&self) -> &str {
        &self.config.dc
    }

    /// Reads what other replicas wrote, and announces what that turned up.
    pub(crate) async fn catch_up(&self) {
        let events = self.sync.catch_up().await;
        self.announce_expired(events).await;
    }

    /// Reads what other replicas wrote (in turn, even if a sync just ran), and announces
    /// what that turned up.
    async fn sync(&self) {
        let events = self.sync.sync().await;
        self.announce_expired(events).await;
    }

    /// Publishes the delete events of expired nodes and moves their sessions.
    ///
    /// Rare on a request's path, so its future (fail-over's store calls) is boxed rather
    /// than carried, and copied, in every request's future.
    pub(crate) async fn announce_expired(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        Box::pin(self.announce_departures(&events)).await;
        metrics::counter!("islb_nodes_expired_total").increment(events.len() as u64);
    }

    /// Publishes the delete events of departed nodes and moves their sessions.
    pub(crate) async fn announce_departures(&self, events: &[Event]) {
        self.shared.publish(events).await;
        for e in events {
            self.fail_over(&e.node, MoveReason::NodeDown).await;
        }
    }

    /// The DC a lookup prefers: its `dc` parameter, else this islb's.
    fn prefer_dc(&self, lookup: &Lookup) -> String {
        islb_core::command::param_string(&lookup.params, "dc")
            .ok()
            .flatten()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| self.config.dc.clone())
    }

    /// A `get` of a placed service.
    pub(crate) async fn lookup(&self, lookup: &Lookup) -> Bytes {
        let prefer_dc = self.prefer_dc(lookup);
        let sid = match self.session_of(lookup) {
            Ok(k) => k,
            Err(label) => {
                metrics::counter!("islb_placements_total", "outcome" => "refused").increment(1);
                metrics::counter!("islb_bad_requests_total", "reason" => label).increment(1);
                return reply::nodes(&[]);
            }
        };
        // A session this replica's view has on a live node is answered from the view, with
        // no store round trip (the view follows the store's feed); the store is read and
        // written only to place one.
        if let Some(sid) = &sid
            && let Some(node) = self.placed_here(&lookup.service, sid, &prefer_dc)
        {
            metrics::counter!("islb_placements_total", "outcome" => "existing").increment(1);
            return reply::nodes(&[node]);
        }
        self.catch_up().await;
        match sid {
            Some(sid) => reply::nodes(self.place(&lookup.service, &sid, &prefer_dc).await.as_slice()),
            // An operator's listing: every node, nothing placed or counted.
            None if lookup.operator_listing() => reply::nodes(&self.ranked(&lookup.service, &prefer_dc)),
            None => reply::nodes(&self.place_unnamed(&lookup.service, &prefer_dc)),
        }
    }

    /// The question a lookup of `sid` asks the core at `now` (no store-free fallback).
    fn ask<'a>(&self, service: &'a str, sid: &'a str, prefer_dc: &'a str, now: Timestamp) -> Ask<'a> {
        Ask {
            service,
            sid,
            prefer_dc,
            default_capacity: self.config.default_capacity,
            now,
            random: random(),
            unconfirmed: None,
        }
    }

    /// The session's node when this replica's view has it placed on a live node that is
    /// not drained past its deadline; none when it must be (re)placed.
    fn placed_here(&self, service: &str, sid: &str, prefer_dc: &str) -> Option<Arc<Node>> {
        let now = self.shared.now();
        self.shared.with(|s| {
            let ask = self.ask(service, sid, prefer_dc, now);
            match s.replica.decide(&ask) {
                Decision::Existing(session, node) => {
                    s.replica.note_session_use(session.sid.clone(), now);
                    Some(node)
                }
                _ => None,
            }
        })
    }

    /// The sid a lookup names (none if it names none), or the label of why it was refused.
    fn session_of(&self, lookup: &Lookup) -> Result<Option<String>, &'static str> {
        let refused = |label: &'static str, error: &dyn std::fmt::Display| {
            warn!(service = %lookup.service, %error, "lookup refused: no node answered");
            label
        };
        match session_key(&lookup.params) {
            Ok(None) => Ok(None),
            Ok(Some(SessionKey::Sid(sid))) => Ok(Some(sid)),
            Ok(Some(SessionKey::Token(token))) => match self.config.tokens.sid(&token, self.shared.now()) {
                Ok(sid) => Ok(sid),
                Err(e @ TokenError::Malformed(_)) => Err(refused("bad_jwt", &e)),
                Err(e @ TokenError::Refused(_)) => Err(refused("jwt_refused", &e)),
            },
            Err(e) => Err(refused("bad_param", &e)),
        }
    }

    /// What `islb.ISLB/FindNode` answers: with a sid, the session's node (placed if needed,
    /// for placed services); with a nid, that node; otherwise every live node of the service,
    /// best first (nothing is placed).
    pub async fn find_nodes(&self, service: &str, sid: &str, nid: &str) -> Vec<Arc<Node>> {
        let placed = self.shared.with(|s| s.replica.registry.is_placed(service));
        if !sid.is_empty() && placed {
            self.catch_up().await;
            return self.place(service, sid, &self.config.dc).await.into_iter().collect();
        }
        if !nid.is_empty() && nid != "*" {
            return self.shared.with(|s| {
                s.replica.registry.entries().filter(|(_, e)| e.node.nid == nid).map(|(_, e)| e.node.clone()).collect()
            });
        }
        if !placed {
            let lookup = Lookup { service: service.into(), nid: None, params: Default::default() };
            return self.shared.with(|s| s.replica.registry.get(&lookup));
        }
        self.ranked(service, &self.config.dc)
    }

    /// Every live node of placed `service`, best first for a new session (full and
    /// draining ones last); nothing is placed.
    fn ranked(&self, service: &str, prefer_dc: &str) -> Vec<Arc<Node>> {
        self.rank_candidates(service, prefer_dc, "", |_, _, _| ())
    }

    /// Every live node of `service`, best first, and the first takes an unnamed placement;
    /// when no node has room, no node at all (ion's signal takes the first node it is
    /// given, so a full one must not be offered).
    fn place_unnamed(&self, service: &str, prefer_dc: &str) -> Vec<Arc<Node>> {
        let (order, placed) = self.spread(service, prefer_dc);
        if placed {
            metrics::counter!("islb_placements_total", "outcome" => "unnamed").increment(1);
            return order;
        }
        metrics::counter!("islb_placements_total", "outcome" => "no_capacity").increment(1);
        if let Some(suppressed) = self.capacity_log.allow() {
            if order.is_empty() {
                warn!(service, suppressed, "no node of the service is registered: lookup answered with no node");
            } else {
                warn!(service, suppressed, "no node of the service has room: unnamed lookup answered with no node");
            }
        }
        Vec::new()
    }

    /// A `get` of a service islb does not place (Go mode, or `signal`, `islb`...) by a
    /// caller that takes the first node: every live node, best first by load, with ties
    /// broken at random (Go answers in random order; key order would send every caller to
    /// one node). The first is noted as an unnamed placement, so a burst of calls between
    /// two load reports spreads too. Nothing is hidden: full and draining nodes come last.
    pub(crate) fn spread_lookup(&self, lookup: &Lookup) -> Vec<Arc<Node>> {
        self.spread(&lookup.service, &self.prefer_dc(lookup)).0
    }

    /// Every live node of `service` ranked for a random session key, the first noted as an
    /// unnamed placement if it has room: (the order, whether it had room).
    fn spread(&self, service: &str, prefer_dc: &str) -> (Vec<Arc<Node>>, bool) {
        let session = format!("unnamed-{}", random());
        let mut placed = false;
        let order = self.rank_candidates(service, prefer_dc, &session, |sessions, first, now| {
            if let Some(first) = first.filter(|c| c.eligible()) {
                sessions.note_unnamed(&first.key.as_str().into(), now);
                placed = true;
            }
        });
        (order, placed)
    }

    /// The live nodes of `service` ranked for `session`; `first` sees the best candidate
    /// inside the same critical section (so a placement is noted before anyone else ranks).
    fn rank_candidates(
        &self,
        service: &str,
        prefer_dc: &str,
        session: &str,
        first: impl FnOnce(&mut Sessions, Option<&Candidate>, Timestamp),
    ) -> Vec<Arc<Node>> {
        let now = self.shared.now();
        self.shared.with(|s| {
            let (registry, sessions) = (&s.replica.registry, &mut s.replica.sessions);
            let (plain, nodes): (Vec<_>, Vec<_>) =
                sessions.candidates(registry, service, self.config.default_capacity, now).into_iter().unzip();
            let order = placement::rank(&plain, prefer_dc, session);
            first(sessions, order.first().map(|&i| &plain[i]), now);
            order.into_iter().map(|i| nodes[i].clone()).collect()
        })
    }

    /// The node for session `sid` of `service`, placing it if needed; `None` when no node
    /// has room.
    pub(crate) async fn place(&self, service: &str, sid: &str, prefer_dc: &str) -> Option<Arc<Node>> {
        for _attempt in 0..3 {
            let now = self.shared.now();
            let (decision, fallback) = self.shared.with(|s| {
                let ask = self.ask(service, sid, prefer_dc, now);
                let decision = s.replica.decide(&ask);
                if let Decision::Existing(session, _) = &decision {
                    s.replica.note_session_use(session.sid.clone(), now);
                }
                (decision, !s.replica.store_healthy())
            });
            match decision {
                Decision::Existing(_, node) => {
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
                Decision::Place { node, from } => match Box::pin(self.claim(sid, node, from, now, fallback)).await {
                    Some(placed) => return Some(placed),
                    None => continue,
                },
            }
        }
        warn!(service, sid, "placement did not settle after 3 attempts");
        None
    }

    /// Claims session `sid` on `node` (coming `from` another node, or new; chosen by the
    /// store-free `fallback` or not) in the store: the node it is on, or `None` to choose
    /// again.
    async fn claim(
        &self,
        sid: &str,
        node: Arc<Node>,
        from: Option<NodeKey>,
        now: Timestamp,
        fallback: bool,
    ) -> Option<Arc<Node>> {
        let key: NodeKey = node.id().into();
        let in_flight = InFlight::new(&self.shared, key.clone());
        let call = self.shared.store().claim_session(sid, &key, now);
        let claim = match self.shared.store_call("claim_session", call).await {
            Some(claim) => claim,
            // Chosen while the store answered, and it just failed: choose again, by the
            // fallback every replica computes alike without the store.
            None if !fallback => return None,
            // The store is out of reach: place here and claim when it is back.
            None => self.shared.with(|s| s.replica.claim_held(sid, key.clone(), from.clone(), now)),
        };
        drop(in_flight);
        let placed = match &claim {
            SessionClaim::Placed(session) => Some(session.version),
            _ => None,
        };
        match self.shared.with(|s| s.replica.settle_claim(node, claim, now)) {
            // This view lists a node the store has lost, or lacks the one it
            // chose: catch up and choose again.
            Settled::Retry => {
                self.sync().await;
                None
            }
            Settled::On { node, outcome, moved } => {
                metrics::counter!("islb_placements_total", "outcome" => outcome).increment(1);
                if let Some(version) = placed {
                    let event = SessionEvent {
                        sid: sid.to_owned(),
                        from: None,
                        to: Some(node.nid.clone()),
                        from_key: None,
                        to_key: Some(key.to_string()),
                        reason: MoveReason::Placed,
                        version,
                        time: now.to_string(),
                    };
                    let payload = serde_json::to_vec(&event).expect("serialisable");
                    self.shared.send(placed_subject(sid).into(), payload.into()).await;
                }
                if let Some((session, from, drained)) = moved {
                    self.publish_session_event(SessionEvent {
                        sid: sid.to_owned(),
                        from: Some(nid_of(&from)),
                        to: Some(node.nid.clone()),
                        from_key: Some(from.to_string()),
                        to_key: Some(key.to_string()),
                        reason: if drained { MoveReason::Drain } else { MoveReason::NodeDown },
                        version: session.version,
                        time: now.to_string(),
                    })
                    .await;
                }
                Some(node)
            }
        }
    }

    async fn publish_session_event(&self, event: SessionEvent) {
        info!(sid = %event.sid, from = ?event.from, to = ?event.to, reason = ?event.reason, "session moved");
        let payload = serde_json::to_vec(&event).expect("serialisable");
        self.shared.send(session_subject(&event.sid).into(), payload.into()).await;
        metrics::counter!("islb_session_moves_total", "reason" => format!("{:?}", event.reason)).increment(1);
    }

    /// Moves the sessions of `node` elsewhere (it left, and this replica announced it).
    async fn fail_over(&self, node: &Node, reason: MoveReason) {
        let key = node.id();
        let sessions = self.shared.with(|s| {
            s.replica.sessions.forget_node(&key);
            s.replica.sessions.of_node(&key)
        });
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
        let now = self.shared.now();
        let (target, in_flight) = self.shared.with(|st| {
            let (registry, sessions) = (&st.replica.registry, &mut st.replica.sessions);
            let mut best = None;
            for service in services {
                let (plain, nodes): (Vec<_>, Vec<_>) = sessions
                    .candidates(registry, service, self.config.default_capacity, now)
                    .into_iter()
                    .filter(|(c, _)| c.key.as_str() != &*s.node)
                    .unzip();
                if let Some(i) = placement::choose(&plain, &self.config.dc, &s.sid, random()) {
                    best = Some(nodes[i].clone());
                    break;
                }
            }
            let in_flight = best.as_ref().map(|n| InFlight::begun(&self.shared, sessions, n.id().into()));
            (best, in_flight)
        });
        let to_key: Option<NodeKey> = target.as_ref().map(|n| n.id().into());
        let call = self.shared.store().move_session(&s.sid, s.version, to_key.as_ref(), None, now);
        let moved = self.shared.store_call("move_session", call).await;
        drop(in_flight);
        let Some(Some(new)) = moved else { return }; // someone else moved it, or the store is out of reach
        self.shared.with(|st| match &to_key {
            Some(_) => st.replica.sessions.set(new.clone()),
            None => drop(st.replica.sessions.remove(&s.sid)),
        });
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
        let current = self.shared.with(|s| s.replica.sessions.get(sid))?;
        self.release(&current, None, MoveReason::Released, self.shared.now()).await
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
        let call = self.shared.store().move_session(&s.sid, s.version, None, idle_before, now);
        let released = self.shared.store_call("move_session", call).await??;
        self.shared.with(|st| st.replica.sessions.remove(&s.sid));
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
        self.shared
            .store_call("set_drain", self.shared.store().set_drain(node, deadline))
            .await
            .ok_or_else(|| "the store is out of reach; try again".to_owned())?;
        self.shared.with(|s| s.replica.sessions.drain(node.clone(), deadline));
        info!(node = %node, deadline = ?deadline.map(|d| d.to_string()), "node drained");
        Ok(())
    }

    /// Lifts a drain; returns whether the node was draining.
    pub async fn undrain(&self, node: &NodeKey) -> Result<bool, String> {
        let had = self
            .shared
            .store_call("clear_drain", self.shared.store().clear_drain(node))
            .await
            .ok_or_else(|| "the store is out of reach; try again".to_owned())?;
        self.shared.with(|s| s.replica.sessions.undrain(node));
        info!(node = %node, "node undrained");
        Ok(had)
    }

    /// Moves sessions off nodes drained past their deadline, and releases idle sessions.
    pub(crate) async fn housekeeping(&self) {
        let now = self.shared.now();
        let overdue = self.shared.with(|s| {
            let placed: Vec<String> = s.replica.registry.config().placed.iter().cloned().collect();
            s.replica
                .sessions
                .drain_overdue(now)
                .into_iter()
                .map(|session| {
                    let services = match s.replica.registry.lookup(&session.node) {
                        Some(e) => vec![e.node.service.clone()],
                        None => placed.clone(),
                    };
                    (session, services)
                })
                .collect::<Vec<_>>()
        });
        for (s, services) in overdue {
            self.move_one(&s, &services, MoveReason::Drain).await;
        }
        if let Some(before) = self.shared.with(|s| s.replica.idle_sweep(now, self.config.session_ttl)) {
            let idle = self.shared.with(|s| s.replica.sessions.idle(before));
            for s in idle {
                self.release(&s, Some(before), MoveReason::Idle, now).await;
            }
        }
        self.evict_over_capacity(now).await;
    }

    /// Keeps the session table within `max-sessions`: the least recently used go first
    /// (each only if no replica used it since; the store decides), counted in
    /// `islb_sessions_evicted_total`.
    async fn evict_over_capacity(&self, now: Timestamp) {
        let over = self.shared.with(|s| s.replica.over_capacity(self.config.max_sessions));
        if over.is_empty() {
            return;
        }
        let mut evicted = 0u64;
        for s in &over {
            if self.release(s, Some(s.used.plus_ms(1)), MoveReason::Evicted, now).await.is_some() {
                evicted += 1;
            }
        }
        metrics::counter!("islb_sessions_evicted_total").increment(evicted);
        if let Some(suppressed) = self.evict_log.allow() {
            warn!(
                evicted,
                max_sessions = self.config.max_sessions,
                suppressed,
                "the session table is full: released the least recently used sessions"
            );
        }
    }
}
