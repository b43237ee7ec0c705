//! Reads arbitrary bytes as an nrpc request frame, as islb's server does. Fails on a
//! panic or when a frame that reads does not survive our own re-encoding.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run nrpc_frame -- -max_total_time=60`
//! (the property tests run the same logic in the normal test run).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    islb_nrpc::fuzz_logic::request_frame(data);
});
