//! Reads arbitrary bytes as an islb config file. Fails on a panic, on an invalid
//! configuration accepted, or on an error that is not one line.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run config_text -- -max_total_time=60`
//! (the property tests run the same logic in the normal test run).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    islb_server::config::fuzz_logic::config_text(data);
});
