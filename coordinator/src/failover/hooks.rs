//! Operator hooks: a program with arguments, the JSON payload on stdin
//! and in `DBFLEET_EVENT`, a deadline, and its exit status as the answer.

use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::AsyncWriteExt;

/// What every hook receives.
#[derive(Debug, Clone, Serialize)]
pub struct Payload<'a> {
    /// `pre-failover`, `post-failover`, `stonith`, ...
    pub hook: &'a str,
    /// Cluster.
    pub cluster: &'a str,
    /// `failover` or `switchover`.
    pub kind: &'a str,
    /// Operation id.
    pub operation_id: &'a str,
    /// The primary being replaced.
    pub old_primary: &'a str,
    /// The new primary (empty before it is chosen).
    pub new_primary: &'a str,
    /// Its mysql `host:port` (empty before it is chosen).
    pub new_primary_address: &'a str,
    /// Epoch term of the deciding coordinator.
    pub epoch_term: u64,
    /// Its id.
    pub epoch_coordinator: &'a str,
    /// Why.
    pub reason: &'a str,
}

/// Runs `argv` with `payload`; `Ok` only on exit 0 within `timeout`. The
/// error says what happened, with the end of the hook's stderr.
pub async fn run(argv: &[String], payload: &Payload<'_>, timeout: Duration) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let json = serde_json::to_string(payload).map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("DBFLEET_EVENT", &json)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{} hook {program} cannot start: {e}", payload.hook))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that ignores its stdin must not fail the run.
        let _ = stdin.write_all(json.as_bytes()).await;
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "{} hook {program} did not finish within {timeout:?} (killed)",
            payload.hook
        )),
        Ok(Err(e)) => Err(format!("{} hook {program}: {e}", payload.hook)),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr
                .trim()
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(format!(
                "{} hook {program} exited with {}: {tail}",
                payload.hook, out.status
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Payload<'static> {
        Payload {
            hook: "pre-failover",
            cluster: "main",
            kind: "failover",
            operation_id: "op",
            old_primary: "db1",
            new_primary: "",
            new_primary_address: "",
            epoch_term: 3,
            epoch_coordinator: "c1",
            reason: "test",
        }
    }

    #[tokio::test]
    async fn exit_status_and_timeout_decide() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("payload.json");
        let script = format!("cat > {}", out.display());
        let ok = run(
            &["sh".into(), "-c".into(), script],
            &payload(),
            Duration::from_secs(10),
        )
        .await;
        assert!(ok.is_ok(), "{ok:?}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(json["old_primary"], "db1");
        assert_eq!(json["epoch_term"], 3);
        let veto = run(
            &["sh".into(), "-c".into(), "echo no way >&2; exit 3".into()],
            &payload(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(veto.contains("no way"), "{veto}");
        let slow = run(
            &["sleep".into(), "30".into()],
            &payload(),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(slow.contains("did not finish"), "{slow}");
    }
}
