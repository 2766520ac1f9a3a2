//! Herald's log engine: one append-only, segmented, checksummed log per
//! partition, with group commit.
//!
//! # Design constraints
//!
//! - **An acknowledged append under `fsync = always` survives `kill -9` and
//!   power loss.** Acknowledgement follows the fsync of the round that carried
//!   the append; nothing is acknowledged from a round whose write or fsync
//!   failed. Such a failure (a full disk, an I/O error) puts the log in a
//!   failed state that refuses appends fast; the writer probes it with
//!   backoff and recovers it by itself once the disk works again, without
//!   losing or duplicating anything acknowledged ([`Log::recover`]).
//! - **Recovery yields a valid prefix, never a corrupt record.** Every batch
//!   carries a CRC32C; reads and recovery validate it; a torn or corrupt tail
//!   of the active segment is cut; a damaged batch in its middle (valid
//!   batches after it) is reported and fenced off, never served, and the
//!   batches after it are kept; damage inside a sealed segment is reported
//!   and fenced off, never served.
//! - **One writer per partition, group commit.** Appends queue while a write
//!   and fsync are in flight and go out together in the next round
//!   ([`writer`]). Throughput under `always` scales with concurrency instead
//!   of being capped at the disk's fsync rate.
//! - **Reads don't block the writer.** The writer publishes each round under a
//!   short write lock; readers locate bytes under a read lock and read with
//!   positional I/O without it. A reader at the tail waits on a notification.
//! - **Every byte goes through a seam** ([`fs::Filesystem`]), so tests can
//!   crash the disk at any fsync and inspect what survives ([`mem::MemFs`]).
//! - No tokio in the core: [`Log`] is synchronous; only the waiting primitives
//!   (`watch`, `oneshot`, `Semaphore`) come from `tokio::sync`, which needs no
//!   runtime.
//!
//! # Byte format
//!
//! Little-endian throughout. A record batch (the unit of write and checksum;
//! one append is one batch):
//!
//! ```text
//! pos  size  field
//! 0    8     base_offset      u64  offset of the first record
//! 8    4     length           u32  bytes from pos 12 to the end of the batch
//! 12   4     crc              u32  CRC32C of bytes 16..end
//! 16   1     magic            u8   1
//! 17   1     reserved         u8   0
//! 18   2     attributes       u16  0
//! 20   4     record_count     u32  >= 1
//! 24   8     first_timestamp  i64  ms since the Unix epoch
//! 32   8     max_timestamp    i64
//! 40   ...   records: length u32, timestamp_delta u32, key_length u32
//!            (0xFFFF_FFFF = none), key, header_count u16, headers
//!            (name_length u16, name, value_length u32, value),
//!            value_length u32, value
//! ```
//!
//! Index entries: offset index `relative_offset u32, position u32` (8 bytes);
//! time index `timestamp i64, relative_offset u32` (12 bytes); one entry per
//! `index_interval_bytes` of batches. The byte-level reference is
//! `docs/design/log-format.md`; a format change updates both.
//!
//! # Files and segment lifecycle
//!
//! A log directory holds segments named by their base offset,
//! `00000000000000000000.log` with `.index` and `.timeindex` beside it, and
//! `CLEAN` after a clean close. The last segment is active: appends go to it,
//! its indexes live in memory. It is sealed when it reaches `segment_bytes` or
//! its first record is `segment_age` old: its data is fsynced, its indexes are
//! written and fsynced, the next segment's file is created and the directory
//! fsynced (so the new file survives a crash before any append to it is
//! acknowledged). Retention removes whole sealed segments from the front
//! (by age of their newest record, total bytes, record count) and the start
//! offset advances to the next segment's base.
//!
//! # Erasure (compaction)
//!
//! [`Log::erase`] (on the writer thread: [`LogHandle::erase`]) removes the
//! contents of given records for good, e.g. the events of a hard-deleted
//! stream. The format does not change: each batch holding such a record is
//! rewritten with the record replaced by an *erased record* — no key, no
//! headers, an empty value, the same timestamp delta — so offsets stay dense,
//! the record count and batch timestamps stay, and the length and CRC are
//! recomputed ([`Record::is_erased`]). Other batches are copied byte for
//! byte. The active segment is rolled first if it holds such a record, so
//! only sealed segments are ever rewritten, and always whole:
//!
//! ```text
//! 1. write <base>.log.compacting, .index.compacting, .timeindex.compacting; fsync each
//! 2. remove <base>.index, <base>.timeindex; fsync the directory
//! 3. rename <base>.log.compacting -> <base>.log;  fsync the directory   (the switch)
//! 4. rename the two index files into place;       fsync the directory
//! ```
//!
//! A crash before 3 leaves the old segment; after it, the new one; a segment
//! without indexes (crash between 2 and 4) has them rebuilt by a scan, and
//! recovery deletes `*.compacting` leftovers first. Readers that located a
//! batch before the switch finish on the old file's open handle.
//!
//! # Recovery
//!
//! On open, remove leftover `*.compacting` files; then for each sealed
//! segment: load its indexes and check them (sizes,
//! monotonic entries, positions inside the file, the last entry pointing at a
//! batch with the right base offset), rebuilding them by a scan if they fail;
//! then validate the batches after the last index entry to find the end. For
//! the active segment: after a clean close (the `CLEAN` marker), trust its
//! indexes and validate from the last index entry; after a crash, validate
//! every batch from the start. Validation checks framing, CRC and that
//! offsets continue densely. Where it stops in the active segment, recovery
//! looks further on for a valid batch that continues the sequence (base
//! offset past the expected one, offsets that fit the skipped bytes,
//! timestamps not going back): if there is none, it is a torn tail, cut
//! after the last valid batch and the cut fsynced; if there is one, a bad
//! batch sits in the middle of bytes that were synced and acknowledged, and
//! it is fenced off instead: the valid rest moves to a new active segment
//! named by its base offset and the damaged segment is cut at the damage and
//! sealed (crash-safe; `docs/design/log-format.md`). Damage in a sealed
//! segment, or fenced in the active one, is logged at ERROR, counted in
//! `herald_log_corrupt_batches_total`, and the lost offsets read as
//! [`LogError::Lost`].

pub mod clock;
pub mod error;
pub mod format;
pub mod fs;
mod index;
pub mod log;
pub mod mem;
pub mod metrics;
pub mod writer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::LogError;
pub use format::{Header, HeaderName, NewRecord, Record};
pub use fs::{File, Filesystem, StdFs};
pub use log::{
    AppendAck, Erased, FsyncPolicy, Log, LogEnv, LogFailure, LogOptions, LogReader, ReadBatch,
    Retention,
};
pub use mem::{Fault, MemFs, Tail};
pub use metrics::LogMetrics;
pub use writer::{LogHandle, WriterOptions};
