//! nats-grpc ("nrpc"): gRPC calls carried over NATS, wire-compatible with
//! `cloudwebrtc/nats-grpc` (v0.1.12, v1.0.0 and main), the transport ion's nodes serve
//! gRPC on. shared/protocol/nrpc.md is the contract.
//!
//! - [`frame`] and [`subject`]: the envelopes (`nrpc.Request`/`nrpc.Response`, from
//!   `islb-proto`) and subject rules; pure.
//! - [`status`]: gRPC status codes and `google.rpc.Status`.
//! - [`server`]: a [`Server`] of [`Service`]s on async-nats, with per-call state keyed by
//!   reply inbox, in-order frame handling, cancellation, idle-call cleanup and fair
//!   limits (the call table and its admission rules are `table`).
//! - [`client`]: a [`Client`] for unary calls and streams of any kind.
//! - [`barrier`]: waits until the NATS server has read a connection's subscriptions.

pub mod barrier;
pub mod client;
pub mod frame;
pub mod reflection;
pub mod server;
pub mod status;
pub mod subject;
mod table;

pub use barrier::{BarrierError, barrier};
pub use client::{Client, ClientStream};
pub use frame::Metadata;
pub use server::{CallInfo, Incoming, Outgoing, Running, Server, ServerConfig, Service};
pub use status::{Code, Status};
