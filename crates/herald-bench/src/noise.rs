//! The noise record of a run, from `/proc` and `/sys/block`: CPU of this
//! process (the client), of the server's process tree, of everything else,
//! device flushes and bytes written, bytes the server wrote.
//!
//! CPU times are in `USER_HZ` ticks (100 per second on Linux). A process's
//! reaped children are counted in its `cutime`/`cstime` (PostgreSQL's
//! backends, pgbench under this process), so a tree's CPU is the sum over
//! its live processes of own plus reaped children's time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TICKS_PER_SECOND: f64 = 100.0;

/// Processes counted as part of every server tree besides its root (the
/// `nats-server` a Herald on the NATS backend stores in). Dead ones count
/// nothing.
static EXTRA_SERVER_ROOTS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Counts `pid`'s tree as part of the server's from now on.
pub fn add_server_root(pid: u32) {
    if let Ok(mut roots) = EXTRA_SERVER_ROOTS.lock() {
        roots.retain(|root| std::path::Path::new(&format!("/proc/{root}")).exists());
        roots.push(pid);
    }
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    at: Instant,
    client_ticks: u64,
    server_ticks: u64,
    server_write_bytes: u64,
    busy_ticks: u64,
    steal_ticks: u64,
    flushes: u64,
    device_writes: u64,
    device_write_sectors: u64,
}

impl Snapshot {
    /// Takes the counters now; `server` is the root of the server's process
    /// tree (none: no server).
    pub fn take(server: Option<u32>) -> Self {
        let client_ticks = read_stat(std::process::id()).map_or(0, ProcStat::total);
        let (server_ticks, server_write_bytes) = server.map_or((0, 0), tree_counters);
        let (flushes, device_writes, device_write_sectors) = block_counters();
        Self {
            at: Instant::now(),
            client_ticks,
            server_ticks,
            server_write_bytes,
            busy_ticks: cpu_ticks(&[0, 1, 2, 5, 6]),
            steal_ticks: cpu_ticks(&[7]),
            flushes,
            device_writes,
            device_write_sectors,
        }
    }

    /// Seconds from `earlier` to this one.
    pub fn seconds_since(&self, earlier: &Self) -> f64 {
        self.at.duration_since(earlier.at).as_secs_f64()
    }

    /// The noise record from `earlier` to this one.
    pub fn since(&self, earlier: &Self) -> Noise {
        let seconds = self.seconds_since(earlier);
        let ticks = |now: u64, then: u64| now.saturating_sub(then) as f64 / TICKS_PER_SECOND;
        let client = ticks(self.client_ticks, earlier.client_ticks);
        let server = ticks(self.server_ticks, earlier.server_ticks);
        let busy = ticks(self.busy_ticks, earlier.busy_ticks);
        Noise {
            seconds,
            client_cpu: client,
            server_cpu: server,
            other_cpu: (busy - client - server).max(0.0),
            steal: ticks(self.steal_ticks, earlier.steal_ticks),
            flushes: self.flushes.saturating_sub(earlier.flushes),
            device_writes: self.device_writes.saturating_sub(earlier.device_writes),
            device_bytes_written: self
                .device_write_sectors
                .saturating_sub(earlier.device_write_sectors)
                * 512,
            server_bytes_written: self
                .server_write_bytes
                .saturating_sub(earlier.server_write_bytes),
            load_average: load_average(),
        }
    }
}

/// What happened on the machine during a measured interval.
#[derive(Debug, Clone, Copy)]
pub struct Noise {
    pub seconds: f64,
    /// CPU seconds of this process (and children it reaped: pgbench).
    pub client_cpu: f64,
    /// CPU seconds of the server's process tree.
    pub server_cpu: f64,
    /// CPU seconds of everything else (all busy CPU minus the two above).
    pub other_cpu: f64,
    /// CPU seconds the hypervisor gave to others while this VM wanted them
    /// (`steal`): the host's contention, invisible to `top`'s processes.
    pub steal: f64,
    /// Flush requests completed by the block devices.
    pub flushes: u64,
    pub device_writes: u64,
    pub device_bytes_written: u64,
    /// Bytes the server's processes caused to be written to storage.
    pub server_bytes_written: u64,
    /// 1-minute load average at the end.
    pub load_average: f64,
}

impl Noise {
    /// Other processes' CPU as a share of one core.
    pub fn other_cores(&self) -> f64 {
        if self.seconds > 0.0 {
            self.other_cpu / self.seconds
        } else {
            0.0
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "seconds": self.seconds,
            "client_cpu_s": self.client_cpu,
            "server_cpu_s": self.server_cpu,
            "other_cpu_s": self.other_cpu,
            "other_cores": self.other_cores(),
            "steal_cpu_s": self.steal,
            "device_flushes": self.flushes,
            "device_writes": self.device_writes,
            "device_bytes_written": self.device_bytes_written,
            "server_bytes_written": self.server_bytes_written,
            "load_average_1m": self.load_average,
        })
    }
}

/// Fields of `/proc/<pid>/stat` that matter here.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

impl ProcStat {
    fn total(self) -> u64 {
        self.utime + self.stime + self.cutime + self.cstime
    }
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may hold spaces).
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        ppid: u32::try_from(field(1)?).ok()?,
        utime: field(11)?,
        stime: field(12)?,
        cutime: field(13)?,
        cstime: field(14)?,
    })
}

/// CPU ticks and `write_bytes` of `root` and all its descendants.
fn tree_counters(root: u32) -> (u64, u64) {
    let mut stats = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                stats.insert(pid, stat);
            }
        }
    }
    let mut tree = vec![root];
    if let Ok(roots) = EXTRA_SERVER_ROOTS.lock() {
        tree.extend(roots.iter().filter(|pid| stats.contains_key(pid)));
    }
    let mut index = 0;
    while let Some(&parent) = tree.get(index) {
        tree.extend(
            stats
                .iter()
                .filter(|(_, stat)| stat.ppid == parent)
                .map(|(&pid, _)| pid),
        );
        index += 1;
    }
    let ticks = tree
        .iter()
        .filter_map(|pid| stats.get(pid))
        .map(|stat| stat.total())
        .sum();
    let bytes = tree.iter().map(|&pid| write_bytes(pid)).sum();
    (ticks, bytes)
}

fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|line| line.strip_prefix("write_bytes:"))
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Busy ticks of all CPUs (user, nice, system, irq, softirq).
/// The sum of the given fields of `/proc/stat`'s `cpu` line (all CPUs):
/// user nice system idle iowait irq softirq steal …
fn cpu_ticks(indexes: &[usize]) -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return 0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    indexes.iter().filter_map(|&i| fields.get(i)).sum()
}

/// Flushes, write requests and sectors written, summed over the physical
/// block devices (loop, ram, zram and device-mapper devices are skipped).
fn block_counters() -> (u64, u64, u64) {
    let mut totals = (0, 0, 0);
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return totals;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "dm-", "sr", "nbd"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields: Vec<u64> = stat
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        totals.0 += field(15);
        totals.1 += field(4);
        totals.2 += field(6);
    }
    totals
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(0.0)
}

/// The disk's cost of one durable append, measured like a D2 serial
/// publish without any server: `pwrite` 128 B at the end of a file in `dir`,
/// then `fdatasync`, for `seconds`; back to back (`rate` `None`) or paced at
/// `rate` per second, as W3 D2 sends (a virtual disk that idles between
/// flushes answers each one slower; BENCHMARKS.md has both figures). The
/// W3 D2 aim is stated against this.
pub fn fdatasync_probe(
    dir: &std::path::Path,
    seconds: f64,
    rate: Option<u64>,
) -> anyhow::Result<Value> {
    use std::os::unix::fs::FileExt as _;
    let file = tempfile::tempfile_in(dir)?;
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let record = [b'x'; 128];
    let started = Instant::now();
    let mut offset = 0u64;
    let interval = rate.map(|rate| Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    while started.elapsed().as_secs_f64() < seconds {
        if let Some(interval) = interval {
            let due = started + interval * u32::try_from(hist.len()).unwrap_or(u32::MAX);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let at = Instant::now();
        file.write_all_at(&record, offset)?;
        file.sync_data()?;
        hist.saturating_record(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX));
        offset += record.len() as u64;
    }
    Ok(json!({
        "what": "pwrite 128 B + fdatasync, one at a time",
        "paced_per_s": rate,
        "count": hist.len(),
        "p50_us": hist.value_at_quantile(0.5),
        "p99_us": hist.value_at_quantile(0.99),
        "per_second": hist.len() as f64 / started.elapsed().as_secs_f64(),
    }))
}

/// What a soak samples of a process: resident memory, threads and open
/// file descriptors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessFootprint {
    /// `VmRSS`, in bytes.
    pub rss_bytes: u64,
    /// `Threads`.
    pub threads: u64,
    /// Entries of `/proc/<pid>/fd`.
    pub open_fds: u64,
}

impl ProcessFootprint {
    /// The footprint of `pid` now (zeros for what cannot be read: a process
    /// that has exited).
    pub fn take(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|entries| entries.count() as u64)
            .unwrap_or(0);
        Self {
            rss_bytes: field("VmRSS:") * 1024,
            threads: field("Threads:"),
            open_fds,
        }
    }
}

/// Bytes of the regular files under `dir`, recursively.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |meta| meta.len()),
            Err(_) => 0,
        })
        .sum()
}
