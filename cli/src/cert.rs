//! `dbfleet cert init|issue`: the CA and leaf certificates of a fleet.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use dbfleet_common::certs::{self, CertError, LeafFiles, LeafRequest};
use dbfleet_common::identity::Role;

/// Creates the CA in `dir`.
pub fn init(dir: &Path) -> Result<PathBuf, CertError> {
    certs::init_ca(dir)
}

/// Issues `ROLE-NAME.pem/.key` into `dir`, signed by the CA there.
pub fn issue(
    dir: &Path,
    role: Role,
    name: &str,
    ips: &[IpAddr],
    dns: &[String],
    days: u32,
) -> Result<LeafFiles, CertError> {
    let mut req = LeafRequest::new(role, name);
    req.ips = ips.to_vec();
    req.dns = dns.to_vec();
    req.valid_for = std::time::Duration::from_secs(u64::from(days) * 24 * 3600);
    certs::issue_leaf(dir, dir, &req)
}
