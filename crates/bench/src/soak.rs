//! `islb-bench soak`: a long run under churn, for leaks and slow growth. New nodes arrive
//! (a `save` each, under NIDs never used before) and fall silent, so islb expires them;
//! lookups come at a fixed rate, each with a fresh sid (a session placed, then idle until
//! islb's short `--session-ttl` releases it). Every interval it samples islb's resident
//! memory, open file descriptors and the lookups' p99, and at the end prints the slope of
//! each over the run after the warm-up (least squares), as Markdown.

use std::time::{Duration, Instant};

use anyhow::Context;
use islb_gob::{Message as _, Request, Value};

/// What to run.
pub(crate) struct SoakConfig {
    pub(crate) url: String,
    /// islb's process id (for memory and descriptors).
    pub(crate) pid: u32,
    pub(crate) duration: Duration,
    pub(crate) interval: Duration,
    /// New nodes per second.
    pub(crate) churn: u32,
    /// Lookups per second.
    pub(crate) lookups: u32,
    /// Samples before this are the warm-up, left out of the slopes.
    pub(crate) warmup: Duration,
}

/// One sample.
struct Sample {
    at: Duration,
    rss: u64,
    fds: usize,
    p99: Duration,
    lookups: usize,
    errors: usize,
}

fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd")).context("reading /proc/PID/fd")?.count())
}

/// Least-squares slope of `ys` over `xs` (per unit of x).
pub(crate) fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if xs.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// Sends `per_second` operations a second, spread over the second, each on its own task.
async fn paced<F, Fut>(per_second: u32, end: Instant, op: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if per_second == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        tokio::spawn(op(i));
        i += 1;
    }
}

pub(crate) async fn run(cfg: SoakConfig) -> anyhow::Result<()> {
    let client = async_nats::connect(&cfg.url).await.context("connecting to NATS")?;
    let started = Instant::now();
    let end = started + cfg.duration;
    // Four SFUs keeping alive for the lookups to land on.
    let sfus: Vec<_> = (0..4).map(crate::load::node).collect();
    for n in &sfus {
        let (subject, payload) = crate::load::save(n.clone());
        client.request(subject, payload).await.context("registering an SFU")?;
    }
    let keepalive = tokio::spawn({
        let client = client.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for n in &sfus {
                    let subject = format!("node.publish.{}.{}.{}", n.service, n.dc, n.nid);
                    let req = Request { action: "update".into(), node: n.clone(), ..Request::default() };
                    let _ = client.request(subject, req.to_gob().into()).await;
                }
            }
        }
    });
    let churn = tokio::spawn({
        let client = client.clone();
        paced(cfg.churn, end, move |i| {
            let client = client.clone();
            async move {
                let mut n = crate::load::node(1_000_000 + i as usize);
                n.service = "soak".into();
                let (subject, payload) = crate::load::save(n);
                let _ = tokio::time::timeout(Duration::from_secs(5), client.request(subject, payload)).await;
            }
        })
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<Duration>>();
    let lookups = tokio::spawn({
        let client = client.clone();
        paced(cfg.lookups, end, move |i| {
            let (client, tx) = (client.clone(), tx.clone());
            async move {
                let mut req = Request { action: "get".into(), service: "rtc".into(), ..Request::default() };
                req.params.insert("sid".into(), Value::String(format!("soak-room-{i}")));
                let t = Instant::now();
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.request("node.publish.rtc", req.to_gob().into()),
                )
                .await;
                let _ = tx.send(matches!(reply, Ok(Ok(_))).then(|| t.elapsed()));
            }
        })
    });

    let mut samples = Vec::new();
    println!("| minute | RSS | open fds | lookups | errors | lookup p99 |");
    println!("|---|---|---|---|---|---|");
    while Instant::now() < end {
        tokio::time::sleep(cfg.interval.min(end.saturating_duration_since(Instant::now()))).await;
        let (mut lat, mut errors) = (Vec::new(), 0);
        while let Ok(r) = rx.try_recv() {
            match r {
                Some(d) => lat.push(d),
                None => errors += 1,
            }
        }
        lat.sort();
        let s = Sample {
            at: started.elapsed(),
            rss: crate::load::rss(cfg.pid)?,
            fds: open_fds(cfg.pid)?,
            p99: if lat.is_empty() { Duration::ZERO } else { crate::load::quantile(&lat, 0.99) },
            lookups: lat.len(),
            errors,
        };
        println!(
            "| {:.1} | {:.1} MB | {} | {} | {} | {:.2} ms |",
            s.at.as_secs_f64() / 60.0,
            s.rss as f64 / 1e6,
            s.fds,
            s.lookups,
            s.errors,
            s.p99.as_secs_f64() * 1e3
        );
        samples.push(s);
    }
    keepalive.abort();
    let _ = tokio::join!(churn, lookups);

    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= cfg.warmup).collect();
    let minutes: Vec<f64> = steady.iter().map(|s| s.at.as_secs_f64() / 60.0).collect();
    let of = |f: fn(&Sample) -> f64| -> Vec<f64> { steady.iter().map(|s| f(s)).collect() };
    let errors: usize = samples.iter().map(|s| s.errors).sum();
    let total: usize = samples.iter().map(|s| s.lookups).sum();
    println!();
    println!(
        "soak: {:.0} min, {} new nodes/s, {} lookups/s; after {:.0} min of warm-up: RSS {:+.1} KB/min, open fds {:+.2}/min, lookup p99 {:+.3} ms/min; {total} lookups, {errors} failed",
        cfg.duration.as_secs_f64() / 60.0,
        cfg.churn,
        cfg.lookups,
        cfg.warmup.as_secs_f64() / 60.0,
        slope(&minutes, &of(|s| s.rss as f64 / 1e3)),
        slope(&minutes, &of(|s| s.fds as f64)),
        slope(&minutes, &of(|s| s.p99.as_secs_f64() * 1e3)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn the_slope_is_least_squares() {
        assert_eq!(slope(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]), 2.0);
        assert_eq!(slope(&[0.0, 1.0, 2.0], &[4.0, 4.0, 4.0]), 0.0);
        assert_eq!(slope(&[1.0], &[9.0]), 0.0);
        assert!((slope(&[0.0, 1.0, 2.0, 3.0], &[0.0, 1.0, 1.0, 2.0]) - 0.6).abs() < 1e-12);
    }
}
