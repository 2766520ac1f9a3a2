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

export HERALD_BIN="${HERALD_BIN:-target/debug/herald}"
case "${HERALD_BIN}" in
    /*) ;;
    *) HERALD_BIN="${root}/${HERALD_BIN}" ;;
esac
if [ ! -x "${HERALD_BIN}" ]; then
    echo "no herald binary at ${HERALD_BIN}: build it (cargo build -p herald-server --bin herald) or set HERALD_BIN" >&2
    exit 1
fi

python="${PYTHON:-python3}"
if ! "${python}" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "the interop suite needs Python 3.11 or newer (the pinned cloudevents and websockets do); ${python} is $("${python}" --version 2>&1)" >&2
    exit 1
fi

# A virtualenv keyed by the lock file and the interpreter, so the pins never
# fight the packages other CI steps install globally (schemathesis brings
# its own pytest), and a machine that ran the suite before reuses it.
requirements="${here}/requirements.txt"
key="$( (cat "${requirements}"; "${python}" --version) | sha256sum | cut -c1-16)"
venv="${HERALD_INTEROP_VENV:-${XDG_CACHE_HOME:-${HOME}/.cache}/herald-interop/venv-${key}}"
if [ ! -f "${venv}/.installed" ]; then
    # A half-made default one goes; one named by HERALD_INTEROP_VENV is the
    # caller's and is only added to.
    [ -n "${HERALD_INTEROP_VENV:-}" ] || rm -rf "${venv}"
    if "${python}" -m venv "${venv}" 2>/dev/null; then
        "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-deps --require-virtualenv -r "${requirements}"
        # --no-deps installs exactly the lock; check that it is complete.
        "${venv}/bin/python" -m pip check
    else
        # No venv module (Debian's python3 without python3-venv): the pins
        # go into a directory of their own, first on the path.
        echo "no virtualenv with ${python}; installing the pins with pip --target" >&2
        rm -rf "${venv}"
        mkdir -p "${venv}/bin"
        "${python}" -m pip install --quiet --disable-pip-version-check \
            --no-deps --target "${venv}/site" -r "${requirements}"
        printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' \
            "${venv}/site" "$(command -v "${python}")" > "${venv}/bin/python"
        chmod +x "${venv}/bin/python"
    fi
    touch "${venv}/.installed"
fi

# Nothing written into the work tree: no .pytest_cache, no __pycache__.
export PYTHONDONTWRITEBYTECODE=1
cd "${here}"
exec "${venv}/bin/python" -m pytest -c pytest.ini -p no:cacheprovider \
    --timeout "${HERALD_INTEROP_TIMEOUT:-90}" "$@"
