#!/usr/bin/env bash
# Create/refresh the Python virtualenv used by compat-tests and the demo tools.
#
#   bash scripts/python-env.sh        # -> prints the venv's python path as the last line
#
# Idempotent: the sha256 of compat-tests/requirements.txt (plus the venv interpreter's version) is kept in
# .venv/.celeriac-stamp; when it matches, nothing is done. On a fresh Debian machine without
# python3-venv / ensurepip, the package is installed with apt-get first.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv"
requirements="${repo_root}/compat-tests/requirements.txt"
stamp_file="${venv}/.celeriac-stamp"
python_bin="${PYTHON:-python3}"

log() { echo "python-env: $*" >&2; }

if ! command -v "${python_bin}" >/dev/null 2>&1; then
    log "${python_bin} not found; installing python3 with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
fi

# Stamp = requirements + the venv interpreter's exact build (an apt upgrade of python3 changes it).
stamp_for() {
    {
        sha256sum "${requirements}" | cut -d' ' -f1
        "$1" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

if [[ -x "${venv}/bin/python" && -f "${stamp_file}" ]] \
    && [[ "$(cat "${stamp_file}")" == "$(stamp_for "${venv}/bin/python" 2>/dev/null || true)" ]]; then
    echo "${venv}/bin/python"
    exit 0
fi

make_venv() {
    "${python_bin}" -m venv "${venv}" >&2
}

if [[ ! -x "${venv}/bin/python" ]] || ! "${venv}/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "${venv}"
    if ! make_venv; then
        log "'${python_bin} -m venv' failed; installing python3-venv with apt-get"
        rm -rf "${venv}"
        apt-get update -qq >&2
        pyver="$("${python_bin}" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        # python3.X-venv carries ensurepip for that interpreter; python3-venv is the meta package.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python${pyver}-venv" >&2 \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        make_venv
    fi
fi

log "installing ${requirements#"${repo_root}"/}"
rm -f "${stamp_file}"
"${venv}/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >&2
"${venv}/bin/python" -m pip install --disable-pip-version-check -q -r "${requirements}" >&2
stamp_for "${venv}/bin/python" >"${stamp_file}"
echo "${venv}/bin/python"
