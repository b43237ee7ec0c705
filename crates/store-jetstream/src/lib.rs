//! The JetStream store: islb's storage contract on NATS JetStream key-value buckets, so
//! replicas share their state through the NATS servers ion already runs (replicated by
//! JetStream's own Raft when the buckets have several replicas), with no second
//! distributed system.
//!
//! Buckets (`<prefix>` is `store-prefix`; every key is [`key`]-encoded):
//!
//! | bucket | key | value | in the change feed |
//! |---|---|---|---|
//! | `<prefix>-state` | `n.<DC.NID>` | the node's deadline when written (8 bytes, ms, big-endian), then the node in gob | yes |
//! | | `s.<sid>` | `<version> <used ms> <DC.NID>` | yes |
//! | | `d.<DC.NID>` | drain deadline (ms, 0 = none) | yes |
//! | `<prefix>-deadlines` | `<DC.NID>` | expiry deadline (ms) | no: keep-alives move it |
//! | `<prefix>-used` | `<sid>` | last lookup (ms) | no |
//! | `<prefix>-streams` | `r.<sid>.<record>` | expiry (ms), a space, ion's JSON | no |
//!
//! Races are settled by JetStream's per-key compare-and-set (the expected last revision
//! of the key's subject): a session claim, a move, a node delete and an expiry claim each
//! succeed for exactly one writer. The change feed is the `<prefix>-state` stream read
//! from a sequence (the cursor); a bucket keeps the latest value of each key, which is all
//! a replica needs to catch up. A new bucket (the data was lost, or `reset`) has a new
//! creation time, which the cursor carries, so a cursor into the old one is a gap.
//!
//! Per-key TTL needs nats-server 2.11, so stream records carry their expiry and are
//! dropped when read after it, as the deadlines of nodes are (the bucket's `max_age` also
//! removes any record not rewritten for twice the longest TTL written).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use futures::StreamExt;
use islb_core::{NodeKey, Session, Timestamp, Verdict};
use islb_gob::{Message as _, Node};
use islb_runtime::Chain;
use islb_store::{Change, Changes, Claim, Cursor, SessionClaim, Snapshot, Store, StoreError, StreamKey};

/// How often a compare-and-set that lost a race is tried again before giving up.
const RETRIES: usize = 16;
/// Revisions of each key the state bucket (the change feed) keeps.
const STATE_HISTORY: i64 = 16;
/// How long stream records are kept at most by the bucket itself (their own TTL, 24 h in
/// ion, is checked when they are read).
const STREAM_MAX_AGE: Duration = Duration::from_secs(48 * 3600);

/// How to reach JetStream and name the buckets.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// Bucket name prefix (`store-prefix`): letters, digits, `-` and `_`.
    pub prefix: String,
    /// Replicas of each bucket (`store-replicas`): 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// Bound on every JetStream request.
    pub timeout: Duration,
}

/// The store on JetStream KV.
pub struct JetStreamStore {
    js: jetstream::Context,
    cfg: JetStreamConfig,
    buckets: tokio::sync::RwLock<Buckets>,
}

#[derive(Clone)]
struct Buckets {
    state: kv::Store,
    deadlines: kv::Store,
    used: kv::Store,
    streams: kv::Store,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The prefix cannot name a bucket.
    #[error("store-prefix {0:?} cannot name a JetStream bucket (letters, digits, '-' and '_' only)")]
    BadPrefix(String),
    /// The server has no JetStream.
    #[error("JetStream is not enabled on the NATS server (start nats-server with -js, or a jetstream {{}} block)")]
    NoJetStream,
    /// Any other failure.
    #[error("creating bucket {bucket}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> Self {
        StoreError::unavailable("opening the JetStream buckets", e)
    }
}

/// A KV key for any text: itself when it is made only of letters, digits, `-` and `_`
/// (and does not start with `=`), else `=` and its unpadded base64url. One-to-one.
pub fn key(text: &str) -> String {
    let plain = !text.is_empty()
        && !text.starts_with('=')
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain { text.to_owned() } else { format!("={}", B64.encode(text)) }
}

/// The text of a [`key`].
pub fn unkey(k: &str) -> Option<String> {
    match k.strip_prefix('=') {
        Some(enc) => String::from_utf8(B64.decode(enc).ok()?).ok(),
        None => Some(k.to_owned()),
    }
}

impl JetStreamStore {
    /// Opens (creating when missing) the buckets on `client`'s JetStream.
    pub async fn open(client: async_nats::Client, cfg: JetStreamConfig) -> Result<Self, OpenError> {
        if cfg.prefix.is_empty() || !cfg.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(OpenError::BadPrefix(cfg.prefix));
        }
        let version = client.server_info().version;
        if cfg.replicas > 1 && cas_may_race(&version) {
            tracing::warn!(
                server = %version,
                replicas = cfg.replicas,
                "this nats-server lets two compare-and-sets of one key both succeed on a replicated bucket \
                 (nats-io/nats-server#4320, fixed in 2.9.21): a race may split a room or repeat a delete; \
                 use store-replicas 1 or a newer nats-server"
            );
        }
        let js = jetstream::ContextBuilder::new().timeout(cfg.timeout).build(client);
        let buckets = create_buckets(&js, &cfg).await?;
        Ok(JetStreamStore { js, cfg, buckets: tokio::sync::RwLock::new(buckets) })
    }

    async fn b(&self) -> Buckets {
        self.buckets.read().await.clone()
    }
}

/// Whether nats-server `version` checks a write's expected revision only before
/// proposing it to a replicated stream's Raft group, so that two racing writes can both
/// pass (nats-io/nats-server#4320: 2.9.20 and earlier).
pub fn cas_may_race(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor), Some(patch)) => (major, minor, patch) < (2, 9, 21),
        // An unknown scheme: assume a current server.
        _ => false,
    }
}

async fn create_buckets(js: &jetstream::Context, cfg: &JetStreamConfig) -> Result<Buckets, OpenError> {
    let mut out = Vec::new();
    // The state bucket keeps some history, so that a replica catching up sees a key's
    // recent changes in order (a node put and then deleted, not only the delete); the
    // others hold one value per key.
    for (suffix, history, max_age) in [
        ("state", STATE_HISTORY, Duration::ZERO),
        ("deadlines", 1, Duration::ZERO),
        ("used", 1, Duration::ZERO),
        ("streams", 1, STREAM_MAX_AGE),
    ] {
        out.push(ensure_bucket(js, &format!("{}-{suffix}", cfg.prefix), history, max_age, cfg.replicas).await?);
    }
    let mut it = out.into_iter();
    let mut next = || it.next().expect("four buckets");
    Ok(Buckets { state: next(), deadlines: next(), used: next(), streams: next() })
}

/// The bucket `name`, created when missing. The stream is declared here as a KV bucket's
/// stream is (`KV_<name>` on `$KV.<name>.>`, one message per key, rollups, direct gets):
/// async-nats' own `create_key_value` first reads the account's info, which it cannot
/// parse from a 2.9 server (Debian's).
async fn ensure_bucket(
    js: &jetstream::Context,
    name: &str,
    history: i64,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, OpenError> {
    use async_nats::jetstream::context::CreateStreamErrorKind as K;
    use async_nats::jetstream::stream;
    let config = stream::Config {
        name: format!("KV_{name}"),
        description: Some(format!("islb {name}")),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: history,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    let bucket_error =
        |source: Box<dyn std::error::Error + Send + Sync>| OpenError::Bucket { bucket: name.to_owned(), source };
    // A cluster that is still forming (no leader yet, peers not known) says so for a few
    // seconds: try again for up to 15 s.
    let mut attempts = 0;
    while let Err(e) = js.get_or_create_stream(config.clone()).await {
        let text = format!("{e} {e:?}");
        let forming =
            ["no suitable peers", "temporarily unavailable", "10005", "10008"].iter().any(|t| text.contains(t));
        if forming && attempts < 60 {
            attempts += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        return Err(match e.kind() {
            K::JetStreamUnavailable => OpenError::NoJetStream,
            K::TimedOut | K::Response if text.contains("no responders") || text.contains("NoResponders") => {
                OpenError::NoJetStream
            }
            _ => bucket_error(Box::new(e)),
        });
    }
    js.get_key_value(name).await.map_err(|e| bucket_error(Box::new(e)))
}

/// Whether an error (with its sources, as one line) says the bucket's stream is gone.
fn bucket_gone(text: &str) -> bool {
    text.contains("no stream found") || text.contains("stream not found") || text.contains("10059")
}

/// A lower error as a store error: a bucket that is gone is [`StoreError::Reset`].
fn fail(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    let text = Chain(&e).to_string();
    if bucket_gone(&text) {
        return StoreError::Reset;
    }
    if text.contains("timed out") {
        return StoreError::unavailable(format!("{what} (timed out)"), e);
    }
    StoreError::unavailable(what.to_owned(), e)
}

fn is_wrong_revision(e: &kv::UpdateError) -> bool {
    e.kind() == kv::UpdateErrorKind::WrongLastRevision
}

fn ms(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

/// A live entry (not a delete marker).
fn live(e: Option<kv::Entry>) -> Option<kv::Entry> {
    e.filter(|e| e.operation == kv::Operation::Put)
}

async fn entry(b: &kv::Store, k: &str, what: &str) -> Result<Option<kv::Entry>, StoreError> {
    match b.entry(k).await {
        Ok(e) => Ok(live(e)),
        // A 2.9 server does not answer a direct get on a stream that is gone: ask whether
        // the bucket is still there.
        Err(e) if e.kind() == kv::EntryErrorKind::TimedOut => match b.stream.get_info().await {
            Err(info) if bucket_gone(&Chain(&info).to_string()) => Err(StoreError::Reset),
            _ => Err(fail(what, e)),
        },
        Err(e) => Err(fail(what, e)),
    }
}

/// Writes `value` at `k` if the key is still at `revision` (none: absent or deleted).
/// `Ok(false)`: another writer came first.
async fn cas(b: &kv::Store, k: &str, value: Bytes, revision: Option<u64>, what: &str) -> Result<bool, StoreError> {
    let result = match revision {
        Some(rev) => b.update(k, value, rev).await,
        None => match b.create(k, value).await {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(fail(what, e)),
        },
    };
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_wrong_revision(&e) => Ok(false),
        Err(e) => Err(fail(what, e)),
    }
}

/// Raises the millisecond value at `k` to at least `to` (never lowers it) and returns the
/// value it holds then. With `only_existing`, a missing key stays missing: `Ok(None)`.
async fn raise(b: &kv::Store, k: &str, to: u64, only_existing: bool, what: &str) -> Result<Option<u64>, StoreError> {
    for _ in 0..RETRIES {
        let cur = entry(b, k, what).await?;
        if cur.is_none() && only_existing {
            return Ok(None);
        }
        if let Some(held) = cur.as_ref().and_then(|e| ms(&e.value)).filter(|v| *v >= to) {
            return Ok(Some(held));
        }
        if cas(b, k, Bytes::from(to.to_string()), cur.map(|e| e.revision), what).await? {
            return Ok(Some(to));
        }
    }
    Err(StoreError::refused(format!("{what}: too many concurrent writers")))
}

/// A node as stored: its deadline when written, then its gob.
fn node_value(node: &Node, deadline: Timestamp) -> Bytes {
    let mut v = deadline.as_ms().to_be_bytes().to_vec();
    v.extend_from_slice(&node.to_gob());
    Bytes::from(v)
}

fn read_node(v: &[u8]) -> Result<(Arc<Node>, Timestamp), StoreError> {
    if v.len() < 8 {
        return Err(StoreError::corrupt("a node value shorter than its deadline"));
    }
    let deadline = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
    let node = Node::from_gob(&v[8..]).map_err(|e| StoreError::corrupt(format!("node gob: {e}")))?;
    Ok((Arc::new(node), Timestamp::from_ms(deadline)))
}

/// A session as stored: `<version> <used ms> <DC.NID>`.
fn session_value(s: &Session) -> Bytes {
    Bytes::from(format!("{} {} {}", s.version, s.used.as_ms(), s.node))
}

fn read_session(sid: &str, v: &[u8]) -> Result<Session, StoreError> {
    let text = std::str::from_utf8(v).map_err(|_| StoreError::corrupt("a session value is not UTF-8"))?;
    let mut it = text.splitn(3, ' ');
    let (Some(version), Some(used), Some(node)) = (it.next(), it.next(), it.next()) else {
        return Err(StoreError::corrupt(format!("session value {text:?}")));
    };
    let (Ok(version), Ok(used)) = (version.parse(), used.parse()) else {
        return Err(StoreError::corrupt(format!("session value {text:?}")));
    };
    Ok(Session { sid: sid.into(), node: node.into(), version, used: Timestamp::from_ms(used) })
}

fn node_key_of(k: &str) -> String {
    format!("n.{}", key(k))
}

fn session_key_of(sid: &str) -> String {
    format!("s.{}", key(sid))
}

fn drain_key_of(k: &str) -> String {
    format!("d.{}", key(k))
}

/// The entries of `b` from revision `from` on, up to the stream's end when asked, and
/// that end (its last sequence, and its creation time as the feed's epoch).
async fn read_from(b: &kv::Store, from: u64, what: &str) -> Result<(Vec<kv::Entry>, u64, String), StoreError> {
    let info = b.stream.get_info().await.map_err(|e| fail(what, e))?;
    let (last, epoch) = (info.state.last_sequence, format!("{:?}", info.created));
    if last < from || info.state.messages == 0 {
        return Ok((Vec::new(), last, epoch));
    }
    let mut watch = b.watch_all_from_revision(from.max(1)).await.map_err(|e| fail(what, e))?;
    let mut out = Vec::new();
    while let Some(e) = watch.next().await {
        let e = e.map_err(|e| fail(what, e))?;
        let (done, rev) = (e.delta == 0, e.revision);
        out.push(e);
        if done || rev >= last {
            break;
        }
    }
    let end = out.last().map_or(last, |e| e.revision.max(last));
    Ok((out, end, epoch))
}

fn cursor(seq: u64, epoch: &str) -> Cursor {
    Cursor(format!("{seq}/{epoch}"))
}

/// A feed entry as a change (none for keys that are not part of the feed).
fn change(e: &kv::Entry) -> Result<Option<Change>, StoreError> {
    let put = e.operation == kv::Operation::Put;
    let Some((kind, k)) = e.key.split_once('.') else { return Ok(None) };
    let Some(k) = unkey(k) else { return Ok(None) };
    Ok(Some(match (kind, put) {
        ("n", true) => {
            let (node, deadline) = read_node(&e.value)?;
            Change::Put(node, deadline)
        }
        ("n", false) => Change::Delete(k.into()),
        ("s", true) => Change::Session(read_session(&k, &e.value)?),
        ("s", false) => Change::SessionGone(k.into()),
        ("d", true) => Change::Drain(k.into(), ms(&e.value).filter(|d| *d > 0).map(Timestamp::from_ms)),
        ("d", false) => Change::Undrain(k.into()),
        _ => return Ok(None),
    }))
}

#[async_trait]
impl Store for JetStreamStore {
    fn kind(&self) -> &'static str {
        "jetstream"
    }

    fn shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.b().await.state.stream.get_info().await.map_err(|e| fail("ping", e))?;
        Ok(())
    }

    async fn reset(&self) -> Result<(), StoreError> {
        let fresh = create_buckets(&self.js, &self.cfg).await?;
        *self.buckets.write().await = fresh;
        Ok(())
    }

    async fn put_node(&self, node: Arc<Node>, deadline: Timestamp) -> Result<Verdict, StoreError> {
        let b = self.b().await;
        let nk = islb_core::node_key(&node);
        let k = node_key_of(&nk);
        let dk = key(&nk);
        let what = "put_node";
        // The deadline first: a node is known (to touches) once its deadline is there.
        let stored = raise(&b.deadlines, &dk, deadline.as_ms(), false, what).await?.unwrap_or(deadline.as_ms());
        let written = Timestamp::from_ms(stored);
        for _ in 0..RETRIES {
            let cur = entry(&b.state, &k, what).await?;
            let old = cur.as_ref().map(|e| read_node(&e.value)).transpose()?;
            if old.as_ref().is_some_and(|(n, _)| **n == *node) {
                return Ok(Verdict::Unchanged);
            }
            if cas(&b.state, &k, node_value(&node, written), cur.map(|e| e.revision), what).await? {
                return Ok(if old.is_some() { Verdict::Changed } else { Verdict::Created });
            }
        }
        Err(StoreError::refused("put_node: too many concurrent writers"))
    }

    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError> {
        let b = self.b().await;
        let results = futures::future::join_all(touches.iter().map(|(k, d)| {
            let (b, k) = (&b, key(k));
            async move { raise(&b.deadlines, &k, d.as_ms(), true, "touch_nodes").await }
        }))
        .await;
        let mut unknown = Vec::new();
        for ((k, _), known) in touches.iter().zip(results) {
            if known?.is_none() {
                unknown.push(k.clone());
            }
        }
        Ok(unknown)
    }

    async fn delete_node(&self, k: &str) -> Result<Option<Arc<Node>>, StoreError> {
        let b = self.b().await;
        let nk = node_key_of(k);
        let what = "delete_node";
        let Some(cur) = entry(&b.state, &nk, what).await? else { return Ok(None) };
        let (node, _) = read_node(&cur.value)?;
        match b.state.delete_expect_revision(&nk, Some(cur.revision)).await {
            Ok(()) => {}
            Err(e) if is_wrong_revision(&e) => return Ok(None),
            Err(e) => return Err(fail(what, e)),
        }
        b.deadlines.delete(key(k)).await.map_err(|e| fail(what, e))?;
        Ok(Some(node))
    }

    async fn claim_expired(&self, keys: &[NodeKey], now: Timestamp) -> Result<Vec<Claim>, StoreError> {
        let b = self.b().await;
        let claims = futures::future::join_all(keys.iter().map(|k| claim_one(&b, k, now))).await;
        claims.into_iter().collect()
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let b = self.b().await;
        let what = "load";
        let (entries, end, epoch) = read_from(&b.state, 1, what).await?;
        let deadlines = latest(&b.deadlines, what).await?;
        let used = latest(&b.used, what).await?;
        let mut snap = Snapshot { cursor: cursor(end, &epoch), ..Snapshot::default() };
        let mut state = std::collections::BTreeMap::new();
        for e in entries {
            state.insert(e.key.clone(), e);
        }
        for e in state.values().filter(|e| e.operation == kv::Operation::Put) {
            match change(e)? {
                Some(Change::Put(node, _)) => {
                    let Some(d) = deadlines.get(&key(&islb_core::node_key(&node))).copied() else { continue };
                    snap.nodes.push((node, Timestamp::from_ms(d)));
                }
                Some(Change::Session(mut s)) => {
                    if let Some(u) = used.get(&key(&s.sid)) {
                        s.used = s.used.max(Timestamp::from_ms(*u));
                    }
                    snap.sessions.push(s);
                }
                Some(Change::Drain(k, d)) => snap.drains.push((k, d)),
                _ => {}
            }
        }
        Ok(snap)
    }

    async fn changes(&self, from: &Cursor) -> Result<Changes, StoreError> {
        let b = self.b().await;
        let (seq, epoch) = match from.0.split_once('/') {
            Some((s, e)) => (s.parse::<u64>().unwrap_or(0), Some(e.to_owned())),
            None => (0, None),
        };
        let (entries, end, now_epoch) = read_from(&b.state, seq + 1, "changes").await?;
        if epoch.is_some_and(|e| e != now_epoch) {
            return Ok(Changes::Gap);
        }
        let mut changes = Vec::new();
        for e in &entries {
            if let Some(c) = change(e)? {
                changes.push(c);
            }
        }
        Ok(Changes::Since { changes, cursor: cursor(end.max(seq), &now_epoch) })
    }

    async fn claim_session(&self, sid: &str, candidate: &NodeKey, now: Timestamp) -> Result<SessionClaim, StoreError> {
        let b = self.b().await;
        let sk = session_key_of(sid);
        let what = "claim_session";
        let candidate_key = node_key_of(candidate);
        // The common case, a session no one placed yet: write it and check the candidate
        // in one round trip; a candidate found gone undoes the write.
        let placed = Session { sid: sid.into(), node: candidate.clone(), version: 1, used: now };
        let (created, alive) =
            futures::join!(b.state.create(&sk, session_value(&placed)), entry(&b.state, &candidate_key, what));
        // An error here (placed already, or an error the careful path below reads and
        // names: a lost bucket is a reset) goes on to that path.
        if let Ok(revision) = created {
            if alive?.is_some() {
                return Ok(SessionClaim::Placed(placed));
            }
            match b.state.delete_expect_revision(&sk, Some(revision)).await {
                // Moved since, by someone who found the candidate gone as well.
                Err(e) if !is_wrong_revision(&e) => return Err(fail(what, e)),
                _ => return Ok(SessionClaim::CandidateGone),
            }
        }
        for _ in 0..RETRIES {
            let cur = entry(&b.state, &sk, what).await?;
            let old = cur.as_ref().map(|e| read_session(sid, &e.value)).transpose()?;
            if let Some(s) = &old {
                let (nk, dk, uk) = (node_key_of(&s.node), drain_key_of(&s.node), key(sid));
                // The use is raised before the node is known alive: harmless if it is not,
                // as the session moves and is used now.
                let (alive, drain, used) = futures::join!(
                    entry(&b.state, &nk, what),
                    entry(&b.state, &dk, what),
                    raise(&b.used, &uk, now.as_ms(), false, what)
                );
                let drained_past =
                    drain?.and_then(|e| ms(&e.value)).is_some_and(|d| d > 0 && Timestamp::from_ms(d) <= now);
                if alive?.is_some() && !drained_past {
                    let used = used?.unwrap_or(now.as_ms());
                    let mut s = s.clone();
                    s.used = s.used.max(Timestamp::from_ms(used));
                    return Ok(SessionClaim::Existing(s));
                }
            }
            if entry(&b.state, &candidate_key, what).await?.is_none() {
                return Ok(SessionClaim::CandidateGone);
            }
            let placed = Session {
                sid: sid.into(),
                node: candidate.clone(),
                version: old.as_ref().map_or(1, |s| s.version + 1),
                used: now,
            };
            if cas(&b.state, &sk, session_value(&placed), cur.map(|e| e.revision), what).await? {
                b.used.put(key(sid), Bytes::from(now.as_ms().to_string())).await.map_err(|e| fail(what, e))?;
                return Ok(match old {
                    None => SessionClaim::Placed(placed),
                    Some(o) => SessionClaim::Moved { session: placed, from: o.node },
                });
            }
        }
        Err(StoreError::refused("claim_session: too many concurrent writers"))
    }

    async fn move_session(
        &self,
        sid: &str,
        version: u64,
        to: Option<&NodeKey>,
        idle_before: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        let b = self.b().await;
        let sk = session_key_of(sid);
        let uk = key(sid);
        let what = "move_session";
        let Some(cur) = entry(&b.state, &sk, what).await? else { return Ok(None) };
        let mut s = read_session(sid, &cur.value)?;
        if let Some(u) = entry(&b.used, &uk, what).await?.and_then(|e| ms(&e.value)) {
            s.used = s.used.max(Timestamp::from_ms(u));
        }
        if s.version != version || idle_before.is_some_and(|b| s.used >= b) {
            return Ok(None);
        }
        match to {
            None => {
                match b.state.delete_expect_revision(&sk, Some(cur.revision)).await {
                    Ok(()) => {}
                    Err(e) if is_wrong_revision(&e) => return Ok(None),
                    Err(e) => return Err(fail(what, e)),
                }
                b.used.delete(&uk).await.map_err(|e| fail(what, e))?;
                Ok(Some(s))
            }
            Some(node) => {
                let moved =
                    Session { sid: s.sid.clone(), node: node.clone(), version: version + 1, used: s.used.max(now) };
                if !cas(&b.state, &sk, session_value(&moved), Some(cur.revision), what).await? {
                    return Ok(None);
                }
                raise(&b.used, &uk, moved.used.as_ms(), false, what).await?;
                Ok(Some(moved))
            }
        }
    }

    async fn touch_sessions(&self, touches: &[(Arc<str>, Timestamp)]) -> Result<(), StoreError> {
        let b = self.b().await;
        let what = "touch_sessions";
        let results = futures::future::join_all(touches.iter().map(|(sid, t)| {
            let b = &b;
            async move {
                if entry(&b.state, &session_key_of(sid), what).await?.is_some() {
                    raise(&b.used, &key(sid), t.as_ms(), false, what).await?;
                }
                Ok::<(), StoreError>(())
            }
        }))
        .await;
        results.into_iter().collect()
    }

    async fn set_drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<(), StoreError> {
        let b = self.b().await;
        let v = deadline.map_or(0, |d| d.as_ms());
        b.state.put(drain_key_of(node), Bytes::from(v.to_string())).await.map_err(|e| fail("set_drain", e))?;
        Ok(())
    }

    async fn clear_drain(&self, node: &NodeKey) -> Result<bool, StoreError> {
        let b = self.b().await;
        let dk = drain_key_of(node);
        let what = "clear_drain";
        let Some(cur) = entry(&b.state, &dk, what).await? else { return Ok(false) };
        match b.state.delete_expect_revision(&dk, Some(cur.revision)).await {
            Ok(()) => Ok(true),
            Err(e) if is_wrong_revision(&e) => Ok(false),
            Err(e) => Err(fail(what, e)),
        }
    }

    async fn put_stream(&self, k: &StreamKey, json: &str, ttl: Duration) -> Result<(), StoreError> {
        let b = self.b().await;
        let expires = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        let value = Bytes::from(format!("{expires} {json}"));
        b.streams.put(stream_key_of(k), value).await.map_err(|e| fail("put_stream", e))?;
        Ok(())
    }

    async fn delete_stream(&self, k: &StreamKey) -> Result<bool, StoreError> {
        let b = self.b().await;
        let sk = stream_key_of(k);
        let what = "delete_stream";
        let Some(cur) = entry(&b.streams, &sk, what).await? else { return Ok(false) };
        let live = stream_record(&cur.value).is_some();
        b.streams.purge(&sk).await.map_err(|e| fail(what, e))?;
        Ok(live)
    }

    async fn streams_of(&self, sid: &str) -> Result<Vec<(StreamKey, String)>, StoreError> {
        let b = self.b().await;
        let what = "streams_of";
        let prefix = format!("r.{}.", key(sid));
        let mut out = Vec::new();
        let mut keys = b.streams.keys().await.map_err(|e| fail(what, e))?;
        let mut mine = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| fail(what, e))?;
            if k.starts_with(&prefix) {
                mine.push(k);
            }
        }
        for k in mine {
            let Some(e) = entry(&b.streams, &k, what).await? else { continue };
            let Some(record) = k.strip_prefix(&prefix).and_then(unkey).and_then(|r| StreamKey::parse(&r)) else {
                continue;
            };
            match stream_record(&e.value) {
                Some(json) => out.push((record, json)),
                // Past its TTL: forget it now.
                None => b.streams.purge(&k).await.map_err(|e| fail(what, e))?,
            }
        }
        out.sort();
        Ok(out)
    }
}

/// One expiry claim: of racing claimers, the one whose delete of the deadline succeeds
/// at the revision it read wins.
async fn claim_one(b: &Buckets, k: &NodeKey, now: Timestamp) -> Result<Claim, StoreError> {
    let what = "claim_expired";
    let dk = key(k);
    for _ in 0..RETRIES {
        let Some(cur) = entry(&b.deadlines, &dk, what).await? else { return Ok(Claim::Gone) };
        let Some(deadline) = ms(&cur.value) else { return Err(StoreError::corrupt(format!("deadline of {k}"))) };
        if deadline > now.as_ms() {
            return Ok(Claim::NotDue(Timestamp::from_ms(deadline)));
        }
        match b.deadlines.delete_expect_revision(&dk, Some(cur.revision)).await {
            Ok(()) => {}
            Err(e) if is_wrong_revision(&e) => continue,
            Err(e) => return Err(fail(what, e)),
        }
        let nk = node_key_of(k);
        let node = match entry(&b.state, &nk, what).await? {
            Some(e) => {
                let (node, _) = read_node(&e.value)?;
                b.state.delete(&nk).await.map_err(|e| fail(what, e))?;
                node
            }
            None => return Ok(Claim::Gone),
        };
        return Ok(Claim::Expired(node));
    }
    Err(StoreError::refused("claim_expired: too many concurrent writers"))
}

/// The latest millisecond value of every key of `b`.
async fn latest(b: &kv::Store, what: &str) -> Result<std::collections::HashMap<String, u64>, StoreError> {
    let (entries, _, _) = read_from(b, 1, what).await?;
    let mut out = std::collections::HashMap::new();
    for e in entries {
        match (e.operation, ms(&e.value)) {
            (kv::Operation::Put, Some(v)) => out.insert(e.key, v),
            _ => out.remove(&e.key),
        };
    }
    Ok(out)
}

fn stream_key_of(k: &StreamKey) -> String {
    format!("r.{}.{}", key(&k.sid), key(&k.redis_key()))
}

/// The JSON of a stream record that has not expired.
fn stream_record(v: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(v).ok()?;
    let (expires, json) = text.split_once(' ')?;
    (expires.parse::<u64>().ok()? > now_ms()).then(|| json.to_owned())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_that_let_two_compare_and_sets_through_are_known() {
        for racy in ["2.9.10", "v2.9.20", "2.8.4", "2.2.0"] {
            assert!(cas_may_race(racy), "{racy}");
        }
        for fixed in ["2.9.21", "2.10.0", "v2.11.3", "2.10.22-RC.1", "3.0.0", "nightly"] {
            assert!(!cas_may_race(fixed), "{fixed}");
        }
    }

    #[test]
    fn keys_are_one_to_one_and_valid_kv_keys() {
        for text in ["room-1", "a.b", "a b", "a_b", "=x", "sfu-é中", "dc1.sfu-1", "", "*", ">"] {
            let k = key(text);
            assert!(
                !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{text:?} -> {k:?}"
            );
            assert_eq!(unkey(&k).as_deref(), Some(text), "{text:?}");
        }
        assert_eq!(key("room-1"), "room-1", "plain keys stay readable");
        assert_ne!(key("a.b"), key("a_b"));
    }
}

#[cfg(test)]
mod contract {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use islb_testkit::NatsServer;

    async fn open(url: String, prefix: String, replicas: usize) -> JetStreamStore {
        let client = async_nats::connect(url).await.expect("NATS");
        let cfg = JetStreamConfig { prefix, replicas, timeout: Duration::from_secs(10) };
        JetStreamStore::open(client, cfg).await.expect("the buckets open")
    }

    #[tokio::test]
    async fn jetstream_store_meets_the_contract() {
        let nats = NatsServer::start_jetstream();
        let n = AtomicUsize::new(0);
        islb_store::testsuite::run_all(|| open(nats.url(), format!("t{}", n.fetch_add(1, Ordering::Relaxed)), 1)).await;
    }

    #[tokio::test]
    async fn jetstream_store_meets_the_shared_contract() {
        let nats = NatsServer::start_jetstream();
        let n = AtomicUsize::new(0);
        islb_store::testsuite::run_shared(|| {
            let prefix = format!("s{}", n.fetch_add(1, Ordering::Relaxed));
            let url = nats.url();
            async move { (open(url.clone(), prefix.clone(), 1).await, open(url, prefix, 1).await) }
        })
        .await;
    }

    /// Three servers, the two handles of the shared suite on different servers, the
    /// buckets on one of them. (With three replicas, Debian's nats-server 2.9.10 lets two
    /// racing compare-and-sets of one key both succeed now and then; docs/STORAGE.md.)
    #[tokio::test]
    async fn on_a_three_server_cluster() {
        let cluster = NatsServer::jetstream_cluster(3);
        let n = AtomicUsize::new(0);
        islb_store::testsuite::run_shared(|| {
            let prefix = format!("c{}", n.fetch_add(1, Ordering::Relaxed));
            let (a, b) = (cluster[0].url(), cluster[2].url());
            async move { (open(a, prefix.clone(), 1).await, open(b, prefix, 1).await) }
        })
        .await;
    }

    #[tokio::test]
    async fn without_jetstream_opening_says_so() {
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let cfg = JetStreamConfig { prefix: "islb".into(), replicas: 1, timeout: Duration::from_secs(2) };
        let err = JetStreamStore::open(client, cfg).await.err().expect("no JetStream, no store");
        assert!(matches!(err, OpenError::NoJetStream), "{err:?}");
        assert!(err.to_string().contains("JetStream is not enabled"), "{err}");
        let client = async_nats::connect(nats.url()).await.unwrap();
        let bad = JetStreamConfig { prefix: "a.b".into(), replicas: 1, timeout: Duration::from_secs(2) };
        assert!(matches!(JetStreamStore::open(client, bad).await, Err(OpenError::BadPrefix(_))));
    }

    /// The data lost (the buckets deleted, as a server that lost its store would have
    /// them): writes fail with Reset, a cursor into the old bucket is a gap, and reset()
    /// makes the store usable again.
    #[tokio::test]
    async fn lost_buckets_are_a_reset_and_a_gap() {
        let nats = NatsServer::start_jetstream();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let cfg = JetStreamConfig { prefix: "r".into(), replicas: 1, timeout: Duration::from_secs(2) };
        let store = JetStreamStore::open(client, cfg).await.unwrap();
        let node = Arc::new(Node { dc: "dc1".into(), nid: "sfu-1".into(), service: "rtc".into(), ..Node::default() });
        let t = Timestamp::from_ms(1_700_000_000_000);
        store.put_node(node.clone(), t).await.unwrap();
        let cursor = store.load().await.unwrap().cursor;
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        for b in ["r-state", "r-deadlines", "r-used", "r-streams"] {
            js.delete_key_value(b).await.unwrap();
        }
        let err = store.put_node(node.clone(), t).await.unwrap_err();
        assert!(matches!(err, StoreError::Reset), "{err:?}");
        store.reset().await.unwrap();
        assert_eq!(store.changes(&cursor).await.unwrap(), Changes::Gap);
        assert_eq!(store.put_node(node, t).await.unwrap(), Verdict::Created);
    }
}
