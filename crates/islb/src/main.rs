//! The `islb` binary: command line, logging, signals and exit codes around
//! `islb_server`.
//!
//! Exit codes: 0 after a clean shutdown; 64 for a bad configuration (before anything
//! starts); 69 when NATS cannot be reached within `nats-connect-timeout` or the store
//! cannot be opened; 70 when a supervised task failed and islb shut down because of it;
//! 1 otherwise.

mod admin_cli;
mod cli;
mod client;
mod rpc_cli;

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use cli::{Cli, Command, ConfigCommand, ServeArgs};
use islb_server::{Config, Settings};

const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let parsed = Cli::command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            // One line: what is wrong, and the flag (or its environment variable) it concerns.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            eprintln!("islb: {first}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let given = serve_matches(&matches);
    match cli.command {
        None => serve(cli.serve, given),
        Some(Command::Serve(args)) => serve(*args, given),
        Some(Command::Config(ConfigCommand::Check(args))) => match load(&args, given) {
            Ok(cfg) => {
                for (k, v) in cfg.describe() {
                    println!("{k} = {v}");
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Config(ConfigCommand::Reference)) => {
            print!("{}", cli::reference());
            ExitCode::SUCCESS
        }
        Some(Command::Nodes(args)) => run_client(nodes(args)),
        Some(Command::Watch(args)) => run_client(client::watch(args)),
        Some(Command::Sessions { admin, node, json }) => run_client(admin_cli::sessions(&admin, node, json)),
        Some(Command::Drain { admin, node, deadline }) => run_client(admin_cli::drain(&admin, &node, deadline)),
        Some(Command::Undrain { admin, node }) => run_client(admin_cli::undrain(&admin, &node)),
        Some(Command::Release { admin, sid }) => run_client(admin_cli::release(&admin, &sid)),
        Some(Command::Streams { admin, sid }) => run_client(admin_cli::streams(&admin, &sid)),
        Some(Command::Status { admin }) => run_client(admin_cli::status(&admin)),
        Some(Command::Rpc(cmd)) => run_client(rpc(cmd)),
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "islb", &mut script);
            print_out(&script)
        }
        Some(Command::Man) => {
            let mut page = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut page) {
                Ok(()) => print_out(&page),
                Err(e) => {
                    eprintln!("islb: rendering the manual page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn print_out(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("islb: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `islb nodes`: through islb.Admin (expiry, sessions, drains); against a registry that
/// has no Admin service (ion's Go islb), a plain `get`.
async fn nodes(args: cli::NodesArgs) -> anyhow::Result<()> {
    let nats = admin_cli::connect(&args.admin.cluster).await?;
    let listed = match admin_cli::Admin::on(nats.clone(), &args.admin).await {
        Ok(admin) => admin_cli::nodes(&admin, &args.service, args.json).await,
        Err(e) => Err(e),
    };
    if let Err(e) = listed {
        eprintln!("islb: islb.Admin did not answer ({e:#}); listing with a registry get instead");
        return client::nodes(&nats, &args).await;
    }
    Ok(())
}

async fn rpc(cmd: cli::RpcCommand) -> anyhow::Result<()> {
    use cli::RpcCommand;
    let (cluster, nid) = match &cmd {
        RpcCommand::List { cluster, nid } => (cluster, nid.clone()),
        RpcCommand::Describe { cluster, nid, .. } => (cluster, nid.clone()),
        RpcCommand::Call { cluster, nid, .. } => (cluster, Some(nid.clone())),
    };
    let client = admin_cli::islb_client(admin_cli::connect(cluster).await?, nid.as_deref(), cluster.timeout).await?;
    match &cmd {
        RpcCommand::List { cluster, .. } => rpc_cli::list(&client, cluster.timeout).await,
        RpcCommand::Describe { cluster, symbol, .. } => rpc_cli::describe(&client, symbol, cluster.timeout).await,
        RpcCommand::Call { cluster, method, json, .. } => {
            rpc_cli::call(&client, method, json, &admin_cli::admin_metadata(cluster)?, cluster.timeout).await
        }
    }
}

/// The matches of `serve`'s options: of `serve`, of `config check`, or of the command
/// itself when no subcommand is given.
fn serve_matches(m: &ArgMatches) -> &ArgMatches {
    m.subcommand_matches("serve")
        .or_else(|| m.subcommand_matches("config").and_then(|c| c.subcommand_matches("check")))
        .unwrap_or(m)
}

/// The configuration: the file, with the options the environment and flags gave over it.
fn load(args: &ServeArgs, matches: &ArgMatches) -> Result<Config, ExitCode> {
    let config_error = |e: islb_server::ConfigError| {
        eprintln!("islb: config error: {e}");
        ExitCode::from(EX_CONFIG)
    };
    let given = Settings::given(matches).map_err(config_error)?;
    Config::load(args.config.as_deref(), &given).map_err(config_error)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn run_client(fut: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    match runtime().block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("islb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs, matches: &ArgMatches) -> ExitCode {
    let cfg = match load(&args, matches) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    islb_server::telemetry::init_logging(&cfg.log_level, cfg.log_format);
    runtime().block_on(async move {
        // Handlers first: a SIGTERM during start-up is then a shutdown once islb is up,
        // not the default action (death by signal).
        let mut signals = Signals::new();
        let running = match islb_server::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                let code = e.exit_code();
                let e = anyhow::Error::from(e); // for its one-line source chain
                tracing::error!("{e:#}");
                eprintln!("islb: {e:#}");
                return ExitCode::from(code);
            }
        };
        let stop = running.stop_token();
        tokio::spawn(async move {
            let signal = signals.next().await;
            tracing::info!(signal, "signal received; shutting down (send it again to exit at once)");
            stop.cancel();
            let again = signals.next().await;
            tracing::warn!(signal = again, "second signal: exiting now");
            std::process::exit(130);
        });
        match running.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("islb: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    })
}

/// SIGTERM and SIGINT, caught from creation on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
