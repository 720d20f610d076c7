//! A repository in a directory: keys are paths below it, small files are
//! replaced by an fsynced rename, large ones are written as `.partial`
//! and renamed when complete. Files are 0600 and directories 0700: a
//! backup holds every account's password hash and all the data.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::ObjectWriter;

/// A repository directory.
#[derive(Debug)]
pub struct DirRepository {
    root: PathBuf,
}

impl DirRepository {
    /// The repository at `root` (created on first write).
    pub fn new(root: PathBuf) -> DirRepository {
        DirRepository { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub(super) fn describe(&self, key: &str) -> String {
        self.path(key).display().to_string()
    }

    pub(super) fn read(&self, key: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(key))
    }

    pub(super) fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(key);
        create_parent(&path)?;
        dbfleet_common::durable::write_atomic(&path, bytes, FILE_MODE)
    }

    /// Files and the directories holding one.
    pub(super) fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(self.path(prefix)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for e in entries {
            let e = e?;
            if holds_a_file(&e.path())? {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// A file, or a directory holding one (an emptied directory holds
    /// nothing, as on a bucket).
    pub(super) fn exists(&self, key: &str) -> io::Result<bool> {
        holds_a_file(&self.path(key))
    }

    pub(super) fn remove(&self, key: &str) -> io::Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => sync_parent(&path),
        }
    }

    pub(super) fn remove_all(&self, prefix: &str) -> io::Result<()> {
        let path = self.path(prefix);
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub(super) fn create(&self, key: &str) -> io::Result<Box<dyn ObjectWriter>> {
        let path = self.path(key);
        create_parent(&path)?;
        let partial = path.with_file_name(format!(
            "{}.partial",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(FILE_MODE)
                .open(&partial)?
        };
        Ok(Box::new(PartialFile {
            out: Some(io::BufWriter::with_capacity(1 << 20, file)),
            partial,
            path,
        }))
    }

    pub(super) fn open_read(&self, key: &str) -> io::Result<Box<dyn io::Read + Send>> {
        let file = fs::File::open(self.path(key))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, file)))
    }
}

fn holds_a_file(path: &Path) -> io::Result<bool> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(true);
    }
    for e in fs::read_dir(path)? {
        if holds_a_file(&e?.path())? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Modes of what the repository writes: its owner's only.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

fn create_parent(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match path.parent() {
        Some(p) => fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(p),
        None => Ok(()),
    }
}

/// Fsyncs the directory holding `path`, so a rename or removal in it
/// survives a crash.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) => fs::File::open(p)?.sync_all(),
        None => Ok(()),
    }
}

/// A file written as `NAME.partial`, renamed to `NAME` when finished.
struct PartialFile {
    out: Option<io::BufWriter<fs::File>>,
    partial: PathBuf,
    path: PathBuf,
}

impl Write for PartialFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.as_mut().expect("open until finished").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().expect("open until finished").flush()
    }
}

impl ObjectWriter for PartialFile {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let out = self.out.take().expect("finished once");
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&self.partial, &self.path)?;
        sync_parent(&self.path)
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// What a backup writes is its owner's only, whatever the umask.
    #[test]
    fn files_are_0600_and_directories_0700() {
        let d = tempfile::tempdir().unwrap();
        let repo = DirRepository::new(d.path().join("repo"));
        repo.put("main/b1/manifest.json", b"{}").unwrap();
        let mut w = repo.create("main/b1/data.zst").unwrap();
        w.write_all(b"data").unwrap();
        w.finish().unwrap();
        let mode = |p: &str| fs::metadata(d.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("repo/main/b1/manifest.json"), 0o600);
        assert_eq!(mode("repo/main/b1/data.zst"), 0o600);
        assert_eq!(mode("repo/main/b1"), 0o700);
        assert_eq!(mode("repo/main"), 0o700);
    }
}
