//! One replica's whole state, and the decisions that change it.
//!
//! The shell owns exactly one [`Replica`] (behind its one lock). For every request, store
//! answer, change-feed batch and timer tick it calls one method here with the input and
//! `now`; the method changes the state and returns what the shell must do next: the
//! events to publish, the writes to make, the keys to claim. No method does I/O, reads a
//! clock or draws a random number, so each decision is tested as data.
//!
//! What a replica holds besides the [`Registry`] and the [`Sessions`]:
//!
//! - the **keep-alive batch**: node deadlines (and session uses) noted by the fast path,
//!   written to the store every batch interval;
//! - the **store's health**: while the store is out of reach, writes are decided here and
//!   held ([`Pending`]), placements are held, nothing expires; after it comes back, a grace
//!   period of one expiry lets every replica write back the keep-alives it held;
//! - **uncertain claims**: nodes whose expiry claim ran with its answer lost. The store may
//!   have removed them with no one told, so whoever finds one gone announces it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use islb_gob::Node;

use crate::registry::{Event, NodeKey, Registry, Verdict, node_key};
use crate::sessions::{Session, Sessions};
use crate::{Timestamp, WriteAction};

/// The result of an expiry claim (made atomically in the store, so that one replica wins).
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The node's deadline had passed: it is removed and the caller announces it.
    Expired(Arc<Node>),
    /// The node is alive: its deadline (moved by a keep-alive through another replica).
    NotDue(Timestamp),
    /// The node is not there (deleted or expired by someone else, who announced it).
    Gone,
}

/// One change another writer made to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A node was created or its data changed.
    Put(Arc<Node>, Timestamp),
    /// A node was deleted or expired.
    Delete(NodeKey),
    /// A session was placed or moved.
    Session(Session),
    /// A session was released.
    SessionGone(Arc<str>),
    /// A node was marked draining.
    Drain(NodeKey, Option<Timestamp>),
    /// A drain mark was lifted.
    Undrain(NodeKey),
}

/// What the store did with a session claim.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionClaim {
    /// The session is already placed on a live node (another lookup or replica won): use it.
    Existing(Session),
    /// The session was not placed: it is now, on the candidate.
    Placed(Session),
    /// The session was on a node that is gone (or drained past its deadline): it is now on
    /// the candidate.
    Moved {
        /// The new placement.
        session: Session,
        /// The node it was on.
        from: NodeKey,
    },
    /// The candidate is not a live node any more: choose again.
    CandidateGone,
}

/// What a session claim's answer means for the lookup that made it.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// This view lists a node the store has lost, or lacks the node the store chose: catch
    /// up with the store and choose again.
    Retry,
    /// The session is on `node`.
    On {
        /// The node.
        node: Arc<Node>,
        /// How: `"existing"`, `"placed"` or `"moved"` (the placements counter's label).
        outcome: &'static str,
        /// For a move: the session, the node it left, and whether it left because its
        /// node was drained past the deadline (else the node went down).
        moved: Option<(Session, NodeKey, bool)>,
    },
}

/// A node write decided while the store was out of reach, to make when it is back.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    /// Write this node with this deadline.
    Put(Arc<Node>, Timestamp),
    /// Remove the node.
    Delete,
}

/// What to do with a save or update.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteStep {
    /// A keep-alive of a known, unchanged node: its deadline moved here and joins the next
    /// batch. Reply at once; nothing else to do.
    Done,
    /// Ask the store what the write does (atomically, for replicas), then
    /// [`Replica::finish_write`] with its answer.
    Ask {
        /// The node.
        node: Arc<Node>,
        /// Its new deadline.
        deadline: Timestamp,
        /// What the write does to this replica's view (used when the store is out of reach).
        here: Verdict,
    },
}

/// What an expiry round's claims did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expired {
    /// Delete events to publish (and whose sessions to move).
    pub events: Vec<Event>,
    /// The deadlines of the nodes expired, for the lateness measure.
    pub deadlines: Vec<Timestamp>,
}

/// The store as this replica knows it.
#[derive(Debug, Default)]
struct StoreView {
    /// False from a failed call until the store is back and caught up.
    down: bool,
    /// The store reported it lost its data: re-initialise and write everything back.
    reset: bool,
    /// No expiry before this (after an outage).
    grace_until: Option<Timestamp>,
    /// Node writes held during an outage (the latest write of a node wins).
    pending: HashMap<NodeKey, Pending>,
    /// Nodes whose expiry claim failed in flight.
    uncertain: HashSet<NodeKey>,
    /// Placements made during an outage, to claim when the store is back.
    held_sessions: HashMap<Arc<str>, NodeKey>,
    /// Nodes announced (here or by another replica) or first seen during an outage that
    /// the store has not been seen to have yet: left out of placements while the store is
    /// out of reach (other replicas may not know them), kept by a reload (their writer may
    /// not have written them back yet), and not announced again when written in full.
    unconfirmed: HashSet<NodeKey>,
}

/// One replica's state: the registry view, the session table, the keep-alive batch and
/// what it knows of the store.
#[derive(Debug)]
pub struct Replica {
    /// The live nodes.
    pub registry: Registry,
    /// The session table and drain marks.
    pub sessions: Sessions,
    store: StoreView,
    /// The messaging link (NATS) is lost: keep-alives cannot arrive, so nothing expires.
    link_down: bool,
    node_touches: HashMap<NodeKey, Timestamp>,
    session_touches: HashMap<Arc<str>, Timestamp>,
    last_idle_sweep: Option<Timestamp>,
}

impl Replica {
    /// A replica with an empty view over `registry`'s settings.
    pub fn new(registry: Registry) -> Self {
        Replica {
            registry,
            sessions: Sessions::new(),
            store: StoreView::default(),
            link_down: false,
            node_touches: HashMap::new(),
            session_touches: HashMap::new(),
            last_idle_sweep: None,
        }
    }

    // ---- writes -------------------------------------------------------------------

    /// The first step of a save or update: the keep-alive fast path, or a store question.
    /// A `save` always asks the store, so that a node deleted and saved again through other
    /// replicas is never taken for a keep-alive of a stale view.
    pub fn begin_write(&mut self, action: WriteAction, node: Node, now: Timestamp) -> WriteStep {
        let key = node_key(&node);
        let deadline = self.registry.deadline(now);
        let here = self.registry.classify_key(&key, &node);
        if here == Verdict::Unchanged && action == WriteAction::Update {
            self.registry.set_deadline(&key, deadline);
            self.node_touches.insert(key, deadline);
            return WriteStep::Done;
        }
        WriteStep::Ask { node: Arc::new(node), deadline, here }
    }

    /// The second step: the store's `answer` (`None`: out of reach, so the write is decided
    /// here and held). Returns the events to publish and the verdict that applied.
    pub fn finish_write(
        &mut self,
        node: Arc<Node>,
        deadline: Timestamp,
        here: Verdict,
        answer: Option<Verdict>,
    ) -> (Vec<Event>, Verdict) {
        let key = node_key(&node);
        let verdict = match answer {
            Some(verdict) => {
                self.store.unconfirmed.remove(&key);
                verdict
            }
            None => {
                self.hold(key.clone(), Pending::Put(node.clone(), deadline));
                if here == Verdict::Created {
                    self.store.unconfirmed.insert(key.clone());
                }
                here
            }
        };
        // Written again: whatever a lost expiry claim did, the node is here now.
        self.store.uncertain.remove(&key);
        (self.registry.apply_write(node, deadline, verdict), verdict)
    }

    /// The first step of a delete: the node's batched keep-alive is dropped.
    pub fn begin_delete(&mut self, key: &str) {
        self.node_touches.remove(key);
    }

    /// The second step of a delete of `node`, with the store's `answer` (the node it
    /// removed, if it had it; `None`: out of reach). Returns the delete event when this
    /// replica is the one to announce it.
    pub fn finish_delete(&mut self, node: Node, answer: Option<Option<Arc<Node>>>) -> Vec<Event> {
        let key = node.id();
        self.store.unconfirmed.remove(key.as_str());
        let (existed, found) = match answer {
            // Not in the store because a lost expiry claim removed it: it existed for its
            // watchers, who have heard nothing yet.
            Some(None) if self.store.uncertain.remove(key.as_str()) => (self.registry.lookup(&key).is_some(), None),
            Some(found) => (found.is_some(), found),
            None => {
                self.hold(key.as_str().into(), Pending::Delete);
                (self.registry.lookup(&key).is_some(), None)
            }
        };
        self.registry.apply_departure(&key, existed, found.or_else(|| Some(Arc::new(node))))
    }

    // ---- following the store ------------------------------------------------------

    /// Takes the store's whole state (start-up, a gap in the change feed, after an outage).
    ///
    /// The store is the authority: nodes it no longer has were deleted or expired through
    /// another replica, which announced it, and are dropped silently, except those with a
    /// write held here, those first seen during an outage (another replica may still be
    /// writing them back), and those of an uncertain claim (announced here, at least once
    /// rather than never). Its placements replace this replica's, except placements made
    /// here during an outage and not claimed yet. Returns the delete events to announce.
    pub fn reconcile(
        &mut self,
        nodes: Vec<(Arc<Node>, Timestamp)>,
        sessions: Vec<Session>,
        drains: Vec<(NodeKey, Option<Timestamp>)>,
    ) -> Vec<Event> {
        let uncertain = std::mem::take(&mut self.store.uncertain);
        let in_store: HashSet<NodeKey> = nodes.iter().map(|(n, _)| node_key(n)).collect();
        // Nodes not confirmed yet are kept too: the replica that holds their write may not
        // have written it back yet.
        self.store.unconfirmed.retain(|k| !in_store.contains(k));
        let unconfirmed = &self.store.unconfirmed;
        let ghosts: Vec<NodeKey> = self
            .registry
            .entries()
            .map(|(k, _)| k.clone())
            .filter(|k| !in_store.contains(k) && !self.store.pending.contains_key(k) && !unconfirmed.contains(k))
            .collect();
        let mut events = Vec::new();
        for k in ghosts {
            if uncertain.contains(&k) {
                events.extend(self.registry.apply_departure(&k, true, None));
            } else {
                self.registry.remove(&k);
            }
        }
        for (node, deadline) in nodes {
            self.registry.upsert(node, deadline);
        }
        let mine: Vec<Session> = self.store.held_sessions.keys().filter_map(|sid| self.sessions.get(sid)).collect();
        self.sessions = Sessions::new();
        for s in sessions.into_iter().chain(mine) {
            self.sessions.set(s);
        }
        for (node, deadline) in drains {
            self.sessions.drain(node, deadline);
        }
        events
    }

    /// Applies what other replicas wrote (silently: they announced it). Returns the delete
    /// events of nodes of an uncertain claim of this replica's that are now gone.
    pub fn apply_changes(&mut self, changes: Vec<Change>) -> Vec<Event> {
        let mut events = Vec::new();
        for change in changes {
            match change {
                Change::Put(node, deadline) => {
                    self.store.unconfirmed.remove(&node_key(&node));
                    self.registry.upsert(node, deadline);
                }
                Change::Delete(key) => {
                    events.extend(self.forget_gone(&key));
                    self.sessions.forget_node(&key);
                }
                Change::Session(s) => self.sessions.set(s),
                Change::SessionGone(sid) => {
                    self.sessions.remove(&sid);
                }
                Change::Drain(node, deadline) => self.sessions.drain(node, deadline),
                Change::Undrain(node) => {
                    self.sessions.undrain(&node);
                }
            }
        }
        events
    }

    /// A node the store no longer has: when this replica's own expiry claim of it lost its
    /// answer (the store may have removed it then), its delete event, as no one else will
    /// announce it; otherwise it is just forgotten.
    fn forget_gone(&mut self, key: &str) -> Vec<Event> {
        self.store.unconfirmed.remove(key);
        if self.store.uncertain.remove(key) {
            self.registry.apply_departure(key, true, None)
        } else {
            self.registry.remove(key);
            Vec::new()
        }
    }

    /// A replica announced `node` (a `save` or `update` event) at about `now`. This is how
    /// replicas learn each other's new nodes at once, whatever the store does: the node is
    /// taken silently (its announcer wrote it, or holds the write for the store), so its
    /// next keep-alive here is a keep-alive, not a second `save`. Changed data is taken
    /// only while the store is out of reach (otherwise its feed is the authority). Returns
    /// whether the view changed.
    pub fn learn_announced(&mut self, node: Arc<Node>, now: Timestamp) -> bool {
        let key = node_key(&node);
        match self.registry.classify_key(&key, &node) {
            Verdict::Unchanged => return false,
            Verdict::Changed if !self.store.down => return false,
            Verdict::Changed => {}
            Verdict::Created => {
                self.store.unconfirmed.insert(key);
            }
        }
        let deadline = self.registry.deadline(now);
        self.registry.upsert(node, deadline);
        true
    }

    /// A replica announced that the node `key` left: it is dropped silently (the announcer
    /// moves its sessions and removed it from the store, or holds the delete), with any
    /// write of it held here, which would bring it back. Returns whether the view changed.
    pub fn learn_departed(&mut self, key: &str) -> bool {
        if self.registry.lookup(key).is_none() {
            return false;
        }
        self.store.unconfirmed.remove(key);
        if matches!(self.store.pending.get(key), Some(Pending::Put(..))) {
            self.store.pending.remove(key);
        }
        self.node_touches.remove(key);
        self.registry.remove(key);
        true
    }

    /// Decides where a session goes ([`crate::sessions::decide`]); while the store is out
    /// of reach, by the store-free fallback that every replica computes alike.
    pub fn decide(&mut self, ask: &crate::sessions::Ask<'_>) -> crate::sessions::Decision {
        let ask = crate::sessions::Ask { unconfirmed: self.store.down.then_some(&self.store.unconfirmed), ..*ask };
        crate::sessions::decide(&self.registry, &mut self.sessions, &ask)
    }

    /// islb is ready to speak at `now` with nodes loaded from a store, whose deadlines may
    /// have passed while it was down: each gets at least one expiry period from `now` to
    /// keep alive, noted in the batch so that the store learns it too. A node that keeps
    /// alive then sees no delete; one that stayed silent gets one, after that period.
    /// Returns how many nodes got more time.
    pub fn grace_loaded(&mut self, now: Timestamp) -> usize {
        let until = self.registry.deadline(now);
        let late: Vec<NodeKey> =
            self.registry.entries().filter(|(_, e)| e.deadline < until).map(|(k, _)| k.clone()).collect();
        for key in &late {
            self.registry.set_deadline(key, until);
            self.node_touches.insert(key.clone(), until);
        }
        late.len()
    }

    // ---- expiry -------------------------------------------------------------------

    /// When to look for due nodes next: `None` while the store is out of reach (a replica
    /// that cannot see the shared state must not declare nodes dead) or the link is lost
    /// (no keep-alive can arrive), the end of the grace period, or the earliest deadline.
    pub fn next_expiry(&self, now: Timestamp) -> Option<Option<Timestamp>> {
        if self.store.down || self.link_down {
            return None;
        }
        Some(match self.store.grace_until.filter(|g| *g > now) {
            Some(grace) => Some(grace),
            None => self.registry.next_deadline(),
        })
    }

    /// Whether nodes may be expired at `now`: the store answers, no grace period runs, and
    /// some deadline has passed.
    pub fn expiry_due(&self, now: Timestamp) -> bool {
        !self.store.down
            && !self.link_down
            && self.store.grace_until.is_none_or(|g| g <= now)
            && self.registry.next_deadline().is_some_and(|d| d <= now)
    }

    /// Up to `max` due nodes to claim in the store, earliest first, with their deadlines.
    pub fn due(&self, now: Timestamp, max: usize) -> Vec<(NodeKey, Timestamp)> {
        self.registry
            .due(now)
            .into_iter()
            .take(max)
            .filter_map(|k| self.registry.lookup(&k).map(|e| e.deadline).map(|d| (k, d)))
            .collect()
    }

    /// The claims of `due` failed with their answer lost: the store may have removed some.
    pub fn claims_lost(&mut self, due: &[(NodeKey, Timestamp)]) {
        self.store.uncertain.extend(due.iter().map(|(k, _)| k.clone()));
    }

    /// Applies the store's answers to the claims of `due` (in the same order).
    pub fn apply_claims(&mut self, due: &[(NodeKey, Timestamp)], claims: Vec<Claim>) -> Expired {
        let mut out = Expired::default();
        for ((key, deadline), claim) in due.iter().zip(claims) {
            match claim {
                Claim::Expired(node) => {
                    self.store.unconfirmed.remove(key.as_ref());
                    out.events.extend(self.registry.apply_departure(key, true, Some(node)));
                    out.deadlines.push(*deadline);
                }
                Claim::NotDue(deadline) => self.registry.set_deadline(key, deadline),
                // Announced, and never written by whoever holds it (a replica that died
                // with it held): nobody else will say it is gone.
                Claim::Gone if self.store.unconfirmed.remove(key.as_ref()) => {
                    out.events.extend(self.registry.apply_departure(key, true, None));
                    out.deadlines.push(*deadline);
                }
                Claim::Gone => out.events.extend(self.forget_gone(key)),
            }
        }
        out
    }

    // ---- sessions -----------------------------------------------------------------

    /// The claim of `sid` on `node` (chosen for a lookup, coming `from` another node or
    /// new) while the store is out of reach: placed here, held to claim when it is back.
    pub fn claim_held(&mut self, sid: &str, node: NodeKey, from: Option<NodeKey>, now: Timestamp) -> SessionClaim {
        self.hold_session(sid.into(), node.clone());
        let version = self.sessions.get(sid).map_or(0, |s| s.version) + 1;
        let session = Session { sid: sid.into(), node, version, used: now };
        match from {
            Some(from) => SessionClaim::Moved { session, from },
            None => SessionClaim::Placed(session),
        }
    }

    /// Applies the store's answer to a claim of `sid` on `candidate`.
    pub fn settle_claim(&mut self, candidate: Arc<Node>, claim: SessionClaim, now: Timestamp) -> Settled {
        match claim {
            SessionClaim::CandidateGone => Settled::Retry,
            SessionClaim::Existing(s) => {
                let node = self.registry.lookup(&s.node).map(|e| e.node.clone());
                self.sessions.set(s);
                match node {
                    Some(node) => Settled::On { node, outcome: "existing", moved: None },
                    None => Settled::Retry,
                }
            }
            SessionClaim::Placed(s) => {
                self.sessions.set(s);
                Settled::On { node: candidate, outcome: "placed", moved: None }
            }
            SessionClaim::Moved { session, from } => {
                let drained = self.sessions.draining(&from).is_some_and(|d| crate::sessions::drain_passed(d, now))
                    && self.registry.lookup(&from).is_some();
                self.sessions.set(session.clone());
                Settled::On { node: candidate, outcome: "moved", moved: Some((session, from, drained)) }
            }
        }
    }

    // ---- batches ------------------------------------------------------------------

    /// Takes the node deadlines to write in this batch.
    pub fn take_node_touches(&mut self) -> Vec<(NodeKey, Timestamp)> {
        self.node_touches.drain().collect()
    }

    /// Puts back a batch that could not be written; where a key was noted again meanwhile,
    /// the later time wins.
    pub fn put_back_node_touches(&mut self, batch: Vec<(NodeKey, Timestamp)>) {
        put_back(&mut self.node_touches, batch);
    }

    /// Nodes the store did not know when their keep-alives were written (expired or
    /// deleted through another replica) but that are alive here: write them in full.
    pub fn to_write_in_full(&self, unknown: &[NodeKey]) -> Vec<(Arc<Node>, Timestamp)> {
        unknown.iter().filter_map(|k| self.registry.lookup(k)).map(|e| (e.node.clone(), e.deadline)).collect()
    }

    /// The store's `verdict` on a node written in full: the events to publish. A node the
    /// store takes for new is announced (watchers heard it was gone), unless its `save`
    /// went out already, here or from the replica that holds its write (it is not
    /// confirmed yet).
    pub fn written_in_full(&mut self, node: Arc<Node>, deadline: Timestamp, verdict: Verdict) -> Vec<Event> {
        let announced = self.store.unconfirmed.remove(&node_key(&node));
        let verdict = if announced && verdict == Verdict::Created { Verdict::Unchanged } else { verdict };
        self.registry.apply_write(node, deadline, verdict)
    }

    /// Notes the use of session `sid` at `now` (written with the next batch).
    pub fn note_session_use(&mut self, sid: Arc<str>, now: Timestamp) {
        self.sessions.touch(&sid, now);
        self.session_touches.insert(sid, now);
    }

    /// Takes the session uses to write in this batch.
    pub fn take_session_touches(&mut self) -> Vec<(Arc<str>, Timestamp)> {
        self.session_touches.drain().collect()
    }

    /// Puts back session uses that could not be written.
    pub fn put_back_session_touches(&mut self, batch: Vec<(Arc<str>, Timestamp)>) {
        put_back(&mut self.session_touches, batch);
    }

    /// Whether to look for idle sessions at `now` (every tenth of `ttl`, at most every
    /// minute); if so, the time before which a session is idle.
    pub fn idle_sweep(&mut self, now: Timestamp, ttl: std::time::Duration) -> Option<Timestamp> {
        let every = (ttl / 10).min(std::time::Duration::from_secs(60));
        if self.last_idle_sweep.is_some_and(|last| now < last.plus(every)) {
            return None;
        }
        self.last_idle_sweep = Some(now);
        Some(Timestamp::from_ms(now.as_ms().saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))))
    }

    /// The sessions to release when the table holds more than `max`: the least recently
    /// used, down to 1% below `max` (so that the O(n) choice runs once per 1% of new
    /// sessions, not for each). Empty while within the bound.
    pub fn over_capacity(&self, max: usize) -> Vec<Session> {
        let len = self.sessions.len();
        if len <= max {
            return Vec::new();
        }
        self.sessions.least_recently_used(len - (max - max / 100))
    }

    // ---- the store's health -------------------------------------------------------

    /// Whether the store answers (as far as this replica knows).
    pub fn store_healthy(&self) -> bool {
        !self.store.down
    }

    /// A store call failed (`lost_data`: the store said it lost everything). Returns
    /// whether the store counted as healthy until now.
    pub fn store_failed(&mut self, lost_data: bool) -> bool {
        self.store.reset |= lost_data;
        !std::mem::replace(&mut self.store.down, true)
    }

    /// Whether the store lost its data (cleared by asking).
    pub fn take_reset(&mut self) -> bool {
        std::mem::take(&mut self.store.reset)
    }

    /// The store answers again and what was held is written: it counts as healthy, and no
    /// node expires before the returned end of the grace period (one expiry from `now`),
    /// while other replicas write back the keep-alives they held.
    pub fn store_back(&mut self, now: Timestamp) -> Timestamp {
        let grace = self.registry.deadline(now);
        self.store.grace_until = Some(grace);
        self.store.down = false;
        grace
    }

    // ---- the link (NATS) ---------------------------------------------------------

    /// The link to the nodes (NATS) is lost: until it is back nothing expires, since no
    /// keep-alive can arrive. Returns whether it counted as up until now.
    pub fn link_lost(&mut self) -> bool {
        !std::mem::replace(&mut self.link_down, true)
    }

    /// The link is back at `now`: no node expires before the returned end of the grace
    /// period (one expiry from `now`), so every node that kept trying has had a full period
    /// to get a keep-alive through. `None` if it was not lost.
    pub fn link_back(&mut self, now: Timestamp) -> Option<Timestamp> {
        if !std::mem::replace(&mut self.link_down, false) {
            return None;
        }
        let grace = self.registry.deadline(now);
        self.store.grace_until = self.store.grace_until.max(Some(grace));
        Some(grace)
    }

    /// Whether the link counts as up.
    pub fn link_up(&self) -> bool {
        !self.link_down
    }

    /// Holds a node write until the store is back (the latest write of a node wins).
    pub fn hold(&mut self, key: NodeKey, op: Pending) {
        self.store.pending.insert(key, op);
    }

    /// How many node writes are held.
    pub fn held_writes(&self) -> usize {
        self.store.pending.len()
    }

    /// Takes the held node writes to make.
    pub fn take_held_writes(&mut self) -> Vec<(NodeKey, Pending)> {
        self.store.pending.drain().collect()
    }

    /// Puts back held writes that could not be made, unless a newer write of the same node
    /// was held meanwhile.
    pub fn restore_held_writes(&mut self, items: impl IntoIterator<Item = (NodeKey, Pending)>) {
        for (k, op) in items {
            self.store.pending.entry(k).or_insert(op);
        }
    }

    /// Holds a placement made while the store was out of reach.
    pub fn hold_session(&mut self, sid: Arc<str>, node: NodeKey) {
        self.store.held_sessions.insert(sid, node);
    }

    /// Holds every placement this replica knows (for a store that lost its data).
    pub fn hold_all_sessions(&mut self) {
        for s in self.sessions.all() {
            self.store.held_sessions.entry(s.sid.clone()).or_insert(s.node);
        }
    }

    /// Takes the held placements to claim.
    pub fn take_held_sessions(&mut self) -> Vec<(Arc<str>, NodeKey)> {
        self.store.held_sessions.drain().collect()
    }

    /// Puts back held placements that could not be claimed (a newer one held meanwhile wins).
    pub fn restore_held_sessions(&mut self, items: impl IntoIterator<Item = (Arc<str>, NodeKey)>) {
        for (sid, node) in items {
            self.store.held_sessions.entry(sid).or_insert(node);
        }
    }
}

fn put_back<K: std::hash::Hash + Eq>(into: &mut HashMap<K, Timestamp>, batch: Vec<(K, Timestamp)>) {
    for (k, t) in batch {
        let e = into.entry(k).or_insert(t);
        *e = (*e).max(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, RegistryConfig};

    const T0: Timestamp = Timestamp::from_ms(1_000_000);

    fn replica() -> Replica {
        Replica::new(Registry::new(RegistryConfig { expire_ms: 2_000, placed: Default::default() }))
    }

    fn node(nid: &str) -> Node {
        Node { dc: "dc1".into(), service: "signal".into(), nid: nid.into(), ..Node::default() }
    }

    fn kinds(events: &[Event]) -> Vec<(EventKind, String)> {
        events.iter().map(|e| (e.kind, e.node.nid.clone())).collect()
    }

    /// Saves `nid` as the store would answer for a new node.
    fn saved(r: &mut Replica, nid: &str, now: Timestamp) {
        let WriteStep::Ask { node, deadline, here } = r.begin_write(WriteAction::Save, node(nid), now) else {
            panic!("a save asks the store")
        };
        r.finish_write(node, deadline, here, Some(Verdict::Created));
    }

    #[test]
    fn a_keep_alive_of_an_unchanged_node_is_done_here_and_batched() {
        let mut r = replica();
        saved(&mut r, "a", T0);
        assert_eq!(r.begin_write(WriteAction::Update, node("a"), T0.plus_ms(500)), WriteStep::Done);
        assert_eq!(r.registry.lookup("dc1.a").unwrap().deadline, T0.plus_ms(2_500));
        assert_eq!(r.take_node_touches(), vec![("dc1.a".into(), T0.plus_ms(2_500))]);
        assert!(r.take_node_touches().is_empty());
        // A save, or new data, always asks the store.
        assert!(matches!(r.begin_write(WriteAction::Save, node("a"), T0), WriteStep::Ask { .. }));
        let mut changed = node("a");
        changed.rpc.addr = "elsewhere".into();
        let step = r.begin_write(WriteAction::Update, changed, T0);
        assert!(matches!(step, WriteStep::Ask { here: Verdict::Changed, .. }), "{step:?}");
    }

    #[test]
    fn a_write_the_store_cannot_take_is_decided_here_and_held() {
        let mut r = replica();
        let WriteStep::Ask { node, deadline, here } = r.begin_write(WriteAction::Save, node("a"), T0) else { panic!() };
        let (events, verdict) = r.finish_write(node.clone(), deadline, here, None);
        assert_eq!(verdict, Verdict::Created);
        assert_eq!(kinds(&events), [(EventKind::Save, "a".into())]);
        assert_eq!(r.take_held_writes(), vec![("dc1.a".into(), Pending::Put(node, deadline))]);
        r.begin_delete("dc1.a");
        assert_eq!(kinds(&r.finish_delete(self::node("a"), None)), [(EventKind::Delete, "a".into())]);
        assert_eq!(r.take_held_writes(), vec![("dc1.a".into(), Pending::Delete)]);
    }

    #[test]
    fn a_delete_is_announced_by_the_replica_whose_store_call_removed_the_node() {
        let mut r = replica();
        saved(&mut r, "a", T0);
        assert!(r.finish_delete(node("a"), Some(None)).is_empty(), "someone else removed it and announced it");
        saved(&mut r, "b", T0);
        let events = r.finish_delete(node("b"), Some(Some(Arc::new(node("b")))));
        assert_eq!(kinds(&events), [(EventKind::Delete, "b".into())]);
        assert!(r.registry.is_empty());
    }

    #[test]
    fn a_lost_claim_is_announced_by_whichever_path_finds_the_node_gone() {
        // Through the change feed.
        let mut r = replica();
        saved(&mut r, "a", T0);
        let due = r.due(T0.plus_ms(2_000), 10);
        assert_eq!(due, vec![("dc1.a".into(), T0.plus_ms(2_000))]);
        r.claims_lost(&due);
        let events = r.apply_changes(vec![Change::Delete("dc1.a".into())]);
        assert_eq!(kinds(&events), [(EventKind::Delete, "a".into())]);
        assert!(r.apply_changes(vec![Change::Delete("dc1.a".into())]).is_empty(), "once");
        // Through a reload.
        let mut r = replica();
        saved(&mut r, "a", T0);
        saved(&mut r, "b", T0);
        let due = r.due(T0.plus_ms(2_000), 1);
        r.claims_lost(&due);
        let events = r.reconcile(Vec::new(), Vec::new(), Vec::new());
        assert_eq!(kinds(&events), [(EventKind::Delete, "a".into())], "b was removed elsewhere and announced there");
        // Through a later claim that finds it gone.
        let mut r = replica();
        saved(&mut r, "a", T0);
        let due = r.due(T0.plus_ms(2_000), 10);
        r.claims_lost(&due);
        let out = r.apply_claims(&due, vec![Claim::Gone]);
        assert_eq!(kinds(&out.events), [(EventKind::Delete, "a".into())]);
        // A node written again is no longer uncertain.
        let mut r = replica();
        saved(&mut r, "a", T0);
        let due = r.due(T0.plus_ms(2_000), 10);
        r.claims_lost(&due);
        saved(&mut r, "a", T0.plus_ms(2_100));
        assert!(r.apply_changes(vec![Change::Delete("dc1.a".into())]).is_empty());
    }

    #[test]
    fn claims_expire_move_or_forget_nodes() {
        let mut r = replica();
        for n in ["a", "b", "c"] {
            saved(&mut r, n, T0);
        }
        let now = T0.plus_ms(2_000);
        assert!(r.expiry_due(now));
        let due = r.due(now, 10);
        let out = r.apply_claims(
            &due,
            vec![Claim::Expired(Arc::new(node("a"))), Claim::NotDue(T0.plus_ms(5_000)), Claim::Gone],
        );
        assert_eq!(kinds(&out.events), [(EventKind::Delete, "a".into())]);
        assert_eq!(out.deadlines, [T0.plus_ms(2_000)]);
        assert_eq!(r.registry.len(), 1);
        assert_eq!(r.next_expiry(now), Some(Some(T0.plus_ms(5_000))));
    }

    #[test]
    fn nothing_expires_while_the_store_is_down_or_during_the_grace_after_it() {
        let mut r = replica();
        saved(&mut r, "a", T0);
        assert!(r.store_failed(false), "it was healthy");
        assert!(!r.store_failed(false), "and is not any more");
        let late = T0.plus_ms(60_000);
        assert!(!r.expiry_due(late));
        assert_eq!(r.next_expiry(late), None);
        let grace = r.store_back(late);
        assert_eq!(grace, late.plus_ms(2_000));
        assert!(!r.expiry_due(late.plus_ms(1_999)));
        assert_eq!(r.next_expiry(late), Some(Some(grace)));
        assert!(r.expiry_due(grace));
    }

    #[test]
    fn nothing_expires_while_the_link_is_lost_or_for_one_period_after_it_is_back() {
        let mut r = replica();
        saved(&mut r, "a", T0);
        assert_eq!(r.link_back(T0), None, "a link never lost gives no grace");
        assert!(r.expiry_due(T0.plus_ms(2_000)));
        assert!(r.link_lost() && !r.link_lost() && !r.link_up());
        let late = T0.plus_ms(60_000);
        assert!(!r.expiry_due(late));
        assert_eq!(r.next_expiry(late), None);
        assert_eq!(r.link_back(late), Some(late.plus_ms(2_000)));
        assert!(r.link_up());
        assert!(!r.expiry_due(late.plus_ms(1_999)));
        assert_eq!(r.next_expiry(late), Some(Some(late.plus_ms(2_000))));
        assert!(r.expiry_due(late.plus_ms(2_000)));
        // Both at once: the store's outage holds expiry too, and the later grace wins.
        r.store_failed(false);
        r.link_lost();
        let grace = r.store_back(late.plus_ms(10_000));
        assert!(!r.expiry_due(grace), "the link is still lost");
        assert_eq!(r.link_back(late.plus_ms(5_000)), Some(late.plus_ms(7_000)));
        assert_eq!(r.next_expiry(late.plus_ms(5_000)), Some(Some(grace)), "the store's later grace stands");
    }

    #[test]
    fn during_an_outage_replicas_learn_each_others_announcements_silently() {
        let mut r = replica();
        saved(&mut r, "known", T0);
        // With the store answering, new nodes are learned, changes come from its feed.
        let mut changed = node("known");
        changed.extra_info.insert("load".into(), islb_gob::Value::Float64(0.5));
        assert!(!r.learn_announced(Arc::new(changed.clone()), T0));
        assert!(r.learn_announced(Arc::new(node("early")), T0));
        r.store_failed(false);
        assert!(r.learn_announced(Arc::new(changed), T0), "without the store, changes too");
        let other = Arc::new(node("elsewhere"));
        assert!(r.learn_announced(other.clone(), T0));
        assert!(!r.learn_announced(other.clone(), T0), "the same node again changes nothing");
        // Its keep-alive here is a keep-alive: no second save.
        assert_eq!(r.begin_write(WriteAction::Update, node("elsewhere"), T0.plus_ms(500)), WriteStep::Done);
        // It is not offered for placements until the store has it.
        let mut rtc = node("sfu-new");
        rtc.service = "rtc".into();
        assert!(r.learn_announced(Arc::new(rtc), T0));
        let mut known_rtc = node("sfu-old");
        known_rtc.service = "rtc".into();
        let WriteStep::Ask { node: n, deadline, here } = r.begin_write(WriteAction::Save, known_rtc, T0) else {
            panic!()
        };
        r.store_back(T0);
        r.finish_write(n, deadline, here, Some(Verdict::Created));
        r.store_failed(false);
        let ask = crate::sessions::Ask {
            service: "rtc",
            sid: "room",
            prefer_dc: "dc1",
            default_capacity: 0,
            now: T0,
            random: 0,
            unconfirmed: None,
        };
        for i in 0..20 {
            let sid = format!("room-{i}");
            match r.decide(&crate::sessions::Ask { sid: &sid, ..ask }) {
                crate::sessions::Decision::Place { node, .. } => assert_eq!(node.nid, "sfu-old"),
                d => panic!("{d:?}"),
            }
        }
        // A departure another replica announced drops the node, and any write of it held here.
        let WriteStep::Ask { node: n, deadline, here } =
            r.begin_write(WriteAction::Update, node("gone"), T0.plus_ms(100))
        else {
            panic!()
        };
        r.finish_write(n, deadline, here, None);
        let held = r.held_writes();
        assert!(r.learn_departed("dc1.gone"));
        assert!(r.registry.lookup("dc1.gone").is_none());
        assert_eq!(r.held_writes(), held - 1, "the held write would bring it back");
        assert!(!r.learn_departed("dc1.gone"));
        // The store is the authority again once it answers; a reload keeps what was first
        // seen during the outage (its writer may not have written it back yet).
        r.store_back(T0.plus_ms(1_000));
        r.reconcile(Vec::new(), Vec::new(), Vec::new());
        assert!(r.registry.lookup("dc1.elsewhere").is_some());
        assert!(r.registry.lookup("dc1.known").is_none(), "the store no longer has it");
        assert!(r.learn_departed("dc1.elsewhere"));
        assert!(!r.learn_departed("dc1.elsewhere"));
    }

    #[test]
    fn a_node_announced_elsewhere_is_not_announced_again_when_written_in_full() {
        let mut r = replica();
        // Learned from another replica's save, which the store does not have yet.
        let learned = Arc::new(node("learned"));
        assert!(r.learn_announced(learned.clone(), T0));
        assert_eq!(r.written_in_full(learned, T0.plus_ms(2_000), Verdict::Created), []);
        // Alive here after another replica expired it: watchers heard it was gone.
        saved(&mut r, "back", T0);
        let back = r.registry.lookup("dc1.back").unwrap().node.clone();
        let events = r.written_in_full(back, T0.plus_ms(2_000), Verdict::Created);
        assert_eq!(kinds(&events), [(EventKind::Save, "back".into())]);
        // Announced, never written by the replica that held it, and silent: this replica
        // is the one to say it is gone.
        assert!(r.learn_announced(Arc::new(node("orphan")), T0));
        let due = vec![(NodeKey::from("dc1.orphan"), T0.plus_ms(2_000))];
        let out = r.apply_claims(&due, vec![Claim::Gone]);
        assert_eq!(kinds(&out.events), [(EventKind::Delete, "orphan".into())]);
    }

    #[test]
    fn a_reload_keeps_held_writes_and_held_placements() {
        let mut r = replica();
        saved(&mut r, "kept", T0);
        let WriteStep::Ask { node, deadline, here } = r.begin_write(WriteAction::Save, node("held"), T0) else {
            panic!()
        };
        r.finish_write(node, deadline, here, None);
        let mine = Session { sid: "mine".into(), node: "dc1.kept".into(), version: 1, used: T0 };
        r.sessions.set(mine.clone());
        r.hold_session("mine".into(), "dc1.kept".into());
        let theirs = Session { sid: "theirs".into(), node: "dc1.kept".into(), version: 3, used: T0 };
        let events = r.reconcile(
            vec![(Arc::new(self::node("kept")), T0.plus_ms(9_000))],
            vec![theirs.clone()],
            vec![("dc1.kept".into(), None)],
        );
        assert!(events.is_empty());
        assert!(r.registry.lookup("dc1.held").is_some(), "a node with a held write stays");
        assert_eq!(r.registry.lookup("dc1.kept").unwrap().deadline, T0.plus_ms(9_000));
        assert_eq!(r.sessions.all(), vec![mine, theirs]);
        assert_eq!(r.sessions.draining("dc1.kept"), Some(None));
    }

    #[test]
    fn batches_put_back_keep_the_latest_time() {
        let mut r = replica();
        r.note_session_use("s".into(), T0.plus_ms(10));
        let batch = r.take_session_touches();
        r.note_session_use("s".into(), T0.plus_ms(20));
        r.put_back_session_touches(batch);
        assert_eq!(r.take_session_touches(), vec![("s".into(), T0.plus_ms(20))]);
    }

    #[test]
    fn idle_sessions_are_looked_for_every_tenth_of_the_ttl() {
        let mut r = replica();
        let ttl = std::time::Duration::from_secs(100);
        assert_eq!(r.idle_sweep(T0, ttl), Some(Timestamp::from_ms(T0.as_ms() - 100_000)));
        assert_eq!(r.idle_sweep(T0.plus_ms(9_999), ttl), None);
        assert!(r.idle_sweep(T0.plus_ms(10_000), ttl).is_some());
    }

    #[test]
    fn nodes_loaded_after_a_long_downtime_get_one_expiry_period() {
        let mut r = replica();
        let stored_deadline = T0.plus_ms(2_000);
        r.reconcile(
            vec![(Arc::new(node("late")), stored_deadline), (Arc::new(node("fresh")), T0.plus_ms(60_000))],
            Vec::new(),
            Vec::new(),
        );
        let ready = T0.plus_ms(6_000); // down for twice the expiry
        assert!(r.expiry_due(ready), "without the grace, the late node would expire at once");
        assert_eq!(r.grace_loaded(ready), 1);
        assert!(!r.expiry_due(ready.plus_ms(1_999)));
        assert_eq!(r.next_expiry(ready), Some(Some(ready.plus_ms(2_000))));
        assert_eq!(r.take_node_touches(), vec![("dc1.late".into(), ready.plus_ms(2_000))], "the store learns it");
        assert_eq!(r.registry.lookup("dc1.fresh").unwrap().deadline, T0.plus_ms(60_000), "later deadlines stay");
        // It keeps alive: no delete; it stays silent: due after the period.
        assert_eq!(r.begin_write(WriteAction::Update, node("late"), ready.plus_ms(1_000)), WriteStep::Done);
        assert!(!r.expiry_due(ready.plus_ms(2_500)));
    }
}
