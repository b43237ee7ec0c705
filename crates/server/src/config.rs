//! Configuration: defaults, a TOML file (islb's own keys and ion's `islb.toml` keys),
//! environment (`ISLB_...`) and flags, with precedence flags > env > file > defaults.
//!
//! The binary parses flags and environment with clap into an [`Overrides`]; this module
//! reads the file, merges, validates, and produces a [`Config`], or a [`ConfigError`]
//! whose one line says what is wrong and where.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default NATS URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default data centre.
pub const DEFAULT_DC: &str = "dc1";
/// Default expiry of a silent node (ion's registry: 5 s).
pub const DEFAULT_EXPIRE: Duration = Duration::from_secs(5);
/// Default admin HTTP address.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8088";
/// Default log level.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default time to keep trying to reach NATS at start.
pub const DEFAULT_NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time allowed to finish in-flight work at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default largest request accepted (NATS's default max payload).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;
/// Default period of islb's own keep-alive (ion nodes: 2 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(2);
/// Default bound on any store call.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default idle time after which a session is released (ion's Redis keys: 24 h).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Services placed per session by default.
pub const DEFAULT_PLACEMENT_SERVICES: &[&str] = &["rtc"];

/// The store islb keeps its state in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In this process's memory (lost at exit).
    Memory,
    /// In memory, written through to a file that survives restarts.
    File(PathBuf),
    /// A Redis server (`redis://` or `rediss://` URL), shared by replicas.
    Redis(String),
}

impl StoreSpec {
    /// Parses `memory`, `file:PATH`, `redis://...` or `rediss://...`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "memory" {
            Ok(StoreSpec::Memory)
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path, e.g. file:/var/lib/islb/state.redb".into());
            }
            Ok(StoreSpec::File(PathBuf::from(path)))
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(StoreSpec::Redis(s.to_owned()))
        } else {
            Err(format!("unknown store {s:?} (expected memory, file:PATH, redis://... or rediss://...)"))
        }
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Memory => write!(f, "memory"),
            StoreSpec::File(p) => write!(f, "file:{}", p.display()),
            StoreSpec::Redis(url) => write!(f, "{}", mask_url(url)),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format {s:?} (expected text or json)")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// ion's `[redis]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IonRedis {
    /// `host:port` addresses (`:6379` means localhost).
    pub addrs: Vec<String>,
    /// AUTH password.
    pub password: String,
    /// Database number.
    pub db: i64,
}

impl IonRedis {
    /// The equivalent `redis://` URL (first address; ion's cluster mode is not supported).
    /// The password is percent-encoded, so any character ion accepts works here too.
    pub fn url(&self) -> Option<String> {
        let addr = self.addrs.first()?;
        let addr = if addr.starts_with(':') { format!("127.0.0.1{addr}") } else { addr.clone() };
        let auth = if self.password.is_empty() {
            String::new()
        } else {
            format!(":{}@", percent_encoding::utf8_percent_encode(&self.password, percent_encoding::NON_ALPHANUMERIC))
        };
        Some(format!("redis://{auth}{addr}/{}", self.db))
    }

    /// The addresses of `[redis] addrs` that islb does not use (all but the first).
    pub fn unused_addrs(&self) -> &[String] {
        self.addrs.get(1..).unwrap_or_default()
    }
}

/// The validated configuration of `islb serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// Data centre of this islb.
    pub dc: String,
    /// Node id of this islb.
    pub nid: String,
    /// Where state is kept.
    pub store: StoreSpec,
    /// Key prefix in a shared store (several clusters on one Redis).
    pub store_prefix: String,
    /// Bound on every store call.
    pub store_timeout: Duration,
    /// CA certificate (PEM) for `rediss://` with a private CA.
    pub store_ca_file: Option<PathBuf>,
    /// How long a silent node lives.
    pub expire: Duration,
    /// Admin HTTP listen address (port 0: any free port).
    pub http_addr: SocketAddr,
    /// Log filter (`info`, `debug`, `info,islb_server=debug`...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// How long to keep trying to reach NATS at start.
    pub nats_connect_timeout: Duration,
    /// Time allowed to finish in-flight work at shutdown.
    pub shutdown_grace: Duration,
    /// Largest request payload accepted.
    pub max_message_size: usize,
    /// Period of islb's own keep-alive.
    pub keepalive_interval: Duration,
    /// Services placed per session (hidden from `get *` and from save events).
    pub placement_services: BTreeSet<String>,
    /// Sessions not looked up for this long are released.
    pub session_ttl: Duration,
    /// Capacity (sessions) of nodes that report none; 0: unlimited.
    pub default_capacity: u64,
    /// HMAC secret to verify JWTs in `authorization` (none: claims are only decoded).
    pub jwt_key: Option<String>,
    /// ion's `[redis]` section as read (its URL is the store when `store` is not set).
    pub ion_redis: Option<IonRedis>,
}

impl Config {
    /// The configuration with every default (a random NID).
    pub fn defaults() -> Self {
        Config {
            nats_url: DEFAULT_NATS_URL.into(),
            dc: DEFAULT_DC.into(),
            nid: random_nid(),
            store: StoreSpec::Memory,
            store_prefix: "islb".into(),
            store_timeout: DEFAULT_STORE_TIMEOUT,
            store_ca_file: None,
            expire: DEFAULT_EXPIRE,
            http_addr: DEFAULT_HTTP_ADDR.parse().expect("valid default"),
            log_level: DEFAULT_LOG_LEVEL.into(),
            log_format: LogFormat::Text,
            nats_connect_timeout: DEFAULT_NATS_CONNECT_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            keepalive_interval: DEFAULT_KEEPALIVE,
            placement_services: DEFAULT_PLACEMENT_SERVICES.iter().map(|s| s.to_string()).collect(),
            session_ttl: DEFAULT_SESSION_TTL,
            default_capacity: 0,
            jwt_key: None,
            ion_redis: None,
        }
    }

    /// Reads the file (if any), applies `overrides` (flags and environment), validates.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file_layer = match file {
            Some(path) => read_file(path)?,
            None => FileLayer::default(),
        };
        let mut cfg = Config::defaults();
        file_layer.apply(&mut cfg)?;
        overrides.apply(&mut cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError::Invalid { key: key.into(), why });
        for (key, value) in [("dc", &self.dc), ("nid", &self.nid)] {
            if value.is_empty() {
                return bad(key, "must not be empty".into());
            }
            if value.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>')) {
                return bad(key, format!("{value:?} must not contain whitespace, '.', '*' or '>'"));
            }
        }
        if self.nats_url.trim().is_empty() {
            return bad("nats-url", "must not be empty".into());
        }
        if self.expire < Duration::from_millis(100) {
            return bad("expire", format!("{} is too short (minimum 100ms)", humantime::format_duration(self.expire)));
        }
        if self.keepalive_interval < Duration::from_millis(10) {
            return bad("keepalive-interval", "must be at least 10ms".into());
        }
        if self.max_message_size < 1024 {
            return bad("max-message-size", format!("{} is too small (minimum 1024 bytes)", self.max_message_size));
        }
        if self.session_ttl < Duration::from_secs(1) {
            return bad("session-ttl", "must be at least 1s".into());
        }
        if self.store_timeout.is_zero() {
            return bad("store-timeout", "must be more than 0".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return bad("log-level", format!("{:?}: {e}", self.log_level));
        }
        for s in &self.placement_services {
            if s.is_empty() || s.contains(char::is_whitespace) {
                return bad("placement.services", format!("invalid service name {s:?}"));
            }
        }
        Ok(())
    }

    /// The effective configuration as `key = value` lines, secrets masked (for the start-up
    /// log and `islb config check`).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("nats-url", mask_url(&self.nats_url)),
            ("dc", self.dc.clone()),
            ("nid", self.nid.clone()),
            ("store", self.store.to_string()),
            ("store-prefix", self.store_prefix.clone()),
            ("store-timeout", humantime::format_duration(self.store_timeout).to_string()),
            ("store-ca-file", self.store_ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default()),
            ("expire", humantime::format_duration(self.expire).to_string()),
            ("http-addr", self.http_addr.to_string()),
            ("log-level", self.log_level.clone()),
            ("log-format", self.log_format.to_string()),
            ("nats-connect-timeout", humantime::format_duration(self.nats_connect_timeout).to_string()),
            ("shutdown-grace", humantime::format_duration(self.shutdown_grace).to_string()),
            ("max-message-size", self.max_message_size.to_string()),
            ("keepalive-interval", humantime::format_duration(self.keepalive_interval).to_string()),
            ("placement-services", self.placement_services.iter().cloned().collect::<Vec<_>>().join(",")),
            ("session-ttl", humantime::format_duration(self.session_ttl).to_string()),
            ("default-capacity", self.default_capacity.to_string()),
            ("jwt-key", if self.jwt_key.is_some() { "***".into() } else { String::new() }),
        ]
    }
}

/// `islb-` and six random letters or digits, as ion names its nodes.
pub fn random_nid() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..6).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect();
    format!("islb-{suffix}")
}

/// Replaces the password in `scheme://user:password@host` with `***`.
pub fn mask_url(url: &str) -> String {
    url.split(',')
        .map(|u| {
            let Some((scheme, rest)) = u.split_once("://") else {
                return u.to_owned();
            };
            let Some((auth, host)) = rest.rsplit_once('@') else {
                return u.to_owned();
            };
            match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://***@{host}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Values from flags and environment (already merged by clap: flags win). `None`: not given.
#[derive(Debug, Clone, Default)]
#[allow(missing_docs)]
pub struct Overrides {
    pub nats_url: Option<String>,
    pub dc: Option<String>,
    pub nid: Option<String>,
    pub store: Option<String>,
    pub store_prefix: Option<String>,
    pub store_timeout: Option<Duration>,
    pub store_ca_file: Option<PathBuf>,
    pub expire: Option<Duration>,
    pub http_addr: Option<SocketAddr>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub nats_connect_timeout: Option<Duration>,
    pub shutdown_grace: Option<Duration>,
    pub max_message_size: Option<usize>,
    pub keepalive_interval: Option<Duration>,
    /// Comma-separated; empty disables placement.
    pub placement_services: Option<String>,
    pub session_ttl: Option<Duration>,
    pub default_capacity: Option<u64>,
    pub jwt_key: Option<String>,
}

impl Overrides {
    fn apply(&self, cfg: &mut Config) -> Result<(), ConfigError> {
        let flag = |key: &str, why: String| ConfigError::Invalid { key: key.into(), why };
        if let Some(v) = &self.nats_url {
            cfg.nats_url = v.clone();
        }
        if let Some(v) = &self.dc {
            cfg.dc = v.clone();
        }
        if let Some(v) = &self.nid {
            cfg.nid = v.clone();
        }
        if let Some(v) = &self.store {
            cfg.store = StoreSpec::parse(v).map_err(|e| flag("store", e))?;
        }
        if let Some(v) = &self.store_prefix {
            cfg.store_prefix = v.clone();
        }
        if let Some(v) = self.store_timeout {
            cfg.store_timeout = v;
        }
        if let Some(v) = &self.store_ca_file {
            cfg.store_ca_file = Some(v.clone());
        }
        if let Some(v) = self.expire {
            cfg.expire = v;
        }
        if let Some(v) = self.http_addr {
            cfg.http_addr = v;
        }
        if let Some(v) = &self.log_level {
            cfg.log_level = v.clone();
        }
        if let Some(v) = &self.log_format {
            cfg.log_format = LogFormat::parse(v).map_err(|e| flag("log-format", e))?;
        }
        if let Some(v) = self.nats_connect_timeout {
            cfg.nats_connect_timeout = v;
        }
        if let Some(v) = self.shutdown_grace {
            cfg.shutdown_grace = v;
        }
        if let Some(v) = self.max_message_size {
            cfg.max_message_size = v;
        }
        if let Some(v) = self.keepalive_interval {
            cfg.keepalive_interval = v;
        }
        if let Some(v) = &self.placement_services {
            cfg.placement_services = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        }
        if let Some(v) = self.session_ttl {
            cfg.session_ttl = v;
        }
        if let Some(v) = self.default_capacity {
            cfg.default_capacity = v;
        }
        if let Some(v) = &self.jwt_key {
            cfg.jwt_key = Some(v.clone()).filter(|k| !k.is_empty());
        }
        Ok(())
    }
}

/// A configuration problem, in one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a bad key or value.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is not acceptable.
    #[error("{key}: {why}")]
    Invalid {
        /// The option.
        key: String,
        /// Why.
        why: String,
    },
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

/// Parses `5s`, `500ms`, `1m 30s`...
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: \"5s\", \"500ms\", \"1m\")"))
}

/// The file: islb's own keys at the top level and in `[placement]`, and ion's sections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileLayer {
    nats_url: Option<String>,
    dc: Option<String>,
    nid: Option<String>,
    store: Option<String>,
    store_prefix: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    store_timeout: Option<Duration>,
    store_ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_duration")]
    expire: Option<Duration>,
    http_addr: Option<SocketAddr>,
    log_level: Option<String>,
    log_format: Option<String>,
    #[serde(default, deserialize_with = "de_duration")]
    nats_connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    shutdown_grace: Option<Duration>,
    max_message_size: Option<usize>,
    #[serde(default, deserialize_with = "de_duration")]
    keepalive_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    session_ttl: Option<Duration>,
    default_capacity: Option<u64>,
    jwt_key: Option<String>,
    placement: Option<PlacementSection>,
    // ion's islb.toml
    global: Option<IonGlobal>,
    nats: Option<IonNats>,
    redis: Option<IonRedisSection>,
    log: Option<IonLog>,
    node: Option<IonNode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementSection {
    services: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IonGlobal {
    dc: Option<String>,
    /// ion v1.9's pprof listener: accepted and ignored (islb serves /metrics instead).
    #[serde(rename = "pprof")]
    _pprof: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IonNats {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IonRedisSection {
    addrs: Option<Vec<String>>,
    password: Option<String>,
    db: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IonLog {
    level: Option<String>,
}

/// ion v1.9's `[node] nid`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IonNode {
    nid: Option<String>,
}

fn read_file(path: &Path) -> Result<FileLayer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |span| line_col(&text, span.start));
        ConfigError::Parse { path: path.to_owned(), line, column, message: e.message().replace('\n', " ") }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Takes `ours` or `ion's` spelling of one option; both set and different is an error.
fn one_of<T: PartialEq + fmt::Debug + Clone>(
    key: &str,
    ours: Option<T>,
    ion_key: &str,
    ion: Option<T>,
) -> Result<Option<T>, ConfigError> {
    match (ours, ion) {
        (Some(a), Some(b)) if a != b => Err(ConfigError::Invalid {
            key: key.into(),
            why: format!("set twice with different values ({key} = {a:?}, {ion_key} = {b:?}); keep one"),
        }),
        (a, b) => Ok(a.or(b)),
    }
}

impl FileLayer {
    /// Resolves ion's spellings against ours, then applies the file as one more layer of
    /// [`Overrides`] (placement services come as a list here).
    fn apply(self, cfg: &mut Config) -> Result<(), ConfigError> {
        let nats_url = one_of("nats-url", self.nats_url, "[nats] url", self.nats.and_then(|n| n.url))?;
        let dc = one_of("dc", self.dc, "[global] dc", self.global.and_then(|g| g.dc))?;
        let nid = one_of("nid", self.nid, "[node] nid", self.node.and_then(|n| n.nid))?;
        // ion's level names (trace, debug, info, warn, error) are valid filters as they are.
        let log_level = one_of("log-level", self.log_level, "[log] level", self.log.and_then(|l| l.level))?;
        if let Some(r) = self.redis {
            cfg.ion_redis = Some(IonRedis {
                addrs: r.addrs.unwrap_or_default(),
                password: r.password.unwrap_or_default(),
                db: r.db.unwrap_or(0),
            });
        }
        let layer = Overrides {
            nats_url,
            dc,
            nid,
            store: self.store.or_else(|| cfg.ion_redis.as_ref().and_then(IonRedis::url)),
            store_prefix: self.store_prefix,
            store_timeout: self.store_timeout,
            store_ca_file: self.store_ca_file,
            expire: self.expire,
            http_addr: self.http_addr,
            log_level,
            log_format: self.log_format,
            nats_connect_timeout: self.nats_connect_timeout,
            shutdown_grace: self.shutdown_grace,
            max_message_size: self.max_message_size,
            keepalive_interval: self.keepalive_interval,
            placement_services: None,
            session_ttl: self.session_ttl,
            default_capacity: self.default_capacity,
            jwt_key: self.jwt_key,
        };
        layer.apply(cfg)?;
        if let Some(services) = self.placement.and_then(|p| p.services) {
            cfg.placement_services = services.into_iter().collect();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    const ION_ISLB_TOML: &str = r#"
[global]
# data center id
dc = "dc1"

[log]
level = "info"

[nats]
url = "nats://127.0.0.1:4222"

[redis]
addrs = [":6379"]
password = ""
db = 0
"#;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.dc, "dc1");
        assert!(c.nid.starts_with("islb-") && c.nid.len() == 11, "{}", c.nid);
        assert!(c.nid[5..].chars().all(|ch| ch.is_ascii_alphanumeric()));
        assert_eq!(c.store, StoreSpec::Memory);
        assert_eq!(c.expire, Duration::from_secs(5));
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8088");
        assert_eq!(c.placement_services, BTreeSet::from(["rtc".to_owned()]));
    }

    #[test]
    fn ions_own_islb_toml_is_accepted_as_it_is() {
        let f = file(ION_ISLB_TOML);
        let c = Config::load(Some(f.path()), &Overrides::default()).unwrap();
        assert_eq!(c.dc, "dc1");
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.log_level, "info");
        assert_eq!(c.store, StoreSpec::Redis("redis://127.0.0.1:6379/0".into()));
        // An explicit store wins over ion's [redis].
        let over = Overrides { store: Some("memory".into()), ..Overrides::default() };
        assert_eq!(Config::load(Some(f.path()), &over).unwrap().store, StoreSpec::Memory);
    }

    #[test]
    fn an_ion_redis_password_with_url_characters_is_encoded_and_extra_addrs_are_reported() {
        let ion =
            IonRedis { addrs: vec!["10.0.0.1:6379".into(), ":6380".into()], password: "p@ss:w/rd#1".into(), db: 2 };
        assert_eq!(ion.url().unwrap(), "redis://:p%40ss%3Aw%2Frd%231@10.0.0.1:6379/2");
        assert_eq!(ion.unused_addrs(), [":6380".to_owned()]);
        let single = IonRedis { addrs: vec![":6379".into()], password: String::new(), db: 0 };
        assert_eq!(single.url().unwrap(), "redis://127.0.0.1:6379/0");
        assert!(single.unused_addrs().is_empty());
    }

    #[test]
    fn precedence_is_flags_then_env_then_file_then_defaults() {
        // clap merges flags over env into Overrides; here Overrides beats the file, the file
        // beats defaults.
        let f = file("dc = \"file-dc\"\nexpire = \"7s\"\n");
        let over = Overrides { dc: Some("flag-dc".into()), ..Overrides::default() };
        let c = Config::load(Some(f.path()), &over).unwrap();
        assert_eq!(c.dc, "flag-dc");
        assert_eq!(c.expire, Duration::from_secs(7));
        assert_eq!(c.nats_url, DEFAULT_NATS_URL);
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let f = file("dc = \"x\"\n\nexpiry = \"5s\"\n");
        let err = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:3:1: unknown field `expiry`", f.path().display())), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn a_bad_duration_says_what_and_where() {
        let f = file("[placement]\nservices = [\"rtc\"]\n\nexpire = \"5 parsecs\"\n");
        let err = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        // Top-level keys after a table belong to the table: that is a TOML error with a line.
        assert!(err.contains(":4:"), "{err}");
        let f = file("expire = \"5 parsecs\"\n");
        let err = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains(":1:10: invalid duration \"5 parsecs\""), "{err}");
    }

    #[test]
    fn conflicting_spellings_are_an_error() {
        let f = file("dc = \"a\"\n[global]\ndc = \"b\"\n");
        let err = Config::load(Some(f.path()), &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("dc: set twice"), "{err}");
        let f = file("dc = \"a\"\n[global]\ndc = \"a\"\n");
        assert!(Config::load(Some(f.path()), &Overrides::default()).is_ok());
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (over, key) in [
            (Overrides { nid: Some("has space".into()), ..Overrides::default() }, "nid"),
            (Overrides { dc: Some(String::new()), ..Overrides::default() }, "dc"),
            (Overrides { expire: Some(Duration::from_millis(10)), ..Overrides::default() }, "expire"),
            (Overrides { store: Some("postgres://x".into()), ..Overrides::default() }, "store"),
            (Overrides { log_format: Some("xml".into()), ..Overrides::default() }, "log-format"),
            (Overrides { log_level: Some("info,[".into()), ..Overrides::default() }, "log-level"),
        ] {
            let err = Config::load(None, &over).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}: ")), "{key}: {err}");
        }
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask_url("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        assert_eq!(mask_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(mask_url("nats://token@h"), "nats://***@h");
        assert_eq!(mask_url("nats://a:1@h1,nats://h2"), "nats://a:***@h1,nats://h2");
        assert_eq!(mask_url("nats://h:4222"), "nats://h:4222");
        let over = Overrides { store: Some("redis://:hunter2@h:6379".into()), ..Overrides::default() };
        let c = Config::load(None, &over).unwrap();
        assert!(!format!("{:?}", c.describe()).contains("hunter2"));
    }

    #[test]
    fn placement_services_can_be_switched_off() {
        let over = Overrides { placement_services: Some(String::new()), ..Overrides::default() };
        assert!(Config::load(None, &over).unwrap().placement_services.is_empty());
        let f = file("[placement]\nservices = [\"rtc\", \"room\"]\n");
        assert_eq!(Config::load(Some(f.path()), &Overrides::default()).unwrap().placement_services.len(), 2);
    }
}
