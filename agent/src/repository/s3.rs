//! A repository in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, …),
//! through the `object_store` crate's client. Large files are multipart
//! uploads, which become an object only when completed: a killed or failed
//! backup never leaves a readable half-file (a bucket lifecycle rule that
//! aborts incomplete uploads reclaims their parts).
//!
//! The client is asynchronous; the repository's interface is blocking. The
//! client runs on a small runtime of its own, and callers wait for its
//! answers on channels, which is safe from any thread.

use std::future::Future;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use serde::Deserialize;

use super::ObjectWriter;

/// `[backup.s3]`: how to reach the bucket. The keys are read from files,
/// never from the config itself or the command line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The service's address, e.g. `https://minio.example:9000`; without
    /// it, AWS's endpoint for `region`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The bucket's region (S3-compatible servers mostly accept any).
    #[serde(default = "default_region")]
    pub region: String,
    /// File holding the access key id.
    pub access_key_id_file: PathBuf,
    /// File holding the secret access key (mode 0600).
    pub secret_access_key_file: PathBuf,
    /// Allow a plain-HTTP endpoint: backups then cross the network
    /// unencrypted, so it must be asked for.
    #[serde(default)]
    pub allow_http: bool,
    /// Address the bucket as `ENDPOINT/BUCKET` (what most S3-compatible
    /// servers need) rather than as `BUCKET.ENDPOINT`.
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Size of each uploaded part. An object has at most 10,000 parts, so
    /// this bounds one backup file (32 MiB: 312 GiB); the agent holds
    /// about three parts in memory while uploading.
    #[serde(default = "default_part_size")]
    pub part_size_mib: u32,
    /// Deadline of one request; a request that fails is retried a few
    /// times within twice this.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn yes() -> bool {
    true
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_part_size() -> u32 {
    32
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Small files read at once.
const READ_CONCURRENCY: usize = 32;
/// Parts uploaded at once.
const UPLOAD_CONCURRENCY: usize = 2;
/// Bytes handed to the uploader at a time.
const HANDOFF: usize = 1 << 20;

/// A bucket and a prefix in it.
pub struct S3Repository {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    part_size: usize,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for S3Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Repository({})", self.describe(""))
    }
}

impl Drop for S3Repository {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A secret or key id from its file, trimmed.
fn read_key_file(what: &str, path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "backup.s3.{what}: cannot read {}: {e}; write the key into that file (mode 0600)",
            path.display()
        )
    })?;
    let key = text.trim().to_string();
    if key.is_empty() {
        return Err(format!("backup.s3.{what}: {} is empty", path.display()));
    }
    Ok(key)
}

/// object_store's error as an I/O error, `NotFound` kept.
fn io_error(what: String, e: object_store::Error) -> io::Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{what}: {e}"))
}

impl S3Repository {
    /// Opens `bucket` (keys under `prefix`), reading the keys' files.
    pub fn open(bucket: &str, prefix: &str, cfg: &S3Config) -> Result<S3Repository, String> {
        if bucket.is_empty() {
            return Err("repository s3:// names no bucket; use s3://BUCKET[/PREFIX]".into());
        }
        if let Some(e) = &cfg.endpoint
            && e.starts_with("http://")
            && !cfg.allow_http
        {
            return Err(format!(
                "backup.s3.endpoint {e} is plain HTTP; use https:// or set allow_http = true"
            ));
        }
        if !(5..=4096).contains(&cfg.part_size_mib) {
            return Err("backup.s3.part_size_mib must be between 5 (S3's minimum) and 4096".into());
        }
        // the HTTPS client uses the process's TLS provider (ring)
        dbfleet_common::tls::install_crypto_provider();
        let key_id = read_key_file("access_key_id_file", &cfg.access_key_id_file)?;
        let secret = read_key_file("secret_access_key_file", &cfg.secret_access_key_file)?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&cfg.region)
            .with_access_key_id(key_id)
            .with_secret_access_key(secret)
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(!cfg.path_style)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(cfg.allow_http)
                    .with_timeout(cfg.request_timeout)
                    .with_connect_timeout(Duration::from_secs(10)),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: cfg.request_timeout * 2,
                ..RetryConfig::default()
            });
        if let Some(e) = &cfg.endpoint {
            builder = builder.with_endpoint(e);
        }
        let store = builder
            .build()
            .map_err(|e| format!("backup.s3: cannot set up the S3 client: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-client")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the S3 client's threads: {e}"))?;
        Ok(S3Repository {
            store: Arc::new(store),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            part_size: cfg.part_size_mib as usize * (1 << 20),
            runtime: Some(runtime),
        })
    }

    fn key(&self, key: &str) -> String {
        let key = key.trim_matches('/');
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        }
    }

    fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(self.key(key).as_str())
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("open until dropped").handle()
    }

    /// Runs `fut` on the client's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| io::Error::other("the S3 client stopped"))
    }

    pub(super) fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(key))
    }

    pub(super) fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        let (store, path, what) = (self.store.clone(), self.path(key), self.describe(key));
        self.run(async move {
            let got = store.get(&path).await?;
            got.bytes().await
        })?
        .map(|b| b.to_vec())
        .map_err(|e| io_error(format!("cannot read {what}"), e))
    }

    pub(super) fn read_many(&self, keys: &[String]) -> Vec<io::Result<Vec<u8>>> {
        let jobs: Vec<(ObjectPath, String)> = keys
            .iter()
            .map(|k| (self.path(k), self.describe(k)))
            .collect();
        let store = self.store.clone();
        let read = self.run(async move {
            futures::stream::iter(jobs)
                .map(|(path, what)| {
                    let store = store.clone();
                    async move {
                        let got = match store.get(&path).await {
                            Ok(g) => g.bytes().await,
                            Err(e) => Err(e),
                        };
                        got.map(|b| b.to_vec())
                            .map_err(|e| io_error(format!("cannot read {what}"), e))
                    }
                })
                .buffered(READ_CONCURRENCY)
                .collect::<Vec<_>>()
                .await
        });
        match read {
            Ok(all) => all,
            Err(e) => keys
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect(),
        }
    }

    pub(super) fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let (store, path, what) = (self.store.clone(), self.path(key), self.describe(key));
        let payload = PutPayload::from(bytes.to_vec());
        self.run(async move { store.put(&path, payload).await })?
            .map(|_| ())
            .map_err(|e| io_error(format!("cannot write {what}"), e))
    }

    pub(super) fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let (store, path, what) = (self.store.clone(), self.path(prefix), self.describe(prefix));
        let listed = self
            .run(async move { store.list_with_delimiter(Some(&path)).await })?
            .map_err(|e| io_error(format!("cannot list {what}"), e))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .chain(listed.objects.iter().map(|o| &o.location))
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub(super) fn exists(&self, key: &str) -> io::Result<bool> {
        let (store, path, what) = (self.store.clone(), self.path(key), self.describe(key));
        self.run(async move {
            store
                .list(Some(&path))
                .next()
                .await
                .transpose()
                .map(|o| o.is_some())
        })?
        .map_err(|e| io_error(format!("cannot look up {what}"), e))
    }

    pub(super) fn remove(&self, key: &str) -> io::Result<()> {
        let (store, path, what) = (self.store.clone(), self.path(key), self.describe(key));
        self.run(async move {
            match store.delete(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            }
        })?
        .map_err(|e| io_error(format!("cannot remove {what}"), e))
    }

    pub(super) fn remove_all(&self, prefix: &str) -> io::Result<()> {
        let (store, path, what) = (self.store.clone(), self.path(prefix), self.describe(prefix));
        self.run(async move {
            let mut listed = store.list(Some(&path));
            while let Some(meta) = listed.next().await {
                match store.delete(&meta?.location).await {
                    Err(object_store::Error::NotFound { .. }) | Ok(()) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?
        .map_err(|e| io_error(format!("cannot remove {what}"), e))
    }

    pub(super) fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let (store, path, what) = (self.store.clone(), self.path(key), self.describe(key));
        let upload = self
            .run(async move { store.put_multipart(&path).await })?
            .map_err(|e| io_error(format!("cannot start uploading {what}"), e))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Upload>(2);
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let part_size = self.part_size;
        let describe = what.clone();
        self.handle().spawn(async move {
            let mut w = WriteMultipart::new_with_chunk_size(upload, part_size);
            let outcome = loop {
                match rx.recv().await {
                    Some(Upload::Data(b)) => {
                        if let Err(e) = w.wait_for_capacity(UPLOAD_CONCURRENCY).await {
                            let _ = w.abort().await;
                            break Err(e);
                        }
                        w.put(b);
                    }
                    Some(Upload::Finish) => break w.finish().await.map(|_| ()),
                    // the writer was dropped unfinished
                    None => break w.abort().await,
                }
            };
            let _ =
                done_tx.send(outcome.map_err(|e| io_error(format!("cannot upload {describe}"), e)));
        });
        Ok(Box::new(MultipartWriter {
            tx: Some(tx),
            buf: BytesMut::with_capacity(HANDOFF),
            done: done_rx,
        }))
    }

    pub(super) fn open_read(&self, key: &str) -> io::Result<Box<dyn Read + Send>> {
        let (store, path, what) = (self.store.clone(), self.path(key), self.describe(key));
        let got = self
            .run(async move { store.get(&path).await })?
            .map_err(|e| io_error(format!("cannot read {what}"), e))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        self.handle().spawn(async move {
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| io_error(format!("cannot read {what}"), e));
                let stop = chunk.is_err();
                let empty = chunk.as_ref().is_ok_and(|c| c.is_empty());
                if !empty && (tx.send(chunk).await.is_err() || stop) {
                    return;
                }
            }
            // the end, told apart from a download that stopped
            let _ = tx.send(Ok(Bytes::new())).await;
        });
        Ok(Box::new(ObjectReader {
            rx,
            current: Bytes::new(),
            ended: false,
        }))
    }
}

/// What the writer hands its upload task.
enum Upload {
    Data(Bytes),
    Finish,
}

/// A multipart upload fed from a blocking thread.
struct MultipartWriter {
    tx: Option<tokio::sync::mpsc::Sender<Upload>>,
    buf: BytesMut,
    done: std::sync::mpsc::Receiver<io::Result<()>>,
}

impl MultipartWriter {
    fn hand_off(&mut self, msg: Upload) -> io::Result<()> {
        let tx = self.tx.as_ref().expect("open until finished");
        if futures::executor::block_on(tx.send(msg)).is_err() {
            // the upload task stopped: its outcome says why
            self.tx = None;
            return Err(match self.done.recv() {
                Ok(Err(e)) => e,
                _ => io::Error::other("the upload stopped"),
            });
        }
        Ok(())
    }
}

impl Write for MultipartWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= HANDOFF {
            let b = self.buf.split().freeze();
            self.hand_off(Upload::Data(b))?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MultipartWriter {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        if !self.buf.is_empty() {
            let b = self.buf.split().freeze();
            self.hand_off(Upload::Data(b))?;
        }
        self.hand_off(Upload::Finish)?;
        self.tx = None;
        self.done
            .recv()
            .map_err(|_| io::Error::other("the upload stopped"))?
    }
}

/// An object's bytes, read from a blocking thread.
struct ObjectReader {
    /// Chunks in order; an empty one is the end.
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    ended: bool,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match futures::executor::block_on(self.rx.recv()) {
                Some(chunk) => {
                    self.current = chunk?;
                    self.ended = self.current.is_empty();
                }
                None => return Err(io::Error::other("the download stopped before its end")),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
