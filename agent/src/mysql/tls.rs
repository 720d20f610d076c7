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
///
/// Verified only when the source's certificate is checked against the
/// server's own CA (`server_ca`, its `@@ssl_ca`) and nothing else: a link
/// set up by hand against another CA file, a CA directory or no CA at all
/// (the system's public roots) checks a certificate, but not one of this
/// fleet's, so it counts as merely encrypted.
pub fn link_tls(flavor: Flavor, row: &Row, server_ca: &str) -> Option<LinkTls> {
    let (allowed, verify, ca_file, ca_path) = match flavor {
        Flavor::MariaDb => (
            "Master_SSL_Allowed",
            "Master_SSL_Verify_Server_Cert",
            "Master_SSL_CA_File",
            "Master_SSL_CA_Path",
        ),
        Flavor::MySql => (
            "Source_SSL_Allowed",
            "Source_SSL_Verify_Server_Cert",
            "Source_SSL_CA_File",
            "Source_SSL_CA_Path",
        ),
    };
    let value = |name: &str| row.get(name).and_then(|v| v.as_deref());
    let fleet_ca = !server_ca.is_empty()
        && value(ca_file) == Some(server_ca)
        && value(ca_path).unwrap_or_default().is_empty();
    // "Ignored": asked for, but the server was built without TLS.
    Some(match (value(allowed)?, value(verify)?) {
        ("Yes", "Yes") if fleet_ca => LinkTls::Verified,
        ("Yes", _) => LinkTls::Encrypted,
        _ => LinkTls::Off,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::flavor::text_row as row;

    const CA: &str = "/etc/mysql/tls/ca.pem";

    #[test]
    fn link_tls_reads_both_flavors_columns() {
        let cases = [
            ("Yes", "Yes", CA, "", LinkTls::Verified),
            ("Yes", "No", CA, "", LinkTls::Encrypted),
            ("No", "No", CA, "", LinkTls::Off),
            ("No", "Yes", CA, "", LinkTls::Off),
            ("Ignored", "Yes", CA, "", LinkTls::Off),
            // checked, but not against this server's CA alone
            (
                "Yes",
                "Yes",
                "/etc/ssl/other-ca.pem",
                "",
                LinkTls::Encrypted,
            ),
            ("Yes", "Yes", "", "", LinkTls::Encrypted),
            ("Yes", "Yes", CA, "/etc/ssl/certs", LinkTls::Encrypted),
        ];
        for (allowed, verify, file, path, want) in cases {
            let maria = row(&[
                ("Master_SSL_Allowed", allowed),
                ("Master_SSL_Verify_Server_Cert", verify),
                ("Master_SSL_CA_File", file),
                ("Master_SSL_CA_Path", path),
            ]);
            assert_eq!(link_tls(Flavor::MariaDb, &maria, CA), Some(want));
            let mysql = row(&[
                ("Source_SSL_Allowed", allowed),
                ("Source_SSL_Verify_Server_Cert", verify),
                ("Source_SSL_CA_File", file),
                ("Source_SSL_CA_Path", path),
            ]);
            assert_eq!(link_tls(Flavor::MySql, &mysql, CA), Some(want));
            // the other flavor's columns say nothing
            assert_eq!(link_tls(Flavor::MySql, &maria, CA), None);
        }
        // a server without a CA of its own verifies no link
        let maria = row(&[
            ("Master_SSL_Allowed", "Yes"),
            ("Master_SSL_Verify_Server_Cert", "Yes"),
            ("Master_SSL_CA_File", ""),
        ]);
        assert_eq!(
            link_tls(Flavor::MariaDb, &maria, ""),
            Some(LinkTls::Encrypted)
        );
    }
}
