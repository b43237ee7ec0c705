//! Session placements as this replica knows them: which node serves each session (sid),
//! with a fencing version, the load islb put on each node, and drain marks.
//!
//! The store holds the authoritative placements (replicas claim atomically); this table is
//! the replica's copy, kept current from the store's change feed, and the input of the
//! pure decisions in [`decide`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use islb_gob::Node;

use crate::placement::{self, Candidate, Report};
use crate::registry::{NodeKey, Registry};
use crate::time::Timestamp;

/// One placed session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The session id (ion's room id).
    pub sid: Arc<str>,
    /// The node serving it (`DC.NID`).
    pub node: NodeKey,
    /// Fencing token: bumped by every placement or move, so a stale writer loses.
    pub version: u64,
    /// Last lookup of the session (for idle release).
    pub used: Timestamp,
}

#[derive(Debug, Clone)]
struct Entry {
    node: NodeKey,
    version: u64,
    used: Timestamp,
}

/// How long an unnamed placement (a lookup without a session key) counts as load on the
/// node it went to: ion's signal sends one lookup per client call and never says when the
/// call ends.
pub const UNNAMED_WINDOW_MS: u64 = 10_000;

/// The session table of one replica.
#[derive(Debug, Default)]
pub struct Sessions {
    by_sid: HashMap<Arc<str>, Entry>,
    by_node: HashMap<NodeKey, HashSet<Arc<str>>>,
    pending: HashMap<NodeKey, u64>,
    unnamed: HashMap<NodeKey, VecDeque<Timestamp>>,
    drains: HashMap<NodeKey, Option<Timestamp>>,
}

impl Sessions {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.by_sid.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_sid.is_empty()
    }

    /// The placement of `sid`.
    pub fn get(&self, sid: &str) -> Option<Session> {
        self.by_sid.get_key_value(sid).map(|(sid, e)| Session {
            sid: sid.clone(),
            node: e.node.clone(),
            version: e.version,
            used: e.used,
        })
    }

    /// Records a placement (replacing an older version; an older one is ignored).
    pub fn set(&mut self, s: Session) {
        if let Some(old) = self.by_sid.get(&s.sid) {
            if old.version > s.version {
                return;
            }
            let old_node = old.node.clone();
            self.unindex(&old_node, &s.sid);
        }
        self.by_node.entry(s.node.clone()).or_default().insert(s.sid.clone());
        self.by_sid.insert(s.sid, Entry { node: s.node, version: s.version, used: s.used });
    }

    /// Marks a session as used now (lookups keep a session from idling out).
    pub fn touch(&mut self, sid: &str, now: Timestamp) {
        if let Some(e) = self.by_sid.get_mut(sid) {
            e.used = e.used.max(now);
        }
    }

    /// Forgets a session.
    pub fn remove(&mut self, sid: &str) -> Option<Session> {
        let (sid, e) = self.by_sid.remove_entry(sid)?;
        self.unindex(&e.node, &sid);
        Some(Session { sid, node: e.node, version: e.version, used: e.used })
    }

    fn unindex(&mut self, node: &NodeKey, sid: &str) {
        if let Some(set) = self.by_node.get_mut(node) {
            set.remove(sid);
            if set.is_empty() {
                self.by_node.remove(node);
            }
        }
    }

    /// The sessions on `node`.
    pub fn of_node(&self, node: &str) -> Vec<Session> {
        let Some(sids) = self.by_node.get(node) else { return Vec::new() };
        let mut out: Vec<Session> = sids.iter().filter_map(|s| self.get(s)).collect();
        out.sort_by(|a, b| a.sid.cmp(&b.sid));
        out
    }

    /// Every session, by sid.
    pub fn all(&self) -> Vec<Session> {
        let mut out: Vec<Session> = self.by_sid.keys().filter_map(|s| self.get(s)).collect();
        out.sort_by(|a, b| a.sid.cmp(&b.sid));
        out
    }

    /// Sessions islb placed on `node`.
    pub fn count(&self, node: &str) -> u64 {
        self.by_node.get(node).map_or(0, |s| s.len() as u64)
    }

    /// Sessions not used since `before` (idle).
    pub fn idle(&self, before: Timestamp) -> Vec<Session> {
        self.by_sid.keys().filter_map(|s| self.get(s)).filter(|s| s.used < before).collect()
    }

    /// The `n` sessions used least recently (the oldest first; the sid breaks ties, so the
    /// choice is the same on every run). O(len) for any `n`.
    pub fn least_recently_used(&self, n: usize) -> Vec<Session> {
        let mut all: Vec<(Timestamp, &Arc<str>)> = self.by_sid.iter().map(|(sid, e)| (e.used, sid)).collect();
        let n = n.min(all.len());
        if n == 0 {
            return Vec::new();
        }
        if n < all.len() {
            all.select_nth_unstable(n - 1);
            all.truncate(n);
        }
        all.sort_unstable();
        all.into_iter().filter_map(|(_, sid)| self.get(sid)).collect()
    }

    /// A placement on `node` is under way (counts as load at once).
    pub fn begin_placement(&mut self, node: &NodeKey) {
        *self.pending.entry(node.clone()).or_default() += 1;
    }

    /// The placement on `node` is done (its session is in the table now, or it failed).
    pub fn end_placement(&mut self, node: &NodeKey) {
        if let Some(n) = self.pending.get_mut(node) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(node);
            }
        }
    }

    /// Forgets the recent unnamed placements of a node that left, so a node that comes back
    /// starts unloaded. In-flight placements are left to their own `end_placement`, and the
    /// drain mark, an operator's decision, stays.
    pub fn forget_node(&mut self, node: &str) {
        self.unnamed.remove(node);
    }

    /// An unnamed placement went to `node` at `now`.
    pub fn note_unnamed(&mut self, node: &NodeKey, now: Timestamp) {
        let q = self.unnamed.entry(node.clone()).or_default();
        q.push_back(now);
        // Bounded: beyond this many recent calls the node is busy anyway.
        if q.len() > 10_000 {
            q.pop_front();
        }
    }

    fn pending_load(&mut self, node: &str, now: Timestamp) -> u64 {
        let in_flight = self.pending.get(node).copied().unwrap_or(0);
        let recent = match self.unnamed.get_mut(node) {
            Some(q) => {
                while q.front().is_some_and(|t| t.plus_ms(UNNAMED_WINDOW_MS) <= now) {
                    q.pop_front();
                }
                q.len() as u64
            }
            None => 0,
        };
        in_flight + recent
    }

    /// Marks `node` as draining (no new sessions), optionally until `deadline` after which
    /// its sessions move.
    pub fn drain(&mut self, node: NodeKey, deadline: Option<Timestamp>) {
        self.drains.insert(node, deadline);
    }

    /// Lifts a drain mark; returns whether there was one.
    pub fn undrain(&mut self, node: &str) -> bool {
        self.drains.remove(node).is_some()
    }

    /// Whether `node` is draining, and until when.
    pub fn draining(&self, node: &str) -> Option<Option<Timestamp>> {
        self.drains.get(node).copied()
    }

    /// Every drain mark.
    pub fn drains(&self) -> Vec<(NodeKey, Option<Timestamp>)> {
        let mut out: Vec<_> = self.drains.iter().map(|(k, d)| (k.clone(), *d)).collect();
        out.sort();
        out
    }

    /// Sessions on drained nodes whose drain deadline has passed (they must move).
    pub fn drain_overdue(&self, now: Timestamp) -> Vec<Session> {
        self.drains.iter().filter(|(_, d)| drain_passed(**d, now)).flat_map(|(node, _)| self.of_node(node)).collect()
    }

    /// One node as a candidate (with its load), if it is registered.
    pub fn candidate(
        &mut self,
        registry: &Registry,
        key: &str,
        default_capacity: u64,
        now: Timestamp,
    ) -> Option<(Candidate, Arc<Node>)> {
        let node = registry.lookup(key)?.node.clone();
        Some(self.candidate_of(key.to_owned(), node, default_capacity, now))
    }

    fn candidate_of(
        &mut self,
        key: String,
        node: Arc<Node>,
        default_capacity: u64,
        now: Timestamp,
    ) -> (Candidate, Arc<Node>) {
        let c = Candidate {
            sessions: self.count(&key),
            pending: self.pending_load(&key, now),
            draining: self.drains.contains_key(key.as_str()),
            report: Report::of(&node),
            default_capacity,
            dc: node.dc.clone(),
            key,
        };
        (c, node)
    }

    /// The candidates for a new session of `service` (live nodes, with their loads).
    pub fn candidates(
        &mut self,
        registry: &Registry,
        service: &str,
        default_capacity: u64,
        now: Timestamp,
    ) -> Vec<(Candidate, Arc<Node>)> {
        let lookup = crate::command::Lookup { service: service.into(), nid: None, params: Default::default() };
        registry
            .get(&lookup)
            .into_iter()
            .map(|node| self.candidate_of(node.id(), node, default_capacity, now))
            .collect()
    }
}

/// What a lookup of a placed service decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The session is placed on a live node: answer it.
    Existing(Session, Arc<Node>),
    /// Place the session on this node (claim it in the store); `from` is the node it was on
    /// if that one is gone.
    Place {
        /// The chosen node.
        node: Arc<Node>,
        /// Where the session was before, if anywhere.
        from: Option<NodeKey>,
    },
    /// Every node of the service is full or draining (or there is none).
    NoCapacity,
}

/// One lookup of a placed service.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The placed service (`rtc`).
    pub service: &'a str,
    /// The session key.
    pub sid: &'a str,
    /// The requester's DC.
    pub prefer_dc: &'a str,
    /// Capacity of nodes that report none (0: unlimited).
    pub default_capacity: u64,
    /// The time.
    pub now: Timestamp,
    /// A random number (for large clusters' sampling).
    pub random: u64,
    /// `Some` while the store is out of reach: choose by [`fallback`] among the nodes the
    /// store had before the outage (all but these), so that every replica, without the
    /// store, places a new session on the same node.
    pub unconfirmed: Option<&'a HashSet<NodeKey>>,
}

/// Whether a drain with `deadline` (`None`: none) makes its sessions move at `now`.
pub fn drain_passed(deadline: Option<Timestamp>, now: Timestamp) -> bool {
    deadline.is_some_and(|d| d <= now)
}

/// Decides where the session goes: its current node while that node lives (draining or
/// not, until the drain deadline: existing sessions stay), else the best candidate.
pub fn decide(registry: &Registry, sessions: &mut Sessions, ask: &Ask<'_>) -> Decision {
    let Ask { service, sid, prefer_dc, default_capacity, now, random, .. } = *ask;
    let current = sessions.get(sid);
    if let Some(s) = &current
        && let Some(e) = registry.lookup(&s.node)
        && e.node.service == service
        && !sessions.draining(&s.node).is_some_and(|d| drain_passed(d, now))
    {
        return Decision::Existing(s.clone(), e.node.clone());
    }
    let from = current.map(|s| s.node);
    if let Some(unconfirmed) = ask.unconfirmed {
        return match fallback(registry, sessions, ask, unconfirmed) {
            Some(node) => Decision::Place { node, from },
            None => Decision::NoCapacity,
        };
    }
    if registry.service_nodes(service).len() > placement::EXACT_LIMIT
        && let Some(node) = sample(registry, sessions, ask)
    {
        return Decision::Place { node, from };
    }
    let (plain, nodes): (Vec<Candidate>, Vec<_>) =
        sessions.candidates(registry, service, default_capacity, now).into_iter().unzip();
    match placement::choose(&plain, prefer_dc, sid, random) {
        Some(i) => Decision::Place { node: nodes[i].clone(), from },
        None => Decision::NoCapacity,
    }
}

/// The choice without the store: the node of highest rendezvous weight for the session
/// among the nodes of the service the store had before the outage (not `unconfirmed`)
/// and not being drained, those of the requester's DC first. Load, sessions and reported
/// capacity are left out on purpose: replicas learn them from different keep-alives and
/// placements, while the store's nodes and drains are what they all saw alike, so every
/// replica picks the same node for a session and no room is split.
fn fallback(
    registry: &Registry,
    sessions: &Sessions,
    ask: &Ask<'_>,
    unconfirmed: &HashSet<NodeKey>,
) -> Option<Arc<Node>> {
    let eligible = |k: &&NodeKey| !unconfirmed.contains(*k) && sessions.draining(k).is_none();
    let best = |keys: &[NodeKey]| {
        keys.iter()
            .filter(eligible)
            .max_by_key(|k| (placement::rendezvous(ask.sid, k), std::cmp::Reverse(&***k)))
            .and_then(|k| registry.lookup(k))
            .map(|e| e.node.clone())
    };
    best(registry.service_dc_nodes(ask.service, ask.prefer_dc)).or_else(|| best(registry.service_nodes(ask.service)))
}

/// Power of two choices in a large cluster, in O(1): up to 16 random draws (from the
/// requester's DC when it has nodes of the service) to find two eligible nodes; the better
/// wins. `None` when the draws find none (a mostly full or draining cluster: the caller
/// then scans every node, which applies the rules exactly).
fn sample(registry: &Registry, sessions: &mut Sessions, ask: &Ask<'_>) -> Option<Arc<Node>> {
    let local = registry.service_dc_nodes(ask.service, ask.prefer_dc);
    let pool = if local.is_empty() { registry.service_nodes(ask.service) } else { local };
    let mut state = ask.random;
    let mut next = || placement::splitmix64(&mut state);
    let mut picks: Vec<(Candidate, Arc<Node>)> = Vec::with_capacity(2);
    for _ in 0..16 {
        let key = &pool[(next() % pool.len() as u64) as usize];
        if picks.iter().any(|(c, _)| c.key == **key) {
            continue;
        }
        if let Some((c, n)) = sessions.candidate(registry, key, ask.default_capacity, ask.now)
            && c.eligible()
        {
            picks.push((c, n));
            if picks.len() == 2 {
                break;
            }
        }
    }
    picks.into_iter().reduce(|a, b| if placement::better(&b.0, &a.0, ask.sid) { b } else { a }).map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RegistryConfig, Verdict};

    const T0: Timestamp = Timestamp::from_ms(1_000_000);

    fn registry(nodes: &[(&str, &str)]) -> Registry {
        let mut r = Registry::new(RegistryConfig { expire_ms: 5_000, placed: ["rtc".to_owned()].into() });
        for (dc, nid) in nodes {
            let n = Node { dc: (*dc).into(), service: "rtc".into(), nid: (*nid).into(), ..Node::default() };
            r.apply_write(Arc::new(n), T0.plus_ms(5_000), Verdict::Created);
        }
        r
    }

    fn ask(sid: &str, default_capacity: u64, now: Timestamp) -> Ask<'_> {
        Ask { service: "rtc", sid, prefer_dc: "dc1", default_capacity, now, random: 0, unconfirmed: None }
    }

    fn session(sid: &str, node: &str, version: u64) -> Session {
        Session { sid: sid.into(), node: node.into(), version, used: T0 }
    }

    #[test]
    fn without_the_store_every_replica_places_a_session_alike_whatever_it_saw_of_load() {
        let nodes = [("dc1", "a"), ("dc1", "b"), ("dc1", "c"), ("dc2", "d")];
        let none = HashSet::new();
        let fallback = |r: &Registry, s: &mut Sessions, sid: &str, unconfirmed: &HashSet<NodeKey>| match decide(
            r,
            s,
            &Ask { unconfirmed: Some(unconfirmed), ..ask(sid, 0, T0) },
        ) {
            Decision::Place { node, .. } => node.nid.clone(),
            d => panic!("{d:?}"),
        };
        // Two replicas that saw different placements and reports.
        let (r1, mut s1) = (registry(&nodes), Sessions::new());
        let mut r2 = registry(&nodes);
        let mut s2 = Sessions::new();
        for i in 0..50 {
            s2.set(session(&format!("busy{i}"), "dc1.a", 1));
        }
        let mut loaded = (*r2.lookup("dc1.b").unwrap().node).clone();
        loaded.extra_info.insert("load".into(), islb_gob::Value::Float64(0.99));
        r2.apply_write(Arc::new(loaded), T0.plus_ms(5_000), Verdict::Changed);
        let mut chosen = HashMap::<String, usize>::new();
        for i in 0..300 {
            let sid = format!("room-{i}");
            let one = fallback(&r1, &mut s1, &sid, &none);
            assert_eq!(one, fallback(&r2, &mut s2, &sid, &none), "{sid}: the replicas disagree");
            *chosen.entry(one).or_default() += 1;
        }
        // Spread over the requester's DC only.
        assert_eq!(
            chosen.keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(),
            ["a", "b", "c"].into()
        );
        assert!(chosen.values().all(|&n| n > 60), "{chosen:?}");
        // Draining nodes and nodes first seen during the outage take nothing new.
        let mut s3 = Sessions::new();
        s3.drain("dc1.a".into(), None);
        let unconfirmed: HashSet<NodeKey> = ["dc1.b".into()].into();
        for i in 0..50 {
            assert_eq!(fallback(&r1, &mut s3, &format!("room-{i}"), &unconfirmed), "c");
        }
        // With no node of its DC left, another DC's.
        let all: HashSet<NodeKey> = ["dc1.a".into(), "dc1.b".into(), "dc1.c".into()].into();
        assert_eq!(fallback(&r1, &mut Sessions::new(), "room-1", &all), "d");
        // A session placed before stays where it is.
        let mut s4 = Sessions::new();
        s4.set(session("room-1", "dc1.a", 1));
        let d = decide(&r1, &mut s4, &Ask { unconfirmed: Some(&none), ..ask("room-1", 0, T0) });
        assert!(matches!(d, Decision::Existing(_, ref n) if n.nid == "a"), "{d:?}");
    }

    #[test]
    fn the_least_recently_used_sessions_come_oldest_first() {
        let mut s = Sessions::new();
        for (i, used) in [5u64, 1, 9, 3, 7, 3].iter().enumerate() {
            s.set(Session { used: T0.plus_ms(*used), ..session(&format!("s{i}"), "dc1.a", 1) });
        }
        let sids = |v: Vec<Session>| v.into_iter().map(|s| s.sid.to_string()).collect::<Vec<_>>();
        assert_eq!(sids(s.least_recently_used(3)), ["s1", "s3", "s5"]);
        assert_eq!(sids(s.least_recently_used(0)), Vec::<String>::new());
        assert_eq!(s.least_recently_used(99).len(), 6);
        s.touch("s1", T0.plus_ms(100));
        assert_eq!(sids(s.least_recently_used(1)), ["s3"]);
    }

    #[test]
    fn a_placed_session_stays_on_its_live_node() {
        let r = registry(&[("dc1", "a"), ("dc1", "b")]);
        let mut s = Sessions::new();
        s.set(session("room", "dc1.b", 1));
        for _ in 0..5 {
            s.set(session(&format!("other{}", s.len()), "dc1.a", 1));
        }
        match decide(&r, &mut s, &ask("room", 0, T0)) {
            Decision::Existing(sess, node) => {
                assert_eq!(node.nid, "b");
                assert_eq!(sess.version, 1);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_session_whose_node_is_gone_is_placed_again_and_says_where_from() {
        let mut r = registry(&[("dc1", "a"), ("dc1", "b")]);
        let mut s = Sessions::new();
        s.set(session("room", "dc1.b", 3));
        r.apply_departure("dc1.b", true, None);
        assert_eq!(
            decide(&r, &mut s, &ask("room", 0, T0)),
            Decision::Place { node: r.lookup("dc1.a").unwrap().node.clone(), from: Some("dc1.b".into()) }
        );
    }

    #[test]
    fn a_new_session_goes_to_the_least_loaded_node() {
        let r = registry(&[("dc1", "a"), ("dc1", "b")]);
        let mut s = Sessions::new();
        s.set(session("x", "dc1.a", 1));
        let Decision::Place { node, from: None } = decide(&r, &mut s, &ask("new", 0, T0)) else { panic!() };
        assert_eq!(node.nid, "b");
    }

    #[test]
    fn draining_keeps_existing_sessions_until_the_deadline() {
        let r = registry(&[("dc1", "a"), ("dc1", "b")]);
        let mut s = Sessions::new();
        s.set(session("room", "dc1.a", 1));
        s.drain("dc1.a".into(), Some(T0.plus_ms(1_000)));
        assert!(matches!(decide(&r, &mut s, &ask("room", 0, T0)), Decision::Existing(..)));
        let Decision::Place { node, .. } = decide(&r, &mut s, &ask("fresh", 0, T0)) else { panic!() };
        assert_eq!(node.nid, "b", "no new session on a draining node");
        assert_eq!(s.drain_overdue(T0.plus_ms(999)), vec![]);
        assert_eq!(s.drain_overdue(T0.plus_ms(1_000)), vec![session("room", "dc1.a", 1)]);
        let Decision::Place { node, from } = decide(&r, &mut s, &ask("room", 0, T0.plus_ms(1_000))) else { panic!() };
        assert_eq!((node.nid.as_str(), from.as_deref()), ("b", Some("dc1.a")), "past the deadline it moves");
        assert!(s.undrain("dc1.a"));
        assert!(!s.undrain("dc1.a"));
    }

    #[test]
    fn no_capacity_when_everything_is_full() {
        let r = registry(&[("dc1", "a")]);
        let mut s = Sessions::new();
        s.set(session("x", "dc1.a", 1));
        assert_eq!(decide(&r, &mut s, &ask("y", 1, T0)), Decision::NoCapacity);
        assert_eq!(decide(&registry(&[]), &mut Sessions::new(), &ask("y", 0, T0)), Decision::NoCapacity);
    }

    #[test]
    fn versions_fence_stale_writes() {
        let mut s = Sessions::new();
        s.set(session("room", "dc1.a", 5));
        s.set(session("room", "dc1.b", 4));
        assert_eq!(s.get("room").unwrap().node.as_ref(), "dc1.a");
        s.set(session("room", "dc1.b", 6));
        assert_eq!(s.get("room").unwrap().node.as_ref(), "dc1.b");
        assert_eq!((s.count("dc1.a"), s.count("dc1.b")), (0, 1));
        assert_eq!(s.remove("room").unwrap().version, 6);
        assert!(s.is_empty() && s.count("dc1.b") == 0);
    }

    #[test]
    fn pending_and_recent_unnamed_placements_count_as_load_then_decay() {
        let r = registry(&[("dc1", "a"), ("dc1", "b")]);
        let mut s = Sessions::new();
        let a: NodeKey = "dc1.a".into();
        s.begin_placement(&a);
        let Decision::Place { node, .. } = decide(&r, &mut s, &ask("n1", 0, T0)) else { panic!() };
        assert_eq!(node.nid, "b");
        s.end_placement(&a);
        s.note_unnamed(&a, T0);
        s.note_unnamed(&a, T0);
        let Decision::Place { node, .. } = decide(&r, &mut s, &ask("n2", 0, T0.plus_ms(9_999))) else { panic!() };
        assert_eq!(node.nid, "b");
        let c = s.candidates(&r, "rtc", 0, T0.plus_ms(UNNAMED_WINDOW_MS));
        assert!(c.iter().all(|(c, _)| c.pending == 0), "unnamed placements decay: {c:?}");
    }

    #[test]
    fn a_node_that_left_comes_back_without_its_old_unnamed_load() {
        let r = registry(&[("dc1", "a"), ("dc1", "b")]);
        let mut s = Sessions::new();
        let a: NodeKey = "dc1.a".into();
        s.note_unnamed(&a, T0);
        s.drain(a.clone(), None);
        s.forget_node("dc1.a");
        s.undrain("dc1.a");
        let c = s.candidates(&r, "rtc", 0, T0);
        assert!(c.iter().all(|(c, _)| c.pending == 0), "{c:?}");
        s.drain(a.clone(), None);
        s.forget_node("dc1.a");
        assert_eq!(s.draining("dc1.a"), Some(None), "a drain outlives the node's departure");
    }

    #[test]
    fn large_clusters_sample_two_nodes_and_prefer_the_less_loaded() {
        let nodes: Vec<(String, String)> = (0..200).map(|i| ("dc1".to_owned(), format!("n{i}"))).collect();
        let refs: Vec<(&str, &str)> = nodes.iter().map(|(d, n)| (d.as_str(), n.as_str())).collect();
        let r = registry(&refs);
        let mut s = Sessions::new();
        // Load every node but n7 heavily: sampling two nodes at a time, the empty node wins
        // whenever it is drawn, and the loads stay within the sampled pair's.
        for i in 0..200 {
            for j in 0..(if i == 7 { 0 } else { 5 }) {
                s.set(session(&format!("s{i}-{j}"), &format!("dc1.n{i}"), 1));
            }
        }
        let mut hits_n7 = 0;
        for seed in 0..400u64 {
            let a = Ask { random: seed, ..ask("x", 0, T0) };
            let Decision::Place { node, .. } = decide(&r, &mut s, &a) else { panic!() };
            hits_n7 += usize::from(node.nid == "n7");
        }
        // n7 is in about 2/200 of the samples.
        assert!((1..=20).contains(&hits_n7), "{hits_n7}");
    }

    #[test]
    fn a_mostly_full_large_cluster_falls_back_to_an_exact_scan() {
        let nodes: Vec<(String, String)> = (0..100).map(|i| ("dc1".to_owned(), format!("n{i}"))).collect();
        let refs: Vec<(&str, &str)> = nodes.iter().map(|(d, n)| (d.as_str(), n.as_str())).collect();
        let r = registry(&refs);
        let mut s = Sessions::new();
        for i in 0..100 {
            if i != 42 {
                s.drain(format!("dc1.n{i}").into(), None);
            }
        }
        let a = Ask { random: 1, ..ask("x", 0, T0) };
        let Decision::Place { node, .. } = decide(&r, &mut s, &a) else { panic!() };
        assert_eq!(node.nid, "n42", "the one node left is found");
    }

    #[test]
    fn idle_sessions_are_found_by_last_use() {
        let mut s = Sessions::new();
        s.set(session("a", "dc1.a", 1));
        s.set(session("b", "dc1.a", 1));
        s.touch("b", T0.plus_ms(100));
        assert_eq!(s.idle(T0.plus_ms(50)).iter().map(|s| &*s.sid).collect::<Vec<_>>(), ["a"]);
    }
}
