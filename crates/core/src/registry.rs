//! The node registry as a synchronous state machine: this replica's view of every live
//! node with its expiry deadline, and the rules that turn writes, deletes and expiries
//! into the events watchers receive.
//!
//! Whether a write created or changed a node is decided by the store (which several
//! replicas share) and handed in as a [`Verdict`]; [`Registry::classify`] gives the
//! local guess, used for the keep-alive fast path and while the store is unreachable.
//! Time is an argument ([`Timestamp`]); nothing here sleeps or does I/O.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use islb_gob::Node;

use crate::command::Lookup;
use crate::time::Timestamp;

/// A node's key, `DC.NID` (Go's `Node.ID()`).
pub type NodeKey = Arc<str>;

/// The key of a node.
pub fn node_key(node: &Node) -> NodeKey {
    node.id().into()
}

/// Registry settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// How long a node lives after its last keep-alive, in milliseconds.
    pub expire_ms: u64,
    /// Services placed per session: hidden from `get *` and from save/update events
    /// (their delete events are still published).
    pub placed: BTreeSet<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { expire_ms: 5_000, placed: BTreeSet::new() }
    }
}

/// A live node and when it expires.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The node as last registered.
    pub node: Arc<Node>,
    /// When it expires unless kept alive.
    pub deadline: Timestamp,
    /// Where its key stands in its service's positional indexes.
    slots: Slots,
}

/// Positions of a node's key in the positional indexes of its service (all nodes, and
/// those of its DC), kept in the entry so that the indexes need no map of their own.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Slots {
    all: usize,
    dc: usize,
}

/// Moves `e` (the entry of `key`) to `deadline` in the deadline index too.
fn move_deadline(deadlines: &mut BTreeSet<(Timestamp, NodeKey)>, key: &NodeKey, e: &mut Entry, deadline: Timestamp) {
    if e.deadline != deadline {
        deadlines.remove(&(e.deadline, key.clone()));
        deadlines.insert((deadline, key.clone()));
        e.deadline = deadline;
    }
}

/// The effect of a write on the authoritative (shared) state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The node was not registered.
    Created,
    /// The node was registered with other data (RPC, ExtraInfo...).
    Changed,
    /// The node was registered with the same data: only its expiry moved.
    Unchanged,
}

/// What a watcher is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A node came up (Go watchers: NodeUp).
    Save,
    /// A node's data changed (Go watchers: NodeKeepalive, ignored by ion).
    Update,
    /// A node went away, explicitly or by expiry (Go watchers: NodeDown).
    Delete,
}

impl EventKind {
    /// The action string of the event's gob `Request`.
    pub fn action(self) -> &'static str {
        match self {
            EventKind::Save => "save",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
        }
    }
}

/// An event to publish on `node.discovery.<service>.<dc>.<nid>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// save, update or delete.
    pub kind: EventKind,
    /// The node concerned.
    pub node: Arc<Node>,
}

impl Event {
    /// The NATS subject of this event.
    pub fn subject(&self) -> String {
        format!("node.discovery.{}.{}.{}", self.node.service, self.node.dc, self.node.nid)
    }
}

/// This replica's view of the registry.
#[derive(Debug, Default)]
pub struct Registry {
    config: RegistryConfig,
    nodes: HashMap<NodeKey, Entry>,
    deadlines: BTreeSet<(Timestamp, NodeKey)>,
    services: HashMap<String, Service>,
    generation: u64,
}

#[derive(Debug, Default)]
struct Service {
    /// In key order, for answers.
    keys: BTreeSet<NodeKey>,
    generation: u64,
    /// By position, for random sampling (placement in large clusters).
    all: Indexed,
    by_dc: HashMap<String, Indexed>,
}

/// Keys that can be read by position (for sampling); each key's position is kept in its
/// [`Entry`], and a removal moves the last key into the gap.
#[derive(Debug, Default)]
struct Indexed {
    list: Vec<NodeKey>,
}

impl Indexed {
    /// Adds `key`; returns its position.
    fn push(&mut self, key: NodeKey) -> usize {
        self.list.push(key);
        self.list.len() - 1
    }

    /// Removes the key at `pos`; returns the key moved into `pos`, if one was.
    fn swap_remove(&mut self, pos: usize) -> Option<NodeKey> {
        if pos >= self.list.len() {
            return None;
        }
        self.list.swap_remove(pos);
        self.list.get(pos).cloned()
    }
}

/// The DC part of a `DC.NID` key.
fn dc_of(key: &str) -> &str {
    key.split_once('.').map_or("", |(dc, _)| dc)
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Registry { config, ..Registry::default() }
    }

    /// The settings.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The deadline of a node kept alive at `now`.
    pub fn deadline(&self, now: Timestamp) -> Timestamp {
        now.plus_ms(self.config.expire_ms)
    }

    /// Whether `service` is placed per session.
    pub fn is_placed(&self, service: &str) -> bool {
        self.config.placed.contains(service)
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is registered.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The entry of a node.
    pub fn lookup(&self, key: &str) -> Option<&Entry> {
        self.nodes.get(key)
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (&NodeKey, &Entry)> {
        self.nodes.iter()
    }

    /// What a write of `node` would do to this view.
    pub fn classify(&self, node: &Node) -> Verdict {
        self.classify_key(&node.id(), node)
    }

    /// [`Registry::classify`] for a caller that has the node's key already.
    pub fn classify_key(&self, key: &str, node: &Node) -> Verdict {
        match self.nodes.get(key) {
            None => Verdict::Created,
            Some(e) if *e.node == *node => Verdict::Unchanged,
            Some(_) => Verdict::Changed,
        }
    }

    /// Applies a save or update whose effect on the shared state is `verdict`, with the
    /// node's new `deadline`; returns the events to publish.
    ///
    /// Rules (docs/PROTOCOL.md): a new node is announced with a `save` event, whatever
    /// the action (an `update` of an unknown node, after a registry restart, is a node
    /// coming up for watchers); new data for a known node is announced with `update`;
    /// an unchanged keep-alive is silent. Placed services are never announced.
    pub fn apply_write(&mut self, node: Arc<Node>, deadline: Timestamp, verdict: Verdict) -> Vec<Event> {
        let placed = self.is_placed(&node.service);
        self.upsert(node.clone(), deadline);
        let kind = match verdict {
            Verdict::Created => EventKind::Save,
            Verdict::Changed => EventKind::Update,
            Verdict::Unchanged => return Vec::new(),
        };
        if placed {
            return Vec::new();
        }
        vec![Event { kind, node }]
    }

    /// Removes a node that left (`existed`: whether the shared state still had it, so that
    /// exactly one replica announces it); returns the delete event, placed services too.
    pub fn apply_departure(&mut self, key: &str, existed: bool, fallback: Option<Arc<Node>>) -> Vec<Event> {
        let removed = self.remove(key);
        if !existed {
            return Vec::new();
        }
        match removed.map(|e| e.node).or(fallback) {
            Some(node) => vec![Event { kind: EventKind::Delete, node }],
            None => Vec::new(),
        }
    }

    /// Sets the deadline of a known node (another replica refreshed it).
    pub fn set_deadline(&mut self, key: &str, deadline: Timestamp) {
        let Some((k, _)) = self.nodes.get_key_value(key) else { return };
        let k = k.clone();
        if let Some(e) = self.nodes.get_mut(&k) {
            move_deadline(&mut self.deadlines, &k, e, deadline);
        }
    }

    /// Inserts or replaces a node without any event (sync from the shared state).
    pub fn upsert(&mut self, node: Arc<Node>, deadline: Timestamp) {
        let key = node_key(&node);
        match self.nodes.get_mut(&key) {
            Some(e) => {
                move_deadline(&mut self.deadlines, &key, e, deadline);
                if *e.node != *node {
                    let old = std::mem::replace(&mut e.node, node.clone());
                    let slots = e.slots;
                    if old.service != node.service {
                        self.unindex(&old.service, &key, slots);
                        let slots = self.index(&node.service, key.clone());
                        if let Some(e) = self.nodes.get_mut(&key) {
                            e.slots = slots;
                        }
                        self.bump(&old.service);
                    }
                    self.bump(&node.service);
                }
            }
            None => {
                self.deadlines.insert((deadline, key.clone()));
                let slots = self.index(&node.service, key.clone());
                self.bump(&node.service);
                self.nodes.insert(key, Entry { node, deadline, slots });
            }
        }
    }

    /// Removes a node without any event; returns its entry.
    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        let (key, entry) = self.nodes.remove_entry(key)?;
        self.deadlines.remove(&(entry.deadline, key.clone()));
        self.unindex(&entry.node.service, &key, entry.slots);
        self.bump(&entry.node.service);
        Some(entry)
    }

    fn index(&mut self, service: &str, key: NodeKey) -> Slots {
        let s = self.services.entry(service.to_owned()).or_default();
        let all = s.all.push(key.clone());
        let dc = s.by_dc.entry(dc_of(&key).to_owned()).or_default().push(key.clone());
        s.keys.insert(key);
        Slots { all, dc }
    }

    /// Takes `key` (at `slots`) out of `service`'s indexes; the keys moved into its places
    /// get their new positions.
    fn unindex(&mut self, service: &str, key: &str, slots: Slots) {
        let Some(s) = self.services.get_mut(service) else { return };
        s.keys.remove(key);
        let moved_all = s.all.swap_remove(slots.all);
        let moved_dc = s.by_dc.get_mut(dc_of(key)).and_then(|d| d.swap_remove(slots.dc));
        if let Some(e) = moved_all.and_then(|m| self.nodes.get_mut(&m)) {
            e.slots.all = slots.all;
        }
        if let Some(e) = moved_dc.and_then(|m| self.nodes.get_mut(&m)) {
            e.slots.dc = slots.dc;
        }
    }

    /// The nodes of `service`, in no particular order (for random sampling).
    pub fn service_nodes(&self, service: &str) -> &[NodeKey] {
        self.services.get(service).map_or(&[], |s| &s.all.list)
    }

    /// The nodes of `service` in `dc`, in no particular order.
    pub fn service_dc_nodes(&self, service: &str, dc: &str) -> &[NodeKey] {
        self.services.get(service).and_then(|s| s.by_dc.get(dc)).map_or(&[], |d| &d.list)
    }

    fn bump(&mut self, service: &str) {
        self.generation += 1;
        if let Some(s) = self.services.get_mut(service) {
            s.generation += 1;
        }
    }

    /// A number that changes whenever the answer to a parameterless `get service` may
    /// change (for caching encoded replies).
    pub fn generation(&self, service: &str) -> u64 {
        if service == "*" { self.generation } else { self.services.get(service).map_or(0, |s| s.generation) }
    }

    /// The earliest deadline, if any node is registered.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Keys of the nodes whose deadline is at or before `now`, earliest first.
    pub fn due(&self, now: Timestamp) -> Vec<NodeKey> {
        self.deadlines.iter().take_while(|(t, _)| *t <= now).map(|(_, k)| k.clone()).collect()
    }

    /// Expires every due node at once (single replica: nobody else to ask); returns the
    /// delete events.
    pub fn expire_due(&mut self, now: Timestamp) -> Vec<Event> {
        self.due(now).iter().flat_map(|k| self.apply_departure(k, true, None)).collect()
    }

    /// The nodes a `get` lists, in key order: one service (or `*`: every service except
    /// the placed ones, unless the lookup asks for them), optionally one NID.
    pub fn get(&self, lookup: &Lookup) -> Vec<Arc<Node>> {
        let matches_nid = |e: &Entry| lookup.nid.as_ref().is_none_or(|n| *n == e.node.nid);
        if lookup.service == "*" {
            let all = lookup.include_placed();
            let mut keys: Vec<&NodeKey> = self
                .services
                .iter()
                .filter(|(s, _)| all || !self.is_placed(s))
                .flat_map(|(_, s)| s.keys.iter())
                .collect();
            keys.sort();
            keys.into_iter()
                .filter_map(|k| self.nodes.get(k))
                .filter(|e| matches_nid(e))
                .map(|e| e.node.clone())
                .collect()
        } else {
            self.services
                .get(&lookup.service)
                .into_iter()
                .flat_map(|s| s.keys.iter())
                .filter_map(|k| self.nodes.get(k))
                .filter(|e| matches_nid(e))
                .map(|e| e.node.clone())
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use islb_gob::{Value, ValueMap};

    fn node(svc: &str, nid: &str) -> Arc<Node> {
        Arc::new(Node { dc: "dc1".into(), service: svc.into(), nid: nid.into(), ..Node::default() })
    }

    fn lookup(service: &str) -> Lookup {
        Lookup { service: service.into(), nid: None, params: ValueMap::new() }
    }

    fn reg() -> Registry {
        Registry::new(RegistryConfig { expire_ms: 5_000, placed: ["rtc".to_owned()].into() })
    }

    const T0: Timestamp = Timestamp::from_ms(1_000_000);

    #[test]
    fn a_new_node_is_announced_with_save_whatever_the_action() {
        let mut r = reg();
        let n = node("signal", "sig-1");
        for _ in 0..2 {
            let mut r2 = reg();
            let ev = r2.apply_write(n.clone(), T0, r2.classify(&n));
            assert_eq!(ev, vec![Event { kind: EventKind::Save, node: n.clone() }]);
        }
        assert_eq!(r.classify(&n), Verdict::Created);
        r.apply_write(n.clone(), T0, Verdict::Created);
        assert_eq!(r.classify(&n), Verdict::Unchanged);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn an_unchanged_keep_alive_is_silent_and_moves_the_deadline() {
        let mut r = reg();
        let n = node("signal", "sig-1");
        r.apply_write(n.clone(), T0, Verdict::Created);
        let later = r.deadline(T0.plus_ms(2_000));
        assert!(r.apply_write(n.clone(), later, Verdict::Unchanged).is_empty());
        assert_eq!(r.lookup("dc1.sig-1").unwrap().deadline, later);
        assert_eq!(r.next_deadline(), Some(later));
        // A save of a known node also refreshes it (Go's does not).
        let later2 = later.plus_ms(1);
        assert!(r.apply_write(n, later2, Verdict::Unchanged).is_empty());
        assert_eq!(r.next_deadline(), Some(later2));
    }

    #[test]
    fn changed_node_data_replaces_the_node_and_is_announced_with_update() {
        let mut r = reg();
        let n = node("signal", "sig-1");
        r.apply_write(n.clone(), T0, Verdict::Created);
        let mut changed = (*n).clone();
        changed.extra_info.insert("load".into(), Value::Float64(0.5));
        let changed = Arc::new(changed);
        assert_eq!(r.classify(&changed), Verdict::Changed);
        let ev = r.apply_write(changed.clone(), T0, Verdict::Changed);
        assert_eq!(ev, vec![Event { kind: EventKind::Update, node: changed.clone() }]);
        assert_eq!(r.get(&lookup("signal")), vec![changed]);
    }

    #[test]
    fn placed_services_are_silent_until_they_leave() {
        let mut r = reg();
        let sfu = node("rtc", "sfu-1");
        assert!(r.apply_write(sfu.clone(), T0, Verdict::Created).is_empty());
        let mut changed = (*sfu).clone();
        changed.rpc.addr = "nats://other".into();
        assert!(r.apply_write(Arc::new(changed), T0, Verdict::Changed).is_empty());
        let ev = r.apply_departure("dc1.sfu-1", true, None);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, EventKind::Delete);
        assert_eq!(ev[0].subject(), "node.discovery.rtc.dc1.sfu-1");
    }

    #[test]
    fn get_star_hides_placed_services_unless_asked_and_get_service_lists_them() {
        let mut r = reg();
        for n in [node("rtc", "sfu-b"), node("rtc", "sfu-a"), node("signal", "sig-1"), node("room", "room-1")] {
            r.apply_write(n, T0, Verdict::Created);
        }
        let ids = |v: Vec<Arc<Node>>| v.iter().map(|n| n.nid.clone()).collect::<Vec<_>>();
        assert_eq!(ids(r.get(&lookup("*"))), ["room-1", "sig-1"]);
        assert_eq!(ids(r.get(&lookup("rtc"))), ["sfu-a", "sfu-b"]);
        assert!(r.get(&lookup("nothing")).is_empty());
        let mut all = lookup("*");
        all.params.insert("islb-all".into(), Value::Bool(true));
        assert_eq!(ids(r.get(&all)), ["room-1", "sfu-a", "sfu-b", "sig-1"]);
        let mut one = lookup("rtc");
        one.nid = Some("sfu-b".into());
        assert_eq!(ids(r.get(&one)), ["sfu-b"]);
    }

    #[test]
    fn delete_of_an_unknown_node_is_silent() {
        let mut r = reg();
        assert!(r.apply_departure("dc1.nope", false, None).is_empty());
        // Known to the shared state but not to this replica: announced with the sent node.
        let n = node("signal", "sig-9");
        let ev = r.apply_departure("dc1.sig-9", true, Some(n.clone()));
        assert_eq!(ev, vec![Event { kind: EventKind::Delete, node: n }]);
    }

    #[test]
    fn expiry_is_exact_to_the_millisecond() {
        let mut r = reg();
        let a = node("signal", "a");
        let b = node("signal", "b");
        r.apply_write(a.clone(), r.deadline(T0), Verdict::Created);
        r.apply_write(b.clone(), r.deadline(T0.plus_ms(1_000)), Verdict::Created);
        assert_eq!(r.next_deadline(), Some(T0.plus_ms(5_000)));
        assert!(r.expire_due(T0.plus_ms(4_999)).is_empty());
        let ev = r.expire_due(T0.plus_ms(5_000));
        assert_eq!(ev, vec![Event { kind: EventKind::Delete, node: a }]);
        assert_eq!(r.next_deadline(), Some(T0.plus_ms(6_000)));
        assert_eq!(r.len(), 1);
        // A keep-alive in time saves b.
        r.apply_write(b.clone(), r.deadline(T0.plus_ms(5_999)), Verdict::Unchanged);
        assert!(r.expire_due(T0.plus_ms(6_000)).is_empty());
        assert_eq!(r.expire_due(T0.plus_ms(10_999)).len(), 1);
        assert!(r.is_empty() && r.next_deadline().is_none());
    }

    #[test]
    fn generations_change_with_membership_and_data_only() {
        let mut r = reg();
        let n = node("signal", "s");
        let g0 = (r.generation("*"), r.generation("signal"));
        r.apply_write(n.clone(), T0, Verdict::Created);
        let g1 = (r.generation("*"), r.generation("signal"));
        assert!(g1.0 > g0.0 && g1.1 > g0.1);
        r.apply_write(n.clone(), T0.plus_ms(2_000), Verdict::Unchanged);
        assert_eq!((r.generation("*"), r.generation("signal")), g1, "a keep-alive changes no answer");
        r.remove("dc1.s");
        assert!(r.generation("signal") > g1.1);
    }

    #[test]
    fn a_node_that_changes_service_moves_between_service_lists() {
        let mut r = reg();
        r.upsert(node("signal", "x"), T0);
        let before = r.generation("signal");
        r.upsert(node("room", "x"), T0);
        assert!(r.generation("signal") > before, "cached answers of the old service are stale too");
        assert!(r.get(&lookup("signal")).is_empty());
        assert!(r.service_nodes("signal").is_empty());
        assert_eq!(r.get(&lookup("room")).len(), 1);
        assert_eq!(r.service_dc_nodes("room", "dc1"), ["dc1.x".into()] as [NodeKey; 1]);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn positional_indexes_follow_inserts_and_removals() {
        let mut r = reg();
        for i in 0..10 {
            r.upsert(node("rtc", &format!("n{i}")), T0);
        }
        for i in (0..10).step_by(3) {
            r.remove(&format!("dc1.n{i}"));
        }
        let mut all: Vec<String> = r.service_nodes("rtc").iter().map(|k| k.to_string()).collect();
        all.sort();
        assert_eq!(all, ["dc1.n1", "dc1.n2", "dc1.n4", "dc1.n5", "dc1.n7", "dc1.n8"]);
        assert_eq!(r.service_dc_nodes("rtc", "dc1").len(), 6);
        assert!(r.service_dc_nodes("rtc", "dc9").is_empty());
    }

    /// Every key stands where its entry says, in its service's and its DC's index, after
    /// any sequence of saves, service changes and removals.
    #[test]
    fn positions_kept_in_entries_stay_true_under_churn() {
        let mut r = reg();
        let mut state = 7u64;
        for _ in 0..5_000 {
            let pick = crate::placement::splitmix64(&mut state);
            let (dc, nid) = (format!("dc{}", pick % 3), format!("n{}", (pick >> 8) % 40));
            let key = format!("{dc}.{nid}");
            match (pick >> 32) % 3 {
                0 => r.remove(&key).map_or((), drop),
                op => {
                    let mut n = (*node(if op == 1 { "rtc" } else { "room" }, &nid)).clone();
                    n.dc = dc;
                    r.upsert(Arc::new(n), T0);
                }
            }
            for (k, e) in r.entries() {
                assert_eq!(&r.service_nodes(&e.node.service)[e.slots.all], k);
                assert_eq!(&r.service_dc_nodes(&e.node.service, &e.node.dc)[e.slots.dc], k);
            }
            let listed: usize = ["rtc", "room"].iter().map(|s| r.service_nodes(s).len()).sum();
            assert_eq!(listed, r.len());
        }
    }
}
