//! Every golden frame in interop/vectors/nrpc decodes to the message its README describes,
//! and our encoding of that message is byte-identical.

use islb_proto::google::rpc::Status as RpcStatus;
use islb_proto::grpc::reflection::v1alpha as refl;
use islb_proto::nrpc::{self, request, response};
use prost::Message;

fn vector(name: &str) -> Vec<u8> {
    let path = islb_testkit::workspace_root().join(format!("interop/vectors/nrpc/{name}.hex"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    crate::interop::unhex(text.trim()).to_vec()
}

fn md(k: &str, v: &str) -> Option<nrpc::Metadata> {
    Some(nrpc::Metadata { md: [(k.to_owned(), nrpc::Strings { values: vec![v.to_owned()] })].into() })
}

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(name: &str, expected: M) {
    let bytes = vector(name);
    assert_eq!(M::decode(&bytes[..]).unwrap(), expected, "{name}: decoding");
    assert_eq!(expected.encode_to_vec(), bytes, "{name}: our encoding");
}

fn req(t: request::Type) -> nrpc::Request {
    nrpc::Request { r#type: Some(t) }
}

fn resp(t: response::Type) -> nrpc::Response {
    nrpc::Response { r#type: Some(t) }
}

fn list_services_response() -> refl::ServerReflectionResponse {
    refl::ServerReflectionResponse {
        valid_host: String::new(),
        original_request: Some(refl::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(refl::server_reflection_request::MessageRequest::ListServices("*".into())),
        }),
        message_response: Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(
            refl::ListServiceResponse {
                service: vec![
                    refl::ServiceResponse { name: "grpc.reflection.v1alpha.ServerReflection".into() },
                    refl::ServiceResponse { name: "islb.ISLB".into() },
                ],
            },
        )),
    }
}

#[test]
fn every_golden_frame_round_trips() {
    let call = |method: &str, metadata, nid: &str| nrpc::Call { method: method.into(), metadata, nid: nid.into() };
    check("request_call", req(request::Type::Call(call("/islb.ISLB/FindNode", md("k", "v"), "islb-1"))));
    check("request_call_unary_go", req(request::Type::Call(call("/islb.ISLB/FindNode", None, ""))));
    check(
        "request_call_stream_go",
        req(request::Type::Call(call("nrpc.islb-1.islb.ISLB.WatchISLBEvent", None, "signal-1"))),
    );
    check("request_data", req(request::Type::Data(nrpc::Data { data: vec![0x0a, 0x01, 0x31] })));
    check("request_end_halfclose", req(request::Type::End(nrpc::End { status: None, trailer: None })));
    check(
        "request_end_status0",
        req(request::Type::End(nrpc::End { status: Some(RpcStatus::default()), trailer: None })),
    );
    check(
        "response_begin",
        resp(response::Type::Begin(nrpc::Begin { header: Some(nrpc::Metadata::default()), nid: "islb-1".into() })),
    );
    check(
        "response_begin_header",
        resp(response::Type::Begin(nrpc::Begin { header: md("k", "v"), nid: "islb-1".into() })),
    );
    check("response_data", resp(response::Type::Data(nrpc::Data { data: vec![0x0a, 0x01, 0x31] })));
    check("response_data_empty", resp(response::Type::Data(nrpc::Data { data: vec![] })));
    let end = |code: i32, message: &str| nrpc::End {
        status: Some(RpcStatus { code, message: message.into(), details: vec![] }),
        trailer: None,
    };
    check("response_end_not_found", resp(response::Type::End(end(5, "not found"))));
    check("response_end_unimplemented", resp(response::Type::End(end(12, "Unimplemented"))));
    check("response_end_ok", resp(response::Type::End(nrpc::End { status: None, trailer: None })));
    check("response_end_ok_trailer", resp(response::Type::End(nrpc::End { status: None, trailer: md("t", "1") })));
    check(
        "refl_list_services_request_msg",
        refl::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(refl::server_reflection_request::MessageRequest::ListServices("*".into())),
        },
    );
    check(
        "refl_request_call",
        req(request::Type::Call(call(
            "nrpc.islb-1.grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo",
            None,
            "signal-1",
        ))),
    );
    check("refl_request_data", req(request::Type::Data(nrpc::Data { data: vector("refl_list_services_request_msg") })));
    check("refl_list_services_response_msg", list_services_response());
    check(
        "refl_response_data",
        resp(response::Type::Data(nrpc::Data { data: list_services_response().encode_to_vec() })),
    );
}

#[test]
fn our_frame_builders_write_what_go_writes() {
    use islb_nrpc::{Status, frame};
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        hex(&frame::call("/islb.ISLB/FindNode", &Default::default(), "")),
        hex(&vector("request_call_unary_go"))
    );
    let md: islb_nrpc::Metadata = [("k".to_owned(), vec!["v".to_owned()])].into();
    assert_eq!(hex(&frame::call("/islb.ISLB/FindNode", &md, "islb-1")), hex(&vector("request_call")));
    assert_eq!(hex(&frame::request_data(vec![0x0a, 0x01, 0x31].into())), hex(&vector("request_data")));
    assert_eq!(hex(&frame::request_end(None)), hex(&vector("request_end_halfclose")));
    assert_eq!(hex(&frame::response_end(&Ok(()))), hex(&vector("response_end_ok")));
    assert_eq!(
        hex(&frame::response_end(&Err(Status::unimplemented("Unimplemented")))),
        hex(&vector("response_end_unimplemented"))
    );
}

/// The frames in the repository are byte for byte what the Go peer (protowire, Go's own
/// protobuf wire encoding) generates today.
#[test]
fn the_golden_frames_are_what_the_go_peer_generates_now() {
    let fresh = tempfile::tempdir().unwrap();
    let out = islb_testkit::gopeer_run(&["nrpc-vectors", fresh.path().to_str().unwrap()], b"");
    assert!(out.status.success(), "gopeer nrpc-vectors: {}", String::from_utf8_lossy(&out.stderr));
    let committed = islb_testkit::workspace_root().join("interop/vectors/nrpc");
    let hex_files = |dir: &std::path::Path| {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".hex"))
            .collect();
        n.sort();
        n
    };
    let names = hex_files(&committed);
    assert!(names.len() >= 19, "{names:?}");
    assert_eq!(hex_files(fresh.path()), names, "regenerate with: target/gopeer nrpc-vectors interop/vectors/nrpc");
    for name in names {
        let old = std::fs::read_to_string(committed.join(&name)).unwrap();
        let new = std::fs::read_to_string(fresh.path().join(&name)).unwrap();
        assert_eq!(new, old, "{name} drifted");
    }
}
