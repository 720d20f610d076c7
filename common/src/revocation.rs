//! Revoking certificates before they expire.
//!
//! The CA directory keeps a record of every leaf it issued
//! (`issued.jsonl`: serial, identity, expiry) and of every revocation
//! (`revoked.json`), and the CA signs a certificate revocation list,
//! `ca.crl.pem`. Copied next to `ca.pem` on every host, it is loaded with
//! the certificates and reloaded when it changes, as they are: every server
//! then refuses a revoked client certificate at the handshake, and every
//! client a revoked server certificate. The list is signed by the CA, so
//! whoever can write the file can only make it unreadable (and a list that
//! does not load keeps the previous one in force), never unrevoke.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::certs::{CA_CERT, CA_KEY, CertError};
use crate::identity::Identity;

/// File name of the revocation list, next to `ca.pem`.
pub const CA_CRL: &str = "ca.crl.pem";
const ISSUED: &str = "issued.jsonl";
const REVOKED: &str = "revoked.json";
/// How long a list is valid for. Nothing enforces it (a stale list is
/// better than none); a new one is signed at every revocation.
const CRL_VALIDITY: time::Duration = time::Duration::days(3650);

/// One leaf the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedLeaf {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// `dbfleet://ROLE/NAME`.
    pub identity: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Its identity, when the CA issued it.
    #[serde(default)]
    pub identity: Option<String>,
    /// When it was revoked, Unix seconds.
    pub revoked_at: i64,
}

/// Which certificates to revoke.
#[derive(Debug, Clone)]
pub enum Which {
    /// Every certificate the CA issued to this identity.
    Identity(Identity),
    /// The certificate with this serial (hex).
    Serial(String),
    /// The certificate in this PEM file.
    CertFile(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A serial's canonical form: lowercase hex without separators or
/// leading zeros.
fn canonical_serial(s: &str) -> Result<String, CertError> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CertError::BadSerial(s.to_string()));
    }
    let trimmed = hex.trim_start_matches('0');
    Ok(if trimmed.is_empty() { "0" } else { trimmed }.to_string())
}

fn serial_bytes(hex: &str) -> Vec<u8> {
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_string()
    };
    (0..padded.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&padded[i..i + 2], 16).ok())
        .collect()
}

/// Notes a leaf just issued from the CA in `dir`.
pub(crate) fn record_issued(dir: &Path, leaf: &IssuedLeaf) -> Result<(), CertError> {
    let path = dir.join(ISSUED);
    let mut line = serde_json::to_string(leaf).expect("leaves encode");
    line.push('\n');
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(io_err(&path))
}

/// Every leaf the CA in `dir` issued.
pub fn issued(dir: &Path) -> Result<Vec<IssuedLeaf>, CertError> {
    let path = dir.join(ISSUED);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| CertError::Record {
                path: path.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Every revocation so far.
pub fn revoked(dir: &Path) -> Result<Vec<Revocation>, CertError> {
    let path = dir.join(REVOKED);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| CertError::Record {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Revokes `which` in the CA in `dir` and signs a new `ca.crl.pem`;
/// returns the revocations made now (none: all were revoked already).
pub fn revoke(dir: &Path, which: &Which) -> Result<Vec<Revocation>, CertError> {
    if !dir.join(CA_CERT).exists() || !dir.join(CA_KEY).exists() {
        return Err(CertError::NoCa(dir.to_path_buf()));
    }
    let leaves = issued(dir)?;
    let targets: Vec<(String, Option<String>)> = match which {
        Which::Identity(id) => {
            let uri = id.uri();
            let found: Vec<_> = leaves
                .iter()
                .filter(|l| l.identity == uri)
                .map(|l| (l.serial.clone(), Some(l.identity.clone())))
                .collect();
            if found.is_empty() {
                return Err(CertError::NotIssued(uri));
            }
            found
        }
        Which::Serial(s) => {
            let serial = canonical_serial(s)?;
            let identity = leaves
                .iter()
                .find(|l| l.serial == serial)
                .map(|l| l.identity.clone());
            vec![(serial, identity)]
        }
        Which::CertFile(path) => {
            let pem = fs::read(path).map_err(io_err(path))?;
            use rustls::pki_types::pem::PemObject;
            let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).map_err(|e| {
                CertError::Record {
                    path: path.clone(),
                    reason: format!("not a PEM certificate: {e}"),
                }
            })?;
            let (_, cert) =
                x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::Record {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let serial = canonical_serial(&cert.raw_serial_as_string())?;
            let identity = Identity::from_cert_der(&der).ok().map(|i| i.uri());
            vec![(serial, identity)]
        }
    };
    let mut all = revoked(dir)?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut made = Vec::new();
    for (serial, identity) in targets {
        if all.iter().any(|r| r.serial == serial) {
            continue;
        }
        let r = Revocation {
            serial,
            identity,
            revoked_at: now,
        };
        all.push(r.clone());
        made.push(r);
    }
    let path = dir.join(REVOKED);
    crate::certs::write_file(
        &path,
        &serde_json::to_vec_pretty(&all).expect("revocations encode"),
        0o600,
        true,
    )?;
    sign_list(dir, &all)?;
    Ok(made)
}

/// Signs `ca.crl.pem` listing `all`.
fn sign_list(dir: &Path, all: &[Revocation]) -> Result<PathBuf, CertError> {
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let ca_pem = fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem)?)?;
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        // increases with every list signed
        crl_number: SerialNumber::from(
            u64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(0),
        ),
        issuing_distribution_point: None,
        revoked_certs: all
            .iter()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial_bytes(&r.serial)),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at).unwrap_or(now),
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    let path = dir.join(CA_CRL);
    crate::certs::write_file(&path, crl.pem()?.as_bytes(), 0o644, true)?;
    Ok(path)
}

/// The serial of a leaf rcgen is about to sign, and its record.
pub(crate) fn new_serial() -> (SerialNumber, String) {
    let mut bytes: [u8; 16] = rand::random();
    // positive, and no leading zero byte to canonicalise away
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (SerialNumber::from_slice(&bytes), hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_in_one_form() {
        assert_eq!(canonical_serial("00:AB:01").unwrap(), "ab01");
        assert_eq!(canonical_serial("0").unwrap(), "0");
        assert!(canonical_serial("xyz").is_err());
        assert_eq!(serial_bytes("ab01"), vec![0xab, 0x01]);
        assert_eq!(serial_bytes("b01"), vec![0x0b, 0x01]);
    }
}
