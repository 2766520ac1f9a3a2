//! Memory of the dedup window per event id: records `ids` ids (36-byte
//! UUID-like strings, as the SDK makes) in one topic's window and reports
//! the heap bytes the window holds per id, counted by a counting global
//! allocator (exact: what the window allocated and still holds), and the
//! process's RSS growth per id (what the OS sees, page granular).
//!
//! `cargo run --release -p herald-embedded --example dedup_memory -- [ids=1000000]...`
//!
//! Several counts may be given: the maps grow by doubling, so the bytes per
//! id depend on where a count falls between two sizes (a fresh doubling
//! leaves each map under half full).
#![allow(
    unsafe_code,
    reason = "a counting global allocator: every call forwards to System"
)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a measuring tool"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use herald_embedded::DedupProbe;

/// The system allocator, counting the bytes it has handed out and not got
/// back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter only
// observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<i64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().unwrap())
        .collect();
    let counts = if counts.is_empty() {
        vec![1_000_000]
    } else {
        counts
    };
    println!("| ids | heap bytes per id | RSS bytes per id | ns per record |");
    println!("|---|---|---|---|");
    for count in counts {
        let heap_before = LIVE.load(Ordering::Relaxed);
        let rss_before = rss_bytes();
        let mut window = DedupProbe::default();
        let mut id = [0_u8; 36];
        let started = Instant::now();
        for index in 0..count {
            let mut cursor = &mut id[..];
            write!(
                cursor,
                "0190a1b2-c3d4-7e5f-8a9b-{:012x}",
                index as u64 * 0x9e37_79b9 % (1 << 48)
            )
            .unwrap();
            // One millisecond per 100 ids: 100k ids/s, partition by index.
            window.record(
                &id,
                (index % 16) as u32,
                index as u64,
                1_700_000_000_000 + (index / 100) as i64,
            );
        }
        let elapsed = started.elapsed();
        let heap = LIVE.load(Ordering::Relaxed) - heap_before;
        let rss = rss_bytes() - rss_before;
        assert!(window.contains(&id), "the last id is in the window");
        println!(
            "| {count} | {:.1} | {:.1} | {:.0} |",
            heap as f64 / count as f64,
            rss as f64 / count as f64,
            elapsed.as_nanos() as f64 / count as f64
        );
        window.expire(i64::MAX);
        drop(window);
    }
}
