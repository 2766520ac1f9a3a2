# Sourced by the Python suites' run.sh (tests/interop, tests/console), from
# the repository root.
#
# herald_bin: exports HERALD_BIN as an absolute path (default
# target/debug/herald, relative to the root), or fails naming the build.
herald_bin() {
    export HERALD_BIN="${HERALD_BIN:-target/debug/herald}"
    case "${HERALD_BIN}" in
        /*) ;;
        *) HERALD_BIN="${PWD}/${HERALD_BIN}" ;;
    esac
    if [ ! -x "${HERALD_BIN}" ]; then
        echo "no herald binary at ${HERALD_BIN}: build it (cargo build -p herald-server --bin herald) or set HERALD_BIN" >&2
        return 1
    fi
}

# python_env NAME REQUIREMENTS… makes (or reuses) a virtualenv with exactly
# the pinned packages of the requirements files and sets `venv` to it.
#
# The virtualenv is keyed by the lock files and the interpreter, so the pins
# never fight the packages other CI steps install globally (schemathesis
# brings its own pytest), and a machine that ran the suite before reuses it.
# Environment: PYTHON (default python3, 3.11 or newer); HERALD_<NAME>_VENV
# names the virtualenv instead of the default one under
# ${XDG_CACHE_HOME:-~/.cache}/herald-<name>.

python_env() {
    local name="$1"
    shift
    python="${PYTHON:-python3}"
    if ! "${python}" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "the ${name} suite needs Python 3.11 or newer (the pinned packages do); ${python} is $("${python}" --version 2>&1)" >&2
        return 1
    fi
    local upper configured key requirement args=()
    upper="$(tr '[:lower:]' '[:upper:]' <<<"${name}")"
    configured="HERALD_${upper}_VENV"
    key="$( (cat "$@"; "${python}" --version) | sha256sum | cut -c1-16)"
    venv="${!configured:-${XDG_CACHE_HOME:-${HOME}/.cache}/herald-${name}/venv-${key}}"
    for requirement in "$@"; do
        args+=(-r "${requirement}")
    done
    if [ -f "${venv}/.installed" ]; then
        return 0
    fi
    # A half-made default one goes; one named by HERALD_<NAME>_VENV is the
    # caller's and is only added to.
    [ -n "${!configured:-}" ] || rm -rf "${venv}"
    if "${python}" -m venv "${venv}" 2>/dev/null; then
        "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-deps --require-virtualenv "${args[@]}"
        # --no-deps installs exactly the lock; check that it is complete.
        "${venv}/bin/python" -m pip check
    else
        # No venv module (Debian's python3 without python3-venv): the pins
        # go into a directory of their own, first on the path.
        echo "no virtualenv with ${python}; installing the pins with pip --target" >&2
        rm -rf "${venv}"
        mkdir -p "${venv}/bin"
        "${python}" -m pip install --quiet --disable-pip-version-check \
            --no-deps --target "${venv}/site" "${args[@]}"
        printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' \
            "${venv}/site" "$(command -v "${python}")" > "${venv}/bin/python"
        chmod +x "${venv}/bin/python"
    fi
    touch "${venv}/.installed"
}
