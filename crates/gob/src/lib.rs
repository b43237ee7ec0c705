//! Go `encoding/gob` for ion's node-discovery messages, read and written as Go does.
//!
//! Every ion node talks to the registry in gob with a **fresh encoder per message**, so
//! each NATS payload is self-contained: the type definitions it needs, then one value.
//! This crate decodes such payloads into [`Request`], [`Response`], [`GetResponse`],
//! [`Node`] and [`Rpc`], and encodes them so that Go decodes the same values. It does no
//! I/O; the NATS adapter hands it whole payloads.
//!
//! # The format, as implemented
//!
//! **Primitives.** An unsigned integer below 128 is one byte; a larger one is a byte
//! holding the negated count of bytes that follow (1 to 8), then the big-endian value
//! without leading zero bytes. A signed integer `i` is sent as the unsigned `i << 1`, or
//! `(!i << 1) | 1` when negative. A float is its IEEE-754 bits with the bytes reversed,
//! sent as an unsigned integer (`float32` widens to `float64` first); a complex number is
//! two floats. A string or `[]byte` is a length and the bytes. A bool is 0 or 1.
//!
//! **Messages.** A payload is a sequence of messages, each an unsigned byte count and
//! that many bytes. A message begins with a signed type id: a negative id `-t` announces
//! the definition of type `t` (a value of Go's `wireType` struct), a positive id announces a value of that type. Predefined ids are bool 1, int
//! 2, uint 3, float 4, `[]byte` 5, string 6, complex 7, `interface{}` 8; a message defines
//! its own types from 65 up, and ids mean nothing outside the payload.
//!
//! **Values.** A struct is a sequence of (field-number delta, field value) pairs ending
//! with a zero delta; fields start at -1, so the first field has delta 1; zero values
//! (empty strings, false, 0, empty maps and slices) are left out, nested structs never.
//! A top-level non-struct value is preceded by a zero delta (a "singleton"). A slice is a
//! count and the elements; a map a count and key/element pairs; an array like a slice with
//! a fixed count. Struct fields are matched **by name**: fields the receiver does not
//! know are skipped by their wire type.
//!
//! **Interfaces.** An `interface{}` value is the registered name of its concrete Go type
//! (empty for nil), then the type id (preceded by any definitions it needs), then the
//! byte count of the value, then the value as a singleton. When Go's encoder meets an
//! interface whose concrete type it has not defined yet in the middle of a value, it ends
//! the current message with that definition and goes on with the value in a new message;
//! the decoder therefore reads the next message whenever it needs a type id and the
//! current one is used up. Supported concrete types: every type gob registers by default
//! (all int and uint widths, `uintptr`, floats, complex numbers, bool, string, `[]byte`
//! and the slices of these) plus `[]interface {}` and `map[string]interface {}`, which ion
//! nodes register. They become a [`Value`], which keeps the Go type.
//!
//! # Hostile input
//!
//! Decoding never panics and never allocates more than the payload could hold: every
//! length is checked against the bytes left in its message, every element count against
//! the bytes left in the payload (a map's or slice's elements may continue in the next
//! message, see above). Nesting is
//! bounded and the payload size is limited ([`Limits`]). Errors say what was wrong and at
//! which byte ([`Error`]).
//!
//! # Example
//!
//! ```
//! use islb_gob::{Message, Node, Request};
//!
//! let req = Request { action: "save".into(), node: Node { dc: "dc1".into(), nid: "sfu-1".into(), ..Node::default() }, ..Request::default() };
//! let bytes = req.to_gob();
//! assert_eq!(Request::from_gob(&bytes).unwrap(), req);
//! ```

mod decode;
mod discovery;
mod encode;
mod error;
mod types;
mod value;
mod wire;

pub use decode::Limits;
pub use discovery::{GetResponse, Message, Node, Request, Response, Rpc};
pub use error::{Error, ErrorKind, Result};
pub use value::{Kind, StringMap, Value, ValueMap};

/// Entry points for fuzzers: decode arbitrary bytes as every message type, and check that
/// whatever decodes re-encodes to something that decodes to the same value.
pub mod fuzz_logic {
    use super::*;

    /// Decodes `data` as each message type; panics only if a decoded value does not
    /// survive an encode/decode round trip (a bug), never on bad input.
    pub fn decode_all(data: &[u8]) {
        round_trip::<Request>(data);
        round_trip::<Response>(data);
        round_trip::<GetResponse>(data);
        round_trip::<Node>(data);
        round_trip::<Rpc>(data);
    }

    fn round_trip<T: Message + PartialEq + std::fmt::Debug>(data: &[u8]) {
        if let Ok(v) = T::from_gob(data) {
            let again = T::from_gob(&v.to_gob()).expect("our own encoding must decode");
            // NaN floats are never equal to themselves; compare their encodings instead.
            if again != v {
                assert_eq!(again.to_gob(), v.to_gob(), "round trip changed the value");
            }
        }
    }
}
