#!/usr/bin/env bash
# Runs the web console's browser test: a real `herald serve`, seeded through
# the REST API, and its console at /ui driven in Debian's headless Chromium
# by Playwright for Python. Screenshots of every page go to docs/console/.
#
# Usage: tests/console/run.sh [pytest arguments…]   (e.g. -k tail -x)
# Environment:
#   HERALD_BIN          the herald binary (default: target/debug/herald,
#                       relative to the repository root)
#   CHROMIUM            the browser (default: chromium on the PATH; Debian's
#                       package `chromium`)
#   HERALD_CONSOLE_VENV the virtualenv for the pins (default: one per
#                       requirements files under ~/.cache/herald-console)
#   HERALD_CONSOLE_TIMEOUT  seconds one test may take (default 120)
#   HERALD_CONSOLE_SCREENSHOTS  where to save screenshots (default docs/console)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
cd "${root}"

. "${root}/tests/suite.sh"
herald_bin
CHROMIUM="${CHROMIUM:-$(command -v chromium || true)}"
if [ -z "${CHROMIUM}" ] || [ ! -x "${CHROMIUM}" ]; then
    echo "no Chromium: apt-get install -y chromium, or set CHROMIUM to a Chromium binary" >&2
    exit 1
fi
export CHROMIUM
export HERALD_CONSOLE_SCREENSHOTS="${HERALD_CONSOLE_SCREENSHOTS:-${root}/docs/console}"

# Playwright must never fetch a browser of its own: it drives the one above.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
python_env console "${root}/tests/interop/requirements.txt" "${here}/requirements.txt"

# Nothing written into the work tree but the screenshots.
export PYTHONDONTWRITEBYTECODE=1
cd "${here}"
exec "${venv}/bin/python" -m pytest -c pytest.ini -p no:cacheprovider \
    --timeout "${HERALD_CONSOLE_TIMEOUT:-120}" "$@"
