//! The `shoal` binary: parses the command line and runs one command.

use clap::Parser;
use shoal::cli::{Cli, CliCommand, RuntimeCommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let is_node = matches!(cli.command, CliCommand::Seed(_) | CliCommand::Join(_));
    init_tracing(if is_node {
        "info,openraft=warn"
    } else {
        "warn"
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: CliCommand) -> anyhow::Result<()> {
    match command {
        CliCommand::Seed(args) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(shut_down_on_signal(shutdown.clone()));
            shoal::node::run(args.into_config(), shutdown).await
        }
        CliCommand::Join(args) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(shut_down_on_signal(shutdown.clone()));
            shoal::node::run(args.into_config(), shutdown).await
        }
        CliCommand::Nodes(args) => shoal::client::nodes(args).await,
        CliCommand::Deploy(args) => shoal::client::deploy(args).await,
        CliCommand::Apps(args) => shoal::client::apps(args).await,
        CliCommand::Rm(args) => shoal::client::rm(args).await,
        CliCommand::Logs(args) => shoal::client::logs(args).await,
        CliCommand::Runs(args) => shoal::client::runs(args).await,
        CliCommand::Run(args) => shoal::client::run(args).await,
        CliCommand::Policy(args) => shoal::client::policy(args).await,
        CliCommand::Share(args) => shoal::client::share(args).await,
        CliCommand::Token(command) => shoal::client::token(command).await,
        CliCommand::Runtime(RuntimeCommand::Build { json }) => {
            shoal::client::runtime_build(json).await
        }
    }
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one exits at once.
async fn shut_down_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        warn!("cannot install signal handlers; stop the node with SIGKILL");
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    // Cancel before logging: nothing may stand between the signal and the shutdown.
    shutdown.cancel();
    info!("shutting down: finishing in-flight requests (send the signal again to stop now)");
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    warn!("second signal: stopping now");
    std::process::exit(130);
}

fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Its own error report uses eprintln!, which panics when stderr is a closed pipe
        // (a `| tee` killed by Ctrl-C) and would take the signal handler down with it.
        .log_internal_errors(false)
        .init();
}
