//! Entry point: arguments, logging, listener, then `dbfleet_coordinator::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dbfleet_common::telemetry::{self, LogFormat};
use dbfleet_common::tls::{bind, install_crypto_provider};
use dbfleet_coordinator::config::CoordinatorConfig;
use tokio_util::sync::CancellationToken;

/// The dbfleet coordinator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, env = "DBFLEET_COORDINATOR_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log line format: human or json.
    #[arg(
        long,
        env = "DBFLEET_LOG_FORMAT",
        default_value = "human",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config file and certificates, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    dbfleet_common::systemd::take_environment();
    let cli = Cli::parse();
    let log = telemetry::init(cli.log_format);
    telemetry::exit_on_panic();
    install_crypto_provider();
    match real_main(cli, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dbfleet-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli, log: telemetry::LogControl) -> anyhow::Result<()> {
    let path = cli
        .config
        .context("no config file: pass --config FILE or set DBFLEET_COORDINATOR_CONFIG")?;
    let config = CoordinatorConfig::load(&path)?;
    log.apply(config.log_level.as_deref())
        .map_err(anyhow::Error::msg)?;
    if let Some(Command::CheckConfig) = cli.command {
        dbfleet_coordinator::check(&config)?;
        println!("{}: ok (coordinator {})", path.display(), config.id);
        return Ok(());
    }
    let rt = telemetry::runtime_in(tracing::error_span!("coordinator", coordinator = %config.id))
        .context("start the async runtime")?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        log.reload_on_sighup(path.clone(), shutdown.clone());
        let listener = bind(config.listen).await?;
        let metrics = match config.metrics_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        dbfleet_common::shutdown::cancel_on_signals(shutdown.clone());
        dbfleet_coordinator::run(config, listener, metrics, shutdown).await?;
        Ok(())
    })
}
