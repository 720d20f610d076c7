//! Logging setup shared by the binaries: human lines by default, JSON for
//! log shippers, panics logged through tracing before the process dies,
//! and a level an operator can change without a restart: the config's
//! `log_level` is read again on SIGHUP (systemd's `ExecReload`), so a DBA
//! can turn on `debug` in the middle of an incident and back off after.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event, fields flattened, the enclosing spans'
    /// fields (cluster, host, operation) under `span` and `spans`.
    Json,
}

/// Parses `human` or `json`.
impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}; use human or json")),
        }
    }
}

/// Checks a `log_level` value (an `EnvFilter` directive list such as
/// `info` or `info,dbfleet_agent=debug`), so a bad one refuses to start.
pub fn check_level(directives: &str) -> Result<(), String> {
    EnvFilter::try_new(directives).map(drop).map_err(|e| {
        format!("log_level {directives:?} is not a level or filter ({e}); use e.g. \"info\" or \"info,dbfleet_agent=debug\"")
    })
}

/// The level when the config names none: `RUST_LOG`, else `info`.
fn default_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Changes the running process's log level.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

impl LogControl {
    /// Applies the config's `log_level` (None: `RUST_LOG`, else `info`).
    pub fn apply(&self, level: Option<&str>) -> Result<(), String> {
        let filter = match level {
            Some(l) => {
                check_level(l)?;
                EnvFilter::new(l)
            }
            None => default_filter(),
        };
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))
    }

    /// On every SIGHUP, reads `log_level` from the config file at `path`
    /// again and applies it, until `cancel`. Only the level changes; a
    /// file that no longer parses keeps the level as it was.
    ///
    /// Call it first thing in the runtime: the handler is installed before
    /// it returns, and until then SIGHUP's default action ends the process.
    pub fn reload_on_sighup(self, path: PathBuf, cancel: CancellationToken) {
        crate::shutdown::on_sighup("the log level", cancel, move || {
            match level_in(&path).and_then(|l| {
                self.apply(l.as_deref())?;
                Ok(l)
            }) {
                Ok(l) => info!(
                    log_level = l.as_deref().unwrap_or("default"),
                    "SIGHUP: log level applied"
                ),
                Err(e) => warn!(error = e, "SIGHUP: log level unchanged"),
            }
        });
    }
}

/// The exit code of a process ended by a panic.
pub const PANIC_EXIT_CODE: i32 = 70;

/// Makes a panic, on any thread or task, end the process (after logging
/// it) with [`PANIC_EXIT_CODE`]: a task that died inside a process that
/// still answers systemd's watchdog would leave the host half served (no
/// reports, or no votes) with nobody told. `Restart=on-failure` starts it
/// again.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        tracing::error!(
            panic = %info,
            "a task panicked; exiting so that the service manager starts the process again"
        );
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// The `log_level` key of the TOML file at `path`, if any.
fn level_in(path: &Path) -> Result<Option<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
    match doc.get("log_level") {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("log_level in {} must be a string", path.display())),
    }
}

/// A multi-threaded runtime every thread of which (workers, the blocking
/// pool, the thread that calls `block_on`) runs inside `span`, so every
/// line the process logs carries its fields (an agent's cluster and host,
/// a coordinator's id) without each task being instrumented by hand.
///
/// Each runtime thread holds its entered span in a thread local and
/// leaves it when the thread stops: the subscriber's per-thread span
/// stacks outlive their threads and are handed to new ones, so a span
/// never left would pile up on the blocking pool's re-created threads.
pub fn runtime_in(span: tracing::Span) -> std::io::Result<tokio::runtime::Runtime> {
    thread_local! {
        static ENTERED: std::cell::RefCell<Option<tracing::span::EnteredSpan>> =
            const { std::cell::RefCell::new(None) };
    }
    let each = span.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            ENTERED.with(|e| *e.borrow_mut() = Some(each.clone().entered()));
        })
        .on_thread_stop(|| ENTERED.with(|e| drop(e.borrow_mut().take())))
        .build()?;
    // The thread that calls `block_on` lives as long as the process.
    std::mem::forget(span.entered());
    Ok(rt)
}

/// Installs the global subscriber, writing to stderr, and routes panics
/// through tracing so they reach the same log as everything else.
pub fn init(format: LogFormat) -> LogControl {
    let (filter, handle) = reload::Layer::new(default_filter());
    let registry = tracing_subscriber::registry().with(filter);
    // Colour only for a person at a terminal: journald and log files keep
    // the plain text that grep and log shippers read.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    // `try_init` caps `log` records at the level in force now; the filter
    // decides instead, so a level raised on SIGHUP reaches them too.
    log::set_max_level(log::LevelFilter::Trace);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "panicked");
        default_hook(info);
    }));
    LogControl { handle }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_level_names_the_fix_and_the_file_is_read_again() {
        assert!(check_level("info,dbfleet_agent=debug").is_ok());
        let e = check_level("dbfleet=loud").unwrap_err();
        assert!(e.contains("use e.g."), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "host = \"db1\"\nlog_level = \"debug\"\n[mysql]\nx = 1\n",
        )
        .unwrap();
        assert_eq!(level_in(&p).unwrap().as_deref(), Some("debug"));
        std::fs::write(&p, "host = \"db1\"\n").unwrap();
        assert_eq!(level_in(&p).unwrap(), None);
        std::fs::write(&p, "log_level = 3\n").unwrap();
        assert!(level_in(&p).unwrap_err().contains("must be a string"));
    }
}
