//! The operator console in a real browser: Debian's headless chromium driven over
//! WebDriver (chromedriver), against the real binary with SFUs kept alive by the Go peer.
//! On a failure the page is saved as `target/console-failure.png`.

use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use islb_testkit::{NatsServer, Proc, free_port, gopeer, workspace_root};

use crate::harness::{Islb, Peer, lookup};

/// A binary from PATH.
fn tool(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(name)).find(|p| p.is_file())
}

/// `gopeer keepalive` of `n` nodes of `service` named `prefix`…, every 300 ms.
fn keepalive(nats: &NatsServer, service: &str, prefix: &str, n: usize) -> Proc {
    let mut cmd = Command::new(gopeer());
    cmd.args(["keepalive", "-url", &nats.url(), "-service", service, "-prefix", prefix, "-n", &n.to_string()]);
    cmd.args(["-period", "300ms"]);
    Proc::spawn("gopeer-keepalive", cmd)
}

/// Polls `check` every 100 ms until it holds or `within` passes; how long it took.
async fn within(
    c: &Client,
    within: Duration,
    what: &str,
    check: impl AsyncFn(&Client) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check(c).await {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what}: not within {within:?}"))
}

async fn rows(c: &Client, prefix: &str) -> usize {
    c.find_all(Locator::Css(&format!("tr[data-node^=\"dc1.{prefix}\"]"))).await.map_or(0, |v| v.len())
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test]
async fn the_console_lists_nodes_live_drains_from_its_button_and_finds_a_room() {
    let (Some(chromium), Some(driver)) = (tool("chromium"), tool("chromedriver")) else {
        eprintln!(
            "SKIPPED: chromium and chromedriver are not installed (Debian: chromium chromium-driver; scripts/test installs them)"
        );
        return;
    };
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--expire", "1s", "--keepalive-interval", "300ms"]);
    let _sfus = keepalive(&nats, "rtc", "sfu", 3);
    let peer = Peer::connect(&nats).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while lookup(&peer, "room-1").await.len() != 1 {
        assert!(Instant::now() < deadline, "the SFUs never registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let room_node = lookup(&peer, "room-1").await.remove(0);

    let port = free_port();
    let mut cmd = Command::new(driver);
    cmd.arg(format!("--port={port}"));
    let _driver = Proc::spawn("chromedriver", cmd);
    let caps = serde_json::json!({ "goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"],
    }});
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(caps.as_object().unwrap().clone());
    let mut client = None;
    for _ in 0..50 {
        match builder.connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let c = client.expect("chromedriver answers");

    let result = async {
        c.goto(&format!("http://{}/", islb.http)).await.map_err(|e| e.to_string())?;
        // The SFUs, grouped by DC and service.
        within(&c, Duration::from_secs(10), "the three SFUs listed", async |c| rows(c, "sfu").await == 3).await?;
        let groups = text_of(&c, "#groups").await;
        if !groups.contains("dc1 · rtc — 3 nodes, 1 sessions") {
            return Err(format!("group heading: {groups}"));
        }
        // A node joins: listed within 2 s of registering.
        let joiner = keepalive(&nats, "rtc", "joiner", 1);
        let join =
            within(&c, Duration::from_secs(2), "a joining node listed", async |c| rows(c, "joiner").await == 1).await?;
        // ...and leaves: gone within 2 s of islb announcing it (expire 1 s after it stops).
        drop(joiner);
        within(&c, Duration::from_secs(3), "a leaving node dropped", async |c| rows(c, "joiner").await == 0).await?;
        // Drain from the button.
        let label = format!("Drain dc1.{room_node}");
        c.find(Locator::Css(&format!("button[aria-label=\"{label}\"]")))
            .await
            .map_err(|e| format!("{label}: {e}"))?
            .click()
            .await
            .map_err(|e| e.to_string())?;
        let row = format!("tr[data-node=\"dc1.{room_node}\"] td.draining");
        within(&c, Duration::from_secs(3), "the drained node shown draining", async |c| {
            text_of(c, &row).await == "draining"
        })
        .await?;
        let (_, drains) = crate::harness::http(islb.http, "GET", "/v1/drains");
        if !drains.contains(&room_node) {
            return Err(format!("the API does not list the drain: {drains}"));
        }
        // The sid search says where the room is.
        c.find(Locator::Id("sid"))
            .await
            .map_err(|e| e.to_string())?
            .send_keys("room-1")
            .await
            .map_err(|e| e.to_string())?;
        c.find(Locator::Css("#find button"))
            .await
            .map_err(|e| e.to_string())?
            .click()
            .await
            .map_err(|e| e.to_string())?;
        within(&c, Duration::from_secs(3), "the room found", async |c| text_of(c, "#found").await.contains(&room_node))
            .await?;
        // The live feed showed the departure (an SFU's arrival is no event: ion's signal
        // must not see SFUs; the list follows the node counts instead).
        let feed = text_of(&c, "#events").await;
        if !feed.contains("delete dc1.joiner") || !feed.contains(&format!("drain dc1.{room_node}")) {
            return Err(format!("the event feed: {feed}"));
        }
        // Readable at 1280x800 (a screenshot for the README when asked) and at phone
        // width: nothing wider than the window.
        if let Some(path) = std::env::var_os("ISLB_CONSOLE_SCREENSHOT") {
            let png = c.screenshot().await.map_err(|e| e.to_string())?;
            std::fs::write(path, png).map_err(|e| e.to_string())?;
        }
        for (w, h) in [(1280, 800), (390, 844)] {
            c.set_window_size(w, h).await.map_err(|e| e.to_string())?;
            let fits = c
                .execute("return document.documentElement.scrollWidth <= window.innerWidth", vec![])
                .await
                .map_err(|e| e.to_string())?;
            if fits != serde_json::Value::Bool(true) {
                return Err(format!("the page is wider than a {w}x{h} window"));
            }
        }
        Ok::<Duration, String>(join)
    }
    .await;
    if result.is_err()
        && let Ok(png) = c.screenshot().await
    {
        let path = workspace_root().join("target/console-failure.png");
        let _ = std::fs::write(&path, png);
        eprintln!("screenshot: {}", path.display());
    }
    let _ = c.close().await;
    let join = result.unwrap_or_else(|why| panic!("{why}"));
    eprintln!("a joining node was listed {join:?} after it registered");
}
