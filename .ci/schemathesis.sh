#!/usr/bin/env bash
# Fuzzes the live server's REST API from its own /openapi.json: schemathesis
# (PyPI) generates cases for every operation but the streaming ones, for a
# bounded time; any 5xx or any response that breaks the documented schema
# fails CI. Prints how many cases of each operation reached a 2xx.
# Usage: .ci/schemathesis.sh [herald binary]
# Environment: SCHEMATHESIS_MAX_TIME (seconds of cases, 240),
# SCHEMATHESIS_MAX_EXAMPLES (per operation and cycle, 100),
# SCHEMATHESIS_REFUSALS (a file for the reasons the server refused cases the
# schema calls valid), SCHEMATHESIS_ARGS (more flags, e.g.
# "--include-path-regex groups").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-100}"
# Seconds of generated cases; the run takes about this plus a few seconds.
MAX_TIME="${SCHEMATHESIS_MAX_TIME:-240}"
binary="${1:-target/debug/herald}"
# The server runs with auth on (this bootstrap key); the first pass sends it,
# the second sends nothing and expects only 401s.
TOKEN="${SCHEMATHESIS_TOKEN:-hrd_schemathesis_0123456789abcdef0123456789abcdef}"
auth=(-H "Authorization: Bearer ${TOKEN}")

if ! schemathesis --version 2>/dev/null | grep -q "${SCHEMATHESIS_VERSION}"; then
    python3 -m pip install --quiet "schemathesis==${SCHEMATHESIS_VERSION}"
fi
[ -x "${binary}" ] || cargo build --quiet --bin herald

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "${server_pid}" ] && kill -0 "${server_pid}" 2>/dev/null; then
        kill -TERM "${server_pid}"
        wait "${server_pid}" || true
    fi
    rm -rf "${work}"
}
trap cleanup EXIT

# Webhook targets on loopback are allowed: the seeded endpoint posts to a
# closed port there (a fuzzed endpoint elsewhere is refused or fails).
HERALD_WEBHOOKS__ALLOW_TARGETS='["127.0.0.1/32"]' \
HERALD_AUTH__BOOTSTRAP_KEY="${TOKEN}" "${binary}" serve --listen 127.0.0.1:0 --data-dir "${work}/data" >"${work}/stdout" 2>"${work}/stderr" &
server_pid=$!
addr=""
for _ in $(seq 300); do
    addr="$(sed -n 's/^herald listening on //p' "${work}/stdout")"
    [ -n "${addr}" ] && break
    kill -0 "${server_pid}" 2>/dev/null || { cat "${work}/stderr" >&2; exit 1; }
    sleep 0.1
done
[ -n "${addr}" ] || { echo "herald did not report its address" >&2; exit 1; }
base="http://${addr}"
for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "${base}/readyz")" = 200 ] && break
    sleep 0.1
done

# Existing resources for the path parameters (.ci/schemathesis_seed.py), so
# generated cases reach more than 404s.
HERALD_FUZZ_TOKEN="${TOKEN}" python3 .ci/schemathesis_seed.py "${base}" "${work}/fixtures.json"

# What is fuzzed, and for how long:
# - every operation but the streaming ones (SSE, WebSocket): the hooks drop
#   any operation that answers text/event-stream or 101 (see
#   .ci/schemathesis_hooks.py), so a new streaming endpoint cannot hang CI;
# - the phases examples, coverage and fuzzing, then stateful: sequences of
#   calls that follow the document's OpenAPI links (created topic → its
#   events, submitted job → its status, fetch → ack …); link inference from
#   Location headers is off (.ci/schemathesis.toml), the links are explicit;
# - --max-time bounds the run: fuzzing and stateful repeat until it is spent.
# --request-timeout 30: nothing waits (streams are not fuzzed, long polls are
#   capped at 50 ms), but deleting a topic the fuzzer made with hundreds of
#   partitions closes (and fsyncs) each of its logs, which took over 10 s on
#   a loaded machine.
# Checks: no 5xx, and every response conforms to the documented schema.
# The document needs credentials too: fetched once, fuzzed from the file.
curl -sf "${auth[@]}" "${base}/openapi.json" >"${work}/openapi.json"
status=0
HERALD_FUZZ_FIXTURES="${work}/fixtures.json" HERALD_FUZZ_COUNTS="${work}/counts.txt" \
HERALD_FUZZ_REFUSALS="${SCHEMATHESIS_REFUSALS:-}" \
SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH=.ci \
    schemathesis --config-file .ci/schemathesis.toml run "${work}/openapi.json" \
    --url "${base}" "${auth[@]}" \
    --checks not_a_server_error,response_schema_conformance \
    --max-examples "${MAX_EXAMPLES}" \
    --max-time "${MAX_TIME}" \
    --phases examples,coverage,fuzzing,stateful \
    --request-timeout 30 \
    --generation-database none \
    --no-color ${SCHEMATHESIS_ARGS:-} || status=$?

echo
echo "Cases per operation (2xx: reached the operation's work):"
cat "${work}/counts.txt" 2>/dev/null || echo "(no counts: schemathesis did not finish)"

# Without credentials every operation but /healthz and /readyz must answer
# 401 unauthenticated, whatever the input.
SCHEMATHESIS_HOOKS=schemathesis_unauthenticated PYTHONPATH=.ci schemathesis run "${work}/openapi.json" \
    --url "${base}" \
    --checks only_unauthenticated \
    --max-examples 5 \
    --phases examples,fuzzing \
    --exclude-path-regex '/ws$|/events/stream$|^/healthz$|^/readyz$' \
    --request-timeout 10 \
    --generation-database none \
    --no-color || status=$?

kill -TERM "${server_pid}"
if ! wait "${server_pid}"; then
    echo "herald did not stop cleanly on SIGTERM:" >&2
    tail -20 "${work}/stderr" >&2
    status=1
fi
server_pid=""
exit "${status}"
