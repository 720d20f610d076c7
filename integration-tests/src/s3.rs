//! A real S3-compatible server for the tests: `s3s-fs`, which keeps each
//! object as a file under its root (`ROOT/BUCKET/KEY`), installed into
//! `target/tools` by `scripts/setup`. The agents reach it over HTTP on a
//! loopback address with keys from files, like any bucket.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{PATIENCE, Proc, toml_path};

/// The bucket every test uses.
pub const BUCKET: &str = "dbfleet";
const KEY_ID: &str = "dbfleet-test";
const SECRET: &str = "test-secret-key-0123456789";

/// The s3s-fs program: `target/tools/bin/s3s-fs` or on PATH.
pub fn server_program() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary has a path");
    // target/debug/deps/<test> -> target/tools/bin
    let installed = exe
        .ancestors()
        .nth(3)
        .map(|t| t.join("tools/bin/s3s-fs"))
        .filter(|p| p.is_file());
    installed
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("s3s-fs"))
                .find(|p| p.is_file())
        })
        .expect("s3s-fs not found in target/tools/bin or PATH: run ./scripts/setup")
}

/// A running S3 server with one bucket, killed when dropped.
#[derive(Debug)]
pub struct S3Server {
    proc: Proc,
    /// `http://IP:PORT`.
    pub endpoint: String,
    /// Where it keeps the objects (`root/BUCKET/KEY`).
    pub root: PathBuf,
    /// The key files agents read.
    pub key_id_file: PathBuf,
    /// See `key_id_file`.
    pub secret_file: PathBuf,
}

impl S3Server {
    /// Starts one on `ip:port`, its files in `dir` (created), and waits
    /// until it listens.
    pub fn start(dir: &Path, ip: &str, port: u16) -> S3Server {
        let root = dir.join("objects");
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket");
        let key_id_file = dir.join("s3-key-id");
        let secret_file = dir.join("s3-secret");
        std::fs::write(&key_id_file, KEY_ID).unwrap();
        std::fs::write(&secret_file, SECRET).unwrap();
        let proc = Proc::start(
            &server_program(),
            &[
                "--host".into(),
                ip.into(),
                "--port".into(),
                port.to_string(),
                "--access-key".into(),
                KEY_ID.into(),
                "--secret-key".into(),
                SECRET.into(),
                root.to_string_lossy().into_owned(),
            ],
            dir.join("s3s-fs.log"),
        );
        let mut server = S3Server {
            proc,
            endpoint: format!("http://{ip}:{port}"),
            root,
            key_id_file,
            secret_file,
        };
        server.wait_listening(&format!("{ip}:{port}"));
        server
    }

    fn wait_listening(&mut self, address: &str) {
        let give_up = std::time::Instant::now() + PATIENCE;
        while TcpStream::connect(address).is_err() {
            if let Ok(Some(st)) = self.proc.child.try_wait() {
                panic!(
                    "s3s-fs exited ({st}): {}",
                    std::fs::read_to_string(&self.proc.log).unwrap_or_default()
                );
            }
            assert!(std::time::Instant::now() < give_up, "s3s-fs never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's pid (to stop it with a signal).
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.proc.child.id() as i32)
    }

    /// The objects of `prefix` in the bucket, as files.
    pub fn objects(&self, prefix: &str) -> PathBuf {
        self.root.join(BUCKET).join(prefix)
    }

    /// An agent's `[backup]` and `[backup.s3]` sections for the bucket,
    /// keys under `prefix`.
    pub fn backup_section(&self, prefix: &str) -> String {
        format!(
            "[backup]\nrepository = \"s3://{BUCKET}/{prefix}\"\n\n[backup.s3]\nendpoint = {:?}\nallow_http = true\naccess_key_id_file = {}\nsecret_access_key_file = {}\npart_size_mib = 5\nrequest_timeout = \"3s\"\n",
            self.endpoint,
            toml_path(&self.key_id_file),
            toml_path(&self.secret_file),
        )
    }
}
