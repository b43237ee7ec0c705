//! Logs (tracing) and metrics (Prometheus text format) for the whole process.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global log subscriber (once; later calls do nothing).
/// The NATS client library's own messages are kept to warnings unless the filter names it.
pub fn init_logging(level: &str, format: LogFormat) {
    let directives = if level.contains("async_nats") { level.to_owned() } else { format!("{level},async_nats=warn") };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide metrics recorder's handle (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (several servers in one test
            // process); this handle then renders nothing, which tests do not rely on.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds the histogram samples recorded since the last round into their buckets, every
/// [`UPKEEP_INTERVAL`] until `stop`. The recorder keeps each sample until then (a render
/// does it too): without this, a process nobody scrapes grows by every request's timing
/// (about 8 bytes per sample, hundreds of KB a minute under load; `scripts/bench soak`).
pub async fn upkeep_loop(handle: PrometheusHandle, stop: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = stop.cancelled() => return,
        }
    }
}
