//! The dedup window on disk, so that opening a topic costs what its log
//! gained since the last run was written, not the whole window.
//!
//! Without it, every open read the window's tail of every partition back
//! (an id's hash and position from each event): 2 s for 2M events of 1 KiB,
//! and the window's ids in memory before the first publish (BENCHMARKS.md,
//! W9). Now a topic's `dedup/` directory holds:
//!
//! - `key`: the 128-bit key of the id hash (SipHash-1-3), made at random
//!   once, so a run written before a restart means the same after it;
//! - `run-<seq>`: the ids recorded since the previous run, sorted by hash:
//!   `(hash, packed position, append time)`, 32 bytes each, in blocks of
//!   [`BLOCK`] entries with a CRC each, then the first hash of each block
//!   (the fences), a blocked Bloom filter, and a header whose `covered`
//!   offsets say, per partition, that every id the log holds below it is in
//!   this run or an earlier one.
//!
//! A run is written (to a temporary name, fsynced, renamed, the directory
//! fsynced) off the publish path when [`RUN_IDS`] ids have gathered or the
//! oldest is [`run_interval`] old, and once more when the topic closes, so
//! after a clean stop nothing is left to read. At open, the newest run of
//! an unbroken chain (consecutive sequence numbers, each intact) gives the
//! offsets to read the log from; runs still inside the window stay on disk
//! and answer lookups the memory map cannot: their fences and Bloom filters
//! are loaded (about 2 bytes per id), and a hit reads one block (4 KiB).
//! The memory map holds only what was published or read since the open.
//!
//! A run is a cache of the log, never the truth: one that is missing or
//! damaged only moves the read back to the previous run's offsets (or to
//! the start of the window), and a position a run names beyond the
//! partition's end at open (a log that lost its tail to power loss under
//! `fsync = interval | never`) is not believed.

use std::fs::File;
use std::hash::Hasher as _;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::dedup::Key;

/// Ids per run at most: what a crash can leave to read at the next open
/// (with 1 KiB events, about half a gigabyte over the partitions).
pub(crate) const RUN_IDS: usize = 128 * 1024;

/// Entries per block: one CRC, one fence, one read per lookup hit.
const BLOCK: usize = 128;

const MAGIC: &[u8; 8] = b"HDDRUN01";
const ENTRY: usize = 32;
const HEADER: usize = 8 + 8 + 8 + 8 + 8 + 4 + 4;
/// Bloom filter bits per id (7 probes in one 512-bit block: about 1% false
/// hits).
const BLOOM_BITS_PER_ID: usize = 12;

/// The oldest id gathered waits at most this long for its run: an eighth of
/// the window, at least 10 s, so a window holds about eight runs however
/// slow the topic.
pub(crate) fn run_interval(window_ms: u64) -> i64 {
    i64::try_from((window_ms / 8).max(10_000)).unwrap_or(i64::MAX)
}

/// The id hash, keyed with a topic's persistent key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdHasher(u64, u64);

impl IdHasher {
    pub(crate) fn new(k0: u64, k1: u64) -> Self {
        Self(k0, k1)
    }

    /// A key drawn at random (from the OS, as `RandomState` draws its own).
    pub(crate) fn random() -> Self {
        use std::hash::BuildHasher;
        let state = std::hash::RandomState::new();
        Self(state.hash_one(1u8), state.hash_one(2u8))
    }

    pub(crate) fn hash(self, id: &[u8]) -> Key {
        let mut hasher = SipHasher13::new_with_keys(self.0, self.1);
        hasher.write(id);
        let hash = hasher.finish128();
        Key::new(hash.h1, hash.h2)
    }
}

/// One id of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunEntry {
    pub(crate) key: Key,
    /// Position, packed as the memory map packs it.
    pub(crate) packed: u64,
    pub(crate) appended_at: i64,
}

/// A run to write.
#[derive(Debug)]
pub(crate) struct NewRun {
    pub(crate) seq: u64,
    pub(crate) entries: Vec<RunEntry>,
    /// Per partition: every id the log holds below it is in this run or an
    /// earlier one.
    pub(crate) covered: Vec<u64>,
}

/// A run on disk, loaded for lookups.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) seq: u64,
    file: File,
    count: usize,
    /// Where its entries start in the file.
    entries_at: u64,
    pub(crate) max_time: i64,
    /// First key of each block, and the block's CRC.
    fences: Vec<(Key, u32)>,
    bloom: Vec<u64>,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn run_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("run-{seq:020}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably.
fn write_durably(dir: &Path, name: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = name.with_extension("tmp");
    let mut file = File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&temp, name)?;
    sync_dir(dir)
}

/// The topic's hash key, made (and stored durably) if it has none.
pub(crate) fn load_key(dir: &Path) -> io::Result<IdHasher> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("key");
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 16 => {
            let word = |range: std::ops::Range<usize>| {
                u64::from_le_bytes(bytes[range].try_into().unwrap_or_default())
            };
            Ok(IdHasher::new(word(0..8), word(8..16)))
        }
        Ok(_) => Err(invalid(format!("{}: not a dedup key", path.display()))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let hasher = IdHasher::random();
            let mut bytes = hasher.0.to_le_bytes().to_vec();
            bytes.extend_from_slice(&hasher.1.to_le_bytes());
            write_durably(dir, &path, &bytes)?;
            Ok(hasher)
        }
        Err(error) => Err(error),
    }
}

/// The Bloom block of a key and its seven bits in it (9 bits each from
/// the key's second word; the block from its first).
fn bloom_probe(key: Key, blocks: usize) -> (usize, [u32; 7]) {
    let (high, low) = key.words64();
    let block = ((u128::from(high) * blocks as u128) >> 64) as usize;
    let mut bits = [0u32; 7];
    for (index, bit) in bits.iter_mut().enumerate() {
        *bit = ((low >> (index * 9)) & 511) as u32;
    }
    (block, bits)
}

fn bloom_insert(bloom: &mut [u64], key: Key) {
    let blocks = bloom.len() / 8;
    let (block, bits) = bloom_probe(key, blocks);
    for bit in bits {
        bloom[block * 8 + (bit / 64) as usize] |= 1 << (bit % 64);
    }
}

fn bloom_may_hold(bloom: &[u64], key: Key) -> bool {
    let blocks = bloom.len() / 8;
    if blocks == 0 {
        return false;
    }
    let (block, bits) = bloom_probe(key, blocks);
    bits.iter()
        .all(|&bit| bloom[block * 8 + (bit / 64) as usize] & (1 << (bit % 64)) != 0)
}

fn encode_entry(entry: &RunEntry, out: &mut Vec<u8>) {
    let (high, low) = entry.key.words64();
    out.extend_from_slice(&high.to_le_bytes());
    out.extend_from_slice(&low.to_le_bytes());
    out.extend_from_slice(&entry.packed.to_le_bytes());
    out.extend_from_slice(&entry.appended_at.to_le_bytes());
}

fn decode_entry(bytes: &[u8]) -> RunEntry {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    RunEntry {
        key: Key::new(word(0), word(8)),
        packed: word(16),
        appended_at: word(24) as i64,
    }
}

/// Writes a run: sorted, blocks with CRCs, fences, Bloom filter, header,
/// covered offsets, a CRC of everything but the blocks.
pub(crate) fn write(dir: &Path, mut run: NewRun) -> io::Result<()> {
    run.entries.sort_unstable_by_key(|entry| entry.key);
    run.entries.dedup_by_key(|entry| entry.key);
    let count = run.entries.len();
    let blocks = count.div_ceil(BLOCK);
    let bloom_blocks = (count * BLOOM_BITS_PER_ID).div_ceil(512).max(1);
    let mut bloom = vec![0u64; bloom_blocks * 8];
    let max_time = run
        .entries
        .iter()
        .map(|entry| entry.appended_at)
        .max()
        .unwrap_or(i64::MIN);
    let mut out = Vec::with_capacity(count * ENTRY + blocks * 20 + bloom.len() * 8 + 256);
    // Header: magic, seq, count, max time, bloom words, partitions, blocks.
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&run.seq.to_le_bytes());
    out.extend_from_slice(&(count as u64).to_le_bytes());
    out.extend_from_slice(&max_time.to_le_bytes());
    out.extend_from_slice(&(bloom.len() as u64).to_le_bytes());
    out.extend_from_slice(&(run.covered.len() as u32).to_le_bytes());
    out.extend_from_slice(&(blocks as u32).to_le_bytes());
    for covered in &run.covered {
        out.extend_from_slice(&covered.to_le_bytes());
    }
    let entries_at = out.len();
    let mut fences = Vec::with_capacity(blocks * 20);
    for block in run.entries.chunks(BLOCK) {
        let start = out.len();
        for entry in block {
            encode_entry(entry, &mut out);
            bloom_insert(&mut bloom, entry.key);
        }
        let (high, low) = block[0].key.words64();
        fences.extend_from_slice(&high.to_le_bytes());
        fences.extend_from_slice(&low.to_le_bytes());
        fences.extend_from_slice(&crc32c::crc32c(&out[start..]).to_le_bytes());
    }
    debug_assert_eq!(out.len(), entries_at + count * ENTRY);
    out.extend_from_slice(&fences);
    for word in &bloom {
        out.extend_from_slice(&word.to_le_bytes());
    }
    let mut crc = crc32c::crc32c(&out[..entries_at]);
    crc = crc32c::crc32c_append(crc, &out[entries_at + count * ENTRY..]);
    out.extend_from_slice(&crc.to_le_bytes());
    write_durably(dir, &run_path(dir, run.seq), &out)
}

/// A run's header: seq, count, max time, bloom words, covered offsets,
/// blocks.
struct Header {
    seq: u64,
    count: usize,
    max_time: i64,
    bloom_words: usize,
    blocks: usize,
    covered: Vec<u64>,
}

impl Header {
    fn bytes(&self) -> usize {
        HEADER + self.covered.len() * 8
    }

    fn read(file: &File) -> io::Result<Self> {
        let mut fixed = [0u8; HEADER];
        file.read_exact_at(&mut fixed, 0)?;
        if &fixed[..8] != MAGIC {
            return Err(invalid("not a dedup run"));
        }
        let word = |at: usize| u64::from_le_bytes(fixed[at..at + 8].try_into().unwrap_or_default());
        let half = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().unwrap_or_default());
        let partitions = half(40) as usize;
        if partitions > 1 << 16 {
            return Err(invalid("dedup run: too many partitions"));
        }
        let mut covered = vec![0u8; partitions * 8];
        file.read_exact_at(&mut covered, HEADER as u64)?;
        Ok(Self {
            seq: word(8),
            count: usize::try_from(word(16)).map_err(|_| invalid("dedup run: count"))?,
            max_time: word(24) as i64,
            bloom_words: usize::try_from(word(32)).map_err(|_| invalid("dedup run: bloom"))?,
            blocks: half(44) as usize,
            covered: covered
                .chunks_exact(8)
                .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap_or_default()))
                .collect(),
        })
    }
}

impl Run {
    /// Loads a run's header, fences and Bloom filter, checking their CRC;
    /// returns it with its covered offsets.
    fn load(path: &Path) -> io::Result<(Self, Vec<u64>)> {
        let file = File::open(path)?;
        let header = Header::read(&file)?;
        let length = file.metadata()?.len();
        let entries_at = header.bytes() as u64;
        let entries_bytes = (header.count as u64)
            .checked_mul(ENTRY as u64)
            .ok_or_else(|| invalid("dedup run: size"))?;
        let tail_at = entries_at + entries_bytes;
        let tail_bytes = header.blocks as u64 * 20 + header.bloom_words as u64 * 8;
        if header.blocks != header.count.div_ceil(BLOCK)
            || header.bloom_words % 8 != 0
            || length != tail_at + tail_bytes + 4
        {
            return Err(invalid("dedup run: truncated or inconsistent"));
        }
        let mut head = vec![0u8; header.bytes()];
        file.read_exact_at(&mut head, 0)?;
        let mut tail = vec![0u8; tail_bytes as usize + 4];
        file.read_exact_at(&mut tail, tail_at)?;
        let stored = u32::from_le_bytes(tail[tail.len() - 4..].try_into().unwrap_or_default());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &tail[..tail.len() - 4]);
        if crc != stored {
            return Err(invalid("dedup run: checksum mismatch"));
        }
        let fences_bytes = header.blocks * 20;
        let fences = tail[..fences_bytes]
            .chunks_exact(20)
            .map(|fence| {
                let word = |at: usize| {
                    u64::from_le_bytes(fence[at..at + 8].try_into().unwrap_or_default())
                };
                let crc = u32::from_le_bytes(fence[16..20].try_into().unwrap_or_default());
                (Key::new(word(0), word(8)), crc)
            })
            .collect();
        let bloom = tail[fences_bytes..tail.len() - 4]
            .chunks_exact(8)
            .map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default()))
            .collect();
        Ok((
            Self {
                seq: header.seq,
                file,
                count: header.count,
                entries_at,
                max_time: header.max_time,
                fences,
                bloom,
            },
            header.covered,
        ))
    }

    /// The ids it holds.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// `key`'s entry, if this run has it. A block that fails its CRC is
    /// reported (`Err`) rather than searched.
    pub(crate) fn find(&self, key: Key) -> io::Result<Option<RunEntry>> {
        if !bloom_may_hold(&self.bloom, key) {
            return Ok(None);
        }
        let block = match self.fences.partition_point(|(first, _)| *first <= key) {
            0 => return Ok(None),
            after => after - 1,
        };
        let entries = (self.count - block * BLOCK).min(BLOCK);
        let mut bytes = vec![0u8; entries * ENTRY];
        self.file
            .read_exact_at(&mut bytes, self.entries_at + (block * BLOCK * ENTRY) as u64)?;
        if crc32c::crc32c(&bytes) != self.fences[block].1 {
            return Err(invalid(format!(
                "dedup run {}: block {block} damaged",
                self.seq
            )));
        }
        let found = bytes
            .chunks_exact(ENTRY)
            .map(decode_entry)
            .collect::<Vec<_>>();
        Ok(found
            .binary_search_by_key(&key, |entry| entry.key)
            .ok()
            .map(|index| found[index]))
    }
}

/// What [`open`] found in a topic's `dedup/` directory.
#[derive(Debug)]
pub(crate) struct Opened {
    /// Runs with an id still inside the window, newest first.
    pub(crate) runs: Vec<Run>,
    /// Where the unbroken chain of runs ends, per partition (`None`: no
    /// usable run; read the whole window).
    pub(crate) covered: Option<Vec<u64>>,
    /// The sequence number the next run takes.
    pub(crate) next_seq: u64,
    /// Runs that could not be read (with why), for the log.
    pub(crate) damaged: Vec<(PathBuf, io::Error)>,
}

/// The sequence numbers of the runs in `dir`, in order.
fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_prefix("run-").and_then(|seq| seq.parse().ok()) {
            seqs.push(seq);
        } else if name.ends_with(".tmp") {
            // A run whose write a crash cut short.
            let _ = std::fs::remove_file(dir.join(&*name));
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Loads the runs of `dir` for a topic of `partitions` partitions whose
/// window starts at `cutoff`.
pub(crate) fn open(dir: &Path, partitions: usize, cutoff: i64) -> io::Result<Opened> {
    let seqs = list(dir)?;
    let mut runs = Vec::new();
    let mut covered = None;
    let mut chain_intact = true;
    let mut damaged = Vec::new();
    let mut previous: Option<u64> = None;
    for &seq in &seqs {
        if previous.is_some_and(|previous| previous + 1 != seq) {
            chain_intact = false;
        }
        previous = Some(seq);
        let path = run_path(dir, seq);
        match Run::load(&path) {
            Ok((run, run_covered)) if run.seq == seq && run_covered.len() == partitions => {
                if chain_intact {
                    covered = Some(run_covered);
                }
                if run.max_time >= cutoff && run.count > 0 {
                    runs.push(run);
                }
            }
            Ok(_) => {
                chain_intact = false;
                damaged.push((path, invalid("dedup run of another shape")));
            }
            Err(error) => {
                chain_intact = false;
                damaged.push((path, error));
            }
        }
    }
    runs.reverse();
    Ok(Opened {
        runs,
        covered,
        next_seq: seqs.last().map_or(0, |last| last + 1),
        damaged,
    })
}

/// Deletes the oldest runs whose ids have all left the window (only a
/// prefix, so the chain stays unbroken).
pub(crate) fn remove_expired(dir: &Path, cutoff: i64) -> io::Result<()> {
    let seqs = list(dir)?;
    // Keep the newest run whatever its age: it carries the covered offsets.
    for &seq in seqs.iter().take(seqs.len().saturating_sub(1)) {
        let path = run_path(dir, seq);
        let expired = File::open(&path)
            .and_then(|file| Header::read(&file))
            .map_or(true, |header| header.max_time < cutoff);
        if !expired {
            break;
        }
        std::fs::remove_file(&path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(hasher: IdHasher, ids: std::ops::Range<u64>) -> Vec<RunEntry> {
        ids.map(|id| RunEntry {
            key: hasher.hash(&id.to_be_bytes()),
            packed: id * 3,
            appended_at: 1_000 + id as i64,
        })
        .collect()
    }

    /// Runs `0..count` of one partition, 100 ids each (run `seq` holds ids
    /// `seq * 100..`), covering `seq * covered_step`.
    fn write_runs(dir: &Path, hasher: IdHasher, count: u64, covered_step: u64) {
        for seq in 0..count {
            let run = NewRun {
                seq,
                entries: entries(hasher, seq * 100..seq * 100 + 100),
                covered: vec![seq * covered_step],
            };
            write(dir, run).unwrap();
        }
    }

    #[test]
    fn a_written_run_finds_every_id_it_holds_and_almost_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let hasher = load_key(dir.path()).unwrap();
        let held = entries(hasher, 0..10_000);
        write(
            dir.path(),
            NewRun {
                seq: 0,
                entries: held.clone(),
                covered: vec![7, 9],
            },
        )
        .unwrap();
        let opened = open(dir.path(), 2, 0).unwrap();
        assert_eq!(opened.covered, Some(vec![7, 9]));
        assert_eq!(opened.next_seq, 1);
        let run = &opened.runs[0];
        assert_eq!(run.len(), 10_000);
        for entry in &held {
            assert_eq!(run.find(entry.key).unwrap(), Some(*entry));
        }
        let others = entries(hasher, 10_000..20_000);
        let found = others
            .iter()
            .filter(|entry| run.find(entry.key).unwrap().is_some())
            .count();
        assert_eq!(found, 0);
        // The key survives: the same id hashes alike after a reopen.
        assert_eq!(load_key(dir.path()).unwrap().hash(b"x"), hasher.hash(b"x"));
    }

    #[test]
    fn a_damaged_or_missing_run_ends_the_chain_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let hasher = load_key(dir.path()).unwrap();
        write_runs(dir.path(), hasher, 4, 10);
        // Run 2's Bloom filter loses a byte: it is not loaded, and the chain
        // ends at run 1.
        let path = run_path(dir.path(), 2);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let opened = open(dir.path(), 1, 0).unwrap();
        assert_eq!(opened.covered, Some(vec![10]));
        assert_eq!(opened.damaged.len(), 1);
        assert_eq!(
            opened.runs.iter().map(|run| run.seq).collect::<Vec<_>>(),
            vec![3, 1, 0]
        );
        // A gap (run 1 gone) ends it at run 0.
        std::fs::remove_file(run_path(dir.path(), 1)).unwrap();
        std::fs::remove_file(run_path(dir.path(), 2)).unwrap();
        let opened = open(dir.path(), 1, 0).unwrap();
        assert_eq!(opened.covered, Some(vec![0]));
        assert_eq!(opened.next_seq, 4);
        // A block damaged after loading is reported on lookup.
        let run = &opened.runs[0];
        let path = run_path(dir.path(), 3);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 8 + 5] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let held = entries(hasher, 300..400);
        let errors = held
            .iter()
            .filter(|entry| run.find(entry.key).is_err())
            .count();
        assert!(errors > 0);
    }

    #[test]
    fn expired_runs_are_removed_oldest_first_keeping_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let hasher = load_key(dir.path()).unwrap();
        write_runs(dir.path(), hasher, 3, 1);
        // Max times 1099, 1199, 1299.
        remove_expired(dir.path(), 1_150).unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![1, 2]);
        remove_expired(dir.path(), i64::MAX).unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![2]);
        let opened = open(dir.path(), 1, i64::MAX).unwrap();
        assert!(opened.runs.is_empty());
        assert_eq!(opened.covered, Some(vec![2]));
    }
}
