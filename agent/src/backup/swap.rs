//! Swapping a data directory's contents for a restored copy, inside it.
//!
//! The data directory itself is never renamed: on Debian's layout its
//! parent (`/var/lib`) belongs to root while the agent runs as `mysql`,
//! and a data directory is often a mount point. So the restored copy is
//! built in a directory inside it, and the swap moves entries, each a
//! rename within one filesystem: first every current entry into an
//! "aside" directory inside it, then every restored entry up into it. A
//! marker written (and synced) between the two halves tells a rollback,
//! or an agent restarted mid-swap, which half it was in, so the previous
//! data can always be put back whole.
//!
//! The directories are named `#sql-dbfleet-…`: MariaDB lists any other
//! directory in its data directory as a database (`#mysql50#name`), but
//! hides names starting with `#sql`, its temporary files' prefix, and
//! `mariadb-backup` copies no file of theirs (it reads table files one
//! level down, and they hold data directories). MySQL instead scans its
//! data directory's whole tree for tablespace files at start and refuses
//! to start on two copies of one ("Multiple files found for the same
//! tablespace ID"), but skips hidden directories: on MySQL the names
//! start with a dot (`.#sql-dbfleet-…`), which MariaDB would list as a
//! database.

use std::fs::File;
use std::path::{Path, PathBuf};

use dbfleet_proto::model::Flavor;

/// Names of the swap's own directories (and of the marker in the aside
/// directory, which therefore never names an entry of the data directory).
const PREFIX: &str = "#sql-dbfleet-";
/// Entries a swap leaves where they are: its own directories, and the
/// filesystem's `lost+found` (root's, not mysqld's) when the data
/// directory is a mount point.
fn stays(name: &str) -> bool {
    name.trim_start_matches('.').starts_with(PREFIX) || name == "lost+found"
}

/// The directories of one restore's swap, all inside the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swap {
    datadir: PathBuf,
    staging: PathBuf,
    aside: PathBuf,
    failed: PathBuf,
}

impl Swap {
    /// The swap of restore job `job_id` into `datadir` of a `flavor`
    /// server.
    pub fn new(datadir: &Path, job_id: &str, flavor: Flavor) -> Swap {
        let hidden = match flavor {
            Flavor::MariaDb => "",
            Flavor::MySql => ".",
        };
        let inside = |what: &str| datadir.join(format!("{hidden}{PREFIX}{what}-{job_id}"));
        Swap {
            datadir: datadir.to_path_buf(),
            staging: inside("restore"),
            aside: inside("before"),
            failed: inside("failed"),
        }
    }

    /// The swap restore job `job_id` left in `datadir`, whichever flavor
    /// named it (an agent restarted mid-restore knows the job, not the
    /// server).
    pub fn left_by(datadir: &Path, job_id: &str) -> Swap {
        let mysql = Swap::new(datadir, job_id, Flavor::MySql);
        if [&mysql.staging, &mysql.aside, &mysql.failed]
            .iter()
            .any(|d| d.exists())
        {
            mysql
        } else {
            Swap::new(datadir, job_id, Flavor::MariaDb)
        }
    }

    /// The data directory.
    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    /// Where the backup is made a data directory before the swap.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Where the previous data waits until the restored server runs.
    pub fn aside(&self) -> &Path {
        &self.aside
    }

    fn marker(&self) -> PathBuf {
        self.aside.join(format!("{PREFIX}all-moved-aside"))
    }

    /// Moves the current contents aside and the restored ones in; mysqld
    /// must be proven stopped. On failure what was moved is put back, and
    /// the error says whether that worked.
    pub fn swap_in(&self) -> Result<(), String> {
        let moved = self.move_aside().and_then(|()| self.move_in());
        moved.map_err(|e| match self.put_back() {
            Ok(_) => format!("{e}; the previous data is back in place"),
            Err(back) => format!("{e}; the previous data could not be put back: {back}"),
        })
    }

    fn move_aside(&self) -> Result<(), String> {
        std::fs::create_dir(&self.aside)
            .map_err(|e| format!("cannot create {}: {e}", self.aside.display()))?;
        for name in entries(&self.datadir)? {
            rename(&self.datadir.join(&name), &self.aside.join(&name))?;
        }
        File::create(self.marker())
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", self.marker().display()))?;
        sync_dir(&self.aside)?;
        sync_dir(&self.datadir)
    }

    fn move_in(&self) -> Result<(), String> {
        for name in entries(&self.staging)? {
            rename(&self.staging.join(&name), &self.datadir.join(&name))?;
        }
        std::fs::remove_dir(&self.staging)
            .map_err(|e| format!("cannot remove {}: {e}", self.staging.display()))?;
        sync_dir(&self.datadir)
    }

    /// Puts the previous data back from the aside directory, wherever a
    /// swap (or an earlier put-back) stopped; mysqld must be proven
    /// stopped. Restored entries already moved in go to a directory of
    /// their own, returned (`None`: none had been moved in). Idempotent.
    pub fn put_back(&self) -> Result<Option<PathBuf>, String> {
        if !self.aside.exists() {
            return Ok(None);
        }
        let mut kept = None;
        // The marker: every previous entry is aside, so every entry of the
        // data directory is a restored one. It is removed once they are
        // out, before the previous ones come back.
        if self.marker().exists() {
            match std::fs::create_dir(&self.failed) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {}: {e}", self.failed.display())),
            }
            for name in entries(&self.datadir)? {
                rename(&self.datadir.join(&name), &self.failed.join(&name))?;
            }
            sync_dir(&self.datadir)?;
            std::fs::remove_file(self.marker())
                .map_err(|e| format!("cannot remove {}: {e}", self.marker().display()))?;
            sync_dir(&self.aside)?;
            kept = Some(self.failed.clone());
        } else if self.failed.exists() {
            kept = Some(self.failed.clone());
        }
        for name in entries(&self.aside)? {
            rename(&self.aside.join(&name), &self.datadir.join(&name))?;
        }
        std::fs::remove_dir(&self.aside)
            .map_err(|e| format!("cannot remove {}: {e}", self.aside.display()))?;
        sync_dir(&self.datadir)?;
        Ok(kept)
    }

    /// Removes the previous data once the restored server runs.
    pub fn discard_previous(&self) -> Result<(), String> {
        std::fs::remove_dir_all(&self.aside)
            .map_err(|e| format!("cannot remove {}: {e}", self.aside.display()))
    }
}

/// The names in `dir` a swap moves, sorted (so that a test can tell where
/// an interrupted swap stopped).
fn entries(dir: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    let list = std::fs::read_dir(dir).map_err(|e| crate::mysql::process::cannot_read(dir, &e))?;
    for e in list {
        let e = e.map_err(|e| crate::mysql::process::cannot_read(dir, &e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !stays(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn rename(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to).map_err(|e| {
        format!(
            "cannot move {} to {}: {e}{}",
            from.display(),
            to.display(),
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                format!(
                    " (the agent runs as {}; mysqld's files must be this user's)",
                    crate::mysql::process::agent_user()
                )
            } else {
                String::new()
            }
        )
    })
}

/// Makes the renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A data directory with `previous` entries and a built restored copy
    /// holding `restored` ones; each file holds its origin and name.
    fn setup(name: &str) -> (PathBuf, Swap) {
        let root = std::env::temp_dir().join(format!("dbfleet-swap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let datadir = root.join("data");
        std::fs::create_dir_all(datadir.join("lost+found")).unwrap();
        for n in ["ibdata1", "ib_logfile0", "mysql", "app"] {
            write(&datadir, n, "previous");
        }
        let swap = Swap::new(&datadir, "j1", Flavor::MariaDb);
        std::fs::create_dir(swap.staging()).unwrap();
        for n in ["ibdata1", "ib_logfile0", "mysql", "app", "xtrabackup_info"] {
            write(swap.staging(), n, "restored");
        }
        (root, swap)
    }

    fn write(dir: &Path, name: &str, origin: &str) {
        if matches!(name, "mysql" | "app") {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("t.ibd"), format!("{origin} {name}")).unwrap();
        } else {
            std::fs::write(dir.join(name), format!("{origin} {name}")).unwrap();
        }
    }

    /// The data directory's entries (outside the swap's own) and where
    /// each came from.
    fn contents(dir: &Path) -> BTreeMap<String, String> {
        entries(dir)
            .unwrap()
            .into_iter()
            .map(|n| {
                let p = dir.join(&n);
                let file = if p.is_dir() { p.join("t.ibd") } else { p };
                let text = std::fs::read_to_string(file).unwrap();
                (n, text.split(' ').next().unwrap().to_string())
            })
            .collect()
    }

    fn all(origin: &str, names: &[&str]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| (n.to_string(), origin.to_string()))
            .collect()
    }

    const PREVIOUS: &[&str] = &["app", "ib_logfile0", "ibdata1", "mysql"];
    const RESTORED: &[&str] = &["app", "ib_logfile0", "ibdata1", "mysql", "xtrabackup_info"];

    #[test]
    fn a_swap_moves_the_restored_copy_in_and_keeps_the_previous_data_aside_until_discarded() {
        let (root, swap) = setup("in");
        swap.swap_in().unwrap();
        assert_eq!(contents(&swap.datadir), all("restored", RESTORED));
        assert_eq!(contents(swap.aside()), all("previous", PREVIOUS));
        assert!(!swap.staging().exists());
        assert!(swap.datadir.join("lost+found").is_dir(), "lost+found stays");
        swap.discard_previous().unwrap();
        assert!(!swap.aside().exists());
        assert_eq!(contents(&swap.datadir), all("restored", RESTORED));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_put_back_after_a_swap_keeps_the_restored_copy_apart() {
        let (root, swap) = setup("back");
        swap.swap_in().unwrap();
        let kept = swap.put_back().unwrap().expect("the restored copy is kept");
        assert_eq!(contents(&swap.datadir), all("previous", PREVIOUS));
        assert_eq!(contents(&kept), all("restored", RESTORED));
        assert!(!swap.aside().exists());
        assert_eq!(swap.put_back().unwrap(), None, "nothing more to put back");
        std::fs::remove_dir_all(root).unwrap();
    }

    /// Every point an agent can be killed at, rebuilt as the swap leaves
    /// it: `k` renames of the first half done, or all of it and `k` of the
    /// second, or a put-back interrupted after `k` previous entries came
    /// back. Each time the put-back restores the previous data whole.
    #[test]
    fn an_interrupted_swap_or_put_back_is_rolled_back_whole_from_every_point() {
        for k in 0..=PREVIOUS.len() {
            let (root, swap) = setup(&format!("aside{k}"));
            std::fs::create_dir(swap.aside()).unwrap();
            for n in &PREVIOUS[..k] {
                rename(&swap.datadir.join(n), &swap.aside().join(n)).unwrap();
            }
            assert_eq!(swap.put_back().unwrap(), None, "aside {k}");
            assert_eq!(
                contents(&swap.datadir),
                all("previous", PREVIOUS),
                "aside {k}"
            );
            std::fs::remove_dir_all(root).unwrap();
        }
        for k in 0..=RESTORED.len() {
            let (root, swap) = setup(&format!("in{k}"));
            swap.move_aside().unwrap();
            for n in &RESTORED[..k] {
                rename(&swap.staging().join(n), &swap.datadir.join(n)).unwrap();
            }
            let kept = swap.put_back().unwrap().unwrap();
            assert_eq!(contents(&swap.datadir), all("previous", PREVIOUS), "in {k}");
            assert_eq!(contents(&kept), all("restored", &RESTORED[..k]), "in {k}");
            std::fs::remove_dir_all(root).unwrap();
        }
        for k in 0..=PREVIOUS.len() {
            let (root, swap) = setup(&format!("back{k}"));
            swap.swap_in().unwrap();
            std::fs::create_dir(&swap.failed).unwrap();
            for n in RESTORED {
                rename(&swap.datadir.join(n), &swap.failed.join(n)).unwrap();
            }
            std::fs::remove_file(swap.marker()).unwrap();
            for n in &PREVIOUS[..k] {
                rename(&swap.aside().join(n), &swap.datadir.join(n)).unwrap();
            }
            let kept = swap.put_back().unwrap().unwrap();
            assert_eq!(
                contents(&swap.datadir),
                all("previous", PREVIOUS),
                "back {k}"
            );
            assert_eq!(contents(&kept), all("restored", RESTORED), "back {k}");
            std::fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn a_failed_move_puts_everything_back_and_says_so() {
        let (root, swap) = setup("gone");
        std::fs::remove_dir_all(swap.staging()).unwrap();
        let e = swap.swap_in().unwrap_err();
        assert!(
            e.contains("cannot read") && e.contains("the previous data is back in place"),
            "{e}"
        );
        assert_eq!(contents(&swap.datadir), all("previous", PREVIOUS));
        assert!(!swap.aside().exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_swap_directories_are_inside_the_data_directory_and_hidden_from_the_server() {
        let s = Swap::new(Path::new("/var/lib/mysql"), "j1", Flavor::MariaDb);
        assert_eq!(
            s.staging(),
            Path::new("/var/lib/mysql/#sql-dbfleet-restore-j1")
        );
        assert_eq!(
            s.aside(),
            Path::new("/var/lib/mysql/#sql-dbfleet-before-j1")
        );
        assert!(stays("#sql-dbfleet-before-j0") && stays("lost+found") && !stays("mysql"));
        // MySQL's start scans every directory that is not hidden.
        let dir = tempfile::tempdir().unwrap();
        let m = Swap::new(dir.path(), "j1", Flavor::MySql);
        assert_eq!(m.aside(), dir.path().join(".#sql-dbfleet-before-j1"));
        assert!(stays(".#sql-dbfleet-before-j0") && !stays(".hidden"));
        // An agent restarted mid-restore finds whichever swap the job left.
        assert_eq!(
            Swap::left_by(dir.path(), "j1"),
            Swap::new(dir.path(), "j1", Flavor::MariaDb)
        );
        std::fs::create_dir(m.aside()).unwrap();
        assert_eq!(Swap::left_by(dir.path(), "j1"), m);
    }
}
