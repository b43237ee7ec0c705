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

pub(crate) fn from_proto(md: Option<&nrpc::Metadata>) -> Metadata {
    md.map(|m| m.md.iter().map(|(k, v)| (k.clone(), v.values.clone())).collect()).unwrap_or_default()
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
