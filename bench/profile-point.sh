#!/bin/bash
# Profiles one herald-bench point: records the whole machine with perf while
# the point runs once (peer, then Herald), then prints the Herald server's
# threads and its top symbols by self time.
#
#   bench/profile-point.sh WORKLOAD POINT [herald-bench args...]
#   bench/profile-point.sh w1 w1-D1-128B --seconds 5
#   OUT=/tmp/prof-old bench/profile-point.sh w1 w1-D1-128B --herald-bin /tmp/old/herald
#
# Needs perf and a release build (target/release/herald-bench). Kernel
# symbols show only where perf_event_paranoid allows them.
set -euo pipefail
workload=$1 point=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/herald-profile-$point}
rm -rf "$out" && mkdir -p "$out"
# The Herald servers started during the run, to filter the report by.
(while true; do pgrep -f "herald serve" >>"$out/pids" || true; sleep 0.3; done) &
watcher=$!
trap 'kill $watcher 2>/dev/null || true' EXIT
perf record -a -g -F 499 -o "$out/perf.data" -- \
  "$root/target/release/herald-bench" --workloads "$workload" --only "$point" \
  --pairs 1 --out "$out/bench" "$@" >"$out/bench.log" 2>&1
pids=$(sort -u "$out/pids" | paste -sd,)
grep -A1 "^point" "$out/bench.log" || true
report() {
  perf report -i "$out/perf.data" --pid="$pids" --no-children --percentage relative \
    --stdio -g none "$@" 2>/dev/null | grep -v '^#' | grep -v '^$' || true
}
report --sort comm | head -8
report --sort sym --percent-limit 0.9 | head -40
