//! Runs the real `islb` binary against a real nats-server, and talks to it as ion nodes
//! do (gob over NATS) and as operators do (HTTP, CLI).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use islb_gob::{GetResponse, Message as _, Node, Request, Response, Rpc, Value};
use islb_testkit::{NatsServer, Proc};

pub(crate) const ISLB: &str = env!("CARGO_BIN_EXE_islb");

/// A running `islb serve`.
pub(crate) struct Islb {
    pub(crate) proc: Proc,
    pub(crate) http: SocketAddr,
    pub(crate) nid: String,
}

impl Islb {
    /// Starts `islb serve` on `nats` with JSON logs, a free admin port, and `extra` args;
    /// waits until it is ready.
    pub(crate) fn start(nats: &NatsServer, extra: &[&str]) -> Islb {
        Islb::start_url(&nats.url(), extra)
    }

    /// [`Islb::start`] with `url` as its `--nats-url`.
    /// A `--nid` or `--http-addr` in `extra` is taken as it is; otherwise a NID is made up
    /// and the admin HTTP server listens on a free loopback port.
    pub(crate) fn start_url(url: &str, extra: &[&str]) -> Islb {
        let given = extra.iter().position(|a| *a == "--nid").and_then(|i| extra.get(i + 1));
        let nid = given
            .map_or_else(|| format!("islb-t{}", std::process::id() % 100_000 + rand_suffix()), |n| (*n).to_owned());
        let mut cmd = Command::new(ISLB);
        cmd.args(["serve", "--nats-url", url, "--log-format", "json"]);
        if !extra.contains(&"--http-addr") {
            cmd.args(["--http-addr", "127.0.0.1:0"]);
        }
        if given.is_none() {
            cmd.args(["--nid", &nid]);
        }
        cmd.args(extra).env_remove("ISLB_CONFIG");
        let mut proc = Proc::spawn("islb", cmd);
        proc.wait_for("\"islb ready\"", Duration::from_secs(30));
        let line = proc.wait_for("admin HTTP listening", Duration::from_secs(1));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        let http = v["addr"].as_str().expect("addr field").parse().expect("socket address");
        Islb { proc, http, nid }
    }

    /// Sends SIGTERM and waits for the exit.
    pub(crate) fn stop(&mut self) -> ExitStatus {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_exit(Duration::from_secs(15))
    }

    /// Waits until `/readyz` answers `want`.
    pub(crate) async fn wait_ready(&self, want: u16, within: Duration) {
        let why = || format!("readiness never became {want}: {:?}", self.http_get("/readyz"));
        eventually(within, Duration::from_millis(100), || self.http_get("/readyz").0 == want, why).await;
    }

    /// `GET path` on the admin server: (status, body).
    pub(crate) fn http_get(&self, path: &str) -> (u16, String) {
        http(self.http, "GET", path)
    }

    /// The value of the first `/metrics` line that starts with `name` (labels included).
    pub(crate) fn metric(&self, name: &str) -> Option<f64> {
        let (_, metrics) = self.http_get("/metrics");
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// `POST path` on the admin server: (status, body).
    pub(crate) fn http_post(&self, path: &str) -> (u16, String) {
        http(self.http, "POST", path)
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 100_000
}

/// A minimal HTTP/1.1 request without a body.
pub(crate) fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, "")
}

/// [`http`] with extra header lines (each ending in `\r\n`).
pub(crate) fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("admin HTTP reachable");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    // Chunked bodies: good enough to search in; strip chunk size lines when present.
    (status, dechunk(&body))
}

/// `/v1/events` read as it comes, on a thread of its own.
pub(crate) struct EventStream {
    text: Arc<Mutex<String>>,
}

impl EventStream {
    pub(crate) fn open(addr: SocketAddr) -> EventStream {
        let mut s = TcpStream::connect(addr).expect("admin HTTP reachable");
        write!(s, "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
        let text = Arc::new(Mutex::new(String::new()));
        let into = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                into.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        EventStream { text }
    }

    /// Everything read once `needle` is in it (within 10 s).
    pub(crate) async fn until(&self, needle: &str) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text.lock().unwrap().clone();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < end, "no {needle:?} in /v1/events:\n{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_owned();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// A node as ion registers one.
pub(crate) fn ion_node(service: &str, nid: &str) -> Node {
    Node {
        dc: "dc1".into(),
        service: service.into(),
        nid: nid.into(),
        rpc: Rpc { protocol: "nats-grpc".into(), addr: "nats://127.0.0.1:4222".into(), ..Rpc::default() },
        ..Node::default()
    }
}

/// An ion-style peer on NATS.
pub(crate) struct Peer {
    pub(crate) client: async_nats::Client,
}

impl Peer {
    pub(crate) async fn connect(nats: &NatsServer) -> Peer {
        Peer { client: connect(&nats.url()).await }
    }

    /// save/update/delete: the registry's Response.
    pub(crate) async fn send(&self, action: &str, node: &Node) -> Response {
        let req = Request { action: action.into(), node: node.clone(), ..Request::default() };
        let subject = format!("node.publish.{}.{}.{}", node.service, node.dc, node.nid);
        self.raw(&subject, req.to_gob()).await.map(|p| Response::from_gob(&p).expect("a Response")).expect("a reply")
    }

    /// get: the nodes listed.
    pub(crate) async fn get(&self, service: &str, params: &[(&str, Value)]) -> Vec<Node> {
        self.try_get(service, params).await.expect("a reply")
    }

    /// get: the nodes listed, or `None` without an answer.
    pub(crate) async fn try_get(&self, service: &str, params: &[(&str, Value)]) -> Option<Vec<Node>> {
        let mut req = Request { action: "get".into(), service: service.into(), ..Request::default() };
        for (k, v) in params {
            req.params.insert((*k).into(), v.clone());
        }
        let payload = self.raw(&format!("node.publish.{service}"), req.to_gob()).await?;
        Some(GetResponse::from_gob(&payload).expect("a GetResponse").nodes)
    }

    /// A request with any payload: the reply payload, or `None` without an answer in 10 s
    /// (an answer takes milliseconds; the budget is for a machine starved by other work).
    pub(crate) async fn raw(&self, subject: &str, payload: Vec<u8>) -> Option<Vec<u8>> {
        let fut = self.client.request(subject.to_owned(), payload.into());
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(Ok(msg)) => Some(msg.payload.to_vec()),
            _ => None,
        }
    }
}

/// Keeps nodes alive as ion's KeepAlive does (save, then update every `period`) until
/// dropped; each node's loop can be stopped alone (an SFU dying). The loops run on a
/// thread and runtime of their own, so a test that blocks its own runtime (running the
/// CLI or gopeer, restarting islb) never starves them.
/// A NATS client as ion's nodes have one: reconnecting forever, every 100 ms here (Go
/// waits 2 s; the tests' outages are short).
pub(crate) async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(url)
        .await
        .expect("NATS connection")
}

pub(crate) struct KeepAlive {
    tasks: std::collections::HashMap<String, tokio::task::AbortHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KeepAlive {
    /// Registers every node (its first save is answered before this returns) and starts
    /// its keep-alives.
    pub(crate) async fn start(nats: &NatsServer, nodes: &[Node], period: Duration) -> KeepAlive {
        let (url, nodes) = (nats.url(), nodes.to_vec());
        let (ready, started) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let tasks = rt.block_on(Self::run(url, nodes, period));
            let _ = ready.send(tasks);
            let _ = rt.block_on(stopped);
        });
        let tasks = started.await.expect("the keep-alive thread registered every node (see its panic above)");
        KeepAlive { tasks, stop: Some(stop), thread: Some(thread) }
    }

    async fn run(
        url: String,
        nodes: Vec<Node>,
        period: Duration,
    ) -> std::collections::HashMap<String, tokio::task::AbortHandle> {
        let client = connect(&url).await;
        let mut tasks = std::collections::HashMap::new();
        for n in nodes {
            let client = client.clone();
            let subject = format!("node.publish.{}.{}.{}", n.service, n.dc, n.nid);
            let req = |action: &str| Request { action: action.into(), node: n.clone(), ..Request::default() }.to_gob();
            let (save, update) = (req("save"), req("update"));
            let reply = client.request(subject.clone(), save.into()).await.expect("save answered");
            assert!(Response::from_gob(&reply.payload).expect("a Response").success);
            // On a ticker, each request on its own: a request lost in flight (a NATS server
            // killed under it) costs one period, not the whole request timeout.
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                loop {
                    tick.tick().await;
                    let (client, subject, update) = (client.clone(), subject.clone(), update.clone());
                    tokio::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), client.request(subject, update.into())).await;
                    });
                }
            });
            tasks.insert(n.nid.clone(), task.abort_handle());
        }
        tasks
    }

    /// Stops one node's keep-alives (it falls silent, as a crashed SFU).
    pub(crate) fn silence(&mut self, nid: &str) {
        if let Some(t) = self.tasks.remove(nid) {
            t.abort();
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.tasks.values().for_each(|t| t.abort());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The payload of the probe [`follow`] publishes to itself.
const PROBE: &[u8] = b"islb-test-probe";

/// Subscribes to `subject` on a connection of its own and hands every message to `each`
/// on a task; returns once the server is known to deliver to it: a probe published to
/// `probe` (a subject the subscription matches) on the same connection after the SUB has
/// come back, and NATS keeps one connection's order. A `flush` alone proves nothing:
/// async-nats flushes its socket, it does not wait for the server to have read it. The
/// probe is not handed to `each`.
pub(crate) async fn follow(
    nats: &NatsServer,
    subject: &str,
    probe: &str,
    mut each: impl FnMut(async_nats::Message) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let client = async_nats::connect(nats.url()).await.expect("NATS connection");
    let mut sub = client.subscribe(subject.to_owned()).await.expect("subscribe");
    client.publish(probe.to_owned(), PROBE.into()).await.expect("probe");
    client.flush().await.expect("flush");
    let (ready, live) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _keep = client;
        let mut ready = Some(ready);
        while let Some(msg) = sub.next().await {
            if msg.payload.as_ref() == PROBE {
                ready.take().map(|r| r.send(()));
                continue;
            }
            each(msg);
        }
    });
    tokio::time::timeout(Duration::from_secs(10), live)
        .await
        .unwrap_or_else(|_| panic!("the subscription to {subject} was not live within 10 s"))
        .expect("the subscriber task ended");
    task
}

/// Waits until `done()` holds, checking every `every`; fails with `why()` after `within`.
/// (Async: a blocking wait would stall the test's own subscriber and keep-alive tasks.)
pub(crate) async fn eventually(
    within: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
    why: impl Fn() -> String,
) {
    let end = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < end, "{}", why());
        tokio::time::sleep(every).await;
    }
}

/// Runs the `islb` binary with `args` and `envs` to completion; what it printed holds no
/// secret the test registered.
pub(crate) fn run_islb(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(ISLB);
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running islb");
    let source = format!("islb {}", args.first().unwrap_or(&""));
    islb_testkit::assert_no_secret(&source, &String::from_utf8_lossy(&out.stdout));
    islb_testkit::assert_no_secret(&source, &String::from_utf8_lossy(&out.stderr));
    out
}

/// An operator command against the cluster on `nats`: (success, stdout, stderr).
pub(crate) fn islb_cli(nats: &NatsServer, args: &[&str]) -> (bool, String, String) {
    let url = nats.url();
    let out = run_islb(&[args, &["--nats-url", &url]].concat(), &[]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `gopeer conform` (with `-expire` when given) and returns its report, which must
/// say that every check passed.
pub(crate) fn conform(nats: &NatsServer, expire: Option<&str>) -> String {
    let url = nats.url();
    let mut args = vec!["conform", "-url", &url];
    if let Some(e) = expire {
        args.extend(["-expire", e]);
    }
    let out = islb_testkit::gopeer_run(&args, b"");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && all_passed(&text), "gopeer conform:\n{text}");
    text
}

/// `n` islb replicas on one Redis. Unless a test is about store outages (and sets its own
/// `--store-timeout`), a Redis slowed by a loaded machine must not count as an outage.
pub(crate) fn replicas(nats: &NatsServer, redis: &islb_testkit::RedisServer, n: usize, extra: &[&str]) -> Vec<Islb> {
    replicas_on(nats, &Shared::Redis(redis.url()), n, extra)
}

/// A store replicas share: a Redis (its URL), or JetStream on the test's own NATS (which
/// must have it enabled: [`NatsServer::start_jetstream`]).
pub(crate) enum Shared {
    Redis(String),
    JetStream,
}

impl Shared {
    /// The NATS server and store of a shared-store test: Redis beside a plain server, or a
    /// JetStream server alone. The Redis server, if any, lives as long as the result.
    pub(crate) fn start(jetstream: bool) -> (NatsServer, Shared, Option<islb_testkit::RedisServer>) {
        if jetstream {
            (NatsServer::start_jetstream(), Shared::JetStream, None)
        } else {
            let redis = islb_testkit::RedisServer::start();
            (NatsServer::start(), Shared::Redis(redis.url()), Some(redis))
        }
    }

    fn spec(&self) -> &str {
        match self {
            Shared::Redis(url) => url,
            Shared::JetStream => "jetstream",
        }
    }
}

/// `n` islb replicas on `shared` (see [`replicas`] for the store timeout).
pub(crate) fn replicas_on(nats: &NatsServer, shared: &Shared, n: usize, extra: &[&str]) -> Vec<Islb> {
    let mut args = vec!["--store", shared.spec()];
    if !extra.contains(&"--store-timeout") {
        args.extend_from_slice(&["--store-timeout", "5s"]);
    }
    args.extend_from_slice(extra);
    (0..n).map(|_| Islb::start(nats, &args)).collect()
}

/// `n` SFUs (service `rtc`): sfu-0, sfu-1...
pub(crate) fn sfus(n: usize) -> Vec<Node> {
    (0..n).map(|i| ion_node("rtc", &format!("sfu-{i}"))).collect()
}

/// A placement lookup as ion's signal makes it: `get rtc` with the call's metadata.
pub(crate) async fn lookup(peer: &Peer, sid: &str) -> Vec<String> {
    peer.get("rtc", &[("sid", Value::String(sid.into())), ("content-type", "application/grpc".into())])
        .await
        .into_iter()
        .map(|n| n.nid)
        .collect()
}

/// (Action, NID) of every event a Go watcher (`gopeer watch`) printed.
pub(crate) fn watched_events(p: &Proc) -> Vec<(String, String)> {
    p.output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["Action"].as_str()?.to_owned(), v["Node"]["NID"].as_str().unwrap_or("?").to_owned())))
        .collect()
}

/// Whether a `gopeer conform` report ends with every one of its checks (at least 15) passed.
pub(crate) fn all_passed(report: &str) -> bool {
    let Some(last) = report.lines().rev().find(|l| l.contains(" passed, ")) else { return false };
    let mut words = last.split_whitespace();
    let passed: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    passed >= 15 && last.ends_with(" passed, 0 failed")
}
