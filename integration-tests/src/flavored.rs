//! Tests that run on both flavors: one test body, run once on MariaDB and
//! once on MySQL ([`on_both_flavors!`](crate::on_both_flavors)), and the
//! few statements a test itself sends, spelled per flavor.

use dbfleet_proto::model::Flavor;

/// Runs an `async fn NAME(flavor: Flavor)` body as two tests,
/// `NAME::mariadb` and `NAME::mysql`.
#[macro_export]
macro_rules! on_both_flavors {
    ($(#[$attr:meta])* async fn $name:ident($flavor:ident: Flavor) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($flavor: dbfleet_proto::model::Flavor) $body

            #[tokio::test]
            async fn mariadb() {
                run(dbfleet_proto::model::Flavor::MariaDb).await
            }

            #[tokio::test]
            async fn mysql() {
                run(dbfleet_proto::model::Flavor::MySql).await
            }
        }
    };
}

/// Stops a replica's IO thread.
pub fn stop_io(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => "STOP SLAVE IO_THREAD",
        Flavor::MySql => "STOP REPLICA IO_THREAD",
    }
}

/// Starts a replica's IO thread.
pub fn start_io(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => "START SLAVE IO_THREAD",
        Flavor::MySql => "START REPLICA IO_THREAD",
    }
}

/// Turns the replica side of semi-sync off (the replica stops
/// acknowledging).
pub fn semi_sync_replica_off(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => "SET GLOBAL rpl_semi_sync_slave_enabled = OFF",
        Flavor::MySql => "SET GLOBAL rpl_semi_sync_replica_enabled = OFF",
    }
}

/// Whether the source side of semi-sync is on, as 0 or 1.
pub fn semi_sync_source_enabled(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => "SELECT @@rpl_semi_sync_master_enabled",
        Flavor::MySql => "SELECT @@rpl_semi_sync_source_enabled",
    }
}

/// `statement` run as the DBA directly on a read-only replica: MariaDB's
/// root passes `read_only`; MySQL's `super_read_only` stops even root, so
/// it is lifted around the statement (`read_only` stays on, so nothing
/// else may write meanwhile).
pub fn on_read_only_replica(flavor: Flavor, statement: &str) -> Vec<String> {
    match flavor {
        Flavor::MariaDb => vec![statement.to_string()],
        Flavor::MySql => vec![
            "SET GLOBAL super_read_only = OFF".into(),
            statement.to_string(),
            "SET GLOBAL super_read_only = ON".into(),
        ],
    }
}
