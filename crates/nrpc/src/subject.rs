//! Subjects: `nrpc.<nid>.<package>.<Service>.<Method>`, the queue group of a service, and
//! reading a method back from a subject.

/// The subject a server subscribes to for `service`: `nrpc.<nid>.<service>.>` (or
/// `nrpc.<service>.>` for an empty nid).
pub fn service_wildcard(nid: &str, service: &str) -> String {
    format!("{}.>", prefix(nid, service))
}

/// `nrpc.<nid>.<service>` (without the method).
pub fn prefix(nid: &str, service: &str) -> String {
    if nid.is_empty() { format!("nrpc.{service}") } else { format!("nrpc.{nid}.{service}") }
}

/// The queue group of a service: its full name (not including the nid), as Go does.
pub fn queue_group(service: &str) -> String {
    service.to_owned()
}

/// The subject of a gRPC method path on a server: `/islb.ISLB/FindNode` on `islb-1` is
/// `nrpc.islb-1.islb.ISLB.FindNode`.
pub fn method_subject(nid: &str, path: &str) -> String {
    let dotted = path.replace('/', ".");
    if nid.is_empty() { format!("nrpc{dotted}") } else { format!("nrpc.{nid}{dotted}") }
}

/// Splits a method path `/pkg.Service/Method` into (`pkg.Service`, `Method`).
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.rsplit_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('.')).then_some((service, method))
}

/// The method name of a subject under `prefix` (`nrpc.<nid>.<service>`): the rest after
/// the prefix and a dot, if it is one token.
pub fn method_of<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    (!rest.is_empty() && !rest.contains('.')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_nats_grpcs() {
        assert_eq!(method_subject("islb-1", "/islb.ISLB/FindNode"), "nrpc.islb-1.islb.ISLB.FindNode");
        assert_eq!(method_subject("", "/islb.ISLB/FindNode"), "nrpc.islb.ISLB.FindNode");
        assert_eq!(
            method_subject("islb-1", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            "nrpc.islb-1.grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo"
        );
        assert_eq!(service_wildcard("islb-1", "islb.ISLB"), "nrpc.islb-1.islb.ISLB.>");
        assert_eq!(queue_group("islb.ISLB"), "islb.ISLB");
        assert_eq!(method_of("nrpc.islb-1.islb.ISLB", "nrpc.islb-1.islb.ISLB.FindNode"), Some("FindNode"));
        assert_eq!(method_of("nrpc.islb-1.islb.ISLB", "nrpc.islb-1.islb.ISLB.a.b"), None);
        assert_eq!(split_path("/islb.ISLB/FindNode"), Some(("islb.ISLB", "FindNode")));
        assert_eq!(split_path("islb.ISLB/FindNode"), None);
    }
}
