#!/usr/bin/env bash
# Run the backup -> restore round trip (tests/test_roundtrip.py) and the restore member check
# against tarfile's data filter (tests/test_members.py) under every Python from 3.10
# up that this machine has, other than the one tests/run.sh built .venv from. Each gets its
# own virtualenv, .venv-X.Y.Z, kept between runs. Prints which interpreters it ran and exits
# non-zero when one of them failed. Run tests/run.sh first (system packages, .venv).
set -uo pipefail
cd "$(dirname "$0")/.."

version_of() {  # "X.Y.Z" of a Python >= 3.10, else nothing
    "$1" -c 'import sys; sys.version_info >= (3, 10) and print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null
}

main=$(version_of .venv/bin/python)
candidates=(/usr/bin/python3 /usr/bin/python3.[0-9]* /usr/local/bin/python3.[0-9]*)
if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/*/bin/python3)
fi
for name in python3 python3.10 python3.11 python3.12 python3.13 python3.14; do
    while read -r found; do candidates+=("$found"); done < <(which -a "$name" 2>/dev/null)
done

declare -A seen=(["$main"]=1)
ran=()
failed=()
for candidate in "${candidates[@]}"; do
    case "$candidate" in *-config) continue ;; esac
    [ -x "$candidate" ] || continue
    version=$(version_of "$candidate") || continue
    [ -n "$version" ] && [ -z "${seen[$version]:-}" ] || continue
    seen[$version]=1
    venv=".venv-$version"
    wanted=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$wanted" ]; then
        rm -rf "$venv"
        if ! "$candidate" -m venv "$venv" || ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
                -r requirements-dev.txt; then
            echo "round trip: Python $version ($candidate): cannot build $venv" >&2
            failed+=("$version ($candidate): no virtualenv")
            continue
        fi
        echo "$wanted" > "$venv/.requirements.sha256"
    fi
    echo "round trip under Python $version ($candidate)"
    if "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_roundtrip.py tests/test_members.py; then
        ran+=("$version")
    else
        failed+=("$version ($candidate)")
    fi
done

echo "round trip under the main suite's Python $main, and under: ${ran[*]:-no other interpreter found}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "round trip FAILED under: ${failed[*]}" >&2
    exit 1
fi
