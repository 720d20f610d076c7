//! A small certificate authority for a dbfleet fleet.
//!
//! `dbfleet cert init` makes the CA; `dbfleet cert issue` makes leaf
//! certificates whose one SAN URI, `dbfleet://ROLE/NAME`, is the holder's
//! identity everywhere. Keys are written 0600 through a temporary file and a
//! rename, so a crash never leaves a readable or half-written key.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, string::Ia5String,
};
use time::OffsetDateTime;

use crate::identity::{Identity, Role};

/// File name of the CA certificate inside a certificate directory.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA key inside a certificate directory.
pub const CA_KEY: &str = "ca.key";

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Refusing to overwrite an existing file.
    #[error("{} already exists; remove it first or choose another directory", .0.display())]
    Exists(PathBuf),
    /// The CA files are not there.
    #[error("no CA in {}: run `dbfleet cert init --dir {}` first", .0.display(), .0.display())]
    NoCa(PathBuf),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The name is not usable in an identity.
    #[error("invalid name {0:?}: use 1-63 letters, digits, '.', '_' or '-'")]
    BadName(String),
    /// rcgen refused the request.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Not a certificate serial number.
    #[error("{0:?} is not a serial number: give it in hex, as `openssl x509 -serial` prints it")]
    BadSerial(String),
    /// Revoking an identity the CA never issued a certificate to.
    #[error(
        "this CA issued no certificate to {0} (its record, issued.jsonl, lists every one it did)"
    )]
    NotIssued(String),
    /// A mysqld certificate that names no address: no replica checking
    /// its source would accept it.
    #[error(
        "a mysql certificate must name the address replicas dial: add --ip ADDRESS (or --dns NAME) for {0}"
    )]
    MysqlWithoutAddress(String),
    /// A record of the CA directory does not read.
    #[error("{}: {reason}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` with `mode`, atomically, refusing to
/// overwrite unless `overwrite`.
pub fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), CertError> {
    if !overwrite && path.exists() {
        return Err(CertError::Exists(path.to_path_buf()));
    }
    crate::durable::write_atomic(path, contents, mode).map_err(io_err(path))?;
    Ok(())
}

/// Creates a CA in `dir` (made if missing): `ca.pem` and `ca.key` (0600).
pub fn init_ca(dir: &Path) -> Result<PathBuf, CertError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(CertError::Exists(p.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "dbfleet CA");
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600, false)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644, false)?;
    Ok(cert_path)
}

/// What to put into a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// Role of the holder.
    pub role: Role,
    /// Name of the holder (host, coordinator id, person).
    pub name: String,
    /// IP addresses the holder serves on (servers are verified against them).
    pub ips: Vec<IpAddr>,
    /// DNS names the holder serves on.
    pub dns: Vec<String>,
    /// Start of validity, relative to now (negative: in the past).
    pub valid_from: time::Duration,
    /// Length of validity from `valid_from`.
    pub valid_for: Duration,
}

impl LeafRequest {
    /// A one-year certificate valid from an hour ago (tolerating clock skew).
    pub fn new(role: Role, name: impl Into<String>) -> LeafRequest {
        LeafRequest {
            role,
            name: name.into(),
            ips: Vec::new(),
            dns: Vec::new(),
            valid_from: -time::Duration::hours(1),
            valid_for: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// Paths of an issued certificate and key.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// File stem of a leaf: `ROLE-NAME`.
pub fn leaf_stem(role: Role, name: &str) -> String {
    format!("{role}-{name}")
}

impl LeafFiles {
    /// Where [`issue_leaf`] writes `role/name`'s certificate and key in
    /// `dir`: `ROLE-NAME.pem` and `ROLE-NAME.key`.
    pub fn of(dir: &Path, role: Role, name: &str) -> LeafFiles {
        let stem = leaf_stem(role, name);
        LeafFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        }
    }
}

/// Issues a leaf signed by the CA in `dir`, written as `ROLE-NAME.pem` and
/// `ROLE-NAME.key` into `out_dir`.
pub fn issue_leaf(dir: &Path, out_dir: &Path, req: &LeafRequest) -> Result<LeafFiles, CertError> {
    let (cert_pem, key_pem) = issue_leaf_pem(dir, req)?;
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let files = LeafFiles::of(out_dir, req.role, &req.name);
    for p in [&files.cert, &files.key] {
        if p.exists() {
            return Err(CertError::Exists(p.clone()));
        }
    }
    write_file(&files.key, key_pem.as_bytes(), 0o600, false)?;
    write_file(&files.cert, cert_pem.as_bytes(), 0o644, false)?;
    Ok(files)
}

/// Issues a leaf signed by the CA in `dir` and returns (cert PEM, key PEM).
pub fn issue_leaf_pem(dir: &Path, req: &LeafRequest) -> Result<(String, String), CertError> {
    if req.role == Role::Mysql && req.ips.is_empty() && req.dns.is_empty() {
        return Err(CertError::MysqlWithoutAddress(req.name.clone()));
    }
    let identity = Identity::parse_uri(&Identity::new(req.role, req.name.clone()).uri())
        .map_err(|_| CertError::BadName(req.name.clone()))?;
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        return Err(CertError::NoCa(dir.to_path_buf()));
    }
    let ca_pem = fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let (serial, serial_hex) = crate::revocation::new_serial();
    params.serial_number = Some(serial);
    let mut sans = vec![SanType::URI(Ia5String::try_from(identity.uri())?)];
    sans.extend(req.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    for d in &req.dns {
        sans.push(SanType::DnsName(Ia5String::try_from(d.clone())?));
    }
    params.subject_alt_names = sans;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.uri());
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now + req.valid_from;
    params.not_after = params.not_before
        + time::Duration::try_from(req.valid_for).unwrap_or(time::Duration::days(365));
    let cert = params.signed_by(&key, &issuer)?;
    crate::revocation::record_issued(
        dir,
        &crate::revocation::IssuedLeaf {
            serial: serial_hex,
            identity: identity.uri(),
            not_after: params.not_after.unix_timestamp(),
        },
    )?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{TlsContext, TlsPaths};

    #[test]
    fn a_mysql_certificate_must_name_an_address() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let mut req = LeafRequest::new(Role::Mysql, "db1");
        let e = issue_leaf(dir.path(), dir.path(), &req).unwrap_err();
        assert!(e.to_string().contains("--ip ADDRESS"), "{e}");
        req.ips.push("10.0.0.11".parse().unwrap());
        issue_leaf(dir.path(), dir.path(), &req).unwrap();
    }

    #[test]
    fn issued_certificates_load_with_their_identity() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        assert!(matches!(init_ca(dir.path()), Err(CertError::Exists(_))));
        let mut req = LeafRequest::new(Role::Agent, "db1");
        req.ips.push("127.0.0.1".parse().unwrap());
        let files = issue_leaf(dir.path(), dir.path(), &req).unwrap();
        let mode = fs::metadata(&files.key).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        let ctx = TlsContext::load(&TlsPaths {
            ca: dir.path().join(CA_CERT),
            cert: files.cert,
            key: files.key,
        })
        .unwrap();
        assert_eq!(ctx.identity(), Identity::new(Role::Agent, "db1"));
        assert!(matches!(
            issue_leaf(dir.path(), dir.path(), &req),
            Err(CertError::Exists(_))
        ));
        assert!(matches!(
            issue_leaf_pem(dir.path(), &LeafRequest::new(Role::Agent, "bad/name")),
            Err(CertError::BadName(_))
        ));
    }
}
