//! Configuration: every option is defined once, as a field of [`Settings`]. That one
//! definition gives its flag and environment variable (clap), its key in the TOML file
//! (serde, the flag's name), its default (clap's `default_value`, which `--help` shows),
//! its help text, the README's reference table (`islb config reference`) and its line in
//! `islb config check`.
//!
//! Layers, lowest first: the defaults, the file (islb's keys, and ion's `islb.toml`
//! sections, see [`ion`]), then the environment and flags (merged by clap: a flag wins).
//! Each layer is a [`Settings`] whose unset options are `None`; [`Config::load`] lays them
//! over each other, checks the result and gives a typed [`Config`], or a [`ConfigError`]
//! whose one line says what is wrong and where.

pub mod access;
pub mod ion;
mod values;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::tokens::{TokenSources, Verifier};

pub use access::{NatsAccess, NatsConn};
pub use ion::IonRedis;
pub use values::{LogFormat, ServiceList, StoreSpec, mask_url, parse_duration, random_nid};

/// Default NATS URL (also the client subcommands' default).
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Every option of `islb serve`, each `None` where a layer does not set it.
///
/// A field's flag is its name in kebab-case, and so is its key in the config file.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// NATS server URL(s), comma-separated
    #[arg(long, env = "ISLB_NATS_URL", value_name = "URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: Option<String>,
    /// NATS user (with nats-password; a user:password@ in the URL does the same)
    #[arg(long, env = "ISLB_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer nats-password-file)
    #[arg(long, env = "ISLB_NATS_PASSWORD", value_name = "PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// File holding the NATS password
    #[arg(long, env = "ISLB_NATS_PASSWORD_FILE", value_name = "FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// NATS token (prefer nats-token-file; a token@ in the URL does the same)
    #[arg(long, env = "ISLB_NATS_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// File holding the NATS token
    #[arg(long, env = "ISLB_NATS_TOKEN_FILE", value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// NATS nkey seed file (an SU... seed)
    #[arg(long, env = "ISLB_NATS_NKEY", value_name = "FILE")]
    pub nats_nkey: Option<PathBuf>,
    /// NATS credentials file (user JWT and seed, as nsc writes it)
    #[arg(long, env = "ISLB_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) that signed the NATS servers' certificates; system roots otherwise
    #[arg(long, env = "ISLB_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients (with nats-tls-key)
    #[arg(long, env = "ISLB_NATS_TLS_CERT", value_name = "FILE")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of nats-tls-cert
    #[arg(long, env = "ISLB_NATS_TLS_KEY", value_name = "FILE")]
    pub nats_tls_key: Option<PathBuf>,
    /// Data centre of this islb
    #[arg(long, env = "ISLB_DC", value_name = "DC", default_value = "dc1")]
    pub dc: Option<String>,
    /// Node id of this islb (default: islb- and 6 random letters or digits)
    #[arg(long, env = "ISLB_NID", value_name = "NID")]
    pub nid: Option<String>,
    /// Where state lives: memory, file:PATH, redis://..., rediss://... or jetstream (KV buckets on islb's NATS)
    #[arg(long, env = "ISLB_STORE", value_name = "STORE", default_value = "memory")]
    pub store: Option<StoreSpec>,
    /// Replicas of each JetStream bucket (store jetstream): 1 on a single server, 3 on a cluster
    #[arg(long, env = "ISLB_STORE_REPLICAS", value_name = "N", default_value = "1")]
    pub store_replicas: Option<usize>,
    /// Key prefix in a shared store (Redis), or the JetStream buckets' name prefix
    #[arg(long, env = "ISLB_STORE_PREFIX", value_name = "PREFIX", default_value = "islb")]
    pub store_prefix: Option<String>,
    /// Bound on every store call; past it islb serves from memory
    #[arg(long, env = "ISLB_STORE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    #[serde(default, with = "values::opt_duration")]
    pub store_timeout: Option<Duration>,
    /// CA certificate (PEM) that signed a rediss:// server's certificate; system roots otherwise
    #[arg(long, env = "ISLB_STORE_CA_FILE", value_name = "FILE")]
    pub store_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a rediss:// server that verifies clients (with store-tls-key)
    #[arg(long, env = "ISLB_STORE_TLS_CERT", value_name = "FILE")]
    pub store_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of store-tls-cert
    #[arg(long, env = "ISLB_STORE_TLS_KEY", value_name = "FILE")]
    pub store_tls_key: Option<PathBuf>,
    /// How long a node lives after its last keep-alive
    #[arg(long, env = "ISLB_EXPIRE", value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    #[serde(default, with = "values::opt_duration")]
    pub expire: Option<Duration>,
    /// File holding the token every /v1 request and islb.Admin call must present (Authorization: Bearer); without one, /v1 changes answer loopback peers only
    #[arg(long, env = "ISLB_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Admin HTTP address (/healthz, /readyz, /metrics); port 0 picks a free port
    #[arg(long, env = "ISLB_HTTP_ADDR", value_name = "ADDR", default_value = "127.0.0.1:8088")]
    pub http_addr: Option<SocketAddr>,
    /// Log filter: trace, debug, info, warn, error, or directives like info,islb_server=debug
    #[arg(long, env = "ISLB_LOG_LEVEL", value_name = "LEVEL", default_value = "info")]
    pub log_level: Option<String>,
    /// Log format: text or json
    #[arg(long, env = "ISLB_LOG_FORMAT", value_name = "FORMAT", default_value = "text")]
    pub log_format: Option<LogFormat>,
    /// How long to keep retrying NATS at start before giving up
    #[arg(long, env = "ISLB_NATS_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    #[serde(default, with = "values::opt_duration")]
    pub nats_connect_timeout: Option<Duration>,
    /// Time allowed at shutdown to answer in-flight requests and deregister
    #[arg(long, env = "ISLB_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    #[serde(default, with = "values::opt_duration")]
    pub shutdown_grace: Option<Duration>,
    /// Largest request accepted, in bytes
    #[arg(long, env = "ISLB_MAX_MESSAGE_SIZE", value_name = "BYTES", default_value = "1048576")]
    pub max_message_size: Option<usize>,
    /// Period of islb's own keep-alive
    #[arg(long, env = "ISLB_KEEPALIVE_INTERVAL", value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    #[serde(default, with = "values::opt_duration")]
    pub keepalive_interval: Option<Duration>,
    /// Services placed per session, comma-separated; empty for Go's behaviour (file: also [placement] services)
    #[arg(long, env = "ISLB_PLACEMENT_SERVICES", value_name = "LIST", default_value = "rtc")]
    pub placement_services: Option<ServiceList>,
    /// Sessions not looked up for this long are released
    #[arg(long, env = "ISLB_SESSION_TTL", value_name = "DURATION", value_parser = parse_duration, default_value = "1day")]
    #[serde(default, with = "values::opt_duration")]
    pub session_ttl: Option<Duration>,
    /// Most sessions held (cluster-wide); past it the least recently used are released
    #[arg(long, env = "ISLB_MAX_SESSIONS", value_name = "SESSIONS", default_value = "1000000")]
    pub max_sessions: Option<usize>,
    /// Most sessions placed on a node that reports no capacity; 0 for no limit
    #[arg(long, env = "ISLB_DEFAULT_CAPACITY", value_name = "SESSIONS", default_value = "0")]
    pub default_capacity: Option<u64>,
    /// Most gRPC (nrpc) calls open at once; when full, the oldest call that never sent its request makes room
    #[arg(long, env = "ISLB_NRPC_MAX_CALLS", value_name = "CALLS", default_value = "10000")]
    pub nrpc_max_calls: Option<usize>,
    /// Most gRPC calls open at once from one caller (its node id, else its reply inbox's prefix)
    #[arg(long, env = "ISLB_NRPC_MAX_CALLS_PER_PEER", value_name = "CALLS", default_value = "500")]
    pub nrpc_max_calls_per_peer: Option<usize>,
    /// A gRPC call whose request message has not come by then is ended
    #[arg(long, env = "ISLB_NRPC_FIRST_MESSAGE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    #[serde(default, with = "values::opt_duration")]
    pub nrpc_first_message_timeout: Option<Duration>,
    /// Largest gRPC call metadata (encoded), in bytes
    #[arg(long, env = "ISLB_NRPC_MAX_METADATA_SIZE", value_name = "BYTES", default_value = "8192")]
    pub nrpc_max_metadata_size: Option<usize>,
    /// HMAC secret to verify the JWT in a lookup's authorization (HS256/384/512; prefer jwt-key-file); with no jwt key at all, claims are only decoded
    #[arg(long, env = "ISLB_JWT_KEY", value_name = "SECRET", hide_env_values = true)]
    pub jwt_key: Option<String>,
    /// File holding the HMAC secret of jwt-key
    #[arg(long, env = "ISLB_JWT_KEY_FILE", value_name = "FILE")]
    pub jwt_key_file: Option<PathBuf>,
    /// PEM public key verifying session JWTs: RSA (RS*/PS*), EC P-256/P-384 (ES256/ES384) or Ed25519 (EdDSA)
    #[arg(long, env = "ISLB_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file (an identity provider's keys, chosen by kid) verifying session JWTs; read again when a token names an unknown kid
    #[arg(long, env = "ISLB_JWT_JWKS", value_name = "FILE")]
    pub jwt_jwks: Option<PathBuf>,
    /// Audiences a verified session JWT must name in aud (any one, comma-separated); unset: aud is not checked
    #[arg(long, env = "ISLB_JWT_AUDIENCE", value_name = "LIST")]
    pub jwt_audience: Option<ServiceList>,
    /// Issuers a verified session JWT's iss must be one of (comma-separated); unset: iss is not checked
    #[arg(long, env = "ISLB_JWT_ISSUER", value_name = "LIST")]
    pub jwt_issuer: Option<ServiceList>,

    // The file's sections, folded into the options above by `ion::fold`.
    #[arg(skip)]
    #[serde(skip_serializing)]
    placement: Option<ion::PlacementSection>,
    #[arg(skip)]
    #[serde(skip_serializing)]
    global: Option<ion::Global>,
    #[arg(skip)]
    #[serde(skip_serializing)]
    nats: Option<ion::Nats>,
    #[arg(skip)]
    #[serde(skip_serializing)]
    redis: Option<ion::RedisSection>,
    #[arg(skip)]
    #[serde(skip_serializing)]
    log: Option<ion::Log>,
    #[arg(skip)]
    #[serde(skip_serializing)]
    node: Option<ion::NodeSection>,
}

/// Options whose value `config check` and the logs never show.
const SECRETS: &[&str] = &["jwt-key", "nats-password", "nats-token"];

impl Settings {
    /// The options' clap definitions (for the reference and for reading sources).
    pub fn command() -> clap::Command {
        Settings::augment_args(clap::Command::new("islb"))
    }

    /// Every default, as the options define them (no environment read).
    pub fn defaults() -> Settings {
        let cmd = Settings::command().mut_args(|a| a.env(None));
        let matches = cmd.try_get_matches_from(["islb"]).expect("the defaults parse");
        Settings::from_arg_matches(&matches).expect("the defaults are valid")
    }

    /// The options the environment and the flags set in `matches` (defaults left out).
    pub fn given(matches: &ArgMatches) -> Result<Settings, ConfigError> {
        let all = Settings::from_arg_matches(matches)
            .map_err(|e| ConfigError::Invalid { key: "command line".into(), why: e.to_string() })?;
        let mut value = serde_json::to_value(&all).expect("settings serialise");
        let object = value.as_object_mut().expect("an object");
        for arg in Settings::command().get_arguments() {
            let given = matches!(
                matches.value_source(arg.get_id().as_str()),
                Some(ValueSource::EnvVariable | ValueSource::CommandLine)
            );
            if !given && let Some(long) = arg.get_long() {
                object.remove(long);
            }
        }
        Ok(serde_json::from_value(value).expect("settings deserialise"))
    }
}

/// The validated configuration of `islb serve` (its `Debug` masks secrets, as
/// [`Config::describe`] does).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// NATS server URL(s), comma-separated.
    pub nats_url: String,
    /// NATS user.
    #[serde(default)]
    pub nats_user: Option<String>,
    /// NATS password.
    #[serde(default)]
    pub nats_password: Option<String>,
    /// File holding the NATS password.
    #[serde(default)]
    pub nats_password_file: Option<PathBuf>,
    /// NATS token.
    #[serde(default)]
    pub nats_token: Option<String>,
    /// File holding the NATS token.
    #[serde(default)]
    pub nats_token_file: Option<PathBuf>,
    /// NATS nkey seed file.
    #[serde(default)]
    pub nats_nkey: Option<PathBuf>,
    /// NATS credentials file.
    #[serde(default)]
    pub nats_creds: Option<PathBuf>,
    /// CA of the NATS servers.
    #[serde(default)]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate for NATS.
    #[serde(default)]
    pub nats_tls_cert: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub nats_tls_key: Option<PathBuf>,
    /// Data centre of this islb.
    pub dc: String,
    /// Node id of this islb.
    #[serde(default = "random_nid")]
    pub nid: String,
    /// Where state is kept.
    pub store: StoreSpec,
    /// Key prefix in a shared store (several clusters on one Redis), or JetStream bucket prefix.
    pub store_prefix: String,
    /// Replicas of each JetStream bucket.
    pub store_replicas: usize,
    /// Bound on every store call.
    #[serde(with = "values::duration")]
    pub store_timeout: Duration,
    /// CA certificate (PEM) for `rediss://` with a private CA.
    #[serde(default)]
    pub store_ca_file: Option<PathBuf>,
    /// Client certificate for `rediss://` with mutual TLS.
    #[serde(default)]
    pub store_tls_cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub store_tls_key: Option<PathBuf>,
    /// How long a silent node lives.
    #[serde(with = "values::duration")]
    pub expire: Duration,
    /// File holding the admin token.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Admin HTTP listen address (port 0: any free port).
    pub http_addr: SocketAddr,
    /// Log filter (`info`, `debug`, `info,islb_server=debug`...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// How long to keep trying to reach NATS at start.
    #[serde(with = "values::duration")]
    pub nats_connect_timeout: Duration,
    /// Time allowed to finish in-flight work at shutdown.
    #[serde(with = "values::duration")]
    pub shutdown_grace: Duration,
    /// Largest request payload accepted.
    pub max_message_size: usize,
    /// Period of islb's own keep-alive.
    #[serde(with = "values::duration")]
    pub keepalive_interval: Duration,
    /// Services placed per session (hidden from `get *` and from save events).
    pub placement_services: BTreeSet<String>,
    /// Sessions not looked up for this long are released.
    #[serde(with = "values::duration")]
    pub session_ttl: Duration,
    /// Most sessions held; past it the least recently used are released.
    pub max_sessions: usize,
    /// Capacity (sessions) of nodes that report none; 0: unlimited.
    pub default_capacity: u64,
    /// Most nrpc calls open at once.
    pub nrpc_max_calls: usize,
    /// Most nrpc calls open at once per caller.
    pub nrpc_max_calls_per_peer: usize,
    /// Deadline for an nrpc call's first request message.
    #[serde(with = "values::duration")]
    pub nrpc_first_message_timeout: Duration,
    /// Largest nrpc call metadata.
    pub nrpc_max_metadata_size: usize,
    /// HMAC secret to verify JWTs in `authorization`.
    #[serde(default)]
    pub jwt_key: Option<String>,
    /// File holding that secret.
    #[serde(default)]
    pub jwt_key_file: Option<PathBuf>,
    /// PEM public key verifying JWTs.
    #[serde(default)]
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file verifying JWTs.
    #[serde(default)]
    pub jwt_jwks: Option<PathBuf>,
    /// Accepted `aud` values (empty: not checked).
    #[serde(default)]
    pub jwt_audience: Vec<String>,
    /// Accepted `iss` values (empty: not checked).
    #[serde(default)]
    pub jwt_issuer: Vec<String>,
    /// ion's `[redis]` section as read (its URL is the store when `store` is not set).
    #[serde(skip)]
    pub ion_redis: Option<IonRedis>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.describe()).finish()
    }
}

/// Lays `layers` over each other, lowest first: a later layer's option wins where it is set.
fn merge(layers: &[&Settings]) -> serde_json::Value {
    let mut merged = serde_json::Map::new();
    for layer in layers {
        let serde_json::Value::Object(options) = serde_json::to_value(layer).expect("settings serialise") else {
            unreachable!("settings serialise to an object")
        };
        merged.extend(options.into_iter().filter(|(_, v)| !v.is_null()));
    }
    serde_json::Value::Object(merged)
}

impl Config {
    /// The configuration with every default (a random NID).
    pub fn defaults() -> Self {
        Config::load(None, &Settings::default()).expect("the defaults are valid")
    }

    /// Reads the file (if any), lays `given` (the environment and flags) over it and the
    /// defaults, and validates.
    pub fn load(file: Option<&Path>, given: &Settings) -> Result<Self, ConfigError> {
        let file_layer = match file {
            Some(path) => read_file(path)?,
            None => Settings::default(),
        };
        Config::from_layers(file_layer, given)
    }

    /// Lays `given` over `file_layer` (a file as read) and the defaults, and validates.
    fn from_layers(mut file_layer: Settings, given: &Settings) -> Result<Self, ConfigError> {
        let ion_redis = ion::fold(&mut file_layer)?;
        let merged = merge(&[&Settings::defaults(), &file_layer, given]);
        let mut cfg: Config = serde_json::from_value(merged)
            .map_err(|e| ConfigError::Invalid { key: "configuration".into(), why: e.to_string() })?;
        cfg.jwt_key = cfg.jwt_key.filter(|k| !k.is_empty());
        cfg.nats_password = cfg.nats_password.filter(|k| !k.is_empty());
        cfg.nats_token = cfg.nats_token.filter(|k| !k.is_empty());
        cfg.ion_redis = ion_redis;
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
        self.nats_access().check()?;
        self.admin_token()?;
        self.token_verifier()?;
        if self.store == StoreSpec::JetStream {
            if self.store_prefix.is_empty()
                || !self.store_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad(
                    "store-prefix",
                    format!("{:?} cannot name a JetStream bucket (letters, digits, '-' and '_')", self.store_prefix),
                );
            }
            if !(1..=5).contains(&self.store_replicas) {
                return bad("store-replicas", format!("{} is not 1 to 5 (JetStream's limit)", self.store_replicas));
            }
        }
        if self.store_tls_cert.is_some() != self.store_tls_key.is_some() {
            return bad("store-tls-cert", "store-tls-cert and store-tls-key go together".into());
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
        if self.max_sessions < 100 {
            return bad("max-sessions", format!("{} is too small (minimum 100)", self.max_sessions));
        }
        if self.session_ttl < Duration::from_secs(1) {
            return bad("session-ttl", "must be at least 1s".into());
        }
        if self.store_timeout.is_zero() {
            return bad("store-timeout", "must be more than 0".into());
        }
        for (key, value) in [
            ("nrpc-max-calls", self.nrpc_max_calls),
            ("nrpc-max-calls-per-peer", self.nrpc_max_calls_per_peer),
            ("nrpc-max-metadata-size", self.nrpc_max_metadata_size),
        ] {
            if value == 0 {
                return bad(key, "must be more than 0".into());
            }
        }
        if self.nrpc_max_calls_per_peer > self.nrpc_max_calls {
            return bad(
                "nrpc-max-calls-per-peer",
                format!("{} is more than nrpc-max-calls ({})", self.nrpc_max_calls_per_peer, self.nrpc_max_calls),
            );
        }
        if self.nrpc_first_message_timeout < Duration::from_millis(100) {
            return bad("nrpc-first-message-timeout", "must be at least 100ms".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return bad("log-level", format!("{:?}: {e}", self.log_level));
        }
        for s in &self.placement_services {
            if s.is_empty() || s.contains(char::is_whitespace) {
                return bad("placement-services", format!("invalid service name {s:?}"));
            }
        }
        Ok(())
    }

    /// The admin token, read from `admin-token-file` (none without one).
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        self.admin_token_file.as_deref().map(|f| access::read_secret("admin-token-file", f)).transpose()
    }

    /// The verifier of session tokens the `jwt-*` options describe (keys read from their files).
    pub fn token_verifier(&self) -> Result<Verifier, ConfigError> {
        if self.jwt_key.is_some() && self.jwt_key_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "jwt-key".into(),
                why: "give jwt-key or jwt-key-file, not both".into(),
            });
        }
        let hmac = match (&self.jwt_key, &self.jwt_key_file) {
            (Some(k), _) => Some(k.clone().into_bytes()),
            (None, Some(f)) => Some(access::read_secret("jwt-key-file", f)?.into_bytes()),
            (None, None) => None,
        };
        let sources = TokenSources {
            hmac,
            public_key: self.jwt_public_key.clone(),
            jwks: self.jwt_jwks.clone(),
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
        };
        let key = match (&sources.jwks, &sources.public_key) {
            (Some(_), _) => "jwt-jwks",
            (None, Some(_)) => "jwt-public-key",
            (None, None) => "jwt-audience",
        };
        Verifier::load(&sources).map_err(|e| ConfigError::Invalid { key: key.into(), why: e.to_string() })
    }

    /// How to reach NATS: the URLs, credentials and TLS files.
    pub fn nats_access(&self) -> NatsAccess {
        NatsAccess {
            url: self.nats_url.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            password_file: self.nats_password_file.clone(),
            token: self.nats_token.clone(),
            token_file: self.nats_token_file.clone(),
            nkey: self.nats_nkey.clone(),
            creds: self.nats_creds.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
        }
    }

    /// The effective configuration as `key = value` lines in the options' order, secrets
    /// and passwords in URLs masked (for the start-up log and `islb config check`).
    pub fn describe(&self) -> Vec<(String, String)> {
        let value = serde_json::to_value(self).expect("a config serialises");
        Settings::command()
            .get_arguments()
            .filter_map(|arg| arg.get_long())
            .map(|key| {
                let shown = match value.get(key) {
                    None | Some(serde_json::Value::Null) => String::new(),
                    Some(_) if SECRETS.contains(&key) => "***".into(),
                    Some(serde_json::Value::String(s)) => mask_url(s),
                    Some(serde_json::Value::Array(items)) => {
                        items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>().join(",")
                    }
                    Some(other) => other.to_string(),
                };
                (key.to_owned(), shown)
            })
            .collect()
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

fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_text(path, &text)
}

/// Reads the text of the config file at `path`.
fn parse_text(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |span| line_col(text, span.start));
        ConfigError::Parse { path: path.to_owned(), line, column, message: e.message().replace('\n', " ") }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Entry points for fuzzers, shared with the property tests.
pub mod fuzz_logic {
    use super::*;

    /// Reads `data` (as text) as a config file; panics only on a bug, never on bad input:
    /// the result is a configuration that passes validation, or one line saying what is
    /// wrong.
    pub fn config_text(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        match parse_text(Path::new("fuzz.toml"), &text).and_then(|f| Config::from_layers(f, &Settings::default())) {
            Ok(cfg) => {
                assert!(cfg.validate().is_ok(), "an invalid configuration was accepted: {cfg:?}");
                assert!(!cfg.describe().is_empty());
            }
            Err(e) => {
                let line = e.to_string();
                assert!(!line.is_empty() && !line.contains('\n'), "not one line: {line:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A TOML value of any type, as text.
    fn toml_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            ".{0,12}".prop_map(|s| format!("{s:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| if f.is_finite() { format!("{f:?}") } else { "nan".into() }),
            any::<bool>().prop_map(|b| b.to_string()),
            prop_oneof![Just("\"5s\""), Just("\"0ms\""), Just("\"1000000000y\""), Just("\"-1s\"")]
                .prop_map(str::to_owned),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
                prop::collection::vec(("[a-z]{1,6}", inner), 0..3).prop_map(|v| format!(
                    "{{ {} }}",
                    v.iter().map(|(k, x)| format!("{k} = {x}")).collect::<Vec<_>>().join(", ")
                )),
            ]
        })
    }

    /// islb's keys, ion's sections and keys, and some unknown ones.
    fn toml_key() -> impl Strategy<Value = String> {
        let known: Vec<String> =
            Settings::command().get_arguments().filter_map(|a| a.get_long()).map(str::to_owned).collect();
        prop_oneof![
            prop::sample::select(known),
            prop::sample::select(vec![
                "global.dc",
                "nats.url",
                "redis.addrs",
                "redis.password",
                "redis.db",
                "log.level",
                "node.nid",
                "placement.services",
                "global.pprof",
                "unknown",
                "redis.extra",
            ])
            .prop_map(str::to_owned),
            "[a-z-]{1,12}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_as_a_config_file_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            fuzz_logic::config_text(&data);
        }

        #[test]
        fn any_keys_with_values_of_any_type_are_accepted_valid_or_refused_in_one_line(
            entries in prop::collection::vec((toml_key(), toml_value()), 0..8),
        ) {
            let text: String = entries.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            fuzz_logic::config_text(text.as_bytes());
        }
    }

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
        let c = Config::load(None, &Settings::default()).unwrap();
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
        let c = Config::load(Some(f.path()), &Settings::default()).unwrap();
        assert_eq!(c.dc, "dc1");
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.log_level, "info");
        assert_eq!(c.store, StoreSpec::Redis("redis://127.0.0.1:6379/0".into()));
        // An explicit store wins over ion's [redis].
        let over = Settings { store: Some(StoreSpec::Memory), ..Settings::default() };
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
        let over = Settings { dc: Some("flag-dc".into()), ..Settings::default() };
        let c = Config::load(Some(f.path()), &over).unwrap();
        assert_eq!(c.dc, "flag-dc");
        assert_eq!(c.expire, Duration::from_secs(7));
        assert_eq!(c.nats_url, DEFAULT_NATS_URL);
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let f = file("dc = \"x\"\n\nexpiry = \"5s\"\n");
        let err = Config::load(Some(f.path()), &Settings::default()).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:3:1: unknown field `expiry`", f.path().display())), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn a_bad_duration_says_what_and_where() {
        let f = file("[placement]\nservices = [\"rtc\"]\n\nexpire = \"5 parsecs\"\n");
        let err = Config::load(Some(f.path()), &Settings::default()).unwrap_err().to_string();
        // Top-level keys after a table belong to the table: that is a TOML error with a line.
        assert!(err.contains(":4:"), "{err}");
        let f = file("expire = \"5 parsecs\"\n");
        let err = Config::load(Some(f.path()), &Settings::default()).unwrap_err().to_string();
        assert!(err.contains(":1:10: invalid duration \"5 parsecs\""), "{err}");
    }

    #[test]
    fn conflicting_spellings_are_an_error() {
        let f = file("dc = \"a\"\n[global]\ndc = \"b\"\n");
        let err = Config::load(Some(f.path()), &Settings::default()).unwrap_err().to_string();
        assert!(err.contains("dc: set twice"), "{err}");
        let f = file("dc = \"a\"\n[global]\ndc = \"a\"\n");
        assert!(Config::load(Some(f.path()), &Settings::default()).is_ok());
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (over, key) in [
            (Settings { nid: Some("has space".into()), ..Settings::default() }, "nid"),
            (Settings { dc: Some(String::new()), ..Settings::default() }, "dc"),
            (Settings { expire: Some(Duration::from_millis(10)), ..Settings::default() }, "expire"),
            (Settings { log_level: Some("info,[".into()), ..Settings::default() }, "log-level"),
            (Settings { max_message_size: Some(10), ..Settings::default() }, "max-message-size"),
            (Settings { nrpc_max_calls: Some(0), ..Settings::default() }, "nrpc-max-calls"),
            (
                Settings { nrpc_max_calls: Some(10), nrpc_max_calls_per_peer: Some(11), ..Settings::default() },
                "nrpc-max-calls-per-peer",
            ),
            (
                Settings { nrpc_first_message_timeout: Some(Duration::ZERO), ..Settings::default() },
                "nrpc-first-message-timeout",
            ),
        ] {
            let err = Config::load(None, &over).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}: ")), "{key}: {err}");
        }
        // Values with a type of their own are refused where they are read, with the place.
        assert!("postgres://x".parse::<StoreSpec>().unwrap_err().contains("unknown store"));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("unknown log format"));
        let f = file("log-format = \"xml\"\n");
        let err = Config::load(Some(f.path()), &Settings::default()).unwrap_err().to_string();
        assert!(err.contains(":1:14: unknown log format"), "{err}");
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask_url("nats://u:secret@h:4222"), "nats://u:***@h:4222");
        assert_eq!(mask_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(mask_url("nats://token@h"), "nats://***@h");
        assert_eq!(mask_url("nats://a:1@h1,nats://h2"), "nats://a:***@h1,nats://h2");
        assert_eq!(mask_url("nats://h:4222"), "nats://h:4222");
        let over = Settings {
            store: Some("redis://:hunter2@h:6379".parse().unwrap()),
            jwt_key: Some("topsecret".into()),
            nats_url: Some("nats://ion:urlpass@h:4222".into()),
            nats_token: Some("tokensecret".into()),
            ..Settings::default()
        };
        let c = Config::load(None, &over).unwrap();
        let described = format!("{:?} {:?}", c.describe(), c);
        for secret in ["hunter2", "topsecret", "urlpass", "tokensecret"] {
            assert!(!described.contains(secret), "{secret} shown: {described}");
        }
    }

    #[test]
    fn the_jetstream_store_needs_a_bucket_prefix_and_a_replica_count_jetstream_takes() {
        let js = |prefix: &str, replicas: usize| Settings {
            store: Some("jetstream".parse().unwrap()),
            store_prefix: Some(prefix.into()),
            store_replicas: Some(replicas),
            ..Settings::default()
        };
        let c = Config::load(None, &js("islb", 3)).unwrap();
        assert_eq!((c.store, c.store_replicas), (StoreSpec::JetStream, 3));
        let err = Config::load(None, &js("a.b", 1)).unwrap_err().to_string();
        assert!(err.starts_with("store-prefix: \"a.b\" cannot name a JetStream bucket"), "{err}");
        let err = Config::load(None, &js("islb", 7)).unwrap_err().to_string();
        assert!(err.starts_with("store-replicas: 7 is not 1 to 5"), "{err}");
        assert!("jetstreams".parse::<StoreSpec>().unwrap_err().contains("or jetstream"));
    }

    #[test]
    fn session_token_options_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let err = |over: Settings| Config::load(None, &over).unwrap_err().to_string();
        let secret = dir.path().join("jwt-secret");
        std::fs::write(&secret, "s3cret-for-hmac\n").unwrap();
        let both = Settings { jwt_key: Some("x".into()), jwt_key_file: Some(secret.clone()), ..Settings::default() };
        assert!(err(both).contains("jwt-key: give jwt-key or jwt-key-file, not both"));
        let missing = Settings { jwt_key_file: Some(dir.path().join("nope")), ..Settings::default() };
        assert!(err(missing).starts_with("jwt-key-file: cannot read"));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key").unwrap();
        let bad_pem = Settings { jwt_public_key: Some(junk), ..Settings::default() };
        assert!(err(bad_pem).contains("jwt-public-key: "), "names the option");
        let aud_alone = Settings { jwt_audience: Some("ion".parse().unwrap()), ..Settings::default() };
        assert!(err(aud_alone).contains("need a key"));
        let good = Settings {
            jwt_key_file: Some(secret),
            jwt_audience: Some("ion, ion-staging".parse().unwrap()),
            ..Settings::default()
        };
        let c = Config::load(None, &good).unwrap();
        assert_eq!(c.jwt_audience, ["ion", "ion-staging"]);
        assert!(c.token_verifier().unwrap().verifies());
        assert!(!Config::defaults().token_verifier().unwrap().verifies());
        assert!(!format!("{:?}", c.describe()).contains("s3cret-for-hmac"));
    }

    #[test]
    fn placement_services_can_be_switched_off() {
        let over = Settings { placement_services: Some("".parse().unwrap()), ..Settings::default() };
        assert!(Config::load(None, &over).unwrap().placement_services.is_empty());
        let f = file("[placement]\nservices = [\"rtc\", \"room\"]\n");
        assert_eq!(Config::load(Some(f.path()), &Settings::default()).unwrap().placement_services.len(), 2);
        let f = file("placement-services = \"rtc,room,sfu\"\n");
        assert_eq!(Config::load(Some(f.path()), &Settings::default()).unwrap().placement_services.len(), 3);
    }

    #[test]
    fn every_option_has_a_flag_an_environment_variable_and_a_file_key_of_one_name() {
        let cmd = Settings::command();
        let defaults = serde_json::to_value(Settings::defaults()).unwrap();
        let mut n = 0;
        for arg in cmd.get_arguments() {
            let long = arg.get_long().expect("every option has a flag");
            let env = arg.get_env().expect("every option has an environment variable").to_string_lossy().into_owned();
            assert_eq!(env, format!("ISLB_{}", long.to_uppercase().replace('-', "_")));
            assert!(defaults.get(long).is_some(), "{long} is a file key");
            assert!(arg.get_help().is_some(), "{long} has help");
            n += 1;
        }
        assert!(n >= 19, "{n} options");
        // A file may set every option by its flag's name.
        let text: String = Config::defaults()
            .describe()
            .into_iter()
            .filter(|(k, v)| !v.is_empty() && k != "jwt-key" && k != "placement-services")
            .map(|(k, v)| {
                // Numbers as numbers, everything else (durations too) as strings.
                format!("{k} = {}\n", if v.parse::<u64>().is_ok() { v } else { format!("{v:?}") })
            })
            .collect();
        let f = file(&text);
        Config::load(Some(f.path()), &Settings::default()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn the_environment_and_flags_are_a_layer_and_defaults_are_not_given() {
        let cmd = Settings::command();
        let m = cmd.try_get_matches_from(["islb", "--expire", "9s", "--placement-services", ""]).unwrap();
        let given = Settings::given(&m).unwrap();
        assert_eq!(
            given,
            Settings {
                expire: Some(Duration::from_secs(9)),
                placement_services: Some(ServiceList(vec![])),
                ..Settings::default()
            }
        );
        let f = file("expire = \"7s\"\ndc = \"file-dc\"\n");
        let c = Config::load(Some(f.path()), &given).unwrap();
        assert_eq!((c.expire, c.dc.as_str()), (Duration::from_secs(9), "file-dc"));
        assert!(c.placement_services.is_empty());
    }
}
