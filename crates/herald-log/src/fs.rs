//! The filesystem seam: every byte the log reads or writes goes through
//! [`Filesystem`] and [`File`].
//!
//! Two implementations:
//! - [`StdFs`], the real one (positional `pread`/`pwrite`, `fdatasync`);
//! - [`MemFs`](crate::mem::MemFs), in memory, which keeps for each file the
//!   bytes written and the bytes made durable by `sync_data`, and for each
//!   directory the entries made durable by `sync_dir`. A test "crashes" it
//!   by taking an image of only what was durable (optionally keeping a torn
//!   piece of what was not), then reopens the log on that image.
//!
//! The trait is object safe on purpose: the log holds `Arc<dyn Filesystem>`
//! and `Arc<dyn File>`, so a test can swap the implementation at run time and
//! the engine is compiled once.

use std::fmt::Debug;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A directory tree holding files.
pub trait Filesystem: Send + Sync + Debug + 'static {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens `path` for reading and writing. With `create`, creates it when
    /// missing (the new directory entry is durable only after
    /// [`Filesystem::sync_dir`] of its parent).
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Renames `from` to `to`, replacing `to` (durable after `sync_dir`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file at `path` (durable after `sync_dir`).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names of the files directly in `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file, read and written at explicit positions (no shared cursor, so
/// readers and the writer never contend on a seek).
#[allow(
    clippy::len_without_is_empty,
    reason = "a file's length is what the log needs"
)]
pub trait File: Send + Sync + Debug {
    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Writes all of `buf` at `position`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `position`; returns how many were read
    /// (fewer only at the end of the file).
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file's length.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `position`, or fails with
    /// `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut position: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let read = self.read_at(buf, position)?;
            if read == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
            }
            buf = &mut buf[read..];
            position += read as u64;
        }
        Ok(())
    }
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(std::fs::File);

impl Filesystem for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

impl File for StdFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, position)
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        loop {
            match FileExt::read_at(&self.0, buf, position) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}
