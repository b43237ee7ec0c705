//! nats-grpc ("nrpc"): gRPC calls carried over NATS, wire-compatible with
//! `cloudwebrtc/nats-grpc` (v0.1.12, v1.0.0 and main), the transport ion's nodes serve
//! gRPC on. docs/RPC.md is the contract.
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

/// Entry points for fuzzers, shared with the property tests: read arbitrary bytes as the
/// server reads a request frame, and check that whatever reads re-encodes to the same.
pub mod fuzz_logic {
    use bytes::Bytes;

    use crate::frame::{self, Inbound};

    /// Reads `data` as a request frame (limit 1 KiB), and its text as an inbox and a
    /// subject; panics only on a bug (a frame that does not survive our own re-encoding),
    /// never on bad input.
    pub fn request_frame(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let _ = crate::table::peer_key("", &text);
        let _ = crate::table::peer_key(&text, "_INBOX.x");
        let _ = crate::subject::method_of("nrpc.n.s", &text);
        let _ = crate::subject::split_path(&text);
        match frame::read_request(Bytes::copy_from_slice(data), 1024) {
            Inbound::Call(call) => {
                let md = frame::from_proto(call.metadata.as_ref());
                let again = frame::read_request(frame::call(&call.method, &md, &call.nid), usize::MAX);
                let Inbound::Call(back) = again else { panic!("a call re-read as {again:?}") };
                assert_eq!((back.method, back.nid), (call.method, call.nid));
                assert_eq!(frame::from_proto(back.metadata.as_ref()), md, "metadata changed");
            }
            Inbound::Data(msg) => {
                let again = frame::read_request(frame::request_data(msg.clone()), usize::MAX);
                let want = frame::payload(msg);
                assert_eq!(again, Inbound::Data(want), "data changed");
            }
            Inbound::End { cancel: false } => {
                assert_eq!(frame::read_request(frame::request_end(None), 0), Inbound::End { cancel: false });
            }
            Inbound::Oversized { .. } | Inbound::Malformed(_) | Inbound::End { .. } | Inbound::Empty => {}
        }
    }
}
