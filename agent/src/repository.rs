//! Where backups and the binlog archive are kept: a directory (local or
//! mounted) or an S3-compatible bucket. Everything that stores or reads
//! them (taking a backup, restore, verification, retention, archiving)
//! names its files by *key*, `CLUSTER/backups/ID/manifest.json` say, so it
//! works on either.
//!
//! The interface is blocking, like the file I/O it replaces: the large
//! transfers run on blocking threads (they feed and drain the backup
//! tools' pipes), and the small reads and writes are quick on a directory
//! and bounded by timeouts on a bucket. Two promises hold on both: a file
//! written with [`Repository::create`] is visible under its key only once
//! it is complete ([`ObjectWriter::finish`]), and [`Repository::put`]
//! replaces a small file atomically.

mod dir;
mod s3;

use std::io;
use std::path::PathBuf;

use dbfleet_common::seal::SealKey;
pub use dir::DirRepository;
pub use s3::{S3Config, S3Repository};

/// A file being written: it appears under its key only when finished;
/// dropped unfinished, it leaves nothing behind.
pub trait ObjectWriter: io::Write + Send {
    /// Makes the written bytes durable and visible under the key.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// Runs blocking repository I/O so that an async worker calling it first
/// hands its other tasks to the rest of the runtime: a hung bucket or
/// mount must never stall the agent's reports, lease votes or RPCs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A backup repository, and the key its data files are sealed with.
#[derive(Debug)]
pub struct Repository {
    backend: Backend,
    seal: Option<SealKey>,
}

/// Where the files are.
#[derive(Debug)]
enum Backend {
    /// A directory, local or mounted.
    Dir(DirRepository),
    /// A bucket (and prefix) of an S3-compatible object store.
    S3(S3Repository),
}

impl Repository {
    fn of(backend: Backend) -> Repository {
        Repository {
            backend,
            seal: None,
        }
    }

    /// Seals the data files written from now on with `key`, and opens
    /// sealed ones with it (see `dbfleet_common::seal`).
    pub fn sealed_with(mut self, key: SealKey) -> Repository {
        self.seal = Some(key);
        self
    }

    /// The key data files are sealed with, if any.
    pub fn seal(&self) -> Option<&SealKey> {
        self.seal.as_ref()
    }

    /// Opens the repository `location` names (an absolute path or
    /// `s3://BUCKET[/PREFIX]`), reading the bucket's credentials from
    /// their files. Errors name the setting to fix.
    pub fn open(location: &str, s3: Option<&S3Config>) -> Result<Repository, String> {
        match location.strip_prefix("s3://") {
            Some(rest) => {
                let Some(cfg) = s3 else {
                    return Err(format!(
                        "repository {location:?} is a bucket but there is no [backup.s3] section; add one with region, access_key_id_file and secret_access_key_file"
                    ));
                };
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                S3Repository::open(bucket, prefix.trim_matches('/'), cfg)
                    .map(|s| Repository::of(Backend::S3(s)))
            }
            None => {
                let path = PathBuf::from(location);
                if !path.is_absolute() {
                    return Err(format!(
                        "repository {location:?} must be an absolute path (a local or mounted directory) or s3://BUCKET[/PREFIX]"
                    ));
                }
                if s3.is_some() {
                    return Err(format!(
                        "repository {location:?} is a directory but [backup.s3] is set; remove [backup.s3] or use s3://BUCKET"
                    ));
                }
                Ok(Repository::of(Backend::Dir(DirRepository::new(path))))
            }
        }
    }

    /// Where `key` is, for messages: a path or an `s3://` address.
    pub fn describe(&self, key: &str) -> String {
        match &self.backend {
            Backend::Dir(d) => d.describe(key),
            Backend::S3(s) => s.describe(key),
        }
    }

    /// The whole of a small file; `NotFound` when there is none.
    pub fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        blocking(|| match &self.backend {
            Backend::Dir(d) => d.read(key),
            Backend::S3(s) => s.read(key),
        })
    }

    /// Several small files, in the order of `keys` (a bucket is asked
    /// for many at once: a binlog archive has a meta per chunk).
    pub fn read_many(&self, keys: &[String]) -> Vec<io::Result<Vec<u8>>> {
        blocking(|| match &self.backend {
            Backend::Dir(d) => keys.iter().map(|k| d.read(k)).collect(),
            Backend::S3(s) => s.read_many(keys),
        })
    }

    /// Writes a small file atomically and durably, replacing any.
    pub fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        blocking(|| match &self.backend {
            Backend::Dir(d) => d.put(key, bytes),
            Backend::S3(s) => s.put(key, bytes),
        })
    }

    /// The names directly below `prefix` (files and the first component
    /// of deeper keys), sorted; empty when there are none.
    pub fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        blocking(|| match &self.backend {
            Backend::Dir(d) => d.list(prefix),
            Backend::S3(s) => s.list(prefix),
        })
    }

    /// Whether any file is stored below `prefix` (a backup's files, say).
    pub fn exists(&self, prefix: &str) -> io::Result<bool> {
        blocking(|| match &self.backend {
            Backend::Dir(d) => d.exists(prefix),
            Backend::S3(s) => s.exists(prefix),
        })
    }

    /// Removes one file; a missing one is no error.
    pub fn remove(&self, key: &str) -> io::Result<()> {
        blocking(|| match &self.backend {
            Backend::Dir(d) => d.remove(key),
            Backend::S3(s) => s.remove(key),
        })
    }

    /// Removes every file below `prefix`.
    pub fn remove_all(&self, prefix: &str) -> io::Result<()> {
        blocking(|| match &self.backend {
            Backend::Dir(d) => d.remove_all(prefix),
            Backend::S3(s) => s.remove_all(prefix),
        })
    }

    /// Starts writing a (large) file, streamed: a directory writes it as
    /// `KEY.partial` and renames it when finished, a bucket uploads it in
    /// parts that become an object only when the upload completes.
    pub fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        blocking(|| match &self.backend {
            Backend::Dir(d) => d.create(key),
            Backend::S3(s) => s.create(key),
        })
    }

    /// Reads a (large) file as a stream.
    pub fn open_read(&self, key: &str) -> io::Result<Box<dyn io::Read + Send>> {
        blocking(|| match &self.backend {
            Backend::Dir(d) => d.open_read(key),
            Backend::S3(s) => s.open_read(key),
        })
    }
}
