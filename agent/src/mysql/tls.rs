//! TLS on the agent's own TCP connections to MySQL, and how a replica's
//! link to its source is secured.
//!
//! The agent trusts exactly the CA in `[mysql] tls_ca_file` (no public
//! roots: a certificate bought for any web name must not pass for a
//! mysqld) and checks the server's certificate against the address it
//! dials. Over the Unix socket nothing travels on a network, so no TLS is
//! asked there.

use std::path::Path;

use dbfleet_proto::model::Flavor;
use dbfleet_proto::mysql_tls::LinkTls;
use mysql_async::SslOpts;

use super::flavor::Row;

/// Options that accept only a server whose certificate `ca` signed for
/// the address dialled.
pub(crate) fn verified(ca: &Path) -> SslOpts {
    SslOpts::default()
        .with_root_certs(vec![ca.to_path_buf().into()])
        .with_disable_built_in_roots(true)
}

/// How a replica's connection to its source is secured, from its replica
/// status row; `None` when the row does not say (a flavor without those
/// columns).
pub fn link_tls(flavor: Flavor, row: &Row) -> Option<LinkTls> {
    let (allowed, verify) = match flavor {
        Flavor::MariaDb => ("Master_SSL_Allowed", "Master_SSL_Verify_Server_Cert"),
        Flavor::MySql => ("Source_SSL_Allowed", "Source_SSL_Verify_Server_Cert"),
    };
    let value = |name: &str| row.get(name).and_then(|v| v.as_deref());
    // "Ignored": asked for, but the server was built without TLS.
    Some(match (value(allowed)?, value(verify)?) {
        ("Yes", "Yes") => LinkTls::Verified,
        ("Yes", _) => LinkTls::Encrypted,
        _ => LinkTls::Off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    #[test]
    fn link_tls_reads_both_flavors_columns() {
        let cases = [
            ("Yes", "Yes", LinkTls::Verified),
            ("Yes", "No", LinkTls::Encrypted),
            ("No", "No", LinkTls::Off),
            ("No", "Yes", LinkTls::Off),
            ("Ignored", "Yes", LinkTls::Off),
        ];
        for (allowed, verify, want) in cases {
            let maria = row(&[
                ("Master_SSL_Allowed", allowed),
                ("Master_SSL_Verify_Server_Cert", verify),
            ]);
            assert_eq!(link_tls(Flavor::MariaDb, &maria), Some(want));
            let mysql = row(&[
                ("Source_SSL_Allowed", allowed),
                ("Source_SSL_Verify_Server_Cert", verify),
            ]);
            assert_eq!(link_tls(Flavor::MySql, &mysql), Some(want));
            // the other flavor's columns say nothing
            assert_eq!(link_tls(Flavor::MySql, &maria), None);
        }
    }
}
