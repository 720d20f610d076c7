//! Loading TOML config files and secret files with errors an operator can
//! act on: the file, the field and the fix, never the secret itself.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config or secret file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The TOML is malformed or a field is wrong; `message` names it.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's description, with line and field.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{}: `{field}`: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field path.
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A secret file other users can read.
    #[error(
        "secret file {} is accessible to other users (mode {mode:o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    SecretPermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// An empty secret file.
    #[error("secret file {} is empty", path.display())]
    EmptySecret {
        /// The file.
        path: PathBuf,
    },
}

/// Reads and parses a TOML file into `T` (which should deny unknown fields,
/// so a misspelt key is an error rather than a silently ignored setting).
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// A secret whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself: call only where it is handed to its consumer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a secret from a file that only its owner (and group) may read.
/// One trailing newline is dropped, as editors and `echo` add it.
pub fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mode = fs::metadata(path).map_err(read_err)?.permissions().mode();
    if mode & 0o007 != 0 {
        return Err(ConfigError::SecretPermissions {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    let mut s = fs::read_to_string(path).map_err(read_err)?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    if s.is_empty() {
        return Err(ConfigError::EmptySecret {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    #[test]
    fn secret_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        fs::write(&p, "hunter2\n").unwrap();
        let s = read_secret(&p).unwrap();
        assert_eq!(s.expose(), "hunter2");
        assert!(!format!("{s:?}{s}").contains("hunter2"));

        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("hunter2"), "{e}");

        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&p, "\n").unwrap();
        assert!(matches!(
            read_secret(&p),
            Err(ConfigError::EmptySecret { .. })
        ));
    }
}
