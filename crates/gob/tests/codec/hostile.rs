//! Hostile input is normal input: every truncation and thousands of bit flips of every
//! golden vector, random bytes, absurd lengths and deep nesting end in `Ok` or a clear
//! `Err`, never a panic or a large allocation.

use islb_gob::{ErrorKind, GetResponse, Limits, Message, Node, Request, Value, ValueMap, fuzz_logic};

use crate::golden::vectors;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn every_truncation_of_every_vector_is_an_error_not_a_panic() {
    for (name, _, bytes, _) in vectors() {
        for len in 0..bytes.len() {
            fuzz_logic::decode_all(&bytes[..len]);
            // Cutting a message short always breaks it: the last message's length is wrong.
            assert!(Request::from_gob(&bytes[..len]).is_err() || name.starts_with("request") && len == bytes.len());
        }
    }
}

#[test]
fn thousands_of_bit_flips_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut decoded = 0;
    let mut total = 0;
    for (_, _, bytes, _) in vectors() {
        for _ in 0..400 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.next() % 3 {
                let bit = (rng.next() % (b.len() as u64 * 8)) as usize;
                b[bit / 8] ^= 1 << (bit % 8);
            }
            fuzz_logic::decode_all(&b);
            total += 1;
            decoded += usize::from(Request::from_gob(&b).is_ok() || GetResponse::from_gob(&b).is_ok());
        }
    }
    assert!(total >= 6000, "{total} flips");
    // Many flips land in string contents and still decode: the decoder is not just
    // rejecting everything.
    assert!(decoded > total / 20, "only {decoded} of {total} flipped messages decoded");
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for len in 0..2000 {
        let data: Vec<u8> = (0..len % 300).map(|_| rng.next() as u8).collect();
        fuzz_logic::decode_all(&data);
    }
}

#[test]
fn a_count_of_two_to_the_40_is_an_error_not_an_allocation() {
    // A Request whose Params map claims 2^40 entries.
    let mut req = Request { action: "get".into(), service: "rtc".into(), ..Request::default() };
    req.params.insert("sid".into(), "x".into());
    let mut bytes = req.to_gob();
    // The value message ends with: ... Params delta, count 1, key, interface. Find the
    // count byte (0x01) right before the key "sid".
    let key = bytes.windows(4).rposition(|w| w == b"\x03sid").unwrap();
    assert_eq!(bytes[key - 1], 1);
    let huge = [0xfb, 0x01, 0x00, 0x00, 0x00, 0x00]; // 2^40 as a gob uint
    bytes.splice(key - 1..key, huge);
    // (The value message's length prefix now undercounts by 5 bytes; the count is read
    // and refused before that matters.)
    let err = Request::from_gob(&bytes).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::LengthTooLarge { .. }), "expected a length error, got {err}");
}

#[test]
fn oversized_payloads_are_refused_before_decoding() {
    let bytes = Request::default().to_gob();
    let limits = Limits { max_size: bytes.len() - 1, ..Limits::default() };
    let err = Request::from_gob_with(&bytes, &limits).unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooLarge { size: bytes.len(), limit: bytes.len() - 1 });
    assert_eq!(err.offset, 0);
}

#[test]
fn nesting_deeper_than_the_limit_is_an_error() {
    let mut v = Value::String("bottom".into());
    for _ in 0..100 {
        v = Value::List(vec![v]);
    }
    let mut node = Node::default();
    node.extra_info.insert("deep".into(), v);
    let req = Request { action: "save".into(), node, ..Request::default() };
    let bytes = req.to_gob();
    let err = Request::from_gob(&bytes).unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooDeep(64));
    let deep_enough = Limits { max_depth: 300, ..Limits::default() };
    assert_eq!(Request::from_gob_with(&bytes, &deep_enough).unwrap(), req);
}

#[test]
fn an_unregistered_interface_type_is_an_error_naming_it() {
    let mut params = ValueMap::new();
    params.insert("sid".into(), "room".into());
    let req = Request { action: "get".into(), params, ..Request::default() };
    let mut bytes = req.to_gob();
    let at = bytes.windows(7).position(|w| w == b"\x06string").unwrap();
    bytes[at + 1..at + 7].copy_from_slice(b"main.X");
    let err = Request::from_gob(&bytes).unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnregisteredInterfaceType("main.X".into()));
    assert_eq!(err.offset, at, "the offset points at the type name");
    assert!(err.to_string().contains("\"main.X\""), "{err}");
}

#[test]
fn a_value_out_of_range_for_its_go_type_is_an_error() {
    let mut params = ValueMap::new();
    params.insert("n".into(), Value::Int32(100_000));
    let mut bytes = Request { params, ..Request::default() }.to_gob();
    // Same length name, narrower type: Go refuses 100000 as an int16, so do we.
    let at = bytes.windows(6).position(|w| w == b"\x05int32").unwrap();
    bytes[at + 1..at + 6].copy_from_slice(b"int16");
    let err = Request::from_gob(&bytes).unwrap_err();
    assert_eq!(err.kind, ErrorKind::OutOfRange("int16"));
}

#[test]
fn a_response_is_not_a_request() {
    let bytes = islb_gob::Response { success: true, reason: String::new() }.to_gob();
    let err = Request::from_gob(&bytes).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NoFieldsMatched("Request"));
}

#[test]
fn a_field_of_the_wrong_type_is_a_mismatch() {
    // A Go struct named Request whose Node field is a string.
    let mut bytes = Request::default().to_gob();
    // In the Request definition, field "Node" has type id 66 (ff84); make it string (0c).
    let at = bytes.windows(6).position(|w| w == b"\x04Node\x01").unwrap() + 6;
    assert_eq!(&bytes[at..at + 2], &[0xff, 0x84]);
    bytes.splice(at..at + 2, [0x0c]);
    bytes[0] -= 1; // that definition message is one byte shorter
    let err = Request::from_gob(&bytes).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::TypeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("Request.Node"), "{err}");
}
