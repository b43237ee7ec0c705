//! The value types of the configuration, each parsed from the same text whether it comes
//! from a flag, an environment variable or the file.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The store islb keeps its state in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In this process's memory (lost at exit).
    Memory,
    /// In memory, written through to a file that survives restarts.
    File(PathBuf),
    /// A Redis server (`redis://` or `rediss://` URL), shared by replicas.
    Redis(String),
    /// JetStream key-value buckets on islb's own NATS servers, shared by replicas.
    JetStream,
}

impl StoreSpec {
    /// Parses `memory`, `file:PATH`, `redis://...`, `rediss://...` or `jetstream`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "memory" {
            Ok(StoreSpec::Memory)
        } else if s == "jetstream" {
            Ok(StoreSpec::JetStream)
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path, e.g. file:/var/lib/islb/state.redb".into());
            }
            Ok(StoreSpec::File(PathBuf::from(path)))
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(StoreSpec::Redis(s.to_owned()))
        } else {
            Err(format!("unknown store {s:?} (expected memory, file:PATH, redis://..., rediss://... or jetstream)"))
        }
    }

    /// The text it was parsed from (secrets included).
    fn raw(&self) -> String {
        match self {
            StoreSpec::Memory => "memory".into(),
            StoreSpec::File(p) => format!("file:{}", p.display()),
            StoreSpec::Redis(url) => url.clone(),
            StoreSpec::JetStream => "jetstream".into(),
        }
    }
}

impl FromStr for StoreSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        StoreSpec::parse(s)
    }
}

/// Shown with any password masked.
impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_url(&self.raw()))
    }
}

impl Serialize for StoreSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw())
    }
}

impl<'de> Deserialize<'de> for StoreSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StoreSpec::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
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

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        LogFormat::parse(s)
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

impl Serialize for LogFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LogFormat::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A list of service names: comma-separated on the command line, a list or a
/// comma-separated string in the file; empty for none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceList(pub Vec<String>);

impl FromStr for ServiceList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(ServiceList(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()))
    }
}

impl<'de> Deserialize<'de> for ServiceList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            Text(String),
        }
        Ok(match Form::deserialize(d)? {
            Form::List(list) => ServiceList(list),
            Form::Text(text) => text.parse().map_err(serde::de::Error::custom)?,
        })
    }
}

/// Parses `5s`, `500ms`, `1m 30s`...
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: \"5s\", \"500ms\", \"1m\")"))
}

/// Durations as text (`"5s"`), for serde.
pub(crate) mod duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Optional durations as text, for serde.
pub(crate) mod opt_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
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
