//! Every golden vector (bytes from Go's encoder) decodes to the value in its JSON; our
//! encoding of each value decodes in Go (gopeer) to the same JSON; Go's encoding of the
//! JSON decodes with ours to the same value.

use std::path::PathBuf;

use islb_gob::{GetResponse, Message, Request, Response};
use islb_testkit::{gopeer_run, workspace_root};
use serde_json::Value as Json;

use crate::typed;

pub(crate) fn vectors_dir() -> PathBuf {
    workspace_root().join("interop/vectors/gob")
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
        let json = typed::canon(serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap());
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
    let out = gopeer_run(args, bytes);
    assert!(out.status.success(), "Go could not decode our {kind}: {}", String::from_utf8_lossy(&out.stderr));
    typed::canon(serde_json::from_slice(&out.stdout).expect("gopeer prints JSON"))
}

/// Go's encoding of the typed JSON `json` as `kind`.
pub(crate) fn go_encode(kind: &str, json: &Json) -> Vec<u8> {
    let args: &[&str] = if kind == "response" { &["encode", kind] } else { &["encode", "-typed", kind] };
    let out = gopeer_run(args, json.to_string().as_bytes());
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

/// The file names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "README.md")
        .collect();
    n.sort();
    n
}

/// The vectors in the repository are what the Go peer generates today: the same files,
/// the same JSON, and gob bytes that Go decodes to the same values (Go writes map entries
/// in random order, so the bytes of a vector with a map differ from run to run).
#[test]
fn the_golden_vectors_are_what_the_go_peer_generates_now() {
    let fresh = tempfile::tempdir().unwrap();
    let out = islb_testkit::gopeer_run(&["vectors", fresh.path().to_str().unwrap()], b"");
    assert!(out.status.success(), "gopeer vectors: {}", String::from_utf8_lossy(&out.stderr));
    let committed = vectors_dir();
    assert_eq!(names(fresh.path()), names(&committed), "regenerate with: target/gopeer vectors interop/vectors/gob");
    for name in names(&committed) {
        let (old, new) =
            (std::fs::read(committed.join(&name)).unwrap(), std::fs::read(fresh.path().join(&name)).unwrap());
        if name.ends_with(".json") {
            assert_eq!(String::from_utf8(new).unwrap(), String::from_utf8(old).unwrap(), "{name} drifted");
        } else {
            let stem = name.trim_end_matches(".gob");
            let kind = vectors().into_iter().find(|v| v.0 == stem).unwrap().1;
            assert_eq!(go_decode(kind, &new), go_decode(kind, &old), "{name} drifted");
        }
    }
}

/// Go ends a message in the middle of a value when an `interface{}` in it needs a type
/// Go has not defined yet (say a `[]string` in ExtraInfo), and goes on in the next
/// message; where that happens depends on Go's random map order. A 23-entry map whose
/// first message ended early was refused as "length 23 exceeds the 44 bytes left" (the
/// count was checked against the first message only). Go's encoding of every vector, many
/// times over (so the split falls in many places), decodes to the vector's value.
#[test]
fn values_that_go_on_in_the_next_message_decode_wherever_go_splits_them() {
    for (name, kind, _, expected) in vectors() {
        if !expected.to_string().contains("\"[]string\"") {
            continue;
        }
        for round in 0..20 {
            let go = go_encode(kind, &expected);
            let (got, _) = ours(kind, &go).unwrap_or_else(|e| panic!("{name}, round {round}: {e}"));
            assert_eq!(got, expected, "{name}, round {round}");
        }
    }
}
