//! What the measuring examples share: their data directory, their runtime,
//! and this process's resident memory (Linux).

/// A temporary data directory under `HERALD_BENCH_DIR` (default: the
/// system's temp dir).
pub fn data_dir() -> tempfile::TempDir {
    let base = std::env::var_os("HERALD_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    tempfile::tempdir_in(base).unwrap()
}

/// The runtime the examples measure on: two workers, like the server on
/// this 2-core machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A field of /proc/self/status, in KiB.
#[allow(dead_code, reason = "not every example reads memory")]
pub fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim_start_matches(':')
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux: write 5 to clear_refs).
#[allow(dead_code, reason = "not every example reads memory")]
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
