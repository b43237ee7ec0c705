//! Property tests: random Requests and GetResponses (unicode and empty strings, random
//! maps, every ExtraInfo value type) cross between our codec and Go's both ways.

use islb_gob::{GetResponse, Kind, Message, Node, Request, Rpc, Value, ValueMap};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use crate::golden::{go_decode, go_encode};
use crate::typed;

/// Which values a strategy may produce: Go's typed-JSON encoder (gopeer encode -typed)
/// reads fewer types than gob carries.
#[derive(Clone, Copy)]
enum Scope {
    /// Everything Go's JSON can show (no complex numbers, no NaN or infinities).
    GoJson,
    /// What `gopeer encode -typed` can build.
    IonpeerEncode,
}

fn finite64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

fn finite32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("finite", |f| f.is_finite())
}

fn scalar(scope: Scope) -> BoxedStrategy<Value> {
    let common = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<i8>().prop_map(Value::Int8),
        any::<i16>().prop_map(Value::Int16),
        any::<i32>().prop_map(Value::Int32),
        any::<i64>().prop_map(Value::Int64),
        any::<u64>().prop_map(Value::Uint),
        any::<u8>().prop_map(Value::Uint8),
        any::<u16>().prop_map(Value::Uint16),
        any::<u32>().prop_map(Value::Uint32),
        any::<u64>().prop_map(Value::Uint64),
        finite32().prop_map(Value::Float32),
        finite64().prop_map(Value::Float64),
        any::<String>().prop_map(Value::String),
        "[a-z]{0,3}".prop_map(Value::String),
        vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        vec(any::<String>(), 0..4).prop_map(|v| Value::Slice(Kind::String, v.into_iter().map(Value::String).collect())),
    ];
    match scope {
        Scope::IonpeerEncode => common.boxed(),
        Scope::GoJson => prop_oneof![
            4 => common,
            1 => any::<u64>().prop_map(Value::Uintptr),
            1 => vec(any::<i64>(), 0..4).prop_map(|v| Value::Slice(Kind::Int, v.into_iter().map(Value::Int).collect())),
            1 => vec(finite64(), 0..4).prop_map(|v| Value::Slice(Kind::Float64, v.into_iter().map(Value::Float64).collect())),
            1 => vec(any::<bool>(), 0..4).prop_map(|v| Value::Slice(Kind::Bool, v.into_iter().map(Value::Bool).collect())),
            1 => vec(any::<u16>(), 0..4).prop_map(|v| Value::Slice(Kind::Uint16, v.into_iter().map(Value::Uint16).collect())),
        ]
        .boxed(),
    }
}

fn value(scope: Scope) -> impl Strategy<Value = Value> {
    scalar(scope).prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::List),
            btree_map(any::<String>(), inner, 0..4).prop_map(|m| Value::Map(m.into_iter().collect())),
        ]
    })
}

fn value_map(scope: Scope) -> impl Strategy<Value = ValueMap> {
    btree_map(any::<String>(), value(scope), 0..5).prop_map(|m| m.into_iter().collect())
}

fn node(scope: Scope) -> impl Strategy<Value = Node> {
    (
        any::<String>(),
        "[a-z]{0,6}",
        any::<String>(),
        ("[a-z-]{0,9}", any::<String>(), btree_map(any::<String>(), any::<String>(), 0..3)),
        value_map(scope),
    )
        .prop_map(|(dc, service, nid, (protocol, addr, params), extra_info)| Node {
            dc,
            service,
            nid,
            rpc: Rpc { protocol, addr, params: params.into_iter().collect() },
            extra_info,
        })
}

fn request(scope: Scope) -> impl Strategy<Value = Request> {
    (
        prop_oneof![Just("save"), Just("update"), Just("delete"), Just("get"), Just("")],
        node(scope),
        any::<String>(),
        value_map(scope),
    )
        .prop_map(|(action, node, service, params)| Request { action: action.into(), node, service, params })
}

fn get_response(scope: Scope) -> impl Strategy<Value = GetResponse> {
    vec(node(scope), 0..4).prop_map(|nodes| GetResponse { nodes })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn go_decodes_our_requests(req in request(Scope::GoJson)) {
        prop_assert_eq!(go_decode("request", &req.to_gob()), typed::request(&req));
    }

    #[test]
    fn go_decodes_our_get_responses(resp in get_response(Scope::GoJson)) {
        prop_assert_eq!(go_decode("getresponse", &resp.to_gob()), typed::get_response(&resp));
    }

    #[test]
    fn we_decode_gos_requests(req in request(Scope::IonpeerEncode)) {
        let go = go_encode("request", &typed::request(&req));
        prop_assert_eq!(Request::from_gob(&go).unwrap(), req);
    }

    #[test]
    fn we_decode_gos_get_responses(resp in get_response(Scope::IonpeerEncode)) {
        let go = go_encode("getresponse", &typed::get_response(&resp));
        prop_assert_eq!(GetResponse::from_gob(&go).unwrap(), resp);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Our own round trip, over every value type (complex numbers and NaN included, which
    /// Go's JSON cannot show).
    #[test]
    fn our_round_trip_is_exact(req in request(Scope::GoJson), c in (any::<f64>(), any::<f32>())) {
        let mut req = req;
        req.params.insert("complex".into(), Value::Complex128(c.0, c.0));
        req.params.insert("complex64".into(), Value::Complex64(c.1, c.1));
        let bytes = req.to_gob();
        let back = Request::from_gob(&bytes).unwrap();
        // NaN != NaN, so compare the re-encoding when values are not equal.
        if back != req {
            prop_assert_eq!(back.to_gob(), bytes);
        }
    }
}
