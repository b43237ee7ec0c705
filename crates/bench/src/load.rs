//! What the load generators share: the node shape they register, and measures.

use std::time::Duration;

use anyhow::Context;
use islb_gob::{Message as _, Node, Request, Rpc, Value};

/// A node of the shape `gopeer bench-update` registers: ion's SFU registration with one
/// RPC param and three ExtraInfo values (a string, a float, an int64).
pub(crate) fn node(i: usize) -> Node {
    let mut n = Node {
        dc: format!("dc{}", i % 3),
        service: "rtc".into(),
        nid: format!("bench-{i}"),
        rpc: Rpc { protocol: "nats-grpc".into(), addr: "nats://127.0.0.1:4222".into(), ..Rpc::default() },
        ..Node::default()
    };
    n.rpc.params.insert("k".into(), "v".into());
    n.extra_info.insert("region".into(), Value::String("eu".into()));
    n.extra_info.insert("load".into(), Value::Float64(0.25));
    n.extra_info.insert("peers".into(), Value::Int64(3));
    n
}

/// The subject and payload of a `save` of `n`, as ion's nodes send it.
pub(crate) fn save(n: Node) -> (String, bytes::Bytes) {
    let subject = format!("node.publish.{}.{}.{}", n.service, n.dc, n.nid);
    (subject, Request { action: "save".into(), node: n, ..Request::default() }.to_gob().into())
}

/// The `f` quantile of sorted, non-empty `sorted`.
pub(crate) fn quantile(sorted: &[Duration], f: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * f) as usize]
}

pub(crate) fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")?;
    Ok(kb * 1024)
}
