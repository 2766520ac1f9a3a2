//! The data directory: where all durable state lives, owned by one server.
//!
//! Opening it creates it if missing and takes an exclusive advisory lock on
//! `<data_dir>/LOCK` (`flock(2)` on Linux, through [`File::try_lock`]). The
//! lock lives as long as the [`DataDir`] value and is released by the kernel
//! when the file is closed, also when the process is killed, so a crash never
//! leaves a stale lock behind. The file itself stays; it holds the pid of the
//! current owner, which is only ever used to make the "locked" error helpful.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// An open, exclusively locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held for its lock; closing it releases the lock.
    lock: File,
}

/// Why the data directory could not be opened. Every message names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The directory does not exist and could not be created.
    #[error("cannot create data directory {}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The lock file could not be created, opened, locked or written.
    #[error("cannot lock the data directory through {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "data directory {} is locked by another herald process{}",
        dir.display(),
        Holder(*holder)
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        path: PathBuf,
        /// The pid recorded by the holder, if readable.
        holder: Option<u32>,
    },
}

impl DataDir {
    /// Creates `path` if missing and locks it for this process.
    ///
    /// Blocking: call it before serving, or from a blocking task.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|source| Error::Create {
            path: path.clone(),
            source,
        })?;

        let lock_path = path.join(LOCK_FILE);
        let lock_error = |source| Error::Lock {
            path: lock_path.clone(),
            source,
        };
        // Not truncated on open: the current holder's pid must survive a
        // failed attempt to take its lock.
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(lock_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    holder: read_holder(&mut lock),
                    dir: path,
                    path: lock_path,
                });
            }
            Err(TryLockError::Error(source)) => return Err(lock_error(source)),
        }
        write_holder(&mut lock, std::process::id()).map_err(lock_error)?;
        Ok(Self { path, lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock. Dropping the value does the same; this names the moment.
    pub fn close(self) {
        // Closing the file releases the lock; an explicit unlock first makes
        // the release independent of other descriptors of the same file.
        if let Err(error) = self.lock.unlock() {
            tracing::warn!(path = %self.path.display(), %error, "Cannot unlock the data directory.");
        }
    }
}

fn read_holder(lock: &mut File) -> Option<u32> {
    let mut text = String::new();
    lock.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn write_holder(lock: &mut File, pid: u32) -> io::Result<()> {
    lock.set_len(0)?;
    lock.write_all(format!("{pid}\n").as_bytes())?;
    lock.flush()
}

/// Formats `Some(pid)` as ` (pid N)`.
struct Holder(Option<u32>);

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, " (pid {pid})"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_missing_dir_when_opened_should_create_it_and_lock_file() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("a/b");
        let dir = DataDir::open(&path).unwrap();
        assert_eq!(dir.path(), path);
        let pid = std::fs::read_to_string(path.join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }

    #[test]
    fn given_locked_dir_when_opened_again_should_fail_naming_dir_and_holder() {
        let root = tempfile::tempdir().unwrap();
        let _held = DataDir::open(root.path()).unwrap();
        let error = DataDir::open(root.path()).unwrap_err();
        assert!(
            matches!(&error, Error::Locked { holder: Some(pid), .. } if *pid == std::process::id()),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains(&root.path().display().to_string())
        );
    }

    #[test]
    fn given_closed_dir_when_opened_again_should_succeed() {
        let root = tempfile::tempdir().unwrap();
        DataDir::open(root.path()).unwrap().close();
        DataDir::open(root.path()).unwrap().close();
    }

    #[test]
    fn given_path_under_regular_file_when_opened_should_fail_naming_path() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let error = DataDir::open(file.join("data")).unwrap_err();
        assert!(matches!(error, Error::Create { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .contains(&file.join("data").display().to_string())
        );
    }
}
