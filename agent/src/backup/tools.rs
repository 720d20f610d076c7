//! Finding the external tools a backup needs, and saying clearly what is
//! missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian and most distributions put the server tools besides PATH.
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/usr/local/bin"];

/// The package that ships `name` on Debian, for the error message.
fn package_of(name: &str) -> &'static str {
    match name {
        "mariadb-backup" | "mbstream" => "mariadb-backup",
        "mariadbd" | "mariadb-install-db" => "mariadb-server",
        _ => "mariadb-client",
    }
}

/// The full path of `name`, from PATH or the usual server directories.
pub fn find(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{name} not found in PATH or {}; install the {} package (apt-get install {})",
                EXTRA_DIRS.join(", "),
                package_of(name),
                package_of(name)
            )
        })
}

/// The full path of MySQL's `name` for a server whose `@@basedir` is
/// `basedir`: its own `bin/` first (a server's client tools are of its
/// version, wherever it was unpacked), then as [`find`] looks.
pub fn find_beside(basedir: &Path, name: &str) -> Result<PathBuf, String> {
    let own = basedir.join("bin").join(name);
    if own.is_file() {
        return Ok(own);
    }
    find(name).map_err(|_| {
        format!(
            "{name} is neither in {} (the server's basedir) nor in PATH or {}; install the MySQL client programs of the server's version",
            basedir.join("bin").display(),
            EXTRA_DIRS.join(", ")
        )
    })
}

/// The first line of `tool --version`.
pub fn version(tool: &std::path::Path) -> Result<String, String> {
    let out = Command::new(tool)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool.display()))?;
    // mariadb-backup prints its version on stderr
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    if line.is_empty() {
        return Err(format!("{} --version printed nothing", tool.display()));
    }
    Ok(line.trim().to_string())
}

/// The tool's version must be the server's (mariadb-backup refuses, or
/// worse, misreads, the files of another server version; a dump tool of
/// another version may not know the server's system tables).
pub fn check_matches(tool_version: &str, server_version: &str) -> Result<(), String> {
    let server = server_version.split('-').next().unwrap_or_default();
    let same = tool_version
        .split_whitespace()
        .any(|word| word.split('-').next() == Some(server));
    if server.is_empty() || same {
        Ok(())
    } else {
        Err(format!(
            "{tool_version} does not match the server version {server}; install the backup tools of the server's own version"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package_and_versions_must_match() {
        let e = find("mariadb-backup-that-does-not-exist").unwrap_err();
        assert!(
            e.contains("not found") && e.contains("apt-get install"),
            "{e}"
        );
        let tool =
            "mariadb-backup based on MariaDB server 10.11.19-MariaDB debian-linux-gnu (x86_64)";
        assert!(check_matches(tool, "10.11.19-MariaDB-0+deb12u1-log").is_ok());
        assert!(check_matches(tool, "10.11.1-MariaDB-log").is_err());
        let e = check_matches(tool, "11.4.2-MariaDB-log").unwrap_err();
        assert!(e.contains("11.4.2"), "{e}");
    }
}
