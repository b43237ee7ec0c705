//! The NATS connection: connect with retry and backoff at start (ion's nodes just die,
//! ion#579), then reconnect forever; log every connection event.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::access::Credentials;
use crate::config::{Config, ConfigError, NatsAccess, mask_url};

/// Could not reach NATS within the configured time.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The URL does not parse.
    #[error("invalid NATS URL {url:?}: {why}")]
    BadUrl {
        /// The URL as configured.
        url: String,
        /// Why.
        why: String,
    },
    /// The credentials or TLS files cannot be used.
    #[error(transparent)]
    Access(#[from] ConfigError),
    /// Every attempt failed until the timeout.
    #[error("NATS at {url} not reachable after {attempts} attempts in {waited}: {last}")]
    Unreachable {
        /// The URL(s), secrets masked.
        url: String,
        /// How many attempts.
        attempts: u32,
        /// How long it tried.
        waited: String,
        /// The last error.
        last: String,
    },
}

/// Parses a comma-separated list of NATS URLs.
pub fn parse_urls(urls: &str) -> Result<Vec<ServerAddr>, NatsError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>().map_err(|e| NatsError::BadUrl { url: mask_url(u), why: e.to_string() }))
        .collect()
}

/// The servers and the options that authenticate to them and set up TLS, as `access`
/// says: credentials from the options or, as nats.go does, from the URLs; a CA and a
/// client certificate (either makes TLS required).
pub fn connect_options(access: &NatsAccess) -> Result<(Vec<ServerAddr>, ConnectOptions), NatsError> {
    options_with(access, access.credentials()?)
}

/// [`connect_options`] with the credentials already read.
fn options_with(access: &NatsAccess, credentials: Credentials) -> Result<(Vec<ServerAddr>, ConnectOptions), NatsError> {
    let addrs = parse_urls(&access.url)?;
    let mut opts = ConnectOptions::new();
    opts = match credentials {
        Credentials::None => opts,
        Credentials::UserPassword(user, password) => opts.user_and_password(user, password),
        Credentials::Token(token) => opts.token(token),
        Credentials::Nkey(seed) => opts.nkey(seed),
        Credentials::Creds(text) => opts.credentials(&text).map_err(|e| {
            NatsError::Access(ConfigError::Invalid {
                key: "nats-creds".into(),
                why: format!("not a credentials file: {e}"),
            })
        })?,
    };
    if let Some(ca) = &access.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&access.tls_cert, &access.tls_key) {
        opts = opts.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    Ok((addrs, opts))
}

/// Whether the connection is up, as its events tell (true from the first connection).
pub type Link = watch::Receiver<bool>;

/// Connects to NATS, retrying with exponential backoff (100 ms doubling to 2 s) until
/// `cfg.nats_connect_timeout`, logging each failed attempt. The client then reconnects
/// by itself forever (resubscribing); the [`Link`] follows the connection.
pub async fn connect(cfg: &Config, name: &str) -> Result<(Client, Link), NatsError> {
    let access = cfg.nats_access();
    // Read once (secret files included), and checked before any attempt.
    let credentials = access.credentials()?;
    options_with(&access, credentials.clone())?;
    let masked = mask_url(&cfg.nats_url);
    let start = Instant::now();
    let deadline = start + cfg.nats_connect_timeout;
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    let (link_tx, link) = watch::channel(true);
    loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let url_for_events = masked.clone();
        let link_tx = link_tx.clone();
        let (addrs, opts) = options_with(&access, credentials.clone())?;
        let opts = opts
            .name(name)
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .connection_timeout(left.clamp(Duration::from_millis(100), Duration::from_secs(5)))
            .event_callback(move |event| {
                match event {
                    Event::Connected => link_tx.send_replace(true),
                    Event::Disconnected => link_tx.send_replace(false),
                    _ => true,
                };
                let url = url_for_events.clone();
                async move { log_event(&url, event) }
            });
        match opts.connect(addrs).await {
            Ok(client) => {
                info!(url = %masked, attempts = attempt, "connected to NATS");
                return Ok((client, link));
            }
            Err(e) => {
                // Refused credentials or unusable TLS files do not get better by waiting.
                let permanent = matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::Authentication
                        | async_nats::ConnectErrorKind::Tls
                );
                if permanent || Instant::now() + delay >= deadline {
                    return Err(NatsError::Unreachable {
                        url: masked,
                        attempts: attempt,
                        waited: humantime::format_duration(Duration::from_millis(start.elapsed().as_millis() as u64))
                            .to_string(),
                        last: e.to_string(),
                    });
                }
                warn!(url = %masked, attempt, error = %e, retry_in = ?delay, "NATS not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// How long to wait before reconnection attempt `attempts`: at once, then 250 ms more per
/// attempt up to 2 s (Go's nats.go waits 2 s; the library's default grows to 4 s, which
/// would keep islb away longer than ion's nodes after a NATS server restart).
fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis(250 * attempts.saturating_sub(1) as u64).min(Duration::from_secs(2))
}

fn log_event(url: &str, event: Event) {
    match event {
        Event::Connected => {
            metrics::counter!("islb_nats_connects_total").increment(1);
            info!(url, "NATS connection (re)established");
        }
        Event::Disconnected => warn!(url, "NATS connection lost; reconnecting"),
        Event::LameDuckMode => warn!(url, "NATS server entering lame duck mode"),
        Event::SlowConsumer(sid) => {
            metrics::counter!("islb_nats_slow_consumer_total").increment(1);
            warn!(url, sid, "NATS slow consumer: messages dropped")
        }
        Event::ServerError(e) => warn!(url, error = %e, "NATS server error"),
        Event::ClientError(e) => warn!(url, error = %e, "NATS client error"),
        Event::Draining | Event::Closed => info!(url, event = %event, "NATS connection"),
    }
}

/// Whether `client` is connected to NATS now.
pub(crate) fn connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnection_starts_at_once_and_waits_at_most_two_seconds() {
        let delays: Vec<u128> = (0..12).map(|n| reconnect_delay(n).as_millis()).collect();
        assert_eq!(delays, [0, 0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2000, 2000]);
    }

    #[test]
    fn url_lists_parse_and_bad_urls_are_named() {
        assert_eq!(parse_urls("nats://a:4222, nats://b:4222").unwrap().len(), 2);
        let err = parse_urls("nats://u:pw@a:notaport").unwrap_err().to_string();
        assert!(err.contains("nats://u:***@a:notaport") && !err.contains("pw"), "{err}");
    }
}
