//! The ground: islb starts, answers on NATS, is healthy, shuts down cleanly, and refuses
//! bad configuration in one line.

use std::process::Command;
use std::time::{Duration, Instant};

use islb_testkit::{NatsServer, Proc, free_port, go_watcher, workspace_root};

use crate::harness::{ISLB, Islb, Peer, eventually, ion_node, run_islb, watched_events};

#[test]
fn islb_registers_itself_for_go_watchers_and_exits_cleanly_on_sigterm() {
    let nats = NatsServer::start();
    let mut watcher = go_watcher(&nats, "islb");
    let mut islb = Islb::start(&nats, &[]);
    let up = format!("\"NID\":\"{}\"", islb.nid);
    let line = watcher.wait_for(&up, Duration::from_secs(10));
    assert!(line.contains("\"Action\":\"save\"") && line.contains("\"Service\":\"islb\""), "{line}");
    assert!(line.contains("\"Protocol\":\"nats-grpc\"") && line.contains(&nats.url()), "RPC as ion registers: {line}");

    assert_eq!(islb.http_get("/healthz"), (200, "ok\n".into()));
    assert_eq!(islb.http_get("/readyz").0, 200);
    let (status, metrics) = islb.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("islb_build_info"), "{metrics}");

    let status = islb.stop();
    assert!(status.success(), "exit status {status}");
    watcher.wait_for("\"Action\":\"delete\"", Duration::from_secs(10));
    let events = watched_events(&watcher);
    assert_eq!(
        events.iter().filter(|(_, nid)| *nid == islb.nid).map(|(a, _)| a.as_str()).collect::<Vec<_>>(),
        ["save", "delete"],
        "Go watcher saw {events:?}"
    );
    let out = islb.proc.output();
    for step in ["shutting down", "request loop stopped", "deregistered", "islb stopped"] {
        assert!(out.contains(step), "log lacks {step:?}:\n{out}");
    }
}

/// SIGTERM under load: every request islb took is answered; once it has stopped taking
/// requests, callers are told at once (NATS "no responders"), so none waits in vain.
#[tokio::test]
async fn sigterm_under_load_answers_every_request_it_took() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let nats = NatsServer::start();
    let mut islb = Islb::start(&nats, &[]);
    let (answered, refused, lost) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..16 {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let (answered, refused, lost, stop) = (answered.clone(), refused.clone(), lost.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Relaxed) {
                let node = ion_node("signal", &format!("w{w}-{}", i % 20));
                i += 1;
                let req = islb_gob::Request { action: "save".into(), node, ..Default::default() };
                let subject = format!("node.publish.signal.dc1.w{w}");
                let payload = islb_gob::Message::to_gob(&req);
                match tokio::time::timeout(Duration::from_secs(10), client.request(subject, payload.into())).await {
                    Ok(Ok(_)) => drop(answered.fetch_add(1, Relaxed)),
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        refused.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    _ => drop(lost.fetch_add(1, Relaxed)),
                }
            }
        }));
    }
    let why = || format!("only {} requests answered", answered.load(Relaxed));
    eventually(Duration::from_secs(30), Duration::from_millis(10), || answered.load(Relaxed) >= 500, why).await;
    islb.proc.signal(libc::SIGTERM);
    let status = islb.proc.wait_exit(Duration::from_secs(20));
    // Load goes on until every worker has been told "no responders" (or one lost a request).
    let told = || refused.load(Relaxed) >= 16 || lost.load(Relaxed) > 0;
    let why = || "callers were not told that islb is gone".to_owned();
    eventually(Duration::from_secs(30), Duration::from_millis(10), told, why).await;
    stop.store(true, Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(status.success(), "exit status {status}");
    assert_eq!(lost.load(Relaxed), 0, "requests taken but never answered ({} answered)", answered.load(Relaxed));
}

#[test]
fn every_listen_address_accepts_port_0_and_logs_the_bound_one() {
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &[]);
    assert_ne!(islb.http.port(), 0);
    assert_eq!(islb.http_get("/healthz").0, 200);
}

#[test]
fn an_unknown_config_key_is_one_line_naming_file_and_line_and_exit_64() {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), "[global]\ndc = \"dc1\"\nexpiry = \"5s\"\n").unwrap();
    let out = run_islb(&["serve", "--config", f.path().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with(&format!("islb: config error: {}:3:1: unknown field `expiry`", f.path().display())),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_duration_from_env_or_flag_is_one_line_and_exit_64() {
    let out = run_islb(&["serve"], &[("ISLB_EXPIRE", "5 parsecs")]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("5 parsecs") && err.contains("--expire"), "{err}");
    let out = run_islb(&["config", "check", "--expire", "soon"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration \"soon\""));
}

#[test]
fn precedence_is_flags_over_env_over_file_over_defaults() {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), "dc = \"file-dc\"\nnid = \"file-nid\"\nexpire = \"7s\"\nstore-prefix = \"file\"\n")
        .unwrap();
    let path = f.path().to_str().unwrap();
    let check = |args: &[&str], envs: &[(&str, &str)]| {
        let mut all = vec!["config", "check", "--config", path];
        all.extend_from_slice(args);
        let out = run_islb(&all, envs);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let out = check(&["--dc", "flag-dc"], &[("ISLB_DC", "env-dc"), ("ISLB_NID", "env-nid")]);
    assert!(out.contains("dc = flag-dc\n"), "{out}");
    assert!(out.contains("nid = env-nid\n"), "{out}");
    assert!(out.contains("expire = 7s\n"), "{out}");
    assert!(out.contains("store-prefix = file\n"), "{out}");
    assert!(out.contains("nats-url = nats://127.0.0.1:4222\n"), "{out}");
}

#[test]
fn nats_unreachable_at_start_is_retried_then_one_line_and_exit_69() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    let out = run_islb(
        &[
            "serve",
            "--nats-url",
            &url,
            "--nats-connect-timeout",
            "4s",
            "--http-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20), "gave up after the connect timeout, not never");
    let err = String::from_utf8_lossy(&out.stderr);
    let attempts = err.lines().filter(|l| l.contains("NATS not reachable yet")).count();
    assert!(attempts >= 2, "each attempt is logged:\n{err}");
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("islb: NATS at ") && last.contains("not reachable after"), "{last}");
}

#[test]
fn islb_waits_for_a_nats_that_comes_up_late() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    nats.stop();
    let mut cmd = Command::new(ISLB);
    cmd.args(["serve", "--nats-url", &url, "--http-addr", "127.0.0.1:0", "--log-format", "json"]);
    let mut islb = Proc::spawn("islb", cmd);
    islb.wait_for("NATS not reachable yet", Duration::from_secs(10));
    nats.restart();
    islb.wait_for("\"islb ready\"", Duration::from_secs(15));
    islb.signal(libc::SIGTERM);
    assert!(islb.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn islb_reconnects_after_nats_restarts_and_readiness_follows() {
    let mut nats = NatsServer::start();
    let islb = Islb::start(&nats, &[]);
    nats.stop();
    islb.wait_ready(503, Duration::from_secs(10)).await;
    assert!(islb.http_get("/readyz").1.contains("nats"), "{:?}", islb.http_get("/readyz"));
    nats.restart();
    islb.wait_ready(200, Duration::from_secs(15)).await;
    let peer = Peer::connect(&nats).await;
    assert!(peer.send("save", &crate::harness::ion_node("signal", "sig-after")).await.success);
}

#[test]
fn the_readme_carries_the_generated_config_reference() {
    let out = run_islb(&["config", "reference"], &[]);
    assert!(out.status.success());
    let reference = String::from_utf8(out.stdout).unwrap();
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let start = readme.find("<!-- config-reference:start -->").expect("start marker in README.md");
    let end = readme.find("<!-- config-reference:end -->").expect("end marker in README.md");
    let embedded = readme[start..end].trim_start_matches("<!-- config-reference:start -->").trim();
    assert_eq!(embedded, reference.trim(), "README.md's config reference is stale: run scripts/sync-readme");
}
