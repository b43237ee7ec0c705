//! Go's bytes from a newer peer: the discovery types with fields islb does not know, of
//! every wire kind (struct, map, slice, array, scalars), interleaved with the known ones.
//! Go skips what its target lacks; so must we. The vectors are written by Go's own
//! encoding/gob: `go run crates/gob/tests/go/newer_peer.go crates/gob/tests/vectors`.

use islb_gob::{GetResponse, Message as _, Node, Request, Rpc, Value};

fn vector(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the known fields of `node(nid)` in newer_peer.go hold.
fn node(nid: &str) -> Node {
    Node {
        dc: "dc1".into(),
        service: "rtc".into(),
        nid: nid.into(),
        rpc: Rpc {
            protocol: "nats-grpc".into(),
            addr: "nats://10.0.0.7:4222".into(),
            params: [("k".to_owned(), "v".to_owned())].into_iter().collect(),
        },
        extra_info: [("load".to_owned(), Value::Float64(0.25)), ("sessions".to_owned(), Value::Int64(7))]
            .into_iter()
            .collect(),
    }
}

#[test]
fn a_request_with_unknown_fields_of_every_kind_decodes_to_its_known_fields() {
    let got = Request::from_gob(&vector("newer_peer_request.gob")).unwrap();
    let want = Request {
        action: "update".into(),
        node: node("sfu-9"),
        service: "rtc".into(),
        params: [("sid".to_owned(), Value::String("room-1".into()))].into_iter().collect(),
    };
    assert_eq!(got, want);
}

#[test]
fn a_get_response_with_unknown_fields_decodes_to_its_known_fields() {
    let got = GetResponse::from_gob(&vector("newer_peer_getresponse.gob")).unwrap();
    assert_eq!(got, GetResponse { nodes: vec![node("sfu-1"), node("sfu-2")] });
}

#[test]
fn every_truncation_of_a_newer_peers_message_is_an_error_not_a_panic() {
    let req = vector("newer_peer_request.gob");
    for end in 0..req.len() {
        assert!(Request::from_gob(&req[..end]).is_err(), "request[..{end}]");
    }
    let resp = vector("newer_peer_getresponse.gob");
    for end in 0..resp.len() {
        assert!(GetResponse::from_gob(&resp[..end]).is_err(), "getresponse[..{end}]");
    }
}
