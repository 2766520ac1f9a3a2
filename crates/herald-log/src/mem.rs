//! An in-memory [`Filesystem`] that knows what would survive a crash.
//!
//! Each file keeps two versions of its bytes: `written` (what reads see) and
//! `durable` (what the last `sync_data` made durable). Each directory entry
//! (a creation, rename or removal) becomes durable only when its directory is
//! synced. [`MemFs::crash_image`] returns a new filesystem holding only what a
//! machine that lost power right now would find on disk, optionally with a
//! torn piece of the unsynced tail, or that piece with flipped bytes.
//!
//! Faults: [`MemFs::crash_after_syncs`] lets the next `n` file syncs succeed
//! and then makes every operation fail, as if the machine stopped at that
//! moment; the test then takes the crash image. [`MemFs::inject`] makes the
//! disk full ([`Fault::NoSpace`]: extending writes store part of their bytes
//! and fail with `ENOSPC`) or its syncs fail ([`Fault::SyncFails`]: `EIO`,
//! and the dirty bytes are forgotten as Linux forgets pages whose writeback
//! failed, so a later successful sync does not make them durable unless they
//! are written again); [`MemFs::heal`] ends the fault.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::fs::{File, Filesystem};

/// An in-memory filesystem with crash images and fault injection.
#[derive(Debug, Clone, Default)]
pub struct MemFs {
    state: Arc<Mutex<State>>,
    faults: Arc<Faults>,
}

/// What happens to bytes that were written but not yet synced when a crash
/// image is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// All unsynced bytes are lost.
    Lost,
    /// The first `keep` unsynced bytes of each file survive (a torn write),
    /// capped at what was written.
    Torn {
        /// Bytes kept past the durable length, per file.
        keep: u64,
    },
    /// Like `Torn`, and the kept bytes are corrupted: every byte at an index
    /// that is a multiple of `every` (from `seed`) gets flipped.
    Corrupt {
        /// Bytes kept past the durable length, per file.
        keep: u64,
        /// Flip one byte in this many.
        every: u64,
        /// Which bytes: the flips start at `seed % every`.
        seed: u64,
    },
}

#[derive(Debug, Default)]
struct State {
    /// The namespace as reads see it.
    live: BTreeMap<PathBuf, Arc<MemFile>>,
    /// The namespace as of the last `sync_dir` of each directory.
    durable: BTreeMap<PathBuf, Arc<MemFile>>,
    dirs: BTreeSet<PathBuf>,
}

/// An I/O fault that lasts until [`MemFs::heal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The disk is full: a write that extends a file stores the first half of
    /// its bytes past the old end, then fails with `ENOSPC` (a short write);
    /// growing a file with `set_len` fails too. Overwrites, shrinking and
    /// syncs still work.
    NoSpace,
    /// Every `sync_data` fails with `EIO`. Like Linux after a failed
    /// writeback, the file's dirty bytes are then forgotten: reads still see
    /// them, but they are not on disk and a later successful sync does not
    /// put them there unless they are written again (the fsyncgate lesson).
    SyncFails,
}

#[derive(Debug, Default)]
struct Faults {
    /// Syncs left before the crash, when armed.
    syncs_left: AtomicU64,
    armed: AtomicBool,
    crashed: AtomicBool,
    syncs: AtomicU64,
    no_space: AtomicBool,
    sync_fails: AtomicBool,
}

impl Faults {
    fn check(&self) -> io::Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            Err(io::Error::other("simulated crash: the machine has stopped"))
        } else {
            Ok(())
        }
    }

    /// Counts a sync; returns an error if this sync is past the crash point.
    fn on_sync(&self) -> io::Result<()> {
        self.check()?;
        if self.sync_fails.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        if self.armed.load(Ordering::SeqCst) {
            let left = self.syncs_left.load(Ordering::SeqCst);
            if left == 0 {
                self.crashed.store(true, Ordering::SeqCst);
                return self.check();
            }
            self.syncs_left.store(left - 1, Ordering::SeqCst);
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Debug)]
struct MemFile {
    data: Mutex<FileData>,
    faults: Arc<Faults>,
}

/// `ENOSPC` on Linux.
const ENOSPC: i32 = 28;
/// `EIO` on Linux.
const EIO: i32 = 5;

#[derive(Debug, Default, Clone)]
struct FileData {
    written: Vec<u8>,
    durable: Vec<u8>,
    /// The lowest position changed since the last sync: `durable` and
    /// `written` agree below it. Keeps a sync proportional to what changed.
    dirty_from: usize,
    /// Bytes a failed sync forgot ([`Fault::SyncFails`]): reads see them,
    /// the disk holds zeros there, and only writing them again heals that.
    forgotten: Vec<Range<usize>>,
}

/// Removes `cut` from the ranges.
fn subtract(ranges: &mut Vec<Range<usize>>, cut: Range<usize>) {
    let mut kept = Vec::with_capacity(ranges.len() + 1);
    for range in ranges.drain(..) {
        if range.start < cut.start {
            kept.push(range.start..range.end.min(cut.start));
        }
        if range.end > cut.end {
            kept.push(range.start.max(cut.end)..range.end);
        }
    }
    kept.retain(|range| !range.is_empty());
    *ranges = kept;
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemFs {
    /// An empty filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `syncs` more file syncs succeed, then fails every operation from
    /// the next sync on (that sync included), as if the machine stopped.
    pub fn crash_after_syncs(&self, syncs: u64) {
        self.faults.syncs_left.store(syncs, Ordering::SeqCst);
        self.faults.armed.store(true, Ordering::SeqCst);
    }

    /// Starts `fault`; it lasts until [`MemFs::heal`].
    pub fn inject(&self, fault: Fault) {
        let flag = match fault {
            Fault::NoSpace => &self.faults.no_space,
            Fault::SyncFails => &self.faults.sync_fails,
        };
        flag.store(true, Ordering::SeqCst);
    }

    /// Ends every injected [`Fault`] (space is freed, the disk works again).
    pub fn heal(&self) {
        self.faults.no_space.store(false, Ordering::SeqCst);
        self.faults.sync_fails.store(false, Ordering::SeqCst);
    }

    /// Evicts the pages a failed sync forgot: reads of them now return what
    /// the disk holds (zeros), as after memory pressure on a real machine.
    pub fn evict_forgotten(&self) {
        let state = lock(&self.state);
        for file in state.live.values() {
            let mut data = lock(&file.data);
            for range in data.forgotten.clone() {
                let end = range.end.min(data.written.len());
                let start = range.start.min(end);
                data.written[start..end].fill(0);
            }
        }
    }

    /// Fails every operation from now on.
    pub fn crash_now(&self) {
        self.faults.crashed.store(true, Ordering::SeqCst);
    }

    /// Whether the simulated machine has stopped.
    pub fn has_crashed(&self) -> bool {
        self.faults.crashed.load(Ordering::SeqCst)
    }

    /// How many file syncs have succeeded.
    pub fn syncs(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    /// What a machine that lost power now would find: the durable namespace,
    /// each file with its durable bytes plus what `tail` says of the rest.
    pub fn crash_image(&self, tail: Tail) -> MemFs {
        let state = lock(&self.state);
        let image = MemFs::new();
        {
            let mut image_state = lock(&image.state);
            image_state.dirs = state.dirs.clone();
            for (path, file) in &state.durable {
                let data = lock(&file.data);
                let bytes = surviving_bytes(&data, tail);
                let dirty_from = bytes.len();
                let file = Arc::new(MemFile {
                    data: Mutex::new(FileData {
                        written: bytes.clone(),
                        durable: bytes,
                        dirty_from,
                        forgotten: Vec::new(),
                    }),
                    faults: Arc::clone(&image.faults),
                });
                image_state.live.insert(path.clone(), Arc::clone(&file));
                image_state.durable.insert(path.clone(), file);
            }
        }
        image
    }

    /// The bytes reads would see in `path` now (for tests that inspect files).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        state
            .live
            .get(path)
            .map(|file| lock(&file.data).written.clone())
    }

    /// Overwrites the bytes of `path` as if by a disk fault, durably (for
    /// tests of corruption inside sealed segments).
    pub fn corrupt_file(&self, path: &Path, position: usize, xor: u8) -> bool {
        let state = lock(&self.state);
        let Some(file) = state.live.get(path) else {
            return false;
        };
        let mut data = lock(&file.data);
        if position >= data.written.len() {
            return false;
        }
        data.written[position] ^= xor;
        if position < data.durable.len() && position < data.dirty_from {
            data.durable[position] ^= xor;
        }
        true
    }
}

fn surviving_bytes(data: &FileData, tail: Tail) -> Vec<u8> {
    let appended_only = data.dirty_from >= data.durable.len();
    let mut bytes = data.durable.clone();
    if !appended_only {
        // The unsynced change rewrote or cut durable bytes; a real disk may
        // keep either version of the pages, we keep the durable one.
        return bytes;
    }
    let unsynced = &data.written[data.durable.len()..];
    let keep = match tail {
        Tail::Lost => 0,
        Tail::Torn { keep } | Tail::Corrupt { keep, .. } => keep.min(unsynced.len() as u64),
    } as usize;
    let start = bytes.len();
    bytes.extend_from_slice(&unsynced[..keep]);
    for range in &data.forgotten {
        // A failed sync's pages never reached the disk.
        let end = range.end.min(bytes.len());
        let from = range.start.max(start).min(end);
        bytes[from..end].fill(0);
    }
    if let Tail::Corrupt { every, seed, .. } = tail {
        let every = every.max(1) as usize;
        let mut index = (seed as usize) % every;
        while index < keep {
            bytes[start + index] ^= 0x5a;
            index += every;
        }
    }
    bytes
}

impl Filesystem for MemFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.faults.check()?;
        let mut state = lock(&self.state);
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        self.faults.check()?;
        let mut state = lock(&self.state);
        if let Some(file) = state.live.get(path) {
            return Ok(Arc::clone(file) as Arc<dyn File>);
        }
        let parent_exists = path
            .parent()
            .is_some_and(|parent| state.dirs.contains(parent));
        if !create || !parent_exists {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}", path.display()),
            ));
        }
        let file = Arc::new(MemFile {
            data: Mutex::new(FileData::default()),
            faults: Arc::clone(&self.faults),
        });
        state.live.insert(path.to_path_buf(), Arc::clone(&file));
        Ok(file)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.faults.check()?;
        let state = lock(&self.state);
        Ok(state.live.contains_key(path) || state.dirs.contains(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.faults.check()?;
        let mut state = lock(&self.state);
        let file = state.live.remove(from).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{}", from.display()))
        })?;
        state.live.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.faults.check()?;
        let mut state = lock(&self.state);
        state
            .live
            .remove(path)
            .map(drop)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display())))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.faults.check()?;
        let state = lock(&self.state);
        if !state.dirs.contains(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}", dir.display()),
            ));
        }
        Ok(state
            .live
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.check()?;
        let mut state = lock(&self.state);
        state.durable.retain(|path, _| path.parent() != Some(dir));
        let entries: Vec<_> = state
            .live
            .iter()
            .filter(|(path, _)| path.parent() == Some(dir))
            .map(|(path, file)| (path.clone(), Arc::clone(file)))
            .collect();
        state.durable.extend(entries);
        Ok(())
    }
}

impl File for MemFile {
    fn len(&self) -> io::Result<u64> {
        self.faults.check()?;
        Ok(lock(&self.data).written.len() as u64)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.faults.check()?;
        let mut data = lock(&self.data);
        let position = position as usize;
        let mut end = position + buf.len();
        let mut result = Ok(());
        if end > data.written.len() && self.faults.no_space.load(Ordering::SeqCst) {
            // A short write: half of what goes past the old end lands.
            let old_end = data.written.len().max(position);
            end = old_end + (end - old_end) / 2;
            result = Err(io::Error::from_raw_os_error(ENOSPC));
        }
        if data.written.len() < end {
            data.written.resize(end, 0);
        }
        data.written[position..end].copy_from_slice(&buf[..end - position]);
        data.dirty_from = data.dirty_from.min(position);
        // Written again: dirty, so a sync writes it back.
        subtract(&mut data.forgotten, position..end);
        result
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.faults.check()?;
        let data = lock(&self.data);
        let position = position as usize;
        if position >= data.written.len() {
            return Ok(0);
        }
        let count = buf.len().min(data.written.len() - position);
        buf[..count].copy_from_slice(&data.written[position..position + count]);
        Ok(count)
    }

    fn sync_data(&self) -> io::Result<()> {
        if let Err(error) = self.faults.on_sync() {
            if self.faults.sync_fails.load(Ordering::SeqCst) {
                // The failed writeback's pages are clean now, not on disk.
                let mut data = lock(&self.data);
                let from = data.dirty_from.min(data.durable.len());
                let to = data.written.len();
                if from < to {
                    subtract(&mut data.forgotten, from..to);
                    data.forgotten.push(from..to);
                }
                data.dirty_from = to;
            }
            return Err(error);
        }
        let mut guard = lock(&self.data);
        let data = &mut *guard;
        let from = data.dirty_from.min(data.durable.len()).min(
            data.forgotten
                .iter()
                .map(|range| range.start)
                .min()
                .unwrap_or(usize::MAX),
        );
        data.durable.truncate(from);
        data.durable.extend_from_slice(&data.written[from..]);
        for range in &data.forgotten {
            // Never written back: the disk holds zeros there.
            let end = range.end.min(data.durable.len());
            let start = range.start.min(end);
            data.durable[start..end].fill(0);
        }
        data.dirty_from = data.written.len();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.faults.check()?;
        let mut data = lock(&self.data);
        let len = len as usize;
        if len > data.written.len() && self.faults.no_space.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        data.written.resize(len, 0);
        data.dirty_from = data.dirty_from.min(len);
        subtract(&mut data.forgotten, len..usize::MAX);
        Ok(())
    }
}
