//! Every golden vector (bytes from Go's encoder) decodes to the value in its JSON; our
//! encoding of each value decodes in Go (ionpeer) to the same JSON; Go's encoding of the
//! JSON decodes with ours to the same value.

use std::path::PathBuf;

use islb_gob::{GetResponse, Message, Request, Response};
use islb_testkit::{ionpeer_run, workspace_root};
use serde_json::Value as Json;

use crate::typed;

pub(crate) fn vectors_dir() -> PathBuf {
    workspace_root().join("../shared/vectors/gob")
}

/// (name, kind, gob bytes, expected typed JSON)
pub(crate) fn vectors() -> Vec<(String, &'static str, Vec<u8>, Json)> {
    let dir = vectors_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "gob") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let kind = if name.starts_with("request") {
            "request"
        } else if name.starts_with("getresponse") {
            "getresponse"
        } else {
            "response"
        };
        let json_path =
            if kind == "response" { dir.join(format!("{name}.json")) } else { dir.join(format!("{name}.typed.json")) };
        let json = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        out.push((name, kind, std::fs::read(&path).unwrap(), json));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 16, "expected the 16 golden vectors, found {}", out.len());
    out
}

/// Decodes `bytes` as `kind` with our decoder and renders typed JSON; also returns our
/// re-encoding.
pub(crate) fn ours(kind: &str, bytes: &[u8]) -> Result<(Json, Vec<u8>), islb_gob::Error> {
    Ok(match kind {
        "request" => {
            let v = Request::from_gob(bytes)?;
            (typed::request(&v), v.to_gob())
        }
        "getresponse" => {
            let v = GetResponse::from_gob(bytes)?;
            (typed::get_response(&v), v.to_gob())
        }
        _ => {
            let v = Response::from_gob(bytes)?;
            (typed::response(&v), v.to_gob())
        }
    })
}

/// Go's decoding of `bytes` as `kind`, as typed JSON.
pub(crate) fn go_decode(kind: &str, bytes: &[u8]) -> Json {
    let args: &[&str] = if kind == "response" { &["decode", kind] } else { &["decode", "-typed", kind] };
    let out = ionpeer_run(args, bytes);
    assert!(out.status.success(), "Go could not decode our {kind}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("ionpeer prints JSON")
}

/// Go's encoding of the typed JSON `json` as `kind`.
pub(crate) fn go_encode(kind: &str, json: &Json) -> Vec<u8> {
    let args: &[&str] = if kind == "response" { &["encode", kind] } else { &["encode", "-typed", kind] };
    let out = ionpeer_run(args, json.to_string().as_bytes());
    assert!(out.status.success(), "Go could not encode {json}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn every_vector_decodes_to_its_json() {
    for (name, kind, bytes, expected) in vectors() {
        let (got, _) = ours(kind, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn go_decodes_our_encoding_of_every_vector_to_the_same_json() {
    for (name, kind, bytes, expected) in vectors() {
        let (_, ours) = ours(kind, &bytes).unwrap();
        assert_eq!(go_decode(kind, &ours), expected, "{name}: Go's view of our encoding");
    }
}

#[test]
fn we_decode_gos_encoding_of_every_vector_json() {
    for (name, kind, _, expected) in vectors() {
        let go = go_encode(kind, &expected);
        let (got, _) = ours(kind, &go).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, expected, "{name}: our view of Go's encoding");
    }
}

/// Without maps (whose order Go randomises) a fresh Go encoder and ours write the same
/// bytes: same type ids, same definitions, same field order.
#[test]
fn map_free_messages_are_byte_identical_to_go() {
    let mut compared = 0;
    for (name, kind, bytes, expected) in vectors() {
        if kind == "getresponse" || expected.to_string().contains("$type") || name == "request_update_full" {
            continue;
        }
        let (_, ours) = ours(kind, &bytes).unwrap();
        assert_eq!(ours, go_encode(kind, &expected), "{name}: bytes differ from a fresh Go encoder");
        compared += 1;
    }
    assert!(compared >= 8, "only {compared} vectors compared");
}
