//! End-to-end tests: the real `islb` binary, a real nats-server per test, gopeer (Go's
//! own gob and nats.go) as the peer.

mod api;
mod console;
mod foundation;
mod harness;
mod jetstream;
mod nats;
mod packaging;
mod placement;
mod registry;
mod rpc;
mod security;
mod storage;
