//! gRPC server reflection over nrpc: `grpc.reflection.v1alpha.ServerReflection` (what ion's
//! Go nodes serve and ion's tools ask for) and `grpc.reflection.v1.ServerReflection` (what
//! newer tools try first). Both have the same messages on the wire, so one implementation
//! answers both.
//!
//! As docs/RPC.md section 6 describes: one answer per request on a stream that
//! stays open; service names sorted, the reflection services included; files returned
//! dependency-closed (the requested file, then imports not yet sent on this stream), with
//! the file names used in `import` statements; lookup failures answered in-band with
//! `error_response{NOT_FOUND}`; a request without a question ends the stream with
//! `INVALID_ARGUMENT`.

use std::collections::HashSet;

use async_trait::async_trait;
use islb_proto::grpc::reflection::v1alpha::{
    ErrorResponse, ExtensionNumberResponse, FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest,
    ServerReflectionResponse, ServiceResponse, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse,
};
use prost::Message;
use prost_reflect::{DescriptorPool, FileDescriptor};

use crate::server::{CallInfo, Incoming, Outgoing, Service};
use crate::status::{Code, Status};

/// `grpc.reflection.v1alpha.ServerReflection`.
pub const V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
/// `grpc.reflection.v1.ServerReflection`.
pub const V1: &str = "grpc.reflection.v1.ServerReflection";

/// A reflection service (one of the two versions).
pub struct Reflection {
    name: &'static str,
    pool: DescriptorPool,
    services: Vec<String>,
}

impl Reflection {
    /// Reflection `name` ([`V1ALPHA`] or [`V1`]) over `pool`, listing `services` (the
    /// reflection services are added; the list is sorted).
    pub fn new(name: &'static str, pool: DescriptorPool, services: &[String]) -> Self {
        let mut services: Vec<String> = services.iter().cloned().chain([V1ALPHA.to_owned(), V1.to_owned()]).collect();
        services.sort();
        services.dedup();
        Reflection { name, pool, services }
    }

    fn file_of_symbol(&self, symbol: &str) -> Option<FileDescriptor> {
        let p = &self.pool;
        if let Some(s) = p.get_service_by_name(symbol) {
            return Some(s.parent_file());
        }
        if let Some(m) = p.get_message_by_name(symbol) {
            return Some(m.parent_file());
        }
        if let Some(e) = p.get_enum_by_name(symbol) {
            return Some(e.parent_file());
        }
        if let Some(x) = p.get_extension_by_name(symbol) {
            return Some(x.parent_file());
        }
        // A method (`pkg.Service.Method`) or a field (`pkg.Message.field`).
        let (parent, member) = symbol.rsplit_once('.')?;
        if let Some(s) = p.get_service_by_name(parent) {
            return s.methods().any(|m| m.name() == member).then(|| s.parent_file());
        }
        let m = p.get_message_by_name(parent)?;
        m.get_field_by_name(member).map(|_| m.parent_file())
    }

    /// The file (always) and its imports not sent yet on this stream, encoded.
    fn closure(&self, file: FileDescriptor, sent: &mut HashSet<String>) -> Vec<Vec<u8>> {
        sent.insert(file.name().to_owned());
        let mut out = vec![file.file_descriptor_proto().encode_to_vec()];
        let mut stack: Vec<FileDescriptor> = file.dependencies().collect();
        while let Some(f) = stack.pop() {
            if sent.insert(f.name().to_owned()) {
                out.push(f.file_descriptor_proto().encode_to_vec());
                stack.extend(f.dependencies());
            }
        }
        out
    }

    /// The answer to one request.
    pub fn answer(
        &self,
        req: &ServerReflectionRequest,
        sent: &mut HashSet<String>,
    ) -> Result<ServerReflectionResponse, Status> {
        let not_found = |what: String| {
            MessageResponse::ErrorResponse(ErrorResponse { error_code: Code::NotFound as i32, error_message: what })
        };
        let files = |fs: Vec<Vec<u8>>| {
            MessageResponse::FileDescriptorResponse(FileDescriptorResponse { file_descriptor_proto: fs })
        };
        let response = match &req.message_request {
            None => return Err(Status::invalid_argument("invalid MessageRequest: <nil>")),
            Some(MessageRequest::ListServices(_)) => MessageResponse::ListServicesResponse(ListServiceResponse {
                service: self.services.iter().map(|s| ServiceResponse { name: s.clone() }).collect(),
            }),
            Some(MessageRequest::FileByFilename(name)) => match self.pool.get_file_by_name(name) {
                Some(f) => files(self.closure(f, sent)),
                None => not_found(format!("file not found: {name}")),
            },
            Some(MessageRequest::FileContainingSymbol(symbol)) => match self.file_of_symbol(symbol) {
                Some(f) => files(self.closure(f, sent)),
                None => not_found(format!("symbol not found: {symbol}")),
            },
            Some(MessageRequest::FileContainingExtension(x)) => {
                let found = self.pool.get_message_by_name(&x.containing_type).and_then(|m| {
                    m.extensions().find(|e| e.number() == x.extension_number as u32).map(|e| e.parent_file())
                });
                match found {
                    Some(f) => files(self.closure(f, sent)),
                    None => not_found(format!("extension {} of {} not found", x.extension_number, x.containing_type)),
                }
            }
            Some(MessageRequest::AllExtensionNumbersOfType(t)) => match self.pool.get_message_by_name(t) {
                Some(m) => MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                    base_type_name: t.clone(),
                    extension_number: m.extensions().map(|e| e.number() as i32).collect(),
                }),
                None => not_found(format!("type not found: {t}")),
            },
        };
        Ok(ServerReflectionResponse {
            valid_host: req.host.clone(),
            original_request: Some(req.clone()),
            message_response: Some(response),
        })
    }
}

#[async_trait]
impl Service for Reflection {
    fn name(&self) -> &'static str {
        self.name
    }

    fn has_method(&self, method: &str) -> bool {
        method == "ServerReflectionInfo"
    }

    async fn call(&self, _info: CallInfo, mut incoming: Incoming, out: Outgoing) -> Result<(), Status> {
        let mut sent = HashSet::new();
        while let Some(req) = incoming.message::<ServerReflectionRequest>().await? {
            let resp = self.answer(&req, &mut sent)?;
            out.send_message(&resp).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refl() -> Reflection {
        let pool = DescriptorPool::decode(islb_proto::FILE_DESCRIPTOR_SET).unwrap();
        Reflection::new(V1ALPHA, pool, &["islb.ISLB".to_owned(), "islb.Admin".to_owned()])
    }

    fn ask(q: MessageRequest) -> ServerReflectionRequest {
        ServerReflectionRequest { host: "h".into(), message_request: Some(q) }
    }

    #[test]
    fn lists_services_sorted_with_both_reflection_versions() {
        let r = refl().answer(&ask(MessageRequest::ListServices("*".into())), &mut HashSet::new()).unwrap();
        let Some(MessageResponse::ListServicesResponse(l)) = r.message_response else { panic!() };
        let names: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
                "islb.Admin",
                "islb.ISLB"
            ]
        );
        assert_eq!(r.valid_host, "h");
        assert!(r.original_request.is_some());
    }

    #[test]
    fn files_come_dependency_closed_once_per_stream() {
        let r = refl();
        let mut sent = HashSet::new();
        let names = |resp: ServerReflectionResponse| -> Vec<String> {
            let Some(MessageResponse::FileDescriptorResponse(f)) = resp.message_response else { panic!("{resp:?}") };
            f.file_descriptor_proto
                .iter()
                .map(|b| prost_types::FileDescriptorProto::decode(&b[..]).unwrap().name().to_owned())
                .collect()
        };
        let first = names(r.answer(&ask(MessageRequest::FileContainingSymbol("islb.ISLB".into())), &mut sent).unwrap());
        assert_eq!(first, ["proto/islb/islb.proto", "proto/ion/ion.proto"]);
        let again = names(
            r.answer(&ask(MessageRequest::FileContainingSymbol("islb.ISLB.FindNode".into())), &mut sent).unwrap(),
        );
        assert_eq!(again, ["proto/islb/islb.proto"], "imports already sent on this stream are not sent again");
        let by_name = names(
            r.answer(&ask(MessageRequest::FileByFilename("proto/ion/ion.proto".into())), &mut HashSet::new()).unwrap(),
        );
        assert_eq!(by_name, ["proto/ion/ion.proto"]);
    }

    #[test]
    fn unknown_symbols_are_answered_in_band_and_an_empty_request_ends_the_stream() {
        let r = refl();
        let resp = r.answer(&ask(MessageRequest::FileContainingSymbol("no.Such".into())), &mut HashSet::new()).unwrap();
        let Some(MessageResponse::ErrorResponse(e)) = resp.message_response else { panic!() };
        assert_eq!(e.error_code, 5);
        let err = r.answer(&ServerReflectionRequest::default(), &mut HashSet::new()).unwrap_err();
        assert_eq!(err, Status::invalid_argument("invalid MessageRequest: <nil>"));
        let resp =
            r.answer(&ask(MessageRequest::AllExtensionNumbersOfType("ion.Node".into())), &mut HashSet::new()).unwrap();
        assert!(matches!(resp.message_response, Some(MessageResponse::AllExtensionNumbersResponse(_))));
    }
}
