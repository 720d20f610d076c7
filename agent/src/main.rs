//! Entry point: arguments, logging, listener, then `dbfleet_agent::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dbfleet_agent::config::{AgentConfig, PASSWORD_FILE_ENV};
use dbfleet_agent::mysql::verify::Severity;
use dbfleet_common::telemetry::{self, LogFormat};
use dbfleet_common::tls::{bind, install_crypto_provider};
use tokio_util::sync::CancellationToken;

/// The dbfleet agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, env = "DBFLEET_AGENT_CONFIG", global = true)]
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
    /// Validate the config file, password file and certificates, then
    /// check them against the live mysqld (the connection, the account's
    /// privileges, mysqld's process, the address against the socket,
    /// whether it would start writable, the pid file) and the
    /// coordinators; exits non-zero naming every problem and its fix.
    CheckConfig {
        /// Only the files, not the live server (the unit's ExecStartPre:
        /// the agent must start, and report, while mysqld is down).
        #[arg(long)]
        offline: bool,
    },
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
            eprintln!("dbfleet-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli, log: telemetry::LogControl) -> anyhow::Result<()> {
    let path = cli
        .config
        .context("no config file: pass --config FILE or set DBFLEET_AGENT_CONFIG")?;
    let override_pw = std::env::var_os(PASSWORD_FILE_ENV).map(PathBuf::from);
    let config = AgentConfig::load(&path, override_pw)?;
    log.apply(config.log_level.as_deref())
        .map_err(anyhow::Error::msg)?;
    if let Some(Command::CheckConfig { offline }) = cli.command {
        let (tls, target) = dbfleet_agent::check(&config)?;
        if let (Some(checked), false) = (target, offline) {
            let expect = dbfleet_agent::mysql::verify::Expectations {
                pid_file: config.mysql.as_ref().and_then(|m| m.pid_file.clone()),
                replication: checked.replication.clone(),
                coordinators: config.coordinator_endpoints(),
                tls: Some(tls),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?;
            let found = rt.block_on(dbfleet_agent::mysql::verify::verify(
                &checked.target,
                &expect,
                true,
            ));
            let mut problems = 0;
            for f in &found {
                let label = match f.severity {
                    Severity::Problem => {
                        problems += 1;
                        "problem"
                    }
                    Severity::Warning => "warning",
                };
                println!("{label}: {}", f.text);
            }
            if problems > 0 {
                anyhow::bail!(
                    "{}: {problems} problem(s) against the live server (above)",
                    path.display()
                );
            }
        }
        if config.witness {
            println!("{}: ok (witness {})", path.display(), config.host);
        } else {
            println!(
                "{}: ok (agent {} in cluster {})",
                path.display(),
                config.host,
                config.cluster
            );
        }
        return Ok(());
    }
    let rt = telemetry::runtime_in(
        tracing::error_span!("agent", cluster = %config.cluster, host = %config.host),
    )
    .context("start the async runtime")?;
    let ran = rt.block_on(async {
        let shutdown = CancellationToken::new();
        log.reload_on_sighup(path.clone(), shutdown.clone());
        let listener = bind(config.listen).await?;
        let metrics = match config.metrics_address() {
            Some(a) => Some(bind(a).await.context("metrics_listen")?),
            None => None,
        };
        dbfleet_common::shutdown::cancel_on_signals(shutdown.clone());
        dbfleet_agent::run(config, listener, metrics, shutdown).await?;
        Ok(())
    });
    // A blocking task still running (a job's thread stuck in a read the
    // stop could not end) must not keep the process alive: `run` has
    // already spent the shutdown timeout waiting for the jobs.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    ran
}
