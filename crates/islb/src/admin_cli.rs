//! Operator subcommands over islb's `islb.Admin` service (nrpc): nodes, sessions, drain,
//! undrain, release, streams, status.

use std::time::Duration;

use anyhow::{Context, bail};
use islb_core::command::PARAM_INCLUDE_PLACED;
use islb_gob::{GetResponse, Message as _, Request, Value};
use islb_nrpc::{Client, Metadata};
use islb_proto::islb as pb;

use crate::cli::{AdminArgs, ClusterArgs};

pub(crate) async fn connect(cluster: &ClusterArgs) -> anyhow::Result<async_nats::Client> {
    let (addrs, opts) = islb_server::nats::connect_options(&cluster.nats.0)?;
    let url = islb_server::config::mask_url(&cluster.nats.0.url);
    tokio::time::timeout(cluster.timeout, opts.name("islb cli").connect(addrs))
        .await
        .map_err(|_| anyhow::anyhow!("NATS at {url} did not answer within {:?}", cluster.timeout))?
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// The NID of an islb to talk to: the one given, or the first the registry lists.
pub(crate) async fn find_islb(
    nats: &async_nats::Client,
    given: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<String> {
    if let Some(nid) = given {
        return Ok(nid.to_owned());
    }
    let reply = registry_get(nats, "islb", false, timeout).await?;
    let nodes = GetResponse::from_gob(&reply).context("unreadable reply from the registry")?.nodes;
    match nodes.into_iter().next() {
        Some(n) => Ok(n.nid),
        None => bail!("no islb node is registered (give one with --islb NID)"),
    }
}

/// An nrpc client of the islb `given`, or of the first the registry lists.
pub(crate) async fn islb_client(
    nats: async_nats::Client,
    given: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let nid = find_islb(&nats, given, timeout).await?;
    Ok(Client::new(nats, nid, "islb-cli"))
}

/// A registry `get` of `service`, as ion's nodes send it (`include_placed`: placed
/// services listed too); the raw reply.
pub(crate) async fn registry_get(
    nats: &async_nats::Client,
    service: &str,
    include_placed: bool,
    timeout: Duration,
) -> anyhow::Result<bytes::Bytes> {
    let mut req = Request { action: "get".into(), service: service.into(), ..Request::default() };
    if include_placed {
        req.params.insert(PARAM_INCLUDE_PLACED.into(), Value::Bool(true));
    }
    let reply = tokio::time::timeout(timeout, nats.request(format!("node.publish.{service}"), req.to_gob().into()))
        .await
        .map_err(|_| anyhow::anyhow!("no registry answered within {timeout:?}"))?
        .context("no registry answered (is islb running on this NATS?)")?;
    Ok(reply.payload)
}

pub(crate) struct Admin {
    client: Client,
    timeout: Duration,
    md: Metadata,
}

/// The call metadata carrying the admin token, if one is configured.
pub(crate) fn admin_metadata(cluster: &ClusterArgs) -> anyhow::Result<Metadata> {
    let mut md = Metadata::new();
    if let Some(token) = cluster.nats.admin_token()? {
        md.insert("authorization".into(), vec![format!("Bearer {token}")]);
    }
    Ok(md)
}

impl Admin {
    pub(crate) async fn new(args: &AdminArgs) -> anyhow::Result<Admin> {
        Admin::on(connect(&args.cluster).await?, args).await
    }

    /// An admin client on an open NATS connection.
    pub(crate) async fn on(nats: async_nats::Client, args: &AdminArgs) -> anyhow::Result<Admin> {
        let timeout = args.cluster.timeout;
        let md = admin_metadata(&args.cluster)?;
        Ok(Admin { client: islb_client(nats, args.islb.as_deref(), timeout).await?, timeout, md })
    }

    pub(crate) async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> anyhow::Result<Resp> {
        let path = format!("/islb.Admin/{method}");
        self.client
            .call(&path, req, &self.md, self.timeout)
            .await
            .map_err(|s| anyhow::anyhow!("islb {} refused {method}: {s}", self.client.target()))
    }
}

fn time(ms: i64) -> String {
    if ms <= 0 { "-".into() } else { islb_core::Timestamp::from_ms(ms as u64).to_string() }
}

pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row, &mut out);
    }
    out
}

pub(crate) async fn sessions(args: &AdminArgs, node: Option<String>, json: bool) -> anyhow::Result<()> {
    let admin = Admin::new(args).await?;
    let list: pb::SessionList =
        admin.call("ListSessions", &pb::ListSessionsRequest { node: node.unwrap_or_default() }).await?;
    if json {
        let v = serde_json::json!({
            "sessions": list.sessions.iter().map(|s| serde_json::json!({"sid": s.sid, "node": s.node, "version": s.version, "used": time(s.used_ms)})).collect::<Vec<_>>(),
            "drains": list.drains.iter().map(|d| serde_json::json!({"node": d.node, "deadline": (d.deadline_ms > 0).then(|| time(d.deadline_ms))})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows = list
        .sessions
        .iter()
        .map(|s| vec![s.sid.clone(), s.node.clone(), s.version.to_string(), time(s.used_ms)])
        .collect();
    print!("{}", table(&["SID", "NODE", "VERSION", "LAST USED"], rows));
    println!("{} session(s)", list.sessions.len());
    for d in &list.drains {
        println!("draining: {} (deadline {})", d.node, time(d.deadline_ms));
    }
    Ok(())
}

pub(crate) async fn drain(args: &AdminArgs, node: &str, deadline: Option<Duration>) -> anyhow::Result<()> {
    let admin = Admin::new(args).await?;
    let secs = deadline.map_or(0, |d| d.as_secs().max(1) as i64);
    let reply: pb::DrainReply =
        admin.call("Drain", &pb::DrainRequest { node: node.into(), deadline_seconds: secs }).await?;
    println!(
        "{} is draining: no new sessions; {} session(s) on it{}",
        reply.node,
        reply.sessions,
        if reply.deadline_ms > 0 {
            format!(", moving after {}", time(reply.deadline_ms))
        } else {
            ", staying until they end".into()
        }
    );
    Ok(())
}

pub(crate) async fn undrain(args: &AdminArgs, node: &str) -> anyhow::Result<()> {
    let admin = Admin::new(args).await?;
    let reply: pb::DrainReply = admin.call("Undrain", &pb::UndrainRequest { node: node.into() }).await?;
    println!("{} takes new sessions again ({} session(s) on it)", reply.node, reply.sessions);
    Ok(())
}

pub(crate) async fn release(args: &AdminArgs, sid: &str) -> anyhow::Result<()> {
    let admin = Admin::new(args).await?;
    let reply: pb::ReleaseSessionReply =
        admin.call("ReleaseSession", &pb::ReleaseSessionRequest { sid: sid.into() }).await?;
    match reply.session {
        Some(s) if reply.released => println!("released {} (was on {})", s.sid, s.node),
        _ => bail!("no session {sid:?} is placed"),
    }
    Ok(())
}

pub(crate) async fn streams(args: &AdminArgs, sid: &str) -> anyhow::Result<()> {
    let admin = Admin::new(args).await?;
    let list: pb::StreamList = admin.call("FindStreams", &pb::FindStreamsRequest { sid: sid.into() }).await?;
    let rows = list
        .streams
        .iter()
        .map(|s| vec![s.key.clone(), s.nid.clone(), s.uid.clone(), s.streams_json.clone()])
        .collect();
    print!("{}", table(&["KEY", "NODE", "PEER", "STREAMS"], rows));
    Ok(())
}

pub(crate) async fn status(args: &AdminArgs) -> anyhow::Result<()> {
    let admin = Admin::new(args).await?;
    let s: pb::ClusterStatus = admin.call("Status", &pb::StatusRequest {}).await?;
    println!("islb {} (dc {}, version {}, up {}s)", s.nid, s.dc, s.version, s.uptime_seconds);
    println!("nodes: {}  sessions: {}  placed services: {}", s.nodes, s.sessions, s.placed_services.join(","));
    println!("store: {} ({})  ready: {}", s.store, if s.store_healthy { "healthy" } else { "out of reach" }, s.ready);
    Ok(())
}

pub(crate) async fn nodes(admin: &Admin, service: &str, json: bool) -> anyhow::Result<()> {
    let list: pb::NodeList = admin.call("ListNodes", &pb::ListNodesRequest { service: service.into() }).await?;
    // Each node's parts, once, for either output.
    let parts = list.nodes.iter().map(|n| {
        let node = n.node.clone().unwrap_or_default();
        let rpc = node.rpc.clone().unwrap_or_default();
        let extra: serde_json::Value = serde_json::from_str(&n.extra_info_json).unwrap_or_default();
        (n, node, rpc, extra)
    });
    if json {
        let v: Vec<serde_json::Value> = parts
            .map(|(n, node, rpc, extra)| {
                serde_json::json!({
                    "DC": node.dc, "Service": node.service, "NID": node.nid,
                    "RPC": {"Protocol": rpc.protocol, "Addr": rpc.addr, "Params": rpc.params},
                    "ExtraInfo": extra,
                    "expires": time(n.expires_ms), "placed": n.placed, "draining": n.draining, "sessions": n.sessions,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows = parts
        .map(|(n, node, rpc, extra)| {
            let extra = extra
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let state = if n.draining {
                "draining"
            } else if n.placed {
                "placed"
            } else {
                ""
            };
            vec![node.service, node.dc, node.nid, rpc.protocol, rpc.addr, n.sessions.to_string(), state.into(), extra]
        })
        .collect();
    print!("{}", table(&["SERVICE", "DC", "NID", "PROTOCOL", "ADDR", "SESSIONS", "STATE", "EXTRA"], rows));
    println!("{} node(s)", list.nodes.len());
    Ok(())
}
