//! The registry shell (`islb-server`), one test binary:
//!
//! - `clock_*`: expiry, keep-alive batching, drain deadlines, idle release and recovery
//!   after a store outage, on a paused tokio clock (no NATS: the service publishes into
//!   a `MemoryOutbox`, reads the time from a `TokioClock`, and stores in memory);
//! - `containment`: a panic costs one request, a dead task shows in `/readyz`;
//! - `instrumented_store`: lost expiry claims and shared change-feed reads, with real
//!   servers.

mod api;
mod clock_batching;
mod clock_expiry;
mod clock_recovery;
mod clock_sessions;
mod containment;
mod instrumented_store;
mod layers;
mod support;
