//! The registry's replies, encoded: `Response{Success}` and `GetResponse`.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use islb_gob::{GetResponse, Message as _, Node, Response};

/// `Response{Success: true}`, encoded once.
pub(crate) fn ok() -> Bytes {
    static OK: OnceLock<Bytes> = OnceLock::new();
    OK.get_or_init(|| Response { success: true, reason: String::new() }.to_gob().into()).clone()
}

/// `Response{Success: false, Reason: reason}`.
pub(crate) fn rejected(reason: String) -> Bytes {
    Response { success: false, reason }.to_gob().into()
}

/// The gob `GetResponse` listing `nodes`.
pub(crate) fn nodes(nodes: &[Arc<Node>]) -> Bytes {
    GetResponse { nodes: nodes.iter().map(|n| (**n).clone()).collect() }.to_gob().into()
}
