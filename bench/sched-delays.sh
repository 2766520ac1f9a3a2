#!/usr/bin/env bash
# The scheduling noise under a latency run on this machine: records the
# scheduler (perf sched, system-wide) while a command runs, then counts, per
# process name, how often a runnable thread waited more than 0.5 ms and more
# than 1 ms for a CPU, and how long the kernel's DAMON thread (kdamond, the
# VM's memory reclaim) ran. BENCHMARKS.md reads the W3 D1 tails with it.
#
#   bench/sched-delays.sh target/release/herald-bench --workloads w3 --pairs 1 --out /tmp/w3
#
# Needs perf (Debian: linux-perf) and root or kernel.perf_event_paranoid <= 0.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 <command> [args...]" >&2
    exit 2
fi
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

perf sched record -o "$data/sched.data" -- "$@" >"$data/out.txt" 2>&1
grep -E '^(w[0-9]|  )' "$data/out.txt" | grep -E 'medians|p99' || true

perf sched timehist -i "$data/sched.data" 2>/dev/null | awk '
    NR > 3 {
        name = $3; sub(/\[.*/, "", name)
        delay = $5 + 0; run = $6 + 0
        if (delay > 0.5) over_half[name]++
        if (delay > 1.0) over_one[name]++
        if (delay > longest[name]) longest[name] = delay
        if (name == "kdamond.0") {
            kdamond += run
            if (run > 1.0) kdamond_long++
            if (run > kdamond_max) kdamond_max = run
        }
        if (first == "") first = $1
        last = $1
    }
    END {
        printf "%.1f s recorded\n", last - first
        printf "%-18s %14s %12s %14s\n", "process", "waits > 0.5 ms", "waits > 1 ms", "longest wait"
        for (name in over_half)
            printf "%-18s %14d %12d %11.2f ms\n", name, over_half[name], over_one[name], longest[name]
        printf "kdamond ran %.1f ms in all, %d times over 1 ms, the longest %.2f ms\n",
            kdamond, kdamond_long, kdamond_max
    }'
