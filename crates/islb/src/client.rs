//! Operator subcommands that talk to a running cluster over NATS, as any ion node would.

use anyhow::{Context, bail};
use futures::StreamExt;
use islb_core::command::PARAM_INCLUDE_PLACED;
use islb_gob::{GetResponse, Message as _, Node, Request, Value};

use crate::cli::{ClusterArgs, NodesArgs, WatchArgs};

async fn connect(cluster: &ClusterArgs) -> anyhow::Result<async_nats::Client> {
    let addrs = islb_server::nats::parse_urls(&cluster.nats_url)?;
    let url = islb_server::config::mask_url(&cluster.nats_url);
    tokio::time::timeout(cluster.timeout, async_nats::ConnectOptions::new().name("islb cli").connect(addrs))
        .await
        .map_err(|_| anyhow::anyhow!("NATS at {url} did not answer within {:?}", cluster.timeout))?
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// `islb nodes`: a `get` like ion's, printed as a table or JSON.
pub(crate) async fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    let client = connect(&args.cluster).await?;
    let mut req = Request { action: "get".into(), service: args.service.clone(), ..Request::default() };
    req.params.insert(PARAM_INCLUDE_PLACED.into(), Value::Bool(true));
    let subject = format!("node.publish.{}", args.service);
    let reply = tokio::time::timeout(args.cluster.timeout, client.request(subject, req.to_gob().into()))
        .await
        .map_err(|_| anyhow::anyhow!("no registry answered within {:?}", args.cluster.timeout))?
        .context("no registry answered (is islb running on this NATS?)")?;
    let resp = match GetResponse::from_gob(&reply.payload) {
        Ok(r) => r,
        Err(e) => match islb_gob::Response::from_gob(&reply.payload) {
            Ok(r) => bail!("the registry refused: {}", r.reason),
            Err(_) => bail!("unreadable reply from the registry: {e}"),
        },
    };
    let mut nodes = resp.nodes;
    nodes.sort_by(|a, b| (&a.service, &a.dc, &a.nid).cmp(&(&b.service, &b.dc, &b.nid)));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
    } else {
        print!("{}", table(&nodes));
    }
    Ok(())
}

fn extra(n: &Node) -> String {
    n.extra_info.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// Nodes as an aligned text table.
pub(crate) fn table(nodes: &[Node]) -> String {
    let rows: Vec<[String; 6]> = nodes
        .iter()
        .map(|n| [n.service.clone(), n.dc.clone(), n.nid.clone(), n.rpc.protocol.clone(), n.rpc.addr.clone(), extra(n)])
        .collect();
    let header = ["SERVICE", "DC", "NID", "PROTOCOL", "ADDR", "EXTRA"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{} node(s)\n", nodes.len()));
    out
}

/// `islb watch`: one line per node event until interrupted.
pub(crate) async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let client = connect(&args.cluster).await?;
    let subject = format!("node.discovery.{}.>", args.service);
    let mut sub = client.subscribe(subject.clone()).await.with_context(|| format!("cannot subscribe to {subject}"))?;
    client.flush().await?;
    eprintln!("watching {subject} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { bail!("the NATS subscription ended") };
                let now = islb_core::Timestamp::now();
                match Request::from_gob(&msg.payload) {
                    Ok(ev) if args.json => println!("{}", serde_json::json!({"time": now.to_string(), "subject": msg.subject.as_str(), "action": ev.action, "node": ev.node})),
                    Ok(ev) => println!("{now} {:<6} {:<8} {}.{}  {} {}  {}", ev.action, ev.node.service, ev.node.dc, ev.node.nid, ev.node.rpc.protocol, ev.node.rpc.addr, extra(&ev.node)),
                    Err(e) => println!("{now} undecodable event on {}: {e}", msg.subject),
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns() {
        let mut n = Node { dc: "dc1".into(), service: "rtc".into(), nid: "sfu-1".into(), ..Node::default() };
        n.extra_info.insert("load".into(), Value::Float64(0.5));
        let t = table(&[n]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "SERVICE  DC   NID    PROTOCOL  ADDR  EXTRA");
        assert_eq!(lines[1], "rtc      dc1  sfu-1                  load=0.5");
        assert_eq!(lines[2], "1 node(s)");
    }
}
