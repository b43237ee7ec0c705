//! `islb-bench`: helpers for `scripts/bench`, which measures islb beside raw NATS in the
//! same run (these machines are shared and noisy: only ratios within one run mean much).
//!
//! - `echo`: answers every request on `node.publish.>` with a canned reply, as fast as
//!   async-nats allows: `Response{Success: true}`, or for a `get` a `GetResponse` of one
//!   node (what islb answers a lookup). `gopeer bench-update` and `islb-bench lookups`
//!   against it are the raw NATS request/reply baselines, with the same clients, subjects
//!   and reply sizes as against islb.
//! - `load`: registers N nodes (as ion's save) with C concurrent requesters.
//! - `rss`: prints a process's resident memory.
//! - `soak`: a long run under node churn and fresh-session lookups, sampling islb's
//!   memory, descriptors and latency (`scripts/bench soak`).

mod load;
mod sim;
mod soak;

use load::{node, quantile, rss, save};

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use islb_gob::{Message as _, Request, Response, Value};

#[global_allocator]
static ALLOC: sim::Counting = sim::Counting;

#[derive(Parser)]
#[command(name = "islb-bench", about = "Benchmark helpers for scripts/bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer node.publish.> requests with a canned success Response.
    Echo {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
    },
    /// Register N nodes through the registry.
    Load {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value_t = 100_000)]
        nodes: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Register N nodes, let them fall silent, and time their delete events against
    /// their deadlines (islb must run with the same --expire).
    Expiry {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        #[arg(long, default_value_t = 200)]
        nodes: usize,
        #[arg(long, default_value = "1000")]
        expire_ms: u64,
    },
    /// Print the resident memory (VmRSS, bytes) of a process.
    Rss { pid: u32 },
    /// Session lookups (`get rtc` with a sid param) from C concurrent connections, as ion's
    /// signal sends them: throughput and latency (point it at `echo` for the baseline).
    Lookups {
        #[command(flatten)]
        load: LoadOpts,
    },
    /// Unary `islb.ISLB/FindNode` calls over nats-grpc from C concurrent callers.
    Findnode {
        /// The islb's NID.
        #[arg(long)]
        nid: String,
        #[command(flatten)]
        load: LoadOpts,
    },
    /// A long run under churn: new nodes that fall silent, lookups with fresh sids; samples
    /// islb's RSS, open descriptors and lookup p99, and prints their slopes.
    Soak {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        url: String,
        /// islb's process id.
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        warmup: Duration,
        /// New nodes a second.
        #[arg(long, default_value_t = 200)]
        churn: u32,
        /// Lookups a second, each with a fresh sid.
        #[arg(long, default_value_t = 100)]
        lookups: u32,
    },
    /// Placement simulator (pure core, no I/O) against random choice and round robin.
    Sim {
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        #[arg(long, default_value_t = 1_000_000)]
        sessions: usize,
        /// Chance that an operation ends a live session instead of starting one.
        #[arg(long, default_value_t = 0.1)]
        churn: f64,
        #[arg(long, default_value_t = 100)]
        failures: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

/// A timed load of session lookups.
#[derive(clap::Args)]
struct LoadOpts {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    #[arg(long, default_value_t = 1_000)]
    sids: usize,
    #[arg(long, short, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, short, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Echo { url } => echo(&url).await,
        Cmd::Load { url, nodes, concurrency } => load(&url, nodes, concurrency).await,
        Cmd::Expiry { url, nodes, expire_ms } => expiry(&url, nodes, Duration::from_millis(expire_ms)).await,
        Cmd::Lookups { load: o } => lookups(&o.url, o.sids, o.concurrency, o.duration).await,
        Cmd::Findnode { nid, load: o } => findnode(&o.url, &nid, o.sids, o.concurrency, o.duration).await,
        Cmd::Sim { nodes, sessions, churn, failures, seed } => {
            sim::run(&sim::SimConfig { nodes, sessions, churn, failures, seed });
            Ok(())
        }
        Cmd::Soak { url, pid, duration, interval, warmup, churn, lookups } => {
            soak::run(soak::SoakConfig { url, pid, duration, interval, churn, lookups, warmup }).await
        }
        Cmd::Rss { pid } => {
            println!("{}", rss(pid)?);
            Ok(())
        }
    }
}

async fn echo(url: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await.context("connecting to NATS")?;
    let mut sub = client.queue_subscribe("node.publish.>", "islb".into()).await?;
    islb_nrpc::barrier(&client, Duration::from_secs(10)).await?; // "ready" means listening
    let ok: bytes::Bytes = Response { success: true, reason: String::new() }.to_gob().into();
    // A lookup's fair limit: the answer islb gives it, one node.
    let one_node: bytes::Bytes = islb_gob::GetResponse { nodes: vec![node(0)] }.to_gob().into();
    eprintln!("echo responder ready on {url}");
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply {
            // Decoded as islb decodes it, to tell a get from a write.
            let get = Request::from_gob(&msg.payload).is_ok_and(|r| r.action == "get");
            client.publish(reply, if get { one_node.clone() } else { ok.clone() }).await?;
        }
    }
    Ok(())
}

async fn load(url: &str, nodes: usize, concurrency: usize) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await.context("connecting to NATS")?;
    let started = Instant::now();
    let results = futures::stream::iter(0..nodes)
        .map(|i| {
            let client = client.clone();
            async move {
                let (subject, req) = save(node(i));
                let reply = tokio::time::timeout(Duration::from_secs(10), client.request(subject, req)).await;
                matches!(reply, Ok(Ok(m)) if Response::from_gob(&m.payload).is_ok_and(|r| r.success))
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<bool>>()
        .await;
    let ok = results.iter().filter(|b| **b).count();
    println!("registered {ok} of {nodes} nodes in {:?}", started.elapsed());
    anyhow::ensure!(ok == nodes, "{} registrations failed", nodes - ok);
    Ok(())
}

async fn expiry(url: &str, count: usize, expire: Duration) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await.context("connecting to NATS")?;
    let mut events = client.subscribe("node.discovery.benchexpiry.>").await?;
    client.flush().await?;
    let mut last_ack = std::collections::HashMap::new();
    for i in 0..count {
        let mut n = node(i);
        n.service = "benchexpiry".into();
        let id = n.id();
        let (subject, req) = save(n);
        let sent = Instant::now();
        client.request(subject, req).await.context("save")?;
        // The deadline starts when islb handled the request: between sending and the reply.
        last_ack.insert(id, sent);
    }
    let mut late = Vec::new();
    let end = Instant::now() + expire * 3 + Duration::from_secs(5);
    while late.len() < count && Instant::now() < end {
        let Ok(Some(msg)) = tokio::time::timeout(end - Instant::now(), events.next()).await else { break };
        let Ok(ev) = Request::from_gob(&msg.payload) else { continue };
        if ev.action != "delete" {
            continue;
        }
        if let Some(sent) = last_ack.get(&ev.node.id()) {
            late.push(Instant::now().saturating_duration_since(*sent + expire));
        }
    }
    anyhow::ensure!(late.len() == count, "only {} of {count} delete events arrived", late.len());
    late.sort();
    println!(
        "expiry lateness over {count} nodes: p50={:.1}ms p99={:.1}ms max={:.1}ms",
        quantile(&late, 0.5).as_secs_f64() * 1e3,
        quantile(&late, 0.99).as_secs_f64() * 1e3,
        late[late.len() - 1].as_secs_f64() * 1e3
    );
    Ok(())
}

/// Runs `op(client, i)` from `concurrency` connections for `d` (each worker on its own
/// connection, one request at a time) and prints `name: requests= errors= rps= p50= p99=`.
async fn load_test<F, Fut>(name: &str, url: &str, concurrency: usize, d: Duration, op: F) -> anyhow::Result<()>
where
    F: Fn(async_nats::Client, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let end = Instant::now() + d;
    let workers = (0..concurrency).map(|w| {
        let (url, op) = (url.to_owned(), op.clone());
        tokio::spawn(async move {
            let client = async_nats::connect(url).await?;
            let (mut lat, mut errors, mut i) = (Vec::new(), 0u64, w);
            while Instant::now() < end {
                let t = Instant::now();
                if op(client.clone(), i).await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
                i += concurrency;
            }
            anyhow::Ok((lat, errors))
        })
    });
    let (mut all, mut errors) = (Vec::new(), 0);
    for w in futures::future::join_all(workers).await {
        let (lat, e) = w??;
        all.extend(lat);
        errors += e;
    }
    all.sort();
    anyhow::ensure!(!all.is_empty(), "no replies ({errors} errors)");
    println!(
        "{name}: requests={} errors={errors} rps={:.0} p50={:?} p99={:?}",
        all.len(),
        all.len() as f64 / d.as_secs_f64(),
        quantile(&all, 0.5),
        quantile(&all, 0.99)
    );
    Ok(())
}

async fn lookups(url: &str, sids: usize, concurrency: usize, d: Duration) -> anyhow::Result<()> {
    load_test("lookups", url, concurrency, d, move |client: async_nats::Client, i: usize| async move {
        let mut req = Request { action: "get".into(), service: "rtc".into(), ..Request::default() };
        req.params.insert("sid".into(), Value::String(format!("room-{}", (i * 7919) % sids)));
        req.params.insert("content-type".into(), Value::String("application/grpc".into()));
        let reply =
            tokio::time::timeout(Duration::from_secs(3), client.request("node.publish.rtc", req.to_gob().into()));
        matches!(reply.await, Ok(Ok(_)))
    })
    .await
}

async fn findnode(url: &str, nid: &str, sids: usize, concurrency: usize, d: Duration) -> anyhow::Result<()> {
    use prost::Message as _;
    let nid = nid.to_owned();
    load_test("findnode", url, concurrency, d, move |client, i| {
        let nrpc = islb_nrpc::Client::new(client, nid.clone(), "bench");
        async move {
            let sid = format!("room-{}", (i * 7919) % sids);
            let req = islb_proto::islb::FindNodeRequest { sid, nid: String::new(), service: "rtc".into() };
            let md = islb_nrpc::Metadata::new();
            nrpc.unary("/islb.ISLB/FindNode", req.encode_to_vec().into(), &md, Duration::from_secs(3)).await.is_ok()
        }
    })
    .await
}
