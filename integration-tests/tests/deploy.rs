//! The shipped deploy files are valid for the tools that read them:
//! systemd's units for systemd, the Prometheus rules, their tests and the
//! example scrape config for promtool, and the Grafana dashboard queries
//! only metrics docs/metrics.md documents.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use dbfleet_integration_tests::bin;

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let mut units = Vec::new();
    for name in ["dbfleet-agent", "dbfleet-coordinator"] {
        let text = std::fs::read_to_string(root.join(format!("{name}.service"))).unwrap();
        assert!(
            text.contains("Type=notify") && text.contains("WatchdogSec="),
            "{name}"
        );
        // Point ExecStart at the freshly built binary so verify can check it.
        let text = text.replace(
            &format!("/usr/bin/{name}"),
            &bin(name).display().to_string(),
        );
        let path = dir.path().join(format!("{name}.service"));
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze is installed by scripts/setup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
}

// ---------------------------------------------------------------------------
// deploy/prometheus and deploy/grafana: checked by Prometheus's own promtool
// (installed by scripts/setup from Debian's `prometheus` package), and every
// metric they query is one docs/metrics.md says is exported.

fn deploy_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(sub)
}

/// Runs promtool in `dir` and returns its output; a missing promtool fails
/// the test (it is not skipped).
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: run ./scripts/setup (it installs Debian's \
             prometheus package, which ships /usr/bin/promtool)"
        ),
        Err(e) => panic!("promtool {args:?}: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check() {
    let out = promtool(&deploy_dir("prometheus"), &["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let dir = deploy_dir("prometheus");
    let out = promtool(&dir, &["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert is shown firing in at least one test (promtool checks
    // that the alerts expected are exactly those that fire).
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 16, "{alerts:?}");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut fired = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l.strip_prefix("alertname:") {
            let mut next = lines[i + 1..].iter().filter(|l| !l.is_empty());
            match (next.next(), next.next()) {
                (Some(&"exp_alerts: []"), _) => silent.insert(name.trim()),
                (Some(&"exp_alerts:"), Some(e)) if e.starts_with("- exp_labels:") => {
                    fired.insert(name.trim())
                }
                other => panic!("after alertname {name}: {other:?}"),
            };
        }
    }
    for a in &alerts {
        assert!(fired.contains(a), "no test shows {a} firing");
    }
    for a in [
        "DbfleetPrimaryDown",
        "DbfleetNoWritablePrimary",
        "DbfleetMultipleWritable",
        "DbfleetNoActiveCoordinator",
    ] {
        assert!(silent.contains(a), "no test shows {a} silent");
    }
    for a in fired.iter().chain(&silent) {
        assert!(
            alerts.contains(a),
            "the tests name {a}, which alerts.yml lacks"
        );
    }
}

#[test]
fn example_prometheus_config_passes_promtool_check() {
    let out = promtool(
        &deploy_dir("prometheus"),
        &["check", "config", "prometheus.yml"],
    );
    assert!(out.contains("rule files found"), "{out}");
}

/// The PromQL expressions of alerts.yml (`expr:` inline or as a block).
fn alert_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(rest) = l.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|b| b.trim().is_empty() || indent(b) > indent(l))
                .copied()
                .collect();
            out.push(block.join("\n"));
        } else {
            let unquoted = rest
                .strip_prefix('\'')
                .and_then(|r| r.strip_suffix('\''))
                .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
                .unwrap_or(rest);
            out.push(unquoted.to_string());
        }
    }
    out
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(list: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in list {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(panels(inner));
        }
    }
    out
}

/// The dashboard's PromQL: panel targets and the variables' queries (the
/// series selector of `label_values(SELECTOR, label)`).
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<String> {
    let ds_var = |ds: &serde_json::Value| {
        matches!(ds["uid"].as_str(), Some("${datasource}" | "$datasource"))
    };
    let mut out = Vec::new();
    for p in panels(dash["panels"].as_array().expect("panels")) {
        let title = p["title"].as_str().unwrap_or("?");
        if p["type"] == "row" {
            continue;
        }
        assert!(
            ds_var(&p["datasource"]),
            "panel {title}: datasource must be the $datasource variable, not a fixed one"
        );
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title} has no target");
        for t in targets {
            assert!(
                ds_var(&t["datasource"]),
                "panel {title}: a target's datasource must be $datasource"
            );
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                !expr.trim().is_empty(),
                "panel {title}: a target without expr"
            );
            out.push(expr.to_string());
        }
    }
    for v in dash["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .unwrap_or_else(|| panic!("variable query {q}"));
        out.push(inner.to_string());
    }
    out
}

/// Metric names in a PromQL expression: identifiers that are not
/// functions, aggregations, keywords, label names (inside `{}`,
/// `by (...)`, `on (...)`, ...), strings, ranges, numbers or Grafana
/// variables.
fn metric_names(expr: &str) -> Vec<String> {
    const SKIP: [&str; 22] = [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let c: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_string = |i: usize| {
        let q = c[i];
        let mut j = i + 1;
        while j < c.len() && c[j] != q {
            j += if c[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    let skip_group = |i: usize, open: char, close: char| {
        let mut depth = 0;
        let mut j = i;
        while j < c.len() {
            match c[j] {
                '"' | '\'' | '`' => {
                    j = skip_string(j);
                    continue;
                }
                x if x == open => depth += 1,
                x if x == close => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        panic!("unbalanced {open} in {expr}");
    };
    let next_non_space = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(i);
        } else if ch == '{' {
            i = skip_group(i, '{', '}');
        } else if ch == '[' {
            i = skip_group(i, '[', ']');
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '$' {
            i += 1;
            while i < c.len() && (c[i].is_alphanumeric() || "_{}".contains(c[i])) {
                i += 1;
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let after = next_non_space(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if c.get(after) == Some(&'(') {
                    i = skip_group(after, '(', ')');
                }
            } else if SKIP.contains(&word.as_str()) || c.get(after) == Some(&'(') {
                // an aggregation, keyword or function
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Metric names docs/metrics.md documents, read from its backticked
/// names: `name{labels}` (labels dropped), `a_{x,y}_b` (alternatives),
/// `family_*` (any name under the family), `_suffix` after a full name on
/// the same line (the suffix on that name or on any shorter `_`-prefix of
/// it, as in "`dbfleet_replication_io_running`, `_sql_running`"), a
/// histogram's `_bucket`/`_sum`/`_count` and a counter's `_total` where the
/// line says so.
struct Documented {
    names: BTreeSet<String>,
    families: BTreeSet<String>,
}

impl Documented {
    fn read() -> Documented {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
        Documented::parse(&std::fs::read_to_string(path).unwrap())
    }

    fn parse(doc: &str) -> Documented {
        fn expand(s: &str) -> Vec<String> {
            let Some(open) = s.find('{') else {
                return vec![s.to_string()];
            };
            let close = open + s[open..].find('}').expect("closing brace");
            let (head, alts, tail) = (&s[..open], &s[open + 1..close], &s[close + 1..]);
            alts.split(',')
                .flat_map(|a| expand(&format!("{head}{}{tail}", a.trim())))
                .collect()
        }
        /// Drops a label set: a `{` that does not follow `_` (which starts
        /// alternatives instead).
        fn strip_labels(s: &str) -> &str {
            let b = s.as_bytes();
            match (0..b.len()).find(|&i| b[i] == b'{' && (i == 0 || b[i - 1] != b'_')) {
                Some(i) => &s[..i],
                None => s,
            }
        }
        let looks_like_name = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_{},*".contains(c))
        };
        let mut names = BTreeSet::new();
        let mut families = BTreeSet::new();
        for line in doc.lines() {
            let lower = line.to_lowercase();
            let mut last: Vec<String> = Vec::new();
            for span in line.split('`').skip(1).step_by(2) {
                let span = strip_labels(span.trim());
                if !looks_like_name(span) {
                    continue;
                }
                if span.starts_with('_') {
                    for suffix in expand(span) {
                        for base in &last {
                            let cuts = base.match_indices('_').map(|(i, _)| i);
                            for cut in cuts.chain([base.len()]) {
                                names.insert(format!("{}{suffix}", &base[..cut]));
                            }
                        }
                    }
                } else if span.starts_with("dbfleet_") || span.starts_with("mysql_") {
                    last.clear();
                    for name in expand(span) {
                        if let Some(family) = name.strip_suffix('*') {
                            // `mysql_global_status_*`, not a sweeping `dbfleet_*`
                            if family.matches('_').count() >= 2 {
                                families.insert(family.to_string());
                            }
                            continue;
                        }
                        if lower.contains("histogram") {
                            for s in ["_bucket", "_sum", "_count"] {
                                names.insert(format!("{name}{s}"));
                            }
                        }
                        if lower.contains("counter") && !name.ends_with("_total") {
                            names.insert(format!("{name}_total"));
                        }
                        names.insert(name.clone());
                        last.push(name);
                    }
                }
            }
        }
        Documented { names, families }
    }

    fn knows(&self, name: &str) -> bool {
        name == "up"
            || self.names.contains(name)
            || self.families.iter().any(|f| name.starts_with(f.as_str()))
    }
}

#[test]
fn documented_names_are_read_as_written() {
    let d = Documented::parse(
        "| `dbfleet_replication_io_running`, `_io_connecting`, `_sql_running` | x |\n\
         | `dbfleet_semi_sync_{source,replica}_{enabled,active}`, `_clients` | y |\n\
         - `mysql_global_status_*` (untyped): `commands_total{command}`;\n\
         `dbfleet_role{role}` and `dbfleet_x_seconds` (histogram), `dbfleet_y` (counter)\n\
         `dbfleet status --cluster C`, `metrics_listen`, `dbfleet_*`, `mysql_*`",
    );
    for name in [
        "dbfleet_replication_io_running",
        "dbfleet_replication_io_connecting",
        "dbfleet_replication_sql_running",
        "dbfleet_semi_sync_replica_active",
        "dbfleet_semi_sync_clients",
        "mysql_global_status_queries",
        "dbfleet_role",
        "dbfleet_x_seconds_bucket",
        "dbfleet_y_total",
        "up",
    ] {
        assert!(d.knows(name), "{name}");
    }
    for name in [
        "dbfleet_replication_lag",
        "dbfleet_semi_sync",
        "metrics_listen",
        "mysql_up",
        "dbfleet",
    ] {
        assert!(!d.knows(name), "{name}");
    }
    assert_eq!(
        metric_names(
            "sum by (cluster) (rate(a_total{x=~\"$c\",y!=\"b c\"}[$__rate_interval])) / on (host) \
             group_left (z) max without (w) (b offset 5m) > bool 0.5 or vector(1) unless c:rec # d"
        ),
        ["a_total", "b", "c:rec"]
    );
}

#[test]
fn dashboard_and_alerts_query_only_documented_metrics() {
    let text = std::fs::read_to_string(deploy_dir("grafana").join("dbfleet-fleet.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} variable"))
    };
    assert_eq!(
        var("cluster")["query"]["query"],
        "label_values(dbfleet_coordinator_cluster_health, cluster)"
    );
    var("host");
    assert_eq!(var("datasource")["query"], "prometheus");

    let dash_exprs = dashboard_exprs(&dash);
    let rules = std::fs::read_to_string(deploy_dir("prometheus").join("alerts.yml")).unwrap();
    let alert_exprs = alert_exprs(&rules);
    let alerts = rules
        .lines()
        .filter(|l| l.trim().starts_with("- alert:"))
        .count();
    assert_eq!(alert_exprs.len(), alerts, "one expr per alert");

    let known = Documented::read();
    let mut unknown = BTreeSet::new();
    let mut used = BTreeSet::new();
    for (what, exprs) in [("dashboard", &dash_exprs), ("alerts.yml", &alert_exprs)] {
        for e in exprs {
            let names = metric_names(e);
            assert!(!names.is_empty(), "{what}: no metric in {e}");
            for n in names {
                if !known.knows(&n) {
                    unknown.insert(format!("{what}: {n}"));
                }
                used.insert(n);
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "names docs/metrics.md does not document: {unknown:?}"
    );
    // The dashboard shows what the fleet, coordinators and hosts need.
    for name in [
        "dbfleet_coordinator_clusters",
        "dbfleet_coordinator_cluster_writable_members",
        "dbfleet_coordinator_cluster_members",
        "dbfleet_coordinator_problems",
        "dbfleet_coordinator_operations_total",
        "dbfleet_coordinator_role",
        "dbfleet_coordinator_epoch_term",
        "dbfleet_coordinator_lease_remaining_seconds",
        "dbfleet_coordinator_oplog_lag",
        "dbfleet_coordinator_agents_connected",
        "dbfleet_role",
        "mysql_global_status_queries",
        "mysql_global_status_threads_connected",
        "dbfleet_replication_lag_seconds",
        "dbfleet_semi_sync_source_active",
        "dbfleet_binlog_archive_lag_seconds",
        "dbfleet_backup_last_completed_age_seconds",
        "dbfleet_host_cpu_seconds_total",
        "dbfleet_host_memory_available_bytes",
        "dbfleet_datadir_filesystem_avail_bytes",
    ] {
        assert!(
            dash_exprs
                .iter()
                .any(|e| metric_names(e).iter().any(|n| n == name)),
            "the dashboard does not show {name}"
        );
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let text = std::fs::read_to_string(deploy_dir("grafana").join("dbfleet-fleet.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Each query as a recording rule, with Grafana's variables as
    // Prometheus would receive them, for promtool to parse.
    let rules: Vec<serde_json::Value> = dashboard_exprs(&dash)
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h");
            let e = ["$cluster", "$host"]
                .iter()
                .fold(e, |e, v| e.replace(v, "a|b"));
            serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML: promtool reads it as a rule file.
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(dir.path().join("dashboard.yml"), doc.to_string()).unwrap();
    let out = promtool(dir.path(), &["check", "rules", "dashboard.yml"]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{out}"
    );
}
