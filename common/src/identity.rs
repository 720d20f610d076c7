//! Who is on the other end of a connection, taken from its certificate.
//!
//! Every dbfleet certificate carries exactly one SAN URI
//! `dbfleet://ROLE/NAME`; nothing a peer *says* about itself is trusted
//! beyond what that URI states.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The URI scheme of dbfleet identities.
pub const SCHEME: &str = "dbfleet://";

/// What a peer may do is decided by its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A `dbfleet-agent` on a database host.
    Agent,
    /// A `dbfleet-coordinator`.
    Coordinator,
    /// A person or tool allowed to change the fleet.
    Operator,
    /// A person or tool allowed only to read.
    Viewer,
    /// A mysqld's server certificate, for TLS to MySQL. Its key is
    /// readable by the mysql user, so it may do nothing in dbfleet: no
    /// server of ours lists this role.
    Mysql,
}

impl Role {
    /// Every role, for help texts and parsing.
    pub const ALL: [Role; 5] = [
        Role::Agent,
        Role::Coordinator,
        Role::Operator,
        Role::Viewer,
        Role::Mysql,
    ];

    /// The role as it appears in the identity URI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Coordinator => "coordinator",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Mysql => "mysql",
        }
    }

    /// Parses the URI form of a role.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified peer: role and name from its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What the peer is.
    pub role: Role,
    /// Which one it is (host name, coordinator id, operator name).
    pub name: String,
}

/// Why a certificate does not carry a usable identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The DER could not be parsed as X.509.
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    /// No `dbfleet://ROLE/NAME` URI among the SANs.
    #[error("certificate has no {SCHEME}ROLE/NAME subject alternative name")]
    Missing,
    /// More than one dbfleet URI: ambiguous, so refused.
    #[error("certificate has more than one {SCHEME} identity")]
    Ambiguous,
    /// A dbfleet URI whose role or name is not valid.
    #[error("certificate identity {0:?} is not {SCHEME}ROLE/NAME with a known role")]
    Malformed(String),
}

impl Identity {
    /// Builds an identity; `name` is expected to be a valid dbfleet name.
    pub fn new(role: Role, name: impl Into<String>) -> Identity {
        Identity {
            role,
            name: name.into(),
        }
    }

    /// The SAN URI form, `dbfleet://ROLE/NAME`.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}", self.role, self.name)
    }

    /// Parses `dbfleet://ROLE/NAME`.
    pub fn parse_uri(uri: &str) -> Result<Identity, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_string());
        let rest = uri.strip_prefix(SCHEME).ok_or_else(malformed)?;
        let (role, name) = rest.split_once('/').ok_or_else(malformed)?;
        let role = Role::parse(role).ok_or_else(malformed)?;
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(malformed());
        }
        Ok(Identity::new(role, name))
    }

    /// Extracts the identity from a DER certificate.
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Parse(e.to_string()))?
            .ok_or(IdentityError::Missing)?;
        let mut found = None;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with(SCHEME)
            {
                if found.is_some() {
                    return Err(IdentityError::Ambiguous);
                }
                found = Some(Identity::parse_uri(uri)?);
            }
        }
        found.ok_or(IdentityError::Missing)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

/// The identity the authorization layer attached to a request.
///
/// Handlers behind [`crate::authz::AuthorizeLayer`] always find one; a
/// missing one means the layer was not installed, which is answered as an
/// internal error rather than trusted.
pub fn request_identity<T>(req: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| tonic::Status::internal("request reached a handler without an identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip_and_rejections() {
        let id = Identity::new(Role::Agent, "db1");
        assert_eq!(id.uri(), "dbfleet://agent/db1");
        assert_eq!(Identity::parse_uri(&id.uri()).unwrap(), id);
        for bad in [
            "dbfleet://root/x",
            "dbfleet://agent/",
            "dbfleet://agent",
            "spiffe://agent/db1",
            "dbfleet://agent/a/b",
        ] {
            assert!(Identity::parse_uri(bad).is_err(), "{bad}");
        }
    }
}
