#!/usr/bin/env bash
# Set up and run the whole test suite on a fresh Debian machine.
# As root, missing system packages are installed with apt; the Python packages go into .venv.
# Extra arguments go to pytest (e.g. tests/run.sh -k resume -x).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mariadb-server mariadb-client php-cli php-mysql wordpress wordpress-theme-twentytwentythree
          zstd tar python3-venv ca-certificates restic awscli chromium openssh-server rsync)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "installing system packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "missing system packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    fi
fi

# The distribution's interpreter, which is what operators run (a version manager's python3
# may come first on PATH); PYTHON=... overrides. A venv built from another one is rebuilt.
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
fi
want_version=$("$python" -c 'import sys; print(sys.version.split()[0])')
if [ -x .venv/bin/python ] && [ "$(.venv/bin/python -c 'import sys; print(sys.version.split()[0])')" != "$want_version" ]; then
    echo "rebuilding .venv with $python ($want_version)"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
echo "test interpreter: $python (Python $want_version)"
stamp=.venv/.requirements.sha256
wanted=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
    echo "$wanted" > "$stamp"
fi

.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
    echo "pytest collected no test: that is a failure, not a pass" >&2
    exit 1
fi
exit $rc
