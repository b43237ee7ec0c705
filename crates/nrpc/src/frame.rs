//! Frames: building and reading the `nrpc.Request` / `nrpc.Response` envelopes, metadata,
//! and the padding that keeps empty messages from reading as end-of-stream at Go peers.

use std::collections::BTreeMap;

use bytes::Bytes;
use islb_proto::nrpc::{self, request, response};
use prost::Message;

use crate::status::Status;

/// gRPC metadata: each key with its values (keys are lower-case in gRPC).
pub type Metadata = BTreeMap<String, Vec<String>>;

/// Appended to a message that encodes to zero bytes: an unknown field (number 2047,
/// varint 0) that every protobuf decoder skips. nats-grpc v0.1.12 and v1.0.0 (ion's
/// versions) read a `Data` frame with an empty payload as end-of-stream, so islb never
/// sends one.
pub const EMPTY_PADDING: [u8; 3] = [0xf8, 0x7f, 0x00];

/// The payload of a `Data` frame for `msg`: `msg`, or [`EMPTY_PADDING`] if it is empty.
pub fn payload(msg: Bytes) -> Bytes {
    if msg.is_empty() { Bytes::from_static(&EMPTY_PADDING) } else { msg }
}

pub(crate) fn to_proto(md: &Metadata) -> Option<nrpc::Metadata> {
    (!md.is_empty()).then(|| nrpc::Metadata {
        md: md.iter().map(|(k, v)| (k.clone(), nrpc::Strings { values: v.clone() })).collect(),
    })
}

/// The metadata of a `call` frame, as a map (empty when it has none).
pub fn from_proto(md: Option<&nrpc::Metadata>) -> Metadata {
    md.map(|m| m.md.iter().map(|(k, v)| (k.clone(), v.values.clone())).collect()).unwrap_or_default()
}

/// The first byte of a `Request` holding a `call` (field 2, length-delimited).
const CALL_TAG: u8 = 0x12;

/// Room a frame may take beyond its message: the envelope's tags and lengths.
pub const ENVELOPE_SLACK: usize = 64;

/// A request frame as the server reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Larger than the message limit allows (not decoded); `call`: it looks like a `call`
    /// frame, the only kind answered when no call is open on its inbox.
    Oversized {
        /// `RESOURCE_EXHAUSTED`, saying the sizes.
        status: Status,
        /// Whether its first byte is a `call`'s tag.
        call: bool,
    },
    /// Not an `nrpc.Request` (`INVALID_ARGUMENT`).
    Malformed(Status),
    /// Opens a call.
    Call(nrpc::Call),
    /// A request message.
    Data(Bytes),
    /// `end`: a half-close, or with a status (`cancel`) a cancel.
    End {
        /// Whether it carried a status.
        cancel: bool,
    },
    /// A `Request` with no frame in it.
    Empty,
}

/// Reads a request frame (pure: the server decides what to do with it).
pub fn read_request(payload: Bytes, max_message_size: usize) -> Inbound {
    if payload.len() > max_message_size.saturating_add(ENVELOPE_SLACK) {
        let status = Status::resource_exhausted(format!(
            "frame of {} bytes exceeds the limit of {max_message_size} bytes",
            payload.len()
        ));
        return Inbound::Oversized { status, call: payload.first() == Some(&CALL_TAG) };
    }
    match nrpc::Request::decode(payload) {
        Err(e) => Inbound::Malformed(Status::invalid_argument(format!("malformed nrpc frame: {e}"))),
        Ok(f) => match f.r#type {
            Some(request::Type::Call(call)) => Inbound::Call(call),
            Some(request::Type::Data(d)) => Inbound::Data(Bytes::from(d.data)),
            Some(request::Type::End(end)) => Inbound::End { cancel: end.status.is_some() },
            None => Inbound::Empty,
        },
    }
}

fn encode(m: &impl Message) -> Bytes {
    m.encode_to_vec().into()
}

/// `Request{call{method, metadata, nid}}`.
pub fn call(method: &str, md: &Metadata, nid: &str) -> Bytes {
    encode(&nrpc::Request {
        r#type: Some(request::Type::Call(nrpc::Call {
            method: method.to_owned(),
            metadata: to_proto(md),
            nid: nid.to_owned(),
        })),
    })
}

/// `Request{data{msg}}` (padded when empty).
pub fn request_data(msg: Bytes) -> Bytes {
    encode(&nrpc::Request { r#type: Some(request::Type::Data(nrpc::Data { data: payload(msg).to_vec() })) })
}

/// `Request{end{}}` (half-close), or with a status (cancel).
pub fn request_end(cancel: Option<&Status>) -> Bytes {
    encode(&nrpc::Request {
        r#type: Some(request::Type::End(nrpc::End { status: cancel.map(Status::to_proto), trailer: None })),
    })
}

/// `Response{data{msg}}` (padded when empty).
pub fn response_data(msg: Bytes) -> Bytes {
    encode(&nrpc::Response { r#type: Some(response::Type::Data(nrpc::Data { data: payload(msg).to_vec() })) })
}

/// `Response{end{}}` on success (no status: a status, even code 0, is an error to Go), or
/// `Response{end{status}}`.
pub fn response_end(result: &Result<(), Status>) -> Bytes {
    let status = result.as_ref().err().map(Status::to_proto);
    encode(&nrpc::Response { r#type: Some(response::Type::End(nrpc::End { status, trailer: None })) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn success_is_an_end_without_status_and_errors_carry_one() {
        assert_eq!(hex(&response_end(&Ok(()))), "2200");
        assert_eq!(hex(&response_end(&Err(Status::not_found("not found")))), "220f0a0d080512096e6f7420666f756e64");
        assert_eq!(hex(&request_end(None)), "2200");
    }

    #[test]
    fn empty_messages_are_padded_never_sent_empty() {
        assert_eq!(hex(&response_data(Bytes::new())), "1a050a03f87f00");
        assert_eq!(hex(&response_data(Bytes::from_static(&[0x0a, 0x01, 0x31]))), "1a050a030a0131");
        // The padding decodes as an empty message in any protobuf decoder.
        assert_eq!(islb_proto::ion::Empty::decode(&EMPTY_PADDING[..]).unwrap(), islb_proto::ion::Empty {});
    }
}
