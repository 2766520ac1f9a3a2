#!/usr/bin/env bash
# Runs the interoperability suite: a real `herald serve` driven by
# independent third-party clients (the CloudEvents SDK's strict HTTP binding,
# grpcio with reflection v1alpha and v1, httpx-sse, websockets).
#
# Usage: tests/interop/run.sh [pytest arguments…]
#   e.g. tests/interop/run.sh -k sse -x, or a file: test_websocket.py
#   (pytest runs in tests/interop, so paths are relative to it)
# Environment:
#   HERALD_BIN           the herald binary (default: target/debug/herald,
#                        relative to the repository root)
#   HERALD_INTEROP_VENV  the virtualenv to install the pinned clients into
#                        (default: one per requirements.txt under
#                        ${XDG_CACHE_HOME:-~/.cache}/herald-interop, reused
#                        while requirements.txt is unchanged)
#   HERALD_INTEROP_TIMEOUT  seconds one test may take (default 90)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
cd "${root}"

. "${root}/tests/suite.sh"
herald_bin

# The pinned clients, in a virtualenv of their own (tests/suite.sh).
python_env interop "${here}/requirements.txt"

# Nothing written into the work tree: no .pytest_cache, no __pycache__.
export PYTHONDONTWRITEBYTECODE=1
cd "${here}"
exec "${venv}/bin/python" -m pytest -c pytest.ini -p no:cacheprovider \
    --timeout "${HERALD_INTEROP_TIMEOUT:-90}" "$@"
