//! Encode and decode cost of one discovery `Request`, the same value `gopeer bench-codec`
//! times with Go's encoding/gob (fresh encoder and decoder per message, as ion does), and
//! of the richest golden vector (every ExtraInfo type).
//!
//! Run: `cargo bench -p islb-gob --bench codec`; `scripts/bench` runs it beside `gopeer
//! bench-codec` (Go's figures, same run) and records both in docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use islb_gob::{Message, Node, Request, Rpc, Value};

/// The Request of `gopeer bench-codec` (interop/gopeer).
fn go_bench_request() -> Request {
    let mut extra = islb_gob::ValueMap::new();
    extra.insert("str".to_owned(), Value::String("x".into()));
    extra.insert("f64".to_owned(), Value::Float64(0.75));
    extra.insert("int".to_owned(), Value::Int(42));
    extra.insert("i64".to_owned(), Value::Int64(-7));
    extra.insert("bool".to_owned(), Value::Bool(true));
    let mut params = islb_gob::StringMap::new();
    params.insert("username".to_owned(), "foo".to_owned());
    params.insert("password".to_owned(), "bar".to_owned());
    Request {
        action: "update".into(),
        node: Node {
            dc: "eu-west".into(),
            service: "rtc".into(),
            nid: "sfu-2".into(),
            rpc: Rpc { protocol: "nats-grpc".into(), addr: "nats://10.0.0.7:4222".into(), params },
            extra_info: extra,
        },
        ..Request::default()
    }
}

fn codec(c: &mut Criterion) {
    let req = go_bench_request();
    let bytes = req.to_gob();
    let mut g = c.benchmark_group("request");
    g.bench_function("encode", |b| b.iter(|| black_box(&req).to_gob()));
    g.bench_function("decode", |b| b.iter(|| Request::from_gob(black_box(&bytes)).unwrap()));
    g.finish();

    let typed =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "//../../interop/vectors/gob/request_save_typed.gob"))
            .expect("golden vector request_save_typed.gob");
    let typed_req = Request::from_gob(&typed).unwrap();
    let mut g = c.benchmark_group("request_save_typed");
    g.bench_function("encode", |b| b.iter(|| black_box(&typed_req).to_gob()));
    g.bench_function("decode", |b| b.iter(|| Request::from_gob(black_box(&typed)).unwrap()));
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
