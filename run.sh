#!/usr/bin/env bash
# Run wordpress-backup: keeps a virtualenv in .venv up to date, then runs doit with your arguments.
#   ./run.sh backup      back up every enabled site in sites.json
#   ./run.sh status      last successful backup per site
#   ./run.sh list        every command
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# doit's own parser fails with a traceback on an empty argument ("$UNSET" in a script)
for arg in "$@"; do
    if [ -z "$arg" ]; then
        echo "an empty argument was given (an unset shell variable?): $0 $*" >&2
        echo "give each option a value (--database NAME), or leave the option out for its default" >&2
        exit 2
    fi
done

if ! command -v mariadb-dump >/dev/null 2>&1 && ! command -v mysqldump >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mariadb-client >/dev/null
    else
        echo "mariadb-dump (or mysqldump) is needed: sudo apt-get install mariadb-client" >&2
        exit 1
    fi
fi
# the distribution's interpreter (what the system updates), not whatever python3 comes first on PATH
python=${WPBACKUP_PYTHON:-}
if [ -z "$python" ]; then
    if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=python3; fi
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "wordpress-backup needs Python 3.10 or newer; $python is $("$python" --version 2>&1)" >&2
    exit 1
fi
# a venv belongs to one Python X.Y: after the distribution moved on (or the interpreter it was
# built from is gone) it is rebuilt, not patched
want=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$("$here/.venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ -e "$here/.venv" ] && [ "$have" != "$want" ]; then
    echo "rebuilding .venv for Python $want (it was built for ${have:-an interpreter that is gone})" >&2
    rm -rf "$here/.venv"
fi
if [ ! -x "$here/.venv/bin/python" ]; then
    if ! "$python" -m venv "$here/.venv" 2>/dev/null; then
        if [ "$(id -u)" -eq 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$here/.venv" && "$python" -m venv "$here/.venv"
        else
            echo "python3-venv is needed: sudo apt-get install python3-venv" >&2
            exit 1
        fi
    fi
fi
stamp="$here/.venv/.requirements.sha256"
wanted=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    "$here/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
    echo "$wanted" > "$stamp"
fi
export PYTHONUNBUFFERED=1
exec "$here/.venv/bin/python" -m doit -f "$here/dodo.py" "$@"
