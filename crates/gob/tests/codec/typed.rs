//! Our values as gopeer's "typed JSON": Go's JSON, with every `interface{}` value written
//! as `{"$type": "<Go type>", "$value": ...}` (interop/README.md).

use islb_gob::{GetResponse, Kind, Node, Request, Response, Rpc, Value, ValueMap};
use serde_json::{Map, Value as Json, json};

pub(crate) fn request(r: &Request) -> Json {
    json!({"Action": r.action, "Node": node(&r.node), "Service": r.service, "Params": value_map(&r.params)})
}

pub(crate) fn response(r: &Response) -> Json {
    json!({"Success": r.success, "Reason": r.reason})
}

pub(crate) fn get_response(r: &GetResponse) -> Json {
    if r.nodes.is_empty() {
        return json!({"Nodes": null});
    }
    json!({"Nodes": r.nodes.iter().map(node).collect::<Vec<_>>()})
}

pub(crate) fn node(n: &Node) -> Json {
    json!({"DC": n.dc, "Service": n.service, "NID": n.nid, "RPC": rpc(&n.rpc), "ExtraInfo": value_map(&n.extra_info)})
}

fn rpc(r: &Rpc) -> Json {
    let params = if r.params.is_empty() {
        Json::Null
    } else {
        json!(r.params.iter().collect::<std::collections::BTreeMap<_, _>>())
    };
    json!({"Protocol": r.protocol, "Addr": r.addr, "Params": params})
}

/// A map as Go's JSON writes it: `null` when empty (gob never sends an empty map, so Go
/// decodes a nil one).
fn value_map(m: &ValueMap) -> Json {
    if m.is_empty() {
        return Json::Null;
    }
    Json::Object(m.iter().map(|(k, v)| (k.clone(), typed(v))).collect::<Map<_, _>>())
}

pub(crate) fn typed(v: &Value) -> Json {
    json!({"$type": v.go_type(), "$value": plain(v)})
}

/// The `$value` part: scalars as Go's JSON writes them, nested interfaces typed again.
/// Go decodes an empty slice as a nil slice, which its JSON writes as `null` (gopeer
/// rebuilds `[]interface {}` as a fresh, empty one: `[]`); an empty map stays `{}`.
fn plain(v: &Value) -> Json {
    match v {
        Value::Bytes(b) if b.is_empty() => Json::Null,
        Value::Slice(_, items) if items.is_empty() => Json::Null,
        Value::Nil => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) | Value::Int64(i) => json!(i),
        Value::Int8(i) => json!(i),
        Value::Int16(i) => json!(i),
        Value::Int32(i) => json!(i),
        Value::Uint(u) | Value::Uint64(u) | Value::Uintptr(u) => json!(u),
        Value::Uint8(u) => json!(u),
        Value::Uint16(u) => json!(u),
        Value::Uint32(u) => json!(u),
        // The float32's exact value (see `canon`).
        Value::Float32(f) => json!(f64::from(*f)),
        Value::Float64(f) => go_float(format!("{f}"), format!("{f:e}"), f.abs()),
        Value::Complex64(..) | Value::Complex128(..) => {
            panic!("Go's JSON cannot write complex numbers")
        }
        Value::String(s) => json!(s),
        Value::Bytes(b) => json!(base64(b)),
        Value::Slice(Kind::Uint8, items) => {
            json!(base64(&items.iter().map(|v| v.as_u64().unwrap() as u8).collect::<Vec<_>>()))
        }
        Value::Slice(_, items) => Json::Array(items.iter().map(plain).collect()),
        Value::List(items) => Json::Array(items.iter().map(typed).collect()),
        Value::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), typed(v))).collect()),
    }
}

/// A float as Go's JSON spells it (shortest digits; plain notation from 1e-6 to 1e21,
/// exponent notation outside), read back as JSON, so that a whole float such as 2.5e17
/// becomes the same integer token on both sides.
fn go_float(shortest_plain: String, shortest_exp: String, abs: f64) -> Json {
    let text = if abs == 0.0 || (1e-6..1e21).contains(&abs) { shortest_plain } else { shortest_exp };
    serde_json::from_str(&text).unwrap()
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_go() {
    assert_eq!(base64(&[1, 2]), "AQI=");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"f"), "Zg==");
}

/// `json` with every float32 `$value` written as the exact value of the float32 it names.
/// Go and Rust both write the shortest text that reads back as the same float32, but when
/// two texts are equally short and equally near (2100175.2 and 2100175.3 both name
/// 2100175.25f32) they may choose differently; the float32 is what must agree.
pub(crate) fn canon(json: Json) -> Json {
    match json {
        Json::Object(m) => {
            let float32 = m.get("$type").and_then(Json::as_str) == Some("float32");
            Json::Object(
                m.into_iter()
                    .map(|(k, v)| match (&v, float32 && k == "$value") {
                        (Json::Number(n), true) => (k, json!(f64::from(n.as_f64().unwrap_or(f64::NAN) as f32))),
                        _ => (k, canon(v)),
                    })
                    .collect(),
            )
        }
        Json::Array(items) => Json::Array(items.into_iter().map(canon).collect()),
        other => other,
    }
}
