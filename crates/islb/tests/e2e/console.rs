//! The operator console in a real browser: Debian's headless chromium driven over
//! WebDriver (chromedriver), against the real binary with SFUs kept alive by the Go peer.
//! On a failure the page is saved as `target/console-failure.png`.

use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use islb_testkit::{NatsServer, Proc, free_port, gopeer, workspace_root};

use crate::harness::{Islb, Peer, ion_node, lookup};

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
    rows_matching(c, &format!("tr[data-node^=\"dc1.{prefix}\"]")).await
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Headless chromium under chromedriver, at a 1280x800 window; `None` (the test says it
/// is skipped) where neither is installed.
async fn browser() -> Option<(Client, Proc)> {
    let (Some(chromium), Some(driver)) = (tool("chromium"), tool("chromedriver")) else {
        eprintln!(
            "SKIPPED: chromium and chromedriver are not installed (Debian: chromium chromium-driver; scripts/test installs them)"
        );
        return None;
    };
    let port = free_port();
    let mut cmd = Command::new(driver);
    cmd.arg(format!("--port={port}"));
    let driver = Proc::spawn("chromedriver", cmd);
    let caps = serde_json::json!({ "goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"],
    }});
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(caps.as_object().unwrap().clone());
    for _ in 0..50 {
        match builder.connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(c) => return Some((c, driver)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("chromedriver does not answer");
}

/// `result` of a test run in `c`, with the page saved to `target/console-failure.png`
/// when it failed; the browser is closed.
async fn finish<T>(c: Client, result: Result<T, String>) -> T {
    if result.is_err()
        && let Ok(png) = c.screenshot().await
    {
        let path = workspace_root().join("target/console-failure.png");
        let _ = std::fs::write(&path, png);
        eprintln!("screenshot: {}", path.display());
    }
    let _ = c.close().await;
    result.unwrap_or_else(|why| panic!("{why}"))
}

async fn click(c: &Client, css: &str) -> Result<(), String> {
    let e = c.find(Locator::Css(css)).await.map_err(|e| format!("{css}: {e}"))?;
    e.click().await.map_err(|e| format!("{css}: {e}"))
}

#[tokio::test]
async fn the_console_lists_nodes_live_drains_from_its_button_and_finds_a_room() {
    let Some((c, _driver)) = browser().await else { return };
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
        // A room placed now: in the feed, and counted in place (no reload).
        let on = lookup(&peer, "room-2").await.remove(0);
        within(&c, Duration::from_secs(3), "the placement in the feed and the counts", async |c| {
            text_of(c, "#events").await.contains(&format!("session room-2 placed on {on}"))
                && text_of(c, "#groups").await.contains("dc1 · rtc — 3 nodes, 2 sessions")
        })
        .await?;
        // Drain from the button.
        click(&c, &format!("button[aria-label=\"Drain dc1.{room_node}\"]")).await?;
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
        click(&c, "#find button").await?;
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
    let join = finish(c, result).await;
    eprintln!("a joining node was listed {join:?} after it registered");
}

/// With 10,000 nodes (two DCs of SFUs and signals, and islb) the console lists every group with its
/// totals but draws 200 rows of each, finds one node by the filter, expands a group on
/// request, and follows placements without fetching the list again.
#[tokio::test]
async fn the_console_stays_usable_with_ten_thousand_nodes() {
    use futures::StreamExt;
    let Some((c, _driver)) = browser().await else { return };
    let nats = NatsServer::start();
    let islb = Islb::start(&nats, &["--expire", "10m"]);
    let peer = Peer::connect(&nats).await;
    let nodes: Vec<_> = (0..10_000)
        .map(|i| {
            let mut n = ion_node(if i % 5 == 0 { "signal" } else { "rtc" }, &format!("n{i:05}"));
            n.dc = if i % 2 == 0 { "dc1" } else { "dc2" }.into();
            n
        })
        .collect();
    futures::stream::iter(&nodes)
        .for_each_concurrent(64, |n| async { assert!(peer.send("save", n).await.success, "{}", n.nid) })
        .await;

    let result = async {
        let start = Instant::now();
        c.goto(&format!("http://{}/", islb.http)).await.map_err(|e| e.to_string())?;
        let loaded = within(&c, Duration::from_secs(30), "10,000 nodes listed", async |c| {
            text_of(c, "#count").await == "(10001 of 10001)"
        })
        .await?;
        let groups = text_of(&c, "#groups").await;
        for heading in ["dc1 · rtc — 4000 nodes", "dc1 · signal — 1000 nodes", "dc2 · rtc — 4000 nodes"] {
            if !groups.contains(heading) {
                return Err(format!("no {heading:?} in the groups"));
            }
        }
        // islb itself, and 200 rows of each group of 1,000 or more.
        let drawn = rows_matching(&c, "tr[data-node]").await;
        if drawn != 1 + 4 * 200 {
            return Err(format!("{drawn} rows drawn, not islb's and 200 for each of the 4 large groups"));
        }
        // How long one full drawing of the listing takes in the page.
        let draw = c
            .execute("const t = performance.now(); render(); return performance.now() - t;", vec![])
            .await
            .map_err(|e| e.to_string())?;
        // The filter finds one node among 10,000.
        let typed = Instant::now();
        c.find(Locator::Id("filter")).await.map_err(|e| e.to_string())?.send_keys("n01234").await.map_err(|e| e.to_string())?;
        let filtered = within(&c, Duration::from_secs(5), "one node left by the filter", async |c| {
            text_of(c, "#count").await == "(1 of 10001)" && rows_matching(c, "tr[data-node]").await == 1
        })
        .await
        .map(|_| typed.elapsed())?;
        c.find(Locator::Id("filter")).await.map_err(|e| e.to_string())?.clear().await.map_err(|e| e.to_string())?;
        // A placement counts in place, with no second fetch of 10,000 nodes.
        let fetched = |c: &Client| {
            let c = c.clone();
            async move {
                c.execute("performance.setResourceTimingBufferSize(100000); return performance.getEntriesByType('resource').filter((e) => e.name.includes('/v1/nodes')).length", vec![])
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let before = fetched(&c).await?;
        let on = lookup(&peer, "big-room").await.remove(0);
        within(&c, Duration::from_secs(3), "the placement counted", async |c| {
            text_of(c, "#groups").await.contains("rtc — 4000 nodes, 1 sessions")
                && text_of(c, "#events").await.contains(&format!("placed on {on}"))
        })
        .await?;
        if fetched(&c).await? != before {
            return Err("a placement fetched the node list again".into());
        }
        // "Show all" draws a whole group (the first: dc1's SFUs).
        click(&c, "#groups > button").await?;
        within(&c, Duration::from_secs(10), "a group shown whole", async |c| {
            rows_matching(c, "tr[data-node]").await == 1 + 4000 + 3 * 200
        })
        .await?;
        Ok::<_, String>((start.elapsed(), loaded, draw, filtered))
    }
    .await;
    let (total, loaded, draw, filtered) = finish(c, result).await;
    eprintln!(
        "10,000 nodes: listed {loaded:?} after the page was asked for ({total:?} in all), one drawing {draw} ms, filtered to one in {filtered:?}"
    );
}

async fn rows_matching(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}
