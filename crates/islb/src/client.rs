//! Operator subcommands that talk to a running cluster over NATS, as any ion node would.

use anyhow::{Context, bail};
use futures::StreamExt;
use islb_gob::{GetResponse, Message as _, Node, Request};

use crate::admin_cli::{connect, registry_get};
use crate::cli::{NodesArgs, WatchArgs};

/// `islb nodes`: a `get` like ion's, printed as a table or JSON.
pub(crate) async fn nodes(nats: &async_nats::Client, args: &NodesArgs) -> anyhow::Result<()> {
    let reply = registry_get(nats, &args.service, true, args.admin.cluster.timeout).await?;
    let resp = match GetResponse::from_gob(&reply) {
        Ok(r) => r,
        Err(e) => match islb_gob::Response::from_gob(&reply) {
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
    let rows = nodes
        .iter()
        .map(|n| {
            vec![n.service.clone(), n.dc.clone(), n.nid.clone(), n.rpc.protocol.clone(), n.rpc.addr.clone(), extra(n)]
        })
        .collect();
    let mut out = crate::admin_cli::table(&["SERVICE", "DC", "NID", "PROTOCOL", "ADDR", "EXTRA"], rows);
    out.push_str(&format!("{} node(s)\n", nodes.len()));
    out
}

/// `islb watch`: one line per node event until interrupted.
pub(crate) async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let client = connect(&args.cluster).await?;
    let subject = format!("node.discovery.{}.>", args.service);
    let mut sub = client.subscribe(subject.clone()).await.with_context(|| format!("cannot subscribe to {subject}"))?;
    islb_nrpc::barrier(&client, args.cluster.timeout).await?;
    eprintln!("watching {subject} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { bail!("the NATS subscription ended") };
                let now = islb_core::Timestamp::from(std::time::SystemTime::now());
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
    use islb_gob::Value;

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
