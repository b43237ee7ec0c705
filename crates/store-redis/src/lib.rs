//! The Redis store: islb's storage contract on Redis, shared by islb replicas.
//!
//! Every operation replicas race on is one Lua script (atomic on the server); a keep-alive
//! batch is one script call. islb's own keys share the hash tag `{prefix}`; ion's stream
//! records keep ion's key names (Redis Cluster is not supported).
//!
//! | key | type | content |
//! |---|---|---|
//! | `{prefix}:nodes` | hash | field `DC.NID` → the node in gob, exactly as Go encodes it |
//! | `{prefix}:deadlines` | sorted set | member `DC.NID`, score = expiry deadline (ms since the epoch) |
//! | `{prefix}:changes` | stream | one entry per created, changed, deleted or expired node: `seq`, `op` (`put`/`del`), `key`, `node`, `deadline` (trimmed to about 100,000 entries) |
//! | `{prefix}:seq` | string | counter of change entries (a gap in `seq` tells a replica to reload) |
//! | `{prefix}:epoch` | string | random token written when the store is set up; its absence means the data is gone (a restart without persistence) |
//! | `{prefix}:sessions` | hash | field sid → `<version> <DC.NID>` |
//! | `{prefix}:session-used` | sorted set | member sid, score = last lookup (ms) |
//! | `{prefix}:drains` | hash | field `DC.NID` → drain deadline (ms, 0 = none) |
//! | `<dc>/<nid>/<sid>/<uid>` | string | ion's stream record: the JSON list of streams `uid` publishes in `sid` on `nid`; expires after its TTL (24 h) |
//! | `{prefix}:streams:<sid>` | set | the stream record keys of a session (index; members whose key expired are dropped on read) |
//!
//! Connections go through the `redis` crate's connection manager (reconnects by itself);
//! every call is bounded by the configured timeout.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use islb_core::{NodeKey, Session, Timestamp, Verdict};
use islb_gob::{Message as _, Node};
use islb_store::{Change, Changes, Claim, Cursor, SessionClaim, Snapshot, Store, StoreError, StreamKey};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

/// How many change entries the feed keeps (approximately).
const FEED_LENGTH: usize = 100_000;
/// Keys per keep-alive or claim script call.
const BATCH: usize = 1_000;

const PUT: &str = r#"
-- KEYS: nodes deadlines changes seq epoch; ARGV: key node deadline maxlen
if redis.call('EXISTS', KEYS[5]) == 0 then return redis.error_reply('ISLB_RESET store was reset') end
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 'GT', ARGV[3], ARGV[1])
if old == ARGV[2] then return 2 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local seq = redis.call('INCR', KEYS[4])
local d = redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'seq', seq, 'op', 'put', 'key', ARGV[1], 'node', ARGV[2], 'deadline', d)
if old then return 1 end
return 0
"#;

const TOUCH: &str = r#"
-- KEYS: nodes deadlines epoch; ARGV: key1 deadline1 key2 deadline2 ...
if redis.call('EXISTS', KEYS[3]) == 0 then return redis.error_reply('ISLB_RESET store was reset') end
local unknown = {}
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], 'GT', ARGV[i + 1], ARGV[i])
  else
    unknown[#unknown + 1] = ARGV[i]
  end
end
return unknown
"#;

const DELETE: &str = r#"
-- KEYS: nodes deadlines changes seq; ARGV: key maxlen
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local seq = redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'op', 'del', 'key', ARGV[1])
return old
"#;

const CLAIM: &str = r#"
-- KEYS: nodes deadlines changes seq; ARGV: now maxlen key1 key2 ...
-- Per key: {0, ''} gone, {1, deadline} not due, {2, node} expired (removed here).
local out = {}
local now = tonumber(ARGV[1])
for i = 3, #ARGV do
  local k = ARGV[i]
  local s = redis.call('ZSCORE', KEYS[2], k)
  if not s then
    out[#out + 1] = {0, ''}
  elseif tonumber(s) > now then
    out[#out + 1] = {1, s}
  else
    local node = redis.call('HGET', KEYS[1], k)
    redis.call('HDEL', KEYS[1], k)
    redis.call('ZREM', KEYS[2], k)
    local seq = redis.call('INCR', KEYS[4])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'op', 'del', 'key', k)
    out[#out + 1] = {2, node or ''}
  end
end
return out
"#;

const SNAPSHOT: &str = r#"
-- KEYS: nodes deadlines changes seq sessions used drains.
-- Returns {nodes, deadlines, last id, seq, sessions, session-used, drains}
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {redis.call('HGETALL', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES'), id,
        redis.call('GET', KEYS[4]) or '0', redis.call('HGETALL', KEYS[5]),
        redis.call('ZRANGE', KEYS[6], 0, -1, 'WITHSCORES'), redis.call('HGETALL', KEYS[7])}
"#;

const CLAIM_SESSION: &str = r#"
-- KEYS: nodes sessions used drains changes seq epoch; ARGV: sid candidate now maxlen
-- Returns {code, node, version, from, used}: 0 existing, 1 placed, 2 moved, 3 candidate gone.
if redis.call('EXISTS', KEYS[7]) == 0 then return redis.error_reply('ISLB_RESET store was reset') end
local now = tonumber(ARGV[3])
local cur = redis.call('HGET', KEYS[2], ARGV[1])
local from = ''
local version = 0
if cur then
  local sp = string.find(cur, ' ', 1, true)
  version = tonumber(string.sub(cur, 1, sp - 1))
  local node = string.sub(cur, sp + 1)
  local d = tonumber(redis.call('HGET', KEYS[4], node) or '0')
  if redis.call('HEXISTS', KEYS[1], node) == 1 and not (d > 0 and d <= now) then
    redis.call('ZADD', KEYS[3], 'GT', now, ARGV[1])
    return {0, node, version, '', redis.call('ZSCORE', KEYS[3], ARGV[1])}
  end
  from = node
end
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then return {3, '', version, from, '0'} end
version = version + 1
redis.call('HSET', KEYS[2], ARGV[1], version .. ' ' .. ARGV[2])
redis.call('ZADD', KEYS[3], now, ARGV[1])
local seq = redis.call('INCR', KEYS[6])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'seq', seq, 'op', 'sess', 'key', ARGV[1], 'node', ARGV[2], 'version', version, 'used', now)
if from == '' then return {1, ARGV[2], version, '', ARGV[3]} end
return {2, ARGV[2], version, from, ARGV[3]}
"#;

const MOVE_SESSION: &str = r#"
-- KEYS: sessions used changes seq epoch; ARGV: sid version to('' = release) now idle_before('' = any) maxlen
-- Returns {code, node, version, used}: 0 nothing done, 1 released, 2 moved.
if redis.call('EXISTS', KEYS[5]) == 0 then return redis.error_reply('ISLB_RESET store was reset') end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return {0, '', 0, '0'} end
local sp = string.find(cur, ' ', 1, true)
local version = tonumber(string.sub(cur, 1, sp - 1))
local node = string.sub(cur, sp + 1)
if version ~= tonumber(ARGV[2]) then return {0, '', 0, '0'} end
local used = redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0'
if ARGV[5] ~= '' and tonumber(used) >= tonumber(ARGV[5]) then return {0, '', 0, '0'} end
local seq = redis.call('INCR', KEYS[4])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'seq', seq, 'op', 'unsess', 'key', ARGV[1])
  return {1, node, version, used}
end
version = version + 1
if tonumber(ARGV[4]) > tonumber(used) then used = ARGV[4] end
redis.call('HSET', KEYS[1], ARGV[1], version .. ' ' .. ARGV[3])
redis.call('ZADD', KEYS[2], 'GT', used, ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'seq', seq, 'op', 'sess', 'key', ARGV[1], 'node', ARGV[3], 'version', version, 'used', used)
return {2, ARGV[3], version, used}
"#;

const TOUCH_SESSIONS: &str = r#"
-- KEYS: sessions used epoch; ARGV: sid1 used1 sid2 used2 ...
if redis.call('EXISTS', KEYS[3]) == 0 then return redis.error_reply('ISLB_RESET store was reset') end
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], 'GT', ARGV[i + 1], ARGV[i])
  end
end
return 0
"#;

const DRAIN: &str = r#"
-- KEYS: drains changes seq epoch; ARGV: node deadline('' = lift) maxlen
if redis.call('EXISTS', KEYS[4]) == 0 then return redis.error_reply('ISLB_RESET store was reset') end
local seq
if ARGV[2] == '' then
  if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
  seq = redis.call('INCR', KEYS[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'op', 'undrain', 'key', ARGV[1])
  return 1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
seq = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'op', 'drain', 'key', ARGV[1], 'deadline', ARGV[2])
return 1
"#;

const FORGET_STALE_STREAMS: &str = r#"
-- KEYS: index record1 record2 ...: drops from the index the records that are (still) gone;
-- one re-published since the caller looked stays.
local n = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then n = n + redis.call('SREM', KEYS[1], KEYS[i]) end
end
return n
"#;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` or `rediss://...` for TLS.
    pub url: String,
    /// Key prefix (hash tag) of this store.
    pub prefix: String,
    /// Bound on each call and connection attempt.
    pub timeout: Duration,
    /// PEM file of the CA that signed the server's certificate (`rediss://` with a private
    /// CA); system roots otherwise.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and its key, for a Redis that verifies clients (mutual TLS).
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

struct Keys {
    prefix: String,
    nodes: String,
    deadlines: String,
    changes: String,
    seq: String,
    epoch: String,
    sessions: String,
    session_used: String,
    drains: String,
}

struct Scripts {
    put: Script,
    touch: Script,
    delete: Script,
    claim: Script,
    snapshot: Script,
    claim_session: Script,
    move_session: Script,
    touch_sessions: Script,
    drain: Script,
    forget_stale_streams: Script,
}

/// The Redis backend.
pub struct RedisStore {
    /// The connection, opened on first use (and again after a failed attempt), so that a
    /// store unreachable at start is reached later.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    client: redis::Client,
    config: ConnectionManagerConfig,
    timeout: Duration,
    keys: Keys,
    scripts: Scripts,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    if e.code() == Some("ISLB_RESET") || e.to_string().contains("ISLB_RESET") {
        return StoreError::Reset;
    }
    StoreError::unavailable("redis", e)
}

/// Writes the epoch token if it is missing (a store that lost its data has none).
async fn set_epoch(conn: &mut ConnectionManager, key: &str) -> Result<(), StoreError> {
    let token = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
    );
    let _: Value = redis::cmd("SET").arg(key).arg(token).arg("NX").query_async(conn).await.map_err(unavailable)?;
    Ok(())
}

/// Whether `e` says the server could not be reached (as opposed to refusing us).
fn out_of_reach(e: &StoreError) -> bool {
    match e {
        StoreError::Timeout(_) => true,
        StoreError::Unavailable { source: Some(source), .. } => {
            source.downcast_ref::<redis::RedisError>().is_some_and(|r| {
                r.is_io_error() || r.is_timeout() || r.is_connection_refusal() || r.is_connection_dropped()
            })
        }
        _ => false,
    }
}

fn decode_node(key: &str, bytes: &[u8]) -> Result<Arc<Node>, StoreError> {
    Node::from_gob(bytes).map(Arc::new).map_err(|e| StoreError::corrupt(format!("node {key}: {e}")))
}

fn parse_ms(s: &[u8]) -> Result<Timestamp, StoreError> {
    let text = std::str::from_utf8(s).map_err(StoreError::corrupt)?;
    let v: f64 = text.parse().map_err(|_| StoreError::corrupt(format!("bad deadline {text:?}")))?;
    Ok(Timestamp::from_ms(v as u64))
}

fn as_bytes(v: &Value) -> Result<&[u8], StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.as_bytes()),
        other => Err(StoreError::corrupt(format!("expected a string, got {other:?}"))),
    }
}

fn as_array(v: &Value) -> Result<&[Value], StoreError> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(&[]),
        other => Err(StoreError::corrupt(format!("expected an array, got {other:?}"))),
    }
}

/// The cursor: `<last stream id>/<last seq>`.
fn cursor(id: &str, seq: u64) -> Cursor {
    Cursor(format!("{id}/{seq}"))
}

fn parse_cursor(c: &Cursor) -> (String, u64) {
    match c.0.split_once('/') {
        Some((id, seq)) => (id.to_owned(), seq.parse().unwrap_or(0)),
        None => ("0-0".to_owned(), 0),
    }
}

impl RedisStore {
    /// Connects and prepares the store (writes the epoch token if it is missing). Fails
    /// fast on a bad URL, refused credentials or an unreachable server.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let store = Self::lazy(cfg)?;
        store.conn().await?;
        Ok(store)
    }

    /// [`RedisStore::connect`], except that a server that cannot be reached (refused,
    /// timed out) is not an error: the store is returned with that error, and connects on
    /// a later call. A bad URL or refused credentials still fail.
    pub async fn connect_or_later(cfg: &RedisConfig) -> Result<(Self, Option<StoreError>), StoreError> {
        let store = Self::lazy(cfg)?;
        match store.conn().await {
            Ok(_) => Ok((store, None)),
            Err(e) if out_of_reach(&e) => Ok((store, Some(e))),
            Err(e) => Err(e),
        }
    }

    /// The store, not connected yet (only the URL and CA file are checked).
    fn lazy(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| StoreError::unavailable(p.display().to_string(), e));
        let client = match (&cfg.ca_file, &cfg.client_cert) {
            (None, None) => redis::Client::open(cfg.url.as_str()),
            (ca, cert) => {
                let root_cert = ca.as_deref().map(read).transpose()?;
                let client_tls = match cert {
                    Some((c, k)) => Some(redis::ClientTlsConfig { client_cert: read(c)?, client_key: read(k)? }),
                    None => None,
                };
                redis::Client::build_with_tls(cfg.url.as_str(), redis::TlsCertificates { client_tls, root_cert })
            }
        }
        .map_err(|e| StoreError::unavailable("invalid Redis URL", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let p = &cfg.prefix;
        Ok(RedisStore {
            conn: tokio::sync::OnceCell::new(),
            client,
            config,
            timeout: cfg.timeout,
            keys: Keys {
                prefix: p.clone(),
                sessions: format!("{{{p}}}:sessions"),
                session_used: format!("{{{p}}}:session-used"),
                drains: format!("{{{p}}}:drains"),
                nodes: format!("{{{p}}}:nodes"),
                deadlines: format!("{{{p}}}:deadlines"),
                changes: format!("{{{p}}}:changes"),
                seq: format!("{{{p}}}:seq"),
                epoch: format!("{{{p}}}:epoch"),
            },
            scripts: Scripts {
                put: Script::new(PUT),
                touch: Script::new(TOUCH),
                delete: Script::new(DELETE),
                claim: Script::new(CLAIM),
                snapshot: Script::new(SNAPSHOT),
                claim_session: Script::new(CLAIM_SESSION),
                move_session: Script::new(MOVE_SESSION),
                touch_sessions: Script::new(TOUCH_SESSIONS),
                drain: Script::new(DRAIN),
                forget_stale_streams: Script::new(FORGET_STALE_STREAMS),
            },
        })
    }

    /// The connection, opened (and the epoch token written if missing) on first use.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        let open = || async {
            let manager = ConnectionManager::new_with_config(self.client.clone(), self.config.clone());
            let mut conn = tokio::time::timeout(self.timeout * 3, manager)
                .await
                .map_err(|_| StoreError::Timeout(self.timeout * 3))?
                .map_err(unavailable)?;
            set_epoch(&mut conn, &self.keys.epoch).await?;
            Ok::<_, StoreError>(conn)
        };
        self.conn.get_or_try_init(open).await.cloned()
    }

    /// Sets (a deadline in ms, `0` for none) or lifts (`""`) a drain mark.
    async fn drain_script(&self, node: &NodeKey, deadline: &str) -> Result<i64, StoreError> {
        let k = &self.keys;
        self.scripts
            .drain
            .key(&k.drains)
            .key(&k.changes)
            .key(&k.seq)
            .key(&k.epoch)
            .arg(&**node)
            .arg(deadline)
            .arg(FEED_LENGTH)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = redis::cmd("PING").query_async(&mut self.conn().await?).await.map_err(unavailable)?;
        if pong == "PONG" { Ok(()) } else { Err(StoreError::refused(format!("PING answered {pong:?}"))) }
    }

    async fn reset(&self) -> Result<(), StoreError> {
        set_epoch(&mut self.conn().await?, &self.keys.epoch).await
    }

    async fn put_node(&self, node: Arc<Node>, deadline: Timestamp) -> Result<Verdict, StoreError> {
        let k = &self.keys;
        let code: i64 = self
            .scripts
            .put
            .key(&k.nodes)
            .key(&k.deadlines)
            .key(&k.changes)
            .key(&k.seq)
            .key(&k.epoch)
            .arg(node.id())
            .arg(node.to_gob())
            .arg(deadline.as_ms())
            .arg(FEED_LENGTH)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(unavailable)?;
        Ok(match code {
            0 => Verdict::Created,
            1 => Verdict::Changed,
            _ => Verdict::Unchanged,
        })
    }

    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError> {
        let k = &self.keys;
        let mut unknown = Vec::new();
        for chunk in touches.chunks(BATCH) {
            let mut inv = self.scripts.touch.key(&k.nodes);
            inv.key(&k.deadlines).key(&k.epoch);
            for (key, d) in chunk {
                inv.arg(&**key).arg(d.as_ms());
            }
            let got: Vec<String> = inv.invoke_async(&mut self.conn().await?).await.map_err(unavailable)?;
            unknown.extend(got.into_iter().map(NodeKey::from));
        }
        Ok(unknown)
    }

    async fn delete_node(&self, key: &str) -> Result<Option<Arc<Node>>, StoreError> {
        let k = &self.keys;
        let old: Option<Vec<u8>> = self
            .scripts
            .delete
            .key(&k.nodes)
            .key(&k.deadlines)
            .key(&k.changes)
            .key(&k.seq)
            .arg(key)
            .arg(FEED_LENGTH)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(unavailable)?;
        old.map(|b| decode_node(key, &b)).transpose()
    }

    async fn claim_expired(&self, keys: &[NodeKey], now: Timestamp) -> Result<Vec<Claim>, StoreError> {
        let k = &self.keys;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            let mut inv = self.scripts.claim.key(&k.nodes);
            inv.key(&k.deadlines).key(&k.changes).key(&k.seq).arg(now.as_ms()).arg(FEED_LENGTH);
            for key in chunk {
                inv.arg(&**key);
            }
            let got: Vec<(i64, Vec<u8>)> = inv.invoke_async(&mut self.conn().await?).await.map_err(unavailable)?;
            for ((code, value), key) in got.into_iter().zip(chunk) {
                out.push(match code {
                    0 => Claim::Gone,
                    1 => Claim::NotDue(parse_ms(&value)?),
                    _ if value.is_empty() => Claim::Gone,
                    _ => Claim::Expired(decode_node(key, &value)?),
                });
            }
        }
        Ok(out)
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let k = &self.keys;
        let v: Value = self
            .scripts
            .snapshot
            .key(&k.nodes)
            .key(&k.deadlines)
            .key(&k.changes)
            .key(&k.seq)
            .key(&k.sessions)
            .key(&k.session_used)
            .key(&k.drains)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(unavailable)?;
        let parts = as_array(&v)?;
        let [hash, zset, id, seq, sessions_hash, used_zset, drains_hash] = parts else {
            return Err(StoreError::corrupt("snapshot: unexpected reply shape"));
        };
        let used = scores(used_zset)?;
        let mut sessions = Vec::new();
        for pair in as_array(sessions_hash)?.chunks(2) {
            if let [sid, value] = pair {
                let sid_bytes = as_bytes(sid)?;
                let (version, node) = parse_session_value(as_bytes(value)?)?;
                let used = used.get(sid_bytes).copied().unwrap_or_default();
                sessions.push(Session { sid: String::from_utf8_lossy(sid_bytes).into(), node, version, used });
            }
        }
        let mut drains = Vec::new();
        for pair in as_array(drains_hash)?.chunks(2) {
            if let [node, deadline] = pair {
                let d = parse_ms(as_bytes(deadline)?)?;
                drains.push((String::from_utf8_lossy(as_bytes(node)?).into(), (d.as_ms() > 0).then_some(d)));
            }
        }
        let deadlines = scores(zset)?;
        let mut nodes = Vec::new();
        for pair in as_array(hash)?.chunks(2) {
            if let [key, node] = pair {
                let key_bytes = as_bytes(key)?;
                let key_text = String::from_utf8_lossy(key_bytes);
                let Some(deadline) = deadlines.get(key_bytes) else { continue };
                nodes.push((decode_node(&key_text, as_bytes(node)?)?, *deadline));
            }
        }
        let id = String::from_utf8_lossy(as_bytes(id)?).into_owned();
        let seq = String::from_utf8_lossy(as_bytes(seq)?).parse().unwrap_or(0);
        Ok(Snapshot { nodes, sessions, drains, cursor: cursor(&id, seq) })
    }

    async fn changes(&self, since: &Cursor) -> Result<Changes, StoreError> {
        let (mut last_id, mut last_seq) = parse_cursor(since);
        let mut changes = Vec::new();
        loop {
            let entries: Value = redis::cmd("XRANGE")
                .arg(&self.keys.changes)
                .arg(format!("({last_id}"))
                .arg("+")
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut self.conn().await?)
                .await
                .map_err(unavailable)?;
            let entries = as_array(&entries)?;
            for entry in entries {
                let [id, fields] = as_array(entry)? else { return Err(StoreError::corrupt("stream entry shape")) };
                // An entry's fields, read in place (a handful per entry).
                let fields = as_array(fields)?;
                let lookup = |name: &[u8]| -> Option<&[u8]> {
                    fields.chunks(2).find_map(|p| match p {
                        [n, v] if as_bytes(n).ok()? == name => as_bytes(v).ok(),
                        _ => None,
                    })
                };
                let field = |name: &[u8]| lookup(name).unwrap_or_default();
                let number = |name: &[u8]| -> u64 {
                    std::str::from_utf8(field(name)).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
                };
                let ms_or_zero = |name: &[u8]| parse_ms(lookup(name).unwrap_or(b"0"));
                let seq = number(b"seq");
                if seq != last_seq + 1 {
                    return Ok(Changes::Gap);
                }
                let key = String::from_utf8_lossy(field(b"key")).into_owned();
                match field(b"op") {
                    b"put" => changes.push(Change::Put(decode_node(&key, field(b"node"))?, ms_or_zero(b"deadline")?)),
                    b"del" => changes.push(Change::Delete(key.into())),
                    b"sess" => changes.push(Change::Session(Session {
                        sid: key.as_str().into(),
                        node: String::from_utf8_lossy(field(b"node")).into(),
                        version: number(b"version"),
                        used: parse_ms(field(b"used"))?,
                    })),
                    b"unsess" => changes.push(Change::SessionGone(key.as_str().into())),
                    b"drain" => {
                        let d = ms_or_zero(b"deadline")?;
                        changes.push(Change::Drain(key.into(), (d.as_ms() > 0).then_some(d)));
                    }
                    b"undrain" => changes.push(Change::Undrain(key.into())),
                    // Written by a newer islb sharing the store (a rolling upgrade): what this
                    // version does not know it cannot apply, and must not stall on.
                    other => tracing::debug!(op = %String::from_utf8_lossy(other), "skipping an unknown change"),
                }
                last_id = String::from_utf8_lossy(as_bytes(id)?).into_owned();
                last_seq = seq;
            }
            if entries.len() < BATCH {
                break;
            }
        }
        Ok(Changes::Since { changes, cursor: cursor(&last_id, last_seq) })
    }

    async fn claim_session(&self, sid: &str, candidate: &NodeKey, now: Timestamp) -> Result<SessionClaim, StoreError> {
        let k = &self.keys;
        let v: Value = self
            .scripts
            .claim_session
            .key(&k.nodes)
            .key(&k.sessions)
            .key(&k.session_used)
            .key(&k.drains)
            .key(&k.changes)
            .key(&k.seq)
            .key(&k.epoch)
            .arg(sid)
            .arg(&**candidate)
            .arg(now.as_ms())
            .arg(FEED_LENGTH)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(unavailable)?;
        let [code, node, version, from, used] = as_array(&v)? else {
            return Err(StoreError::corrupt("claim_session reply shape"));
        };
        let session = || session_reply(sid, node, version, used);
        Ok(match int(code)? {
            0 => SessionClaim::Existing(session()?),
            1 => SessionClaim::Placed(session()?),
            2 => SessionClaim::Moved { session: session()?, from: text(from)?.into() },
            _ => SessionClaim::CandidateGone,
        })
    }

    async fn move_session(
        &self,
        sid: &str,
        version: u64,
        to: Option<&NodeKey>,
        idle_before: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        let k = &self.keys;
        let v: Value = self
            .scripts
            .move_session
            .key(&k.sessions)
            .key(&k.session_used)
            .key(&k.changes)
            .key(&k.seq)
            .key(&k.epoch)
            .arg(sid)
            .arg(version)
            .arg(to.map_or("", |t| &**t))
            .arg(now.as_ms())
            .arg(idle_before.map_or(String::new(), |b| b.as_ms().to_string()))
            .arg(FEED_LENGTH)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(unavailable)?;
        let [code, node, version, used] = as_array(&v)? else {
            return Err(StoreError::corrupt("move_session reply shape"));
        };
        Ok(match int(code)? {
            0 => None,
            _ => Some(session_reply(sid, node, version, used)?),
        })
    }

    async fn touch_sessions(&self, touches: &[(Arc<str>, Timestamp)]) -> Result<(), StoreError> {
        let k = &self.keys;
        for chunk in touches.chunks(BATCH) {
            let mut inv = self.scripts.touch_sessions.key(&k.sessions);
            inv.key(&k.session_used).key(&k.epoch);
            for (sid, t) in chunk {
                inv.arg(&**sid).arg(t.as_ms());
            }
            let _: i64 = inv.invoke_async(&mut self.conn().await?).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn set_drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<(), StoreError> {
        self.drain_script(node, &deadline.map_or(0, |d| d.as_ms()).to_string()).await.map(drop)
    }

    async fn clear_drain(&self, node: &NodeKey) -> Result<bool, StoreError> {
        Ok(self.drain_script(node, "").await? == 1)
    }

    async fn put_stream(&self, key: &StreamKey, json: &str, ttl: Duration) -> Result<(), StoreError> {
        let (index, record) = (self.stream_index(&key.sid), key.redis_key());
        let ms = ttl.as_millis().max(1) as u64;
        let _: Value = redis::pipe()
            .cmd("SET")
            .arg(&record)
            .arg(json)
            .arg("PX")
            .arg(ms)
            .cmd("SADD")
            .arg(&index)
            .arg(&record)
            .cmd("PEXPIRE")
            .arg(&index)
            .arg(ms)
            .query_async(&mut self.conn().await?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete_stream(&self, key: &StreamKey) -> Result<bool, StoreError> {
        let (index, record) = (self.stream_index(&key.sid), key.redis_key());
        let (n, _): (i64, i64) = redis::pipe()
            .cmd("DEL")
            .arg(&record)
            .cmd("SREM")
            .arg(&index)
            .arg(&record)
            .query_async(&mut self.conn().await?)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }

    async fn streams_of(&self, sid: &str) -> Result<Vec<(StreamKey, String)>, StoreError> {
        let index = self.stream_index(sid);
        let mut conn = self.conn().await?;
        let keys: Vec<String> = redis::cmd("SMEMBERS").arg(&index).query_async(&mut conn).await.map_err(unavailable)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.map_err(unavailable)?;
        let mut out = Vec::new();
        let (mut stale, mut foreign) = (Vec::new(), Vec::new());
        for (k, v) in keys.into_iter().zip(values) {
            match (StreamKey::parse(&k), v) {
                (Some(key), Some(v)) => out.push((key, v)),
                (Some(_), None) => stale.push(k),
                // Not a stream record key at all: it has no business in the index.
                (None, _) => foreign.push(k),
            }
        }
        if !stale.is_empty() {
            self.forget_stale_streams(&index, &stale).await?;
        }
        if !foreign.is_empty() {
            let _: i64 =
                redis::cmd("SREM").arg(&index).arg(&foreign).query_async(&mut conn).await.map_err(unavailable)?;
        }
        out.sort();
        Ok(out)
    }
}

impl RedisStore {
    /// The index of session `sid`'s stream records.
    fn stream_index(&self, sid: &str) -> String {
        format!("{{{}}}:streams:{sid}", self.keys.prefix)
    }

    /// Drops from `index` those of `stale` that still have no record (one may have been
    /// published again since it was read); returns how many went.
    async fn forget_stale_streams(&self, index: &str, stale: &[String]) -> Result<i64, StoreError> {
        let mut inv = self.scripts.forget_stale_streams.key(index);
        for k in stale {
            inv.key(k);
        }
        inv.invoke_async(&mut self.conn().await?).await.map_err(unavailable)
    }
}

/// A sorted set's `member score` pairs (scores in ms).
fn scores(zset: &Value) -> Result<std::collections::HashMap<Vec<u8>, Timestamp>, StoreError> {
    let mut out = std::collections::HashMap::new();
    for pair in as_array(zset)?.chunks(2) {
        if let [member, score] = pair {
            out.insert(as_bytes(member)?.to_vec(), parse_ms(as_bytes(score)?)?);
        }
    }
    Ok(out)
}

/// A session as the session scripts return it.
fn session_reply(sid: &str, node: &Value, version: &Value, used: &Value) -> Result<Session, StoreError> {
    Ok(Session {
        sid: sid.into(),
        node: text(node)?.into(),
        version: int(version)? as u64,
        used: parse_ms(as_bytes(used)?)?,
    })
}

/// `<version> <DC.NID>`.
fn parse_session_value(v: &[u8]) -> Result<(u64, NodeKey), StoreError> {
    let text = std::str::from_utf8(v).map_err(StoreError::corrupt)?;
    let (version, node) =
        text.split_once(' ').ok_or_else(|| StoreError::corrupt(format!("bad session value {text:?}")))?;
    Ok((version.parse().map_err(|_| StoreError::corrupt(format!("bad session version {text:?}")))?, node.into()))
}

fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => std::str::from_utf8(as_bytes(other)?)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::corrupt(format!("expected a number, got {other:?}"))),
    }
}

fn text(v: &Value) -> Result<String, StoreError> {
    Ok(String::from_utf8_lossy(as_bytes(v)?).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use islb_testkit::RedisServer;

    fn config(redis: &RedisServer, prefix: &str) -> RedisConfig {
        RedisConfig {
            url: redis.url(),
            prefix: prefix.into(),
            timeout: Duration::from_secs(5),
            ca_file: None,
            client_cert: None,
        }
    }

    #[tokio::test]
    async fn redis_store_meets_the_contract() {
        let redis = RedisServer::start();
        let n = std::sync::atomic::AtomicUsize::new(0);
        islb_store::testsuite::run_all(|| {
            let cfg = config(&redis, &format!("t{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
            async move { RedisStore::connect(&cfg).await.unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn redis_store_meets_the_shared_contract() {
        let redis = RedisServer::start();
        let n = std::sync::atomic::AtomicUsize::new(0);
        islb_store::testsuite::run_shared(|| {
            let cfg = config(&redis, &format!("s{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
            async move { (RedisStore::connect(&cfg).await.unwrap(), RedisStore::connect(&cfg).await.unwrap()) }
        })
        .await;
    }

    #[tokio::test]
    async fn the_key_layout_is_the_documented_one_and_nodes_are_gob() {
        let redis = RedisServer::start();
        let s = RedisStore::connect(&config(&redis, "islb")).await.unwrap();
        let n = Node { dc: "dc1".into(), service: "rtc".into(), nid: "sfu-1".into(), ..Node::default() };
        s.put_node(Arc::new(n.clone()), Timestamp::from_ms(1_700_000_000_000)).await.unwrap();
        let keys = redis.command(&["KEYS", "*"]);
        let mut keys: Vec<&str> = keys.lines().collect();
        keys.sort();
        assert_eq!(keys, ["{islb}:changes", "{islb}:deadlines", "{islb}:epoch", "{islb}:nodes", "{islb}:seq"]);
        let a: NodeKey = "dc1.sfu-1".into();
        s.claim_session("room1", &a, Timestamp::from_ms(5)).await.unwrap();
        assert_eq!(redis.command(&["HGET", "{islb}:sessions", "room1"]), "1 dc1.sfu-1");
        let k = StreamKey { dc: "dc1".into(), nid: "sfu-1".into(), sid: "room1".into(), uid: "peer1".into() };
        s.put_stream(&k, r#"[{"id":"stream1","tracks":[{"id":"t1","kind":"audio"}]}]"#, Duration::from_secs(86_400))
            .await
            .unwrap();
        assert_eq!(
            redis.command(&["GET", "dc1/sfu-1/room1/peer1"]),
            r#"[{"id":"stream1","tracks":[{"id":"t1","kind":"audio"}]}]"#
        );
        let ttl: u64 = redis.command(&["TTL", "dc1/sfu-1/room1/peer1"]).parse().unwrap();
        assert!((86_390..=86_400).contains(&ttl), "24 h TTL, as ion: {ttl}");
        assert_eq!(redis.command(&["ZSCORE", "{islb}:deadlines", "dc1.sfu-1"]), "1700000000000");
        assert_eq!(redis.command(&["HLEN", "{islb}:nodes"]), "1");
    }

    #[tokio::test]
    async fn a_wiped_store_reports_reset_until_reset() {
        let redis = RedisServer::start();
        let s = RedisStore::connect(&config(&redis, "islb")).await.unwrap();
        let n = Arc::new(Node { dc: "dc1".into(), service: "rtc".into(), nid: "a".into(), ..Node::default() });
        s.put_node(n.clone(), Timestamp::from_ms(1)).await.unwrap();
        assert_eq!(redis.command(&["FLUSHALL"]), "OK");
        assert!(matches!(s.put_node(n.clone(), Timestamp::from_ms(1)).await, Err(StoreError::Reset)));
        assert!(matches!(s.touch_nodes(&[("dc1.a".into(), Timestamp::from_ms(2))]).await, Err(StoreError::Reset)));
        let key: NodeKey = "dc1.a".into();
        assert!(matches!(s.claim_session("r", &key, Timestamp::from_ms(2)).await, Err(StoreError::Reset)));
        assert!(matches!(s.set_drain(&key, None).await, Err(StoreError::Reset)));
        assert!(matches!(s.clear_drain(&key).await, Err(StoreError::Reset)));
        assert!(matches!(s.move_session("r", 1, None, None, Timestamp::from_ms(2)).await, Err(StoreError::Reset)));
        assert!(matches!(s.touch_sessions(&[("r".into(), Timestamp::from_ms(2))]).await, Err(StoreError::Reset)));
        assert_eq!(redis.command(&["DBSIZE"]), "0", "nothing was written into the wiped store");
        s.reset().await.unwrap();
        assert_eq!(s.put_node(n, Timestamp::from_ms(1)).await.unwrap(), Verdict::Created);
    }

    #[tokio::test]
    async fn changes_of_unknown_kinds_are_skipped_not_fatal() {
        let redis = RedisServer::start();
        let s = RedisStore::connect(&config(&redis, "islb")).await.unwrap();
        let from = s.load().await.unwrap().cursor;
        s.set_drain(&"dc1.a".into(), None).await.unwrap();
        // What a newer islb sharing the store might write, between two known changes.
        redis.command(&["INCR", "{islb}:seq"]);
        redis.command(&["XADD", "{islb}:changes", "*", "seq", "2", "op", "weigh", "key", "dc1.a"]);
        s.clear_drain(&"dc1.a".into()).await.unwrap();
        let Changes::Since { changes, cursor } = s.changes(&from).await.unwrap() else { panic!("a gap") };
        assert_eq!(changes, [Change::Drain("dc1.a".into(), None), Change::Undrain("dc1.a".into())]);
        let Changes::Since { changes, .. } = s.changes(&cursor).await.unwrap() else { panic!("a gap") };
        assert!(changes.is_empty(), "the cursor moved past the unknown change");
    }

    #[tokio::test]
    async fn stale_stream_index_entries_go_but_a_republished_record_stays() {
        let redis = RedisServer::start();
        let s = RedisStore::connect(&config(&redis, "islb")).await.unwrap();
        let index = "{islb}:streams:room1";
        redis.command(&["SADD", index, "dc1/a/room1/gone", "dc1/a/room1/back", "not-a-record-key"]);
        redis.command(&["SET", "not-a-record-key", "x"]);
        // Read as stale, then published again before the cleanup ran.
        redis.command(&["SET", "dc1/a/room1/back", "[]"]);
        let stale = ["dc1/a/room1/gone".to_owned(), "dc1/a/room1/back".to_owned()];
        assert_eq!(s.forget_stale_streams(index, &stale).await.unwrap(), 1);
        let mut members: Vec<String> = redis.command(&["SMEMBERS", index]).lines().map(String::from).collect();
        members.sort();
        assert_eq!(members, ["dc1/a/room1/back", "not-a-record-key"]);
        let got = s.streams_of("room1").await.unwrap();
        assert_eq!(got.iter().map(|(k, _)| k.uid.as_str()).collect::<Vec<_>>(), ["back"]);
        assert_eq!(redis.command(&["SMEMBERS", index]), "dc1/a/room1/back", "a foreign member is dropped");
    }

    #[tokio::test]
    async fn passwords_are_required_and_used() {
        let redis = RedisServer::start_with_password(Some("s3cret"));
        let mut cfg = config(&redis, "islb");
        assert!(RedisStore::connect(&cfg).await.is_ok());
        cfg.url = redis.url().replace(":s3cret@", ":wrong@");
        let err = RedisStore::connect(&cfg).await.err().expect("wrong password refused");
        // The reason is in the error's source chain.
        let err = islb_runtime::Chain(&err).to_string();
        assert!(err.to_lowercase().contains("auth") || err.contains("WRONGPASS"), "{err}");
    }

    #[tokio::test]
    async fn tls_with_a_private_ca_works_and_an_untrusted_server_is_refused() {
        let redis = RedisServer::start_tls();
        let mut cfg = config(&redis, "islb");
        assert!(cfg.url.starts_with("rediss://"));
        let err = RedisStore::connect(&cfg).await.err().expect("a server signed by an unknown CA is refused");
        assert!(!err.to_string().is_empty());
        cfg.ca_file = Some(redis.ca_file());
        let s = RedisStore::connect(&cfg).await.expect("TLS with the CA file");
        let n = Arc::new(Node { dc: "dc1".into(), service: "rtc".into(), nid: "tls".into(), ..Node::default() });
        assert_eq!(s.put_node(n, Timestamp::from_ms(1)).await.unwrap(), Verdict::Created);
        s.ping().await.unwrap();
    }

    #[tokio::test]
    async fn mutual_tls_needs_the_client_certificate() {
        let redis = RedisServer::start_mutual_tls();
        let mut cfg = config(&redis, "islb");
        cfg.ca_file = Some(redis.ca_file());
        assert!(RedisStore::connect(&cfg).await.is_err(), "no client certificate, no connection");
        cfg.client_cert = Some((redis.file("client.crt"), redis.file("client.key")));
        let s = RedisStore::connect(&cfg).await.expect("mutual TLS with the client certificate");
        let n = Arc::new(Node { dc: "dc1".into(), service: "rtc".into(), nid: "mtls".into(), ..Node::default() });
        assert_eq!(s.put_node(n, Timestamp::from_ms(1)).await.unwrap(), Verdict::Created);
    }

    #[tokio::test]
    async fn a_hanging_redis_is_a_timeout_not_a_hang() {
        let redis = RedisServer::start();
        let mut cfg = config(&redis, "islb");
        cfg.timeout = Duration::from_secs(1);
        let s = RedisStore::connect(&cfg).await.unwrap();
        redis.pause();
        let started = std::time::Instant::now();
        assert!(s.ping().await.is_err());
        // Bounded by the 1 s timeout (with slack for a loaded machine), not by the pause.
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        redis.resume();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.ping().await.is_err() {
            assert!(std::time::Instant::now() < deadline, "the store never came back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
