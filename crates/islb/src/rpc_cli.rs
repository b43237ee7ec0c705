//! `islb rpc`: a grpcurl for nats-grpc. Lists, describes and calls the gRPC services of any
//! nats-grpc node (islb, or ion's Go nodes), driven by server reflection (v1alpha, which
//! every nats-grpc server speaks) and dynamic messages.

use std::time::Duration;

use anyhow::{Context, bail};
use islb_nrpc::{Client, ClientStream, Metadata};
use islb_proto::grpc::reflection::v1alpha::{
    ServerReflectionRequest, ServerReflectionResponse, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse,
};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor};

const REFLECTION: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// One reflection stream to a node.
pub(crate) struct Reflector {
    stream: ClientStream,
    timeout: Duration,
}

impl Reflector {
    pub(crate) async fn open(client: &Client, timeout: Duration) -> anyhow::Result<Reflector> {
        let stream = client.open(REFLECTION, &Metadata::new()).await.map_err(|s| anyhow::anyhow!("reflection: {s}"))?;
        Ok(Reflector { stream, timeout })
    }

    async fn ask(&mut self, q: MessageRequest) -> anyhow::Result<MessageResponse> {
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(q) };
        self.stream.send_message(&req).await.map_err(|s| anyhow::anyhow!("reflection: {s}"))?;
        let resp: ServerReflectionResponse = self
            .stream
            .recv_message(self.timeout)
            .await
            .map_err(|s| anyhow::anyhow!("reflection: {s}"))?
            .context("the reflection stream ended")?;
        match resp.message_response {
            Some(MessageResponse::ErrorResponse(e)) => bail!("{} (code {})", e.error_message, e.error_code),
            Some(r) => Ok(r),
            None => bail!("empty reflection answer"),
        }
    }

    pub(crate) async fn services(&mut self) -> anyhow::Result<Vec<String>> {
        match self.ask(MessageRequest::ListServices("*".into())).await? {
            MessageResponse::ListServicesResponse(l) => Ok(l.service.into_iter().map(|s| s.name).collect()),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// The descriptors of the file defining `symbol`, with every file it imports.
    pub(crate) async fn pool_for(&mut self, symbol: &str) -> anyhow::Result<DescriptorPool> {
        let mut files = Vec::new();
        let mut have = std::collections::HashSet::new();
        let mut wanted = vec![MessageRequest::FileContainingSymbol(symbol.into())];
        while let Some(q) = wanted.pop() {
            let MessageResponse::FileDescriptorResponse(r) = self.ask(q).await? else { bail!("unexpected answer") };
            for bytes in r.file_descriptor_proto {
                let f = prost_types::FileDescriptorProto::decode(&bytes[..]).context("bad file descriptor")?;
                if have.insert(f.name().to_owned()) {
                    files.push(f);
                }
            }
            // Servers send dependencies once per stream; ask for any still missing.
            for f in &files {
                for dep in &f.dependency {
                    if !have.contains(dep)
                        && !wanted.iter().any(|w| matches!(w, MessageRequest::FileByFilename(n) if n == dep))
                    {
                        wanted.push(MessageRequest::FileByFilename(dep.clone()));
                    }
                }
            }
        }
        DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet { file: files })
            .context("the descriptors do not link")
    }

    /// The descriptors of `symbol`'s file and its imports, on a stream of their own.
    pub(crate) async fn pool(client: &Client, symbol: &str, timeout: Duration) -> anyhow::Result<DescriptorPool> {
        let mut r = Reflector::open(client, timeout).await?;
        let pool = r.pool_for(symbol).await;
        r.close().await;
        pool
    }

    /// Ends the stream: one cancel (never a half-close as well: one `end` per call).
    pub(crate) async fn close(self) {
        self.stream.cancel().await;
    }
}

pub(crate) async fn list(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let mut r = Reflector::open(client, timeout).await?;
    for s in r.services().await? {
        println!("{s}");
    }
    r.close().await;
    Ok(())
}

fn field_type(f: &prost_reflect::FieldDescriptor) -> String {
    let base = match f.kind() {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        k => format!("{k:?}").to_lowercase(),
    };
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else { return base };
        let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        return format!("map<{}, {}>", field_type(&k), field_type(&v));
    }
    if f.is_list() { format!("repeated {base}") } else { base }
}

fn describe_message(m: &MessageDescriptor) -> String {
    let mut out = format!("message {} {{\n", m.full_name());
    for f in m.fields() {
        let oneof = f.containing_oneof().map(|o| format!(" (oneof {})", o.name())).unwrap_or_default();
        out.push_str(&format!("  {} {} = {};{oneof}\n", field_type(&f), f.name(), f.number()));
    }
    out.push('}');
    out
}

fn signature(m: &MethodDescriptor) -> String {
    let s = |yes: bool| if yes { "stream " } else { "" };
    format!(
        "rpc {}({}{}) returns ({}{});",
        m.name(),
        s(m.is_client_streaming()),
        m.input().full_name(),
        s(m.is_server_streaming()),
        m.output().full_name()
    )
}

pub(crate) async fn describe(client: &Client, symbol: &str, timeout: Duration) -> anyhow::Result<()> {
    let pool = Reflector::pool(client, symbol, timeout).await?;
    if let Some(s) = pool.get_service_by_name(symbol) {
        println!("service {} {{  // {}", s.full_name(), s.parent_file().name());
        for m in s.methods() {
            println!("  {}", signature(&m));
        }
        println!("}}");
    } else if let Some(m) = pool.get_message_by_name(symbol) {
        println!("{}", describe_message(&m));
    } else if let Some(e) = pool.get_enum_by_name(symbol) {
        println!("enum {} {{", e.full_name());
        for v in e.values() {
            println!("  {} = {};", v.name(), v.number());
        }
        println!("}}");
    } else if let Some((svc, method)) = symbol.rsplit_once('.')
        && let Some(m) = pool.get_service_by_name(svc).and_then(|s| s.methods().find(|m| m.name() == method))
    {
        println!("{}", signature(&m));
        println!("{}", describe_message(&m.input()));
        println!("{}", describe_message(&m.output()));
    } else {
        bail!("{symbol} is not a service, method, message or enum there");
    }
    Ok(())
}

/// The request messages of `islb rpc call`: JSON values one after another (`-`: read from
/// standard input); none is one empty message.
fn requests(m: &prost_reflect::MethodDescriptor, json: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = if json == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the request messages from standard input")?
    } else {
        json.to_owned()
    };
    let mut out = Vec::new();
    for (i, value) in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>().enumerate() {
        let value = value.with_context(|| format!("request message {} is not JSON", i + 1))?;
        let request = DynamicMessage::deserialize(m.input(), value)
            .with_context(|| format!("request message {} is not a valid {}", i + 1, m.input().full_name()))?;
        out.push(request.encode_to_vec());
    }
    if out.is_empty() {
        out.push(Vec::new());
    }
    if out.len() > 1 && !m.is_client_streaming() {
        anyhow::bail!("{} takes one request message, not {}", m.full_name(), out.len());
    }
    Ok(out)
}

/// `islb rpc call NID /pkg.Service/Method JSON...`: the request(s) from JSON, each response
/// as JSON (one after another for a server stream).
pub(crate) async fn call(
    client: &Client,
    path: &str,
    json: &str,
    md: &Metadata,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (service, method) =
        islb_nrpc::subject::split_path(path).context("the method must look like /package.Service/Method")?;
    let pool = Reflector::pool(client, service, timeout).await?;
    let m = pool
        .get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == method))
        .with_context(|| format!("{service} has no method {method}"))?;
    let mut messages = requests(&m, json)?;
    let print = |b: bytes::Bytes| -> anyhow::Result<()> {
        let msg = DynamicMessage::decode(m.output(), b).context("bad response message")?;
        println!("{}", serde_json::to_string_pretty(&msg)?);
        Ok(())
    };
    match (m.is_client_streaming(), m.is_server_streaming()) {
        (false, false) => {
            let reply = client.unary(path, messages.remove(0).into(), md, timeout).await?;
            print(reply)
        }
        (client_streaming, _) => {
            // Streams: the request(s), then every response until the server ends the call
            // (a bidi stream such as WatchISLBEvent stays open until Ctrl-C).
            let mut s = client.open(path, md).await?;
            for message in messages {
                s.send(message.into()).await?;
            }
            // A bidi stream is not half-closed: servers may take that as the caller leaving.
            if client_streaming && !m.is_server_streaming() {
                s.close_send().await?;
            }
            let wait = if m.is_server_streaming() { Duration::from_secs(24 * 3600) } else { timeout };
            loop {
                let got = tokio::select! {
                    got = s.recv(wait) => got,
                    _ = tokio::signal::ctrl_c() => {
                        s.cancel().await;
                        return Ok(());
                    }
                };
                let printed = match got {
                    Ok(Some(b)) => print(b),
                    Ok(None) => return Ok(()),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = printed {
                    // Tell the server before exiting (a no-op when it ended the call).
                    s.cancel().await;
                    return Err(e);
                }
            }
        }
    }
}
