//! Data signed with a process's own certificate key, so that whoever reads
//! it later (from a shared repository, say) knows which certificate wrote
//! it. The binlog archive's chunk metas carry one: a repository is writable
//! by every agent of the fleet, so without a signature any of them (or
//! anyone with the bucket's keys) could write a stream that another host's
//! point-in-time recovery replays as a superuser.
//!
//! The signature is made with the key of the process's TLS certificate and
//! carries that certificate chain; checking it means the chain leads to the
//! fleet's CA, was valid and not revoked at the signing time, and the
//! signature covers exactly the bytes given. The signer's identity is then
//! the certificate's `dbfleet://ROLE/NAME`.

use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

/// A signature with the signer's certificate chain, as stored in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The TLS `SignatureScheme` number (e.g. 0x0403, ECDSA P-256 SHA-256).
    pub scheme: u16,
    /// The signature, hex.
    pub signature: String,
    /// The signer's certificate chain, leaf first, DER in hex.
    pub chain: Vec<String>,
    /// When it was signed (Unix ms, signer's clock): the certificate must
    /// have been valid then.
    pub signed_at_unix_ms: i64,
}

/// The schemes a signer may use, in order of preference.
pub(crate) const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower-case or upper-case hex `s`; `None` if it is not hex.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 64 << 10 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Signature {
    /// The chain as DER certificates; an error says what is malformed.
    pub(crate) fn chain_der(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        if self.chain.is_empty() || self.chain.len() > 4 {
            return Err(format!(
                "the signature carries {} certificates (1 to 4 expected)",
                self.chain.len()
            ));
        }
        self.chain
            .iter()
            .map(|c| {
                unhex(c)
                    .map(CertificateDer::from)
                    .ok_or_else(|| "the signature's certificate is not hex".to_string())
            })
            .collect()
    }

    /// The signature bytes.
    pub(crate) fn signature_bytes(&self) -> Result<Vec<u8>, String> {
        unhex(&self.signature).ok_or_else(|| "the signature is not hex".to_string())
    }

    /// The signing time, for certificate validity.
    pub(crate) fn signed_at(&self) -> Result<UnixTime, String> {
        u64::try_from(self.signed_at_unix_ms)
            .map(|ms| UnixTime::since_unix_epoch(std::time::Duration::from_millis(ms)))
            .map_err(|_| "the signing time is before 1970".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{self, LeafRequest};
    use crate::identity::{Identity, Role};
    use crate::tls::{TlsContext, TlsPaths};
    use std::path::Path;
    use std::sync::Arc;

    fn context(ca: &Path, role: Role, name: &str) -> Arc<TlsContext> {
        let files = certs::issue_leaf(ca, ca, &LeafRequest::new(role, name)).unwrap();
        TlsContext::load(&TlsPaths {
            ca: ca.join(certs::CA_CERT),
            cert: files.cert,
            key: files.key,
        })
        .unwrap()
    }

    #[test]
    fn a_signature_names_its_signer_and_covers_exactly_what_it_signed() {
        crate::tls::install_crypto_provider();
        let ca = tempfile::tempdir().unwrap();
        certs::init_ca(ca.path()).unwrap();
        let db1 = context(ca.path(), Role::Agent, "db1");
        let reader = context(ca.path(), Role::Agent, "db2");
        let sig = db1.sign(b"chunk meta").unwrap();
        assert_eq!(
            reader.verify_signed(b"chunk meta", &sig).unwrap(),
            Identity::new(Role::Agent, "db1")
        );
        let e = reader.verify_signed(b"chunk metA", &sig).unwrap_err();
        assert!(e.contains("does not match"), "{e}");

        let mut forged = sig.clone();
        forged.signature = hex(&[0u8; 64]);
        assert!(reader.verify_signed(b"chunk meta", &forged).is_err());
        let mut garbled = sig.clone();
        garbled.chain = vec!["zz".into()];
        assert!(reader.verify_signed(b"chunk meta", &garbled).is_err());
        let mut before_its_time = sig.clone();
        before_its_time.signed_at_unix_ms = 1;
        let e = reader
            .verify_signed(b"chunk meta", &before_its_time)
            .unwrap_err();
        assert!(e.contains("valid when it signed"), "{e}");

        // Another CA's certificate proves nothing here.
        let other = tempfile::tempdir().unwrap();
        certs::init_ca(other.path()).unwrap();
        let stranger = context(other.path(), Role::Agent, "db1");
        let e = reader
            .verify_signed(b"chunk meta", &stranger.sign(b"chunk meta").unwrap())
            .unwrap_err();
        assert!(e.contains("not one of the fleet's"), "{e}");
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex("0001abff").unwrap(), bytes);
        assert_eq!(unhex("0001ABFF").unwrap(), bytes);
        for bad in ["0", "zz", "0g", "é0"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
    }
}
