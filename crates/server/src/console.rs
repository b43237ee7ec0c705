//! The operator console: one page, a stylesheet and a script, embedded in the binary (no
//! CDN, no build step), served at `/` and reading only the `/v1` API (and its event
//! stream), with the admin token when one is required.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The console's routes (open: the data behind them is the guarded `/v1` API).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let page = |ctype: &'static str, body: &'static str| {
        move || async move { ([(header::CONTENT_TYPE, ctype), (header::CACHE_CONTROL, "no-cache")], body).into_response() }
    };
    Router::new()
        .route("/", get(page("text/html; charset=utf-8", INDEX)))
        .route("/console.js", get(page("text/javascript; charset=utf-8", SCRIPT)))
        .route("/console.css", get(page("text/css; charset=utf-8", STYLE)))
}
