//! The command line. The options of `islb serve` are `islb_server::Settings`, where each
//! is defined once (flag, environment variable, file key, default and help); this module
//! adds `--config` and the client subcommands.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use islb_server::Settings;
use islb_server::config::parse_duration;

/// islb: ion's ISLB in Rust, the node registry and load balancer of an ion SFU cluster.
#[derive(Debug, Parser)]
#[command(
    name = "islb",
    version,
    about = "ion's ISLB in Rust: the node registry and load balancer of an ion WebRTC SFU cluster",
    long_about = "ion's ISLB in Rust: the node registry and load balancer of an ion WebRTC SFU cluster.\n\n\
                  Unchanged Go ion nodes register, keep alive and look each other up through it over NATS. \
                  Without a subcommand, islb runs `serve` (so `islb -c islb.toml` works as ion's islb did).",
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Options of `serve`, when no subcommand is given.
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the registry and load balancer.
    Serve(Box<ServeArgs>),
    /// List the nodes registered in a running cluster (over NATS).
    Nodes(NodesArgs),
    /// Print node events (up, changed, down) as they happen (over NATS).
    Watch(WatchArgs),
    /// List session placements (of one node) and drain marks.
    Sessions {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only the sessions on this node (NID or DC.NID)
        #[arg(long)]
        node: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Drain a node: no new sessions; its sessions stay until they end or the deadline passes.
    Drain {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node (NID or DC.NID)
        node: String,
        /// Move its sessions elsewhere after this long (e.g. 30m); default: never
        #[arg(long, value_parser = parse_duration)]
        deadline: Option<Duration>,
    },
    /// Lift a drain.
    Undrain {
        #[command(flatten)]
        admin: AdminArgs,
        /// The node (NID or DC.NID)
        node: String,
    },
    /// Release a session: its next lookup places it afresh.
    Release {
        #[command(flatten)]
        admin: AdminArgs,
        /// The session id
        sid: String,
    },
    /// Where the streams of a session are published (ion's stream records).
    Streams {
        #[command(flatten)]
        admin: AdminArgs,
        /// The session id
        sid: String,
    },
    /// This islb and the cluster as it sees it.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A grpcurl for nats-grpc: list, describe and call any node's gRPC services.
    #[command(subcommand)]
    Rpc(RpcCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (e.g. `islb completions bash > /etc/bash_completion.d/islb`).
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `islb man > /usr/local/share/man/man1/islb.1`).
    Man,
}

/// `islb config ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets masked).
    Check(Box<ServeArgs>),
    /// Print the configuration reference (Markdown) for the documentation.
    Reference,
}

/// Options of `islb serve`. Precedence: flags > environment > config file > defaults.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ServeArgs {
    /// TOML config file (islb's keys and ion's islb.toml keys)
    #[arg(short = 'c', long, env = "ISLB_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) settings: Settings,
}

/// Where a client subcommand finds the cluster.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClusterArgs {
    /// NATS URLs, credentials and TLS files: `islb serve`'s options of the same names
    #[command(flatten)]
    pub(crate) nats: islb_server::config::NatsConn,
    /// How long to wait for the cluster
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub(crate) timeout: Duration,
}

/// Which islb answers an operator command.
#[derive(Debug, Clone, Args)]
pub(crate) struct AdminArgs {
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// NID of the islb to ask (default: the first the registry lists)
    #[arg(long, value_name = "NID")]
    pub(crate) islb: Option<String>,
}

/// `islb rpc ...`
#[derive(Debug, Subcommand)]
pub(crate) enum RpcCommand {
    /// List the gRPC services of a node (default: an islb).
    List {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The node's NID
        nid: Option<String>,
    },
    /// Describe a service, method, message or enum (e.g. islb.ISLB, islb.FindNodeRequest).
    Describe {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The fully qualified name
        symbol: String,
        /// The node's NID (default: an islb)
        #[arg(long)]
        nid: Option<String>,
    },
    /// Call a method with a JSON request and print the response(s) as JSON.
    Call {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The node's NID
        nid: String,
        /// The method, e.g. /islb.ISLB/FindNode
        method: String,
        /// The request as JSON (protobuf JSON field names); for client-streaming and bidi
        /// methods, several JSON messages one after another; `-` reads them from stdin
        #[arg(default_value = "{}")]
        json: String,
    },
}

/// `islb nodes`
#[derive(Debug, Args)]
pub(crate) struct NodesArgs {
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
    /// Only this service (`*`: all, placed services included)
    #[arg(long, short, default_value = "*")]
    pub(crate) service: String,
    /// Print JSON instead of a table
    #[arg(long)]
    pub(crate) json: bool,
}

/// `islb watch`
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// Only events of this service (`*`: all)
    #[arg(long, short, default_value = "*")]
    pub(crate) service: String,
    /// Print one JSON object per event instead of a line of text
    #[arg(long)]
    pub(crate) json: bool,
}

/// The configuration reference as a Markdown table, generated from the definitions above
/// (docs and README embed it; a test keeps them in sync).
pub(crate) fn reference() -> String {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").expect("serve subcommand");
    let mut out = String::from("| flag | environment | config file key | default | meaning |\n|---|---|---|---|---|\n");
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let meaning = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let env = arg.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
        let key = match long {
            "config" => "(command line only)".to_owned(),
            "placement-services" => "`placement-services` or `[placement] services`".to_owned(),
            other => format!("`{other}`"),
        };
        let default = arg.get_default_values().first().map(|d| format!("`{}`", d.to_string_lossy()));
        let meaning = meaning.replace(" (file: also [placement] services)", "");
        out.push_str(&format!(
            "| `--{long}` | {env} | {key} | {} | {meaning} |\n",
            default.unwrap_or_else(|| "-".into())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_serve_option_reaches_the_config() {
        let args = Cli::try_parse_from([
            "islb",
            "serve",
            "--nats-url",
            "nats://x:1",
            "--dc",
            "d",
            "--nid",
            "n",
            "--store",
            "memory",
            "--store-prefix",
            "p",
            "--store-timeout",
            "2s",
            "--expire",
            "3s",
            "--http-addr",
            "127.0.0.1:0",
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "--nats-connect-timeout",
            "4s",
            "--shutdown-grace",
            "5s",
            "--max-message-size",
            "2048",
            "--keepalive-interval",
            "1s",
            "--placement-services",
            "rtc,room",
        ])
        .unwrap();
        let Some(Command::Serve(serve)) = args.command else { panic!() };
        let c = islb_server::Config::load(None, &serve.settings).unwrap();
        let described: std::collections::BTreeMap<_, _> = c.describe().into_iter().collect();
        assert_eq!(described["nats-url"], "nats://x:1");
        assert_eq!(described["dc"], "d");
        assert_eq!(described["nid"], "n");
        assert_eq!(described["store-prefix"], "p");
        assert_eq!(described["store-timeout"], "2s");
        assert_eq!(described["expire"], "3s");
        assert_eq!(described["http-addr"], "127.0.0.1:0");
        assert_eq!(described["log-level"], "debug");
        assert_eq!(described["log-format"], "json");
        assert_eq!(described["nats-connect-timeout"], "4s");
        assert_eq!(described["shutdown-grace"], "5s");
        assert_eq!(described["max-message-size"], "2048");
        assert_eq!(described["keepalive-interval"], "1s");
        assert_eq!(described["placement-services"], "room,rtc");
    }

    #[test]
    fn a_bare_config_flag_runs_serve_like_ions_islb() {
        let args = Cli::try_parse_from(["islb", "-c", "islb.toml"]).unwrap();
        assert!(args.command.is_none());
        assert_eq!(args.serve.config, Some(PathBuf::from("islb.toml")));
    }
}
