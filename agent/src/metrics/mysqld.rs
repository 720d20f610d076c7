//! mysqld_exporter's core families, from one collection: `mysql_up`,
//! `mysql_global_status_*`, `mysql_global_variables_*`,
//! `mysql_version_info`, `mysql_slave_status_*` and the collectors' own
//! `mysql_exporter_collector_*`. Names, labels, types and value parsing
//! follow mysqld_exporter's defaults so that existing dashboards and alerts
//! keep working; MySQL 8's source/replica names are mapped back to the
//! master/slave names those dashboards use, so one name means one thing on
//! MariaDB and on MySQL 8.0/8.4.

use std::collections::{BTreeMap, HashMap};

use super::family::{Family, Kind};
use crate::mysql::flavor::Row;
use crate::mysql::observer::{COLLECTORS, CollectorRun};

/// A status or variable value as mysqld_exporter reads it, in any case:
/// `yes`/`on`/`primary` 1, `no`/`off`/`disabled`/`connecting`/
/// `non-primary`/`disconnected` 0, a number as itself; anything else is
/// not exported.
pub fn parse_value(v: &str) -> Option<f64> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "on" | "primary" => Some(1.0),
        "no" | "off" | "disabled" | "connecting" | "non-primary" | "disconnected" => Some(0.0),
        _ => v.parse::<f64>().ok(),
    }
}

/// Lower case, with MySQL 8's `source` and `replica` words read as
/// `master` and `slave`.
pub fn classic_name(name: &str) -> String {
    name.to_ascii_lowercase()
        .split('_')
        .map(|w| match w {
            "source" => "master",
            "replica" => "slave",
            "replicas" => "slaves",
            other => other,
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// Name → value under mysqld_exporter's names (the server's own, lower
/// case: MySQL 8.4 and later say `seconds_behind_source`, as the exporter
/// then does) and, where those use MySQL 8's `source`/`replica` words,
/// under the classic `master`/`slave` spelling as well, which dashboards
/// written for MariaDB and older MySQL read. Where a server shows both
/// spellings itself, its own value of each is kept.
fn classic(values: &HashMap<String, String>) -> BTreeMap<String, &str> {
    let mut out: BTreeMap<String, &str> = values
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.as_str()))
        .collect();
    for (name, value) in values {
        out.entry(classic_name(name)).or_insert(value.as_str());
    }
    out
}

/// `mysql_global_status_*`: groups of status values as labelled families
/// (commands, handlers, connection errors, buffer pool pages, InnoDB row
/// operations, performance schema losses), the rest one untyped family
/// each.
pub fn global_status(status: &HashMap<String, String>) -> Vec<Family> {
    let groups: [(&str, &str, &str, &str, Kind); 6] = [
        (
            "com_",
            "commands_total",
            "command",
            "Total number of executed MySQL commands.",
            Kind::Counter,
        ),
        (
            "handler_",
            "handlers_total",
            "handler",
            "Total number of executed MySQL handlers.",
            Kind::Counter,
        ),
        (
            "connection_errors_",
            "connection_errors_total",
            "error",
            "Total number of MySQL connection errors.",
            Kind::Counter,
        ),
        ("innodb_buffer_pool_pages_", "", "", "", Kind::Gauge),
        (
            "innodb_rows_",
            "innodb_row_ops_total",
            "operation",
            "Total number of MySQL InnoDB row operations.",
            Kind::Counter,
        ),
        (
            "performance_schema_",
            "performance_schema_lost_total",
            "instrumentation",
            "Total number of MySQL instrumentations that could not be loaded or created due to memory constraints.",
            Kind::Counter,
        ),
    ];
    let mut grouped: BTreeMap<&str, Family> = BTreeMap::new();
    let mut out = Vec::new();
    for (name, raw) in classic(status) {
        let Some(value) = parse_value(raw) else {
            continue;
        };
        let group = groups.iter().find(|g| name.starts_with(g.0));
        let Some((prefix, suffix, label, help, kind)) = group else {
            out.push(Family::single(
                &format!("mysql_global_status_{name}"),
                "Generic metric from SHOW GLOBAL STATUS.",
                Kind::Untyped,
                &[],
                value,
            ));
            continue;
        };
        let rest = &name[prefix.len()..];
        let (suffix, label, help, kind) = if *prefix == "innodb_buffer_pool_pages_" {
            if matches!(rest, "data" | "free" | "misc" | "old") {
                (
                    "buffer_pool_pages",
                    "state",
                    "Innodb buffer pool pages by state.",
                    Kind::Gauge,
                )
            } else if rest == "dirty" {
                out.push(Family::single(
                    "mysql_global_status_buffer_pool_dirty_pages",
                    "Innodb buffer pool dirty pages.",
                    Kind::Gauge,
                    &[],
                    value,
                ));
                continue;
            } else if rest == "total" {
                continue;
            } else {
                (
                    "buffer_pool_page_changes_total",
                    "operation",
                    "Innodb buffer pool page state changes.",
                    Kind::Counter,
                )
            }
        } else {
            (*suffix, *label, *help, *kind)
        };
        grouped
            .entry(suffix)
            .or_insert_with(|| Family::new(format!("mysql_global_status_{suffix}"), help, kind))
            .push(&[(label, rest)], value);
    }
    out.extend(grouped.into_values());
    out
}

/// `mysql_global_variables_*` (numeric ones) and `mysql_version_info`.
pub fn global_variables(variables: &HashMap<String, String>) -> Vec<Family> {
    let vars = classic(variables);
    let mut out: Vec<Family> = vars
        .iter()
        .filter_map(|(name, raw)| {
            Some(Family::single(
                &format!("mysql_global_variables_{name}"),
                "Generic gauge metric from SHOW GLOBAL VARIABLES.",
                Kind::Gauge,
                &[],
                parse_value(raw)?,
            ))
        })
        .collect();
    let text = |k: &str| vars.get(k).copied().unwrap_or_default();
    out.push(Family::single(
        "mysql_version_info",
        "MySQL version and distribution.",
        Kind::Gauge,
        &[
            ("innodb_version", text("innodb_version")),
            ("version", text("version")),
            ("version_comment", text("version_comment")),
        ],
        1.0,
    ));
    out
}

/// `mysql_slave_status_*`, one sample per replication connection, under
/// the classic column names.
pub fn slave_status(rows: &[Row]) -> Vec<Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for row in rows {
        let columns: HashMap<String, String> = row
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        let columns = classic(&columns);
        let label = |k: &str| columns.get(k).copied().unwrap_or_default();
        let labels = [
            ("master_host", label("master_host")),
            ("master_uuid", label("master_uuid")),
            ("channel_name", label("channel_name")),
            ("connection_name", label("connection_name")),
        ];
        for (column, raw) in &columns {
            if let Some(value) = parse_value(raw) {
                families
                    .entry(column.clone())
                    .or_insert_with(|| {
                        Family::new(
                            format!("mysql_slave_status_{column}"),
                            "Generic metric from SHOW SLAVE STATUS.",
                            Kind::Untyped,
                        )
                    })
                    .push(&labels, value);
            }
        }
    }
    families.into_values().collect()
}

/// `mysql_up` and how each collector fared in the last collection.
pub fn exporter(up: bool, runs: &[CollectorRun]) -> Vec<Family> {
    let mut duration = Family::new(
        "mysql_exporter_collector_duration_seconds",
        "Collector time duration.",
        Kind::Gauge,
    );
    let mut success = Family::new(
        "mysql_exporter_collector_success",
        "mysqld_exporter: Whether a collector succeeded.",
        Kind::Gauge,
    );
    for name in COLLECTORS {
        let run = runs.iter().find(|r| r.name == name);
        duration.push(&[("collector", name)], run.map_or(0.0, |r| r.seconds));
        success.push(
            &[("collector", name)],
            f64::from(u8::from(run.is_some_and(|r| r.ok))),
        );
    }
    vec![
        Family::single(
            "mysql_up",
            "Whether the MySQL server is up.",
            Kind::Gauge,
            &[],
            f64::from(u8::from(up)),
        ),
        duration,
        success,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn find<'a>(fams: &'a [Family], name: &str) -> &'a Family {
        fams.iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no {name} in {fams:?}"))
    }

    #[test]
    fn values_parse_as_mysqld_exporter_reads_them() {
        assert_eq!(parse_value("ON"), Some(1.0));
        assert_eq!(parse_value("YES"), Some(1.0));
        assert_eq!(parse_value("DISABLED"), Some(0.0));
        assert_eq!(parse_value("No"), Some(0.0));
        assert_eq!(parse_value("Connecting"), Some(0.0));
        assert_eq!(parse_value("1.000"), Some(1.0));
        assert_eq!(parse_value("mysql-bin.000003"), None);
        assert_eq!(parse_value(""), None);
    }

    #[test]
    fn status_values_are_grouped_like_mysqld_exporter() {
        let fams = global_status(&map(&[
            ("Com_select", "10"),
            ("Handler_read_key", "4"),
            ("Innodb_buffer_pool_pages_dirty", "3"),
            ("Innodb_buffer_pool_pages_flushed", "9"),
            ("Innodb_rows_inserted", "2"),
            ("Threads_connected", "5"),
            ("Rpl_semi_sync_master_status", "ON"),
            ("Slave_last_heartbeat", "2026-11-21 10:00:00"),
        ]));
        assert_eq!(
            find(&fams, "mysql_global_status_commands_total").value(&[("command", "select")]),
            Some(10.0)
        );
        assert_eq!(
            find(&fams, "mysql_global_status_handlers_total").value(&[("handler", "read_key")]),
            Some(4.0)
        );
        assert_eq!(
            find(&fams, "mysql_global_status_buffer_pool_dirty_pages").value(&[]),
            Some(3.0)
        );
        assert_eq!(
            find(&fams, "mysql_global_status_buffer_pool_page_changes_total")
                .value(&[("operation", "flushed")]),
            Some(9.0)
        );
        assert_eq!(
            find(&fams, "mysql_global_status_innodb_row_ops_total")
                .value(&[("operation", "inserted")]),
            Some(2.0)
        );
        let threads = find(&fams, "mysql_global_status_threads_connected");
        assert_eq!(
            (threads.kind, threads.value(&[])),
            (Kind::Untyped, Some(5.0))
        );
        assert_eq!(
            find(&fams, "mysql_global_status_rpl_semi_sync_master_status").value(&[]),
            Some(1.0)
        );
        assert!(!fams.iter().any(|f| f.name.contains("heartbeat")));
    }

    #[test]
    fn mysql_8_names_are_the_exporters_with_classic_aliases() {
        let status = global_status(&map(&[
            ("Rpl_semi_sync_source_status", "ON"),
            ("Com_show_replica_status", "3"),
            ("Com_show_slave_status", "5"),
        ]));
        for name in ["source", "master"] {
            let family = format!("mysql_global_status_rpl_semi_sync_{name}_status");
            assert_eq!(find(&status, &family).value(&[]), Some(1.0), "{family}");
        }
        // Both counters the server shows, each with its own value.
        let commands = find(&status, "mysql_global_status_commands_total");
        assert_eq!(commands.samples.len(), 2, "{commands:?}");
        assert_eq!(
            commands.value(&[("command", "show_slave_status")]),
            Some(5.0)
        );
        assert_eq!(
            commands.value(&[("command", "show_replica_status")]),
            Some(3.0)
        );
        let vars = global_variables(&map(&[
            ("replica_net_timeout", "4"),
            ("rpl_semi_sync_source_wait_for_replica_count", "1"),
            ("version", "8.4.3"),
        ]));
        for name in ["replica_net_timeout", "slave_net_timeout"] {
            let family = format!("mysql_global_variables_{name}");
            assert_eq!(find(&vars, &family).value(&[]), Some(4.0), "{family}");
        }
        assert_eq!(
            find(
                &vars,
                "mysql_global_variables_rpl_semi_sync_master_wait_for_slave_count"
            )
            .value(&[]),
            Some(1.0)
        );
        assert_eq!(
            find(&vars, "mysql_version_info").value(&[("version", "8.4.3")]),
            Some(1.0)
        );
        let row: Row = [
            ("Source_Host", Some("10.0.0.1")),
            ("Source_UUID", Some("3e11fa47-71ca-11e1-9e33-c80aa9429562")),
            ("Replica_IO_Running", Some("Connecting")),
            ("Replica_SQL_Running", Some("Yes")),
            ("Seconds_Behind_Source", None),
            ("Channel_Name", Some("")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect();
        let slave = slave_status(&[row]);
        let labels = [("master_host", "10.0.0.1"), ("channel_name", "")];
        // mysqld_exporter's names on MySQL 8.4 and later, and the classic ones.
        for name in ["replica_io_running", "slave_io_running"] {
            let family = format!("mysql_slave_status_{name}");
            assert_eq!(find(&slave, &family).value(&labels), Some(0.0), "{family}");
        }
        for name in ["replica_sql_running", "slave_sql_running"] {
            let family = format!("mysql_slave_status_{name}");
            assert_eq!(find(&slave, &family).value(&labels), Some(1.0), "{family}");
        }
        assert!(
            !slave
                .iter()
                .any(|f| f.name.starts_with("mysql_slave_status_seconds_behind")),
            "a NULL lag is no sample"
        );
    }

    #[test]
    fn every_collector_is_reported_even_one_that_never_ran() {
        let runs = [CollectorRun {
            name: "global_variables",
            ok: true,
            seconds: 0.002,
        }];
        let fams = exporter(true, &runs);
        let success = find(&fams, "mysql_exporter_collector_success");
        assert_eq!(
            success.value(&[("collector", "global_variables")]),
            Some(1.0)
        );
        assert_eq!(success.value(&[("collector", "slave_status")]), Some(0.0));
        assert_eq!(find(&fams, "mysql_up").value(&[]), Some(1.0));
    }
}
