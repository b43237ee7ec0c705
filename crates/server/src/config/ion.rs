//! ion's `islb.toml`: the sections ion's Go islb reads (`[global]`, `[nats]`, `[redis]`,
//! `[log]`, `[node]`), accepted as they are, and islb's own `[placement]` section. Each
//! is folded into islb's option of the same meaning; where a file sets both spellings to
//! different values, that is an error naming both.

use std::fmt;

use serde::Deserialize;

use super::{ConfigError, Settings};
use crate::config::values::ServiceList;

/// `[placement]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSection {
    services: Option<ServiceList>,
}

/// ion's `[global]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Global {
    dc: Option<String>,
    /// ion v1.9's pprof listener: accepted and ignored (islb serves /metrics instead).
    #[serde(rename = "pprof")]
    _pprof: Option<String>,
}

/// ion's `[nats]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nats {
    url: Option<String>,
}

/// ion's `[redis]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    addrs: Option<Vec<String>>,
    password: Option<String>,
    db: Option<i64>,
}

/// ion's `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    level: Option<String>,
}

/// ion v1.9's `[node]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    nid: Option<String>,
}

/// ion's `[redis]` section as read.
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

/// Takes `ours` or ion's spelling of one option; both set and different is an error.
fn one_of<T: PartialEq + fmt::Debug>(
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

/// Folds the sections of a file's layer into islb's options; returns ion's `[redis]`
/// section if the file has one (its URL becomes the file's `store` when it sets none).
pub(super) fn fold(layer: &mut Settings) -> Result<Option<IonRedis>, ConfigError> {
    layer.nats_url = one_of("nats-url", layer.nats_url.take(), "[nats] url", layer.nats.take().and_then(|n| n.url))?;
    layer.dc = one_of("dc", layer.dc.take(), "[global] dc", layer.global.take().and_then(|g| g.dc))?;
    layer.nid = one_of("nid", layer.nid.take(), "[node] nid", layer.node.take().and_then(|n| n.nid))?;
    // ion's level names (trace, debug, info, warn, error) are valid filters as they are.
    layer.log_level =
        one_of("log-level", layer.log_level.take(), "[log] level", layer.log.take().and_then(|l| l.level))?;
    layer.placement_services = one_of(
        "placement-services",
        layer.placement_services.take(),
        "[placement] services",
        layer.placement.take().and_then(|p| p.services),
    )?;
    let ion_redis = layer.redis.take().map(|r| IonRedis {
        addrs: r.addrs.unwrap_or_default(),
        password: r.password.unwrap_or_default(),
        db: r.db.unwrap_or(0),
    });
    if layer.store.is_none()
        && let Some(url) = ion_redis.as_ref().and_then(IonRedis::url)
    {
        layer.store = Some(url.parse().map_err(|why| ConfigError::Invalid { key: "[redis]".into(), why })?);
    }
    Ok(ion_redis)
}
