# Shared set-up for scripts/serve and scripts/test (sourced, not run).
#
# Creates .venv with Python >= 3.11 and installs the project into it (with
# the given extras), reinstalling only when pyproject.toml changed.  Installs
# Debian packages when missing (the scripts are meant to run as root on a
# fresh Debian machine; elsewhere they tell you what to install).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

log() { printf '[sipgw] %s\n' "$*" >&2; }

apt_install() {
    # apt_install PACKAGE... : install what is missing, as root, non-interactively.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        log "please install these Debian packages first: ${missing[*]}"
        return 1
    fi
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    # ensure_venv EXTRAS : e.g. "speed" or "dev"
    local extras="$1" python stamp want
    if [ ! -x "$VENV/bin/python" ]; then
        python="$(find_python)" || { apt_install python3 python3-venv && python="$(find_python)"; } || {
            log "Python 3.11 or newer is required"
            return 1
        }
        if ! "$python" -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            apt_install python3-venv
            "$python" -m venv "$VENV"
        fi
    fi
    stamp="$VENV/.sipgw-installed"
    want="$extras $(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || ! grep -qxF "$want" "$stamp"; then
        log "installing Python packages into .venv ($extras)"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q -e "$ROOT[$extras]"
        printf '%s\n' "$want" >"$stamp"
    fi
}
