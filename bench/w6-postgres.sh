#!/usr/bin/env bash
# W6 peer: PostgreSQL 15 as an event store, measured with pgbench.
#
#   bench/w6-postgres.sh [seconds=10]
#
# A throwaway cluster (initdb into a temp dir, a free loopback port,
# synchronous_commit = on, fsync on: durability level D2), a table with a
# primary key on (stream, version), and appends that take the next version
# of a stream in the statement itself (the PK refuses a duplicate version).
# Each client owns the streams s with s % clients == client_id, over 10,000
# streams, like Herald's side (grpc_bench workload=append). Prints appends/s
# (transactions/s) and events/s for 1 and 32 clients, 1 and 10 events per
# append.
set -euo pipefail
seconds="${1:-10}"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
work="$(mktemp -d)"
trap '"$bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
user=postgres
run() { if [ "$(id -u)" = 0 ]; then su "$user" -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
[ "$(id -u)" = 0 ] && chown "$user" "$work"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
run "'$bin/initdb' -D '$work/data' -U bench --auth=trust >/dev/null"
run "'$bin/pg_ctl' -D '$work/data' -l '$work/log' -w -o \"-p $port -k '$work' -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=on -c max_connections=100 -c shared_buffers=256MB\" start >/dev/null"
psql() { run "'$bin/psql' -h 127.0.0.1 -p $port -U bench -d postgres -q $*"; }
psql "-c 'CREATE TABLE events (stream bigint, version bigint, data text, PRIMARY KEY (stream, version))'"
for per in 1 10; do
  cat > "$work/append-$per.sql" <<SQL
\set s :client_id + :clients * random(0, 10000 / :clients - 1)
INSERT INTO events (stream, version, data)
  SELECT :s, base.next + g, repeat('x', 128)
  FROM (SELECT coalesce(max(version), -1) + 1 AS next FROM events WHERE stream = :s) base,
       generate_series(0, $per - 1) g;
SQL
done
[ "$(id -u)" = 0 ] && chown "$user" "$work"/*.sql
for clients in 1 32; do
  for per in 1 10; do
    tps="$(run "'$bin/pgbench' -h 127.0.0.1 -p $port -U bench -n -c $clients -j 2 -T $seconds -D clients=$clients -f '$work/append-$per.sql' postgres" | awk '/^tps/ {print $3}')"
    printf 'postgres %2s clients, %2s event(s) per append: %8.0f appends/s %8.0f events/s\n' \
      "$clients" "$per" "$tps" "$(python3 -c "print($tps*$per)")"
  done
done
