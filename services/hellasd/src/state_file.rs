//! Small JSON state files (the model manifest, the API keys) that the daemon reads on the
//! request path and the CLI rewrites from another process.
//!
//! Reads are cached and re-parsed only when the file's identity (inode, size, mtime) changes, so
//! a key created by `hellasd keys create` is seen by a running daemon at its next request.
//! Writes take an exclusive `flock` on a sibling lock file, re-read the current contents, apply
//! the change and replace the file atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash never leaves a half-written file behind.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

pub struct StateFile<T> {
    path: PathBuf,
    cache: Mutex<Option<(Stamp, Arc<T>)>>,
}

impl<T: Default + Serialize + DeserializeOwned> StateFile<T> {
    pub fn new(path: PathBuf) -> Self {
        StateFile { path, cache: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current contents; a missing file reads as `T::default()`.
    pub fn load(&self) -> Result<Arc<T>> {
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::new(T::default())),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let stamp = Stamp::of(&meta);
        let mut cache = self.cache.lock().unwrap();
        if let Some((cached, value)) = cache.as_ref() {
            if *cached == stamp {
                return Ok(value.clone());
            }
        }
        let value = Arc::new(self.read_fresh()?);
        *cache = Some((stamp, value.clone()));
        Ok(value)
    }

    fn read_fresh(&self) -> Result<T> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {} (a damaged state file: restore it or remove it)", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Applies `change` to the freshest contents under an exclusive lock and writes the result
    /// atomically. Nothing is written when `change` fails.
    pub fn update<R>(&self, change: impl FnOnce(&mut T) -> Result<R>) -> Result<R> {
        let dir = self.path.parent().context("state file has no parent directory")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock_path = self.path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", lock_path.display()));
        }
        let mut value = self.read_fresh()?;
        let result = change(&mut value)?;
        let json = serde_json::to_vec_pretty(&value).context("serialising state")?;
        write_atomically(&self.path, &json)?;
        *self.cache.lock().unwrap() = None;
        Ok(result)
    }
}

/// Writes `bytes` to `path` through a temporary sibling, so readers see the old or the new
/// contents, never a mix, and a crash leaves the old file intact.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_new(path, bytes, None)
}

/// The same, the file having exactly `mode` from before its first byte is written (a secret is
/// never readable by others, not even for a moment, whatever the umask).
pub fn write_atomically_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_new(path, bytes, Some(mode))
}

fn write_new(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().context("path has no parent directory")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut file = match mode {
            None => File::create(&tmp),
            Some(mode) => OpenOptions::new().write(true).create(true).truncate(true).mode(mode & 0o600).open(&tmp),
        }
        .with_context(|| format!("creating {}", tmp.display()))?;
        if let Some(mode) = mode {
            file.set_permissions(fs::Permissions::from_mode(mode)).with_context(|| format!("setting the mode of {}", tmp.display()))?;
        }
        file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Files root writes for hellasd (User=hellas) to read or rewrite later go to the owner of
/// their directory (the seed's, the network watcher's). A directory that is root's still (made just now, or by the
/// image builder) goes to hellas with everything in it when a unit with
/// `StateDirectory=hellas` starts, because systemd then fixes its ownership recursively.
pub fn give_to_directory_owner(dir: &Path, paths: &[PathBuf]) -> Result<()> {
    let owner = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    for path in paths.iter().filter(|p| p.exists()) {
        std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid())).with_context(|| format!("handing {} to uid {}", path.display(), owner.uid()))?;
    }
    Ok(())
}

/// Seconds since the epoch, as the state files record times.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Counter {
        n: u32,
    }

    #[test]
    fn update_is_seen_by_another_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        let a = StateFile::<Counter>::new(path.clone());
        let b = StateFile::<Counter>::new(path.clone());
        assert_eq!(b.load().unwrap().n, 0);
        a.update(|c| {
            c.n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(b.load().unwrap().n, 1);
        a.update(|c| {
            c.n += 41;
            Ok(())
        })
        .unwrap();
        assert_eq!(b.load().unwrap().n, 42);
    }

    #[test]
    fn a_file_written_with_a_mode_has_exactly_it_and_replaces_the_old_one() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, b"old").unwrap();
        write_atomically_with_mode(&path, b"new", 0o640).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }

    #[test]
    fn failed_change_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::<Counter>::new(dir.path().join("c.json"));
        let err = file.update(|c| -> Result<()> {
            c.n = 7;
            anyhow::bail!("no")
        });
        assert!(err.is_err());
        assert!(!dir.path().join("c.json").exists());
    }

    #[test]
    fn damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        fs::write(&path, b"{not json").unwrap();
        let err = StateFile::<Counter>::new(path).load().unwrap_err();
        assert!(format!("{err:#}").contains("c.json"), "{err:#}");
    }
}
