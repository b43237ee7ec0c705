//! The open calls of a server, keyed by reply inbox, and the rules that admit a new one:
//! bounded metadata, a bound per peer and a bound in total, where a full table makes room
//! by ending its oldest half-open call (one that never sent its request) rather than
//! refusing a caller that does. Pure: the caller passes the time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::status::Status;

/// One open call.
pub(crate) struct CallState {
    /// Where its request messages go; `None` after the client half-closed.
    pub(crate) tx: Option<mpsc::Sender<Bytes>>,
    pub(crate) ctl: Arc<CallCtl>,
    /// When a frame of it last arrived.
    pub(crate) last: Instant,
    /// When it opened.
    pub(crate) opened: Instant,
    /// The caller's node id (`Call.nid`).
    pub(crate) peer_nid: String,
    /// Who the call counts against ([`peer_key`]).
    pub(crate) peer: String,
    pub(crate) idle_exempt: bool,
    /// No request message and no half-close yet.
    pub(crate) awaiting_first: bool,
}

/// Who ends a call: the first to [`finish`](CallCtl::finish) it sends its one `end` (or,
/// for a cancel, nothing); everyone else stays quiet.
pub(crate) struct CallCtl {
    pub(crate) cancel: CancellationToken,
    finished: AtomicBool,
}

impl CallCtl {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(CallCtl { cancel: CancellationToken::new(), finished: AtomicBool::new(false) })
    }

    /// Claims the end of the call: true only for the first claim.
    pub(crate) fn finish(&self) -> bool {
        !self.finished.swap(true, Ordering::AcqRel)
    }

    /// Claims the end and cancels the handler; true if this claim was first.
    pub(crate) fn stop(&self) -> bool {
        let first = self.finish();
        self.cancel.cancel();
        first
    }
}

/// The bounds a new call must fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_calls: usize,
    pub(crate) max_calls_per_peer: usize,
    pub(crate) max_metadata_size: usize,
}

/// Why a call was not let in (also the `reason` label of the refusal counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MetadataTooLarge,
    PeerLimit,
    TooManyCalls,
}

impl Refusal {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::MetadataTooLarge => "metadata_too_large",
            Refusal::PeerLimit => "peer_limit",
            Refusal::TooManyCalls => "too_many_calls",
        }
    }

    pub(crate) fn status(self, limits: &Limits, metadata: usize) -> Status {
        Status::resource_exhausted(match self {
            Refusal::MetadataTooLarge => {
                format!("call metadata of {metadata} bytes exceeds the limit of {} bytes", limits.max_metadata_size)
            }
            Refusal::PeerLimit => {
                format!("this caller already has {} calls open, the most one caller may", limits.max_calls_per_peer)
            }
            Refusal::TooManyCalls => format!("too many calls open ({})", limits.max_calls),
        })
    }
}

/// What to do with a new call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Open,
    /// Open it after ending this half-open call (the table is full).
    Evict(String),
    Refuse(Refusal),
}

/// Who a call counts against: its caller's node id when it gives one (Go streams do),
/// else the reply inbox's prefix. A Go process's inboxes (`_INBOX.` and a 22-character
/// NUID) share the NUID's first 12 characters; a multi-token inbox
/// (`_INBOX.<connection>.<n>`) shares all but its last token.
pub(crate) fn peer_key(nid: &str, reply: &str) -> String {
    if !nid.is_empty() {
        return format!("nid:{nid}");
    }
    match reply.rsplit_once('.') {
        Some((head, _)) if head.contains('.') => format!("inbox:{head}"),
        // `get`: a hostile inbox may put a multi-byte character across byte 12.
        Some((head, nuid)) if nuid.len() == 22 => format!("inbox:{head}.{}", nuid.get(..12).unwrap_or(nuid)),
        _ => format!("inbox:{reply}"),
    }
}

/// The open calls, with a count per peer.
#[derive(Default)]
pub(crate) struct Table {
    calls: HashMap<String, CallState>,
    per_peer: HashMap<String, usize>,
}

impl Table {
    pub(crate) fn contains(&self, reply: &str) -> bool {
        self.calls.contains_key(reply)
    }

    pub(crate) fn get(&self, reply: &str) -> Option<&CallState> {
        self.calls.get(reply)
    }

    pub(crate) fn get_mut(&mut self, reply: &str) -> Option<&mut CallState> {
        self.calls.get_mut(reply)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &CallState> {
        self.calls.values()
    }

    /// Calls open for `peer`.
    pub(crate) fn open_for(&self, peer: &str) -> usize {
        self.per_peer.get(peer).copied().unwrap_or(0)
    }

    pub(crate) fn insert(&mut self, reply: String, state: CallState) {
        *self.per_peer.entry(state.peer.clone()).or_default() += 1;
        if let Some(old) = self.calls.insert(reply, state) {
            self.forget(&old.peer);
        }
    }

    pub(crate) fn remove(&mut self, reply: &str) -> Option<CallState> {
        let state = self.calls.remove(reply)?;
        self.forget(&state.peer);
        Some(state)
    }

    /// Keeps the calls `keep` says to keep.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str, &CallState) -> bool) {
        let gone: Vec<String> = self.calls.iter().filter(|(k, c)| !keep(k, c)).map(|(k, _)| k.clone()).collect();
        for reply in gone {
            self.remove(&reply);
        }
    }

    /// Takes every call out.
    pub(crate) fn drain(&mut self) -> Vec<(String, CallState)> {
        self.per_peer.clear();
        self.calls.drain().collect()
    }

    fn forget(&mut self, peer: &str) {
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
    }

    /// Whether a call of `peer` with `metadata` bytes of metadata may open.
    pub(crate) fn admit(&self, peer: &str, metadata: usize, limits: &Limits) -> Admission {
        if metadata > limits.max_metadata_size {
            return Admission::Refuse(Refusal::MetadataTooLarge);
        }
        if self.open_for(peer) >= limits.max_calls_per_peer {
            return Admission::Refuse(Refusal::PeerLimit);
        }
        if self.calls.len() < limits.max_calls {
            return Admission::Open;
        }
        // Oldest first; the reply breaks ties so the choice is the same on any run.
        let oldest = self
            .calls
            .iter()
            .filter(|(_, c)| c.awaiting_first)
            .min_by(|(ka, a), (kb, b)| a.opened.cmp(&b.opened).then_with(|| ka.cmp(kb)));
        match oldest {
            Some((reply, _)) => Admission::Evict(reply.clone()),
            None => Admission::Refuse(Refusal::TooManyCalls),
        }
    }

    /// The calls past a deadline at `now`: half-open ones older than `first`, and those
    /// quiet for `idle` unless `exempt` keeps them.
    pub(crate) fn overdue(
        &self,
        now: Instant,
        first: Duration,
        idle: Duration,
        exempt: impl Fn(&CallState) -> bool,
    ) -> Vec<(String, Overdue)> {
        self.calls
            .iter()
            .filter_map(|(k, c)| {
                let why = if c.awaiting_first && now.duration_since(c.opened) >= first {
                    Overdue::NoRequest
                } else if now.duration_since(c.last) >= idle && !exempt(c) {
                    Overdue::Idle
                } else {
                    return None;
                };
                Some((k.clone(), why))
            })
            .collect()
    }
}

/// Why a call is ended by the server's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Overdue {
    /// Its request message never came.
    NoRequest,
    /// Nothing arrived for the idle timeout.
    Idle,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(peer: &str, opened: Instant, awaiting_first: bool) -> CallState {
        CallState {
            tx: None,
            ctl: CallCtl::new(),
            last: opened,
            opened,
            peer_nid: String::new(),
            peer: peer.to_owned(),
            idle_exempt: false,
            awaiting_first,
        }
    }

    const LIMITS: Limits = Limits { max_calls: 3, max_calls_per_peer: 2, max_metadata_size: 100 };

    #[test]
    fn peers_are_the_callers_nid_or_the_inboxs_process() {
        assert_eq!(peer_key("signal-1", "_INBOX.abc"), "nid:signal-1");
        // Two inboxes of one Go process (nats.NewInbox: one NUID prefix, a new sequence).
        let a = peer_key("", "_INBOX.M2PRsZAQPP6v4d3OXSWs57");
        assert_eq!(a, "inbox:_INBOX.M2PRsZAQPP6v");
        assert_eq!(a, peer_key("", "_INBOX.M2PRsZAQPP6vzzzzzzzzzz"));
        assert_ne!(a, peer_key("", "_INBOX.X2PRsZAQPP6v4d3OXSWs57"));
        // async-nats and newer Go clients: one subscription per connection, a token per call.
        assert_eq!(peer_key("", "_INBOX.conn1.17"), "inbox:_INBOX.conn1");
        assert_eq!(peer_key("", "odd"), "inbox:odd");
        assert_eq!(peer_key("", "_INBOX.short"), "inbox:_INBOX.short");
        // 22 bytes with a two-byte character across byte 12: no panic, the whole token.
        let odd = format!("_INBOX.{}é{}", "a".repeat(11), "b".repeat(9));
        assert_eq!(peer_key("", &odd), format!("inbox:{odd}"));
    }

    #[test]
    fn per_peer_counts_follow_inserts_and_removals() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.insert("a".into(), call("p", t0, false));
        t.insert("b".into(), call("p", t0, false));
        t.insert("c".into(), call("q", t0, false));
        assert_eq!((t.open_for("p"), t.open_for("q")), (2, 1));
        // Replacing a call on the same inbox does not count twice.
        t.insert("c".into(), call("p", t0, false));
        assert_eq!((t.open_for("p"), t.open_for("q"), t.calls.len()), (3, 0, 3));
        t.retain(|k, _| k != "a");
        t.remove("b");
        assert_eq!((t.open_for("p"), t.calls.len()), (1, 1));
        assert!(t.remove("b").is_none());
        assert_eq!(t.drain().len(), 1);
        assert_eq!(t.open_for("p"), 0);
    }

    #[test]
    fn admission_bounds_metadata_each_peer_and_the_total() {
        let t0 = Instant::now();
        let mut t = Table::default();
        assert_eq!(t.admit("p", 101, &LIMITS), Admission::Refuse(Refusal::MetadataTooLarge));
        assert_eq!(t.admit("p", 100, &LIMITS), Admission::Open);
        t.insert("a".into(), call("p", t0, false));
        t.insert("b".into(), call("p", t0, false));
        assert_eq!(t.admit("p", 0, &LIMITS), Admission::Refuse(Refusal::PeerLimit));
        assert_eq!(t.admit("q", 0, &LIMITS), Admission::Open);
        t.insert("c".into(), call("q", t0, false));
        // Full, and every call has sent its request: refused.
        assert_eq!(t.admit("r", 0, &LIMITS), Admission::Refuse(Refusal::TooManyCalls));
    }

    #[test]
    fn a_full_table_makes_room_by_ending_its_oldest_half_open_call() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.insert("working".into(), call("p", t0, false));
        t.insert("late".into(), call("q", t0 + Duration::from_secs(2), true));
        t.insert("early".into(), call("r", t0 + Duration::from_secs(1), true));
        assert_eq!(t.admit("s", 0, &LIMITS), Admission::Evict("early".into()));
        // Equal ages: the inbox decides, the same way every time.
        let mut t = Table::default();
        t.insert("y".into(), call("p", t0, true));
        t.insert("x".into(), call("q", t0, true));
        t.insert("z".into(), call("r", t0, true));
        assert_eq!(t.admit("s", 0, &LIMITS), Admission::Evict("x".into()));
    }

    #[test]
    fn overdue_calls_are_half_open_past_the_first_deadline_or_idle_and_not_exempt() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.insert("fresh".into(), call("p", t0 + Duration::from_secs(9), true));
        t.insert("half-open".into(), call("p", t0, true));
        t.insert("quiet".into(), call("q", t0, false));
        let mut exempt = call("r", t0, false);
        exempt.idle_exempt = true;
        t.insert("exempt".into(), exempt);
        let now = t0 + Duration::from_secs(10);
        let mut due = t.overdue(now, Duration::from_secs(5), Duration::from_secs(10), |c| c.idle_exempt);
        due.sort();
        assert_eq!(due, vec![("half-open".into(), Overdue::NoRequest), ("quiet".into(), Overdue::Idle)]);
        assert!(t.overdue(now, Duration::from_secs(60), Duration::from_secs(60), |_| false).is_empty());
    }
}
