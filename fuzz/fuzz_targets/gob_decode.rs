//! Decodes arbitrary bytes as every discovery message type. Fails on a panic or when a
//! decoded value does not survive our own encode/decode round trip.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run gob_decode -- -max_total_time=60`
//! (seed corpus: `cp ../interop/vectors/gob/*.gob corpus/gob_decode/`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    islb_gob::fuzz_logic::decode_all(data);
});
