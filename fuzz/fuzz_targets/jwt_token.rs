//! Reads arbitrary bytes as a session token (jsonwebtoken), without and with a key. Fails
//! on a panic or on a token accepted whose signature does not verify.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run jwt_token -- -max_total_time=60`
//! (the property tests run the same logic in the normal test run).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    islb_server::tokens::fuzz_logic::token(data);
});
