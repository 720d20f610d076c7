//! `dbfleet top` and `dbfleet status --watch` as the real CLI binary runs
//! them against a real fleet with a real workload, output piped (so plain
//! frames, no escape codes), and against no coordinator at all.

use std::collections::HashMap;
use std::process::Output;

use dbfleet_common::identity::Role;
use dbfleet_integration_tests::workload::Writer;
use dbfleet_integration_tests::{Slot, TestFleet, TestPki, bin, init, tls_section};

/// Runs the real CLI with `config` without blocking the runtime (the
/// workload keeps writing meanwhile).
async fn dbfleet(config: &std::path::Path, args: &[&str]) -> Output {
    tokio::process::Command::new(bin("dbfleet"))
        .args(args)
        .env("DBFLEET_CONFIG", config)
        .output()
        .await
        .expect("run dbfleet")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The frames of plain output: the lines after each `# dbfleet top at`
/// header, checking that every frame but the first follows a blank line.
fn frames(out: &str) -> Vec<Vec<&str>> {
    let mut frames: Vec<Vec<&str>> = Vec::new();
    let mut previous = None;
    for line in out.lines() {
        if line.starts_with("# dbfleet top at ") {
            if !frames.is_empty() {
                assert_eq!(previous, Some(""), "frames are separated by a blank line");
            }
            frames.push(Vec::new());
        } else if let Some(f) = frames.last_mut().filter(|_| !line.is_empty()) {
            f.push(line);
        }
        previous = Some(line);
    }
    frames
}

/// One member's row as column name → cell, cut at the header's column
/// starts (cells may be blank, so splitting on whitespace would not do).
fn row(frame: &[&str], host: &str) -> HashMap<String, String> {
    let header: Vec<char> = frame
        .iter()
        .find(|l| l.trim_start().starts_with("HOST "))
        .unwrap_or_else(|| panic!("no header in {frame:#?}"))
        .chars()
        .collect();
    let line: Vec<char> = frame
        .iter()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no row for {host} in {frame:#?}"))
        .chars()
        .collect();
    let starts: Vec<usize> = (0..header.len())
        .filter(|&i| header[i] != ' ' && (i == 0 || header[i - 1] == ' '))
        .collect();
    let cut = |from: usize, to: usize| -> String {
        let to = to.min(line.len());
        if from >= to {
            return String::new();
        }
        line[from..to].iter().collect::<String>().trim().to_string()
    };
    starts
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let end = starts.get(i + 1).copied().unwrap_or(usize::MAX);
            let name: String = header[s..end.min(header.len())].iter().collect();
            (name.trim().to_string(), cut(s, end))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn top_and_status_watch_show_the_live_fleet() {
    let fleet = TestFleet::start(2, 1).await;
    let writer = Writer::start(&fleet, "db1").await;
    fleet
        .wait_until("every member's load reported", |c| {
            c.members.len() == 3 && c.members.iter().all(|m| m.load.is_some())
        })
        .await;
    let config = fleet.cli_config();

    let out = dbfleet(
        &config,
        &["top", "--iterations", "3", "--interval", "500ms"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout.clone()).expect("UTF-8");
    assert!(
        !stdout.contains('\x1b'),
        "no escape codes on a pipe: {stdout:?}"
    );
    let frames = frames(&stdout);
    assert_eq!(frames.len(), 3, "{stdout}");
    let roles = [("db1", "primary"), ("db2", "replica"), ("db3", "replica")];
    let mut primary_qps = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        assert!(
            f[0].starts_with("cluster main  primary db1"),
            "frame {i}: {f:#?}"
        );
        for (host, role) in roles {
            let r = row(f, host);
            assert_eq!(r["ROLE"], role, "frame {i}: {r:?}");
            let conn: u32 = r["CONN"]
                .parse()
                .unwrap_or_else(|_| panic!("threads connected of {host}: {r:?}"));
            assert!(
                conn >= 1,
                "{host}: the agent's own connection at least: {r:?}"
            );
        }
        primary_qps.push(row(f, "db1")["QPS"].clone());
    }
    assert_eq!(primary_qps[0], "", "no rate from a single view");
    assert!(
        primary_qps[1..]
            .iter()
            .any(|q| q.parse::<f64>().is_ok_and(|q| q > 0.0)),
        "the primary's QPS is a positive number after the first frame: {primary_qps:?}\n{stdout}"
    );

    let out = dbfleet(
        &config,
        &[
            "top",
            "--iterations",
            "3",
            "--interval",
            "500ms",
            "--output",
            "json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let docs: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(docs.len(), 3, "one JSON line per frame");
    for d in &docs {
        assert!(
            d["at_unix_ms"].is_i64() && d["coordinator"].is_string(),
            "{d}"
        );
        let m = &d["clusters"][0]["members"][0];
        assert_eq!(m["host"], "db1", "{d}");
        for k in [
            "queries_total",
            "threads_connected",
            "threads_running",
            "observed_at_unix_ms",
        ] {
            assert!(m[k].is_u64() || m[k].is_i64(), "{k}: {m}");
        }
    }
    assert!(docs[0]["clusters"][0]["members"][0]["qps"].is_null());
    assert!(
        docs[1..]
            .iter()
            .any(|d| d["clusters"][0]["members"][0]["qps"].as_f64() > Some(0.0)),
        "{docs:#?}"
    );
    writer.stop().await;

    let out = dbfleet(
        &config,
        &[
            "status",
            "--watch",
            "--iterations",
            "2",
            "--interval",
            "500ms",
            "--output",
            "json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(docs.len(), 2, "{stdout}");
    for d in &docs {
        assert!(d["coordinator"].is_string(), "{d}");
        let c = &d["clusters"][0];
        assert_eq!(c["name"], "main");
        assert_eq!(c["primary"], "db1");
        assert!(
            c["max_lag_seconds"].is_u64() && c["problems"].is_array(),
            "{c}"
        );
        let members = c["members"].as_array().expect("members");
        assert_eq!(members.len(), 3);
        for m in members {
            for f in [
                "host",
                "role",
                "writable",
                "reachable",
                "reporting",
                "gtid_executed",
                "lag_seconds",
                "io_running",
                "sql_running",
                "last_report_age_ms",
            ] {
                assert!(m.get(f).is_some(), "missing {f}: {m}");
            }
        }
    }

    let out = dbfleet(&config, &["status", "--watch", "--iterations", "2"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("# dbfleet status at ").count(),
        2,
        "{stdout}"
    );
    assert_eq!(stdout.matches("cluster main  primary db1").count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn top_without_a_coordinator_exits_3_naming_the_address() {
    init();
    let slot = Slot::claim();
    let pki = TestPki::new(&slot.dir);
    let paths = pki.issue(Role::Operator, "top", &[], false, false);
    // Nothing listens in a freshly claimed slot.
    let address = format!("{}:7200", slot.ip(21));
    let config = slot.dir.join("dbfleet.toml");
    std::fs::write(
        &config,
        format!("coordinators = [{address:?}]\n{}", tls_section(&paths)),
    )
    .unwrap();

    let out = dbfleet(&config, &["top", "--iterations", "1"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no coordinator answered") && stderr.contains(&address),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no frame without a view");
}
