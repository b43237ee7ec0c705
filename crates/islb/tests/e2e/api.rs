//! The `/v1` API of the real binary against its own OpenAPI document: schemathesis
//! (PyPI) generates requests from the document and checks every answer (no server error,
//! status codes and bodies as documented, schema-valid requests accepted, SSE events as
//! documented).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use islb_testkit::{NatsServer, workspace_root};

use crate::harness::{Islb, KeepAlive, Peer, lookup, sfus};

/// schemathesis from `target/tools/venv` (where scripts/test installs it) or PATH.
fn schemathesis() -> Option<PathBuf> {
    let local = workspace_root().join("target/tools/venv/bin/schemathesis");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join("schemathesis")).find(|p| p.is_file())
}

#[tokio::test]
async fn schemathesis_finds_nothing_against_the_openapi_document() {
    let Some(st) = schemathesis() else {
        eprintln!("SKIPPED: schemathesis is not installed (scripts/test installs it into target/tools/venv)");
        return;
    };
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &[]);
    let _sfus = KeepAlive::start(&nats, &sfus(3), Duration::from_secs(1)).await;
    let peer = Peer::connect(&nats).await;
    assert_eq!(lookup(&peer, "room-1").await.len(), 1, "a session to look at");
    let base = format!("http://{}", islb.http);
    // schemathesis keeps a cache in its working directory: a temporary one.
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(cwd)
            .args(["run", &format!("{base}/v1/openapi.json"), "--url", &base, "--checks", "all"])
            .args(["--max-examples", "25", "--seed", "1", "--no-color"])
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("running schemathesis")
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(text.contains("Tested: 11"), "every operation was tested:\n{text}");
    assert_eq!(islb.metric("islb_handler_panics_total"), None, "nothing panicked");
}
